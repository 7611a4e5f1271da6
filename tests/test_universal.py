"""The universal decoder: sampler, SEEM's attention rules, memory, every prompt kind, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from segprompt.errors import PromptError, WeightsError
from segprompt.models.resize import LongestSide
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet, Reference, Scribble, Text
from segprompt.universal.config import UniversalConfig
from segprompt.universal.decoder import cross_attention_mask, self_attention_mask
from segprompt.universal.model import UniversalModel
from segprompt.universal.prompting import prompt_tensors
from segprompt.universal.sampler import region_positions, sample_features

WORDS = ("disc", "star", "ring")


class ConvPyramid(nn.Module):
    """A 4-level conv pyramid with the VisionPyramid interface (64 px input), for fast tests."""

    img_size, strides, channels = 64, (4, 8, 16, 32), 16

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.down = nn.ModuleList(nn.Conv2d(16, 16, 2, 2) for _ in range(3))

    def normalise(self, x: torch.Tensor, sizes=None) -> torch.Tensor:  # noqa: ANN001
        return x / 255.0

    def forward(self, x: torch.Tensor, sizes=None) -> list[torch.Tensor]:  # noqa: ANN001
        x = self.stem(x / 255.0)
        out = [x]
        for d in self.down:
            x = d(x)
            out.append(x)
        return out


def tiny_config(**kw) -> UniversalConfig:  # noqa: ANN003
    base = dict(words=WORDS, hidden_dim=32, mask_dim=16, embed_dim=16, num_queries=4, dec_layers=3, num_heads=4, dim_feedforward=64, tokens_per_prompt=8)
    base.update(kw)
    return UniversalConfig(**base)


def _grown_parts_made_nonzero(model: UniversalModel) -> UniversalModel:
    """The detail stem and the pixel-prompt attention start at zero (a grown model computes what
    it did); tests give them random outputs so that they take part."""
    torch.manual_seed(1)
    for layer in (model.detail.proj, model.decoder.pixel_prompt.out, model.decoder.pixel_prompt.memory[-1], model.decoder.pixel_prompt.box_map[-1]):
        nn.init.normal_(layer.weight, std=0.2)
        nn.init.normal_(layer.bias, std=0.2)
    return model


@pytest.fixture(scope="module", params=["plain", "detail+prompt_to_pixel+box_map"])
def model(request) -> UniversalModel:  # noqa: ANN001
    torch.manual_seed(0)
    if request.param == "plain":
        return UniversalModel(tiny_config(), pyramid=ConvPyramid()).eval()
    return _grown_parts_made_nonzero(UniversalModel(tiny_config(detail_dim=8, prompt_to_pixel=True, box_map=True), pyramid=ConvPyramid()).eval())


def _image(seed: int = 0, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    return (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)


def _square(size=(64, 64), y0=10, y1=30, x0=12, x1=34) -> np.ndarray:  # noqa: ANN001
    m = np.zeros(size, bool)
    m[y0:y1, x0:x1] = True
    return m


# -- the visual sampler -----------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 40), st.booleans())
def test_sampled_positions_lie_inside_the_region(seed, k, random):
    rng = np.random.default_rng(seed)
    region = rng.random((37, 29)) < rng.uniform(0.01, 0.6)
    pos = region_positions(region, k, rng if random else None)
    assert len(pos) == min(k, int(region.sum()))
    cols, rows = np.floor(pos[:, 0]).astype(int), np.floor(pos[:, 1]).astype(int)
    assert region[rows, cols].all()
    assert len({(r, c) for r, c in zip(rows, cols)}) == len(pos)  # no position twice


def test_tokens_read_features_only_around_the_region():
    """Bilinear sampling at positions inside the region reads the feature cells under them and
    their neighbours: changing the features anywhere else leaves every token unchanged."""
    rng = np.random.default_rng(1)
    region = _square((64, 64), 20, 36, 8, 30)
    pos = region_positions(region, 16, rng) / 64.0
    coords = torch.from_numpy(pos)[None].float()
    feat = torch.randn(1, 5, 16, 16)
    base = sample_features(feat, torch.zeros(1, dtype=torch.long), coords)
    near = np.zeros((16, 16), bool)
    for x, y in pos * 16:
        near[max(0, int(y - 0.5)) : int(y - 0.5) + 2, max(0, int(x - 0.5)) : int(x - 0.5) + 2] = True
    changed = feat.clone()
    changed[:, :, torch.from_numpy(~near)] += 100.0
    assert torch.allclose(sample_features(changed, torch.zeros(1, dtype=torch.long), coords), base)
    changed_inside = feat.clone()
    changed_inside[:, :, torch.from_numpy(near)] += 1.0
    assert not torch.allclose(sample_features(changed_inside, torch.zeros(1, dtype=torch.long), coords), base)


def test_every_prompt_kind_becomes_tokens_where_it_was_given():
    tf = LongestSide(64, (48, 64))  # a non-square image: coordinates go through the transform
    mask = _square((48, 64), 5, 20, 30, 50)
    sets = [
        PromptSet(points=Points(np.array([[10.0, 12.0], [40.0, 30.0]]), np.array([1, 0]))),
        PromptSet(box=Box(np.array([30.0, 5.0, 50.0, 20.0]))),
        PromptSet(scribbles=(Scribble(np.array([[31.0, 6.0], [49.0, 19.0]])),)),
        PromptSet(mask=MaskPrompt(mask)),
    ]
    pt = prompt_tensors(sets, [tf] * 4, [0] * 4, k=8, lowres=16)
    pts = pt.coords[0, :2].numpy() * 64
    np.testing.assert_allclose(pts, tf.apply_coords(np.array([[10.0, 12.0], [40.0, 30.0]])), atol=1e-4)
    assert pt.polarity[0, :2].tolist() == [1, 0]
    for row in (1, 2, 3):
        xy = tf.inverse_coords(pt.coords[row][pt.valid[row]].numpy() * 64)
        assert (xy[:, 0] >= 29.5).all() and (xy[:, 0] <= 50.5).all() and (xy[:, 1] >= 4.5).all() and (xy[:, 1] <= 20.5).all()


# -- SEEM's attention rules ------------------------------------------------------------------

def test_object_queries_never_see_prompts():
    mask = self_attention_mask(4, 3, 2, torch.tensor([[True, True, False]]), torch.tensor([True]))[0]
    allowed = ~mask
    assert allowed[:4, :4].all() and not allowed[:4, 4:].any()  # objects: objects only
    assert allowed[4:7, :4].all() and allowed[4:7, 4:9].all() and allowed[4:7, 9:11].all() and not allowed[:, 11].any()  # padding unseen
    assert not allowed[7:9, :4].any() and allowed[7:9, 4:].any()


def test_generic_output_is_unchanged_when_prompts_are_added(model):
    from segprompt.models.universal import UniversalSegmenter

    seg = UniversalSegmenter(model=model)
    img = _image(3)
    state = seg.encode(img)
    feats = seg._features(state)
    generic = model.decode(feats)[-1]
    sets = [
        PromptSet(points=Points.positive((20, 20))),
        PromptSet(box=Box(np.array([5.0, 5.0, 40.0, 40.0])), text=Text("star")),
        PromptSet(reference=Reference(img, _square()), mask=MaskPrompt(np.ones((16, 16), np.float32), kind="logits")),
    ]
    pt = prompt_tensors(sets, [seg.transform(img.shape[:2])] * 3, [0] * 3, 8, 16)
    prompted = model.decode(feats, pt)[-1]
    torch.testing.assert_close(prompted.object_masks, generic.object_masks, rtol=0, atol=0)
    torch.testing.assert_close(prompted.object_embed, generic.object_embed, rtol=0, atol=0)
    assert not torch.allclose(prompted.masks[0], prompted.masks[1])  # the prompts do reach the prompt queries


def test_the_split_decoder_equals_one_joint_sequence_per_row(model):
    """Object queries once per image + prompt groups per row == SEEM's one joint sequence per row
    under the attention mask (a direct re-computation of one layer with the full mask)."""
    from segprompt.universal.decoder import cross_attention_mask, self_attention_mask

    torch.manual_seed(5)
    layer = model.decoder.layers[0]
    q, p, m, d = 4, 3, 2, model.cfg.hidden_dim
    b, r, t = 2, 3, 5
    row_image = torch.tensor([0, 1, 1])
    xo, po = torch.randn(b, q, d), torch.randn(b, q, d)
    xp, pp = torch.randn(r, p + m, d), torch.randn(r, p + m, d)
    tokens, tpos = torch.randn(r, t, d), torch.randn(r, t, d)
    valid = torch.rand(r, t) > 0.3
    has = torch.tensor([True, False, True])
    feat, fpos = torch.randn(b, 16, d), torch.randn(1, 16, d)
    keys, values = layer.cross.keys(feat, fpos)
    bo, _ = cross_attention_mask(torch.randn(b, q, 8, 8), None, torch.zeros(b, dtype=torch.bool), 0, (4, 4))
    memory = (torch.rand(r, 8, 8) > 0.5).float()
    bp, gp = cross_attention_mask(torch.randn(r, p, 8, 8), memory, has, m, (4, 4))
    full = self_attention_mask(q, p, m, valid, has)
    new_o, new_p = layer(xo, po, xp, pp, keys, values, row_image, bo, bp, gp, tokens, tpos, full[:, q:])
    # joint: each row holds its image's object queries, then the prompt group
    x = torch.cat((xo[row_image], xp), 1)
    pos = torch.cat((po[row_image], pp), 1)
    blocked = torch.cat((bo[row_image], bp), 1)
    gate = torch.cat((torch.ones(r, q, 1), gp), 1)
    x = layer.cross_attend(x, pos, keys, values, row_image, blocked, gate)
    k = torch.cat((x + pos, tokens + tpos), 1)
    v = torch.cat((x, tokens), 1)
    joint = layer.attend_and_feed(x, pos, k, v, full)
    torch.testing.assert_close(joint[:, q:], new_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(joint[:, :q], new_o[row_image], rtol=1e-5, atol=1e-5)


def test_memory_attends_only_inside_the_previous_mask():
    pred = torch.randn(2, 5, 16, 16)
    memory = torch.zeros(2, 16, 16)
    memory[0, 4:8, 2:10] = 1
    blocked, gate = cross_attention_mask(pred, memory, torch.tensor([True, False]), num_memory=2, size=(8, 8))
    expect = torch.zeros(8, 8, dtype=torch.bool)
    expect[2:4, 1:5] = True
    assert torch.equal(~blocked[0, 5], expect.flatten()) and torch.equal(~blocked[0, 6], expect.flatten())
    assert gate[0, 5:].eq(1).all() and gate[1, 5:].eq(0).all() and gate[:, :5].eq(1).all()


def test_memory_tokens_read_nothing_outside_the_previous_mask(model):
    """One layer's cross-attention: the memory tokens' update does not change when the features
    outside the previous round's region change, and changes when the features inside do."""
    layer = model.decoder.layers[0]
    d, q = model.cfg.hidden_dim, model.cfg.num_queries + model.cfg.num_prompt_queries + model.cfg.num_memory
    torch.manual_seed(2)
    x, pos = torch.randn(1, q, d), torch.randn(1, q, d)
    feat, fpos = torch.randn(1, 64, d), torch.randn(1, 64, d)
    memory = torch.zeros(1, 16, 16)
    memory[0, :8, :8] = 1
    blocked, gate = cross_attention_mask(torch.randn(1, q - 2, 16, 16), memory, torch.tensor([True]), 2, (8, 8))
    inside = (~blocked[0, -1]).reshape(8, 8)

    def memory_rows(f: torch.Tensor) -> torch.Tensor:
        k, v = layer.cross.keys(f, fpos)
        return layer.cross_attend(x, pos, k, v, torch.zeros(1, dtype=torch.long), blocked, gate)[0, -2:]

    base = memory_rows(feat)
    outside_changed = feat.clone()
    outside_changed[0, ~inside.flatten()] += 5
    torch.testing.assert_close(memory_rows(outside_changed), base)
    inside_changed = feat.clone()
    inside_changed[0, inside.flatten()] += 5
    assert not torch.allclose(memory_rows(inside_changed), base)


