"""Many prompt sets on one image through segment-anything's mask decoder, sharing what does not depend on the prompt.

segment-anything's ``MaskDecoder.predict_masks`` copies the image embedding once per prompt set
(``repeat_interleave``) and runs every step of the two-way transformer on each copy. Before the
first image-to-token attention, though, the image side is the same for every set whose dense
prompt embedding is the same (all sets without a mask input: ``no_mask_embed``), so the first
layer's key / value projections of the image tokens (token-to-image attention) and its query
projection (image-to-token attention) are computed once here and shared by all sets: 3 of the 10
(N x C) projections per set, N = 64 x 64 image tokens for SAM. Everything after is per set, as in
the reference, one set at a time: its (N x C) tensors stay in cache (a batch of sets was slower
per set on the CPU, 38.6 ms at 1 against 48.4 ms at 8 for vit_b), and a set's result does not
depend on which other sets share the call (bit for bit):

* token-to-image attention through ``scaled_dot_product_attention``; image-to-token attention
  with its logits laid out (tokens x image) so the softmax over a few tokens runs on long rows;
* ``output_upscaling`` (two 2x2 stride-2 transposed convolutions, ``LayerNorm2d``, GELU) as two
  matmuls in token-major layout, the layer norm over the last axis, and the hypernetwork product
  on the same layout; one permute at the end puts the (K, 4h, 4w) masks in image order;
* only the mask tokens that are returned (1 or the 3 multimask ones) are turned into masks.

Same weights (the decoder modules are read, never copied); outputs equal the reference within
fp32 rounding (tests/test_sam_decode.py against ``MaskDecoder.forward``).

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


def _attend_image_to_tokens(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Image-to-token attention: q (1 or B, N, Ci) image side, k, v (B, T, Ci) per set -> (B, N, Ci).

    N queries against a handful (T) of keys: the logits are laid out (T, N) so the softmax runs
    down a short axis over long contiguous rows (0.7 ms against 3.0 ms for the flash kernel, whose
    blocks are sized for long key sequences, on one vit_b set here).
    """
    qh, kh, vh = _heads(q, attn.num_heads), _heads(k, attn.num_heads), _heads(v, attn.num_heads)
    logits = torch.matmul(kh, qh.transpose(-1, -2)).mul_(kh.shape[-1] ** -0.5)  # (B, heads, T, N)
    weights = torch.softmax(logits, dim=-2)
    return _merge_heads(torch.matmul(weights.transpose(-1, -2), vh))


