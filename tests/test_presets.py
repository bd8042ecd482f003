"""Named encoder presets, loaded exactly right (offline, no downloads).

For every preset a random-weight file is written in that preset's published layout (plain
open_clip state dict; RS5M training keys; an open_clip training checkpoint inside a zip; a
Lightning checkpoint with Hugging Face CLIP vision keys built by transformers from a
`CLIPVisionConfig`), placed where the preset looks for it, and loaded through the preset's
real path (`SatelliteEncoder(EncoderSpec(preset=...))`). The loaded model's image and text
embeddings must equal those of a model built directly from the same tensors, so the key
mapping is checked, not merely a strict load. Every tensor is perturbed first, so swapped
LayerNorms (all ones at init) would show.

The tests use the small `satfind-tiny` architecture in the preset's place; the published
architectures are checked on PyTorch's meta device (keys, shapes, activation), which costs
no memory.
"""

from __future__ import annotations

import dataclasses
import http.server
import threading
import zipfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from encoder import presets as P
from encoder.build import activations
from encoder.download import local_path
from encoder.identity import EncoderError, EncoderSpec
from encoder.layouts import graft_keys
from encoder.model import SatelliteEncoder
from encoder.tokens import image_tokens
from tests.preset_files import TINY, TINY_PX, tiny, write_layout


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    d = tmp_path / "weights"
    monkeypatch.setenv("SATFIND_WEIGHTS_DIR", str(d))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return d


def reference(quick_gelu: bool, seed: int) -> torch.nn.Module:
    """An open_clip model with every tensor perturbed (LayerNorms no longer all ones)."""
    torch.manual_seed(seed)
    m = open_clip.create_model(TINY, force_quick_gelu=quick_gelu).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def tiles(n: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, TINY_PX, TINY_PX), np.uint8)


TEXTS = ["a river", "a solar farm next to a river", "a quarry"]


def same_embeddings(enc: SatelliteEncoder, ref: torch.nn.Module) -> None:
    x = tiles()
    with torch.no_grad():
        want_img = F.normalize(ref.encode_image(enc.prepare(x)), dim=-1).numpy()
        want_txt = F.normalize(ref.encode_text(enc.tokenizer(TEXTS)), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_images(x), want_img, atol=1e-5)
    np.testing.assert_allclose(enc.encode_text(TEXTS), want_txt, atol=1e-5)


OPEN_CLIP_LIKE = [n for n, p in P.PRESETS.items() if p.layout != P.GRAFT_LIGHTNING]


@pytest.mark.parametrize("name", OPEN_CLIP_LIKE)
def test_each_preset_loads_its_published_layout_exactly(name, weights_dir, monkeypatch):
    preset = tiny(monkeypatch, name)
    ref = reference(preset.activation == "quick_gelu", seed=7)
    write_layout(preset, {k: v.clone() for k, v in ref.state_dict().items()},
                 local_path(preset))
    enc = SatelliteEncoder(EncoderSpec(preset=name, device="cpu"))
    assert activations(enc.model) == {preset.activation}
    assert enc.identity.preset == name and enc.preset is preset
    same_embeddings(enc, ref)
    # the same file given as encoder.checkpoint loads the same weights
    enc2 = SatelliteEncoder(EncoderSpec(preset=name, checkpoint=str(local_path(preset))))
    assert enc2.identity == enc.identity


def test_a_training_zip_prefers_the_last_epoch_and_is_extracted_once(weights_dir, monkeypatch):
    preset = tiny(monkeypatch, "skyclip-vit-b-32")
    ref = reference(False, seed=3)
    path = local_path(preset)
    write_layout(preset, dict(ref.state_dict()), path)
    older = reference(False, seed=4)
    with zipfile.ZipFile(path, "a") as z:  # an earlier epoch beside it is not taken
        tmp = path.parent / "e5.pt"
        torch.save({"state_dict": older.state_dict()}, tmp)
        z.write(tmp, f"{path.stem}/epoch_5.pt")
    same_embeddings(SatelliteEncoder(EncoderSpec(preset=preset.name)), ref)
    extracted = path.with_name(path.name + ".d") / "epoch_20.pt"
    assert extracted.is_file()
    stamp = extracted.stat().st_mtime_ns
    SatelliteEncoder(EncoderSpec(preset=preset.name))
    assert extracted.stat().st_mtime_ns == stamp  # not extracted again


@pytest.mark.parametrize("name", ["remoteclip-vit-b-32", "skyclip-vit-l-14"])
def test_a_quick_gelu_preset_uses_quick_gelu(name, weights_dir, monkeypatch):
    """Weights fine-tuned from OpenAI CLIP are loaded into a QuickGELU model; the same
    tensors under GELU give other embeddings, so a silent GELU build would fail above."""
    preset = tiny(monkeypatch, name)
    assert preset.activation == "quick_gelu"
    ref = reference(True, seed=11)
    write_layout(preset, dict(ref.state_dict()), local_path(preset))
    enc = SatelliteEncoder(EncoderSpec(preset=name))
    assert activations(enc.model) == {"quick_gelu"}
    gelu = open_clip.create_model(TINY).eval()
    gelu.load_state_dict(ref.state_dict())
    with torch.no_grad():
        x = enc.prepare(tiles())
        assert not torch.allclose(gelu.encode_image(x), ref.encode_image(x), atol=1e-4)


