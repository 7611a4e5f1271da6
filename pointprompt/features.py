"""Interpretable features of point prompts, images and prompting trajectories (PointPrompt study).

The PointPrompt study (Quesada et al., IEEE BigData 2024) explains prompting quality with
interpretable features computed per prompt, i.e. one row per (image, source, step), where the
source is an automated strategy or a human annotator. This module computes them for the rows of
a point-prompt benchmark (``results.jsonl``) or any rows of the same shape; :mod:`pointprompt.regression`
fits models that predict the IoU from them.

Conventions
    Points are ``(x, y)`` = (column, row) pixels of the original image, as everywhere in
    segprompt; a mask is indexed ``mask[y, x]``. Pixel ``(row r, column c)`` has its centre at
    ``(x, y) = (c, r)`` (integer points are pixel centres, which is what the strategies emit).
    Inclusion = positive (label 1), exclusion = negative (label 0).

Normalisers
    * mask diameter ``D`` = the diagonal of the mask's bounding box in pixels,
      ``hypot(rows spanned, columns spanned)`` counting whole pixels (a single pixel has
      ``D = sqrt(2)``). The study used the largest pixel-to-pixel distance; the box diagonal is
      cheaper and at most ``sqrt(2)`` times larger.
    * image diagonal ``G = hypot(H, W)``.

Prompt-level features (:func:`prompt_features`; names are the table columns)
    ``coverage``            area of the inclusion points' convex hull inside the mask / mask
                            area: the share of mask pixels whose centres lie in the closed hull.
                            **0** with fewer than 3 distinct inclusion points or when they are all
                            collinear (the hull has no area), as in the study.
    ``max_spread``          largest distance between two inclusion points / D; 0 for one point,
                            NaN for none.
    ``mean_nn_dist``        mean over inclusion points of the distance to the nearest other
                            inclusion point / D (a plain mean; the study took the root of the mean
                            square); NaN with fewer than 2 inclusion points (undefined; the study
                            wrote 0).
    ``chamfer_dist``        symmetric Chamfer distance between the inclusion and exclusion sets,
                            ``(mean_a min_b |a-b| + mean_b min_a |a-b|) / 2`` / G; NaN when either
                            set is empty.
    ``exc_spread``          largest distance between two exclusion points / G; 0 for one point,
                            NaN for none.
    ``coverage_per_point``  coverage / number of inclusion points (the study's "inclusion
                            efficiency"); NaN with no inclusion point.
    ``boundary_dist``       mean **signed** distance of all points to the mask boundary / D,
                            signed so that a point on its correct side counts positive (inclusion
                            inside the mask, exclusion outside) and a misplaced point negative.
    ``inc_boundary_dist``   the same over inclusion points only (NaN without any): how deep inside
                            the object the clicks are (the study's "inclusion encasing").
    ``exc_boundary_dist``   the same over exclusion points only (NaN without any; also / D, where
                            the study divided by G).
    ``n_inclusion``, ``n_exclusion``, ``n_points``  counts.
    ``step``                the step (time step) of the row, added by :func:`feature_table`.

    Distance to the boundary: the boundary is the curve between mask and background pixels; a
    pixel's distance is the Euclidean distance between its centre and the nearest pixel centre of
    the other class, minus 1/2 (so a pixel next to the boundary is 0.5 from it). A point is
    looked up at its nearest pixel. The image border is not a boundary (an object cut by the
    border has no contour there); with a full mask (no background) or an empty mask the boundary
    distances are NaN, and with an empty mask every mask-normalised feature is NaN.

Data-level features (:func:`image_features`, computed once per image; as the study's
``feature_extraction/gather_statistics.py``, ``get_data_stats`` and ``get_gclm_props``)
    ``mask_size``        mask area / image area.
    ``n_components``     connected components of the mask ("CC Density"), **4-connectivity**
                         (``scipy.ndimage.label``'s default, which the study used);
                         ``connectivity=8`` counts diagonal neighbours as connected.
    ``edge_density``     Canny edges (OpenCV, thresholds 100 / 200 as in the study, on the
                         grayscale image) inside the mask / mask area. Canny runs on the whole
                         image, not on the masked image as in the study, so the mask's own
                         outline is not counted as texture.
    ``obj_<p>`` and ``bg_<p>`` for ``p`` in contrast, dissimilarity, homogeneity, energy,
    correlation and asm: GLCM properties (``skimage.feature.graycomatrix`` / ``graycoprops``) of
                         the object and of the background, by one of two rules (``glcm=``):

                         ``"pointprompt"`` (default, the study's rule): 256 grey levels (no
                         quantisation); pixels outside the region get an extra level whose
                         pairs are dropped, so only pairs of pixels both inside the region count;
                         angles 0 and 90 degrees, not symmetric; the pixel distance is
                         ``max(1, int(0.01 * object diameter))`` for the object (diameter = the
                         largest distance between two mask pixels, as the study's
                         ``get_mask_diameter``) and ``int(0.01 * image diagonal)`` for the
                         background (1 when the diagonal is under 100 px); each property is
                         computed per angle and the two values are **summed** (so homogeneity,
                         energy, ASM and correlation range over 0..2). A region smaller than
                         0.05 % of the image has NaN properties (the study returned None).

                         ``"pooled"`` (segprompt's earlier rule): the image quantised to
                         ``levels`` (default 32) grey levels, distance 1, angles 0, 45, 90 and 135
                         degrees, symmetric; the co-occurrence counts are summed over the angles
                         before the properties are taken (values in the usual 0..1 ranges).

                         Both: the grey image is the luminance of the RGB image (the study
                         converted with ``COLOR_BGR2GRAY``); NaN when the region holds no pixel
                         pair at the distance; constant regions have correlation 1 per angle
                         (skimage's rule). Under ``"pointprompt"`` an angle without any pair
                         (a one-pixel-high object has no vertical pair) adds skimage's values of an
                         empty matrix (0, and 1 for correlation), as the study's code did.
    ``object_density``   the number of annotated objects in the image ("Obj Density"; the study
                         read it from ``feature_extraction/object_counts.csv`` and used 1 for
                         datasets not in it). Here: ``object_counts=`` given to
                         :func:`feature_table` (see :func:`read_object_counts`), else the
                         sample's ``meta["n_objects"]``, else the number of mask files OR-merged
                         into the sample's mask (``meta["mask_path"]`` as a list, e.g. BUSI),
                         else 1.
    ``merged``, ``split``, ``compact``   the study's object-count flags, 1 or 0:
                         ``merged = object_density > n_components`` (touching objects fused into
                         fewer connected components), ``split = object_density < n_components``
                         (one object in several pieces, e.g. occluded), ``compact`` = equal.

General features (:func:`trajectory_features`, per trajectory = (dataset, image, model,
strategy, annotator); ``gather_statistics.py``'s "general-level stats")
    ``n_steps``, ``best_step`` (the step with the highest IoU, the earliest on ties),
    ``n_rounds`` (number of distinct ``round`` values when the rows carry one, as human data
    does; NaN otherwise), ``best_round`` (the round label, 0 or 1, of the best step),
    ``best_round_length`` (steps in that round), ``best_step_in_round`` (1-based position of the
    best step within its round: the study's 0-based "Best timestamp" + 1); the three are NaN
    without rounds. ``{first,best,last}_{n_points,n_inclusion,n_exclusion,iou}``: with rounds,
    first and last are the first and last step **of the best round** (the study's rule,
    ``first_last="best_round"``); ``first_last="trajectory"`` takes them over the whole
    trajectory (also what happens without rounds). ``best_first_gap`` = best IoU - first IoU.
    ``current_is_best`` (added per row by :func:`feature_table`): 1 on the row whose step is
    the trajectory's best step, else 0. The columns that are computed from the IoU of the
    trajectory are listed in :data:`TARGET_DERIVED`: they leak the target of a regression that
    predicts a step's IoU, so :func:`pointprompt.regression.run_regression` leaves them out by
    default. (With rounds, ``first_*`` / ``last_*`` depend on which round is best, so they
    carry a little of the target too; they stay in by default.)

Identification
    Besides the results rows' own columns (:data:`ID_COLUMNS`), :func:`feature_table` adds
    ``source_image``: the sample's ``meta["image_id"]`` (the image a structure mask belongs to,
    for datasets with one sample per structure such as SA-Med2D, or per COCO annotation), else
    the sample id. :func:`pointprompt.regression.make_groups` groups by it.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import cdist

from segprompt.errors import DataError, PromptError

log = logging.getLogger(__name__)

__all__ = [
    "FEATURE_GROUPS",
    "TARGET_DERIVED",
    "ID_COLUMNS",
    "FeatureTable",
    "MaskGeometry",
    "prompt_features",
    "image_features",
    "trajectory_features",
    "trajectory_key",
    "feature_table",
    "feature_columns",
    "chamfer_distance",
    "glcm_properties",
    "glcm_distance",
    "mask_diameter",
    "round_stats",
    "object_flags",
    "read_object_counts",
    "GLCM_RULES",
    "SOURCE_COLUMN",
]

PROMPT_FEATURES = [
    "coverage",
    "max_spread",
    "mean_nn_dist",
    "chamfer_dist",
    "exc_spread",
    "coverage_per_point",
    "boundary_dist",
    "inc_boundary_dist",
    "exc_boundary_dist",
    "n_inclusion",
    "n_exclusion",
    "n_points",
    "step",
]
#: skimage ``graycoprops`` properties (column suffixes are lower case: ``obj_asm``).
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
#: ``"pointprompt"``: the study's GLCM rule (the default); ``"pooled"``: segprompt's earlier one (module notes).
GLCM_RULES = ("pointprompt", "pooled")
#: The study's smallest region for GLCM (and prompt) statistics: 0.05 % of the image.
MIN_REGION_SHARE = 0.0005
OBJECT_FEATURES = ["object_density", "merged", "split", "compact"]
DATA_FEATURES = ["mask_size", "n_components", "edge_density"] + [f"{r}_{p.lower()}" for r in ("obj", "bg") for p in GLCM_PROPS] + OBJECT_FEATURES
_AT = ("first", "best", "last")
GENERAL_FEATURES = (
    ["n_steps", "best_step", "n_rounds", "best_round", "best_round_length", "best_step_in_round"]
    + [f"{w}_{c}" for w in _AT for c in ("n_points", "n_inclusion", "n_exclusion", "iou")]
    + ["best_first_gap", "current_is_best"]
)
FIRST_LAST_RULES = ("best_round", "trajectory")

#: Which table columns are prompt-, data- and general-level features.
FEATURE_GROUPS: dict[str, list[str]] = {"prompt": PROMPT_FEATURES, "data": DATA_FEATURES, "general": GENERAL_FEATURES}

#: General columns computed from the trajectory's IoU values (they leak an IoU target).
TARGET_DERIVED: frozenset[str] = frozenset(
    ["best_step", "first_iou", "best_iou", "last_iou", "best_first_gap", "best_n_points", "best_n_inclusion", "best_n_exclusion",
     "best_round", "best_round_length", "best_step_in_round", "current_is_best"]
)

#: Identification and outcome columns carried from the results rows into the feature table.
ID_COLUMNS = ["dataset", "image", "model", "strategy", "annotator", "round", "step", "iou", "dice", "score"]
#: The column :func:`feature_table` adds: the source image of a sample (``meta["image_id"]``, else its id).
SOURCE_COLUMN = "source_image"

NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# geometry


def _as_points(points: Any) -> tuple[np.ndarray, np.ndarray]:
    """(coords (N, 2) float64 (x, y), labels (N,) int) from Points, [[x, y, label], ...] or (coords, labels)."""
    if hasattr(points, "coords") and hasattr(points, "labels"):
        coords, labels = np.asarray(points.coords, np.float64), np.asarray(points.labels)
    elif isinstance(points, tuple) and len(points) == 2 and np.ndim(points[1]) == 1 and np.ndim(points[0]) == 2:
        coords, labels = np.asarray(points[0], np.float64), np.asarray(points[1])
    else:
        arr = np.asarray(points, dtype=np.float64)
        if arr.size == 0:
            return np.zeros((0, 2)), np.zeros(0, np.int64)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise PromptError(f"points must be [[x, y, label], ...] (N x 3), got shape {arr.shape}")
        coords, labels = arr[:, :2], arr[:, 2]
    coords = coords.reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    if len(coords) != len(labels):
        raise PromptError(f"{len(coords)} point coordinates but {len(labels)} labels")
    if not np.isfinite(coords).all():
        raise PromptError("point coordinates must be finite numbers")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise PromptError(f"point labels must be 1 (inclusion) or 0 (exclusion), got {sorted(set(np.asarray(labels).tolist()))}")
    return coords, labels.astype(np.int64)


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance ``(mean_a min_b |a-b| + mean_b min_a |a-b|) / 2`` in pixels; NaN if a set is empty."""
    a, b = np.asarray(a, np.float64).reshape(-1, 2), np.asarray(b, np.float64).reshape(-1, 2)
    if len(a) == 0 or len(b) == 0:
        return NAN
    d = cdist(a, b)
    return float((d.min(axis=1).mean() + d.min(axis=0).mean()) / 2)


