"""Training data for the universal decoder: scenes from any registered dataset, and simulated prompts.

:func:`scene_from_sample` turns a dataset sample into a :class:`TrainScene` (instances + classes):

* samples with ``meta["instances"]`` (the ``synthetic-objects`` scenes): those instances;
* binary samples (Kvasir-SEG, BUSI, COCO ``mode="instance"``, ...): the mask is one object whose
  class is the sample's first text (the dataset's text, e.g. ``polyp``);
* label maps (CamVid, COCO ``mode="semantic"``, ...): one region per class present (semantic
  training), the ignore index and a class named ``background`` left out.

:func:`simulate_prompts` draws prompt sets for a scene the way a user gives them: clicks
(centre-biased, with extra positives and negatives), boxes with jitter, scribbles, coarse masks,
the class name as text, a reference (another instance of the class, in another image of the
batch when there is one), and pairs of these. Visual prompts target their instance; text and
reference target every instance of the class. :func:`correction_click` gives the next click of a
simulated interactive round (micro-sam's rule: the centre of the largest error region).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from segprompt.data.sample import Sample
from segprompt.errors import DataError
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet, Reference, Scribble, Text

__all__ = ["TrainScene", "scene_from_sample", "simulate_prompts", "correction_click", "correction_clicks", "PROMPT_MIX", "SimulatedPrompt"]

#: relative frequency of each prompt recipe in training
PROMPT_MIX: dict[str, float] = {
    "point": 0.26, "points": 0.10, "box": 0.10, "point+box": 0.08, "scribble": 0.07, "mask": 0.05,
    "text": 0.18, "reference": 0.12, "text+point": 0.04,
}


@dataclass
class TrainScene:
    """One training image: ``masks`` (N, H, W) bool, ``classes`` (N,) int64 into ``class_names``."""

    id: str
    image: np.ndarray
    masks: np.ndarray
    classes: np.ndarray
    class_names: tuple[str, ...]

    def class_region(self, c: int) -> np.ndarray:
        return self.masks[self.classes == c].any(0)


@dataclass
class SimulatedPrompt:
    """A prompt set for image ``image`` of the batch, its target (H, W) bool, its class, and
    ``reference_image``: the batch index of the reference's image (-1: none)."""

    prompts: PromptSet
    target: np.ndarray
    cls: int
    image: int
    reference_image: int = -1


def scene_from_sample(sample: Sample, min_area: int = 16) -> TrainScene:
    """See the module docstring; DataError for a sample without an annotation."""
    inst = sample.meta.get("instances") if isinstance(sample.meta, dict) else None
    if inst is not None:
        names = tuple(inst.get("class_names") or (sample.class_names[1:] if sample.class_names[:1] == ("background",) else sample.class_names))
        return TrainScene(sample.id, sample.image, np.asarray(inst["masks"], bool), np.asarray(inst["classes"], np.int64), names)
    if sample.mask is None:
        raise DataError(f"sample {sample.id} has no annotation to train on")
    if sample.mask.dtype == bool:
        if not sample.texts:
            raise DataError(f"sample {sample.id}: a binary mask needs a text (the object's class name) to train the text prompts")
        masks = sample.mask[None] if sample.mask.any() else np.zeros((0, *sample.mask.shape), bool)  # an empty mask (BUSI normal): nothing to learn
        return TrainScene(sample.id, sample.image, masks, np.zeros(len(masks), np.int64), (sample.texts[0],))
    labels = sample.mask
    present = [
        int(c) for c in np.unique(labels)
        if c != sample.ignore_index and 0 <= c < len(sample.class_names) and sample.class_names[int(c)] != "background"
    ]
    masks = [labels == c for c in present]
    keep = [i for i, m in enumerate(masks) if m.sum() >= min_area]
    return TrainScene(
        sample.id, sample.image,
        np.stack([masks[i] for i in keep]) if keep else np.zeros((0, *labels.shape), bool),
        np.asarray([present[i] for i in keep], np.int64), tuple(sample.class_names),
    )


