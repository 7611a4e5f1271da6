"""MaskCLIP (segprompt.models.maskclip) and its Show-or-Tell method, on a tiny random open_clip ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segprompt.errors import PromptError, WeightsError
from segprompt.models.maskclip import (
    MaskClipSegmenter,
    dense_features,
    maskclip_value_path,
    template_set,
    text_embeddings,
)
from segprompt.prompts import Points, PromptSet, Reference, Text

pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def tiny():
    """A tiny open_clip CLIP (32 px input, 8 px patches: a 4x4 grid) with every weight and bias
    perturbed, so biases, LayerNorm affines and the projection all matter."""
    from tunevlseg.models import tiny_openclip_model

    model, tok = tiny_openclip_model(seed=3, image_size=32, patch_size=8, width=32, layers=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval(), tok


def _image(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_dense(model, pixels: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's ViT value path written out from the module weights (vit.py, return_qkv=True):
    the last block's patch tokens are x + out_proj(W_v ln_1(x) + b_v), then + mlp(ln_2(.)),
    then ln_post, @ proj, L2-normalised."""
    v = model.visual
    ln = lambda m, t: F.layer_norm(t, m.normalized_shape, m.weight, m.bias, m.eps)  # noqa: E731
    x = F.conv2d(pixels, v.conv1.weight, stride=v.conv1.stride)  # open_clip conv1 has no bias
    b, d, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(b, 1, d), x], dim=1) + v.positional_embedding
    x = ln(v.ln_pre, x)
    blocks = list(v.transformer.resblocks)
    for blk in blocks[:-1]:
        x = blk(x)  # untouched blocks: the library's own
    last = blocks[-1]
    a = last.attn
    val = F.linear(ln(last.ln_1, x), a.in_proj_weight[2 * d :], a.in_proj_bias[2 * d :])
    y = x + F.linear(val, a.out_proj.weight, a.out_proj.bias)
    hidden = F.gelu(F.linear(ln(last.ln_2, y), last.mlp.c_fc.weight, last.mlp.c_fc.bias))
    y = y + F.linear(hidden, last.mlp.c_proj.weight, last.mlp.c_proj.bias)
    feats = ln(v.ln_post, y[:, 1:]) @ v.proj
    return F.normalize(feats, dim=-1).transpose(1, 2).reshape(b, -1, h, w)


def test_value_path_matches_written_out_reference(tiny):
    model, _ = tiny
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, keys = dense_features(model, pixels, keys=True)
        ref = _reference_dense(model, pixels)
    assert ours.shape == (2, model.visual.proj.shape[1], 4, 4)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ours.norm(dim=1), torch.ones(2, 4, 4), atol=1e-5)
    assert keys.shape == (2, 16, 32)
    # not the ordinary tokens: the value path changes the patch features
    with torch.no_grad():
        _, tokens = model.visual._global_pool(model.visual.ln_post(model.visual.transformer(model.visual._embeds(pixels))))
        plain = F.normalize(tokens @ model.visual.proj, dim=-1).transpose(1, 2).reshape(2, -1, 4, 4)
    assert (plain - ours).abs().max() > 1e-2


def test_pooled_path_untouched(tiny):
    model, _ = tiny
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model.encode_image(pixels)
        with maskclip_value_path(model):
            inside = model.encode_image(pixels)  # the CLS token keeps the ordinary attention
        after = model.encode_image(pixels)
    torch.testing.assert_close(inside, before, atol=1e-6, rtol=1e-6)
    assert torch.equal(after, before)
    assert not model.visual.transformer.resblocks[-1]._forward_hooks
    assert not model.visual.transformer.resblocks[-1]._forward_pre_hooks


def test_template_ensemble_is_mean_of_normalised(tiny):
    model, tok = tiny
    templates = ["a photo of a {}.", "there is a {} in the scene.", "art of the {}."]
    names = ["cat", "traffic light"]
    ours = text_embeddings(model, tok, names, templates)
    with torch.no_grad():
        expected = []
        for n in names:
            rows = torch.stack([F.normalize(model.encode_text(tok([t.format(n)]))[0], dim=-1) for t in templates])
            expected.append(F.normalize(rows.mean(0), dim=-1))
    torch.testing.assert_close(ours, torch.stack(expected), atol=1e-5, rtol=1e-5)
    chunked = text_embeddings(model, tok, names, templates, batch=4)  # 6 texts in 2 calls
    torch.testing.assert_close(chunked, ours, atol=1e-6, rtol=1e-6)


def test_template_sets():
    maskclip = template_set("maskclip")
    assert len(maskclip) == len(set(maskclip)) == 85
    assert "there is a {} in the scene." in maskclip and "itap of a {}." in maskclip
    assert len(template_set("imagenet")) == 80
    assert template_set("single") == ("a photo of a {}.",)


@pytest.fixture(scope="module")
def seg(tiny):
    model, tok = tiny
    return MaskClipSegmenter(model=model, tokenizer=tok, templates="single")


