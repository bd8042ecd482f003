"""The archive as XYZ map tiles (256 px, web mercator): the index's own thumbnails, newest
acquisition on top, and query scores as a colour-mapped overlay. A map tile that would draw
many index tiles is built from its four children (each cached), so low zooms cost four
renders, not thousands of JPEG decodes; higher zooms upsample the thumbnails.

Placement is exact integer tile arithmetic: index tile (zt, xt, yt) spans
[xt * 2^(Z-zt), (xt+1) * 2^(Z-zt)) in map-zoom-Z tile units."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from search.lru import LRU

PX = 256
DIRECT_MAX = 64  # index tiles drawn directly; more -> four children, downsampled
BLACK_IS_EMPTY = True  # thumbnails carry nodata as black (tiling.zero_is_nodata)
_UNSEEN = object()


def covering(tiles, ids: np.ndarray, z: int, x: int, y: int) -> np.ndarray:
    """The tiles (of `ids`) whose cell overlaps map tile z/x/y."""
    tz, tx, ty = (c[ids] for c in tiles.cells())
    f = np.exp2(z - tz.astype(np.float64))
    ax, ay = tx * f - x, ty * f - y
    hit = (ax + f > 0) & (ax < 1) & (ay + f > 0) & (ay < 1)
    return ids[hit]


def _rect(tz: int, tx: int, ty: int, z: int, x: int, y: int) -> tuple[float, ...]:
    f = 2.0 ** (z - tz)
    x0, y0 = (tx * f - x) * PX, (ty * f - y) * PX
    return x0, y0, x0 + f * PX, y0 + f * PX


class Mosaic:
    def __init__(self, snapshot_thumbnails, cache_tiles: int = 256):
        """`snapshot_thumbnails(snap, ids) -> {id: jpeg}`."""
        self._thumbs = snapshot_thumbnails
        self._cache = LRU(cache_tiles)  # key -> RGBA array, or None (nothing there)

    def render(self, loaded, ids, key: tuple, z: int, x: int, y: int) -> np.ndarray | None:
        """RGBA uint8 [256, 256, 4] of map tile z/x/y from the index tiles `ids` (already
        filtered; or a function giving them, called on a cache miss only; `key` names that
        filter and the snapshot), None if none."""
        full = (*key, z, x, y)
        img = self._cache.get(full, _UNSEEN)
        if img is not _UNSEEN:
            return img
        pos = covering(loaded.tiles, ids() if callable(ids) else ids, z, x, y)
        if not len(pos):
            img = None
        elif len(pos) > DIRECT_MAX and z < int(loaded.tiles.cells()[0][pos].max()):
            img = self._from_children(loaded, pos, key, z, x, y)
        else:
            img = self._draw(loaded, pos, z, x, y)
        self._cache.put(full, img)
        return img

    def _from_children(self, loaded, pos, key, z, x, y) -> np.ndarray | None:
        canvas = np.zeros((2 * PX, 2 * PX, 4), np.uint8)
        drawn = False
        for dy in (0, 1):
            for dx in (0, 1):
                child = self.render(loaded, pos, key, z + 1, 2 * x + dx, 2 * y + dy)
                if child is not None:
                    canvas[dy * PX:(dy + 1) * PX, dx * PX:(dx + 1) * PX] = child
                    drawn = True
        if not drawn:
            return None
        return downsample(canvas)

    def _draw(self, loaded, pos, z, x, y) -> np.ndarray | None:
        tiles = loaded.tiles
        order = np.lexsort((pos, tiles.seconds[pos]))  # newest drawn last
        pos = pos[order]
        jpegs = self._thumbs(loaded.snap, pos)
        tz, tx, ty = (c[pos] for c in tiles.cells())
        canvas = Image.new("RGBA", (PX, PX), (0, 0, 0, 0))
        drawn = False
        for i, tid in enumerate(pos.tolist()):
            data = jpegs.get(tid)
            if data is None:
                continue
            thumb = rgba_thumbnail(data)
            x0, y0, x1, y1 = _rect(int(tz[i]), int(tx[i]), int(ty[i]), z, x, y)
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, PX), min(y1, PX)
            dw, dh = round(cx1) - round(cx0), round(cy1) - round(cy0)
            if dw <= 0 or dh <= 0:
                continue
            sx = thumb.width / (x1 - x0)
            sy = thumb.height / (y1 - y0)
            box = ((cx0 - x0) * sx, (cy0 - y0) * sy, (cx1 - x0) * sx, (cy1 - y0) * sy)
            part = thumb.resize((dw, dh), Image.Resampling.BOX if sx >= 1 else
                                Image.Resampling.BILINEAR, box=box)
            canvas.alpha_composite(part, (round(cx0), round(cy0)))
            drawn = True
        return np.asarray(canvas) if drawn else None


def rgba_thumbnail(jpeg: bytes) -> Image.Image:
    """A stored thumbnail as RGBA, its black (nodata) pixels transparent."""
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    if BLACK_IS_EMPTY:
        alpha[(rgb.max(axis=2) == 0)] = 0
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def downsample(canvas: np.ndarray) -> np.ndarray:
    """2x box downsample of an RGBA canvas (colour weighted by alpha)."""
    return np.asarray(Image.fromarray(canvas, "RGBA").resize(
        (canvas.shape[1] // 2, canvas.shape[0] // 2), Image.Resampling.BOX))


def encode(img: np.ndarray, fmt: str, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(img, "RGBA").save(buf, format="PNG")
    else:  # JPEG has no alpha: empty pixels black
        rgb = (img[..., :3].astype(np.float32) * (img[..., 3:] / 255.0)).round().astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --- score overlay ------------------------------------------------------------------------
# A perceptual ramp (dark blue -> teal -> yellow), interpolated to 256 entries.
_ANCHORS = np.array([[48, 18, 59], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)
RAMP = np.stack([np.interp(np.linspace(0, 3, 256), np.arange(4), _ANCHORS[:, c])
                 for c in range(3)], axis=1).round().astype(np.uint8)


def ramp_hex(stops: int = 9) -> list[str]:
    """`stops` evenly spaced colours of RAMP, low to high, as #rrggbb (the entries
    score_overlay paints at levels 0, 1/(stops-1), ..., 1)."""
    at = (np.linspace(0, 1, stops) * 255).round().astype(np.int64)
    return ["#{:02x}{:02x}{:02x}".format(*(int(c) for c in RAMP[i])) for i in at]


def score_overlay(tiles, ids: np.ndarray, scores: np.ndarray, z: int, x: int, y: int,
                  lo: float, hi: float, alpha: int = 190, threshold: float | None = None
                  ) -> np.ndarray | None:
    """RGBA [256, 256, 4]: each index tile's footprint filled with its score's colour
    (scores scaled from lo..hi); where tiles overlap (several dates), the highest wins.
    Tiles scoring below `threshold` are not drawn (transparent there, unless another
    date of the place passes)."""
    sel = np.isin(ids, covering(tiles, ids, z, x, y))
    if threshold is not None:
        sel &= scores.astype(np.float64) >= threshold
    if not sel.any():
        return None
    pos, sc = ids[sel], scores[sel]
    level = np.clip((sc - lo) / max(hi - lo, 1e-9), 0, 1)
    best = np.full((PX, PX), -1.0, np.float32)
    tz, tx, ty = (c[pos] for c in tiles.cells())
    for i in range(len(pos)):
        x0, y0, x1, y1 = _rect(int(tz[i]), int(tx[i]), int(ty[i]), z, x, y)
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(max(int(np.ceil(x1)), c0 + 1), PX), min(max(int(np.ceil(y1)), r0 + 1), PX)
        np.maximum(best[r0:r1, c0:c1], level[i], out=best[r0:r1, c0:c1])
    img = np.zeros((PX, PX, 4), np.uint8)
    on = best >= 0
    img[on, :3] = RAMP[(best[on] * 255).round().astype(np.int64)]
    img[on, 3] = alpha
    return img
