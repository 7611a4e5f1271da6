"""Sharded `bench sot` (segprompt.engine.shards / launchers): 3 shards through submitit's
LocalExecutor equal the unsharded run row for row (same confusion counts) and in summary.csv;
a killed shard's rerun computes the maps of only its own unfinished (dataset, shots, seed, image)
units; `segprompt runs status / merge` on a partial run; `--shard K/N` with the YAML launch keys.

The methods are small deterministic fakes in numpy (a colour per class name for the text method,
the references' mean colour for the visual one), so every process computes the same floats."""

from __future__ import annotations

import csv
import io
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from segprompt.cli import cli
from segprompt.engine.launchers import LaunchConfig
from segprompt.engine.shards import Shard, pick, shard_of
from segprompt.sot.bench import SotBenchConfig, run_sot, unit_key
from segprompt.sot.methods import SotMethod

SMALL = dict(dataset_kwargs={"synthetic-objects": {"size": 64}}, synthetic_train=10, synthetic_eval=4, size="original")
CFG = dict(methods=["universal-text", "universal-reference"], shots=[1], seeds=[0, 1], **SMALL)
IMAGES = [f"objects_2024_{i:05d}" for i in range(4)]
UNITS = [unit_key("synthetic-objects", 1, seed, image) for seed in (0, 1) for image in IMAGES]
ROW_NAMES = ["universal-text", "universal-reference", "oracle:universal-text+universal-reference"]
TIMING = ("s_per_image", "prepare_s")  # wall seconds: never equal between two runs


class _ColourText(SotMethod):
    """Text: class ``name``'s map is ``exp(-4 |pixel - c(name)|)``, c a colour drawn from crc32(name)."""

    name, modality = "universal-text", "text"

    def __init__(self):
        super().__init__(None)

    def _maps(self, image, prompts, cost):
        img = image.astype(np.float32) / 255
        colours = [np.random.default_rng(zlib.crc32(p.name.encode())).random(3) for p in prompts]
        cost.encoder_passes += 1
        return np.stack([np.exp(-4 * np.linalg.norm(img - c, axis=-1)) for c in colours]), {}


class _ColourReference(SotMethod):
    """Visual: a class's map is ``exp(-8 |pixel - m|)``, m the mean colour inside its references' masks."""

    name, modality = "universal-reference", "visual"

    def __init__(self):
        super().__init__(None)

    def _maps(self, image, prompts, cost):
        img = image.astype(np.float32) / 255
        out = []
        for p in prompts:
            m = np.mean([ref[mask].astype(np.float32).mean(0) / 255 for ref, mask in p.references], axis=0)
            out.append(np.exp(-8 * np.linalg.norm(img - m, axis=-1)))
        cost.encoder_passes += 1
        cost.decoder_calls += 1
        return np.stack(out), {}


FAKES = {"universal-text": _ColourText, "universal-reference": _ColourReference}


def fake_factory(name):
    return FAKES[name]()


def _spy_factory(calls):
    """The fakes, with every maps() call counted as (method, image bytes' crc32)."""

    def make(name):
        m = FAKES[name]()
        maps = m.maps
        m.maps = lambda image, prompts: calls.append((name, zlib.crc32(image.tobytes()))) or maps(image, prompts)
        return m

    return make


