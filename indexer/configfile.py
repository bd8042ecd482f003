"""Reading TOML settings into typed, range-checked dataclasses: the one loader every satfind
command uses. An unknown key, a wrong type or a value out of range is a one-line
 naming the file, the key and what was expected."""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Any, get_type_hints


class ConfigError(ValueError):
    """Bad configuration (one-line message)."""


def ranged(default: Any, interval: str) -> Any:
    """A numeric setting with its allowed interval, e.g. ranged(64, "[1, 4096]") or
    ranged(0.5, "[0, 1)"); checked at load (each element, for a tuple)."""
    return field(default=default, metadata={"range": interval})


_INTERVAL = re.compile(r"([\[(])\s*([^,]+?)\s*,\s*([^\])]+?)\s*([\])])")


def check_range(where: str, value: float, interval: str) -> None:
    m = _INTERVAL.fullmatch(interval.strip())
    if m is None:
        raise AssertionError(f"bad interval {interval!r}")
    lo, hi = float(m.group(2)), float(m.group(3))
    ok = (value > lo if m.group(1) == "(" else value >= lo) and (
        value < hi if m.group(4) == ")" else value <= hi)
    if not ok:
        shown = interval.replace("inf", "infinity")
        raise ConfigError(f"{where} = {value!r} is out of range: expected a value in {shown}")


def check_ranges(obj: Any, where: str) -> None:
    """Every field of a settings dataclass that declares a range is inside it."""
    for f in dataclasses.fields(obj):
        interval = f.metadata.get("range")
        if interval is None:
            continue
        value = getattr(obj, f.name)
        for v in (value if isinstance(value, tuple) else (value,)):
            check_range(f"{where}.{f.name}", v, interval)


def _coerce(where: str, value: Any, typ: Any) -> Any:
    origin = getattr(typ, "__origin__", None)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typ.__args__
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_coerce(f"{where}[{i}]", v, a) for i, (v, a) in pairs)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): _coerce(f"{where}.{k}", v, typ.__args__[1]) for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported setting type {typ}")


def build_section(cls: type, table: dict, where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(f"{where}.{key}", value, hints[key])
    obj = cls(**kwargs)
    check_ranges(obj, where)
    return obj


def read_toml(path: str | Path) -> tuple[Path, dict]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        return p, tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


def read_sections(path: str | Path | None, schema: dict[str, type]) -> dict[str, Any]:
    """Typed settings of the named sections (for layers above the indexer: search, api);
    sections absent from the file (or no file) get their defaults."""
    data: dict = {}
    p = Path("<defaults>")
    if path is not None:
        p, data = read_toml(path)
    out = {}
    for name, cls in schema.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{p}: [{name}] must be a table")
        out[name] = build_section(cls, table, f"{p}: {name}")
    return out


