"""Generic (prompt-free) inference over object queries: Mask2Former's rules.

* :func:`semantic_scores`: ``einsum("qk,qhw->khw", softmax(classes)[..., :-1], sigmoid(masks))``
  (Mask2Former ``semantic_inference``);
* :func:`panoptic_inference`: queries whose best class (not no-object) has probability above
  ``threshold``; each pixel goes to the kept query of highest ``prob x sigmoid(mask)``; a
  segment is kept when its pixels (mask >= 0.5 and won) are at least ``overlap`` of the query's
  own mask (Mask2Former ``panoptic_inference``, ``object_mask_threshold`` / ``overlap_threshold``).
"""

from __future__ import annotations

import torch

__all__ = ["semantic_scores", "panoptic_inference", "semantic_from_segments"]


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """class_logits (Q, K + 1) (last = no object), mask_logits (Q, H, W) -> (K, H, W) scores."""
    return torch.einsum("qk,qhw->khw", class_logits.softmax(-1)[:, :-1], mask_logits.sigmoid())


def panoptic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor, threshold: float = 0.5, overlap: float = 0.8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (masks (N, H, W) bool non-overlapping, classes (N,) int64, scores (N,) float32)."""
    probs = class_logits.softmax(-1)
    scores, labels = probs[:, :-1].max(-1)
    keep = scores > threshold
    h, w = mask_logits.shape[-2:]
    if not keep.any():
        return torch.zeros((0, h, w), dtype=torch.bool), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    s, lab, m = scores[keep], labels[keep], mask_logits[keep].sigmoid()
    winner = (s[:, None, None] * m).argmax(0)
    out_masks, out_cls, out_scores = [], [], []
    for k in range(len(s)):
        own = m[k] >= 0.5
        area = int(own.sum())
        won = (winner == k) & own
        if area == 0 or int(won.sum()) < overlap * area:
            continue
        out_masks.append(won.cpu())
        out_cls.append(int(lab[k]))
        out_scores.append(float(s[k]))
    if not out_masks:
        return torch.zeros((0, h, w), dtype=torch.bool), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    return torch.stack(out_masks), torch.tensor(out_cls, dtype=torch.int64), torch.tensor(out_scores, dtype=torch.float32)


def semantic_from_segments(masks: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(H, W) int64 label map: each segment's class, -1 where no segment lies."""
    h, w = masks.shape[-2:]
    out = torch.full((h, w), -1, dtype=torch.int64)
    for m, c in zip(masks, classes):
        out[m] = int(c)
    return out
