"""Segmentation losses on logits (torch): Dice, BCE, focal, and SAM's multimask objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per mask: logits and target (..., H, W) -> (...) in [0, 1]."""
    prob = logits.sigmoid().flatten(-2)
    tgt = target.float().flatten(-2)
    inter = (prob * tgt).sum(-1)
    return 1.0 - (2.0 * inter + eps) / (prob.sum(-1) + tgt.sum(-1) + eps)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy per mask: (..., H, W) -> (...)."""
    return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").flatten(-2).mean(-1)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.) per mask, mean over pixels: (..., H, W) -> (...)."""
    tgt = target.float()
    ce = F.binary_cross_entropy_with_logits(logits, tgt, reduction="none")
    p = logits.sigmoid()
    p_t = p * tgt + (1 - p) * (1 - tgt)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * tgt + (1 - alpha) * (1 - tgt)) * loss
    return loss.flatten(-2).mean(-1)


@torch.no_grad()
def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with the target per mask: (..., H, W) -> (...); empty vs empty = 1."""
    pred = logits > 0
    tgt = target.bool()
    inter = (pred & tgt).flatten(-2).sum(-1).float()
    union = (pred | tgt).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    iou_weight: float = 1.0,
    use_focal: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM's training objective for a batch of prompt sets.

    Args:
        logits: (B, K, H, W) mask logits (K = 1, or 3 for multimask output).
        iou_pred: (B, K) predicted IoU of each candidate.
        target: (B, H, W) bool/float ground truth at the logits' resolution.

    The mask loss (Dice + BCE or focal) is taken for the best of the K candidates only (the
    minimum over K, as in SAM and micro-sam); the IoU head regresses the true IoU of every
    candidate with MSE. Returns the scalar loss and its parts (floats) for logging.
    """
    tgt = target[:, None].expand_as(logits)
    pixel = focal_loss(logits, tgt) * 20.0 if use_focal else bce_loss(logits, tgt)
    per_mask = dice_weight * dice_loss(logits, tgt) + bce_weight * pixel  # (B, K)
    best = per_mask.min(dim=1).values
    true_iou = mask_iou(logits, tgt)
    iou_mse = F.mse_loss(iou_pred, true_iou)
    loss = best.mean() + iou_weight * iou_mse
    return loss, {"mask": float(best.detach().mean()), "iou_mse": float(iou_mse.detach()), "iou": float(true_iou.max(dim=1).values.mean())}
