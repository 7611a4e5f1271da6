"""The shared-work mask decoder (segprompt.models.sam_decode) against segment-anything's ``MaskDecoder.forward``.

Decoders are segment-anything's own classes with random, non-trivial weights; every comparison
runs the reference module on the same inputs.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from segment_anything.modeling import MaskDecoder, TwoWayTransformer

from segprompt.errors import ConfigError
from segprompt.models.sam import SamSegmenter
from segprompt.models.sam_arch import tiny_arch
from segprompt.models.sam_decode import decode_shared, hooks_on
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet


def _decoder(depth: int = 2, dim: int = 32, seed: int = 0) -> MaskDecoder:
    torch.manual_seed(seed)
    dec = MaskDecoder(
        transformer_dim=dim,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=dim, mlp_dim=64, num_heads=4),
        num_multimask_outputs=3,
        iou_head_hidden_dim=32,
    ).eval()
    with torch.no_grad():  # LayerNorm2d starts as the identity and the hypernetworks small: give them values
        for name, p in dec.named_parameters():
            if "output_upscaling.1" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
        for mlp in dec.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(20.0)
    return dec


def _inputs(seed: int, sets: int, tokens: int, dense_rows: int) -> tuple[torch.Tensor, ...]:
    """(embedding, pe, sparse, dense) on an 8 x 8 grid of 32 channels."""
    g = torch.Generator().manual_seed(seed)
    emb, pe = torch.randn(1, 32, 8, 8, generator=g), torch.randn(1, 32, 8, 8, generator=g)
    return emb, pe, torch.randn(sets, tokens, 32, generator=g), torch.randn(dense_rows, 32, 8, 8, generator=g)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("depth,hw,multimask", [(2, (8, 8), True), (2, (8, 8), False), (3, (6, 10), True)])
def test_matches_mask_decoder_forward(depth, hw, multimask):
    """Shared dense embedding (no mask input): every set, any depth, a non-square grid."""
    dec = _decoder(depth)
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 32, *hw, generator=g)
    pe = torch.randn(1, 32, *hw, generator=g)
    sparse = torch.randn(5, 3, 32, generator=g)
    dense = torch.randn(1, 32, 1, 1, generator=g).expand(5, 32, *hw)  # no_mask_embed, broadcast
    with torch.no_grad():
        ref_masks, ref_iou = dec(emb, pe, sparse, dense, multimask)
        masks, iou = decode_shared(dec, emb, pe, sparse, dense, multimask)
    assert masks.shape == ref_masks.shape == (5, 3 if multimask else 1, 4 * hw[0], 4 * hw[1])
    assert _rel(masks, ref_masks) < 1e-5
    assert (torch.sign(masks) == torch.sign(ref_masks)).float().mean() >= 0.999
    assert 0.1 < float((ref_masks > 0).float().mean()) < 0.9  # masks with edges
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    depth=st.integers(1, 3),
    heads=st.sampled_from([1, 2, 4, 8]),
    hw=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    sets=st.integers(1, 4),
    tokens=st.integers(1, 6),
    shared_dense=st.booleans(),
    multimask=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_decoder_shape_matches_the_reference(depth, heads, hw, sets, tokens, shared_dense, multimask, seed):
    """Property: any depth, head count, grid, number of sets and prompt tokens, shared or per-set dense input."""
    torch.manual_seed(seed)
    dec = MaskDecoder(
        transformer_dim=32,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=32, mlp_dim=48, num_heads=heads),
        num_multimask_outputs=3,
        iou_head_hidden_dim=16,
    ).eval()
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if "norm" in name or "output_upscaling.1" in name:
                p.add_(torch.randn_like(p) * 0.3)
    g = torch.Generator().manual_seed(seed)
    emb, pe = torch.randn(1, 32, *hw, generator=g), torch.randn(1, 32, *hw, generator=g)
    sparse = torch.randn(sets, tokens, 32, generator=g)
    dense = torch.randn(1, 32, 1, 1, generator=g).expand(sets, 32, *hw) if shared_dense else torch.randn(sets, 32, *hw, generator=g)
    with torch.no_grad():
        ref_masks, ref_iou = dec(emb, pe, sparse, dense, multimask)
        masks, iou = decode_shared(dec, emb, pe, sparse, dense, multimask)
    assert masks.shape == ref_masks.shape
    torch.testing.assert_close(masks, ref_masks, rtol=1e-4, atol=1e-5 * float(ref_masks.abs().max()) + 1e-6)
    torch.testing.assert_close(iou, ref_iou, rtol=1e-4, atol=1e-5)


def test_per_set_dense_embeddings_are_not_shared():
    """Mask inputs make each set's image side different: the first layer is computed per set."""
    dec = _decoder()
    emb, pe, sparse, dense = _inputs(2, sets=4, tokens=2, dense_rows=4)
    with torch.no_grad():
        ref_masks, ref_iou = dec(emb, pe, sparse, dense, True)
        masks, iou = decode_shared(dec, emb, pe, sparse, dense, True)
        shared_wrongly = decode_shared(dec, emb, pe, sparse, dense[:1], True)[0]
    assert _rel(masks, ref_masks) < 1e-5
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)
    assert _rel(shared_wrongly[1:], ref_masks[1:]) > 1e-2  # the dense input matters: the test can fail