def test_pixel_prompt_attention_changes_only_prompted_rows():
    """Rows without tokens or memory keep their image's features; tokens and a memory change a
    row's features; the parts start at zero (a grown model is unchanged)."""
    from segprompt.universal.pixel_prompt import PixelPromptAttention

    torch.manual_seed(3)
    fresh = PixelPromptAttention(32, 16, 4)
    feats = torch.randn(2, 16, 8, 8)
    row_image = torch.tensor([0, 1, 1])
    tokens, tpos = torch.randn(3, 4, 32), torch.randn(3, 4, 32)
    valid = torch.tensor([[True, True, False, False], [False] * 4, [True, False, False, False]])
    memory = (torch.rand(3, 8, 8) > 0.5).float()
    has = torch.tensor([False, False, True])
    torch.testing.assert_close(fresh(feats, row_image, tokens, tpos, valid, memory, has), feats[row_image], rtol=0, atol=0)
    attn = PixelPromptAttention(32, 16, 4)
    for layer in (attn.out, attn.memory[-1]):
        nn.init.normal_(layer.weight, std=0.2)
    rows = attn(feats, row_image, tokens, tpos, valid, memory, has)
    torch.testing.assert_close(rows[1], feats[1], rtol=0, atol=0)  # no valid token, no memory
    assert not torch.allclose(rows[0], feats[0]) and not torch.allclose(rows[2], feats[1])
    tokens2 = tokens.clone()
    tokens2[0, 2:] += 10  # padding tokens are never read
    torch.testing.assert_close(attn(feats, row_image, tokens2, tpos, valid, memory, has), rows)
    without_memory = attn(feats, row_image, tokens, tpos, valid, memory, torch.zeros(3, dtype=torch.bool))
    assert not torch.allclose(without_memory[2], rows[2]) and torch.equal(without_memory[0], rows[0])


