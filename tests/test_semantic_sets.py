"""Original-download layouts of Pascal VOC 2012, ADE20K and Cityscapes on tiny fake folders (16 x 24 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segprompt.data.registry import dataset_info, dataset_splits, load_dataset, load_path
from segprompt.data.semantic_sets import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from segprompt.errors import ConfigError, DataError
from segprompt.sot.bench import BACKGROUND_NAMES
from segprompt.sot.references import ReferenceIndex, min_area_for

H, W = 16, 24


def _photo(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def _labels(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if palette:  # VOC's palette PNG: colours whose channels differ from the index
        img = img.convert("P")
        pal = np.zeros((256, 3), np.uint8)
        pal[:, 0], pal[:, 1], pal[:, 2] = (np.arange(256) * 7 + 50) % 256, 128, 200
        img.putpalette(pal.ravel().tolist())
    img.save(path)


def _stripes(values: list[int]) -> np.ndarray:
    """(H, W) with column blocks of ``values``."""
    return np.repeat(np.array(values, np.int64), W // len(values))[None, :].repeat(H, axis=0)


# ---------------------------------------------------------------------------------------- VOC


VOC_RAW = {"2007_000032": [0, 15, 255], "2007_000039": [0, 1, 20], "2008_000002": [7, 255, 0]}


@pytest.fixture()
def voc(tmp_path: Path) -> Path:
    base = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    for i, (vid, vals) in enumerate(VOC_RAW.items()):
        _photo(base / "JPEGImages" / f"{vid}.jpg", i)
        _labels(base / "SegmentationClass" / f"{vid}.png", _stripes(vals), palette=True)
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n2007_000039\n")
    (lists / "val.txt").write_text("2008_000002\n")
    return tmp_path / "data"


def test_voc_palette_indices_splits_and_names(voc: Path) -> None:
    with Image.open(voc / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png") as im:
        assert im.mode == "P"
    train = load_dataset("voc", root=voc, split="train")
    assert train.ids == ["2007_000032", "2007_000039"] and train.name == "voc"
    for sample in train:
        np.testing.assert_array_equal(sample.mask, _stripes(VOC_RAW[sample.id]))  # the index, not the RGB; 255 kept
        assert sample.mask.dtype == np.int64 and sample.image.shape == (H, W, 3)
    val = load_dataset("pascal_voc", root=voc, split="val")
    assert val.ids == ["2008_000002"] and val[0].meta["split"] == "val"
    assert val[0].texts == ("background", "car")
    everything = load_dataset("voc", root=voc)
    assert [r["meta"]["split"] for r in everything.records] == ["train", "train", "val"]
    assert len(train.class_names) == 21 and train.class_names[0] == "background" and train.class_names[15] == "person"
    assert train.class_names[20] == "tvmonitor" and train.class_names == VOC_CLASSES and train.ignore_index == 255
    assert dataset_splits("voc") == dataset_splits("pascal") == ("train", "val")
    assert load_path(voc / "VOCdevkit", split="val").ids == ["2008_000002"]  # found by its layout


def test_voc_missing_list_or_file_names_the_folder(voc: Path) -> None:
    lists = voc / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    with pytest.raises(DataError, match=r"ImageSets/Segmentation: no test\.txt.*train, val"):
        load_dataset("voc", root=voc, split="test")
    (lists / "val.txt").write_text("2008_000002\n2008_999999\n")
    with pytest.raises(DataError, match=r"JPEGImages: 1 of 2 images listed in val\.txt missing \(2008_999999\.jpg\)"):
        load_dataset("voc", root=voc, split="val")
    (voc / "VOCdevkit/VOC2012/SegmentationClass/2007_000039.png").unlink()
    with pytest.raises(DataError, match=r"SegmentationClass: 1 of 2 label PNGs"):
        load_dataset("voc", root=voc, split="train")


def test_voc_unknown_value_is_an_error(voc: Path) -> None:
    _labels(voc / "VOCdevkit/VOC2012/SegmentationClass/2008_000002.png", _stripes([0, 21, 200]), palette=True)
    ds = load_dataset("voc", root=voc, split="val")
    with pytest.raises(DataError, match=r"2008_000002\.png: label values 21, 200 are not voc labels \(valid: 0-20, 255\)"):
        ds[0]


# -------------------------------------------------------------------------------------- ADE20K


ADE_RAW = {"ADE_train_00000001": [0, 1, 150], "ADE_train_00000002": [13, 0, 7], "ADE_val_00000001": [150, 2, 0]}


@pytest.fixture()
def ade(tmp_path: Path) -> Path:
    base = tmp_path / "ade" / "ADEChallengeData2016"
    for i, (aid, vals) in enumerate(ADE_RAW.items()):
        part = "training" if "_train_" in aid else "validation"
        _photo(base / "images" / part / f"{aid}.jpg", 10 + i)
        _labels(base / "annotations" / part / f"{aid}.png", _stripes(vals))
    return tmp_path / "ade"


def test_ade_zero_label_background_and_ignore(ade: Path) -> None:
    sot = load_dataset("ade20k", root=ade, split="train")  # Show-or-Tell: 0 is an unprompted background
    assert sot.ids == ["ADE_train_00000001", "ADE_train_00000002"]
    assert len(sot.class_names) == 151 and sot.class_names[0] == "background" and sot.class_names[0] in BACKGROUND_NAMES
    assert sot.class_names[1] == "wall" and sot.class_names[13] == "person" and sot.class_names[150] == "flag"
    for sample in sot:
        np.testing.assert_array_equal(sample.mask, _stripes(ADE_RAW[sample.id]))
    mm = load_dataset("ade", root=ade, split="validation", zero_label="ignore")  # mmseg reduce_zero_label
    assert mm.ids == ["ADE_val_00000001"] and mm[0].meta["split"] == "val"
    assert len(mm.class_names) == 150 and mm.class_names == ADE20K_CLASSES
    assert (mm.class_names[0], mm.class_names[12], mm.class_names[149]) == ("wall", "person", "flag")
    raw = _stripes(ADE_RAW["ADE_val_00000001"])
    np.testing.assert_array_equal(mm[0].mask, np.where(raw == 0, 255, raw - 1))
    assert mm.class_names[0] not in BACKGROUND_NAMES
    assert len(load_dataset("ade20k", root=ade)) == 3
    with pytest.raises(ConfigError, match="zero_label"):
        load_dataset("ade20k", root=ade, split="val", zero_label="drop")
    with pytest.raises(ConfigError, match="ADE20K splits are train, val"):
        load_dataset("ade20k", root=ade, split="test")


def test_ade_missing_annotation_or_split_names_the_folder(ade: Path) -> None:
    base = ade / "ADEChallengeData2016"
    (base / "annotations/training/ADE_train_00000002.png").unlink()
    with pytest.raises(DataError, match=r"annotations/training: 1 of 2 annotation PNGs missing \(ADE_train_00000002\.png\)"):
        load_dataset("ade20k", root=ade, split="train")
    for f in (base / "annotations/validation").iterdir():
        f.unlink()
    (base / "annotations/validation").rmdir()
    with pytest.raises(DataError, match=r"annotations/validation: folder not found for split='val'"):
        load_dataset("ade20k", root=ade, split="val")


# ---------------------------------------------------------------------------------- Cityscapes

# labelId -> trainId, written out from cityscapesScripts' labels.py for the ids used here
CS_EXPECTED = {0: 255, 7: 0, 8: 1, 9: 255, 26: 13, 33: 18, 24: 11, 15: 255}
CS_RAW = {("train", "aachen", "aachen_000000_000019"): [7, 26, 0], ("train", "bremen", "bremen_000001_000019"): [9, 33, 8],
          ("val", "frankfurt", "frankfurt_000000_000294"): [24, 15, 7]}  # fmt: skip


@pytest.fixture()
def cityscapes(tmp_path: Path) -> Path:
    base = tmp_path / "cs" / "cityscapes"
    for i, ((split, city, stem), vals) in enumerate(CS_RAW.items()):
        _photo(base / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 20 + i)
        _labels(base / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _stripes(vals))
        _labels(base / "gtFine" / split / city / f"{stem}_gtFine_color.png", _stripes([1, 2, 3]))  # ignored
    return tmp_path / "cs"


def test_cityscapes_label_ids_to_train_ids(cityscapes: Path) -> None:
    train = load_dataset("cityscapes", root=cityscapes, split="train")
    assert train.ids == ["aachen_000000_000019", "bremen_000001_000019"]
    lut = np.vectorize(CS_EXPECTED.get)
    for (split, city, stem), vals in CS_RAW.items():
        ds = train if split == "train" else load_dataset("cityscapes", root=cityscapes, split="val")
        sample = ds[ds.ids.index(stem)]
        np.testing.assert_array_equal(sample.mask, lut(_stripes(vals)))
        assert sample.meta["city"] == city and sample.meta["split"] == split
    assert len(train.class_names) == 19 and train.class_names == CITYSCAPES_CLASSES
    assert (train.class_names[0], train.class_names[11], train.class_names[13], train.class_names[18]) == ("road", "person", "car", "bicycle")
    assert train.class_names[0] not in BACKGROUND_NAMES
    # the reference sampler's fast path reads converted labels too
    index = ReferenceIndex.build(train)
    expected = np.stack([np.bincount(lut(_stripes(CS_RAW[("train", c, s)])).ravel(), minlength=256)[:19] for c, s in
                         (("aachen", "aachen_000000_000019"), ("bremen", "bremen_000001_000019"))])  # fmt: skip
    np.testing.assert_array_equal(index.counts, expected)


def test_cityscapes_errors(cityscapes: Path) -> None:
    base = cityscapes / "cityscapes"
    _labels(base / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", _stripes([7, 40, 7]))
    with pytest.raises(DataError, match=r"label values 40 are not cityscapes labels \(valid: 0-33\)"):
        load_dataset("cityscapes", root=cityscapes, split="train")[0]
    (base / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match=r"gtFine/val: 1 of 1 labelIds PNGs missing \(frankfurt/frankfurt_000000_000294_gtFine_labelIds\.png\)"):
        load_dataset("cityscapes", root=cityscapes, split="val")


# ------------------------------------------------------------------------------- SoT facts


def test_names_aliases_min_area_and_background() -> None:
    for name, canonical, area in (("voc", "voc", 0.10), ("pascal_voc", "voc", 0.10), ("pascal", "voc", 0.10),
                                  ("voc2012", "voc", 0.10), ("ade20k", "ade20k", 0.04), ("ade", "ade20k", 0.04),
                                  ("cityscapes", "cityscapes", 0.01)):  # fmt: skip
        assert dataset_info(name).name == canonical and min_area_for(name) == area and min_area_for(canonical) == area
        assert dataset_splits(name) == ("train", "val") and dataset_info(name).task == "multiclass"
    assert min_area_for("camvid") == 0.0
