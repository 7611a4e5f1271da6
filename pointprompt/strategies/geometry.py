"""Pixel geometry the strategies share, with no strategy logic: memoised distance maps, the
background ring, the mask diameter, greedy farthest-point selection and the two k-medoids
rules (:func:`kmedoids`, a BUILD start; :func:`kmedoids_heuristic`, scikit-learn-extra's
defaults as the PointPrompt study calls them)."""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
from scipy import ndimage


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
    if m < k:
        return np.arange(m)
    D = _pairwise(pts)  # m == k goes on: every point is a medoid, in the heuristic start's order
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
