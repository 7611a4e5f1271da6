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

__all__ = ["PixelDecoder"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


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

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
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
        # outs: coarse -> fine; the 3 coarsest are the decoder's scales
        return self.mask_features(self.fine_output(fine)), outs[:3]
