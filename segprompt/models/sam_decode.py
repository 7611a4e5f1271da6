"""Many prompt sets on one image through segment-anything's mask decoder, sharing what does not depend on the prompt.

segment-anything's ``MaskDecoder.predict_masks`` copies the image embedding once per prompt set
(``repeat_interleave``) and runs every step of the two-way transformer on each copy, projecting
all N = 64 x 64 image tokens (C = 256 channels) ten times per set. Here:

* **Shared first layer.** Before the first image-to-token attention the image side is the same
  for every set whose dense prompt embedding is the same (every set without a mask input:
  ``no_mask_embed``): the first block's key / value projections (token-to-image attention) and
  query projection (image-to-token attention) are computed once per call.
* **The image side is never projected per set.** A few tokens (T: the IoU and mask tokens and
  the prompt's, 9 for 3 points) attend to N image tokens. Token-to-image attention moves each
  head's key projection onto the queries (``q_h Wk_h``) and applies the value projection after
  the weighted sum; image-to-token attention moves the query projection onto the tokens' keys
  and folds ``out_proj`` into the tokens' values. Each attention then costs two
  (heads * T) x C x N products (72 rows for vit_b) instead of projecting the N x C image side to
  Ci = 128 channels two or three times. The final attention runs only for the IoU token and the
  returned mask tokens.
* **One set at a time**, so its (N x C) tensors stay in cache, and a set's result does not depend
  on which other sets share the call (bit for bit). At inference the large intermediates go into
  buffers reused by every set (a fresh multi-megabyte tensor is a fresh ``mmap``, paid again in
  page faults) and each set's masks into the result (or the caller's ``out``).
* ``output_upscaling`` (two 2x2 stride-2 transposed convolutions, ``LayerNorm2d``, GELU) runs as
  two matmuls in token-major layout, and only the returned mask tokens are turned into masks.

Same weights (the decoder modules are read, never copied); outputs equal the reference within
fp32 rounding (tests/test_sam_decode.py against ``MaskDecoder.forward``, including gradients).

    from segprompt.models.sam_decode import decode_shared
    low_res, iou = decode_shared(sam.mask_decoder, emb, pe, sparse, dense, multimask_output=True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock
from torch.nn.modules import module as nn_module

def hooks_on(decoder: MaskDecoder) -> bool:
    """Whether forward hooks watch the decoder's two-way transformer (PerSAM's guidance does).

    :func:`decode_shared` calls the transformer's projections directly, not its blocks' forwards,
    so such hooks would not run: callers take segment-anything's forward then.
    """
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in decoder.transformer.modules())


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads), a view."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``Attention`` on projected inputs (before ``out_proj``): (1, Nq, Ci) x (1, Nk, Ci) -> (1, Nq, Ci)."""
    return _merge_heads(F.scaled_dot_product_attention(_heads(q, attn.num_heads), _heads(k, attn.num_heads), _heads(v, attn.num_heads)))


