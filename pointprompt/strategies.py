"""Automated point-prompt strategies: where to click, given the ground-truth mask.

Two kinds, each registered by name (``create_strategy("centre")``):

* **placement** strategies, ``strategy(mask, image, rng, n_positive, n_negative) -> Points``:
  an *ordered* point set (positives inside the mask, negatives outside); a benchmark step k
  uses the first k points, so the order is part of the strategy. Positives and negatives are
  interleaved in proportion (a positive first).
* **correction** strategies, ``strategy.correct(gt, pred, rng, image=None) -> Points``: the
  click(s) to add after a prediction, for iterative prompting; they start from the centre
  point (:meth:`first`).

Conventions: masks are bool (H, W) indexed ``mask[y, x]``; points are ``(x, y)`` =
(column, row) of the pixel; the same ``rng`` state gives the same points. An empty mask
cannot hold a positive point: placement strategies raise :class:`PromptError` for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
from scipy import ndimage

from segprompt.errors import ConfigError, PromptError
from segprompt.prompts import Points
from segprompt.registry import Registry


class PlacementStrategy(Protocol):
    name: str
    kind: str  # "placement"

    def __call__(self, mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator, n_positive: int, n_negative: int) -> Points: ...


STRATEGIES: Registry[Callable[..., Any]] = Registry("point strategy")


def register_strategy(name: str, *aliases: str) -> Callable:
    return STRATEGIES.register(name, *aliases)


def create_strategy(name: str, **kwargs: Any) -> Any:
    """A strategy instance by name (``random``, ``centre``, ``microsam``, ``error-centre``, ...)."""
    return STRATEGIES.get(name)(**kwargs)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


# -- helpers ------------------------------------------------------------------------------
def check_mask(mask: np.ndarray, n_positive: int = 1) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise PromptError(f"a ground-truth mask must be 2-D (H, W), got shape {m.shape}")
    m = m.astype(bool)
    if n_positive > 0 and not m.any():
        raise PromptError("the ground-truth mask is empty: no positive point can be placed")
    return m


def interleave(pos: np.ndarray, neg: np.ndarray) -> Points:
    """Order positives and negatives so that every prefix keeps their ratio; a positive first."""
    n_p, n_n = len(pos), len(neg)
    keys = np.concatenate([(np.arange(n_p) + 0.0) / max(n_p, 1), (np.arange(n_n) + 0.5) / max(n_n, 1)])
    tie = np.concatenate([np.zeros(n_p), np.ones(n_n)])
    order = np.lexsort((tie, keys))
    coords = np.concatenate([pos.reshape(-1, 2), neg.reshape(-1, 2)]).astype(np.float32)[order]
    labels = np.concatenate([np.ones(n_p, np.int64), np.zeros(n_n, np.int64)])[order]
    return Points(coords, labels)


def _pick(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n pixels (x, y) drawn uniformly without replacement (with replacement if too few)."""
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    if len(rows) == 0:
        raise PromptError("no pixel available to place a point")
    idx = rng.choice(len(rows), size=n, replace=len(rows) < n)
    return np.stack([cols[idx], rows[idx]], axis=1).astype(np.float32)


