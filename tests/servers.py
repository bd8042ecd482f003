"""Real servers on 127.0.0.1 for the remote-archive tests and bench/remote.py, each started
and stopped by its user: Debian's nginx (HTTP with Range support) serving a folder, a STAC
API (`rustac serve`, in-memory backend) loaded with items, and an asyncio HTTP proxy that
answers chosen requests with a 500, a body cut short, or a delay."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.chaos import free_port, stop

# name served -> (shared raster, how it is written)
SERVED = {
    "korea_cog.tif": ("korea_0.6m_cogeo.tif", "cog"),  # internal overviews
    "korea_flat.tif": ("korea_0.6m_cogeo.tif", "flat"),  # tiled, no overviews
    "naip_2009_cog.tif": ("naip_nd_20090818.tif", "cog"),
    "bahamas_cog.tif": ("landsat_bahamas_RGB.byte.tif", "cog"),
}


def make_cogs(folder: Path) -> Path:
    """COGs (with overviews) and a tiled GeoTIFF without overviews, from the shared rasters,
    and a file that is not a GeoTIFF, in `folder` (to be served)."""
    import rasterio.shutil

    from tests.helpers import SHARED_GEOTIFF

    folder.mkdir(parents=True, exist_ok=True)
    for name, (shared, kind) in SERVED.items():
        out = folder / name
        if kind == "cog":
            rasterio.shutil.copy(SHARED_GEOTIFF / shared, out, driver="COG", BLOCKSIZE=256,
                                 OVERVIEW_RESAMPLING="AVERAGE", COMPRESS="DEFLATE")
        else:
            rasterio.shutil.copy(SHARED_GEOTIFF / shared, out, driver="GTiff", TILED="YES",
                                 BLOCKXSIZE=256, BLOCKYSIZE=256, COMPRESS="DEFLATE")
    (folder / "notatiff.tif").write_text("this is not a GeoTIFF\n")
    return folder


NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")
START_TIMEOUT_S = 20.0


def nginx_binary() -> str | None:
    for c in NGINX_CANDIDATES:
        found = shutil.which(c)
        if found:
            return found
    return None


def rustac_binary() -> str | None:
    """The `rustac` command of this Python's environment (the test extra), else PATH's."""
    here = Path(sys.executable).parent / "rustac"
    return str(here) if here.is_file() else shutil.which("rustac")


def _wait_until_up(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (an error status is an answer)
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {START_TIMEOUT_S:.0f} s")


_NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format ranges '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log {d}/access.log ranges;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
    types {{ image/tiff tif tiff; application/json json; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /loop/ {{ return 302 /loop/again; }}
        location /forbidden/ {{ return 403; }}
    }}
}}
"""


