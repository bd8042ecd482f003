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
    def _filters(bbox=None, start=None, end=None, sensor=None, source=None) -> dict[str, Any]:
        p: dict[str, Any] = {}
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
