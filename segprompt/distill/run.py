"""A distillation run: stage 1 (encoder distillation), stage 2 (mask-decoder finetuning with
prompts, optional), export and report, in one resumable run folder.

::

    RUN_DIR/
      config.yaml, results.jsonl (stage 1 epoch rows), errors.jsonl, invocations.jsonl
      teacher_embeddings/     the teacher's embeddings, one signed cache entry per image
      checkpoints/            stage 1: last.pt, best.pt (student + loss-only projection)
      student_stage1.pth      the student after stage 1 (+ .arch.json)
      decoder/                stage 2: a `segprompt finetune sam` run folder
      student.pth             THE result: stage 2's best checkpoint, or stage 1's when skipped
      summary.json, report.md

Rerunning on the same folder resumes where it stopped (stage 1 through the loop's
checkpoints, stage 2 through the finetuning run's own); a finished run (summary.json present)
does nothing but rewrite its report; a different configuration in the same folder is a
ConfigError.

Stage 2 lives in ``pointprompt`` (the SAM finetuning engine), which the core never imports:
the caller passes it as ``decoder_stage`` (the CLI passes
:func:`segprompt.commands.distill.finetune_decoder`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from segprompt.distill.config import VOLATILE, DistillConfig
from segprompt.engine.report import plural
from segprompt.errors import ConfigError

log = logging.getLogger("segprompt.distill")

#: ``decoder_stage(student_checkpoint, out, cfg, dataset, progress) -> result``: runs or resumes a
#: decoder finetuning into ``out``; ``result["checkpoint"]`` is the best checkpoint, or
#: ``result["stopped_at_step"]`` is set when ``cfg.max_steps`` interrupted it.
DecoderStage = Callable[[Path, Path, DistillConfig, Any, bool], Mapping[str, Any]]

STAGE1_NAME = "student_stage1.pth"
STUDENT_NAME = "student.pth"


def run_distill(cfg: DistillConfig, out: str | Path, dataset: Any = None, decoder_stage: DecoderStage | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a distillation into ``out``; returns the summary (see ``summary.json``),
    or ``{"interrupted": True, "stage": ..., "out": ...}`` when ``cfg.max_steps`` stopped a stage.

    ``dataset``: a ready :class:`SegmentationDataset` instead of ``cfg.dataset``;
    ``decoder_stage``: needed when ``cfg.decoder_epochs > 0`` (see :data:`DecoderStage`).
    """
    from segprompt.devices import check_device
    from segprompt.engine.runfolder import RunFolder

    check_device(cfg.device)
    out = Path(out)
    if cfg.decoder_epochs and decoder_stage is None:
        raise ConfigError(
            f"decoder_epochs={cfg.decoder_epochs} needs a decoder stage: pass decoder_stage=segprompt.commands.distill.finetune_decoder "
            "(pointprompt's SAM finetuning), or decoder_epochs=0"
        )
    finished = (out / "summary.json").is_file()
    if not finished:  # a wrong --teacher or --dataset fails before the run folder is made
        teacher = _load_teacher(cfg)
        if dataset is None:
            from segprompt.data.registry import load_dataset

            dataset = load_dataset(cfg.dataset, **cfg.dataset_kwargs)
    run = RunFolder(out, {"suite": "distill-sam", **cfg.to_dict()}, volatile=VOLATILE)
    if finished:
        return _already_finished(run, out)
    return _run(cfg, out, run, teacher, dataset, decoder_stage, progress)


def _load_teacher(cfg: DistillConfig) -> Any:
    """The teacher as a frozen :class:`SamSegmenter` (WeightsError naming a missing or bad file)."""
    from segprompt.models.sam import SamSegmenter

    teacher = SamSegmenter(checkpoint=cfg.teacher, device=cfg.device, precision=cfg.precision)
    teacher.model.eval()
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    return teacher


