"""Random object masks for the randomised synthetic data: smooth blobs to thin, branching, holed
and lobed objects, of a requested area.

Every shape is a function ``(rng, size, centre, radius) -> (H, W) bool`` registered in
:data:`SHAPES`; ``centre`` is (x, y) in pixels and ``radius`` the scale of the object (the
radius of the disc of the same area, roughly). :func:`random_object` draws a shape whose area
is a requested fraction of the image. Coordinates are (x, y) as OpenCV draws them.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Shape = Callable[[np.random.Generator, tuple[int, int], tuple[float, float], float], np.ndarray]


def star_polygon(
    rng: np.random.Generator, centre: tuple[float, float], radius: float, roughness: float, harmonics: int = 6,
    points: int = 128, floor: float = 0.35, stretch_range: tuple[float, float] = (0.6, 1.4),
) -> np.ndarray:
    """int32 (``points``, 2) polygon (x, y): a star-shaped border with ``harmonics`` random
    harmonics (orders 2, 3, ...), its radius kept above ``floor`` x ``radius``, stretched by a
    factor drawn in ``stretch_range`` and rotated."""
    theta = np.linspace(0, 2 * np.pi, points, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, harmonics + 2):
        r += roughness * rng.uniform(0.0, 1.0) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, floor, None)
    stretch = rng.uniform(*stretch_range)
    angle = rng.uniform(0, np.pi)
    x, y = r * np.cos(theta) * stretch, r * np.sin(theta) / stretch
    xr = x * np.cos(angle) - y * np.sin(angle) + centre[0]
    yr = x * np.sin(angle) + y * np.cos(angle) + centre[1]
    return np.stack([xr, yr], axis=1).round().astype(np.int32)


def _fill(size: tuple[int, int], polys: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(size, np.uint8)
    cv2.fillPoly(out, polys, 1)
    return out.astype(bool)


def blob(rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """A smooth or irregular star-shaped blob (polyps, lesions, nodules)."""
    return _fill(size, [star_polygon(rng, centre, radius, rng.uniform(0.0, 0.9))])


def ellipse(rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """A plain ellipse (cysts, ducts in section)."""
    out = np.zeros(size, np.uint8)
    ratio = rng.uniform(0.4, 1.0)
    axes = (max(1, int(radius / np.sqrt(ratio))), max(1, int(radius * np.sqrt(ratio))))
    cv2.ellipse(out, (int(centre[0]), int(centre[1])), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return out.astype(bool)


def polygon(rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """A polygon with 3-9 corners, convex or not (man-made things, cut organs)."""
    k = int(rng.integers(3, 10))
    theta = np.sort(rng.uniform(0, 2 * np.pi, k))
    r = radius * rng.uniform(0.6, 1.4, k)
    pts = np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], 1)
    return _fill(size, [pts.round().astype(np.int32)])


def lobed(rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Two to four overlapping blobs joined into one object (lobulated masses, touching cells)."""
    out = np.zeros(size, bool)
    n = int(rng.integers(2, 5))
    for i in range(n):
        r = radius * rng.uniform(0.45, 0.75)
        offset = rng.normal(0, radius * 0.45, 2) if i else np.zeros(2)
        out |= _fill(size, [star_polygon(rng, (centre[0] + offset[0], centre[1] + offset[1]), r, rng.uniform(0.0, 0.5))])
    return out


def holed(rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """A blob with one or two holes (rings, vessels in section, necrotic centres)."""
    out = _fill(size, [star_polygon(rng, centre, radius * 1.1, rng.uniform(0.0, 0.5))])
    for _ in range(int(rng.integers(1, 3))):
        off = rng.normal(0, radius * 0.25, 2)
        out &= ~_fill(size, [star_polygon(rng, (centre[0] + off[0], centre[1] + off[1]), radius * rng.uniform(0.2, 0.5), rng.uniform(0.0, 0.4))])
    return out


def thin(rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """A thick curved stroke (vessels, ducts, instruments): a smooth random walk through ``centre``."""
    out = np.zeros(size, np.uint8)
    width = max(2, int(radius * rng.uniform(0.25, 0.6)))
    length = radius * rng.uniform(3, 6)
    n = 16
    turn = np.cumsum(rng.normal(0, 0.2, n)) + rng.uniform(0, 2 * np.pi)
    steps = (length / n) * np.stack([np.cos(turn), np.sin(turn)], 1)
    pts = np.cumsum(steps, axis=0)
    pts = pts - pts[n // 2] + np.asarray(centre)
    cv2.polylines(out, [pts.round().astype(np.int32).reshape(-1, 1, 2)], False, 1, width)
    return out.astype(bool)


def branching(rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """A tree of strokes from ``centre`` (vessel trees, airways, cracks)."""
    out = np.zeros(size, np.uint8)
    width = max(2, int(radius * rng.uniform(0.15, 0.4)))
    stack = [(np.asarray(centre, np.float64), rng.uniform(0, 2 * np.pi), radius * rng.uniform(1.0, 2.0), width, 0)]
    while stack:
        start, angle, length, w, depth = stack.pop()
        end = start + length * np.array([np.cos(angle), np.sin(angle)])
        cv2.line(out, tuple(int(v) for v in start.round()), tuple(int(v) for v in end.round()), 1, max(1, w))
        if depth < 3:
            for _ in range(int(rng.integers(1, 3)) if depth else 3):
                stack.append((end, angle + rng.normal(0, 0.7), length * rng.uniform(0.5, 0.85), max(1, int(w * 0.75)), depth + 1))
    return out.astype(bool)


#: shape name -> function ``(rng, (H, W), (x, y) centre, radius) -> (H, W) bool``
SHAPES: dict[str, Shape] = {
    "blob": blob,
    "ellipse": ellipse,
    "polygon": polygon,
    "lobed": lobed,
    "holed": holed,
    "thin": thin,
    "branching": branching,
}
#: how often each shape is drawn for the object of interest (lesion-like shapes dominate)
SHAPE_WEIGHTS: dict[str, float] = {"blob": 0.45, "ellipse": 0.15, "polygon": 0.08, "lobed": 0.14, "holed": 0.06, "thin": 0.07, "branching": 0.05}


def random_object(
    rng: np.random.Generator, size: tuple[int, int], area_fraction: float, shape: str | None = None, centre: tuple[float, float] | None = None
) -> tuple[np.ndarray, str]:
    """((H, W) bool mask, shape name): one object of about ``area_fraction`` of the image area,
    centred at ``centre`` (x, y) or at a random place that may let it touch the border."""
    h, w = size
    if shape is None:
        names = list(SHAPE_WEIGHTS)
        p = np.array([SHAPE_WEIGHTS[n] for n in names])
        shape = names[rng.choice(len(names), p=p / p.sum())]
    radius = float(np.sqrt(area_fraction * h * w / np.pi))
    if centre is None:
        margin = radius * rng.uniform(0.3, 1.1)
        centre = (rng.uniform(min(margin, w / 2), max(w - margin, w / 2)), rng.uniform(min(margin, h / 2), max(h - margin, h / 2)))
    return SHAPES[shape](rng, size, centre, radius), shape
