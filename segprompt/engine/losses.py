"""Segmentation losses on logits (torch): Dice, BCE, focal, MONAI's DiceCE and SAM's multimask objective."""

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


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``monai.losses.DiceCELoss(sigmoid=True)`` for one-channel binary logits, as a scalar.

    MONAI's defaults and semantics: ``include_background=True`` (the one channel counts),
    ``batch=False`` (a Dice per mask, then the mean over masks), ``squared_pred=False``, Dice
    ``1 - (2 |p t| + smooth_nr) / (|p| + |t| + smooth_dr)`` on ``sigmoid(logits)``; the CE part of
    one channel is ``BCEWithLogitsLoss`` (mean over every pixel). An empty target therefore costs
    a Dice loss close to 1 unless the prediction is empty too (the smoothing is 1e-5, not 1).

    Args:
        logits, target: (..., H, W), the same shape (e.g. (B, 1, H, W)); target 0/1.
        valid: optional (..., H, W), 1 = counted: pixels outside it count for neither term (an
            extension; MONAI has no ignore mask here). All ones equals no mask.
    """
    logits = logits.float()
    target = target.float()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = logits.sigmoid()
    if valid is not None:
        valid = valid.float()
        prob, target, ce = prob * valid, target * valid, ce * valid
        ce = ce.flatten(-2).sum(-1) / valid.flatten(-2).sum(-1).clamp(min=1.0)
    else:
        ce = ce.flatten(-2).mean(-1)
    prob, tgt = prob.flatten(-2), target.flatten(-2)
    dice = 1.0 - (2.0 * (prob * tgt).sum(-1) + smooth_nr) / (prob.sum(-1) + tgt.sum(-1) + smooth_dr)
    return lambda_dice * dice.mean() + lambda_ce * ce.mean()


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
