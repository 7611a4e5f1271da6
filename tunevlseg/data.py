"""Data for prompt tuning: the TuneVLSeg benchmark datasets and a model-ready torch Dataset.

.. code-block:: python

    from tunevlseg.data import load_benchmark_split, VLSegDataset, collate
    train = load_benchmark_split("kvasir", "train")            # $SEGPROMPT_DATA_ROOT/kvasir_polyp/...
    ds = VLSegDataset(train, image_size=vlsm.image_size, train=True, prompt="random", seed=0)
    ds.set_epoch(3)                                            # new augmentations / random prompts
    batch = collate([ds[0], ds[1]])    # image (B,3,H,W) in [0,1], mask, valid, text, id, size, ...
    logits = vlsm(vlsm.preprocess(batch["image"]), batch["text"], learner=learner)

The registry (:data:`BENCHMARKS`) holds the eight medical and two natural TuneVLSeg datasets with
their expected split counts. Medical sets are read in TuneVLSeg's split-file layout (``images/``,
``masks/``, ``anns/{train,val,test}.json``; ``segprompt data convert-tunevlseg`` writes it from
any folder dataset); :func:`check_split_counts` warns (:class:`SplitCountWarning`) when a user's
folder has other counts. The natural sets are label maps, binarised per class
(:class:`BinarisedDataset`: one sample per image x present class, the class name as prompt);
their test labels are not public, so they have no test split (TuneVLSeg reported val as test; the
training code here says so in its rows instead).

Prompt choice per image (:func:`choose_prompt`): ``"p<k>"`` / ``k`` a fixed prompt (TuneVLSeg's
``prompt_index``), ``"random"`` one of ``p1..pN`` (``p0``, the bare class name, excluded unless
it is the only one) or of the sample's texts, drawn from ``numpy.random.default_rng([seed,
epoch, index])``: a seed always gives the same prompts, and training draws anew every epoch.

Transforms: training = flips, a small affine warp and colour jitter, then a plain resize to the
model input (CLIPSeg's processor stretches to its square input); evaluation = the same plain
resize only, deterministic. Augmentations are re-seeded per (seed, epoch, index), so an item does
not depend on the order it is read in (data-loader workers, resumed runs).
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from segprompt.data.io import read_image, read_mask_array
from segprompt.data.labelmap import binarise
from segprompt.data.sample import IGNORE_INDEX, Sample, SegmentationDataset
from segprompt.data.transforms import SampleTransform, eval_transform, train_transform
from segprompt.data.tunevlseg_format import TuneVLSegDataset, ordered_prompts
from segprompt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = [
    "BenchmarkDataset",
    "BENCHMARKS",
    "SplitCountWarning",
    "benchmark_info",
    "list_benchmarks",
    "dataset_label",
    "resolve_benchmark_root",
    "split_counts",
    "check_split_counts",
    "check_dataset",
    "has_split",
    "load_benchmark_split",
    "LabelMapSplit",
    "VOC_CLASSES",
    "CITYSCAPES_CLASSES",
    "BinarisedDataset",
    "choose_prompt",
    "make_transforms",
    "VLSegDataset",
    "collate",
]

ENV_VAR = "SEGPROMPT_DATA_ROOT"


class SplitCountWarning(UserWarning):
    """A dataset folder holds other split counts than the TuneVLSeg benchmark."""


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkDataset:
    """One TuneVLSeg benchmark dataset.

    Attributes:
        name: key (``load_benchmark_split(name, split)``).
        title: human-readable name.
        domain: ``"medical"`` or ``"natural"``.
        text: the default prompt (p0 of the TuneVLSeg split files; natural sets use class names).
        counts: expected entries per split file (medical) or images per split (natural); None =
            not fixed by the benchmark (not checked).
        has_test: whether labelled test data exist. False for Pascal VOC and Cityscapes (test
            labels are withheld; TuneVLSeg reported their validation split as "test").
        folder_names: folders looked for under ``$SEGPROMPT_DATA_ROOT``.
        registry: the name in :mod:`segprompt.data.registry` (medical sets).
        layout: ``"tunevlseg"``, ``"voc"`` or ``"cityscapes"``.
        notes: anything else worth knowing.
    """

    name: str
    title: str
    domain: str
    text: str
    counts: Mapping[str, int | None]
    has_test: bool = True
    folder_names: tuple[str, ...] = ()
    registry: str | None = None
    layout: str = "tunevlseg"
    notes: str = ""

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.counts)


def _medical(name: str, title: str, text: str, train: int | None, val: int, test: int, folders: Sequence[str], notes: str = "") -> BenchmarkDataset:
    return BenchmarkDataset(
        name=name, title=title, domain="medical", text=text, counts={"train": train, "val": val, "test": test},
        folder_names=tuple(folders), registry=name, notes=notes,
    )


#: The ten TuneVLSeg datasets (Poudel et al., ACCV 2024, table 1 and the repo's split files).
BENCHMARKS: dict[str, BenchmarkDataset] = {
    d.name: d
    for d in (
        _medical("bkai", "BKAI-IGH NeoPolyp", "polyp", 800, 100, 100, ("bkai_polyp", "bkai", "bkai-igh-neopolyp")),
        _medical("busi", "BUSI breast ultrasound", "breast tumor", 624, 78, 78, ("busi", "Dataset_BUSI_with_GT")),
        _medical(
            "camus", "CAMUS echocardiography", "heart", None, 600, 600, ("camus",),
            notes="3 masks per image (left ventricle, myocardium, left atrium), each a sample with its own prompts; "
            "the train count is not fixed here (val 600 / test 600 are)",
        ),
        _medical(
            "chexlocalize", "CheXlocalize chest X-ray", "lung pathology", 1279, 446, 452, ("chexlocalize", "CheXlocalize"),
            notes="10 pathologies; one sample per (image, pathology) with the pathology in the prompts",
        ),
        _medical("clinicdb", "CVC-ClinicDB", "polyp", 490, 61, 61, ("clinicdb_polyp", "clinicdb", "CVC-ClinicDB")),
        _medical("dfu", "DFU 2022 foot ulcer", "foot ulcer", 1600, 200, 200, ("dfu", "dfu2022", "DFUC2022")),
        _medical("isic", "ISIC 2018 skin lesion", "skin lesion", 810, 90, 379, ("isic", "isic2018", "ISIC2018")),
        _medical("kvasir", "Kvasir-SEG", "polyp", 800, 100, 100, ("kvasir_polyp", "kvasir_seg", "Kvasir-SEG", "kvasir")),
        BenchmarkDataset(
            name="pascal-voc", title="Pascal VOC 2012 (binarised per class)", domain="natural", text="{class}",
            counts={"train": 1464, "val": 1449}, has_test=False, layout="voc",
            folder_names=("VOCdevkit/VOC2012", "VOC2012", "pascal_voc", "voc2012", "pascal-voc"),
            notes="counts are images (ImageSets/Segmentation/{train,val}.txt); samples = image x present class "
            "(background excluded, 255 = void ignored); test labels are withheld: no test split",
        ),
        BenchmarkDataset(
            name="cityscapes", title="Cityscapes (fine, 19 classes, binarised per class)", domain="natural", text="{class}",
            counts={"train": 2975, "val": 500}, has_test=False, layout="cityscapes",
            folder_names=("cityscapes", "Cityscapes"),
            notes="counts are images (leftImg8bit/<split>/<city>/); labelIds mapped to the 19 train ids, the rest "
            "ignored; samples = image x present class; test labels are withheld: no test split",
        ),
    )
}
_ALIASES = {"voc": "pascal-voc", "pascal_voc": "pascal-voc", "voc2012": "pascal-voc", "kvasir-seg": "kvasir", "kvasir_seg": "kvasir",
            "kvasir_polyp": "kvasir", "bkai_polyp": "bkai", "clinicdb_polyp": "clinicdb", "isic2018": "isic", "cvc-clinicdb": "clinicdb"}


def _key(name: str) -> str | None:
    k = name.strip().lower()
    k = _ALIASES.get(k, k)
    return k if k in BENCHMARKS else None


def list_benchmarks() -> list[str]:
    return list(BENCHMARKS)


def benchmark_info(name: str) -> BenchmarkDataset:
    key = _key(name)
    if key is None:
        raise ConfigError(f"unknown TuneVLSeg dataset {name!r}; known: {', '.join(BENCHMARKS)} (or pass a folder path)")
    return BENCHMARKS[key]


def _is_path(dataset: str | os.PathLike[str]) -> bool:
    return isinstance(dataset, os.PathLike) or os.sep in str(dataset) or Path(str(dataset)).expanduser().is_dir()


def dataset_label(dataset: str | os.PathLike[str]) -> str:
    """A short name for rows and folder names: the benchmark key, or the folder's name."""
    if not _is_path(dataset):
        key = _key(str(dataset))
        if key is not None:
            return key
    name = Path(str(dataset)).expanduser().name or "dataset"
    return re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-") or "dataset"


