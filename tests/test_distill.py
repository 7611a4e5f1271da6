"""`segprompt distill sam`: MobileSAM-style encoder distillation, then decoder finetuning.

The held-out embedding MSE is checked against a re-computation through segment-anything's own
``SamPredictor`` (its resize, normalisation and padding), not through our code."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segprompt.data.synthetic import SyntheticLesions
from segprompt.distill import DistillConfig, run_distill
from segprompt.errors import ConfigError
from segprompt.models.sam_arch import SamArch, save_sam, tiny_arch

DATA = {"dataset": "synthetic-lesions", "dataset_kwargs": {"n": 12, "size": 96}}  # 9 training + 3 held-out images
VIT = dict(student="vit_t-like", student_options={"embed_dim": 32, "depth": 2}, val_fraction=0.25, epochs=4, batch_size=3, lr=2e-3, decoder_epochs=0, speed_images=1)
SAM_TINY = dict(student="sam-tiny", val_fraction=0.25, epochs=3, batch_size=3, lr=2e-3, decoder_epochs=0, speed_images=1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on this shared 2-core machine two threads next to another busy process
    make each tiny forward pass 50x slower (thread spin-waits), which is not what is tested."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def teacher_vit(tmp_path_factory) -> str:
    """A random SAM teacher: 128 px, 16 px patches (8 x 8 grid), width 64, 32-channel embedding."""
    torch.manual_seed(123)
    return str(save_sam(tiny_arch(img_size=128, window_size=4, prompt_embed_dim=32).build(), tmp_path_factory.mktemp("t") / "teacher.pth"))


@pytest.fixture(scope="module")
def teacher_fine(tmp_path_factory) -> str:
    """A random SAM teacher with a finer grid than sam-tiny's: 256 px, 8 px patches (32 x 32 grid)."""
    torch.manual_seed(7)
    arch = tiny_arch(img_size=256, patch_size=8, encoder_embed_dim=32, encoder_num_heads=1, window_size=8, prompt_embed_dim=32)
    return str(save_sam(arch.build(), tmp_path_factory.mktemp("t") / "teacher_fine.pth"))


