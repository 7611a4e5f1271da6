"""Sharded runs (segprompt.engine.shards / launchers): the point benchmark in 3 shards through
submitit's LocalExecutor and in 2 local worker processes equals the unsharded run row for row and
in summary.csv; a killed shard's rerun recomputes only its own unfinished units; two processes
writing the same embedding-cache entries corrupt nothing; `segprompt runs status / merge` on a
partial run; the SLURM settings reach the sbatch script."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pointprompt.bench import PointBenchConfig, run_pointprompt, summarise, unit_key
from segprompt.cli import cli
from segprompt.engine.launchers import LaunchConfig, launch_from_options, submitit_executor, submitit_params
from segprompt.engine.runfolder import JsonlLog, RunFolder
from segprompt.engine.shards import Shard, canonical, pick, shard_of
from segprompt.errors import ConfigError
from segprompt.models import create_segmenter

N_IMAGES = 8
DS = {"synthetic-lesions": {"n": N_IMAGES, "seed": 7, "size": 64}}
CFG = dict(datasets=["synthetic-lesions"], dataset_kwargs=DS, models=["grabcut"], strategies=["centre", "random", "microsam"], n_positive=2, n_negative=1, steps=2)
UNITS = [unit_key("synthetic-lesions", "grabcut", f"lesion_7_{i:05d}") for i in range(N_IMAGES)]


def _rows(folder: Path) -> list[dict]:
    """Every results row of a run folder (all files), sorted independently of the library's order."""
    rows = []
    for p in sorted(folder.glob("results*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: (r["dataset"], r["model"], r["image"], r["strategy"], r.get("annotator") or "", r["step"]))


def _same_rows(a: Path, b: Path) -> None:
    ra, rb = _rows(a), _rows(b)
    assert len(ra) == len(rb) == N_IMAGES * 3 * 2
    keys = ("image", "strategy", "step", "points", "iou", "dice", "score", "candidate")
    assert [{k: r[k] for k in keys} for r in ra] == [{k: r[k] for k in keys} for r in rb]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The unsharded run (8 images, grabcut, 3 strategies x 2 steps)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run_pointprompt(PointBenchConfig(**CFG), out, progress=False)
    return out


def test_shard_of_is_a_stable_hash_and_shards_partition_the_units():
    # an independent re-implementation: SHA-256, first 8 bytes big-endian, mod N, 1-based
    for key in [*UNITS, "", "ü/ß", "x" * 300]:
        for n in (1, 2, 3, 7):
            assert shard_of(key, n) == int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % n + 1
    parts = [pick(UNITS, shard=s) for s in Shard.all(3)]
    assert sorted(u for p in parts for u in p) == sorted(UNITS) and sum(map(len, parts)) == len(UNITS)
    assert Shard.parse(" 2 / 3") == Shard(2, 3) and Shard(2, 3).file_name("results") == "results.shard-2-of-3.jsonl"
    for bad in ("0/3", "4/3", "2", "a/b"):
        with pytest.raises(ConfigError):
            Shard.parse(bad)
    rows = [{"i": 2, "v": "a"}, {"i": 1, "v": "b"}, {"i": 2, "v": "c"}]
    assert canonical(rows, identity=lambda r: r["i"]) == [{"i": 1, "v": "b"}, {"i": 2, "v": "a"}]


def test_three_shards_through_submitit_local_executor_equal_the_unsharded_run(reference, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "sharded"
    summary = run_pointprompt(PointBenchConfig(**CFG), out, progress=False, launch=LaunchConfig("submitit-local", workers=3, slurm={"slurm_time": 5}))
    assert summary["failed_shards"] == []
    _same_rows(reference, out)
    assert not (out / "results.jsonl").exists()  # every row was written by a shard
    for s in Shard.all(3):  # each shard wrote exactly its own units
        f = out / s.file_name("results")
        units = {unit_key(r["dataset"], r["model"], r["image"]) for r in JsonlLog(f)} if f.exists() else set()
        assert units == set(pick(UNITS, shard=s))
    for name in ("summary.csv", "curves.csv", "matched_budget.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert list((out / "submitit").rglob("*_result.pkl"))  # the jobs ran as submitit jobs, in processes of their own
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    assert cfg["launch"] == {"launcher": "submitit-local", "workers": 3, "slurm": {"slurm_time": 5}}
    # a rerun with another launch (volatile) computes nothing
    again = run_pointprompt(PointBenchConfig(**CFG), out, progress=False)
    assert json.loads((out / "invocations.jsonl").read_text().splitlines()[-1])["new_rows"] == 0
    assert again["table"] == summary["table"]


def _counting_factory(calls: list[str]):
    def make(name):
        seg = create_segmenter(name)
        encode = seg.encode

        def counted(image):
            calls.append(name)
            return encode(image)

        seg.encode = counted
        return seg

    return make


def test_killed_shard_rerun_recomputes_only_its_unfinished_units(reference, tmp_path):
    out = tmp_path / "run"
    cfg = PointBenchConfig(**CFG)
    for s in Shard.all(3):
        run_pointprompt(cfg, out, progress=False, shard=s)
    assert (out / "summary.csv").read_bytes() == (reference / "summary.csv").read_bytes()  # the last shard wrote the report
    # kill the shard with most units: half its file kept, then a torn row
    victim = max(Shard.all(3), key=lambda s: len(pick(UNITS, shard=s)))
    path = out / victim.file_name("results")
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[: len(lines) // 2]
    path.write_text("".join(kept) + lines[len(kept)][:25])
    (out / "summary.csv").unlink()
    others = {s: (out / s.file_name("results")).read_bytes() for s in Shard.all(3) if s != victim and (out / s.file_name("results")).exists()}
    complete = {u for u in pick(UNITS, shard=victim)
                if sum(1 for line in kept if unit_key(*(json.loads(line)[k] for k in ("dataset", "model", "image"))) == u) == 6}
    expect = len(pick(UNITS, shard=victim)) - len(complete)
    assert expect >= 1
    # the other shards' reruns compute nothing; the victim's only its unfinished units
    calls: list[str] = []
    for s in Shard.all(3):
        if s != victim:
            run_pointprompt(cfg, out, progress=False, shard=s, model_factory=_counting_factory(calls))
    assert calls == [] and not (out / "summary.csv").exists()  # still incomplete: no report yet
    run_pointprompt(cfg, out, progress=False, shard=victim, model_factory=_counting_factory(calls))
    assert len(calls) == expect
    assert {s: (out / s.file_name("results")).read_bytes() for s in others} == others
    _same_rows(reference, out)
    assert (out / "summary.csv").read_bytes() == (reference / "summary.csv").read_bytes()


def test_two_local_workers_from_the_command_line_equal_the_unsharded_run(reference, tmp_path):
    out = tmp_path / "cli"
    yaml_cfg = tmp_path / "bench.yaml"
    yaml_cfg.write_text("datasets: [synthetic-lesions]\ndataset_kwargs: {synthetic-lesions: {n: 8, seed: 7, size: 64}}\n"
                        "launcher: local\nworkers: 3\nslurm_partition: gpu\n")
    args = ["bench", "pointprompt", "--config", str(yaml_cfg), "--model", "grabcut", "--strategies", "centre,random,microsam",
            "--positive", "2", "--negative", "1", "--steps", "2", "--workers", "2", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    _same_rows(reference, out)
    assert (out / "summary.csv").read_bytes() == (reference / "summary.csv").read_bytes()
    assert {p.name for p in out.glob("results*.jsonl")} <= {"results.shard-1-of-2.jsonl", "results.shard-2-of-2.jsonl"}
    launch = __import__("yaml").safe_load((out / "config.yaml").read_text())["launch"]
    assert launch == {"launcher": "local", "workers": 2, "slurm": {"slurm_partition": "gpu"}}  # --workers over the file's 3


def _entry(i: int):
    import torch

    return {"emb": torch.full((1, 32, 64, 64), float(i)) + torch.arange(32.0).view(1, 32, 1, 1), "size": torch.tensor([i, 64])}


def _hammer(folder: str, who: int, n_keys: int, seconds: float) -> dict:
    """In a process of its own, for ``seconds``: write the entries the other process writes too
    (the same keys and values, as two shards encoding one image), and read every entry after each write."""
    import torch

    from segprompt.cache import EmbeddingCache

    cache = EmbeddingCache(folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    Path(folder, f"ready-{who}").touch()
    t0 = time.time()
    while not Path(folder, f"ready-{1 - who}").exists() and time.time() - t0 < 60:  # start together
        time.sleep(0.005)
    bad = reads = writes = 0
    t0 = time.time()
    while time.time() - t0 < seconds:
        i = (writes + who) % n_keys
        cache.write(cache.key({"entry": i}), {"entry": i}, _entry(i), {"i": i})
        writes += 1
        for j in range(n_keys):
            found = cache.read(cache.key({"entry": j}), {"entry": j})
            reads += found is not None
            if found is not None and not (torch.equal(found[0]["emb"], _entry(j)["emb"]) and found[1] == {"i": j}):
                bad += 1
    return {"bad": bad, "rejected": cache.stats.rejected, "reads": reads, "writes": writes}


def test_two_processes_writing_the_same_cache_entries_corrupt_nothing(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from segprompt.cache import EmbeddingCache

    folder = str(tmp_path / "cache")
    # fork where there is one (no second torch import: the test stays short); the processes are separate all the same
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as pool:
        results = list(pool.map(_hammer, [folder, folder], [0, 1], [3, 3], [0.8, 0.8]))
    assert [r["bad"] for r in results] == [0, 0] and [r["rejected"] for r in results] == [0, 0], results
    assert min(r["writes"] for r in results) >= 5 and min(r["reads"] for r in results) >= 10, results
    cache = EmbeddingCache(folder)
    for i in range(3):
        found = cache.read(cache.key({"entry": i}), {"entry": i})
        assert found is not None and torch.equal(found[0]["emb"], _entry(i)["emb"]) and found[1] == {"i": i}
    entries = list(Path(folder).rglob("*.safetensors"))
    assert len(entries) == 3 and not [p for p in entries if p.name.startswith(".")]  # no temporary file left
    assert cache.stats.rejected == 0


def test_runs_status_and_merge_on_a_partial_run(reference, tmp_path):
    out = tmp_path / "partial"
    cfg = PointBenchConfig(**CFG)
    sizes = {s: len(pick(UNITS, shard=s)) for s in Shard.all(3)}
    first, *_, last = sorted(Shard.all(3), key=lambda s: -sizes[s])
    run_pointprompt(cfg, out, progress=False, shard=first)
    # the still-running shard has a row in flight: status and merge leave it alone
    (out / last.file_name("results")).write_text('{"dataset": "synthetic-lesions", "mod')
    runner = CliRunner()
    res = runner.invoke(cli, ["runs", "status", str(out)])
    assert res.exit_code == 0, res.output
    table = {line.split()[0]: line.split()[1:6] for line in res.output.splitlines() if line.strip()[:1].isdigit() and "/" in line.split()[0]}
    assert table[first.label] == [str(sizes[first]), str(sizes[first]), "0", "0", str(sizes[first] * 6)]  # units, done, to do, failed, rows
    assert table[last.label][:3] == [str(sizes[last]), "0", str(sizes[last])]
    assert f"{sizes[first]} done, 0 failed, {N_IMAGES - sizes[first]} to do; 0 error rows" in res.output
    assert (out / last.file_name("results")).read_text() == '{"dataset": "synthetic-lesions", "mod'  # not "repaired" by a reader
    res = runner.invoke(cli, ["runs", "merge", str(out)])
    assert res.exit_code == 0, res.output
    rows = [r for r in _rows(reference) if shard_of(unit_key(r["dataset"], r["model"], r["image"]), 3) == first.k]
    want = summarise(rows, cfg)["table"]  # the reference rows of the finished shard, summarised directly
    import csv

    got = list(csv.DictReader((out / "summary.csv").open()))
    assert [(g["strategy"], int(g["trajectories"]), round(float(g["iou@last"]), 4)) for g in got] == \
        [(w["strategy"], w["trajectories"], round(w["iou@last"], 4)) for w in want]
    assert "# Point-prompt benchmark" in (out / "report.md").read_text()
    # the remaining shards (the torn one resumes cleanly); then status says complete
    (out / last.file_name("results")).unlink()
    for s in Shard.all(3):
        run_pointprompt(cfg, out, progress=False, shard=s)
    res = runner.invoke(cli, ["runs", "status", str(out)])
    assert f"{N_IMAGES} done, 0 failed, complete" in res.output, res.output
    assert (out / "summary.csv").read_bytes() == (reference / "summary.csv").read_bytes()


def test_launch_settings_from_options_and_yaml_reach_sbatch(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    launch, shard = launch_from_options(
        {"launcher": "submitit", "workers": None, "slurm_time": "01:30:00", "slurm_gpus": 1, "shard": None},
        {"launcher": "local", "workers": 4, "slurm_partition": "gpu", "slurm_time": 30, "slurm_mem": "32G", "slurm_account": "proj", "slurm_cpus": 8},
    )
    assert shard is None and launch.launcher == "submitit" and launch.workers == 4 and launch.parallel
    assert submitit_params(launch.slurm) == {"slurm_partition": "gpu", "timeout_min": 90, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32, "slurm_account": "proj"}
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")  # submitit looks for srun
    ex = submitit_executor(tmp_path / "jobs" / "%j", "submitit", {**launch.slurm, "slurm_parallel": 2}, name="pointprompt")
    script = ex._executor._make_submission_file_text("true", "uid")
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--account=proj", "--job-name=pointprompt"):
        assert f"#SBATCH {line}" in script
    assert ex._executor.parameters["array_parallelism"] == 2
    with pytest.raises(ConfigError, match="--shard K/N runs one shard"):
        launch_from_options({"workers": 2, "shard": "1/2"})
    with pytest.raises(ConfigError, match="unknown SLURM setting"):
        LaunchConfig("submitit", slurm={"slurm_partitions": "gpu"})
    with pytest.raises(ConfigError, match="--slurm-time"):
        LaunchConfig("submitit", slurm={"slurm_time": "soon"})
    # a run folder's launch is volatile: another launch resumes the same folder, another seed does not
    RunFolder(tmp_path / "r", {"suite": "x", "seed": 0, "launch": {"workers": 2}})
    RunFolder(tmp_path / "r", {"suite": "x", "seed": 0, "launch": {"launcher": "submitit", "workers": 9}})
    with pytest.raises(ConfigError, match="differs in: seed"):
        RunFolder(tmp_path / "r", {"suite": "x", "seed": 1})