def resolve_benchmark_root(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of benchmark dataset ``name``: ``root``, else ``$SEGPROMPT_DATA_ROOT/<folder>``."""
    from segprompt.data.registry import find_data_folder

    spec = benchmark_info(name)
    try:
        return find_data_folder(spec.name, spec.folder_names, root, hint=spec.title)
    except DataError as exc:  # say it with the command line's words (--root NAME=FOLDER)
        if root is not None:
            raise DataError(f"--root {spec.name}={root}: folder not found ({spec.title})") from exc
        base = os.environ.get(ENV_VAR)
        looked = ", ".join(n + "/" for n in spec.folder_names)
        where = f"{ENV_VAR}={base} has none of {looked}" if base else f"{ENV_VAR} is not set (it names the folder holding {spec.folder_names[0]}/)"
        raise DataError(f"dataset {spec.name!r} ({spec.title}) not found: {where}; pass --root {spec.name}=FOLDER, or put the folder there") from exc


def check_dataset(dataset: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> tuple[Path, list[str]]:
    """Check, before any training, that ``dataset`` can be loaded: its folder exists, has a known
    layout and train and val splits. Returns (folder, split-count messages); reads no pixels.

    Raises:
        DataError: naming the ``--dataset`` / ``--root`` value at fault and what to do.
    """
    spec = None
    if _is_path(dataset):
        folder = Path(str(dataset)).expanduser()
        if not folder.is_dir():
            raise DataError(f"--dataset {dataset}: no such folder (and not a TuneVLSeg dataset name: {', '.join(BENCHMARKS)})")
    else:
        spec = benchmark_info(str(dataset))
        folder = resolve_benchmark_root(spec.name, root)
    layout = _layout_of(folder)
    if layout is None and spec is not None and spec.layout == "voc" and (folder / "VOC2012").is_dir():
        folder, layout = folder / "VOC2012", "voc"
    if layout is None:
        raise DataError(
            f"--dataset {dataset}: {folder} is not a TuneVLSeg split folder (images/, masks/, anns/{{train,val,test}}.json), "
            f"Pascal VOC, Cityscapes or label-map (classes.json) folder; convert a binary folder dataset with "
            f"`segprompt data convert-tunevlseg {folder} OUT --text <class>`"
        )
    for split in ("train", "val"):
        if not has_split(folder, split):
            raise DataError(f"--dataset {dataset}: {folder} has no {split} split (prompt tuning needs train and val)")
    messages = check_split_counts(spec.name, folder, warn=False) if spec is not None else []
    return folder, messages


# ---------------------------------------------------------------------------------------------
# layouts and split counts
# ---------------------------------------------------------------------------------------------


def _layout_of(root: Path) -> str | None:
    if (root / "anns").is_dir():
        return "tunevlseg"
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "classes.json").is_file() and ((root / "images").is_dir() or any(root.glob("*/images"))):
        return "labelmap"  # images/ + masks/, or <split>/images/ + <split>/masks/
    return None


def split_counts(root: str | os.PathLike[str]) -> dict[str, int]:
    """Entries per split file (TuneVLSeg layout) or images per split (VOC, Cityscapes) at ``root``,
    read without decoding any pixels."""
    root = Path(root)
    layout = _layout_of(root)
    out: dict[str, int] = {}
    if layout == "tunevlseg":
        for path in sorted((root / "anns").glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot read the split file ({exc})") from exc
            out[path.stem] = len(data) if isinstance(data, list) else 0
    elif layout == "voc":
        for path in sorted((root / "ImageSets" / "Segmentation").glob("*.txt")):
            out[path.stem] = sum(1 for line in path.read_text().splitlines() if line.strip())
    elif layout == "cityscapes":
        for folder in sorted(p for p in (root / "leftImg8bit").iterdir() if p.is_dir()):
            out[folder.name] = sum(1 for _ in folder.glob("*/*_leftImg8bit.png"))
    return out


def check_split_counts(name: str, root: str | os.PathLike[str], warn: bool = True) -> list[str]:
    """Compare the split counts at ``root`` with benchmark ``name``'s; one message per difference.

    ``warn=True`` (loading data) issues each message once as a :class:`SplitCountWarning` (the
    CLI shows Python warnings as ``warning:`` lines); ``warn=False`` only returns them, for a
    caller that reports them itself (``segprompt bench tunevlseg datasets --check``). A subset or
    another split is allowed when loading (a warning, not an error): results are then not
    comparable with TuneVLSeg's."""
    spec = benchmark_info(name)
    found = split_counts(root)
    messages = []
    for split, expected in spec.counts.items():
        if expected is None:
            continue
        have = found.get(split)
        if have is None:
            messages.append(f"{root}: no {split} split (TuneVLSeg's {spec.name} has {expected})")
        elif have != expected:
            messages.append(f"{root}: {split} has {have} entries, TuneVLSeg's {spec.name} has {expected}; results are not comparable")
    if warn:
        for m in messages:
            warnings.warn(m, SplitCountWarning, stacklevel=2)
    return messages


def has_split(dataset: str | os.PathLike[str], split: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``dataset`` has labelled data for ``split`` (False for the natural sets' test)."""
    if not _is_path(dataset):
        spec = benchmark_info(str(dataset))
        if split == "test" and not spec.has_test:
            return False
        folder = resolve_benchmark_root(spec.name, root)
    else:
        folder = Path(str(dataset)).expanduser()
    layout = _layout_of(folder)
    if layout is None and (folder / "VOC2012").is_dir():  # a VOCdevkit-style parent, as load_benchmark_split accepts
        folder = folder / "VOC2012"
        layout = _layout_of(folder)
    if layout == "tunevlseg":
        return (folder / "anns" / f"{split}.json").is_file()
    if layout == "voc":
        return split != "test" and (folder / "ImageSets" / "Segmentation" / f"{split}.txt").is_file()
    if layout == "cityscapes":
        return split != "test" and (folder / "leftImg8bit" / split).is_dir()
    if layout == "labelmap":
        return (folder / split / "images").is_dir()
    return (folder / split).is_dir()


# ---------------------------------------------------------------------------------------------
# natural label-map sets
# ---------------------------------------------------------------------------------------------

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
    "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor",
)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

#: Cityscapes labelIds -> train ids (cityscapesscripts' labels.py); everything else is ignored
_CITYSCAPES_LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                              26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


class LabelMapSplit(SegmentationDataset):
    """A label-map split: records ``{"id", "image", "mask"}``, values mapped through ``lut``
    (256 entries: raw value -> class index, or ``ignore_index``)."""

    task = "multiclass"

    def __init__(self, records: list[dict[str, Any]], class_names: Sequence[str], lut: np.ndarray | None, name: str, root: Path, background: int | None) -> None:
        super().__init__()
        self.records = records
        self.class_names = tuple(class_names)
        self.lut = lut
        self.name, self.root = name, root
        self.background = background
        #: (id, message) of images left out because their labels could not be found or read
        self.skipped: list[tuple[str, str]] = []

    def read_labels(self, path: Path) -> np.ndarray:
        raw = read_mask_array(path).astype(np.int64)
        if self.lut is None:
            bad = (raw >= len(self.class_names)) & (raw != self.ignore_index)
            if bad.any():
                raise DataError(f"{path}: label values {sorted(set(raw[bad].tolist()))[:6]} are not in the class list")
            return raw
        return self.lut[np.clip(raw, 0, len(self.lut) - 1)]

    def load(self, record: Mapping[str, Any]) -> Sample:
        image = read_image(record["image"])
        labels = self.read_labels(record["mask"])
        if labels.shape != image.shape[:2]:
            raise DataError(f"{record['mask']}: label map size {labels.shape} differs from the image size {image.shape[:2]}")
        present = tuple(self.class_names[v] for v in np.unique(labels) if 0 <= v < len(self.class_names))
        return Sample(
            id=record["id"], image=image, mask=labels, texts=present, class_names=self.class_names, ignore_index=self.ignore_index,
            meta={"image_path": str(record["image"]), "mask_path": str(record["mask"])},
        )

    @classmethod
    def voc(cls, root: str | os.PathLike[str], split: str) -> "LabelMapSplit":
        """Pascal VOC 2012: ``JPEGImages/``, ``SegmentationClass/`` (palette PNG: indices 0-20,
        255 = void border), ``ImageSets/Segmentation/<split>.txt``."""
        root = Path(root)
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"{listing}: no such split list (Pascal VOC has train and val; test labels are withheld)")
        records = []
        for stem in (s.strip() for s in listing.read_text().splitlines()):
            if stem:
                records.append({"id": stem, "image": root / "JPEGImages" / f"{stem}.jpg", "mask": root / "SegmentationClass" / f"{stem}.png"})
        return cls(records, VOC_CLASSES, None, "pascal-voc", root, background=0)

    @classmethod
    def cityscapes(cls, root: str | os.PathLike[str], split: str) -> "LabelMapSplit":
        """Cityscapes fine: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
        ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (preferred) or ``*_gtFine_labelIds.png``."""
        root = Path(root)
        folder = root / "leftImg8bit" / split
        if not folder.is_dir():
            raise DataError(f"{folder}: no such split folder")
        lut = np.full(256, IGNORE_INDEX, np.int64)
        for label, train_id in _CITYSCAPES_LABEL_TO_TRAIN.items():
            lut[label] = train_id
        identity = np.full(256, IGNORE_INDEX, np.int64)
        identity[: len(CITYSCAPES_CLASSES)] = np.arange(len(CITYSCAPES_CLASSES))
        records, luts = [], set()
        missing: list[tuple[str, str]] = []
        for image in sorted(folder.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            gt = root / "gtFine" / split / image.parent.name
            train_ids = gt / f"{stem}_gtFine_labelTrainIds.png"
            label_ids = gt / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                records.append({"id": stem, "image": image, "mask": train_ids})
                luts.add("train")
            elif label_ids.is_file():
                records.append({"id": stem, "image": image, "mask": label_ids})
                luts.add("label")
            else:  # one image without labels: skipped (and reported), the split still loads
                missing.append((stem, f"{label_ids}: no gtFine label map for {image.name} (expected {label_ids.name} or {train_ids.name})"))
        if not records:
            raise DataError(f"{folder}: no *_leftImg8bit.png images with a gtFine label map")
        if len(luts) > 1:
            raise DataError(f"{root / 'gtFine' / split}: mixes labelTrainIds and labelIds files; keep one kind")
        out = cls(records, CITYSCAPES_CLASSES, identity if luts == {"train"} else lut, "cityscapes", root, background=None)
        out.skipped = missing
        return out

    @classmethod
    def folder(cls, root: str | os.PathLike[str], split: str | None) -> "LabelMapSplit":
        """A generic label-map folder: ``[<split>/]images/`` + ``masks/`` + ``classes.json`` (id -> name)."""
        from segprompt.data.labelmap import LabelMapDataset, detect_void, load_classes

        root = Path(root)
        base = root / split if split is not None and (root / split / "images").is_dir() else root
        if split is not None and base == root:
            raise DataError(f"{root}: no {split}/images folder; this label-map folder has no {split!r} split")
        table = load_classes(root / "classes.json")
        ds = LabelMapDataset(base, root / "classes.json", void_values=detect_void(table))
        background = next((i for i, n in enumerate(ds.class_names) if n.strip().lower() in ("background", "bg")), None)
        out = cls(list(ds.records), ds.class_names, None, root.name, root, background=background)
        out._labelmap = ds  # noqa: SLF001 - reuse its void handling
        return out


class BinarisedDataset(SegmentationDataset):
    """One binary sample per (image, class present in its label map), the class name as prompt.

    The background class and classes with fewer than ``min_pixels`` pixels are skipped; ignore
    pixels (void, unlabelled) stay in ``meta["ignore"]`` and count neither in the loss nor in the
    metrics. The label maps are read once here to index the pairs; an image whose label map
    cannot be read is left out and listed in ``skipped`` as ``(id, message)`` (the training run
    writes it to errors.jsonl), so one bad file does not stop a split from loading.
    """

    task = "binary"

    def __init__(self, base: LabelMapSplit, classes: Sequence[str] | None = None, min_pixels: int = 1, template: str = "{class}") -> None:
        super().__init__()
        self.base, self.name, self.root = base, base.name, base.root
        self.template = template
        names = list(base.class_names)
        wanted = set(range(len(names))) - ({base.background} if base.background is not None else set())
        if classes is not None:
            unknown = [c for c in classes if c not in names]
            if unknown:
                raise ConfigError(f"unknown class(es) {unknown} for {base.name}; classes: {', '.join(names)}")
            wanted &= {names.index(c) for c in classes}
        reader = getattr(base, "_labelmap", None)
        self.skipped: list[tuple[str, str]] = list(getattr(base, "skipped", []))
        for i, rec in enumerate(base.records):
            try:
                labels = reader.read_labels(rec["mask"]) if reader is not None else base.read_labels(rec["mask"])
            except DataError as exc:
                self.skipped.append((str(rec["id"]), str(exc)))
                continue
            values, counts = np.unique(labels, return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist()):
                if v in wanted and c >= min_pixels:
                    self.records.append({"id": f"{rec['id']}__{names[v].replace(' ', '_')}", "base": i, "class": v})

    def load(self, record: Mapping[str, Any]) -> Sample:
        rec = self.base.records[record["base"]]
        reader = getattr(self.base, "_labelmap", None)
        sample = reader.load(rec) if reader is not None else self.base.load(rec)
        out = binarise(sample, int(record["class"]))
        text = self.template.replace("{class}", out.texts[0])
        out.meta["class_name"] = out.texts[0]
        return Sample(id=record["id"], image=out.image, mask=out.mask, texts=(text,), meta=out.meta)


# ---------------------------------------------------------------------------------------------
# loading one split
# ---------------------------------------------------------------------------------------------


def load_benchmark_split(
    dataset: str | os.PathLike[str],
    split: str,
    root: str | os.PathLike[str] | None = None,
    check: bool = True,
    classes: Sequence[str] | None = None,
) -> SegmentationDataset:
    """The binary samples of ``split`` of ``dataset`` (a benchmark name or a folder).

    A name resolves its folder with ``root`` or ``$SEGPROMPT_DATA_ROOT``; medical sets must be in
    the TuneVLSeg split layout (``segprompt data convert-tunevlseg`` writes it), and their split
    counts are checked (:func:`check_split_counts`, a warning). A folder is read by its layout:
    TuneVLSeg (``anns/``), Pascal VOC, Cityscapes, or a label-map folder with ``classes.json``
    (these three binarised per class). Prompts are chosen later, per item (:class:`VLSegDataset`).
    """
    spec = None
    if _is_path(dataset):
        folder = Path(str(dataset)).expanduser()
        if not folder.is_dir():
            raise DataError(f"{folder}: dataset folder not found")
    else:
        spec = benchmark_info(str(dataset))
        folder = resolve_benchmark_root(spec.name, root)
        if split == "test" and not spec.has_test:
            raise DataError(f"{spec.title} has no labelled test split (test labels are withheld); evaluate on val")
    layout = _layout_of(folder)
    if layout is None and spec is not None and spec.layout == "voc" and (folder / "VOC2012").is_dir():
        folder, layout = folder / "VOC2012", "voc"
    if layout == "tunevlseg":
        if spec is not None and check:
            check_split_counts(spec.name, folder)
        ds: SegmentationDataset = TuneVLSegDataset(folder, split=split, name=spec.name if spec else None)
    elif layout == "voc":
        ds = BinarisedDataset(LabelMapSplit.voc(folder, split), classes=classes)
    elif layout == "cityscapes":
        ds = BinarisedDataset(LabelMapSplit.cityscapes(folder, split), classes=classes)
    elif layout == "labelmap":
        ds = BinarisedDataset(LabelMapSplit.folder(folder, split), classes=classes)
    else:
        raise DataError(
            f"{folder}: not a TuneVLSeg split folder (images/, masks/, anns/{{train,val,test}}.json), Pascal VOC, "
            f"Cityscapes or label-map (classes.json) folder. Convert a binary folder dataset with "
            f"`segprompt data convert-tunevlseg {folder} OUT --text <class>`"
        )
    if spec is not None and layout in ("voc", "cityscapes") and check:
        check_split_counts(spec.name, folder)
    if ds.task != "binary":
        raise DataError(f"{folder}: expected binary samples, got {ds.task}")
    return ds


# ---------------------------------------------------------------------------------------------
# prompts and transforms
# ---------------------------------------------------------------------------------------------


def _seed_of(*keys: Any) -> int:
    return zlib.crc32(repr(keys).encode()) & 0x7FFFFFFF


def _reseed(tf: SampleTransform, seed: int) -> None:
    """Seed every step of ``tf`` from ``seed``, each differently: albumentations'
    ``Compose.set_random_seed`` gives every transform the same seed, which makes their
    apply-or-not draws identical (all steps or none)."""
    tf.set_seed(seed)
    for i, t in enumerate(tf.compose.transforms):
        t.set_random_seed(_seed_of(seed, i))


def prompt_key(prompt: str | int) -> str:
    """The rule ``prompt`` as a key (``"p<k>"`` or ``"random"``); a ConfigError for anything else.
    Whether a sample has that prompt is checked per sample (:func:`choose_prompt`)."""
    if isinstance(prompt, bool) or not isinstance(prompt, (int, str)):
        raise ConfigError(f"prompt must be 'p<k>', an int k or 'random', got {prompt!r}")
    key = f"p{prompt}" if isinstance(prompt, int) else prompt
    if key != "random" and not re.fullmatch(r"p\d+", key):
        raise ConfigError(f"prompt must be 'p<k>', an int k or 'random', got {prompt!r}")
    return key


def choose_prompt(sample: Sample, prompt: str | int, rng: np.random.Generator, default: str | None = None) -> str:
    """The text prompt of ``sample`` under the rule ``prompt`` (``"p<k>"``, ``k`` or ``"random"``).

    TuneVLSeg samples (``meta["prompts"]``) follow TuneVLSeg: a fixed key, or a random key among
    p1..pN (p0 when it is the only one); a list value gives a random element. Other samples use
    ``sample.texts`` (index ``k``, or a random one), then ``default``.
    """
    key = prompt_key(prompt)
    prompts = sample.meta.get("prompts")
    if isinstance(prompts, Mapping) and prompts:
        items = ordered_prompts(prompts)
        table = dict(items)
        if key == "random":
            keys = [k for k, _ in items if k != "p0"] or [items[0][0]]
            key = keys[int(rng.integers(len(keys)))]
        if key not in table:
            raise DataError(f"sample {sample.id!r} has no prompt {key!r} (has {', '.join(table)})")
        value = table[key]
        return value[int(rng.integers(len(value)))] if isinstance(value, list) else str(value)
    texts = [t for t in sample.texts if t]
    if not texts:
        if default is None:
            raise DataError(f"sample {sample.id!r} has no text prompt; pass text= (e.g. the class name)")
        return default
    if key == "random":
        return texts[int(rng.integers(len(texts)))]
    k = int(key[1:])
    if k >= len(texts):
        raise DataError(f"sample {sample.id!r} has {len(texts)} text(s); prompt {key!r} does not exist")
    return texts[k]


def make_transforms(image_size: int | tuple[int, int], augment: bool = True, seed: int = 0) -> tuple[SampleTransform, SampleTransform]:
    """(training, evaluation) transforms ending at ``image_size`` (a plain resize, as CLIPSeg's
    processor). Training: horizontal flip (0.5), a small affine warp (p 0.5: scale 0.9-1.1,
    shift 5 %, rotation 10 degrees) and colour jitter (p 0.5); evaluation: the resize only."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    evaluate = eval_transform(size, keep_aspect=False)
    if not augment:
        return eval_transform(size, keep_aspect=False), evaluate
    train = train_transform(
        size, hflip=0.5, vflip=0.0, p_affine=0.5, scale=(0.9, 1.1), translate=0.05, rotate=10.0, p_color=0.5,
        brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, resize="stretch", seed=seed,
    )
    return train, evaluate


@dataclass
class VLSegDataset(torch.utils.data.Dataset):
    """Model-ready items of a binary :class:`SegmentationDataset` for a VLSM.

    Args:
        dataset: binary samples (TuneVLSeg split, binarised label maps, any dataset with texts).
        image_size: the model input (``vlsm.image_size``).
        train: training augmentation (True) or the deterministic evaluation resize (False).
        prompt: ``"p<k>"``, ``k`` or ``"random"`` (:func:`choose_prompt`).
        seed: seeds augmentation and random prompts (with the epoch and the index).
        text: the prompt of samples without texts.
        augment: False makes training items use the evaluation resize too.
        skip_errors: an item that cannot be read (missing or unreadable image or mask, no such
            prompt: a :class:`~segprompt.errors.DataError`) becomes an error item ``{"error":
            message, "id", "index"}`` instead of raising; :func:`collate` moves such items to
            ``batch["errors"]``, so a training or evaluation loop skips them and records them.

    An item is a dict: ``image`` float (3, H, W) in [0, 1] (normalise with ``vlsm.preprocess``),
    ``mask`` float (1, H, W), ``valid`` float (1, H, W) (0 on ignore pixels), ``text``, ``id``,
    ``index``, ``size`` (original (H0, W0)); evaluation items also carry ``target`` (bool (H0, W0)
    numpy, the original mask) and ``ignore`` (bool (H0, W0) or None).
    """

    dataset: SegmentationDataset
    image_size: tuple[int, int] | int
    train: bool = False
    prompt: str | int = "p0"
    seed: int = 0
    text: str | None = None
    augment: bool = True
    skip_errors: bool = False
    epoch: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.train_tf, self.eval_tf = make_transforms(self.image_size, self.augment, self.seed)
        prompt_key(self.prompt)  # the rule's form, now; a sample without that prompt fails (or is skipped) when read

    @property
    def transform(self) -> SampleTransform:
        return self.train_tf if self.train else self.eval_tf

    def set_epoch(self, epoch: int) -> None:
        """Training items (augmentation, random prompts) are drawn from (seed, epoch, index)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def item_id(self, index: int) -> str:
        """The id of item ``index`` without reading it."""
        records = getattr(self.dataset, "records", None)
        if records is not None and 0 <= index < len(records):
            return self.dataset.record_id(records[index])
        return str(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.skip_errors:
            return self._item(index)
        try:
            return self._item(index)
        except DataError as exc:
            return {"error": str(exc), "id": self.item_id(index), "index": int(index)}

    def _item(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        if sample.mask is None or sample.mask.dtype != bool:
            raise DataError(f"sample {sample.id!r}: a binary (bool) mask is needed")
        epoch = self.epoch if self.train else 0
        rng = np.random.default_rng([self.seed, epoch, index])
        text = choose_prompt(sample, self.prompt, rng, self.text)
        ignore = sample.meta.get("ignore")
        ignore = None if ignore is None or not np.any(ignore) else np.asarray(ignore, bool)
        labels = sample.mask.astype(np.uint8)
        if ignore is not None:
            labels[ignore] = 2
        tf = self.transform
        if self.train:
            _reseed(tf, _seed_of(self.seed, epoch, index))
        out = tf(sample.image, mask=labels)
        image = torch.from_numpy(np.ascontiguousarray(out.image)).permute(2, 0, 1).float() / 255.0
        lab = torch.from_numpy(np.ascontiguousarray(out.mask)).long()
        item: dict[str, Any] = {
            "image": image,
            "mask": (lab == 1).float()[None],
            "valid": (lab != 2).float()[None],
            "text": text,
            "id": sample.id,
            "index": int(index),
            "size": sample.size,
        }
        if not self.train:
            item["target"] = np.asarray(sample.mask, bool)
            item["ignore"] = ignore
        return item


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep texts, ids, sizes, original targets as lists.

    Error items (``VLSegDataset(skip_errors=True)``) go to ``batch["errors"]`` (a list, present
    only when there are some); a batch made of error items only has no ``"image"`` key."""
    good = [it for it in items if "error" not in it]
    out: dict[str, Any] = {}
    if good:
        for key in good[0]:
            values = [it[key] for it in good]
            out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    errors = [it for it in items if "error" in it]
    if errors:
        out["errors"] = errors
    return out
