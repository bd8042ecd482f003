"""schemathesis hooks for satfind's API (loaded through SCHEMATHESIS_HOOKS by tests/chaos.py).

One known false positive of schemathesis' negative-data check is filtered out: in a query
string everything is text, so a "schema-violating" `sensor=false` (a boolean where the
schema has an array of strings) or an object for `start` (serialised as `start=`) reaches
the server as a perfectly valid request (sensor "false"; no start). schemathesis then
reports "schema-violating request accepted" (upstream: schemathesis issues #2900, #3056;
PR #3129). Only such cases are dropped: values that serialise into something the schema
allows. Every other negative case still runs.
"""

from __future__ import annotations

import schemathesis

_STRING_ARRAYS = {"sensor", "source"}
_OPTIONAL_STRINGS = {"start", "end", "bbox"}


def _serialises_valid(name: str, value) -> bool:
    if name in _STRING_ARRAYS:  # anything but text becomes text that names a sensor/source
        items = value if isinstance(value, list) else [value]
        return not all(isinstance(v, str) for v in items)
    if name in _OPTIONAL_STRINGS:
        return isinstance(value, (dict, list)) and not value
    return False


@schemathesis.hook
def filter_query(ctx, query):
    if not query:
        return True
    return not any(_serialises_valid(k, v) for k, v in query.items())
