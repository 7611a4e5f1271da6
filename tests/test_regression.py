"""Grouped cross-validated regression of prompting quality on interpretable features, and its reports."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shutil

import numpy as np
import pytest

from pointprompt.bench import PointBenchConfig, run_pointprompt
from pointprompt.features import FEATURE_GROUPS
import pointprompt.regression as R
from pointprompt.regression import (
    _datasets_of,
    features_for_run,
    format_r2,
    format_summary,
    importance_figure,
    make_groups,
    read_table,
    run_regression,
    write_regression_report,
)
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
    # annotator A of dataset x is not annotator A of dataset y: nothing links x/1 and y/1
    assert make_groups(rows, ("image", "annotator")).tolist() == [0, 1, 2, 0]
    assert make_groups(rows, ("annotator",)).tolist() == [0, 1, 2, 3]
    assert make_groups(rows, ("dataset",)).tolist() == [0, 1, 0, 0] and make_groups(rows, ()).tolist() == [0, 1, 2, 3]
    same = [dict(r, dataset="x") for r in rows]
    assert make_groups(same, ("image", "annotator")).tolist() == [0, 0, 1, 0]  # within one dataset A links its images
    table = []
    for a, imgs in (("A", range(0, 5)), ("B", range(5, 10))):
        for i in imgs:
            table += [{"image": f"i{i}", "annotator": a, "step": s, "iou": 0.1 * s + 0.01 * i, "coverage": 0.1 * s} for s in range(1, 4)]
    res = run_regression(table, models=("linear",), n_splits=5, n_repeats=0)  # annotators present: still grouped by image
    assert res["group_by"] == ["image"] and res["n_groups"] == 10 and res["n_splits"] == 5
    with caplog.at_level(logging.WARNING, logger="pointprompt.regression"):
        res = run_regression(table, models=("linear",), n_splits=5, n_repeats=0, group_by="image+annotator")
    assert res["group_by"] == ["image", "annotator"] and res["n_groups"] == 2 and res["n_splits"] == 2
    assert "using 2 folds instead of 5" in caplog.text
    annot = np.array([r["annotator"] for r in table])
    fold = np.array(res["fold"])
    assert len(set(fold[annot == "A"].tolist())) == 1 and len(set(fold[annot == "B"].tolist())) == 1
    table.append({"image": "i4", "annotator": "B", "step": 1, "iou": 0.5, "coverage": 0.3})  # links A and B
    with pytest.raises(DataError, match="at least 2"):
        run_regression(table, models=("linear",), n_repeats=0, group_by=("image", "annotator"))
    assert run_regression(table, models=("linear",), group_by=("image",), n_repeats=0, n_splits=3)["n_groups"] == 10
    none = run_regression(table, models=("linear",), group_by="none", n_repeats=0, n_splits=3)
    assert none["group_by"] == [] and none["n_groups"] == len(table)
    assert any(w.startswith("the folds are not grouped by image (group_by none)") for w in none["warnings"])


def test_structure_masks_of_one_source_image_share_a_fold():
    rows = []
    for img in range(12):
        for organ in ("liver", "spleen", "kidney"):
            for step in (1, 2):
                rows.append({"dataset": "ct", "image": f"{organ}_{img}", "source_image": f"ct_{img}", "step": step, "iou": 0.1 * step + 0.02 * img, "coverage": 0.1 * step})
    res = run_regression(rows, models=("linear",), n_splits=4, n_repeats=0, univariate=False)
    assert res["n_groups"] == 12
    fold = np.array(res["fold"])
    src = np.array([rows[i]["source_image"] for i in res["rows_used"]])
    assert all(len(set(fold[src == s].tolist())) == 1 for s in set(src.tolist()))


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
    for name in ("regression.csv", "importances.csv", "features_r2.csv", "regression.md"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "regression.json").read_text())
    assert summary["n_groups"] == 6 and summary["n_splits"] == 5 and summary["n_rows"] == 24
    # 6 images for 5 folds: flagged; the plot exists only when a model beats the mean
    assert any(w.startswith("too few images") for w in summary["warnings"])
    assert (out / "importances.png").is_file() == (summary["importance_model"] is not None)
    assert summary["importances_plot"] == ("importances.png" if summary["importance_model"] else None)
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


# ---------------------------------------------------------------------------------------------
# reports a reader can trust: caveats first, no ranking from a model worse than the mean


def linear_table(n_images=40, per_image=6, seed=0):
    """IoU = 0.2 + 0.6 * max_spread + N(0, 0.03): a real, linear signal in one feature, plus distractors."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        mask_size = rng.uniform(0.05, 0.5)
        for s in range(per_image):
            spread = rng.uniform(0, 1)
            rows.append(
                {
                    "dataset": "syn",
                    "image": f"img{i:03d}",
                    "strategy": "random",
                    "step": s + 1,
                    "iou": 0.2 + 0.6 * spread + rng.normal(0, 0.03),
                    "coverage": rng.uniform(0, 1),
                    "max_spread": spread,
                    "chamfer_dist": rng.uniform(0, 1) if s else None,
                    "n_points": float(rng.integers(1, 10)),
                    "mask_size": mask_size,
                }
            )
    return rows


