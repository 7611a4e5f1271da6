"""Small building blocks: an MLP and the sine position encoding shared by pixels and prompt tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "sine_encoding", "grid_encoding"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def sine_encoding(coords: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine / cosine encoding of positions.

    Args:
        coords: (..., 2) float, ``(x, y)`` in [0, 1] of the model input (x = column).
        dim: output width, a multiple of 4.
    Returns:
        (..., dim) float: ``[sin/cos of y at dim/4 frequencies, sin/cos of x ...]`` (Mask2Former's
        ``PositionEmbeddingSine`` with ``normalize=True``, written for continuous positions so a
        prompt token and the pixel under it get the same encoding).
    """
    if dim % 4:
        raise ValueError(f"sine encoding width must be a multiple of 4, got {dim}")
    npf = dim // 2
    idx = torch.arange(npf, device=coords.device, dtype=torch.float32)
    freqs = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / npf)
    scaled = coords.float()[..., None] * (2 * math.pi) / freqs  # (..., 2, npf)
    enc = torch.stack((scaled[..., 0::2].sin(), scaled[..., 1::2].cos()), dim=-1).flatten(-2)  # (..., 2, npf)
    return torch.cat((enc[..., 1, :], enc[..., 0, :]), dim=-1)


def grid_encoding(height: int, width: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(height * width, dim) sine encoding of the pixel centres of an (height, width) grid, row-major."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return sine_encoding(torch.stack((gx, gy), -1).reshape(-1, 2), dim)
