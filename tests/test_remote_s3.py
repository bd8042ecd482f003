"""s3:// sources through GDAL's /vsis3/ against a real S3 API on 127.0.0.1 (moto's server):
credentials and endpoint from the environment only, identity from the object's ETag (no
download), the same tiles and vectors as the local files, a missing key in one line."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.rasters import remote
from indexer.store.snapshot import IndexSnapshot
from tests.helpers import SHARED_GEOTIFF
from tests.servers import free_port, make_cogs
from tests.test_remote import _index, tiles_by_key

moto_server = pytest.importorskip("moto.server", reason="moto (the test extra) is not installed")
boto3 = pytest.importorskip("boto3", reason="boto3 (with moto, the test extra) is not installed")
pytestmark = pytest.mark.skipif(not SHARED_GEOTIFF.is_dir(),
                                reason="../shared/data/geotiff is absent (no real rasters)")

NAMES = ["korea_cog.tif", "naip_2009_cog.tif"]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    root = make_cogs(tmp_path_factory.mktemp("cogs"))
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        keys = {"AWS_ACCESS_KEY_ID": "satfind-test", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
                "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                          aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
                          region_name=keys["AWS_DEFAULT_REGION"])
        s3.create_bucket(Bucket="archive")
        for n in NAMES:
            s3.upload_file(str(root / n), "archive", f"scenes/{n}")
        # GDAL's S3 settings, as a user sets them: in the environment.
        env = {**keys, "AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO",
               "AWS_VIRTUAL_HOSTING": "FALSE"}
        yield root, env
    finally:
        server.stop()


def test_s3_objects_index_like_the_local_files(tmp_path, bucket, settings, encoder,
                                               monkeypatch):
    root, env = bucket
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    urls = [f"s3://archive/scenes/{n}" for n in NAMES]
    ident = remote.identity(urls[0], settings.remote)
    assert ident.version.startswith("etag:") and ident.size == (root / NAMES[0]).stat().st_size
    local = _index(tmp_path / "local", settings, encoder, [root / n for n in NAMES])
    far = _index(tmp_path / "s3", settings, encoder, [*urls, "s3://archive/scenes/none.tif"])
    assert far.rasters_indexed == local.rasters_indexed == len(NAMES)
    assert [str(p) for p in far.problems] == [
        "s3://archive/scenes/none.tif: The specified key does not exist."]
    a, b = tiles_by_key(tmp_path / "local"), tiles_by_key(tmp_path / "s3")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        np.testing.assert_array_equal(a[k][2], b[k][2])
    sources = {e.path for e in IndexSnapshot.open(tmp_path / "s3").sources.values()}
    assert sources == set(urls)
    # The secret is nowhere in the index.
    assert not any(env["AWS_SECRET_ACCESS_KEY"] in p.read_text(errors="ignore")
                   for p in (tmp_path / "s3").glob("*.json"))
    again = _index(tmp_path / "s3", settings, encoder, urls)
    assert again.rasters_unchanged == len(NAMES) and again.tiles_written == 0
