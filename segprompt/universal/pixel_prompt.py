"""Prompt-aware mask features: each row's pixels read its prompt tokens and its previous mask.

In the decoder of stages 1-2, a prompted mask is ``query embedding . mask features``, with mask
features that are the same for every prompt set of an image: a click can move the query, but it
cannot change the features near the click, so a correction click could not carve or add a small
region and the masks stopped improving after a few clicks. SAM avoids this with its two-way
transformer, whose image tokens attend to the prompt tokens (token-to-image attention) and whose
dense mask prompt is added to the image embedding.

:class:`PixelPromptAttention` (``UniversalConfig.prompt_to_pixel``) does that for prompt rows only:

* the stride-4 mask features of the row's image, plus the sine encoding of each pixel's position,
  attend to the row's prompt tokens (with their positions), one cross-attention of ``heads``
  heads at ``mask_dim`` width; the output is added to the row's own copy of the features;
* the previous round's region (the memory prompt) goes through two 3x3 convolutions and is
  added too, as SAM adds its dense mask embedding;
* with ``box_map`` (``UniversalConfig.box_map``), the row's box as a region (the share of each
  cell inside it) goes through two more 3x3 convolutions and is added: a box's tokens are a few
  samples of a region that is half background, which did not tell the masks where the box ends.

Every output starts at **zero**, so a model grown with these parts computes exactly what it did
(``grow: {prompt_to_pixel: true}``, then ``{box_map: true}``, in training). Object queries keep reading the image's shared
features: generic output still does not change when prompts are added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segprompt.universal.layers import grid_encoding

__all__ = ["PixelPromptAttention"]


class PixelPromptAttention(nn.Module):
    """``forward(mask_features, row_image, tokens, token_pos, token_valid, memory, has_memory)``.

    Args:
        mask_features: (B, C, h, w) float, the images' stride-4 mask features (C = ``dim``).
        row_image: (R,) int64, each row's image.
        tokens, token_pos: (R, T, token_dim) prompt tokens and their sine position encodings.
        token_valid: (R, T) bool; a row without any valid token gets no token term.
        memory: (R, h, w) previous-round region (0/1) or None; has_memory: (R,) bool.
        box_region: (R, h, w) share of each cell inside the row's box (all 0: no box) or None.
    Returns:
        (R, C, h, w) float: each row's mask features.
    """

    def __init__(self, token_dim: int, dim: int, heads: int = 4, box_map: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"pixel-prompt attention: width {dim} is not divisible by {heads} heads")
        self.heads, self.token_dim = heads, token_dim
        self.q_feat = nn.Linear(dim, dim)
        self.q_pos = nn.Linear(token_dim, dim, bias=False)
        self.k = nn.Linear(token_dim, dim)
        self.v = nn.Linear(token_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.memory = _dense_encoder(dim)
        self.box_map = _dense_encoder(dim) if box_map else None
        for zero in (self.out, self.memory[-1], *([self.box_map[-1]] if box_map else [])):  # start as the identity on the features
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        return x.view(n, length, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self,
        mask_features: torch.Tensor,
        row_image: torch.Tensor,
        tokens: torch.Tensor,
        token_pos: torch.Tensor,
        token_valid: torch.Tensor,
        memory: torch.Tensor | None = None,
        has_memory: torch.Tensor | None = None,
        box_region: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, h, w = mask_features.shape
        r = row_image.shape[0]
        rows = mask_features[row_image]
        if r == 0:
            return rows
        if tokens.shape[1] and bool(token_valid.any()):
            pixels = mask_features.flatten(2).transpose(1, 2)  # (B, hw, C)
            pos = grid_encoding(h, w, self.token_dim, mask_features.device).to(pixels.dtype)
            q = self._split(self.q_feat(pixels) + self.q_pos(pos)[None])[row_image]  # (R, heads, hw, dh): projected once per image
            k, v = self._split(self.k(tokens + token_pos)), self._split(self.v(tokens))
            some = token_valid.any(1)
            allowed = (token_valid | ~some[:, None])[:, None, None, :]  # a row without tokens attends to its padding; dropped below
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            delta = self.out(o.transpose(1, 2).reshape(r, h * w, c)) * some[:, None, None].to(o.dtype)
            rows = rows + delta.transpose(1, 2).reshape(r, c, h, w)
        if memory is not None:
            rows = _add_dense(rows, self.memory, memory, has_memory if has_memory is not None else torch.ones(r, dtype=torch.bool, device=rows.device))
        if self.box_map is not None and box_region is not None:
            rows = _add_dense(rows, self.box_map, box_region, box_region.flatten(1).amax(1) > 0)
        return rows


def _dense_encoder(dim: int) -> nn.Sequential:
    """A dense prompt (one region map) -> ``dim`` channels: two 3x3 convolutions (SAM's mask
    downscaling without the stride: the map is already at the features' grid)."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, dim, 3, padding=1))


def _add_dense(rows: torch.Tensor, encoder: nn.Module, region: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``rows`` (R, C, h, w) plus ``encoder(region)`` where ``present`` (R,) bool; ``region``
    (R, h', w') is brought to the features' grid by area averaging."""
    x = region[:, None].to(rows.dtype)
    if x.shape[-2:] != rows.shape[-2:]:
        x = F.interpolate(x, size=rows.shape[-2:], mode="area")
    return rows + encoder(x) * present.to(rows.dtype)[:, None, None, None]
