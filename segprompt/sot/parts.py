"""Show-or-Tell's data side: a dataset cut into its reference pool, validation part and evaluated
part (:func:`build_parts`), one prepared image (:func:`load_item`: SoT's 518 x 518 resize or the
original size) and the label conversions between a dataset's labels and the merge's
(:func:`to_merge_labels`, :func:`to_dataset_labels`). The protocol is in :mod:`segprompt.sot.bench`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from segprompt.data.sample import IGNORE_INDEX, SegmentationDataset
from segprompt.errors import DataError
from segprompt.metrics import ConfusionMatrix
from segprompt.sot.references import ReferenceIndex, min_area_for

if TYPE_CHECKING:
    from segprompt.sot.bench import SotBenchConfig

SYNTHETIC = "synthetic-objects"
BACKGROUND_NAMES = ("background", "bg", "_background_")


# ----------------------------------------------------------------------------------- parts


@dataclass
class Parts:
    """One dataset cut into its reference pool, validation part and evaluated part."""

    key: str
    train: SegmentationDataset
    index: ReferenceIndex
    val: SegmentationDataset
    val_pos: list[int]
    test: SegmentationDataset
    test_pos: list[int]
    binary: bool
    has_background: bool
    labels: tuple[str, ...]
    prompted: list[int]
    exclude: frozenset[str]
    min_area: float
    note: str

    def class_key(self, label: int) -> int | str:
        """What :func:`sample_references` takes for confusion label ``label``."""
        return self.labels[label] if self.binary and self.labels[label] != "foreground" else (1 if self.binary else label)


def _split_keys(index: ReferenceIndex, fraction: float, positions: Sequence[int]) -> tuple[list[int], list[int]]:
    """``positions`` grouped by image key, keys sorted: (first part, last ``fraction`` of the keys)."""
    keys = sorted({index.image_keys[p] for p in positions})
    n_last = max(1, int(round(fraction * len(keys))))
    if len(keys) <= n_last:
        raise DataError(f"{index.name}: {len(keys)} image(s) cannot be split into parts (fraction {fraction})")
    last = set(keys[-n_last:])
    pos = sorted(positions, key=lambda p: (index.image_keys[p], index.ids[p]))
    return [p for p in pos if index.image_keys[p] not in last], [p for p in pos if index.image_keys[p] in last]


def _registered_name(key: str) -> str:
    """The registry's own name of ``key`` (aliases resolved), or ``key`` itself (a folder path)."""
    from segprompt.data.registry import DATASETS, dataset_info

    return dataset_info(key).name if key in DATASETS else key


def _has_train_val(key: str) -> bool:
    """A registered dataset with official train and val splits (SoT draws from train, evaluates val)."""
    from segprompt.data.registry import DATASETS, dataset_splits

    return key in DATASETS and {"train", "val"} <= set(dataset_splits(key))


