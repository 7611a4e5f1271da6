"""Segmentation metrics: Dice, IoU, boundary F, surface Dice, HD95, NoC, confusion-matrix mIoU.

Everything here is plain numpy + scipy (no torch), vectorised, and works per image.

Binary metrics
    Inputs are two masks of the same shape, ``(H, W)`` (a ``(D, H, W)`` volume also works),
    of dtype ``bool`` or any numeric dtype holding only 0 and 1. Anything else (shape
    mismatch, values such as 255, NaN) raises :class:`segprompt.errors.DataError`. A PNG
    mask stored as 0/255 must be thresholded first (``mask > 127``).

Boundary definition (shared by :func:`boundary_f1`, :func:`surface_dice` and :func:`hausdorff`)
    The boundary of a mask is ``mask XOR binary_erosion(mask)`` with the 3x3 cross structuring
    element and zeros outside the image, i.e. the foreground pixels that have a 4-neighbour in
    the background or touch the image border. This is exactly MONAI's ``get_mask_edges``
    (``spacing=None``). Distances are exact Euclidean distances between boundary-pixel
    centres, in pixels, or in physical units when ``spacing=(sy, sx)`` is given.

Empty-mask conventions (documented, deliberate)
    ============================  ===============  ======================  ==================
    metric                        both empty       one empty               MONAI
    ============================  ===============  ======================  ==================
    dice, iou                     ``empty_score``  0.0                     same with
                                  (default 1.0)                            ``ignore_empty=False``
    boundary_f1                   1.0              0.0                     (no counterpart)
    surface_dice                  ``empty_score``  0.0                     NaN / 0.0
                                  (default 1.0)
    hd95, hausdorff               0.0              NaN                     NaN / NaN
    ============================  ===============  ======================  ==================

    "Empty vs empty = 1" is the usual convention (TuneVLSeg, MONAI ``ignore_empty=False``,
    BUSI ``normal`` images). A Hausdorff distance between a mask and nothing is undefined, so
    it is NaN: aggregate with ``np.nanmean`` and report the NaN count separately.

Interactive segmentation
    :func:`noc` / :func:`noc_curve_stats` give the standard NoC@85 / NoC@90 (number of clicks
    to reach an IoU threshold, capped at ``max_clicks``, usually 20) used by RITM, SimpleClick,
    FocalClick and the SAM point-prompt literature. Where one step adds several clicks
    (micro-sam's iterative prompting adds a positive and a negative), pass the cumulative click
    count per entry as ``clicks=``; :func:`noc_steps` counts entries (steps) whatever they add.

Multi-class
    :func:`confusion_matrix`, :class:`ConfusionMatrix` and :func:`miou` take integer label maps
    ``(H, W)``; pixels whose *target* equals ``ignore_index`` (255 by default) are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from segprompt.errors import ConfigError, DataError

__all__ = [
    "dice",
    "iou",
    "mask_boundary",
    "boundary_f1",
    "surface_dice",
    "hausdorff",
    "hd95",
    "binary_scores",
    "noc",
    "noc_steps",
    "noc_curve_stats",
    "confusion_matrix",
    "ConfusionMatrix",
    "miou",
]

# Use a KD-tree over boundary pixels instead of two dense distance transforms when the
# boundaries are sparse relative to the cropped area (both paths are exact).
_KDTREE_FRACTION = 0.05


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _as_mask(a: Any, name: str) -> np.ndarray:
    """Return ``a`` as a bool array; raise DataError unless it is bool or holds only 0/1."""
    arr = np.asarray(a)
    if arr.ndim not in (2, 3):
        raise DataError(f"{name} must be a 2-D (H, W) mask (or a 3-D volume), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise DataError(
                f"{name} must be a binary mask (bool or 0/1), but its values range from "
                f"{arr.min()} to {arr.max()}; threshold it first (e.g. mask > 127 for a 0/255 PNG)"
            )
        return arr.astype(bool)
    if arr.dtype.kind == "f":
        ok = (arr == 0) | (arr == 1)
        if not ok.all():
            bad = arr[~ok].flat[0]
            raise DataError(
                f"{name} must be a binary mask (bool or 0/1), but it holds the value {bad!r}; "
                "threshold probabilities or logits explicitly (e.g. prob > 0.5)"
            )
        return arr.astype(bool)
    raise DataError(f"{name} must be a bool or 0/1 numeric mask, got dtype {arr.dtype}")


def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_mask(pred, "pred")
    t = _as_mask(target, "target")
    if p.shape != t.shape:
        raise DataError(
            f"pred and target must have the same shape, got pred {p.shape} and target {t.shape}; "
            "resize the prediction to the target's size first"
        )
    return p, t


def _spacing(spacing: Any, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    if np.isscalar(spacing):
        sp = (float(spacing),) * ndim  # type: ignore[arg-type]
    else:
        sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ConfigError(f"spacing must have {ndim} values (one per axis, (sy, sx) for 2-D), got {spacing!r}")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ConfigError(f"spacing values must be finite and > 0, got {spacing!r}")
    return sp


# --------------------------------------------------------------------------------------------
# region overlap
# --------------------------------------------------------------------------------------------


def _counts(p: np.ndarray, t: np.ndarray) -> tuple[int, int, int]:
    """(|pred & target|, |pred|, |target|)."""
    return int(np.count_nonzero(p & t)), int(np.count_nonzero(p)), int(np.count_nonzero(t))


def _dice_from(inter: int, n_p: int, n_t: int, empty_score: float) -> float:
    denom = n_p + n_t
    return float(empty_score) if denom == 0 else 2.0 * inter / denom


def _iou_from(inter: int, n_p: int, n_t: int, empty_score: float) -> float:
    union = n_p + n_t - inter
    return float(empty_score) if union == 0 else inter / union


def dice(pred: Any, target: Any, empty_score: float = 1.0) -> float:
    """Dice coefficient ``2 |P & T| / (|P| + |T|)`` of two binary masks.

    Args:
        pred, target: ``(H, W)`` bool (or 0/1) masks of the same shape.
        empty_score: value returned when both masks are empty (default 1.0, the usual
            convention and MONAI's ``ignore_empty=False``; pass ``float('nan')`` to skip such
            images in a ``nanmean``). A non-empty prediction against an empty target gives 0.

    Returns:
        A Python float in [0, 1].
    """
    p, t = _pair(pred, target)
    return _dice_from(*_counts(p, t), empty_score)


def iou(pred: Any, target: Any, empty_score: float = 1.0) -> float:
    """Intersection over union (Jaccard index) ``|P & T| / |P | T|`` of two binary masks.

    Same inputs and empty-mask convention as :func:`dice`. ``dice = 2 iou / (1 + iou)``.
    """
    p, t = _pair(pred, target)
    return _iou_from(*_counts(p, t), empty_score)


# --------------------------------------------------------------------------------------------
# boundaries and surface distances
# --------------------------------------------------------------------------------------------


def mask_boundary(mask: Any) -> np.ndarray:
    """Boundary pixels of a binary mask: ``mask XOR binary_erosion(mask)``.

    The erosion uses the cross structuring element (3x3 cross in 2-D) and treats the outside of
    the image as background, so foreground pixels on the image border are boundary pixels. Same
    as MONAI's ``get_mask_edges`` without spacing. Returns a bool array of the mask's shape.
    """
    m = _as_mask(mask, "mask")
    return _edges(m)


def _edges(m: np.ndarray) -> np.ndarray:
    if not m.any():
        return np.zeros(m.shape, dtype=bool)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def _crop_to_union(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union (exact for edges and distances)."""
    union = p | t
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        slices.append(slice(int(idx[0]), int(idx[-1]) + 1))
    s = tuple(slices)
    return p[s], t[s]


