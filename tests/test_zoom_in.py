"""RITM's zoom-in (segprompt.models.zoom_in): the region's geometry (properties), the prompts in
the crop's frame, and the wrapper's behaviour on a recording stand-in model and on universal-tiny."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segprompt.errors import ConfigError
from segprompt.models.base import ImageState, Prediction, Segmenter
from segprompt.models.zoom_in import ZoomInSegmenter, ZoomInSettings, crop_prompts, object_roi
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet


def _reference_roi(mask, positives, expansion, min_side):
    """RITM's get_object_roi + expand_bbox + clamp_bbox, re-written from its description: rows /
    columns of the mask joined with the clicks, grown about the centre, clamped (inclusive ends)."""
    m = mask.copy()
    for x, y in positives:
        m[int(y), int(x)] = True
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    rmin, rmax, cmin, cmax = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    rc, cc = (rmin + rmax) / 2, (cmin + cmax) / 2
    hh = max((rmax - rmin) * expansion, min_side) / 2
    hw = max((cmax - cmin) * expansion, min_side) / 2
    h, w = mask.shape
    return (max(0, int(np.floor(cc - hw))), max(0, int(np.floor(rc - hh))), min(w, int(np.ceil(cc + hw))), min(h, int(np.ceil(rc + hh))))


@st.composite
def masks_and_clicks(draw):
    h, w = draw(st.integers(16, 80)), draw(st.integers(16, 80))
    y0, x0 = draw(st.integers(0, h - 2)), draw(st.integers(0, w - 2))
    y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
    mask = np.zeros((h, w), bool)
    if draw(st.booleans()):
        mask[y0:y1, x0:x1] = True
    n = draw(st.integers(0 if mask.any() else 1, 3))
    xy = np.array([[draw(st.floats(0, w - 0.01)), draw(st.floats(0, h - 0.01))] for _ in range(n)], np.float32).reshape(-1, 2)
    labels = np.array([draw(st.sampled_from([0, 1])) for _ in range(n)], np.int64)
    if n and not mask.any():
        labels[0] = 1
    return mask, Points(xy, labels), draw(st.floats(1.0, 2.0)), draw(st.floats(0.0, 0.6))


@settings(max_examples=150, deadline=None)
@given(masks_and_clicks())
def test_the_region_holds_the_mask_and_the_positive_clicks_and_is_at_least_min_crop(case):
    mask, points, expansion, min_crop = case
    cfg = ZoomInSettings(expansion=expansion, min_crop=min_crop)
    roi = object_roi(mask, points, cfg)
    h, w = mask.shape
    x0, y0, x1, y1 = roi
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    ys, xs = np.nonzero(mask)
    if len(ys):
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    for (x, y), label in zip(points.coords, points.labels):
        if label == 1:
            assert x0 <= int(x) < x1 and y0 <= int(y) < y1
    side = min_crop * max(h, w)
    assert x1 - x0 >= min(w, side) - 1 or x0 == 0 or x1 == w
    assert y1 - y0 >= min(h, side) - 1 or y0 == 0 or y1 == h
    positives = [tuple(c) for c, lab in zip(points.coords, points.labels) if lab == 1]
    assert roi == _reference_roi(mask, positives, expansion, side)


def test_no_mask_and_no_positive_click_has_no_region():
    assert object_roi(np.zeros((20, 20), bool), Points(np.array([[3.0, 3.0]], np.float32), np.array([0])), ZoomInSettings()) is None


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="expansion"):
        ZoomInSettings(expansion=0.5)
    with pytest.raises(ConfigError, match="min_crop"):
        ZoomInSettings(min_crop=2.0)


def test_prompts_move_into_the_crop_frame():
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:50] = True
    s = PromptSet(
        points=Points(np.array([[35.0, 25.0], [2.0, 2.0], [45.0, 30.0]], np.float32), np.array([1, 0, 0])),
        box=Box((28, 18, 52, 70)), mask=MaskPrompt(mask),
    )
    out = crop_prompts(s, (20, 10, 60, 50), (60, 80))
    np.testing.assert_allclose(out.points.coords, [[15, 15], [25, 20]])  # the click at (2, 2) lies outside: dropped
    np.testing.assert_array_equal(out.points.labels, [1, 0])
    np.testing.assert_allclose(out.box.xyxy, [8, 8, 32, 40])  # clipped to the 40 x 40 crop
    assert out.mask.data.shape == (40, 40) and out.mask.data.sum() == mask[10:50, 20:60].sum()


class Recorder(Segmenter):
    """Stand-in model: predicts the 9 x 9 square around the first click, records what it was given."""

    name = "recorder"
    accepts = frozenset({"points", "box", "mask"})

    def __init__(self):
        super().__init__()
        self.encoded: list[tuple[int, int]] = []
        self.seen: list[PromptSet] = []

    def _encode(self, image):
        self.encoded.append(image.shape[:2])
        return ImageState(image.shape[:2], image.shape[:2], image=image)

    def _segment(self, state, prompts, multimask_output, select=None):
        h, w = state.original_size
        masks = np.zeros((len(prompts), 1, h, w), bool)
        for i, p in enumerate(prompts):
            self.seen.append(p)
            x, y = p.points.coords[0].astype(int)
            masks[i, 0, max(0, y - 4):y + 5, max(0, x - 4):x + 5] = True
        return Prediction(masks=masks, scores=np.full((len(prompts), 1), 0.5, np.float32))


def test_one_click_sees_the_whole_image_and_two_clicks_a_crop():
    inner = Recorder()
    seg = ZoomInSegmenter(inner, ZoomInSettings(min_crop=0.0, expansion=2.0))
    image = np.zeros((100, 120, 3), np.uint8)
    state = seg.encode(image)
    one = PromptSet(points=Points.positive((60, 50)))
    two = PromptSet(points=Points(np.array([[60.0, 50.0], [10.0, 10.0]], np.float32), np.array([1, 0])))
    pred = seg.segment(state, [one, two])
    assert inner.encoded == [(100, 120), (19, 19)]  # the whole image, then one crop: the 9 x 9 square grown 2x, edges rounded out
    assert seg.zoomed == 1
    crop_click = inner.seen[-1].points
    np.testing.assert_allclose(crop_click.coords, [[60 - 51, 50 - 41]])  # the crop starts at (51, 41); the negative lies outside
    # set 1: the stand-in's square; set 2: the crop's square pasted back, nothing outside the crop
    assert pred.masks[0, 0].sum() == 81
    ys, xs = np.nonzero(pred.masks[1, 0])
    assert xs.min() >= 51 and xs.max() < 70 and ys.min() >= 41 and ys.max() < 60 and pred.masks[1, 0].sum() > 0


def test_a_mask_prompt_sets_the_region():
    inner = Recorder()
    seg = ZoomInSegmenter(inner, ZoomInSettings(min_crop=0.0, expansion=1.0))
    image = np.zeros((64, 64, 3), np.uint8)
    previous = np.zeros((64, 64), bool)
    previous[10:30, 20:40] = True
    s = PromptSet(points=Points(np.array([[25.0, 15.0], [35.0, 25.0]], np.float32), np.array([1, 1])), mask=MaskPrompt(previous))
    seg.segment(seg.encode(image), [s])
    assert inner.encoded[-1] == (20, 20)
    assert inner.seen[-1].mask.data.shape == (20, 20) and inner.seen[-1].mask.data.all()


def test_create_segmenter_wraps_on_request_and_describes_it():
    from segprompt.models.registry import create_segmenter

    seg = create_segmenter("sam-tiny", zoom_in={"min_crop": 0.3})
    assert isinstance(seg, ZoomInSegmenter) and seg.settings.min_crop == 0.3
    assert seg.describe()["zoom_in"]["expansion"] == 1.4 and seg.name == "sam-tiny"
    assert not isinstance(create_segmenter("sam-tiny", zoom_in=False), ZoomInSegmenter)
    with pytest.raises(ConfigError, match="zoom_in"):
        create_segmenter("sam-tiny", zoom_in="yes")


class EmptyOnCrops(Recorder):
    """The stand-in, but its crops come back empty (a zoomed decode that lost the object)."""

    def _segment(self, state, prompts, multimask_output, select=None):
        pred = super()._segment(state, prompts, multimask_output, select)
        if state.original_size != (100, 120):
            pred.masks[:] = False
        return pred


def test_keep_better_keeps_the_whole_image_mask_when_the_crop_drops_the_clicks():
    from segprompt.models.zoom_in import clicks_agreed

    two = PromptSet(points=Points(np.array([[60.0, 50.0], [62.0, 52.0]], np.float32), np.array([1, 1])))
    image = np.zeros((100, 120, 3), np.uint8)
    ritm = ZoomInSegmenter(EmptyOnCrops(), ZoomInSettings(min_crop=0.0))
    assert ritm.segment(ritm.encode(image), [two]).masks.sum() == 0  # RITM's rule: the crop's mask, empty
    kept = ZoomInSegmenter(EmptyOnCrops(), ZoomInSettings(min_crop=0.0, keep_better=True))
    pred = kept.segment(kept.encode(image), [two])
    assert pred.masks[0, 0].sum() == 81 and clicks_agreed(pred.masks[0, 0], two.points) == 2
    assert clicks_agreed(np.zeros((100, 120), bool), Points(np.array([[1.0, 1.0], [5.0, 5.0]], np.float32), np.array([1, 0]))) == 1


def test_a_region_of_a_few_pixels_is_not_zoomed_on():
    inner = Recorder()
    seg = ZoomInSegmenter(inner, ZoomInSettings(min_crop=0.0, expansion=1.0))
    image = np.zeros((40, 40, 3), np.uint8)
    previous = np.zeros((40, 40), bool)
    previous[10:13, 10:13] = True  # a 3 x 3 mask prompt: a 3-px crop
    s = PromptSet(points=Points(np.array([[11.0, 11.0], [12.0, 12.0]], np.float32), np.array([1, 1])), mask=MaskPrompt(previous))
    pred = seg.segment(seg.encode(image), [s])
    assert inner.encoded == [(40, 40)] and seg.zoomed == 0 and pred.masks[0, 0].sum() == 81