def _max_pairwise(p: np.ndarray) -> float:
    if len(p) == 0:
        return NAN
    if len(p) == 1:
        return 0.0
    return float(cdist(p, p).max())


def _mean_nn(p: np.ndarray) -> float:
    if len(p) < 2:
        return NAN
    d = cdist(p, p)
    np.fill_diagonal(d, np.inf)
    return float(d.min(axis=1).mean())


@dataclass
class MaskGeometry:
    """What the prompt features need from one mask, computed once per image.

    ``signed`` is the signed boundary distance map (positive inside, negative outside, see the
    module notes) or None when the mask has no boundary; ``ys``/``xs`` the mask pixels in
    row-major order (sorted by y).
    """

    shape: tuple[int, int]
    area: int
    diameter: float
    diagonal: float
    ys: np.ndarray
    xs: np.ndarray
    signed: np.ndarray | None

    @classmethod
    def of(cls, mask: np.ndarray) -> "MaskGeometry":
        m = np.asarray(mask)
        if m.ndim != 2:
            raise DataError(f"a mask must be 2-D (H, W), got shape {m.shape}")
        if m.dtype != bool:
            if not np.isin(m, (0, 1)).all():
                raise DataError("a binary mask must be bool or hold only 0 and 1 (threshold 0/255 masks first)")
            m = m.astype(bool)
        h, w = m.shape
        ys, xs = np.nonzero(m)
        area = int(len(ys))
        if area:
            diameter = math.hypot(int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1)
        else:
            diameter = NAN
        signed = None
        if 0 < area < h * w:
            inside = ndimage.distance_transform_edt(m)
            outside = ndimage.distance_transform_edt(~m)
            signed = np.where(m, inside - 0.5, -(outside - 0.5))
        return cls((h, w), area, diameter, math.hypot(h, w), ys, xs, signed)

    def hull_area_in_mask(self, pts: np.ndarray) -> int:
        """Number of mask pixels whose centres lie in the closed convex hull of ``pts`` (N >= 3, not collinear)."""
        hull = ConvexHull(pts)
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        lo, hi = np.searchsorted(self.ys, math.ceil(y0 - 1e-9), "left"), np.searchsorted(self.ys, math.floor(y1 + 1e-9), "right")
        ys, xs = self.ys[lo:hi], self.xs[lo:hi]
        keep = (xs >= x0 - 1e-9) & (xs <= x1 + 1e-9)
        ys, xs = ys[keep].astype(np.float64), xs[keep].astype(np.float64)
        if len(ys) == 0:
            return 0
        eq = hull.equations  # a x + b y + c <= 0 inside (outward unit normals)
        tol = 1e-7 * max(1.0, float(np.abs(pts).max()))
        inside = np.all(xs[:, None] * eq[:, 0] + ys[:, None] * eq[:, 1] + eq[:, 2] <= tol, axis=1)
        return int(inside.sum())

    def boundary_at(self, pts: np.ndarray) -> np.ndarray:
        """Signed boundary distance at each point's nearest pixel (NaN when the mask has no boundary)."""
        if self.signed is None:
            return np.full(len(pts), NAN)
        h, w = self.shape
        c = np.clip(np.floor(pts[:, 0] + 0.5).astype(np.int64), 0, w - 1)
        r = np.clip(np.floor(pts[:, 1] + 0.5).astype(np.int64), 0, h - 1)
        return self.signed[r, c]


