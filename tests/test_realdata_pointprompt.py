"""The point-prompt benchmark end to end on the real sample data (kvasir_seg, busi, ph2)."""

from __future__ import annotations

import json
import os

import pytest

from pointprompt.bench import PointBenchConfig, run_pointprompt
from segprompt.data.registry import load_dataset

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)"),
]


def test_three_real_sets_with_sam_tiny_and_grabcut_then_resume(tmp_path):
    cfg = PointBenchConfig(
        datasets=["kvasir", "busi", "ph2"],
        models=["sam-tiny", "grabcut"],
        strategies=["centre", "kmedoids", "microsam"],
        n_positive=2,
        n_negative=1,
        limit=3,
    )
    summary = run_pointprompt(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(l) for l in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2 * 3 * 3 * 3  # datasets x models x images x strategies x steps
    assert {r["dataset"] for r in rows} == {"kvasir", "busi", "ph2"}
    for r in rows:
        assert 0.0 <= r["iou"] <= 1.0
    table = {(t["dataset"], t["model"], t["strategy"]): t for t in summary["table"]}
    # GrabCut from a few clicks on real dermoscopy is far from chance
    assert table[("ph2", "grabcut", "centre")]["iou_best"] > 0.3
    before = (tmp_path / "run" / "results.jsonl").read_text()
    built = []
    again = run_pointprompt(cfg, tmp_path / "run", model_factory=lambda name: built.append(name), progress=False)
    assert built == []  # no model built: nothing recomputed
    assert (tmp_path / "run" / "results.jsonl").read_text() == before
    assert again == summary


def test_busi_normal_images_are_skipped_and_recorded(tmp_path):
    busi = load_dataset("busi")
    pick = [i for i, name in enumerate(busi.ids) if name in ("benign_1", "normal_1", "malignant_1")]
    cfg = PointBenchConfig(datasets=["busi"], models=["grabcut"], strategies=["centre"], n_positive=1, n_negative=0)
    summary = run_pointprompt(cfg, tmp_path / "r", dataset=busi.subset(pick), progress=False)
    errors = [json.loads(l) for l in (tmp_path / "r" / "errors.jsonl").read_text().splitlines()]
    assert [e["item"] for e in errors] == ["normal_1"]
    assert "empty ground-truth mask" in errors[0]["error"]
    assert summary["table"][0]["trajectories"] == 2


def test_study_protocol_config_runs(tmp_path):
    """The PointPrompt study's protocol (configs/pointprompt/study_protocol.yaml) end to end through
    the CLI on one image per set with sam-tiny: the study's strategies and budgets, mask 0."""
    from pathlib import Path

    import yaml
    from click.testing import CliRunner

    from segprompt.cli import cli

    config = Path(__file__).resolve().parents[1] / "configs" / "pointprompt" / "study_protocol.yaml"
    fields = yaml.safe_load(config.read_text())
    assert fields["multimask"] == "first" and fields["budget"] == "auto" and fields["models"] == ["sam-tiny"]
    assert {"random", "kmedoids", "shi-tomasi", "entropy", "max-distance", "saliency", "obj"} == set(fields["strategies"])
    result = CliRunner().invoke(cli, ["bench", "pointprompt", "--config", str(config), "--limit", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 7  # datasets x strategies, one step each
    budget = {"kvasir": (14, 2), "busi": (4, 1), "ph2": (11, 2)}
    for r in rows:
        p, n = budget[r["dataset"]]
        seed = int(r["strategy"] in ("entropy", "max-distance", "saliency"))  # the study's seed point per side
        assert (r["n_positive"], r["n_negative"]) == (p + seed, n + seed), r["strategy"]
        assert r["candidate"] == 0 and 0.0 <= r["iou"] <= 1.0  # multimask output, mask 0 as the study
