"""The distillation's measurements and report: parameter counts, encoder milliseconds per image
on the run's device, and ``report.md`` (written from ``summary.json`` alone, so a finished
run's report can be rewritten without loading any model)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from segprompt.engine.loop import autocast
from segprompt.engine.report import plural


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of a segment-anything ``Sam``: ``total``, ``image_encoder`` and ``prompt_and_decoder``."""
    total = sum(p.numel() for p in model.parameters())
    enc = sum(p.numel() for p in model.image_encoder.parameters())
    return {"total": int(total), "image_encoder": int(enc), "prompt_and_decoder": int(total - enc)}


@torch.no_grad()
def encoder_ms(model: nn.Module, device: str, precision: str, runs: int) -> float | None:
    """Median milliseconds of one image-encoder pass on a (1, 3, S, S) input on ``device``
    (after one untimed warm-up pass; CUDA synchronised), or None when ``runs`` is 0."""
    if runs <= 0:
        return None
    enc = model.image_encoder
    was_training, param = enc.training, next(enc.parameters())
    old_device = param.device
    enc.eval().to(device)
    size = int(enc.img_size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    for i in range(runs + 1):
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(precision, device):
            enc(x)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            times.append(1000 * (time.perf_counter() - t0))
    enc.train(was_training).to(old_device)
    return round(statistics.median(times), 2)


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def _in_run(path: str, out: str) -> str:
    """``path`` relative to the run folder ``out`` when it is inside it."""
    p, o = Path(path), Path(out)
    return str(p.relative_to(o)) if p.is_relative_to(o) else str(p)


def report_text(summary: Mapping[str, Any], timing: str = "") -> str:
    """``report.md`` from a run's ``summary.json`` content."""
    s = summary
    student_file, stage1_file = _in_run(s["student_checkpoint"], s["out"]), _in_run(s["stage1_checkpoint"], s["out"])
    before, after, params, speed = s["before"], s["after"], s["params"], s["ms_per_image"]
    t, st = params["teacher"], params["student"]
    lines = [
        f"# SAM distillation: {s['student_name']} student",
        "",
        f"Teacher: `{s['teacher']}` ({s['teacher_arch']}, {s['teacher_img_size']} px input, embedding {s['teacher_grid']}). "
        f"Student: `{s['student_name']}` ({s['student_img_size']} px input, embedding {s['student_grid']}); image encoder initialised "
        f"`{s['init']}`; prompt encoder and mask decoder from {s['decoder_from']}.",
        "",
        f"Images: {s['train_images']} for training, {s['val_images']} held out"
        + (f"; {s['skipped']} skipped (see errors.jsonl)." if s.get("skipped") else "."),
        "",
        "## Stage 1: encoder distillation (held-out images)",
        "",
        "| | embedding MSE | cosine |",
        "|---|---|---|",
        f"| before (epoch 0) | {before['val_mse']:.5f} | {before['val_cosine']:.4f} |",
        f"| after (epoch {after['epoch']}, lowest held-out MSE) | {after['val_mse']:.5f} | {after['val_cosine']:.4f} |",
        "",
        f"MSE is the mean over channels and grid positions of (student - teacher)^2 after the student's projection "
        f"({s['projection']}); cosine is the mean over grid positions of the cosine similarity of the channel vectors. "
        f"{plural(s['epochs_run'], 'epoch')}; the exported encoder is that of the epoch with the lowest held-out MSE.",
        "",
        "## Size and speed",
        "",
        f"Device: {speed['device']} ({speed['precision']}); median of {speed['runs']} image-encoder passes on one "
        f"{s['teacher_img_size']}/{s['student_img_size']} px input after a warm-up.",
        "",
        "| model | parameters | image encoder | prompt encoder + mask decoder | encoder ms/image |",
        "|---|---|---|---|---|",
        f"| teacher | {_millions(t['total'])} | {_millions(t['image_encoder'])} | {_millions(t['prompt_and_decoder'])} | {_num(speed['teacher'], '.1f')} |",
        f"| student | {_millions(st['total'])} | {_millions(st['image_encoder'])} | {_millions(st['prompt_and_decoder'])} | {_num(speed['student'], '.1f')} |",
        "",
        f"The student has {st['total'] / max(1, t['total']):.1%} of the teacher's parameters "
        f"({st['image_encoder'] / max(1, t['image_encoder']):.1%} of its image encoder).",
        "",
    ]
    dec = s.get("decoder")
    lines += ["## Stage 2: mask-decoder finetuning with prompts", ""]
    if not dec:
        lines += ["Skipped (`--decoder-epochs 0`): the student keeps the decoder it started with.", ""]
    else:
        lines += [
            f"`segprompt finetune sam` on the distilled student (`{stage1_file}`), mask decoder trained, mixed prompts, "
            f"{plural(dec['epochs_run'], 'epoch')}; its run folder is `{_in_run(dec['out'], s['out'])}` (see its report.md).",
            "",
        ]
        test = dec.get("test")
        if test:
            b, a = test["before"], test["best"]
            lines += [
                "| test images | Dice | IoU |",
                "|---|---|---|",
                f"| distilled student, before finetuning | {b['dice']:.3f} | {b['iou']:.3f} |",
                f"| after finetuning (best on validation) | {a['dice']:.3f} | {a['iou']:.3f} |",
                "",
            ]
    lines += [
        "## Files",
        "",
        f"* `{student_file}`: the student (segment-anything key layout; architecture in `{student_file}.arch.json`)"
        + (", a copy of stage 2's best checkpoint. " if dec else ", the same as the stage-1 student (no stage 2). ")
        + "Load it with `create_segmenter(\"sam\", checkpoint=...)`.",
        f"* `{stage1_file}`: the student after stage 1 only.",
        "* `checkpoints/`: stage 1's training checkpoints"
        + ("." if s["projection"] == "identity" else " (they also hold the loss-only projection, which `student.pth` does not)."),
        "",
    ]
    if timing:
        lines += [timing, ""]
    return "\n".join(lines)


__all__ = ["encoder_ms", "parameter_counts", "report_text"]
