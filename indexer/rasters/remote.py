"""Remote rasters: URLs GDAL reads over the network (http(s) through /vsicurl/, s3://,
gs://, az://), the form of a URL that may be stored and printed (no query string, no user
name: signatures and tokens live there), satfind's GDAL settings around its own reads,
retries of reads that fail half-way, and a remote file's identity from its headers."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from indexer.config import RemoteSettings
from indexer.errors import InputError
from indexer.logs import printable, public_url

# URL scheme -> GDAL virtual file system prefix.
NETWORK_SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/",
                   "gs": "/vsigs/", "az": "/vsiaz/"}
_VSI_NETWORK = ("/vsicurl/", "/vsicurl?", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/",
                "/vsioss/", "/vsiswift/")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

T = TypeVar("T")


def url_scheme(path: str) -> str | None:
    """'https' for 'https://host/x.tif', None for a local path."""
    m = _SCHEME.match(path)
    return m.group(1).lower() if m else None


def is_url(path: str) -> bool:
    return url_scheme(path) is not None


def is_remote(path: str) -> bool:
    """A raster GDAL reads over the network (a URL, or a network /vsi path)."""
    return url_scheme(path) in NETWORK_SCHEMES or path.startswith(_VSI_NETWORK)


def check_url(url: str) -> None:
    """InputError for a URL scheme satfind does not read."""
    scheme = url_scheme(url)
    if scheme is not None and scheme != "file" and scheme not in NETWORK_SCHEMES:
        raise InputError(public(url), f"URL scheme {scheme!r} is not one GDAL reads here "
                         f"(use {', '.join(s + '://' for s in NETWORK_SCHEMES)} or a local path)")


def gdal_path(path: str) -> str:
    """The name GDAL opens: /vsicurl/https://..., /vsis3/bucket/key, or the local path."""
    scheme = url_scheme(path)
    if scheme is None:
        return path
    if scheme == "file":
        return path[len("file://"):]
    prefix = NETWORK_SCHEMES[scheme]
    if prefix == "/vsicurl/":
        return prefix + path
    return prefix + path[len(scheme) + 3:]


# What may be stored and printed of a URL (no query string, fragment or user name /
# password: where signatures and tokens live), one URL or every URL in a text. In
# indexer.logs, which prints every native warning through them.
public = public_url
redact = printable


def file_name(path: str) -> str:
    """The last path segment: 'scene.tif' of /data/scene.tif or https://h/a/scene.tif?x=1."""
    if is_url(path):
        path = urlsplit(path).path
    return path.rstrip("/").rsplit("/", 1)[-1]


@contextmanager
def gdal_env(path: str, remote: RemoteSettings) -> Iterator[None]:
    """satfind's GDAL settings around a read of `path` when it is remote (nothing local)."""
    if not is_remote(path):
        yield
        return
    import rasterio

    with rasterio.Env(**remote.gdal_options()):
        yield


_HTTP_CODE = re.compile(r"HTTP response code(?: on \S+)?: (\d{3})")
_HTTP_MEANING = {
    401: "unauthorised (credentials come from the environment: AWS_*, GDAL_HTTP_*, ...)",
    403: "forbidden (credentials come from the environment: AWS_*, GDAL_HTTP_*, ...)",
    404: "not found",
    416: "range not satisfiable (the file is shorter than it said)",
}


def http_status(message: str) -> int | None:
    m = _HTTP_CODE.search(message)
    return int(m.group(1)) if m else None


def describe(error: BaseException) -> str:
    """A one-line reason for a failed remote open or read, with no secrets in it."""
    while "See previous exception" in str(error) and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__  # rasterio's "Read failed": GDAL's why
    msg = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "redirects followed" in msg:
        return "too many HTTP redirects (a redirect loop?)"
    code = http_status(msg)
    if code is not None and 300 <= code < 400:
        return f"HTTP {code}: a redirect GDAL could not follow to the end (a redirect loop?)"
    if code is not None:
        return f"HTTP {code}: {_HTTP_MEANING.get(code, 'error')}"
    if "not recognized as being in a supported file format" in msg:
        return "not a raster GDAL can read (is it a GeoTIFF?)"
    if msg.startswith("CURL error:"):
        return "cannot reach the server: " + redact(msg[len("CURL error:"):].strip())
    if "does not exist in the file system" in msg:
        return "not found, or the server cannot be reached"
    return redact(msg)


def permanent(error: BaseException) -> bool:
    """A failure that retrying cannot cure: a 3xx (a redirect GDAL gave up on) or 4xx status
    (but 408 and 429), a file that is not a raster."""
    msg = str(error)
    code = http_status(msg)
    if code is not None:
        return 300 <= code < 500 and code not in (408, 429)
    return "not recognized as being in a supported file format" in msg


