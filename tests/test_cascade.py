"""The cascade (segprompt.models.cascade): a model's own logits fed back as its mask prompt, against
segment-anything's SamPredictor doing the same by hand, and the wrapper's rules."""

from __future__ import annotations

import numpy as np
import pytest

from segprompt.data.synthetic import SyntheticLesions
from segprompt.errors import ConfigError
from segprompt.models.brs import FeatureBRSSegmenter
from segprompt.models.cascade import CascadeSegmenter, CascadeSettings
from segprompt.models.registry import create_segmenter
from segprompt.models.zoom_in import ZoomInSegmenter
from segprompt.prompts import MaskPrompt, Points, PromptSet


@pytest.fixture(scope="module")
def lesions():
    return [SyntheticLesions(n=6, seed=5, size=None, style="mixed")[i] for i in range(6)]


def _centre(mask: np.ndarray) -> list[float]:
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [float(c), float(r)]


def test_one_pass_is_sam_predictor_fed_its_own_best_low_res_logits(lesions):
    """The reference by hand (segment-anything, as PerSAM's first cascade step with SAM's one-mask
    head): predict with multimask, take the best-scored candidate's low-res logits, predict again
    with them as ``mask_input``."""
    from segment_anything import SamPredictor

    plain = create_segmenter("sam-tiny")
    seg = create_segmenter("sam-tiny", cascade=True)
    predictor = SamPredictor(plain.model)
    changed = 0
    for s in lesions:
        xy = np.array([_centre(s.mask)], np.float32)
        predictor.set_image(s.image)
        masks, scores, low = predictor.predict(point_coords=xy, point_labels=np.array([1]), multimask_output=True)
        best = int(np.argmax(scores))
        ref, ref_score, ref_low = predictor.predict(point_coords=xy, point_labels=np.array([1]), mask_input=low[best][None], multimask_output=False)
        ours = seg.predict(s.image, PromptSet(points=Points(xy, [1])), multimask="auto")  # sam-tiny's own is the single head
        assert ours.masks.shape[:2] == (1, 1)
        assert (ours.masks[0, 0] != ref[0]).mean() < 1e-3  # the two resizes may round a threshold pixel apart
        np.testing.assert_allclose(ours.logits[0, 0], ref_low[0], atol=2e-4)
        assert ours.scores[0, 0] == pytest.approx(float(ref_score[0]), abs=1e-4)
        changed += int((masks[best] != ref[0]).any())
    assert changed >= 3  # the pass does something on most images (not a copy of the first decode)


def test_passes_chain_and_the_rules_say_which_sets_are_fed_back(lesions):
    s = lesions[0]
    plain = create_segmenter("sam-tiny")
    state = plain.encode(s.image)
    xy = np.array([_centre(s.mask)], np.float32)
    one = PromptSet(points=Points(xy, [1]))
    first = plain.segment(state, one)
    second = plain.segment(state, PromptSet(points=one.points, mask=MaskPrompt(first.logits[0, 0], kind="logits")))
    third = plain.segment(state, PromptSet(points=one.points, mask=MaskPrompt(second.logits[0, 0], kind="logits")))
    two = CascadeSegmenter(plain, passes=2)
    got = two.segment(two.encode(s.image), one)
    assert (got.masks == third.masks).all() and np.array_equal(got.logits, third.logits)
    assert two.refined == 1

    # a set of two clicks over max_clicks and a drawn (binary) mask: as decoded
    few = CascadeSegmenter(plain, max_clicks=1)
    fstate = few.encode(s.image)
    clicks = PromptSet(points=Points(np.array([xy[0], [2.0, 2.0]]), [1, 0]))
    drawn = PromptSet(points=one.points, mask=MaskPrompt(s.mask))
    for ps in (clicks, drawn):
        assert np.array_equal(few.segment(fstate, ps).logits, plain.segment(state, ps).logits)
    # all three candidates asked for: each fed back on its own, in its place
    every = plain.segment(state, one, multimask="all")
    got = few.segment(fstate, one, multimask="all")
    assert got.masks.shape[1] == 3
    for j in range(3):
        alone = plain.segment(state, PromptSet(points=one.points, mask=MaskPrompt(every.logits[0, j], kind="logits")))
        np.testing.assert_allclose(got.logits[0, j], alone.logits[0, 0], atol=1e-4)  # a batch of 3 against 1: float rounding
        assert got.scores[0, j] == pytest.approx(float(alone.scores[0, 0]), abs=1e-5)
    # max_clicks=None feeds back every set with clicks (the default, 1, only the first click)
    assert CascadeSettings().max_clicks == 1
    every_set = CascadeSegmenter(plain, max_clicks=None)
    second_clicks = plain.segment(state, PromptSet(points=clicks.points, mask=MaskPrompt(plain.segment(state, clicks).logits[0, 0], kind="logits")))
    assert np.array_equal(every_set.segment(every_set.encode(s.image), clicks).logits, second_clicks.logits)
    # a fed-back memory (logits) is replaced by the set's new logits, as in SAM's iterations
    memory = PromptSet(points=one.points, mask=MaskPrompt(first.logits[0, 0], kind="logits"))
    assert np.array_equal(few.segment(fstate, memory).logits, third.logits)


