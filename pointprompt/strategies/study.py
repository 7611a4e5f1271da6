"""The PointPrompt study's automated placement strategies, under its names and following its code
(olivesgatech/PointPrompt ``point_sampling/point_selection.py``,
``intelligent_point_selection.py``, ``main.py``): ``random``, ``kmedoids``, ``obj``,
``shi-tomasi``, ``entropy`` and ``max-distance``. The study's ``saliency`` prompts the model
and lives in :mod:`~pointprompt.strategies.salient`. Negatives come from the whole background."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from segprompt.errors import PromptError
from segprompt.prompts import Points

from pointprompt.strategies.base import _RegionStrategy, _cycle, _pick, _subsample, _xy, check_mask, interleave, register_strategy
from pointprompt.strategies.geometry import kmedoids_heuristic


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

def _seed_then_ranked(region: np.ndarray, rng: np.random.Generator, n: int, score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """The study's seed-and-rank rule shared by entropy and max-distance: a uniformly random seed
    pixel of ``region``, then the study's candidate subsample (:func:`_pp_candidates`) ranked by
    ``score(seed_rc, candidates_rc)`` (highest first, ties in subsample order); (n + 1, 2) (x, y),
    the seed first."""
    rc = np.argwhere(region)
    seed = rc[int(rng.integers(len(rc)))]
    cand, n_eff = _pp_candidates(rc, rng, n)
    order = np.argsort(-score(seed, cand), kind="stable")[:n_eff]
    return _cycle(_xy(np.concatenate([seed[None], cand[order]])), n + 1)



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

        def score(seed: np.ndarray, cand: np.ndarray) -> np.ndarray:
            if grey is None:
                return np.zeros(len(cand))
            ent = patch_entropy(grey, np.concatenate([seed[None], cand]), self.patch, border="shift")
            return np.round(np.abs(ent[1:] - ent[0]), 9)  # equal up to float noise -> a tie

        return _seed_then_ranked(region, rng, n, score)


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
        return _seed_then_ranked(region, rng, n, lambda seed, cand: np.sqrt(((cand - seed) ** 2).sum(1).astype(np.float64)))