def _collinear(p: np.ndarray) -> bool:
    u = np.unique(p, axis=0)
    if len(u) < 3:
        return True
    s = np.linalg.svd(u - u.mean(axis=0), compute_uv=False)
    return bool(s[1] <= 1e-9 * max(s[0], 1e-12))


def _geometry_features(coords: np.ndarray, labels: np.ndarray, geo: MaskGeometry) -> dict[str, float]:
    h, w = geo.shape
    bad = (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
    if bad.any():
        x, y = coords[np.flatnonzero(bad)[0]]
        raise PromptError(
            f"point (x={x:g}, y={y:g}) lies outside the image of width {w} and height {h}; "
            "points are (x, y) = (column, row) pixels"
        )
    inc, exc = coords[labels == 1], coords[labels == 0]
    D, G = geo.diameter, geo.diagonal
    if geo.area == 0:
        coverage = NAN
    elif len(inc) < 3 or _collinear(inc):
        coverage = 0.0
    else:
        coverage = geo.hull_area_in_mask(inc) / geo.area
    sd = geo.boundary_at(coords)
    correct = np.where(labels == 1, sd, -sd)

    def mean_or_nan(v: np.ndarray) -> float:
        return float(v.mean()) if len(v) else NAN

    return {
        "coverage": float(coverage),
        "max_spread": _max_pairwise(inc) / D,
        "mean_nn_dist": _mean_nn(inc) / D,
        "chamfer_dist": chamfer_distance(inc, exc) / G,
        "exc_spread": _max_pairwise(exc) / G,
        "coverage_per_point": float(coverage) / len(inc) if len(inc) else NAN,
        "boundary_dist": mean_or_nan(correct) / D,
        "inc_boundary_dist": mean_or_nan(correct[labels == 1]) / D,
        "exc_boundary_dist": mean_or_nan(correct[labels == 0]) / D,
        "n_inclusion": int(len(inc)),
        "n_exclusion": int(len(exc)),
        "n_points": int(len(coords)),
    }


def prompt_features(points: Any, mask: np.ndarray, image_size: tuple[int, int] | None = None) -> dict[str, float]:
    """Prompt-level features of one point set against its ground-truth mask.

    Args:
        points: ``[[x, y, label], ...]`` (the results.jsonl form), a :class:`segprompt.prompts.Points`,
            or ``(coords (N, 2), labels (N,))``; label 1 = inclusion, 0 = exclusion.
        mask: bool (H, W) ground truth at the image's size (or a :class:`MaskGeometry` of it).
        image_size: (H, W) of the image; must equal the mask's shape (default: the mask's shape).

    Returns the columns listed in ``FEATURE_GROUPS["prompt"]`` except ``step`` (see the module
    notes for the definitions and NaN rules). Raises PromptError for points outside the image.
    """
    geo = mask if isinstance(mask, MaskGeometry) else MaskGeometry.of(mask)
    if image_size is not None and tuple(int(v) for v in image_size) != geo.shape:
        raise DataError(f"image_size {tuple(image_size)} (H, W) does not match the mask's shape {geo.shape}; masks are at image size")
    coords, labels = _as_points(points)
    return _geometry_features(coords, labels, geo)


# ---------------------------------------------------------------------------------------------
# data-level


def _gray(image: np.ndarray) -> np.ndarray:
    import cv2

    img = np.asarray(image)
    if img.ndim == 2:
        g = img
    elif img.ndim == 3 and img.shape[2] == 3:
        g = cv2.cvtColor(np.ascontiguousarray(img.astype(np.uint8) if img.dtype != np.uint8 else img), cv2.COLOR_RGB2GRAY)
    else:
        raise DataError(f"an image must be (H, W, 3) RGB or (H, W), got shape {img.shape}")
    if g.dtype != np.uint8:
        raise DataError(f"image features need uint8 images, got {g.dtype}; convert with segprompt's image normalisation first")
    return g


def mask_diameter(mask: np.ndarray) -> float:
    """Largest distance in pixels between two pixel centres of ``mask`` (0 for one pixel, NaN when empty).

    The study's ``get_mask_diameter`` (``feature_extraction/utils.py``: the largest distance
    between the vertices of the convex hull of the mask pixels). Only boundary pixels can be
    hull vertices, so only they are searched; collinear masks (a one-pixel line) are handled
    too, where the study's ``ConvexHull`` call raised.
    """
    from scipy.spatial import QhullError

    m = np.asarray(mask, bool)
    if not m.any():
        return NAN
    edge = m & ~ndimage.binary_erosion(m, border_value=0)
    pts = np.argwhere(edge).astype(np.float64)
    if len(pts) == 1:
        return 0.0
    try:
        pts = pts[ConvexHull(pts).vertices]
    except QhullError:  # all on one line: the two ends in lexicographic order are the farthest apart
        pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))][[0, -1]]
    return float(cdist(pts, pts).max())