@settings(max_examples=30, deadline=None)
@given(st.floats(0, 90), st.floats(0, 60), st.floats(1, 60), st.floats(1, 40))
def test_a_box_region_covers_the_box_cell_by_cell(x0, y0, w, h):
    """The box as a dense prompt: each mask-feature cell holds the share of it inside the box, so
    the map sums to the box's area (in cells) and is 1 only inside, 0 outside."""
    from segprompt.universal.prompting import LongestSide

    tf = LongestSide(64, (80, 120))  # 120 x 80 image -> 64 x 43 content in a 64 x 64 frame
    x1, y1 = min(x0 + w, 120.0), min(y0 + h, 80.0)
    pt = prompt_tensors([PromptSet(box=Box(np.array([x0, y0, x1, y1]))), PromptSet(points=Points.positive((5, 5)))], [tf, tf], [0, 0], 8, 16)
    region = pt.box_region.numpy()
    (mx0, my0), (mx1, my1) = tf.apply_coords(np.array([[x0, y0], [x1, y1]])) * (16 / 64)  # the box in cells
    assert region.shape == (2, 16, 16) and region[1].sum() == 0
    assert abs(region[0].sum() - (mx1 - mx0) * (my1 - my0)) < 1e-3
    assert region.min() >= 0 and region.max() <= 1
    cy, cx = np.nonzero(region[0] > 0)
    # the map is float32: a cell the box covers by less than 1e-6 of its side (an edge within
    # rounding of a cell boundary, e.g. x0 = 44.999999999999986 -> 5.999999999999998 cells) reads 0
    eps = 1e-6
    assert cx.min() == int(np.floor(mx0 + eps)) and cy.min() == int(np.floor(my0 + eps))
    assert cx.max() == int(np.ceil(mx1 - eps)) - 1 and cy.max() == int(np.ceil(my1 - eps)) - 1
    assert prompt_tensors([PromptSet(points=Points.positive((5, 5)))], [tf], [0], 8, 16).box_region is None


