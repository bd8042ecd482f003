"""Remote archives: COGs over HTTP from a real nginx on 127.0.0.1 (Range requests), the
same tiles and vectors as the local files, identities from the headers, overviews, bad
remote inputs in one line, resume, and GRAFT reading the same URLs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.config import DiscoverySettings
from indexer.errors import InputError
from indexer.job.pipeline import IndexJob
from indexer.rasters import remote
from indexer.rasters.discovery import discover
from indexer.rasters.grid import Window
from indexer.rasters.inspect import inspect_raster
from indexer.rasters.reader import RasterReader
from indexer.rasters.sources import RasterSource
from indexer.store.snapshot import IndexSnapshot
from tests.conftest import run_cli
from tests.helpers import OFFLINE_CONFIG, SHARED_GEOTIFF
from tests.servers import SERVED, Nginx, make_cogs, nginx_binary

pytestmark = [
    pytest.mark.skipif(nginx_binary() is None,
                       reason="Debian's nginx is not installed (.ci/run installs it)"),
    pytest.mark.skipif(not SHARED_GEOTIFF.is_dir(),
                       reason="../shared/data/geotiff is absent (no real rasters to serve)"),
]

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = make_cogs(tmp_path_factory.mktemp("www"))
    with Nginx(root, tmp_path_factory.mktemp("nginx")) as server:
        yield root, server


def _index(path, settings, encoder, archives, log=None, **kw):
    return IndexJob(path, settings, encoder, progress=False, log=log or (lambda _: None)
                    ).run([str(a) for a in archives], **kw)


def tiles_by_key(index_dir) -> dict[tuple[str, int, int, int], tuple[str, float, np.ndarray]]:
    """(source file name, z, x, y) -> (source, nodata fraction, float16 vector) of every
    tile of an index."""
    snap = IndexSnapshot.open(index_dir)
    t = snap.tiles(["id", "z", "x", "y", "source", "nodata_fraction"]).to_pydict()
    vecs = snap.get_vectors(np.array(t["id"]))
    return {(remote.file_name(s), z, x, y): (s, nd, v) for z, x, y, s, nd, v in
            zip(t["z"], t["x"], t["y"], t["source"], t["nodata_fraction"], vecs, strict=True)}


def test_urls_index_exactly_like_the_local_files(tmp_path, served, settings, encoder):
    root, server = served
    names = sorted(SERVED)
    local = _index(tmp_path / "local", settings, encoder, [root / n for n in names])
    notes: list[str] = []
    # A query string (here a fake signature) is used for reading, never stored or printed.
    urls = [f"{server.url}/{n}?sig=SECRET123" for n in names]
    far = _index(tmp_path / "far", settings, encoder, urls, log=notes.append)
    assert local.problems == far.problems == []
    assert far.rasters_indexed == local.rasters_indexed == len(names)
    a, b = tiles_by_key(tmp_path / "local"), tiles_by_key(tmp_path / "far")
    assert a.keys() == b.keys() and len(a) == far.tiles_written > 0
    for k in a:
        assert a[k][1] == b[k][1]  # nodata fraction
        np.testing.assert_array_equal(a[k][2], b[k][2])  # the vector, bit for bit
        assert b[k][0] == f"{server.url}/{Path(a[k][0]).name}"
    manifest = (tmp_path / "far" / "manifest.json").read_text()
    assert "SECRET123" not in manifest and "SECRET123" not in "\n".join(notes)
    entry = next(iter(IndexSnapshot.open(tmp_path / "far").sources.values()))
    assert entry.remote_version.startswith("etag:") and entry.content_sha256 == ""
    # The raster without overviews is warned about once, with the bytes it costs.
    warned = [n for n in notes if "no internal overviews" in n]
    assert len(warned) == 1 and "korea_flat.tif" in warned[0] and " MB " in warned[0]
    # Re-running the same URLs reads no pixels and adds nothing.
    server.clear_log()
    again = _index(tmp_path / "far", settings, encoder, urls)
    assert again.rasters_unchanged == len(names) and again.tiles_written == 0
    log = server.log(at_least=len(names))
    assert {r["method"] for r in log} == {"HEAD"}
    assert len(log) == len(names)


def test_overviews_read_a_fraction_of_the_bytes(tmp_path, served, settings, encoder):
    """The same raster with and without internal overviews: identical tile grid, and the
    COG's tiles cost a fraction of the bytes (measured from nginx's access log)."""
    root, server = served
    cost = {}
    for name in ("korea_cog.tif", "korea_flat.tif"):
        server.clear_log()
        report = _index(tmp_path / name, settings, encoder, [f"{server.url}/{name}"])
        assert report.rasters_indexed == 1
        log = server.log()
        assert all(r["status"] in (200, 206) for r in log)
        cost[name] = sum(r["bytes"] for r in log), report.tiles_written
    (cog_bytes, cog_tiles), (flat_bytes, flat_tiles) = cost["korea_cog.tif"], cost["korea_flat.tif"]
    assert cog_tiles == flat_tiles > 0
    assert flat_bytes >= 0.9 * (root / "korea_flat.tif").stat().st_size  # every pixel read
    assert cog_bytes < 0.6 * flat_bytes


def test_changed_asset_replaces_its_tiles_and_unchanged_ones_stay(tmp_path, served, settings,
                                                                  encoder):
    root, server = served
    shutil.copy(root / "korea_cog.tif", root / "moving.tif")
    url = f"{server.url}/moving.tif"
    first = _index(tmp_path / "idx", settings, encoder, [url])
    assert first.rasters_indexed == 1
    before = {k[1:] for k in tiles_by_key(tmp_path / "idx")}
    # Same URL, new content (nginx's ETag follows size and mtime).
    shutil.copy(root / "naip_2009_cog.tif", root / "moving.tif")
    second = _index(tmp_path / "idx", settings, encoder, [url])
    assert second.rasters_replaced == 1 and second.rasters_indexed == 1
    after = {k[1:] for k in tiles_by_key(tmp_path / "idx")}
    assert not (before & after)  # a different place: no old tile is left
    reference = _index(tmp_path / "ref", settings, encoder, [root / "naip_2009_cog.tif"])
    assert reference.tiles_written == len(after)
    (root / "moving.tif").unlink()
    # Removed by its URL (a query string on the command line does not matter).
    r = run_cli("--remove", url + "?sig=x", "--index", str(tmp_path / "idx"), "--config",
                str(OFFLINE_CONFIG))
    assert r.returncode == 0, r.stderr
    assert f"removed {url}: {len(after)} tiles" in r.stdout
    assert IndexSnapshot.open(tmp_path / "idx").ntotal == 0


def test_bad_remote_inputs_each_one_line(tmp_path, served, settings, encoder):
    root, server = served
    unreachable = "http://127.0.0.1:9/nothing.tif"  # the discard port: nothing listens
    item = tmp_path / "item.json"
    item.write_text(json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": "no-visual",
        "geometry": None, "properties": {"datetime": "2020-01-01T00:00:00Z"}, "links": [],
        "assets": {"thumbnail": {"href": f"{server.url}/thumb.jpg",
                                 "type": "image/jpeg", "roles": ["thumbnail"]}}}))
    cases = {
        f"{server.url}/missing.tif": "HTTP 404: not found",
        f"{server.url}/forbidden/korea_cog.tif": "HTTP 403: forbidden",
        f"{server.url}/loop/x.tif": "redirect",
        f"{server.url}/notatiff.tif": "not a raster GDAL can read",
        unreachable: "cannot reach the server",
        "ftp2://host/scene.tif": "URL scheme 'ftp2' is not one GDAL reads",
        str(item): "has no GeoTIFF asset",
    }
    report = _index(tmp_path / "idx", settings, encoder, list(cases))
    assert report.rasters_indexed == 0
    got = [str(p) for p in report.problems]
    assert len(got) == len(cases)
    for arg, why in cases.items():
        line = next((g for g in got if remote.public(arg) in g or "no-visual" in g and
                     arg == str(item)), None)
        assert line is not None and why in line and "\n" not in line, (arg, got)
    # An item whose asset key is asked for and missing; on the command line, one line each.
    r = run_cli(str(item), f"{server.url}/missing.tif", f"{server.url}/forbidden/x.tif?sig=S9",
                "--asset", "visual", "--index", str(tmp_path / "cli"),
                "--config", str(OFFLINE_CONFIG), "-q", "-v")
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("skipped")]
    assert len(lines) == 3 and "Traceback" not in r.stderr
    assert "S9" not in r.stderr + r.stdout  # not even in GDAL's own warnings (-v)
    assert any("has no asset 'visual' (has: thumbnail)" in ln for ln in lines)
    assert any("HTTP 404" in ln for ln in lines)


def test_interrupted_remote_job_resumes_without_rereading(tmp_path, served, settings, encoder,
                                                          monkeypatch):
    """Stopped after its first commit, the job resumes from there (the source's identity
    is the same): strips of committed tiles are not read again, and the result equals an
    uninterrupted run. (GDAL's read-ahead may still fetch their bytes of a small file.)"""
    root, server = served
    url = f"{server.url}/naip_2009_cog.tif"
    small = dataclasses.replace(settings, job=dataclasses.replace(
        settings.job, commit_every=32, batch_size=32, workers=0))
    reads: list[int] = []
    real_read = RasterReader._read_masked

    def counted(self, info, window, grid):
        reads.append(window.width)
        return real_read(self, info, window, grid)

    monkeypatch.setattr(RasterReader, "_read_masked", counted)
    full = _index(tmp_path / "full", small, encoder, [url])
    full_reads = len(reads)

    job = IndexJob(tmp_path / "idx", small, encoder, progress=False, log=lambda _: None)
    real_commit = job._stream.__func__

    def stop_after_first_commit(self, writer, *a):
        original = writer.commit
        calls = []

        def commit():
            original()
            calls.append(1)
            if len(calls) == 1:
                raise KeyboardInterrupt
        writer.commit = commit
        try:
            return real_commit(self, writer, *a)
        finally:
            writer.commit = original

    job._stream = stop_after_first_commit.__get__(job)
    stopped = job.run([url])
    assert stopped.interrupted and 0 < stopped.tiles_written < full.tiles_written
    reads.clear()
    resumed = _index(tmp_path / "idx", small, encoder, [url])
    assert resumed.tiles_written == full.tiles_written - stopped.tiles_written
    assert resumed.rasters_indexed == 1 and resumed.rasters_replaced == 0
    assert 0 < len(reads) <= full_reads - 2  # the strips of the first commit: not read again
    a, b = tiles_by_key(tmp_path / "full"), tiles_by_key(tmp_path / "idx")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k][2], b[k][2])