class _Surface:
    """Boundary pixels of two masks and the distances between them (computed once).

    ``d_pt``: for each predicted boundary pixel, distance to the nearest target boundary pixel;
    ``d_tp``: the reverse. ``None`` when that mask is empty.
    """

    __slots__ = ("n_p", "n_t", "d_pt", "d_tp")

    def __init__(self, p: np.ndarray, t: np.ndarray, spacing: tuple[float, ...] | None) -> None:
        self.d_pt: np.ndarray | None = None
        self.d_tp: np.ndarray | None = None
        self.n_p = self.n_t = 0
        p_any, t_any = bool(p.any()), bool(t.any())
        if not (p_any or t_any):
            return
        p, t = _crop_to_union(p, t)
        ep, et = _edges(p), _edges(t)
        self.n_p, self.n_t = int(np.count_nonzero(ep)), int(np.count_nonzero(et))
        if not (p_any and t_any):
            return
        if self.n_p + self.n_t <= _KDTREE_FRACTION * ep.size:
            from scipy.spatial import cKDTree

            cp = np.argwhere(ep).astype(np.float64)
            ct = np.argwhere(et).astype(np.float64)
            if spacing is not None:
                scale = np.asarray(spacing, dtype=np.float64)
                cp *= scale
                ct *= scale
            self.d_pt = cKDTree(ct).query(cp, k=1)[0]
            self.d_tp = cKDTree(cp).query(ct, k=1)[0]
        else:
            self.d_pt = ndimage.distance_transform_edt(~et, sampling=spacing)[ep]
            self.d_tp = ndimage.distance_transform_edt(~ep, sampling=spacing)[et]

    @property
    def both_empty(self) -> bool:
        return self.n_p == 0 and self.n_t == 0

    @property
    def one_empty(self) -> bool:
        return (self.n_p == 0) != (self.n_t == 0)

    def boundary_f1(self, tolerance: float) -> float:
        if self.both_empty:
            return 1.0
        if self.one_empty:
            return 0.0
        assert self.d_pt is not None and self.d_tp is not None
        precision = float(np.count_nonzero(self.d_pt <= tolerance)) / self.n_p
        recall = float(np.count_nonzero(self.d_tp <= tolerance)) / self.n_t
        if precision + recall == 0:
            return 0.0
        return 2.0 * precision * recall / (precision + recall)

    def surface_dice(self, tolerance: float, empty_score: float) -> float:
        if self.both_empty:
            return float(empty_score)
        if self.one_empty:
            return 0.0
        assert self.d_pt is not None and self.d_tp is not None
        good = np.count_nonzero(self.d_pt <= tolerance) + np.count_nonzero(self.d_tp <= tolerance)
        return float(good) / (self.n_p + self.n_t)

    def hausdorff(self, percentile: float | None, directed: bool) -> float:
        if self.both_empty:
            return 0.0
        if self.one_empty:
            return float("nan")
        assert self.d_pt is not None and self.d_tp is not None
        dists = (self.d_pt,) if directed else (self.d_pt, self.d_tp)
        if percentile is None:
            return float(max(d.max() for d in dists))
        return float(max(np.percentile(d, percentile) for d in dists))


