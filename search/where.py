"""Where in one tile a query matches: the encoder's patch-token similarity map (the
pixel-level alignment GRAFT trains), with its peak in lon/lat and a transparent overlay."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from search.mosaic import RAMP


@dataclass
class WhereMap:
    tile_id: int
    grid: np.ndarray  # [g, g] cosine similarity per patch
    z: int
    x: int
    y: int
    pixels: str  # "source" (read from the raster) or "thumbnail"
    size: int  # overlay size in pixels (the stored thumbnail's)

    def peak(self) -> tuple[float, float]:
        """lon, lat of the centre of the best-matching patch."""
        g = self.grid.shape[0]
        i, j = np.unravel_index(int(np.argmax(self.grid)), self.grid.shape)
        n = 2.0 ** self.z
        fx, fy = self.x + (j + 0.5) / g, self.y + (i + 0.5) / g
        lon = fx / n * 360.0 - 180.0
        lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * fy / n))))
        return lon, lat

    def to_json(self) -> str:
        lon, lat = self.peak()
        i, j = np.unravel_index(int(np.argmax(self.grid)), self.grid.shape)
        return json.dumps({"tile_id": self.tile_id, "grid": self.grid.round(5).tolist(),
                           "peak": {"row": int(i), "col": int(j), "lon": lon, "lat": lat,
                                    "score": float(self.grid.max())},
                           "pixels": self.pixels})

    def png(self) -> bytes:
        """The map scaled min..max, colour-mapped, alpha growing with the score."""
        g = self.grid
        level = (g - g.min()) / max(float(g.max() - g.min()), 1e-9)
        rgba = np.zeros((*g.shape, 4), np.uint8)
        rgba[..., :3] = RAMP[(level * 255).round().astype(np.int64)]
        rgba[..., 3] = (60 + 160 * level).round().astype(np.uint8)
        img = Image.fromarray(rgba, "RGBA").resize((self.size, self.size),
                                                  Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()


def tile_pixels(row: dict, recipe, thumbnail: bytes | None) -> tuple[np.ndarray, str]:
    """uint8 [3, px, px] of the tile, read from its source raster with the index's tile
    recipe; the stored thumbnail (upsampled) when the source cannot be read."""
    from indexer.config import DiscoverySettings
    from indexer.rasters.grid import tile_window
    from indexer.rasters.inspect import inspect_raster
    from indexer.rasters.reader import RasterReader
    from indexer.rasters.sources import RasterSource

    tiling = recipe.tiling()
    try:
        info = inspect_raster(RasterSource(row["source"]), DiscoverySettings(), tiling)
        reader = RasterReader(tiling, max_open=1)
        try:
            patch = reader.read(info, tile_window(row["z"], row["x"], row["y"],
                                                  recipe.tile_px))
        finally:
            reader.close()
        return patch.rgb, "source"
    except Exception:  # missing file, unreachable URL, GDAL errors: the thumbnail will do
        if thumbnail is None:
            raise
    img = Image.open(io.BytesIO(thumbnail)).convert("RGB").resize(
        (recipe.tile_px, recipe.tile_px), Image.Resampling.BICUBIC)
    return np.asarray(img).transpose(2, 0, 1).copy(), "thumbnail"
