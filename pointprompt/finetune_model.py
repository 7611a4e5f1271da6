"""The SAM being finetuned: loaded from ``model`` / ``checkpoint``, its ``train=`` parts made
trainable (LoRA injected for ``lora``), evaluated through the real inference path
(:func:`evaluate`) and exported in segment-anything's layout (:func:`export_checkpoint`).
Re-exported by :mod:`pointprompt.finetune`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from segprompt.data.sample import Sample
from segprompt.engine.runfolder import RunFolder
from segprompt.engine.training import set_trainable
from segprompt.errors import ConfigError, DataError, PromptError
from segprompt.models.sam import SamSegmenter

from pointprompt.finetune_config import EVAL_BOX, TRAIN_PARTS, FinetuneConfig
from pointprompt.finetune_data import skip_input


def _load_model(cfg: FinetuneConfig) -> SamSegmenter:
    from segprompt.models import create_segmenter

    if cfg.checkpoint is not None:
        seg = create_segmenter("sam", checkpoint=cfg.checkpoint, device=cfg.device)
    else:
        seg = create_segmenter(cfg.model, device=cfg.device)
    if not isinstance(seg, SamSegmenter):
        raise ConfigError(f"finetuning needs a SAM model; --model {cfg.model} is a {type(seg).__name__}")
    return seg


def _prepare_model(seg: SamSegmenter, cfg: FinetuneConfig) -> int:
    from segprompt.backbones.lora import inject_lora

    extra: list[nn.Parameter] = []
    modules: list[str] = []
    for part in cfg.train:
        modules += TRAIN_PARTS.get(part, [part])
        if part == "lora":
            extra += inject_lora(seg.model, cfg.lora_targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
    return set_trainable(seg.model, sorted(set(modules)), extra)


def export_checkpoint(seg: SamSegmenter, path: str | Path) -> Path:
    """Write the model in segment-anything's state-dict layout (LoRA merged): .pth or .safetensors."""
    from segprompt.backbones.lora import merge_lora
    from segprompt.models.sam_arch import save_sam

    model = merge_lora(copy.deepcopy(seg.model)).cpu()
    return save_sam(model, path, seg.arch)


@torch.no_grad()
def evaluate(seg: SamSegmenter, samples: Sequence[Sample], cfg: FinetuneConfig, run: RunFolder | None = None, progress: bool = False) -> dict[str, float]:
    """Mean IoU and Dice of ``eval_strategy`` prompts (``box``: the ground-truth box) on
    ``samples`` at original resolution, with the ``eval_multimask`` policy.

    An image that cannot be evaluated is skipped (recorded in ``run``'s errors.jsonl); ``n`` is
    the number of images evaluated.
    """
    from pointprompt.bench import PointBenchConfig, evaluate_image

    if cfg.eval_strategy == EVAL_BOX:
        def score(s: Sample) -> list[dict[str, Any]]:
            return [_box_scores(seg, s, cfg.eval_multimask)]
    else:
        bench = PointBenchConfig(datasets=["eval"], models=["sam"], strategies=[cfg.eval_strategy], n_positive=cfg.eval_positive, n_negative=cfg.eval_negative, steps=1, seed=cfg.seed, multimask=cfg.eval_multimask)

        def score(s: Sample) -> list[dict[str, Any]]:
            return evaluate_image(bench, seg, "sam", "eval", s, (cfg.eval_positive, cfg.eval_negative), 1)

    was_training = seg.model.training
    seg.model.eval()
    rows = []
    for s in tqdm(samples, desc="evaluating", unit="image", disable=not progress, leave=False, delay=2.0):
        try:
            rows += score(s)
        except (DataError, PromptError) as exc:
            skip_input(run, s.id, exc, stage="evaluation")
    seg.model.train(was_training)
    if not rows:
        raise DataError(f"none of the {len(samples)} evaluation images could be evaluated (see errors.jsonl)")
    return {"iou": float(np.mean([r["iou"] for r in rows])), "dice": float(np.mean([r["dice"] for r in rows])), "n": len(rows)}


def _box_scores(seg: SamSegmenter, sample: Sample, multimask: str) -> dict[str, float]:
    """IoU and Dice of the model prompted with the tight ground-truth box."""
    from segprompt.metrics import dice, iou
    from segprompt.prompts import Box, PromptSet

    gt = np.asarray(sample.mask, bool)
    if not gt.any():
        raise PromptError("empty ground-truth mask: no box can be drawn (image skipped)")
    mask = seg.segment(seg.encode(sample.image), PromptSet(box=Box.from_mask(gt)), multimask=multimask, targets=gt).masks[0, 0]
    return {"iou": float(iou(mask, gt)), "dice": float(dice(mask, gt))}
