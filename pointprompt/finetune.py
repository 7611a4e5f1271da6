"""Finetuning SAM with automated, iterative or box prompts: one loop for the recipes of PointPrompt
(prompt encoder per strategy), micro-sam (iterative error-region prompts) and MedSAM (jittered boxes).

.. code-block:: python

    from pointprompt.finetune import FinetuneConfig, finetune_sam
    result = finetune_sam(FinetuneConfig(dataset="kvasir", model="sam-tiny", train=["mask_decoder"],
                                         prompts="mixed", epochs=5), out="runs/ft_kvasir")
    result["checkpoint"]   # SAM state-dict layout, LoRA merged: create_segmenter("sam", checkpoint=...)
    result["test"]         # test-split IoU / Dice before finetuning and of the checkpoint chosen on validation

    # a reference recipe, with any field overridden
    cfg = FinetuneConfig.from_preset("pointprompt-study", dataset="kvasir", prompts="kmedoids")

Everything happens in the model's input frame (image resized so its longest side is the
encoder's input size, padded bottom-right): prompts are drawn from the ground-truth mask in
that frame, and the loss compares the low-resolution logits with the mask downsampled to the
same grid (the PointPrompt recipe). Validation and test use the real inference path
(:class:`SamSegmenter`, original resolution): mean Dice and IoU of ``eval_strategy`` prompts
(``box``: the ground-truth box).

Splits: the usable images are split by SOURCE image (``meta["image_id"]``, else the sample id),
so the structures of one image never straddle splits: ``test_fraction`` of the source images
are held out for test, then ``val_fraction`` of the rest for validation (the PointPrompt code's
``--train_ratio 0.8`` of its non-test images). The best checkpoint is chosen on validation
(``select_on``); the reported numbers are those of that checkpoint on test.
``test_fraction=0`` is the old split (validation only; the numbers are validation numbers).

Prompt modes (``prompts=``):

* a strategy name (``random``, ``centre``, ``kmedoids``, ...): its points for the budget
  ``n_positive`` / ``n_negative`` (``budget="auto"``: the study's per-dataset budget); one
  point -> multimask output (``train_multimask="auto"``), more -> single output;
* ``box-jitter``: the ground-truth box, jittered by ``box_jitter_mode``: ``medsam`` (default,
  MedSAM's train_one_gpu.py ``NpyDataset``: each side moved OUTWARD by ``randint(0,
  box_jitter)`` pixels of the 1024-pixel input frame, clipped to the image), ``microsam``
  (micro-sam's ``ConvertToSamInputs._distort_boxes``: each side outward by ``uniform(0,
  box_jitter)`` x the box's side) or ``symmetric`` (the old rule: each side moved by
  ``uniform(-box_jitter, box_jitter)`` pixels of the original image);
* ``iterative``: micro-sam's scheme (``training/sam_trainer.py``): start from one positive point
  (multimask) or the box, then corrections (one positive from the false negatives, one negative
  from the false positives of the best-IoU prediction), with the previous logits fed back as the
  mask prompt with probability ``mask_feedback``; ``iterations`` counts the forward passes
  including the first (micro-sam's ``n_sub_iteration``); the loss is averaged over them;
* ``mixed``: per sample, one of the strategy, ``box-jitter`` and ``iterative``.

Loss (``loss=``): Dice + BCE, Dice + focal, or Dice alone, of the best multimask candidate, plus
``iou_weight`` x MSE of the IoU head. ``dice="soft"`` is ``1 - (2I + 1) / (P + T + 1)``;
``"squared"`` is MONAI's ``DiceLoss(squared_pred=True)`` (MedSAM, PointPrompt) and torch_em's
Dice (micro-sam): ``1 - (2I + 1e-5) / (P^2 + T^2 + 1e-5)``. Parts to train (``train=``):
``prompt_encoder``, ``mask_decoder``, ``image_encoder``, ``all``, ``lora`` (LoRA adapters in
the image encoder's attention plus the mask decoder), or any dotted submodule name; a wrong name
raises. When the image encoder is frozen, embeddings come from the embedding cache and the
encoder never runs during training.

Presets (``FinetuneConfig.from_preset`` / ``--preset``): ``pointprompt-study``, ``microsam`` and
``medsam``, each the reference's recipe (see :data:`PRESETS`); fields given explicitly override
the preset, and the run's config.yaml records the resolved values.

Rerunning on the same folder resumes, exactly: the data order depends on (seed, epoch), each
sample's prompts on (seed, epoch, sample) (on (seed, sample) with ``resample_prompts=False``),
and checkpoints hold every optimizer, scheduler and RNG state; a finished run is not retrained
(only its report is rewritten), and a different configuration in the same folder is a
ConfigError. An image that cannot be read, or whose mask is missing or empty, is skipped and
recorded in ``errors.jsonl``. Progress (one line per epoch) is logged at INFO. Under
``torchrun`` the loop runs DistributedDataParallel (gloo on CPU, nccl on CUDA).

Modules (everything public is re-exported here): :mod:`pointprompt.finetune_config` (the
configuration and the presets), :mod:`~pointprompt.finetune_data` (usable samples, the split,
the model frame), :mod:`~pointprompt.finetune_prompts` (training prompts and box rules),
:mod:`~pointprompt.finetune_losses`, :mod:`~pointprompt.finetune_step` (the differentiable
step, iterative prompting, the validation loss), :mod:`~pointprompt.finetune_model` (load,
trainable parts, evaluation, export), :mod:`~pointprompt.finetune_report` (log lines and the
report); this module is the run: the loop's settings and task, test scores, resuming.
The run is model-family agnostic through :class:`ModelFamily` (load, trainable parts, frames,
training step, cached embedding, export, report): :data:`SAM` by default; SAM 2 is
:data:`pointprompt.finetune_sam2.SAM2` (``segprompt finetune sam2``), the same loop on an adapter.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.devices import check_device
from segprompt.engine.loop import FitConfig, FitTask, checkpoint_from_parts, fit, load_best
from segprompt.engine.report import format_lr, plural
from segprompt.engine.runfolder import RunFolder, atomic_write_text
from segprompt.engine.training import init_distributed, param_groups, seed_everything
from segprompt.models.sam import SamSegmenter

from pointprompt.finetune_config import (
    BOX_JITTER_MODES,
    DICE_FORMS,
    EVAL_BOX,
    LOSSES,
    PRESETS,
    PROMPT_MODES,
    SAME,
    SELECT_ON,
    TRAIN_MULTIMASK,
    TRAIN_PARTS,
    FinetuneConfig,
    config_fields,
    preset_fields,
)
from pointprompt.finetune_data import FrameSample, _frames, image_key, load_split, skip_input, split_by_image, to_frame
from pointprompt.finetune_losses import squared_dice_loss, training_loss
from pointprompt.finetune_model import _load_model, _prepare_model, evaluate, export_checkpoint
from pointprompt.finetune_prompts import MEDSAM_FRAME, TrainPrompt, _box_prompt, _strategy_prompt, medsam_box, microsam_box
from pointprompt.finetune_report import HISTORY_COLUMNS, _epoch_line, _epoch_rows, _resume_line, _write_report, describe_model, history_columns
from pointprompt.finetune_step import VAL_KEY, SamTrainStep, validation_loss

log = logging.getLogger(__name__)

__all__ = [
    # the run
    "finetune_sam",
    "fit_config",
    "ModelFamily",
    "SAM",
    # finetune_config
    "FinetuneConfig",
    "PRESETS",
    "preset_fields",
    "config_fields",
    "PROMPT_MODES",
    "BOX_JITTER_MODES",
    "LOSSES",
    "DICE_FORMS",
    "SELECT_ON",
    "TRAIN_MULTIMASK",
    "EVAL_BOX",
    "SAME",
    "TRAIN_PARTS",
    # finetune_data
    "FrameSample",
    "to_frame",
    "image_key",
    "split_by_image",
    "load_split",
    "skip_input",
    # finetune_prompts
    "MEDSAM_FRAME",
    "TrainPrompt",
    "medsam_box",
    "microsam_box",
    # finetune_losses
    "squared_dice_loss",
    "training_loss",
    # finetune_step
    "VAL_KEY",
    "SamTrainStep",
    "validation_loss",
    # finetune_model
    "evaluate",
    "export_checkpoint",
    # finetune_report
    "HISTORY_COLUMNS",
    "history_columns",
    "describe_model",
    # engine.report's words, imported from here by finetune_cli / finetune_matrix
    "format_lr",
    "plural",
    # private helpers that finetune_matrix, the tests and the benchmarks import from here
    "_load_model",
    "_prepare_model",
    "_optimizer_params",
    "_box_prompt",
    "_strategy_prompt",
]


@dataclass(frozen=True)
class ModelFamily:
    """What :func:`finetune_sam`'s run needs from the model family it finetunes: :data:`SAM`
    here, SAM 2 in :mod:`pointprompt.finetune_sam2`. ``seg`` is the family's Segmenter (with
    ``.model``, the trained module).

    Attributes:
        name: for messages (``SAM``, ``SAM 2``).
        suite: the run folder's suite (a folder of another family is a ConfigError).
        best_file / last_file: the exported checkpoints' names in the run folder.
        load: ``load(cfg) -> seg``.
        prepare: ``prepare(seg, cfg) -> trainable parameter count`` (``cfg.train``, LoRA).
        frames: ``frames(samples, indices, seg, run) -> [FrameSample]`` in the model's input frame.
        train_step: ``train_step(seg, cfg, embeddings) -> module``, ``module(batch, epoch) -> (loss, parts)``.
        embedding: ``embedding(seg, image) -> tensor`` the step reads when the image encoder is frozen.
        export: ``export(seg, path) -> path``: the checkpoint in the family's official layout.
        report: ``report(run, result, history, cfg)``: writes report.md and summary.csv.
    """

    name: str
    suite: str
    best_file: str
    last_file: str
    load: Callable[[FinetuneConfig], Any]
    prepare: Callable[[Any, FinetuneConfig], int]
    frames: Callable[[Sequence[Sample], Sequence[int], Any, RunFolder | None], list[FrameSample]]
    train_step: Callable[[Any, FinetuneConfig, dict[str, torch.Tensor] | None], nn.Module]
    embedding: Callable[[Any, np.ndarray], torch.Tensor]
    export: Callable[[Any, Path], Path]
    report: Callable[[RunFolder, dict[str, Any], list[dict[str, Any]], FinetuneConfig], None]


#: segment-anything's SAM (module globals looked up at call time)
SAM = ModelFamily(
    name="SAM", suite="finetune-sam", best_file="sam_best.pth", last_file="sam_last.pth",
    load=lambda cfg: _load_model(cfg), prepare=lambda seg, cfg: _prepare_model(seg, cfg),
    frames=lambda samples, idx, seg, run: _frames(samples, idx, seg, run),
    train_step=lambda seg, cfg, embeddings: SamTrainStep(seg.model, cfg, embeddings),
    embedding=lambda seg, image: seg.encode(image).features["embeddings"].cpu(),
    export=lambda seg, path: export_checkpoint(seg, path), report=lambda *a: _write_report(*a),
)


def fit_config(cfg: FinetuneConfig, progress: bool = False) -> FitConfig:
    """The training loop's settings for ``cfg``: AdamW (Adam when the weight decay is 0),
    gradient clipping ``grad_clip``, early stopping and the best checkpoint on ``select_on`` over
    the trained epochs (the untrained baseline never counts)."""
    return FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, grad_clip=cfg.grad_clip or None, precision=cfg.precision, device=cfg.device,
        schedule=cfg.schedule, warmup_steps=cfg.warmup_steps, plateau_factor=cfg.plateau_factor, plateau_patience=cfg.plateau_patience,
        monitor=cfg.select_on, monitor_mode="min" if cfg.select_on == "val_loss" else "max", patience=cfg.early_stop,
        baseline_counts=False, checkpoint_every=cfg.checkpoint_every or None, max_steps=cfg.max_steps, progress=progress,
    )


def _optimizer_params(seg: SamSegmenter, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """AdamW groups: decay on every trained tensor (``decay_all``, the references' plain
    ``AdamW(model.parameters())``), or on weight matrices only (segprompt's default)."""
    if cfg.decay_all:
        return [{"params": [p for p in seg.model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    return param_groups(seg.model, cfg.weight_decay)


def _upgrade_checkpoint(cfg: FinetuneConfig) -> Any:
    """``last.pt`` as finetune_sam wrote it before the shared loop -> the loop's layout."""

    def upgrade(ck: dict[str, Any]) -> dict[str, Any]:
        es = ck["early_stopping"]
        return checkpoint_from_parts(
            fit_config(cfg), ck["model"], ck["optimizer"], ck["scheduler"], ck["scaler"], ck["rng"], ck["epoch"], ck["batch"],
            ck["global_step"], ck["history"], es.get("best"), es.get("bad_checks", 0),
        )

    return upgrade


def _fit_task(
    seg: SamSegmenter, cfg: FinetuneConfig, train: list[FrameSample], val: list[Sample], val_frames: list[FrameSample], out: Path, run: RunFolder | None, dist: Any, progress: bool,
    family: ModelFamily = SAM,
) -> FitTask:
    """The finetuning's part of the loop: the family's training step (DDP-wrapped under torchrun),
    validation through the real inference path (plus the validation loss for
    ``select_on="val_loss"``), epoch lines and the best-checkpoint export."""
    embeddings = None
    if cfg.encoder_frozen:
        from segprompt.cache import EmbeddingCache

        seg.cache = EmbeddingCache(out / "embeddings")
        embeddings = {fs.id: family.embedding(seg, fs.original.image) for fs in [*train, *val_frames]}
    step = family.train_step(seg, cfg, embeddings)
    trainer: nn.Module = step
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(step, find_unused_parameters=True, device_ids=[dist.local_rank] if cfg.device.startswith("cuda") else None)

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        seg.forget_weights_hash()
        m = evaluate(seg, val, cfg, run, progress=progress and dist.is_main)
        row = {"val_iou": m["iou"], "val_dice": m["dice"]}
        if cfg.select_on == "val_loss":
            row["val_loss"] = validation_loss(step, val_frames, cfg.batch_size)
        return row

    return FitTask(
        seg.model, lambda batch, epoch: trainer(batch, epoch), evaluate_epoch, params=_optimizer_params(seg, cfg),
        on_best=lambda row: family.export(seg, out / family.best_file), describe_epoch=lambda row: _epoch_line(out, row, cfg.epochs),
    )


def _recorded_test(run: RunFolder | None, which: str) -> dict[str, Any] | None:
    if run is None:
        return None
    rows = [r for r in run.results.rows() if r.get("kind") == "test" and r.get("model") == which]
    return {k: rows[-1][k] for k in ("iou", "dice", "n")} if rows else None


def _test_scores(seg: SamSegmenter, test: Sequence[Sample], cfg: FinetuneConfig, run: RunFolder, which: str, progress: bool, **extra: Any) -> dict[str, Any]:
    """Test IoU / Dice of the model as it is now (``which``: ``before`` or ``best``), evaluated
    once per run folder (a resumed or rerun run reads the recorded row)."""
    done = _recorded_test(run, which)
    if done is not None:
        return done
    seg.forget_weights_hash()
    m = evaluate(seg, test, cfg, run, progress=progress)
    run.results.append({"kind": "test", "model": which, **extra, **m})
    return m


def finetune_sam(
    cfg: FinetuneConfig, out: str | Path, resume: bool | None = None, dataset: SegmentationDataset | None = None, progress: bool = True, family: ModelFamily = SAM
) -> dict[str, Any]:
    """Run a finetuning run into ``out``, or resume the one there; returns the final metrics and paths.

    The best checkpoint is chosen on validation; ``result["test"]`` holds the test-split
    scores before finetuning and of that checkpoint (None with ``test_fraction=0``).
    Running again on the same folder continues where the run stopped (bit-identical to an
    uninterrupted run); a finished run is not retrained, only its report is rewritten.
    ``resume`` is ignored (kept for old callers: resuming is automatic). ``progress``: progress
    bars over images (shown only when a loop takes more than a few seconds); the per-epoch lines
    are logged at INFO either way. The loop itself is :func:`segprompt.engine.loop.fit`.
    ``family``: the model family (:data:`SAM`; SAM 2: :func:`pointprompt.finetune_sam2.finetune_sam2`).
    """
    check_device(cfg.device)
    dist = init_distributed(cfg.device)
    out = Path(out)
    finished = (out / "summary.json").exists()
    if not finished:  # a wrong --dataset, --root, --model or --checkpoint fails before the run folder is made
        from segprompt.data.registry import load_dataset

        dataset = dataset if dataset is not None else load_dataset(cfg.dataset, **cfg.dataset_kwargs)
        seed_everything(cfg.seed)
        seg = family.load(cfg)
    run = RunFolder(out, {"suite": family.suite, **asdict(cfg)}, volatile=("device", "max_steps")) if dist.is_main else None
    if finished:
        return _already_finished(run, out, cfg, family)
    n_trainable = family.prepare(seg, cfg)
    if run is not None:
        log.info("%s: %s trainable parameters (%s)", out.name, f"{n_trainable:,}", ", ".join(cfg.train))
    seg.model.to(cfg.device)
    samples, train_idx, val_idx, test_idx = load_split(cfg, dataset, run, progress=progress and dist.is_main)
    train = family.frames(samples, train_idx, seg, run)
    val = [samples[i] for i in val_idx]
    test = [samples[i] for i in test_idx]
    val_frames = family.frames(samples, val_idx, seg, run) if cfg.select_on == "val_loss" else []
    t0 = time.time()
    task = _fit_task(seg, cfg, train, val, val_frames, out, run, dist, progress, family)
    t_cache = time.time() - t0
    n_rows = len(run.results.rows()) if run is not None else 0
    test_before = _test_scores(seg, test, cfg, run, "before", progress) if test and run is not None else None
    if run is not None:
        shard = len(train) // dist.world_size
        task.on_start = lambda state: _announce(run, out, cfg, shard, state)
    fitted = fit(task, train, fit_config(cfg, progress and dist.is_main), out, run=run, dist=dist, upgrade=_upgrade_checkpoint(cfg))
    if fitted.interrupted:
        if run is not None:
            run.finish(len(run.results.rows()) - n_rows)
        return {"stopped_at_step": fitted.global_step, "out": str(out)}
    history = [{k: h.get(k) for k in history_columns(cfg)} for h in fitted.history]
    best_epoch = fitted.best_epoch if fitted.best_epoch is not None else history[-1]["epoch"]
    best_row = next(h for h in history if h["epoch"] == best_epoch)
    result = {
        "out": str(out), "trainable_parameters": n_trainable, "train_images": len(train), "val_images": len(val), "test_images": len(test),
        "baseline": history[0], "final": history[-1], "best_epoch": best_epoch, "selected_on": cfg.select_on, "best_val": fitted.best,
        "best_val_dice": best_row["val_dice"], "epochs_run": len(history) - 1, "stopped_early": fitted.stopped_early,
        "embedding_seconds": round(t_cache, 3), "checkpoint": str(out / family.best_file), "test": None,
    }
    if dist.is_main:
        family.export(seg, out / family.last_file)
        if test:
            load_best(task, out)  # the checkpoint chosen on validation
            after = _test_scores(seg, test, cfg, run, "best", progress, epoch=best_epoch)
            result["test"] = {"before": test_before, "best": after}
        atomic_write_text(out / "summary.json", json.dumps(result, indent=2))
        run.finish(len(run.results.rows()) - n_rows)
        family.report(run, result, history, cfg)
    return result


def _announce(run: RunFolder, out: Path, cfg: FinetuneConfig, shard: int, state: dict[str, Any] | None) -> None:
    """Say whether this is a new run or where it resumes (``state``: the loop's restored state)."""
    if state is None:
        run.announce(done=0, todo=cfg.epochs, unit="epoch" if cfg.epochs == 1 else "epochs")
        return
    steps_per_epoch = math.ceil(shard / cfg.batch_size)
    log.info(_resume_line(out, cfg, state["epoch"], state["batch"], steps_per_epoch, state["global_step"], bool(state.get("stopped_early"))))


def _already_finished(run: RunFolder | None, out: Path, cfg: FinetuneConfig, family: ModelFamily = SAM) -> dict[str, Any]:
    """The rerun of a finished run: nothing is trained or evaluated; the report is rewritten."""
    result = json.loads((out / "summary.json").read_text())
    if run is not None:
        early = ", stopped early" if result.get("stopped_early") else ""
        log.info("%s: already finished (%s%s); nothing to train, rewriting the report", out, plural(result["epochs_run"], "epoch"), early)
        run.finish(0)
        family.report(run, result, [{k: h.get(k) for k in history_columns(cfg)} for h in _epoch_rows(run)], cfg)
    return result