def _check_tolerance(tolerance: float) -> float:
    tol = float(tolerance)
    if not (math.isfinite(tol) and tol >= 0):
        raise ConfigError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    return tol


def boundary_f1(pred: Any, target: Any, tolerance: float = 2.0, spacing: Sequence[float] | None = None) -> float:
    """Boundary F-score (DAVIS-style contour accuracy) with a fixed distance tolerance.

    Precision is the share of predicted boundary pixels within ``tolerance`` (``<=``, Euclidean,
    in pixels or in ``spacing`` units) of a target boundary pixel; recall is the share of target
    boundary pixels within ``tolerance`` of a predicted one; F = 2PR / (P + R) (0 when P = R = 0).
    Boundaries as in :func:`mask_boundary`. Both masks empty -> 1.0; exactly one empty -> 0.0.

    Unlike DAVIS (tolerance = 0.8 % of the image diagonal) the tolerance is an absolute number
    of pixels, so scores are comparable across image sizes only at equal resolution.
    """
    p, t = _pair(pred, target)
    return _Surface(p, t, _spacing(spacing, p.ndim)).boundary_f1(_check_tolerance(tolerance))


def surface_dice(
    pred: Any,
    target: Any,
    tolerance: float,
    spacing: Sequence[float] | None = None,
    empty_score: float = 1.0,
) -> float:
    """Normalised surface Dice (NSD, Nikolov et al. 2021) at ``tolerance``.

    ``(#pred boundary pixels within tol of the target boundary + #target boundary pixels within
    tol of the predicted boundary) / (#pred boundary + #target boundary)``, distances ``<= tol``.
    Matches MONAI ``compute_surface_dice(class_thresholds=[tol], use_subvoxels=False)`` except
    when both masks are empty: MONAI gives NaN, this returns ``empty_score`` (default 1.0; pass
    ``float('nan')`` for MONAI's behaviour). Exactly one empty -> 0.0 (as MONAI).
    """
    p, t = _pair(pred, target)
    return _Surface(p, t, _spacing(spacing, p.ndim)).surface_dice(_check_tolerance(tolerance), empty_score)


