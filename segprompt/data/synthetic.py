"""Deterministic synthetic datasets, generated from a seed: for demos, tests and the demo model.

* :class:`SyntheticLesions`: binary, one lesion-like blob per image on a textured background,
  in three looks: ``"endoscopy"`` (pink-red mucosa, vignette, specular highlights, a polyp of a
  slightly different colour), ``"ultrasound"`` (grey speckle, a dark hypoechoic lesion with
  posterior shadowing) and ``"dermoscopy"`` (skin tone, a brown lesion with an irregular border).
  ``style="randomised"`` is the domain-randomised mode (:mod:`segprompt.data.synthetic_random`):
  any shape, texture, colour and artefact, the data the bundled ``sam-tiny`` is trained on.
* :class:`SyntheticScenes`: multi-class label maps of textured shapes whose classes have word
  names (``background``, ``circle``, ``square``, ``triangle``), for text / reference prompting.
* :func:`synthetic_volume`: a (Z, H, W, 3) stack with blobs that move and grow / shrink from slice
  to slice, and its (Z, H, W) int32 object labels, for the volume propagation tests and demo.

Sample ``i`` of a dataset with seed ``s`` depends only on ``(s, i)``, so subsets, shuffles and
reruns see identical pixels. These are not medical data and support no clinical claim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np

from segprompt.data.io import write_image, write_mask
from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.errors import ConfigError

LesionStyle = Literal["endoscopy", "ultrasound", "dermoscopy"]
LESION_STYLES: tuple[str, ...] = ("endoscopy", "ultrasound", "dermoscopy")
SCENE_CLASSES: tuple[str, ...] = ("background", "circle", "square", "triangle")
#: the domain-randomised style (:mod:`segprompt.data.synthetic_random`), not part of ``"mixed"``
RANDOMISED = "randomised"


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """float32 (H, W) noise with unit std, correlated over about ``scale`` pixels."""
    h, w = shape
    small = (max(2, int(round(h / scale))), max(2, int(round(w / scale))))
    field = rng.standard_normal(small).astype(np.float32)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    std = field.std()
    return field / (std if std > 0 else 1.0)


def _blob_polygon(rng: np.random.Generator, centre: tuple[float, float], radius: float, roughness: float) -> np.ndarray:
    """int32 (96, 2) polygon (x, y) of a star-shaped blob with a random harmonic border (the
    lesion looks' parameters of :func:`segprompt.data.shapes.star_polygon`)."""
    from segprompt.data.shapes import star_polygon

    return star_polygon(rng, centre, radius, roughness, harmonics=4, points=96, floor=0.45, stretch_range=(0.75, 1.25))


def _lesion_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    side = min(h, w)
    radius = rng.uniform(0.10, 0.24) * side
    margin = radius * 1.3
    cx = rng.uniform(margin, max(margin + 1, w - margin))
    cy = rng.uniform(margin, max(margin + 1, h - margin))
    poly = _blob_polygon(rng, (cx, cy), radius, roughness=rng.uniform(0.2, 0.7))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [poly], 1)
    return mask.astype(bool)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """float32 mask with a blurred edge (the lesion border is not a hard step)."""
    k = int(2 * round(3 * sigma) + 1)
    return cv2.GaussianBlur(mask.astype(np.float32), (k, k), sigma)


