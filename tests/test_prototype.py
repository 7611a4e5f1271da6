"""Prototype matching refined by SAM (segprompt.models.prototype, segprompt.sot.methods_prototype).

The feature map is hand-made (an injected extractor on a 4 x 4 grid over a 64 px input, 16 px
cells), so the prototype, the similarity map and the points are computed by hand here; the timm
extractor is checked against timm's own ``forward_features`` on a tiny random ViT.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segprompt.errors import ConfigError, PromptError
from segprompt.models.prototype import FeatureExtractor, PrototypeSegmenter, create_feature_extractor
from segprompt.models.registry import create_segmenter
from segprompt.prompts import Points, PromptSet, Reference, Text
from segprompt.sot.methods import ClassPrompt
from segprompt.sot.methods_prototype import PrototypeMatch

S, G = 64, 4  # input side, grid side: 16 px cells


class HandMade(FeatureExtractor):
    """Features looked up by the image's first pixel value: {id: (D, G, G) tensor}."""

    name = "hand-made"

    def __init__(self, table: dict[int, torch.Tensor]) -> None:
        self.table, self.calls = table, 0

    @property
    def img_size(self) -> int:
        return S

    def features(self, image: np.ndarray) -> torch.Tensor:
        self.calls += 1
        return self.table[int(image[0, 0, 0])][None].float()


def _image(ident: int, size=(S, S), seed=0) -> np.ndarray:
    img = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    img[0, 0, 0] = ident
    return img


def _grid(fill, cells: dict) -> torch.Tensor:
    f = torch.tensor(fill, dtype=torch.float32)[:, None, None].repeat(1, G, G)
    for (r, c), v in cells.items():
        f[:, r, c] = torch.tensor(v, dtype=torch.float32)
    return f


# reference 1: cells (0,0) (0,1) (1,0) (1,1) carry the object; (2,0) would spoil the mean if it entered
REF1 = _grid([0, 0, 5], {(0, 0): [1, 0, 0], (0, 1): [3, 0, 0], (1, 0): [1, 2, 0], (1, 1): [3, 2, 0], (2, 0): [0, 0, 100]})
# target: cell (2, 3) is the prototype's direction (cosine 1), cell (0, 0) the opposite (cosine -1)
TARGET = _grid([0, 0, 1], {(2, 3): [2, 1, 0], (0, 0): [-2, -1, 0]})
# reference 2: a different object feature in cell (3, 3)
REF2 = _grid([0, 0, 5], {(3, 3): [0, 4, 4]})


def _ref1_mask() -> np.ndarray:
    m = np.zeros((S, S), bool)
    m[:32, :24] = True  # cells (0,0), (1,0) covered 1.0; (0,1), (1,1) exactly 0.5 -> in
    m[32:36, :16] = True  # cell (2,0) covered 0.25 -> out
    return m


@pytest.fixture(scope="module")
def sam():
    return create_segmenter("sam-tiny")


def _seg(refine="none", **kw):
    return PrototypeSegmenter(features=HandMade({1: REF1, 2: TARGET, 3: REF2}), refine=refine, **kw)