def test_create_segmenter_nests_brs_cascade_and_zoom_in_and_refuses_bad_settings():
    seg = create_segmenter("sam-tiny", cascade={"passes": 1, "max_clicks": 1}, brs=True, zoom_in=True)
    assert isinstance(seg, ZoomInSegmenter) and isinstance(seg.inner, CascadeSegmenter)
    assert isinstance(seg.inner.inner, FeatureBRSSegmenter)
    assert seg.describe()["cascade"] == {"passes": 1, "max_clicks": 1, "multimask": False}
    image = np.zeros((64, 80, 3), np.uint8)
    image[20:40, 30:50] = 200
    assert seg.predict(image, PromptSet(points=Points([[40.0, 30.0]], [1]))).masks.shape == (1, 1, 64, 80)
    with pytest.raises(ConfigError, match="passes"):
        CascadeSettings(passes=0)
    with pytest.raises(ConfigError, match="max_clicks"):
        CascadeSettings(max_clicks=0)
    with pytest.raises(ConfigError, match="cascade"):
        create_segmenter("sam-tiny", cascade="yes")
    with pytest.raises(ConfigError, match="no mask prompt"):
        create_segmenter("persam", cascade=True)
    grabcut = create_segmenter("grabcut", cascade=True)  # takes a mask, returns no logits
    with pytest.raises(ConfigError, match="returns no logits"):
        grabcut.predict(image, PromptSet(points=Points([[40.0, 30.0]], [1])))
    # the resize passes through only where the model has one (zoom-in reads logits masks with it)
    assert not hasattr(grabcut, "transform") and seg.inner.transform((64, 80)) is not None


def test_segment_everything_and_native_propagation_run_the_model_under_the_wrappers(lesions):
    """The inference wrappers are for prompted decodes: segment everything's grid and the volume
    propagators see the model itself (with the same records for a wrapped and a plain sam-tiny)."""
    from segprompt.everything.generate import segment_everything
    from segprompt.volumes.api import _unwrapped

    plain = create_segmenter("sam-tiny")
    wrapped = create_segmenter("sam-tiny", cascade=True, zoom_in=True)
    assert _unwrapped(wrapped).__class__ is plain.__class__ and _unwrapped(plain) is plain
    got = segment_everything(wrapped, lesions[1].image, points_per_side=6, pred_iou_thresh=0.5, stability_score_thresh=0.5)
    want = segment_everything(plain, lesions[1].image, points_per_side=6, pred_iou_thresh=0.5, stability_score_thresh=0.5)
    assert len(got) == len(want) > 0
    assert all((a["segmentation"] == b["segmentation"]).all() and a["stability_score"] == b["stability_score"] for a, b in zip(got, want))
