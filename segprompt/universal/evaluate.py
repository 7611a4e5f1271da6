"""Quick held-out metrics of a universal segmenter on scenes (the training run's validation).

* ``click_iou``: one click at the interior-most pixel of each instance (SAM's ``auto`` policy:
  best-scored candidate) -> mean IoU over instances;
* ``text_iou``: the class name of each class present -> mean IoU against that class's region
  over (scene, class) pairs;
* ``ref_iou``: each class present in a scene, prompted by an instance of that class from the
  *previous* scene that has one -> mean IoU against the class region;
* ``click5_iou`` (only when asked for): the centre click, then two rounds of two correction
  clicks (:func:`~segprompt.universal.train_data.correction_clicks` on the last mask, no memory:
  the point benchmark's protocol without ``--mask-feedback``) -> mean IoU after 5 clicks.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from segprompt.prompts import Points, PromptSet, Reference, Text

__all__ = ["evaluate_scenes", "iou", "centre_click", "VAL_KINDS"]

#: what :func:`evaluate_scenes` measures
VAL_KINDS = ("click", "text", "ref", "click5")


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    union = np.logical_or(pred, target).sum()
    return float(np.logical_and(pred, target).sum() / union) if union else 1.0


def centre_click(mask: np.ndarray) -> np.ndarray:
    """(x, y) pixel centre of the interior-most pixel of ``mask`` (bool (H, W))."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return np.array([x + 0.5, y + 0.5], np.float32)


def evaluate_scenes(segmenter: Any, scenes: Sequence[Any], kinds: Sequence[str] = ("click", "text", "ref")) -> dict[str, float]:
    """Mean IoUs (see the module docstring) over ``scenes`` (:class:`~segprompt.universal.train_data.TrainScene`)."""
    scores: dict[str, list[float]] = {k: [] for k in kinds}
    last_seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sc in scenes:
        if len(sc.masks) == 0:
            continue
        state = segmenter.encode(sc.image)
        sets: list[PromptSet] = []
        targets: list[np.ndarray] = []
        kind_of: list[str] = []
        if "click" in kinds:
            for m in sc.masks:
                sets.append(PromptSet(points=Points.positive(tuple(centre_click(m)))))
                targets.append(m)
                kind_of.append("click")
        present = sorted({int(c) for c in sc.classes})
        for c in present:
            name = sc.class_names[c]
            region = sc.class_region(c)
            if "text" in kinds:
                sets.append(PromptSet(text=Text(name)))
                targets.append(region)
                kind_of.append("text")
            if "ref" in kinds and name in last_seen:
                sets.append(PromptSet(reference=Reference(*last_seen[name])))
                targets.append(region)
                kind_of.append("ref")
        if sets:
            pred = segmenter.segment(state, sets, multimask="auto")
            for k, m, t in zip(kind_of, pred.masks[:, 0], targets):
                scores[k].append(iou(m, t))
        if "click5" in kinds:
            scores["click5"] += _corrected_ious(segmenter, state, sc.masks, rounds=2, per_round=2)
        for m, c in zip(sc.masks, sc.classes):
            last_seen[sc.class_names[int(c)]] = (sc.image, m)
    return {f"{k}_iou": float(np.mean(v)) if v else float("nan") for k, v in scores.items()}


def _corrected_ious(segmenter: Any, state: Any, masks: Sequence[np.ndarray], rounds: int, per_round: int) -> list[float]:
    """IoU of each object after its centre click and ``rounds`` x ``per_round`` correction clicks."""
    from segprompt.universal.train_data import correction_clicks

    points = [Points.positive(tuple(centre_click(m))) for m in masks]
    pred = segmenter.segment(state, [PromptSet(points=p) for p in points], multimask="auto").masks[:, 0]
    for _ in range(rounds):
        for j, (m, p) in enumerate(zip(masks, points)):
            clicks = correction_clicks(pred[j], m, per_round)
            if clicks:
                points[j] = p + Points(np.stack([c[0] for c in clicks]), np.array([c[1] for c in clicks]))
        pred = segmenter.segment(state, [PromptSet(points=p) for p in points], multimask="auto").masks[:, 0]
    return [iou(p, m) for p, m in zip(pred, masks)]


