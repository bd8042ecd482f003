"""An ASGI middleware that caps every request body before anything parses it.

A declared Content-Length over the cap is answered 413 without reading the body; a body
sent without one (chunked) is counted as it arrives and cut off at the cap. JSON and form
parsers downstream never see more than `limit` bytes.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException


class _TooLarge(HTTPException):
    """Raised from `receive` once the body passes the cap. An HTTPException, so a framework
    that wraps body-parsing errors (FastAPI turns them into 400) passes it on as the 413."""

    def __init__(self, detail: str):
        super().__init__(status_code=413, detail=detail)


class BodyLimit:
    def __init__(self, app, limit: int, detail: str):
        self.app, self.limit, self.detail = app, limit, detail

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": self.detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.strip().isdigit() or int(value) > self.limit:
                    return await self._refuse(send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.detail)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)
