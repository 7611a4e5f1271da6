"""Hungarian matching and the training losses of the universal decoder (Mask2Former / SEEM rules).

Plain PyTorch + :func:`scipy.optimize.linear_sum_assignment`, no detectron2, any device, float32
math even under autocast. Followed, and re-written (nothing copied):

* ``point_sample`` / ``uncertain_point_coords``: detectron2
  ``projects/PointRend/point_rend/point_features.py`` (``point_sample``,
  ``get_uncertain_point_coords_with_randomness``) with Mask2Former's ``calculate_uncertainty``
  (``-|logit|``);
* ``mask_losses`` / ``pairwise_mask_costs``: Mask2Former ``mask2former/modeling/criterion.py``
  (``sigmoid_ce_loss``, ``dice_loss``, ``loss_masks``) and ``mask2former/modeling/matcher.py``
  (``batch_sigmoid_ce_loss``, ``batch_dice_loss``);
* ``hungarian_match``: Mask2Former ``HungarianMatcher.memory_efficient_forward``;
* ``set_criterion``: Mask2Former ``SetCriterion`` (``loss_labels`` with ``empty_weight``,
  ``loss_masks``, auxiliary layers matched separately);
* ``text_class_logits``: SEEM ``modeling/language/vlpencoder.py`` ``compute_similarity``;
* ``prompt_losses``: SAM's training rule (min loss over the candidate masks, MSE on the IoU head).

.. code-block:: python

    layers = [{"class_logits": c, "masks": m} for c, m in zip(aux_cls + [cls], aux_masks + [masks])]
    targets = [{"classes": torch.tensor([3, 1]), "masks": gt}]          # gt (2, H, W) {0, 1}
    losses = set_criterion(layers, targets)                              # losses["loss"].backward()
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "LossWeights",
    "MatchWeights",
    "hungarian_match",
    "mask_losses",
    "pairwise_mask_costs",
    "point_sample",
    "prompt_losses",
    "set_criterion",
    "text_class_logits",
    "uncertain_point_coords",
]

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def _fp32(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device`` (our math stays float32)."""
    if device.type not in _AUTOCAST_DEVICES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def _rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) draws from ``generator`` (on its own device), moved to ``device``."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def point_sample(x: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of ``x`` (N, C, H, W) at ``coords`` (N, P, 2) -> (N, C, P) float32.

    ``coords`` are in [0, 1] as (x, y) (x = column), pixel centres at (j + 0.5) / W
    (``align_corners=False``); outside the image the map is zero (grid_sample's default, as detectron2).
    """
    if x.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2 or coords.shape[0] != x.shape[0]:
        raise ValueError(f"point_sample wants x (N, C, H, W) and coords (N, P, 2), got {tuple(x.shape)}, "
                         f"{tuple(coords.shape)}")
    with _fp32(x.device):
        grid = 2.0 * coords.float().unsqueeze(2) - 1.0
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(3)


def uncertain_point_coords(logits: Tensor, num_points: int, oversample: float = 3.0, importance: float = 0.75,
                           generator: torch.Generator | None = None) -> Tensor:
    """PointRend / Mask2Former importance sampling: ``logits`` (N, 1, h, w) -> coords (N, num_points, 2).

    Draws ``int(num_points * oversample)`` uniform candidates (first draw from ``generator``), keeps
    the ``int(importance * num_points)`` most uncertain (uncertainty ``-|logit|`` of the bilinearly
    sampled logit), then appends fresh uniform points (second draw) up to ``num_points``. No grad.
    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be (N, 1, h, w), got {tuple(logits.shape)}")
    if oversample < 1 or not 0.0 <= importance <= 1.0:
        raise ValueError(f"need oversample >= 1 and 0 <= importance <= 1, got {oversample}, {importance}")
    n = logits.shape[0]
    num_sampled = int(num_points * oversample)
    num_uncertain = int(importance * num_points)
    with torch.no_grad():
        candidates = _rand((n, num_sampled, 2), logits.device, generator)
        uncertainty = -point_sample(logits.detach(), candidates)[:, 0].abs()
        idx = uncertainty.topk(num_uncertain, dim=1).indices
        coords = torch.gather(candidates, 1, idx[..., None].expand(-1, -1, 2))
        if num_points > num_uncertain:
            coords = torch.cat([coords, _rand((n, num_points - num_uncertain, 2), logits.device, generator)], 1)
    return coords


def _sigmoid_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mask2Former ``sigmoid_ce_loss`` per pair: mean BCE over the points, (N, P) -> (N,)."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)


def _dice(logits: Tensor, labels: Tensor) -> Tensor:
    """Mask2Former ``dice_loss`` per pair (smoothing 1 on both sides), (N, P) -> (N,)."""
    p = logits.sigmoid()
    return 1.0 - (2.0 * (p * labels).sum(1) + 1.0) / (p.sum(1) + labels.sum(1) + 1.0)


def mask_losses(pred_logits: Tensor, targets: Tensor, num_points: int = 12544, oversample: float = 3.0,
                importance: float = 0.75, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Per-pair (bce (N,), dice (N,)) of ``pred_logits`` (N, h, w) against ``targets`` (N, H, W) {0, 1}.

    Both losses read the same points, chosen without grad by :func:`uncertain_point_coords` on the
    prediction; the targets (any resolution) are sampled bilinearly there (Mask2Former ``loss_masks``).
    """
    if pred_logits.dim() != 3 or targets.dim() != 3 or pred_logits.shape[0] != targets.shape[0]:
        raise ValueError(f"mask_losses wants (N, h, w) and (N, H, W), got {tuple(pred_logits.shape)}, "
                         f"{tuple(targets.shape)}")
    with _fp32(pred_logits.device):
        pred = pred_logits.float()[:, None]
        coords = uncertain_point_coords(pred, num_points, oversample, importance, generator)
        with torch.no_grad():
            labels = point_sample(targets.to(pred.device).float()[:, None], coords)[:, 0]
        logits = point_sample(pred, coords)[:, 0]
        return _sigmoid_ce(logits, labels), _dice(logits, labels)


def pairwise_mask_costs(pred_logits: Tensor, targets: Tensor, num_points: int = 12544,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Matching costs (bce (Q, M), dice (Q, M)) on one set of ``num_points`` uniform points shared by all.

    ``pred_logits`` (Q, h, w), ``targets`` (M, H, W); Mask2Former's ``batch_sigmoid_ce_loss`` /
    ``batch_dice_loss`` (the points are the generator's one draw of shape (1, num_points, 2)).
    """
    if pred_logits.dim() != 3 or targets.dim() != 3:
        raise ValueError(f"want (Q, h, w) and (M, H, W), got {tuple(pred_logits.shape)}, {tuple(targets.shape)}")
    q, m, device = pred_logits.shape[0], targets.shape[0], pred_logits.device
    with _fp32(device):
        coords = _rand((1, num_points, 2), device, generator)
        p = point_sample(pred_logits.float()[:, None], coords.expand(q, -1, -1))[:, 0]
        t = point_sample(targets.to(device).float()[:, None], coords.expand(m, -1, -1))[:, 0]
        # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
        bce = (F.softplus(-p) @ t.T + F.softplus(p) @ (1.0 - t).T) / num_points
        s = p.sigmoid()
        dice = 1.0 - (2.0 * s @ t.T + 1.0) / (s.sum(1)[:, None] + t.sum(1)[None, :] + 1.0)
    return bce, dice


def text_class_logits(query_embed: Tensor, text_embed: Tensor, logit_scale: Tensor | float,
                      no_object_logit: Tensor | float | None = None) -> Tensor:
    """Classes through the text space: cos(query, text) x ``logit_scale`` -> (..., Q, K) [(..., Q, K+1)].

    ``query_embed`` (..., Q, D), ``text_embed`` (K, D); both are L2-normalised here (SEEM's
    ``v / (|v| + 1e-7)``). ``logit_scale`` multiplies as given: SEEM keeps a log-scale parameter and
    passes ``logit_scale.exp()``. ``no_object_logit`` (scalar or (..., Q)) is appended as column K.
    """
    if text_embed.dim() != 2 or query_embed.shape[-1] != text_embed.shape[-1]:
        raise ValueError(f"want query (..., Q, D) and text (K, D), got {tuple(query_embed.shape)}, "
                         f"{tuple(text_embed.shape)}")
    with _fp32(query_embed.device):
        q = query_embed.float()
        t = text_embed.to(q.device).float()
        q = q / (q.norm(dim=-1, keepdim=True) + 1e-7)
        t = t / (t.norm(dim=-1, keepdim=True) + 1e-7)
        scale = logit_scale.float() if isinstance(logit_scale, Tensor) else float(logit_scale)
        logits = (q @ t.T) * scale
        if no_object_logit is not None:
            extra = torch.as_tensor(no_object_logit, device=q.device).float()
            logits = torch.cat([logits, extra.expand(logits.shape[:-1]).unsqueeze(-1)], -1)
    return logits


@dataclass(frozen=True)
class MatchWeights:
    """Matching cost weights (SEEM / Mask2Former: class 2, mask 5, dice 5)."""

    cls: float = 2.0
    mask: float = 5.0
    dice: float = 5.0


@dataclass(frozen=True)
class LossWeights:
    """Loss weights (SEEM / Mask2Former) plus the no-object CE weight (``eos_coef``) and SAM's IoU weight."""

    cls: float = 2.0
    mask: float = 5.0
    dice: float = 5.0
    no_object: float = 0.1
    iou: float = 1.0


def _empty_index(device: torch.device) -> tuple[Tensor, Tensor]:
    return torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64, device=device)


@torch.no_grad()
def hungarian_match(class_logits: Tensor, pred_masks: Tensor, tgt_classes: Tensor, tgt_masks: Tensor,
                    weights: MatchWeights = MatchWeights(), num_points: int = 12544,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One image's optimal assignment -> (query_idx, target_idx), int64, min(Q, M) pairs, query_idx sorted.

    ``class_logits`` (Q, K+1), ``pred_masks`` (Q, h, w), ``tgt_classes`` (M,) in [0, K),
    ``tgt_masks`` (M, H, W). Cost = -cls * softmax prob of the target class + mask * bce + dice * dice
    (Mask2Former ``HungarianMatcher``); NaN / inf costs are clamped so that scipy never fails.
    """
    q, m = pred_masks.shape[0], tgt_masks.shape[0]
    if class_logits.dim() != 2 or class_logits.shape[0] != q or tgt_classes.shape != (m,):
        raise ValueError(f"want class_logits (Q, K+1), pred_masks (Q, h, w), classes (M,), masks (M, H, W); got "
                         f"{tuple(class_logits.shape)}, {tuple(pred_masks.shape)}, {tuple(tgt_classes.shape)}, "
                         f"{tuple(tgt_masks.shape)}")
    device = class_logits.device
    if q == 0 or m == 0:
        return _empty_index(device)
    with _fp32(device):
        prob = class_logits.float().softmax(-1)[:, tgt_classes.to(device).long()]
        bce, dice = pairwise_mask_costs(pred_masks, tgt_masks, num_points, generator)
        cost = -weights.cls * prob + weights.mask * bce.to(device) + weights.dice * dice.to(device)
    cost = torch.nan_to_num(cost, nan=1e10, posinf=1e10, neginf=-1e10)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return (torch.as_tensor(rows, dtype=torch.int64, device=device),
            torch.as_tensor(cols, dtype=torch.int64, device=device))


def _num_masks(targets: list[dict], device: torch.device) -> float:
    """Mask2Former's normaliser: target masks in the batch, averaged over DDP ranks, at least 1."""
    n = torch.tensor(float(sum(int(t["classes"].shape[0]) for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n.item()), 1.0)


def _class_loss(logits: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]],
                no_object: float) -> Tensor:
    """CE over K+1 classes, unmatched queries labelled no-object (index K) with weight ``no_object``."""
    b, q, k1 = logits.shape
    labels = torch.full((b, q), k1 - 1, dtype=torch.int64, device=logits.device)
    for i, (qi, ti) in enumerate(indices):
        classes = targets[i]["classes"].to(logits.device).long()
        if classes.numel() and (classes.min() < 0 or classes.max() >= k1 - 1):
            raise ValueError(f"target classes must lie in [0, {k1 - 1}), got {classes.tolist()}")
        labels[i, qi] = classes[ti]
    weight = torch.ones(k1, device=logits.device)
    weight[-1] = no_object
    return F.cross_entropy(logits.float().transpose(1, 2), labels, weight=weight)


def _matched_mask_losses(masks: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]],
                         num_masks: float, num_points: int, oversample: float, importance: float,
                         generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Sum over matched pairs of (bce, dice) / ``num_masks``; images batched when their targets share a size."""
    preds = [masks[i][qi] for i, (qi, _) in enumerate(indices)]
    tgts = [targets[i]["masks"].to(masks.device)[ti] for i, (_, ti) in enumerate(indices)]
    if sum(p.shape[0] for p in preds) == 0:
        zero = masks.float().sum() * 0.0  # keeps the graph (DDP wants every output used)
        return zero, zero
    groups = [(torch.cat(preds), torch.cat(tgts))] if len({t.shape[1:] for t in tgts}) == 1 else \
        [(p, t) for p, t in zip(preds, tgts) if p.shape[0]]
    bce = dice = 0.0
    for p, t in groups:
        b, d = mask_losses(p, t, num_points, oversample, importance, generator)
        bce, dice = bce + b.sum(), dice + d.sum()
    return bce / num_masks, dice / num_masks


def set_criterion(layers: list[dict], targets: list[dict], weights: LossWeights = LossWeights(),
                  num_points: int = 12544, generator: torch.Generator | None = None, *,
                  match_weights: MatchWeights | None = None, oversample: float = 3.0,
                  importance: float = 0.75) -> dict[str, Tensor]:
    """Mask2Former's SetCriterion with deep supervision.

    ``layers``: one dict per decoder layer (the last is the final output) with ``"class_logits"``
    (B, Q, K+1) and ``"masks"`` (B, Q, h, w) logits; ``targets``: per image ``{"classes": (M,) int64,
    "masks": (M, H, W)}``. Every layer is matched on its own (costs = ``match_weights``, by default
    the loss weights, as Mask2Former). Returns ``loss_cls`` / ``loss_mask`` / ``loss_dice`` of the
    final layer, ``loss_cls_{i}`` ... of the earlier layer ``i``, and ``loss``: the weighted sum over
    all layers. Mask / dice sum over matched pairs divided by the batch's target count (>= 1,
    averaged over DDP ranks); the class loss is CE with weight ``weights.no_object`` on class K.
    """
    if not layers:
        raise ValueError("set_criterion needs at least one layer")
    mw = match_weights or MatchWeights(cls=weights.cls, mask=weights.mask, dice=weights.dice)
    device = layers[-1]["masks"].device
    num_masks = _num_masks(targets, device)
    out: dict[str, Tensor] = {}
    total = None
    for i, layer in enumerate(layers):
        logits, masks = layer["class_logits"], layer["masks"]
        if logits.dim() != 3 or masks.dim() != 4 or logits.shape[:2] != masks.shape[:2] \
                or logits.shape[0] != len(targets):
            raise ValueError(f"layer {i}: want class_logits (B, Q, K+1), masks (B, Q, h, w) with B = "
                             f"{len(targets)}, got {tuple(logits.shape)}, {tuple(masks.shape)}")
        indices = [hungarian_match(logits[b], masks[b], t["classes"], t["masks"], mw, num_points, generator)
                   for b, t in enumerate(targets)]
        l_cls = _class_loss(logits, targets, indices, weights.no_object)
        l_mask, l_dice = _matched_mask_losses(masks, targets, indices, num_masks, num_points, oversample,
                                              importance, generator)
        suffix = "" if i == len(layers) - 1 else f"_{i}"
        out.update({f"loss_cls{suffix}": l_cls, f"loss_mask{suffix}": l_mask, f"loss_dice{suffix}": l_dice})
        layer_loss = weights.cls * l_cls + weights.mask * l_mask + weights.dice * l_dice
        total = layer_loss if total is None else total + layer_loss
    out["loss"] = total
    return out


def _candidate_iou(pred_logits: Tensor, targets: Tensor) -> Tensor:
    """IoU of each candidate (logits > 0 after bilinear upsampling to the target size) -> (N, P), no grad."""
    with torch.no_grad():
        up = F.interpolate(pred_logits.detach().float(), size=targets.shape[-2:], mode="bilinear",
                           align_corners=False) > 0
        tgt = (targets.to(up.device).float() > 0.5)[:, None]
        inter = (up & tgt).sum((-2, -1)).float()
        union = (up | tgt).sum((-2, -1)).float()
        return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


def prompt_losses(pred_logits: Tensor, pred_scores: Tensor | None, targets: Tensor, weights: LossWeights,
                  num_points: int, generator: torch.Generator | None = None, *, oversample: float = 3.0,
                  importance: float = 0.75) -> dict[str, Tensor]:
    """Losses of prompted outputs, SAM's rule: only the best of P candidates per prompt set learns.

    ``pred_logits`` (N, P, h, w), ``targets`` (N, H, W) {0, 1}, ``pred_scores`` (N, P) predicted IoU
    or None. Per set, the candidate with the smallest ``mask * bce + dice * dice`` (sampled points,
    as :func:`mask_losses`) gives ``loss_mask`` / ``loss_dice`` (means over sets); ``loss_iou`` is the
    MSE of ``pred_scores`` against every candidate's actual IoU (0 without scores); ``loss`` =
    ``mask * loss_mask + dice * loss_dice + iou * loss_iou``.
    """
    if pred_logits.dim() != 4 or targets.dim() != 3 or targets.shape[0] != pred_logits.shape[0]:
        raise ValueError(f"want pred_logits (N, P, h, w) and targets (N, H, W), got {tuple(pred_logits.shape)}, "
                         f"{tuple(targets.shape)}")
    n, p, h, w = pred_logits.shape
    if pred_scores is not None and pred_scores.shape != (n, p):
        raise ValueError(f"pred_scores must be ({n}, {p}), got {tuple(pred_scores.shape)}")
    zero = pred_logits.float().sum() * 0.0
    if n == 0 or p == 0:
        loss_iou = zero if pred_scores is None else zero + pred_scores.float().sum() * 0.0
        return {"loss_mask": zero, "loss_dice": zero, "loss_iou": loss_iou, "loss": zero + loss_iou}
    tgt = targets.to(pred_logits.device)
    flat_t = tgt[:, None].expand(n, p, *tgt.shape[-2:]).reshape(n * p, *tgt.shape[-2:])
    bce, dice = mask_losses(pred_logits.reshape(n * p, h, w), flat_t, num_points, oversample, importance, generator)
    bce, dice = bce.view(n, p), dice.view(n, p)
    best = (weights.mask * bce + weights.dice * dice).detach().argmin(1)
    rows = torch.arange(n, device=best.device)
    loss_mask, loss_dice = bce[rows, best].mean(), dice[rows, best].mean()
    if pred_scores is None:
        loss_iou = zero
    else:
        with _fp32(pred_scores.device):
            loss_iou = F.mse_loss(pred_scores.float(), _candidate_iou(pred_logits, tgt).to(pred_scores.device))
    loss = weights.mask * loss_mask + weights.dice * loss_dice + weights.iou * loss_iou
    return {"loss_mask": loss_mask, "loss_dice": loss_dice, "loss_iou": loss_iou, "loss": loss}
