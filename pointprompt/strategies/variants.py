"""Placement strategies of our own, under their own names: ``centre`` and ``grid`` (not from the
PointPrompt study), and our earlier rules for the study's strategies, kept when the study's
names moved to its code (:mod:`~pointprompt.strategies.study`): ``kmedoids-ring``,
``shi-tomasi-ring``, ``entropy-spread`` and ``max-distance-spread`` (negatives in a ring around
the object, spread-out choices). ``saliency-oracle`` is in :mod:`~pointprompt.strategies.salient`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segprompt.errors import PromptError
from segprompt.prompts import Points

from pointprompt.strategies.base import _RegionStrategy, _cycle, _subsample, _xy, check_mask, interleave, register_strategy
from pointprompt.strategies.geometry import _distance_inside, _ring, diameter, farthest_points, kmedoids
from pointprompt.strategies.study import _good_features


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
        """(≤ n, 2) (row, col) corners inside ``region`` eroded, strongest first."""
        if grey is None or not region.any():
            return np.zeros((0, 2), np.int64)
        eroded = _erode_cascade(region, tuple(self.erosion), self.min_pixels)
        return _good_features(grey, eroded, n, self.quality, float(diameter(eroded)) / n)

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
