"""Reading volumes (TIFF stacks, NIfTI, .npy) and writing label volumes, with the voxel spacing.

.. code-block:: python

    vol = read_volume("stack.tif")           # Volume: data (Z, H, W, 3) uint8, spacing (z, y, x)
    write_labels("labels.tif", result.labels, like=vol)   # spacing (and a NIfTI affine) kept

Intensities: a volume of any dtype (16-bit, float, CT in HU) becomes uint8 RGB by the data
module's conversion (:func:`segprompt.data.to_rgb_uint8`), with one window for the whole stack
(:func:`segprompt.volumes.api.volume_window`: percentiles 0.5..99.5 by default, ``minmax``, or a
fixed ``window=(low, high)``); uint8 stacks are kept as they are.

Axes and spacing (spacing is ``(z, y, x)`` in the file's unit):

* TIFF (tifffile): the first series; axes of length 1 are dropped; ``S`` (samples) of 3 / 4 is
  the colour axis; exactly one other axis besides ``Y X`` is the stack axis (``Z``, ``Q``, ``I``,
  ``T`` or ``C``). Spacing: the ``spacing`` list this module writes in the shaped (JSON)
  description, else ImageJ's ``spacing`` (z, default 1) and the ``XResolution`` /
  ``YResolution`` tags (pixels per unit) with ImageJ's ``unit``; plain TIFFs without either: unknown.
* NIfTI (nibabel, ``.nii`` / ``.nii.gz``): the voxel array ``(i, j, k)`` becomes ``(Z, H, W) =
  (k, j, i)`` (slices along the third voxel axis, rows along the second); spacing is the header's
  zooms ``(dk, dj, di)``, the unit its spatial unit; the affine is kept for writing the labels back.
* ``.npy``: (Z, H, W) or (Z, H, W, 3), spacing unknown.

Labels are written as uint16 when the ids fit, else int32: ``.tif`` as an ImageJ hyperstack
(uint16, spacing and unit in ImageJ's metadata and resolution tags, readable in Fiji) or a
tifffile TIFF (int32, spacing in the shaped description and the resolution tags);
``.nii`` / ``.nii.gz`` with the input's affine when it was NIfTI, else ``diag(x, y, z)`` spacing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segprompt.errors import DataError
from segprompt.fileio import atomic_path
from segprompt.volumes.api import Volume, as_volume, check_spacing

TIFF_SUFFIXES = (".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
VOLUME_SUFFIXES = TIFF_SUFFIXES + NIFTI_SUFFIXES + (".npy",)
LABEL_SUFFIXES = TIFF_SUFFIXES + NIFTI_SUFFIXES

_STACK_AXES = "ZQITC"


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(".npy"):
        return "npy"
    raise DataError(f"{path}: unknown volume format; use a TIFF stack (.tif), NIfTI (.nii, .nii.gz) or .npy")


def _not_a_volume(path: Path, shape: tuple[int, ...]) -> DataError:
    return DataError(
        f"{path}: a 2-D image of shape {shape} is not a volume; give a stack of slices (Z, H, W) "
        "or segment the image with `segprompt segment`"
    )


# -- TIFF ---------------------------------------------------------------------------------------
def _resolution(page: Any, tag: str) -> float | None:
    t = page.tags.get(tag)
    if t is None:
        return None
    num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
    return float(den) / float(num) if num else None


def _tiff_spacing(tif: Any) -> tuple[tuple[float, float, float] | None, str | None]:
    page = tif.pages[0]
    shaped = tif.shaped_metadata[0] if tif.shaped_metadata else None
    if shaped and "spacing" in shaped:
        return check_spacing(shaped["spacing"]), shaped.get("unit")
    ij = tif.imagej_metadata
    if ij is not None:
        x = _resolution(page, "XResolution") or 1.0
        y = _resolution(page, "YResolution") or x
        unit = ij.get("unit")
        return check_spacing((float(ij.get("spacing", 1.0)), y, x)), None if unit in (None, "", "pixel") else str(unit).replace("\\u00B5", "µ")
    return None, None


def _read_tiff(path: Path) -> tuple[np.ndarray, tuple[float, float, float] | None, str | None]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            arr = series.asarray()
            spacing, unit = _tiff_spacing(tif)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
        raise DataError(f"{path}: not a readable TIFF stack ({exc})") from exc
    keep = [i for i, n in enumerate(arr.shape) if n > 1 or axes[i] in "YX"]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "S" in axes and arr.shape[axes.index("S")] in (3, 4):
        arr = np.moveaxis(arr, axes.index("S"), -1)[..., :3]
        axes = axes.replace("S", "") + "S"
    stack = [a for a in axes if a not in "YXS"]
    if not stack:
        raise _not_a_volume(path, arr.shape)
    if len(stack) > 1 or axes.rstrip("S")[-2:] != "YX" or stack[0] not in _STACK_AXES:
        raise DataError(f"{path}: a TIFF of axes {axes} and shape {arr.shape}; segment-volume needs one stack of slices (Z, Y, X) or (Z, Y, X, RGB)")
    return arr, spacing, unit


# -- NIfTI --------------------------------------------------------------------------------------
def _nibabel() -> Any:
    try:
        import nibabel
    except ImportError as exc:  # pragma: no cover - nibabel is installed with the volumes extra
        raise DataError("reading and writing NIfTI needs nibabel: pip install nibabel") from exc
    return nibabel


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float] | None, str | None, np.ndarray]:
    nib = _nibabel()
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
        zooms = tuple(float(v) for v in img.header.get_zooms())
        unit = img.header.get_xyzt_units()[0]
        affine = np.asarray(img.affine, np.float64)
    except (nib.filebasedimages.ImageFileError, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable NIfTI file ({exc})") from exc
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1):
        raise _not_a_volume(path, arr.shape[:2])
    if arr.ndim != 3:
        raise DataError(f"{path}: a NIfTI of shape {arr.shape}; segment-volume needs one 3-D volume (a 4-D series is not supported)")
    data = np.ascontiguousarray(arr.transpose(2, 1, 0))  # (i, j, k) -> (k, j, i) = (Z, H, W)
    spacing = (zooms[2], zooms[1], zooms[0]) if len(zooms) >= 3 and all(v > 0 for v in zooms[:3]) else None
    return data, spacing, (None if unit in (None, "unknown") else unit), affine


def read_volume(path: str | Path, normalisation: str = "percentile", window: tuple[float, float] | None = None) -> Volume:
    """Read a TIFF stack, NIfTI or .npy volume (module docstring) as a :class:`Volume`.

    Raises:
        DataError: missing or unreadable file, a 2-D image, more than one stack axis.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = _kind(path)
    affine = None
    if kind == "tiff":
        arr, spacing, unit = _read_tiff(path)
    elif kind == "nifti":
        arr, spacing, unit, affine = _read_nifti(path)
    else:
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc})") from exc
        spacing, unit = None, None
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)):
            raise _not_a_volume(path, arr.shape)
    try:
        vol = as_volume(arr, spacing, normalisation=normalisation, window=window)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    vol.unit, vol.affine, vol.source = unit, affine, path
    return vol


