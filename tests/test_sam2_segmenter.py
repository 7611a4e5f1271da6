"""The ``sam2`` segmenter against the sam2 package's own SAM2ImagePredictor, on the same weights.

A tiny random SAM 2 (the package's sam2.1 hiera_t config shrunk by hydra overrides) is written
in the official file layout and loaded twice: through ``create_segmenter("sam2", checkpoint=...)``
and through the package's ``build_sam2(config, path, hydra_overrides_extra=...)`` for the
reference predictor. Masks must agree on >= 99.9% of pixels and scores to 1e-4 for points,
boxes, scribbles, mask feedback and batched prompt sets, under every multimask policy.
"""

from __future__ import annotations

import functools
from unittest import mock

import numpy as np
import pytest
import torch

from segprompt.data.synthetic import SyntheticLesions
from segprompt.errors import ConfigError, PromptError, WeightsError
from segprompt.models import create_segmenter
from segprompt.models.registry import SEGMENTERS
from segprompt.models.sam import scribble_to_points
from segprompt.models.sam2 import Sam2Segmenter, resolve_precision
from segprompt.models.sam2_build import (
    OFFICIAL_LAYOUTS,
    KeyLayout,
    detect_arch,
    get_arch,
    load_sam2,
    tiny_arch,
    tiny_sam2,
    write_tiny_checkpoint,
)
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet, Scribble

sam2_pkg = pytest.importorskip("sam2")
from sam2.build_sam import build_sam2  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

SIZE = 256  # tiny model input side


@pytest.fixture(scope="module", autouse=True)
def _registered():
    # the lead registers "sam2" in segprompt/models/registry.py with exactly this path
    if "sam2" not in SEGMENTERS:
        SEGMENTERS.add("sam2", "segprompt.models.sam2:Sam2Segmenter")
    yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sam2") / "tiny_sam2.pt", seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def image():
    # not square: the model's square resize changes the aspect ratio
    sample = SyntheticLesions(n=1, seed=3, size=(190, 300), style="endoscopy")[0]
    return sample.image, sample.mask


@pytest.fixture(scope="module")
def seg(checkpoint):
    return create_segmenter("sam2", checkpoint=str(checkpoint), multimask="all")


@pytest.fixture(scope="module")
def state(seg, image):
    return seg.encode(image[0])


