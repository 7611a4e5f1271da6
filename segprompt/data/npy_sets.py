"""Image sets stored as two NumPy arrays: ``samples.npy`` (images) and ``labels.npy`` (masks).

This is how the PointPrompt study ships its 16 image sets (``<root>/<set>/samples.npy`` and
``labels.npy``, 400 images each); sample ids are the indices ``"0"``.. ``"399"``, which is how
its human prompt data refers to images.

Image conversion follows the study's own loading code (``point_sampling/main.py``): uint8 is
kept; float images in [0, 1] are scaled by 255; grayscale float images in [-1, 1] are mapped
by (x + 1) / 2 * 255; anything else goes through :func:`to_rgb_uint8` (percentile). Masks are
``> 0`` (an RGB mask uses any channel).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segprompt.data.io import to_rgb_uint8
from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.errors import DataError


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found (an image set needs samples.npy and labels.npy)")
    try:
        # object arrays (images of different sizes) need pickle: only open files you trust
        return np.load(path, allow_pickle=True, mmap_mode=None)
    except Exception as exc:  # noqa: BLE001 - np.load raises many types
        raise DataError(f"{path}: not a readable .npy array ({exc})") from exc


def study_image_to_rgb(img: np.ndarray) -> np.ndarray:
    """One PointPrompt image array -> (H, W, 3) uint8 RGB (see the module doc)."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return to_rgb_uint8(arr)
    if np.issubdtype(arr.dtype, np.floating) and arr.size:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if lo >= 0.0 and hi <= 1.0:
            return to_rgb_uint8(np.round(arr * 255.0).astype(np.uint8))
        if arr.ndim == 2 and lo >= -1.0 and hi <= 1.0:
            return to_rgb_uint8(np.round((arr + 1.0) / 2.0 * 255.0).astype(np.uint8))
        if hi <= 255.0 and lo >= 0.0:
            return to_rgb_uint8(np.round(arr).astype(np.uint8))
    return to_rgb_uint8(arr)


class NpyImageSet(SegmentationDataset):
    """``samples.npy`` + ``labels.npy`` in ``folder``; ids are the array indices as strings."""

    task = "binary"

    def __init__(self, folder: str | Path, text: str | None = None, name: str | None = None) -> None:
        super().__init__()
        self.root = Path(folder)
        self.name = name or self.root.name
        self.text = text if text is not None else self.root.name.lower()
        self._images = _load(self.root / "samples.npy")
        self._masks = _load(self.root / "labels.npy")
        if len(self._images) != len(self._masks):
            raise DataError(f"{self.root}: samples.npy has {len(self._images)} images but labels.npy has {len(self._masks)} masks")
        self.records = list(range(len(self._images)))

    def record_id(self, record: int) -> str:
        return str(record)

    def load(self, record: int) -> Sample:
        where = f"{self.root}/samples.npy[{record}]"
        try:
            image = study_image_to_rgb(self._images[record])
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from exc
        mask = np.asarray(self._masks[record])
        if mask.ndim == 3:
            mask = mask.max(axis=2)
        mask = mask > 0
        if mask.shape != image.shape[:2]:
            raise DataError(f"{self.root}/labels.npy[{record}]: mask {mask.shape} differs from image {image.shape[:2]}")
        return Sample(id=str(record), image=image, mask=mask, texts=(self.text,), meta={"index": record})
