"""PerSAM (segprompt.models.persam) against short re-implementations of ZrrSkywalker/Personalize-SAM.

The references written here follow persam.py (target embedding, location confidence,
point_selection, cascaded post-refinement) and per_segment_anything/modeling/transformer.py
(target-guided attention, target-semantic prompting); the reference mask's downsampling uses
segment-anything's own ResizeLongestSide, as PerSAM's predictor does.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from segprompt.errors import ConfigError, PromptError
from segprompt.models.base import ImageState
from segprompt.models.persam import PerSamSegmenter, persam_guidance
from segprompt.models.registry import create_segmenter
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet, Reference


@pytest.fixture(scope="module")
def sam():
    return create_segmenter("sam-tiny")


@pytest.fixture()
def seg(sam):
    return PerSamSegmenter(base=sam, reference_cache=0)


def _image(size=(256, 256), seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)


def _fake_reference_encoder(seg, monkeypatch, features: torch.Tensor, size=(256, 256)):
    """The reference image's 'SAM embedding' becomes ``features`` (1, C, g, g)."""
    tf = seg.base.transform(size)
    state = ImageState(tf.original_size, tf.input_size, {"embeddings": features})
    monkeypatch.setattr(seg.base, "encode", lambda image: state)


# --------------------------------------------------------------------- reference rules -------
def ref_confidence(target: np.ndarray, feats: np.ndarray, img_size: int, input_size, original_size) -> torch.Tensor:
    """persam.py: cosine similarity, x4 bilinear, postprocess_masks (upsample, crop, resize)."""
    t = target / np.linalg.norm(target)
    f = feats / np.linalg.norm(feats, axis=0, keepdims=True)
    c, h, w = f.shape
    sim = torch.from_numpy((t @ f.reshape(c, h * w)).reshape(1, 1, h, w).astype(np.float32))
    sim = F.interpolate(sim, scale_factor=4, mode="bilinear", align_corners=False)
    sim = F.interpolate(sim, (img_size, img_size), mode="bilinear", align_corners=False)
    sim = sim[..., : input_size[0], : input_size[1]]
    return F.interpolate(sim, original_size, mode="bilinear", align_corners=False)[0, 0]


