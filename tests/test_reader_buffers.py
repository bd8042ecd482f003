"""What reader processes do per tile besides the warp (issue 12): the thumbnail; the
valid-pixel rule's integer path."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from indexer.config import TilingSettings
from indexer.job.read import jpeg_thumbnail, thumbnail_bands
from indexer.rasters.scaling import valid_mask


def _texture(px: int, seed: int) -> np.ndarray:
    """uint8 [3, px, px] like imagery: detail at every scale (noise smoothed at 4 sizes),
    the bands correlated."""
    rng = np.random.default_rng(seed)
    grey = np.zeros((px, px), np.float32)
    for cell in (3, 8, 20, 60):
        n = max(2, px // cell)
        grey += cv2.resize(rng.normal(0, 25, (n, n)).astype(np.float32), (px, px),
                           interpolation=cv2.INTER_CUBIC)
    out = np.stack([grey * gain + offset for gain, offset in ((1.0, 140), (0.8, 120),
                                                               (0.6, 90))])
    return np.clip(out, 0, 255).astype(np.uint8)


def _area_mean(rgb: np.ndarray, size: int) -> np.ndarray:
    """The exact area mean (PIL's BOX), [3, size, size] float."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(b)).resize(
        (size, size), Image.Resampling.BOX), dtype=np.float64) for b in rgb])


@pytest.mark.parametrize(("px", "within"), [(224, 2.5), (256, 0.5), (512, 0.5)])
def test_a_thumbnail_is_the_area_mean_of_its_tile(px, within):
    """224 -> 128 px (bilinear: ~2 grey levels from the exact area mean on an imagery-like
    texture), 256 and 512 -> 128 (whole-factor area means: rounding only). Sampling the
    nearest pixel instead (aliased) would be 5-13 grey levels off."""
    rgb = _texture(px, seed=px)
    area = _area_mean(rgb, 128)
    got = np.stack(thumbnail_bands(rgb, 128)).astype(np.float64)
    assert np.abs(got - area).mean() < within
    nearest = np.stack([cv2.resize(b, (128, 128), interpolation=cv2.INTER_NEAREST)
                        for b in rgb])
    assert np.abs(nearest - area).mean() > 2 * within


@pytest.mark.parametrize("px", [224, 64])
def test_a_thumbnail_jpeg_keeps_its_pixels_and_channels(px):
    """A JPEG of the asked size, its decoded pixels within JPEG's error of the thumbnail's
    (in R, G, B order: a tile of three flat colours keeps them); 64 px tiles are enlarged."""
    rgb = _texture(px, seed=px)
    img = Image.open(io.BytesIO(jpeg_thumbnail(rgb, 128, 95)))
    assert img.format == "JPEG" and img.size == (128, 128) and img.mode == "RGB"
    want = np.stack(thumbnail_bands(rgb, 128), axis=2).astype(np.float64)
    assert np.abs(np.asarray(img, dtype=np.float64) - want).mean() < 4  # JPEG at 95: ~2.5
    flat = np.stack([np.full((px, px), v, np.uint8) for v in (200, 100, 30)])
    got = np.asarray(Image.open(io.BytesIO(jpeg_thumbnail(flat, 128, 95))), dtype=np.float64)
    np.testing.assert_allclose(got.mean(axis=(0, 1)), (200, 100, 30), atol=2)


def test_a_thumbnail_of_a_strip_view_is_the_thumbnail_of_the_tile():
    strip = np.ascontiguousarray(_texture(224 * 3, seed=1)[:, :224, :])  # 3 tiles wide
    tiles = strip.reshape(3, 224, 3, 224).transpose(2, 0, 1, 3)  # as TileDataset cuts them
    assert not tiles[1].flags["C_CONTIGUOUS"]
    assert jpeg_thumbnail(tiles[1], 128, 85) == jpeg_thumbnail(np.ascontiguousarray(tiles[1]),
                                                               128, 85)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "float32"])
def test_zero_is_nodata_means_zero_in_every_band_for_every_type(dtype):
    rng = np.random.default_rng(3)
    lo = -3 if np.dtype(dtype).kind in "if" else 0
    data = rng.integers(lo, 3, size=(3, 40, 50)).astype(dtype)  # many zeros, some all-zero
    mask = rng.random((40, 50)) > 0.1
    want = mask & np.any(data != 0, axis=0)
    assert (~want & mask).any() and want.any()
    np.testing.assert_array_equal(valid_mask(data, mask, TilingSettings(zero_is_nodata=True)),
                                  want)
    np.testing.assert_array_equal(valid_mask(data, mask, TilingSettings(zero_is_nodata=False)),
                                  mask)
