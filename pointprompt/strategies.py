"""Automated point-prompt strategies: where to click, given the ground-truth mask.

Two kinds, each registered by name (``create_strategy("centre")``):

* **placement** strategies, ``strategy(mask, image, rng, n_positive, n_negative) -> Points``:
  an *ordered* point set (positives first, then positives and negatives interleaved in
  proportion); a benchmark step k uses the first k points, so the order is part of the strategy.
* **correction** strategies, ``strategy.correct(gt, pred, rng, image=None, *, clicked=None) -> Points``:
  the click(s) to add after a prediction, for iterative prompting (``clicked``: the points
  placed so far); they start from :meth:`first`.

The PointPrompt study's strategies carry its names and follow its code (olivesgatech/PointPrompt,
``point_sampling/point_selection.py``, ``intelligent_point_selection.py`` and ``main.py``):
``random``, ``kmedoids``, ``shi-tomasi``, ``entropy``, ``max-distance``, ``saliency`` and ``obj``
(per connected component k-medoids). As in the study, their negatives come from the *whole*
background (its ``mode='ex'`` runs the same rule on ``1 - mask``), and ``entropy``,
``max-distance`` and ``saliency`` return their seed (probe) point *plus* n points on each side
that has a budget (``seed_points = 1``: n + 1 inclusion and n + 1 exclusion points for a budget
of n + n, as ``main.py`` concatenates ``inc_init`` with the n chosen points). ``saliency``
prompts the model once, so it is called with ``predict=`` (:func:`needs_model`). The rules
we deliberately do not copy (transposed (x, y) / (row, col) in entropy and max-distance, ...)
are listed in each class. Our earlier rules stay available under their own names:
``kmedoids-ring``, ``shi-tomasi-ring``, ``entropy-spread``, ``max-distance-spread`` (negatives
in a ring around the object, spread-out choices) and ``saliency-oracle`` (saliency sampled
inside the ground truth); ``centre`` and ``grid`` are not from the study.

Corrections: ``microsam`` (micro-sam's ``IterativePromptGenerator``), ``ritm`` (RITM's
``Clicker``) and ``error-centre``.

Conventions: masks are bool (H, W) indexed ``mask[y, x]``; points are ``(x, y)`` =
(column, row) of the pixel; the same ``rng`` state gives the same points. An empty mask
cannot hold a positive point: placement strategies raise :class:`PromptError` for it, and a
mask covering the whole image cannot hold a negative one. A placement strategy returns
``n + seed_points`` points for each side with a budget n > 0 (none for n = 0); a point repeats
only when its region has fewer pixels than points asked, and then the distinct points cycle
(raster order where the study tiles its pixel list).
"""

from __future__ import annotations

import hashlib
import math
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
    """A strategy instance by name (``random``, ``kmedoids``, ``shi-tomasi``, ``entropy``,
    ``max-distance``, ``saliency``, ``obj``, ``centre``, ``grid``, the ``-ring`` / ``-spread`` /
    ``-oracle`` variants, ``microsam``, ``ritm``, ``error-centre``; see :func:`list_strategies`)."""
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
    """n pixels (x, y) drawn uniformly without replacement; with fewer pixels than n, all of them
    in the given (raster) order, cycled, as PointPrompt's ``extract_random_mask_points`` tiles
    its pixel list (``mask_pixels.repeat(...)[:n]``; no random draw then)."""
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    if len(rows) == 0:
        raise PromptError("no pixel available to place a point")
    idx = np.arange(n) % len(rows) if len(rows) < n else rng.choice(len(rows), size=n, replace=False)
    return np.stack([cols[idx], rows[idx]], axis=1).astype(np.float32)


class _MaskMemo:
    """The last few distance maps, keyed by mask content: strategies run one after another on the
    same ground truth, so each map is computed once per mask instead of once per strategy."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.items: dict[tuple, np.ndarray] = {}

    def get(self, kind: str, mask: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        m = np.ascontiguousarray(mask, dtype=bool)
        key = (kind, m.shape, hashlib.blake2b(m.view(np.uint8), digest_size=16).digest())
        hit = self.items.pop(key, None)
        if hit is None:
            hit = compute(m)
            hit.setflags(write=False)
        self.items[key] = hit
        while len(self.items) > self.size:
            self.items.pop(next(iter(self.items)))
        return hit


_MEMO = _MaskMemo()


def _distance_inside(mask: np.ndarray) -> np.ndarray:
    """Distance of each mask pixel to the nearest background pixel; the image border counts as background."""
    return _MEMO.get("inside", mask, lambda m: ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1])


def _distance_outside(mask: np.ndarray) -> np.ndarray:
    """Distance of each background pixel to the nearest mask pixel."""
    return _MEMO.get("outside", mask, lambda m: ndimage.distance_transform_edt(~m))


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
    dist_out = _distance_outside(mask)
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
    """PointPrompt's ``rand``: positives uniform inside the mask, negatives uniform over the whole
    background, without replacement (``extract_random_mask_points``: ``randperm(...)[:n]``);
    a region with fewer pixels than asked gives all its pixels in raster order, cycled."""

    name: str = "random"
    kind: str = "placement"
    seed_points: int = 0

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
    seed_points: int = 0

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


# -- the PointPrompt study's automated strategies ------------------------------------------
# Shared conventions of this section: pixel sets are handled as (row, col) int arrays
# (``np.argwhere`` order) and turned into (x, y) = (col, row) exactly once, by ``_xy``.
def _xy(rc: np.ndarray) -> np.ndarray:
    """(M, 2) (row, col) -> (M, 2) float32 (x, y)."""
    return np.asarray(rc).reshape(-1, 2)[:, ::-1].astype(np.float32)


def _cycle(xy: np.ndarray, n: int) -> np.ndarray:
    """Exactly n points: the first n, or the distinct ones repeated cyclically when too few."""
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    if len(xy) == 0:
        raise PromptError("no pixel available to place a point")
    return xy[np.arange(n) % len(xy)] if len(xy) < n else xy[:n]


def _negative_region(m: np.ndarray, ring: float) -> np.ndarray:
    """Where negatives go: background within ``ring`` x diameter (>= 2 px) of the object."""
    if m.all():
        raise PromptError("the mask covers the whole image: no negative point can be placed")
    if not m.any():
        return ~m
    return _ring(m, max(2.0, ring * diameter(m)))


def _grey(image: np.ndarray | None, m: np.ndarray) -> np.ndarray | None:
    from pointprompt.saliency import to_grey

    return None if image is None else to_grey(image, m.shape)


def _subsample(rc: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n rows of rc without replacement, in draw order (all of them, shuffled, if n >= len)."""
    n = min(int(n), len(rc))
    return rc[rng.choice(len(rc), size=n, replace=False)] if n > 0 else rc[:0]


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) float32 Euclidean distances between two sets of (n, 2) points."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    d2 = (a[:, None, 0] - b[None, :, 0]) ** 2
    d2 += (a[:, None, 1] - b[None, :, 1]) ** 2
    return np.sqrt(d2, out=d2)