@pytest.fixture(scope="module")
def predictor(checkpoint, image):
    """The package's predictor on the package's own loading of the same file."""
    arch = tiny_arch(SIZE)
    model = build_sam2(arch.config, str(checkpoint), device="cpu", hydra_overrides_extra=list(arch.overrides))
    pred = SAM2ImagePredictor(model)
    # sam2 1.1.0 hard-codes the backbone grid of a 1024 px input; give it the tiny model's
    pred._bb_feat_sizes = [(SIZE // 4, SIZE // 4), (SIZE // 8, SIZE // 8), (SIZE // 16, SIZE // 16)]
    pred.set_image(image[0])
    return pred


def _cases(mask: np.ndarray):
    """(our PromptSet, the equivalent SAM2ImagePredictor.predict keyword arguments) pairs."""
    ys, xs = np.nonzero(mask)
    cx, cy = float(xs.mean()), float(ys.mean())
    h, w = mask.shape
    one = np.array([[cx, cy]], np.float32)
    three = np.array([[cx, cy], [cx + 5.5, cy - 3.25], [5.0, h - 6.0]], np.float32)
    lab3 = np.array([1, 1, 0])
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    stroke = np.array([[cx - 20, cy], [cx, cy + 4], [cx + 20, cy]], np.float32)
    along = scribble_to_points(stroke, 5).astype(np.float32)
    return [
        (PromptSet(points=Points(one, [1])), dict(point_coords=one, point_labels=np.array([1]))),
        (PromptSet(points=Points(three, lab3)), dict(point_coords=three, point_labels=lab3)),
        (PromptSet(box=Box(box)), dict(box=box)),
        (PromptSet(box=Box(box), points=Points(three[2:], [0])), dict(box=box, point_coords=three[2:], point_labels=np.array([0]))),
        (PromptSet(scribbles=(Scribble(stroke, 1),)), dict(point_coords=along, point_labels=np.ones(len(along), int))),
        (PromptSet(points=Points(np.array([[w - 20.0, 15.0]], np.float32), [1])), dict(point_coords=np.array([[w - 20.0, 15.0]], np.float32), point_labels=np.array([1]))),
    ]


def _check(ours_masks, ours_scores, ref_masks, ref_scores, what):
    agree = float((ours_masks == ref_masks).mean())
    assert agree >= 0.999, f"{what}: masks agree on {agree:.5f} of pixels"
    np.testing.assert_allclose(ours_scores, ref_scores, atol=1e-4, err_msg=what)


def test_masks_are_not_trivial(predictor, image):
    # the parity below means something only if the tiny model's masks have real edges
    fractions = [predictor.predict(**kw, multimask_output=True)[0].mean(axis=(1, 2)) for _, kw in _cases(image[1])]
    fractions = np.concatenate(fractions)
    assert ((fractions > 0.01) & (fractions < 0.99)).mean() >= 0.6, fractions


def test_state_holds_embedding_and_high_res_features(state, predictor):
    ref = predictor._features
    assert state.features["image_embed"].shape == (1, 64, SIZE // 16, SIZE // 16)
    torch.testing.assert_close(state.features["image_embed"], ref["image_embed"], atol=1e-5, rtol=0)
    for key, want in zip(("high_res_0", "high_res_1"), ref["high_res_feats"]):
        torch.testing.assert_close(state.features[key], want, atol=1e-5, rtol=0)
    assert state.input_size == (SIZE, SIZE) and state.original_size == (190, 300)


@pytest.mark.parametrize("multimask", [True, False])
def test_parity_points_boxes_scribbles(seg, state, predictor, image, multimask):
    for i, (ps, kw) in enumerate(_cases(image[1])):
        ref_m, ref_s, ref_low = predictor.predict(**kw, multimask_output=multimask)
        pred = seg.segment(state, ps, multimask="all" if multimask else "single")
        _check(pred.masks[0], pred.scores[0], ref_m, ref_s, f"case {i} multimask={multimask}")
        np.testing.assert_allclose(pred.logits[0], ref_low, atol=1e-3)


def test_parity_mask_feedback(seg, state, predictor, image):
    cases = _cases(image[1])
    for i in (0, 2):
        ps, kw = cases[i]
        _, ref_s0, ref_low = predictor.predict(**kw, multimask_output=True)
        best = int(np.argmax(ref_s0))
        ref_m, ref_s, _ = predictor.predict(**kw, mask_input=ref_low[best][None], multimask_output=False)
        first = seg.segment(state, ps, multimask="all")
        logits = first.logits[0, int(np.argmax(first.scores[0]))]
        fed = PromptSet(points=ps.points, box=ps.box, mask=MaskPrompt(logits, kind="logits"))
        pred = seg.segment(state, fed, multimask="single")
        _check(pred.masks[0], pred.scores[0], ref_m, ref_s, f"mask feedback case {i}")
    # a mask prompt alone (no clicks) goes through the prompt encoder's dense path only
    _, _, ref_low = predictor.predict(**cases[0][1], multimask_output=False)
    ref_m, ref_s, _ = predictor.predict(mask_input=ref_low, multimask_output=False)
    pred = seg.segment(state, PromptSet(mask=MaskPrompt(ref_low[0], kind="logits")), multimask="single")
    _check(pred.masks[0], pred.scores[0], ref_m, ref_s, "mask prompt alone")
    with pytest.raises(PromptError, match="64x64"):
        seg.segment(state, PromptSet(mask=MaskPrompt(np.zeros((32, 32), np.float32), kind="logits")))


def test_parity_batched_prompt_sets(seg, state, predictor, image):
    cases = _cases(image[1]) * 3  # 18 sets of 5 structures, decoded in one segment() call
    pred = seg.segment(state, [ps for ps, _ in cases], multimask="all")
    assert pred.masks.shape == (18, 3, 190, 300)
    for i, (_, kw) in enumerate(cases):
        ref_m, ref_s, _ = predictor.predict(**kw, multimask_output=True)
        _check(pred.masks[i], pred.scores[i], ref_m, ref_s, f"batched set {i}")
    # and against the predictor's own multi-object batch (B x 1 point in one call)
    pts = np.array([[[60.0, 40.0]], [[150.0, 95.0]], [[250.0, 160.0]]], np.float32)
    ref_m, ref_s, _ = predictor.predict(point_coords=pts, point_labels=np.ones((3, 1), int), multimask_output=True)
    pred = seg.segment(state, [PromptSet(points=Points(p, [1])) for p in pts], multimask="all")
    _check(pred.masks, pred.scores, ref_m, ref_s, "predictor batch mode")


def test_multimask_policies(seg, state, predictor, image):
    cases = _cases(image[1])
    sets = [ps for ps, _ in cases]
    multi = [predictor.predict(**kw, multimask_output=True) for _, kw in cases]
    single = [predictor.predict(**kw, multimask_output=False) for _, kw in cases]
    target = image[1]
    for policy in ("single", "first", "best", "oracle", "auto"):
        pred = seg.segment(state, sets, multimask=policy, targets=target if policy == "oracle" else None)
        assert pred.masks.shape == (len(sets), 1, 190, 300)
        for i, ((m3, s3, _), (m1, s1, _)) in enumerate(zip(multi, single)):
            lone_point = cases[i][0].kinds == {"points"} and len(cases[i][0].points) == 1
            if policy == "single" or (policy == "auto" and not lone_point):
                want, score = m1[0], s1[0]
            elif policy == "first":
                want, score = m3[0], s3[0]
            elif policy in ("best", "auto"):
                want, score = m3[int(np.argmax(s3))], s3.max()
            else:
                ious = [(m & target).sum() / max(1, (m | target).sum()) for m in m3.astype(bool)]
                want, score = m3[int(np.argmax(ious))], s3[int(np.argmax(ious))]
            _check(pred.masks[i, 0], pred.scores[i, 0], want, score, f"{policy} set {i}")
        if policy == "auto":
            assert [int(c) for c in pred.chosen] == [int(np.argmax(multi[0][1])), -1, -1, -1, -1, int(np.argmax(multi[5][1]))]


def test_cache_round_trip(checkpoint, image, tmp_path):
    folder = tmp_path / "cache"
    first = Sam2Segmenter(checkpoint=checkpoint, cache=folder)
    fresh = first.encode(image[0])
    assert first.cache.stats.misses == 1
    second = Sam2Segmenter(checkpoint=checkpoint, cache=folder)
    cached = second.encode(image[0])
    assert second.cache.stats.hits == 1 and cached.key == fresh.key
    assert set(cached.features) == {"image_embed", "high_res_0", "high_res_1"}
    for k, v in fresh.features.items():
        assert torch.equal(cached.features[k], v), k
    sets = [ps for ps, _ in _cases(image[1])]
    a, b = first.segment(fresh, sets), second.segment(cached, sets)
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.scores, b.scores)
    # other weights -> another signature -> no stale hit
    other = Sam2Segmenter(model=tiny_sam2(seed=5), arch=tiny_arch(SIZE), cache=folder)
    other.encode(image[0])
    assert other.cache.stats.misses == 1 and other.cache.stats.hits == 0


def test_checkpoint_loading_and_detection(seg, checkpoint, tmp_path):
    assert seg.arch == tiny_arch(SIZE) and seg.config_name == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert seg.image_size == SIZE and seg.lowres_size == SIZE // 4
    data = torch.load(checkpoint, weights_only=True)
    assert set(data) == {"model", "sam2_arch"}  # the official layout plus the record
    # the same weights as a bare state dict: its layout is none of the official ones
    bare = tmp_path / "bare.pth"
    torch.save(data["model"], bare)
    with pytest.raises(ConfigError, match=r"unknown SAM 2 key layout .*embed_dim 16, stages \[1, 1, 2, 1\]"):
        Sam2Segmenter(checkpoint=bare)
    model, arch = load_sam2(bare, arch=tiny_arch(SIZE))  # the caller names the configuration
    assert all(torch.equal(v, seg.model.state_dict()[k]) for k, v in model.state_dict().items())
    # a video predictor of the same configuration and weights, for the volume API
    video = seg.video_predictor()
    assert type(video).__name__ == "SAM2VideoPredictor"
    assert all(torch.equal(v, video.state_dict()[k]) for k, v in seg.model.state_dict().items())
    tv = tiny_sam2(seed=0, video=True)
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in seg.model.state_dict().items())


def _official_state_dict(name: str) -> dict:
    """The keys and shapes of an official configuration, built on the meta device (no memory)."""
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from segprompt.models.sam2_build import _hydra_ready

    _hydra_ready()
    cfg = compose(config_name=get_arch(name).config)
    OmegaConf.resolve(cfg)
    # Hiera calls .item() on a linspace for its drop-path rates: keep that one on the CPU
    with torch.device("meta"), mock.patch("torch.linspace", functools.partial(torch.linspace, device="cpu")):
        return instantiate(cfg.model, _recursive_=True).state_dict()


@pytest.mark.parametrize("name", sorted(OFFICIAL_LAYOUTS))
def test_official_configs_detected_from_keys(name):
    sd = _official_state_dict(name)
    assert KeyLayout.from_state_dict(sd) == OFFICIAL_LAYOUTS[name]
    assert detect_arch(sd).name == name
    if name == "sam2.1_hiera_t":  # MedSAM2 is a finetune with these keys; its entry names 512 px
        from segprompt.weights import get_entry

        entry = get_entry("medsam2")
        assert entry.family == "sam2" and get_arch(entry.architecture).image_size == 512
        assert get_arch(entry.architecture).config == get_arch(name).config


def test_errors(tmp_path, checkpoint):
    with pytest.raises(WeightsError, match="not found"):
        Sam2Segmenter(checkpoint=tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read SAM 2 checkpoint"):
        Sam2Segmenter(checkpoint=junk)
    sam1 = tmp_path / "sam1.pth"
    torch.save({"image_encoder.blocks.0.attn.qkv.weight": torch.zeros(3, 1), "mask_decoder.iou_token.weight": torch.zeros(1, 1)}, sam1)
    with pytest.raises(ConfigError, match="not a SAM 2 checkpoint.*SAM 1"):
        Sam2Segmenter(checkpoint=sam1)
    with pytest.raises(ConfigError, match="does not fit SAM 2 architecture 'sam2.1_hiera_t'.*shape mismatches"):
        Sam2Segmenter(checkpoint=checkpoint, arch="sam2.1_hiera_t")
    with pytest.raises(ConfigError, match="unknown SAM 2 architecture"):
        Sam2Segmenter(checkpoint=checkpoint, arch="sam2.1_hiera_xl")
    with pytest.raises(WeightsError, match="exactly one"):
        Sam2Segmenter()
    assert resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp32_parity_and_bf16(checkpoint, image):
    cpu = Sam2Segmenter(checkpoint=checkpoint, multimask="all")
    sets = [ps for ps, _ in _cases(image[1])]
    ref = cpu.segment(cpu.encode(image[0]), sets)
    gpu = Sam2Segmenter(checkpoint=checkpoint, multimask="all", device="cuda", precision="fp32")
    out = gpu.segment(gpu.encode(image[0]), sets)
    assert (out.masks == ref.masks).mean() >= 0.999
    np.testing.assert_allclose(out.scores, ref.scores, atol=1e-3)
    auto = Sam2Segmenter(checkpoint=checkpoint, multimask="all", device="cuda")
    assert auto.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    out = auto.segment(auto.encode(image[0]), sets)
    assert (out.masks == ref.masks).mean() >= 0.98


def test_cpu_default_is_one_set_per_decoder_call_so_a_set_does_not_depend_on_the_others(image):
    """max_batch=None: CPU_MAX_BATCH (1) on a CPU (benchmarks/sam2_batch.py: large calls are slower there)."""
    from segprompt.models.sam2 import CPU_MAX_BATCH

    seg = Sam2Segmenter(model=tiny_sam2(seed=3), arch=tiny_arch(SIZE), multimask="all")
    assert seg.max_batch == CPU_MAX_BATCH == 1
    assert Sam2Segmenter(model=tiny_sam2(seed=3), arch=tiny_arch(SIZE), max_batch=16).max_batch == 16
    pixels = image[0]
    h, w = pixels.shape[:2]
    rng = np.random.default_rng(4)
    prompts = [PromptSet(points=Points(rng.uniform([0, 0], [w - 1, h - 1], (2, 2)), [1, 0])) for _ in range(5)]
    state = seg.encode(pixels)
    together = seg.segment(state, prompts)
    assert 0.01 < together.masks.mean() < 0.99
    for i in (0, 2, 4):
        alone = seg.segment(state, prompts[i])
        assert np.array_equal(alone.masks[0], together.masks[i]) and np.array_equal(alone.logits[0], together.logits[i])