# -- writing ------------------------------------------------------------------------------------
def read_label_volume(path: str | Path) -> np.ndarray:
    """The raw (Z, H, W) array of a label stack (TIFF, NIfTI or ``.npy``): the axes ordered as
    :func:`read_volume` orders them, the values untouched (no intensity conversion)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = _kind(path)
    if kind == "tiff":
        return _read_tiff(path)[0]
    if kind == "nifti":
        return _read_nifti(path)[0]
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from exc


def _label_dtype(labels: np.ndarray) -> np.dtype:
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        return np.dtype(np.int32)
    return np.dtype(np.uint16)


def write_labels(
    path: str | Path,
    labels: np.ndarray,
    spacing: tuple[float, float, float] | None = None,
    *,
    like: Volume | None = None,
    unit: str | None = None,
) -> Path:
    """Write an int (Z, H, W) label volume to ``.tif`` / ``.tiff`` / ``.nii`` / ``.nii.gz`` atomically.

    Args:
        labels: integer (Z, H, W), 0 background.
        spacing: (z, y, x) voxel size; default ``like.spacing``.
        like: the :class:`Volume` the labels belong to (its spacing, unit and NIfTI affine).
        unit: the spacing's unit; default ``like.unit``.
    """
    path = Path(path)
    arr = np.asarray(labels)
    if arr.ndim != 3 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise DataError(f"labels must be an integer (Z, H, W) array, got shape {arr.shape} dtype {arr.dtype}")
    if like is not None and tuple(like.shape) != arr.shape:
        raise DataError(f"labels of shape {arr.shape} do not match the volume {like.shape}")
    spacing = check_spacing(spacing if spacing is not None else (like.spacing if like is not None else None))
    unit = unit if unit is not None else (like.unit if like is not None else None)
    arr = arr.astype(_label_dtype(arr))
    name = path.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        _write_tiff(path, arr, spacing, unit)
    elif name.endswith(NIFTI_SUFFIXES):
        _write_nifti(path, arr, spacing, unit, like.affine if like is not None else None)
    else:
        raise DataError(f"{path}: labels are written as .tif, .tiff, .nii or .nii.gz")
    return path


def _write_tiff(path: Path, arr: np.ndarray, spacing: tuple[float, float, float] | None, unit: str | None) -> None:
    import tifffile

    kwargs: dict[str, Any] = {}
    if spacing is not None:
        kwargs["resolution"] = (1.0 / spacing[2], 1.0 / spacing[1])
    with atomic_path(path, suffix=path.suffix) as tmp:
        if arr.dtype == np.uint16:  # an ImageJ hyperstack: Fiji shows the spacing
            meta: dict[str, Any] = {"axes": "ZYX"}
            if spacing is not None:
                meta["spacing"] = spacing[0]
            if unit:
                meta["unit"] = unit
            tifffile.imwrite(tmp, arr, imagej=True, metadata=meta, **kwargs)
        else:  # ImageJ has no int32: a tifffile TIFF with the spacing in its JSON description
            meta = {"axes": "ZYX"}
            if spacing is not None:
                meta["spacing"] = list(spacing)
            if unit:
                meta["unit"] = unit
            tifffile.imwrite(tmp, arr, metadata=meta, **kwargs)


def _write_nifti(path: Path, arr: np.ndarray, spacing: tuple[float, float, float] | None, unit: str | None, affine: np.ndarray | None) -> None:
    nib = _nibabel()
    if affine is None:
        z, y, x = spacing if spacing is not None else (1.0, 1.0, 1.0)
        affine = np.diag([x, y, z, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), np.asarray(affine, np.float64))
    if spacing is not None:
        img.header.set_zooms((spacing[2], spacing[1], spacing[0]))
    if unit in ("mm", "meter", "micron"):
        img.header.set_xyzt_units(xyz=unit)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))


__all__ = ["LABEL_SUFFIXES", "VOLUME_SUFFIXES", "read_label_volume", "read_volume", "write_labels"]