def kmedoids(points: np.ndarray, k: int, *, fixed: np.ndarray | None = None, max_iter: int = 50, candidates: int = 256) -> np.ndarray:
    """Indices of ``k`` medoids of ``points`` (Euclidean): a greedy BUILD start, then alternate refinement.

    BUILD (Kaufman & Rousseeuw) is greedy and deterministic: the first medoid is the point with
    the smallest total distance to all points (the 1-medoid), each next one the point that
    lowers the total distance-to-nearest-medoid the most. To keep the cost at O(n c k) instead
    of PAM's O(n^2 k), BUILD picks among ``candidates`` points (every (n / c)-th point, so a
    random subsample stays random) while measuring the objective over all n points. The
    *alternate* step (Park & Jun 2009, scikit-learn-extra's default ``method="alternate"``) then
    repeats until stable, over all points: assign every point to its nearest medoid, move each
    medoid to the member with the smallest total distance to its cluster (only when strictly
    better). Medoid j keeps BUILD's slot j, so the order is "most useful first". ``fixed``
    (F, 2) are medoids already placed (they attract points but never move); the k new ones
    spread away from them. No n x n matrix is built (at n = 1800: about 5 ms).

    Returns (min(k, len(points)),) int indices into ``points``; the caller handles k > len.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    fx = np.zeros((0, 2)) if fixed is None else np.asarray(fixed, np.float64).reshape(-1, 2)
    m, f = len(pts), len(fx)
    if k <= 0 or m == 0:
        return np.zeros(0, np.int64)
    if m <= k:
        return np.arange(m)
    centre = pts.mean(0)
    pts32, fx32 = (pts - centre).astype(np.float32), (fx - centre).astype(np.float32)
    cand = np.arange(m) if m <= candidates else np.unique(np.linspace(0, m - 1, candidates).round().astype(np.int64))
    Dc = _cross(pts32[cand], pts32)  # (c, m)
    nearest = _cross(fx32, pts32).min(0) if f else None
    chosen: list[int] = []
    for _ in range(k):
        if nearest is None:
            j = int(np.argmin(Dc.sum(1)))
        else:
            gain = np.maximum(nearest[None, :] - Dc, 0.0).sum(1)
            gain[[cand.tolist().index(c) for c in chosen]] = -1.0
            j = int(np.argmax(gain))
        chosen.append(int(cand[j]))
        nearest = Dc[j].copy() if nearest is None else np.minimum(nearest, Dc[j])
    med = np.array(chosen, np.int64)
    to_fixed = _cross(pts32, fx32) if f else np.zeros((m, 0), np.float32)
    for _ in range(max_iter):
        to_med = np.concatenate([to_fixed, _cross(pts32, pts32[med])], axis=1)
        labels = np.argmin(to_med, axis=1) - f  # < 0: nearest to a fixed medoid
        new = med.copy()
        for j in range(k):
            idx = np.flatnonzero(labels == j)
            if len(idx) == 0:
                continue
            cost = _cross(pts32[idx], pts32[idx]).sum(1)
            best = int(np.argmin(cost))
            current = np.flatnonzero(idx == med[j])
            if len(current) == 0 or cost[best] < cost[current[0]] - 1e-6:
                new[j] = idx[best]
        if np.array_equal(new, med):
            break
        med = new
    return med


def _pairwise(points: np.ndarray) -> np.ndarray:
    """(m, m) float64 Euclidean distances between the rows of ``points`` (m, 2): exact for pixels
    (sqrt of an exact integer sum of squares) and exactly symmetric."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    d = (p[:, None, 0] - p[None, :, 0]) ** 2
    d += (p[:, None, 1] - p[None, :, 1]) ** 2
    return np.sqrt(d, out=d)