def ref_point_selection(mask_sim: torch.Tensor):
    """persam.py point_selection(topk=1): [[x, y]] positive and negative."""
    _, h = mask_sim.shape
    top = int(mask_sim.flatten().topk(1)[1])
    last = int(mask_sim.flatten().topk(1, largest=False)[1])
    return np.array([[top % h, top // h]]), np.array([[last % h, last // h]])


def ref_cells(mask: np.ndarray, img_size: int, grid: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """PerSAM's predictor.set_image(image, mask) + F.interpolate(bilinear) + [0] > 0."""
    rgb = np.repeat(np.where(mask, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    resized = ResizeLongestSide(img_size).apply_image(rgb)
    x = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
    x = (x - torch.as_tensor(mean).view(1, 3, 1, 1)) / torch.as_tensor(std).view(1, 3, 1, 1)
    x = F.pad(x, (0, img_size - x.shape[-1], 0, img_size - x.shape[-2]))
    return (F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)[0, 0] > 0).numpy()


def ref_attention(attn_mod, q, k, v, attn_sim=None):
    """per_segment_anything Attention.forward."""
    q, k, v = attn_mod.q_proj(q), attn_mod.k_proj(k), attn_mod.v_proj(v)
    q, k, v = (attn_mod._separate_heads(x, attn_mod.num_heads) for x in (q, k, v))
    attn = torch.softmax(q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1]), dim=-1)
    if attn_sim is not None:
        attn = torch.softmax(attn + attn_sim, dim=-1)
    return attn_mod.out_proj(attn_mod._recombine_heads(attn @ v))


def ref_block(layer, queries, keys, query_pe, key_pe, attn_sim):
    """per_segment_anything TwoWayAttentionBlock.forward."""
    if layer.skip_first_layer_pe:
        queries = ref_attention(layer.self_attn, queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + ref_attention(layer.self_attn, q, q, queries)
    queries = layer.norm1(queries)
    q, k = queries + query_pe, keys + key_pe
    queries = layer.norm2(queries + ref_attention(layer.cross_attn_token_to_image, q, k, keys, attn_sim))
    queries = layer.norm3(queries + layer.mlp(queries))
    q, k = queries + query_pe, keys + key_pe
    keys = layer.norm4(keys + ref_attention(layer.cross_attn_image_to_token, k, q, queries))
    return queries, keys


def ref_transformer(tr, image_embedding, image_pe, point_embedding, attn_sim=None, target=None):
    """per_segment_anything TwoWayTransformer.forward, in-place ``queries += target`` included."""
    point_embedding = point_embedding.clone()
    keys = image_embedding.flatten(2).permute(0, 2, 1)
    image_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries = point_embedding
    for layer in tr.layers:
        if target is not None:
            queries += target  # the first time, point_embedding changes too
        queries, keys = ref_block(layer, queries, keys, point_embedding, image_pe, attn_sim)
    q = queries + point_embedding
    if target is not None:
        q += target
    queries = tr.norm_final_attn(queries + tr.final_attn_token_to_image(q=q, k=keys + image_pe, v=keys))
    return queries, keys


# --------------------------------------------------------------------- location prior --------
def test_location_prior_on_handmade_features(seg, monkeypatch):
    rng = np.random.default_rng(0)
    c, g = 128, 16
    feats = rng.normal(size=(c, g, g)).astype(np.float32)
    target = feats[:, 5, 11].copy()
    feats[:, 9, 2] = -target  # the least similar cell (cosine -1)
    # the reference's embedding is the target everywhere, so any mask averages to it
    _fake_reference_encoder(seg, monkeypatch, torch.from_numpy(np.broadcast_to(target[:, None, None], (c, g, g)).copy())[None])
    ref = Reference(_image(), np.pad(np.ones((40, 40), bool), 108))
    original = (384, 512)  # input 192 x 256 in sam-tiny's 256 square: rows 12.. of the grid are padding
    tf = seg.base.transform(original)
    state = ImageState(original, tf.input_size, {"embeddings": torch.from_numpy(feats)[None]})

    points = seg.location_prior(state, ref)
    assert isinstance(points, Points) and points.labels.tolist() == [1, 0]
    pos, neg = ref_point_selection(ref_confidence(target, feats, 256, tf.input_size, original))
    np.testing.assert_array_equal(points.coords, np.concatenate([pos, neg]).astype(np.float32))
    # (x, y) in the original frame: cell (row 5, col 11) covers x in [352, 384), y in [160, 192)
    (px, py), (nx, ny) = points.coords
    assert 352 <= px < 384 and 160 <= py < 192
    assert 64 <= nx < 96 and 288 <= ny < 320  # cell (row 9, col 2)
    # the same through run(): the prior the decoder is given
    res = seg.run(state, ref)
    assert res.points == points and res.confidence.shape == original
    torch.testing.assert_close(torch.as_tensor(res.confidence), ref_confidence(target, feats, 256, tf.input_size, original), atol=1e-5, rtol=0)


def test_reference_mask_selects_the_averaged_features(seg, monkeypatch):
    rng = np.random.default_rng(1)
    c, g = 128, 16
    feats = torch.from_numpy(rng.normal(size=(1, c, g, g)).astype(np.float32))
    size = (200, 256)
    mask = np.zeros(size, bool)
    mask[37:121, 53:170] = True  # edges off the 16-px cell grid
    ref = Reference(_image(size), mask)
    mean, std = seg.base.model.pixel_mean.flatten().numpy(), seg.base.model.pixel_std.flatten().numpy()
    cells = ref_cells(mask, 256, g, mean, std)
    assert 5 < cells.sum() < g * g // 2

    _fake_reference_encoder(seg, monkeypatch, feats, size)
    emb = seg.target_embedding(ref)
    torch.testing.assert_close(emb, feats[0][:, torch.from_numpy(cells)].mean(dim=1))

    outside = feats.clone()
    outside[0][:, torch.from_numpy(~cells)] = 100.0
    _fake_reference_encoder(seg, monkeypatch, outside, size)
    torch.testing.assert_close(seg.target_embedding(ref), emb)

    inside = feats.clone()
    r, col = np.argwhere(cells)[0]
    inside[0, :, r, col] += 50.0
    _fake_reference_encoder(seg, monkeypatch, inside, size)
    assert not torch.allclose(seg.target_embedding(ref), emb)

    # k-shot: the mean of the references' target embeddings
    other = Reference(_image(size, seed=2), np.roll(mask, 40, axis=1))
    ocells = ref_cells(other.mask, 256, g, mean, std)
    both = seg.target_embedding([ref, other])
    torch.testing.assert_close(both, (inside[0][:, torch.from_numpy(cells)].mean(1) + inside[0][:, torch.from_numpy(ocells)].mean(1)) / 2)


# --------------------------------------------------------------------- decoder hooks ---------
@pytest.mark.parametrize("use_attn,use_target", [(True, False), (False, True), (True, True), (False, False)])
def test_decoder_guidance_matches_persam_transformer(sam, use_attn, use_target):
    tr = sam.model.mask_decoder.transformer
    torch.manual_seed(0)
    c, g = 128, 16
    img, pe = torch.randn(1, c, g, g), torch.randn(1, c, g, g)
    tokens = torch.randn(1, 7, c)
    attn_sim = torch.rand(1, 1, 1, g * g) if use_attn else None
    target = torch.randn(c) if use_target else None
    with torch.no_grad():
        want = ref_transformer(tr, img, pe, tokens, attn_sim, None if target is None else target.view(1, 1, c))
        with persam_guidance(tr, target, attn_sim):
            got = tr(img, pe, tokens)
        plain = tr(img, pe, tokens)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    assert len(tr._forward_pre_hooks) == 0 and all(len(l.cross_attn_token_to_image._forward_hooks) == 0 for l in tr.layers)
    if use_attn or use_target:  # the hooks changed something, and are gone after the block
        assert not torch.allclose(plain[0], got[0])
    else:
        torch.testing.assert_close(plain[0], got[0])


def test_cascade_follows_persam(sam):
    """Without the decoder tricks, run() is persam.py's three predictor calls on the location prior."""
    from segprompt.data import load_dataset

    ds = load_dataset("synthetic-objects", n=3, seed=3)
    a, b = ds[2], ds[1]
    ref = Reference(a.image, a.meta["instances"]["masks"][1])
    seg = PerSamSegmenter(base=sam, target_guided_attention=False, target_semantic_prompting=False)
    state = seg.encode(b.image)
    res = seg.run(state, ref)
    pts = res.points
    p1 = sam.segment(state, PromptSet(points=pts), multimask="single")
    p2 = sam.segment(state, PromptSet(points=pts, mask=MaskPrompt(p1.logits[0, 0], kind="logits")), multimask="all")
    i2 = int(np.argmax(p2.scores[0]))
    ys, xs = np.nonzero(p2.masks[0, i2])
    box = Box([xs.min(), ys.min(), xs.max(), ys.max()])
    p3 = sam.segment(state, PromptSet(points=pts, box=box, mask=MaskPrompt(p2.logits[0, i2], kind="logits")), multimask="all")
    np.testing.assert_array_equal(res.masks, p3.masks[0])
    assert res.best == int(np.argmax(p3.scores[0]))
    # the Segmenter answer: PerSAM's pick (K = 1) by default, the 3 candidates with "all"
    pred = seg.segment(state, PromptSet(reference=ref))
    np.testing.assert_array_equal(pred.masks[0, 0], p3.masks[0, res.best])
    assert pred.chosen.tolist() == [res.best]
    assert seg.segment(state, PromptSet(reference=ref), multimask="all").masks.shape == (1, 3, 256, 256)
    np.testing.assert_array_equal(seg.segment(state, PromptSet(reference=ref), multimask="auto").masks[0, 0], pred.masks[0, 0])
    assert seg.counts["mask_decoder"] == 12  # four runs of three passes


# --------------------------------------------------------------------- end to end ------------
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_reference_from_one_scene_segments_the_class_in_another(sam):
    from segprompt.data import load_dataset

    ds = load_dataset("synthetic-objects", n=6, seed=3)
    samples = [ds[i] for i in range(len(ds))]
    inst = [s.meta["instances"] for s in samples]
    # (scene A, instance in A, scene B): every same-class pair across scenes, both directions
    pairs = [
        (i, k, j)
        for i in range(len(samples))
        for k, cls in enumerate(inst[i]["classes"])
        for j in range(len(samples))
        if j != i and cls in inst[j]["classes"]
    ]
    assert len(pairs) >= 8
    seg = PerSamSegmenter(base=sam)
    states = {j: seg.encode(samples[j].image) for j in {p[2] for p in pairs}}
    rng = np.random.default_rng(0)
    ours, chance, hits = [], [], 0
    for i, k, j in pairs:
        cls = inst[i]["classes"][k]
        target = inst[j]["masks"][inst[j]["classes"] == cls].any(axis=0)
        ref = Reference(samples[i].image, inst[i]["masks"][k])
        res = seg.run(states[j], ref)
        ours.append(_iou(res.mask, target))
        x, y = res.points.coords[0].astype(int)
        hits += bool(target[y, x])
        for _ in range(4):  # the baseline: sam-tiny from a random positive point
            x, y = rng.integers(0, 256, size=2)
            chance.append(_iou(sam.segment(states[j], PromptSet(points=Points.positive((x, y)))).masks[0, 0], target))
    # measured: PerSAM mean IoU 0.44, random point 0.14 (8 pairs); positive point on the class 6/8
    assert np.mean(ours) > np.mean(chance) + 0.15, (np.mean(ours), np.mean(chance))
    assert hits >= len(pairs) // 2


def test_probability_kinds(seg):
    from segprompt.data import load_dataset

    ds = load_dataset("synthetic-objects", n=3, seed=3)
    ref = Reference(ds[2].image, ds[2].meta["instances"]["masks"][1])
    state = seg.encode(ds[1].image)
    res = seg.run(state, ref)
    sot = seg.probability(state, ref)
    assert sot.shape == (256, 256) and sot.dtype == np.float32
    assert (sot[~res.mask] == 0).all() and np.unique(sot[res.mask]).size == 1
    # ShowOrTell PERSAM_model.py: the grid similarity resized to the image, averaged over the mask
    sim = F.interpolate(torch.as_tensor(res.similarity)[None, None], size=(256, 256), mode="bilinear", align_corners=False)[0, 0]
    assert sot[res.mask][0] == pytest.approx(float(sim[torch.as_tensor(res.mask)].mean()), abs=1e-6)
    conf = seg.probability(state, ref, kind="confidence")
    np.testing.assert_allclose(conf, res.confidence, atol=1e-6)
    soft = seg.probability(state, ref, kind="mask")
    assert 0 <= soft.min() and soft.max() <= 1
    np.testing.assert_array_equal(soft > 0.5, res.mask)
    with pytest.raises(ConfigError):
        seg.probability(state, ref, kind="nope")


# --------------------------------------------------------------------- errors ----------------
def test_clear_errors_without_a_reference(seg):
    state = seg.encode(_image())
    with pytest.raises(PromptError, match="reference"):
        seg.segment(state, PromptSet(points=Points.positive((10, 10))))
    with pytest.raises(PromptError, match="reference"):
        seg.segment(state, PromptSet())
    with pytest.raises(PromptError, match="reference"):
        seg.segment(state, Points.positive((10, 10)))
    with pytest.raises(PromptError):
        seg.target_embedding([])
    with pytest.raises(ConfigError):
        PerSamSegmenter(base=create_segmenter("classical"))
    assert create_segmenter("persam").name == "persam"
