"""MaskUpscaler (OpenCV's bilinear resize, thresholded into the caller's array) against
segment-anything's two ``F.interpolate`` steps (``LongestSide.upscale_logits``), and the ``sam``
Segmenter's ``mask_resize`` option that chooses between them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from segprompt.errors import ConfigError
from segprompt.models.resize import LongestSide, MaskUpscaler
from segprompt.models.sam import SamSegmenter
from segprompt.models.sam_arch import tiny_arch
from segprompt.prompts import Points, PromptSet


def _smooth_logits(seed: int, k: int, size: int) -> np.ndarray:
    """(k, size, size) float32 logits with blob-like sign regions, as a mask decoder gives."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(1, k, size, size, generator=g), 5, 1, 2) * 6
    return x[0].numpy()


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(5, 2600),
    w=st.integers(5, 2600),
    target_low=st.sampled_from([(64, 16), (256, 64), (1024, 256)]),
    threshold=st.sampled_from([0.0, 0.5, -1.0]),
    seed=st.integers(0, 10_000),
)
@example(h=745, w=64, target_low=(64, 16), threshold=-1.0, seed=1)  # 5 px wide at 64: one low-res column, all above -1
def test_differs_from_pytorchs_two_resizes_only_within_rounding_of_the_threshold(h, w, target_low, threshold, seed):
    target, low = target_low
    tf = LongestSide(target, (h, w))
    assume(min(tf.input_size) >= 1)  # a 5 x 641 image is 0 rows tall at 64 px: segment-anything fails too
    logits = _smooth_logits(seed, 3, low)
    reference = tf.upscale_logits(torch.from_numpy(logits)[None])[0].numpy()  # float (3, h, w)
    out = np.empty((3, h, w), bool)
    got = MaskUpscaler(tf)(logits, threshold, out)
    assert got is out
    expected = reference > threshold
    differ = got != expected
    # a differing pixel's reference logit is within float rounding of the threshold, and they are rare
    assert np.all(np.abs(reference[differ] - threshold) < 1e-4 * max(1.0, float(np.abs(reference).max())))
    assert differ.mean() <= 1e-4
    if min(tf.input_size) * low / target >= 8:  # 8+ low-res cells across the image: the masks have edges, not empty or full
        assert 0.02 < expected.mean() < 0.98


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(5, 900),
    w=st.integers(5, 900),
    target_low=st.sampled_from([(64, 16), (256, 64)]),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_logits_at_reads_what_upscale_logits_gives_at_the_clicked_pixels(h, w, target_low, seed, data):
    target, low = target_low
    tf = LongestSide(target, (h, w))
    assume(min(tf.input_size) >= 1)
    logits = torch.from_numpy(_smooth_logits(seed, 3, low))[None]
    n = data.draw(st.integers(1, 12))
    xs = data.draw(st.lists(st.floats(0, w - 1e-3), min_size=n, max_size=n))
    ys = data.draw(st.lists(st.floats(0, h - 1e-3), min_size=n, max_size=n))
    coords = np.stack([xs, ys], axis=1)
    full = tf.upscale_logits(logits)[0]  # (3, H, W)
    want = full[:, np.floor(coords[:, 1]).astype(int), np.floor(coords[:, 0]).astype(int)]
    got = tf.logits_at(logits, coords)[0]
    assert got.shape == (3, n)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)


def test_reuses_its_buffers_and_writes_into_a_view():
    tf = LongestSide(256, (300, 200))
    up = MaskUpscaler(tf)
    result = np.zeros((4, 3, 300, 200), bool)
    for i in range(4):
        up(_smooth_logits(i, 3, 64), 0.0, result[i])
        expected = tf.upscale_logits(torch.from_numpy(_smooth_logits(i, 3, 64))[None])[0].numpy() > 0
        assert (result[i] == expected).mean() > 0.9999
    assert not np.array_equal(result[0], result[1])