def _interior_point(mask: np.ndarray, rng: np.random.Generator, centre_bias: float = 2.0) -> np.ndarray:
    """(x, y) of a pixel centre inside ``mask``, drawn with weight (distance to the border) ** bias."""
    dist = ndimage.distance_transform_edt(mask)
    w = dist.ravel() ** centre_bias
    i = rng.choice(w.size, p=w / w.sum())
    y, x = divmod(int(i), mask.shape[1])
    return np.array([x + 0.5, y + 0.5], np.float32)


def _outside_point(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A background pixel near the object (within a few object radii)."""
    dist = ndimage.distance_transform_edt(~mask)
    radius = max(4.0, np.sqrt(mask.sum() / np.pi))
    near = (dist > 2) & (dist < 1.5 * radius)
    ys, xs = np.nonzero(near)
    if not len(ys):
        return None
    i = rng.integers(len(ys))
    return np.array([xs[i] + 0.5, ys[i] + 0.5], np.float32)


def _clicks(mask: np.ndarray, rng: np.random.Generator, many: bool) -> Points:
    pos = [_interior_point(mask, rng)]
    neg: list[np.ndarray] = []
    if many:
        pos += [_interior_point(mask, rng, 0.5) for _ in range(int(rng.integers(0, 3)))]
        for _ in range(int(rng.integers(0, 3))):
            p = _outside_point(mask, rng)
            if p is not None:
                neg.append(p)
    coords = np.array(pos + neg, np.float32)
    return Points(coords, np.array([1] * len(pos) + [0] * len(neg)))


def _box(mask: np.ndarray, rng: np.random.Generator) -> Box:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    jx, jy = 0.08 * (x1 - x0), 0.08 * (y1 - y0)
    box = np.array([x0 + rng.normal(0, jx), y0 + rng.normal(0, jy), x1 + rng.normal(0, jx), y1 + rng.normal(0, jy)])
    box = np.clip(box, 0, [w, h, w, h])
    return Box(np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])], np.float32))


def _scribble(mask: np.ndarray, rng: np.random.Generator) -> Scribble:
    """A stroke through 3-5 interior points, ordered along the object's main axis."""
    pts = np.stack([_interior_point(mask, rng, 1.0) for _ in range(int(rng.integers(3, 6)))])
    axis = np.linalg.svd(pts - pts.mean(0), full_matrices=False)[2][0] if len(pts) > 1 else np.array([1.0, 0.0])
    order = np.argsort((pts - pts.mean(0)) @ axis)
    return Scribble(pts[order], label=1, width=3.0)


def _coarse_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = int(rng.integers(1, 4))
    coarse = ndimage.binary_dilation(mask, iterations=r) if rng.random() < 0.5 else ndimage.binary_erosion(mask, iterations=r)
    return coarse if coarse.any() else mask


def _sibling_negatives(scene: TrainScene, i: int, rng: np.random.Generator) -> list[np.ndarray]:
    """1-2 negative clicks inside other instances of ``scene``: of instance ``i``'s class when
    there are any (a click on one ring of two must not give both), else those touching it."""
    mask, c = scene.masks[i], int(scene.classes[i])
    same = [j for j in range(len(scene.masks)) if j != i and int(scene.classes[j]) == c]
    grown = ndimage.binary_dilation(mask, iterations=2)
    touching = [j for j in range(len(scene.masks)) if j != i and (grown & scene.masks[j]).any()]
    pool = same or touching
    out = []
    for j in rng.permutation(pool)[: int(rng.integers(1, 3))] if pool else []:
        own = scene.masks[int(j)] & ~mask
        if own.sum() >= 4:
            out.append(_interior_point(own, rng, 0.5))
    return out


def simulate_prompts(
    scenes: Sequence[TrainScene], rows_per_image: int, rng: np.random.Generator, mix: dict[str, float] | None = None,
    sibling_negatives: float = 0.0,
) -> list[SimulatedPrompt]:
    """``rows_per_image`` simulated prompt sets per scene with at least one instance (see the module
    docstring). ``sibling_negatives``: share of the click recipes (``point``, ``points``) that
    also get 1-2 negative clicks inside other instances of the same class (else inside instances
    touching the target), where the scene has any: visual prompts mean one instance, and a
    negative click on its twin must remove the twin."""
    mix = mix or PROMPT_MIX
    recipes, weights = list(mix), np.asarray(list(mix.values()), float)
    weights = weights / weights.sum()
    by_class: dict[str, list[tuple[int, int]]] = {}
    for b, sc in enumerate(scenes):
        for i, c in enumerate(sc.classes):
            by_class.setdefault(sc.class_names[int(c)], []).append((b, i))
    out: list[SimulatedPrompt] = []
    for b, sc in enumerate(scenes):
        if len(sc.masks) == 0:
            continue
        for _ in range(rows_per_image):
            i = int(rng.integers(len(sc.masks)))
            mask, c = sc.masks[i], int(sc.classes[i])
            name = sc.class_names[c]
            recipe = recipes[int(rng.choice(len(recipes), p=weights))]
            parts = set(recipe.split("+"))
            kw: dict[str, Any] = {}
            target, ref_image = mask, -1
            if parts & {"text", "reference"}:
                target = sc.class_region(c)
            if "text" in parts:
                kw["text"] = Text(name)
            if "reference" in parts:
                others = [(bb, ii) for bb, ii in by_class[name] if bb != b] or [(bb, ii) for bb, ii in by_class[name] if ii != i]
                if not others:
                    kw["text"] = Text(name)
                else:
                    bb, ii = others[int(rng.integers(len(others)))]
                    kw["reference"] = Reference(scenes[bb].image, scenes[bb].masks[ii])
                    ref_image = bb
            if "point" in parts or "points" in parts:
                kw["points"] = _clicks(mask, rng, many="points" in parts)
                if "text" not in parts and sibling_negatives and rng.random() < sibling_negatives:
                    extra = _sibling_negatives(sc, i, rng)
                    if extra:
                        kw["points"] = kw["points"] + Points(np.stack(extra), np.zeros(len(extra), np.int64))
            if "box" in parts:
                kw["box"] = _box(mask, rng)
            if "scribble" in parts:
                kw["scribbles"] = (_scribble(mask, rng),)
            if "mask" in parts:
                kw["mask"] = MaskPrompt(_coarse_mask(mask, rng))
            out.append(SimulatedPrompt(PromptSet(**kw), target, c, b, ref_image))
    return out


def correction_click(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The next click of an interactive round: ``(xy (2,), label)`` at the interior-most pixel of
    the larger error (missed pixels -> positive click, extra pixels -> negative), None when the
    prediction is exact. ``pred``, ``target``: bool (H, W)."""
    fn, fp = target & ~pred, pred & ~target
    if not fn.any() and not fp.any():
        return None
    d_fn = ndimage.distance_transform_edt(np.pad(fn, 1))[1:-1, 1:-1]
    d_fp = ndimage.distance_transform_edt(np.pad(fp, 1))[1:-1, 1:-1]
    positive = d_fn.max() >= d_fp.max()
    dist = d_fn if positive else d_fp
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return np.array([x + 0.5, y + 0.5], np.float32), int(positive)


def correction_clicks(pred: np.ndarray, target: np.ndarray, k: int) -> list[tuple[np.ndarray, int]]:
    """Up to ``k`` correction clicks a user would give in a row without looking at a new mask:
    each is :func:`correction_click` on the errors left after the error region under the previous
    click has been set right (so the clicks go to the k largest error regions, largest first)."""
    pred = pred.copy()
    clicks: list[tuple[np.ndarray, int]] = []
    for _ in range(k):
        click = correction_click(pred, target)
        if click is None:
            break
        clicks.append(click)
        (x, y), label = click
        error = (target & ~pred) if label else (pred & ~target)
        regions, _ = ndimage.label(error)
        fixed = regions == regions[int(y), int(x)]
        pred[fixed] = target[fixed]
    return clicks