def test_a_build_with_the_wrong_activation_is_refused(weights_dir, monkeypatch):
    import encoder.build as build

    preset = tiny(monkeypatch, "remoteclip-vit-b-32")
    write_layout(preset, dict(reference(True, 1).state_dict()), local_path(preset))
    real = open_clip.create_model
    monkeypatch.setattr(build.open_clip, "create_model",  # an open_clip that drops the flag
                        lambda *a, force_quick_gelu=False, **k: real(*a, **k))
    with pytest.raises(EncoderError, match="built with gelu but its weights were trained "
                                           "with quick_gelu"):
        SatelliteEncoder(EncoderSpec(preset=preset.name))


def test_openai_tag_models_get_quick_gelu():
    """`model = "satfind-tiny"`-style specs: an open_clip `openai` tag means QuickGELU (open_clip
    itself only warns and builds GELU)."""
    from encoder.build import _from_open_clip

    with pytest.raises(EncoderError):  # offline: the download fails, but after the decision
        _from_open_clip(EncoderSpec(model="ViT-B-16", pretrained="openai"))
    tag = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    assert tag["quick_gelu"] is True


# --- GRAFT: Lightning checkpoint with a Hugging Face CLIP vision tower ---------------------
def _hf_tiny_config():
    from transformers import CLIPVisionConfig

    cfg = open_clip.get_model_config(TINY)
    v = cfg["vision_cfg"]
    return CLIPVisionConfig(
        hidden_size=v["width"], intermediate_size=4 * v["width"],
        num_hidden_layers=v["layers"], num_attention_heads=v["width"] // v["head_width"],
        image_size=v["image_size"], patch_size=v["patch_size"], projection_dim=cfg["embed_dim"],
        hidden_act="quick_gelu", layer_norm_eps=1e-5)


def _graft_checkpoint(path: Path, seed: int = 5):
    """A GRAFT-layout Lightning checkpoint from a transformers model; returns the model and
    the projector so the test can run them directly."""
    pytest.importorskip("transformers")
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    hf = CLIPVisionModelWithProjection(_hf_tiny_config()).eval()
    width, dim = hf.config.hidden_size, hf.config.projection_dim
    projector = torch.nn.Sequential(torch.nn.LayerNorm(width),
                                    torch.nn.Linear(width, dim, bias=False)).eval()
    with torch.no_grad():
        for p in [*hf.parameters(), *projector.parameters()]:
            p.add_(torch.randn_like(p) * 0.05)
    state = {f"satellite_image_backbone.{k}": v for k, v in hf.state_dict().items()}
    state.update({f"projector.{k}": v for k, v in projector.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 9, "global_step": 1000, "pytorch-lightning_version": "2.1.0",
                "state_dict": state, "hyper_parameters": {"lr": 1e-5, "temp": True},
                "optimizer_states": [], "lr_schedulers": []}, path)
    return hf, projector


@pytest.mark.parametrize("name", ["graft-naip", "graft-sentinel2"])
def test_graft_lightning_checkpoint_equals_the_hugging_face_model(name, weights_dir, tmp_path,
                                                                 monkeypatch):
    preset = tiny(monkeypatch, name)
    text = tiny(monkeypatch, preset.text_from)  # the text tower: OpenAI CLIP's file
    text_ref = reference(True, seed=2)
    write_layout(text, dict(text_ref.state_dict()), local_path(text))
    ckpt = tmp_path / "graft.ckpt"
    hf, projector = _graft_checkpoint(ckpt)

    with pytest.raises(EncoderError, match="publish no weights file .* encoder.checkpoint"):
        SatelliteEncoder(EncoderSpec(preset=name))
    enc = SatelliteEncoder(EncoderSpec(preset=name, checkpoint=str(ckpt)))
    assert activations(enc.model) == {"quick_gelu"}
    x = tiles()
    px = enc.prepare(x)
    with torch.no_grad():
        out = hf(pixel_values=px, output_hidden_states=False)
        want = F.normalize(out.image_embeds, dim=-1).numpy()
        want_tokens = projector(out.last_hidden_state[:, 1:, :])
        _, got_tokens = image_tokens(enc.model.visual, px)
        want_txt = F.normalize(text_ref.encode_text(enc.tokenizer(TEXTS)), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_images(x), want, atol=1e-5)
    np.testing.assert_allclose(got_tokens.reshape(want_tokens.shape).numpy(),
                               want_tokens.numpy(), atol=1e-5)
    np.testing.assert_allclose(enc.encode_text(TEXTS), want_txt, atol=1e-5)


