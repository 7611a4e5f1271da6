"""The differentiable training step (:class:`SamTrainStep`: a batch of frame samples -> loss,
with the prompt modes and micro-sam's iterative prompting) and the validation loss computed with
it. Re-exported by :mod:`pointprompt.finetune`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pointprompt.finetune_config import FinetuneConfig
from pointprompt.finetune_data import FrameSample
from pointprompt.finetune_losses import training_loss
from pointprompt.finetune_prompts import TrainPrompt, _box_prompt, _rng, _strategy_prompt
from pointprompt.strategies import create_strategy


#: the prompt key of validation-loss passes (the same prompts every epoch)
VAL_KEY = "val"


class SamTrainStep(nn.Module):
    """``forward(batch, epoch) -> loss`` for a batch of :class:`FrameSample`; wrap it in DDP for
    several GPUs. ``epoch`` keys each sample's prompts; :data:`VAL_KEY` gives the fixed
    prompts of the validation loss."""

    def __init__(self, sam: nn.Module, cfg: FinetuneConfig, embeddings: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        self.sam = sam
        self.cfg = cfg
        self.embeddings = embeddings  # image id -> (1, C, h, w) when the encoder is frozen
        self.lowres = 4 * sam.prompt_encoder.image_embedding_size[0]

    def _embed(self, batch: Sequence[FrameSample]) -> torch.Tensor:
        dev = next(self.sam.parameters()).device
        if self.embeddings is not None:
            return torch.cat([self.embeddings[fs.id] for fs in batch]).to(dev)
        x = torch.cat([self.sam.preprocess(torch.from_numpy(np.array(fs.image)).permute(2, 0, 1)[None].to(dev)) for fs in batch])
        return self.sam.image_encoder(x)

    def _decode(self, emb: torch.Tensor, p: TrainPrompt, mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        dev = emb.device
        pe = self.sam.prompt_encoder
        points = None
        if len(p.coords):
            points = (torch.as_tensor(p.coords[None], dtype=torch.float, device=dev), torch.as_tensor(p.labels[None], dtype=torch.int, device=dev))
        box = torch.as_tensor(p.box[None], dtype=torch.float, device=dev) if p.box is not None else None
        sparse, dense = pe(points=points, boxes=box, masks=mask_input)
        return self.sam.mask_decoder(
            image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=p.multimask
        )

    def _loss(self, logits: torch.Tensor, iou: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        return training_loss(logits, iou, target, loss=cfg.loss, dice=cfg.dice, iou_weight=cfg.iou_weight)

    def sample_rng(self, epoch: Any, fs: FrameSample) -> np.random.Generator:
        """The prompts' generator of ``fs`` in ``epoch``: keyed by (seed, epoch, sample), or by
        (seed, sample) alone when prompts are drawn once per image (``resample_prompts=False``)."""
        if epoch != VAL_KEY and not self.cfg.resample_prompts:
            return _rng(self.cfg.seed, "once", fs.index)
        return _rng(self.cfg.seed, epoch, fs.index)

    def forward(self, batch: Sequence[FrameSample], epoch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        emb = self._embed(batch)
        losses, logs = [], []
        for i, fs in enumerate(batch):
            rng = self.sample_rng(epoch, fs)
            target = torch.from_numpy(fs.lowres)[None].to(emb.device)
            mode = cfg.prompts
            if mode == "mixed":
                mode = ("strategy", "box-jitter", "iterative")[int(rng.integers(0, 3))]
            if mode == "iterative":
                loss, log_ = self._iterative(emb[i : i + 1], fs, rng, target)
            else:
                if mode == "box-jitter":
                    p = _box_prompt(fs, rng, cfg.box_jitter, cfg.box_jitter_mode)
                else:
                    p = _strategy_prompt(fs, rng, cfg.placement_strategy, cfg.n_positive, cfg.n_negative, cfg.train_multimask)
                logits, iou = self._decode(emb[i : i + 1], p, None)
                loss, log_ = self._loss(logits, iou, target)
            losses.append(loss)
            logs.append(log_)
        return torch.stack(losses).mean(), {k: float(np.mean([l[k] for l in logs])) for k in logs[0]}

    def _iterative(self, emb: torch.Tensor, fs: FrameSample, rng: np.random.Generator, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """micro-sam's iterative prompting (``sam_trainer.py: _compute_iterative_loss``):
        ``iterations`` forward passes, the first included; after each but the last, one
        correction from the errors of the best-IoU candidate and, with probability
        ``mask_feedback``, its logits as the next mask prompt; the loss is their mean.
        ``refine_passes`` more passes (SAM's iterations without new points), each at a random
        place after the first, decode the same prompts with the previous logits as the mask prompt."""
        cfg = self.cfg
        corr = create_strategy("microsam")
        if rng.random() < 0.5:
            p = _strategy_prompt(fs, rng, "random", 1, 0, cfg.train_multimask)
        else:
            p = _box_prompt(fs, rng, cfg.box_jitter, cfg.box_jitter_mode)
        passes = cfg.iterations + cfg.refine_passes
        refine_at = set(rng.choice(np.arange(1, passes), cfg.refine_passes, replace=False).tolist()) if cfg.refine_passes else set()
        h, w = fs.mask.shape
        mask_input = None
        losses, logs = [], []
        for it in range(passes):
            logits, iou = self._decode(emb, p, mask_input)
            loss, log_ = self._loss(logits, iou, target)
            losses.append(loss)
            logs.append(log_)
            if it == passes - 1:
                break
            best = int(iou[0].argmax()) if logits.shape[1] > 1 else 0
            chosen = logits[:, best : best + 1].detach()
            if it + 1 in refine_at:  # the same prompts, one mask head, its own logits back
                p, mask_input = TrainPrompt(p.coords, p.labels, p.box, False), chosen
                continue
            up = F.interpolate(chosen, (self.sam.image_encoder.img_size,) * 2, mode="bilinear", align_corners=False)[0, 0, :h, :w]
            pred = (up > 0).cpu().numpy()
            new = corr.correct(fs.mask, pred, rng)
            p = TrainPrompt(np.concatenate([p.coords, new.coords]), np.concatenate([p.labels, new.labels]), p.box, False)
            mask_input = chosen if rng.random() < cfg.mask_feedback else None
        return torch.stack(losses).mean(), {k: float(np.mean([l[k] for l in logs])) for k in logs[0]}


@torch.no_grad()
def validation_loss(step: SamTrainStep, frames: Sequence[FrameSample], batch_size: int = 1) -> float:
    """Mean training loss per validation image, with each image's fixed validation prompts
    (PointPrompt's criterion for the best checkpoint and early stopping)."""
    was_training = step.sam.training
    step.sam.eval()
    total = 0.0
    for b in range(0, len(frames), batch_size):
        batch = frames[b : b + batch_size]
        loss, _ = step(batch, VAL_KEY)
        total += float(loss) * len(batch)
    step.sam.train(was_training)
    return total / max(1, len(frames))
