"""The universal decoder: object queries, prompt queries and memory, with SEEM's attention rules.

One row = one image with one prompt set (or none). Its query sequence is

    [ Q object queries | P prompt queries | M memory tokens ]      updated by every layer
    [ T prompt tokens (visual, text, reference) ]                   keys / values only

Attention rules (:func:`self_attention_mask`, :func:`cross_attention_mask`):

* object queries see only object queries, so generic output (all objects) is exactly the same
  whatever prompts sit in the row (SEEM: "object queries never see prompts");
* prompt queries see object queries, prompt queries, the row's memory and tokens;
* memory tokens see prompt queries, memory and tokens;
* tokens never attend to the image (they are not queries) and padding is seen by nobody;
* cross-attention is masked (Mask2Former): each object / prompt query attends only where its
  previous-layer mask is >= 0.5 (everywhere if that is empty); memory tokens attend only inside
  the **previous round's mask** (``memory``), and where a row has no previous round their
  cross-attention adds nothing.

Layers cycle over the three scales coarse to fine: layer l uses scale ``l % 3``. Each layer is
cross-attention, self-attention, FFN (post-norm), as Mask2Former's decoder. Heads (shared by all
layers, applied before the first layer and after each, for deep supervision): mask embedding x
mask features -> mask logits at stride 4; a class embedding in the text space; a predicted IoU for
prompt queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segprompt.universal.config import UniversalConfig
from segprompt.universal.layers import MLP, grid_encoding
from segprompt.universal.pixel_prompt import PixelPromptAttention

__all__ = ["UniversalDecoder", "DecoderOutput", "self_attention_mask", "cross_attention_mask"]


@dataclass
class DecoderOutput:
    """One layer's predictions.

    Object queries are computed once per image (they never see prompts, so every row of an
    image would give the same): ``object_masks`` (B, Q, h4, w4) logits and ``object_embed``
    (B, Q, E). Prompt queries, one group per row: ``masks`` (R, P, h4, w4) logits,
    ``class_embed`` (R, P, E) and ``scores`` (R, P) predicted IoU. Embeddings are L2-normalised
    in the text space.
    """

    object_masks: torch.Tensor
    object_embed: torch.Tensor
    masks: torch.Tensor
    class_embed: torch.Tensor
    scores: torch.Tensor


def self_attention_mask(q: int, p: int, m: int, token_valid: torch.Tensor, has_memory: torch.Tensor) -> torch.Tensor:
    """bool (R, Q+P+M, Q+P+M+T), True = blocked (see the module docstring).

    token_valid: (R, T) bool; has_memory: (R,) bool.
    """
    r, t = token_valid.shape
    n = q + p + m
    dev = token_valid.device
    allowed = torch.zeros((r, n, n + t), dtype=torch.bool, device=dev)
    obj, prm, mem = slice(0, q), slice(q, q + p), slice(q + p, n)
    allowed[:, obj, obj] = True
    allowed[:, prm, obj] = True
    allowed[:, prm, prm] = True
    allowed[:, mem, prm] = True
    mem_ok = has_memory[:, None, None].expand(r, 1, m)
    allowed[:, q:n, mem] = mem_ok.expand(r, p + m, m)
    allowed[:, mem, mem] |= torch.eye(m, dtype=torch.bool, device=dev)  # a memory row always sees itself
    allowed[:, q:n, n:] = token_valid[:, None, :]
    return ~allowed


def cross_attention_mask(
    pred_masks: torch.Tensor, memory: torch.Tensor | None, has_memory: torch.Tensor, num_memory: int, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which pixels of a (h, w) scale each query may attend to.

    Args:
        pred_masks: (R, Q + P, h4, w4) mask logits of the previous layer.
        memory: (R, h4, w4) previous-round region (0/1) or None; has_memory: (R,) bool.
    Returns:
        ``(blocked, gate)``: blocked (R, Q+P+M, h*w) bool (True = may not attend); gate
        (R, Q+P+M, 1) float, 0 for memory rows without a previous round (their cross-attention
        output is dropped), 1 elsewhere.
    """
    r = pred_masks.shape[0]
    small = F.interpolate(pred_masks.detach().float(), size=size, mode="bilinear", align_corners=False)
    blocked = (small.sigmoid() < 0.5).flatten(2)
    gate = torch.ones((r, pred_masks.shape[1] + num_memory, 1), device=pred_masks.device)
    if num_memory:
        if memory is None:
            mem_blocked = torch.ones((r, num_memory, blocked.shape[2]), dtype=torch.bool, device=blocked.device)
            has = torch.zeros(r, dtype=torch.bool, device=blocked.device)
        else:
            region = F.interpolate(memory[:, None].float(), size=size, mode="area")[:, 0] >= 0.5
            mem_blocked = (~region).flatten(1)[:, None].expand(r, num_memory, -1)
            has = has_memory & region.flatten(1).any(1)
        blocked = torch.cat((blocked, mem_blocked), 1)
        gate[:, -num_memory:, 0] = has[:, None].float()
    full = blocked.all(-1, keepdim=True)
    return blocked & ~full, gate


