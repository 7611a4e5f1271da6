"""Check a dataset folder: read every image and mask and report every problem in one pass.

:func:`check_dataset` returns a list of :class:`Problem` (severity ``"error"`` or ``"warning"``,
the file, a message) instead of stopping at the first one, which is what a reader does. It finds:

* unreadable or truncated images (each is decoded fully: a cut-off JPEG is caught),
* unreadable masks, masks whose size differs from their image,
* binary masks with values other than {0, 1} or {0, 255} (JPEG masks, lossy by nature, are a
  warning: the readers threshold them at 127), label maps with values outside the class list,
* images without a mask, masks without an image (errors), empty masks (warnings).

Layouts: ``images/`` + ``masks/`` (binary; label maps when ``classes`` is given or a
``classes.json`` is present; several masks per image when ``labels.csv`` has ``mask`` and
``image`` columns), a TuneVLSeg folder (``anns/*.json``), or any layout the dataset registry
recognises (``load_dataset(path)``), whose records name the files to check. ``path`` may also
be a registry name, resolved through ``$SEGPROMPT_DATA_ROOT``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from segprompt.data.io import IMAGE_SUFFIXES, list_images
from segprompt.data.labelmap import load_classes
from segprompt.errors import DataError

__all__ = ["Problem", "check_dataset", "check_dataset_counted", "format_problem", "summarise"]

Severity = str  # "error" | "warning"


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` is ``"error"`` or ``"warning"``; ``path`` is relative to the checked folder."""

    severity: Severity
    path: str
    message: str

    def __str__(self) -> str:
        return format_problem(self)


def format_problem(p: Problem) -> str:
    return f"{p.severity}  {p.path}: {p.message}"


def summarise(problems: Sequence[Problem], n_images: int) -> str:
    e = sum(p.severity == "error" for p in problems)
    w = sum(p.severity == "warning" for p in problems)
    return f"{n_images} images checked, {e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}"