def _distance_inside(mask: np.ndarray) -> np.ndarray:
    """Distance of each mask pixel to the nearest background pixel; the image border counts as background."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def farthest_points(candidates_rc: np.ndarray, depth: np.ndarray, n: int) -> np.ndarray:
    """Greedy farthest-point selection over candidate pixels.

    The first point is the deepest candidate (largest ``depth``; ties broken by closeness to
    the centroid of the deepest ones); each next point is the candidate farthest from the
    points already chosen (ties broken by depth).

    Args:
        candidates_rc: (M, 2) int (row, col) of allowed pixels.
        depth: (M,) float "depth" of each candidate (e.g. distance to the border).
    Returns (n, 2) float32 (x, y); fewer candidates than points repeat cyclically.
    """
    if n <= 0 or len(candidates_rc) == 0:
        return np.zeros((0, 2), np.float32)
    rc = candidates_rc.astype(np.float64)
    top = depth >= depth.max() - 1e-9
    centroid = rc[top].mean(axis=0)
    first_score = np.where(top, -np.hypot(*(rc - centroid).T), -np.inf)
    chosen = [int(np.argmax(first_score))]
    nearest = np.hypot(*(rc - rc[chosen[0]]).T)
    tie = 1e-6 * depth / max(float(depth.max()), 1e-9)
    for _ in range(1, min(n, len(rc))):
        i = int(np.argmax(nearest + tie))
        chosen.append(i)
        nearest = np.minimum(nearest, np.hypot(*(rc - rc[i]).T))
    out = rc[chosen][:, ::-1]
    if len(out) < n:
        out = out[np.arange(n) % len(out)]
    return out.astype(np.float32)


def _ring(mask: np.ndarray, width: float) -> np.ndarray:
    """bool: background pixels within ``width`` px of the mask (the place for negative clicks)."""
    dist_out = ndimage.distance_transform_edt(~mask)
    ring = (~mask) & (dist_out <= width)
    return ring if ring.any() else ~mask


def diameter(mask: np.ndarray) -> float:
    """Length of the mask's bounding-box diagonal in pixels (0 for an empty mask)."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return 0.0
    return float(np.hypot(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


# -- placement strategies -------------------------------------------------------------------
@register_strategy("random")
@dataclass
class RandomStrategy:
    """Uniform inside the mask (positives) and outside it (negatives), as in PointPrompt."""

    name: str = "random"
    kind: str = "placement"

    def __call__(self, mask, image, rng, n_positive, n_negative) -> Points:
        m = check_mask(mask, n_positive)
        pr, pc = np.nonzero(m)
        nr, nc = np.nonzero(~m)
        if n_negative > 0 and len(nr) == 0:
            raise PromptError("the mask covers the whole image: no negative point can be placed")
        return interleave(_pick(pr, pc, rng, n_positive), _pick(nr, nc, rng, n_negative))


@register_strategy("centre", "center")
@dataclass
class CentreStrategy:
    """The point deepest inside the mask (distance-transform maximum), then each next point the
    farthest from those already placed, among the interior pixels (depth at least ``interior``
    x the maximum depth, so points keep off the border). Negatives: farthest-point sampling in
    a ring around the object whose width is ``ring`` x the mask diameter. Deterministic."""

    ring: float = 0.1
    interior: float = 0.4
    name: str = "centre"
    kind: str = "placement"

    def __call__(self, mask, image, rng, n_positive, n_negative) -> Points:
        m = check_mask(mask, n_positive)
        pos = np.zeros((0, 2), np.float32)
        if n_positive:
            dist = _distance_inside(m)
            inner = m & (dist >= self.interior * dist.max())
            rc = np.argwhere(inner)
            pos = farthest_points(rc, dist[inner], n_positive)
        neg = np.zeros((0, 2), np.float32)
        if n_negative:
            if m.all():
                raise PromptError("the mask covers the whole image: no negative point can be placed")
            ring = _ring(m, max(2.0, self.ring * diameter(m)))
            rc_n = np.argwhere(ring)
            neg = farthest_points(rc_n, ndimage.distance_transform_edt(ring)[ring], n_negative)
        return interleave(pos, neg)


# -- correction strategies ------------------------------------------------------------------
@dataclass
class _Correction:
    kind: str = "correction"

    def first(self, gt: np.ndarray, rng: np.random.Generator) -> Points:
        """The opening click: the centre point of the object."""
        return CentreStrategy()(gt, None, rng, 1, 0)


@register_strategy("microsam", "micro-sam", "iterative")
@dataclass
class MicroSamCorrection(_Correction):
    """micro-sam's iterative prompting: one positive drawn uniformly from the false negatives and
    one negative from the false positives. Fallbacks: no false negative -> the positive comes
    from the object; no false positive -> the negative comes from a ring around the object's box
    (``ring`` x its diameter), then from any background pixel; an object covering the whole
    image gets no negative."""

    ring: float = 0.1
    name: str = "microsam"

    def correct(self, gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator, image: np.ndarray | None = None) -> Points:
        gt = check_mask(gt)
        pred = np.asarray(pred, bool)
        fn, fp = gt & ~pred, ~gt & pred
        pos = _pick(*np.nonzero(fn if fn.any() else gt), rng, 1)
        if fp.any():
            neg = _pick(*np.nonzero(fp), rng, 1)
        elif (~gt).any():
            rows, cols = np.nonzero(gt)
            pad = max(2, int(self.ring * diameter(gt)))
            box = np.zeros_like(gt)
            box[max(0, rows.min() - pad) : rows.max() + pad + 1, max(0, cols.min() - pad) : cols.max() + pad + 1] = True
            region = box & ~gt
            neg = _pick(*np.nonzero(region if region.any() else ~gt), rng, 1)
        else:
            neg = np.zeros((0, 2), np.float32)
        return interleave(pos, neg)


@register_strategy("error-centre", "error-center")
@dataclass
class ErrorCentreCorrection(_Correction):
    """One click at the centre (distance-transform maximum) of the largest error region: positive
    if that region is missed object (false negative), negative if it is false positive. With no
    error left, the click repeats the object centre (a no-op for SAM-like models)."""

    name: str = "error-centre"

    def correct(self, gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator, image: np.ndarray | None = None) -> Points:
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


def is_correction(strategy: Any) -> bool:
    return getattr(strategy, "kind", "placement") == "correction"


def check_budget(n_positive: int, n_negative: int) -> None:
    if n_positive < 0 or n_negative < 0 or n_positive + n_negative == 0:
        raise ConfigError(f"point budget must be >= 0 each and > 0 in total, got {n_positive} positive / {n_negative} negative")
