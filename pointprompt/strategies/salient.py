"""The strategies that prompt the model once and sample in a saliency map: the study's
``saliency`` (olivesgatech/PointPrompt ``main.py`` and
``intelligent_point_selection.get_saliency_point``) and our earlier ``saliency-oracle``
(sampled inside the ground truth), with their shared draw and ``predict=`` checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from segprompt.errors import ConfigError, PromptError
from segprompt.prompts import Points

from pointprompt.strategies.base import _background, _cycle, _grey, _negative_region, _pick, _xy, check_mask, interleave, register_strategy


def _box_slices(region: np.ndarray, pad: int) -> tuple[slice, slice]:
    """PointPrompt's saliency crop: rows ``[max(min - pad, 0), min(max + pad, H))`` and the same for
    columns, min / max being the region's extreme pixel indices (``get_saliency_point``)."""
    rows, cols = np.nonzero(region)
    h, w = region.shape
    return slice(max(int(rows.min()) - pad, 0), min(int(rows.max()) + pad, h)), slice(max(int(cols.min()) - pad, 0), min(int(cols.max()) + pad, w))


def _random_subbox(background: np.ndarray, rng: np.random.Generator, tries: int) -> tuple[slice, slice]:
    """PointPrompt's exclusion crop (``get_saliency_point(mode='ex')``): inside the bounding box
    (min..max) of ``background``, a random box whose start is uniform in [min, max - 10) and end
    uniform in [start + 10, max), each side lengthened by 100 px when shorter than 100 and that
    stays inside the image, redrawn until at least 10% of it is background. After ``tries``
    draws (or when the background's box is under 11 px wide, where the study fails) the
    background's whole bounding box is used."""
    rows, cols = np.nonzero(background)
    h, w = background.shape
    (r0, r1), (c0, c1) = (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))

    def side(lo: int, hi: int, size: int) -> tuple[int, int]:
        a = int(rng.integers(lo, hi - 10))
        b = int(rng.integers(a + 10, hi))
        if b - a < 100 and b + 100 < size:
            b += 100
        return a, b

    if c1 - 10 > c0 and r1 - 10 > r0:
        for _ in range(tries):
            x0, x1 = side(c0, c1, w)
            y0, y1 = side(r0, r1, h)
            if background[y0:y1, x0:x1].sum() >= 0.1 * (x1 - x0) * (y1 - y0):
                return slice(y0, y1), slice(x0, x1)
    return slice(r0, r1 + 1), slice(c0, c1 + 1)


