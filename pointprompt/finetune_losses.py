"""The finetuning loss: Dice (soft or squared) plus BCE or focal of the best multimask
candidate, plus the IoU head's MSE (:func:`training_loss`). Re-exported by
:mod:`pointprompt.finetune`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segprompt.engine.losses import bce_loss, focal_loss, mask_iou, sam_loss


def squared_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Dice loss with squared denominators per mask: (..., H, W) -> (...); MONAI's
    ``DiceLoss(sigmoid=True, squared_pred=True)`` (MedSAM, PointPrompt; smooth 1e-5) and, up to
    its 1e-7 clamp instead of smoothing, torch_em's ``DiceLoss`` (micro-sam)."""
    prob = logits.sigmoid().flatten(-2)
    tgt = target.float().flatten(-2)
    return 1.0 - (2.0 * (prob * tgt).sum(-1) + smooth) / ((prob * prob).sum(-1) + (tgt * tgt).sum(-1) + smooth)


def training_loss(
    logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, loss: str = "dice+bce", dice: str = "soft", iou_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """The mask loss of the best of the K candidates + ``iou_weight`` x MSE of the IoU head.

    ``logits`` (B, K, H, W), ``iou_pred`` (B, K), ``target`` (B, H, W). ``loss``: ``dice+bce``,
    ``dice+focal`` or ``dice``; ``dice``: ``soft`` (segprompt's :func:`sam_loss`) or ``squared``.
    """
    if dice == "soft":
        return sam_loss(logits, iou_pred, target, bce_weight=0.0 if loss == "dice" else 1.0, iou_weight=iou_weight, use_focal=loss == "dice+focal")
    tgt = target[:, None].expand_as(logits)
    per_mask = squared_dice_loss(logits, tgt)
    if loss == "dice+bce":
        per_mask = per_mask + bce_loss(logits, tgt)
    elif loss == "dice+focal":
        per_mask = per_mask + 20.0 * focal_loss(logits, tgt)
    best = per_mask.min(dim=1).values
    true_iou = mask_iou(logits, tgt)
    iou_mse = F.mse_loss(iou_pred, true_iou)
    total = best.mean() + iou_weight * iou_mse
    return total, {"mask": float(best.detach().mean()), "iou_mse": float(iou_mse.detach()), "iou": float(true_iou.max(dim=1).values.mean())}
