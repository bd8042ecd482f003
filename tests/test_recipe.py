"""The tile recipe: recorded in the manifest beside the encoder identity, enforced on the
next indexing run, and used (not the server's config) to prepare query images; indexes
written before it keep opening."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from indexer.config import TileRecipe
from indexer.errors import IndexError_
from indexer.job.pipeline import IndexJob
from indexer.store.snapshot import IndexSnapshot
from search import engine as engine_mod
from search.engine import SearchEngine
from search.settings import ServeConfig
from tests.helpers import make_raster


def _tiling(settings, **kw):
    return dataclasses.replace(settings, tiling=dataclasses.replace(settings.tiling, **kw))


@pytest.fixture
def index(tmp_path, settings, encoder):
    make_raster(tmp_path / "a" / "scene.tif", size=160)
    IndexJob(tmp_path / "idx", settings, encoder, progress=False, log=lambda m: None).run(
        [str(tmp_path / "a")])
    return tmp_path / "idx"


def test_the_manifest_records_the_recipe(index, settings, encoder):
    recipe = IndexSnapshot.open(index).recipe
    assert recipe == TileRecipe.from_tiling(settings.tiling, encoder.image_size)
    on_disk = json.loads((index / "manifest.json").read_text())["recipe"]
    assert on_disk["bands"] == list(settings.tiling.bands)
    assert on_disk["tile_px"] == encoder.image_size
    assert on_disk["target_gsd_m"] == settings.tiling.target_gsd_m


def test_another_recipe_is_refused_on_the_next_run(index, tmp_path, settings, encoder):
    make_raster(tmp_path / "b" / "other.tif", size=160, seed=3)
    other = _tiling(settings, bands=(3, 2, 1))
    job = IndexJob(index, other, encoder, progress=False, log=lambda m: None)
    with pytest.raises(IndexError_, match=r"another tile recipe \(bands \(1, 2, 3\)"):
        job.run([str(tmp_path / "b")])
    assert IndexSnapshot.open(index).recipe.bands == (1, 2, 3)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_query_images_use_the_index_recipe_not_the_server_config(index, settings, encoder,
                                                                   monkeypatch):
    seen = []
    real = engine_mod.decode_query_image
    monkeypatch.setattr(engine_mod, "decode_query_image",
                        lambda data, recipe, *a: (seen.append(recipe), real(data, recipe, *a))[1])
    server = _tiling(settings, bands=(3, 2, 1), resampling="nearest")
    eng = SearchEngine(index, ServeConfig(server), encoder=encoder)
    eng.image_vector(_png())
    assert seen == [IndexSnapshot.open(index).recipe]
    assert seen[0].bands == (1, 2, 3) and seen[0].resampling == settings.tiling.resampling


def test_an_index_without_a_recipe_opens_with_a_notice(index, settings, encoder, caplog,
                                                       monkeypatch):
    m = json.loads((index / "manifest.json").read_text())
    del m["recipe"]  # as written before recipes were recorded
    (index / "manifest.json").write_text(json.dumps(m))
    assert IndexSnapshot.open(index).recipe is None
    seen = []
    real = engine_mod.decode_query_image
    monkeypatch.setattr(engine_mod, "decode_query_image",
                        lambda data, recipe, *a: (seen.append(recipe), real(data, recipe, *a))[1])
    eng = SearchEngine(index, ServeConfig(settings), encoder=encoder)
    with caplog.at_level(logging.WARNING, logger="satfind.search"):
        eng.image_vector(_png())
        eng.image_vector(_png())
    notices = [r for r in caplog.records if "records no tile recipe" in r.getMessage()]
    assert len(notices) == 1  # said once, in one line
    # the server's [tiling], with the warp such an index's tiles went through (GDAL's)
    gdal = dataclasses.replace(settings.tiling, warp="gdal")
    assert seen[0] == TileRecipe.from_tiling(gdal, encoder.image_size)
    # the next indexing run that adds tiles records the recipe it cuts with
    make_raster(index.parent / "b" / "new.tif", size=160, seed=5)
    IndexJob(index, settings, encoder, progress=False, log=lambda m: None).run(
        [str(index.parent / "b")])
    assert IndexSnapshot.open(index).recipe == seen[0]
