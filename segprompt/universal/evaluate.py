"""Quick held-out metrics of a universal segmenter on scenes (the training run's validation).

* ``click_iou``: one click at the interior-most pixel of each instance (SAM's ``auto`` policy:
  best-scored candidate) -> mean IoU over instances;
* ``text_iou``: the class name of each class present -> mean IoU against that class's region
  over (scene, class) pairs;
* ``ref_iou``: each class present in a scene, prompted by an instance of that class from the
  *previous* scene that has one -> mean IoU against the class region.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from segprompt.prompts import Points, PromptSet, Reference, Text

__all__ = ["evaluate_scenes", "iou", "centre_click"]


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
        for m, c in zip(sc.masks, sc.classes):
            last_seen[sc.class_names[int(c)]] = (sc.image, m)
    return {f"{k}_iou": float(np.mean(v)) if v else float("nan") for k, v in scores.items()}