# -- the Segmenter -----------------------------------------------------------------------------

def test_every_prompt_kind_alone_and_together(model):
    from segprompt.models.universal import UniversalSegmenter

    seg = UniversalSegmenter(model=model)
    img = _image(5, (50, 70))
    state = seg.encode(img)
    ref = Reference(_image(6), _square())
    kinds = {
        "points": dict(points=Points.positive((20, 20))),
        "box": dict(box=Box(np.array([3.0, 4.0, 30.0, 40.0]))),
        "scribble": dict(scribbles=(Scribble(np.array([[5.0, 5.0], [25.0, 30.0]])),)),
        "mask": dict(mask=MaskPrompt(_square((50, 70)))),
        "text": dict(text=Text("a ring")),
        "reference": dict(reference=ref),
    }
    sets = [PromptSet(**kw) for kw in kinds.values()]
    sets.append(PromptSet(**{k: v for kw in kinds.values() for k, v in kw.items() if k != "mask"}))
    pred = seg.segment(state, sets, multimask="all")
    assert pred.masks.shape == (7, 3, 50, 70) and pred.masks.dtype == bool
    assert pred.scores.shape == (7, 3) and pred.logits.shape == (7, 3, 16, 16)
    again = seg.segment(state, [PromptSet(points=Points.positive((20, 20)), mask=MaskPrompt(pred.logits[0, 0], kind="logits"))])
    assert again.masks.shape == (1, 1, 50, 70)
    one_by_one = np.concatenate([seg.segment(state, [s], multimask="all").masks for s in sets])
    np.testing.assert_array_equal(one_by_one, pred.masks)  # batching N prompt sets changes nothing


def test_text_the_model_does_not_know_is_refused_with_its_words(model):
    from segprompt.models.universal import UniversalSegmenter

    seg = UniversalSegmenter(model=model)
    with pytest.raises(PromptError, match="disc, star, ring"):
        seg.predict(_image(), [PromptSet(text=Text("a polyp"))])


