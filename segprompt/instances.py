"""Instance ground truth, matching of predicted masks to it, and instance metrics.

Ground truth (:class:`InstanceTruth`: ``masks`` (N, H, W) bool and an optional ``ignore`` (H, W)
region) comes from

* a label image whose every id > 0 is one instance (:func:`from_label_image`; ``ignore_id``
  optional),
* COCO annotations of one image (:func:`from_coco`; crowd annotations become the ignore region),
* the connected components of a binary mask (:func:`from_binary`; **8-connectivity** by default,
  4 by option; components below ``min_area`` pixels dropped),
* the connected components of chosen classes of a semantic label map (:func:`from_semantic`):
  CamVid's ``car`` and ``pedestrian`` instances are the components of those classes' regions
  (two touching cars are one component: CamVid has no instance ids); the void value becomes the
  ignore region.

Metrics, all class-agnostic (one "object" category):

* **AP@50, AP@[50:95]**: COCO's rule, as pycocotools ``cocoeval.py`` (``COCOeval.evaluateImg`` /
  ``accumulate``): per image the predictions ranked by score (``predicted_iou``; stable sort),
  at most ``max_dets`` (100) kept; for each IoU threshold 0.50:0.05:0.95 each prediction in turn
  takes the unmatched ground truth of highest IoU >= the threshold (greedy); over the dataset the
  predictions of all images are ranked by score, precision is made monotone and read at 101
  recall points (0, 0.01, ..., 1); AP is the mean of those points (and of the thresholds).
* **PQ, SQ, RQ**: panopticapi's ``pq_compute.py`` rule on the non-overlapping prediction (the
  everything masks painted into one label map): a prediction and a ground-truth instance match
  when their IoU > 0.5 (unique); SQ = mean IoU of the matches, RQ = TP / (TP + FP/2 + FN/2),
  PQ = SQ x RQ. Counts are pooled over the images of a dataset.
* **mean best IoU** ("everything recall"): for each ground-truth instance the highest IoU of any
  predicted mask (all of them, overlapping), averaged over the instances of a dataset.

Ignore region (void, crowd): its pixels are taken out of each prediction before the IoU
(panopticapi's ``union - void``), and an unmatched prediction lying more than half inside it is
neither a true nor a false positive (panopticapi's rule for PQ; the same rule marks it ignored
for AP, as COCOeval does for detections matched to crowd regions).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from segprompt.errors import ConfigError, DataError

__all__ = [
    "InstanceTruth",
    "IOU_THRESHOLDS",
    "RECALL_POINTS",
    "from_label_image",
    "from_binary",
    "from_semantic",
    "from_coco",
    "connected_components",
    "iou_matrix",
    "match_image",
    "panoptic_counts",
    "accumulate_ap",
    "summarise_instances",
]

#: COCO's IoU thresholds 0.50:0.05:0.95 (as pycocotools' Params.iouThrs)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
#: COCO's 101 recall points (Params.recThrs)
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass
class InstanceTruth:
    """Ground-truth instances of one image: ``masks`` (N, H, W) bool (may overlap only when they
    come from COCO), ``ignore`` (H, W) bool or None (void / crowd pixels), ``source`` in words."""

    masks: np.ndarray
    ignore: np.ndarray | None = None
    source: str = ""
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, bool)
        if self.masks.ndim != 3:
            raise DataError(f"instance masks must be (N, H, W), got shape {self.masks.shape}")
        if self.ignore is not None:
            self.ignore = np.asarray(self.ignore, bool)
            if self.ignore.shape != self.masks.shape[1:]:
                raise DataError(f"ignore region {self.ignore.shape} does not match the masks {self.masks.shape[1:]}")
            if not self.ignore.any():
                self.ignore = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def label_map(self) -> np.ndarray:
        """int32 (H, W): 0 background, instance i painted as i + 1 (later instances on top)."""
        out = np.zeros(self.shape, np.int32)
        for i, m in enumerate(self.masks):
            out[m] = i + 1
        return out


def _stack(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    return np.stack(masks).astype(bool) if len(masks) else np.zeros((0, *shape), bool)


def from_label_image(labels: np.ndarray, ignore_id: int | None = None, min_area: int = 0) -> InstanceTruth:
    """Each id > 0 of an integer label image is one instance (ids in increasing order);
    ``ignore_id`` pixels form the ignore region; instances under ``min_area`` pixels are dropped."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"an instance label image is a 2-D integer array, got {labels.dtype} {labels.shape}")
    ids = [int(v) for v in np.unique(labels) if v > 0 and v != ignore_id]
    masks = [labels == v for v in ids]
    masks = [m for m in masks if int(m.sum()) >= max(min_area, 1)]
    ignore = labels == ignore_id if ignore_id is not None else None
    return InstanceTruth(_stack(masks, labels.shape), ignore, "label image")


