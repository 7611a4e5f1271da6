"""The PointPrompt study's protocol end to end: grouped regression on human-shaped data, the
human-data protocol on a real benchmark run, and the scikit-learn version the code needs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pointprompt.human_data import human_protocol, human_protocol_section, write_human_protocol
from pointprompt.regression import make_groups, run_regression

FAST = {"random_forest": {"n_estimators": 40}, "gradient_boosting": {"n_estimators": 60}}
ROOT = Path(__file__).resolve().parents[1]


def human_shaped_table(seed=0):
    """2 datasets x 40 images, each image prompted by 2 of the same 5 annotator names ("a1".."a5"
    in both datasets), 4 steps each. The IoU is 0.15 + 0.6 * coverage + 0.2 * mask_size + noise:
    coverage varies per step, mask_size per image, plus an image effect no feature sees."""
    rng = np.random.default_rng(seed)
    rows = []
    for ds in ("polyp", "skin"):
        for i in range(40):
            mask_size = rng.uniform(0.05, 0.6)
            image_effect = rng.normal(0, 0.03)
            for a in rng.choice(5, size=2, replace=False):
                for step in range(1, 5):
                    cov = rng.uniform(0, 1)
                    rows.append(
                        {
                            "dataset": ds,
                            "image": str(i),  # the same ids in both datasets, as PointPrompt's 0..399
                            "annotator": f"a{a + 1}",
                            "strategy": "human",
                            "round": 0,
                            "step": step,
                            "coverage": cov,
                            "max_spread": rng.uniform(0, 1),
                            "mask_size": mask_size,
                            "iou": 0.15 + 0.6 * cov + 0.2 * mask_size + image_effect + rng.normal(0, 0.03),
                        }
                    )
    return rows


def test_human_shaped_regression_groups_by_image_and_finds_the_signal():
    table = human_shaped_table()
    res = run_regression(table, n_splits=5, n_repeats=0, model_params=FAST)
    assert res["group_by"] == ["image"] and res["n_groups"] == 80  # 40 images in each of 2 datasets
    assert res["n_rows"] == 2 * 40 * 2 * 4
    for name in ("linear", "random_forest"):
        assert res["models"][name]["r2_pooled"] > 0.8, name
    assert res["univariate"][0]["feature"] == "coverage"
    fold = np.array(res["fold"])
    image = np.array([f"{table[i]['dataset']}/{table[i]['image']}" for i in res["rows_used"]])
    for img in set(image.tolist()):  # no image straddles folds
        assert len(set(fold[image == img].tolist())) == 1, img
    # images "3" of polyp and "3" of skin are different images: not forced into one fold
    assert len({len(set(fold[image == f"{d}/{i}"].tolist())) for d in ("polyp", "skin") for i in range(40)}) == 1
    assert res["warnings"] == []


def test_annotators_are_qualified_by_dataset():
    table = human_shaped_table()
    by_annot = make_groups(table, ("annotator",))
    assert by_annot.max() + 1 == 10  # a1..a5 of polyp and a1..a5 of skin
    polyp_a1 = {int(g) for g, r in zip(by_annot, table) if r["dataset"] == "polyp" and r["annotator"] == "a1"}
    skin_a1 = {int(g) for g, r in zip(by_annot, table) if r["dataset"] == "skin" and r["annotator"] == "a1"}
    assert len(polyp_a1) == len(skin_a1) == 1 and polyp_a1 != skin_a1
    res = run_regression(table, models=("linear",), n_splits=5, n_repeats=0, univariate=False, group_by="annotator")
    assert res["n_groups"] == 10 and res["models"]["linear"]["r2_pooled"] > 0.8
    # image + annotator: within a dataset the 5 annotators link every image into one group
    linked = run_regression(table, models=("linear",), n_splits=5, n_repeats=0, univariate=False, group_by="image+annotator")
    assert linked["n_groups"] == 2 and linked["n_splits"] == 2
    by_ds = run_regression(table, models=("linear",), n_splits=2, n_repeats=0, univariate=False, group_by="dataset")
    assert by_ds["n_groups"] == 2


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def test_scikit_learn_lower_bound_allows_the_api_used():
    """``GroupKFold(shuffle=True, random_state=...)`` (regression._grouped_folds) exists from
    scikit-learn 1.6; the declared lower bound must not promise less."""
    import sklearn
    from sklearn.model_selection import GroupKFold

    (spec,) = re.findall(r'"(scikit-learn\s*[^"]*)"', (ROOT / "pyproject.toml").read_text())  # no tomllib on Python 3.10
    m = re.search(r">=\s*([\d.]+)", spec)
    assert m, spec
    assert _version(m.group(1)) >= (1, 6), spec
    assert _version(sklearn.__version__) >= _version(m.group(1))
    GroupKFold(n_splits=2, shuffle=True, random_state=0)  # the call the regression makes
    src = (ROOT / "pointprompt" / "regression.py").read_text()
    assert "GroupKFold(n_splits=n_splits, shuffle=True" in src


@pytest.fixture(scope="module")
def human_run(tmp_path_factory):
    """A tiny benchmark run (GrabCut, 4 synthetic images) with recorded human trajectories replayed."""
    from pointprompt.bench import PointBenchConfig, run_pointprompt
    from pointprompt.trajectory import PromptStep, Trajectory, save_trajectories
    from segprompt.data.registry import load_dataset
    from segprompt.models import create_segmenter
    from segprompt.prompts import Points

    tmp = tmp_path_factory.mktemp("proto")
    kw = {"n": 4, "seed": 0, "size": 96}
    ds = load_dataset("synthetic-lesions", **kw)
    rng = np.random.default_rng(0)
    trajs = []
    for s in ds:
        ys, xs = np.nonzero(s.mask)
        by, bx = np.nonzero(~s.mask)
        for annot, rounds in (("st1", [0, 0, 1]), ("st2", [0, 0, 0])):
            steps = []
            for k, rd in enumerate(rounds):
                pick = rng.choice(len(ys), size=k + 1, replace=False)
                neg = rng.choice(len(by), size=1)
                coords = np.concatenate([np.stack([xs[pick], ys[pick]], 1), np.stack([bx[neg], by[neg]], 1)]).astype(np.float32)
                labels = np.array([1] * (k + 1) + [0])
                steps.append(PromptStep(points=Points(coords, labels), iou=float(rng.uniform(0.3, 0.9)), round=rd))
            trajs.append(Trajectory(image_id=s.id, source="human", annotator=annot, dataset="synthetic-lesions", image_size=s.size, steps=steps))
    path = save_trajectories(tmp / "human.jsonl", trajs)
    cfg = PointBenchConfig(
        datasets=["synthetic-lesions"], dataset_kwargs={"synthetic-lesions": kw}, models=["grabcut"], strategies=["centre", "random"],
        n_positive=2, n_negative=1, steps=3, human=str(path),
    )
    out = tmp / "run"
    run_pointprompt(cfg, out, model_factory=lambda name: create_segmenter("grabcut"), progress=False)
    import json

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return trajs, rows, out


def test_protocol_on_a_benchmark_run(human_run, tmp_path):
    trajs, rows, _ = human_run
    proto = human_protocol(rows)
    assert len(proto["best_steps"]) == len(trajs) == 8
    recorded = {(t.image_id, t.annotator): t for t in trajs}
    for u in proto["best_steps"]:
        t = recorded[(u["image"], u["annotator"])]
        ious = [s.iou for s in t.steps]
        k = int(np.argmax(ious))  # the study's sorts[0]
        assert u["best_step"] == k + 1 and u["recorded_iou"] == pytest.approx(ious[k])
        assert u["best_n_points"] == len(t.steps[k].points) and u["best_round"] == t.steps[k].round
        assert 0 <= u["replayed_iou"] <= 1
    assert {r["strategy"] for r in proto["comparison"]} == {"human", "centre", "random"}
    for r in proto["comparison"]:
        if r["strategy"] != "human":
            assert r["images"] == 4 and r["trajectories"] == 8 and r["points_full"] == 3
    (rep,) = proto["replay"]
    assert rep["steps"] == 24 and rep["trajectories"] == 8
    assert len(proto["replay_steps"]) == 24 and all(r["recorded_iou"] is not None for r in proto["replay_steps"])
    md = human_protocol_section(proto)
    assert "### Human vs automated at each annotator's best step" in md and "| random" in md
    paths = write_human_protocol(tmp_path, proto)
    assert sorted(p.name for p in paths) == ["human_annotators.csv", "human_best_steps.csv", "human_replay.csv", "human_vs_automated.csv"]


def test_run_report_holds_the_human_protocol(human_run):
    """A benchmark run with recorded human prompts (--human) carries the protocol: its section in
    report.md (before "Skipped inputs") and its CSV tables in the run folder."""
    import csv

    trajs, rows, out = human_run
    proto = human_protocol(rows)
    report = (out / "report.md").read_text()
    section = human_protocol_section(proto)
    assert section.startswith("## Human prompts: the study's protocol") and section in report
    assert report.index(section) < report.index("Skipped inputs")
    for key, name in (("best_steps", "human_best_steps.csv"), ("annotators", "human_annotators.csv"), ("comparison", "human_vs_automated.csv"), ("replay_steps", "human_replay.csv")):
        with open(out / name, newline="") as f:
            assert len(list(csv.DictReader(f))) == len(proto[key]) > 0, name
    with open(out / "human_best_steps.csv", newline="") as f:
        best = {(r["image"], r["annotator"]): int(r["best_step"]) for r in csv.DictReader(f)}
    assert best == {(t.image_id, t.annotator): int(np.argmax([s.iou for s in t.steps])) + 1 for t in trajs}


@pytest.mark.realdata
@pytest.mark.skipif(not __import__("os").environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)")
def test_real_structure_masks_are_grouped_by_their_ct_slice():
    """SA-Med2D demo: several structure masks per CT / MR slice; the folds hold out slices, not masks."""
    from pointprompt.features import feature_table
    from segprompt.data.registry import load_dataset

    ds = load_dataset("sammed2d-demo")
    rng = np.random.default_rng(0)
    rows = []
    for s in ds:
        ys, xs = np.nonzero(s.mask)
        for step in (1, 2):
            pick = rng.choice(len(ys), size=step, replace=False)
            rows.append({"dataset": "sammed2d-demo", "image": s.id, "strategy": "random", "step": step,
                         "points": [[float(xs[j]), float(ys[j]), 1] for j in pick], "iou": float(rng.uniform(0.2, 0.9))})
    table = feature_table(rows, ds)
    assert len(table) == 2 * len(ds) and len({r["image"] for r in table}) == len(ds) > 5
    slices = {r["source_image"] for r in table}
    assert slices == {str(s.meta["image_id"]) for s in ds} and len(slices) >= 3
    assert all(r["image"].startswith(r["source_image"]) for r in table)
    res = run_regression(table, models=("linear",), n_splits=3, n_repeats=0, univariate=False)
    assert res["n_groups"] == len(slices)
    fold = np.array(res["fold"])
    src = np.array([table[i]["source_image"] for i in res["rows_used"]])
    assert all(len(set(fold[src == s].tolist())) == 1 for s in slices)