def _tiny(mask_resize: str) -> SamSegmenter:
    torch.manual_seed(0)
    model = tiny_arch(img_size=128).build()
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:  # masks with real edges
            mlp.layers[-1].weight.mul_(40.0)
    return SamSegmenter(model=model, multimask="all", mask_resize=mask_resize)


@pytest.mark.parametrize("size", [(128, 128), (90, 130), (300, 170)])
def test_segment_masks_agree_across_mask_resize_and_logits_are_identical(size):
    cv, exact = _tiny("opencv"), _tiny("torch")
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    h, w = size
    prompts = [PromptSet(points=Points(rng.uniform([0, 0], [w - 1, h - 1], size=(2, 2)), [1, 0])) for _ in range(5)]
    state = cv.encode(image)
    p_cv, p_exact = cv.segment(state, prompts), exact.segment(state, prompts)
    assert np.array_equal(p_cv.logits, p_exact.logits) and np.array_equal(p_cv.scores, p_exact.scores)
    assert 0.05 < p_exact.masks.mean() < 0.95
    assert (p_cv.masks == p_exact.masks).mean() >= 0.9999
    # "torch" is segment-anything's postprocess_masks, bit for bit
    tf = LongestSide(128, size)
    ref = tf.upscale_logits(torch.from_numpy(p_exact.logits)) > exact.model.mask_threshold
    assert np.array_equal(p_exact.masks, ref.numpy())


def test_unknown_mask_resize_is_refused():
    with pytest.raises(ConfigError, match="mask_resize"):
        SamSegmenter(model=tiny_arch().build(), mask_resize="nearest")


@settings(max_examples=25, deadline=None)
@given(h=st.integers(5, 2600), w=st.integers(5, 2600), low=st.sampled_from([64, 256]), seed=st.integers(0, 10_000))
def test_one_step_mode_matches_sam2s_single_interpolate_within_rounding(h, w, low, seed):
    logits = _smooth_logits(seed, 3, low)
    reference = F.interpolate(torch.from_numpy(logits)[None], (h, w), mode="bilinear", align_corners=False)[0].numpy()
    got = MaskUpscaler(size=(h, w))(logits, 0.0, np.empty((3, h, w), bool))
    differ = got != (reference > 0)
    assert np.all(np.abs(reference[differ]) < 1e-4 * max(1.0, float(np.abs(reference).max())))
    assert differ.mean() <= 1e-4


def test_exactly_one_geometry():
    with pytest.raises(ValueError, match="exactly one"):
        MaskUpscaler()
    with pytest.raises(ValueError, match="exactly one"):
        MaskUpscaler(LongestSide(64, (10, 10)), size=(10, 10))


def test_sam2_segment_masks_agree_across_mask_resize_and_logits_are_identical():
    from segprompt.models.sam2 import Sam2Segmenter
    from segprompt.models.sam2_build import tiny_arch as tiny_sam2_arch
    from segprompt.models.sam2_build import tiny_sam2

    cv, exact = (Sam2Segmenter(model=tiny_sam2(seed=2), arch=tiny_sam2_arch(256), multimask="all", mask_resize=m) for m in ("opencv", "torch"))
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (170, 260, 3), dtype=np.uint8)
    prompts = [PromptSet(points=Points(rng.uniform([0, 0], [259, 169], size=(2, 2)), [1, 0])) for _ in range(4)]
    state = cv.encode(image)
    p_cv, p_exact = cv.segment(state, prompts), exact.segment(state, prompts)
    assert np.array_equal(p_cv.logits, p_exact.logits) and np.array_equal(p_cv.scores, p_exact.scores)
    assert 0.02 < p_exact.masks.mean() < 0.98
    assert (p_cv.masks == p_exact.masks).mean() >= 0.9999
    with pytest.raises(ConfigError, match="mask_resize"):
        Sam2Segmenter(model=tiny_sam2(seed=2), arch=tiny_sam2_arch(256), mask_resize="area")