def glcm_distance(region: np.ndarray, kind: str) -> int:
    """The study's GLCM pixel distance: ``max(1, int(0.01 * mask diameter))`` for the object
    (``kind="obj"``), ``int(0.01 * image diagonal)`` for the background (``kind="bg"``; 1 when the
    diagonal is under 100 px), as ``get_gclm_props``."""
    if kind == "obj":
        d = mask_diameter(region)
        return max(1, int(0.01 * d)) if math.isfinite(d) else 1
    if kind == "bg":
        diag = math.hypot(*np.shape(region))
        return max(1, int(0.01 * diag)) if diag >= 100 else 1
    raise ValueError(f"kind must be 'obj' or 'bg', got {kind!r}")


def _glcm_of_region(gray: np.ndarray, region: np.ndarray, levels: int, distance: int, angles: Sequence[float], symmetric: bool) -> np.ndarray:
    """Co-occurrence counts (levels, levels, 1, len(angles)) of the pixel pairs with both pixels in ``region``."""
    from skimage.feature import graycomatrix

    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    q = gray[sl].astype(np.uint16)
    if levels != 256:
        q = (q * levels) >> 8  # 0 .. levels-1
    q[~region[sl]] = levels  # outside the region: an extra level, dropped below
    g = graycomatrix(q, [distance], list(angles), levels=levels + 1, symmetric=symmetric, normed=False)
    return g[:levels, :levels]


