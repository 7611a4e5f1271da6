"""The readers on the real sample data in ``$SEGPROMPT_DATA_ROOT`` (see its README.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from segprompt.cli import main
from segprompt.data.registry import load_dataset

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (real sample data)"),
]

SETS = {  # registry name: (folder, samples)
    "kvasir": ("kvasir_seg", 60),
    "busi": ("busi", 40),
    "ph2": ("ph2", 40),
    "camvid": ("camvid", 40),
    "sammed2d-demo": ("sammed2d_demo", 30),
}


def _root() -> Path:
    return Path(os.environ["SEGPROMPT_DATA_ROOT"])


@pytest.fixture(scope="module")
def loaded():
    """Every sample of every set, read once."""
    return {name: (ds := load_dataset(name), list(ds)) for name in SETS}


@pytest.mark.parametrize("name", sorted(SETS))
def test_counts_dtypes_and_sizes(loaded, name):
    ds, samples = loaded[name]
    assert len(ds) == len(samples) == SETS[name][1]
    assert len({s.id for s in samples}) == len(samples)
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
        assert s.mask.shape == s.image.shape[:2]
        if name == "camvid":
            assert s.mask.dtype == np.int64
        else:
            assert s.mask.dtype == bool
            assert s.texts and all(isinstance(t, str) and t for t in s.texts)


def test_kvasir_sizes_vary_and_masks_are_polyps(loaded):
    _, samples = loaded["kvasir"]
    assert len({s.size for s in samples}) > 5  # sizes vary inside the set
    assert all(s.mask.any() for s in samples) and all(s.texts == ("polyp",) for s in samples)


def test_busi_normal_masks_empty_and_labels_merged(loaded):
    _, samples = loaded["busi"]
    by_class = {}
    for s in samples:
        by_class.setdefault(s.meta["class"], []).append(s)
        assert s.id.startswith(s.meta["class"] + "_")
    assert {k: len(v) for k, v in by_class.items()} == {"benign": 18, "malignant": 18, "normal": 4}
    assert all(not s.mask.any() for s in by_class["normal"])
    assert all(s.mask.any() for s in by_class["benign"] + by_class["malignant"])


def test_ph2_diagnosis_in_meta(loaded):
    _, samples = loaded["ph2"]
    assert all(s.meta.get("clinical_diagnosis") for s in samples)
    assert all(s.mask.any() for s in samples)


def test_camvid_void_is_ignored_with_names_from_classes_json(loaded):
    ds, samples = loaded["camvid"]
    names = json.loads((_root() / "camvid" / "classes.json").read_text())
    assert ds.class_names == tuple(names[str(i)] for i in range(11))
    assert "void/unlabelled" not in ds.class_names
    values = set()
    for s in samples:
        values |= set(np.unique(s.mask).tolist())
        assert s.class_names == ds.class_names and s.ignore_index == 255
    assert 11 not in values and 255 in values and values <= set(range(11)) | {255}


def test_sammed2d_one_sample_per_structure(loaded):
    _, samples = loaded["sammed2d-demo"]
    assert all(s.mask.any() for s in samples)
    assert len({s.meta["image_id"] for s in samples}) == 4  # 30 masks on 4 of the 5 images
    assert any(s.texts == ("inferior vena cava",) for s in samples)


@pytest.mark.parametrize("name", sorted(SETS))
def test_data_check_passes_on_real_folder(name, capsys):
    folder = _root() / SETS[name][0]
    code = main(["data", "check", str(folder)])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.strip().splitlines()
    assert all(line.startswith("warning  ") for line in lines[:-1]), lines
    assert ", 0 errors, " in lines[-1]
    if name == "busi":
        assert sorted(line.split(":")[0] for line in lines[:-1]) == [f"warning  masks/normal_{i}.png" for i in (1, 10, 2, 3)]


def test_camvid_one_class_at_a_time():
    """ClassSamples: one binary sample per (image, class covering >= 1 % of it); void never counts."""
    from segprompt.data.labelmap import ClassSamples

    base = load_dataset("camvid")
    per_class = ClassSamples(base, min_fraction=0.01)
    first = base[0]
    names = [n for i, n in enumerate(first.class_names) if (first.mask == i).mean() >= 0.01]
    mine = [i for i in per_class.ids if i.startswith(f"{first.id}:")]
    assert mine == [f"{first.id}:{n}" for n in names] and len(names) >= 3
    s = per_class[per_class.ids.index(mine[0])]
    assert s.mask.dtype == bool and s.texts == (names[0],)
    assert s.mask.sum() == (first.mask == first.class_names.index(names[0])).sum()
    assert not any(i.endswith(":void") for i in per_class.ids)
    assert len(per_class) > 3 * len(base)