def test_generic_mode_gives_classes_from_the_vocabulary(model):
    from segprompt.models.universal import UniversalSegmenter

    seg = UniversalSegmenter(model=model)
    out = seg.generic(_image(7, (40, 60)), threshold=0.0)
    assert out.semantic.shape == (40, 60) and out.semantic.dtype == np.int64
    assert out.masks.shape[1:] == (40, 60) and len(out.classes) == len(out.masks) == len(out.scores)
    assert set(np.unique(out.semantic)) <= set(range(-1, len(WORDS)))
    for m, c in zip(out.masks, out.classes):
        assert (out.semantic[m] == c).all()
    assert out.vocabulary == WORDS


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    from segprompt.models.registry import create_segmenter
    from segprompt.universal.checkpoint import load_universal, save_universal

    torch.manual_seed(4)
    cfg = tiny_config(backbone="sam-tiny", backbone_kwargs={"out_channels": 16})
    m = UniversalModel(cfg)
    path = save_universal(m, tmp_path / "u.safetensors")
    back = load_universal(path)
    a, b = m.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    seg = create_segmenter("universal", checkpoint=path)
    assert seg.vocabulary == WORDS and seg.model.cfg == cfg
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        load_universal(tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match="checkpoint"):
        create_segmenter("universal")


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip"])
def test_clip_text_towers_give_the_library_text_embedding(kind):
    """The universal decoder's text encoders over the existing backbone adapters: the pooled
    embedding is the library's own text feature, and any text is accepted (open vocabulary)."""
    import torch.nn.functional as F

    from segprompt.models.universal import UniversalSegmenter
    from segprompt.universal.text import build_text_encoder

    texts = ["a polyp", "a dark round lesion"]
    if kind == "open_clip":
        from tunevlseg.models import tiny_openclip_model

        clip, tok = tiny_openclip_model()
        enc = build_text_encoder("open_clip", (), 0, model=clip, tokenizer=tok)
        want = clip.encode_text(tok(texts))
    else:
        from tunevlseg.testing import tiny_hf_clip

        clip = tiny_hf_clip()
        enc = build_text_encoder("hf_clip", (), 0, model=clip)
        ids = enc.tower.tokenize(texts)
        pooled = clip.text_model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).pooler_output
        want = clip.text_projection(pooled)  # CLIPModel.get_text_features' rule
    with torch.no_grad():
        got = enc(texts)
    torch.testing.assert_close(got.pooled, want.float(), rtol=1e-5, atol=1e-5)
    assert got.tokens.shape[:2] == got.valid.shape and got.tokens.shape[-1] == enc.token_dim
    assert not any(p.requires_grad for p in clip.parameters())  # frozen by default
    torch.manual_seed(0)
    model = UniversalModel(tiny_config(text=kind, words=(), embed_dim=enc.embed_dim), pyramid=ConvPyramid(), text=enc).eval()
    seg = UniversalSegmenter(model=model, vocabulary=["polyp", "background"])
    pred = seg.predict(_image(), [PromptSet(text=Text("any words at all"))])
    assert pred.masks.shape == (1, 1, 64, 64)
    assert seg.generic(_image(), threshold=0.0).vocabulary == ("polyp", "background")


def test_pick_by_clicks_prefers_the_candidate_that_keeps_the_clicks():
    """Candidate 0 has the best predicted IoU but drops the two positive clicks; candidate 2 keeps
    them and leaves the negative out; candidate 1 keeps them and covers the negative."""
    from segprompt.errors import ConfigError
    from segprompt.models.resize import LongestSide
    from segprompt.models.universal import UniversalSegmenter, pick_by_clicks

    tf = LongestSide(64, (64, 64))  # the frame is the image, 16 x 16 cells of 4 px
    logits = torch.full((2, 3, 16, 16), -4.0)
    logits[:, 0, 12:, 12:] = 4.0
    logits[:, 1, :8, :] = 4.0
    logits[:, 2, :8, :8] = 4.0
    scores = torch.tensor([[0.9, 0.5, 0.4], [0.9, 0.5, 0.4]])
    clicks = PromptSet(points=Points([[6.0, 6.0], [20.0, 10.0], [50.0, 10.0]], [1, 1, 0]))
    no_clicks = PromptSet(box=Box((0, 0, 30, 30)))
    assert pick_by_clicks(logits, scores, [clicks, no_clicks], tf).tolist() == [2, 0]
    tied = torch.tensor([[0.1, 0.6, 0.7], [0.9, 0.5, 0.4]])
    logits[0, 1] = logits[0, 2]  # the same agreement: the higher score wins
    assert pick_by_clicks(logits, tied, [clicks, no_clicks], tf).tolist()[0] == 2
    with pytest.raises(ConfigError, match="pick"):
        UniversalSegmenter(model=torch.nn.Linear(1, 1), pick="best")
