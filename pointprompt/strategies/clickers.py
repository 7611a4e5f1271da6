"""Correction strategies (simulated clicks after a prediction, for iterative prompting):
``microsam`` (micro-sam's ``IterativePromptGenerator``), ``ritm`` (RITM's ``Clicker``) and
``error-centre``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segprompt.errors import PromptError
from segprompt.prompts import Points

from pointprompt.strategies.base import _pick, check_mask, interleave, register_strategy
from pointprompt.strategies.geometry import _distance_inside, diameter
from pointprompt.strategies.variants import CentreStrategy


@dataclass
class _Correction:
    """Base of the correction strategies: ``correct(gt, pred, rng, image=None, *, clicked=None)``
    returns the click(s) to add; ``clicked`` (a :class:`Points`, the clicks so far) matters only
    to strategies that never click a pixel twice (``ritm``); the others ignore it."""

    kind: str = "correction"

    def first(self, gt: np.ndarray, rng: np.random.Generator) -> Points:
        """The opening click: the centre point of the object."""
        return CentreStrategy()(gt, None, rng, 1, 0)


@register_strategy("microsam", "micro-sam", "iterative")
@dataclass
class MicroSamCorrection(_Correction):
    """micro-sam's iterative prompting (``micro_sam/prompt_generators.py``,
    ``IterativePromptGenerator``): one positive drawn uniformly from the false negatives and one
    negative from the false positives, positive first.

    Fallbacks as micro-sam's: no false negative -> the positive comes from the overlap of
    prediction and object; no false positive -> the negative comes from the object's bounding
    box padded by ``box_pad`` = 3 px on each side (``_get_negative_locations_in_obj_bbox``,
    ``custom_df=3``; clipped to the image) minus the object, then from any background pixel. An
    object covering the whole image gets no negative (micro-sam would fail). ``ring`` (a
    fraction of the object's diameter, at least 2 px) replaces the 3 px pad: ``ring=0.1`` is
    our earlier rule.
    """

    box_pad: int = 3
    ring: float | None = None
    name: str = "microsam"

    def correct(self, gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator, image: np.ndarray | None = None, *, clicked: Points | None = None) -> Points:
        gt = check_mask(gt)
        pred = np.asarray(pred, bool)
        fn, fp = gt & ~pred, ~gt & pred
        pos = _pick(*np.nonzero(fn if fn.any() else gt & pred), rng, 1)
        if fp.any():
            neg = _pick(*np.nonzero(fp), rng, 1)
        elif (~gt).any():
            rows, cols = np.nonzero(gt)
            pad = self.box_pad if self.ring is None else max(2, int(self.ring * diameter(gt)))
            box = np.zeros_like(gt)
            box[max(0, rows.min() - pad) : rows.max() + pad + 1, max(0, cols.min() - pad) : cols.max() + pad + 1] = True
            region = box & ~gt
            neg = _pick(*np.nonzero(region if region.any() else ~gt), rng, 1)
        else:
            neg = np.zeros((0, 2), np.float32)
        return interleave(pos, neg)


@register_strategy("ritm", "ritm-clicker")
@dataclass
class RitmClicker(_Correction):
    """RITM's clicker (Sofiiuk et al. 2022, SamsungLabs/ritm_interactive_segmentation
    ``isegm/inference/clicker.py``, ``Clicker._get_next_click``): one click per step at the
    error pixel farthest from the border of its error region.

    False negatives FN = gt & ~pred and false positives FP = ~gt & pred are padded by one pixel
    of zeros (so the image edge counts as the region's border), their Euclidean distance
    transforms taken (``cv2.distanceTransform(..., cv2.DIST_L2, 0)``, exact, float32, as RITM)
    and cropped back, and pixels already clicked set to 0. The click is positive when the FN
    maximum is *strictly* greater than the FP maximum (``is_positive = fn_max_dist >
    fp_max_dist``: a tie gives a negative click), at the first pixel in raster order reaching
    that maximum. :meth:`first` is the same rule on an empty prediction (RITM's evaluation
    starts from ``np.zeros_like(gt)``): the deepest object pixel.

    ``clicked``: the points placed so far (the benchmark passes them); without it nothing is
    excluded. With no error left at all (pred == gt) no click is returned: RITM's evaluation has
    stopped by then (IoU 1 reaches any threshold), while its ``_get_next_click`` would click
    negative at the first zero-distance pixel ((0, 0)). ``padding=False`` drops the pad (RITM's
    option). Deterministic (the rng is not used).
    """

    padding: bool = True
    name: str = "ritm"

    def first(self, gt: np.ndarray, rng: np.random.Generator) -> Points:
        return self.correct(gt, np.zeros(np.shape(gt), bool), rng)

    def correct(self, gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator, image: np.ndarray | None = None, *, clicked: Points | None = None) -> Points:
        import cv2

        gt = check_mask(gt, 0)
        pred = np.asarray(pred, bool)
        if pred.shape != gt.shape:
            raise PromptError(f"the prediction's shape {pred.shape} differs from the ground truth's {gt.shape}")
        fn, fp = gt & ~pred, ~gt & pred
        if not (fn.any() or fp.any()):
            return Points(np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
        not_clicked = np.ones(gt.shape, bool)
        if clicked is not None and len(clicked):
            xy = np.round(np.asarray(clicked.coords)).astype(np.int64)
            ok = (xy[:, 0] >= 0) & (xy[:, 0] < gt.shape[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < gt.shape[0])
            not_clicked[xy[ok, 1], xy[ok, 0]] = False

        def dt(region: np.ndarray) -> np.ndarray:
            u8 = np.pad(region, 1).astype(np.uint8) if self.padding else region.astype(np.uint8)
            d = cv2.distanceTransform(u8, cv2.DIST_L2, 0)
            return (d[1:-1, 1:-1] if self.padding else d) * not_clicked

        fn_dt, fp_dt = dt(fn), dt(fp)
        fn_max, fp_max = fn_dt.max(), fp_dt.max()
        positive = bool(fn_max > fp_max)
        dist, top = (fn_dt, fn_max) if positive else (fp_dt, fp_max)
        r, c = np.argwhere(dist == top)[0]
        return Points(np.array([[c, r]], np.float32), np.array([int(positive)]))


@register_strategy("error-centre", "error-center")
@dataclass
class ErrorCentreCorrection(_Correction):
    """One click at the centre (distance-transform maximum) of the largest error region: positive
    if that region is missed object (false negative), negative if it is false positive. With no
    error left, the click repeats the object centre (a no-op for SAM-like models)."""

    name: str = "error-centre"

    def correct(self, gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator, image: np.ndarray | None = None, *, clicked: Points | None = None) -> Points:
        gt = check_mask(gt)
        pred = np.asarray(pred, bool)
        best: tuple[float, np.ndarray | None, int] = (0.0, None, 1)
        for region, label in ((gt & ~pred, 1), (~gt & pred, 0)):
            if not region.any():
                continue
            lab, n = ndimage.label(region)
            sizes = ndimage.sum_labels(region, lab, index=np.arange(1, n + 1))
            k = int(np.argmax(sizes)) + 1
            if sizes[k - 1] > best[0]:
                best = (float(sizes[k - 1]), lab == k, label)
        if best[1] is None:
            return self.first(gt, rng)
        comp, label = best[1], best[2]
        dist = _distance_inside(comp)
        r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return Points(np.array([[c, r]], np.float32), np.array([label]))
