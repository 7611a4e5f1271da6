"""Grouped cross-validated regression of prompting quality on interpretable features, and its reports."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil

import numpy as np
import pytest

from pointprompt.bench import PointBenchConfig, run_pointprompt
from pointprompt.features import FEATURE_GROUPS
from pointprompt.regression import _datasets_of, features_for_run, make_groups, read_table, run_regression, write_regression_report
from segprompt.errors import ConfigError, DataError
from segprompt.models import create_segmenter

FAST = {"random_forest": {"n_estimators": 60}, "gradient_boosting": {"n_estimators": 80}}


def synthetic_table(n_images=40, per_image=6, noise_target=False, seed=0):
    """Rows whose IoU depends on coverage only (or on nothing), plus distractor features."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        mask_size = rng.uniform(0.05, 0.5)  # a per-image feature
        for s in range(per_image):
            cov = rng.uniform(0, 1)
            iou = rng.uniform(0, 1) if noise_target else 0.15 + 0.75 * cov**2 + rng.normal(0, 0.03)
            rows.append(
                {
                    "dataset": "syn",
                    "image": f"img{i:03d}",
                    "strategy": "random",
                    "step": s + 1,
                    "iou": iou,
                    "coverage": cov,
                    "max_spread": rng.uniform(0, 1),
                    "chamfer_dist": rng.uniform(0, 1) if s else None,  # NaN sometimes: imputed
                    "n_points": float(rng.integers(1, 10)),
                    "mask_size": mask_size,
                    "best_iou": iou + 0.01,  # target-derived: must be left out
                }
            )
    return rows


def test_recovers_coverage_signal():
    res = run_regression(synthetic_table(), n_splits=5, n_repeats=3, model_params=FAST)
    assert "best_iou" not in res["features"] and "best_iou" in res["dropped"]
    rf = res["models"]["random_forest"]
    assert rf["r2_pooled"] > 0.8 and rf["r2_mean"] > 0.8
    assert rf["mae_mean"] < 0.1
    for name in ("random_forest", "gradient_boosting", "linear"):
        imp = res["models"][name]["importances"]
        assert max(imp, key=lambda f: imp[f]["permutation_mean"]) == "coverage"
    assert max(rf["importances"], key=lambda f: rf["importances"][f]["impurity"]) == "coverage"
    assert math.isnan(res["models"]["linear"]["importances"]["coverage"]["impurity"])
    assert res["univariate"][0]["feature"] == "coverage" and res["univariate"][0]["r2_cv"] > 0.8
    assert res["univariate"][0]["corr"] > 0.9
    assert res["best_model"] in ("random_forest", "gradient_boosting")


def test_noise_target_gives_no_skill():
    res = run_regression(synthetic_table(noise_target=True), n_splits=5, n_repeats=2, model_params=FAST)
    for name, m in res["models"].items():
        assert m["r2_pooled"] <= 0.1, name
        assert m["r2_mean"] <= 0.1, name
    assert all(u["r2_cv"] <= 0.1 for u in res["univariate"])


def test_folds_keep_images_apart():
    table = synthetic_table(n_images=17, per_image=4)
    res = run_regression(table, models=("linear",), n_splits=5, n_repeats=0, univariate=False)
    fold = np.array(res["fold"])
    images = np.array([table[i]["image"] for i in res["rows_used"]])
    assert set(fold.tolist()) == set(range(5))
    for k in range(5):
        assert not set(images[fold == k]) & set(images[fold != k])
    for img in set(images.tolist()):
        assert len(set(fold[images == img].tolist())) == 1
    assert res["n_groups"] == 17
    # the same seed gives the same folds, another seed another assignment
    again = run_regression(table, models=("linear",), n_splits=5, n_repeats=0, univariate=False)
    assert again["fold"] == res["fold"]


def test_groups_by_dataset_image_and_annotator(caplog):
    rows = [{"dataset": d, "image": i, "annotator": a} for d, i, a in [("x", "1", "A"), ("y", "1", "A"), ("x", "2", "B"), ("x", "1", "C")]]
    assert make_groups(rows, ("image",)).tolist() == [0, 1, 2, 0]  # same id in two datasets = two images
    assert make_groups(rows, ("image", "annotator")).tolist() == [0, 0, 1, 0]  # A links x/1 and y/1
    table = []
    for a, imgs in (("A", range(0, 5)), ("B", range(5, 10))):
        for i in imgs:
            table += [{"image": f"i{i}", "annotator": a, "step": s, "iou": 0.1 * s + 0.01 * i, "coverage": 0.1 * s} for s in range(1, 4)]
    with caplog.at_level(logging.WARNING, logger="pointprompt.regression"):
        res = run_regression(table, models=("linear",), n_splits=5, n_repeats=0)  # annotators present: default groups link them
    assert res["group_by"] == ["image", "annotator"] and res["n_groups"] == 2 and res["n_splits"] == 2
    assert "using 2 folds instead of 5" in caplog.text
    annot = np.array([r["annotator"] for r in table])
    fold = np.array(res["fold"])
    assert len(set(fold[annot == "A"].tolist())) == 1 and len(set(fold[annot == "B"].tolist())) == 1
    table.append({"image": "i4", "annotator": "B", "step": 1, "iou": 0.5, "coverage": 0.3})  # links A and B
    with pytest.raises(DataError, match="at least 2"):
        run_regression(table, models=("linear",), n_repeats=0)
    assert run_regression(table, models=("linear",), group_by=("image",), n_repeats=0, n_splits=3)["n_groups"] == 10