def test_prototype_and_similarity_on_handmade_features():
    seg = _seg(threshold=0.5)
    assert seg.base is None  # refine="none" with a non-SAM extractor builds no SAM
    ref = Reference(_image(1), _ref1_mask())
    proto = seg.prototype(ref)
    # by hand: mean of (1,0,0), (3,0,0), (1,2,0), (3,2,0); (2,0) is covered 0.25 < 0.5 and stays out
    assert torch.allclose(proto, torch.tensor([2.0, 1.0, 0.0]))
    state = seg.encode(_image(2))
    grid, sim = seg.similarity(state, ref)
    expected = torch.zeros(G, G)
    expected[2, 3], expected[0, 0] = 1.0, -1.0  # cosines by hand; every other cell is orthogonal
    assert torch.allclose(grid, expected, atol=1e-6)
    # to the image: bilinear grid -> 64 x 64 (square input, nothing to crop)
    ref_sim = F.interpolate(expected[None, None], size=(S, S), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(sim, ref_sim, atol=1e-6)
    # the corner cell (0, 0) reaches -1 (bilinear clamps at the border); cell (2, 3) is inside in y
    assert float(sim.max()) == pytest.approx(31 / 32) and float(sim.min()) == pytest.approx(-1.0)
    # argmax by hand: cell (2, 3) is rows 32-47, cols 48-63; bilinear is 1 for cols >= 56 (past the
    # last cell centre 55.5) and 31/32 on rows 39 and 40 (1/32 of a cell from the centre 39.5): the
    # first in row-major order is (x, y) = (56, 39). argmin: cell (0, 0) is -1 up to its centre: (0, 0).
    res = seg.run(state, ref)
    assert res.points.coords.tolist() == [[56.0, 39.0], [0.0, 0.0]]
    assert res.points.labels.tolist() == [1, 0]
    assert float(ref_sim[39, 56]) == pytest.approx(31 / 32)
    # refine="none": the mask is the region sim >= 0.5, the score its mean similarity
    np.testing.assert_array_equal(res.mask, (ref_sim >= 0.5).numpy())
    assert res.scores[0] == pytest.approx(float(ref_sim[ref_sim >= 0.5].mean()), rel=1e-5)
    pred = seg.segment(state, PromptSet(reference=ref))
    assert pred.masks.shape == (1, 1, S, S) and pred.logits is None
    np.testing.assert_array_equal(pred.masks[0, 0], res.mask)
    # probabilities: "similarity" is the clipped cosine, "sot" the mean cosine inside the mask
    np.testing.assert_allclose(seg.probability(state, ref, kind="similarity"), ref_sim.clamp(0, 1).numpy(), atol=1e-6)
    sot = seg.probability(state, ref)
    assert sot.dtype == np.float32 and sot.shape == (S, S)
    np.testing.assert_allclose(sot, float(ref_sim[ref_sim >= 0.5].mean()) * res.mask, rtol=1e-5)
    with pytest.raises(ConfigError, match="refine='sam'"):
        seg.probability(state, ref, kind="mask")


def test_k_shot_mean_and_area_weighted_fallback():
    seg = _seg()
    r1 = Reference(_image(1), _ref1_mask())
    m2 = np.zeros((S, S), bool)
    m2[48:, 48:] = True  # exactly cell (3, 3)
    r2 = Reference(_image(3), m2)
    assert torch.allclose(seg.prototype(r2), torch.tensor([0.0, 4.0, 4.0]))
    # k references: the mean of the per-reference prototypes, (2,1,0) and (0,4,4)
    assert torch.allclose(seg.prototype([r1, r2]), torch.tensor([1.0, 2.5, 2.0]))
    # a mask that covers no cell >= 0.5: cell (0,0) 0.25, (0,1) 0.125 -> sum(f * cover) / sum(cover)
    small = np.zeros((S, S), bool)
    small[:4, :16] = True
    small[:2, 16:32] = True
    expected = (0.25 * torch.tensor([1.0, 0, 0]) + 0.125 * torch.tensor([3.0, 0, 0])) / 0.375
    assert torch.allclose(seg.prototype(Reference(_image(1), small)), expected)
    # prototypes are cached per reference: the extractor ran once per distinct reference image+mask
    calls = seg.extractor.calls
    seg.prototype([r1, r2])
    assert seg.extractor.calls == calls
    # a prototype tensor passes through
    p = torch.tensor([1.0, 2.0, 3.0])
    assert seg.prototype(p) is p


def test_sam_refinement_points_box_and_cascade(sam):
    seg = PrototypeSegmenter(features=HandMade({1: REF1, 2: TARGET}), base=sam, box=True, threshold=0.5)
    assert seg.refine == "sam" and not seg.shared
    ref = Reference(_image(1), _ref1_mask())
    state = seg.encode(_image(2))
    assert "embeddings" in state.features and state.features["dense"].shape == (1, 3, G, G)
    calls: list[PromptSet] = []
    real = sam.segment

    def spy(st, prompt, **kw):
        calls.append(prompt)
        return real(st, prompt, **kw)

    sam.segment = spy
    try:
        res = seg.run(state, ref)
    finally:
        del sam.segment
    assert len(calls) == 3 and seg.counts["mask_decoder"] == 3  # first decode + PerSAM's two passes
    first, a, b = calls
    assert first.points.coords.tolist() == [[56.0, 39.0], [0.0, 0.0]] and first.points.labels.tolist() == [1, 0]
    ys, xs = np.nonzero(res.region)
    np.testing.assert_array_equal(first.box.xyxy, [xs.min(), ys.min(), xs.max(), ys.max()])  # inclusive, as PerSAM
    assert a.mask is not None and a.mask.kind == "logits" and a.box is None
    assert b.mask is not None and b.box is not None
    # the answer is SAM's best of 3 for the last prompt
    last = sam.segment(state, b, multimask="all")
    best = int(np.argmax(last.scores[0]))
    assert res.best == best
    np.testing.assert_array_equal(res.mask, last.masks[0, best])
    pred = seg.segment(state, PromptSet(reference=ref))
    assert pred.masks.shape == (1, 1, S, S) and pred.chosen.tolist() == [best]
    np.testing.assert_array_equal(pred.masks[0, 0], last.masks[0, best])
    assert seg.segment(state, PromptSet(reference=ref), multimask="all").masks.shape == (1, 3, S, S)
    # on vs off: off, the mask is the similarity region and SAM is never called
    off = PrototypeSegmenter(features=seg.extractor, base=sam, refine="none", threshold=0.5)
    before = off.counts["mask_decoder"]
    np.testing.assert_array_equal(off.run(state, ref).mask, res.region)
    assert off.counts["mask_decoder"] == before
    # "mask": the sigmoid of the final logits at the image size
    logits = torch.as_tensor(last.logits[0, best])[None, None]
    want = sam.transform((S, S)).upscale_logits(logits)[0, 0].sigmoid().numpy()
    np.testing.assert_allclose(seg.probability(state, ref, kind="mask"), want, atol=1e-6)


def test_sam_tiny_features_share_the_refining_encoder(sam):
    seg = PrototypeSegmenter(base=sam)  # features="sam-tiny" by name: the built sam-tiny serves both
    assert seg.shared and seg.extractor.sam is seg.base
    img = _image(9, size=(80, 96))
    state = seg.encode(img)
    assert seg.counts == {"image_encoder": 1, "feature_encoder": 0, "mask_decoder": 0}
    mask = np.zeros((80, 96), bool)
    mask[20:60, 30:70] = True
    p = seg.probability(state, Reference(img, mask))
    assert p.shape == (80, 96) and p.dtype == np.float32 and 0.0 <= p.min() and p.max() <= 1.0
    assert seg.counts["image_encoder"] == 2 and seg.counts["mask_decoder"] == 3
    # the SoT value is one constant on the mask: the mean of the image-size similarity there
    res = seg.run(state, Reference(img, mask))
    if res.mask.any():
        assert np.unique(p[res.mask]).size == 1
        assert p[res.mask][0] == pytest.approx(np.clip(res.similarity_image[res.mask].mean(), 0, 1), rel=1e-5)


def test_timm_extractor_equals_forward_features():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=0).eval()
    ex = create_feature_extractor("timm", model=model)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1) * 255
    for size in ((64, 64), (48, 64)):  # square, and one padded at the bottom (zeros after normalising)
        img = _image(0, size=size, seed=1)
        x = (torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None] - mean) / std
        x = F.pad(x, (0, 64 - size[1], 0, 64 - size[0]))
        with torch.no_grad():
            tokens = model.forward_features(x)[:, model.num_prefix_tokens :]
        want = tokens.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        got = ex.features(img)
        assert got.shape == (1, 192, 4, 4)
        assert torch.allclose(got, want, atol=1e-5)
    # by name, through the segmenter (no SAM with refine="none")
    seg = PrototypeSegmenter(features="timm:vit_tiny_patch16_224", features_kwargs={"img_size": 64}, refine="none")
    assert seg.base is None and seg.extractor.name == "timm:vit_tiny_patch16_224"
    img = _image(0, size=(64, 64))
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    assert seg.probability(seg.encode(img), Reference(img, mask), kind="similarity").shape == (64, 64)
    with pytest.raises(ConfigError, match="model name"):
        create_feature_extractor("timm")


