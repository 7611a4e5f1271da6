"""Synthetic multi-class object scenes: the data ``universal-tiny`` is trained and tested on.

Each scene holds 1-6 objects of :data:`OBJECT_CLASSES` (ordinary English words, so a text
prompt "segment the leaf" means something) on a randomised procedural background. A class is
told by its **shape** first (a disc, a five- or six-pointed star, a ring, a square, a
triangle, a plus-shaped cross, a crescent, a pointed leaf with a stem) and by a **colour
family and surface texture** second (:data:`LOOKS`: red shaded discs, yellow speckled stars,
blue striped rings, purple tiled squares, orange grainy triangles, flat cyan crosses with a
rim, pale mottled crescents, green veined leaves). Hue, saturation, brightness, size, pose,
proportions and texture parameters vary inside a class, so a reference example of a class in
one scene looks like the same class in another. A quarter of the scenes are grey: there only
shape and texture tell the classes apart.

Objects cover 3-30 % of the image each (log-uniform; less when there are many), several of one
class can occur, some are placed touching another, and later objects occlude earlier ones:
:attr:`Scene.masks` are the *visible* parts, disjoint, and an instance left with under
``min_visible`` of its area or under ``min_pixels`` pixels is not drawn at all (so no pixel of
a hidden remnant is left unlabelled). Backgrounds and artefacts reuse the building blocks of
sam-tiny's randomised generator (:mod:`segprompt.data.procedural` textures, illumination,
vignetting, noise, blur, JPEG; :func:`segprompt.data.shapes.star_polygon` and
:func:`~segprompt.data.shapes.random_object` for discs, rings and unlabelled clutter; the 3-D
shading of :mod:`segprompt.data.synthetic_random`), at moderate strength so objects stay visible.

>>> import numpy as np
>>> from segprompt.data.scenes import ObjectScenes, make_scene
>>> scene = make_scene(np.random.default_rng(0))
>>> scene.image.shape, scene.masks.dtype, scene.label_map.dtype   # label 0 = background, c + 1 = class c
((256, 256, 3), dtype('bool'), dtype('int64'))
>>> ObjectScenes(n=8, seed=1)[3].texts                               # doctest: +SKIP
('disc', 'leaf')

:class:`ObjectScenes` (registry name ``synthetic-objects``) is the seeded dataset: scene ``i`` of
seed ``s`` depends on ``(s, i)`` alone. About 14 ms per 256 x 256 scene on one CPU core. The
older three-class :class:`segprompt.data.synthetic.SyntheticScenes` is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import cv2
import numpy as np

from segprompt.data import procedural as pr
from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.data.shapes import random_object, star_polygon
from segprompt.errors import ConfigError

#: the object classes, index ``c`` of :attr:`Scene.classes`; label maps hold ``c + 1`` (0 = background)
OBJECT_CLASSES: tuple[str, ...] = ("disc", "star", "ring", "square", "triangle", "cross", "crescent", "leaf")
#: the class names of :class:`ObjectScenes`' label maps: index 0 is the background
LABEL_NAMES: tuple[str, ...] = ("background",) + OBJECT_CLASSES


# --------------------------------------------------------------------------- shapes ----------
# Each shape is ``(rng, (H, W), (x, y) centre, r) -> (H, W) bool`` like shapes.SHAPES, with ``r``
# the radius of the disc of the same area; polygon classes are drawn at unit scale and scaled
# to that area (shoelace), rotated by a random angle.


def _shoelace(p: np.ndarray) -> float:
    return 0.5 * abs(float(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1))))


def _draw_unit(rng: np.random.Generator, size: tuple[int, int], centre: tuple[float, float], r: float, polys: list[np.ndarray]) -> np.ndarray:
    """The unit-scale ``polys`` rotated, scaled to a total area of pi r^2, centred and filled."""
    scale = np.sqrt(np.pi * r * r / sum(_shoelace(p) for p in polys))
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    out = np.zeros(size, np.uint8)
    cv2.fillPoly(out, [np.round(p @ rot.T * scale + np.asarray(centre)).astype(np.int32) for p in polys], 1)
    return out.astype(bool)


def _disc(rng, size, centre, r):
    out = np.zeros(size, np.uint8)
    cv2.fillPoly(out, [star_polygon(rng, centre, r, rng.uniform(0.0, 0.1), harmonics=3, stretch_range=(0.92, 1.08))], 1)
    return out.astype(bool)


def _ring(rng, size, centre, r):
    inner = rng.uniform(0.45, 0.65)
    outer_r = r / np.sqrt(1 - inner**2)
    out = np.zeros(size, np.uint8)
    cv2.fillPoly(out, [star_polygon(rng, centre, outer_r, rng.uniform(0.0, 0.06), harmonics=3, stretch_range=(0.95, 1.05))], 1)
    off = rng.normal(0, 0.05 * outer_r, 2)
    cv2.circle(out, (int(round(centre[0] + off[0])), int(round(centre[1] + off[1]))), int(round(inner * outer_r)), 0, -1)
    return out.astype(bool)


def _star(rng, size, centre, r):
    n = int(rng.integers(5, 7))
    theta = np.arange(2 * n) * np.pi / n
    radius = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.38, 0.5)) * rng.uniform(0.93, 1.07, 2 * n)
    return _draw_unit(rng, size, centre, r, [np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)])


def _square(rng, size, centre, r):
    q = np.sqrt(rng.uniform(0.8, 1.25))
    return _draw_unit(rng, size, centre, r, [np.array([[-q, -1 / q], [q, -1 / q], [q, 1 / q], [-q, 1 / q]]) / 2])


def _triangle(rng, size, centre, r):
    theta = np.arange(3) * 2 * np.pi / 3 + rng.normal(0, 0.08, 3)
    radius = rng.uniform(0.9, 1.1, 3)
    return _draw_unit(rng, size, centre, r, [np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)])


def _cross(rng, size, centre, r):
    t, a, b = rng.uniform(0.14, 0.2), 0.5, 0.5 * rng.uniform(0.85, 1.15)
    pts = [(t, b), (t, t), (a, t), (a, -t), (t, -t), (t, -b), (-t, -b), (-t, -t), (-a, -t), (-a, t), (-t, t), (-t, b)]
    return _draw_unit(rng, size, centre, r, [np.array(pts, np.float64)])


def _lens_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two discs of radii ``r1``, ``r2`` whose centres are ``d`` apart."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return float(np.pi * min(r1, r2) ** 2)
    a1 = r1 * r1 * np.arccos((d * d + r1 * r1 - r2 * r2) / (2 * d * r1))
    a2 = r2 * r2 * np.arccos((d * d + r2 * r2 - r1 * r1) / (2 * d * r2))
    return float(a1 + a2 - 0.5 * np.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)))


def _crescent(rng, size, centre, r):
    k, dist = rng.uniform(0.82, 1.0), rng.uniform(0.38, 0.6)  # the bite's radius and offset, in outer radii
    outer = r * np.sqrt(np.pi / (np.pi - _lens_area(1.0, k, dist)))
    a = rng.uniform(0, 2 * np.pi)
    out = np.zeros(size, np.uint8)
    cv2.circle(out, (int(round(centre[0])), int(round(centre[1]))), int(round(outer)), 1, -1)
    bite = (int(round(centre[0] + dist * outer * np.cos(a))), int(round(centre[1] + dist * outer * np.sin(a))))
    cv2.circle(out, bite, int(round(k * outer)), 0, -1)
    return out.astype(bool)


def _leaf(rng, size, centre, r):
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    width, power, bend = rng.uniform(0.32, 0.48), rng.uniform(1.5, 2.2), rng.uniform(-0.15, 0.15)
    s = np.sin(t)
    blade = np.stack([np.cos(t), width * np.sign(s) * np.abs(s) ** power + bend * (np.cos(t) ** 2 - 1)], 1)
    stem_w = 0.035
    stem = np.array([[0.95, -stem_w], [1.3, -stem_w + 0.05], [1.3, stem_w + 0.05], [0.95, stem_w]])
    return _draw_unit(rng, size, centre, r, [blade, stem])


#: class name -> shape function ``(rng, (H, W), (x, y) centre, r) -> (H, W) bool``; ``r`` is the
#: radius of the disc of the same area (as in :data:`segprompt.data.shapes.SHAPES`)
CLASS_SHAPES: dict[str, Callable[..., np.ndarray]] = {
    "disc": _disc, "star": _star, "ring": _ring, "square": _square,
    "triangle": _triangle, "cross": _cross, "crescent": _crescent, "leaf": _leaf,
}


# --------------------------------------------------------------------------- looks -----------


@dataclass(frozen=True)
class Look:
    """The appearance of a class: an HSV colour family (OpenCV ranges: hue 0-180 jittered by
    ``hue_jitter``, saturation and value 0-255), a surface texture ``(rng, (h, w)) -> (h, w)``
    field of unit std with an amplitude range in grey levels, how often the object is shaded
    as if raised, and how often it has a dark rim."""

    hue: float
    saturation: tuple[float, float]
    value: tuple[float, float]
    texture: Callable[[np.random.Generator, tuple[int, int]], np.ndarray]
    amplitude: tuple[float, float]
    p_shaded: float = 0.2
    p_rim: float = 0.0
    hue_jitter: float = 6.0


def _fine_grain(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return pr.fractal_noise(rng, shape, base_scale=float(rng.uniform(3, 6)), octaves=2)


def _mottled(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return pr.fractal_noise(rng, shape, base_scale=float(rng.uniform(10, 20)), octaves=int(rng.integers(3, 5)))


def _smooth(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return pr.fractal_noise(rng, shape, base_scale=float(rng.uniform(30, 60)), octaves=2)


#: class name -> :class:`Look`
LOOKS: dict[str, Look] = {
    "disc": Look(0, (150, 235), (150, 235), _smooth, (3, 8), p_shaded=1.0),  # red, smooth, shaded like a ball
    "star": Look(27, (170, 255), (190, 255), pr.speckle, (10, 22)),  # yellow, speckled
    "ring": Look(112, (150, 240), (120, 220), pr.stripes, (14, 30)),  # blue, striped
    "square": Look(140, (110, 210), (110, 210), pr.cells, (14, 30)),  # purple, tiled
    "triangle": Look(14, (180, 255), (180, 250), _fine_grain, (14, 28)),  # orange, grainy
    "cross": Look(88, (150, 240), (150, 230), pr.flat, (0, 0), p_shaded=0.0, p_rim=1.0),  # cyan, flat, rimmed
    "crescent": Look(25, (0, 45), (200, 250), _mottled, (12, 26), hue_jitter=15),  # pale, mottled
    "leaf": Look(55, (140, 240), (90, 200), pr.vessels, (14, 28)),  # green, veined
}


@dataclass(frozen=True)
class SceneSettings:
    """The ranges of :func:`make_scene`.

    ``n_objects``: objects drawn (inclusive; occlusion may drop some); ``area``: each object's
    share of the image (log-uniform, the upper bound lowered to ``crowd / n`` for crowded
    scenes); ``p_touch``: chance an object is placed touching an earlier one; ``min_visible`` /
    ``min_pixels``: an instance less visible than this is not drawn; ``p_grey``: grey scenes;
    ``p_clutter``: unlabelled background regions and thin strokes; ``noise``: the noise std range.
    """

    n_objects: tuple[int, int] = (1, 6)
    area: tuple[float, float] = (0.03, 0.30)
    crowd: float = 1.2
    p_touch: float = 0.3
    min_visible: float = 0.3
    min_pixels: int = 40
    p_grey: float = 0.25
    p_clutter: float = 0.4
    noise: tuple[float, float] = (0.5, 8.0)


DEFAULT = SceneSettings()


def scene_settings(settings: SceneSettings | Mapping[str, Any] | None) -> SceneSettings:
    """``settings`` as :class:`SceneSettings`: a mapping (a run config's YAML) overrides
    :data:`DEFAULT`'s fields by name, lists becoming the ranges' tuples; None is DEFAULT."""
    if settings is None:
        return DEFAULT
    if isinstance(settings, SceneSettings):
        return settings
    if not isinstance(settings, Mapping):
        raise ConfigError(f"scene settings must be a SceneSettings or a mapping of its fields, got {type(settings).__name__}")
    known = {f.name for f in fields(SceneSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown scene setting(s) {unknown}; known: {sorted(known)}")
    return replace(DEFAULT, **{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in settings.items()})


@dataclass
class Scene:
    """One scene: ``image`` (H, W, 3) uint8 RGB; ``masks`` (N, H, W) bool, the visible part of
    each instance (disjoint, none empty); ``classes`` (N,) int64 indices into ``class_names``;
    ``meta``: ``grey`` (bool), ``occluded`` (instances partly hidden by later ones),
    ``dropped`` (instances hidden too much to be drawn), ``visible`` (N,) visible share of each
    instance's whole area (occluders and the image border both hide), ``area`` (N,) its area
    inside the image as a share of the image."""

    image: np.ndarray
    masks: np.ndarray
    classes: np.ndarray
    class_names: tuple[str, ...] = OBJECT_CLASSES
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label_map(self) -> np.ndarray:
        """(H, W) int64: 0 = background, ``c + 1`` where an instance of class ``c`` is visible."""
        out = np.zeros(self.image.shape[:2], np.int64)
        for m, c in zip(self.masks, self.classes):
            out[m] = int(c) + 1
        return out


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return cv2.cvtColor(np.array([[[h % 180, s, v]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = mask.shape
    return slice(max(0, rows[0] - pad), min(h, rows[-1] + pad + 1)), slice(max(0, cols[0] - pad), min(w, cols[-1] + pad + 1))


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, texture: np.ndarray, rng: np.random.Generator, shaded: bool, rim: bool) -> None:
    """Paint ``colour`` + ``texture`` (float (h, w) over the box) into ``img`` where ``mask``, in place,
    with a slightly soft border, optional 3-D shading and an optional dark rim."""
    box = _bbox(mask, 4)
    m = mask[box]
    surface = colour[None, None] + texture[..., None]
    if shaded:  # imported here: the randomised generator pulls in scipy
        from segprompt.data.synthetic_random import _shading

        surface = surface + _shading(rng, m)[..., None]
    alpha = cv2.GaussianBlur(m.astype(np.float32), (0, 0), rng.uniform(0.4, 1.0))[..., None]
    img[box] = img[box] * (1 - alpha) + surface * alpha
    if rim:
        ring = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) & m
        img[box] -= ring[..., None].astype(np.float32) * rng.uniform(50, 90)


def _place(rng: np.random.Generator, size: tuple[int, int], r: float, placed: list[tuple[float, float, float]], p_touch: float) -> tuple[float, float]:
    """(x, y) centre: touching an earlier object (centres about the sum of the radii apart) with
    chance ``p_touch``, else anywhere that keeps most of the object inside the image."""
    h, w = size
    if placed and rng.random() < p_touch:
        x, y, r0 = placed[int(rng.integers(len(placed)))]
        a = rng.uniform(0, 2 * np.pi)
        d = (r0 + r) * rng.uniform(0.8, 1.0)
        return float(np.clip(x + d * np.cos(a), 0, w - 1)), float(np.clip(y + d * np.sin(a), 0, h - 1))
    m = r * rng.uniform(0.5, 1.0)
    return float(rng.uniform(min(m, w / 2), max(w - m, w / 2))), float(rng.uniform(min(m, h / 2), max(h - m, h / 2)))


def _background(rng: np.random.Generator, size: tuple[int, int], grey: bool, settings: SceneSettings) -> np.ndarray:
    """(H, W, 3) float32: a desaturated textured surface, sometimes with a large second region and
    thin unlabelled strokes (clutter no class looks like)."""
    def colour() -> np.ndarray:
        c = pr.random_colour(rng, grey)
        return c.mean() + (c - c.mean()) * rng.uniform(0.15, 0.55)

    img = colour()[None, None] + pr.random_texture(rng, size)[..., None] * _log_uniform(rng, 3.0, 25.0)
    if rng.random() < settings.p_clutter:
        region, _ = random_object(rng, size, rng.uniform(0.15, 0.5), shape=str(rng.choice(["blob", "lobed"])))
        if region.any():
            box = _bbox(region, 4)
            _paint(img, region, colour(), pr.random_texture(rng, region[box].shape) * _log_uniform(rng, 3.0, 25.0), rng, False, False)
        for _ in range(int(rng.integers(0, 3))):
            stroke, _ = random_object(rng, size, rng.uniform(0.005, 0.03), shape=str(rng.choice(["thin", "branching"])))
            if stroke.any():
                _paint(img, stroke, colour(), np.zeros(stroke[_bbox(stroke, 4)].shape, np.float32), rng, False, False)
    return img


def _object_colour(rng: np.random.Generator, look: Look, grey: bool, local: np.ndarray) -> np.ndarray:
    """(3,) float32: the class's colour family (grey scenes: a grey level) kept at least ~45 grey
    levels from ``local``, the background's mean colour under the object."""
    if grey:
        lum = float(local.mean())
        sign = rng.choice([-1.0, 1.0])
        level = lum + sign * rng.uniform(45, 110)
        if not 10 <= level <= 245:
            level = lum - sign * rng.uniform(45, 110)
        return np.full(3, np.clip(level, 0, 255), np.float32)
    c = _hsv(look.hue + rng.uniform(-look.hue_jitter, look.hue_jitter), rng.uniform(*look.saturation), rng.uniform(*look.value))
    gap = float(np.linalg.norm(c - local)) / np.sqrt(3)
    if gap < 45:  # too close to the background: move the brightness away from it
        c = np.clip(c + (45 - gap) * (1.0 if local.mean() < c.mean() or local.mean() < 100 else -1.0), 0, 255)
    return c.astype(np.float32)


def make_scene(rng: np.random.Generator, size: tuple[int, int] = (256, 256), settings: SceneSettings = DEFAULT) -> Scene:
    """One scene of ``size`` (H, W) drawn from ``rng``: 1-6 objects of :data:`OBJECT_CLASSES` on a
    randomised background (see the module docstring). Always at least one instance."""
    h, w = int(size[0]), int(size[1])
    grey = bool(rng.random() < settings.p_grey)
    img = _background(rng, (h, w), grey, settings)

    n = int(rng.integers(settings.n_objects[0], settings.n_objects[1] + 1))
    hi = max(settings.area[0] * 1.5, min(settings.area[1], settings.crowd / n))
    drawn: list[tuple[np.ndarray, int, float]] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(n):
        cls = int(rng.integers(len(OBJECT_CLASSES)))
        r = float(np.sqrt(_log_uniform(rng, settings.area[0], hi) * h * w / np.pi))
        centre = _place(rng, (h, w), r, placed, settings.p_touch)
        mask = CLASS_SHAPES[OBJECT_CLASSES[cls]](rng, (h, w), centre, r)
        placed.append((centre[0], centre[1], r))
        drawn.append((mask, cls, max(float(mask.sum()), np.pi * r * r)))

    # last drawn is in front: walk back to front, keep an instance when enough of it shows
    cover = np.zeros((h, w), bool)
    kept: list[tuple[np.ndarray, np.ndarray, int, float]] = []
    dropped = 0
    for mask, cls, full in reversed(drawn):
        visible = mask & ~cover  # the share is of the whole shape's area: the image border cuts too
        if visible.sum() < max(settings.min_pixels, settings.min_visible * full):
            dropped += 1
            continue
        kept.append((mask, visible, cls, full))
        cover |= mask
    if not kept:  # everything cut away (tiny image, odd settings): draw again from the same rng
        return make_scene(rng, size, settings)
    kept.reverse()

    for mask, _, cls, _ in kept:  # back to front
        look = LOOKS[OBJECT_CLASSES[cls]]
        box = _bbox(mask, 4)
        colour = _object_colour(rng, look, grey, img[mask].mean(axis=0))
        texture = look.texture(rng, mask[box].shape) * rng.uniform(*look.amplitude) if look.amplitude[1] > 0 else np.zeros(mask[box].shape, np.float32)
        _paint(img, mask, colour, texture, rng, shaded=rng.random() < look.p_shaded, rim=rng.random() < look.p_rim)

    if rng.random() < 0.5:
        img *= pr.illumination(rng, (h, w))[..., None] * 0.5 + 0.5  # half the light field's strength
    if rng.random() < 0.2:
        img *= pr.vignette(rng, (h, w))[..., None] * 0.5 + 0.5
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), _log_uniform(rng, 0.4, 1.5))
    img += rng.normal(0, _log_uniform(rng, *settings.noise), (h, w, 1 if grey else 3)).astype(np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if grey:
        out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    if rng.random() < 0.3:
        out = pr.jpeg(rng, out)
    masks = np.stack([v for _, v, _, _ in kept])
    meta = {
        "grey": grey,
        "occluded": int(sum(int((v != m).any()) for m, v, _, _ in kept)),
        "dropped": dropped,
        "visible": np.array([v.sum() / full for _, v, _, full in kept]),
        "area": np.array([m.mean() for m, _, _, _ in kept]),
    }
    return Scene(np.ascontiguousarray(out), masks, np.array([c for _, _, c, _ in kept], np.int64), OBJECT_CLASSES, meta)


class ObjectScenes(SegmentationDataset):
    """``n`` scenes of :func:`make_scene` from ``seed`` (registry name ``synthetic-objects``).

    ``Sample.mask`` is the int64 label map over :data:`LABEL_NAMES` (0 = ``background``, ``c + 1``
    = ``OBJECT_CLASSES[c]``); ``Sample.texts`` the names of the classes present, in class order;
    ``Sample.meta["instances"]`` = ``{"masks": (N, H, W) bool, "classes": (N,) int64 into
    OBJECT_CLASSES}``, plus ``grey``, ``occluded`` and ``dropped`` from the scene.

    Args:
        n: number of scenes.
        seed: scene ``i`` is generated from ``(seed, i)`` alone.
        size: (H, W) or a square side.
        settings: the generator's ranges (:class:`SceneSettings`, or a mapping of its fields
            over the defaults, as a run config's ``dataset_kwargs`` gives it).
    """

    task = "multiclass"
    class_names = LABEL_NAMES

    def __init__(self, n: int = 64, seed: int = 0, size: int | tuple[int, int] = 256, settings: SceneSettings | Mapping[str, Any] | None = DEFAULT) -> None:
        super().__init__()
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        self.size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
        if min(self.size) < 32:
            raise ConfigError(f"size must be at least 32 x 32, got {self.size}")
        self.seed, self.settings = int(seed), scene_settings(settings)
        self.name = "synthetic-objects"
        self.records = list(range(n))

    def record_id(self, record: int) -> str:
        return f"objects_{self.seed}_{record:05d}"

    def _make(self, record: int) -> Scene:
        return make_scene(np.random.default_rng([self.seed, int(record), 23]), self.size, self.settings)

    def scene(self, i: int) -> Scene:
        """The :class:`Scene` of sample ``i`` (``ds.scene(i)`` matches ``ds[i]``)."""
        return self._make(self.records[i])

    def load(self, record: int) -> Sample:
        scene = self._make(record)
        texts = tuple(OBJECT_CLASSES[c] for c in sorted(set(scene.classes.tolist())))
        meta = {"instances": {"masks": scene.masks, "classes": scene.classes}, **{k: scene.meta[k] for k in ("grey", "occluded", "dropped")}}
        return Sample(id=self.record_id(record), image=scene.image, mask=scene.label_map, texts=texts, class_names=LABEL_NAMES, meta=meta)


class ObjectInstances(SegmentationDataset):
    """Every instance of ``ObjectScenes(n, seed, size)`` as its own binary sample (registry name
    ``synthetic-object-instances``): the point benchmark's view of the scenes (one object per
    sample, the others are distractors). ``id`` = ``<scene id>_<k>``, ``texts`` = (its class name,),
    ``meta["scene"]`` / ``meta["instance"]`` locate it. The default seed (2024) is held out from
    universal-tiny's training (seed 0) and validation (999) scenes."""

    task = "binary"

    def __init__(self, n: int = 16, seed: int = 2024, size: int | tuple[int, int] = 256, settings: SceneSettings | Mapping[str, Any] | None = DEFAULT) -> None:
        super().__init__()
        self.scenes = ObjectScenes(n, seed, size, settings)
        self.name = "synthetic-object-instances"
        self.records = [(i, k) for i in range(n) for k in range(len(self.scenes.scene(i).classes))]

    def record_id(self, record: tuple[int, int]) -> str:
        return f"{self.scenes.record_id(record[0])}_{record[1]}"

    def load(self, record: tuple[int, int]) -> Sample:
        i, k = record
        scene = self.scenes.scene(i)
        name = OBJECT_CLASSES[int(scene.classes[k])]
        return Sample(id=self.record_id(record), image=scene.image, mask=scene.masks[k], texts=(name,), meta={"scene": i, "instance": k})