def test_probability_maps_shape_and_range(seg, tiny):
    image = _image()
    state = seg.encode(image)
    probs = seg.probability_maps(state, ["cat", "dog", "grass"])
    assert probs.shape == (3, 40, 56) and probs.dtype == np.float32
    assert probs.min() >= 0 and probs.max() <= 1
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # the map is the softmax of logit_scale * cosine, upsampled bilinearly from the 4x4 grid
    dense = state.features["dense"][0]
    text = seg.text_embeddings(["cat", "dog", "grass"])
    logits = seg.logit_scale * torch.einsum("ehw,ke->khw", dense, text)
    up = F.interpolate(F.interpolate(logits[None], size=(32, 32), mode="bilinear"), size=(40, 56), mode="bilinear")
    np.testing.assert_allclose(probs, up[0].softmax(0).numpy(), atol=1e-5)
    # background names take probability mass away from the prompted classes
    model, tok = tiny
    with_bg = MaskClipSegmenter(model=model, tokenizer=tok, templates="single", background=("sky", "wall"))
    p_bg = with_bg.probability_maps(with_bg.encode(image), ["cat", "dog"])
    assert p_bg.shape == (2, 40, 56) and (p_bg.sum(0) < 1).all()


def test_slide_inference_and_cost(tiny):
    from segprompt.sot.methods import ClassPrompt
    from segprompt.sot.methods_maskclip import MaskClipText

    model, tok = tiny
    seg = MaskClipSegmenter(model=model, tokenizer=tok, templates="single", inference="slide", slide_short_side=40)
    method = MaskClipText(seg)
    prompts = [ClassPrompt("cat"), ClassPrompt("dog")]
    prep = method.prepare(prompts)
    assert prep.encoder_passes == 1
    out = method.maps(_image(40, 56), prompts)
    assert out.maps.shape == (2, 40, 56) and out.failed == {}
    # short side 40 -> frame 40 x 56, crops of 32, stride 21 (mmseg's slide grid): rows at 0, 8 and
    # columns at 0, 21, 24 -> 6 crops through the encoder
    assert out.cost.encoder_passes == 6 and out.cost.decoder_calls == 1
    np.testing.assert_allclose(out.maps.sum(0), 1.0, atol=1e-5)
    assert method.describe()["inference"] == "slide"
    assert seg.counts["text_encoder"] == 1  # names embedded once, in prepare


def test_segment_masks_where_class_wins(seg):
    state = seg.encode(_image(seed=4))
    pred = seg.segment(state, [PromptSet(text=Text("cat")), PromptSet(text=Text("dog"))])
    assert pred.masks.shape == (2, 1, 40, 56) and pred.scores.shape == (2, 1)
    assert (pred.masks[:, 0].sum(0) == 1).all()  # every pixel goes to exactly one class
    probs = seg.probability_maps(state, ["cat", "dog"])
    np.testing.assert_array_equal(pred.masks[0, 0], probs[0] > probs[1])
    lone = seg.segment(state, PromptSet(text=Text("cat")))  # against the "background" prompt
    assert lone.masks.shape == (1, 1, 40, 56)
    np.testing.assert_array_equal(lone.masks[0, 0], seg.probability_maps(state, ["cat", "background"]).argmax(0) == 0)


def test_prompt_denoising_removes_weak_class(tiny):
    model, tok = tiny
    plain = MaskClipSegmenter(model=model, tokenizer=tok, templates="single", logit_scale=1.0)
    names = ["cat", "dog", "grass"]
    state = plain.encode(_image(seed=5))
    conf = plain.probability_maps(state, names)
    # with logit scale 1 no class reaches 0.99 anywhere on the grid: all are removed -> uniform
    pd = MaskClipSegmenter(model=model, tokenizer=tok, templates="single", logit_scale=1.0, prompt_denoising=0.99)
    np.testing.assert_allclose(pd.probability_maps(pd.encode(_image(seed=5)), names), 1 / 3, atol=1e-6)
    assert not np.allclose(conf, 1 / 3, atol=1e-3)


def test_key_smoothing_runs_and_stays_normalised(tiny):
    model, tok = tiny
    ks = MaskClipSegmenter(model=model, tokenizer=tok, templates="single", key_smoothing=1.0)
    state = ks.encode(_image(seed=6))
    assert state.features["keys"].shape == (1, 16, 32)
    probs = ks.probability_maps(state, ["cat", "dog"])
    assert probs.shape == (2, 40, 56) and probs.min() >= 0
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_non_text_prompts_refused(seg):
    state = seg.encode(_image())
    with pytest.raises(PromptError, match="maskclip takes exactly one text prompt.*has points"):
        seg.segment(state, PromptSet(points=Points.positive((3.0, 4.0))))
    ref = Reference(_image(8, 8), np.ones((8, 8), bool))
    with pytest.raises(PromptError, match="has reference"):
        seg.segment(state, [PromptSet(text=Text("cat")), PromptSet(reference=ref)])
    with pytest.raises(PromptError, match="maskclip takes exactly one text prompt"):
        seg.segment(state, PromptSet(text=Text("cat"), points=Points.positive((3.0, 4.0))))


def test_default_weights_missing_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPROMPT_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=r"openai_ViT-B-16\.pt.*segprompt weights fetch openclip-vit-b-16-openai"):
        MaskClipSegmenter()