@register_strategy("saliency")
@dataclass
class SaliencyStrategy:
    """PointPrompt's saliency strategy (``main.py`` ``query == 'saliency'`` and
    ``intelligent_point_selection.get_saliency_point``): the ground truth is used only for the
    probe; the points come from the model's mask and a saliency map.

    Called as ``strategy(mask, image, rng, n_pos, n_neg, predict=f)`` (``needs_model`` is True),
    ``f(points) -> bool (H, W)`` being the model's mask for a :class:`Points` prompt (the
    benchmark passes a closure over the segmenter, the cached embedding and its multimask
    policy: ``first`` is the study's ``masks[0]``); without ``predict`` it raises
    :class:`ConfigError`. Steps:

    1. Probe: one uniformly random inclusion point in the gt mask and one exclusion point in the
       gt background; ``predict`` is called with the two, redrawn (at most ``probe_tries`` = 10
       calls) while the predicted mask P is empty.
    2. Positives: the crop is P's bounding box padded by ``pad`` = 10 px (clipped; the whole
       image if P stayed empty); its saliency map S (one per call); n_positive pixels drawn
       uniformly without replacement from the salient pixels (S above its crop mean) that lie
       in P; if too few, then other pixels of P, then salient crop pixels, then any crop pixel.
    3. Negatives: the crop is a random sub-box of the predicted background's bounding box
       holding at least 10% predicted background (:func:`_random_subbox`, the study's rule);
       drawn the same way from its salient pixels outside P, then other pixels outside P (first
       in the box, then anywhere), then salient box pixels, then any box pixel.
    4. The result is the probe inclusion point then the n_positive points, and the probe
       exclusion point then the n_negative points (``seed_points = 1``, as the study keeps
       ``inc_init`` / ``ex_init``); sampled points never repeat a probe point.

    The saliency model: the study ran VST (a salient-object network, weights downloaded, the
    model rebuilt on every call) and kept pixels with saliency > 0; here a classical map with no
    model (:func:`~pointprompt.saliency.saliency_map`, ``method`` = frequency-tuned by default)
    and "salient" = above its crop mean. Because a classical map marks whatever colour is rare
    in the crop (often the background around the object) rather than the salient *object*,
    the draw is restricted to P (``within="prediction"``, the default) as the stand-in for VST's
    object mask; ``within="crop"`` is the study's literal rule (salient pixels of the crop,
    P not consulted). Also not copied: the study resized VST's output to (width, height)
    (transposed for non-square crops) and offset inclusion points by ``min - 10`` even where the
    crop was clipped at the image edge. Without an image the saliency is 0 and the draws are
    uniform over the tiers. Our earlier rule (points drawn inside the ground truth, weighted by
    saliency) is ``saliency-oracle``.
    """

    pad: int = 10
    within: str = "prediction"
    method: str = "frequency-tuned"
    probe_tries: int = 10
    box_tries: int = 100
    name: str = "saliency"
    kind: str = "placement"
    needs_model: bool = True
    seed_points: int = 1

    def __call__(self, mask, image, rng, n_positive, n_negative, *, predict: Callable[[Points], np.ndarray] | None = None) -> Points:
        _check_predict(predict, self.method)
        if self.within not in ("prediction", "crop"):
            raise ConfigError(f"saliency: within must be 'prediction' or 'crop', got {self.within!r}")
        m = check_mask(mask, n_positive)
        if n_negative > 0:
            _background(m)
        _grey(image, m)  # checks the image size
        pred = np.zeros_like(m)
        for _ in range(max(1, self.probe_tries)):
            p_pos = _pick(*np.nonzero(m), rng, 1) if m.any() else np.zeros((0, 2), np.float32)
            p_neg = _pick(*np.nonzero(~m), rng, 1) if not m.all() else np.zeros((0, 2), np.float32)
            pred = _call_predict(predict, interleave(p_pos, p_neg), m.shape)
            if pred.any():
                break
        taken = np.zeros(m.shape, bool)
        for x, y in np.concatenate([p_pos, p_neg]).astype(np.int64):
            taken[y, x] = True
        pos = neg = np.zeros((0, 2), np.float32)
        if n_positive > 0:
            crop = _box_slices(pred, self.pad) if pred.any() else (slice(None), slice(None))
            pos = np.concatenate([p_pos, self._draw(image, crop, pred, taken, rng, n_positive)])
        if n_negative > 0:
            bg = ~pred
            box = _random_subbox(bg, rng, self.box_tries) if bg.any() else (slice(None), slice(None))
            neg = np.concatenate([p_neg, self._draw(image, box, bg, taken, rng, n_negative)])
        return interleave(pos, neg)

    def _draw(self, image, crop: tuple[slice, slice], region: np.ndarray, taken: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
        """n pixels (x, y), uniform without replacement, from the tiers of step 2 / 3."""
        from pointprompt.saliency import saliency_map

        in_crop = np.zeros(region.shape, bool)
        in_crop[crop] = True
        salient = np.zeros(region.shape, bool)
        if image is not None:
            sal = saliency_map(np.asarray(image)[crop], self.method)
            salient[crop] = sal > sal.mean()
        free = ~taken
        if self.within == "prediction":
            tiers = [salient & region, in_crop & region, region, salient, in_crop]
        else:
            tiers = [salient, in_crop]
        # a probe pixel is reused only when nothing else is left (the last tier)
        return _draw_tiers([t & free for t in tiers] + [in_crop], np.ones(region.shape, np.float32), rng, n)


def _check_predict(predict: Any, method: str) -> None:
    from pointprompt.saliency import SALIENCY_METHODS

    if predict is None:
        raise ConfigError(
            "the saliency strategy prompts the model once: call it with predict=<function Points -> bool (H, W) mask> "
            "(the point benchmark passes one for strategies whose needs_model is True)"
        )
    if method not in SALIENCY_METHODS:
        raise ConfigError(f"unknown saliency method {method!r}; use one of {', '.join(SALIENCY_METHODS)}")


def _call_predict(predict: Callable[[Points], np.ndarray], points: Points, shape: tuple[int, ...]) -> np.ndarray:
    """The model's mask for ``points`` as bool (H, W); a wrong shape raises :class:`ConfigError`."""
    pred = np.asarray(predict(points))
    while pred.ndim > 2 and pred.shape[0] == 1:
        pred = pred[0]
    if pred.shape != shape:
        raise ConfigError(f"predict() must return one (H, W) mask of the image's size {shape}, got shape {pred.shape}")
    return pred.astype(bool)


def _draw_tiers(tiers: list[np.ndarray], weights: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct pixels (x, y) drawn without replacement with probability proportional to
    ``weights`` (+1e-6), from the first bool region of ``tiers``, then (if it runs out) from
    the next ones; the distinct pixels repeat only when all tiers together are too small."""
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    taken = np.zeros(weights.size, bool)
    chosen: list[np.ndarray] = []
    got = 0
    flat_w = weights.ravel().astype(np.float64)
    for tier in tiers:
        idx = np.flatnonzero(tier.ravel() & ~taken)
        k = min(n - got, len(idx))
        if k <= 0:
            continue
        p = flat_w[idx] + 1e-6
        sel = rng.choice(idx, size=k, replace=False, p=p / p.sum())
        taken[sel] = True
        chosen.append(sel)
        got += k
        if got == n:
            break
    if not chosen:
        raise PromptError("no pixel available to place a point")
    rows, cols = np.unravel_index(np.concatenate(chosen), weights.shape)
    return _cycle(_xy(np.stack([rows, cols], axis=1)), n)


@register_strategy("saliency-oracle")
@dataclass
class SaliencyOracleStrategy:
    """Our earlier saliency rule, which samples inside the *ground truth* (the study's rule, which
    does not, is ``saliency``): prompt the model once, then sample in a saliency map of the crop.

    Called as ``strategy(mask, image, rng, n_pos, n_neg, predict=f)`` (``needs_model`` is True),
    ``f(points) -> bool (H, W)`` being the model's mask for a :class:`Points` prompt (the
    benchmark passes a closure over the segmenter and the cached image embedding); without
    ``predict`` it raises :class:`ConfigError`. Steps:

    1. ``predict`` is called exactly once, with one uniformly random inclusion point in the
       gt mask and one exclusion point outside it (only the one that exists, for an empty or
       full mask).
    2. The crop is the predicted mask's bounding box (the gt box if the prediction is empty),
       padded by ``pad`` (10%) of its height / width on each side, clipped to the image.
    3. Its saliency map is computed once, with no model: by default frequency-tuned salient
       region detection (Achanta et al., CVPR 2009), which marks whole regions of unusual
       colour, the closest classical stand-in for the study's salient-object network (VST);
       ``method="spectral-residual"`` (Hou & Zhang, CVPR 2007; numpy FFT of the grey crop at
       64 px) marks small spots instead (on 32 synthetic lesions with the classical segmenter,
       1 + 1 points: mean IoU 0.61 frequency-tuned against 0.40 spectral residual).
    4. Positives: drawn without replacement with probability proportional to the saliency
       from the salient pixels (saliency above its crop mean) inside the gt mask; if too few,
       then from the other gt pixels of the crop, then from any gt pixel.
       Negatives: the same from salient crop pixels outside the mask, then other crop
       background pixels, then the background ring (``ring`` x diameter), then any background.

    The probe points are not part of the result. Without an image (``image=None``) or on a flat
    crop the saliency is 0 everywhere and the draw is uniform. Deliberate differences from the
    study: a classical saliency map instead of the VST network (whose weights the study
    downloaded and whose model it rebuilt on every call: here nothing is built per call);
    negatives prefer salient background near the object. Spectral residual saliency is a
    small-spot detector: inside a large smooth object it is highest near the object's edge and
    on specks, so with it this strategy's positives tend to lie there.
    """

    pad: float = 0.1
    ring: float = 0.1
    method: str = "frequency-tuned"
    name: str = "saliency-oracle"
    seed_points: int = 0
    kind: str = "placement"
    needs_model: bool = True

    def __call__(self, mask, image, rng, n_positive, n_negative, *, predict: Callable[[Points], np.ndarray] | None = None) -> Points:
        from pointprompt.saliency import saliency_map

        _check_predict(predict, self.method)
        m = check_mask(mask, n_positive)
        neg_region = _negative_region(m, self.ring) if n_negative > 0 else None
        grey = _grey(image, m)
        probe = interleave(_pick(*np.nonzero(m), rng, 1) if m.any() else np.zeros((0, 2)), _pick(*np.nonzero(~m), rng, 1) if not m.all() else np.zeros((0, 2)))
        pred = _call_predict(predict, probe, m.shape)
        box = pred if pred.any() else (m if m.any() else np.ones_like(m))
        rows, cols = np.nonzero(box)
        (r0, r1), (c0, c1) = (rows.min(), rows.max() + 1), (cols.min(), cols.max() + 1)
        pr, pc = int(math.ceil(self.pad * (r1 - r0))), int(math.ceil(self.pad * (c1 - c0)))
        crop = (slice(max(0, r0 - pr), min(m.shape[0], r1 + pr)), slice(max(0, c0 - pc), min(m.shape[1], c1 + pc)))
        sal = np.zeros(m.shape, np.float32)
        if grey is not None:  # one saliency map per call, of the crop only
            sal[crop] = saliency_map(np.asarray(image)[crop], self.method)
        in_crop = np.zeros(m.shape, bool)
        in_crop[crop] = True
        salient = in_crop & (sal > sal[crop].mean())
        pos = _draw_tiers([salient & m, in_crop & m, m], sal, rng, n_positive) if n_positive > 0 else np.zeros((0, 2), np.float32)
        neg = np.zeros((0, 2), np.float32)
        if neg_region is not None:
            neg = _draw_tiers([salient & ~m, in_crop & ~m, neg_region, ~m], sal, rng, n_negative)
        return interleave(pos, neg)
