"""`segprompt bench tunevlseg` from the command line: option names shared with the rest of the CLI
(--dataset / --seed repeatable, old spellings hidden aliases, --limit, --methods all), errors that
name CLI flags and stop before any work (exit 2), `datasets --check` (each problem once, exit 2 on
a mismatch), progress and resume lines, and the report's timing of a resumed run."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from segprompt.cli import cli, main
from segprompt.data.synthetic import SyntheticLesions
from segprompt.data.tunevlseg_format import write_tunevlseg_split
from tunevlseg.learners import LEARNERS
from tunevlseg.sweep import SweepConfig

FAKE_RESULT = {"cells": 0, "ran": 0, "synced": 0, "failed": [], "skipped": [], "optuna": 0, "report": {}, "timing": "", "errors": None}


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() configures logging for the CLI (a handler on the root logger); undo it after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: logging.getLogger(n).level for n in ("segprompt", "tunevlseg", "pointprompt", "viewers")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)
    logging.captureWarnings(False)


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "lesions"
    write_tunevlseg_split(SyntheticLesions(n=8, seed=2, size=40), root, splits={"train": 0.5, "val": 0.25, "test": 0.25}, prompts=["lesion"])
    return root


@pytest.fixture
def captured(monkeypatch):
    """Run the CLI with run_sweep replaced: returns the SweepConfig and the keyword arguments it got."""
    import tunevlseg.sweep as sweep_mod

    calls = []

    def fake(cfg, out, **kwargs):
        calls.append((cfg, kwargs))
        return dict(FAKE_RESULT)

    monkeypatch.setattr(sweep_mod, "run_sweep", fake)

    def invoke(*args):
        res = CliRunner().invoke(cli, ["bench", "tunevlseg", *args, "--out", "unused"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        cfg, kwargs = calls.pop()
        return asdict(cfg), kwargs, res.output

    return invoke


# -- option names ---------------------------------------------------------------------------------


def test_dataset_and_seed_repeat_like_the_rest_of_the_cli_and_old_spellings_still_parse(captured):
    repeated, _, _ = captured("--dataset", "kvasir", "--dataset", "busi", "--seed", "0", "--seed", "1")
    commas, _, _ = captured("--dataset", "kvasir,busi", "--seed", "0,1")
    old, _, out = captured("--datasets", "kvasir,busi", "--seeds", "0,1")
    assert repeated == commas == old
    assert repeated["datasets"] == ["kvasir", "busi"] and repeated["seeds"] == [0, 1]
    assert "--datasets is deprecated; use --dataset" in out
    # --model is --vlsm; --method / --depth are --methods / --depths
    a, _, _ = captured("--dataset", "kvasir", "--vlsm", "openclip-tiny", "--methods", "coop", "--depths", "1,2")
    b, _, _ = captured("--dataset", "kvasir", "--model", "openclip-tiny", "--method", "coop", "--depth", "1", "--depth", "2")
    assert a == b and a["vlsms"] == ["openclip-tiny"] and a["methods"] == ["coop"] and a["depths"] == [1, 2]
    # defaults: clipseg-tiny, every learner, depths 1..12, seed 0
    default, _, _ = captured("--dataset", "kvasir")
    assert default["vlsms"] == ["clipseg-tiny"] and default["depths"] == [1, 3, 6, 9, 12] and default["seeds"] == [0]


def test_methods_all_is_every_registered_learner(captured):
    cfg, _, _ = captured("--dataset", "kvasir", "--methods", "all")
    assert sorted(cfg["methods"]) == sorted(LEARNERS.names()) and len(cfg["methods"]) == len(LEARNERS.names()) == 9
    assert cfg["methods"][0] == "zeroshot" and cfg["methods"][-1] == "full"  # the report's order
    assert captured("--dataset", "kvasir")[0]["methods"] == cfg["methods"]  # the default
    assert SweepConfig(methods=["all", "coop"], datasets=["kvasir"]).methods == cfg["methods"]  # the Python API too


def test_limit_sets_both_sample_limits_and_the_specific_options_override_it(captured):
    cfg, _, _ = captured("--dataset", "kvasir", "--limit", "5")
    assert cfg["train"]["max_train_samples"] == 5 and cfg["train"]["max_eval_samples"] == 5
    cfg, _, _ = captured("--dataset", "kvasir", "--limit", "5", "--max-train-samples", "7")
    assert cfg["train"]["max_train_samples"] == 7 and cfg["train"]["max_eval_samples"] == 5
    cfg, _, _ = captured("--dataset", "kvasir")
    assert cfg["train"]["max_train_samples"] is None and cfg["train"]["max_eval_samples"] is None


def test_recipe_is_tvs_by_default_and_options_override_its_values(captured):
    t = captured("--dataset", "kvasir")[0]["train"]  # TuneVLSeg's protocol, resolved into the config
    assert (t["recipe"], t["monitor"], t["early_stop"], t["min_epochs"], t["weight_decay"], t["epochs"], t["dice_smooth"]) == (
        "tvs", "val_loss", 10, 10, 0.0, 100, 1e-5)
    t = captured("--dataset", "kvasir", "--recipe", "segprompt")[0]["train"]
    assert (t["recipe"], t["monitor"], t["early_stop"], t["min_epochs"], t["weight_decay"], t["epochs"], t["dice_smooth"]) == (
        "segprompt", "val_dice", 10, 0, 0.01, 20, 1.0)
    t = captured("--dataset", "kvasir", "--early-stop", "3", "--weight-decay", "0.05", "--epochs", "4", "--lr", "1e-3")[0]["train"]
    assert (t["recipe"], t["monitor"], t["early_stop"], t["weight_decay"], t["epochs"], t["lr"], t["min_epochs"]) == ("tvs", "val_loss", 3, 0.05, 4, 1e-3, 10)
    t = captured("--dataset", "kvasir", "--train-kwargs", '{"monitor": "val_dice", "min_epochs": 2}')[0]["train"]
    assert (t["recipe"], t["monitor"], t["min_epochs"]) == ("tvs", "val_dice", 2)


def test_config_files_are_read_in_order_and_the_command_line_overrides_them(captured, tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("datasets: [busi]\nmethods: [maple]\nlearner_kwargs:\n  maple: {hidden: 32}\n"
                 "train: {recipe: segprompt, epochs: 7, prompt: p1, batch_size: 8}\n")
    b.write_text("train: {epochs: 9}\nlearner_kwargs:\n  maple: {norm: false}\n")
    cfg = captured("--config", str(a), "--config", str(b))[0]
    assert cfg["datasets"] == ["busi"] and cfg["methods"] == ["maple"] and cfg["learner_kwargs"] == {"maple": {"hidden": 32, "norm": False}}
    t = cfg["train"]
    assert (t["recipe"], t["epochs"], t["prompt"], t["batch_size"], t["monitor"]) == ("segprompt", 9, "p1", 8, "val_dice")
    cfg = captured("--config", str(a), "--dataset", "kvasir", "--epochs", "2", "--prompt", "p0", "--recipe", "tvs", "--batch-size", "4")[0]
    t = cfg["train"]
    assert cfg["datasets"] == ["kvasir"] and cfg["methods"] == ["maple"]
    assert (t["recipe"], t["epochs"], t["prompt"], t["batch_size"], t["monitor"]) == ("tvs", 2, "p0", 4, "val_loss")
    # a preset in the repository, and a run folder's config.yaml as a preset
    from pathlib import Path

    preset = Path(__file__).resolve().parents[1] / "configs" / "tunevlseg" / "methods" / "tvs.yaml"
    cfg = captured("--config", str(preset), "--dataset", "kvasir")[0]
    assert "full" not in cfg["methods"] and cfg["learner_kwargs"]["shared-attention"]["attention"] == "tvs"


@pytest.mark.parametrize(("text", "expected"), [("epochs: 3\n", "unknown field(s) epochs"), ("[1, 2]\n", "expected a mapping"), ("a: [\n", "not valid YAML")])
def test_a_bad_config_file_exits_2_naming_it(text, expected, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["bench", "tunevlseg", "--config", str(path), "--dataset", "kvasir", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"--config {path}" in err and expected in err and not (tmp_path / "run").exists()
    assert main(["bench", "tunevlseg", "--config", str(tmp_path / "none.yaml"), "--dataset", "kvasir", "--out", str(tmp_path / "run")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_help_documents_the_shared_names_and_hides_the_aliases():
    res = CliRunner().invoke(cli, ["bench", "tunevlseg", "--help"])
    assert res.exit_code == 0
    text = res.output
    for name in ("--dataset ", "--seed ", "--limit", "--vlsm ", "--methods", "'all'", "--root", "--device", "--recipe", "--config"):
        assert name in text, name
    for hidden in ("--datasets", "--seeds", "--model", "--method ", "--depth "):
        assert hidden not in text, hidden


# -- errors name flags and come before any work -------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--dataset", "kvasirr"], "--dataset kvasirr: not a TuneVLSeg dataset name"),
        (["--dataset", "kvasir", "--root", "kvasir"], "--root kvasir: expected NAME=FOLDER"),
        (["--dataset", "kvasir", "--root", "kvasir=/no/such/folder"], "--root kvasir=/no/such/folder: folder not found"),
        (["--dataset", "busi", "--root", "kvasir=/x"], "--root kvasir=/x: kvasir is not among the --dataset values (busi)"),
        (["--dataset", "kvasir", "--device", "cuda:99"], "--device cuda:99"),
        (["--dataset", "kvasir", "--methods", "coopp"], "--methods: unknown learner 'coopp'"),
        (["--dataset", "kvasir", "--prompt", "first"], "--prompt must be p<k>"),
        (["--dataset", "kvasir", "--epochs", "-1"], "--epochs must be >= 0"),
        (["--dataset", "kvasir", "--lr", "0"], "--lr must be > 0"),
        (["--dataset", "kvasir", "--limit", "0"], "--limit must be >= 1"),
        (["--dataset", "kvasir", "--depths", "0"], "--depths are 1-based"),
        (["--dataset", "kvasir", "--train-kwargs", '{"epoch": 1}'], "--train-kwargs: unknown training setting(s) epoch"),
        (["--dataset", "kvasir", "--train-kwargs", '{"seed": 1}'], "--train-kwargs: seed is set by the grid"),
        (["--dataset", "kvasir", "--vlsm-kwargs", '{"clipseg": {}}'], "--vlsm-kwargs names clipseg, which is not among the --vlsm values"),
    ],
)
def test_bad_options_exit_2_with_one_line_naming_the_flag_before_any_work(args, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SEGPROMPT_DATA_ROOT", raising=False)
    out = tmp_path / "run"
    rc = main(["bench", "tunevlseg", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "root=..." not in err and "Traceback" not in err
    assert not out.exists()  # nothing was created


def test_a_named_dataset_that_is_not_there_says_to_pass_root(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEGPROMPT_DATA_ROOT", str(tmp_path))
    assert main(["bench", "tunevlseg", "--dataset", "kvasir", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "pass --root kvasir=FOLDER" in err and "root=..." not in err and not (tmp_path / "run").exists()
    monkeypatch.delenv("SEGPROMPT_DATA_ROOT")
    assert main(["bench", "tunevlseg", "--dataset", "kvasir", "--out", str(tmp_path / "run")]) == 2
    assert "SEGPROMPT_DATA_ROOT is not set" in capsys.readouterr().err


# -- datasets --check -------------------------------------------------------------------------------


def test_datasets_check_prints_each_problem_once_and_exits_2_on_a_mismatch(lesions, capsys):
    rc = main(["bench", "tunevlseg", "datasets", "--check", str(lesions), "--name", "kvasir"])
    out, err = capsys.readouterr()
    assert rc == 2
    problems = ["train has 4 entries, TuneVLSeg's kvasir has 800", "val has 2 entries, TuneVLSeg's kvasir has 100",
                "test has 2 entries, TuneVLSeg's kvasir has 100"]
    for p in problems:
        assert (out + err).count(p) == 1, (p, out, err)
    assert out.splitlines()[0] == f"{lesions}: test 2, train 4, val 2"
    assert err.strip() == f"error: {lesions} does not match TuneVLSeg's kvasir split counts (3 differences, listed above)"
    assert "errors.jsonl" not in out + err
    # a folder with the right counts passes (exit 0); a wrong --name names the flag
    json_counts = {"train": 4, "val": 2, "test": 2}
    from tunevlseg import data as data_mod

    data_mod.BENCHMARKS["_tiny"] = data_mod._medical("_tiny", "tiny", "lesion", *json_counts.values(), ("_tiny",))
    try:
        assert main(["bench", "tunevlseg", "datasets", "--check", str(lesions), "--name", "_tiny"]) == 0
        out, err = capsys.readouterr()
        assert "matches TuneVLSeg's _tiny split counts" in out and not err
    finally:
        del data_mod.BENCHMARKS["_tiny"]
    assert main(["bench", "tunevlseg", "datasets", "--check", str(lesions), "--name", "kvasirr"]) == 2
    assert capsys.readouterr().err.startswith("error: --name: unknown TuneVLSeg dataset 'kvasirr'")
    assert main(["bench", "tunevlseg", "datasets"]) == 0
    assert "kvasir" in capsys.readouterr().out


# -- progress, resume and timing --------------------------------------------------------------------


def test_progress_lines_resume_and_both_timings_in_the_report(lesions, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["bench", "tunevlseg", "--vlsm", "openclip-tiny", "--methods", "vpt-shallow", "--dataset", str(lesions), "--epochs", "1",
            "--batch-size", "4", "--limit", "2", "--out", str(out)]
    assert main([*base, "--seed", "0"]) == 0
    first = capsys.readouterr()
    text = first.out + first.err
    assert f"{out}: new run, 1 cell to do" in text
    assert "openclip-tiny_vpt-shallow_d1_lesions_s0 epoch 1/1: train loss " in text and ", val loss " in text and ", lr 2e-04 (" in text
    assert "[1/1] openclip-tiny_vpt-shallow_d1_lesions_s0: test Dice " in text and "(2 test images), " in text
    assert "1 cell: 1 run now, 0 already finished, 0 failed" in text and "errors.jsonl" not in text
    assert (out / "report.md").read_text().count("The run took") == 1

    assert main([*base, "--seed", "0", "--seed", "1"]) == 0  # the grid grows by a seed: resume
    second = capsys.readouterr()
    text = second.out + second.err
    assert f"resuming {out}: 1 cell already done, 1 to do" in text
    assert "[2/2] openclip-tiny_vpt-shallow_d1_lesions_s1: test Dice" in text and "s0 epoch" not in text
    report = (out / "report.md").read_text()
    assert "First invocation (" in report and "this invocation (" in report and "a resume" in report

    assert main([*base, "--seed", "0,1"]) == 0  # nothing left
    third = capsys.readouterr()
    assert f"{out}: already finished (2 cells done)" in third.err and "epoch" not in third.err
    invocations = [json.loads(line) for line in (out / "invocations.jsonl").read_text().splitlines()]
    assert [r["new_rows"] for r in invocations] == [1, 1, 0]
    assert "nothing new computed" in (out / "report.md").read_text()
