"""Pixel decoder: a plain-PyTorch FPN over the backbone pyramid (no deformable attention).

Mask2Former's MSDeformAttn pixel decoder needs a CUDA op; this one uses convolutions for the
top-down path and ``encoder_layers`` ordinary transformer encoder layers on the coarsest scale
(full self-attention there is cheap: 1/32 of the input side).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segprompt.universal.layers import grid_encoding

__all__ = ["DetailStem", "PixelDecoder"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class DetailStem(nn.Module):
    """The image's own detail at stride 4, for the mask features (``UniversalConfig.detail_dim``).

    A plain ViT sees the image at stride 16; its pyramid's stride-4 level is upsampled from
    there, so every edge finer than a patch is learned guesswork. This stem reads the normalised
    pixels themselves: two stride-2 3x3 convolutions and one 3x3 at ``width`` channels (GroupNorm,
    ReLU), then a 1x1 projection to ``mask_dim`` that starts at **zero**, so a model grown with a
    stem computes exactly what it did before its first step (``init`` + ``grow`` in training).

    Input (B, 3, S, S) float, normalised, padding zero; output (B, mask_dim, S/4, S/4).
    """

    def __init__(self, width: int, mask_dim: int) -> None:
        super().__init__()
        half = max(8, width // 2)
        self.body = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1), _norm(half), nn.ReLU(),
            nn.Conv2d(half, width, 3, stride=2, padding=1), _norm(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), _norm(width), nn.ReLU(),
        )
        self.proj = nn.Conv2d(width, mask_dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(pixels))


class PixelDecoder(nn.Module):
    """Feature pyramid -> (mask features, three scales for the decoder).

    Input: the backbone's levels fine to coarse, level i (B, C_in, h_i, w_i), at least 4 levels
    (strides 4, 8, 16, 32 for a patch-16 ViT). Output:

    * ``mask_features``: (B, mask_dim, h_0, w_0), the finest level;
    * ``scales``: the three coarsest levels, **coarse to fine** (the order the decoder cycles
      in), each (B, hidden_dim, h, w).
    """

    def __init__(self, in_channels: int, hidden_dim: int, mask_dim: int, num_levels: int = 4, encoder_layers: int = 1, num_heads: int = 4) -> None:
        super().__init__()
        if num_levels < 4:
            raise ValueError(f"the pixel decoder needs at least 4 pyramid levels, got {num_levels}")
        self.num_levels = num_levels
        # levels 1.. run the FPN at hidden_dim; the finest level (stride 4, 16x the pixels of
        # stride 16) is fused at mask_dim with a depthwise 3x3: the cost of a full 3x3 there
        # dominates a CPU training step and buys little over the upsampled FPN output
        self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(in_channels, hidden_dim, 1), _norm(hidden_dim)) for _ in range(num_levels - 1))
        self.output = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1), _norm(hidden_dim), nn.ReLU()) for _ in range(num_levels - 2)
        )
        self.fine_lateral = nn.Sequential(nn.Conv2d(in_channels, mask_dim, 1), _norm(mask_dim))
        self.fine_top = nn.Conv2d(hidden_dim, mask_dim, 1)
        self.fine_output = nn.Sequential(nn.Conv2d(mask_dim, mask_dim, 3, padding=1, groups=mask_dim), _norm(mask_dim), nn.ReLU())
        layer = nn.TransformerEncoderLayer(hidden_dim, num_heads, hidden_dim * 4, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, encoder_layers, enable_nested_tensor=False) if encoder_layers else None
        self.mask_features = nn.Conv2d(mask_dim, mask_dim, 1)
        self.hidden_dim = hidden_dim

    def forward(self, levels: list[torch.Tensor], detail: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``detail``: a :class:`DetailStem`'s output (B, mask_dim, h, w), added to the finest
        level before its fusion (resized to it when the grids differ, as for patch 14)."""
        if len(levels) != self.num_levels:
            raise ValueError(f"pixel decoder built for {self.num_levels} levels, got {len(levels)}")
        x = self.lateral[-1](levels[-1])
        if self.encoder is not None:
            b, c, h, w = x.shape
            seq = x.flatten(2).transpose(1, 2)
            pos = grid_encoding(h, w, c, x.device).to(seq.dtype)
            seq = self.encoder(seq + pos[None])  # positions enter once, at the input
            x = seq.transpose(1, 2).reshape(b, c, h, w)
        outs = [x]
        for i in range(self.num_levels - 2, 0, -1):
            lat = self.lateral[i - 1](levels[i])
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            x = self.output[i - 1](x)
            outs.append(x)
        fine = self.fine_lateral(levels[0])
        fine = fine + F.interpolate(self.fine_top(x), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        if detail is not None:
            if detail.shape[-2:] != fine.shape[-2:]:
                detail = F.interpolate(detail, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            fine = fine + detail
        # outs: coarse -> fine; the 3 coarsest are the decoder's scales
        return self.mask_features(self.fine_output(fine)), outs[:3]