@pytest.fixture(scope="module")
def vit_run(teacher_vit, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vit"
    return out, run_distill(DistillConfig(teacher=teacher_vit, **DATA, **VIT), out, progress=False)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _epochs(out: Path) -> list[dict]:
    return [r for r in _rows(out / "results.jsonl") if r.get("kind") == "epoch"]


def _sam(path: str | Path):
    """A segment-anything ``Sam`` built from the .arch.json record, weights loaded strict."""
    arch = SamArch.from_json(Path(str(path) + ".arch.json").read_text())
    model = arch.build()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


@torch.no_grad()
def _features(model, images) -> list[torch.Tensor]:
    """segment-anything's own image embeddings (SamPredictor.set_image -> .features), (1, C, g, g)."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(model)
    out = []
    for image in images:
        predictor.set_image(image)
        out.append(predictor.features.clone())
    return out


def _held_out(summary: dict) -> list[np.ndarray]:
    ds = SyntheticLesions(n=12, size=96)
    return [s.image for s in ds if s.id in set(summary["held_out_ids"])]


def test_vit_t_like_mse_falls_and_the_teacher_decoder_is_copied(vit_run, teacher_vit):
    out, summary = vit_run
    rows = _epochs(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4] and all(r["stage"] == "encoder" for r in rows)
    before, best = rows[0]["val_mse"], min(r["val_mse"] for r in rows[1:])
    assert best < 0.3 * before, (before, best)  # measured: 1.99 -> 0.32
    assert rows[-1]["val_cosine"] > rows[0]["val_cosine"] + 0.5
    assert summary["before"]["val_mse"] == before and summary["after"]["val_mse"] == best
    assert summary["train_images"] == 9 and summary["val_images"] == 3 and len(summary["held_out_ids"]) == 3
    # the exported student (best epoch) re-measured through segment-anything's SamPredictor
    teacher, student = _sam(teacher_vit), _sam(out / "student.pth")
    images = _held_out(summary)
    mse = np.mean([float(((s - t) ** 2).mean()) for s, t in zip(_features(student, images), _features(teacher, images))])
    assert mse == pytest.approx(summary["after"]["val_mse"], rel=1e-4)
    # MobileSAM: the teacher's prompt encoder and mask decoder, unchanged; a smaller image encoder
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    shared = [k for k in t_sd if k.startswith(("prompt_encoder.", "mask_decoder."))]
    assert shared and all(torch.equal(t_sd[k], s_sd[k]) for k in shared)
    assert s_sd["image_encoder.patch_embed.proj.weight"].shape[0] == 32 < t_sd["image_encoder.patch_embed.proj.weight"].shape[0]
    p = summary["params"]
    assert p["student"]["image_encoder"] == sum(v.numel() for v in student.image_encoder.parameters()) < p["teacher"]["image_encoder"]
    assert summary["ms_per_image"]["teacher"] > 0 and summary["ms_per_image"]["student"] > 0
    report = (out / "report.md").read_text()
    assert f"| before (epoch 0) | {before:.5f} |" in report and "encoder ms/image" in report and "Skipped (`--decoder-epochs 0`)" in report


def test_student_loads_in_create_segmenter_and_in_segment_anything(vit_run):
    from segment_anything.modeling import Sam

    from segprompt.models import create_segmenter
    from segprompt.prompts import Points, PromptSet

    out, summary = vit_run
    path = out / "student.pth"
    assert summary["student_checkpoint"] == str(path) and (out / "student.pth.arch.json").is_file()
    seg = create_segmenter("sam", checkpoint=str(path), multimask="single")
    image = SyntheticLesions(n=1, size=96)[0].image
    pred = seg.segment(seg.encode(image), PromptSet(points=Points([[48, 48]], [1])))
    assert pred.masks.shape == (1, 1, 96, 96) and pred.masks.dtype == bool
    model = _sam(path)  # strict load into segment-anything's classes
    assert isinstance(model, Sam) and model.image_encoder.img_size == 128
    assert not any("projection" in k for k in torch.load(path, weights_only=True))


def test_killed_run_resumes_exactly_and_a_finished_run_does_nothing(vit_run, teacher_vit, tmp_path, caplog):
    ref_out, ref = vit_run
    out = tmp_path / "killed"
    cfg = DistillConfig(teacher=teacher_vit, **DATA, **{**VIT, "speed_images": 0})
    stopped = run_distill(DistillConfig(**{**cfg.to_dict(), "max_steps": 5}), out, progress=False)  # 3 steps per epoch
    assert stopped["interrupted"] and stopped["stage"] == "encoder" and stopped["stopped_at_step"] == 5
    assert not (out / "student.pth").exists() and [r["epoch"] for r in _epochs(out)] == [0, 1]
    with caplog.at_level(logging.INFO):
        done = run_distill(cfg, out, progress=False)
    messages = [r.getMessage() for r in caplog.records]
    assert f"resuming {out}: stage 1 at epoch 2 of 4, batch 2 of 3 (5 optimizer steps already done)" in messages
    # bit-identical to the uninterrupted run
    assert [r["val_mse"] for r in _epochs(out)] == [r["val_mse"] for r in _epochs(ref_out)]
    assert done["after"] == ref["after"]
    a, b = torch.load(out / "student.pth", weights_only=True), torch.load(ref_out / "student.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    caplog.clear()
    rows_before = (out / "results.jsonl").read_text()
    with caplog.at_level(logging.INFO):
        again = run_distill(cfg, out, progress=False)
    assert again["already_finished"] and (out / "results.jsonl").read_text() == rows_before
    assert f"{out}: already finished (4 stage-1 epochs); nothing to train, rewriting the report" in [r.getMessage() for r in caplog.records]
    assert [r["new_rows"] for r in _rows(out / "invocations.jsonl")] == [2, 3, 0]
    with pytest.raises(ConfigError, match="different configuration"):
        run_distill(DistillConfig(**{**cfg.to_dict(), "lr": 1e-2}), out, progress=False)


def test_unreadable_image_in_a_folder_is_skipped_and_recorded(teacher_vit, tmp_path):
    from segprompt.data.io import write_image, write_mask

    data = tmp_path / "data"
    ds = SyntheticLesions(n=8, size=96)
    for s in ds:
        write_image(data / "images" / f"{s.id}.png", s.image)
        write_mask(data / "masks" / f"{s.id}.png", s.mask)
    broken = data / "images" / f"{ds.ids[5]}.png"
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated PNG
    out = tmp_path / "run"
    cfg = DistillConfig(teacher=teacher_vit, dataset=str(data), **{**VIT, "epochs": 1, "speed_images": 0})
    summary = run_distill(cfg, out, progress=False)
    errors = _rows(out / "errors.jsonl")
    assert [(e["item"], e["stage"]) for e in errors] == [(ds.ids[5], "loading")] and str(broken) in errors[0]["error"]
    assert summary["train_images"] + summary["val_images"] == 7 and summary["skipped"] == 1
    assert "1 skipped (see errors.jsonl)" in (out / "report.md").read_text()


def test_sam_tiny_student_pools_the_teacher_and_projects_its_channels(teacher_fine, tmp_path):
    from segprompt.engine.training import load_checkpoint
    from segprompt.models.sam_arch import load_sam
    from segprompt.models.sam_tiny import sam_tiny_path, sam_tiny_record

    out = tmp_path / "tiny"
    summary = run_distill(DistillConfig(teacher=teacher_fine, **DATA, **SAM_TINY), out, progress=False)
    rows = _epochs(out)
    assert min(r["val_mse"] for r in rows[1:]) < 0.3 * rows[0]["val_mse"], [r["val_mse"] for r in rows]  # measured: 1.41 -> 0.17
    student = _sam(out / "student.pth")
    assert SamArch.from_json(Path(str(out / "student.pth") + ".arch.json").read_text()) == SamArch.from_json(sam_tiny_record()["arch"])
    # prompt encoder and mask decoder: the bundled sam-tiny's (the teacher's do not fit 128 channels)
    bundled, _ = load_sam(sam_tiny_path())
    b_sd, s_sd = bundled.state_dict(), student.state_dict()
    assert all(torch.equal(b_sd[k], s_sd[k]) for k in b_sd if k.startswith(("prompt_encoder.", "mask_decoder.")))
    # the 1x1 projection lives in the training checkpoint only
    best = load_checkpoint(out / "checkpoints" / "best.pt")["model"]
    w, bias = best["projection.weight"], best["projection.bias"]
    assert w.shape == (32, 128, 1, 1) and not any("projection" in k for k in torch.load(out / "student.pth", weights_only=True))
    # independent re-computation: teacher 32 x 32 grid average-pooled 2 x 2 to the student's 16 x 16, student through the projection
    images = _held_out(summary)
    teacher = _sam(teacher_fine)
    mse = [
        float(((F.conv2d(s, w, bias) - F.avg_pool2d(t, 2)) ** 2).mean())
        for s, t in zip(_features(student, images), _features(teacher, images))
    ]
    assert np.mean(mse) == pytest.approx(summary["after"]["val_mse"], rel=1e-4)
    assert "1x1 convolution 128 -> 32 channels, discarded after distillation" in (out / "report.md").read_text()


def test_cli_end_to_end_with_the_decoder_stage(teacher_fine, tmp_path):
    from click.testing import CliRunner

    from segprompt.cli import cli

    out = tmp_path / "cli"
    args = [
        "distill", "sam", "--teacher", teacher_fine, "--student", "sam-tiny", "--dataset", "synthetic-lesions", "--epochs", "1",
        "--batch-size", "3", "--lr", "2e-3", "--decoder-epochs", "1", "--val-fraction", "0.25", "--speed-images", "1", "--out", str(out),
    ]  # fmt: skip
    # the synthetic set's size comes from the registry default (32 images of 256 px); --limit keeps it small
    result = CliRunner().invoke(cli, [*args, "--limit", "12"])
    assert result.exit_code == 0, result.output
    assert f"student: {out / 'student.pth'}" in result.output and "held-out embedding MSE" in result.output
    # student.pth is stage 2's best checkpoint, whose mask decoder moved away from the stage-1 student's
    final, best, stage1 = (torch.load(p, weights_only=True) for p in (out / "student.pth", out / "decoder" / "sam_best.pth", out / "student_stage1.pth"))
    assert all(torch.equal(final[k], best[k]) for k in best) and set(final) == set(best)
    assert all(torch.equal(final[k], stage1[k]) for k in final if k.startswith("image_encoder."))
    assert any(not torch.equal(final[k], stage1[k]) for k in final if k.startswith("mask_decoder."))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decoder"]["epochs_run"] == 1 and summary["decoder"]["test"]["best"]["dice"] >= 0
    assert "## Stage 2: mask-decoder finetuning with prompts" in (out / "report.md").read_text()
    again = CliRunner().invoke(cli, [*args, "--limit", "12"])
    assert again.exit_code == 0, again.output
    assert [r["new_rows"] for r in _rows(out / "invocations.jsonl")][-1] == 0


def test_a_bad_teacher_path_names_the_file(tmp_path, capsys):
    from segprompt.cli import main

    missing = tmp_path / "nowhere" / "teacher.pth"
    out = tmp_path / "run"
    assert main(["distill", "sam", "--teacher", str(missing), "--dataset", "synthetic-lesions", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err and not out.exists()
    garbage = tmp_path / "teacher.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["distill", "sam", "--teacher", str(garbage), "--dataset", "synthetic-lesions", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{garbage}: not a readable checkpoint" in err and not out.exists()


def test_configuration_errors(teacher_vit, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown student 'vit-s'.*Known: .*sam-tiny"):
        DistillConfig(teacher=teacher_vit, student="vit-s")
    with pytest.raises(ConfigError, match="--init bundled is not available for the vit_t-like student"):
        DistillConfig(teacher=teacher_vit, init="bundled")
    with pytest.raises(ConfigError, match=r"student options \['depth'\] are not known to the sam-tiny student"):
        DistillConfig(teacher=teacher_vit, student="sam-tiny", student_options={"depth": 2})
    cfg = DistillConfig(teacher=teacher_vit, student="sam_tiny")
    assert (cfg.student, cfg.init, cfg.decoder_epochs) == ("sam-tiny", "bundled", 5)
    assert (DistillConfig(teacher=teacher_vit).init, DistillConfig(teacher=teacher_vit).decoder_epochs) == ("random", 0)
    with pytest.raises(ConfigError, match="needs a decoder stage"):
        run_distill(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_init_from_a_checkpoint_loads_only_a_fitting_image_encoder(teacher_vit):
    from segprompt.distill.students import build_student
    from segprompt.errors import WeightsError

    teacher = _sam(teacher_vit)
    arch = SamArch.from_json(Path(teacher_vit + ".arch.json").read_text())
    same = {"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": [1]}  # the teacher's own encoder sizes
    built = build_student("vit_t-like", teacher, arch, teacher_vit, same)
    t_sd, s_sd = teacher.state_dict(), built.model.state_dict()
    assert set(t_sd) == set(s_sd) and all(torch.equal(t_sd[k], s_sd[k]) for k in t_sd)
    with pytest.raises(WeightsError, match=rf"{teacher_vit}: its image encoder does not fit the vit_t-like student"):
        build_student("vit_t-like", teacher, arch, teacher_vit, {"embed_dim": 32, "depth": 2})