def test_a_set_is_bit_identical_alone_or_in_a_batch():
    dec = _decoder()
    emb, pe, sparse, dense = _inputs(3, sets=6, tokens=3, dense_rows=1)
    with torch.no_grad():
        masks, iou = decode_shared(dec, emb, pe, sparse, dense, True)
        for i in range(6):
            alone_masks, alone_iou = decode_shared(dec, emb, pe, sparse[i : i + 1], dense, True)
            assert torch.equal(alone_masks[0], masks[i]) and torch.equal(alone_iou[0], iou[i])


def test_masks_are_written_into_a_given_out_tensor():
    dec = _decoder()
    emb, pe, sparse, dense = _inputs(5, sets=3, tokens=2, dense_rows=1)
    with torch.no_grad():
        masks, iou = decode_shared(dec, emb, pe, sparse, dense, True)
        out = torch.full((3, 3, 32, 32), float("nan"))
        got, got_iou = decode_shared(dec, emb, pe, sparse, dense, True, out=out)
        assert got is out and torch.equal(out, masks) and torch.equal(got_iou, iou)
        with pytest.raises(ValueError, match=r"out must be \(3, 1, 32, 32\)"):
            decode_shared(dec, emb, pe, sparse, dense, False, out=out)


def test_gradients_flow_like_the_reference():
    dec = _decoder()
    twin = copy.deepcopy(dec)
    emb, pe, sparse, dense = _inputs(4, sets=3, tokens=2, dense_rows=1)
    g = torch.Generator().manual_seed(40)
    w = torch.randn(3, 3, 32, 32, generator=g)
    w_iou = torch.randn(3, 3, generator=g)

    def loss(out):
        return (out[0] * w).sum() + (out[1] * w_iou).sum()

    loss(dec(emb, pe, sparse, dense.expand(3, -1, -1, -1), True)).backward()
    loss(decode_shared(twin, emb, pe, sparse, dense, True)).backward()
    pairs = []
    for (name, p), q in zip(dec.named_parameters(), twin.parameters()):
        if q.grad is None:  # the single-mask token's hypernetwork: the reference computes and drops its mask
            assert name.startswith("output_hypernetworks_mlps.0.") and not p.grad.any(), name
        else:
            pairs.append((name, p.grad, q.grad))
    scale = max(float(ref.abs().max()) for _, ref, _ in pairs)
    assert len(pairs) > 40 and scale > 0
    for name, ref, got in pairs:  # a self-attention key bias has a zero gradient: compare on the common scale
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-5 * scale, msg=name)


def test_hooks_on_the_transformer_are_detected():
    """PerSAM guides the decoder through hooks, which the shared path would skip."""
    from segprompt.models.persam import persam_guidance

    dec = _decoder()
    assert not hooks_on(dec)
    with persam_guidance(dec.transformer, target=torch.randn(32)):
        assert hooks_on(dec)
    assert not hooks_on(dec)


def _tiny_segmenters():
    torch.manual_seed(0)
    model = tiny_arch(img_size=128).build()
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:  # masks with real edges
            mlp.layers[-1].weight.mul_(40.0)
    ref = SamSegmenter(model=copy.deepcopy(model), decoder="reference", multimask="all")
    return ref, SamSegmenter(model=model, multimask="all", decoder="shared")