def text_miou(segmenter: Any, scenes: Sequence[Any]) -> dict[str, Any]:
    """Text prompts on scenes: for every scene and class present, ``PromptSet(text=class)``
    against that class's region. Returns ``miou`` (mean over classes of the class IoU pooled over
    scenes: summed intersections / summed unions, the semantic-segmentation rule),
    ``per_class`` and ``mean_iou`` (mean over (scene, class) pairs)."""
    inter: dict[str, float] = {}
    union: dict[str, float] = {}
    pairs: list[float] = []
    for sc in scenes:
        present = sorted({int(c) for c in sc.classes})
        if not present:
            continue
        names = [sc.class_names[c] for c in present]
        pred = segmenter.predict(sc.image, [PromptSet(text=Text(n)) for n in names], multimask="auto")
        for c, n, m in zip(present, names, pred.masks[:, 0]):
            t = sc.class_region(c)
            inter[n] = inter.get(n, 0.0) + float(np.logical_and(m, t).sum())
            union[n] = union.get(n, 0.0) + float(np.logical_or(m, t).sum())
            pairs.append(iou(m, t))
    per_class = {n: inter[n] / union[n] for n in sorted(inter) if union[n] > 0}
    return {"miou": float(np.mean(list(per_class.values()))) if per_class else float("nan"), "per_class": per_class, "mean_iou": float(np.mean(pairs)) if pairs else float("nan")}


def reference_iou(segmenter: Any, scenes: Sequence[Any]) -> dict[str, Any]:
    """Reference prompts across scenes: each class present in scene i is prompted by the
    largest instance of that class in the nearest earlier scene j < i that has one (another
    image), scored against the class region of scene i. Returns ``mean_iou``, ``n`` and ``per_class``."""
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    scores: dict[str, list[float]] = {}
    for sc in scenes:
        present = sorted({int(c) for c in sc.classes})
        asks = [(c, sc.class_names[c]) for c in present if sc.class_names[c] in seen]
        if asks:
            pred = segmenter.predict(sc.image, [PromptSet(reference=Reference(*seen[n])) for _, n in asks], multimask="auto")
            for (c, n), m in zip(asks, pred.masks[:, 0]):
                scores.setdefault(n, []).append(iou(m, sc.class_region(c)))
        for c in present:
            masks = sc.masks[sc.classes == c]
            biggest = masks[int(np.argmax(masks.reshape(len(masks), -1).sum(1)))]
            seen[sc.class_names[c]] = (sc.image, biggest)
    flat = [v for vs in scores.values() for v in vs]
    return {"mean_iou": float(np.mean(flat)) if flat else float("nan"), "n": len(flat), "per_class": {k: float(np.mean(v)) for k, v in sorted(scores.items())}}


def box_gain(segmenter: Any, scenes: Sequence[Any]) -> dict[str, float]:
    """Mean IoU over instances of one centre click, and of the same click plus the instance's
    tight box: what adding a box to a point does."""
    from segprompt.prompts import Box

    point, both = [], []
    for sc in scenes:
        if len(sc.masks) == 0:
            continue
        state = segmenter.encode(sc.image)
        sets = []
        for m in sc.masks:
            click = Points.positive(tuple(centre_click(m)))
            sets += [PromptSet(points=click), PromptSet(points=click, box=Box.from_mask(m))]
        pred = segmenter.segment(state, sets, multimask="auto").masks[:, 0]
        for k, m in enumerate(sc.masks):
            point.append(iou(pred[2 * k], m))
            both.append(iou(pred[2 * k + 1], m))
    return {"point": float(np.mean(point)), "point_box": float(np.mean(both)), "n": float(len(point))}
