"""Procedural textures, illumination fields and imaging artefacts for the randomised synthetic data.

Every function takes a ``numpy.random.Generator`` and returns float32 arrays; images are (H, W, 3)
float32 RGB in 0..255 (values may leave that range until the caller clips), fields are (H, W)
float32. Nothing here knows about objects or masks: :mod:`segprompt.data.synthetic_random`
composes them. OpenCV does the resizing, blurring, drawing and JPEG coding.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Texture = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """(H, W) float32 noise of unit std, correlated over about ``scale`` pixels (bicubic upsampling)."""
    h, w = shape
    small = (max(2, int(round(w / scale))), max(2, int(round(h / scale))))
    field = rng.standard_normal(small[::-1]).astype(np.float32)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    std = float(field.std())
    return field / (std if std > 1e-6 else 1.0)


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], base_scale: float | None = None, octaves: int | None = None, persistence: float | None = None) -> np.ndarray:
    """(H, W) float32 fractal (Perlin-like, value-noise) field of unit std: octaves of
    :func:`smooth_noise` from ``base_scale`` down, each ``persistence`` times weaker."""
    base_scale = base_scale or float(rng.uniform(8, 96))
    octaves = octaves or int(rng.integers(2, 6))
    persistence = persistence if persistence is not None else float(rng.uniform(0.35, 0.75))
    out = np.zeros(shape, np.float32)
    amp, scale = 1.0, base_scale
    for _ in range(octaves):
        out += amp * smooth_noise(rng, shape, max(1.5, scale))
        amp *= persistence
        scale /= 2.0
    return out / max(1e-6, float(out.std()))


def stripes(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) wavy parallel bands (tissue layers, folds): a sine of a random direction and
    period whose phase is warped by smooth noise."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi) if rng.random() < 0.6 else rng.normal(0, 0.15)  # ultrasound layers are near horizontal
    period = rng.uniform(4, 48)
    warp = smooth_noise(rng, shape, rng.uniform(20, 80)) * rng.uniform(0, 2.5)
    u = xx * np.sin(angle) + yy * np.cos(angle)
    wave = np.sin(2 * np.pi * u / period + warp)
    if rng.random() < 0.5:  # thin bright lines rather than a sine
        wave = np.maximum(wave, 0) ** rng.uniform(3, 12)
    return ((wave - wave.mean()) / max(1e-6, float(wave.std()))).astype(np.float32)


def cells(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) cellular (Voronoi / Worley) texture: distance to the nearest of random seeds,
    with per-cell brightness; cobblestone, crypts and pigment networks look like this."""
    h, w = shape
    n = int(rng.integers(8, max(9, h * w // 300)))
    seeds = np.ones((h, w), np.uint8)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    seeds[ys, xs] = 0
    dist, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    dist = dist / max(1e-6, float(dist.max()))
    level = rng.standard_normal(int(labels.max()) + 1).astype(np.float32)
    mix = rng.uniform(0, 1)
    out = mix * (dist * 2 - 1) + (1 - mix) * level[labels]
    return ((out - out.mean()) / max(1e-6, float(out.std()))).astype(np.float32)


def speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) ultrasound-like speckle: Rayleigh noise smoothed over a random grain, unit std."""
    grain = rng.uniform(0.5, 2.5)
    s = rng.rayleigh(1.0, size=shape).astype(np.float32)
    s = cv2.GaussianBlur(s, (0, 0), grain)
    return (s - s.mean()) / max(1e-6, float(s.std()))


def rayleigh_speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 fully developed speckle: unsmoothed Rayleigh noise of mean 1 (B-mode
    ultrasound's multiplicative grain, one independent draw per pixel)."""
    return (rng.rayleigh(1.0, size=shape) / np.sqrt(np.pi / 2)).astype(np.float32)


def vessels(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) dark branching curves (vessels, hairs' shadows): random-walk polylines, blurred."""
    h, w = shape
    canvas = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(3, 25))):
        steps = int(rng.integers(5, 30))
        pts = np.cumsum(rng.normal(0, rng.uniform(3, 12), (steps, 2)), axis=0) + rng.uniform(0, [w, h])
        cv2.polylines(canvas, [pts.astype(np.int32).reshape(-1, 1, 2)], False, 1.0, int(rng.integers(1, 3)))
    canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.5, 1.5))
    return (-(canvas - canvas.mean()) / max(1e-6, float(canvas.std()))).astype(np.float32)