class CrossAttention(nn.Module):
    """Multi-head attention of R query rows over the pixels of their image.

    Keys and values are projected once per *image* (:meth:`keys`) and shared by every row of
    that image (``row_image``), so decoding N prompt sets costs one projection, not N.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def keys(self, feat: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feat (B, HW, D), pos (1, HW, D) -> keys, values (B, heads, HW, D / heads)."""
        return self._split(self.k(feat + pos)), self._split(self.v(feat))

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, row_image: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """x (R, Lq, D) queries (positions added); keys / values from :meth:`keys`; blocked (R, Lq, HW)."""
        if x.shape[0] == 0:
            return torch.zeros_like(x)
        q = self._split(self.q(x))  # (R, heads, Lq, dh)
        out = torch.empty_like(q)
        for b, rows in rows_by_image(row_image, keys.shape[0]):
            # the rows of one image attend as one long query sequence: no copy of its keys per row
            n = rows.numel() if rows is not None else x.shape[0]
            qb = q if rows is None else q[rows]
            qb = qb.transpose(0, 1).reshape(1, self.heads, -1, q.shape[-1])
            mb = (blocked if rows is None else blocked[rows]).reshape(1, 1, -1, blocked.shape[-1])
            ob = F.scaled_dot_product_attention(qb, keys[b : b + 1], values[b : b + 1], attn_mask=~mb)
            ob = ob.reshape(self.heads, n, -1, q.shape[-1]).transpose(0, 1)
            if rows is None:
                out = ob
            else:
                out[rows] = ob
        return self.out(out.transpose(1, 2).reshape(x.shape))


def rows_by_image(row_image: torch.Tensor, num_images: int) -> list[tuple[int, torch.Tensor | None]]:
    """(image, its rows) pairs; rows None when every row belongs to the one image (the common
    inference case: one image, N prompt sets)."""
    if num_images == 1:
        return [(0, None)]
    return [(int(b), (row_image == b).nonzero()[:, 0]) for b in torch.unique(row_image)]


class DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, post-norm (Mask2Former's order).

    :meth:`forward` takes the object queries of B images and the prompt groups of R rows; both
    cross-attend first, then the object queries self-attend among themselves and each prompt
    group attends to its image's object queries (as they are after this layer's
    cross-attention), itself and its tokens -- the same computation as one joint sequence per
    row under :func:`self_attention_mask`, without repeating the object queries per row.
    """

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.cross = CrossAttention(dim, heads)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.heads = heads

    def cross_attend(self, x, pos, keys, values, row_image, blocked, gate):  # noqa: ANN001
        out = self.cross(x + pos, keys, values, row_image, blocked)
        return self.norms[0](x + out * gate)

    def attend_and_feed(self, x, pos, k, v, blocked=None):  # noqa: ANN001
        mask = None if blocked is None else blocked.repeat_interleave(self.heads, dim=0)
        out = self.self_attn(x + pos, k, v, attn_mask=mask, need_weights=False)[0]
        x = self.norms[1](x + out)
        return self.norms[2](x + self.ffn(x))

    def forward(self, xo, po, xp, pp, keys, values, row_image, blocked_o, blocked_p, gate_p, tokens, token_pos, self_blocked):  # noqa: ANN001
        b = xo.shape[0]
        xo = self.cross_attend(xo, po, keys, values, torch.arange(b, device=xo.device), blocked_o, 1.0)
        xp = self.cross_attend(xp, pp, keys, values, row_image, blocked_p, gate_p)
        if xp.shape[0]:
            if b == 1:
                obj, obj_pos = xo.expand(xp.shape[0], -1, -1), po.expand(xp.shape[0], -1, -1)
            else:
                obj, obj_pos = xo[row_image], po[row_image]
            k = torch.cat((obj + obj_pos, xp + pp, tokens + token_pos), 1)
            v = torch.cat((obj, xp, tokens), 1)
            xp = self.attend_and_feed(xp, pp, k, v, self_blocked)
        xo = self.attend_and_feed(xo, po, xo + po, xo)
        return xo, xp


class UniversalDecoder(nn.Module):
    """``forward(scales, mask_features, row_image, tokens, token_pos, token_valid, memory, has_memory)``.

    Args:
        scales: 3 maps (B, D, h, w) of the B images, coarse to fine.
        mask_features: (B, mask_dim, h4, w4).
        row_image: (R,) int64, the image of each row.
        tokens, token_pos: (R, T, D) prompt tokens and their position encodings; token_valid (R, T).
        memory: (R, h4, w4) previous-round region or None; has_memory (R,) bool.
        box_region: (R, h4, w4) share of each cell inside the row's box, or None (read only with
            ``box_map``).
    Returns:
        a list of :class:`DecoderOutput`, one before the first layer and one after each (the last
        is the final prediction).
    """

    def __init__(self, cfg: UniversalConfig, embed_dim: int) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.q, self.p, self.m = cfg.num_queries, cfg.num_prompt_queries, cfg.num_memory
        n = self.q + self.p + self.m
        self.query_feat = nn.Embedding(n, d)
        self.query_pos = nn.Embedding(n, d)
        self.level_embed = nn.Embedding(3, d)
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.num_heads, cfg.dim_feedforward, cfg.dropout) for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(d)
        self.mask_embed = MLP(d, d, cfg.mask_dim, 3)
        self.class_proj = nn.Linear(d, embed_dim)
        self.score_head = MLP(d, d, 1, 3)
        heads = cfg.num_heads if cfg.mask_dim % cfg.num_heads == 0 else 1
        self.pixel_prompt = PixelPromptAttention(d, cfg.mask_dim, heads, box_map=cfg.box_map) if cfg.prompt_to_pixel else None

    def _masks(self, emb: torch.Tensor, mask_features: torch.Tensor, row_image: torch.Tensor) -> torch.Tensor:
        """emb (R, n, C) x the mask features of each row's image (B, C, h, w) -> (R, n, h, w)."""
        r, n, c = emb.shape
        h, w = mask_features.shape[-2:]
        if r == 0:
            return emb.new_zeros((0, n, h, w))
        groups = rows_by_image(row_image, mask_features.shape[0])
        if groups[0][1] is None:
            return (emb.reshape(r * n, c) @ mask_features[0].reshape(c, h * w)).reshape(r, n, h, w)
        masks = emb.new_empty((r, n, h, w))
        for b, rows in groups:
            masks[rows] = (emb[rows].reshape(-1, c) @ mask_features[b].reshape(c, h * w)).reshape(-1, n, h, w)
        return masks

    def heads(self, xo: torch.Tensor, xp: torch.Tensor, mask_features: torch.Tensor, row_image: torch.Tensor, row_features: torch.Tensor | None = None) -> DecoderOutput:
        """``row_features``: (R, C, h, w) per-row mask features for the prompt queries
        (:class:`PixelPromptAttention`); None: every row reads its image's ``mask_features``."""
        xo = self.norm(xo)
        xp = self.norm(xp[:, : self.p])
        b = xo.shape[0]
        emb = self.mask_embed(xp)
        if row_features is None:
            prompt_masks = self._masks(emb, mask_features, row_image)
        else:
            prompt_masks = torch.bmm(emb, row_features.flatten(2)).view(emb.shape[0], emb.shape[1], *row_features.shape[-2:])
        return DecoderOutput(
            object_masks=self._masks(self.mask_embed(xo), mask_features, torch.arange(b, device=xo.device)),
            object_embed=F.normalize(self.class_proj(xo), dim=-1),
            masks=prompt_masks,
            class_embed=F.normalize(self.class_proj(xp), dim=-1),
            scores=self.score_head(xp).squeeze(-1),
        )

    def forward(self, scales, mask_features, row_image, tokens, token_pos, token_valid, memory=None, has_memory=None, box_region=None):  # noqa: ANN001
        b, r = mask_features.shape[0], row_image.shape[0]
        dev = mask_features.device
        if has_memory is None:
            has_memory = torch.zeros(r, dtype=torch.bool, device=dev)
        feat, pos = self.query_feat.weight, self.query_pos.weight
        xo, po = feat[None, : self.q].expand(b, -1, -1), pos[None, : self.q].expand(b, -1, -1)
        xp, pp = feat[None, self.q :].expand(r, -1, -1), pos[None, self.q :].expand(r, -1, -1)
        flat, flat_pos, sizes = [], [], []
        for i, s in enumerate(scales):
            h, w = s.shape[-2:]
            flat.append(s.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            flat_pos.append(grid_encoding(h, w, s.shape[1], dev).to(s.dtype)[None])
            sizes.append((h, w))
        self_blocked = self_attention_mask(self.q, self.p, self.m, token_valid, has_memory)[:, self.q :]
        row_features = None
        if self.pixel_prompt is not None:  # the prompts' tokens never change: one update serves every layer
            row_features = self.pixel_prompt(mask_features, row_image, tokens, token_pos, token_valid, memory, has_memory, box_region)
        outputs = [self.heads(xo, xp, mask_features, row_image, row_features)]
        for i, layer in enumerate(self.layers):
            level = i % len(scales)
            keys, values = layer.cross.keys(flat[level], flat_pos[level])
            prev = outputs[-1]
            blocked_o, _ = cross_attention_mask(prev.object_masks, None, torch.zeros(b, dtype=torch.bool, device=dev), 0, sizes[level])
            blocked_p, gate_p = cross_attention_mask(prev.masks, memory, has_memory, self.m, sizes[level])
            xo, xp = layer(xo, po, xp, pp, keys, values, row_image, blocked_o, blocked_p, gate_p.to(xp.dtype), tokens, token_pos, self_blocked)
            outputs.append(self.heads(xo, xp, mask_features, row_image, row_features))
        return outputs