def build_parts(cfg: SotBenchConfig, key: str) -> Parts:
    """The three parts of dataset ``key`` (module docstring, step 1)."""
    from segprompt.data.registry import load_dataset

    kwargs = dict(cfg.dataset_kwargs.get(key, {}))
    min_area = float(cfg.min_area) if cfg.min_area is not None else min_area_for(_registered_name(key))
    if key.strip().lower().replace("_", "-") == SYNTHETIC:
        train = load_dataset(key, n=cfg.synthetic_train, seed=0, **kwargs)
        index = ReferenceIndex.build(train)
        test = load_dataset(key, n=cfg.synthetic_eval, seed=2024, **kwargs)
        if cfg.val_seed is None:
            pool, val_pos = _split_keys(index, cfg.val_fraction, range(len(train)))
            val, note_val = train, f"the last {len(val_pos)} of them (validation)"
        else:
            pool, val = list(range(len(train))), load_dataset(key, n=cfg.synthetic_val, seed=cfg.val_seed, **kwargs)
            val_pos, note_val = list(range(len(val))), f"{len(val)} seed-{cfg.val_seed} scenes (validation)"
        exclude = frozenset(index.ids[p] for p in val_pos) if val is train else frozenset()
        test_pos = list(range(len(test)))
        note = f"references: seed-0 scenes ({len(pool)} of {len(train)}); {note_val}; evaluated: seed-2024 scenes ({{n}})"
    elif _has_train_val(key):  # VOC, ADE20K, Cityscapes: SoT's rule, references from train, evaluation on val
        train, test = load_dataset(key, split="train", **kwargs), load_dataset(key, split="val", **kwargs)
        index = ReferenceIndex.build(train)
        pool, val_pos = _split_keys(index, cfg.val_fraction, range(len(train)))
        val, test_pos = train, list(range(len(test)))
        exclude = frozenset(index.ids[p] for p in val_pos)
        note = (
            f"official splits: references from train ({len(pool)} images), validation (calibration, oracle) the last "
            f"{len(val_pos)} train images by id (val_fraction {cfg.val_fraction}), evaluated: val ({{n}})"
        )
    else:
        full = load_dataset(key, **kwargs)
        index = ReferenceIndex.build(full)
        pool, test_pos = _split_keys(index, cfg.eval_fraction, range(len(full)))
        refs, val_pos = _split_keys(index, cfg.val_fraction, pool)
        train = val = test = full
        exclude = frozenset(index.ids[p] for p in [*val_pos, *test_pos])
        note = (
            f"no split: images sorted by id; references from the first {len(refs)}, validation the next {len(val_pos)}, "
            f"evaluated the last {len(test_pos)} (eval_fraction {cfg.eval_fraction}, val_fraction {cfg.val_fraction}; {{n}})"
        )
    n_eval = len(test_pos)
    if cfg.limit is not None:
        test_pos = test_pos[: int(cfg.limit)]
    note = note.replace("{n}", f"{len(test_pos)} evaluated" + (f" of {n_eval}, --limit {cfg.limit}" if len(test_pos) < n_eval else ""))
    if index.binary:
        texts = sorted({(index.texts[p][:1] or ("foreground",))[0] for p in [*val_pos, *test_pos]})
        labels = ("background", *texts)
        has_bg, prompted = True, list(range(1, len(labels)))
    else:
        labels = tuple(index.class_names)
        has_bg = bool(labels) and labels[0].lower() in BACKGROUND_NAMES
        if getattr(getattr(test, "semantic", None), "sot_background", None) == "prompted":
            has_bg = False  # SoT's VOC: background is one of the prompted classes (references, no threshold, in the mean)
        prompted = list(range(1 if has_bg else 0, len(labels)))
    return Parts(key, train, index, val, list(val_pos), test, list(test_pos), index.binary, has_bg, labels, prompted, exclude, min_area, note)


# ------------------------------------------------------------------------------- one image


@dataclass
class Item:
    """A prepared image: id, (H, W, 3) image, (H, W) target in the dataset's labels, prompted labels."""

    id: str
    image: np.ndarray
    target: np.ndarray
    label_of_map: list[int]


def resize_pair(image: np.ndarray, labels: np.ndarray, size: int | str) -> tuple[np.ndarray, np.ndarray]:
    """SoT's resize: image bilinear, labels (or a bool mask) nearest, to ``size`` x ``size``; ``"original"`` keeps both."""
    if size == "original":
        return image, labels
    import cv2

    s = int(size)
    img = cv2.resize(np.ascontiguousarray(image), (s, s), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(np.ascontiguousarray(labels).astype(np.uint8 if labels.dtype == bool else np.int32), (s, s), interpolation=cv2.INTER_NEAREST)
    return img, lab.astype(labels.dtype)


def load_item(parts: Parts, ds: SegmentationDataset, pos: int, size: int | str) -> Item:
    sample = ds[pos]
    if sample.mask is None:
        raise DataError(f"{parts.key}: sample {sample.id!r} has no annotation")
    if parts.binary:
        text = (sample.texts[:1] or ("foreground",))[0]
        if text not in parts.labels:
            raise DataError(f"{parts.key}: sample {sample.id!r} has text {text!r}, not among the prompted {parts.labels[1:]}")
        label = parts.labels.index(text)
        target = np.where(sample.mask, label, 0).astype(np.int64)
        lom = [label]
    else:
        target, lom = np.asarray(sample.mask, np.int64), list(parts.prompted)
    image, target = resize_pair(sample.image, target, size)
    return Item(str(sample.id), image, target, lom)


def to_merge_labels(target: np.ndarray, label_of_map: Sequence[int], has_background: bool) -> np.ndarray:
    """Dataset labels -> :func:`merge_sot`'s numbering (``0`` = background, ``k + 1`` = map k; or ``k``);
    labels of unprompted classes become ``IGNORE_INDEX``."""
    lut = np.full(max(int(target.max(initial=0)), *label_of_map, IGNORE_INDEX) + 1, IGNORE_INDEX, np.int64)
    if has_background:
        lut[0] = 0
    for k, lab in enumerate(label_of_map):
        lut[lab] = k + 1 if has_background else k
    return lut[np.clip(target, 0, len(lut) - 1)]


def to_dataset_labels(merged: np.ndarray, label_of_map: Sequence[int], has_background: bool) -> np.ndarray:
    lut = np.asarray(([0] if has_background else []) + list(label_of_map), np.int64)
    return lut[merged]


def confusion(pred: np.ndarray, target: np.ndarray, n_labels: int) -> np.ndarray:
    return ConfusionMatrix(n_labels, IGNORE_INDEX).update(pred, target).matrix
