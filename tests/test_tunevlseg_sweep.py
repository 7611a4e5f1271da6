"""tunevlseg.sweep / report / cli: the grid in one run folder, depth deduplication, skipping finished
cells, submitit's LocalExecutor, local worker processes, the report (Markdown, LaTeX, plots)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from segprompt.cli import cli
from segprompt.data.synthetic import SyntheticLesions
from segprompt.data.tunevlseg_format import write_tunevlseg_split
from segprompt.engine.runfolder import JsonlLog
from segprompt.errors import ConfigError
from tunevlseg import sweep as sweep_mod
from tunevlseg.sweep import SweepConfig, plan_cells, run_sweep

ALL = ["zeroshot", "coop", "cocoop", "vpt-shallow", "vpt-deep", "maple", "shared-separate", "shared-attention", "full"]
SMALL = {"epochs": 1, "batch_size": 4, "max_train_samples": 4, "max_eval_samples": 3, "lr": 1e-2}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("sets")
    out = []
    for name, style in (("derm", "dermoscopy"), ("us", "ultrasound")):
        write_tunevlseg_split(SyntheticLesions(n=12, seed=1, size=48, style=style), base / name, splits={"train": 0.5, "val": 0.25, "test": 0.25},
                              prompts=["lesion"])
        out.append(str(base / name))
    return out


def _rows(run_dir, kind="cell"):
    return [r for r in JsonlLog(run_dir / "results.jsonl") if r.get("kind") == kind]


def test_plan_deduplicates_depth_per_method():
    cfg = SweepConfig(vlsms=["clipseg-tiny"], methods=ALL, depths=[1, 3, 6], datasets=["kvasir"], seeds=[0, 1])
    cells, skipped = plan_cells(cfg, layers=lambda v: (4, 4))
    names = {c.name for c in cells if c.seed == 0}
    assert {"clipseg-tiny_zeroshot_d0_kvasir_s0", "clipseg-tiny_full_d0_kvasir_s0", "clipseg-tiny_vpt-shallow_d1_kvasir_s0"} <= names
    assert "clipseg-tiny_vpt-deep_d1_kvasir_s0" not in names and "clipseg-tiny_vpt-deep_d3_kvasir_s0" in names
    # 3 without depth + vpt-deep d3 + five methods x d1, d3 (d6 > 4 layers) = 14 per seed
    assert len(names) == 14 and len(cells) == 28
    reasons = dict(skipped)
    assert "is vpt-shallow" in reasons["clipseg-tiny_vpt-deep_d1"] and "exceeds the 4 layers" in reasons["clipseg-tiny_coop_d6"]
    # without vpt-shallow in the grid, vpt-deep keeps depth 1
    cells, _ = plan_cells(SweepConfig(methods=["vpt-deep"], depths=[1], datasets=["kvasir"]), layers=lambda v: (4, 4))
    assert [c.name for c in cells] == ["clipseg-tiny_vpt-deep_d1_kvasir_s0"]
    with pytest.raises(ConfigError, match="set by the grid"):
        SweepConfig(datasets=["kvasir"], train={"method": "coop"})
    with pytest.raises(ConfigError, match="unknown training setting"):
        SweepConfig(datasets=["kvasir"], train={"epoch": 3})


def test_local_sweep_all_methods_two_depths_two_datasets_with_report(datasets, tmp_path, monkeypatch):
    cfg = SweepConfig(vlsms=["openclip-tiny"], methods=ALL, depths=[1, 2], datasets=datasets, seeds=[0], train=SMALL)
    out = tmp_path / "sweep"
    result = run_sweep(cfg, out)
    rows = _rows(out)
    assert result["cells"] == 28 and result["ran"] == 28 and not result["failed"] and len(rows) == 28
    assert {r["method"] for r in rows} == set(ALL) and {r["dataset"] for r in rows} == {"derm", "us"}
    assert all(r["trainable_params"] > 0 and r["n_test"] == 3 and 0 <= r["dice_mean"] <= 1 for r in rows)
    by = {(r["method"], r["depth"]): r["trainable_params"] for r in rows}
    assert by[("coop", 2)] - by[("coop", 1)] == 4 * 32 and by[("zeroshot", 0)] < by[("coop", 1)] < by[("full", 0)]
    errors = list(JsonlLog(out / "errors.jsonl"))
    assert [e["item"] for e in errors] == ["openclip-tiny_vpt-deep_d1"]
    assert sorted(p.name for p in (out / "cells").iterdir())[0] == "openclip-tiny_cocoop_d1_derm_s0"

    # the report: Markdown and LaTeX tables, one Dice-vs-depth plot per dataset, parameter counts
    table = (out / "table.md").read_text()
    for method in ALL:
        assert f"| {method} " in table
    assert "derm" in table.splitlines()[0] and ("(d2)" in table or "(d1)" in table)
    tex = (out / "table.tex").read_text()
    assert tex.startswith(r"\begin{tabular}{llcc}") and r"\toprule" in tex and r"\bottomrule" in tex and tex.count(r"\\") == 10
    assert r"\textbf{" in tex and "$\\pm$" in tex
    for name in ("derm", "us"):
        assert (out / f"dice_vs_depth_{name}.png").read_bytes()[:8] == PNG
    assert len((out / "summary.csv").read_text().splitlines()) == 1 + 28
    assert "shared-attention,2," in (out / "params.csv").read_text()
    report = (out / "report.md").read_text()
    assert "![dice_vs_depth_derm](dice_vs_depth_derm.png)" in report and "Trainable parameters" in report

    # a rerun runs nothing: every cell has its row
    def boom(payload):
        raise AssertionError(f"cell {payload['out']} ran again")

    monkeypatch.setattr(sweep_mod, "run_cell", boom)
    again = run_sweep(cfg, out)
    assert again["ran"] == 0 and not again["failed"] and len(_rows(out)) == 28
    # a sweep killed after a cell finished but before its row: the row is taken from the cell folder
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    synced = run_sweep(cfg, out, report=False)
    assert synced["ran"] == 0 and synced["synced"] == 1 and len(_rows(out)) == 28
    # other training settings in the same folder are refused; the grid itself may grow
    with pytest.raises(ConfigError, match="different configuration"):
        run_sweep(SweepConfig(vlsms=["openclip-tiny"], methods=ALL, depths=[1, 2], datasets=datasets, train={**SMALL, "lr": 1e-3}), out)

    # the CLI report sub-command
    res = CliRunner().invoke(cli, ["bench", "tunevlseg", "report", str(out)])
    assert res.exit_code == 0, res.output
    assert "| openclip-tiny | shared-attention" in res.output and "table.tex" in res.output


def test_sweep_through_submitit_local_executor(datasets, tmp_path):
    pytest.importorskip("submitit")
    cfg = SweepConfig(vlsms=["openclip-tiny"], methods=["vpt-shallow"], depths=[1], datasets=datasets[:1], train=SMALL)
    out = tmp_path / "sweep"
    result = run_sweep(cfg, out, launcher="submitit-local", slurm={"timeout_min": 10})
    assert result["ran"] == 1 and not result["failed"], result
    (row,) = _rows(out)
    assert row["cell"] == "openclip-tiny_vpt-shallow_d1_derm_s0" and row["kind"] == "cell" and row["trainable_params"] > 0
    logs = list((out / "submitit").rglob("*_log.out"))
    assert logs, "submitit wrote no job log"
    assert list((out / "submitit").rglob("*_result.pkl"))  # the job ran in its own process and returned
    assert (out / "cells" / row["cell"] / "checkpoints" / "best.pt").exists() and (out / "table.md").exists()


def test_cli_grid_with_two_worker_processes_resumes(datasets, tmp_path):
    out = tmp_path / "cli"
    args = ["bench", "tunevlseg", "--vlsm", "clipseg-tiny", "--methods", "zeroshot,vpt-shallow", "--depths", "1",
            "--datasets", ",".join(datasets), "--epochs", "1", "--batch-size", "4", "--max-train-samples", "4",
            "--max-eval-samples", "2", "--workers", "2", "--threads", "1", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "4 cells: 4 run now" in res.output and "| clipseg-tiny | zeroshot" in res.output
    rows = _rows(out)
    assert len(rows) == 4 and {r["trainable_params"] for r in rows if r["method"] == "zeroshot"} == {0}
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    assert cfg["suite"] == "tunevlseg-sweep" and cfg["train"]["epochs"] == 1
    res = CliRunner().invoke(cli, args[:-4] + ["--out", str(out)])  # sequential rerun: all finished
    assert res.exit_code == 0 and "0 run now, 4 already finished" in res.output


def test_optuna_search_selects_on_validation(datasets, tmp_path):
    pytest.importorskip("optuna")
    cfg = SweepConfig(vlsms=["openclip-tiny"], methods=["maple"], depths=[2], datasets=datasets[:1], train=SMALL)
    out = tmp_path / "optuna"
    result = run_sweep(cfg, out, optuna_trials=2)
    assert result["optuna"] == 1
    (row,) = _rows(out, "optuna")
    assert row["study"] == "openclip-tiny_maple_derm_s0" and row["trials"] == 2
    assert set(row["best_params"]) == {"lr", "weight_decay", "depth"} and 1 <= row["best_params"]["depth"] <= 4
    assert row["kind"] == "optuna" and 0 <= row["dice_mean"] <= 1 and row["val_dice_best"] == row["best_val_dice"]
    # the tvs recipe (the default) searches TuneVLSeg's space (configs/hparams_search/*_optuna.yaml:
    # lr 1e-5..5e-3, weight decay 1e-5..1e-2) minimising val_loss, the last epoch's validation loss
    assert row["objective"] == "val_loss_last" and row["direction"] == "minimize"
    assert 1e-5 <= row["best_params"]["lr"] <= 5e-3 and 1e-5 <= row["best_params"]["weight_decay"] <= 1e-2
    last = {}
    for trial in sorted((out / "optuna" / row["study"]).iterdir()):
        epochs = [r for r in JsonlLog(trial / "results.jsonl") if r.get("kind") == "epoch"]
        last[trial.name] = epochs[-1]["val_loss"]
    assert len(last) == 2 and row["best_value"] == pytest.approx(min(last.values()))
    assert "Optuna search" in (out / "report.md").read_text()
    assert run_sweep(cfg, out, optuna_trials=2)["optuna"] == 0  # finished studies are not rerun


def test_a_missing_mask_is_one_skipped_item_and_the_cell_finishes(tmp_path):
    root = tmp_path / "derm"
    write_tunevlseg_split(SyntheticLesions(n=12, seed=1, size=48), root, splits={"train": 0.5, "val": 0.25, "test": 0.25}, prompts=["lesion"])
    missing = {}
    for split in ("train", "test"):
        entry = json.loads((root / "anns" / f"{split}.json").read_text())[0]
        (root / "masks" / entry["mask_name"]).unlink()
        missing[split] = str(root / "masks" / entry["mask_name"])
    cfg = SweepConfig(vlsms=["openclip-tiny"], methods=["vpt-shallow"], depths=[1], datasets=[str(root)], train={**SMALL, "epochs": 2})
    out = tmp_path / "sweep"
    result = run_sweep(cfg, out, progress=False)
    assert result["ran"] == 1 and not result["failed"], result
    (row,) = _rows(out)
    assert row["n_test"] == 2 and row["skipped_items"] == 2 and row["skipped_test"] == 1  # 3 test items, 1 unreadable
    assert row["epochs_run"] == 2 and row["train_images"] == 4
    errors = list(JsonlLog(out / "errors.jsonl"))
    assert len(errors) == 2  # once each, although the training item failed in both epochs
    assert sorted(e["split"] for e in errors) == ["test", "train"]
    assert all(missing[e["split"]] in e["error"] for e in errors)  # the message names the missing file
    assert {e["cell"] for e in errors} == {row["cell"]} and all(e["type"] == "DataError" for e in errors)
    assert len(list(JsonlLog(out / "cells" / row["cell"] / "errors.jsonl"))) == 2
    assert "| derm    | 4     | 3   | 3    | 2" in (out / "report.md").read_text()
    again = run_sweep(cfg, out, progress=False)
    assert again["ran"] == 0 and len(list(JsonlLog(out / "errors.jsonl"))) == 2