class _Checker:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self.n_images = 0

    def rel(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def add(self, severity: str, path: Path | str, message: str) -> None:
        self.problems.append(Problem(severity, self.rel(Path(path)) if not isinstance(path, str) else path, message))

    # -- reading -------------------------------------------------------------------------------

    def _decode(self, path: Path) -> np.ndarray:
        """Decode ``path`` fully; raise ValueError with a short reason."""
        if path.suffix.lower() == ".npy":
            try:
                return np.load(path, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise ValueError(f"unreadable .npy array ({exc})") from exc
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, whatever a caller set
        try:
            with Image.open(path) as img:
                img.load()
                if img.mode in ("I;16", "I;16B", "I;16L"):
                    return np.array(img).astype(np.uint16)
                if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    img = img.convert("RGB")
                return np.array(img)
        except UnidentifiedImageError as exc:
            raise ValueError("unreadable image (not a recognised image format)") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            kind = "truncated image" if "truncat" in reason.lower() else "unreadable image"
            raise ValueError(f"{kind} ({reason})") from exc
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous

    def image(self, path: Path) -> tuple[int, int] | None:
        self.n_images += 1
        try:
            arr = self._decode(path)
        except ValueError as exc:
            self.add("error", path, str(exc))
            return None
        if arr.ndim < 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            self.add("error", path, f"not a 2-D image (shape {arr.shape})")
            return None
        return int(arr.shape[0]), int(arr.shape[1])

    def mask_array(self, path: Path) -> np.ndarray | None:
        try:
            arr = self._decode(path)
        except ValueError as exc:
            text = str(exc)
            msg = text.replace("image", "mask", 1) if text.startswith(("truncated image", "unreadable image")) else f"unreadable mask ({text})"
            self.add("error", path, msg)
            return None
        if arr.ndim == 3:
            arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
        if arr.ndim != 2:
            self.add("error", path, f"a mask must be 2-D, got shape {arr.shape}")
            return None
        return arr

    def size_matches(self, mask_path: Path, mask: np.ndarray, size: tuple[int, int] | None, image_path: Path) -> bool:
        if size is not None and mask.shape != size:
            self.add(
                "error", mask_path,
                f"mask size {mask.shape[0]}x{mask.shape[1]} differs from image size {size[0]}x{size[1]} ({self.rel(image_path)})",
            )
            return False
        return True

    def binary_values(self, path: Path, mask: np.ndarray) -> None:
        values = np.unique(mask)
        vs = {int(v) for v in values[:3]} if len(values) <= 2 else None
        if vs is not None and (vs <= {0, 1} or vs <= {0, 255}):
            if not values.any():
                self.add("warning", path, "empty mask (no foreground pixel)")
            return
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        if path.suffix.lower() in (".jpg", ".jpeg"):
            self.add("warning", path, f"lossy JPEG mask with {len(values)} values ({shown}); readers threshold it at 127")
            if not (mask > 127).any():
                self.add("warning", path, "empty mask (no foreground pixel above 127)")
            return
        self.add("error", path, f"mask is not binary ({len(values)} values: {shown}); expected 0/1 or 0/255")

    def label_values(self, path: Path, mask: np.ndarray, valid: np.ndarray, ignore_index: int) -> None:
        values = np.unique(mask)
        bad = values[~np.isin(values, valid)]
        if len(bad):
            shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
            ids = sorted(int(v) for v in valid if v != ignore_index)
            self.add("error", path, f"label values {shown} not in the class list (ids {ids[0]}-{ids[-1]}, ignore {ignore_index})")
        elif np.all(mask == ignore_index):
            self.add("warning", path, "label map is entirely ignore")

    def pair(
        self, image_path: Path | None, mask_paths: Sequence[Path], labels: tuple[np.ndarray, int] | None = None, size: Any = "read"
    ) -> None:
        """Check one image and its masks (``size="read"``: read the image here)."""
        if size == "read":
            size = self.image(image_path) if image_path is not None else None
        for m in mask_paths:
            arr = self.mask_array(m)
            if arr is None:
                continue
            if not self.size_matches(m, arr, size, image_path or m):
                continue
            if labels is not None:
                self.label_values(m, arr, *labels)
            else:
                self.binary_values(m, arr)


def _stems(files: Iterable[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for f in files:
        out.setdefault(f.stem, []).append(f)
    return out


def _check_folder(ck: _Checker, root: Path, labels: tuple[np.ndarray, int] | None, mask_suffix: str = "") -> None:
    image_dir, mask_dir = root / "images", root / "masks"
    images = _stems(list_images(image_dir))
    masks = _stems(list_images(mask_dir))
    for stem, files in images.items():
        if len(files) > 1:
            ck.add("error", files[1], f"two images share the stem {stem!r} ({', '.join(f.name for f in files)})")
    for stem, files in masks.items():
        if len(files) > 1:
            ck.add("error", files[1], f"two masks share the stem {stem!r} ({', '.join(f.name for f in files)})")
    if not images:
        ck.add("error", image_dir, f"no image files ({', '.join(IMAGE_SUFFIXES)})")
    for stem, files in sorted(images.items()):
        m = masks.get(stem + mask_suffix)
        if m is None:
            ck.image(files[0])
            ck.add("error", files[0], f"no mask (expected masks/{stem}{mask_suffix}.png or another image suffix)")
            continue
        ck.pair(files[0], m[:1], labels)
    image_stems = set(images)
    for stem, files in sorted(masks.items()):
        base = stem[: len(stem) - len(mask_suffix)] if mask_suffix and stem.endswith(mask_suffix) else stem
        if base not in image_stems:
            ck.add("error", files[0], f"mask without image (no images/{base}.*)")


def _check_table(ck: _Checker, root: Path, table: Path) -> None:
    with open(table, newline="", encoding="utf-8-sig") as fp:
        rows = list(csv.DictReader(fp))
    by_image: dict[str, list[Path]] = {}
    listed_masks: set[str] = set()
    for i, row in enumerate(rows, start=2):
        mask, image = (row.get("mask") or "").strip(), (row.get("image") or "").strip()
        if not mask or not image:
            ck.add("error", table, f"line {i}: empty mask or image cell")
            continue
        listed_masks.add(mask)
        by_image.setdefault(image, []).append(root / "masks" / mask)
    for image, masks in sorted(by_image.items()):
        img_path = root / "images" / image
        size = None
        if not img_path.is_file():
            ck.add("error", img_path, f"image listed in {table.name} does not exist")
        else:
            size = ck.image(img_path)
        present = []
        for m in masks:
            if m.is_file():
                present.append(m)
            else:
                ck.add("error", m, f"mask listed in {table.name} does not exist")
        ck.pair(img_path, present, size=size)
    for m in list_images(root / "masks"):
        if m.name not in listed_masks:
            ck.add("error", m, f"mask without image (not listed in {table.name})")
    for img in list_images(root / "images"):
        if img.name not in by_image:
            ck.image(img)
            ck.add("warning", img, f"image has no mask listed in {table.name} (it yields no sample)")


def _check_records(ck: _Checker, dataset: Any) -> None:
    """Check the files named by a reader's records (registry layouts, TuneVLSeg)."""
    labels = None
    if getattr(dataset, "task", "binary") == "multiclass" and hasattr(dataset, "valid_values"):
        labels = (dataset.valid_values, dataset.ignore_index)
    for r in dataset.records:
        image = r.get("image")
        masks = r.get("masks") if "masks" in r else ([r["mask"]] if r.get("mask") else [])
        image = Path(image) if image else None
        if image is not None and not image.is_file():
            ck.n_images += 1
            ck.add("error", image, "image file not found")
            image_size = None
        else:
            image_size = ck.image(image) if image is not None else None
        present = []
        for m in masks or []:
            if Path(m).is_file():
                present.append(Path(m))
            else:
                ck.add("error", Path(m), "mask file not found")
        if not masks:
            ck.add("error", image or Path("?"), "no mask")
        ck.pair(image, present, labels, size=image_size)


def check_dataset(path: str | os.PathLike[str], classes: Any = None, mask_suffix: str = "") -> list[Problem]:
    """Every problem of the dataset at ``path`` (see the module doc); never stops at the first.

    Args:
        path: a dataset folder, or a registry name (resolved through ``$SEGPROMPT_DATA_ROOT``).
        classes: class list / dict / classes.json for label maps (default: ``path/classes.json``
            if present, else binary masks are expected).
        mask_suffix: as in :class:`~segprompt.data.folder.FolderDataset`.

    Returns:
        The problems, errors and warnings, in file order (:func:`check_dataset_counted` also
        returns the number of images read).

    Raises:
        DataError: ``path`` is neither a folder nor a registered dataset name, or its layout is
            not recognised.
    """
    problems, _ = check_dataset_counted(path, classes=classes, mask_suffix=mask_suffix)
    return problems


def check_dataset_counted(path: str | os.PathLike[str], classes: Any = None, mask_suffix: str = "") -> tuple[list[Problem], int]:
    """:func:`check_dataset` plus the number of images read: ``(problems, n_images)``."""
    from segprompt.data import registry

    text = os.fspath(path)
    root = Path(text).expanduser()
    if not root.exists():
        if text in registry.DATASETS and registry.DATASETS.get(text).needs_root:
            root = registry.resolve_root(text)
        else:
            raise DataError(f"{root}: no such folder (and not a registered dataset name; see segprompt data list)")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give the dataset folder (with images/ and masks/)")
    ck = _Checker(root)
    if classes is None and (root / "classes.json").is_file():
        classes = root / "classes.json"
    labels = None
    if classes is not None:
        if isinstance(classes, (str, Path)) and not Path(classes).is_absolute() and not Path(classes).exists() and (root / classes).is_file():
            classes = root / classes
        table = load_classes(classes)
        labels = (np.array(sorted(set(table) | {255}), dtype=np.int64), 255)
    if (root / "images").is_dir() and (root / "masks").is_dir() and not (root / "anns").is_dir():
        if labels is None and registry._table_has_masks(root / "labels.csv"):
            _check_table(ck, root, root / "labels.csv")
        else:
            _check_folder(ck, root, labels, mask_suffix)
    else:
        _check_records(ck, registry.load_path(root))
    return ck.problems, ck.n_images