def _block(
    layer: TwoWayAttentionBlock,
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_pe: torch.Tensor,
    key_pe: torch.Tensor,
    shared: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward``; ``shared`` holds the image-side projections when ``keys`` is shared.

    queries, query_pe: (B, T, C); keys: (1 or B, N, C); key_pe: (1, N, C). Returns (B, T, C), (B, N, C).
    """
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)

    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    keys_pe = None
    if shared is not None:
        k_img, v_img, q_img = shared["t2i_k"], shared["t2i_v"], shared["i2t_q"]
    else:
        keys_pe = keys + key_pe
        k_img, v_img = t2i.k_proj(keys_pe), t2i.v_proj(keys)
    q = t2i.q_proj(queries + query_pe)
    queries = layer.norm2(queries + t2i.out_proj(_attend(t2i, q, k_img, v_img)))

    queries = layer.norm3(queries + layer.mlp(queries))

    q_tok = queries + query_pe
    if shared is None:
        q_img = i2t.q_proj(keys_pe)
    attn_out = i2t.out_proj(_attend_image_to_tokens(i2t, q_img, i2t.k_proj(q_tok), i2t.v_proj(queries)))
    keys = layer.norm4(keys + attn_out)
    return queries, keys


def _shared_first_layer(layer: TwoWayAttentionBlock, keys: torch.Tensor, key_pe: torch.Tensor) -> dict[str, torch.Tensor]:
    """The first block's projections of the (shared) image side: (1, N, Ci) each."""
    keys_pe = keys + key_pe
    return {
        "t2i_k": layer.cross_attn_token_to_image.k_proj(keys_pe),
        "t2i_v": layer.cross_attn_token_to_image.v_proj(keys),
        "i2t_q": layer.cross_attn_image_to_token.q_proj(keys_pe),
    }


def _upscale_to_masks(decoder: MaskDecoder, keys: torch.Tensor, hyper: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``output_upscaling`` then the hypernetwork product, in token-major layout.

    keys: (B, h * w, C) transformer output; hyper: (B, K, C2) the kept mask tokens' hypernetwork
    outputs. Returns (B, K, 4h, 4w) low-resolution mask logits, as ``predict_masks`` (its masks sliced).
    """
    up1, ln, act1, up2, act2 = decoder.output_upscaling
    b, n, c = keys.shape
    h, w = hw
    c1, c2 = up1.out_channels, up2.out_channels
    # ConvTranspose2d(k=2, s=2): out[o, 2y+i, 2x+j] = sum_c x[c, y, x] W[c, o, i, j] + b[o]
    w1 = up1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)
    x = torch.matmul(keys, w1).view(b, n, 4, c1).add_(up1.bias)  # (B, y*x, (i, j), c1)
    x = act1(F.layer_norm(x, (c1,), ln.weight, ln.bias, ln.eps))  # LayerNorm2d: over channels
    w2 = up2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    x = act2(torch.matmul(x, w2).view(b, n * 16, c2).add_(up2.bias))  # (B, (y, x, i, j, i2, j2), c2)
    masks = torch.matmul(x, hyper.transpose(1, 2))  # (B, (y, x, i, j, i2, j2), K)
    k = hyper.shape[1]
    # row 4y + 2i + i2, column 4x + 2j + j2
    return masks.view(b, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, k, 4 * h, 4 * w)


def decode_shared(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    multimask_output: bool,
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
    Returns:
        (low-res mask logits (B, K, 4h, 4w), predicted IoU (B, K)), K = 3 or 1, in the decoder's dtype.
    """
    if image_embeddings.shape[0] != 1:
        raise ValueError(f"decode_shared takes one image's embedding, got a batch of {image_embeddings.shape[0]}")
    transformer = decoder.transformer
    b = sparse_prompt_embeddings.shape[0]
    _, c, h, w = image_embeddings.shape
    key_pe = image_pe.flatten(2).transpose(1, 2)  # (1, N, C)
    dense = dense_prompt_embeddings
    shared_dense = dense.shape[0] == 1 or dense.stride(0) == 0  # one row, or one row expanded
    src = image_embeddings + dense[:1] if shared_dense else image_embeddings + dense  # (1 or B, C, h, w)
    keys0 = src.flatten(2).transpose(1, 2).contiguous()  # (1 or B, N, C)
    layers = list(transformer.layers)
    shared = _shared_first_layer(layers[0], keys0, key_pe) if shared_dense else None

    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings), dim=1)
    kept = slice(1, None) if multimask_output else slice(0, 1)
    token_ids = list(range(decoder.num_mask_tokens))[kept]
    masks_out, iou_out = [], []
    for row in range(b):  # one set at a time: its (N x C) tensors stay in cache, and batch-invariant
        point_pe = tokens[row : row + 1]
        queries, keys = point_pe, keys0 if shared_dense else keys0[row : row + 1]
        for i, layer in enumerate(layers):
            queries, keys = _block(layer, queries, keys, point_pe, key_pe, shared if i == 0 else None)
        fin = transformer.final_attn_token_to_image
        q = fin.q_proj(queries + point_pe)
        attn_out = fin.out_proj(_attend(fin, q, fin.k_proj(keys + key_pe), fin.v_proj(keys)))
        hs = transformer.norm_final_attn(queries + attn_out)
        hyper = torch.stack([decoder.output_hypernetworks_mlps[t](hs[:, 1 + t, :]) for t in token_ids], dim=1)
        masks_out.append(_upscale_to_masks(decoder, keys, hyper, (h, w)))
        iou_out.append(decoder.iou_prediction_head(hs[:, 0, :])[:, kept])
    return torch.cat(masks_out), torch.cat(iou_out)
