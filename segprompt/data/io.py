"""Reading images and masks, and the one function that turns any image into RGB uint8.

Every image at the API boundary is (H, W, 3) uint8 RGB. Medical images come as grayscale,
16-bit, float or with an alpha channel; :func:`to_rgb_uint8` converts them in one documented
way:

* uint8 images are kept as they are (grayscale replicated to 3 channels, alpha dropped);
* other dtypes are scaled to 0..255 by ``normalisation``:
  ``"percentile"`` (default) clips to the 0.5th..99.5th percentiles, ``"minmax"`` uses the full
  range, ``"window"`` clips to ``window=(low, high)`` (e.g. a CT window in Hounsfield units).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from segprompt.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".npy")

Normalisation = Literal["percentile", "minmax", "window"]


def to_rgb_uint8(
    array: np.ndarray,
    normalisation: Normalisation = "percentile",
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Convert a 2-D or 3-D image array of any dtype to (H, W, 3) uint8 RGB.

    Args:
        array: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); any real dtype or bool.
        normalisation: how non-uint8 intensities are mapped to 0..255 (see the module doc).
        window: (low, high) for ``normalisation="window"``.
        percentiles: (low, high) percentiles for ``"percentile"``.
    """
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise DataError(f"an image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"an image must not be empty, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise DataError(f"cannot convert an image of dtype {arr.dtype} to RGB")
        values = arr.astype(np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            raise DataError("image holds no finite values")
        if normalisation == "window":
            if window is None:
                raise DataError("normalisation='window' needs window=(low, high)")
            lo, hi = float(window[0]), float(window[1])
        elif normalisation == "minmax":
            lo, hi = float(values[finite].min()), float(values[finite].max())
        elif normalisation == "percentile":
            lo, hi = (float(v) for v in np.percentile(values[finite], percentiles))
        else:
            raise DataError(f"unknown normalisation {normalisation!r}; use percentile, minmax or window")
        if hi <= lo:
            hi = lo + 1.0
        values = np.where(finite, values, lo)
        arr = np.round(np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _read_array(path: Path) -> np.ndarray:
    """Raw pixel array of ``path`` (no conversion); raises DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc})") from exc
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: a truncated file raises here
            if img.mode == "P":
                # palette images: masks keep their indices, photos become RGB
                return np.array(img)
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return np.array(img).astype(np.uint16)
            if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            if img.mode == "LA":
                img = img.convert("L")
            return np.array(img)
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not an image file that can be read") from exc
    except OSError as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from exc


def read_image(path: str | Path, normalisation: Normalisation = "percentile", window: tuple[float, float] | None = None) -> np.ndarray:
    """Read an image file (PNG, JPEG, BMP, TIFF, GIF, WebP, .npy) as (H, W, 3) uint8 RGB.

    Raises:
        DataError: the file is missing, unreadable, truncated or not an image.
    """
    path = Path(path)
    arr = _read_array(path)
    try:
        return to_rgb_uint8(arr, normalisation=normalisation, window=window)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


def read_mask_array(path: str | Path) -> np.ndarray:
    """Read a mask file as a 2-D integer array (no binarisation). RGB masks use their max channel."""
    path = Path(path)
    arr = _read_array(path)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"{path}: a mask must be 2-D, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def read_binary_mask(path: str | Path, threshold: float | None = None) -> np.ndarray:
    """Read a binary mask as bool (H, W).

    With ``threshold=None`` the mask must hold exactly two values, 0 and one foreground value
    (0/1 or 0/255), else DataError; JPEG masks (which have compression noise) need an explicit
    ``threshold`` (pixels ``> threshold`` are foreground).
    """
    path = Path(path)
    arr = read_mask_array(path)
    if threshold is not None:
        return arr > threshold
    values = np.unique(arr)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0) or (len(values) == 1 and values[0] not in (0, 1, 255)):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise DataError(
            f"{path}: mask is not binary ({len(values)} distinct values: {shown}); "
            "expected 0/1 or 0/255, or pass a threshold"
        )
    return arr > 0


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a bool mask as PNG 0/255, or an integer label map as PNG (uint8 or uint16)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(mask)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.max(initial=0) <= 255 and arr.min(initial=0) >= 0:
        arr = arr.astype(np.uint8)
    else:
        arr = arr.astype(np.uint16)
    Image.fromarray(arr).save(path)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write (H, W, 3) uint8 RGB to ``path`` (format from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_rgb_uint8(image)).save(path)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; DataError naming the file (and line / column) for every failure."""
    import json

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fp:
            return json.load(fp)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: {what} not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
