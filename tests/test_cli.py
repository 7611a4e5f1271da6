"""The command line: lazy mounting, one-line errors with exit 2, the demo and segment commands."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from segprompt.cli import main
from segprompt.data.io import read_binary_mask, write_image
from segprompt.data.synthetic import SyntheticLesions


def test_help_imports_no_subcommand_module():
    code = (
        "import sys; from segprompt.cli import main; rc = main(['--help']); "
        "heavy = [m for m in ('torch', 'pointprompt', 'segprompt.commands.demo', 'segment_anything', 'cv2') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for name in ("demo", "data", "weights", "segment", "bench"):
        assert name in out.stdout


def test_segprompt_error_is_one_line_exit_2(capsys, tmp_path):
    rc = main(["bench", "pointprompt", "--strategies", "centr", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: unknown point strategy 'centr'")
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    from segprompt.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "bench", "pointprompt", "--strategies", "centr", "--out", str(tmp_path / "r")])


def test_usage_error_exit_2(capsys):
    assert main(["segment"]) == 2
    assert "Missing argument" in capsys.readouterr().err


def test_segment_command_writes_mask(tmp_path, capsys):
    s = SyntheticLesions(n=1, seed=11, size=(150, 220), style="dermoscopy")[0]
    write_image(tmp_path / "img.png", s.image)
    ys, xs = np.nonzero(s.mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    rc = main(["segment", str(tmp_path / "img.png"), "--model", "grabcut", "--box", f"{x0},{y0},{x1},{y1}", "--out", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "o.png")])
    assert rc == 0, capsys.readouterr().err
    mask = read_binary_mask(tmp_path / "m.png")
    assert mask.shape == s.mask.shape
    assert (mask & s.mask).sum() / (mask | s.mask).sum() > 0.7
    assert (tmp_path / "o.png").exists()
    rc = main(["segment", str(tmp_path / "img.png"), "--point", "500,20", "--out", str(tmp_path / "m2.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "outside the image of width 220 and height 150" in err
    rc = main(["segment", str(tmp_path / "missing.png"), "--point", "5,5", "--out", str(tmp_path / "m3.png")])
    assert rc == 2 and "missing.png: file not found" in capsys.readouterr().err


def test_segment_takes_the_inference_options_of_the_learned_models(tmp_path, capsys):
    """``--cascade`` (and ``--zoom-in`` / ``--brs``, the same switches as ``bench pointprompt``) wrap
    the model as create_segmenter's keywords do; a classical model refuses them by name."""
    from segprompt.models import create_segmenter
    from segprompt.prompts import Points, PromptSet

    s = SyntheticLesions(n=1, seed=11, size=(150, 220), style="dermoscopy")[0]
    write_image(tmp_path / "img.png", s.image)
    ys, xs = np.nonzero(s.mask)
    x, y = int(xs.mean()), int(ys.mean())
    rc = main(["segment", str(tmp_path / "img.png"), "--point", f"{x},{y}", "--cascade", "--out", str(tmp_path / "c.png")])
    assert rc == 0, capsys.readouterr().err
    want = create_segmenter("sam-tiny", cascade=True).predict(s.image, PromptSet(points=Points([[x, y]], [1]))).best[0]
    plain = create_segmenter("sam-tiny").predict(s.image, PromptSet(points=Points([[x, y]], [1]))).best[0]
    assert (read_binary_mask(tmp_path / "c.png") == want).all() and (want != plain).any()
    rc = main(["segment", str(tmp_path / "img.png"), "--model", "grabcut", "--point", f"{x},{y}", "--brs", "--out", str(tmp_path / "g.png")])
    assert rc == 2 and "--brs: for the learned models" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--images", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "sam-tiny" in printed and "grabcut" in printed
    assert f"{out}: new run, 6 (model, image) pairs to do" in captured.err
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["model"] for r in table} == {"sam-tiny", "grabcut"}
    assert {r["strategy"] for r in table} == {"centre", "random", "microsam"}
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 3 * 4
    sam_centre = [r for r in table if r["model"] == "sam-tiny" and r["strategy"] == "centre"][0]
    assert float(sam_centre["iou@1"]) > 0.7  # the trained demo model segments from one click
    assert (out / "iou_per_step.png").stat().st_size > 5000
    report = (out / "report.md").read_text()
    assert "![IoU by points placed](iou_per_step.png)" in report and "The run took" in report
    assert "`sam-tiny`: the bundled demo model" in report and "-1 where the single-mask head answered" in report
    # rerun: nothing recomputed, and it says so; the report keeps the first run's time
    first_seconds = json.loads((out / "invocations.jsonl").read_text().splitlines()[0])["seconds"]
    before = (out / "results.jsonl").read_text()
    assert main(["demo", "--images", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert (out / "results.jsonl").read_text() == before
    assert "already finished (6 (model, image) pairs done); nothing to recompute" in captured.err
    report = (out / "report.md").read_text()
    assert f"{first_seconds:.1f} s; this invocation" in report and "nothing new computed; 2 invocations" in report
    # a demo killed before its last grabcut image resumes that image only, with the same rows
    lines = before.splitlines()
    last = json.loads(lines[-1])
    kept = [l for l in lines if not (json.loads(l)["model"] == last["model"] and json.loads(l)["image"] == last["image"])]
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")
    assert main(["demo", "--images", "3", "--out", str(out)]) == 0
    assert f"resuming {out}: 5 (model, image) pairs already done, 1 to do" in capsys.readouterr().err
    assert sorted((out / "results.jsonl").read_text().splitlines()) == sorted(lines)


def test_inference_switches_reach_the_config_files_learned_models(tmp_path, capsys):
    """``--config F --cascade``: the file's models keep their own kwargs and the learned ones get the
    cascade (the switch does not replace the file's model_kwargs, nor go to the default model)."""
    import yaml

    cfg = tmp_path / "preset.yaml"
    cfg.write_text("datasets: [synthetic-lesions]\nmodels: [sam-tiny, grabcut]\nmodel_kwargs: {sam-tiny: {max_batch: 8}}\nstrategies: [centre]\nsteps: 1\n")
    out = tmp_path / "run"
    assert main(["bench", "pointprompt", "--config", str(cfg), "--cascade", "--limit", "1", "--out", str(out)]) == 0, capsys.readouterr().err
    saved = yaml.safe_load((out / "config.yaml").read_text())["model_kwargs"]
    assert saved["sam-tiny"] == {"max_batch": 8, "cascade": True} and "cascade" not in saved.get("grabcut", {})
    assert "`sam-tiny`." in (out / "report.md").read_text().split("Cascade (")[1].splitlines()[0]


def test_config_file_with_command_line_overrides(tmp_path, capsys):
    cfg = tmp_path / "preset.yaml"
    cfg.write_text("datasets: [synthetic-lesions]\nmodels: [random-walker]\nstrategies: [random, centre]\nbudget: one\nseed: 3\n")
    out = tmp_path / "run"
    rc = main(["bench", "pointprompt", "--config", str(cfg), "--model", "grabcut", "--strategies", "centre", "--limit", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["models"] == ["grabcut"] and saved["strategies"] == ["centre"]  # given on the command line
    assert saved["budget"] == "one" and saved["seed"] == 3  # from the file
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [synthetic-lesions]\nstratgies: [centre]\n")
    rc = main(["bench", "pointprompt", "--config", str(bad), "--out", str(tmp_path / "r2")])
    assert rc == 2 and "unknown field(s) stratgies" in capsys.readouterr().err