def _run(cfg: DistillConfig, out: Path, run: Any, teacher: Any, dataset: Any, decoder_stage: DecoderStage | None, progress: bool) -> dict[str, Any]:
    from segprompt.cache import EmbeddingCache
    from segprompt.distill.data import scan_images
    from segprompt.distill.encoder import DistillModel, distill_encoder
    from segprompt.distill.students import build_student
    from segprompt.engine.loop import load_best
    from segprompt.engine.training import seed_everything
    from segprompt.models.sam_arch import save_sam

    n_rows = len(run.results.rows())
    seed_everything(cfg.seed)
    built = build_student(cfg.student, teacher.model, teacher.arch, cfg.init, cfg.student_options)
    model = DistillModel(built.model, built.projection)
    teacher.cache = EmbeddingCache(out / "teacher_embeddings")
    images = scan_images(dataset, cfg.limit, cfg.val_fraction, cfg.split_seed, teacher, run, progress)

    def on_start(state: dict[str, Any] | None) -> None:
        """Say whether this is a new run or where stage 1 resumes (``state``: the loop's restored state)."""
        if state is None:
            run.announce(done=0, todo=cfg.epochs, unit="stage-1 epoch" if cfg.epochs == 1 else "stage-1 epochs")
            return
        n_batches = -(-len(images.train) // cfg.batch_size)
        log.info(
            "resuming %s: stage 1 at epoch %d of %d, batch %d of %d (%s already done)", out, state["epoch"] + 1, cfg.epochs,
            state["batch"], n_batches, plural(int(state["global_step"]), "optimizer step"),
        )

    task, fitted = distill_encoder(model, teacher, images, cfg, out, run, on_start, progress)
    if fitted.interrupted:
        run.finish(len(run.results.rows()) - n_rows)
        log.info("%s: stage 1 stopped after %d optimizer steps (--max-steps); rerun the command to continue", out, fitted.global_step)
        return {"interrupted": True, "stage": "encoder", "stopped_at_step": fitted.global_step, "out": str(out)}
    if fitted.already_finished:
        log.info("resuming %s: stage 1 (encoder distillation) already finished; continuing with stage 2", out)
    load_best(task, out)  # the epoch with the lowest held-out MSE
    stage1 = save_sam(model.student.cpu(), out / STAGE1_NAME, built.arch)
    history = fitted.history
    best_epoch = fitted.best_epoch if fitted.best_epoch is not None else history[-1]["epoch"]
    best_row = next(h for h in history if h["epoch"] == best_epoch)

    decoder = None
    final = stage1
    if cfg.decoder_epochs:
        assert decoder_stage is not None
        log.info("distill stage 2: finetuning the student's mask decoder with prompts (%s) in %s", plural(cfg.decoder_epochs, "epoch"), out / "decoder")
        result = dict(decoder_stage(stage1, out / "decoder", cfg, dataset, progress))
        if result.get("stopped_at_step") is not None:
            run.finish(len(run.results.rows()) - n_rows)
            log.info("%s: stage 2 stopped (--max-steps); rerun the command to continue", out)
            return {"interrupted": True, "stage": "decoder", "stopped_at_step": result["stopped_at_step"], "out": str(out)}
        decoder = {k: result.get(k) for k in ("out", "checkpoint", "epochs_run", "best_epoch", "best_val_dice", "test")}
        final = Path(result["checkpoint"])
    student_path = _export(final, out / STUDENT_NAME)
    summary = _summary(cfg, out, teacher, built, model, images, history, best_row, stage1, student_path, decoder)
    from segprompt.fileio import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    run.finish(len(run.results.rows()) - n_rows)
    _write_report(run, summary)
    log.info("%s: student written to %s (report: %s)", out, student_path, out / "report.md")
    return summary


def _export(source: Path, target: Path) -> Path:
    """``target`` = the SAM of ``source`` in segment-anything's key layout (+ .arch.json)."""
    from segprompt.models.sam_arch import load_sam, save_sam

    model, arch = load_sam(source)
    return save_sam(model, target, arch)


def _summary(cfg: DistillConfig, out: Path, teacher: Any, built: Any, model: Any, images: Any, history: list[dict[str, Any]], best_row: dict[str, Any], stage1: Path, student: Path, decoder: Any) -> dict[str, Any]:
    from segprompt.distill.report import encoder_ms, parameter_counts

    tarch, sarch = teacher.arch, built.arch
    runs = cfg.speed_images
    return {
        "teacher": cfg.teacher,
        "teacher_arch": tarch.name,
        "teacher_img_size": tarch.img_size,
        "teacher_grid": f"{tarch.prompt_embed_dim} x {tarch.embedding_size} x {tarch.embedding_size}",
        "student_name": cfg.student,
        "student_img_size": sarch.img_size,
        "student_grid": f"{sarch.prompt_embed_dim} x {sarch.embedding_size} x {sarch.embedding_size}",
        "init": cfg.init,
        "decoder_from": built.decoder_from,
        "projection": "identity" if type(built.projection).__name__ == "Identity" else f"1x1 convolution {sarch.prompt_embed_dim} -> {tarch.prompt_embed_dim} channels, discarded after distillation",
        "train_images": len(images.train),
        "val_images": len(images.val),
        "held_out_ids": [images.ids[i] for i in images.val],
        "skipped": len(list(_errors(out))),
        "before": {k: history[0][k] for k in ("val_mse", "val_cosine")},
        "after": {"epoch": best_row["epoch"], "val_mse": best_row["val_mse"], "val_cosine": best_row["val_cosine"]},
        "final_epoch": {k: history[-1][k] for k in ("epoch", "val_mse", "val_cosine")},
        "epochs_run": len(history) - 1,
        "params": {"teacher": parameter_counts(teacher.model), "student": parameter_counts(model.student)},
        "ms_per_image": {
            "device": cfg.device, "precision": cfg.precision, "runs": runs,
            "teacher": encoder_ms(teacher.model, cfg.device, cfg.precision, runs),
            "student": encoder_ms(model.student, cfg.device, cfg.precision, runs),
        },
        "stage1_checkpoint": str(stage1),
        "student_checkpoint": str(student),
        "decoder": decoder,
        "out": str(out),
    }


def _errors(out: Path) -> list[dict[str, Any]]:
    from segprompt.engine.runfolder import JsonlLog

    return JsonlLog(out / "errors.jsonl").rows()


def _write_report(run: Any, summary: Mapping[str, Any]) -> Path:
    from segprompt.distill.report import report_text

    return run.write_text("report.md", report_text(summary, run.timing_text()))


def _already_finished(run: Any, out: Path) -> dict[str, Any]:
    """The rerun of a finished run: nothing is trained; the report is rewritten."""
    summary = json.loads((out / "summary.json").read_text())
    decoder = f", {plural(summary['decoder']['epochs_run'], 'decoder epoch')}" if summary.get("decoder") else ""
    log.info("%s: already finished (%s%s); nothing to train, rewriting the report", out, plural(summary["epochs_run"], "stage-1 epoch"), decoder)
    run.finish(0)
    _write_report(run, summary)
    return {**summary, "already_finished": True}


__all__ = ["DecoderStage", "STAGE1_NAME", "STUDENT_NAME", "run_distill"]