def test_config_errors():
    t = synthetic_table(n_images=6, per_image=2)
    with pytest.raises(ConfigError):
        run_regression(t, models=("svm",))
    with pytest.raises(ConfigError):
        run_regression(t, feature_groups=("nothing_here",))
    with pytest.raises(ConfigError):
        run_regression(t, target="missing")
    with pytest.raises(DataError):
        run_regression([])


def test_report_files_exist_and_parse(tmp_path):
    res = run_regression(synthetic_table(n_images=20, per_image=4), n_splits=4, n_repeats=2, model_params=FAST)
    out = write_regression_report(res, tmp_path / "rep")
    with open(out / "regression.csv") as f:
        reg = list(csv.DictReader(f))
    assert [r["model"] for r in reg] == ["linear", "random_forest", "gradient_boosting"]
    assert all(-10 < float(r["r2_pooled"]) <= 1 for r in reg)
    with open(out / "importances.csv") as f:
        imp = list(csv.DictReader(f))
    assert {r["feature"] for r in imp} == set(res["features"])
    assert [r for r in imp if r["model"] == "random_forest" and r["rank"] == "1"][0]["feature"] == "coverage"
    with open(out / "features_r2.csv") as f:
        uni = list(csv.DictReader(f))
    assert uni[0]["feature"] == "coverage" and uni[0]["group"] == "prompt"
    md = (out / "regression.md").read_text()
    assert "| random_forest" in md and "best_iou" in md and "![importances](importances.png)" in md
    import matplotlib.image

    png = matplotlib.image.imread(out / "importances.png")
    assert png.ndim == 3 and png.shape[0] > 100


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pp") / "run"
    kw = {"n": 6, "seed": 0, "size": 96}
    if "datasets" in PointBenchConfig.__dataclass_fields__:  # several datasets per run, kwargs per name
        data = {"datasets": ["synthetic-lesions"], "dataset_kwargs": {"synthetic-lesions": kw}}
    else:
        data = {"dataset": "synthetic-lesions", "dataset_kwargs": kw}
    cfg = PointBenchConfig(**data, models=["grabcut"], strategies=["centre", "random"], n_positive=2, n_negative=1, steps=2)
    run_pointprompt(cfg, out, model_factory=lambda name: create_segmenter("grabcut"), progress=False)
    return out


def test_features_for_run(tiny_run):
    out = features_for_run(tiny_run, n_splits=5, n_repeats=2, model_params=FAST)
    assert out == tiny_run / "features"
    table = read_table(out / "features.csv")
    assert len(table) == 6 * 2 * 2
    assert set(FEATURE_GROUPS["prompt"]) <= set(table[0]) and "obj_contrast" in table[0]
    assert {r["image"] for r in table} == {f"lesion_0_{i:05d}" for i in range(6)}
    assert all(0 <= r["coverage"] <= 1 for r in table)
    assert all(r["score"] is None or isinstance(r["score"], float) for r in table)  # no "None" strings
    for name in ("regression.csv", "importances.csv", "features_r2.csv", "regression.md", "importances.png"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "regression.json").read_text())
    assert summary["n_groups"] == 6 and summary["n_splits"] == 5 and summary["n_rows"] == 24
    assert not (out / "skipped.csv").exists()


def test_run_config_dataset_forms(tmp_path):
    old = {"dataset": "synthetic-lesions", "dataset_kwargs": {"n": 2}}
    new = {"datasets": ["synthetic-lesions", "synthetic-scenes"], "dataset_kwargs": {"synthetic-lesions": {"n": 2}}}
    assert _datasets_of(old, tmp_path) == [("synthetic-lesions", {"n": 2})]
    assert _datasets_of(new, tmp_path) == [("synthetic-lesions", {"n": 2}), ("synthetic-scenes", {})]
    with pytest.raises(ConfigError, match="names no dataset"):
        _datasets_of({}, tmp_path)


def test_features_for_run_errors(tiny_run, tmp_path):
    with pytest.raises(ConfigError):
        features_for_run(tmp_path / "nope")
    with pytest.raises(ConfigError, match="config.yaml"):
        features_for_run(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny_run / "config.yaml", empty / "config.yaml")
    with pytest.raises(DataError, match="no results"):
        features_for_run(empty)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(tiny_run / "config.yaml", one / "config.yaml")
    rows = [json.loads(l) for l in (tiny_run / "results.jsonl").read_text().splitlines()]
    first = rows[0]["image"]
    kept = [r for r in rows if r["image"] == first] + [dict(rows[0], image="not-there")]
    (one / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    with pytest.raises(DataError, match="at least 2"):
        features_for_run(one, n_repeats=0)
    with open(one / "features" / "skipped.csv") as f:
        assert list(csv.DictReader(f))[0]["reason"] == "image not in the dataset"
