"""Pascal VOC 2012, ADE20K (SceneParsing, 150 classes) and Cityscapes (gtFine, 19 train ids):
class lists, label conversions and the readers of their original downloads.

>>> from segprompt.data import load_dataset
>>> val = load_dataset("voc", split="val")           # doctest: +SKIP
>>> val.class_names[:3], val.semantic.has_background  # doctest: +SKIP
(('background', 'aeroplane', 'bicycle'), True)

Every reader yields :class:`~segprompt.data.sample.Sample` with an int64 ``(H, W)`` label map:
class index ``i`` names ``class_names[i]``, ``255`` = ignore. The raw PNG values are turned into
class indices by a 256-entry lookup table (:attr:`SemanticSet.lut`); a raw value the table does
not know is a :class:`DataError` naming the file.

- **VOC 2012** (``VOCdevkit/VOC2012``): ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``
  (palette PNG: the palette *index* is the class), ``ImageSets/Segmentation/<split>.txt``.
  21 classes, 0 = background, 255 = void boundary (kept as ignore).
- **ADE20K** (``ADEChallengeData2016``): ``images/{training,validation}/*.jpg`` +
  ``annotations/{training,validation}/*.png``, values 0..150, 0 = "other / unlabelled".
  ``zero_label="background"`` (default, Show-or-Tell's reading): 0 stays class 0 named
  ``background`` (151 names; an unprompted background, SoT's ``ignore_background=True``);
  ``zero_label="ignore"`` (mmsegmentation's ``reduce_zero_label``): 0 -> 255, ``k`` -> ``k - 1``,
  150 names.
- **Cityscapes**: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` +
  ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``; label ids -> the 19 train ids of the
  official table (:data:`CITYSCAPES_LABELS`), every other id -> 255. No background class.

Sources followed: FocoosAI/ShowOrTell ``data/pascalvoc_fss.py``, ``data/ade_fss.py``,
``data/cityscapes_fss.py``, ``models/base_model.py``; open-mmlab/mmsegmentation
``mmseg/datasets/ade.py`` (the 150 names); mcordts/cityscapesScripts
``cityscapesscripts/helpers/labels.py`` (the label table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from segprompt.data.io import read_mask_array
from segprompt.data.labelmap import LabelMapDataset
from segprompt.data.sample import IGNORE_INDEX, SegmentationDataset
from segprompt.errors import ConfigError, DataError

__all__ = [
    "VOC_CLASSES",
    "ADE20K_CLASSES",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_CLASSES",
    "SemanticSet",
    "SemanticLabelMapDataset",
    "semantic_set",
    "voc_lut",
    "ade20k_lut",
    "cityscapes_lut",
    "voc_records",
    "ade20k_records",
    "cityscapes_records",
    "RECORDS",
    "load_semantic",
]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
"""Pascal VOC 2012 classes, index = palette index (ShowOrTell ``data/pascalvoc_fss.py``)."""

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food",
    "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
"""The 150 SceneParsing classes, ADE PNG value ``k`` = ``ADE20K_CLASSES[k - 1]`` (mmsegmentation
``mmseg/datasets/ade.py``; the first name of each objectInfo150 synonym list, as ShowOrTell's
``data/ade_fss.py`` whose names carry all synonyms joined by ``;``)."""

CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15), ("caravan", 29, 255),
    ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
)  # fmt: skip
"""``(name, labelId, trainId)`` of every id a ``*_gtFine_labelIds.png`` holds: the official table of
mcordts/cityscapesScripts ``cityscapesscripts/helpers/labels.py`` (``license plate``, id -1, is never
written into the PNGs and is left out)."""

CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    name for name, _, train_id in sorted((r for r in CITYSCAPES_LABELS if r[2] != 255), key=lambda r: r[2])
)
"""The 19 train-id classes, index = train id (``road`` ... ``bicycle``), as ``trainId2label``."""


# ------------------------------------------------------------------------------ lookup tables


def _lut(pairs: Mapping[int, int]) -> np.ndarray:
    """``(256,)`` int64: raw value -> class index / 255; -1 where the value is unknown."""
    lut = np.full(256, -1, dtype=np.int64)
    for raw, out in pairs.items():
        lut[raw] = out
    return lut


def voc_lut() -> np.ndarray:
    """VOC: 0..20 unchanged, 255 (void boundary) stays 255 = ignore."""
    return _lut({**{i: i for i in range(len(VOC_CLASSES))}, 255: IGNORE_INDEX})


def ade20k_lut(zero_label: str = "background") -> np.ndarray:
    """ADE20K: ``"background"``: 0..150 unchanged; ``"ignore"``: 0 -> 255, ``k`` -> ``k - 1``."""
    if zero_label == "background":
        return _lut({i: i for i in range(len(ADE20K_CLASSES) + 1)})
    if zero_label == "ignore":
        return _lut({0: IGNORE_INDEX, **{i: i - 1 for i in range(1, len(ADE20K_CLASSES) + 1)}})
    raise ConfigError(f"ADE20K zero_label must be 'background' (Show-or-Tell) or 'ignore' (mmseg reduce_zero_label), got {zero_label!r}")


def cityscapes_lut() -> np.ndarray:
    """Cityscapes: label id -> train id (:data:`CITYSCAPES_LABELS`); ids with train id 255 -> 255."""
    return _lut({label_id: train_id for _, label_id, train_id in CITYSCAPES_LABELS})


# ------------------------------------------------------------------------------ facts


@dataclass(frozen=True)
class SemanticSet:
    """What one semantic-segmentation download is.

    Attributes:
        name: the registry name.
        class_names: index -> name of ``Sample.mask`` values.
        lut: ``(256,)`` int64, raw PNG value -> class index or 255; -1 = not a valid value.
        splits: the splits of the download's layout, references from ``"train"``, evaluation on ``"val"``.
        has_background: class 0 is an unprompted background (named ``"background"``, the rule the
            SoT bench reads).
        sot_background: how Show-or-Tell's released code treats class 0: ``"prompted"`` (VOC:
            ``ignore_background=False``, background is one of the 21 prompted classes with
            references, no 0.2 threshold), ``"zero-map"`` (ADE20K: a zero map, probabilities
            ``<= 0.2`` zeroed, background left out of the mean IoU) or ``"none"`` (Cityscapes).
    """

    name: str
    class_names: tuple[str, ...]
    lut: np.ndarray
    splits: tuple[str, ...]
    has_background: bool
    sot_background: str


def semantic_set(name: str, zero_label: str = "background") -> SemanticSet:
    """The :class:`SemanticSet` of ``"voc"``, ``"ade20k"`` or ``"cityscapes"`` (``zero_label``: ADE20K only)."""
    if name == "voc":
        return SemanticSet("voc", VOC_CLASSES, voc_lut(), ("train", "val"), True, "prompted")
    if name == "ade20k":
        names = (("background",) + ADE20K_CLASSES) if zero_label == "background" else ADE20K_CLASSES
        return SemanticSet("ade20k", names, ade20k_lut(zero_label), ("train", "val"), zero_label == "background", "zero-map")
    if name == "cityscapes":
        return SemanticSet("cityscapes", CITYSCAPES_CLASSES, cityscapes_lut(), ("train", "val"), False, "none")
    raise ConfigError(f"no semantic set {name!r}; known: voc, ade20k, cityscapes")


# ------------------------------------------------------------------------------ the dataset


class SemanticLabelMapDataset(LabelMapDataset):
    """Label maps listed explicitly, raw values converted by a lookup table.

    Records are ``{"id", "image": Path, "mask": Path, "meta": {"split": ...}}``. A
    :class:`~segprompt.data.labelmap.LabelMapDataset` (``read_labels``, ``load``, ``class_names``,
    ``ignore_index`` 255), so :class:`segprompt.sot.ReferenceIndex` reads its masks without images.

    Attributes:
        semantic: the :class:`SemanticSet`; split: the split read (None = all of them).
    """

    def __init__(self, records: list[dict[str, Any]], semantic: SemanticSet, root: Path, split: str | None) -> None:
        SegmentationDataset.__init__(self)
        self.root, self.name, self.semantic, self.split = Path(root), semantic.name, semantic, split
        self.ignore_index = IGNORE_INDEX
        self.void_values: tuple[int, ...] = ()
        self.class_names = tuple(semantic.class_names)
        self.class_table = dict(enumerate(self.class_names))
        self.lut = semantic.lut
        self.valid_values = np.flatnonzero(self.lut >= 0).astype(np.int64)
        self.records = records

    def read_labels(self, path: Path) -> np.ndarray:
        """``(H, W)`` int64 class indices (255 = ignore) of the raw label PNG at ``path``."""
        raw = read_mask_array(path)
        if raw.size and (int(raw.min()) < 0 or int(raw.max()) >= len(self.lut)):
            raise DataError(f"{path}: label values outside 0-255 ({int(raw.min())}..{int(raw.max())}); not a {self.name} label map")
        out = self.lut[raw.astype(np.int64)]
        if (out < 0).any():
            bad = np.unique(raw[out < 0])
            shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
            raise DataError(f"{path}: label values {shown} are not {self.name} labels (valid: {_ranges(self.valid_values)})")
        return out


def _ranges(values: np.ndarray) -> str:
    """``[0, 1, 2, 5, 255]`` -> ``"0-2, 5, 255"``."""
    parts, start = [], None
    vals = [int(v) for v in values]
    for i, v in enumerate(vals):
        start = v if start is None else start
        if i + 1 == len(vals) or vals[i + 1] != v + 1:
            parts.append(str(v) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


# ------------------------------------------------------------------------------ layouts


def _missing(folder: Path, what: str, names: Sequence[str], total: int, hint: str) -> DataError:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return DataError(f"{folder}: {len(names)} of {total} {what} missing ({shown}); {hint}")


def _pick(split: str | None, known: Mapping[str, str], title: str) -> list[str]:
    """Canonical splits to read: ``[split]`` (aliases allowed) or all of ``known`` for None."""
    if split is None:
        return list(dict.fromkeys(known.values()))
    if split not in known:
        raise ConfigError(f"{title} splits are {', '.join(dict.fromkeys(known.values()))}; got split={split!r}")
    return [known[split]]


def voc_records(root: Path, split: str | None) -> list[dict[str, Any]]:
    """VOC 2012 records of ``split`` (any ``ImageSets/Segmentation/<split>.txt``; None = train + val)."""
    lists = root / "ImageSets" / "Segmentation"
    available = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []
    wanted = [split] if split is not None else [s for s in ("train", "val") if s in available]
    if split is not None and split not in available:
        raise DataError(f"{lists}: no {split}.txt for split={split!r} (lists there: {', '.join(available) or 'none'})")
    if not wanted:
        raise DataError(f"{lists}: no train.txt or val.txt split list")
    images, labels = root / "JPEGImages", root / "SegmentationClass"
    records: list[dict[str, Any]] = []
    for s in wanted:
        list_file = lists / f"{s}.txt"
        ids = [ln.split()[0] for ln in list_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not ids:
            raise DataError(f"{list_file}: the split list is empty")
        for folder, suffix, what in ((images, ".jpg", "images"), (labels, ".png", "label PNGs")):
            gone = [i + suffix for i in ids if not (folder / (i + suffix)).is_file()]
            if gone:
                raise _missing(folder, f"{what} listed in {list_file.name}", gone, len(ids), "is the VOC2012 trainval download complete?")
        records += [{"id": i, "image": images / f"{i}.jpg", "mask": labels / f"{i}.png", "meta": {"split": s}} for i in ids]
    return records


_ADE_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val"}
_ADE_FOLDERS = {"train": "training", "val": "validation"}


def ade20k_records(root: Path, split: str | None) -> list[dict[str, Any]]:
    """ADEChallengeData2016 records: ``images/<part>/*.jpg`` paired with ``annotations/<part>/<stem>.png``."""
    records: list[dict[str, Any]] = []
    for canonical in _pick(split, _ADE_SPLITS, "ADE20K"):
        part = _ADE_FOLDERS[canonical]
        img_dir, ann_dir = root / "images" / part, root / "annotations" / part
        if split is None and not img_dir.is_dir():
            continue
        for folder in (img_dir, ann_dir):
            if not folder.is_dir():
                raise DataError(f"{folder}: folder not found for split={canonical!r} (expected images/{part}/*.jpg + annotations/{part}/*.png)")
        stems = sorted(p.stem for p in img_dir.iterdir() if p.suffix.lower() == ".jpg")
        if not stems:
            raise DataError(f"{img_dir}: no .jpg images")
        gone = [s + ".png" for s in stems if not (ann_dir / f"{s}.png").is_file()]
        if gone:
            raise _missing(ann_dir, "annotation PNGs", gone, len(stems), "each images/<part>/<stem>.jpg needs annotations/<part>/<stem>.png")
        records += [{"id": s, "image": img_dir / f"{s}.jpg", "mask": ann_dir / f"{s}.png", "meta": {"split": canonical}} for s in stems]
    if not records:
        raise DataError(f"{root}: no images/training or images/validation folder")
    return records


_CS_IMAGE, _CS_LABEL = "_leftImg8bit.png", "_gtFine_labelIds.png"


def cityscapes_records(root: Path, split: str | None) -> list[dict[str, Any]]:
    """Cityscapes records: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` + the gtFine labelIds PNG."""
    records: list[dict[str, Any]] = []
    for s in _pick(split, {"train": "train", "val": "val"}, "Cityscapes"):
        img_dir, gt_dir = root / "leftImg8bit" / s, root / "gtFine" / s
        if split is None and not img_dir.is_dir():
            continue
        for folder in (img_dir, gt_dir):
            if not folder.is_dir():
                raise DataError(f"{folder}: folder not found for split={s!r} (expected leftImg8bit/{s}/<city>/ + gtFine/{s}/<city>/)")
        images = sorted(img_dir.glob(f"*/*{_CS_IMAGE}"))
        if not images:
            raise DataError(f"{img_dir}: no <city>/*{_CS_IMAGE} images")
        pairs = [(p, gt_dir / p.parent.name / (p.name[: -len(_CS_IMAGE)] + _CS_LABEL)) for p in images]
        gone = [f"{m.parent.name}/{m.name}" for _, m in pairs if not m.is_file()]
        if gone:
            raise _missing(gt_dir, "labelIds PNGs", gone, len(pairs), "the gtFine_trainvaltest download holds them")
        records += [
            {"id": p.name[: -len(_CS_IMAGE)], "image": p, "mask": m, "meta": {"split": s, "city": p.parent.name}}
            for p, m in pairs
        ]
    if not records:
        raise DataError(f"{root}: no leftImg8bit/train or leftImg8bit/val folder")
    return records


RECORDS: dict[str, Callable[[Path, str | None], list[dict[str, Any]]]] = {
    "voc": voc_records,
    "ade20k": ade20k_records,
    "cityscapes": cityscapes_records,
}
"""Registry name -> the function listing that download's records."""


def load_semantic(name: str, root: Path, split: str | None, zero_label: str = "background") -> SemanticLabelMapDataset:
    """Read the original download of ``name`` (``voc``, ``ade20k``, ``cityscapes``) at ``root``."""
    semantic = semantic_set(name, zero_label)
    return SemanticLabelMapDataset(RECORDS[name](Path(root), split), semantic, Path(root), split)
