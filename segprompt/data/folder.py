"""Folder datasets: ``images/`` + ``masks/`` matched by file stem, and one-mask-per-structure tables.

Layouts read here:

* :class:`FolderDataset` -- ``root/images/<stem>.<ext>`` with ``root/masks/<stem><mask_suffix>.<ext>``
  (any image suffix on either side), one binary mask per image. An optional per-image label
  table (``root/labels.csv`` with an ``id`` column, as in the BUSI and PH2 sample sets) is merged
  into :attr:`Sample.meta`.
* :class:`MultiMaskFolderDataset` -- several binary masks per image listed in a CSV table with
  columns ``mask``, ``image`` and optionally ``structure`` and ``text_prompt`` (the SA-Med2D demo
  layout); one :class:`Sample` per (image, mask), id = the mask file stem.
* :class:`PairedDataset` -- the common base: an explicit list of (id, image file, mask files)
  records; several mask files of one record are OR-merged (BUSI's ``_mask_1``). The registry
  builds it directly for original download layouts that are not a flat folder.

Binary masks: with ``threshold=None`` PNG/BMP/TIFF/GIF masks must hold 0/1 or 0/255 (anything else
is a :class:`DataError`); JPEG masks, whose compression noise makes them never exactly binary, are
thresholded at 127 (pixels > 127 are foreground). Pass ``threshold`` to force one cut for all.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from segprompt.data.io import IMAGE_SUFFIXES, list_images, read_binary_mask, read_image
from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.errors import DataError

log = logging.getLogger(__name__)

JPEG_SUFFIXES = (".jpg", ".jpeg")
JPEG_MASK_THRESHOLD = 127

__all__ = [
    "PairedDataset",
    "FolderDataset",
    "MultiMaskFolderDataset",
    "read_label_table",
    "mask_threshold_for",
    "JPEG_MASK_THRESHOLD",
]


def mask_threshold_for(path: Path, threshold: float | None) -> float | None:
    """The threshold used for ``path``: ``threshold`` if given, 127 for JPEG masks, else None (strict)."""
    if threshold is not None:
        return threshold
    return JPEG_MASK_THRESHOLD if path.suffix.lower() in JPEG_SUFFIXES else None


def _as_texts(texts: str | Iterable[str] | None) -> tuple[str, ...]:
    if texts is None:
        return ()
    if isinstance(texts, str):
        return (texts,)
    return tuple(str(t) for t in texts)


def _coerce(value: str) -> Any:
    """CSV cell -> int or float when it is one, else the stripped string."""
    v = value.strip()
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def read_label_table(path: str | Path, key: str = "id") -> dict[str, dict[str, Any]]:
    """Read a CSV whose column ``key`` names samples: ``{id: {column: value}}`` (numbers parsed).

    Raises:
        DataError: the file cannot be read, or has no ``key`` column, or repeats an id.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fp:
            reader = csv.DictReader(fp)
            fields = reader.fieldnames or []
            if key not in fields:
                raise DataError(f"{path}: label table has no {key!r} column (columns: {', '.join(fields) or 'none'})")
            table: dict[str, dict[str, Any]] = {}
            for row in reader:
                rid = (row.get(key) or "").strip()
                if not rid:
                    continue
                if rid in table:
                    raise DataError(f"{path}: id {rid!r} appears twice")
                table[rid] = {k: _coerce(v or "") for k, v in row.items() if k and k != key}
            return table
    except OSError as exc:
        raise DataError(f"{path}: cannot read label table ({exc})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: not a valid CSV file ({exc})") from exc


def _index_by_stem(files: Sequence[Path], folder: Path, what: str) -> dict[str, Path]:
    """stem -> file; two files with one stem (a.png and a.jpg) -> DataError."""
    index: dict[str, Path] = {}
    for f in files:
        if f.stem in index:
            raise DataError(
                f"{folder}: two {what} files share the stem {f.stem!r} ({index[f.stem].name}, {f.name}); "
                "keep one file per stem"
            )
        index[f.stem] = f
    return index


def _require_dir(folder: Path, role: str, root: Path, hint: str) -> None:
    if not folder.is_dir():
        if not root.exists():
            raise DataError(f"{root}: folder not found; {hint}")
        raise DataError(f"{root}: no {role} folder {folder.name!r} (expected {folder}/); {hint}")


