"""Fast attention for segment-anything's ViT image encoder (patched in place, never copied).

segment-anything's ``Attention.forward`` (segment_anything/modeling/image_encoder.py) builds the
full (N x N) attention matrix in the input dtype, adds the decomposed relative-position bias
(``add_decomposed_rel_pos``) and applies ``softmax`` itself. The ``"sdpa"`` mode keeps the same
weights and the same bias but hands the product to
``torch.nn.functional.scaled_dot_product_attention``: the bias terms ``rel_h`` (from the height
table) and ``rel_w`` (from the width table) are computed from the *unscaled* queries exactly as
``add_decomposed_rel_pos`` does, and broadcast-added into a float ``attn_mask`` of shape
(B, heads, N, N). Windowed and global blocks both go through it (a windowed block's attention
sees one window, padding included, as the reference does).

    from segprompt.models.sam_fast import enable_fast_attention, disable_fast_attention
    enable_fast_attention(sam)          # sam: a segment_anything Sam or its ImageEncoderViT
    emb = sam.image_encoder(x)          # same result within fp32 rounding (~1e-6 relative)
    disable_fast_attention(sam)         # segment-anything's own forward again, bit for bit

Each ``segment_anything.modeling.image_encoder.Attention`` instance has its class switched to
:class:`SdpaAttention`, a subclass whose only change is ``forward``; disabling switches it back,
so the class's own forward runs again. Same parameters and state dict; copies (``copy.deepcopy``)
and pickles keep the mode.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

from segprompt.errors import ConfigError



def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: tuple[int, int], k_size: tuple[int, int]
) -> torch.Tensor:
    """segment-anything's decomposed relative-position bias as an additive attention mask.

    Args:
        q: unscaled queries (B', q_h * q_w, C), B' = batch * heads.
        rel_pos_h, rel_pos_w: the block's tables (L_h, C), (L_w, C).
        q_size, k_size: (height, width) of the query and key grids.
    Returns:
        (B', q_h * q_w, k_h * k_w) in ``q``'s dtype: ``rel_h[.., k_h] + rel_w[.., k_w]`` as
        ``add_decomposed_rel_pos`` adds it to the scaled logits.
    """
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h)  # (q_h, k_h, C)
    r_w = get_rel_pos(q_w, k_w, rel_pos_w)  # (q_w, k_w, C)
    b, _, c = q.shape
    r_q = q.reshape(b, q_h, q_w, c)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, r_h.to(q.dtype))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, r_w.to(q.dtype))
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]  # (B', q_h, q_w, k_h, k_w)
    return bias.reshape(b, q_h * q_w, k_h * k_w)


def _sdpa_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` with scaled_dot_product_attention. x: (B, H, W, dim) -> (B, H, W, dim)."""
    b, h, w, _ = x.shape
    n, heads = h * w, self.num_heads
    # (3, B, heads, N, C), as the reference lays it out
    q, k, v = self.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    mask = None
    if self.use_rel_pos:
        bias = decomposed_rel_pos_bias(q.reshape(b * heads, n, -1), self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        mask = bias.view(b, heads, n, n).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
    out = out.view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


class SdpaAttention(Attention):
    """segment-anything's ``Attention`` with :func:`_sdpa_forward`: an existing block's class is
    switched to it in place (:func:`enable_fast_attention`); nothing else differs."""

    forward = _sdpa_forward


#: mode -> the block class that runs it
ATTENTION_MODES: dict[str, type[Attention]] = {"sdpa": SdpaAttention, "reference": Attention}


def _attention_blocks(module: torch.nn.Module) -> Iterator[Attention]:
    found = False
    for m in module.modules():
        if isinstance(m, Attention):
            found = True
            yield m
    if not found:
        raise ConfigError(f"{type(module).__name__} holds no segment-anything image-encoder Attention block to patch")


def enable_fast_attention(module: torch.nn.Module, mode: str = "sdpa") -> torch.nn.Module:
    """Switch every image-encoder ``Attention`` inside ``module`` (a ``Sam`` or an ``ImageEncoderViT``) to ``mode``.

    Modes: ``"sdpa"`` (scaled_dot_product_attention with the relative-position bias as
    ``attn_mask``) or ``"reference"`` (segment-anything's forward). Returns ``module``, changed in place.
    """
    if mode not in ATTENTION_MODES:
        raise ConfigError(f"unknown attention mode {mode!r}; choose one of {sorted(ATTENTION_MODES)}")
    for attn in list(_attention_blocks(module)):
        attn.__dict__.pop("forward", None)  # a block patched the old way (an instance forward)
        attn.__class__ = ATTENTION_MODES[mode]
    return module


def disable_fast_attention(module: torch.nn.Module) -> torch.nn.Module:
    """Restore segment-anything's own ``Attention.forward`` on every block in ``module``."""
    return enable_fast_attention(module, "reference")


def attention_mode(module: torch.nn.Module) -> str:
    """The attention mode of ``module``'s blocks (``"mixed"`` when they differ)."""
    modes = {"sdpa" if isinstance(a, SdpaAttention) else "reference" for a in _attention_blocks(module)}
    return modes.pop() if len(modes) == 1 else "mixed"
