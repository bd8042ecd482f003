"""Inspecting a raster stored in many blocks and without overviews reads a sample of its
blocks, not all of them, where the scaling needs no statistics (inspect.sampled_blocks)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import rasterio

import indexer.rasters.inspect as inspect
from indexer.errors import InputError
from indexer.rasters.inspect import inspect_raster
from indexer.rasters.sources import RasterSource
from tests.helpers import make_raster

SIDE, BLOCK = 2048, 128  # 16 x 16 blocks: far more than the sample's 4 x 4
TILED = {"tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate"}


@pytest.fixture
def bytes_read(monkeypatch):
    """Every raster the test opens is read through Python: returns the byte count so far."""
    count = [0]

    class Counted(io.FileIO):
        def read(self, size=-1):
            got = super().read(size)
            count[0] += len(got)
            return got

        def readinto(self, buf):
            got = super().readinto(buf)
            count[0] += got or 0
            return got

    real_open = rasterio.open
    monkeypatch.setattr(rasterio, "open", lambda path, *a, **kw: real_open(
        path, *a, opener=lambda p, mode="rb": Counted(p, mode), **kw))
    return lambda: count[0]


def _inspect(path, settings):
    return inspect_raster(RasterSource(str(path)), settings.discovery, settings.tiling)


def _decimated_only(monkeypatch):
    monkeypatch.setattr(inspect, "sampled_blocks", lambda src: None)


def test_a_tiled_uint8_raster_is_checked_on_a_sample_of_its_blocks(tmp_path, settings,
                                                                   bytes_read, monkeypatch):
    path = make_raster(tmp_path / "r.tif", size=SIDE, **TILED)  # noise: ~no compression
    size = path.stat().st_size
    info = _inspect(path, settings)
    sampled = bytes_read()
    assert sampled < 0.1 * size  # 16 of 256 blocks, the header and the block offsets
    # The decimated read it replaces decodes every block, and finds the same raster.
    _decimated_only(monkeypatch)
    before = bytes_read()
    assert _inspect(path, settings) == info
    assert bytes_read() - before > 0.9 * size


def test_percentile_statistics_still_read_the_whole_raster(tmp_path, settings, bytes_read,
                                                           monkeypatch):
    """uint16 (percentile scaling): the statistics, and so the tiles of a raster resumed by a
    later run, stay what the decimated read gives."""
    path = make_raster(tmp_path / "r.tif", size=SIDE, dtype="uint16", **TILED)
    info = _inspect(path, settings)
    assert bytes_read() > 0.9 * path.stat().st_size
    _decimated_only(monkeypatch)
    assert _inspect(path, settings) == info


def test_the_sample_spreads_over_the_raster_and_takes_its_corners(tmp_path):
    path = make_raster(tmp_path / "r.tif", size=SIDE + 50, **TILED)  # a partial last block
    with rasterio.open(path) as src:
        blocks = inspect.sampled_blocks(src)
    assert len(blocks) == inspect.SAMPLE_GRID ** 2
    assert (blocks[0].col_off, blocks[0].row_off) == (0, 0)
    last = blocks[-1]
    assert (last.col_off + last.width, last.row_off + last.height) == (SIDE + 50, SIDE + 50)
    assert all(b.col_off % BLOCK == 0 and b.row_off % BLOCK == 0 for b in blocks)
    # Strips, a pyramid, few blocks: the decimated read costs little there; it stays.
    strips = make_raster(tmp_path / "s.tif", size=SIDE, compress="deflate")
    few = make_raster(tmp_path / "f.tif", size=512, **TILED)
    pyramid = make_raster(tmp_path / "p.tif", size=SIDE, **TILED)
    with rasterio.open(pyramid, "r+") as dst:
        dst.build_overviews([2, 4, 8])
    for other in (strips, few, pyramid):
        with rasterio.open(other) as src:
            assert inspect.sampled_blocks(src) is None, other.name


def test_an_overview_of_many_blocks_is_sampled_too(tmp_path, settings, bytes_read,
                                                   monkeypatch):
    """Only a 2x overview (as the shared NAIP scenes have): the decimated read decodes every
    block of it, a fifth of the file; the sample 16 blocks of the raster."""
    path = make_raster(tmp_path / "r.tif", size=SIDE, **TILED)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2])
    with rasterio.open(path) as src:
        assert len(inspect.sampled_blocks(src)) == inspect.SAMPLE_GRID ** 2
    size = path.stat().st_size
    before = bytes_read()
    info = _inspect(path, settings)
    assert bytes_read() - before < 0.08 * size
    _decimated_only(monkeypatch)
    before = bytes_read()
    assert _inspect(path, settings) == info
    assert bytes_read() - before > 0.18 * size


def test_valid_pixels_the_sample_misses_are_found_by_the_whole_read(tmp_path, settings,
                                                                    monkeypatch):
    """Only one block that the sample skips holds pixels: the raster is not called empty
    (the decimated read is the fallback); a raster wholly nodata still is."""
    data = np.zeros((3, SIDE, SIDE), dtype=np.uint8)
    data[:, 2 * BLOCK:3 * BLOCK, 2 * BLOCK:3 * BLOCK] = 77  # block (2, 2): not sampled
    path = make_raster(tmp_path / "r.tif", size=SIDE, data=data, nodata=0, **TILED)
    with rasterio.open(path) as src:
        assert all((b.col_off, b.row_off) != (2 * BLOCK, 2 * BLOCK)
                   for b in inspect.sampled_blocks(src))
    info = _inspect(path, settings)
    empty = make_raster(tmp_path / "e.tif", size=SIDE, nodata=0,
                        data=np.zeros((3, SIDE, SIDE), dtype=np.uint8), **TILED)
    with pytest.raises(InputError, match="entirely nodata"):
        _inspect(empty, settings)
    _decimated_only(monkeypatch)
    assert _inspect(path, settings) == info


def test_a_corrupt_sampled_block_is_a_one_line_error(tmp_path, settings):
    """The sample still checks that pixels decode: the last block (the end of the file, what
    a cut download loses) is in it."""
    path = make_raster(tmp_path / "r.tif", size=SIDE, **TILED)
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item(f"BLOCK_OFFSET_{SIDE // BLOCK - 1}_{SIDE // BLOCK - 1}",
                                      "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 64] = b"\xff" * 64  # not a DEFLATE stream any more
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="cannot read pixels"):
        _inspect(path, settings)