class PairedDataset(SegmentationDataset):
    """Binary samples from explicit records: ``{"id", "image": Path, "masks": [Path, ...], "meta": {...}}``.

    ``masks`` of one record are OR-merged; ``masks=None`` (or ``[]`` with ``allow_unlabelled``)
    gives ``Sample.mask = None``. ``texts`` is the text prompt of every sample unless a record
    carries its own ``"texts"``.

    A record with a ``"missing"`` reason (an image whose mask file is absent, a listed file that
    does not exist) stays in the dataset, so that ids and indices do not shift, but loading it
    raises :class:`DataError` with that reason: a long run skips it, records it in its
    ``errors.jsonl`` and goes on. :attr:`missing` lists those ids.
    """

    task = "binary"

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]] = (),
        threshold: float | None = None,
        texts: str | Iterable[str] | None = None,
        name: str | None = None,
        root: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.threshold = threshold
        self.texts = _as_texts(texts)
        self.name = name or (Path(root).name if root else "paired")
        self.root = Path(root) if root else None
        self.records = [dict(r) for r in records]
        seen: set[str] = set()
        for r in self.records:
            if r["id"] in seen:
                raise DataError(f"{self.name}: sample id {r['id']!r} appears twice")
            seen.add(r["id"])

    def read_mask(self, paths: Sequence[Path]) -> np.ndarray:
        merged: np.ndarray | None = None
        for p in paths:
            m = read_binary_mask(p, threshold=mask_threshold_for(Path(p), self.threshold))
            if merged is not None and m.shape != merged.shape:
                raise DataError(f"{p}: mask size {m.shape[0]}x{m.shape[1]} differs from {paths[0]} ({merged.shape[0]}x{merged.shape[1]})")
            merged = m if merged is None else (merged | m)
        assert merged is not None
        return merged

    @property
    def missing(self) -> list[str]:
        """Ids of the records that cannot be loaded (their ``"missing"`` reason says why)."""
        return [str(r["id"]) for r in self.records if r.get("missing")]

    def load(self, record: Mapping[str, Any]) -> Sample:
        if record.get("missing"):
            raise DataError(str(record["missing"]))
        image_path = Path(record["image"])
        image = read_image(image_path)
        masks = record.get("masks")
        mask = None
        meta = dict(record.get("meta", {}))
        meta["image_path"] = str(image_path)
        if masks:
            mask = self.read_mask([Path(m) for m in masks])
            if mask.shape != image.shape[:2]:
                raise DataError(
                    f"{masks[0]}: mask size {mask.shape[0]}x{mask.shape[1]} differs from the image size "
                    f"{image.shape[0]}x{image.shape[1]} of {image_path}"
                )
            meta["mask_path"] = str(masks[0]) if len(masks) == 1 else [str(m) for m in masks]
        texts = _as_texts(record["texts"]) if "texts" in record else self.texts
        return Sample(id=str(record["id"]), image=image, mask=mask, texts=texts, meta=meta)


class FolderDataset(PairedDataset):
    """Binary masks in ``root/masks`` matched to images in ``root/images`` by file stem.

    Args:
        root: the dataset folder.
        images, masks: sub-folder names (or relative paths) of images and masks.
        mask_suffix: the mask of ``images/x.jpg`` is ``masks/x<mask_suffix>.<any image suffix>``
            (ISIC: ``"_segmentation"``).
        threshold: binarisation cut; None = strict 0/1 or 0/255 (JPEG masks: 127).
        texts: the text prompt(s) of every sample, e.g. ``"polyp"``.
        name: dataset name (default: the folder name).
        labels: per-image label CSV with an ``id`` column merged into ``Sample.meta``;
            ``"auto"`` uses ``root/labels.csv`` when it has an ``id`` column, None disables.
        exclude: glob patterns of image file names to skip (e.g. ``"*_superpixels*"``).
        allow_missing: images without a mask give ``Sample.mask = None``. Otherwise such an
            image stays in the dataset but loading it raises :class:`DataError` naming the image
            and the expected mask file (a benchmark skips it into ``errors.jsonl``); a warning
            at construction lists them.

    Raises:
        DataError: a folder is missing, holds no images, or no image has a mask (the message
            names the folder and the expected mask file names).
    """

    def __init__(
        self,
        root: str | Path,
        images: str = "images",
        masks: str = "masks",
        mask_suffix: str = "",
        threshold: float | None = None,
        texts: str | Iterable[str] | None = None,
        name: str | None = None,
        labels: str | Path | None = "auto",
        exclude: Sequence[str] = (),
        allow_missing: bool = False,
    ) -> None:
        root = Path(root)
        image_dir, mask_dir = root / images, root / masks
        hint = f"expected {images}/ with the images and {masks}/ with one mask per image named <image stem>{mask_suffix}.png"
        _require_dir(image_dir, "image", root, hint)
        _require_dir(mask_dir, "mask", root, hint)
        image_files = [p for p in list_images(image_dir) if not any(fnmatch.fnmatch(p.name, pat) for pat in exclude)]
        if not image_files:
            raise DataError(f"{image_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}); {hint}")
        images_by_stem = _index_by_stem(image_files, image_dir, "image")
        mask_files = list_images(mask_dir)
        if mask_suffix:
            mask_files = [p for p in mask_files if p.stem.endswith(mask_suffix)]
        masks_by_stem = _index_by_stem(mask_files, mask_dir, "mask")

        table: dict[str, dict[str, Any]] = {}
        if labels == "auto":
            auto = root / "labels.csv"
            if auto.is_file():
                try:
                    table = read_label_table(auto)
                except DataError:
                    table = {}  # a table of another kind (e.g. a multi-mask table): not per-image labels
        elif labels is not None:
            table = read_label_table(labels if Path(labels).is_absolute() else root / labels)

        records, missing = [], []
        for stem, img in images_by_stem.items():
            m = masks_by_stem.get(stem + mask_suffix)
            record: dict[str, Any] = {"id": stem, "image": img, "masks": [m] if m else None, "meta": dict(table.get(stem, {}))}
            if m is None:
                missing.append(img.name)
                if not allow_missing:
                    record["missing"] = f"{img}: no mask (expected {mask_dir / (stem + mask_suffix)}.png or another image suffix)"
            records.append(record)
        if missing and not allow_missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            message = (
                f"{mask_dir}: {len(missing)} of {len(images_by_stem)} images have no mask ({shown}); "
                f"expected {masks}/<image stem>{mask_suffix}.png (or another image suffix)"
            )
            if len(missing) == len(images_by_stem):
                raise DataError(message)
            log.warning("%s; they will be skipped", message)
        super().__init__(records, threshold=threshold, texts=texts, name=name or root.name, root=root)
        self.image_dir, self.mask_dir, self.mask_suffix = image_dir, mask_dir, mask_suffix

    @classmethod
    def from_table(cls, root: str | Path, table: str | Path = "labels.csv", **kwargs: Any) -> "MultiMaskFolderDataset":
        """Several masks per image listed in a CSV table: see :class:`MultiMaskFolderDataset`."""
        return MultiMaskFolderDataset(root, table=table, **kwargs)