def md_paragraphs(md):
    return [p for p in md.split("\n\n") if p.strip()]


def test_r2_display():
    assert format_r2(-110101.3) == "< -1" and format_r2(-1.0) == "-1.000" and format_r2(0.8234) == "0.823"
    assert format_r2(math.nan) == R.MISSING and R.format_spread(3.4e6) == "> 1" and R.format_spread(0.05) == "0.050"


def test_negative_r2_caveat_first_and_no_ranking(tmp_path):
    # 6 images, random targets: every model is worse than predicting the mean (seed 1)
    res = run_regression(synthetic_table(n_images=6, per_image=4, noise_target=True, seed=1), n_splits=5, n_repeats=2, model_params=FAST)
    assert all(m["r2_pooled"] < 0 and not m["ranked"] for m in res["models"].values())
    assert res["importance_model"] is None and res["best_model"] in R.MODELS  # the least bad is still named
    w = res["warnings"]
    assert w[0].startswith("too few images") and "6 images for 5 folds" in w[0] and "at least 10" in w[0]
    assert len(res["features"]) == 6  # coverage, max_spread, chamfer_dist, n_points, mask_size, step
    assert any(x.startswith("too few rows per feature: 24 rows for 6 features (at least 10 per feature") for x in w)
    assert any(x.startswith("worse than predicting the mean") and "no feature importance is ranked" in x for x in w)
    out = tmp_path / "rep"
    out.mkdir()
    (out / "importances.png").write_bytes(b"stale")  # from an earlier call: must not survive
    write_regression_report(res, out)
    md = (out / "regression.md").read_text()
    paras = md_paragraphs(md)
    assert paras[0] == "# Which features predict `iou`" and paras[1].startswith("> **Caveat")
    assert all(x in paras[1] for x in w)
    assert "Not ranked: no model predicts better than the mean" in md and "![importances]" not in md
    assert not (out / "importances.png").exists()
    with open(out / "importances.csv") as f:
        imp = list(csv.DictReader(f))
    assert imp and all(r["rank"] == "" and r["note"] == "not ranked: R^2 < 0" for r in imp)
    # summary for the terminal: the warnings come first, then the numbers
    summary = {**res, "importances_plot": None}
    lines = format_summary(summary, out).splitlines()
    assert [l for l in lines[: len(w)]] == [f"warning: {x}" for x in w]
    assert "importances.png" not in lines[-1] and "not ranked" in lines[-1]


def test_noise_on_few_images_can_look_predictive_but_carries_the_caveat(tmp_path):
    # seed 0: with 6 images the tree models score R^2 > 0 on pure noise; the few-images caveat is what warns
    res = run_regression(synthetic_table(n_images=6, per_image=4, noise_target=True, seed=0), n_splits=5, n_repeats=2, model_params=FAST)
    ranked = {m for m, v in res["models"].items() if v["ranked"]}
    assert ranked and ranked != set(res["models"]) and res["importance_model"] in ranked
    assert res["warnings"][0].startswith("too few images")
    write_regression_report(res, tmp_path)
    md = (tmp_path / "regression.md").read_text()
    assert md_paragraphs(md)[1].startswith("> **Caveat")
    assert "Not ranked, no better than predicting the mean: linear (pooled R^2" in md
    with open(tmp_path / "importances.csv") as f:
        imp = list(csv.DictReader(f))
    assert all(r["rank"] == "" for r in imp if r["model"] == "linear")
    assert sorted(int(r["rank"]) for r in imp if r["model"] == res["importance_model"]) == list(range(1, len(res["features"]) + 1))


def test_real_signal_no_caveat_and_right_top_feature(tmp_path):
    res = run_regression(linear_table(), n_splits=5, n_repeats=2, model_params=FAST)
    assert res["n_groups"] == 40 and res["n_rows"] == 240
    for name, m in res["models"].items():
        assert m["r2_pooled"] > 0.5 and m["r2_mean"] > 0.5 and m["ranked"], name
        assert max(m["importances"], key=lambda f: m["importances"][f]["permutation_mean"]) == "max_spread", name
    assert res["warnings"] == [] and res["importance_model"] == res["best_model"]
    assert res["univariate"][0]["feature"] == "max_spread" and res["univariate"][0]["r2_cv"] > 0.9
    write_regression_report(res, tmp_path)
    md = (tmp_path / "regression.md").read_text()
    assert "Caveat" not in md and md_paragraphs(md)[1].startswith("240 rows in 40 groups")
    assert "![importances](importances.png)" in md and (tmp_path / "importances.png").is_file()
    with open(tmp_path / "importances.csv") as f:
        top = [r for r in csv.DictReader(f) if r["rank"] == "1"]
    assert {r["feature"] for r in top} == {"max_spread"} and len(top) == 3
    text = format_summary({**res, "importances_plot": "importances.png"}, tmp_path)
    assert "warning" not in text and text.splitlines()[-1].endswith(str(tmp_path / "importances.png"))


