"""A small Python client for the satfind HTTP API (shared by the web explorer and users)."""

from __future__ import annotations

from typing import Any

import httpx


class SatfindError(RuntimeError):
    """The API answered with an error (message from the server) or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class SatfindClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SatfindClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, url: str, **kw) -> httpx.Response:
        try:
            r = self._http.request(method, url, **kw)
        except httpx.HTTPError as e:
            raise SatfindError(f"cannot reach the satfind API at {self._http.base_url}: "
                               f"{e.__class__.__name__}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise SatfindError(str(detail), status=r.status_code)
        return r

    @staticmethod
    def _filters(bbox=None, start=None, end=None, sensor=None, source=None,
                 undated: bool = False) -> dict[str, Any]:
        p: dict[str, Any] = {}
        if undated:
            p["undated"] = True
        if bbox is not None:
            p["bbox"] = ",".join(str(float(v)) for v in bbox)
        if start is not None:
            p["start"] = str(start)
        if end is not None:
            p["end"] = str(end)
        if sensor:
            p["sensor"] = [sensor] if isinstance(sensor, str) else list(sensor)
        if source:
            p["source"] = [source] if isinstance(source, str) else list(source)
        return p

    def health(self) -> dict:
        return self._call("GET", "/health").json()

    def stats(self) -> dict:
        return self._call("GET", "/stats").json()

    def search_text(self, q: str, k: int | None = None, format: str = "json",
                    collapse: bool = False, **filters) -> dict:
        params = {"q": q, "format": format, "collapse": collapse, **self._filters(**filters)}
        if k is not None:
            params["k"] = k
        return self._call("GET", "/search", params=params).json()

    def search_image(self, image: bytes, filename: str = "query", k: int | None = None,
                     format: str = "json", collapse: bool = False, **filters) -> dict:
        data = {"format": format, "collapse": str(collapse).lower(), **self._filters(**filters)}
        if k is not None:
            data["k"] = str(k)
        return self._call("POST", "/search/image", files={"file": (filename, image)},
                          data=data).json()

    def similar(self, tile_id: int, k: int | None = None, format: str = "json",
                collapse: bool = False, **filters) -> dict:
        params = {"format": format, "collapse": collapse, **self._filters(**filters)}
        if k is not None:
            params["k"] = k
        return self._call("GET", f"/tiles/{int(tile_id)}/similar", params=params).json()

    def search(self, **body) -> dict:
        """POST /search with a JSON body (text / image_base64 / tile_id / positives /
        negatives / k / bbox / start / end / sensor / source / collapse / format)."""
        return self._call("POST", "/search", json=body).json()

    def tile(self, tile_id: int) -> dict:
        return self._call("GET", f"/tiles/{int(tile_id)}").json()

    def thumbnail(self, tile_id: int) -> bytes:
        return self._call("GET", f"/tiles/{int(tile_id)}/thumbnail.jpg").content

    def tiles_at(self, lon: float, lat: float, limit: int | None = None, **filters) -> dict:
        """The tiles whose footprint contains lon/lat, newest acquisition first (undated
        last): {"count", "total", "generation", "results": [what `tile` returns, ...]}.
        Filters: start, end, sensor, undated."""
        params = {"lon": float(lon), "lat": float(lat), **self._filters(**filters)}
        if limit is not None:
            params["limit"] = int(limit)
        return self._call("GET", "/tiles/at", params=params).json()

    # --- beyond top-k -------------------------------------------------------------------
    @staticmethod
    def _query(q: str | None = None, tile: int | None = None, labels: str | None = None
               ) -> dict[str, Any]:
        p: dict[str, Any] = {}
        if q is not None:
            p["q"] = q
        if tile is not None:
            p["tile"] = int(tile)
        if labels is not None:
            p["labels"] = labels
        return p

    def region_scores(self, q: str | None = None, tile: int | None = None,
                      labels: str | None = None, format: str = "json", **filters
                      ) -> dict | bytes:
        """The score of every tile passing the filters: columnar JSON (a dict of arrays),
        or the bytes of geojson / csv / arrow / parquet."""
        filters.pop("source", None)
        params = {**self._query(q, tile, labels), "format": format, **self._filters(**filters)}
        r = self._call("GET", "/search/scores", params=params)
        return r.json() if format in ("json", "geojson") else r.content

    def change(self, before: tuple[str, str], after: tuple[str, str], q: str | None = None,
               tile: int | None = None, k: int | None = None, direction: str = "rose",
               bbox=None, format: str = "json") -> dict | bytes:
        """Places whose match rose (fell) the most between the two (start, end) periods."""
        params = {**self._query(q, tile), "before_start": before[0], "before_end": before[1],
                  "after_start": after[0], "after_end": after[1], "direction": direction,
                  "format": format, **self._filters(bbox=bbox)}
        if k is not None:
            params["k"] = k
        r = self._call("GET", "/search/change", params=params)
        return r.json() if format in ("json", "geojson") else r.content

    def history(self, tile_id: int, q: str | None = None) -> dict:
        """Every acquisition of the tile's place, with scores and change distances."""
        return self._call("GET", f"/tiles/{int(tile_id)}/changes",
                          params=self._query(q)).json()

    def where(self, tile_id: int, q: str | None = None, tile: int | None = None,
              format: str = "json") -> dict | bytes:
        """Where in the tile the query matches: JSON (grid, peak lon/lat) or a PNG overlay."""
        r = self._call("GET", f"/tiles/{int(tile_id)}/where.{format}",
                       params=self._query(q, tile))
        return r.json() if format == "json" else r.content

    def map_tile(self, z: int, x: int, y: int, format: str = "png", **filters) -> bytes:
        """A 256 px XYZ tile of the archive's own imagery (png or jpg)."""
        params = self._filters(start=filters.get("start"), end=filters.get("end"),
                               sensor=filters.get("sensor"))
        return self._call("GET", f"/map/{z}/{x}/{y}.{format}", params=params).content

    def score_tile(self, z: int, x: int, y: int, q: str | None = None, tile: int | None = None,
                   labels: str | None = None, vmin: float | None = None,
                   vmax: float | None = None, threshold: float | None = None,
                   **filters) -> bytes:
        """The query's scores as a 256 px PNG overlay; tiles scoring below `threshold` are
        not drawn. Filters: start, end, sensor."""
        params = {**self._query(q, tile, labels), **self._filters(**filters)}
        params.update({k: v for k, v in (("vmin", vmin), ("vmax", vmax),
                                         ("threshold", threshold)) if v is not None})
        return self._call("GET", f"/map/scores/{z}/{x}/{y}.png", params=params).content

    def score_legend(self, q: str | None = None, tile: int | None = None,
                     labels: str | None = None, **filters) -> dict:
        """The score overlay's legend: {"vmin", "vmax" (the score tiles' default range),
        "ramp" (#rrggbb colours from vmin to vmax), "histogram": {"edges", "counts"},
        "count"}. Filters: start, end, sensor."""
        params = {**self._query(q, tile, labels), **self._filters(**filters)}
        return self._call("GET", "/map/scores/legend", params=params).json()

    def label_sets(self) -> list[dict]:
        return self._call("GET", "/labels").json()["label_sets"]

    def put_labels(self, name: str, positives=(), negatives=(), points=(),
                   replace: bool = False) -> dict:
        """Add tiles (ids, or {lon, lat, positive} points) to a label set, or replace it."""
        return self._call("POST", "/labels", json={
            "name": name, "positives": [int(i) for i in positives],
            "negatives": [int(i) for i in negatives], "points": list(points),
            "replace": replace}).json()

    def labels(self, name: str, format: str = "json") -> dict | bytes:
        r = self._call("GET", f"/labels/{name}", params={"format": format})
        return r.json() if format in ("json", "geojson") else r.content

    def delete_labels(self, name: str) -> None:
        self._call("DELETE", f"/labels/{name}")

    def classify(self, labels: str, k: int | None = None, **filters) -> dict:
        """Rank the archive with a logistic regression trained on the label set."""
        filters.pop("sensor", None), filters.pop("source", None)
        params = {"labels": labels, **self._filters(**filters)}
        if k is not None:
            params["k"] = k
        return self._call("GET", "/search/classifier", params=params).json()
