"""The SDPA attention path of segment-anything's image encoder against segment-anything's own forward.

Tiny ``ImageEncoderViT`` configurations (relative positions on, windowed and global blocks, random
non-zero relative-position tables) are run with the reference forward and with the patched one;
the ``sam`` Segmenter is compared with attention="sdpa" and "reference" on a tiny random checkpoint.
"""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Attention, add_decomposed_rel_pos

from segprompt.errors import ConfigError
from segprompt.models.sam import SamSegmenter
from segprompt.models.sam_arch import tiny_arch
from segprompt.models.sam_fast import (
    WorkspaceImageEncoderViT,
    attention_mode,
    bias_workspace,
    decomposed_rel_pos_bias,
    disable_fast_attention,
    enable_fast_attention,
)
from segprompt.prompts import Box, Points, PromptSet


def _encoder(img_size: int, window: int, seed: int = 0) -> ImageEncoderViT:
    torch.manual_seed(seed)
    enc = ImageEncoderViT(
        img_size=img_size,
        patch_size=8,
        embed_dim=48,
        depth=3,
        num_heads=3,
        mlp_ratio=2.0,
        out_chans=32,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_abs_pos=True,
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=window,
        global_attn_indexes=(1,),
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "rel_pos" in name or name == "pos_embed":  # zero-initialised: give them values
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return enc


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("img_size,window", [(96, 4), (120, 4)])  # 120/8 = 15 tokens: windows padded
def test_sdpa_encoder_matches_reference(img_size, window):
    enc = _encoder(img_size, window)
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = enc(x)
        enable_fast_attention(enc)
        assert attention_mode(enc) == "sdpa"
        fast = enc(x)
    assert fast.shape == ref.shape == (2, 32, img_size // 8, img_size // 8)
    assert _rel(fast, ref) < 1e-5
    # the two batch items stay independent
    with torch.no_grad():
        one = enc(x[1:])
    assert _rel(one[0], fast[1]) < 1e-5


def test_bias_is_segment_anything_decomposed_rel_pos():
    """The additive mask equals what add_decomposed_rel_pos adds to a zero attention map."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(6, 5 * 7, 16, generator=g)
    table_h, table_w = torch.randn(9, 16, generator=g), torch.randn(13, 16, generator=g)
    expected = add_decomposed_rel_pos(torch.zeros(6, 35, 35), q, table_h, table_w, (5, 7), (5, 7))
    assert torch.allclose(decomposed_rel_pos_bias(q, table_h, table_w, (5, 7), (5, 7)), expected, atol=1e-6)


def test_single_attention_block_against_hand_written_attention():
    """An independent softmax(q k^T * scale + bias) v for one global block."""
    torch.manual_seed(3)
    attn = Attention(24, num_heads=2, use_rel_pos=True, input_size=(6, 6))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(2, 6, 6, 24)
    enable_fast_attention(attn)
    with torch.no_grad():
        got = attn(x)
        qkv = attn.qkv(x).reshape(2, 36, 3, 2, 12).permute(2, 0, 3, 1, 4).reshape(3, 4, 36, 12)
        q, k, v = qkv
        bias = torch.zeros(4, 6, 6, 6, 6)
        for i in range(6):
            for j in range(6):
                for a in range(6):
                    for b in range(6):
                        bias[:, i, j, a, b] = q.reshape(4, 6, 6, 12)[:, i, j] @ (attn.rel_pos_h[i - a + 5] + 0) + q.reshape(
                            4, 6, 6, 12
                        )[:, i, j] @ attn.rel_pos_w[j - b + 5]
        logits = q @ k.transpose(1, 2) / np.sqrt(12) + bias.reshape(4, 36, 36)
        out = (logits.softmax(-1) @ v).reshape(2, 2, 6, 6, 12).permute(0, 2, 3, 1, 4).reshape(2, 6, 6, 24)
        expected = attn.proj(out)
    assert _rel(got, expected) < 1e-5


def test_gradients_match_reference():
    """Finetuning goes through the patched forward: gradients, relative-position tables included."""
    enc = _encoder(64, 4, seed=4)
    fast = enable_fast_attention(copy.deepcopy(enc))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    w = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(7))  # a loss with no cancellation
    (enc(x) * w).sum().backward()
    (fast(x) * w).sum().backward()
    for (name, p), q in zip(enc.named_parameters(), fast.parameters()):
        assert _rel(q.grad, p.grad) < 1e-4, name


def test_disable_restores_reference_bit_for_bit():
    enc = _encoder(64, 4)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = enc(x)
        enable_fast_attention(enc)
        fast = enc(x)
        disable_fast_attention(enc)
        back = enc(x)
    assert not torch.equal(fast, ref)  # the patch did take effect
    assert torch.equal(back, ref)
    assert attention_mode(enc) == "reference"
    assert all("forward" not in a.__dict__ for a in enc.modules() if isinstance(a, Attention))
    # a deep copy keeps the patch, bound to the copy's own weights
    enable_fast_attention(enc)
    twin = copy.deepcopy(enc)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.01)
        assert attention_mode(twin) == "sdpa"
        assert torch.equal(enc(x), fast)


def test_bias_workspace_reuses_one_buffer_per_shape_without_autograd():
    """Inside the scope, blocks of one shape share the bias buffer; with gradients, each gets its own."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(6, 36, 8, generator=g)
    th, tw = torch.randn(11, 8, generator=g), torch.randn(11, 8, generator=g)
    fresh = decomposed_rel_pos_bias(q, th, tw, (6, 6), (6, 6))
    with bias_workspace():
        first = decomposed_rel_pos_bias(q, th, tw, (6, 6), (6, 6))
        assert torch.equal(first, fresh)
        second = decomposed_rel_pos_bias(q * 2, th, tw, (6, 6), (6, 6))
        assert second.data_ptr() == first.data_ptr()  # the same buffer, overwritten
        assert torch.allclose(second, 2 * fresh, rtol=1e-5, atol=1e-5)
        other = decomposed_rel_pos_bias(q[:3], th, tw, (6, 6), (6, 6))  # another shape: its own
        assert other.data_ptr() != first.data_ptr()
        qg = q.clone().requires_grad_(True)
        with_grad = decomposed_rel_pos_bias(qg, th, tw, (6, 6), (6, 6))
        assert with_grad.data_ptr() != first.data_ptr() and with_grad.requires_grad
    from segprompt.models import sam_fast

    assert sam_fast._workspace.buffers is None  # the scope closed: its buffers are released


def test_encoder_opens_the_workspace_and_switches_back():
    enc = _encoder(120, 4)
    x = torch.randn(1, 3, 120, 120, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = enc(x)
        enable_fast_attention(enc)
        assert type(enc) is WorkspaceImageEncoderViT
        fast = enc(x)
        again = enc(x)  # the second forward overwrites buffers of the first: no stale bias leaks
        disable_fast_attention(enc)
        assert type(enc) is ImageEncoderViT
    assert _rel(fast, ref) < 1e-5 and torch.equal(fast, again)


def test_chunked_mlp_matches_and_keeps_gradients(monkeypatch):
    from segment_anything.modeling.common import MLPBlock

    from segprompt.backbones.lora import LoRALinear
    from segprompt.models import sam_fast

    monkeypatch.setattr(sam_fast, "MLP_CHUNK_ROWS", 7)  # 5 x 6 = 30 tokens: 5 chunks, the last one short
    torch.manual_seed(0)
    mlp = MLPBlock(16, 40).eval()
    x = torch.randn(1, 5, 6, 16)
    with torch.no_grad():
        ref = mlp(x)
        mlp.__class__ = sam_fast.ChunkedMLPBlock
        assert _rel(mlp(x), ref) < 1e-6  # GEMM blocking may differ with the row count: rounding only
        mlp.lin2 = LoRALinear(mlp.lin2, rank=2)  # a wrapped layer takes the generic path
        torch.nn.init.normal_(mlp.lin2.lora_b)  # a non-zero update
        wrapped_ref = MLPBlock.forward(mlp, x)
        assert _rel(mlp(x), wrapped_ref) < 1e-6 and _rel(wrapped_ref, ref) > 1e-3
        plain = MLPBlock(16, 40).eval()
        chunked = copy.deepcopy(plain)
        chunked.__class__ = sam_fast.ChunkedMLPBlock
        with torch.autocast("cpu", dtype=torch.bfloat16):  # out= bypasses autocast: the chunks call the layer
            want, got = plain(x), chunked(x)
        assert got.dtype == want.dtype == torch.bfloat16 and _rel(got.float(), want.float()) < 1e-2
    xg = x.clone().requires_grad_(True)  # with autograd: segment-anything's forward, gradients flow
    mlp(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_encoder_mlps_switch_and_decoder_mlps_do_not():
    from segment_anything.modeling.common import MLPBlock

    from segprompt.models import sam_fast
    from segprompt.models.sam_arch import tiny_arch

    sam = tiny_arch().build()
    enable_fast_attention(sam)
    enc_mlps = [b.mlp for b in sam.image_encoder.blocks]
    assert enc_mlps and all(type(m) is sam_fast.ChunkedMLPBlock for m in enc_mlps)
    dec_mlps = [m for m in sam.mask_decoder.modules() if isinstance(m, MLPBlock)]
    assert dec_mlps and all(type(m) is MLPBlock for m in dec_mlps)
    disable_fast_attention(sam)
    assert all(type(b.mlp) is MLPBlock for b in sam.image_encoder.blocks)


def test_bad_mode_and_no_blocks():
    with pytest.raises(ConfigError, match="unknown attention mode"):
        enable_fast_attention(_encoder(64, 4), "flash3")
    with pytest.raises(ConfigError, match="no segment-anything"):
        enable_fast_attention(torch.nn.Linear(2, 2))


def test_sam_segmenter_sdpa_agrees_with_reference():
    torch.manual_seed(0)
    arch = tiny_arch(img_size=128, encoder_depth=3, encoder_global_attn_indexes=(2,), window_size=5)
    model = arch.build()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.5)
        for mlp in model.mask_decoder.output_hypernetworks_mlps:  # masks with real edges
            mlp.layers[-1].weight.mul_(40.0)
    ref = SamSegmenter(model=copy.deepcopy(model), attention="reference", multimask="all")
    fast = SamSegmenter(model=model)  # the default
    assert attention_mode(fast.model) == "sdpa" and attention_mode(ref.model) == "reference"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)
    prompts = [
        PromptSet(points=Points([[40.0, 30.0]], [1])),
        PromptSet(points=Points([[10.0, 70.0], [100.0, 20.0]], [1, 0])),
        PromptSet(box=Box([20.0, 10.0, 110.0, 80.0])),
    ]
    s_ref, s_fast = ref.encode(image), fast.encode(image)
    assert _rel(s_fast.features["embeddings"], s_ref.features["embeddings"]) < 1e-5
    p_ref = ref.segment(s_ref, prompts, multimask="all")
    p_fast = fast.segment(s_fast, prompts, multimask="all")
    assert (p_fast.masks == p_ref.masks).mean() >= 0.999
    assert 0.05 < p_ref.masks.mean() < 0.95  # non-trivial masks
    np.testing.assert_allclose(p_fast.scores, p_ref.scores, atol=1e-4)
    # the embedding cache keeps the two modes apart (they agree to ~1e-6, not bit for bit)
    assert ref.cache_signature()["attention"] == "reference" and fast.cache_signature()["attention"] == "sdpa"


def test_a_patched_model_pickles_and_keeps_its_mode():
    """Workers and caches may pickle a model: the sdpa mode survives, and the output is unchanged."""
    import pickle

    from segment_anything.modeling.image_encoder import ImageEncoderViT

    from segprompt.models.sam_fast import attention_mode, enable_fast_attention

    torch.manual_seed(0)
    enc = ImageEncoderViT(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, out_chans=16, use_rel_pos=True, window_size=4, global_attn_indexes=(1,))
    enable_fast_attention(enc.eval())
    copy = pickle.loads(pickle.dumps(enc))
    x = torch.randn(1, 3, 64, 64)
    assert attention_mode(copy) == "sdpa" and type(copy) is type(enc)
    with torch.no_grad():
        assert torch.equal(copy(x), enc(x))


def test_compiled_encoder_matches_eager_and_keeps_the_state_dict():
    """compile_mode= wraps the encoder call only (the sdpa path under torch.compile plans its own bias buffers)."""
    torch.manual_seed(0)
    model = tiny_arch(img_size=64, encoder_depth=2, encoder_global_attn_indexes=(1,), window_size=2).build()
    eager = SamSegmenter(model=copy.deepcopy(model))
    compiled = SamSegmenter(model=model, compile_mode="default")
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    a = eager.encode(image).features["embeddings"]
    b = compiled.encode(image).features["embeddings"]
    assert _rel(b, a) < 1e-4
    assert compiled._run_encoder is not compiled.model.image_encoder
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())  # no _orig_mod. prefix
