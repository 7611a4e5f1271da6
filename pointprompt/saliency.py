"""Classical image maps used by the point strategies: grey conversion, local entropy, saliency.

No model, no download: these are the image cues that PointPrompt's entropy and saliency
strategies need, computed with numpy / scipy / OpenCV / scikit-image.

* :func:`to_grey` - the one conversion from an image (RGB, RGBA, grey, any dtype) to uint8 grey.
* :func:`local_entropy` - grey-level Shannon entropy (bits) of the square patch around every pixel;
  :func:`patch_entropy` - the same at chosen pixels only (what the entropy strategy needs).
* :func:`spectral_residual_saliency` - the spectral-residual saliency map of Hou & Zhang,
  "Saliency Detection: A Spectral Residual Approach", CVPR 2007 (a detector of small
  "proto-objects": it lights up spots, dots and thin structures that stand out from their
  surroundings, not large smooth regions).
* :func:`frequency_tuned_saliency` - Achanta et al., "Frequency-tuned Salient Region
  Detection", CVPR 2009 (colour distance to the mean: whole regions that differ from the rest).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from segprompt.errors import DataError

__all__ = ["to_grey", "local_entropy", "patch_entropy", "spectral_residual_saliency", "frequency_tuned_saliency", "saliency_map", "SALIENCY_METHODS"]


def to_grey(image: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (H, W) grey version of ``image``.

    ``image`` is (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA (alpha ignored). uint8 input
    is used as is (RGB -> grey with OpenCV's ITU-R 601 weights); any other dtype is min-max
    scaled to 0..255 (a constant image becomes all zeros). ``shape``, when given, is the (H, W)
    the image must have (that of the mask it goes with); a mismatch raises :class:`DataError`.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise DataError(f"an image must be (H, W) or (H, W, 3), got shape {img.shape}")
    if shape is not None and tuple(img.shape[:2]) != tuple(shape):
        raise DataError(f"image size {img.shape[:2]} does not match the mask size {tuple(shape)}; give the image the mask belongs to")
    if img.dtype != np.uint8:
        f = img.astype(np.float64)
        if not np.isfinite(f).all():
            f = np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(f.min()), float(f.max())
        f = (f - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(f)
        img = np.round(f).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(img)


def local_entropy(grey: np.ndarray, size: int = 9) -> np.ndarray:
    """Shannon entropy (bits, 256 grey levels) of the ``size`` x ``size`` patch centred on each pixel.

    ``grey`` is uint8 (H, W) (see :func:`to_grey`). Patches are clipped at the image border
    (only pixels inside the image are counted), as :func:`skimage.filters.rank.entropy` does.
    Returns float64 (H, W) in [0, log2(size**2)].
    """
    from skimage.filters.rank import entropy  # local import: scikit-image is slow to import

    g = np.asarray(grey)
    if g.dtype != np.uint8 or g.ndim != 2:
        g = to_grey(g)
    return entropy(g, np.ones((size, size), np.uint8)).astype(np.float64)


def patch_entropy(grey: np.ndarray, rc: np.ndarray, size: int = 9, chunk: int = 8192, border: str = "clip") -> np.ndarray:
    """Shannon entropy (bits, 256 grey levels) of the ``size`` x ``size`` patch of each pixel ``rc``
    (M, 2) (row, col), at O(M size^2) cost instead of a whole-image filter. Returns float64 (M,).

    ``border`` places the patch:

    * ``"clip"``: centred on the pixel, clipped at the image border; equal to
      ``local_entropy(grey, size)[rc[:, 0], rc[:, 1]]``;
    * ``"shift"``: PointPrompt's ``select_grid`` (``point_sampling/point_selection.py``): the
      patch starts ``size // 2`` rows / columns before the pixel, moved to 0 where that is
      negative (so it keeps its full size at the top / left edge), and is cut at the bottom /
      right edge.

    Vectorised: each patch's values are sorted, and with c(v) the count of value v among its n
    pixels, H = log2(n) - (1/n) sum over the pixels of log2 c(value).
    """
    if border not in ("clip", "shift"):
        raise ValueError(f"border must be 'clip' or 'shift', got {border!r}")
    g = np.asarray(grey)
    if g.dtype != np.uint8 or g.ndim != 2:
        g = to_grey(g)
    rc = np.asarray(rc, np.int64).reshape(-1, 2)
    h = size // 2
    if border == "clip":
        padded = np.pad(g.astype(np.int16), h, constant_values=-1)  # -1: outside the image
        start = rc
    else:
        padded = np.pad(g.astype(np.int16), ((0, size), (0, size)), constant_values=-1)
        start = np.maximum(rc - h, 0)
    dr, dc = (a.ravel() for a in np.mgrid[0:size, 0:size])
    out = np.empty(len(rc), np.float64)
    for lo in range(0, len(rc), chunk):
        r, c = start[lo : lo + chunk, 0], start[lo : lo + chunk, 1]
        vals = np.sort(padded[r[:, None] + dr, c[:, None] + dc], axis=1)
        new_run = np.ones(vals.shape, bool)
        new_run[:, 1:] = vals[:, 1:] != vals[:, :-1]
        run = np.cumsum(new_run.ravel()) - 1  # a run = one value in one patch
        count = np.bincount(run)[run].reshape(vals.shape)
        valid = vals >= 0
        n = valid.sum(1)
        out[lo : lo + chunk] = np.log2(n) - (np.log2(count) * valid).sum(1) / n
    return out


def spectral_residual_saliency(image: np.ndarray, *, work_size: int = 64, average: int = 3, sigma: float = 2.5) -> np.ndarray:
    """Spectral-residual saliency map (Hou & Zhang, CVPR 2007), float32 (H, W) scaled to [0, 1].

    The image (any form :func:`to_grey` takes) is converted to grey and resized so that its
    longer side is ``work_size`` px (the paper works at 64 px). With ``F`` its 2-D Fourier
    transform, the log amplitude ``L = log|F|`` minus its local average (a ``average`` x
    ``average`` box filter, wrapping around as the spectrum is periodic) is the *spectral
    residual* ``R``; the saliency is ``|IFFT(exp(R + i angle(F)))|**2``, smoothed by a Gaussian
    of ``sigma`` px (at the working size), resized back to (H, W) and min-max scaled. A flat
    image (no structure) gives all zeros. (Reflection-padding the image against the FFT's
    wrap-around was tried and rejected: the mirrored copies interfere in the spectrum and
    leave a broad blob at the image centre instead of the salient spot.)
    """
    g = to_grey(image).astype(np.float32)
    h, w = g.shape
    if h * w == 0:
        return np.zeros((h, w), np.float32)
    scale = work_size / max(h, w)
    wh, ww = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    small = cv2.resize(g, (ww, wh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR) if (wh, ww) != (h, w) else g
    small = small.astype(np.float64) / 255.0
    if np.ptp(small) < 1e-12:
        return np.zeros((h, w), np.float32)
    spectrum = np.fft.fft2(small)
    log_amp = np.log(np.abs(spectrum) + 1e-12)
    residual = log_amp - ndimage.uniform_filter(log_amp, size=average, mode="wrap")
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    if sigma > 0:
        sal = ndimage.gaussian_filter(sal, sigma, mode="nearest")
    sal = sal.astype(np.float32)
    if sal.shape != (h, w):
        sal = cv2.resize(sal, (w, h), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(sal.min()), float(sal.max())
    return (sal - lo) / (hi - lo) if hi > lo else np.zeros((h, w), np.float32)


def frequency_tuned_saliency(image: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
    """Frequency-tuned saliency (Achanta, Hemami, Estrada & Suesstrunk, CVPR 2009), float32 (H, W)
    in [0, 1]: the Euclidean distance, in CIE Lab, between each pixel of the slightly blurred
    image (Gaussian, ``sigma`` px) and the image's mean Lab colour, min-max scaled. Grey or
    non-uint8 images go through :func:`to_grey` first. A flat image gives all zeros."""
    img = np.asarray(image)
    if not (img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (3, 4)):
        img = np.repeat(to_grey(img)[..., None], 3, axis=2)
    rgb = np.ascontiguousarray(img[..., :3]).astype(np.float32) / 255.0
    if rgb.shape[0] * rgb.shape[1] == 0:
        return np.zeros(rgb.shape[:2], np.float32)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    blurred = ndimage.gaussian_filter(lab, (sigma, sigma, 0), mode="nearest") if sigma > 0 else lab
    sal = np.linalg.norm(blurred - lab.reshape(-1, 3).mean(0), axis=2).astype(np.float32)
    lo, hi = float(sal.min()), float(sal.max())
    return (sal - lo) / (hi - lo) if hi - lo > 1e-6 else np.zeros(sal.shape, np.float32)


SALIENCY_METHODS = ("spectral-residual", "frequency-tuned")


def saliency_map(image: np.ndarray, method: str = "spectral-residual", **kwargs) -> np.ndarray:
    """The saliency map of ``image`` by ``method`` (one of :data:`SALIENCY_METHODS`)."""
    if method == "spectral-residual":
        return spectral_residual_saliency(image, **kwargs)
    if method == "frequency-tuned":
        return frequency_tuned_saliency(image, **kwargs)
    from segprompt.errors import ConfigError

    raise ConfigError(f"unknown saliency method {method!r}; use one of {', '.join(SALIENCY_METHODS)}")
