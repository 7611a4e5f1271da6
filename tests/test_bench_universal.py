"""The universal model in the point-prompt benchmark (issue 11, item 6) and its benchmark scripts (item 7).

A tiny universal model with random weights stands in for universal-tiny (whose weights may not be
installed): what is tested is the protocol, not the model's quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pointprompt.bench import PointBenchConfig, default_model_factory, evaluate_image, run_pointprompt
from segprompt.data.synthetic import SyntheticLesions
from segprompt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DATA = {"synthetic-lesions": {"n": 2, "seed": 4, "size": 96}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's small matrices run ~10x slower on 2 threads when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from segprompt.universal.checkpoint import save_universal
    from segprompt.universal.config import UniversalConfig
    from segprompt.universal.model import UniversalModel

    torch.manual_seed(0)
    cfg = UniversalConfig(
        backbone="sam-tiny", backbone_kwargs={"out_channels": 32}, words=("disc", "star"), hidden_dim=32, mask_dim=32,
        embed_dim=16, num_queries=4, dec_layers=3, dim_feedforward=64,
    )
    return save_universal(UniversalModel(cfg), tmp_path_factory.mktemp("universal") / "u.safetensors")


def _cfg(checkpoint, **changes):
    base = dict(
        datasets=["synthetic-lesions"], dataset_kwargs=DATA, models=["universal"], model_kwargs={"universal": {"checkpoint": str(checkpoint)}},
        strategies=["centre", "microsam"], n_positive=2, n_negative=1, steps=3, mask_feedback=True,
    )
    return PointBenchConfig(**{**base, **changes})


def _rows(folder: Path) -> list[dict]:
    return [json.loads(l) for l in (folder / "results.jsonl").read_text().splitlines()]


def test_universal_runs_beside_grabcut_on_one_protocol(tmp_path, checkpoint):
    cfg = _cfg(checkpoint, models=["universal", "grabcut"])
    summary = run_pointprompt(cfg, tmp_path / "r", progress=False)  # the default factory: create_segmenter("universal", checkpoint=...)
    rows = _rows(tmp_path / "r")
    assert len(rows) == 2 * 2 * 2 * 3  # models x images x strategies x steps
    assert {r["model"] for r in rows} == {"universal", "grabcut"}
    uni = sorted((r for r in rows if r["model"] == "universal" and r["strategy"] == "microsam"), key=lambda r: (r["image"], r["step"]))
    assert [r["n_points"] for r in uni] == [1, 3, 5] * 2  # the same correction clicks as for every model
    assert all(0.0 <= r["iou"] <= 1.0 and r["score"] is not None and r["candidate"] in (-1, 0, 1, 2) for r in uni)
    # a lone click is ambiguous: the auto policy keeps the best of the 3 candidates, as for SAM
    assert all(r["candidate"] in (0, 1, 2) for r in uni if r["n_points"] == 1)
    assert {(t["model"], t["strategy"]) for t in summary["table"]} == {(m, s) for m in ("universal", "grabcut") for s in ("centre", "microsam")}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "- `universal`: the SEEM-style universal decoder" in report
    assert "Mask feedback between correction clicks: on" in report


def _spied(checkpoint):
    """A universal segmenter recording every segment call (its prompt sets and logits) and every
    decoder call (the memory region the decoder received)."""
    from segprompt.models import create_segmenter

    seg = create_segmenter("universal", checkpoint=checkpoint)
    calls, decodes = [], []
    segment, decode = seg.segment, seg.model.decode

    def spy_segment(state, prompts, **kw):
        pred = segment(state, prompts, **kw)
        calls.append((list(prompts), pred.logits.copy()))
        return pred

    def spy_decode(feats, prompts=None):
        decodes.append(None if prompts is None or prompts.memory is None else (prompts.memory.clone(), prompts.has_memory.clone()))
        return decode(feats, prompts)

    seg.segment, seg.model.decode = spy_segment, spy_decode
    return seg, calls, decodes


def test_correction_logits_reach_the_decoder_as_its_memory(checkpoint):
    sample = SyntheticLesions(n=1, seed=4, size=96)[0]
    cfg = _cfg(checkpoint, strategies=["microsam", "ritm"])
    seg, calls, decodes = _spied(checkpoint)
    rows = evaluate_image(cfg, seg, "universal", "synthetic-lesions", sample)
    assert len(calls) == 3 and len(decodes) == 3  # one call per step, both strategies together
    assert all(s.mask is None for s in calls[0][0]) and decodes[0] is None  # the first click has no previous round
    for k in (1, 2):
        sets, _ = calls[k]
        previous = calls[k - 1][1]
        memory, has = decodes[k]
        assert has.tolist() == [True, True]
        for i, s in enumerate(sets):
            # what went back is the previous step's logits, untouched ...
            assert s.mask.kind == "logits" and np.array_equal(s.mask.data, previous[i, 0])
            # ... and the decoder's memory region is where they are positive (they are at the
            # mask features' resolution, stride 4 of the padded model frame)
            assert memory.shape[-2:] == previous.shape[-2:]
            assert torch.equal(memory[i].bool(), torch.from_numpy(previous[i, 0] > 0))
    # without feedback no memory reaches the decoder, and the memory changes the output
    seg_off, calls_off, decodes_off = _spied(checkpoint)
    rows_off = evaluate_image(_cfg(checkpoint, strategies=["microsam", "ritm"], mask_feedback=False), seg_off, "universal", "synthetic-lesions", sample)
    assert decodes_off == [None, None, None] and all(s.mask is None for sets, _ in calls_off for s in sets)
    assert np.array_equal(calls_off[0][1], calls[0][1])  # same first step
    assert not np.array_equal(calls_off[1][1], calls[1][1])
    assert [r["n_points"] for r in rows_off if r["step"] == 1] == [r["n_points"] for r in rows if r["step"] == 1]


def test_resume_after_kill_equals_uninterrupted(tmp_path, checkpoint):
    cfg = _cfg(checkpoint, models=["universal", "universal@2"], model_kwargs={m: {"checkpoint": str(checkpoint)} for m in ("universal", "universal@2")})
    full = run_pointprompt(cfg, tmp_path / "a", progress=False)
    lines = (tmp_path / "a" / "results.jsonl").read_text().splitlines(keepends=True)
    b = tmp_path / "b"
    b.mkdir()
    (b / "config.yaml").write_text((tmp_path / "a" / "config.yaml").read_text())
    (b / "results.jsonl").write_text("".join(lines[:8]) + lines[8][: len(lines[8]) // 2])  # killed mid-way, a torn row
    made = []

    def counting(name):
        made.append(name)
        return default_model_factory(cfg)(name)

    assert run_pointprompt(cfg, b, model_factory=counting, progress=False) == full
    assert sorted((b / "results.jsonl").read_text().splitlines()) == sorted(l.rstrip("\n") for l in lines)
    made.clear()
    assert run_pointprompt(cfg, b, model_factory=counting, progress=False) == full and made == []


def test_command_line_gives_universal_its_checkpoint(tmp_path, checkpoint, capsys):
    from segprompt.cli import main
    from segprompt.data.synthetic import write_folder

    folder = write_folder(SyntheticLesions(n=2, seed=1, size=64), tmp_path / "set")
    out = tmp_path / "run"
    rc = main([
        "bench", "pointprompt", "--dataset", str(folder), "--model", "universal", "--checkpoint", str(checkpoint),
        "--strategies", "microsam", "--positive", "1", "--negative", "1", "--mask-feedback", "--out", str(out),
    ])
    assert rc == 0, capsys.readouterr().err
    rows = _rows(out)
    assert len(rows) == 2 * 2 and {r["model"] for r in rows} == {"universal"}
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["model_kwargs"]["universal"]["checkpoint"] == str(checkpoint)


def test_checkpoint_option_goes_to_the_models_that_take_one():
    from pointprompt.cli import checkpoint_kwargs, takes_checkpoint

    assert [takes_checkpoint(m) for m in ("sam", "sam@vitb", "universal", "universal-tiny", "sam-tiny", "grabcut")] == [True, True, True, False, False, False]
    # a plain path: every model that takes one (the old behaviour for sam), the others untouched
    assert checkpoint_kwargs(["a.pth"], ["sam", "sam@2", "sam-tiny", "grabcut"]) == {"sam": "a.pth", "sam@2": "a.pth"}
    assert checkpoint_kwargs(["u.safetensors"], ["universal", "universal-tiny"]) == {"universal": "u.safetensors"}
    # MODEL=PATH for models of different kinds
    both = checkpoint_kwargs(["sam=a.pth", "universal=u.safetensors"], ["sam", "universal", "grabcut"])
    assert both == {"sam": "a.pth", "universal": "u.safetensors"}
    assert checkpoint_kwargs(["sam=a.pth", "u.safetensors"], ["sam", "universal"]) == {"sam": "a.pth", "universal": "u.safetensors"}
    assert checkpoint_kwargs([], ["sam", "universal"]) == {}
    with pytest.raises(ConfigError, match="different kinds.*MODEL=PATH"):
        checkpoint_kwargs(["a.pth"], ["sam", "universal"])
    with pytest.raises(ConfigError, match="none of the models"):
        checkpoint_kwargs(["a.pth"], ["sam-tiny", "universal-tiny"])  # once silently ignored
    with pytest.raises(ConfigError, match="'universal-tiny' takes no checkpoint"):
        checkpoint_kwargs(["universal-tiny=u.safetensors"], ["universal-tiny"])


def _script(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_universal_speed_script(tmp_path, checkpoint):
    out = _script(["benchmarks/universal_speed.py", "--quick", "--checkpoint", str(checkpoint), "--sets", "1,4", "--threads", "1", "--out", str(tmp_path / "s.json")])
    assert "one call per set: prompts/s" in out.stdout and f"checkpoint {checkpoint}" in out.stdout
    table = [l.split() for l in out.stdout.splitlines() if l.startswith(("universal ", "sam-tiny "))]
    assert [(t[0], t[1]) for t in table] == [("universal", "1"), ("universal", "4"), ("sam-tiny", "1"), ("sam-tiny", "4")]
    data = json.loads((tmp_path / "s.json").read_text())
    rows = data["models"]["universal"]["rows"]
    assert [r["n"] for r in rows] == [1, 4]
    r = rows[1]
    assert r["ratio"] == pytest.approx(r["batched_prompts_per_s"] / r["per_set_prompts_per_s"])


def test_universal_speed_script_says_when_its_weights_are_random():
    out = _script(["benchmarks/universal_speed.py", "--quick", "--no-sam", "--sets", "1", "--threads", "1"])
    from segprompt.errors import WeightsError
    from segprompt.models.universal import universal_tiny_path

    try:
        universal_tiny_path()
        expected = "bundled universal-tiny weights"
    except WeightsError:
        expected = "RANDOM weights"
    assert expected in out.stdout


def test_gpu_universal_script_smoke_on_cpu(tmp_path):
    out = _script(["benchmarks/gpu_universal.py", "--device", "cpu", "--quick", "--precisions", "fp32", "--threads", "1", "--out", str(tmp_path / "g.json")])
    assert "encode img/s" in out.stdout and "decode sets/s" in out.stdout
    line = [l for l in out.stdout.splitlines() if l.startswith("fp32")][0]
    assert "failed" not in line
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["quick"] and data["config"]["backbone"] == "sam" and data["config"]["backbone_kwargs"]["arch"]["img_size"] == 256
    r = data["results"][0]
    assert r["train_seconds_per_step"] > 0 and r["infer_decode_sets_per_s"] > 0


def _on_off_runs(tmp_path, capsys, option: str) -> dict:
    """sam-tiny and GrabCut through ``bench pointprompt`` (micro-sam, 3 steps) with ``--OPTION``
    and ``--no-OPTION``: {flag: {(model, image, step): (iou, clicks)}}."""
    from segprompt.cli import main
    from segprompt.data.synthetic import write_folder

    folder = write_folder(SyntheticLesions(n=2, seed=1, size=96), tmp_path / "set")
    runs = {}
    for flag in (f"--{option}", f"--no-{option}"):
        out = tmp_path / flag.strip("-")
        rc = main(["bench", "pointprompt", "--dataset", str(folder), "--model", "sam-tiny", "--model", "grabcut",
                   "--strategies", "microsam", "--steps", "3", "--out", str(out), flag])
        assert rc == 0, capsys.readouterr().err
        runs[flag] = {(r["model"], r["image"], r["step"]): (r["iou"], len(r["points"])) for r in _rows(out)}
    return runs


def _option_runs(tmp_path, capsys, option: str, title: str) -> tuple[dict, dict]:
    """``_on_off_runs`` for ``--OPTION``, checked for what every inference switch does: its kwarg
    goes to the learned models only, report.md names them under ``title`` (and says off without
    it), and both runs hold the same rows; returns the rows (on, off)."""
    import yaml

    runs = _on_off_runs(tmp_path, capsys, option)
    kwarg = option.replace("-", "_")
    kwargs = yaml.safe_load((tmp_path / option / "config.yaml").read_text())["model_kwargs"]
    assert kwargs["sam-tiny"][kwarg] is True and kwarg not in kwargs["grabcut"]
    assert f"{title}: `sam-tiny`." in (tmp_path / option / "report.md").read_text()
    assert f"{title}: off." in (tmp_path / f"no-{option}" / "report.md").read_text()
    on, off = runs[f"--{option}"], runs[f"--no-{option}"]
    assert on.keys() == off.keys()
    return on, off


def test_zoom_in_option_wraps_the_learned_models_only(tmp_path, capsys):
    """``--zoom-in`` goes to the learned models' kwargs (GrabCut works on the full image anyway),
    the report says which models zoomed, and 2+ click sets of sam-tiny then differ from a run
    without it while its single-click step does not."""
    on, off = _option_runs(tmp_path, capsys, "zoom-in", "Zoom-in (RITM's, segprompt.models.zoom_in)")
    assert all(on[k] == off[k] for k in on if k[0] == "grabcut" or k[2] == 1)
    assert any(on[k] != off[k] for k in on if k[0] == "sam-tiny" and k[2] > 1)


def test_brs_option_refines_the_learned_models_only(tmp_path, capsys):
    """``--brs`` goes to the learned models' kwargs, the report says which, GrabCut's rows and the
    sets of at most two clicks are those of a run without it, and some larger sets change."""
    on, off = _option_runs(tmp_path, capsys, "brs", "f-BRS (segprompt.models.brs)")
    assert all(on[k] == off[k] for k in on if k[0] == "grabcut" or on[k][1] <= 2)
    assert any(on[k] != off[k] for k in on if k[0] == "sam-tiny" and on[k][1] > 2)


def test_cascade_option_feeds_the_learned_models_logits_back(tmp_path, capsys):
    """``--cascade`` goes to the learned models' kwargs, the report says which, GrabCut's rows are
    those of a run without it, and sam-tiny's masks change from the first click on."""
    on, off = _option_runs(tmp_path, capsys, "cascade", "Cascade (own logits fed back as the mask prompt, segprompt.models.cascade)")
    assert all(on[k] == off[k] for k in on if k[0] == "grabcut")
    assert any(on[k] != off[k] for k in on if k[0] == "sam-tiny" and k[2] == 1)
