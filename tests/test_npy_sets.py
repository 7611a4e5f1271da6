"""PointPrompt-style image sets: samples.npy + labels.npy, ids are indices."""

from __future__ import annotations

import numpy as np
import pytest

from segprompt.data.registry import load_dataset
from segprompt.errors import DataError


def _write_set(folder, images, masks):
    folder.mkdir(parents=True)
    arr = np.empty(len(images), dtype=object)
    arr[:] = images
    np.save(folder / "samples.npy", arr, allow_pickle=True)
    marr = np.empty(len(masks), dtype=object)
    marr[:] = masks
    np.save(folder / "labels.npy", marr, allow_pickle=True)


def test_study_conversions_and_ids(tmp_path):
    rgb01 = np.zeros((20, 30, 3), np.float32)
    rgb01[..., 0] = 1.0  # red, in [0, 1]
    grey11 = np.full((10, 12), -1.0, np.float32)
    grey11[:, 6:] = 1.0  # [-1, 1] grayscale
    u8 = np.full((8, 8, 3), 7, np.uint8)
    m0 = np.zeros((20, 30), np.uint8)
    m0[2:5, 3:9] = 255
    m1 = np.zeros((10, 12, 3), np.uint8)
    m1[1:3, 1:3, 1] = 1  # an RGB mask
    m2 = np.zeros((8, 8), bool)
    _write_set(tmp_path / "Polyp", [rgb01, grey11, u8], [m0, m1, m2])
    ds = load_dataset("pointprompt", root=tmp_path, category="Polyp")
    assert ds.ids == ["0", "1", "2"]
    s0, s1, s2 = ds[0], ds[1], ds[2]
    assert s0.image.dtype == np.uint8 and s0.image[0, 0].tolist() == [255, 0, 0]
    assert s1.image.shape == (10, 12, 3) and s1.image[0, 0, 0] == 0 and s1.image[0, 11, 0] == 255
    assert s2.image[0, 0].tolist() == [7, 7, 7]
    assert s0.mask.sum() == 18 and s1.mask.sum() == 4 and not s2.mask.any()
    assert s0.texts == ("polyp",)
    with pytest.raises(DataError, match="category="):
        load_dataset("pointprompt", root=tmp_path)
    with pytest.raises(DataError, match="found: Polyp"):
        load_dataset("pointprompt", root=tmp_path, category="Bird")


def test_mismatched_arrays(tmp_path):
    _write_set(tmp_path / "S", [np.zeros((4, 4, 3), np.uint8)], [np.zeros((5, 4), np.uint8)])
    with pytest.raises(DataError, match=r"labels.npy\[0\]: mask \(5, 4\) differs"):
        load_dataset("pointprompt", root=tmp_path / "S")[0]
