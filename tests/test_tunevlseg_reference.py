"""The TuneVLSeg prompt learners against a short independent re-implementation of the reference
forward (naamiinepal/tunevlseg, TVS: ``src/models/core_models/coop/{vpt_clipseg,
base_multimodal_clipseg, base_clipseg, coop_clipseg}.py`` and ``context_learner/*.py``; MaPLe:
muzairkhattak/multimodal-prompt-learning ``clip/model.py``, ``trainers/maple.py``).

The reference below drives transformers' CLIPSeg modules directly, as TVS's copied forward code
does: text = token embeddings with the context inserted after BOS (+ position embeddings, causal
and padding masks, slots 1..n replaced after layer idx < depth, EOS pooling shifted by n);
vision = embeddings -> cat(row 0) -> pre_layrnorm -> encoder layers, the last n tokens replaced
in place after layer idx < depth, ``hidden_states[i + 1]`` for i in extract_layers handed to the
decoder *with* the prompt tokens; decoder = reduces, FiLM, decoder layers over all tokens, then
``output[:, 1:-n]``, transposed convolution, and TVS's extra layer ``(1 - r) * logits + r *
conv5x5(upsample(x))``. The prompt rows are recomputed from the learner's parameters with plain
functional code (or, for Shared-Attention, with TVS's own layout: a ``batch_first=False``
``nn.TransformerEncoderLayer`` fed ``context_vectors[index].unsqueeze(0)``). It never calls the
backbone adapters or the VLSM wrappers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segprompt.errors import ConfigError
from tunevlseg.learners import create_learner
from tunevlseg.models import tiny_clipseg

TEXTS = ["cat", "pink polyp"]
LEARNERS = ["coop", "cocoop", "vpt-shallow", "vpt-deep", "maple", "shared-separate", "shared-attention"]


@pytest.fixture(scope="module")
def vlsm():
    return tiny_clipseg(seed=0, layers=4, extract_layers=(0, 1, 2))


def _images(vlsm, batch=2, seed=0):
    return torch.randn(batch, 3, *vlsm.image_size, generator=torch.Generator().manual_seed(seed))


def _tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


# -- the reference forward -----------------------------------------------------------------------


def ref_text_features(model, ids, mask, rows):
    """TVS ``embeddings_forward`` + ``text_transformer_model_forward`` + pooling; rows (d, n, D)
    or (B, d, n, D) per-sample (CoCoOp), or None."""
    tm = model.clip.text_model
    x = tm.embeddings.token_embedding(ids)
    b = ids.shape[0]
    n = 0 if rows is None else rows.shape[-2]

    def row(r):
        return rows[:, r] if rows.ndim == 4 else rows[r].expand(b, -1, -1)

    if rows is not None:  # first, context, mid, last (all tokens kept: the sequence is short)
        x = torch.cat([x[:, :1], row(0), x[:, 1:]], dim=1)
        mask = torch.cat([torch.ones(b, n, dtype=mask.dtype), mask], dim=1)
    length = x.shape[1]
    x = x + tm.embeddings.position_embedding(torch.arange(length))[None]
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    depth = 0 if rows is None else rows.shape[-3]
    for idx, layer in enumerate(tm.encoder.layers, 1):
        x = _tensor(layer(x, attention_mask=additive))
        if idx < depth:
            x = torch.cat([x[:, :1], row(idx), x[:, 1 + n :]], dim=1)
    x = tm.final_layer_norm(x)
    eos = (ids == tm.eos_token_id).int().argmax(-1) + n
    return model.clip.text_projection(x[torch.arange(b), eos])


def ref_image_features(model, pixels):
    """The unprompted pooled, projected image feature (CoCoOp's meta-net input)."""
    vm = model.clip.vision_model
    x = vm.pre_layrnorm(vm.embeddings(pixels, interpolate_pos_encoding=True))
    for layer in vm.encoder.layers:
        x = _tensor(layer(x, attention_mask=None))
    return model.clip.visual_projection(vm.post_layernorm(x[:, 0]))


def ref_activations(model, pixels, rows, post_norm=False):
    """TVS ``vision_model_forward`` + ``vision_transformer_model_forward``: the decoder's inputs."""
    vm = model.clip.vision_model
    x = vm.embeddings(pixels, interpolate_pos_encoding=True)
    b = x.shape[0]
    n = 0 if rows is None else rows.shape[1]
    if rows is not None and not post_norm:
        x = torch.cat([x, rows[0].expand(b, -1, -1)], dim=1)  # "concat before the layernorm"
    x = vm.pre_layrnorm(x)
    if rows is not None and post_norm:
        x = torch.cat([x, rows[0].expand(b, -1, -1)], dim=1)
    states = [x]
    depth = 0 if rows is None else rows.shape[0]
    for idx, layer in enumerate(vm.encoder.layers, 1):
        x = _tensor(layer(x, attention_mask=None))
        if idx < depth:  # mutate_image_hidden_states: hidden_states[:, -n:] = row idx
            x = torch.cat([x[:, : x.shape[1] - n], rows[idx].expand(b, -1, -1)], dim=1)
        states.append(x)
    return [states[i + 1] for i in model.extract_layers], n


def ref_decoder(model, acts, cond, n, extra=None):
    """TVS ``base_clipseg.decoder_forward`` (with ``use_new_last_layer``: ``extra`` = (conv
    weight, conv bias, residual ratio)). -> (B, 1, H, W)."""
    dec = model.decoder
    out = None
    for i, (act, layer, reduce) in enumerate(zip(acts[::-1], dec.layers, dec.reduces)):
        out = reduce(act) if out is None else reduce(act) + out
        if i == dec.conditional_layer:
            out = (dec.film_mul(cond) * out.permute(1, 0, 2) + dec.film_add(cond)).permute(1, 0, 2)
        out = _tensor(layer(out, attention_mask=None))
    out = out[:, 1 : out.shape[1] - n].permute(0, 2, 1)  # remove CLS and the prompts
    b, c, tokens = out.shape
    size = math.isqrt(tokens)
    out = out.reshape(b, c, size, size)
    logits = dec.transposed_convolution(out)
    if extra is not None:
        weight, bias, ratio = extra
        patch = model.config.vision_config.patch_size
        up = F.interpolate(out, scale_factor=float(patch), mode="bilinear", align_corners=False)
        k = weight.shape[-1] // 2
        added = F.conv2d(F.pad(up, (k, k, k, k), mode="replicate"), weight, bias)
        logits = (1 - ratio) * logits + ratio * added
    return logits


def ref_logits(model, pixels, ids, mask, text_rows=None, vision_rows=None, extra=None, post_norm=False):
    acts, n = ref_activations(model, pixels, vision_rows, post_norm)
    cond = ref_text_features(model, ids, mask, text_rows)
    return ref_decoder(model, acts, cond, n, extra)


# -- the rows of each learner, recomputed from its parameters --------------------------------------


def _linear(x, lin):
    return F.linear(x, lin.weight, lin.bias)


def _layer_norm(x, ln):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def ref_rows(learner, model, pixels):
    """(text rows, vision rows) as TVS's context learners compute them."""
    name = learner.name
    if name == "coop":
        return learner.ctx, None
    if name == "cocoop":
        f = ref_image_features(model, pixels)
        f = f / f.norm(dim=-1, keepdim=True)  # norm_image_features: true
        if learner.meta_net == "tvs":  # one meta-net for all depths: Linear ReLU Linear(no bias)
            net = learner.meta_nets[0]
            bias = F.linear(F.relu(_linear(f, net[0])), net[2].weight)
            assert net[2].bias is None
            bias = bias[:, None].expand(-1, learner.depth, -1)
        else:  # original CoCoOp: Linear ReLU Linear, one per depth here
            bias = torch.stack([_linear(F.relu(_linear(f, net[0])), net[2]) for net in learner.meta_nets], 1)
        return learner.ctx[None] + bias[:, :, None], None
    if name in ("vpt-shallow", "vpt-deep"):
        return None, learner.ctx
    if name == "maple":  # Linear(Dt, 64) ReLU Linear(64, Dv, no bias) LayerNorm(Dv), per depth
        vision = []
        for r, proj in enumerate(learner.proj):
            h = F.linear(F.relu(_linear(learner.ctx[r], proj[0])), proj[2].weight)
            assert proj[2].bias is None
            vision.append(_layer_norm(h, proj[3]))
        return learner.ctx, torch.stack(vision)
    if name == "shared-separate":  # plain Linear per depth, no norm
        assert all(isinstance(p, nn.Linear) for p in [*learner.to_text, *learner.to_vision])
        text = torch.stack([_linear(learner.ctx[r], p) for r, p in enumerate(learner.to_text)])
        vision = torch.stack([_linear(learner.ctx[r], p) for r, p in enumerate(learner.to_vision)])
        return text, vision
    if name == "shared-attention":  # TVS's layout: (1, n, W) into a batch_first=False layer
        out = []
        for r, layer in enumerate(learner.layers):
            width = learner.ctx.shape[-1]
            tvs_layer = nn.TransformerEncoderLayer(width, 16, dim_feedforward=1536, dropout=0.25, norm_first=True)
            tvs_layer.load_state_dict(layer.state_dict())
            out.append(tvs_layer.eval()(learner.ctx[r].unsqueeze(0))[0])
        out = torch.stack(out)
        dt = learner.text_width
        return out[..., :dt], out[..., dt:]
    raise KeyError(name)


def _extra(learner):
    layer = learner.decoder_layer
    if layer is None:
        return None
    conv = layer.layer[1]
    return conv.weight, conv.bias, layer.residual_ratio


def _learner(vlsm, name, **kw):
    depth = 1 if name == "vpt-shallow" else 3
    learner = create_learner(name, vlsm, depth=depth, seed=1, **kw).eval()
    with torch.no_grad():  # make every parameter matter: larger, non-default values
        gen = torch.Generator().manual_seed(7)
        for p in learner.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return learner


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LEARNERS)
def test_forward_equals_the_reference(vlsm, name):
    learner = _learner(vlsm, name)
    assert (learner.decoder_layer is not None) == (name not in ("coop", "cocoop"))  # TVS configs
    pixels = _images(vlsm)
    plain = vlsm.tokenize(TEXTS)
    with torch.no_grad():
        ours = vlsm(pixels, TEXTS, learner=learner)
        text_rows, vision_rows = ref_rows(learner, vlsm.model, pixels)
        ref = ref_logits(vlsm.model, pixels, plain.input_ids, plain.attention_mask, text_rows, vision_rows, _extra(learner))
        # the library forward with the learner attached gives the same logits
        tokens = vlsm.tokenize(TEXTS, n_ctx=learner.n_text_ctx)
        feats = vlsm.image_features(pixels) if learner.image_conditioned else None
        with learner.attach(vlsm, feats):
            lib = vlsm.model(pixel_values=pixels, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    assert ours.shape == ref.shape == (2, 1, *vlsm.image_size)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(lib.logits, ref[:, 0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("cocoop", {"meta_net": "cocoop"}),
        ("cocoop", {"meta_net": "cocoop", "hidden": 32}),
        ("vpt-deep", {"decoder_layer": False}),
        ("coop", {"decoder_layer": True}),
    ],
)
def test_options_equal_the_reference(vlsm, name, kw):
    learner = _learner(vlsm, name, **kw)
    pixels = _images(vlsm)
    plain = vlsm.tokenize(TEXTS)
    with torch.no_grad():
        ours = vlsm(pixels, TEXTS, learner=learner)
        text_rows, vision_rows = ref_rows(learner, vlsm.model, pixels)
        ref = ref_logits(vlsm.model, pixels, plain.input_ids, plain.attention_mask, text_rows, vision_rows, _extra(learner))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_maple_paper_projection_is_one_linear_per_depth(vlsm):
    """MaPLe's trainers/maple.py: ``nn.Linear(ctx_dim, 768)`` per depth (hidden=None, norm=False)."""
    learner = _learner(vlsm, "maple", hidden=None, norm=False)
    assert all(isinstance(p, nn.Linear) for p in learner.proj)
    pixels = _images(vlsm)
    plain = vlsm.tokenize(TEXTS)
    with torch.no_grad():
        vision = torch.stack([_linear(learner.ctx[r], p) for r, p in enumerate(learner.proj)])
        ref = ref_logits(vlsm.model, pixels, plain.input_ids, plain.attention_mask, learner.ctx, vision, _extra(learner))
        torch.testing.assert_close(vlsm(pixels, TEXTS, learner=learner), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["vpt-deep", "maple"])
def test_the_pre_norm_placement_matters(vlsm, name):
    """Appending the prompts after the pre-LayerNorm ("post-norm", this project's placement
    before the TVS audit) is a different model: other logits, and the reference's post-norm
    variant reproduces it. Before the norm the 0.02-scale prompt vectors come out of the LayerNorm
    at the patch tokens' scale; after it they stay tiny next to them. (Depth 1: with deeper rows
    the placement only changes what block 1 computes, a small effect in tiny random towers.)"""
    learner = create_learner(name, vlsm, depth=1, seed=1).eval()
    post = create_learner(name, vlsm, depth=1, seed=1, vision_prompt_position="post-norm").eval()
    assert all(torch.equal(a, b) for a, b in zip(learner.state_dict().values(), post.state_dict().values()))
    pixels = _images(vlsm)
    plain = vlsm.tokenize(TEXTS)
    with torch.no_grad():
        pre_logits = vlsm(pixels, TEXTS, learner=learner)
        post_logits = vlsm(pixels, TEXTS, learner=post)
        text_rows, vision_rows = ref_rows(post, vlsm.model, pixels)
        ref_post = ref_logits(
            vlsm.model, pixels, plain.input_ids, plain.attention_mask, text_rows, vision_rows, _extra(post), post_norm=True
        )
        seen = {}
        norm1 = vlsm.vision_tower.blocks[0].layer_norm1  # inside block 1: after the prompt hooks ran
        for key, lrn in (("pre", learner), ("post", post)):
            h = norm1.register_forward_pre_hook(lambda m, args, key=key: seen.__setitem__(key, args[0]))
            try:
                vlsm(pixels, TEXTS, learner=lrn)
            finally:
                h.remove()
    # (MaPLe's projection ends in a LayerNorm, so its rows are at the patches' scale either way
    # and the gap is smaller; still 100x the equality tolerance)
    assert (pre_logits - post_logits).abs().max() > 1e-3
    torch.testing.assert_close(post_logits, ref_post, rtol=0, atol=1e-5)
    scale = lambda x: x.norm(dim=-1).mean()  # noqa: E731
    for key in ("pre", "post") if name == "vpt-deep" else ():
        x = seen[key]
        ratio = scale(x[:, 1:-4]) / scale(x[:, -4:])
        assert (ratio < 3) if key == "pre" else (ratio > 10), (key, float(ratio))


def test_shared_attention_tvs_attends_each_vector_to_itself(vlsm):
    """"tvs": a vector's output does not depend on the other vectors of its depth; "mix" does."""
    tvs = _learner(vlsm, "shared-attention")
    mix = _learner(vlsm, "shared-attention", attention="mix")
    with torch.no_grad():
        a_tvs, a_mix = tvs.prompts(), mix.prompts()
        tvs.ctx[0, 1:] += 1.0
        mix.ctx[0, 1:] += 1.0
        b_tvs, b_mix = tvs.prompts(), mix.prompts()
    torch.testing.assert_close(b_tvs.text[0, 0], a_tvs.text[0, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(b_tvs.vision[0, 0], a_tvs.vision[0, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(b_mix.vision[0, 0], a_mix.vision[0, 0])
    # TVS copies one initialised layer per depth: every depth starts equal
    fresh = create_learner("shared-attention", vlsm, depth=3)
    assert all(torch.equal(a, b) for a, b in zip(fresh.layers[0].state_dict().values(), fresh.layers[2].state_dict().values()))


def test_the_decoder_layer_is_a_checkpointed_trainable_part_of_the_learner(vlsm):
    learner = create_learner("vpt-deep", vlsm, depth=2)
    names = [n for n, _ in learner.named_trainable_parameters()]
    assert {"decoder_layer.layer.1.weight", "decoder_layer.layer.1.bias", "decoder_layer.residual_ratio"} <= set(names)
    assert set(learner.state_dict()) == set(names)
    assert learner.settings()["decoder_layer"] is True
    assert learner.decoder_layer.residual_ratio.item() == 0.5
    loss = vlsm(_images(vlsm), TEXTS, learner=learner).square().mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
    # an old checkpoint (no decoder layer) gives a clear error naming the setting
    old = {k: v for k, v in learner.state_dict().items() if not k.startswith("decoder_layer.")}
    with pytest.raises(ConfigError, match="decoder_layer=False"):
        create_learner("vpt-deep", vlsm, depth=2).load_state_dict(old)
    create_learner("vpt-deep", vlsm, depth=2, decoder_layer=False).load_state_dict(old)
    with pytest.raises(ConfigError, match="decoder_layer=True"):
        create_learner("vpt-deep", vlsm, depth=2, decoder_layer=False).load_state_dict(learner.state_dict())
