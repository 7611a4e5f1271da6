"""tunevlseg.data: benchmark registry and split counts, prompt choice, train vs eval transforms,
per-class binarisation of label maps (Pascal VOC, Cityscapes, classes.json folders)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from segprompt.data.io import write_image, write_mask
from segprompt.data.sample import Sample
from segprompt.data.synthetic import SyntheticLesions
from segprompt.data.tunevlseg_format import write_tunevlseg_split
from segprompt.errors import ConfigError, DataError
from tunevlseg.data import (
    BENCHMARKS,
    CITYSCAPES_CLASSES,
    SplitCountWarning,
    VLSegDataset,
    check_split_counts,
    choose_prompt,
    collate,
    dataset_label,
    has_split,
    load_benchmark_split,
    split_counts,
)


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "lesions"
    write_tunevlseg_split(SyntheticLesions(n=10, seed=0, size=None), root, splits={"train": 0.6, "val": 0.2, "test": 0.2},
                          prompts=["lesion", "a round lesion", "a dark spot"])
    return root


def test_registry_holds_the_ten_tunevlseg_datasets_with_their_counts():
    medical = {k: tuple(v.counts.values()) for k, v in BENCHMARKS.items() if v.domain == "medical"}
    assert medical == {
        "bkai": (800, 100, 100), "busi": (624, 78, 78), "camus": (None, 600, 600), "chexlocalize": (1279, 446, 452),
        "clinicdb": (490, 61, 61), "dfu": (1600, 200, 200), "isic": (810, 90, 379), "kvasir": (800, 100, 100),
    }
    natural = [k for k, v in BENCHMARKS.items() if v.domain == "natural"]
    assert natural == ["pascal-voc", "cityscapes"]
    assert not any(BENCHMARKS[k].has_test for k in natural) and all(BENCHMARKS[k].has_test for k in medical)
    assert dataset_label("kvasir_polyp") == "kvasir" and dataset_label("/x/my data") == "my-data"


def test_split_count_check_warns_on_a_folder_with_other_counts(lesions, tmp_path, monkeypatch):
    assert split_counts(lesions) == {"test": 2, "train": 6, "val": 2}
    with pytest.warns(SplitCountWarning) as caught:
        messages = check_split_counts("kvasir", lesions)
    assert len(messages) == 3 and len(caught) == 3
    assert "train has 6 entries, TuneVLSeg's kvasir has 800" in str(caught[0].message)
    # a folder found under $SEGPROMPT_DATA_ROOT by its TuneVLSeg name is checked when loaded
    monkeypatch.setenv("SEGPROMPT_DATA_ROOT", str(tmp_path))
    (tmp_path / "kvasir_polyp").symlink_to(lesions)
    with pytest.warns(SplitCountWarning) as caught:
        ds = load_benchmark_split("kvasir", "train")
    assert len(caught) == 3
    assert len(ds) == 6 and ds.name == "kvasir"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_benchmark_split(str(lesions), "val")  # a folder path: nothing to compare with


def test_prompt_choice_fixed_and_seeded_random(lesions):
    ds = load_benchmark_split(lesions, "train")
    sample = ds[0]
    rng = lambda *k: np.random.default_rng(list(k))  # noqa: E731
    assert choose_prompt(sample, "p0", rng(0)) == "lesion"
    assert choose_prompt(sample, 2, rng(0)) == "a dark spot"
    drawn = {choose_prompt(sample, "random", rng(0, e)) for e in range(20)}
    assert drawn == {"a round lesion", "a dark spot"}  # random never picks p0 (TuneVLSeg's rule)
    assert choose_prompt(sample, "random", rng(3, 1)) == choose_prompt(sample, "random", rng(3, 1))
    with pytest.raises(DataError, match="no prompt 'p7'"):
        choose_prompt(sample, "p7", rng(0))
    with pytest.raises(ConfigError):
        choose_prompt(sample, "first", rng(0))
    plain = Sample("x", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), bool))
    assert choose_prompt(plain, "p0", rng(0), default="polyp") == "polyp"
    with pytest.raises(DataError, match="no text prompt"):
        choose_prompt(plain, "p0", rng(0))
    # a fixed prompt beyond p0 (TuneVLSeg's runs use prompt_index=1) reaches the model's items;
    # a malformed rule fails when the dataset is made, a missing prompt when the item is read
    for rule, text in (("p1", "a round lesion"), (2, "a dark spot")):
        for train in (False, True):
            items = VLSegDataset(ds, (32, 32), train=train, prompt=rule)
            assert {items[i]["text"] for i in range(len(items))} == {text}
    with pytest.raises(ConfigError, match="got 'first'"):
        VLSegDataset(ds, (32, 32), prompt="first")
    with pytest.raises(DataError, match="no prompt 'p7'"):
        VLSegDataset(ds, (32, 32), prompt="p7")[0]


def test_eval_items_are_deterministic_and_differ_from_training_augmentation(lesions):
    base = load_benchmark_split(lesions, "train")
    ev = VLSegDataset(base, (64, 64), train=False, prompt="random", seed=0)
    tr = VLSegDataset(base, (64, 64), train=True, prompt="random", seed=0)
    a, b = ev[1], ev[1]
    ev.set_epoch(5)
    c = ev[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image"], c["image"]) and a["text"] == c["text"]
    assert a["image"].shape == (3, 64, 64) and a["mask"].shape == (1, 64, 64) and a["size"] == base[1].size
    assert a["target"].shape == base[1].size and a["target"].dtype == bool  # the original mask for scoring
    # evaluation = a plain resize of the image
    import cv2

    ref = cv2.resize(base[1].image, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert torch.allclose(a["image"], torch.from_numpy(ref).permute(2, 0, 1).float() / 255, atol=1e-6)
    # training items are augmented: they differ from eval and between epochs, reproducibly
    epochs = []
    for e in range(6):
        tr.set_epoch(e)
        epochs.append(tr[1]["image"])
    assert sum(not torch.equal(x, a["image"]) for x in epochs) >= 4  # each step applies with p = 0.5
    assert len({x.sum().item() for x in epochs}) >= 4
    tr.set_epoch(1)
    t1, t1b = tr[1], tr[1]
    assert torch.equal(t1["image"], t1b["image"]) and torch.equal(t1["mask"], t1b["mask"]) and t1["text"] == t1b["text"]
    assert "target" not in t1
    kinds = {type(t).__name__ for t in tr.train_tf.transforms}
    assert {"HorizontalFlip", "Affine", "ColorJitter", "Resize"} <= kinds
    assert [type(t).__name__ for t in ev.eval_tf.transforms] == ["Resize"]
    batch = collate([ev[0], ev[1]])
    assert batch["image"].shape == (2, 3, 64, 64) and len(batch["text"]) == 2 and len(batch["target"]) == 2


def test_masks_follow_the_pixels_under_augmentation(lesions):
    ds = VLSegDataset(load_benchmark_split(lesions, "train"), (64, 64), train=True, seed=1)
    for epoch in range(4):
        ds.set_epoch(epoch)
        item = ds[0]
        m = item["mask"][0] > 0
        assert m.any() and m.float().mean() < 0.6
        assert torch.all(item["valid"] == 1)


def _voc(root, split_ids):
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)
    for split, ids in split_ids.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, stem in enumerate(ids):
            img = np.full((24, 32, 3), 90, np.uint8)
            lab = np.zeros((24, 32), np.uint8)
            lab[2:10, 2:12] = 15  # person
            if i % 2 == 0:
                lab[12:20, 14:30] = 12  # dog
            lab[10:12, :] = 255  # void border
            write_image(root / "JPEGImages" / f"{stem}.jpg", img)
            (root / "SegmentationClass").mkdir(exist_ok=True)
            pim = Image.fromarray(lab, mode="P")
            pim.putpalette(palette)
            pim.save(root / "SegmentationClass" / f"{stem}.png")


def test_pascal_voc_is_binarised_per_present_class_with_the_class_name_as_prompt(tmp_path):
    root = tmp_path / "VOC2012"
    _voc(root, {"train": ["a", "b", "c"], "val": ["d", "e"]})
    ds = load_benchmark_split(root, "train")
    assert len(ds) == 5  # a: person+dog, b: person, c: person+dog
    assert sorted(ds.ids) == ["a__dog", "a__person", "b__person", "c__dog", "c__person"]
    s = ds[ds.ids.index("a__dog")]
    assert s.texts == ("dog",) and s.mask.sum() == 8 * 16 and s.meta["ignore"].sum() == 64
    item = VLSegDataset(ds, (16, 16), train=False)[ds.ids.index("a__dog")]
    assert item["text"] == "dog" and item["ignore"] is not None and item["valid"].min() == 0
    assert has_split(root, "val") and not has_split(root, "test")
    assert split_counts(root) == {"train": 3, "val": 2}


def test_cityscapes_label_ids_map_to_the_19_train_classes(tmp_path):
    root = tmp_path / "cityscapes"
    for split in ("train", "val"):
        img_dir = root / "leftImg8bit" / split / "aachen"
        gt_dir = root / "gtFine" / split / "aachen"
        lab = np.zeros((16, 16), np.uint8)  # 0 = unlabeled -> ignored
        lab[:8] = 7  # road
        lab[8:, :4] = 26  # car
        write_image(img_dir / "aachen_000000_000019_leftImg8bit.png", np.zeros((16, 16, 3), np.uint8))
        write_mask(gt_dir / "aachen_000000_000019_gtFine_labelIds.png", lab)
    ds = load_benchmark_split(root, "train")
    assert sorted(ds.ids) == ["aachen_000000_000019__car", "aachen_000000_000019__road"]
    car = ds[ds.ids.index("aachen_000000_000019__car")]
    assert car.texts == ("car",) and car.mask.sum() == 32 and car.meta["ignore"].sum() == 96
    assert CITYSCAPES_CLASSES[13] == "car"
    assert not has_split(root, "test")


def test_label_map_folder_with_classes_json(tmp_path):
    from segprompt.data.synthetic import SCENE_CLASSES, SyntheticScenes, write_folder

    write_folder(SyntheticScenes(n=4, seed=0, size=32), tmp_path / "scenes" / "train")
    (tmp_path / "scenes" / "classes.json").write_text(json.dumps(list(SCENE_CLASSES)))
    ds = load_benchmark_split(tmp_path / "scenes", "train")
    assert len(ds) >= 4 and all(s.texts[0] in SCENE_CLASSES[1:] for s in ds)  # background excluded
    with pytest.raises(DataError, match="no val/images"):
        load_benchmark_split(tmp_path / "scenes", "val")


def test_named_natural_set_has_no_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPROMPT_DATA_ROOT", str(tmp_path))
    _voc(tmp_path / "VOC2012", {"train": ["a"], "val": ["b"]})
    assert not has_split("pascal-voc", "test") and has_split("pascal-voc", "val")
    with pytest.raises(DataError, match="no labelled test split"):
        load_benchmark_split("pascal-voc", "test")
    with pytest.warns(SplitCountWarning) as caught:
        assert len(load_benchmark_split("pascal-voc", "val")) == 2  # one image: person + dog
    assert [str(w.message).split(": ")[1][:16] for w in caught] == ["train has 1 entr", "val has 1 entrie"]


def test_unknown_layout_says_how_to_convert(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="convert-tunevlseg"):
        load_benchmark_split(tmp_path, "train")
    with pytest.raises(ConfigError, match="unknown TuneVLSeg dataset"):
        load_benchmark_split("kvasirr", "train")


def test_an_unreadable_item_raises_or_becomes_an_error_item(lesions, tmp_path):
    import shutil

    root = tmp_path / "lesions"
    shutil.copytree(lesions, root)
    entry = json.loads((root / "anns" / "train.json").read_text())[1]
    (root / "masks" / entry["mask_name"]).unlink()
    base = load_benchmark_split(root, "train")  # the split still loads (nothing is read yet)
    assert len(base) == 6
    with pytest.raises(DataError, match=entry["mask_name"]):
        VLSegDataset(base, (32, 32), train=False)[1]
    ds = VLSegDataset(base, (32, 32), train=True, skip_errors=True)
    bad = ds[1]
    assert set(bad) == {"error", "id", "index"} and bad["index"] == 1 and bad["id"] == base.ids[1]
    assert str(root / "masks" / entry["mask_name"]) in bad["error"]
    batch = collate([ds[0], bad, ds[2]])
    assert batch["image"].shape[0] == 2 and batch["id"] == [base.ids[0], base.ids[2]] and batch["errors"] == [bad]
    assert "image" not in collate([bad]) and "errors" not in collate([ds[0]])


def test_a_label_map_that_cannot_be_read_leaves_its_image_out(tmp_path):
    root = tmp_path / "VOC2012"
    _voc(root, {"train": ["a", "b", "c"], "val": ["d"]})
    (root / "SegmentationClass" / "b.png").unlink()
    ds = load_benchmark_split(root, "train")
    assert sorted(ds.ids) == ["a__dog", "a__person", "c__dog", "c__person"]
    assert [i for i, _ in ds.skipped] == ["b"] and "b.png" in ds.skipped[0][1]
