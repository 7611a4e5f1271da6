"""Stage 1: encoder distillation, MobileSAM's "decoupled distillation".

The student's image encoder is trained so that its image embedding matches the frozen
teacher's, with a mean-squared-error loss on the embeddings; the mask decoder plays no part in
the loss (Zhang et al. 2023, "Faster Segment Anything: Towards Lightweight SAM for Mobile
Applications", arXiv:2306.14289, section 3: the image encoder is distilled alone, and the
result is "automatically compatible" with the teacher's mask decoder; the reproduction
liuguoyou/MobileSAM-pytorch ``train.py`` trains TinyViT on precomputed teacher features with an
MSE-type loss). Here:

* ``loss = mean((P(student(x)) - T(x))^2)`` over channels and grid positions, where ``T(x)`` is
  the teacher's embedding (B, C_t, g_t, g_t) and ``P`` the student's projection (identity for
  vit_t-like, a 1x1 convolution for sam-tiny). When the grids differ, the larger of the two
  is average-pooled (``adaptive_avg_pool2d``) to the smaller (normally the teacher's 64 x 64
  down to the student's grid). The reproduction uses ``sqrt(sum over channels, mean over rest)``;
  we use the plain mean of the squared error, as the paper states.
* The teacher is frozen, in eval mode, and never runs under autograd; its embeddings come from
  the run's embedding cache.
* The training loop is :func:`segprompt.engine.loop.fit` (data order, AdamW, schedule, AMP,
  atomic checkpoints, bit-exact resume); this module supplies only the step and the evaluation.

Held-out metrics (the epoch rows' ``val_mse`` and ``val_cosine``): per image, the MSE above and
the mean over grid positions of the cosine similarity between the C_t-vectors of student and
teacher; averaged over the held-out images. Epoch 0 is the student before training.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segprompt.distill.config import DistillConfig
from segprompt.distill.data import DistillImages, load_pairs
from segprompt.engine.loop import FitConfig, FitResult, FitTask, autocast, fit

log = logging.getLogger("segprompt.distill")


class DistillModel(nn.Module):
    """The trained module of stage 1: the student ``Sam`` and the loss-only projection.

    ``forward(pixels)``: float32 (B, 3, S, S) normalised, padded student input -> the student's
    embedding mapped to the teacher's channels, (B, C_t, g_s, g_s). Only the student's image
    encoder and the projection are trainable; the prompt encoder and mask decoder are frozen.
    """

    def __init__(self, student: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.projection = projection
        for p in self.student.parameters():
            p.requires_grad_(False)
        for p in [*self.student.image_encoder.parameters(), *self.projection.parameters()]:
            p.requires_grad_(True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projection(self.student.image_encoder(pixels))

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def match_grids(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of (B, C, g1, g1) / (B, C, g2, g2) to the smaller grid."""
    gp, gt = pred.shape[-2:], target.shape[-2:]
    if gp == gt:
        return pred, target
    size = (min(gp[0], gt[0]), min(gp[1], gt[1]))
    return F.adaptive_avg_pool2d(pred, size), F.adaptive_avg_pool2d(target, size)


def embedding_errors(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image MSE and mean cosine similarity of (B, C, g, g) embeddings -> two float32 (B,)."""
    pred, target = match_grids(pred.float(), target.float())
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    cos = F.cosine_similarity(pred, target, dim=1, eps=1e-8).mean(dim=(1, 2))
    return mse, cos


def distill_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MobileSAM's decoupled-distillation loss: the mean squared error of the embeddings."""
    pred, target = match_grids(pred.float(), target.float())
    return F.mse_loss(pred, target)


def fit_config(cfg: DistillConfig, progress: bool) -> FitConfig:
    """Stage 1's loop settings: lowest held-out MSE is best; no early stopping (MobileSAM trains
    a fixed number of epochs); epoch 0 (the untrained student) is evaluated for the report."""
    return FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, grad_clip=cfg.grad_clip or None,
        precision=cfg.precision, device=cfg.device, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps, monitor="val_mse", monitor_mode="min",
        patience=0, eval_before=True, baseline_counts=True, checkpoint_every=cfg.checkpoint_every or None, max_steps=cfg.max_steps, progress=progress,
    )


def encoder_task(model: DistillModel, teacher: Any, images: DistillImages, cfg: DistillConfig, run: Any) -> FitTask:
    """The stage-1 :class:`FitTask`: a batch is a list of dataset indices."""
    device = cfg.device

    def step(batch: Sequence[int], epoch: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        x, target = load_pairs(images, batch, model.student, teacher, device, run)
        if x is None:
            return None, {}
        return distill_loss(model(x), target), {}

    @torch.no_grad()
    def evaluate(epoch: int) -> dict[str, float]:
        was = model.training
        model.eval()
        mse, cos = [], []
        for start in range(0, len(images.val), cfg.batch_size):
            x, target = load_pairs(images, images.val[start : start + cfg.batch_size], model.student, teacher, device, run)
            if x is None:
                continue
            with autocast(cfg.precision, device):
                pred = model(x)
            m, c = embedding_errors(pred, target)
            mse += m.tolist()
            cos += c.tolist()
        model.train(was)
        if not mse:
            from segprompt.errors import DataError

            raise DataError(f"none of the {len(images.val)} held-out images could be read (see errors.jsonl)")
        return {"val_mse": float(sum(mse) / len(mse)), "val_cosine": float(sum(cos) / len(cos)), "val_images": len(mse)}

    return FitTask(model, step, evaluate, params=model.trainable(), row_extra={"stage": "encoder"}, describe_epoch=_epoch_line(cfg))


def _epoch_line(cfg: DistillConfig) -> Any:
    def line(row: dict[str, Any]) -> str:
        metrics = f"held-out embedding MSE {row['val_mse']:.5f}, cosine {row['val_cosine']:.4f}"
        if row["epoch"] == 0:
            return f"distill stage 1: before training: {metrics}"
        loss = "" if row["train_loss"] is None else f"train MSE {row['train_loss']:.5f}, "
        return f"distill stage 1: epoch {row['epoch']}/{cfg.epochs}: {loss}{metrics}, {row['seconds']:.1f} s"

    return line


def distill_encoder(model: DistillModel, teacher: Any, images: DistillImages, cfg: DistillConfig, out: Any, run: Any, on_start: Any = None, progress: bool = True) -> tuple[FitTask, FitResult]:
    """Run (or resume) stage 1 into ``out`` (checkpoints/last.pt, best.pt; epoch rows in ``run``)."""
    model.to(cfg.device)
    task = encoder_task(model, teacher, images, cfg, run)
    task.on_start = on_start
    return task, fit(task, images.train, fit_config(cfg, progress), out, run=run)


__all__ = ["DistillModel", "distill_encoder", "distill_loss", "embedding_errors", "encoder_task", "fit_config", "match_grids"]