def test_graft_key_mapping_at_the_published_size():
    """The real ViT-B/16: every HF key maps onto open_clip's ViT-B-16 tower with its shape
    (meta device: nothing allocated)."""
    pytest.importorskip("transformers")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=16,
                           projection_dim=512, hidden_act="quick_gelu")
    with torch.device("meta"):
        hf = CLIPVisionModelWithProjection(cfg)
        oc = open_clip.create_model("ViT-B-16", force_quick_gelu=True, device="meta")
    state = {f"satellite_image_backbone.{k}": v for k, v in hf.state_dict().items()}
    state.update({"projector.0.weight": torch.empty(768, device="meta"),
                  "projector.0.bias": torch.empty(768, device="meta"),
                  "projector.1.weight": torch.empty(512, 768, device="meta")})
    mapped = graft_keys(state, Path("graft.ckpt"))
    want = {k: tuple(v.shape) for k, v in oc.state_dict().items() if k.startswith("visual.")}
    got = {k: tuple(v.shape) for k, v in mapped.items() if not k.startswith("visual.patch_head")}
    assert got == want


@pytest.mark.parametrize("name", list(P.PRESETS))
def test_published_architectures_build_with_the_stated_activation(name):
    preset = P.PRESETS[name]
    with torch.device("meta"):
        m = open_clip.create_model(preset.architecture, device="meta",
                                   force_quick_gelu=preset.activation == "quick_gelu")
    assert activations(m) == {preset.activation}
    size = m.visual.image_size
    assert (size[0] if isinstance(size, (tuple, list)) else size) == preset.image_size
    assert preset.gsd_m > 0 and preset.licence and preset.base
    assert preset.weights is not None or preset.unverified  # no source: said why


# --- bad files through a preset: one line each --------------------------------------------
def _torchscript(path: Path) -> None:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


@pytest.mark.parametrize("what, write, why", [
    ("TorchScript", _torchscript, "TorchScript archive"),
    ("HTML", lambda p: p.write_text("<!DOCTYPE html><html>Access denied</html>"), "HTML"),
    ("truncated", None, "truncated or damaged"),
    ("wrong architecture", None, "not weights of"),
])
def test_bad_preset_files_are_one_line(what, write, why, weights_dir, monkeypatch):
    preset = tiny(monkeypatch, "remoteclip-vit-b-32")
    path = local_path(preset)
    path.parent.mkdir(parents=True)
    if what == "truncated":
        torch.save(reference(True, 1).state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif what == "wrong architecture":
        state = dict(reference(True, 1).state_dict())  # another width of patch embedding
        state["visual.conv1.weight"] = torch.zeros(32, 3, 16, 16)
        del state["text_projection"]
        torch.save(state, path)
    else:
        write(path)
    with pytest.raises(EncoderError, match=why) as e:
        SatelliteEncoder(EncoderSpec(preset=preset.name))
    assert "\n" not in str(e.value)


# --- downloads ----------------------------------------------------------------------------
class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = lambda *a, **k: _Files(*a, directory=str(root), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_url_preset_downloads_into_the_weights_folder_checked(weights_dir, file_server,
                                                                monkeypatch):
    import hashlib

    root, base = file_server
    preset = tiny(monkeypatch, "skyclip-vit-b-32")
    ref = reference(False, seed=8)
    served = root / preset.weights.file_name
    write_layout(preset, dict(ref.state_dict()), served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    monkeypatch.delenv("HF_HUB_OFFLINE")

    wrong = dataclasses.replace(preset, weights=P.Weights(url=f"{base}/{served.name}",
                                                          sha256="0" * 64))
    monkeypatch.setitem(P.PRESETS, preset.name, wrong)
    with pytest.raises(EncoderError, match="not the published file"):
        SatelliteEncoder(EncoderSpec(preset=preset.name))
    assert not local_path(preset).parent.exists() or not any(local_path(preset).parent.iterdir())

    right = dataclasses.replace(wrong, weights=P.Weights(url=wrong.weights.url, sha256=digest))
    monkeypatch.setitem(P.PRESETS, preset.name, right)
    enc = SatelliteEncoder(EncoderSpec(preset=preset.name))
    assert local_path(preset).read_bytes() == served.read_bytes()
    same_embeddings(enc, ref)

    missing = dataclasses.replace(right, weights=P.Weights(url=f"{base}/gone.zip"))
    monkeypatch.setitem(P.PRESETS, preset.name, missing)
    with pytest.raises(EncoderError, match=r"download failed .*404.* place it at") as e:
        SatelliteEncoder(EncoderSpec(preset=preset.name))
    assert "\n" not in str(e.value)


def test_offline_names_the_file_and_where_to_put_it(weights_dir):
    for name in ("remoteclip-vit-b-32", "skyclip-vit-b-32"):
        preset = P.PRESETS[name]
        with pytest.raises(EncoderError) as e:
            SatelliteEncoder(EncoderSpec(preset=name))
        msg = str(e.value)
        assert "\n" not in msg and "HF_HUB_OFFLINE=1" in msg
        assert preset.weights.address in msg and str(local_path(preset)) in msg