def test_segmenter_shared_decoder_agrees_with_reference():
    ref, fast = _tiny_segmenters()
    assert fast.decoder_path == "shared" and ref.decoder_path == "reference"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)
    blob = np.zeros((90, 130), bool)
    blob[20:60, 30:90] = True
    prompts = [PromptSet(points=Points(rng.uniform([0, 0], [129, 89], size=(2, 2)), [1, 0])) for _ in range(6)]
    prompts += [PromptSet(box=Box([20.0, 10.0, 110.0, 80.0])), PromptSet(points=Points([[60.0, 40.0]], [1]), mask=MaskPrompt(blob))]
    state = ref.encode(image)
    p_ref, p_fast = ref.segment(state, prompts), fast.segment(state, prompts)
    assert (p_fast.masks == p_ref.masks).mean() >= 0.999
    assert 0.05 < p_ref.masks.mean() < 0.95
    np.testing.assert_allclose(p_fast.scores, p_ref.scores, atol=1e-4)
    np.testing.assert_allclose(p_fast.logits, p_ref.logits, rtol=1e-4, atol=1e-3)
    for i in (0, 3, 7):  # a set's masks do not depend on the other sets in the call, bit for bit
        alone = fast.segment(state, prompts[i])
        assert np.array_equal(alone.masks[0], p_fast.masks[i]) and np.array_equal(alone.scores[0], p_fast.scores[i])
    # interleaved structures: each group's rows are no longer consecutive (results copied, not written in place)
    order = [6, 0, 7, 1, 2, 5, 3, 4]
    p_mixed = fast.segment(state, [prompts[i] for i in order])
    assert np.array_equal(p_mixed.masks, p_fast.masks[order]) and np.array_equal(p_mixed.logits, p_fast.logits[order])


def test_auto_picks_shared_for_large_grids_only_and_unknown_is_refused():
    assert SamSegmenter(model=tiny_arch(img_size=128).build()).decoder_path == "reference"  # 8 x 8 tokens: batching wins
    assert SamSegmenter(model=tiny_arch(img_size=512).build()).decoder_path == "reference"  # 32 x 32: still
    assert SamSegmenter(model=tiny_arch(img_size=1024).build()).decoder_path == "shared"  # 64 x 64, as the official SAMs
    assert SamSegmenter(model=tiny_arch(img_size=1024).build(), decoder="reference").decoder_path == "reference"
    from segprompt.models.sam import _auto_decoder

    assert _auto_decoder("cpu", 4096) == "shared" and _auto_decoder("cuda", 4096) == "reference"  # one set at a time: launch-bound
    assert _auto_decoder("cuda:1", 4096) == "reference" and _auto_decoder("cpu", 1024) == "reference"
    with pytest.raises(ConfigError, match="unknown SAM decoder"):
        SamSegmenter(model=tiny_arch().build(), decoder="fastest")


@pytest.mark.parametrize("original", [(64, 64), (48, 64), (100, 75)])
def test_upscale_logits_equals_segment_anythings_two_resizes(original):
    """The second resize is skipped when the input size is the original size: same values, bit for bit."""
    import torch.nn.functional as F

    from segprompt.models.resize import LongestSide

    tf = LongestSide(64, original)
    low = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    h, w = tf.input_size
    expected = F.interpolate(F.interpolate(low, (64, 64), mode="bilinear", align_corners=False)[..., :h, :w], original, mode="bilinear", align_corners=False)
    assert torch.equal(tf.upscale_logits(low), expected)
    padded = torch.full((2, 3, 64, 64), float("nan"))  # the reused buffer of segment(): same bits
    assert torch.equal(tf.upscale_logits(low, padded), expected)


def test_bf16_autocast_runs_the_shared_path_close_to_the_reference():
    """precision="bf16" (autocast, here on the CPU): the shared path keeps the reference's dtypes."""
    torch.manual_seed(0)
    model = tiny_arch(img_size=128).build()
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
    ref = SamSegmenter(model=copy.deepcopy(model), decoder="reference", precision="bf16", multimask="all")
    fast = SamSegmenter(model=model, decoder="shared", precision="bf16", multimask="all")
    image = np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8)
    prompts = [PromptSet(points=Points([[40.0, 30.0], [100.0, 60.0]], [1, 0])), PromptSet(box=Box([20.0, 10.0, 110.0, 80.0]))]
    state = ref.encode(image)
    p_ref, p_fast = ref.segment(state, prompts), fast.segment(state, prompts)
    assert p_fast.logits.dtype == np.float32
    assert (p_fast.masks == p_ref.masks).mean() >= 0.98
    np.testing.assert_allclose(p_fast.scores, p_ref.scores, atol=0.05)
