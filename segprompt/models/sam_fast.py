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
so the class's own forward runs again. The ``ImageEncoderViT`` holding them (when ``module`` has
one) becomes :class:`WorkspaceImageEncoderViT`, whose forward reuses one bias buffer per shape across
its blocks (:func:`bias_workspace`), and each encoder block's ``MLPBlock`` a :class:`ChunkedMLPBlock`
(bit-identical, evaluated in chunks of tokens at inference); the mask decoder is left alone. Same parameters and state dict; copies (``copy.deepcopy``) and
pickles keep the mode.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import Attention, Block, ImageEncoderViT, get_rel_pos

from segprompt.errors import ConfigError



_workspace = threading.local()


@contextlib.contextmanager
def bias_workspace() -> Iterator[None]:
    """Reuse one bias buffer per shape for every block inside this scope (inference only).

    A vit_b global block's bias is 12 x 4096 x 4096 fp32 (805 MB). A fresh allocation of that
    size is a fresh ``mmap``, and touching its pages cost 0.19 s per block here against 0.03 s
    for writing into a buffer already mapped; the four global blocks (and the eight windowed
    ones) share one shape, so inside this scope each shape is allocated once. Buffers are only
    reused when no gradient flows through the bias (a mask saved for backward must not be overwritten); they are
    freed when the outermost scope ends. A fast-attention ``ImageEncoderViT`` opens the scope
    itself, so ``sam.image_encoder(x)`` needs nothing more.
    """
    outer = getattr(_workspace, "buffers", None)
    if outer is None:
        _workspace.buffers = {}
    try:
        yield
    finally:
        if outer is None:
            _workspace.buffers = None


def _bias_buffer(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised (shape) tensor of ``like``'s dtype and device: the workspace's, when one is open."""
    buffers = getattr(_workspace, "buffers", None)
    if buffers is None:
        return like.new_empty(shape)
    key = (shape, like.dtype, like.device)
    if key not in buffers:
        buffers[key] = like.new_empty(shape)
    return buffers[key]


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
    # written into a contiguous buffer: a plain broadcast add follows einsum's permuted strides, and
    # the reshape then copies the whole (N x N) bias again (0.42 -> 0.24 s per vit_b global block)
    shape = (b, q_h, q_w, k_h, k_w)
    if torch.compiler.is_compiling() or (
        torch.is_grad_enabled() and (q.requires_grad or rel_pos_h.requires_grad or rel_pos_w.requires_grad)
    ):  # autograd cannot go through out=, and a compiled graph plans its own buffers
        bias = rel_h.contiguous()[:, :, :, :, None] + rel_w.contiguous()[:, :, :, None, :]
    else:
        bias = torch.add(rel_h[:, :, :, :, None], rel_w[:, :, :, None, :], out=_bias_buffer(shape, q))
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


#: tokens per MLP chunk at inference: the (rows x 4 dim) hidden layer stays in the L3 cache
MLP_CHUNK_ROWS = 1024


class ChunkedMLPBlock(MLPBlock):
    """segment-anything's ``MLPBlock`` evaluated ``MLP_CHUNK_ROWS`` tokens at a time when no gradient flows.

    Same arithmetic per token (equal within fp32 rounding: the matmul's blocking may differ with
    the row count; bit-identical at vit_b's sizes here); the (N x 3072) hidden activations
    of a vit_b block (50 MB) are never materialised at once (the MLP's time 225 -> 200 ms per
    vit_b block on the 2-core CPU). With gradients it is segment-anything's own forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[:-1].numel()
        if rows <= MLP_CHUNK_ROWS or (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))):
            return super().forward(x)
        flat = x.reshape(rows, x.shape[-1])
        lin2 = self.lin2
        out = None
        for start in range(0, rows, MLP_CHUNK_ROWS):
            hidden = self.act(self.lin1(flat[start : start + MLP_CHUNK_ROWS]))
            fused = type(lin2) is torch.nn.Linear and lin2.bias is not None and hidden.dtype == lin2.weight.dtype
            if out is None:  # the output dtype follows lin1's (autocast may make it bf16 / fp16)
                out = flat.new_empty(rows, x.shape[-1], dtype=hidden.dtype)  # lin2 maps back to the embedding width
            if fused:  # the second matmul writes straight into the output rows
                torch.addmm(lin2.bias, hidden, lin2.weight.t(), out=out[start : start + MLP_CHUNK_ROWS])
            else:  # a wrapped layer (LoRA), or autocast (which out= bypasses): the layer's own forward
                out[start : start + MLP_CHUNK_ROWS] = lin2(hidden)
        return out.view(*x.shape[:-1], out.shape[-1])


class WorkspaceImageEncoderViT(ImageEncoderViT):
    """segment-anything's ``ImageEncoderViT`` whose forward runs inside :func:`bias_workspace`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return super().forward(x)
        with bias_workspace():
            return super().forward(x)


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
    for sub in module.modules():
        if isinstance(sub, ImageEncoderViT):
            sub.__class__ = WorkspaceImageEncoderViT if mode == "sdpa" else ImageEncoderViT
        elif isinstance(sub, Block) and isinstance(sub.mlp, MLPBlock):  # the image encoder's MLPs only
            sub.mlp.__class__ = ChunkedMLPBlock if mode == "sdpa" else MLPBlock
    return module


def disable_fast_attention(module: torch.nn.Module) -> torch.nn.Module:
    """Restore segment-anything's own ``Attention.forward`` on every block in ``module``."""
    return enable_fast_attention(module, "reference")


def attention_mode(module: torch.nn.Module) -> str:
    """The attention mode of ``module``'s blocks (``"mixed"`` when they differ)."""
    modes = {"sdpa" if isinstance(a, SdpaAttention) else "reference" for a in _attention_blocks(module)}
    return modes.pop() if len(modes) == 1 else "mixed"
