"""What a search asks for, and the errors a query can end in (no HTTP here: the API maps
these types to statuses in one table, `search.http.app.STATUS`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from indexer.store.tiles import Filters


class QueryError(ValueError):
    """A query the engine cannot answer (one-line message)."""


class NotFound(QueryError):
    """The query names a tile (or a thumbnail) the index does not hold."""


class TooLarge(QueryError):
    """An uploaded query image over the configured size."""


@dataclass(frozen=True)
class Query:
    text: str | None = None
    image: bytes | None = None
    tile_id: int | None = None
    positives: tuple[int, ...] = ()
    negatives: tuple[int, ...] = ()
    k: int = 20
    filters: Filters = field(default_factory=Filters)
    collapse: bool = False  # keep only the best tile per z/x/y across dates


RESULT_COLUMNS = ["id", "z", "x", "y", "west", "south", "east", "north", "acquired", "source",
                  "sensor", "gsd_m"]