def connected_components(mask: np.ndarray, connectivity: int = 8, min_area: int = 0) -> list[np.ndarray]:
    """Connected components of a binary mask, in scipy.ndimage.label's order (raster order of each
    component's first pixel). ``connectivity``: 8 (diagonal neighbours join) or 4."""
    from scipy import ndimage

    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = np.ones((3, 3), bool) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    lab, n = ndimage.label(np.asarray(mask, bool), structure=structure)
    if n == 0:
        return []
    areas = np.bincount(lab.ravel(), minlength=n + 1)
    return [lab == k for k in range(1, n + 1) if areas[k] >= max(min_area, 1)]


def from_binary(mask: np.ndarray, connectivity: int = 8, min_area: int = 0, ignore: np.ndarray | None = None) -> InstanceTruth:
    """Instances = connected components of a binary mask (see :func:`connected_components`)."""
    mask = np.asarray(mask, bool)
    comps = connected_components(mask, connectivity, min_area)
    return InstanceTruth(_stack(comps, mask.shape), ignore, f"connected components ({connectivity}-connectivity)")


def from_semantic(
    labels: np.ndarray,
    classes: Mapping[str, int] | Sequence[int],
    ignore_values: Iterable[int] = (),
    connectivity: int = 8,
    min_area: int = 0,
    other_classes: str = "background",
) -> InstanceTruth:
    """Instances of chosen classes of a semantic label map: the connected components of each
    class's region (classes in the given order, components in raster order).

    ``classes``: ``{name: id}`` or ids. ``ignore_values``: label values forming the ignore region
    (CamVid's void, remapped to 255). ``other_classes``: ``"background"`` (pixels of the other
    classes are background, so predictions there are false positives) or ``"ignore"`` (they join
    the ignore region: predictions mostly on them are not counted).
    """
    if other_classes not in ("background", "ignore"):
        raise ConfigError(f"other_classes must be 'background' or 'ignore', got {other_classes!r}")
    labels = np.asarray(labels)
    items = list(classes.items()) if isinstance(classes, Mapping) else [(str(c), int(c)) for c in classes]
    masks, names = [], []
    for name, cid in items:
        for comp in connected_components(labels == cid, connectivity, min_area):
            masks.append(comp)
            names.append(name)
    ignore = np.isin(labels, list(ignore_values))
    if other_classes == "ignore":
        ignore |= ~np.isin(labels, [cid for _, cid in items])
    return InstanceTruth(_stack(masks, labels.shape), ignore, f"connected components ({connectivity}-connectivity) of {', '.join(n for n, _ in items)}", names)


