"""The issue's CI sweep on real sample data: kvasir_seg and busi (from $SEGPROMPT_DATA_ROOT)
converted to TuneVLSeg's split-file layout by `segprompt data convert-tunevlseg`, then every
method x 2 depths x both datasets with the tiny open_clip VLSM, and the report."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from segprompt.cli import cli
from segprompt.engine.runfolder import JsonlLog

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)"),
]

SETS = {"kvasir_seg": ("kvasir", "polyp"), "busi": ("busi", "breast tumor")}
METHODS = "zeroshot,coop,cocoop,vpt-shallow,vpt-deep,maple,shared-separate,shared-attention,full"


def test_sweep_on_converted_kvasir_and_busi(tmp_path):
    root = Path(os.environ["SEGPROMPT_DATA_ROOT"])
    present = list(SETS)
    missing = [folder for folder in SETS if not (root / folder).is_dir()]
    assert not missing, f"{missing} missing under {root}"
    runner = CliRunner()
    converted = []
    for folder in present:
        name, text = SETS[folder]
        out = tmp_path / name
        res = runner.invoke(cli, ["data", "convert-tunevlseg", name, str(out), "--text", text])
        assert res.exit_code == 0, res.output
        assert (out / "anns" / "test.json").is_file()
        converted.append(str(out))
    run = tmp_path / "sweep"
    res = runner.invoke(cli, ["bench", "tunevlseg", "--vlsm", "openclip-tiny", "--methods", METHODS, "--depths", "1,2",
                              "--datasets", ",".join(converted), "--epochs", "1", "--batch-size", "4", "--max-train-samples", "8",
                              "--max-eval-samples", "4", "--out", str(run)])
    assert res.exit_code == 0, res.output
    cells = [r for r in JsonlLog(run / "results.jsonl") if r.get("kind") == "cell"]
    assert len(cells) == 14 * len(converted)
    assert all(r["split"] == "test" and not r["test_is_val"] and r["n_test"] == 4 for r in cells)
    table = (run / "table.md").read_text()
    assert all(f"| {m} " in table for m in METHODS.split(","))
    assert (run / "table.tex").read_text().count(r"\\") == 10
    for path in converted:
        assert (run / f"dice_vs_depth_{Path(path).name}.png").read_bytes()[:4] == b"\x89PNG"


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tunevlseg"


def test_tvs_recipe_sweep_on_kvasir_and_busi_records_the_recipe_and_resumes(tmp_path):
    """The issue's CI run: the TuneVLSeg recipe (the default, here also from its preset) on real
    Kvasir and BUSI images, two methods, a few items and epochs; a rerun that grows the grid
    resumes, and the same command again runs nothing."""
    import yaml

    root = Path(os.environ["SEGPROMPT_DATA_ROOT"])
    runner = CliRunner()
    roots = []
    for folder, (name, text) in SETS.items():
        assert (root / folder).is_dir(), f"{folder} missing under {root}"
        out = tmp_path / name
        # p0 the class name, p1 a sentence: TuneVLSeg's runs use prompt p1 (the dataset presets say so)
        res = runner.invoke(cli, ["data", "convert-tunevlseg", name, str(out), "--text", text, "--text", f"a {text} in a medical image",
                                  "--link", "symlink"])
        assert res.exit_code == 0, res.output
        roots += ["--root", f"{name}={out}"]
    run = tmp_path / "sweep"
    base = ["bench", "tunevlseg", "--config", str(CONFIGS / "recipes" / "tvs.yaml"), "--config", str(CONFIGS / "datasets" / "kvasir.yaml"),
            "--vlsm", "clipseg-tiny", "--dataset", "kvasir,busi", *roots, "--depths", "1", "--epochs", "2", "--batch-size", "4",
            "--limit", "4", "--out", str(run)]
    res = runner.invoke(cli, [*base, "--methods", "coop"])
    assert res.exit_code == 0, res.output
    assert "2 cells: 2 run now, 0 already finished, 0 failed" in res.output
    res = runner.invoke(cli, [*base, "--methods", "coop,vpt-shallow"])  # the grid grows by a method: resume
    assert res.exit_code == 0, res.output
    assert "4 cells: 2 run now, 2 already finished, 0 failed" in res.output
    res = runner.invoke(cli, [*base, "--methods", "coop,vpt-shallow"])
    assert res.exit_code == 0 and "4 cells: 0 run now, 4 already finished, 0 failed" in res.output, res.output

    cells = [r for r in JsonlLog(run / "results.jsonl") if r.get("kind") == "cell"]
    assert len(cells) == 4 and {(r["method"], r["dataset"]) for r in cells} == {(m, d) for m in ("coop", "vpt-shallow") for d in ("kvasir", "busi")}
    assert all(r["recipe"] == "tvs" and r["split"] == "test" and r["n_test"] == 4 and 0 <= r["dice_mean"] <= 1 for r in cells)
    assert all(math.isfinite(r["val_loss_last"]) and r["best_epoch"] >= 1 for r in cells)  # the checkpoint of a trained epoch
    train = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (train["recipe"], train["monitor"], train["early_stop"], train["min_epochs"], train["weight_decay"], train["prompt"], train["epochs"]) == (
        "tvs", "val_loss", 10, 10, 0.0, "p1", 2)
    for r in cells:
        cell = run / "cells" / r["cell"]
        assert yaml.safe_load((cell / "config.yaml").read_text())["recipe"] == "tvs"
        epochs = [e for e in JsonlLog(cell / "results.jsonl") if e["kind"] == "epoch"]
        assert [e["epoch"] for e in epochs] == [0, 1, 2] and all(math.isfinite(e["val_loss"]) for e in epochs)
    assert "tvs (TuneVLSeg's protocol)" in (run / "report.md").read_text()