def with_retries(path: str, remote: RemoteSettings, attempt: Callable[[], T],
                 reset: Callable[[], None] = lambda: None,
                 stop: threading.Event | None = None) -> T:
    """attempt() under satfind's GDAL settings; for a remote path, a RasterioError that
    GDAL's own retries did not cure (a body cut short, a timeout) is tried again after
    reset() and GDAL's cache of the file are cleared, up to remote.read_retries times with
    a doubling delay; none once `stop` is set (a thread of a job that is stopping: Ctrl-C
    reaches only the main thread). Local paths: attempt() once."""
    if not is_remote(path):
        return attempt()
    from rasterio.errors import RasterioError

    from indexer.rasters import vsi

    delay = remote.retry_delay_s
    with gdal_env(path, remote):
        for n in range(remote.read_retries + 1):
            try:
                return attempt()
            except RasterioError as e:
                if n == remote.read_retries or permanent(e) or (stop and stop.is_set()):
                    raise
                reset()
                vsi.forget(gdal_path(path))
                if stop is None:
                    time.sleep(delay)
                elif stop.wait(delay):
                    raise
                delay *= 2
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class RemoteIdentity:
    """What names one version of a remote file without downloading it."""

    size: int  # bytes (0 when unknown)
    version: str  # 'checksum:...' (STAC file:checksum), 'etag:...', 'modified:...', 'size'


def identity(path: str, remote: RemoteSettings, checksum: str | None = None,
             size: int | None = None) -> RemoteIdentity:
    """The remote file's identity: the catalogue's `file:checksum` when it has one (no
    request), else one HEAD request's ETag, or Last-Modified with the size. InputError
    (one line, no secrets) when the file cannot be reached."""
    out = identities([(path, checksum, size)], remote)[0]
    if isinstance(out, InputError):
        raise out
    return out


def identities(requests: list[tuple[str, str | None, int | None]], remote: RemoteSettings
               ) -> list[RemoteIdentity | InputError]:
    """`identity` of many (path, checksum, size): the HEAD requests `remote.stat_workers` at
    a time (GDAL's calls release the GIL), a failure explained afterwards, one at a time."""
    from indexer.rasters import vsi

    asks = [gdal_path(p) for p, checksum, _ in requests if not checksum]
    heads: dict[str, dict[str, str] | None] = {}
    if asks:
        try:
            for vpath in asks:
                vsi.forget(vpath)  # a file that changed since this process last looked
        except vsi.GdalLibraryNotFound as e:
            return [InputError(public(p), f"cannot ask for the file's headers ({e})")
                    for p, _, _ in requests]
        # GDAL's options are process-wide: set here, once, for all the pool's requests.
        with gdal_env(requests[0][0], remote), ThreadPoolExecutor(
                max_workers=min(len(asks), remote.stat_workers)) as pool:
            heads = dict(zip(asks, pool.map(vsi.headers, asks), strict=True))
    out: list[RemoteIdentity | InputError] = []
    for path, checksum, size in requests:
        if checksum:
            out.append(RemoteIdentity(size or 0, f"checksum:{checksum}"))
        elif (head := heads[gdal_path(path)]) is not None:
            out.append(_from_headers(head, size))
        else:
            out.append(_why(path, remote))
    return out


def _from_headers(head: dict[str, str], size: int | None) -> RemoteIdentity:
    # A HEAD's Content-Length, or the total of a range GET's Content-Range ("bytes 0-9/N":
    # GDAL asks /vsis3/ and others with a range request).
    total = head.get("content-range", "").rpartition("/")[2]
    length = total if total.isdigit() else head.get("content-length", "")
    n = int(length) if length.isdigit() else (size or 0)
    if head.get("etag"):
        return RemoteIdentity(n, f"etag:{head['etag']}")
    if head.get("last-modified"):
        return RemoteIdentity(n, f"modified:{head['last-modified']}")
    return RemoteIdentity(n, "size")


def _why(path: str, remote: RemoteSettings) -> InputError:
    """Why GDAL got no headers: its own open says it in words (status code, redirects,
    connection)."""
    import rasterio
    from rasterio.errors import RasterioError

    from indexer.rasters import vsi

    vsi.forget(gdal_path(path))  # else GDAL answers from its cache of the failed request
    try:
        with gdal_env(path, remote), rasterio.open(gdal_path(path)):
            pass
    except RasterioError as e:
        return InputError(public(path), describe(e))
    return InputError(public(path), "the server sent no headers for it")