def _decode_coco(ann: Mapping[str, Any], h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if not seg:
        raise DataError(f"COCO annotation {ann.get('id')} has no segmentation")
    if isinstance(seg, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    with warnings.catch_warnings():  # pycocotools' decode warns about numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def from_coco(annotations: Sequence[Mapping[str, Any]], shape: tuple[int, int], categories: Iterable[int] | None = None, min_area: float = 0) -> InstanceTruth:
    """Instances of one image from its COCO annotations (polygons or RLE), in the given order;
    crowd annotations (``iscrowd=1``) form the ignore region; ``categories`` keeps those ids only."""
    h, w = int(shape[0]), int(shape[1])
    keep = None if categories is None else set(int(c) for c in categories)
    masks, names = [], []
    ignore = np.zeros((h, w), bool)
    for ann in annotations:
        if keep is not None and int(ann.get("category_id", -1)) not in keep:
            continue
        m = _decode_coco(ann, h, w)
        if m.shape != (h, w):
            raise DataError(f"COCO annotation {ann.get('id')} decodes to {m.shape}, image is {(h, w)}")
        if ann.get("iscrowd", 0):
            ignore |= m
        elif float(ann.get("area", m.sum())) >= min_area and m.any():
            masks.append(m)
            names.append(str(ann.get("category_id", "")))
    return InstanceTruth(_stack(masks, (h, w)), ignore, "COCO annotations", names)


# ---------------------------------------------------------------------------------------------
# matching


def iou_matrix(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """(P, G) IoU of predicted masks (P, H, W) with ground-truth masks (G, H, W); pixels of
    ``ignore`` are taken out of the predictions first (panopticapi's union - void)."""
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    P, G = pred.shape[0], gt.shape[0]
    out = np.zeros((P, G), np.float64)
    if P == 0 or G == 0:
        return out
    flat_gt = gt.reshape(G, -1)
    gt_area = flat_gt.sum(1)
    keep = None if ignore is None else ~np.asarray(ignore, bool).ravel()
    for p in range(P):
        m = pred[p].ravel()
        if keep is not None:
            m = m & keep
        idx = np.flatnonzero(m)
        if idx.size == 0:
            continue
        inter = flat_gt[:, idx].sum(1)
        union = idx.size + gt_area - inter
        out[p] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return out


def _void_fraction(pred: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
    """Share of each prediction's pixels inside the ignore region."""
    if ignore is None or pred.shape[0] == 0:
        return np.zeros(pred.shape[0])
    area = pred.reshape(pred.shape[0], -1).sum(1)
    inside = (pred & ignore[None]).reshape(pred.shape[0], -1).sum(1)
    return np.where(area > 0, inside / np.maximum(area, 1), 0.0)


def match_image(
    pred: np.ndarray,
    scores: Sequence[float],
    truth: InstanceTruth,
    max_dets: int = 100,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[str, Any]:
    """COCOeval.evaluateImg's greedy matching on one image (class-agnostic, area range "all").

    Returns ``scores`` (the kept predictions' scores, best first), ``matched`` (T, D) bool,
    ``ignored`` (T, D) bool (unmatched and more than half in the ignore region), ``n_gt``, and
    ``best_iou`` (per ground-truth instance, over all predictions, not only the kept ones).
    """
    pred = np.asarray(pred, bool)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if pred.shape[0] != scores.shape[0]:
        raise ConfigError(f"{pred.shape[0]} masks but {scores.shape[0]} scores")
    ious_all = iou_matrix(pred, truth.masks, truth.ignore)
    order = np.argsort(-scores, kind="mergesort")[:max_dets]
    ious = ious_all[order]
    void = _void_fraction(pred[order], truth.ignore)
    T, D, G = len(thresholds), len(order), len(truth)
    matched = np.zeros((T, D), bool)
    ignored = np.zeros((T, D), bool)
    for t, thr in enumerate(thresholds):
        taken = np.zeros(G, bool)
        for d in range(D):
            best, m = min(float(thr), 1 - 1e-10), -1
            for g in range(G):
                if taken[g] or ious[d, g] < best:
                    continue
                best, m = ious[d, g], g  # ">=": the last of equal IoUs wins, as COCOeval
            if m >= 0:
                taken[m] = True
                matched[t, d] = True
            elif void[d] > 0.5:
                ignored[t, d] = True
    best_iou = ious_all.max(0) if pred.shape[0] else np.zeros(G)
    return {"scores": scores[order].tolist(), "matched": matched, "ignored": ignored, "n_gt": G, "best_iou": [float(v) for v in best_iou]}


def panoptic_counts(pred_labels: np.ndarray, truth: InstanceTruth) -> dict[str, float]:
    """panopticapi's PQ counts on one image: ``pred_labels`` an int (H, W) map (0 = nothing,
    each id > 0 one predicted segment). Pairs with IoU > 0.5 match (unique; if ground truth
    overlaps, the highest IoUs are taken first); an unmatched segment more than half in the
    ignore region is not a false positive. Returns tp, fp, fn, iou_sum."""
    pred_labels = np.asarray(pred_labels)
    ids = [int(v) for v in np.unique(pred_labels) if v > 0]
    segs = np.stack([pred_labels == v for v in ids]) if ids else np.zeros((0, *pred_labels.shape), bool)
    ious = iou_matrix(segs, truth.masks, truth.ignore)
    pairs = sorted(((ious[p, g], p, g) for p, g in zip(*np.nonzero(ious > 0.5))), reverse=True)
    used_p, used_g, iou_sum = set(), set(), 0.0
    for v, p, g in pairs:
        if p in used_p or g in used_g:
            continue
        used_p.add(p)
        used_g.add(g)
        iou_sum += float(v)
    void = _void_fraction(segs, truth.ignore)
    fp = sum(1 for p in range(len(ids)) if p not in used_p and void[p] <= 0.5)
    return {"tp": len(used_p), "fp": fp, "fn": len(truth) - len(used_g), "iou_sum": iou_sum}


# ---------------------------------------------------------------------------------------------
# accumulation over a dataset


def accumulate_ap(images: Sequence[Mapping[str, Any]], thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """Per-threshold AP over images (COCOeval.accumulate): ``images`` are :func:`match_image`
    outputs (``matched`` / ``ignored`` may be nested lists). NaN where there is no ground truth."""
    T = len(thresholds)
    n_gt = sum(int(e["n_gt"]) for e in images)
    if n_gt == 0:
        return np.full(T, np.nan)
    # COCOeval skips images with neither ground truth nor predictions (evaluateImg returns None)
    used = [e for e in images if int(e["n_gt"]) or len(e["scores"])]
    scores = np.concatenate([np.asarray(e["scores"], np.float64) for e in used]) if used else np.zeros(0)
    inds = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([np.asarray(e["matched"], bool).reshape(T, -1) for e in used], axis=1)[:, inds] if used else np.zeros((T, 0), bool)
    ignored = np.concatenate([np.asarray(e["ignored"], bool).reshape(T, -1) for e in used], axis=1)[:, inds] if used else np.zeros((T, 0), bool)
    tps = np.cumsum(matched & ~ignored, axis=1).astype(float)
    fps = np.cumsum(~matched & ~ignored, axis=1).astype(float)
    ap = np.zeros(T)
    for t in range(T):
        tp, fp = tps[t], fps[t]
        rc = tp / n_gt
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1] if pr.size else pr  # monotone from the right
        q = np.zeros(len(RECALL_POINTS))
        at = np.searchsorted(rc, RECALL_POINTS, side="left")
        ok = at < pr.size
        q[ok] = pr[at[ok]]
        ap[t] = q.mean()
    return ap


def summarise_instances(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Dataset-level metrics from results rows of one (dataset, model): AP50, AP, PQ, SQ, RQ,
    mean best IoU, images, ground-truth instances, predictions and seconds per image."""
    ap = accumulate_ap(rows)
    tp = sum(int(r["tp"]) for r in rows)
    fp = sum(int(r["fp"]) for r in rows)
    fn = sum(int(r["fn"]) for r in rows)
    iou_sum = sum(float(r["iou_sum"]) for r in rows)
    denom = tp + 0.5 * fp + 0.5 * fn
    best = [v for r in rows for v in r["best_iou"]]
    secs = [float(r["seconds"]) for r in rows if r.get("seconds") is not None]
    return {
        "ap50": float(ap[0]),
        "ap": float(np.mean(ap)),
        "pq": iou_sum / denom if denom else float("nan"),
        "sq": (iou_sum / tp if tp else 0.0) if denom else float("nan"),  # panopticapi: 0 without matches
        "rq": tp / denom if denom else float("nan"),
        "mean_best_iou": float(np.mean(best)) if best else float("nan"),
        "images": len(rows),
        "instances": sum(int(r["n_gt"]) for r in rows),
        "predictions": sum(int(r.get("n_pred", len(r["scores"]))) for r in rows),
        "s_per_image": float(np.mean(secs)) if secs else float("nan"),
    }