class MultiMaskFolderDataset(PairedDataset):
    """One binary sample per row of a table ``mask,image[,structure][,text_prompt]``.

    Sample id = the mask file stem; ``texts = (text_prompt,)`` (falling back to ``structure``
    with ``_`` read as spaces, then to ``texts``); every other column goes to ``meta``.

    Args:
        root: the dataset folder.
        table: CSV file (relative to ``root`` or absolute).
        images, masks: folders the table's file names are relative to.
        mask_column, image_column, text_column, structure_column: column names.
    """

    def __init__(
        self,
        root: str | Path,
        table: str | Path = "labels.csv",
        images: str = "images",
        masks: str = "masks",
        threshold: float | None = None,
        texts: str | Iterable[str] | None = None,
        name: str | None = None,
        mask_column: str = "mask",
        image_column: str = "image",
        text_column: str = "text_prompt",
        structure_column: str = "structure",
    ) -> None:
        root = Path(root)
        table_path = Path(table) if Path(table).is_absolute() else root / table
        hint = f"expected {table_path.name} with columns {mask_column},{image_column},{text_column} and the files in {images}/ and {masks}/"
        if not root.is_dir():
            raise DataError(f"{root}: folder not found; {hint}")
        if not table_path.is_file():
            raise DataError(f"{root}: no table {table_path.name}; {hint}")
        _require_dir(root / images, "image", root, hint)
        _require_dir(root / masks, "mask", root, hint)
        try:
            with open(table_path, newline="", encoding="utf-8-sig") as fp:
                reader = csv.DictReader(fp)
                fields = reader.fieldnames or []
                rows = list(reader)
        except (OSError, csv.Error) as exc:
            raise DataError(f"{table_path}: cannot read the table ({exc})") from exc
        for col in (mask_column, image_column):
            if col not in fields:
                raise DataError(f"{table_path}: no {col!r} column (columns: {', '.join(fields) or 'none'}); {hint}")
        default = _as_texts(texts)
        records, missing = [], []
        for row in rows:
            mask_name, image_name = (row.get(mask_column) or "").strip(), (row.get(image_column) or "").strip()
            if not mask_name:
                continue
            mask_path, image_path = root / masks / mask_name, root / images / image_name
            absent = [p for p in (mask_path, image_path) if not p.is_file()]
            missing += [str(p.relative_to(root)) for p in absent]
            text = (row.get(text_column) or "").strip()
            if not text and (row.get(structure_column) or "").strip():
                text = row[structure_column].strip().replace("_", " ")
            meta = {k: _coerce(v or "") for k, v in row.items() if k not in (mask_column, image_column)}
            meta["image_id"] = Path(image_name).stem
            record = {"id": Path(mask_name).stem, "image": image_path, "masks": [mask_path], "meta": meta, "texts": (text,) if text else default}
            if absent:
                record["missing"] = f"{absent[0]}: listed in {table_path.name} but does not exist"
            records.append(record)
        if not records:
            raise DataError(f"{table_path}: the table lists no masks; {hint}")
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            message = f"{table_path}: {len(missing)} listed files do not exist ({shown})"
            if all(r.get("missing") for r in records):
                raise DataError(message)
            log.warning("%s; those samples will be skipped", message)
        super().__init__(records, threshold=threshold, texts=texts, name=name or root.name, root=root)
        self.table_path = table_path