def _rows(folder: Path) -> list[dict]:
    """Every results row of a run folder (all files), sorted independently of the library's order."""
    rows = []
    for p in sorted(folder.glob("results*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: (r["dataset"], r["shots"], r["seed"], r["image"], r["method"]))


def _same_rows(a: Path, b: Path) -> None:
    ra, rb = _rows(a), _rows(b)
    assert len(ra) == len(rb) == len(UNITS) * 3
    drop = ("seconds", "peak_mem_mb")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == [{k: v for k, v in r.items() if k not in drop} for r in rb]


def _csv(path: Path, drop=TIMING) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(io.StringIO(path.read_text()))]


def _same_tables(a: Path, b: Path) -> None:
    for name in ("summary.csv", "seeds.csv"):
        assert _csv(a / name) == _csv(b / name), name
    for name in ("per_class.csv", "oracle.csv", "text_vs_visual.csv", "calibration.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The unsharded run: 2 methods + their oracle, 1 shot, 2 seeds, 4 images (8 units)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run_sot(SotBenchConfig(**CFG), out, method_factory=fake_factory, progress=False)
    assert len(_rows(out)) == 24 and len(_csv(out / "summary.csv")) == 3
    return out


def test_three_shards_through_submitit_local_executor_equal_the_unsharded_run(reference, tmp_path):
    pytest.importorskip("submitit")
    import cloudpickle

    out = tmp_path / "sharded"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fakes travel to the job processes by value
    try:
        summary = run_sot(SotBenchConfig(**CFG), out, method_factory=fake_factory, progress=False,
                          launch=LaunchConfig("submitit-local", workers=3, slurm={"slurm_time": 5}))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert summary["failed_shards"] == []
    _same_rows(reference, out)
    assert not (out / "results.jsonl").exists()  # every row was written by a shard
    for s in Shard.all(3):  # each shard wrote exactly its own units, all rows of each
        f = out / s.file_name("results")
        rows = [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []
        assert sorted(unit_key(r["dataset"], r["shots"], r["seed"], r["image"]) for r in rows) == sorted(pick(UNITS, shard=s) * 3)
    _same_tables(reference, out)
    assert list((out / "submitit").rglob("*_result.pkl"))  # the shards ran as submitit jobs, in processes of their own
    assert yaml.safe_load((out / "config.yaml").read_text())["launch"] == {"launcher": "submitit-local", "workers": 3, "slurm": {"slurm_time": 5}}
    # a shard fits the calibrations its units need unless a shard that started before it wrote them already
    cal_rows = [json.loads(line) for p in out.glob("calibration.shard-*.jsonl") for line in p.read_text().splitlines()]
    assert {(c["method"], c["seed"]) for c in cal_rows} == {(m, s) for m in CFG["methods"] for s in (0, 1)}
    # a rerun in this process (another launch: volatile) computes nothing and says the same
    calls: list = []
    again = run_sot(SotBenchConfig(**CFG), out, method_factory=_spy_factory(calls), progress=False)
    assert calls == [] and json.loads((out / "invocations.jsonl").read_text().splitlines()[-1])["new_rows"] == 0
    strip = lambda t: [{k: v for k, v in r.items() if k not in TIMING} for r in t]  # noqa: E731
    assert strip(again["table"]) == strip(summary["table"])


def test_killed_shard_rerun_computes_only_its_unfinished_units(reference, tmp_path):
    out = tmp_path / "run"
    cfg = SotBenchConfig(**CFG)
    for s in Shard.all(3):
        run_sot(cfg, out, method_factory=fake_factory, progress=False, shard=s)
    _same_tables(reference, out)  # the last shard wrote the report
    # kill the shard with most units: its first rows kept, then a torn row
    victim = max(Shard.all(3), key=lambda s: len(pick(UNITS, shard=s)))
    path = out / victim.file_name("results")
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[: len(lines) // 2]
    path.write_text("".join(kept) + lines[len(kept)][:30])
    (out / "summary.csv").unlink()
    others = {s: (out / s.file_name("results")).read_bytes() for s in Shard.all(3) if s != victim and (out / s.file_name("results")).exists()}
    # expected work, counted here: an unfinished unit lacks at least its oracle row (written last), which needs
    # both methods' maps; the visual maps once per unit, the text maps once per image (they do not depend on the seed)
    rows_of = {u: 0 for u in pick(UNITS, shard=victim)}
    for line in kept:
        r = json.loads(line)
        rows_of[unit_key(r["dataset"], r["shots"], r["seed"], r["image"])] += 1
    unfinished = [u for u, n in rows_of.items() if n < 3]
    images = {json.loads(u)[3] for u in unfinished}
    assert unfinished
    # two shards that started together both fitted every calibration: a copy of each row in another shard's
    # file, which the summary counts once (else calibration.csv would say 4 seeds)
    copies = "".join(p.read_text() for p in out.glob("calibration.shard-*.jsonl"))
    with open(out / victim.file_name("calibration"), "a") as f:
        f.write(copies)
    calls: list = []
    for s in Shard.all(3):
        if s != victim:
            run_sot(cfg, out, method_factory=_spy_factory(calls), progress=False, shard=s)
    assert calls == [] and not (out / "summary.csv").exists()  # still incomplete: no report yet
    res = run_sot(cfg, out, method_factory=_spy_factory(calls), progress=False, shard=victim)
    assert sorted(m for m, _ in calls) == sorted(["universal-reference"] * len(unfinished) + ["universal-text"] * len(images))
    assert len({h for m, h in calls if m == "universal-text"}) == len(images)  # no validation image: the calibrations were reused
    assert {s: (out / s.file_name("results")).read_bytes() for s in others} == others
    assert "table" in res
    _same_rows(reference, out)
    _same_tables(reference, out)


def _miou(conf, has_background=True):
    """SoT's mIoU, re-implemented: IoU over classes with ground truth, background left out."""
    m = np.asarray(conf, float)
    tp, gt, pr = np.diag(m), m.sum(1), m.sum(0)
    ious = [tp[c] / (gt[c] + pr[c] - tp[c]) for c in np.flatnonzero(gt > 0)]
    return float(np.mean(ious[1:] if has_background else ious))


def test_runs_status_and_merge_on_a_partial_sot_run(reference, tmp_path):
    out = tmp_path / "partial"
    cfg = SotBenchConfig(**CFG)
    sizes = {s: len(pick(UNITS, shard=s)) for s in Shard.all(3)}
    first = max(Shard.all(3), key=lambda s: sizes[s])
    run_sot(cfg, out, method_factory=fake_factory, progress=False, shard=first)
    runner = CliRunner()
    res = runner.invoke(cli, ["runs", "status", str(out)])
    assert res.exit_code == 0, res.output
    table = {line.split()[0]: line.split()[1:6] for line in res.output.splitlines() if line.strip()[:1].isdigit() and "/" in line.split()[0]}
    assert table[first.label] == [str(sizes[first]), str(sizes[first]), "0", "0", str(sizes[first] * 3)]  # units, done, to do, failed, rows
    for s in Shard.all(3):
        if s != first:
            assert table[s.label][:3] == [str(sizes[s]), "0", str(sizes[s])]
    assert "(dataset, shots, seed, image) units in 3 shards" in res.output
    assert f"{sizes[first]} done, 0 failed, {len(UNITS) - sizes[first]} to do; 0 error rows" in res.output
    res = runner.invoke(cli, ["runs", "merge", str(out)])
    assert res.exit_code == 0, res.output
    # the merged summary: per seed the mIoU of the confusion pooled over the reference rows of the
    # finished units, then the mean over the seeds present
    done = [r for r in _rows(reference) if shard_of(unit_key(r["dataset"], r["shots"], r["seed"], r["image"]), 3) == first.k]
    got = {g["method"]: g for g in _csv(out / "summary.csv")}
    assert set(got) == set(ROW_NAMES)
    for m in ROW_NAMES:
        for merge in ("sot", "cal"):
            per_seed = [_miou(sum(np.asarray(r[f"confusion_{merge}"]) for r in done if r["method"] == m and r["seed"] == seed))
                        for seed in sorted({r["seed"] for r in done})]
            assert float(got[m][f"miou_{merge}"]) == pytest.approx(np.mean(per_seed), abs=5e-5)  # summary.csv: 4 decimals
    assert "# Show or Tell" in (out / "report.md").read_text() and "seed-2024 scenes" in (out / "report.md").read_text()
    for s in Shard.all(3):
        run_sot(cfg, out, method_factory=fake_factory, progress=False, shard=s)
    res = runner.invoke(cli, ["runs", "status", str(out)])
    assert f"{len(UNITS)} done, 0 failed, complete" in res.output, res.output
    _same_tables(reference, out)


def test_cli_shards_by_hand_with_the_yaml_launch_keys(reference, tmp_path, monkeypatch):
    """`bench sot --shard K/2` twice: the YAML's launcher / workers are for launched runs and ignored, its
    SLURM keys are kept under `launch`; the first shard says what is left, the second writes the report."""
    monkeypatch.setattr("segprompt.sot.bench.default_method_factory", lambda cfg: fake_factory)
    config = tmp_path / "sot.yaml"
    config.write_text("dataset_kwargs: {synthetic-objects: {size: 64}}\nsynthetic_train: 10\nsynthetic_eval: 4\n"
                      "launcher: submitit\nworkers: 3\nslurm_partition: gpu\nslurm_time: '00:30:00'\n")
    out = tmp_path / "cli"
    args = ["bench", "sot", "--config", str(config), "--methods", "universal-text,universal-reference", "--shots", "1",
            "--seed", "0,1", "--size", "original", "--out", str(out)]  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(cli, [*args, "--shard", "1/2"])
    assert first.exit_code == 0, first.output
    left = len(UNITS) - len(pick(UNITS, shard=Shard(1, 2)))
    assert f"shard 1/2: {len(pick(UNITS, shard=Shard(1, 2))) * 3} new rows; {left} (dataset, shots, seed, image) units left" in first.output
    second = runner.invoke(cli, [*args, "--shard", "2/2"])
    assert second.exit_code == 0, second.output
    assert "miou_sot" in second.output and (out / "report.md").exists()
    assert {p.name for p in out.glob("results*.jsonl")} == {"results.shard-1-of-2.jsonl", "results.shard-2-of-2.jsonl"}
    assert yaml.safe_load((out / "config.yaml").read_text())["launch"] == {
        "launcher": "local", "workers": 1, "slurm": {"slurm_partition": "gpu", "slurm_time": "00:30:00"}}
    _same_rows(reference, out)
    _same_tables(reference, out)
    bad = runner.invoke(cli, [*args, "--shard", "1/2", "--workers", "2"])
    assert bad.exit_code != 0 and "--shard K/N runs one shard" in bad.output + str(bad.exception)