def kmedoids_heuristic(points: np.ndarray, k: int, max_iter: int = 300) -> np.ndarray:
    """Indices of ``k`` medoids of ``points`` by scikit-learn-extra's ``KMedoids`` defaults, which
    PointPrompt calls (``KMedoids(n_clusters=k).fit(pixels)``): ``init="heuristic"`` (the k points
    with the smallest total distance to all points), then the ``"alternate"`` method (Park & Jun
    2009) for at most ``max_iter`` = 300 rounds: label each point with its nearest medoid (ties:
    the lower slot), then in each cluster move the medoid to the member with the smallest total
    distance to the cluster, only when strictly smaller; stop when no medoid moves.

    Follows scikit-learn-extra ``sklearn_extra/cluster/_k_medoids.py`` (``_initialize_medoids``,
    ``_update_medoid_idxs_in_place``), without the package (not a dependency). One difference:
    scikit-learn-extra takes the k smallest sums with ``np.argpartition`` (arbitrary order and tie
    breaking); here a stable sort orders them, so ties go to the earlier point and medoid j is
    the j-th most central start. Returns (min(k, m),) int indices (slot order); the full m x m
    distance matrix is built (m <= 2000 in the study: 32 MB, a few ms).
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    m = len(pts)
    if k <= 0 or m == 0:
        return np.zeros(0, np.int64)
    if m <= k:
        return np.arange(m)
    D = _pairwise(pts)
    med = np.argsort(D.sum(1), kind="stable")[:k].astype(np.int64)
    for _ in range(max_iter):
        old = med.copy()
        labels = np.argmin(D[med], axis=0)
        for j in range(k):
            idx = np.flatnonzero(labels == j)
            if len(idx) == 0:
                continue
            cost = D[np.ix_(idx, idx)].sum(1)
            best = int(np.argmin(cost))
            if cost[best] < cost[int(np.argmax(idx == med[j]))]:
                med[j] = idx[best]
        if np.array_equal(old, med):
            break
    return med


def _pp_kmedoid_points(region: np.ndarray, rng: np.random.Generator, n: int, subsample: int) -> np.ndarray:
    """PointPrompt's ``extract_kmedoid_points``: n (x, y) medoids (:func:`kmedoids_heuristic`) of
    a uniform random subsample of ``subsample`` region pixels; fewer region pixels than n: all of
    them in raster order, cycled (the study's ``repeat``)."""
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    rc = np.argwhere(region)
    if len(rc) < n:
        return _cycle(_xy(rc), n)
    sub = _subsample(rc, rng, subsample)
    return _xy(sub[kmedoids_heuristic(sub, n)])


def _pp_diameter(region: np.ndarray) -> float:
    """PointPrompt's mask diameter: the norm of (max - min) of the pixels' (row, col), i.e. the
    bounding-box diagonal between pixel centres (no +1, unlike :func:`diameter`)."""
    rc = np.argwhere(region)
    return float(np.hypot(*(rc.max(0) - rc.min(0)))) if len(rc) else 0.0


def _pp_candidates(rc: np.ndarray, rng: np.random.Generator, n: int) -> tuple[np.ndarray, int]:
    """The candidate subsample of PointPrompt's ``get_entropy_points`` / ``get_distance_points``:
    ``int(0.15 x len)`` region pixels; if that is fewer than n, ``int(f x len)`` for f = 0.5,
    0.6, ... while f <= 1 (the first that reaches n); if still fewer, all pixels and n becomes
    their number. Drawn uniformly without replacement, in random order (the seed pixel is not
    excluded, as in the study). Returns (candidates (amt, 2) (row, col), n)."""
    total = len(rc)
    amt = int(0.15 * total)
    base = 0.5
    while amt < n and base <= 1.0:
        amt = int(base * total)
        base += 0.1
    if amt < n:
        amt, n = total, total
    return rc[rng.choice(total, size=amt, replace=False)], n


@dataclass
class _RegionStrategy:
    """Base of the strategies that place positives in the mask and negatives in a background region
    by the same rule: subclasses implement ``_place(region, grey, rng, n) -> (n + seed_points, 2)
    (x, y)`` (called only for n > 0). Negatives come from the whole background (``ring=None``,
    PointPrompt's ``1 - mask``) or from a ring ``ring`` x the mask diameter (at least 2 px) wide
    around the object. The grey image is computed once per call (``None`` without an image); a
    ``predict=`` keyword is accepted and ignored, so a caller may pass it to every strategy."""

    ring: float | None = None
    kind: str = "placement"
    needs_model: bool = False
    seed_points: int = 0

    def __call__(self, mask, image, rng, n_positive, n_negative, *, predict=None) -> Points:
        m = check_mask(mask, n_positive)
        neg_region = None
        if n_negative > 0:
            neg_region = _negative_region(m, self.ring) if self.ring is not None else _background(m)
        grey = _grey(image, m)
        pos = self._place(m, grey, rng, n_positive) if n_positive > 0 else np.zeros((0, 2), np.float32)
        neg = self._place(neg_region, grey, rng, n_negative) if neg_region is not None else np.zeros((0, 2), np.float32)
        return interleave(pos, neg)

    def _place(self, region: np.ndarray, grey: np.ndarray | None, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError


def _background(m: np.ndarray) -> np.ndarray:
    """The whole background (PointPrompt's exclusion region); raises for a mask covering the image."""
    if m.all():
        raise PromptError("the mask covers the whole image: no negative point can be placed")
    return ~m


@register_strategy("kmedoids", "k-medoids", "kmedoid")
@dataclass
class KMedoidsStrategy(_RegionStrategy):
    """PointPrompt's ``kmediod`` (``extract_kmedoid_points``): the n_positive medoids of a uniform
    random subsample of ``subsample`` = 1800 mask pixels, by scikit-learn-extra's ``KMedoids``
    defaults (heuristic start, alternate refinement: :func:`kmedoids_heuristic`); negatives: the
    same on the whole background. Fewer region pixels than points: all of them, cycled. The
    only randomness is the subsample. Points come in medoid-slot order (the most central start
    first). Our earlier rule (PAM BUILD start, ring negatives) is ``kmedoids-ring``."""

    subsample: int = 1800
    name: str = "kmedoids"

    def _place(self, region, grey, rng, n):
        return _pp_kmedoid_points(region, rng, n, self.subsample)


@register_strategy("obj", "object-kmedoids", "per-object")
@dataclass
class ObjectKMedoidsStrategy(_RegionStrategy):
    """PointPrompt's ``obj`` (``object_sample``): k-medoids per connected component.

    The region's 4-connected components (``ndimage.label``) of at most ``drop`` = 3 pixels are
    dropped; each remaining component gets ``n // components`` points, and the ``n mod
    components`` left over go one each to the largest components (when n < components: one
    each to the n largest; size ties: the lower label, i.e. the first in raster order). Each
    component's points are the medoids (:func:`kmedoids_heuristic`) of a random subsample of
    ``subsample`` = 1800 of its pixels; components in label order. Negatives: the same rule
    on the whole background.

    Deliberate differences from the study's code: a component with fewer pixels than *its*
    points is tiled to its own count (the study compared with the total n and returned n points
    for it, so the total could exceed the budget); if every component is tiny the components
    are kept (the study divided by zero). The study's ``main.py`` lists ``obj`` among its
    choices but routes it to the ``kmediod`` branch; ``object_sample`` is what the name denotes.
    """

    subsample: int = 1800
    drop: int = 3
    name: str = "obj"

    def _place(self, region, grey, rng, n):
        lab, k = ndimage.label(region)
        sizes = ndimage.sum_labels(region, lab, index=np.arange(1, k + 1)).astype(np.int64)
        keep = np.flatnonzero(sizes > self.drop) + 1
        if len(keep) == 0:
            keep = np.arange(1, k + 1)
        count = sizes[keep - 1].copy()
        share = np.full(len(keep), n // len(keep), np.int64)
        for _ in range(n - int(share.sum())):
            big = int(np.argmax(count))
            count[big] = 0
            share[big] += 1
        out = []
        for label, amount in zip(keep, share):
            if amount:
                out.append(_pp_kmedoid_points(lab == label, rng, int(amount), self.subsample))
        return np.concatenate(out).astype(np.float32)


@register_strategy("shi-tomasi", "shitomasi", "corners")
@dataclass
class ShiTomasiStrategy(_RegionStrategy):
    """PointPrompt's corner strategy (``extract_corner_points``): Shi-Tomasi corners
    (``cv2.goodFeaturesToTrack``) of the grey image inside the region eroded by a square kernel
    of side ``int(q x diameter)`` for q = 6%, else 2%, else 1% (the first leaving at least
    ``min_pixels`` = 10 pixels; else the region itself), strongest first.

    As the study: ``cv2.erode`` with ``np.ones((s, s))`` (OpenCV's border: the image edge does
    not erode; s = 0 means OpenCV's default 3 x 3), diameter = norm of the pixels' (row, col)
    range (:func:`_pp_diameter`), at most n corners, ``quality`` = 0.001, minimum distance =
    eroded diameter / n, block and gradient size 3; the shortfall (fewer corners than asked, a
    flat image, or no image) is filled by an independent :class:`KMedoidsStrategy` draw of the
    (uneroded) region with a subsample of 2000 (which may land on a corner, as in the study).
    Negatives: the same rule on the whole background. The corner search runs on the eroded
    region's bounding box padded by 4 px (identical corners: OpenCV's quality threshold is
    relative to the strongest response inside the mask; less work). Our earlier rule (round
    erosion, fill spread away from the corners, ring negatives) is ``shi-tomasi-ring``.
    """

    erosion: tuple[float, ...] = (0.06, 0.02, 0.01)
    min_pixels: int = 10
    quality: float = 0.001
    subsample: int = 2000
    name: str = "shi-tomasi"

    def _eroded(self, region: np.ndarray) -> np.ndarray:
        import cv2

        u8 = region.astype(np.uint8)
        d = _pp_diameter(region)
        for q in self.erosion:
            s = int(d * q)
            eroded = cv2.erode(u8, np.ones((s, s), np.uint8))
            if int(eroded.sum()) >= self.min_pixels:
                return eroded.astype(bool)
        return region

    def _place(self, region, grey, rng, n):
        corners = np.zeros((0, 2), np.int64)
        if grey is not None:
            eroded = self._eroded(region)
            corners = _good_features(grey, eroded, n, self.quality, _pp_diameter(eroded) / n)
        fill = _pp_kmedoid_points(region, rng, n - len(corners), self.subsample)
        return np.concatenate([_xy(corners), fill]).astype(np.float32)


def _good_features(grey: np.ndarray, region: np.ndarray, n: int, quality: float, min_distance: float) -> np.ndarray:
    """(<= n, 2) (row, col) Shi-Tomasi corners of ``grey`` inside ``region``, strongest first
    (``cv2.goodFeaturesToTrack``, block and gradient size 3), searched on the region's bounding
    box padded by 4 px."""
    import cv2

    if not region.any():
        return np.zeros((0, 2), np.int64)
    rows, cols = np.nonzero(region)
    r0, r1 = max(0, rows.min() - 4), min(region.shape[0], rows.max() + 5)
    c0, c1 = max(0, cols.min() - 4), min(region.shape[1], cols.max() + 5)
    found = cv2.goodFeaturesToTrack(
        np.ascontiguousarray(grey[r0:r1, c0:c1]),
        maxCorners=int(n),
        qualityLevel=float(quality),
        minDistance=float(min_distance),
        mask=np.ascontiguousarray(region[r0:r1, c0:c1]).astype(np.uint8),
        blockSize=3,
        gradientSize=3,
    )
    if found is None:
        return np.zeros((0, 2), np.int64)
    rc = (np.round(found.reshape(-1, 2)).astype(np.int64) + [c0, r0])[:, ::-1]
    rc = rc[region[rc[:, 0], rc[:, 1]]]
    _, first = np.unique(rc, axis=0, return_index=True)
    return rc[np.sort(first)][:n]


@register_strategy("entropy", "max-entropy")
@dataclass
class EntropyStrategy(_RegionStrategy):
    """PointPrompt's entropy strategy (``get_entropy_points`` after a random ``inc_init``): a
    uniformly random seed pixel of the region, then the n candidates, among the study's random
    subsample (15% of the region, more when that is fewer than n: :func:`_pp_candidates`), with
    the largest |H(candidate patch) - H(seed patch)|, H = grey-level Shannon entropy (256 bins,
    bits) of the 9 x 9 patch placed as the study's ``select_grid`` does (starts 4 px up-left of
    the pixel, shifted inside at the top / left edge, cut at the bottom / right edge). Returns
    the seed then the n points (``seed_points = 1``); ranking ties (differences equal to 1e-9
    bits) keep the subsample order (the study's ``list.index(max(...))``). Negatives: the same rule on the whole background.

    Deliberate differences from the study's code: the candidates' patches are read at (row, col)
    (the study passed ``argwhere``'s (row, col) as (x, y), so it scored the patches of
    transposed pixels); for n = 1 the top-ranked candidate is taken (the study's separate n = 1
    branch returned pixel (0, 0) when every difference was 0); RGB is turned grey with RGB
    weights (the study used ``COLOR_BGR2GRAY`` on RGB images). Our earlier rule (seed counted in
    n, points kept apart, ring negatives) is ``entropy-spread``.
    """

    patch: int = 9
    name: str = "entropy"
    seed_points: int = 1

    def _place(self, region, grey, rng, n):
        from pointprompt.saliency import patch_entropy

        rc = np.argwhere(region)
        seed = rc[int(rng.integers(len(rc)))]
        cand, n_eff = _pp_candidates(rc, rng, n)
        if grey is None:
            score = np.zeros(len(cand))
        else:
            ent = patch_entropy(grey, np.concatenate([seed[None], cand]), self.patch, border="shift")
            score = np.round(np.abs(ent[1:] - ent[0]), 9)  # equal up to float noise -> a tie
        order = np.argsort(-score, kind="stable")[:n_eff]
        return _cycle(_xy(np.concatenate([seed[None], cand[order]])), n + 1)


@register_strategy("max-distance", "maxdistance", "max-dist")
@dataclass
class MaxDistanceStrategy(_RegionStrategy):
    """PointPrompt's max-distance strategy (``get_distance_points`` after a random ``inc_init``):
    a uniformly random seed pixel of the region, then the n candidates farthest (Euclidean) from
    the seed among the study's random subsample (:func:`_pp_candidates`): a ranking by distance
    to the seed, not a greedy spread. Returns the seed then the n points (``seed_points = 1``);
    ties keep the subsample order. Negatives: the same rule on the whole background.

    Deliberate differences from the study's code: the distance is measured in (row, col) for
    both points (the study subtracted the seed's (x, y) from the candidates' (row, col), i.e.
    measured from the transposed seed, a known bug); for n = 1 the farthest candidate is taken
    (the study's n = 1 branch returned (0, 0) when no candidate was farther than 0). Our earlier
    rule (greedy farthest-point spread, seed counted in n, ring negatives) is
    ``max-distance-spread``.
    """

    name: str = "max-distance"
    seed_points: int = 1

    def _place(self, region, grey, rng, n):
        rc = np.argwhere(region)
        seed = rc[int(rng.integers(len(rc)))]
        cand, n_eff = _pp_candidates(rc, rng, n)
        dist = np.sqrt(((cand - seed) ** 2).sum(1).astype(np.float64))
        order = np.argsort(-dist, kind="stable")[:n_eff]
        return _cycle(_xy(np.concatenate([seed[None], cand[order]])), n + 1)


def _lattice(region: np.ndarray, n: int) -> np.ndarray:
    """(row, col) of the pixels of a uniform lattice over ``region``'s bounding box that fall in
    ``region``: the spacing starts at sqrt(area / n) (area = region pixels) and shrinks by 10%
    until at least n lattice points fall inside. ``ny`` rows and ``nx`` columns of lattice
    points sit at the centres of equal cells of the box (spacing box height / ny, box width /
    nx), so the lattice is centred on the box."""
    rc = np.argwhere(region)
    (r0, c0), (r1, c1) = rc.min(0), rc.max(0)
    h, w = r1 - r0 + 1, c1 - c0 + 1
    s = math.sqrt(len(rc) / max(n, 1))
    while True:
        ny, nx = min(h, max(1, int(round(h / s)))), min(w, max(1, int(round(w / s))))
        ys = r0 + np.floor((np.arange(ny) + 0.5) * h / ny).astype(np.int64)
        xs = c0 + np.floor((np.arange(nx) + 0.5) * w / nx).astype(np.int64)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        keep = region[yy, xx]
        if keep.sum() >= n or (ny == h and nx == w):
            return np.stack([yy[keep], xx[keep]], axis=1)
        s *= 0.9


@register_strategy("grid")
@dataclass
class GridStrategy(_RegionStrategy):
    """Points of a uniform lattice laid over the mask's bounding box, kept where inside the mask;
    the spacing (the same in x and y up to rounding) is the largest that puts at least
    n_positive lattice points inside, starting from sqrt(mask area / n_positive) (so about
    n_positive fall inside) and shrinking by 10% steps. When more than n_positive fall inside,
    exactly n_positive are kept in a deterministic spread order: the lattice point deepest in
    the mask first, then each next the one farthest from those already kept
    (:func:`farthest_points`); with exactly n_positive inside they all stay (a full lattice).
    Negatives: the same on the background ring (``ring`` x the mask diameter wide).
    No randomness (the rng is not used). Not a PointPrompt strategy; a regular reference.
    """

    ring: float | None = 0.1
    name: str = "grid"

    def _place(self, region, grey, rng, n):
        rc = np.argwhere(region)
        if len(rc) <= n:
            return _cycle(_xy(rc), n)
        lattice = _lattice(region, n)
        depth = _distance_inside(region)[lattice[:, 0], lattice[:, 1]]
        return farthest_points(lattice, depth, n)




def _box_slices(region: np.ndarray, pad: int) -> tuple[slice, slice]:
    """PointPrompt's saliency crop: rows ``[max(min - pad, 0), min(max + pad, H))`` and the same for
    columns, min / max being the region's extreme pixel indices (``get_saliency_point``)."""
    rows, cols = np.nonzero(region)
    h, w = region.shape
    return slice(max(int(rows.min()) - pad, 0), min(int(rows.max()) + pad, h)), slice(max(int(cols.min()) - pad, 0), min(int(cols.max()) + pad, w))


def _random_subbox(background: np.ndarray, rng: np.random.Generator, tries: int) -> tuple[slice, slice]:
    """PointPrompt's exclusion crop (``get_saliency_point(mode='ex')``): inside the bounding box
    (min..max) of ``background``, a random box whose start is uniform in [min, max - 10) and end
    uniform in [start + 10, max), each side lengthened by 100 px when shorter than 100 and that
    stays inside the image, redrawn until at least 10% of it is background. After ``tries``
    draws (or when the background's box is under 11 px wide, where the study fails) the
    background's whole bounding box is used."""
    rows, cols = np.nonzero(background)
    h, w = background.shape
    (r0, r1), (c0, c1) = (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))

    def side(lo: int, hi: int, size: int) -> tuple[int, int]:
        a = int(rng.integers(lo, hi - 10))
        b = int(rng.integers(a + 10, hi))
        if b - a < 100 and b + 100 < size:
            b += 100
        return a, b

    if c1 - 10 > c0 and r1 - 10 > r0:
        for _ in range(tries):
            x0, x1 = side(c0, c1, w)
            y0, y1 = side(r0, r1, h)
            if background[y0:y1, x0:x1].sum() >= 0.1 * (x1 - x0) * (y1 - y0):
                return slice(y0, y1), slice(x0, x1)
    return slice(r0, r1 + 1), slice(c0, c1 + 1)


@register_strategy("saliency")
@dataclass
class SaliencyStrategy:
    """PointPrompt's saliency strategy (``main.py`` ``query == 'saliency'`` and
    ``intelligent_point_selection.get_saliency_point``): the ground truth is used only for the
    probe; the points come from the model's mask and a saliency map.

    Called as ``strategy(mask, image, rng, n_pos, n_neg, predict=f)`` (``needs_model`` is True),
    ``f(points) -> bool (H, W)`` being the model's mask for a :class:`Points` prompt (the
    benchmark passes a closure over the segmenter, the cached embedding and its multimask
    policy: ``first`` is the study's ``masks[0]``); without ``predict`` it raises
    :class:`ConfigError`. Steps:

    1. Probe: one uniformly random inclusion point in the gt mask and one exclusion point in the
       gt background; ``predict`` is called with the two, redrawn (at most ``probe_tries`` = 10
       calls) while the predicted mask P is empty.
    2. Positives: the crop is P's bounding box padded by ``pad`` = 10 px (clipped; the whole
       image if P stayed empty); its saliency map S (one per call); n_positive pixels drawn
       uniformly without replacement from the salient pixels (S above its crop mean) that lie
       in P; if too few, then other pixels of P, then salient crop pixels, then any crop pixel.
    3. Negatives: the crop is a random sub-box of the predicted background's bounding box
       holding at least 10% predicted background (:func:`_random_subbox`, the study's rule);
       drawn the same way from its salient pixels outside P, then other pixels outside P (first
       in the box, then anywhere), then salient box pixels, then any box pixel.
    4. The result is the probe inclusion point then the n_positive points, and the probe
       exclusion point then the n_negative points (``seed_points = 1``, as the study keeps
       ``inc_init`` / ``ex_init``); sampled points never repeat a probe point.

    The saliency model: the study ran VST (a salient-object network, weights downloaded, the
    model rebuilt on every call) and kept pixels with saliency > 0; here a classical map with no
    model (:func:`~pointprompt.saliency.saliency_map`, ``method`` = frequency-tuned by default)
    and "salient" = above its crop mean. Because a classical map marks whatever colour is rare
    in the crop (often the background around the object) rather than the salient *object*,
    the draw is restricted to P (``within="prediction"``, the default) as the stand-in for VST's
    object mask; ``within="crop"`` is the study's literal rule (salient pixels of the crop,
    P not consulted). Also not copied: the study resized VST's output to (width, height)
    (transposed for non-square crops) and offset inclusion points by ``min - 10`` even where the
    crop was clipped at the image edge. Without an image the saliency is 0 and the draws are
    uniform over the tiers. Our earlier rule (points drawn inside the ground truth, weighted by
    saliency) is ``saliency-oracle``.
    """

    pad: int = 10
    within: str = "prediction"
    method: str = "frequency-tuned"
    probe_tries: int = 10
    box_tries: int = 100
    name: str = "saliency"
    kind: str = "placement"
    needs_model: bool = True
    seed_points: int = 1

    def __call__(self, mask, image, rng, n_positive, n_negative, *, predict: Callable[[Points], np.ndarray] | None = None) -> Points:
        _check_predict(predict, self.method)
        if self.within not in ("prediction", "crop"):
            raise ConfigError(f"saliency: within must be 'prediction' or 'crop', got {self.within!r}")
        m = check_mask(mask, n_positive)
        if n_negative > 0:
            _background(m)
        _grey(image, m)  # checks the image size
        pred = np.zeros_like(m)
        for _ in range(max(1, self.probe_tries)):
            p_pos = _pick(*np.nonzero(m), rng, 1) if m.any() else np.zeros((0, 2), np.float32)
            p_neg = _pick(*np.nonzero(~m), rng, 1) if not m.all() else np.zeros((0, 2), np.float32)
            pred = _call_predict(predict, interleave(p_pos, p_neg), m.shape)
            if pred.any():
                break
        taken = np.zeros(m.shape, bool)
        for x, y in np.concatenate([p_pos, p_neg]).astype(np.int64):
            taken[y, x] = True
        pos = neg = np.zeros((0, 2), np.float32)
        if n_positive > 0:
            crop = _box_slices(pred, self.pad) if pred.any() else (slice(None), slice(None))
            pos = np.concatenate([p_pos, self._draw(image, crop, pred, taken, rng, n_positive)])
        if n_negative > 0:
            bg = ~pred
            box = _random_subbox(bg, rng, self.box_tries) if bg.any() else (slice(None), slice(None))
            neg = np.concatenate([p_neg, self._draw(image, box, bg, taken, rng, n_negative)])
        return interleave(pos, neg)

    def _draw(self, image, crop: tuple[slice, slice], region: np.ndarray, taken: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
        """n pixels (x, y), uniform without replacement, from the tiers of step 2 / 3."""
        from pointprompt.saliency import saliency_map

        in_crop = np.zeros(region.shape, bool)
        in_crop[crop] = True
        salient = np.zeros(region.shape, bool)
        if image is not None:
            sal = saliency_map(np.asarray(image)[crop], self.method)
            salient[crop] = sal > sal.mean()
        free = ~taken
        if self.within == "prediction":
            tiers = [salient & region, in_crop & region, region, salient, in_crop]
        else:
            tiers = [salient, in_crop]
        # a probe pixel is reused only when nothing else is left (the last tier)
        return _draw_tiers([t & free for t in tiers] + [in_crop], np.ones(region.shape, np.float32), rng, n)


def _check_predict(predict: Any, method: str) -> None:
    from pointprompt.saliency import SALIENCY_METHODS

    if predict is None:
        raise ConfigError(
            "the saliency strategy prompts the model once: call it with predict=<function Points -> bool (H, W) mask> "
            "(the point benchmark passes one for strategies whose needs_model is True)"
        )
    if method not in SALIENCY_METHODS:
        raise ConfigError(f"unknown saliency method {method!r}; use one of {', '.join(SALIENCY_METHODS)}")


def _call_predict(predict: Callable[[Points], np.ndarray], points: Points, shape: tuple[int, ...]) -> np.ndarray:
    """The model's mask for ``points`` as bool (H, W); a wrong shape raises :class:`ConfigError`."""
    pred = np.asarray(predict(points))
    while pred.ndim > 2 and pred.shape[0] == 1:
        pred = pred[0]
    if pred.shape != shape:
        raise ConfigError(f"predict() must return one (H, W) mask of the image's size {shape}, got shape {pred.shape}")
    return pred.astype(bool)


# -- our earlier rules, kept under their own names -----------------------------------------
def _kmedoid_points(region: np.ndarray, rng: np.random.Generator, n: int, subsample: int, fixed_rc: np.ndarray | None = None) -> np.ndarray:
    """n (x, y) k-medoids of a random subsample of ``region``'s pixels (see :func:`kmedoids`)."""
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    rc = np.argwhere(region)
    if fixed_rc is not None and len(fixed_rc):
        taken = np.zeros(region.shape, bool)
        taken[fixed_rc[:, 0], fixed_rc[:, 1]] = True
        rc = rc[~taken[rc[:, 0], rc[:, 1]]]
    if len(rc) == 0:
        if fixed_rc is not None and len(fixed_rc):
            return _cycle(_xy(fixed_rc), n)
        raise PromptError("no pixel available to place a point")
    sub = _subsample(rc, rng, max(subsample, n))
    idx = kmedoids(sub, n, fixed=fixed_rc)
    return _cycle(_xy(sub[idx]), n)


@register_strategy("kmedoids-ring")
@dataclass
class KMedoidsRingStrategy(_RegionStrategy):
    """Our earlier k-medoids rule (not the study's: that is ``kmedoids``): K = n_positive medoids of a random subsample of ``subsample``
    (default 1800) mask pixels; negatives: the n_negative medoids of a subsample of the
    background ring (``ring`` x the mask diameter wide, at least 2 px).

    Algorithm: PAM's BUILD initialisation followed by alternate (Voronoi-iteration) refinement
    in numpy (:func:`kmedoids`), not scikit-learn-extra (not a dependency) and not KMeans
    snapped to pixels: a medoid is a member of the subsample, so it is always inside the
    (possibly non-convex) region. The only randomness is the subsample, drawn from ``rng``:
    the same rng state gives the same points. Points are ordered by BUILD slot, so the first
    positive is the object's 1-medoid (its most central pixel) and prefixes stay spread.
    Differences from the study's ``kmedoids``: negatives come from the ring, not the whole
    background; sklearn-extra's ``init="heuristic"`` (the K most central points) is replaced
    by BUILD, which starts spread out. Fewer region pixels than points: all of them, cycled.
    """

    ring: float | None = 0.1
    subsample: int = 1800
    name: str = "kmedoids-ring"

    def _place(self, region, grey, rng, n):
        return _kmedoid_points(region, rng, n, self.subsample)


def _erode_cascade(region: np.ndarray, fractions: tuple[float, ...], min_pixels: int) -> np.ndarray:
    """The region eroded by the first of ``fractions`` x its diameter that leaves >= min_pixels
    pixels (the region itself if none does). Eroding by a fraction q removes the pixels closer
    than q x diameter / 2 to the background (the image border counts as background); that is
    the study's square kernel of side q x diameter, made round."""
    depth = _distance_inside(region)
    d = diameter(region)
    for q in fractions:
        eroded = depth > q * d / 2.0
        if eroded.sum() >= min_pixels:
            return eroded
    return region


@register_strategy("shi-tomasi-ring")
@dataclass
class ShiTomasiRingStrategy(_RegionStrategy):
    """Our earlier corner rule (the study's is ``shi-tomasi``): Shi-Tomasi corners (``cv2.goodFeaturesToTrack``) of the grey
    image, restricted to the region eroded by 6%, else 2%, else 1% of its diameter (the first
    leaving at least ``min_pixels`` = 10 pixels; else the region itself), strongest first.

    Parameters as the study: at most n corners, ``quality`` = 0.001 (relative to the strongest
    corner in the eroded region), minimum distance = eroded-region diameter / n, block and
    gradient size 3. The shortfall (fewer corners than asked, a flat image, or no image at
    all) is filled with k-medoid points of the (uneroded) region, computed with the corners
    as fixed medoids so that the fill spreads away from them (the study ran an independent
    k-medoids, which can land on a corner). Negatives: the same on the background ring.
    The corner search runs on the region's bounding box padded by 4 px (identical corners,
    less work on large images). Corners are integer pixels, reported as (x, y).
    """

    ring: float | None = 0.1
    erosion: tuple[float, ...] = (0.06, 0.02, 0.01)
    min_pixels: int = 10
    quality: float = 0.001
    subsample: int = 1800
    name: str = "shi-tomasi-ring"

    def _corners(self, region: np.ndarray, grey: np.ndarray | None, n: int) -> np.ndarray:
        """(≤ n, 2) (row, col) corners inside ``region``, strongest first."""
        import cv2

        if grey is None or not region.any():
            return np.zeros((0, 2), np.int64)
        eroded = _erode_cascade(region, tuple(self.erosion), self.min_pixels)
        rows, cols = np.nonzero(eroded)
        r0, r1 = max(0, rows.min() - 4), min(region.shape[0], rows.max() + 5)
        c0, c1 = max(0, cols.min() - 4), min(region.shape[1], cols.max() + 5)
        found = cv2.goodFeaturesToTrack(
            np.ascontiguousarray(grey[r0:r1, c0:c1]),
            maxCorners=int(n),
            qualityLevel=float(self.quality),
            minDistance=float(diameter(eroded)) / n,
            mask=np.ascontiguousarray(eroded[r0:r1, c0:c1]).astype(np.uint8),
            blockSize=3,
            gradientSize=3,
        )
        if found is None:
            return np.zeros((0, 2), np.int64)
        xy = np.round(found.reshape(-1, 2)).astype(np.int64) + [c0, r0]
        rc = xy[:, ::-1]
        rc = rc[eroded[rc[:, 0], rc[:, 1]]]
        _, first = np.unique(rc, axis=0, return_index=True)
        return rc[np.sort(first)][:n]

    def _place(self, region, grey, rng, n):
        corners = self._corners(region, grey, n)
        fill = _kmedoid_points(region, rng, n - len(corners), self.subsample, fixed_rc=corners)
        return np.concatenate([_xy(corners), fill]).astype(np.float32)


def _spread_order(cand_rc: np.ndarray, order: np.ndarray, n: int, min_dist: float, taken_rc: np.ndarray) -> np.ndarray:
    """Indices of n candidates taken in ``order``, skipping any closer than ``min_dist`` to one
    already taken (``taken_rc`` counts as taken); if that leaves fewer than n, the skipped ones
    follow in ``order``."""
    if n <= 0 or len(order) == 0:
        return np.zeros(0, np.int64)
    if min_dist <= 0:
        return order[:n]
    rc = cand_rc.astype(np.float64)
    blocked = np.zeros(len(rc), bool)
    for t in np.asarray(taken_rc, np.float64).reshape(-1, 2):
        blocked |= np.hypot(*(rc - t).T) < min_dist
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    picked: list[int] = []
    while len(picked) < n:
        free = order[~blocked[order]]
        if len(free) == 0:
            break
        i = int(free[0])
        picked.append(i)
        blocked |= np.hypot(*(rc - rc[i]).T) < min_dist
        blocked[i] = True
    if len(picked) < n:
        seen = set(picked)
        picked += [int(i) for i in order if int(i) not in seen][: n - len(picked)]
    return np.asarray(picked, np.int64)


def _seed_and_candidates(region: np.ndarray, rng: np.random.Generator, n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random seed pixel of ``region`` and a random subsample of the other pixels:
    ``fraction`` of the region, but at least n - 1 (the points still to choose)."""
    rc = np.argwhere(region)
    if len(rc) == 0:
        raise PromptError("no pixel available to place a point")
    s = int(rng.integers(len(rc)))
    others = np.delete(rc, s, axis=0)
    k = min(len(others), max(int(math.ceil(fraction * len(rc))), n - 1))
    return rc[s], _subsample(others, rng, k)


@register_strategy("entropy-spread")
@dataclass
class EntropySpreadStrategy(_RegionStrategy):
    """Our earlier entropy rule (the study's is ``entropy``): a uniformly random seed point in the region (the first
    point), then n - 1 points among a random ``fraction`` (15%) subsample of the other region
    pixels, ranked by |H(p) - H(seed)|, H = grey-level Shannon entropy (256 levels, bits) of
    the ``patch`` x ``patch`` (9 x 9) patch around the pixel (:func:`patch_entropy`, computed
    only at the seed and the candidates, vectorised).

    Ranking direction: *most different first* (descending |dH|), as the study's code does.
    Rationale: the seed already tells the model about the texture around it; a second click
    on the same texture adds little, while clicks on the most differently textured parts of
    the object (a bright rim, a dark core, a specular patch) cover what a model growing from
    the seed is most likely to miss. Candidates are then taken in that order but skipping any
    closer than ``min_distance`` x the region diameter (default 0.05) to an already chosen
    point, so the points are not all neighbours on one textured spot (set ``min_distance=0``
    for the study's pure ranking; skipped candidates fill in if too few remain). Ties (e.g.
    a flat image, or no image: every |dH| is 0) keep the random subsample order.

    Deliberate differences from the study's code: pixels are (row, col) throughout and the
    patch is centred on the candidate (the study read ``argwhere`` rows as x, so it scored
    transposed pixels); the seed counts towards n (the study returned n + 1 points); patches
    are clipped at the image border; negatives use the background ring.
    """

    ring: float | None = 0.1
    fraction: float = 0.15
    patch: int = 9
    min_distance: float = 0.05
    name: str = "entropy-spread"

    def _place(self, region, grey, rng, n):
        from pointprompt.saliency import patch_entropy

        seed, cand = _seed_and_candidates(region, rng, n, self.fraction)
        if n == 1 or len(cand) == 0:
            return _cycle(_xy(seed), n)
        if grey is None:
            score = np.zeros(len(cand))
        else:
            ent = patch_entropy(grey, np.concatenate([seed[None], cand]), self.patch)
            score = np.abs(ent[1:] - ent[0])
        order = np.argsort(-score, kind="stable")
        picked = _spread_order(cand, order, n - 1, self.min_distance * diameter(region), seed[None])
        return _cycle(_xy(np.concatenate([seed[None], cand[picked]])), n)


@register_strategy("max-distance-spread")
@dataclass
class MaxDistanceSpreadStrategy(_RegionStrategy):
    """Our earlier max-distance rule (the study's is ``max-distance``): a uniformly random seed point in the region (the
    first point), then, among a random ``fraction`` (15%, at least n - 1 pixels) subsample of
    the other region pixels, greedily the candidate farthest (Euclidean, in pixels) from all
    points chosen so far (farthest-point sampling; ties keep the random subsample order).

    Deliberate differences from the study's code: distances use (row, col) for both the seed
    and the candidates (the study compared an (x, y) seed with (row, col) candidates, i.e.
    measured from the transposed seed); "farthest from the points chosen so far" instead of
    "the n farthest from the seed", which bunched all points at the far end; the seed counts
    towards n; negatives come from the background ring.
    """

    ring: float | None = 0.1
    fraction: float = 0.15
    name: str = "max-distance-spread"

    def _place(self, region, grey, rng, n):
        seed, cand = _seed_and_candidates(region, rng, n, self.fraction)
        chosen = [seed]
        if len(cand):
            c = cand.astype(np.float64)
            nearest = np.hypot(*(c - seed).T)
            for _ in range(min(n - 1, len(cand))):
                i = int(np.argmax(nearest))
                chosen.append(cand[i])
                nearest = np.minimum(nearest, np.hypot(*(c - c[i]).T))
                nearest[i] = -1.0
        return _cycle(_xy(np.array(chosen)), n)


def _draw_tiers(tiers: list[np.ndarray], weights: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct pixels (x, y) drawn without replacement with probability proportional to
    ``weights`` (+1e-6), from the first bool region of ``tiers``, then (if it runs out) from
    the next ones; the distinct pixels repeat only when all tiers together are too small."""
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    taken = np.zeros(weights.size, bool)
    chosen: list[np.ndarray] = []
    got = 0
    flat_w = weights.ravel().astype(np.float64)
    for tier in tiers:
        idx = np.flatnonzero(tier.ravel() & ~taken)
        k = min(n - got, len(idx))
        if k <= 0:
            continue
        p = flat_w[idx] + 1e-6
        sel = rng.choice(idx, size=k, replace=False, p=p / p.sum())
        taken[sel] = True
        chosen.append(sel)
        got += k
        if got == n:
            break
    if not chosen:
        raise PromptError("no pixel available to place a point")
    rows, cols = np.unravel_index(np.concatenate(chosen), weights.shape)
    return _cycle(_xy(np.stack([rows, cols], axis=1)), n)


@register_strategy("saliency-oracle")
@dataclass
class SaliencyOracleStrategy:
    """Our earlier saliency rule, which samples inside the *ground truth* (the study's rule, which
    does not, is ``saliency``): prompt the model once, then sample in a saliency map of the crop.

    Called as ``strategy(mask, image, rng, n_pos, n_neg, predict=f)`` (``needs_model`` is True),
    ``f(points) -> bool (H, W)`` being the model's mask for a :class:`Points` prompt (the
    benchmark passes a closure over the segmenter and the cached image embedding); without
    ``predict`` it raises :class:`ConfigError`. Steps:

    1. ``predict`` is called exactly once, with one uniformly random inclusion point in the
       gt mask and one exclusion point outside it (only the one that exists, for an empty or
       full mask).
    2. The crop is the predicted mask's bounding box (the gt box if the prediction is empty),
       padded by ``pad`` (10%) of its height / width on each side, clipped to the image.
    3. Its saliency map is computed once, with no model: by default frequency-tuned salient
       region detection (Achanta et al., CVPR 2009), which marks whole regions of unusual
       colour, the closest classical stand-in for the study's salient-object network (VST);
       ``method="spectral-residual"`` (Hou & Zhang, CVPR 2007; numpy FFT of the grey crop at
       64 px) marks small spots instead (on 32 synthetic lesions with the classical segmenter,
       1 + 1 points: mean IoU 0.61 frequency-tuned against 0.40 spectral residual).
    4. Positives: drawn without replacement with probability proportional to the saliency
       from the salient pixels (saliency above its crop mean) inside the gt mask; if too few,
       then from the other gt pixels of the crop, then from any gt pixel.
       Negatives: the same from salient crop pixels outside the mask, then other crop
       background pixels, then the background ring (``ring`` x diameter), then any background.

    The probe points are not part of the result. Without an image (``image=None``) or on a flat
    crop the saliency is 0 everywhere and the draw is uniform. Deliberate differences from the
    study: a classical saliency map instead of the VST network (whose weights the study
    downloaded and whose model it rebuilt on every call: here nothing is built per call);
    negatives prefer salient background near the object. Spectral residual saliency is a
    small-spot detector: inside a large smooth object it is highest near the object's edge and
    on specks, so with it this strategy's positives tend to lie there.
    """

    pad: float = 0.1
    ring: float = 0.1
    method: str = "frequency-tuned"
    name: str = "saliency-oracle"
    seed_points: int = 0
    kind: str = "placement"
    needs_model: bool = True

    def __call__(self, mask, image, rng, n_positive, n_negative, *, predict: Callable[[Points], np.ndarray] | None = None) -> Points:
        from pointprompt.saliency import saliency_map

        _check_predict(predict, self.method)
        m = check_mask(mask, n_positive)
        neg_region = _negative_region(m, self.ring) if n_negative > 0 else None
        grey = _grey(image, m)
        probe = interleave(_pick(*np.nonzero(m), rng, 1) if m.any() else np.zeros((0, 2)), _pick(*np.nonzero(~m), rng, 1) if not m.all() else np.zeros((0, 2)))
        pred = _call_predict(predict, probe, m.shape)
        box = pred if pred.any() else (m if m.any() else np.ones_like(m))
        rows, cols = np.nonzero(box)
        (r0, r1), (c0, c1) = (rows.min(), rows.max() + 1), (cols.min(), cols.max() + 1)
        pr, pc = int(math.ceil(self.pad * (r1 - r0))), int(math.ceil(self.pad * (c1 - c0)))
        crop = (slice(max(0, r0 - pr), min(m.shape[0], r1 + pr)), slice(max(0, c0 - pc), min(m.shape[1], c1 + pc)))
        sal = np.zeros(m.shape, np.float32)
        if grey is not None:  # one saliency map per call, of the crop only
            sal[crop] = saliency_map(np.asarray(image)[crop], self.method)
        in_crop = np.zeros(m.shape, bool)
        in_crop[crop] = True
        salient = in_crop & (sal > sal[crop].mean())
        pos = _draw_tiers([salient & m, in_crop & m, m], sal, rng, n_positive) if n_positive > 0 else np.zeros((0, 2), np.float32)
        neg = np.zeros((0, 2), np.float32)
        if neg_region is not None:
            neg = _draw_tiers([salient & ~m, in_crop & ~m, neg_region, ~m], sal, rng, n_negative)
        return interleave(pos, neg)


# -- correction strategies ------------------------------------------------------------------
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


def is_correction(strategy: Any) -> bool:
    return getattr(strategy, "kind", "placement") == "correction"


def needs_model(strategy: Any) -> bool:
    """True for strategies that prompt the model themselves (``saliency``): call them with
    ``predict=`` (a function ``Points -> bool (H, W) mask``)."""
    return bool(getattr(strategy, "needs_model", False))


def check_budget(n_positive: int, n_negative: int) -> None:
    if n_positive < 0 or n_negative < 0 or n_positive + n_negative == 0:
        raise ConfigError(f"point budget must be >= 0 each and > 0 in total, got {n_positive} positive / {n_negative} negative")
