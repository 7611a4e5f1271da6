"""The visual sampler: prompt regions -> prompt tokens (SEEM's visual prompt encoder).

Every visual prompt (points, boxes, scribbles, masks, and a reference image's mask) is a region;
up to ``tokens_per_prompt`` positions are sampled inside it (:func:`region_positions`), and each
token is the sum of the pixel decoder's features bilinearly sampled at its position on every
scale (one linear projection per scale), a learned embedding of its kind and one of its polarity
(positive / negative). Its position encoding is the sine encoding of the position, the same the
pixel under it gets in cross-attention; reference tokens get none (their positions are in
another image).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segprompt.universal.config import PROMPT_KINDS_TOKENS
from segprompt.universal.layers import sine_encoding

__all__ = ["VisualSampler", "region_positions", "sample_features", "KIND_INDEX"]

KIND_INDEX: dict[str, int] = {k: i for i, k in enumerate(PROMPT_KINDS_TOKENS)}


def region_positions(region: np.ndarray, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Up to ``k`` pixel centres inside ``region``.

    Args:
        region: bool (H, W).
        k: the most positions to return.
        rng: None for a deterministic spread (a square grid of the step that puts about ``k``
            nodes inside the region, evenly thinned to ``k``); a generator for a uniform random
            draw without replacement (training).
    Returns:
        float32 (n, 2) ``(x, y)`` pixel centres (``col + 0.5``, ``row + 0.5``) of the region's
        pixels, n = min(k, region pixels); every one lies inside the region.
    """
    rows, cols = np.nonzero(region)
    n = len(rows)
    if n == 0 or k <= 0:
        return np.zeros((0, 2), np.float32)
    if n <= k:
        pick = np.arange(n)
    elif rng is not None:
        pick = rng.choice(n, size=k, replace=False)
    else:
        step = max(1, int(np.sqrt(n / k)))
        on_grid = np.flatnonzero((rows % step == step // 2) & (cols % step == step // 2))
        if len(on_grid) < k:
            on_grid = np.arange(n)
        pick = on_grid[np.linspace(0, len(on_grid) - 1, k).round().astype(int)]
    return np.stack((cols[pick] + 0.5, rows[pick] + 0.5), axis=1).astype(np.float32)


def sample_features(feature: torch.Tensor, row_image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``feature`` (B, C, h, w) at ``coords`` (R, T, 2) ``(x, y)`` in [0, 1]
    of image ``row_image`` (R,) -> (R, T, C). One ``grid_sample`` per image, not per row."""
    r, t = coords.shape[:2]
    out = feature.new_zeros((r, t, feature.shape[1]))
    grid = coords.to(feature.dtype) * 2 - 1  # in [-1, 1], align_corners=False: pixel centres at (i + 0.5) / n
    for b in torch.unique(row_image).tolist():
        rows = (row_image == b).nonzero()[:, 0]
        g = grid[rows].reshape(1, -1, 1, 2)
        s = F.grid_sample(feature[b : b + 1], g, mode="bilinear", align_corners=False)  # (1, C, n*T, 1)
        out[rows] = s[0, :, :, 0].t().reshape(len(rows), t, -1).to(out.dtype)
    return out


class VisualSampler(nn.Module):
    """Tokens from sampled positions: ``forward(scales, row_image, coords, kinds, polarity, positioned)``.

    Args (forward):
        scales: the pixel decoder's scales, each (B, D, h, w) (any order, same as at training).
        row_image: (R,) int64, the image each row's positions lie on.
        coords: (R, T, 2) float ``(x, y)`` in [0, 1] of the padded model input.
        kinds: (R, T) int64 indices into :data:`KIND_INDEX`.
        polarity: (R, T) int64, 1 positive, 0 negative.
        positioned: (R, T) bool, False where the token gets no position encoding (reference).
    Returns:
        ``(content, position)``, each (R, T, D).
    """

    def __init__(self, hidden_dim: int, num_scales: int = 3) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(num_scales))
        self.kind_embed = nn.Embedding(len(PROMPT_KINDS_TOKENS), hidden_dim)
        self.polarity_embed = nn.Embedding(2, hidden_dim)
        self.hidden_dim = hidden_dim

    def forward(self, scales: list[torch.Tensor], row_image: torch.Tensor, coords: torch.Tensor, kinds: torch.Tensor, polarity: torch.Tensor, positioned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        content = self.kind_embed(kinds) + self.polarity_embed(polarity)
        if coords.shape[1]:
            for proj, feat in zip(self.proj, scales):
                content = content + proj(sample_features(feat, row_image, coords))
        position = sine_encoding(coords, self.hidden_dim).to(content.dtype) * positioned[..., None].to(content.dtype)
        return content, position
