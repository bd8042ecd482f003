"""Errors the indexer reports to users as one line, never as a traceback."""


class InputError(Exception):
    """A problem with one input (file, STAC item, raster): `path: message`."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class IndexError_(Exception):  # noqa: N801 - avoid shadowing the builtin IndexError
    """A problem with the index directory itself (locked, foreign encoder, corrupt manifest)."""


class JobError(Exception):
    """The indexing run stopped for a reason that is not one input's fault (a killed reader
    process, ...); the index stays at its last commit."""


class FilterError(ValueError):
    """A search filter that cannot be applied (bad bbox, times out of order)."""