def _render_endoscopy(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = 1.0 - 0.55 * (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
    base = np.array([rng.uniform(170, 220), rng.uniform(70, 110), rng.uniform(60, 100)], np.float32)
    tex = _smooth_noise(rng, (h, w), 24) * 14 + _smooth_noise(rng, (h, w), 5) * 6
    img = base[None, None] + tex[..., None] * np.array([1.0, 0.7, 0.6], np.float32)
    lesion = np.array([rng.uniform(-45, 25), rng.uniform(-35, 30), rng.uniform(-20, 30)], np.float32)
    lesion += np.sign(lesion + 1e-3) * 12  # never (almost) invisible
    bumps = _smooth_noise(rng, (h, w), 8) * 10
    m = _soft(mask, 1.5)[..., None]
    img = img + m * (lesion[None, None] + bumps[..., None])
    img = img * np.clip(vignette, 0.25, 1.0)[..., None]
    # specular highlights: small saturated spots anywhere
    for _ in range(rng.integers(2, 7)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        cv2.circle(img, (int(cx), int(cy)), int(rng.integers(1, 4)), (255, 255, 255), -1)
    return img


def _render_ultrasound(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    tissue = 110 + _smooth_noise(rng, (h, w), 30) * 25 + _smooth_noise(rng, (h, w), 6) * 12
    m = _soft(mask, 2.0)
    lesion_level = rng.uniform(25, 60)
    img = tissue * (1 - m) + (lesion_level + _smooth_noise(rng, (h, w), 6) * 6) * m
    # posterior acoustic shadow below the lesion: columns under it are darkened
    cols = mask.any(axis=0)
    if cols.any():
        bottom = np.where(cols, h - 1 - np.argmax(mask[::-1], axis=0), h)
        yy = np.arange(h)[:, None]
        shadow = (yy > bottom[None, :]) & cols[None, :]
        strength = rng.uniform(0.1, 0.35)
        img = img * (1 - strength * cv2.GaussianBlur(shadow.astype(np.float32), (9, 9), 3))
    speckle = rng.rayleigh(1.0, size=(h, w)).astype(np.float32) / 1.2533  # mean 1
    img = img * (0.55 + 0.45 * speckle)
    depth = np.linspace(1.0, 0.7, h, dtype=np.float32)[:, None]
    img = np.clip(img * depth, 0, 255)
    return np.repeat(img[..., None], 3, axis=2)


def _render_dermoscopy(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    skin = np.array([rng.uniform(200, 235), rng.uniform(150, 185), rng.uniform(125, 160)], np.float32)
    tex = _smooth_noise(rng, (h, w), 40) * 10 + _smooth_noise(rng, (h, w), 3) * 4
    img = skin[None, None] + tex[..., None]
    darkness = rng.uniform(0.35, 0.7)
    lesion = skin * np.array([darkness, darkness * 0.85, darkness * 0.75], np.float32)
    pigment = _smooth_noise(rng, (h, w), 10) * 18
    m = _soft(mask, 2.5)[..., None]
    img = img * (1 - m) + (lesion[None, None] + pigment[..., None]) * m
    # a few hairs: dark thin curves across the image
    for _ in range(rng.integers(0, 4)):
        pts = np.cumsum(rng.normal(0, 12, size=(8, 2)), axis=0) + rng.uniform(0, [w, h])
        cv2.polylines(img, [pts.astype(np.int32).reshape(-1, 1, 2)], False, (40, 30, 25), 1)
    return img


_RENDERERS = {"endoscopy": _render_endoscopy, "ultrasound": _render_ultrasound, "dermoscopy": _render_dermoscopy}


def make_lesion(
    rng: np.random.Generator, size: tuple[int, int] = (256, 256), style: LesionStyle = "endoscopy"
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic lesion image: ((H, W, 3) uint8 RGB, (H, W) bool mask)."""
    if style not in _RENDERERS:
        raise ConfigError(f"unknown lesion style {style!r}; use one of {', '.join(LESION_STYLES)}")
    mask = _lesion_mask(rng, size)
    img = _RENDERERS[style](rng, mask)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _sizes(size: int | tuple[int, int] | None, rng: np.random.Generator) -> tuple[int, int]:
    if size is None:  # varied sizes, like real datasets
        return int(rng.integers(192, 320)), int(rng.integers(192, 352))
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


class SyntheticLesions(SegmentationDataset):
    """``n`` binary lesion images from ``seed``; ``style`` is one look or ``"mixed"`` (cycling).

    Args:
        n: number of samples.
        seed: sample ``i`` is generated from ``(seed, i)`` alone.
        size: (H, W), a square side, or None for varied sizes (192..352; for ``randomised``,
            a longer side of 224..384 and an aspect ratio of 0.75..1.5).
        style: ``endoscopy``, ``ultrasound``, ``dermoscopy``, ``mixed`` (the three in turn) or
            ``randomised``: domain-randomised objects, textures and artefacts
            (:mod:`segprompt.data.synthetic_random`), the training data of ``sam-tiny``.
        variant: the version of the randomised generator (``v1``, ``v2``, ``v3``; default the latest),
            see :data:`segprompt.data.synthetic_random.VARIANTS`.
    """

    task = "binary"

    def __init__(
        self,
        n: int = 32,
        seed: int = 0,
        size: int | tuple[int, int] | None = 256,
        style: str = "mixed",
        variant: str | None = None,
    ) -> None:
        super().__init__()
        if variant is not None and style != RANDOMISED:
            raise ConfigError(f"variant={variant!r} is a setting of style={RANDOMISED!r} only")
        self.variant = None
        if style == RANDOMISED:  # the randomised generator is imported only where it is used
            from segprompt.data.synthetic_random import DEFAULT_VARIANT, VARIANTS

            if variant is not None and variant not in VARIANTS:
                raise ConfigError(f"unknown variant {variant!r} of the randomised generator; known: {', '.join(VARIANTS)}")
            self.variant = variant or DEFAULT_VARIANT
        if style not in ("mixed", RANDOMISED) and style not in LESION_STYLES:
            raise ConfigError(f"unknown lesion style {style!r}; use mixed, {RANDOMISED} or one of {', '.join(LESION_STYLES)}")
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        self.seed, self.size, self.style = int(seed), size, style
        self.name = f"synthetic-lesions-{style}"
        self.records = list(range(n))

    def record_id(self, record: int) -> str:
        return f"lesion_{self.seed}_{record:05d}"

    def style_of(self, index: int) -> str:
        return LESION_STYLES[index % len(LESION_STYLES)] if self.style == "mixed" else self.style

    def load(self, record: int) -> Sample:
        rng = np.random.default_rng([self.seed, record])
        if self.style == RANDOMISED:
            from segprompt.data.synthetic_random import VARIANTS, make_randomised

            size = None if self.size is None else _sizes(self.size, rng)
            image, mask, meta = make_randomised(rng, size, VARIANTS[self.variant])
            return Sample(id=self.record_id(record), image=image, mask=mask, texts=("object",), meta={"style": RANDOMISED, **meta})
        size = _sizes(self.size, rng)
        style = self.style_of(record)
        image, mask = make_lesion(rng, size, style)  # type: ignore[arg-type]
        return Sample(id=self.record_id(record), image=image, mask=mask, texts=("polyp" if style == "endoscopy" else "lesion",), meta={"style": style})


def _shape_mask(rng: np.random.Generator, kind: str, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    side = min(h, w)
    r = rng.uniform(0.08, 0.18) * side
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    canvas = np.zeros((h, w), np.uint8)
    if kind == "circle":
        cv2.circle(canvas, (int(cx), int(cy)), int(r), 1, -1)
    elif kind == "square":
        a = rng.uniform(0, np.pi / 2)
        corners = [(cx + r * np.cos(a + k * np.pi / 2), cy + r * np.sin(a + k * np.pi / 2)) for k in range(4)]
        cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], 1)
    elif kind == "triangle":
        a = rng.uniform(0, 2 * np.pi)
        corners = [(cx + r * np.cos(a + k * 2 * np.pi / 3), cy + r * np.sin(a + k * 2 * np.pi / 3)) for k in range(3)]
        cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], 1)
    else:  # pragma: no cover - guarded by the class list
        raise ConfigError(f"unknown shape {kind!r}")
    return canvas.astype(bool)


class SyntheticScenes(SegmentationDataset):
    """Multi-class scenes: textured shapes (``circle``, ``square``, ``triangle``) on a background.

    Label maps are int64 (H, W) with indices into ``class_names``; each class has its own
    colour family so both a text name and a visual reference identify it. 1-4 objects per
    image; later objects may occlude earlier ones.
    """

    task = "multiclass"
    class_names = SCENE_CLASSES

    def __init__(self, n: int = 32, seed: int = 0, size: int | tuple[int, int] | None = 256) -> None:
        super().__init__()
        self.seed, self.size = int(seed), size
        self.name = "synthetic-scenes"
        self.records = list(range(n))

    def record_id(self, record: int) -> str:
        return f"scene_{self.seed}_{record:05d}"

    def load(self, record: int) -> Sample:
        rng = np.random.default_rng([self.seed, record, 7])
        h, w = _sizes(self.size, rng)
        base = np.array([rng.uniform(90, 140)] * 3, np.float32) + rng.uniform(-15, 15, 3)
        img = base[None, None] + (_smooth_noise(rng, (h, w), 30) * 12)[..., None]
        labels = np.zeros((h, w), np.int64)
        palette = {"circle": (200, 60, 50), "square": (50, 170, 70), "triangle": (60, 80, 200)}
        for _ in range(int(rng.integers(1, 5))):
            cls = int(rng.integers(1, len(SCENE_CLASSES)))
            name = SCENE_CLASSES[cls]
            m = _shape_mask(rng, name, (h, w))
            colour = np.array(palette[name], np.float32) + rng.uniform(-25, 25, 3)
            tex = _smooth_noise(rng, (h, w), 6)[..., None] * 10
            img = np.where(m[..., None], colour[None, None] + tex, img)
            labels[m] = cls
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        present = tuple(SCENE_CLASSES[c] for c in np.unique(labels) if c > 0)
        return Sample(id=self.record_id(record), image=img, mask=labels, texts=present, class_names=SCENE_CLASSES, meta={})


def _volume_layout(n: int, size: int) -> list[tuple[float, float, float, float]]:
    """(x0, y0, width, height) of one grid cell per object (objects never overlap)."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    cw, ch = size / cols, size / rows
    return [((i % cols) * cw, (i // cols) * ch, cw, ch) for i in range(n)]


def synthetic_volume(seed: int = 0, depth: int = 12, size: int = 64, n_objects: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A seeded synthetic stack: textured blobs that move and change size across slices.

    Each object is a star-shaped blob (the lesion looks' border) with a fixed outline whose
    radius follows an ellipsoid profile along z (it appears, grows, shrinks and vanishes; every
    object is present on the middle slice) and whose centre drifts in a straight line inside its
    own grid cell, so objects never touch. Objects have their own colour (darker or brighter than
    the background, so also visible in grey) and a fine texture on a grey, smoothly varying (along
    z too) textured background: GrabCut and ``sam-tiny`` find them.

    Args:
        seed: the stack depends only on ``(seed, depth, size, n_objects)``.
        depth: number of slices Z (>= 2). size: slice side H = W (>= 16). n_objects: 1..9.

    Returns:
        ``volume`` (Z, H, W, 3) uint8 RGB and ``labels`` (Z, H, W) int32 (0 background, object i
        has id i, 1-based).
    """
    if depth < 2 or size < 16 or not 1 <= n_objects <= 9:
        raise ConfigError(f"synthetic_volume needs depth >= 2, size >= 16 and 1..9 objects, got depth={depth}, size={size}, n_objects={n_objects}")
    rng = np.random.default_rng([seed, depth, size, n_objects, 13])
    h = w = size
    base = np.array([rng.uniform(95, 135)] * 3, np.float32) + rng.uniform(-10, 10, 3)
    bg_a = _smooth_noise(rng, (h, w), size / 4) * 10 + _smooth_noise(rng, (h, w), 3) * 4
    bg_b = _smooth_noise(rng, (h, w), size / 4) * 10 + _smooth_noise(rng, (h, w), 3) * 4
    # dark and bright colours: objects differ from the grey background in hue and in luminance,
    # so a grey (single-channel) version of the stack shows them too
    palette = np.array([(130, 25, 20), (20, 95, 35), (35, 45, 150), (75, 30, 95), (20, 20, 20),
                        (250, 185, 165), (175, 250, 180), (170, 200, 255), (250, 240, 120), (240, 240, 240)], np.float32)
    hues = rng.permutation(len(palette))[:n_objects]
    objects = []
    for cell in _volume_layout(n_objects, size):
        cx0, cy0, cw, ch = cell
        half = 0.5 * min(cw, ch)
        rmax = rng.uniform(0.36, 0.44) * half  # the outline reaches at most ~1.4 x the radius
        slack = np.array([0.5 * cw - 1.45 * rmax, 0.5 * ch - 1.45 * rmax]).clip(0, None)
        start = np.array([cx0 + cw / 2, cy0 + ch / 2]) + rng.uniform(-1, 1, 2) * slack
        end = np.array([cx0 + cw / 2, cy0 + ch / 2]) + rng.uniform(-1, 1, 2) * slack
        zc = (depth - 1) / 2 + rng.uniform(-0.1, 0.1) * depth
        hz = rng.uniform(0.45, 0.65) * depth
        star_outline = (rng.uniform(0.1, 0.5), rng.uniform(0, 1, 3), rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.8, 1.2), rng.uniform(0, np.pi))
        objects.append((start, end, rmax, zc, hz, star_outline))
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    volume = np.zeros((depth, h, w, 3), np.uint8)
    labels = np.zeros((depth, h, w), np.int32)
    tex = [_smooth_noise(rng, (h, w), 2.5) for _ in range(n_objects)]
    for z in range(depth):
        t = z / (depth - 1)
        img = base[None, None] + ((1 - t) * bg_a + t * bg_b)[..., None]
        for i, (start, end, rmax, zc, hz, (rough, amps, phases, stretch, angle)) in enumerate(objects):
            radius = rmax * np.sqrt(max(0.0, 1.0 - ((z - zc) / hz) ** 2))
            if radius < 1.0:
                continue
            r = np.ones_like(theta)
            for k, (a, ph) in enumerate(zip(amps, phases), start=2):
                r += rough * a / k * np.cos(k * theta + ph + 0.08 * z)
            r = radius * np.clip(r, 0.5, None)
            x, y = r * np.cos(theta) * stretch, r * np.sin(theta) / stretch
            c = start + (end - start) * t
            poly = np.stack([x * np.cos(angle) - y * np.sin(angle) + c[0], x * np.sin(angle) + y * np.cos(angle) + c[1]], 1)
            canvas = np.zeros((h, w), np.uint8)
            cv2.fillPoly(canvas, [np.round(poly).astype(np.int32)], 1)
            m = canvas.astype(bool)
            colour = palette[hues[i]]
            img = np.where(m[..., None], colour[None, None] + (tex[i] * 12)[..., None], img)
            labels[z][m] = i + 1
        noise = rng.normal(0, 3, (h, w, 3))
        volume[z] = np.clip(img + noise, 0, 255).astype(np.uint8)
    return volume, labels


def write_folder(dataset: Sequence[Sample], out: str | Path, image_suffix: str = ".png") -> Path:
    """Write samples as ``out/images/<id><suffix>`` and ``out/masks/<id>.png`` (0/255 or label ids)."""
    out = Path(out)
    for s in dataset:
        write_image(out / "images" / f"{s.id}{image_suffix}", s.image)
        if s.mask is not None:
            write_mask(out / "masks" / f"{s.id}.png", s.mask)
    return out