def flat(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) zeros: no texture."""
    return np.zeros(shape, np.float32)


#: texture name -> generator of a (H, W) float32 field of about unit std
TEXTURES: dict[str, Texture] = {
    "fractal": fractal_noise,
    "stripes": stripes,
    "cells": cells,
    "speckle": speckle,
    "vessels": vessels,
    "flat": flat,
}
TEXTURE_WEIGHTS = {"fractal": 0.35, "stripes": 0.15, "cells": 0.15, "speckle": 0.15, "vessels": 0.1, "flat": 0.1}


def random_texture(rng: np.random.Generator, shape: tuple[int, int], n_layers: int | None = None) -> np.ndarray:
    """(H, W) float32: a weighted sum of 1-3 textures drawn from :data:`TEXTURES`, unit std or 0."""
    names = list(TEXTURE_WEIGHTS)
    p = np.array([TEXTURE_WEIGHTS[n] for n in names])
    out = np.zeros(shape, np.float32)
    for _ in range(n_layers or int(rng.integers(1, 4))):
        out += rng.uniform(0.3, 1.0) * TEXTURES[names[rng.choice(len(names), p=p / p.sum())]](rng, shape)
    std = float(out.std())
    return out / std if std > 1e-6 else out


def random_colour(rng: np.random.Generator, grey: bool = False) -> np.ndarray:
    """(3,) float32 RGB in 0..255; skin, mucosa and grey tones are favoured but any colour can come."""
    if grey:
        return np.full(3, rng.uniform(20, 230), np.float32)
    if rng.random() < 0.6:  # warm tissue tones
        hsv = np.array([[[rng.uniform(0, 25) if rng.random() < 0.8 else rng.uniform(150, 180), rng.uniform(40, 200), rng.uniform(60, 250)]]], np.uint8)
    else:
        hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 255), rng.uniform(30, 250)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def illumination(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 multiplicative light field around 1: a smooth gradient plus low-frequency noise."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    grad = ((xx / w - 0.5) * np.cos(a) + (yy / h - 0.5) * np.sin(a)) * rng.uniform(0, 0.8)
    field = 1.0 + grad + smooth_noise(rng, shape, rng.uniform(60, 200)) * rng.uniform(0, 0.2)
    return np.clip(field, 0.2, 2.0).astype(np.float32)


def vignette(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 radial fall-off in (0, 1]: 1 at a random centre near the middle."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    r2 = ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2
    return np.clip(1.0 - rng.uniform(0.1, 0.7) * r2, 0.1, 1.0).astype(np.float32)


def field_of_view(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the lit aperture of the instrument (a circle as in dermoscopy, an octagon
    or a rounded rectangle as in endoscopy, a fan as in ultrasound); False outside."""
    h, w = shape
    out = np.zeros((h, w), np.uint8)
    kind = rng.choice(["circle", "octagon", "fan"])
    cx, cy = w / 2 + rng.normal(0, w * 0.03), h / 2 + rng.normal(0, h * 0.03)
    if kind == "circle":
        r = rng.uniform(0.42, 0.56) * max(h, w)  # the corners stay dark
        cv2.circle(out, (int(cx), int(cy)), int(r), 1, -1)
    elif kind == "octagon":
        hw, hh, cut = w * rng.uniform(0.42, 0.5), h * rng.uniform(0.42, 0.5), rng.uniform(0.15, 0.3)
        pts = [(cx - hw * (1 - cut), cy - hh), (cx + hw * (1 - cut), cy - hh), (cx + hw, cy - hh * (1 - cut)), (cx + hw, cy + hh * (1 - cut)),
               (cx + hw * (1 - cut), cy + hh), (cx - hw * (1 - cut), cy + hh), (cx - hw, cy + hh * (1 - cut)), (cx - hw, cy - hh * (1 - cut))]
        cv2.fillPoly(out, [np.round(pts).astype(np.int32)], 1)
    else:
        apex = (int(cx), int(-h * rng.uniform(0.1, 0.6)))
        spread = rng.uniform(25, 45)
        cv2.ellipse(out, apex, (int(h * 1.6), int(h * 1.6)), 90, -spread, spread, 1, -1)
        cv2.circle(out, apex, int(h * rng.uniform(0.1, 0.6)), 0, -1)
    return out.astype(bool)


def specular_highlights(rng: np.random.Generator, img: np.ndarray, where: np.ndarray | None = None, count: int | None = None) -> np.ndarray:
    """Saturated white spots and streaks (wet tissue under a point light), drawn into a copy of
    ``img``; placed inside ``where`` (bool (H, W)) when given."""
    h, w = img.shape[:2]
    layer = np.zeros((h, w), np.float32)
    count = int(rng.integers(1, 30)) if count is None else count
    pts = np.argwhere(where) if where is not None and where.any() else None
    for _ in range(count):
        if pts is not None:
            y, x = pts[rng.integers(len(pts))]
        else:
            y, x = rng.integers(0, h), rng.integers(0, w)
        axes = (int(rng.integers(1, 6)), int(rng.integers(1, 4)))
        cv2.ellipse(layer, (int(x), int(y)), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    layer = cv2.GaussianBlur(layer, (0, 0), rng.uniform(0.5, 1.5))[..., None]
    return img * (1 - layer) + 255.0 * layer


def hairs(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Thin dark curves across the image (hair in dermoscopy, strands in endoscopy), in a copy."""
    h, w = img.shape[:2]
    out = img.copy()
    colour = tuple(float(c) for c in rng.uniform(10, 90, 3))
    for _ in range(int(rng.integers(1, 40))):
        start = rng.uniform(0, [w, h])
        direction = rng.uniform(0, 2 * np.pi)
        turn = np.cumsum(rng.normal(0, 0.08, 12)) + direction
        steps = rng.uniform(5, 25) * np.stack([np.cos(turn), np.sin(turn)], 1)
        pts = start + np.cumsum(steps, axis=0)
        cv2.polylines(out, [pts.astype(np.int32).reshape(-1, 1, 2)], False, colour, 1, cv2.LINE_AA)
    return out


def text_overlay(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Burnt-in annotation: random letters and digits near a border, in a copy of the
    (H, W, 3) uint8 ``img`` (OpenCV draws text into 8-bit images only)."""
    h, w = img.shape[:2]
    out = img.copy()
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/:. "))
    for _ in range(int(rng.integers(1, 4))):
        text = "".join(rng.choice(alphabet, int(rng.integers(3, 12))))
        scale = rng.uniform(0.25, 0.6) * max(h, w) / 300
        x = int(rng.uniform(0, 0.3) * w) if rng.random() < 0.5 else int(rng.uniform(0.5, 0.8) * w)
        y = int(rng.uniform(0.03, 0.15) * h) if rng.random() < 0.5 else int(rng.uniform(0.85, 0.98) * h)
        grey = float(rng.uniform(180, 255))
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (grey, grey, grey), 1, cv2.LINE_AA)
    return out


def jpeg(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 ``img`` after a JPEG round trip at a random quality in 15..90."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 91))])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else img