def hausdorff(
    pred: Any,
    target: Any,
    percentile: float | None = None,
    spacing: Sequence[float] | None = None,
    directed: bool = False,
) -> float:
    """(Percentile) Hausdorff distance between the boundaries of two binary masks.

    Computes the distances from every predicted boundary pixel to the target boundary and from
    every target boundary pixel to the predicted boundary, takes the ``percentile`` of each
    (linear interpolation, as ``torch.quantile``; ``None`` = maximum) and returns the larger one
    (only the pred -> target one when ``directed``). Units are pixels, or physical units with
    ``spacing=(sy, sx)``. Matches MONAI ``compute_hausdorff_distance``.

    Conventions: both masks empty -> 0.0 (MONAI: NaN); exactly one empty -> NaN (MONAI: NaN).
    ``percentile=0`` is the 0th percentile (minimum) here, whereas MONAI treats 0 like ``None``.
    """
    p, t = _pair(pred, target)
    if percentile is not None:
        percentile = float(percentile)
        if not 0.0 <= percentile <= 100.0:
            raise ConfigError(f"percentile must be between 0 and 100, got {percentile}")
    return _Surface(p, t, _spacing(spacing, p.ndim)).hausdorff(percentile, directed)


def hd95(pred: Any, target: Any, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile Hausdorff distance (see :func:`hausdorff`); MONAI ``percentile=95``.

    Both masks empty -> 0.0; exactly one empty -> NaN.
    """
    return hausdorff(pred, target, percentile=95.0, spacing=spacing)


def binary_scores(
    pred: Any,
    target: Any,
    tolerance: float = 2.0,
    spacing: Sequence[float] | None = None,
    empty_score: float = 1.0,
) -> dict[str, float]:
    """Dice, IoU, boundary F (at ``tolerance``) and HD95 of one prediction, computed once.

    Returns ``{"dice", "iou", "boundary_f1", "hd95"}`` as Python floats, with the same
    conventions as the individual functions (``hd95`` is NaN when exactly one mask is empty).
    """
    p, t = _pair(pred, target)
    counts = _counts(p, t)
    surf = _Surface(p, t, _spacing(spacing, p.ndim))
    return {
        "dice": _dice_from(*counts, empty_score),
        "iou": _iou_from(*counts, empty_score),
        "boundary_f1": surf.boundary_f1(_check_tolerance(tolerance)),
        "hd95": surf.hausdorff(95.0, directed=False),
    }


# --------------------------------------------------------------------------------------------
# interactive segmentation: number of clicks
# --------------------------------------------------------------------------------------------


def noc(ious: Any, threshold: float = 0.85, max_clicks: int | None = None, *, clicks: Any = None) -> int:
    """Number of clicks (NoC) needed to reach ``IoU >= threshold``.

    This is the standard interactive-segmentation NoC@85 / NoC@90 (RITM, SimpleClick, ...),
    counted in clicks: RITM's ``utils.compute_noc_metric`` counts the clicks of a one-click-per-
    step curve; ``clicks`` extends it to steps that add several clicks.

    Args:
        ious: 1-D IoU curve, one value per step; ``ious[0]`` is the IoU after the first step.
        threshold: IoU to reach (0.85 for NoC@85, 0.9 for NoC@90).
        max_clicks: click budget; only steps with at most ``max_clicks`` clicks count. Defaults
            to the clicks of the last step (``len(ious)`` without ``clicks``).
        clicks: clicks made up to and including each step: a 1-D non-decreasing sequence of
            integers >= 1 of the curve's length, or one integer k for k clicks every step (step
            i then has k (i + 1) clicks). ``None`` (the default): one click per step, so clicks
            and steps coincide (the meaning of :func:`noc_steps`).

    Returns:
        The clicks of the first step with ``IoU >= threshold`` within the budget, or
        ``max_clicks`` when the threshold is never reached within it (a failure).
    """
    curve = np.asarray(ious, dtype=np.float64)
    if curve.ndim != 1:
        raise DataError(f"ious must be a 1-D IoU-per-click curve, got shape {curve.shape}")
    if clicks is None:
        count = np.arange(1, curve.size + 1)
    elif np.ndim(clicks) == 0:
        k = int(clicks)
        if k < 1 or k != clicks:
            raise ConfigError(f"clicks per step must be an integer >= 1, got {clicks!r}")
        count = k * np.arange(1, curve.size + 1)
    else:
        count = np.asarray(clicks)
        if count.shape != curve.shape:
            raise DataError(f"clicks must give one count per IoU value: {count.shape} counts for {curve.shape} IoU values")
        if count.size and (not np.all(count == np.round(count)) or count.min() < 1 or np.any(np.diff(count) < 0)):
            raise DataError(f"clicks must be non-decreasing integers >= 1 (cumulative clicks per step), got {count.tolist()}")
        count = count.astype(np.int64)
    if max_clicks is None:
        if curve.size == 0:
            raise DataError("ious is empty: give at least one IoU value, or pass max_clicks")
        max_clicks = int(count[-1])
    if int(max_clicks) < 1:
        raise ConfigError(f"max_clicks must be >= 1, got {max_clicks}")
    max_clicks = int(max_clicks)
    hit = np.flatnonzero((curve >= threshold) & (count <= max_clicks))
    return int(count[hit[0]]) if hit.size else max_clicks


def noc_steps(ious: Any, threshold: float = 0.85, max_steps: int | None = None) -> int:
    """Number of *steps* (entries of the curve) needed to reach ``IoU >= threshold``, whatever
    each step adds; ``max_steps`` (default ``len(ious)``) when never reached. The same as
    :func:`noc` without ``clicks`` (one click per step): the meaning ``noc`` had before it took
    ``clicks``, kept by name for curves whose steps add several clicks."""
    return noc(ious, threshold, max_steps)


def _threshold_key(threshold: float) -> str:
    return f"{threshold * 100:g}"


def noc_curve_stats(
    curves: Iterable[Any],
    thresholds: Sequence[float] = (0.85, 0.9),
    max_clicks: int = 20,
    clicks: Iterable[Any] | None = None,
) -> dict[str, float]:
    """Mean NoC and failure rate over many IoU-per-click curves.

    Args:
        curves: IoU curves (a 2-D array ``(N, clicks)`` or a list of 1-D curves of any length).
        thresholds: IoU thresholds.
        max_clicks: click budget (20 in the literature); a curve that does not reach the
            threshold within it counts ``max_clicks`` clicks and is a failure.
        clicks: optional, one cumulative-clicks sequence per curve (see :func:`noc`); default
            one click per step.

    Returns:
        ``{"noc@85": mean NoC, "fail@85": share of curves never reaching 0.85, ...}`` for each
        threshold (the key is the threshold in percent, ``0.875 -> "87.5"``), and ``"n"``: the
        number of curves.
    """
    arrs = [np.asarray(c, dtype=np.float64) for c in curves]
    if not arrs:
        raise DataError("noc_curve_stats needs at least one IoU curve")
    per = [None] * len(arrs) if clicks is None else list(clicks)
    if len(per) != len(arrs):
        raise DataError(f"clicks must give one sequence per curve: {len(per)} for {len(arrs)} curves")
    out: dict[str, float] = {}
    for thr in thresholds:
        counts = np.array([noc(c, thr, max_clicks, clicks=k) for c, k in zip(arrs, per)])
        reached = np.array([noc(c, thr, max_clicks + 1, clicks=k) <= max_clicks for c, k in zip(arrs, per)])
        key = _threshold_key(float(thr))
        out[f"noc@{key}"] = float(counts.mean())
        out[f"fail@{key}"] = float(1.0 - reached.mean())
    out["n"] = float(len(arrs))
    return out


# --------------------------------------------------------------------------------------------
# multi-class: confusion matrix
# --------------------------------------------------------------------------------------------


def _as_labels(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise DataError(f"{name} must be an integer label map, got dtype {arr.dtype}; cast it explicitly")
    return arr


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """Pixel confusion matrix of two integer label maps.

    Args:
        pred, target: integer label maps of the same shape (usually ``(H, W)``).
        num_classes: C; valid labels are ``0 .. C-1``.
        ignore_index: pixels whose *target* equals this value are skipped (``None``: none).

    Returns:
        ``int64`` array ``(C, C)``; entry ``[i, j]`` counts pixels with target ``i`` and
        prediction ``j`` (rows = target, columns = prediction).

    Raises:
        DataError: shapes differ, a non-ignored target label is outside ``[0, C)``, or a
            prediction at a counted pixel is outside ``[0, C)``.
    """
    c = int(num_classes)
    if c < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    p = _as_labels(pred, "pred")
    t = _as_labels(target, "target")
    if p.shape != t.shape:
        raise DataError(f"pred and target must have the same shape, got pred {p.shape} and target {t.shape}")
    p = p.ravel()
    t = t.ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        if not keep.all():
            p = p[keep]
            t = t[keep]
    if t.size == 0:
        return np.zeros((c, c), dtype=np.int64)
    t_min, t_max = int(t.min()), int(t.max())
    if t_min < 0 or t_max >= c:
        bad = t_min if t_min < 0 else t_max
        raise DataError(
            f"target holds label {bad}, outside [0, {c}) and not ignore_index={ignore_index}; "
            "check num_classes or map that label to the ignore index"
        )
    p_min, p_max = int(p.min()), int(p.max())
    if p_min < 0 or p_max >= c:
        bad = p_min if p_min < 0 else p_max
        raise DataError(
            f"pred holds label {bad}, outside [0, {c}) at a non-ignored pixel; "
            "predictions must be class indices 0..num_classes-1"
        )
    idx = t.astype(np.int64) * c + p.astype(np.int64)
    return np.bincount(idx, minlength=c * c).reshape(c, c).astype(np.int64, copy=False)


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` confusion matrix over images (rows = target, cols = prediction).

    >>> cm = ConfusionMatrix(num_classes=11, ignore_index=11)   # CamVid: 11 = void
    >>> for pred, target in pairs:                              # doctest: +SKIP
    ...     cm.update(pred, target)
    >>> cm.miou()                                               # doctest: +SKIP

    IoU per class is ``TP / (TP + FP + FN)`` over all accumulated pixels (a "global" mIoU, as
    torchmetrics ``MulticlassJaccardIndex``); a class absent from both targets and predictions
    has IoU NaN (torchmetrics reports 0 there) and is left out of :meth:`miou`.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if int(num_classes) < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._m = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> ConfusionMatrix:
        """Add one image (or batch) of integer label maps; returns ``self``."""
        self._m += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        return self

    def reset(self) -> None:
        self._m[:] = 0

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another accumulator's counts (e.g. from another worker); returns ``self``."""
        if other.num_classes != self.num_classes:
            raise ConfigError(f"cannot merge {other.num_classes}-class and {self.num_classes}-class matrices")
        self._m += other._m
        return self

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the ``int64`` ``(C, C)`` counts."""
        return self._m.copy()

    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self._m.sum())

    def iou_per_class(self) -> np.ndarray:
        """``float64`` ``(C,)`` IoU per class; NaN for classes absent in targets and predictions."""
        tp = np.diag(self._m).astype(np.float64)
        denom = self._m.sum(axis=0) + self._m.sum(axis=1) - np.diag(self._m)
        out = np.full(self.num_classes, np.nan)
        np.divide(tp, denom, out=out, where=denom > 0)
        return out

    def miou(self, exclude: Iterable[int] = ()) -> float:
        """Mean IoU over classes (NaN classes skipped), leaving out class ids in ``exclude``.

        NaN when no class is defined.
        """
        ious = self.iou_per_class()
        keep = np.ones(self.num_classes, dtype=bool)
        for k in exclude:
            if not 0 <= int(k) < self.num_classes:
                raise ConfigError(f"exclude holds class {k}, outside [0, {self.num_classes})")
            keep[int(k)] = False
        vals = ious[keep]
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if vals.size else float("nan")

    def pixel_accuracy(self) -> float:
        """Share of counted pixels predicted correctly; NaN when nothing was counted."""
        total = self._m.sum()
        return float(np.trace(self._m) / total) if total else float("nan")

    def summary(self, class_names: Mapping[int, str] | Sequence[str] | None = None) -> dict[str, float]:
        """``{"miou", "pixel_accuracy", "iou/<class>": ...}`` for logging."""
        out = {"miou": self.miou(), "pixel_accuracy": self.pixel_accuracy()}
        for k, v in enumerate(self.iou_per_class()):
            name = str(class_names[k]) if class_names is not None else str(k)
            out[f"iou/{name}"] = float(v)
        return out

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"total={self.total})"
        )


def miou(pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255) -> float:
    """Mean IoU of one pair of label maps (see :class:`ConfusionMatrix` for conventions)."""
    return ConfusionMatrix(num_classes, ignore_index).update(pred, target).miou()