def test_graft_reads_the_same_pixels_from_urls(tmp_path, served, settings):
    """GRAFT's raster catalogue and patch reader take URLs like the indexer does."""
    from training.pairs import raster_catalogue

    root, server = served
    infos, notes = raster_catalogue([f"{server.url}/naip_2009_cog.tif",
                                     f"{server.url}/missing.tif"], settings)
    assert len(infos) == 1 and len(notes) == 1 and "HTTP 404" in notes[0]
    far = infos[0]
    near = inspect_raster(RasterSource(str(root / "naip_2009_cog.tif")), settings.discovery,
                          settings.tiling)
    assert dataclasses.replace(far, path=near.path) == near
    w, s, e, n = near.lonlat_bounds
    import mercantile

    x0, y1 = mercantile.xy(w, s)
    x1, y0 = mercantile.xy(e, n)
    window = Window.square((x0 + x1) / 2 - 300, (y0 + y1) / 2 + 300, 2.5, 224)
    reader = RasterReader(settings.tiling)
    a, b = reader.read(near, window), reader.read(far, window)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    assert a.nodata_fraction == b.nodata_fraction


def test_url_forms():
    assert remote.gdal_path("https://h/a.tif?x=1") == "/vsicurl/https://h/a.tif?x=1"
    assert remote.gdal_path("s3://bucket/k/a.tif") == "/vsis3/bucket/k/a.tif"
    assert remote.gdal_path("gs://b/a.tif") == "/vsigs/b/a.tif"
    assert remote.gdal_path("/data/a.tif") == "/data/a.tif"
    assert remote.public("https://user:pw@h:8080/a.tif?sig=1#f") == "https://h:8080/a.tif"
    assert remote.redact("HTTP error on https://h/a.tif?token=abc: 500") == (
        "HTTP error on https://h/a.tif: 500")
    assert remote.is_remote("s3://b/k") and not remote.is_remote("/data/a.tif")
    with pytest.raises(InputError, match="URL scheme 'ftp2'"):
        remote.check_url("ftp2://h/a.tif")
    sources, problems = discover(["s3://bucket/a.tif", "gopher://x/y.tif"],
                                 DiscoverySettings())
    assert [s.path for s in sources] == ["s3://bucket/a.tif"] and len(problems) == 1


