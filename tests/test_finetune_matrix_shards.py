"""Sharded `finetune matrix` (segprompt.engine.shards / launchers): a unit is one matrix row (a
training strategy, or `none`); 2 shards through submitit's LocalExecutor, launched from the command
line with the launch keys in --config YAML, write the matrix.csv and report table of the unsharded
run; a killed row's rerun retrains nothing finished and evaluates only its missing cells; `runs
status` / `runs merge` on the matrix folder. Every run here uses one torch thread (thread counts
change floats)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import pointprompt.finetune_matrix as fm
from pointprompt.finetune_matrix import NONE, run_matrix, unit_key
from segprompt.cli import cli
from segprompt.engine.runfolder import JsonlLog
from segprompt.engine.shards import Shard, pick

STRATEGIES = ["centre", "random"]
DATA = {"n": 8, "seed": 0, "size": 48}
BASE = dict(dataset="synthetic-lesions", dataset_kwargs=DATA, model="sam-tiny", checkpoint=None, epochs=1, batch_size=8, lr=1e-3)
ROWS = [NONE, *STRATEGIES]
UNITS = [unit_key(r) for r in ROWS]


def _cells(folder: Path) -> dict[tuple[str, str], dict]:
    """Every cell row of a run folder (all results files), read independently of the library."""
    cells: dict[tuple[str, str], dict] = {}
    for p in sorted(folder.glob("results*.jsonl")):
        for line in p.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                cells.setdefault((r["train"], r["test"]), r)
    return cells


def _table(report: str) -> str:
    """The report without its timing sentence (the only line that differs between runs)."""
    return "\n".join(line for line in report.splitlines() if not re.match(r"(The run took|First invocation|Run as)", line))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The unsharded matrix, in this process, one torch thread."""
    out = tmp_path_factory.mktemp("ref") / "m"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_matrix(STRATEGIES, out, base=dict(BASE), n_positive=2, n_negative=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def sharded(reference, tmp_path_factory):
    """The same matrix as 2 submitit-local jobs, launched by the command line (launch keys in the YAML)."""
    pytest.importorskip("submitit")
    tmp = tmp_path_factory.mktemp("sharded")
    out = tmp / "m"
    yaml_cfg = tmp / "matrix.yaml"
    yaml_cfg.write_text(f"dataset_kwargs: {json.dumps(DATA)}\nstrategies: [{', '.join(STRATEGIES)}]\nepochs: 1\n"
                        "launcher: submitit-local\nworkers: 2\nslurm_time: 5\n")
    args = ["finetune", "matrix", "--config", str(yaml_cfg), "--model", "sam-tiny", "--batch-size", "8", "--lr", "1e-3",
            "--positive", "2", "--negative", "1", "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the jobs' torch threads, as the reference's
        res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return out


def test_two_submitit_local_shards_write_the_unsharded_matrix(reference, sharded):
    # the rows are split 1 + 2 over the shards (a stable hash of the row), so both jobs train
    assert sorted(len(pick(UNITS, shard=s)) for s in Shard.all(2)) == [1, 2]
    ref, got = _cells(reference), _cells(sharded)
    assert set(ref) == set(got) == {(a, b) for a in ROWS for b in STRATEGIES}
    assert {k: (r["iou"], r["dice"], r["n"]) for k, r in got.items()} == {k: (r["iou"], r["dice"], r["n"]) for k, r in ref.items()}
    assert not (sharded / "results.jsonl").exists()
    for s in Shard.all(2):  # each shard wrote exactly its rows' cells, and trained exactly its rows' models
        own = {(r["train"], r["test"]) for r in JsonlLog(sharded / s.file_name("results"))}
        mine = [a for a in ROWS if s.owns(unit_key(a))]
        assert own == {(a, b) for a in mine for b in STRATEGIES}
    assert (sharded / "matrix.csv").read_bytes() == (reference / "matrix.csv").read_bytes()
    assert _table((sharded / "report.md").read_text()) == _table((reference / "report.md").read_text())
    assert "| none" in (sharded / "report.md").read_text() and (sharded / "matrix.png").stat().st_size > 0
    for s in STRATEGIES:
        assert (sharded / f"train_{s}" / "sam_best.pth").exists()
    assert list((sharded / "submitit").rglob("*_result.pkl"))  # the rows ran as submitit jobs
    cfg = __import__("yaml").safe_load((sharded / "config.yaml").read_text())
    assert cfg["launch"] == {"launcher": "submitit-local", "workers": 2, "slurm": {"slurm_time": 5}} and cfg["suite"] == "finetune-matrix"


def test_killed_row_rerun_redoes_only_that_row(reference, sharded, tmp_path, monkeypatch):
    out = tmp_path / "m"
    shutil.copytree(sharded, out)
    # kill row `random` in the middle: one of its cells written, the next torn; its training's
    # finished marker gone (it resumes from its last checkpoint, which holds the finished epoch)
    victim_row = "random"
    victim = next(s for s in Shard.all(2) if s.owns(unit_key(victim_row)))
    path = out / victim.file_name("results")
    lines = [line for line in path.read_text().splitlines(keepends=True)]
    kept = [line for line in lines if json.loads(line)["train"] != victim_row]
    killed = [line for line in lines if json.loads(line)["train"] == victim_row]
    path.write_text("".join(kept) + killed[0] + killed[1][:20])
    (out / f"train_{victim_row}" / "summary.json").unlink()
    epochs_before = (out / f"train_{victim_row}" / "results.jsonl").read_text()
    for name in ("matrix.csv", "report.md"):
        (out / name).unlink()
    others = {s: (out / s.file_name("results")).read_bytes() for s in Shard.all(2) if s != victim}
    runner = CliRunner()
    res = runner.invoke(cli, ["runs", "status", str(out)])
    assert res.exit_code == 0, res.output
    assert "suite finetune-matrix, 3 matrix rows (one model each) in 2 shards" in res.output
    assert "2 done, 0 failed, 1 to do" in res.output, res.output
    table = {line.split()[0]: line.split()[1:4] for line in res.output.splitlines() if re.match(r"\s*\d+/2\s", line)}
    assert table[victim.label][1:] == [str(len(pick(UNITS, shard=victim)) - 1), "1"]  # done, to do
    # a merge of the partial run: the killed row's missing cell is a dash
    res = runner.invoke(cli, ["runs", "merge", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 cell not computed yet" in (out / "report.md").read_text()
    assert (out / "matrix.csv").read_text().count("\n") == 1 + len(ROWS) * len(STRATEGIES) - 1
    for name in ("matrix.csv", "report.md"):
        (out / name).unlink()

    calls: dict[str, list] = {"train": [], "evaluate": []}
    train_row, evaluate = fm.train_row, fm.evaluate
    monkeypatch.setattr(fm, "train_row", lambda cfg, folder, *a, **k: calls["train"].append(Path(folder).name) or train_row(cfg, folder, *a, **k))
    monkeypatch.setattr(fm, "evaluate", lambda seg, held, cfg, *a, **k: calls["evaluate"].append(cfg.eval_strategy) or evaluate(seg, held, cfg, *a, **k))
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = ["finetune", "matrix", "--model", "sam-tiny", "--dataset", "synthetic-lesions", "--config", str(out / "config.yaml"), "--out", str(out)]
        for s in Shard.all(2):  # the other shard first: nothing to do, no report yet; then the victim's shard
            if s != victim:
                res = runner.invoke(cli, [*base, "--shard", s.label])
                assert res.exit_code == 0, res.output
                assert calls == {"train": [], "evaluate": []} and not (out / "matrix.csv").exists()
        res = runner.invoke(cli, [*base, "--shard", victim.label])
        assert res.exit_code == 0, res.output
    finally:
        torch.set_num_threads(torch_threads)
    assert calls == {"train": [f"train_{victim_row}"], "evaluate": [STRATEGIES[1]]}  # the torn cell only
    assert (out / f"train_{victim_row}" / "results.jsonl").read_text().startswith(epochs_before)
    assert not [r for r in JsonlLog(out / f"train_{victim_row}" / "results.jsonl").rows()[epochs_before.count("\n"):] if r.get("kind") == "epoch"]
    assert {s: (out / s.file_name("results")).read_bytes() for s in others} == others
    assert (out / "matrix.csv").read_bytes() == (reference / "matrix.csv").read_bytes()  # the last shard wrote the matrix
    assert _table((out / "report.md").read_text()) == _table((reference / "report.md").read_text())
    res = runner.invoke(cli, ["runs", "status", str(out)])
    assert "3 done, 0 failed, complete" in res.output, res.output


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("SEGPROMPT_DDP_TESTS"), reason="opt-in (SEGPROMPT_DDP_TESTS=1): 2 torchrun launches of 2 processes, ~1 min on 2 cores")
def test_rows_trained_with_torchrun_match_one_process(tmp_path, monkeypatch):
    """train_processes=2 (--slurm-gpus 2): each row's training is torchrun with 2 gloo processes
    x batch 4; the same matrix as 1 process x batch 8 (the DDP gradient is the mean over ranks)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = {"n": 12, "seed": 0, "size": 48}  # 8 training images: one step per epoch either way
    base = dict(BASE, dataset_kwargs=data, epochs=2)
    ddp = run_matrix(STRATEGIES, tmp_path / "ddp", base=dict(base, batch_size=4), n_positive=2, n_negative=1, progress=False, train_processes=2)
    one = run_matrix(STRATEGIES, tmp_path / "one", base=dict(base, batch_size=8), n_positive=2, n_negative=1, progress=False)
    from segprompt.models import create_segmenter

    start = create_segmenter("sam-tiny").model.state_dict()
    for s in STRATEGIES:
        spec = json.loads((tmp_path / "ddp" / f"train_{s}" / "matrix_cell.json").read_text())
        assert spec["config"]["prompts"] == s and spec["config"]["batch_size"] == 4
        a = torch.load(tmp_path / "ddp" / f"train_{s}" / "sam_last.pth", weights_only=True)
        b = torch.load(tmp_path / "one" / f"train_{s}" / "sam_last.pth", weights_only=True)
        assert max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point()) < 1e-4
        assert any(not torch.equal(a[k], start[k].cpu()) for k in a if k.startswith("prompt_encoder."))  # it trained
    assert [v for row in ddp["values"] for v in row] == pytest.approx([v for row in one["values"] for v in row], abs=1e-3)