def glcm_properties(gray: np.ndarray, region: np.ndarray, levels: int = 32, rule: str = "pointprompt", distance: int | None = None) -> dict[str, float]:
    """GLCM properties (:data:`GLCM_PROPS`) of the pixels of ``region`` of a uint8 (H, W) image.

    ``rule="pointprompt"`` (the study's ``get_gclm_props``): 256 levels, ``distance`` (default
    :func:`glcm_distance` of the region as an object), angles 0 and 90 degrees, not symmetric,
    per-angle properties summed; NaN for a region under 0.05 % of the image. ``rule="pooled"``:
    ``levels`` grey levels, distance 1 (or ``distance``), four angles, symmetric, counts summed over
    the angles. Both: only pairs with both pixels in the region count; NaN when there is none.
    """
    from skimage.feature import graycoprops

    if rule not in GLCM_RULES:
        raise ValueError(f"unknown GLCM rule {rule!r}; use one of {', '.join(GLCM_RULES)}")
    region = np.asarray(region, bool)
    out = {p: NAN for p in GLCM_PROPS}
    if not region.any():
        return out
    if rule == "pointprompt":
        if region.sum() < MIN_REGION_SHARE * region.size:
            return out
        d = glcm_distance(region, "obj") if distance is None else int(distance)
        g = _glcm_of_region(gray, region, 256, d, (0, np.pi / 2), symmetric=False)
        if g.sum() == 0:
            return out
        return {p: float(graycoprops(g, p).sum()) for p in GLCM_PROPS}
    angles = (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
    g = _glcm_of_region(gray, region, levels, 1 if distance is None else int(distance), angles, symmetric=True)
    g = g.sum(axis=3, keepdims=True).astype(np.float64)
    if g.sum() == 0:
        return out
    return {p: float(graycoprops(g, p)[0, 0]) for p in GLCM_PROPS}


def object_flags(object_density: float, n_components: float) -> dict[str, float]:
    """The study's ``merged`` / ``split`` / ``compact`` flags from the annotated object count and the
    mask's connected components (``gather_statistics.py``): merged when there are more objects
    than components, split when fewer, compact when equal; NaN when either is unknown."""
    if object_density is None or n_components is None or not (math.isfinite(object_density) and math.isfinite(n_components)):
        return {"merged": NAN, "split": NAN, "compact": NAN}
    return {"merged": int(object_density > n_components), "split": int(object_density < n_components), "compact": int(object_density == n_components)}


def read_object_counts(path: str | Any) -> dict[tuple[str, str], int]:
    """The study's ``object_counts.csv`` (columns ``Sample_Index``, ``Objects Count``, ``Dataset``)
    as ``{(dataset, image index as str): count}``, for ``feature_table(object_counts=...)``.

    The study's dataset names ("Skin", "Cow", ...) are kept; a mapping keyed by segprompt image
    ids of another dataset name can be built from it by the caller.
    """
    import csv

    out: dict[tuple[str, str], int] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"Sample_Index", "Objects Count", "Dataset"}
        if not need <= set(reader.fieldnames or []):
            raise DataError(f"{path}: expected the columns {sorted(need)}, got {reader.fieldnames}")
        for n, r in enumerate(reader, 2):
            try:
                out[(r["Dataset"].strip(), str(int(r["Sample_Index"])))] = int(r["Objects Count"])
            except (TypeError, ValueError):
                raise DataError(f"{path}: line {n}: Sample_Index and Objects Count must be integers, got {dict(r)}") from None
    return out


