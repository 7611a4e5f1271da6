"""tunevlseg.segmenter and segprompt.sot.methods_clipseg on the tiny random CLIPSeg:
parity with transformers' CLIPSegForImageSegmentation, the visual prompt rule, k-shot, a learner
checkpoint, bad prompts, the two Show-or-Tell methods and their cost."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segprompt.errors import ConfigError, PromptError, WeightsError
from tunevlseg.segmenter import ClipSegSegmenter, create_clipseg_tiny
from segprompt.prompts import Points, PromptSet, Reference, Text
from segprompt.sot.methods import ClassPrompt
from segprompt.sot.methods_clipseg import ClipSegText, ClipSegVisual

ATOL = 1e-5


@pytest.fixture(scope="module")
def seg() -> ClipSegSegmenter:
    return create_clipseg_tiny(seed=0)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ref(seed: int, box: tuple[int, int, int, int] = (20, 10, 50, 30), size: tuple[int, int] = (70, 60)) -> Reference:
    x0, y0, x1, y1 = box
    mask = np.zeros(size, bool)
    mask[y0:y1, x0:x1] = True
    return Reference(_image(*size, seed), mask)


def _library(seg: ClipSegSegmenter, image: np.ndarray, **kwargs: torch.Tensor) -> torch.Tensor:
    """(B, S, S) logits of the library forward on the preprocessed target image."""
    with torch.no_grad():
        x = seg.vlsm.preprocess(image)
        return seg.vlsm.model(pixel_values=x.expand(len(next(iter(kwargs.values()))), -1, -1, -1), **kwargs).logits


def test_text_prompts_equal_the_library_forward(seg):
    image = _image(80, 96, 1)
    texts = ["a cat", "pink polyp", "road"]
    tok = seg.vlsm.tokenize(texts)
    ref = _library(seg, image, input_ids=tok.input_ids, attention_mask=tok.attention_mask)
    before = dict(seg.counts)
    state = seg.encode(image)
    pred = seg.segment(state, [PromptSet(text=t) for t in texts])
    assert pred.masks.shape == (3, 1, 80, 96) and pred.logits.shape == (3, 1, 64, 64)
    assert np.isnan(pred.scores).all() and pred.scores.shape == (3, 1)
    torch.testing.assert_close(torch.from_numpy(pred.logits[:, 0]), ref, rtol=0, atol=ATOL)
    prob = torch.sigmoid(F.interpolate(ref[:, None], size=(80, 96), mode="bilinear", align_corners=False))[:, 0].numpy()
    np.testing.assert_allclose(seg.probabilities(state, texts), prob, atol=ATOL)
    np.testing.assert_array_equal(pred.masks[:, 0], prob > 0.5)
    # one vision pass, one batched text call, and one decoder call per segment/probabilities call
    assert seg.counts["image_encoder"] - before["image_encoder"] == 1
    assert seg.counts["mask_decoder"] - before["mask_decoder"] == 2


@pytest.mark.parametrize("rule", ["none", "crop-blur-darken"])
def test_a_visual_prompt_equals_conditional_pixel_values(seg, rule):
    image, ref = _image(64, 64, 2), _ref(3)
    model = seg if rule == "crop-blur-darken" else ClipSegSegmenter(vlsm=seg.vlsm, visual_prompt=rule)
    cond = seg.vlsm.preprocess(ref.image) if rule == "none" else model.visual_prompt_pixels(ref)
    expected = _library(seg, image, conditional_pixel_values=cond)
    pred = model.segment(model.encode(image), PromptSet(reference=ref))
    torch.testing.assert_close(torch.from_numpy(pred.logits[:, 0]), expected, rtol=0, atol=ATOL)


def test_k_references_average_their_conditional_embeddings(seg):
    image, refs = _image(72, 64, 4), [_ref(5), _ref(6, box=(5, 5, 30, 60))]
    with torch.no_grad():
        embs = torch.cat([seg.vlsm.model.clip.get_image_features(seg.visual_prompt_pixels(r)).pooler_output for r in refs])
    expected = _library(seg, image, conditional_embeddings=embs.mean(0, keepdim=True))
    state = seg.encode(image)
    got = seg.decode(state, seg.reference_embedding(refs)[None])
    torch.testing.assert_close(got[:, 0], expected, rtol=0, atol=ATOL)
    up = torch.sigmoid(F.interpolate(expected[:, None], size=(72, 64), mode="bilinear", align_corners=False))[0, 0].numpy()
    np.testing.assert_allclose(seg.probability(state, refs), up, atol=ATOL)


# (x0, y0, x1, y1) of the object; the crop box widened by 10 % per side, as crop_mask truncates it
@pytest.mark.parametrize(
    "box, crop",
    [((20, 10, 50, 30), (17, 8, 53, 32)),  # wide: 36 x 24 crop, padded above and below
     ((30, 5, 42, 50), (28, 0, 43, 54))],  # tall: 15 x 54 crop, padded 19 left and 20 right
)
def test_visual_prompt_pixels_by_hand(seg, box, crop):
    ref = _ref(7, box=box, size=(64, 64))  # at the input size: no resize before the rule
    mean, std = seg.vlsm.mean.view(3).numpy(), seg.vlsm.std.view(3).numpy()
    norm = ((ref.image.astype(np.float32) / 255 - mean) / std).astype(np.float32)
    m = ref.mask[..., None].astype(np.float32)
    blend = norm * m + 0.1 * cv2.GaussianBlur(norm, (15, 15), 3) * (1 - m)
    x0, y0, x1, y1 = crop
    part = blend[y0:y1, x0:x1]
    h, w = part.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = part
    idx = np.floor(np.arange(64) * side / 64).astype(int)  # nearest resize to 64 x 64
    expected = square[idx][:, idx].transpose(2, 0, 1)
    got = seg.visual_prompt_pixels(ref)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the plain alternatives
    plain = {r: ClipSegSegmenter(vlsm=seg.vlsm, visual_prompt=r).visual_prompt_pixels(ref)[0].numpy() for r in ("mask-out", "none")}
    np.testing.assert_allclose(plain["mask-out"], (norm * m).transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(plain["none"], norm.transpose(2, 0, 1), atol=1e-6)


def test_bad_prompts_and_settings(seg):
    state = seg.encode(_image(64, 64, 8))
    with pytest.raises(PromptError, match="does not accept points"):
        seg.segment(state, PromptSet(points=Points.positive((3, 4))))
    with pytest.raises(PromptError, match="non-empty"):
        seg.segment(state, PromptSet(text="  "))
    with pytest.raises(PromptError, match="non-empty"):
        seg.probability(state, "")
    with pytest.raises(PromptError, match="one text or one reference"):
        seg.segment(state, PromptSet(text=Text("cat"), reference=_ref(9)))
    with pytest.raises(PromptError, match="at least one Reference"):
        seg.probability(state, [])
    with pytest.raises(ConfigError, match="visual_prompt"):
        ClipSegSegmenter(vlsm=seg.vlsm, visual_prompt="blur")


def test_missing_weights_and_checkpoint_say_where(seg, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPROMPT_HOME", str(tmp_path / "home"))
    with pytest.raises(WeightsError, match=str(tmp_path / "home" / "checkpoints" / "clipseg-rd64-refined")):
        ClipSegSegmenter()
    with pytest.raises(WeightsError, match="best.pt"):
        ClipSegSegmenter(vlsm=seg.vlsm, learner_checkpoint=tmp_path / "run")


@pytest.mark.parametrize("method, layout", [("maple", "best"), ("cocoop", "last")])
def test_a_learner_checkpoint_prompts_text_and_vision(seg, tmp_path, method, layout):
    """MaPLe (text + vision prompts + the extra decoder layer) from best.pt; CoCoOp (image-conditioned)
    from last.pt with the run's config.yaml: the logits of the VLSM's own forward with that learner."""
    import yaml

    from tunevlseg.learners import create_learner

    vlsm = seg.vlsm
    learner = create_learner(method, vlsm, n_ctx=2, depth=2, seed=0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in learner.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    cfg = {"vlsm": "clipseg-tiny", "vlsm_kwargs": {}, "method": method, "n_ctx": 2, "depth": 2, "learner_kwargs": {}, "seed": 0}
    (tmp_path / "checkpoints").mkdir()
    trained = {"learner": learner.state_dict(), "vlsm": {}}
    if layout == "best":
        torch.save({**trained, "config": cfg, "epoch": 3}, tmp_path / "checkpoints" / "best.pt")
        path = tmp_path
    else:
        torch.save({"format": "segprompt-fit-v1", "model": trained, "config": {"epochs": 3}}, tmp_path / "checkpoints" / "last.pt")
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({"suite": "tunevlseg-train", **cfg}))
        path = tmp_path / "checkpoints" / "last.pt"
    tuned = ClipSegSegmenter(vlsm=vlsm, learner_checkpoint=path)
    image = _image(64, 64, 10)
    x = vlsm.preprocess(image).expand(2, -1, -1, -1)
    with torch.no_grad():
        expected = vlsm(x, ["a cat", "road"], learner=learner)[:, 0]
        bare = vlsm(x, ["a cat", "road"])[:, 0]
    got = tuned.segment(tuned.encode(image), [PromptSet(text="a cat"), PromptSet(text="road")]).logits[:, 0]
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=ATOL)
    assert not torch.allclose(expected, bare, atol=1e-3)  # the learner changed the answer
    ref = _ref(11)
    with torch.no_grad():
        feats = vlsm.image_features(tuned.visual_prompt_pixels(ref), learner)[0]
    torch.testing.assert_close(tuned.reference_embedding(ref), feats, rtol=0, atol=ATOL)


def test_sot_methods_maps_and_cost(seg):
    image = _image(48, 56, 12)
    refs = [(_ref(13).image, _ref(13).mask), (_ref(14).image, _ref(14).mask)]
    prompts = [ClassPrompt("sky", tuple(refs[:1])), ClassPrompt("car", tuple(refs)), ClassPrompt("tree", tuple(refs[1:]))]
    fresh = ClipSegSegmenter(vlsm=seg.vlsm)  # empty embedding cache
    text = ClipSegText(fresh)
    assert (text.name, text.modality, text.segmenter_name) == ("clipseg", "text", "clipseg")
    out = text.maps(image, prompts)
    assert out.maps.shape == (3, 48, 56) and out.maps.dtype == np.float32 and 0 <= out.maps.min() and out.maps.max() <= 1
    np.testing.assert_allclose(out.maps, fresh.probabilities(fresh.encode(image), ["sky", "car", "tree"]), atol=1e-6)
    assert (out.cost.encoder_passes, out.cost.decoder_calls) == (2, 1)  # vision pass + one text call; one decoder call
    again = text.maps(image, prompts)
    assert (again.cost.encoder_passes, again.cost.decoder_calls) == (1, 1)  # the names' embeddings are kept

    visual = ClipSegVisual(fresh)
    assert (visual.name, visual.modality, visual.segmenter_name) == ("clipseg-visual", "visual", "clipseg")
    prep = visual.prepare(prompts)
    assert (prep.encoder_passes, prep.decoder_calls) == (2, 0)  # two distinct reference images
    out = visual.maps(image, prompts)
    assert out.maps.shape == (3, 48, 56) and 0 <= out.maps.min() and out.maps.max() <= 1
    assert (out.cost.encoder_passes, out.cost.decoder_calls) == (1, 1)
    state = fresh.encode(image)
    np.testing.assert_allclose(out.maps[1], fresh.probability(state, [Reference(*r) for r in refs]), atol=1e-6)
    rows = ClipSegVisual(ClipSegSegmenter(vlsm=seg.vlsm, max_rows=2)).maps(image, prompts)
    assert (rows.cost.encoder_passes, rows.cost.decoder_calls) == (3, 2)  # not prepared: 1 + 2 references; ceil(3 / 2) calls
    np.testing.assert_allclose(rows.maps, out.maps, atol=1e-6)
