"""Multi-class label maps: PNG masks whose pixel values are class ids (CamVid, ADE-style folders).

``Sample.mask`` is an int64 (H, W) map of class indices with ``ignore_index`` (255) where the
pixel is unlabelled; ``Sample.class_names[i]`` names index ``i``. Values listed in
``void_values`` (CamVid's 11 = "void/unlabelled") are remapped to ``ignore_index``; a value that
is neither a class, a void value nor already ``ignore_index`` is a :class:`DataError` naming the
file and the values. :func:`binarise` turns one class of a label map into a binary sample.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from segprompt.data.folder import _index_by_stem, _require_dir
from segprompt.data.io import IMAGE_SUFFIXES, list_images, read_image, read_mask_array
from segprompt.data.sample import IGNORE_INDEX, Sample, SegmentationDataset
from segprompt.errors import ConfigError, DataError

__all__ = ["LabelMapDataset", "load_classes", "detect_void", "binarise", "VOID_NAME"]

VOID_NAME = re.compile(r"^(void|unlabell?ed|ignore|ignored|don'?t ?care)\b", re.IGNORECASE)

ClassSpec = Sequence[str] | Mapping[int | str, str] | str | Path


def load_classes(classes: ClassSpec) -> dict[int, str]:
    """Class id -> name from a list (index = id), a dict (keys int or digit strings) or a JSON file of either."""
    source = ""
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        source = f"{path}: "
        try:
            with open(path, encoding="utf-8") as fp:
                classes = json.load(fp)
        except FileNotFoundError as exc:
            raise DataError(f"{path}: classes file not found") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read the class list ({exc})") from exc
    if isinstance(classes, Mapping):
        out: dict[int, str] = {}
        for k, v in classes.items():
            try:
                key = int(k)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{source}class ids must be integers, got {k!r}") from exc
            out[key] = str(v)
    elif isinstance(classes, (list, tuple)):
        out = {i: str(v) for i, v in enumerate(classes)}
    else:
        raise DataError(f"{source}classes must be a list of names, a dict id -> name or a classes.json path, got {type(classes).__name__}")
    if not out:
        raise DataError(f"{source}the class list is empty")
    if any(k < 0 for k in out):
        raise DataError(f"{source}class ids must be >= 0")
    return dict(sorted(out.items()))


def detect_void(classes: Mapping[int, str]) -> tuple[int, ...]:
    """Ids whose name says void / unlabelled / ignore (e.g. CamVid's ``11: "void/unlabelled"``)."""
    return tuple(k for k, v in classes.items() if VOID_NAME.match(v.strip()))


class LabelMapDataset(SegmentationDataset):
    """Images in ``root/images`` with label-map PNGs of the same stem in ``root/masks``.

    Args:
        root: dataset folder.
        classes: list of names, dict id -> name, or a classes.json path (relative paths are
            looked up under ``root`` first).
        ignore_index: value of unlabelled pixels in ``Sample.mask``.
        void_values: class ids remapped to ``ignore_index`` (their names leave ``class_names``
            when they are the highest ids, as CamVid's 11). ``"auto"`` = ids named void/unlabelled.
        images, masks, mask_suffix: as in :class:`~segprompt.data.folder.FolderDataset`.
    """

    task = "multiclass"

    def __init__(
        self,
        root: str | Path,
        classes: ClassSpec,
        ignore_index: int = IGNORE_INDEX,
        void_values: Iterable[int] | str = (),
        images: str = "images",
        masks: str = "masks",
        mask_suffix: str = "",
        name: str | None = None,
    ) -> None:
        super().__init__()
        root = Path(root)
        if isinstance(classes, (str, Path)) and not Path(classes).is_absolute() and (root / classes).is_file():
            classes = root / classes
        table = load_classes(classes)
        void = detect_void(table) if void_values == "auto" else tuple(int(v) for v in void_values)  # type: ignore[union-attr]
        self.root, self.name = root, name or root.name
        self.ignore_index = int(ignore_index)
        self.void_values = void
        self.class_table = table
        kept = [k for k in table if k not in void]
        top = max(kept) if kept else -1
        self.class_names = tuple(table.get(i, f"class_{i}") for i in range(top + 1))
        self.valid_values = np.array(sorted(set(table) | {self.ignore_index}), dtype=np.int64)

        image_dir, mask_dir = root / images, root / masks
        hint = f"expected {images}/ with the images and {masks}/ with one label-map PNG per image (same stem)"
        _require_dir(image_dir, "image", root, hint)
        _require_dir(mask_dir, "mask", root, hint)
        image_files = list_images(image_dir)
        if not image_files:
            raise DataError(f"{image_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}); {hint}")
        by_stem = _index_by_stem(image_files, image_dir, "image")
        masks_by_stem = _index_by_stem(list_images(mask_dir), mask_dir, "mask")
        missing = [p.name for s, p in by_stem.items() if s + mask_suffix not in masks_by_stem]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(f"{mask_dir}: {len(missing)} of {len(by_stem)} images have no label map ({shown}); {hint}")
        self.records = [{"id": s, "image": p, "mask": masks_by_stem[s + mask_suffix]} for s, p in by_stem.items()]

    def read_labels(self, path: Path) -> np.ndarray:
        """Read a label map, remap void values, check every value is known."""
        raw = read_mask_array(path).astype(np.int64)
        values = np.unique(raw)
        bad = values[~np.isin(values, self.valid_values)]
        if len(bad):
            shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
            raise DataError(
                f"{path}: label values {shown} are not in the class list (ids {min(self.class_table)}-{max(self.class_table)}"
                f", ignore {self.ignore_index})"
            )
        if self.void_values:
            raw[np.isin(raw, self.void_values)] = self.ignore_index
        return raw

    def load(self, record: Mapping[str, Any]) -> Sample:
        image = read_image(record["image"])
        labels = self.read_labels(record["mask"])
        if labels.shape != image.shape[:2]:
            raise DataError(
                f"{record['mask']}: label map size {labels.shape[0]}x{labels.shape[1]} differs from the image size "
                f"{image.shape[0]}x{image.shape[1]} of {record['image']}"
            )
        present = tuple(self.class_names[v] for v in np.unique(labels) if 0 <= v < len(self.class_names))
        return Sample(
            id=record["id"], image=image, mask=labels, texts=present, class_names=self.class_names,
            ignore_index=self.ignore_index,
            meta={**record.get("meta", {}), "image_path": str(record["image"]), "mask_path": str(record["mask"])},
        )


def binarise(sample: Sample, cls: str | int) -> Sample:
    """The binary sample of one class of a label-map sample.

    ``mask = labels == index``; ``texts = (class name,)``; ignore pixels are False in the mask and
    recorded as a bool mask in ``meta["ignore"]``; ``meta["class_index"]`` keeps the index.

    Raises:
        ConfigError: ``cls`` is not a class of the sample.
    """
    if sample.mask is None or sample.mask.dtype == bool:
        raise ConfigError(f"sample {sample.id!r} has no label map to binarise")
    names = list(sample.class_names)
    if isinstance(cls, str):
        if cls not in names:
            raise ConfigError(f"unknown class {cls!r} for sample {sample.id!r}; classes: {', '.join(names)}")
        index = names.index(cls)
    else:
        index = int(cls)
        if names and not 0 <= index < len(names):
            raise ConfigError(f"class index {index} out of range 0-{len(names) - 1} for sample {sample.id!r}")
    name = names[index] if names else str(index)
    meta = dict(sample.meta)
    meta["ignore"] = sample.mask == sample.ignore_index
    meta["class_index"] = index
    return replace(sample, mask=sample.mask == index, texts=(name,), class_names=(), meta=meta)


class ClassSamples(SegmentationDataset):
    """One binary sample per (image, class present) of a label-map dataset: "one class at a
    time", for benchmarks of binary promptable models on multi-class data (CamVid).

    Sample ids are ``<image id>:<class name>``; a class counts as present when it covers at
    least ``min_fraction`` of the image (void / ignore pixels never count). Listing the samples
    reads every label map once.
    """

    task = "binary"

    def __init__(self, dataset: SegmentationDataset, min_fraction: float = 0.01, classes: Sequence[str] | None = None) -> None:
        super().__init__()
        self.base, self.name = dataset, f"{dataset.name}-per-class"
        self.records = []
        for i in range(len(dataset)):
            sample = dataset[i]  # one read per image: image and label map
            for index, name in enumerate(sample.class_names):
                if classes is not None and name not in classes:
                    continue
                if sample.mask is not None and (sample.mask == index).mean() >= min_fraction:
                    self.records.append((i, index, name))

    def record_id(self, record: tuple[int, int, str]) -> str:
        i, _, name = record
        return f"{self.base.ids[i]}:{name}"

    def load(self, record: tuple[int, int, str]) -> Sample:
        i, index, name = record
        sample = binarise(self.base[i], index)
        return replace(sample, id=self.record_id(record))