class _Scratch:
    """Output buffers reused by every set of one :func:`decode_shared` call, at inference only.

    A fresh multi-megabyte tensor per step and set is a fresh ``mmap`` on the CPU, paid for again in
    page faults each time (about 5 ms of 28 per vit_b set here); writing into the same buffers
    avoids that. ``get`` returns None (allocate as usual) while autograd records (out= tensors
    cannot take part) and under autocast (out= ops are not autocast).
    """

    def __init__(self, like: torch.Tensor) -> None:
        self.enabled = not torch.is_grad_enabled() and not torch.is_autocast_enabled(like.device.type)
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        if not self.enabled:
            return None
        buf = self._bufs.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype:
            buf = self._bufs[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf


def _activate(act: torch.nn.Module, x: torch.Tensor, in_place: bool) -> torch.Tensor:
    """``act(x)``; a GELU in place when ``in_place`` (x is a scratch buffer)."""
    if in_place and isinstance(act, torch.nn.GELU):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


def _heads_weight(linear: torch.nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight (Ci, C) and bias (Ci,) split by head: (heads, d, C), (heads, d, 1); d = Ci / heads."""
    ci = linear.weight.shape[0]
    return linear.weight.view(heads, ci // heads, -1), linear.bias.view(heads, ci // heads, 1)


def _tokens_to_image(
    attn: Attention, q_in: torch.Tensor, x: torch.Tensor, x_pe: torch.Tensor, scratch: _Scratch, tag: str
) -> torch.Tensor:
    """``attn(q=q_in, k=x_pe, v=x)`` for a few tokens over N image tokens, the image side never projected.

    q_in: (T, C) token side; x, x_pe: (N, C) image side without / with its positional encoding.
    Returns (T, C), after ``out_proj``. Per head h (d channels, projections W, b):

        logits_h = q_h (x_pe Wk_h^T + bk_h)^T / sqrt(d) = [(q_h Wk_h / sqrt(d)) x_pe^T] + q_h bk_h / sqrt(d)
        out_h    = softmax(logits_h) (x Wv_h^T + bv_h)  = (softmax(logits_h) x) Wv_h^T + bv_h

    (softmax rows sum to 1). The two (heads * T, C) x (C, N) products replace projecting the N
    image tokens to Ci channels twice: heads * T = 72 against 2 * Ci = 256 per image token for vit_b
    with 3 points, and only the tokens the caller keeps are computed.
    """
    heads = attn.num_heads
    q = attn.q_proj(q_in)  # (T, Ci)
    t, ci = q.shape
    d = ci // heads
    n = x.shape[0]
    qh = q.view(t, heads, d).transpose(0, 1).mul(d**-0.5)  # (heads, T, d)
    wk, bk = _heads_weight(attn.k_proj, heads)
    q_img = torch.bmm(qh, wk).view(heads * t, -1)  # (heads * T, C)
    logits = torch.addmm(torch.bmm(qh, bk).view(heads * t, 1), q_img, x_pe.t(), out=scratch.get(tag + "logits", (heads * t, n), x))
    weights = torch.softmax(logits, dim=-1)
    px = torch.mm(weights, x).view(heads, t, -1)  # (heads, T, C)
    wv, bv = _heads_weight(attn.v_proj, heads)
    out = torch.baddbmm(bv.transpose(1, 2), px, wv.transpose(1, 2))  # (heads, T, d)
    return attn.out_proj(out.transpose(0, 1).reshape(t, ci))


def _image_to_tokens(
    attn: Attention,
    x: torch.Tensor,
    x_pe: torch.Tensor | None,
    k_in: torch.Tensor,
    v_in: torch.Tensor,
    scratch: _Scratch,
    out: torch.Tensor | None,
    q_img: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x + attn(q=x_pe, k=k_in, v=v_in)``: N image tokens attend to T tokens, the image side never projected.

    x: (N, C) residual; x_pe: (N, C) the queries before ``q_proj``, or None with ``q_img`` (heads, d, N)
    already projected (shared by all sets); k_in, v_in: (T, C). Returns (N, C), into ``out`` when
    given. Per head h:

        logits_h^T = k_h (x_pe Wq_h^T + bq_h)^T / sqrt(d) = [(k_h Wq_h / sqrt(d)) x_pe^T] + k_h bq_h / sqrt(d)
        out        = x + sum_h softmax_tokens(logits_h) (v_h Wo_h^T) + bo

    The logits are laid out (tokens x image), so the softmax over T runs down a short axis of long
    contiguous rows; the out projection is folded into the values (T x C per head), so no (N x Ci)
    tensor is formed.
    """
    heads = attn.num_heads
    k, v = attn.k_proj(k_in), attn.v_proj(v_in)  # (T, Ci)
    t, ci = k.shape
    d = ci // heads
    n = x.shape[0]
    kh = k.view(t, heads, d).transpose(0, 1).mul(d**-0.5)  # (heads, T, d)
    if q_img is None:
        wq, bq = _heads_weight(attn.q_proj, heads)
        logits = torch.addmm(
            torch.bmm(kh, bq).view(heads * t, 1), torch.bmm(kh, wq).view(heads * t, -1), x_pe.t(),
            out=scratch.get("i2t_logits", (heads * t, n), x),
        )
    else:
        logits = torch.bmm(kh, q_img, out=scratch.get("i2t_logits", (heads, t, n), x))  # (heads, T, N)
    weights = torch.softmax(logits.view(heads, t, n), dim=1).view(heads * t, n)
    wo = attn.out_proj.weight.view(-1, heads, d).permute(1, 2, 0)  # (heads, d, C)
    vo = torch.bmm(v.view(t, heads, d).transpose(0, 1), wo).view(heads * t, -1)  # (heads * T, C)
    summed = x.addmm_(weights.t(), vo) if out is x else torch.addmm(x, weights.t(), vo, out=out)  # out is x: x is spent
    return summed.add_(attn.out_proj.bias)


def _block(
    layer: TwoWayAttentionBlock,
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_pe: torch.Tensor,
    key_pe: torch.Tensor,
    scratch: _Scratch,
    shared: dict[str, torch.Tensor] | None = None,
    first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` for one set; ``shared`` holds the image-side projections when ``keys`` is shared.

    queries, query_pe: (T, C); keys, key_pe: (N, C). Returns (T, C), (N, C). At inference, after the
    first block (``first``: keys may be the shared image side) ``keys`` is overwritten.
    """
    q3 = queries[None]
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=q3, k=q3, v=q3)[0]
    else:
        q = q3 + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=q3)[0]
    queries = layer.norm1(queries)

    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    if shared is not None:  # the image side's projections, computed once for all sets
        q = t2i.q_proj(queries + query_pe)[None]
        attn_out = t2i.out_proj(_attend(t2i, q, shared["t2i_k"], shared["t2i_v"])[0])
        keys_pe = None
    else:
        keys_pe = torch.add(keys, key_pe, out=scratch.get("keys_pe", keys.shape, keys))
        attn_out = _tokens_to_image(t2i, queries + query_pe, keys, keys_pe, scratch, "t2i_")
    queries = layer.norm2(queries + attn_out)

    queries = layer.norm3(queries + layer.mlp(queries))

    q_img = shared["i2t_q"] if shared is not None else None
    # after the first block the keys are this set's own tensor, spent once this sum is formed: add in place
    into = keys if scratch.enabled and not first else scratch.get("keys_sum", keys.shape, keys)
    summed = _image_to_tokens(i2t, keys, keys_pe, queries + query_pe, queries, scratch, into, q_img)
    return queries, layer.norm4(summed)


def _shared_first_layer(layer: TwoWayAttentionBlock, keys: torch.Tensor, key_pe: torch.Tensor) -> dict[str, torch.Tensor]:
    """The first block's projections of the (shared) image side; keys, key_pe: (N, C).

    t2i_k, t2i_v: (1, N, Ci) for ``_attend``; i2t_q: (heads, d, N), the layout of
    :func:`_image_to_tokens`'s (tokens x image) logits.
    """
    keys_pe = keys + key_pe
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    q = i2t.q_proj(keys_pe)  # (N, Ci)
    n, ci = q.shape
    return {
        "t2i_k": t2i.k_proj(keys_pe)[None],
        "t2i_v": t2i.v_proj(keys)[None],
        "i2t_q": q.t().contiguous().view(i2t.num_heads, ci // i2t.num_heads, n),
    }


def _upscale_matrices(decoder: MaskDecoder) -> tuple[torch.Tensor, torch.Tensor]:
    """``output_upscaling``'s two 2x2 stride-2 transposed convolutions as matrices: (C, 4 c1), (c1, 4 c2).

    ConvTranspose2d(k=2, s=2): out[o, 2y+i, 2x+j] = sum_c x[c, y, x] W[c, o, i, j] + b[o], so a
    token's row times the matrix gives its 2 x 2 outputs, columns ordered (i, j, o).
    """
    up1, _, _, up2, _ = decoder.output_upscaling
    return (
        up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, 4 * up1.out_channels),
        up2.weight.permute(0, 2, 3, 1).reshape(up2.in_channels, 4 * up2.out_channels),
    )


def _upscale_to_masks(
    decoder: MaskDecoder,
    matrices: tuple[torch.Tensor, torch.Tensor],
    keys: torch.Tensor,
    hyper: torch.Tensor,
    hw: tuple[int, int],
    scratch: _Scratch,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``output_upscaling`` then the hypernetwork product, in token-major layout.

    matrices: from :func:`_upscale_matrices` (once per call); keys: (h * w, C) transformer output;
    hyper: (K, C2) the kept mask tokens' hypernetwork outputs. Returns (K, 4h, 4w) low-resolution
    mask logits, as ``predict_masks`` (its masks sliced), into ``out`` when given.
    """
    up1, ln, act1, up2, act2 = decoder.output_upscaling
    w1, w2 = matrices
    n = keys.shape[0]
    h, w = hw
    c1, c2 = up1.out_channels, up2.out_channels
    x = torch.mm(keys, w1, out=scratch.get("up1", (n, 4 * c1), keys)).view(n * 4, c1).add_(up1.bias)  # ((y, x, i, j), c1)
    x = _activate(act1, F.layer_norm(x, (c1,), ln.weight, ln.bias, ln.eps), scratch.enabled)  # LayerNorm2d: over channels
    x = torch.mm(x, w2, out=scratch.get("up2", (n * 4, 4 * c2), keys)).view(n * 16, c2).add_(up2.bias)  # ((y, x, i, j, i2, j2), c2)
    x = _activate(act2, x, scratch.enabled)
    masks = torch.mm(x, hyper.t(), out=scratch.get("masks", (n * 16, hyper.shape[0]), keys))  # ((y, x, i, j, i2, j2), K)
    k = hyper.shape[0]
    # row 4y + 2i + i2, column 4x + 2j + j2
    image_order = masks.view(h, w, 2, 2, 2, 2, k).permute(6, 0, 2, 4, 1, 3, 5)
    if out is None:
        return image_order.reshape(k, 4 * h, 4 * w)
    return out.view(k, h, 2, 2, w, 2, 2).copy_(image_order).view(k, 4 * h, 4 * w)


def decode_shared(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    multimask_output: bool,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.forward`` for B prompt sets on one image, the prompt-independent work done once.

    Args:
        decoder: a segment-anything ``MaskDecoder`` (any size; its two-way transformer's blocks).
        image_embeddings: (1, C, h, w) one image's embedding.
        image_pe: (1, C, h, w) the prompt encoder's dense positional encoding.
        sparse_prompt_embeddings: (B, T, C).
        dense_prompt_embeddings: (B, C, h, w), or (1, C, h, w) (or one row expanded to B) when no
            set has a mask input: the first layer's image-side projections are then shared. B
            separate rows are treated as different, even if equal.
        multimask_output: the 3 multimask candidates (else the single-mask token), as the reference.
        out: optional (B, K, 4h, 4w) tensor the mask logits are written into (and returned), e.g.
            a view of the caller's result array: at inference each set's masks go straight there.
    Returns:
        (low-res mask logits (B, K, 4h, 4w), predicted IoU (B, K)), K = 3 or 1, in the decoder's dtype.
    """
    if image_embeddings.shape[0] != 1:
        raise ValueError(f"decode_shared takes one image's embedding, got a batch of {image_embeddings.shape[0]}")
    transformer = decoder.transformer
    b = sparse_prompt_embeddings.shape[0]
    h, w = image_embeddings.shape[-2:]
    key_pe = image_pe.flatten(2)[0].t().contiguous()  # (N, C)
    dense = dense_prompt_embeddings
    shared_dense = dense.shape[0] == 1 or dense.stride(0) == 0  # one row, or one row expanded
    src = image_embeddings + dense[:1] if shared_dense else image_embeddings + dense  # (1 or B, C, h, w)
    keys0 = src.flatten(2).transpose(1, 2).contiguous()  # (1 or B, N, C)
    layers = list(transformer.layers)
    shared = _shared_first_layer(layers[0], keys0[0], key_pe) if shared_dense else None

    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings), dim=1)
    kept = slice(1, None) if multimask_output else slice(0, 1)
    token_ids = list(range(decoder.num_mask_tokens))[kept]
    out_rows = [0] + [1 + t for t in token_ids]  # the IoU token and the kept mask tokens: all the final attention must give
    fin = transformer.final_attn_token_to_image
    scratch = _Scratch(image_embeddings)
    # at inference each set's masks are written straight into the result (no per-set tensor, no cat)
    shape = (b, len(token_ids), 4 * h, 4 * w)
    if out is not None and (tuple(out.shape) != shape or out.device != image_embeddings.device):
        raise ValueError(f"decode_shared: out must be {shape} on {image_embeddings.device}, got {tuple(out.shape)} on {out.device}")
    direct = scratch.enabled and (out is None or out.dtype == image_embeddings.dtype)
    masks = (out if out is not None else image_embeddings.new_empty(shape)) if direct else None
    matrices = _upscale_matrices(decoder)
    masks_out, iou_out = [], []
    for row in range(b):  # one set at a time: its (N x C) tensors stay in cache, and batch-invariant
        point_pe = tokens[row]  # (T, C)
        queries, keys = point_pe, keys0[0] if shared_dense else keys0[row]
        for i, layer in enumerate(layers):
            queries, keys = _block(layer, queries, keys, point_pe, key_pe, scratch, shared if i == 0 else None, first=i == 0)
        keys_pe = torch.add(keys, key_pe, out=scratch.get("keys_pe", keys.shape, keys))
        attn_out = _tokens_to_image(fin, (queries + point_pe)[out_rows], keys, keys_pe, scratch, "final_")
        hs = transformer.norm_final_attn(queries[out_rows] + attn_out)  # (1 + K, C)
        hyper = torch.stack([decoder.output_hypernetworks_mlps[t](hs[1 + j]) for j, t in enumerate(token_ids)])
        masks_out.append(_upscale_to_masks(decoder, matrices, keys, hyper, (h, w), scratch, None if masks is None else masks[row]))
        iou_out.append(decoder.iou_prediction_head(hs[:1])[:, kept])
    if masks is None:
        masks = torch.stack(masks_out) if out is None else out.copy_(torch.stack(masks_out))
    return masks, torch.cat(iou_out)