class _Server:
    """A server process on 127.0.0.1:port, stopped on exit; its stderr goes to a file in
    its work folder (a pipe nobody reads would fill and block it)."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.port = 0
        self._proc: subprocess.Popen | None = None

    def _start(self, cmd: list[str], probe: str, what: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "stderr.log", "wb") as err:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _wait_until_up(f"{self.url}{probe}", self._proc, what)

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            stop(self._proc, grace_s=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Nginx(_Server):
    """nginx serving `root` at http://127.0.0.1:PORT/ (Range requests, ETag and
    Last-Modified as nginx sends them); /loop/* redirects to itself, /forbidden/* is 403.
    The access log has one line per request: method, path, status, body bytes, Range."""

    def __init__(self, root: Path, workdir: Path):
        super().__init__(workdir)
        self.root = Path(root)

    def __enter__(self) -> Nginx:
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx")
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(d=self.dir, port=self.port, root=self.root))
        self._start([binary, "-c", str(conf), "-p", str(self.dir), "-e",
                     str(self.dir / "error.log")], "/", "nginx")
        return self

    # nginx writes a request's line after its response is sent: a client can be done before
    # the line is there. The log is read (and cleared) once no line came for this long.
    QUIET_S = 0.2

    def log(self, at_least: int = 0, timeout_s: float = 5.0) -> list[dict]:
        """The access log so far: {method, path, status, bytes, range}, once it has at least
        `at_least` lines (waited for up to timeout_s) and no new line came for QUIET_S."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._quiet(deadline)
            out = self._read_log()
            if len(out) >= at_least or time.monotonic() > deadline:
                return out

    def _quiet(self, deadline: float) -> None:
        """Wait until the log file did not grow for QUIET_S (or the deadline)."""
        path = self.dir / "access.log"
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = path.stat().st_size if path.exists() else 0
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= self.QUIET_S:
                return
            time.sleep(0.02)

    def _read_log(self) -> list[dict]:
        out = []
        path = self.dir / "access.log"
        if not path.exists():
            return out
        for line in path.read_text().splitlines():
            head, _, rng = line.partition(' "')
            method, uri, status, sent = head.split()
            out.append({"method": method, "path": uri, "status": int(status),
                        "bytes": int(sent), "range": rng.rstrip('"')})
        return out

    def clear_log(self) -> None:
        """Start the access log afresh (nginx keeps appending to the same open file), once
        the requests before have all written their lines."""
        self._quiet(time.monotonic() + 5.0)
        path = self.dir / "access.log"
        if path.exists():
            with open(path, "r+") as f:
                f.truncate(0)


class StacApi(_Server):
    """A real STAC API: `rustac serve` (in-memory backend) loaded with an ItemCollection
    file and the collections it names, on 127.0.0.1."""

    def __init__(self, collections: list[dict], items: list[dict], workdir: Path):
        super().__init__(workdir)
        self.collections, self.items = collections, items

    def __enter__(self) -> StacApi:
        binary = rustac_binary()
        if binary is None:
            raise FileNotFoundError("rustac")
        self.dir.mkdir(parents=True, exist_ok=True)
        hrefs = []
        for c in self.collections:
            p = self.dir / f"collection-{c['id']}.json"
            p.write_text(json.dumps(c))
            hrefs.append(str(p))
        items = self.dir / "items.json"
        items.write_text(json.dumps({"type": "FeatureCollection", "features": self.items}))
        hrefs.append(str(items))
        self.port = free_port()
        self._start([binary, "serve", "--addr", f"127.0.0.1:{self.port}", *hrefs],
                    "/collections", "rustac serve")
        return self


# What the proxy does with one request: "pass", "error" (a 500 instead of the answer),
# "cut" (the status line, headers and half the body, then the connection closed), or
# ("delay", seconds) (the answer after a pause).
Decide = Callable[[str, str, str], object]


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of an upstream server on 127.0.0.1, which
    answers requests as `decide(method, path, range)` says (see Decide) and records each
    (method, path, range, action). Keep-alive to the client; one upstream connection per
    request."""

    def __init__(self, upstream_port: int, decide: Decide):
        self.upstream_port, self.decide = upstream_port, decide
        self.port = 0
        self.seen: list[tuple[str, str, str, object]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> FaultProxy:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._client, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._server.close()
            for w in list(self._writers):  # open keep-alive connections end their tasks
                w.transport.abort()
            tasks = asyncio.all_tasks(self._loop)
            if tasks:
                self._loop.run_until_complete(asyncio.wait(tasks, timeout=5))
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [h for h in lines[1:] if h]
                rng = next((h.split(":", 1)[1].strip() for h in headers
                            if h.lower().startswith("range:")), "")
                action = self.decide(method, target, rng)
                self.seen.append((method, target, rng, action))
                if action == "error":
                    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                                 b"Connection: keep-alive\r\n\r\n")
                    await writer.drain()
                    continue
                status, resp_headers, body = await self._forward(method, target, headers)
                if isinstance(action, tuple) and action[0] == "delay":
                    await asyncio.sleep(action[1])
                out = [status] + [h for h in resp_headers
                                  if not h.lower().startswith("connection:")]
                out.append("Connection: keep-alive")
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
                if action == "cut":
                    writer.write(body[: len(body) // 2])
                    await writer.drain()
                    return  # the connection closes mid-body
                writer.write(body)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _forward(self, method: str, target: str, headers: list[str]
                       ) -> tuple[str, list[str], bytes]:
        r, w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            keep = [h for h in headers if not h.lower().startswith(("connection:", "host:"))]
            req = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{self.upstream_port}",
                   *keep, "Connection: close"]
            w.write(("\r\n".join(req) + "\r\n\r\n").encode("latin-1"))
            await w.drain()
            head = (await r.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            body = b"" if method == "HEAD" else await r.read()
            return head[0], [h for h in head[1:] if h], body
        finally:
            w.close()
