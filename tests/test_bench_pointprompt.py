"""The point-prompt benchmark run folder: rows, resume after a kill, errors.jsonl, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pointprompt.bench import PointBenchConfig, placement_prefixes, run_pointprompt, summarise
from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.data.synthetic import SyntheticLesions
from segprompt.errors import ConfigError, DataError
from segprompt.models import create_segmenter
from segprompt.models.sam import SamSegmenter
from segprompt.models.sam_arch import tiny_arch


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return tiny_arch().build()


def _factory(model):
    def make(name):
        return SamSegmenter(model=model) if name.startswith("tiny") else create_segmenter(name)

    return make


CFG = dict(datasets=["synthetic-lesions"], dataset_kwargs={"synthetic-lesions": {"n": 3, "seed": 4, "size": 96}}, models=["tiny", "grabcut"], strategies=["centre", "random", "microsam"], n_positive=2, n_negative=1, steps=3)


def test_placement_prefixes():
    assert placement_prefixes(4, 4) == [1, 2, 3, 4]
    assert placement_prefixes(16, 4) == [4, 8, 12, 16]
    assert placement_prefixes(2, 4) == [1, 1, 2, 2]


def test_rows_and_reports(tmp_path, tiny_model):
    cfg = PointBenchConfig(**CFG)
    summary = run_pointprompt(cfg, tmp_path / "run", model_factory=_factory(tiny_model), progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 3 * 3  # models x images x strategies x steps
    r = rows[0]
    assert set(r) >= {"image", "model", "strategy", "step", "points", "iou", "dice"}
    assert all(len(p) == 3 and p[2] in (0, 1) for p in r["points"])
    # placement: points grow by prefix; correction: centre click first, then +2 per step
    centre = [x for x in rows if x["model"] == "grabcut" and x["strategy"] == "centre" and x["image"] == r["image"]]
    assert [x["n_points"] for x in sorted(centre, key=lambda x: x["step"])] == [1, 2, 3]
    micro = sorted((x for x in rows if x["model"] == "grabcut" and x["strategy"] == "microsam" and x["image"] == r["image"]), key=lambda x: x["step"])
    assert [x["n_points"] for x in micro] == [1, 3, 5]
    assert micro[1]["points"][0] == micro[0]["points"][0]
    for name in ("config.yaml", "summary.csv", "curves.csv", "report.md", "iou_per_step.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    grabcut = [t for t in summary["table"] if t["model"] == "grabcut" and t["strategy"] == "centre"][0]
    assert grabcut["iou@1"] > 0.5  # a real segmentation, not noise
    assert "| tiny" in (tmp_path / "run" / "report.md").read_text()
    # no recorded human prompts (no --human): no human-protocol section or tables
    assert "Human prompts" not in (tmp_path / "run" / "report.md").read_text()
    assert not list((tmp_path / "run").glob("human_*.csv"))


def test_resume_after_kill_equals_uninterrupted(tmp_path, tiny_model):
    cfg = PointBenchConfig(**{**CFG, "models": ["tiny", "tiny@2"]})
    full = run_pointprompt(cfg, tmp_path / "a", model_factory=_factory(tiny_model), progress=False)
    lines = (tmp_path / "a" / "results.jsonl").read_text().splitlines(keepends=True)
    # a run killed mid-way: some rows, then a torn half row
    b = tmp_path / "b"
    b.mkdir()
    (b / "config.yaml").write_text((tmp_path / "a" / "config.yaml").read_text())
    (b / "results.jsonl").write_text("".join(lines[:20]) + lines[20][: len(lines[20]) // 2])
    calls = []

    def counting(name):
        calls.append(name)
        return _factory(tiny_model)(name)

    resumed = run_pointprompt(cfg, b, model_factory=counting, progress=False)
    assert resumed == full
    rows_b = (b / "results.jsonl").read_text().splitlines()
    assert len(rows_b) == len(lines)
    assert sorted(rows_b) == sorted(l.rstrip("\n") for l in lines)
    # a finished run: a rerun builds no model and writes no row
    calls.clear()
    again = run_pointprompt(cfg, b, model_factory=counting, progress=False)
    assert again == full and calls == [] and len((b / "results.jsonl").read_text().splitlines()) == len(lines)


def test_different_config_in_same_folder_is_refused(tmp_path, tiny_model):
    cfg = {**CFG, "models": ["tiny"]}
    run_pointprompt(PointBenchConfig(**cfg), tmp_path / "r", model_factory=_factory(tiny_model), progress=False)
    with pytest.raises(ConfigError, match="different configuration.*seed"):
        run_pointprompt(PointBenchConfig(**{**cfg, "seed": 1}), tmp_path / "r", model_factory=_factory(tiny_model), progress=False)


def test_several_datasets_and_study_budgets(tmp_path, tiny_model):
    from segprompt.data.synthetic import write_folder

    a = write_folder(SyntheticLesions(n=2, seed=1, size=64), tmp_path / "set_a")
    b = write_folder(SyntheticLesions(n=2, seed=2, size=(48, 80)), tmp_path / "set_b")
    cfg = PointBenchConfig(datasets=[str(a), str(b)], models=["tiny"], strategies=["random", "centre"], budget="breast")
    summary = run_pointprompt(cfg, tmp_path / "r", model_factory=_factory(tiny_model), progress=False)
    rows = [json.loads(l) for l in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert {r["dataset"] for r in rows} == {str(a), str(b)}
    assert len(rows) == 2 * 2 * 2 * 5  # datasets x images x strategies x (4 + 1) steps
    last = [r for r in rows if r["step"] == 5]
    assert all((r["n_positive"], r["n_negative"]) == (4, 1) for r in last)
    assert {(m["dataset"], m["n_points"]) for m in summary["matched"]} == {(d, n) for d in (str(a), str(b)) for n in range(1, 6)}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "Strategy x dataset" in report and "matched point budgets" in report
    assert cfg.budget_of("kvasir") == (4, 1) and cfg.steps_of("busi") == 5
    auto = PointBenchConfig(budget="auto", n_positive=2, n_negative=2)
    assert auto.budget_of("kvasir") == (14, 2) and auto.budget_of("busi") == (4, 1) and auto.budget_of("synthetic-lesions") == (2, 2)
    with pytest.raises(ConfigError, match="no point budget"):
        PointBenchConfig(budget="elephant")


class _Flaky(SegmentationDataset):
    """Three lesions, one unreadable image and one empty mask."""

    name = "flaky"

    def __init__(self):
        super().__init__()
        self.inner = SyntheticLesions(n=3, seed=1, size=64)
        self.records = ["a", "broken", "b", "empty", "c"]

    def load(self, record):
        if record == "broken":
            raise DataError("images/broken.jpg: unreadable or truncated image")
        if record == "empty":
            s = self.inner[0]
            return Sample(id="empty", image=s.image, mask=np.zeros_like(s.mask))
        s = self.inner["abc".index(record)]
        return Sample(id=record, image=s.image, mask=s.mask)


def test_bad_items_are_skipped_and_recorded(tmp_path, tiny_model):
    cfg = PointBenchConfig(**{**CFG, "models": ["tiny"], "datasets": ["flaky"]})
    summary = run_pointprompt(cfg, tmp_path / "r", dataset=_Flaky(), model_factory=_factory(tiny_model), progress=False)
    errors = [json.loads(l) for l in (tmp_path / "r" / "errors.jsonl").read_text().splitlines()]
    assert {e["item"] for e in errors} == {"broken", "empty"}
    assert any("truncated" in e["error"] for e in errors) and any("empty ground-truth" in e["error"] for e in errors)
    assert summary["table"][0]["trajectories"] == 3
    # the rerun does not retry or re-record them
    run_pointprompt(cfg, tmp_path / "r", dataset=_Flaky(), model_factory=_factory(tiny_model), progress=False)
    assert len((tmp_path / "r" / "errors.jsonl").read_text().splitlines()) == 2


def test_same_seed_same_rows(tmp_path, tiny_model):
    cfg = PointBenchConfig(**{**CFG, "models": ["tiny"]})
    run_pointprompt(cfg, tmp_path / "x", model_factory=_factory(tiny_model), progress=False)
    run_pointprompt(cfg, tmp_path / "y", model_factory=_factory(tiny_model), progress=False)
    assert (tmp_path / "x" / "results.jsonl").read_text() == (tmp_path / "y" / "results.jsonl").read_text()
    run_pointprompt(PointBenchConfig(**{**CFG, "models": ["tiny"], "seed": 9}), tmp_path / "z", model_factory=_factory(tiny_model), progress=False)
    assert (tmp_path / "x" / "results.jsonl").read_text() != (tmp_path / "z" / "results.jsonl").read_text()


def test_multimask_model_runs_each_model_with_its_own_policy(tmp_path, tiny_model):
    """``--multimask model`` gives each model the policy it was created with (what the library,
    ``segment`` and napari use): the same rows as a run with that policy for that model alone."""
    own = {"tiny": "single", "tiny@auto": "auto", "tiny@all": "all"}

    def make(name):
        return SamSegmenter(model=tiny_model, multimask=own[name])

    cfg = dict(CFG, strategies=["centre", "microsam"])
    run_pointprompt(PointBenchConfig(**{**cfg, "models": ["tiny", "tiny@auto"], "multimask": "model"}), tmp_path / "m", model_factory=make, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "m" / "results.jsonl").read_text().splitlines()]
    for name, policy in (("tiny", "single"), ("tiny@auto", "auto")):
        run_pointprompt(PointBenchConfig(**{**cfg, "models": [name], "multimask": policy}), tmp_path / policy, model_factory=make, progress=False)
        alone = [json.loads(line) for line in (tmp_path / policy / "results.jsonl").read_text().splitlines()]
        key = lambda r: (r["image"], r["strategy"], r["step"])  # noqa: E731
        mine = {key(r): r["iou"] for r in rows if r["model"] == name}
        assert mine == {key(r): r["iou"] for r in alone} and len(mine) == len(alone) > 0
    first = {r["model"]: r["iou"] for r in rows if r["strategy"] == "centre" and r["step"] == 1 and r["image"] == rows[0]["image"]}
    assert first["tiny"] != first["tiny@auto"]  # the two policies differ on a lone click
    with pytest.raises(ConfigError, match="tiny@all: --multimask model needs a policy that keeps one mask, and this model's own is 'all'"):
        run_pointprompt(PointBenchConfig(**{**cfg, "models": ["tiny@all"], "multimask": "model"}), tmp_path / "all", model_factory=make, progress=False)
    report = (tmp_path / "m" / "report.md").read_text()
    assert "- `tiny`: `single`" in report and "- `tiny@auto`: `auto`" in report
    assert {r["multimask"] for r in rows if r["model"] == "tiny"} == {"single"}
    with pytest.raises(ConfigError, match="--multimask must be one of .*model"):
        PointBenchConfig(multimask="mine")
    with pytest.raises(ConfigError, match="tiny: --multimask model needs a policy that keeps one mask, and model_kwargs gives 'all'"):
        PointBenchConfig(**{**cfg, "models": ["tiny"], "multimask": "model", "model_kwargs": {"tiny": {"multimask": "all"}}})


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown point strategy 'centr'.*centre"):
        PointBenchConfig(strategies=["centr"])
    with pytest.raises(ConfigError, match="budget"):
        PointBenchConfig(n_positive=0, n_negative=0)


def test_human_trajectories_are_replayed(tmp_path, tiny_model):
    from pointprompt.trajectory import PromptStep, Trajectory, save_trajectories
    from segprompt.data.synthetic import write_folder
    from segprompt.prompts import Points

    ds_dir = write_folder(SyntheticLesions(n=2, seed=8, size=(64, 96)), tmp_path / "set")
    samples = list(SyntheticLesions(n=2, seed=8, size=(64, 96)))
    trajs = []
    for s in samples:
        ys, xs = np.nonzero(s.mask)
        for annotator, n_steps in (("st1", 2), ("st2", 3)):
            steps = [PromptStep(points=Points(np.stack([xs[: k + 1], ys[: k + 1]], 1), np.ones(k + 1, int)), iou=0.5, round=0) for k in range(n_steps)]
            trajs.append(Trajectory(image_id=s.id, source="human", annotator=annotator, dataset=None, image_size=s.mask.shape, steps=steps))
    save_trajectories(tmp_path / "human.jsonl", trajs)
    cfg = PointBenchConfig(datasets=[str(ds_dir)], models=["tiny"], strategies=["centre"], n_positive=2, n_negative=0, human=str(tmp_path / "human.jsonl"))
    summary = run_pointprompt(cfg, tmp_path / "r", model_factory=_factory(tiny_model), progress=False)
    rows = [json.loads(l) for l in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    human = [r for r in rows if r["strategy"] == "human"]
    assert len(human) == 2 * (2 + 3)
    assert {(r["annotator"], r["step"]) for r in human} == {("st1", 1), ("st1", 2), ("st2", 1), ("st2", 2), ("st2", 3)}
    assert all(r["recorded_iou"] == 0.5 for r in human)
    row = [t for t in summary["table"] if t["strategy"] == "human"][0]
    assert row["trajectories"] == 4 and row["steps"] == 2.5
    assert any(m["strategy"] == "human" and m["n_points"] == 3 for m in summary["matched"])
    assert "## Human prompts: the study's protocol" in (tmp_path / "r" / "report.md").read_text()
    assert (tmp_path / "r" / "human_vs_automated.csv").stat().st_size > 0
    # resumed run: nothing to do
    calls = []
    run_pointprompt(cfg, tmp_path / "r", model_factory=lambda n: calls.append(n) or _factory(tiny_model)(n), progress=False)
    assert calls == []
    with pytest.raises(ConfigError, match="not a strategy"):
        PointBenchConfig(strategies=["human"])


def test_noc_is_counted_in_clicks():
    cfg = PointBenchConfig(datasets=["d"], models=["m"], strategies=["microsam", "centre"], n_positive=2, n_negative=1, steps=3)

    def row(strategy, step, n_points, iou):
        return {"dataset": "d", "model": "m", "image": "a", "strategy": strategy, "step": step, "n_points": n_points, "iou": iou}

    rows = [row("microsam", 1, 1, 0.5), row("microsam", 2, 3, 0.88), row("microsam", 3, 5, 0.95)]
    rows += [row("centre", 1, 1, 0.5), row("centre", 2, 2, 0.6), row("centre", 3, 3, 0.7)]
    table = {t["strategy"]: t for t in summarise(rows, cfg)["table"]}
    # micro-sam's second step holds 3 clicks (the first + a positive and a negative): NoC@85 = 3, not 2 steps
    assert table["microsam"]["noc85"] == 3 and table["microsam"]["noc90"] == 5
    assert table["centre"]["noc85"] == 3 and table["centre"]["fail85"] == 1  # never: the 3 clicks placed


def test_ritm_clicks_once_per_step_and_never_twice_on_a_pixel(tmp_path, tiny_model):
    cfg = PointBenchConfig(**{**CFG, "models": ["grabcut"], "strategies": ["ritm", "microsam"], "steps": 5})
    summary = run_pointprompt(cfg, tmp_path / "r", model_factory=_factory(tiny_model), progress=False)
    rows = [json.loads(l) for l in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    for image in {r["image"] for r in rows}:
        ritm = sorted((r for r in rows if r["strategy"] == "ritm" and r["image"] == image), key=lambda r: r["step"])
        assert [r["n_points"] for r in ritm][:2] == [1, 2]  # one click per step (none once the mask is exact)
        pts = [tuple(p[:2]) for p in ritm[-1]["points"]]
        assert len(set(pts)) == len(pts)  # the clicked pixels are excluded
        micro = sorted((r for r in rows if r["strategy"] == "microsam" and r["image"] == image), key=lambda r: r["step"])
        assert [r["n_points"] for r in micro] == [1, 3, 5, 7, 9]
    assert "number of clicks" in (tmp_path / "r" / "report.md").read_text()
    assert {t["strategy"] for t in summary["table"]} == {"ritm", "microsam"}
