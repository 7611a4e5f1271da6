"""tunevlseg.models: the CLIPSeg and open_clip VLSM wrappers (tiny random models, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segprompt.errors import ConfigError, WeightsError
from tunevlseg.learners import create_learner
from tunevlseg.models import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPSegVLSM,
    FiLMDecoder,
    OpenCLIPVLSM,
    create_vlsm,
    list_vlsms,
    tiny_clipseg,
    tiny_openclip_vlsm,
)
from tunevlseg.testing import tiny_biomedclip_like

TEXTS = ["a photo of a cat", "pink polyp", "dog"]


@pytest.fixture(scope="module")
def clipseg() -> CLIPSegVLSM:
    return tiny_clipseg()


@pytest.fixture(scope="module")
def openclip() -> OpenCLIPVLSM:
    return tiny_openclip_vlsm()


def _images(vlsm, batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *vlsm.image_size, generator=gen)


def test_clipseg_wrapper_equals_transformers_forward(clipseg):
    """No learner: the logits of CLIPSegForImageSegmentation(pixel_values, input_ids, attention_mask)."""
    x = _images(clipseg)
    tokens = clipseg.tokenize(TEXTS)
    with torch.no_grad():
        ref = clipseg.model(
            pixel_values=x, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        ).logits
        ours = clipseg(x, TEXTS)
        one = clipseg(x[:1], TEXTS[:1])
    assert ours.shape == (3, 1, *clipseg.image_size)
    torch.testing.assert_close(ours[:, 0], ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(one[:, 0], ref[:1], rtol=0, atol=1e-5)
    # token tensors are accepted as well
    with torch.no_grad():
        torch.testing.assert_close(clipseg(x, tokens), ours, rtol=0, atol=0)


@pytest.mark.parametrize("which", ["clipseg", "openclip", "biomedclip-like"])
def test_coop_from_a_photo_of_a_equals_the_plain_prompt(which, clipseg, openclip):
    """CoOp, depth 1, context initialised from "a photo of a", frozen: the text embedding of
    "<class>" equals the unprompted embedding of "a photo of a <class>"."""
    if which == "biomedclip-like":
        model, tok = tiny_biomedclip_like()
        vlsm = OpenCLIPVLSM(model, tok, decoder_dim=16)
    else:
        vlsm = clipseg if which == "clipseg" else openclip
    coop = create_learner("coop", vlsm, n_ctx=4, depth=1, init="a photo of a").requires_grad_(False)
    classes = ["cat", "pink polyp"]
    with torch.no_grad():
        ref = vlsm.text_features([f"a photo of a {c}" for c in classes])
        got = vlsm.text_features(classes, learner=coop)
    assert got.shape == (2, vlsm.feature_dim)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    if which == "clipseg":  # and through the whole model: the same logits
        x = _images(vlsm, 2)
        with torch.no_grad():
            torch.testing.assert_close(
                vlsm(x, classes, learner=coop), vlsm(x, [f"a photo of a {c}" for c in classes]), rtol=0, atol=1e-5
            )


def test_visual_prompts_on_clipseg_keep_grid_shapes_and_respect_the_decoder_layers():
    """The decoder reads blocks 1, 2, 3 of a 5-layer tiny model (extract_layers 0, 1, 2), as
    TuneVLSeg hands them: block 3's output with its prompt slots already holding row 3 (the
    layer-4 prompt). So row 3 changes the logits although it changes none of the blocks the
    decoder reads; row 4 (the layer-5 prompt) changes the pooled image feature only."""
    vlsm = tiny_clipseg(layers=5)
    assert vlsm.decoder_layers == [1, 2, 3]
    vpt = create_learner("vpt-deep", vlsm, n_ctx=3, depth=5).eval()
    x = _images(vlsm, 2)
    with torch.no_grad():
        logits = vlsm(x, TEXTS[:2], learner=vpt)
        feats = vlsm.image_features(x, learner=vpt)
        vpt.ctx[4] += 1.0
        logits5 = vlsm(x, TEXTS[:2], learner=vpt)
        feats5 = vlsm.image_features(x, learner=vpt)
        vpt.ctx[3] += 1.0
        logits4 = vlsm(x, TEXTS[:2], learner=vpt)
    assert logits.shape == (2, 1, *vlsm.image_size)
    assert torch.equal(logits5, logits)
    assert not torch.equal(feats5, feats)
    assert not torch.equal(logits4, logits5)


def test_preprocess_resizes_and_normalises(clipseg):
    h, w = clipseg.image_size
    images = [np.full((40, 50, 3), 255, np.uint8), np.zeros((h, w, 3), np.uint8)]
    x = clipseg.preprocess(images)
    assert x.shape == (2, 3, h, w) and x.dtype == torch.float32
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    black = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[0, :, h // 2, w // 2], white)
    torch.testing.assert_close(x[1, :, 0, 0], black)
    t = clipseg.preprocess(torch.ones(3, 2 * h, 2 * w))
    assert t.shape == (1, 3, h, w)
    torch.testing.assert_close(t[0, :, 3, 3], white)
    with pytest.raises(ConfigError, match="uint8"):
        clipseg.preprocess(np.zeros((8, 8), np.float32))


def test_text_batch_rules(clipseg):
    x = _images(clipseg, 2)
    with torch.no_grad():
        both = clipseg(x, ["cat"])  # one text for every image
        assert torch.equal(both, clipseg(x, ["cat", "cat"]))
    with pytest.raises(ConfigError, match="one text per image"):
        clipseg(x, TEXTS)
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        clipseg(x[0], ["cat"])


def test_openclip_vlsm_decoder_and_shapes(openclip):
    assert openclip.layers == [2, 3, 4]
    x = _images(openclip, 2)
    logits = openclip(x, ["cat", "dog"])
    assert logits.shape == (2, 1, *openclip.image_size)
    names = [n for n, _ in openclip.trainable_parameters()]
    assert names and all(n.startswith("decoder.") for n in names)
    logits.sum().backward()
    assert all(p.grad is None for p in openclip.model.parameters())
    assert all(p.grad is not None for p in openclip.decoder.parameters())
    openclip.decoder.zero_grad(set_to_none=True)
    # a few hundred K parameters at ViT-B/16 sizes (width 768, 512-d features, 3 levels)
    n = sum(p.numel() for p in FiLMDecoder(768, 512, 3, 64).parameters())
    assert 200_000 < n < 500_000


def test_openclip_vlsm_on_a_biomedclip_shaped_model():
    """HF BERT text tower + timm ViT vision tower (BiomedCLIP's layout), all learners' paths."""
    model, tok = tiny_biomedclip_like()
    vlsm = OpenCLIPVLSM(model, tok, decoder_dim=16)
    assert vlsm.num_text_layers == 3 and vlsm.num_vision_layers == 3
    maple = create_learner("maple", vlsm, depth=3)
    x = _images(vlsm, 2)
    logits = vlsm(x, ["benign lesion", "malignant tumour"], learner=maple)
    assert logits.shape == (2, 1, 32, 32)
    logits.sum().backward()
    assert all(p.grad is not None for p in maple.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_train_mode_keeps_frozen_parts_in_eval(openclip):
    openclip.train()
    assert not openclip.model.training and openclip.decoder.training
    openclip.eval()
    assert not openclip.decoder.training
    vlsm = tiny_clipseg()
    vlsm.set_trainable("decoder")
    vlsm.train()
    assert vlsm.model.decoder.training and not vlsm.model.clip.training
    assert {n.split(".")[1] for n, _ in vlsm.trainable_parameters()} == {"decoder"}
    with pytest.raises(ConfigError, match="scope"):
        vlsm.set_trainable("some")


def test_registry_and_offline_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPROMPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert {"clipseg", "openclip", "clipseg-tiny", "openclip-tiny"} <= set(list_vlsms())
    assert isinstance(create_vlsm("clipseg-tiny"), CLIPSegVLSM)
    with pytest.raises(ConfigError, match="unknown vlsm"):
        create_vlsm("clipsegg")
    # registered weights not on disk: the message names the folder to put them in
    with pytest.raises(WeightsError, match=str(tmp_path / "home" / "checkpoints" / "clipseg-rd64-refined")):
        create_vlsm("clipseg", weights="clipseg-rd64-refined")
    with pytest.raises(WeightsError, match="clipseg-rd64-refined"):
        create_vlsm("clipseg", weights="CIDAS/clipseg-rd64-refined")
    with pytest.raises(WeightsError, match="someone--clipseg-x"):
        create_vlsm("clipseg", weights="someone/clipseg-x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="config.json"):
        create_vlsm("clipseg", weights=str(empty))
    with pytest.raises(WeightsError, match="biomedclip"):
        create_vlsm("openclip", model="biomedclip")
    with pytest.raises(WeightsError, match="biomedclip"):
        create_vlsm("openclip", model="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    with pytest.raises(WeightsError, match="someone--clip"):
        create_vlsm("openclip", model="hf-hub:someone/clip")
    with pytest.raises(WeightsError, match="pretrained"):
        create_vlsm("openclip", model="ViT-B-16")
    with pytest.raises(WeightsError, match="allow_download"):
        create_vlsm("openclip", model="ViT-B-16", pretrained="openai")


def test_clipseg_round_trip_through_a_local_folder(tmp_path, clipseg):
    folder = tmp_path / "clipseg"
    clipseg.model.save_pretrained(folder)
    loaded = create_vlsm("clipseg", weights=str(folder))
    x = _images(clipseg, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, TEXTS[:2]), clipseg(x, TEXTS[:2]), rtol=0, atol=1e-6)


def test_openclip_from_a_local_dir(tmp_path):
    """An open_clip checkpoint folder (open_clip_config.json + weights): loaded offline, with
    the folder's preprocessing statistics."""
    import json

    from tunevlseg.models import tiny_openclip_model

    model, _ = tiny_openclip_model()
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": dict(layers=4, width=32, head_width=8, patch_size=8, image_size=32),
            "text_cfg": dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=4),
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    vlsm = create_vlsm("openclip", model=f"local-dir:{tmp_path}")
    assert isinstance(vlsm, OpenCLIPVLSM) and vlsm.image_size == (32, 32)
    torch.testing.assert_close(vlsm.std.flatten(), torch.full((3,), 0.25))
    x = _images(vlsm, 2)
    with torch.no_grad():
        torch.testing.assert_close(vlsm.image_features(x), model.eval().encode_image(x), rtol=0, atol=1e-6)
        assert vlsm(x, ["cat", "dog"]).shape == (2, 1, 32, 32)
