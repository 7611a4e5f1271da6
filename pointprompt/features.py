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

Data-level features (:func:`image_features`, computed once per image)
    ``mask_size``        mask area / image area.
    ``n_components``     connected components of the mask, 8-connectivity.
    ``edge_density``     Canny edges (OpenCV, thresholds 100 / 200 as in the study, on the
                         grayscale image) inside the mask / mask area. Canny runs on the whole
                         image, not on the masked image as in the study, so the mask's own
                         outline is not counted as texture.
    ``obj_contrast``, ``obj_homogeneity``, ``obj_energy``, ``obj_correlation`` and the same with
    ``bg_``: GLCM properties (``skimage.feature.graycomatrix`` / ``graycoprops``) of the object
                         and of the background. The grayscale image is quantised to ``levels``
                         (default 32) grey levels and cropped to the region's bounding box; pixels
                         of the crop outside the region get an extra level whose pairs are
                         dropped, so only pairs of pixels both inside the region count. Distance
                         1 pixel, angles 0, 45, 90, 135 degrees, symmetric; the co-occurrence
                         counts are summed over the angles before the properties are taken. NaN
                         when the region has no pixel pair (e.g. a one-pixel object). Constant
                         regions have correlation 1 (skimage's rule).

General features (:func:`trajectory_features`, per trajectory = (dataset, image, model,
strategy, annotator))
    ``n_steps``, ``best_step`` (the step with the highest IoU, the earliest on ties),
    ``n_rounds`` (number of distinct ``round`` values when the rows carry one, as human data
    does; NaN otherwise), ``{first,best,last}_{n_points,n_inclusion,n_exclusion,iou}`` and
    ``best_first_gap`` = best IoU - first IoU. The columns that are computed from the IoU of the
    trajectory are listed in :data:`TARGET_DERIVED`: they leak the target of a regression that
    predicts a step's IoU, so :func:`pointprompt.regression.run_regression` leaves them out by
    default.
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
GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation")
DATA_FEATURES = ["mask_size", "n_components", "edge_density"] + [f"{r}_{p}" for r in ("obj", "bg") for p in GLCM_PROPS]
_AT = ("first", "best", "last")
GENERAL_FEATURES = ["n_steps", "best_step", "n_rounds"] + [f"{w}_{c}" for w in _AT for c in ("n_points", "n_inclusion", "n_exclusion", "iou")] + ["best_first_gap"]

#: Which table columns are prompt-, data- and general-level features.
FEATURE_GROUPS: dict[str, list[str]] = {"prompt": PROMPT_FEATURES, "data": DATA_FEATURES, "general": GENERAL_FEATURES}

#: General columns computed from the trajectory's IoU values (they leak an IoU target).
TARGET_DERIVED: frozenset[str] = frozenset(
    ["best_step", "first_iou", "best_iou", "last_iou", "best_first_gap", "best_n_points", "best_n_inclusion", "best_n_exclusion"]
)

#: Identification and outcome columns carried from the results rows into the feature table.
ID_COLUMNS = ["dataset", "image", "model", "strategy", "annotator", "round", "step", "iou", "dice", "score"]

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


def glcm_properties(gray: np.ndarray, region: np.ndarray, levels: int = 32) -> dict[str, float]:
    """GLCM contrast, homogeneity, energy and correlation of the pixels of ``region`` (see module notes).

    ``gray`` is a uint8 (H, W) image, quantised here to ``levels`` grey levels. Returns NaN
    values when the region holds no horizontally, vertically or diagonally adjacent pixel pair.
    """
    from skimage.feature import graycomatrix, graycoprops

    region = np.asarray(region, bool)
    out = {p: NAN for p in GLCM_PROPS}
    if not region.any():
        return out
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    q = (gray[sl].astype(np.uint16) * levels) >> 8  # 0 .. levels-1
    q[~region[sl]] = levels  # outside the region: an extra level, dropped below
    g = graycomatrix(q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=levels + 1, symmetric=True, normed=False)
    g = g[:levels, :levels].sum(axis=3, keepdims=True).astype(np.float64)
    if g.sum() == 0:
        return out
    for p in GLCM_PROPS:
        out[p] = float(graycoprops(g, p)[0, 0])
    return out


def image_features(image: np.ndarray, mask: np.ndarray, levels: int = 32) -> dict[str, float]:
    """Data-level features of one image and its mask (columns ``FEATURE_GROUPS["data"]``)."""
    import cv2

    m = np.asarray(mask)
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise DataError("a binary mask must be bool or hold only 0 and 1")
        m = m.astype(bool)
    gray = _gray(image)
    if gray.shape != m.shape:
        raise DataError(f"image {gray.shape} and mask {m.shape} differ in size")
    area = int(m.sum())
    _, n_cc = ndimage.label(m, structure=np.ones((3, 3), bool))
    edges = cv2.Canny(gray, 100, 200) > 0
    out: dict[str, float] = {
        "mask_size": area / m.size,
        "n_components": int(n_cc),
        "edge_density": float((edges & m).sum() / area) if area else NAN,
    }
    for name, region in (("obj", m), ("bg", ~m)):
        for p, v in glcm_properties(gray, region, levels).items():
            out[f"{name}_{p}"] = v
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


def trajectory_features(rows: Sequence[Mapping[str, Any]], score_key: str = "iou") -> dict[str, float]:
    """General features of one trajectory (the rows of one image x source, any order).

    Rows need ``step`` and ``score_key`` (IoU); points are counted from ``points`` or the
    ``n_points``/``n_positive``/``n_negative`` fields; ``round`` (human data) gives ``n_rounds``.
    """
    if not rows:
        raise DataError("a trajectory needs at least one row")
    rows = sorted(rows, key=lambda r: int(r["step"]))
    scores = np.array([NAN if r.get(score_key) is None else float(r[score_key]) for r in rows])
    best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
    out: dict[str, float] = {
        "n_steps": len(rows),
        "best_step": int(rows[best]["step"]) if np.isfinite(scores).any() else NAN,
        "n_rounds": len({r["round"] for r in rows}) if all(r.get("round") is not None for r in rows) else NAN,
    }
    for name, i in (("first", 0), ("best", best), ("last", len(rows) - 1)):
        n, p, e = _counts(rows[i])
        out[f"{name}_n_points"], out[f"{name}_n_inclusion"], out[f"{name}_n_exclusion"] = n, p, e
        out[f"{name}_iou"] = float(scores[i])
    if not np.isfinite(scores).any():
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
    ids = [c for c in ID_COLUMNS if c in present and c != "step"]
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


def feature_table(rows: Iterable[Mapping[str, Any]], dataset: Any, levels: int = 32, progress: bool = False) -> FeatureTable:
    """One feature row per results row: ID columns, outcomes, prompt, data and general features.

    Args:
        rows: results rows (``image``, ``step``, ``points`` as ``[[x, y, label], ...]``, ``iou``;
            ``dataset``, ``model``, ``strategy``, ``annotator``, ``round``, ``dice``, ``score`` when present).
        dataset: gives images and masks by id: a SegmentationDataset, a mapping id -> Sample, or
            a sequence of Samples. Each image is loaded once and its data features computed once.
        levels: grey levels of the GLCM features.
        progress: show a progress bar over the prompts (rows).

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
    general = {k: trajectory_features(v) for k, v in traj.items()}
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
            data = image_features(sample.image, mask, levels)
        except DataError as exc:
            skip(str(exc))
            continue
        geo = MaskGeometry.of(mask)
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
            row.update(pf)
            row["step"] = int(r["step"])
            row.update(data)
            row.update(general[trajectory_key(r)])
            out[n] = row
        bar.update(len(idx))
        if bad:
            log.warning("features: %d rows of image %s skipped (bad points)", len(bad), image_id)
    bar.close()
    done = [r for r in out if r is not None]
    log.info("features: %d of %d prompts done%s", len(done), len(rows), f", {sum(s['rows'] for s in skipped)} skipped" if skipped else "")
    return FeatureTable(done, skipped)