def image_features(
    image: np.ndarray, mask: np.ndarray, levels: int = 32, *, glcm: str = "pointprompt", connectivity: int = 4, n_objects: float | None = None
) -> dict[str, float]:
    """Data-level features of one image and its mask (columns ``FEATURE_GROUPS["data"]``).

    ``glcm``: the GLCM rule (``"pointprompt"``, the study's, or ``"pooled"``; ``levels`` is used by
    ``"pooled"`` only); ``connectivity``: 4 (the study's) or 8 for ``n_components``;
    ``n_objects``: the annotated object count (``object_density``; default 1, as the study for
    datasets without counts).
    """
    import cv2

    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if glcm not in GLCM_RULES:
        raise ValueError(f"unknown GLCM rule {glcm!r}; use one of {', '.join(GLCM_RULES)}")
    m = np.asarray(mask)
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise DataError("a binary mask must be bool or hold only 0 and 1")
        m = m.astype(bool)
    gray = _gray(image)
    if gray.shape != m.shape:
        raise DataError(f"image {gray.shape} and mask {m.shape} differ in size")
    area = int(m.sum())
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    _, n_cc = ndimage.label(m, structure=structure)
    edges = cv2.Canny(gray, 100, 200) > 0
    density = 1 if n_objects is None else n_objects
    out: dict[str, float] = {
        "mask_size": area / m.size,
        "n_components": int(n_cc),
        "edge_density": float((edges & m).sum() / area) if area else NAN,
    }
    for name, region in (("obj", m), ("bg", ~m)):
        d = glcm_distance(region, name) if glcm == "pointprompt" else None
        for p, v in glcm_properties(gray, region, levels, glcm, d).items():
            out[f"{name}_{p.lower()}"] = v
    out["object_density"] = density
    out.update(object_flags(density, n_cc))
    return out


# ---------------------------------------------------------------------------------------------
# general (per trajectory)