def test_importance_plot_title_and_legend_fit():
    res = run_regression(linear_table(), models=("gradient_boosting",), n_splits=5, n_repeats=2, model_params=FAST, univariate=False)
    rows = [r for r in R._importance_rows(res) if r["model"] == "gradient_boosting"]
    fig = importance_figure(rows, res, "gradient_boosting")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    title = ax.title.get_text()
    assert title.startswith("gradient_boosting: top features for iou") and "\u2026" not in title
    assert "n = 240 rows, 40 images" in title and "5-fold" in title
    tb, fb = ax.title.get_window_extent(renderer), fig.bbox
    assert tb.x0 >= fb.x0 and tb.x1 <= fb.x1 and tb.y1 <= fb.y1  # whole title inside the figure, no tight crop needed
    (legend,) = fig.legends
    lb, axb = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert lb.x0 >= axb.x1 and not lb.overlaps(axb)  # legend right of the data, covering none of it
    tight = fig.get_tightbbox(renderer)  # what save_figure keeps (inches)
    assert lb.x1 <= tight.x1 * fig.dpi + 1
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "max_spread"  # the top bar is the strongest feature
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_cli_features_warns_before_the_numbers(tiny_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pointprompt.cli import pointprompt

    run = tmp_path / "random"
    run.mkdir()
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
    rng = np.random.default_rng(3)
    rows = [json.loads(l) for l in (tiny_run / "results.jsonl").read_text().splitlines()]
    (run / "results.jsonl").write_text("".join(json.dumps(dict(r, iou=float(rng.uniform()))) + "\n" for r in rows))  # random targets
    for name, params in FAST.items():
        monkeypatch.setitem(R.DEFAULT_PARAMS, name, {**R.DEFAULT_PARAMS[name], **params})
    res = CliRunner().invoke(pointprompt, ["features", str(run)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    table_at = next(i for i, l in enumerate(lines) if l.startswith("model "))
    head = lines[:table_at]
    assert head[0].startswith("warning: too few images for reliable cross-validation: 6 images for 5 folds")
    assert any(l.startswith("warning: worse than predicting the mean") for l in head)
    summary = json.loads((run / "features" / "regression.json").read_text())
    assert [f"warning: {w}" for w in summary["warnings"]] == [l for l in head if l.startswith("warning:")]
    assert all(m["r2_pooled"] < 0 for m in summary["models"].values()) and summary["importance_model"] is None
    # sane numbers on screen: no R^2 below -1 printed (shown as "< -1"); the exact values stay in the JSON
    for line in lines[table_at + 2 : table_at + 5]:
        assert all(float(v) >= -1 for v in re.findall(r"-?\d+\.\d+", line)), line
        assert line.rstrip().endswith("not ranked: R^2 < 0")
    assert "importances.png" not in res.stdout and not (run / "features" / "importances.png").exists()


def test_cli_group_by_option(tiny_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pointprompt.cli import pointprompt

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("features"))
    for name, params in FAST.items():
        monkeypatch.setitem(R.DEFAULT_PARAMS, name, {**R.DEFAULT_PARAMS[name], **params})
    res = CliRunner().invoke(pointprompt, ["features", str(run), "--group-by", "none", "--folds", "3"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "features" / "regression.json").read_text())
    assert summary["group_by"] == [] and summary["n_groups"] == summary["n_rows"] == 24
    assert "warning: the folds are not grouped by image (group_by none)" in res.stdout and "groups (by none)" in res.stdout
    res = CliRunner().invoke(pointprompt, ["features", str(run), "--folds", "3"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "features" / "regression.json").read_text())["group_by"] == ["image"]
    table = read_table(run / "features" / "features.csv")
    assert {r["source_image"] for r in table} == {r["image"] for r in table}  # one sample per image here
    res = CliRunner().invoke(pointprompt, ["features", str(run), "--group-by", "strategy"])
    assert res.exit_code == 2 and "--group-by" in res.output
    option = next(p for p in pointprompt.commands["features"].params if p.name == "group_by")
    assert list(option.type.choices) == list(R.GROUP_BY_CHOICES)  # the CLI offers what the library knows


def test_features_read_every_shard_of_a_sharded_run(tiny_run, tmp_path):
    """A run written by shards (results.shard-K-of-N.jsonl) gives the same feature table as the
    same rows in one results.jsonl."""
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(tiny_run / "config.yaml", sharded / "config.yaml")
    lines = (tiny_run / "results.jsonl").read_text().splitlines(keepends=True)
    (sharded / "results.shard-1-of-2.jsonl").write_text("".join(lines[::2]))
    (sharded / "results.shard-2-of-2.jsonl").write_text("".join(lines[1::2]))
    out = features_for_run(sharded, n_splits=5, n_repeats=2, model_params=FAST)
    key = lambda r: (r["image"], r.get("model"), r.get("strategy"), r.get("step"))  # noqa: E731
    whole = sorted(read_table(features_for_run(tiny_run, n_splits=5, n_repeats=2, model_params=FAST) / "features.csv"), key=key)
    assert sorted(read_table(out / "features.csv"), key=key) == whole and len(whole) == 24