def test_errors_for_other_prompts_and_options():
    seg = _seg()
    state = seg.encode(_image(2))
    ref = Reference(_image(1), _ref1_mask())
    with pytest.raises(PromptError, match="needs a visual reference"):
        seg.segment(state, PromptSet(points=Points.positive((10, 10))))
    with pytest.raises(PromptError, match="does not accept points"):
        seg.segment(state, PromptSet(points=Points.positive((10, 10)), reference=ref))
    with pytest.raises(PromptError, match="reference"):
        seg.segment(state, PromptSet(text=Text("cat")))
    with pytest.raises(PromptError, match="Reference"):
        seg.prototype([])
    with pytest.raises(ConfigError, match="refine mode"):
        _seg(refine="maybe")
    with pytest.raises(ConfigError, match="feature extractor"):
        PrototypeSegmenter(features="nope:x", refine="none")


def test_sot_method_shape_range_and_cost(sam):
    seg = PrototypeSegmenter(base=sam)
    method = PrototypeMatch(seg)
    assert (method.name, method.modality, method.segmenter_name) == ("prototype", "visual", "prototype")
    rng = np.random.default_rng(3)
    refs = []
    for i in range(3):
        img = (rng.random((72, 96, 3)) * 255).astype(np.uint8)
        m = np.zeros((72, 96), bool)
        m[10 + 5 * i : 50, 20:70 - 5 * i] = True
        refs.append((img, m))
    prompts = [ClassPrompt("a", (refs[0],)), ClassPrompt("b", (refs[1], refs[2]))]
    prep = method.prepare(prompts)
    assert prep.encoder_passes == 3 and prep.decoder_calls == 0
    target = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    out = method.maps(target, prompts)
    assert out.maps.shape == (2, 64, 80) and out.maps.dtype == np.float32
    assert 0.0 <= out.maps.min() and out.maps.max() <= 1.0 and not out.failed
    # cost: the target once (features = SAM's embedding), 1 + 2 cascade decodes per class; the
    # prototypes were prepared, so no reference is encoded again
    assert (out.cost.encoder_passes, out.cost.decoder_calls) == (1, 6)
    again = method.maps(target, prompts)
    np.testing.assert_array_equal(again.maps, out.maps)
    # the map of class b is the segmenter's SoT probability for its 2-shot prototype
    state = seg.encode(target)
    want = seg.probability(state, [Reference(i, m) for i, m in refs[1:]])
    np.testing.assert_allclose(out.maps[1], want, atol=1e-6)
    sim = PrototypeMatch(seg, probability="similarity").maps(target, prompts)
    # a fresh method: its prototypes come from the segmenter's own reference cache, so the target only
    assert (sim.cost.encoder_passes, sim.cost.decoder_calls) == (1, 0)
    with pytest.raises(ConfigError):
        PrototypeMatch(seg, probability="logits")