def _connections_to(port: int) -> int:
    """This process's open TCP connections to 127.0.0.1:port (Linux /proc)."""
    import os

    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    with open("/proc/self/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            remote_port = int(cols[2].split(":")[1], 16)
            if remote_port == port and cols[3] == "01" and cols[9] in inodes:  # ESTABLISHED
                n += 1
    return n


def test_no_http_connection_is_shared_with_the_reader_processes(served, settings):
    """GDAL keeps HTTP connections open; forked readers would inherit them, and two
    processes writing one socket stall until GDAL_HTTP_TIMEOUT (seen: 1 job in 3 waited
    60 s). The job closes them before it forks its readers."""
    from indexer.job.read import RasterPlan, TileDataset, tile_loader
    from indexer.rasters.grid import choose_zoom, raster_blocks

    root, server = served
    info = inspect_raster(RasterSource(f"{server.url}/naip_2009_cog.tif"), settings.discovery,
                          settings.tiling)
    reader = RasterReader(settings.tiling)
    zoom = choose_zoom(info.native_gsd_m, info.centre_lat, 64, settings.tiling)
    block = raster_blocks(info, zoom)[0]
    reader.read(info, Window.square(*_corner(block), 64))  # a read keeps a connection open
    assert _connections_to(server.port) >= 1
    job = dataclasses.replace(settings.job, workers=1)
    ds = TileDataset([RasterPlan(info, block, 0)], 64, settings.tiling, job)
    loader = tile_loader(ds, job)
    assert _connections_to(server.port) == 0
    assert sum(len(b) for b in loader) == block.count
    reader.close()


def _corner(block) -> tuple[float, float, float]:
    import mercantile

    b = mercantile.xy_bounds(block.x0, block.y0, block.zoom)
    return b.left, b.top, (b.right - b.left) / 64


def test_a_stac_checksum_is_the_identity_without_a_request(tmp_path, served, settings,
                                                           encoder):
    """An asset with `file:checksum` is known by it: a re-run sends not one request; a new
    checksum for the same URL replaces the tiles; an ItemCollection file of URL assets."""
    root, server = served

    def items(checksum: str):
        (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": [{
            "type": "Feature", "stac_version": "1.0.0", "id": "korea-1",
            "stac_extensions": ["https://stac-extensions.github.io/file/v2.1.0/schema.json"],
            "geometry": None, "properties": {"datetime": "2021-05-01T02:00:00Z"}, "links": [],
            "assets": {"image": {"href": f"{server.url}/korea_cog.tif",
                                 "type": "image/tiff; application=geotiff",
                                 "roles": ["data"], "file:checksum": checksum,
                                 "file:size": (root / "korea_cog.tif").stat().st_size}}}]}))
        return tmp_path / "items.json"

    first = _index(tmp_path / "idx", settings, encoder, [items("1220" + "ab" * 32)])
    assert first.rasters_indexed == 1
    entry = next(iter(IndexSnapshot.open(tmp_path / "idx").sources.values()))
    assert entry.remote_version == "checksum:1220" + "ab" * 32 and entry.item_id == "korea-1"
    assert entry.acquired.startswith("2021-05-01")
    server.clear_log()
    same = _index(tmp_path / "idx", settings, encoder, [items("1220" + "ab" * 32)])
    assert same.rasters_unchanged == 1 and server.log() == []  # not one request
    changed = _index(tmp_path / "idx", settings, encoder, [items("1220" + "cd" * 32)])
    assert changed.rasters_replaced == 1 and changed.rasters_indexed == 1


def test_a_stac_item_collection_by_url_resolves_relative_hrefs(tmp_path, served, settings):
    root, server = served
    (root / "catalog").mkdir(exist_ok=True)
    (root / "catalog" / "items.json").write_text(json.dumps({
        "type": "FeatureCollection", "features": [{
            "type": "Feature", "stac_version": "1.0.0", "id": "naip-1", "geometry": None,
            "properties": {"datetime": "2009-08-18T17:00:00Z", "platform": "naip"},
            "links": [], "assets": {"image": {"href": "../naip_2009_cog.tif",
                                              "type": "image/tiff; application=geotiff",
                                              "roles": ["data"]}}}]}))
    sources, problems = discover([f"{server.url}/catalog/items.json",
                                  f"{server.url}/catalog/none.json"], settings.discovery)
    assert [s.path for s in sources] == [f"{server.url}/naip_2009_cog.tif"]
    assert sources[0].item_id == "naip-1" and sources[0].sensor == "naip"
    assert len(problems) == 1 and "cannot" in str(problems[0]) and "none.json" in str(
        problems[0])
