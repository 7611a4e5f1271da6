"""The randomised mode of the synthetic data: domain randomisation for promptable segmentation.

One image holds an *object of interest* (the mask) among 0-4 distractor objects on a textured
background. Shapes (:mod:`segprompt.data.shapes`) range from smooth blobs to thin, branching,
holed and lobed objects, some touching the border or each other; textures, colours and light
(:mod:`segprompt.data.procedural`) are drawn independently for the background and each object,
so neither colour, texture nor shape alone identifies the object: what stays true in every
image is that the object is a coherent region with its own statistics, which is what a
promptable model should learn. Imaging artefacts follow: 3-D shading, soft or rimmed borders,
illumination fields, vignetting, instrument apertures, specular highlights, hairs, burnt-in
text, speckle, blur, noise and JPEG coding; a third of the images are grey.

:func:`make_randomised` draws one image; ``SyntheticLesions(style="randomised")`` (and the
registry name ``synthetic-random``) is the seeded dataset: sample ``i`` of seed ``s`` depends on
``(s, i)`` alone. About 10-20 ms per 300-pixel image on one CPU core, so it can be generated
on the fly. Not medical data; it supports no clinical claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from segprompt.data import procedural as pr
from segprompt.data.shapes import random_object


@dataclass(frozen=True)
class RandomisedSettings:
    """The ranges of the randomised generator.

    ``area`` is the object's share of the image area (log-uniform), ``long_side`` the image's
    longer side in pixels and ``aspect`` its width / height; the medical sets of the registry
    span about these ranges (Kvasir-SEG polyps 2-35 % of the image, BUSI lesions 0.5-33 %,
    PH2 lesions 8-54 %). ``p_grey``: share of grey images; ``max_distractors``: other objects.
    ``p_lesion_look``: share of images drawn instead from the three fixed looks of
    ``synthetic-lesions`` (:func:`segprompt.data.synthetic.make_lesion`, a random look, the
    image's size); ``p_rayleigh``: share of the *grey* images given fully developed speckle
    (unsmoothed Rayleigh noise, multiplicative, as B-mode ultrasound has).
    """

    area: tuple[float, float] = (0.008, 0.55)
    long_side: tuple[int, int] = (224, 384)
    aspect: tuple[float, float] = (0.75, 1.5)
    p_grey: float = 0.33
    max_distractors: int = 4
    min_pixels: int = 30
    p_inner: float = 0.35
    p_raised: float = 0.25
    p_lesion_look: float = 0.0
    p_rayleigh: float = 0.0


#: named versions of the generator: ``v1`` trained sam-tiny's first phase (objects 0.4-50 % of
#: the image, no inner structure), ``v2`` its second (0.8-55 %, and in 35 % of the images the
#: object holds parts of another colour, so a click on a part still means the whole object),
#: ``v3`` its third (v2, and in 25 % of the images the object is *raised*: the background's own
#: surface, barely tinted, told apart only by its shading, a cast shadow and highlights).
#: ``v4`` (v3, and 15 % of the images in the three fixed lesion looks, and half of the grey
#: images with fully developed speckle) was added when the v3 model failed on speckled grey
#: images: it took the surrounding speckle with a dark lesion.
#: A version's samples stay the same for a seed: a probability of 0 draws nothing.
VARIANTS: dict[str, RandomisedSettings] = {
    "v1": RandomisedSettings(area=(0.004, 0.5), p_inner=0.0, p_raised=0.0),
    "v2": RandomisedSettings(p_raised=0.0),
    "v3": RandomisedSettings(),
    "v4": RandomisedSettings(p_lesion_look=0.15, p_rayleigh=0.5),
}
DEFAULT_VARIANT = "v3"
DEFAULT_SETTINGS = VARIANTS[DEFAULT_VARIANT]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _tint(rng: np.random.Generator, grey: bool) -> np.ndarray:
    """(3,) per-channel weights of a texture's amplitude (1 for grey images)."""
    return np.ones(3, np.float32) if grey else rng.uniform(0.5, 1.2, 3).astype(np.float32)


def _surface(rng: np.random.Generator, shape: tuple[int, int], colour: np.ndarray, grey: bool, amplitude: float | None = None) -> np.ndarray:
    """(H, W, 3) float32: ``colour`` plus a random texture of a random amplitude."""
    amplitude = amplitude if amplitude is not None else _log_uniform(rng, 2.0, 45.0)
    tex = pr.random_texture(rng, shape)
    return colour[None, None] + tex[..., None] * amplitude * _tint(rng, grey)[None, None]


def _object_colour(rng: np.random.Generator, background: np.ndarray, grey: bool) -> np.ndarray:
    """(3,) float32 colour of an object relative to ``background``: a contrast from barely
    visible to stark, mostly darker (lesions, pigment), sometimes brighter or another hue."""
    contrast = _log_uniform(rng, 6.0, 140.0)
    u = rng.random()
    if u < 0.5:
        direction = -np.ones(3, np.float32)  # darker
    elif u < 0.75:
        direction = np.ones(3, np.float32)  # brighter
    else:
        direction = rng.standard_normal(3).astype(np.float32)  # another hue
    if grey:
        direction = np.full(3, np.sign(direction.mean()) or 1.0, np.float32)
    direction = direction / max(1e-6, float(np.linalg.norm(direction) / np.sqrt(3)))
    return np.clip(background + contrast * direction * (rng.uniform(0.7, 1.3, 3) if not grey else 1.0), 0, 255).astype(np.float32)


def _shading(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """(H, W) float32 additive shading of a raised (or sunken) object lit from one side: the
    gradient of a smoothed height field (the distance to the border) along a light direction."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    height = np.sqrt(dist)
    height = cv2.GaussianBlur(height, (0, 0), 2.0)
    gy, gx = np.gradient(height)
    a = rng.uniform(0, 2 * np.pi)
    shade = gx * np.cos(a) + gy * np.sin(a) - 0.3 * (np.abs(gx) + np.abs(gy))
    scale = float(np.abs(shade).max())
    return (shade / scale if scale > 1e-6 else shade) * rng.uniform(10, 60)


def _alpha(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """(H, W) float32 opacity of an object: its mask with a border blurred by 0.3-4 pixels."""
    sigma = _log_uniform(rng, 0.3, 4.0)
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, background: np.ndarray, grey: bool, shaded: bool) -> np.ndarray:
    """``img`` with one object painted over it in its own colour, texture, shading and border."""
    h, w = mask.shape
    colour = _object_colour(rng, background, grey)
    same_texture = rng.random() < 0.25  # boundary only from colour / shading
    surface = _surface(rng, (h, w), colour, grey, amplitude=rng.uniform(2, 10) if same_texture else None)
    if shaded:
        surface = surface + _shading(rng, mask)[..., None]
    alpha = _alpha(rng, mask)[..., None]
    out = img * (1 - alpha) + surface * alpha
    if rng.random() < 0.25:  # a rim (cyst wall, pigment ring, fold): a line along the border
        ring = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(np.float32)
        ring = cv2.GaussianBlur(ring, (0, 0), rng.uniform(0.5, 2.0))[..., None]
        out = out + ring * rng.choice([-1.0, 1.0]) * rng.uniform(20, 90)
    return out


def _inner_parts(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, grey: bool) -> np.ndarray:
    """``img`` with 1-3 parts of another colour and texture painted inside the object ``mask``
    (a polyp's darker core, a lesion's pigment island): the object stays one object."""
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3) > 2
    ys, xs = np.nonzero(inside)
    if len(xs) < 20:
        return img
    base = img[inside].mean(axis=0)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(xs)))
        part, _ = random_object(rng, mask.shape, float(mask.mean()) * rng.uniform(0.05, 0.4), shape=str(rng.choice(["blob", "ellipse", "lobed"])), centre=(float(xs[k]), float(ys[k])))
        part &= inside
        if not part.any():
            continue
        direction = rng.standard_normal(3).astype(np.float32) if not grey else np.full(3, rng.choice([-1.0, 1.0]), np.float32)
        colour = np.clip(base + _log_uniform(rng, 5.0, 60.0) * direction / max(1e-6, float(np.abs(direction).max())), 0, 255)
        alpha = _alpha(rng, part)[..., None]
        img = img * (1 - alpha) + _surface(rng, mask.shape, colour.astype(np.float32), grey) * alpha
    return img


def _raised(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, grey: bool) -> np.ndarray:
    """``img`` with the region ``mask`` raised out of the surface (a sessile polyp, a nodule
    under the skin): the surface goes on through it, tinted by a few grey levels at most; the
    object shows by its shading, a shadow cast on one side and, often, highlights on it."""
    h, w = mask.shape
    tint = rng.standard_normal(3).astype(np.float32) if not grey else np.full(3, rng.choice([-1.0, 1.0]), np.float32)
    tint *= _log_uniform(rng, 1.0, 12.0) / max(1e-6, float(np.abs(tint).max()))
    alpha = _alpha(rng, mask)[..., None]
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    radius = max(1.0, float(dist.max()))
    height = cv2.GaussianBlur(np.sqrt(np.clip(dist / radius, 0, 1)), (0, 0), max(1.0, 0.15 * radius))
    gy, gx = np.gradient(height)
    a = rng.uniform(0, 2 * np.pi)
    shade = gx * np.cos(a) + gy * np.sin(a)
    shade = shade / max(1e-6, float(np.abs(shade).max())) * rng.uniform(30, 80)
    out = img + alpha * (tint[None, None] + shade[..., None])
    shift = rng.uniform(2, 8)
    moved = np.roll(np.roll(mask, int(round(shift * np.sin(a))), axis=0), int(round(shift * np.cos(a))), axis=1)
    shadow = cv2.GaussianBlur((moved & ~mask).astype(np.float32), (0, 0), rng.uniform(1.0, 3.0))
    out = out * (1 - rng.uniform(0.2, 0.6) * shadow[..., None])
    if rng.random() < 0.6:
        out = pr.specular_highlights(rng, out, where=mask, count=int(rng.integers(2, 15)))
    return out


def _acoustic_shadow(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Posterior shadowing (or enhancement) under an object, as in ultrasound."""
    h, w = mask.shape
    cols = mask.any(axis=0)
    if not cols.any():
        return img
    bottom = np.where(cols, h - 1 - np.argmax(mask[::-1], axis=0), h)
    below = (np.arange(h)[:, None] > bottom[None, :]) & cols[None, :]
    field = cv2.GaussianBlur(below.astype(np.float32), (0, 0), rng.uniform(2, 6))[..., None]
    return img * (1 + field * rng.uniform(-0.5, 0.4))


def make_randomised(rng: np.random.Generator, size: tuple[int, int] | None = None, settings: RandomisedSettings = DEFAULT_SETTINGS) -> tuple[np.ndarray, np.ndarray, dict]:
    """One randomised image: ((H, W, 3) uint8 RGB, (H, W) bool mask of the object of interest,
    meta dict: ``shape``, ``grey``, ``distractors``, ``area``). ``size`` (H, W) or None for a
    random size in ``settings``. The mask is never empty (at least ``min_pixels`` pixels)."""
    if size is None:
        long_side = int(rng.integers(*settings.long_side))
        aspect = rng.uniform(*settings.aspect)
        size = (long_side, int(long_side * aspect)) if aspect < 1 else (int(long_side / aspect), long_side)  # aspect = W / H
    h, w = int(size[0]), int(size[1])
    if settings.p_lesion_look > 0 and rng.random() < settings.p_lesion_look:
        from segprompt.data.synthetic import LESION_STYLES, make_lesion

        style = str(rng.choice(LESION_STYLES))
        image, mask = make_lesion(rng, (h, w), style)  # type: ignore[arg-type]
        return image, mask, {"shape": f"lesion-{style}", "grey": style == "ultrasound", "distractors": 0, "area": float(mask.mean())}
    grey = bool(rng.random() < settings.p_grey)
    background = pr.random_colour(rng, grey)
    img = _surface(rng, (h, w), background, grey)
    if rng.random() < 0.35:  # a large second region (another organ, a fold, a layer)
        region, _ = random_object(rng, (h, w), rng.uniform(0.15, 0.5), shape=str(rng.choice(["blob", "lobed", "polygon"])))
        img = _paint(rng, img, region, background, grey, shaded=rng.random() < 0.5)

    area = _log_uniform(rng, *settings.area)
    target, shape = random_object(rng, (h, w), area)
    n_distractors = int(rng.integers(0, settings.max_distractors + 1))
    in_front = []
    for _ in range(n_distractors):
        d_area = _log_uniform(rng, 0.002, max(0.003, min(0.25, area * 2)))
        touching = rng.random() < 0.3
        centre = None
        if touching and target.any():  # a neighbour that touches the object's border
            ys, xs = np.nonzero(cv2.morphologyEx(target.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)))
            if len(xs):
                k = rng.integers(len(xs))
                centre = (float(xs[k]), float(ys[k]))
        d_mask, _ = random_object(rng, (h, w), d_area, centre=centre)
        if rng.random() < 0.25:
            in_front.append(d_mask)
        else:
            img = _paint(rng, img, d_mask, background, grey, shaded=rng.random() < 0.4)
    if settings.p_raised > 0 and rng.random() < settings.p_raised:
        img = _raised(rng, img, target, grey)
    else:
        img = _paint(rng, img, target, background, grey, shaded=rng.random() < 0.6)
        if settings.p_inner > 0 and rng.random() < settings.p_inner:
            img = _inner_parts(rng, img, target, grey)
    if grey and rng.random() < 0.3:
        img = _acoustic_shadow(rng, img, target)
    for d_mask in in_front:  # occluders cut the object of interest
        img = _paint(rng, img, d_mask, background, grey, shaded=rng.random() < 0.4)
        target = target & ~d_mask

    if rng.random() < 0.7:
        img = img * pr.illumination(rng, (h, w))[..., None]
    if rng.random() < 0.4:
        img = img * pr.vignette(rng, (h, w))[..., None]
    if rng.random() < 0.3:  # multiplicative speckle
        img = img * (1 + 0.25 * rng.uniform(0.3, 1.0) * pr.speckle(rng, (h, w))[..., None])
    if grey and settings.p_rayleigh > 0 and rng.random() < settings.p_rayleigh:  # fully developed speckle, pixel by pixel
        strength = rng.uniform(0.2, 0.5)
        img = img * ((1 - strength) + strength * pr.rayleigh_speckle(rng, (h, w))[..., None])
    if rng.random() < 0.35:
        img = pr.specular_highlights(rng, img, where=target if rng.random() < 0.5 else None)
    if rng.random() < 0.15:
        img = pr.hairs(rng, img)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), _log_uniform(rng, 0.4, 2.0))
    img = img + rng.normal(0, _log_uniform(rng, 0.5, 12.0), img.shape).astype(np.float32)
    if rng.random() < 0.35:  # the instrument's aperture: black outside, object cut to it
        fov = pr.field_of_view(rng, (h, w))
        if (target & fov).sum() >= settings.min_pixels:
            img = img * fov[..., None]
            target = target & fov
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        out = pr.text_overlay(rng, out)
    if grey or rng.random() < 0.1:  # grey images stay grey whatever the artefacts' colours
        out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    if rng.random() < 0.4:
        out = pr.jpeg(rng, out)
    target = _keep_largest(target)
    if target.sum() < settings.min_pixels:  # occluded or cut away: fall back to a plain blob
        return make_randomised(rng, (h, w), settings)
    return np.ascontiguousarray(out), target, {"shape": shape, "grey": grey, "distractors": n_distractors, "area": float(target.mean())}


def _keep_largest(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` (an occluder can split the object)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)