def trajectory_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The trajectory a results row belongs to: (dataset, image, model, source or strategy, annotator).

    The same key as :func:`pointprompt.trajectory.trajectories_from_rows`, so human rows
    (``strategy = "human"``, told apart by ``annotator``) form one trajectory per annotator.
    """
    return (row.get("dataset"), str(row["image"]), row.get("model"), row.get("source") or row.get("strategy"), row.get("annotator"))


def _counts(row: Mapping[str, Any]) -> tuple[int, int, int]:
    pts = row.get("points")
    if pts is not None:
        labels = [int(round(p[2])) for p in pts]
        n_pos = sum(1 for l in labels if l == 1)
        return len(labels), n_pos, len(labels) - n_pos
    n_pos, n_neg = int(row.get("n_positive", 0)), int(row.get("n_negative", 0))
    return int(row.get("n_points", n_pos + n_neg)), n_pos, n_neg


def round_stats(rounds: Sequence[Any], best: int) -> dict[str, Any]:
    """The study's round statistics of a trajectory whose step ``best`` (0-based) is the best.

    ``rounds``: the round label (0 or 1) of each step in order, None where unknown. Returns
    ``n_rounds``, ``best_round`` (label of the best step), ``best_round_length`` (steps in that
    round), ``best_step_in_round`` (1-based position in it; the study's "Best timestamp" is this
    minus 1) and ``first_of_round`` / ``last_of_round`` (0-based step indices of the best round's
    first and last step, the study's first / last timestamp); all NaN (the indices None) when a
    label is missing.
    """
    if any(v is None for v in rounds):
        return {"n_rounds": NAN, "best_round": NAN, "best_round_length": NAN, "best_step_in_round": NAN, "first_of_round": None, "last_of_round": None}
    labels = [int(v) for v in rounds]
    mine = [k for k, v in enumerate(labels) if v == labels[best]]
    return {
        "n_rounds": len(set(labels)),
        "best_round": labels[best],
        "best_round_length": len(mine),
        "best_step_in_round": mine.index(best) + 1,
        "first_of_round": mine[0],
        "last_of_round": mine[-1],
    }


def trajectory_features(rows: Sequence[Mapping[str, Any]], score_key: str = "iou", first_last: str = "best_round") -> dict[str, float]:
    """General features of one trajectory (the rows of one image x source, any order).

    Rows need ``step`` and ``score_key`` (IoU); points are counted from ``points`` or the
    ``n_points``/``n_positive``/``n_negative`` fields; ``round`` (human data) gives ``n_rounds``,
    ``best_round``, ``best_round_length`` and ``best_step_in_round``. ``first_last``:
    ``"best_round"`` (the study's rule: with rounds, first / last are the first / last step of
    the best step's round) or ``"trajectory"`` (first / last step of the whole trajectory).
    """
    if first_last not in FIRST_LAST_RULES:
        raise ValueError(f"first_last must be one of {FIRST_LAST_RULES}, got {first_last!r}")
    if not rows:
        raise DataError("a trajectory needs at least one row")
    rows = sorted(rows, key=lambda r: int(r["step"]))
    scores = np.array([NAN if r.get(score_key) is None else float(r[score_key]) for r in rows])
    known = bool(np.isfinite(scores).any())
    best = int(np.nanargmax(scores)) if known else 0
    rs = round_stats([r.get("round") for r in rows], best)
    first, last = rs.pop("first_of_round"), rs.pop("last_of_round")
    if first_last == "trajectory" or not known or first is None:
        first, last = 0, len(rows) - 1
    if not known:
        rs.update(best_round=NAN, best_round_length=NAN, best_step_in_round=NAN)
    out: dict[str, float] = {"n_steps": len(rows), "best_step": int(rows[best]["step"]) if known else NAN, **rs}
    for name, i in (("first", first), ("best", best), ("last", last)):
        n, p, e = _counts(rows[i])
        out[f"{name}_n_points"], out[f"{name}_n_inclusion"], out[f"{name}_n_exclusion"] = n, p, e
        out[f"{name}_iou"] = float(scores[i])
    if not known:
        for k in ("best_n_points", "best_n_inclusion", "best_n_exclusion"):
            out[k] = NAN
    out["best_first_gap"] = out["best_iou"] - out["first_iou"]
    return out


# ---------------------------------------------------------------------------------------------
# the table


class FeatureTable(list):
    """A list of feature rows (dicts) with ``skipped``: ``[{"image", "reason", "rows"}, ...]``."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), skipped: Iterable[dict[str, Any]] = ()) -> None:
        super().__init__(rows)
        self.skipped: list[dict[str, Any]] = list(skipped)

    @property
    def columns(self) -> list[str]:
        return feature_columns(self)


def feature_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """ID columns present in ``rows`` followed by every feature column, group by group."""
    present = set().union(*(r.keys() for r in rows)) if rows else set()
    ids = [c for c in [*ID_COLUMNS, SOURCE_COLUMN] if c in present and c != "step"]
    return ids + [c for g in FEATURE_GROUPS.values() for c in g]


def _lookup(dataset: Any) -> tuple[Any, dict[str, Any]]:
    """(getter(id) -> Sample, index) for a SegmentationDataset, a mapping id -> Sample or a sequence of Samples."""
    if isinstance(dataset, Mapping):
        return (lambda i: dataset[i]), {k: k for k in dataset}
    ids = getattr(dataset, "ids", None)
    if ids is None:
        samples = {s.id: s for s in dataset}
        return (lambda i: samples[i]), {k: k for k in samples}
    index = {str(i): n for n, i in enumerate(ids)}
    return (lambda i: dataset[index[i]]), index


def _object_count(sample: Any, dataset_name: Any, image_id: str, object_counts: Mapping[Any, Any] | None) -> int:
    """The annotated object count of a sample (see ``object_density`` in the module notes)."""
    if object_counts:
        for key in ((dataset_name, image_id), (str(dataset_name), image_id), image_id):
            if key in object_counts:
                return int(object_counts[key])
    meta = getattr(sample, "meta", None) or {}
    if meta.get("n_objects") is not None:
        return int(meta["n_objects"])
    paths = meta.get("mask_path")
    if isinstance(paths, (list, tuple)) and paths:
        return len(paths)
    return 1


def feature_table(
    rows: Iterable[Mapping[str, Any]],
    dataset: Any,
    levels: int = 32,
    progress: bool = False,
    *,
    glcm: str = "pointprompt",
    connectivity: int = 4,
    object_counts: Mapping[Any, Any] | None = None,
    first_last: str = "best_round",
) -> FeatureTable:
    """One feature row per results row: ID columns, outcomes, prompt, data and general features.

    Args:
        rows: results rows (``image``, ``step``, ``points`` as ``[[x, y, label], ...]``, ``iou``;
            ``dataset``, ``model``, ``strategy``, ``annotator``, ``round``, ``dice``, ``score`` when present).
        dataset: gives images and masks by id: a SegmentationDataset, a mapping id -> Sample, or
            a sequence of Samples. Each image is loaded once and its data features computed once.
        levels: grey levels of the ``"pooled"`` GLCM rule.
        progress: show a progress bar over the prompts (rows).
        glcm, connectivity: see :func:`image_features` (defaults: the study's rules).
        object_counts: annotated objects per image, ``{(dataset, image id): n}`` or ``{image id: n}``
            (see :func:`read_object_counts`); otherwise from the sample (module notes).
        first_last: see :func:`trajectory_features`.

    Each row also gets ``source_image`` (the sample's ``meta["image_id"]``, else its id) and
    ``current_is_best``.

    Logs at INFO how many prompts and images it computes features for, and what it skipped.
    Rows whose image is missing from ``dataset``, cannot be read, has no binary mask, or whose
    points do not fit the image are skipped; ``result.skipped`` says which and why.
    """
    rows = list(rows)
    get, index = _lookup(dataset)
    traj: dict[tuple[Any, ...], list[Mapping[str, Any]]] = defaultdict(list)
    by_image: dict[str, list[int]] = defaultdict(list)
    for n, r in enumerate(rows):
        if "image" not in r or "step" not in r:
            raise DataError(f"results row {n} lacks 'image' or 'step': {dict(r)!r:.200}")
        traj[trajectory_key(r)].append(r)
        by_image[str(r["image"])].append(n)
    general = {k: trajectory_features(v, first_last=first_last) for k, v in traj.items()}
    log.info("computing features for %d prompts on %d images (%d trajectories)", len(rows), len(by_image), len(traj))

    from tqdm.auto import tqdm

    out: list[dict[str, Any] | None] = [None] * len(rows)
    skipped: list[dict[str, Any]] = []
    bar = tqdm(total=len(rows), desc="features", unit="prompt", leave=False, disable=not progress)
    for image_id, idx in by_image.items():
        def skip(reason: str, which: list[int] = idx) -> None:
            log.warning("features: skipped image %s (%d rows): %s", image_id, len(which), reason)
            skipped.append({"image": image_id, "reason": reason, "rows": len(which)})
            bar.update(len(which))

        if image_id not in index:
            skip("image not in the dataset")
            continue
        try:
            sample = get(image_id)
        except (DataError, OSError, KeyError) as exc:
            skip(f"could not be read: {exc}")
            continue
        mask = sample.mask
        if mask is None or np.asarray(mask).dtype != bool or np.asarray(mask).ndim != 2:
            skip("no binary (H, W) mask")
            continue
        if tuple(sample.image.shape[:2]) != mask.shape:
            skip(f"image {sample.image.shape[:2]} and mask {mask.shape} differ in size")
            continue
        try:
            n_obj = _object_count(sample, rows[idx[0]].get("dataset"), image_id, object_counts)
            data = image_features(sample.image, mask, levels, glcm=glcm, connectivity=connectivity, n_objects=n_obj)
        except DataError as exc:
            skip(str(exc))
            continue
        geo = MaskGeometry.of(mask)
        source = (getattr(sample, "meta", None) or {}).get("image_id")
        source = image_id if source is None else str(source)
        bad: list[int] = []
        for n in idx:
            r = rows[n]
            try:
                coords, labels = _as_points(r.get("points") or [])
                pf = _geometry_features(coords, labels, geo)
            except PromptError as exc:
                bad.append(n)
                skipped.append({"image": image_id, "reason": f"step {r['step']}: {exc}", "rows": 1})
                continue
            row: dict[str, Any] = {c: r[c] for c in ID_COLUMNS if c in r}
            row[SOURCE_COLUMN] = source
            row.update(pf)
            row["step"] = int(r["step"])
            row.update(data)
            gen = general[trajectory_key(r)]
            row.update(gen)
            row["current_is_best"] = NAN if isinstance(gen["best_step"], float) and math.isnan(gen["best_step"]) else int(int(r["step"]) == gen["best_step"])
            out[n] = row
        bar.update(len(idx))
        if bad:
            log.warning("features: %d rows of image %s skipped (bad points)", len(bad), image_id)
    bar.close()
    done = [r for r in out if r is not None]
    log.info("features: %d of %d prompts done%s", len(done), len(rows), f", {sum(s['rows'] for s in skipped)} skipped" if skipped else "")
    return FeatureTable(done, skipped)
