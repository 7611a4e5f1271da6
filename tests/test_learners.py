"""tunevlseg.learners: every learner on a tiny CLIPSeg and a tiny open_clip VLSM.

Depth semantics, gradient flow (only the learner's parameters, and the open_clip decoder),
hand-computed parameter counts, clean hooks, statelessness, seeding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segprompt.errors import ConfigError
from tunevlseg.learners import (
    FullFinetune,
    create_learner,
    list_learners,
    trainable_named_parameters,
)
from tunevlseg.models import tiny_clipseg, tiny_openclip_vlsm

PROMPT_LEARNERS = ["coop", "cocoop", "vpt-shallow", "vpt-deep", "maple", "shared-separate", "shared-attention"]
ALL_LEARNERS = PROMPT_LEARNERS + ["zeroshot", "full"]
TEXTS = ["cat", "pink polyp"]


def make(kind: str):
    return tiny_clipseg() if kind == "clipseg" else tiny_openclip_vlsm()


@pytest.fixture(scope="module", params=["clipseg", "openclip"])
def vlsm(request):
    return make(request.param)


def _images(vlsm, batch=2, seed=0):
    return torch.randn(batch, 3, *vlsm.image_size, generator=torch.Generator().manual_seed(seed))


def hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_registry_lists_every_method():
    assert set(ALL_LEARNERS) <= set(list_learners())


@pytest.mark.parametrize("kind", ["clipseg", "openclip"])
@pytest.mark.parametrize("name", ALL_LEARNERS)
def test_gradients_reach_only_the_learner(kind, name):
    vlsm = make(kind)
    settings = {} if name in ("vpt-shallow", "zeroshot", "full") else {"depth": 2}
    learner = create_learner(name, vlsm, **settings)
    logits = vlsm(_images(vlsm), TEXTS, learner=learner)
    assert logits.shape == (2, 1, *vlsm.image_size)
    library = dict(vlsm.model.named_parameters())
    decoder = dict(vlsm.decoder.named_parameters()) if kind == "openclip" else {}
    if name == "zeroshot" and kind == "clipseg":
        assert not logits.requires_grad  # nothing trains
        assert learner.num_trainable_parameters() == 0
        return
    logits.square().mean().backward()
    own = dict(learner.named_parameters())
    if name == "full":
        assert own == {}
        trainable = {id(p) for p in learner.trainable_parameters()}
        assert trainable == {id(p) for p in vlsm.parameters()}
        got = [n for n, p in library.items() if p.grad is not None]
        assert got and all(id(library[n]) in trainable for n in got)
        # the text and vision towers train too (not only CLIPSeg's decoder)
        assert any(".text_model." in n or n.startswith(("token_embedding", "transformer.")) for n in got)
        assert any("visual" in n or "vision_model" in n for n in got)
        return
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own.values()), [
        n for n, p in own.items() if p.grad is None
    ]
    assert all(p.grad is None for p in library.values())
    assert all(p.grad is not None for p in decoder.values())
    names = [n for n, _ in trainable_named_parameters(vlsm, learner)]
    assert len(names) == len(set(names)) == len(own) + len(decoder)


def _tower_outputs(vlsm, learner, images):
    text, vision = vlsm.text_tower, vlsm.vision_tower
    with torch.no_grad():
        with text.observe(range(1, text.num_layers + 1)) as t, vision.observe(range(1, vision.num_layers + 1)) as v:
            logits = vlsm(images, TEXTS, learner=learner)
    return (
        [t[i] for i in range(1, text.num_layers + 1)],
        [v[i] for i in range(1, vision.num_layers + 1)],
        logits,
    )


@pytest.mark.parametrize("name", PROMPT_LEARNERS)
def test_depth_semantics_for_every_learner(vlsm, name):
    """Perturbing the learner's layer-k vectors (row k - 1 of ``ctx``) changes no block output
    before block k, in either tower, and changes blocks k..L of each tower it prompts."""
    depth = 1 if name == "vpt-shallow" else 4
    learner = create_learner(name, vlsm, depth=depth).eval()
    images = _images(vlsm)
    ref_t, ref_v, ref_logits = _tower_outputs(vlsm, learner, images)
    original = learner.ctx.detach().clone()
    for k in range(1, depth + 1):
        with torch.no_grad():
            learner.ctx[k - 1] += 0.5
        out_t, out_v, logits = _tower_outputs(vlsm, learner, images)
        with torch.no_grad():
            learner.ctx.copy_(original)
        for out, ref, prompted in ((out_t, ref_t, learner.uses_text), (out_v, ref_v, learner.uses_vision)):
            for j in range(1, len(ref) + 1):
                if prompted and j >= k:
                    assert not torch.equal(out[j - 1], ref[j - 1]), f"{name}: block {j} unchanged by layer {k}"
                else:  # before block k, or a tower the learner does not prompt
                    assert torch.equal(out[j - 1], ref[j - 1]), f"{name}: block {j} changed by layer {k}"
        if k == 1:
            assert not torch.equal(logits, ref_logits)


@pytest.mark.parametrize("name", PROMPT_LEARNERS)
def test_depth_is_validated_against_the_towers(vlsm, name):
    too_deep = max(vlsm.num_text_layers, vlsm.num_vision_layers) + 1
    with pytest.raises(ConfigError, match="out of range|depth 1"):
        create_learner(name, vlsm, depth=too_deep)
    with pytest.raises(ConfigError):
        create_learner(name, vlsm, depth=0)
    with pytest.raises(ConfigError, match="n_ctx"):
        create_learner(name, vlsm, n_ctx=0)


def test_other_setting_errors():
    vlsm = tiny_clipseg(layers=2)
    with pytest.raises(ConfigError, match="depth 1 by definition"):
        create_learner("vpt-shallow", vlsm, depth=2)
    with pytest.raises(ConfigError, match="unknown learner"):
        create_learner("copo", vlsm)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        create_learner("coop", vlsm, n_context=4)
    with pytest.raises(ConfigError, match="5 tokens but n_ctx=4"):
        create_learner("coop", vlsm, init="a photo of a big")
    with pytest.raises(ConfigError, match="nhead"):
        create_learner("shared-attention", vlsm, nhead=5)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        create_learner("vpt-deep", vlsm, init="a photo of a")  # visual prompts have no text init
    # "auto" falls back to random rows when "a photo of a" is not n_ctx tokens
    coop8 = create_learner("coop", vlsm, n_ctx=8)
    assert coop8.ctx.shape == (1, 8, vlsm.text_width) and coop8.ctx.abs().max() < 0.2


def test_trainable_parameter_counts_by_hand():
    vlsm = tiny_clipseg()
    dt, dv, e, n = vlsm.text_width, vlsm.vision_width, vlsm.feature_dim, 4
    assert (dt, dv, e) == (32, 32, 32)
    c, k = vlsm.model.config.reduce_dim, 5
    extra = c * k * k + 1 + 1  # TuneVLSeg's decoder layer: Conv2d(reduce_dim, 1, 5) + residual ratio
    count = lambda name, **kw: create_learner(name, vlsm, **kw).num_trainable_parameters()  # noqa: E731
    assert count("coop", depth=3) == 3 * n * dt == 384
    assert count("coop", depth=3, decoder_layer=True) == 384 + extra
    assert count("vpt-deep", depth=4) == 4 * n * dv + extra == 512 + 402
    assert count("vpt-deep", depth=4, decoder_layer=False) == 512
    assert count("vpt-deep", decoder_layer=False) == vlsm.num_vision_layers * n * dv
    assert count("vpt-shallow", n_ctx=10, decoder_layer=False) == 10 * dv
    # CoCoOp "tvs": context + ONE meta-net Linear(E, 32) ReLU Linear(32, Dt, no bias)
    assert count("cocoop", depth=2) == 2 * n * dt + (e * 32 + 32 + 32 * dt)
    # ... with norm: + LayerNorm(Dt) without bias; "cocoop": per depth Linear(E, E/16) ReLU Linear(E/16, Dt)
    assert count("cocoop", depth=2, norm=True) == 2 * n * dt + (e * 32 + 32 + 32 * dt) + dt
    assert count("cocoop", depth=2, meta_net="cocoop") == 2 * n * dt + 2 * (e * 2 + 2 + 2 * dt + dt)
    # MaPLe: context + per depth Linear(Dt, 64) ReLU Linear(64, Dv, no bias) LayerNorm(Dv)
    assert count("maple", depth=2) == 2 * n * dt + 2 * (dt * 64 + 64 + 64 * dv + 2 * dv) + extra
    # ... MaPLe paper: per depth one Linear(Dt, Dv)
    assert count("maple", depth=2, hidden=None, norm=False, decoder_layer=False) == 2 * n * dt + 2 * (dt * dv + dv)
    # Shared-Separate: shared (d, n, 64) + per depth Linear(64, D) for both towers (norm: + LayerNorm)
    assert count("shared-separate", depth=2) == 2 * n * 64 + 2 * (64 * dt + dt) + 2 * (64 * dv + dv) + extra
    assert count("shared-separate", depth=2, norm=True, decoder_layer=False) == (
        2 * n * 64 + 2 * (64 * dt + dt + 2 * dt) + 2 * (64 * dv + dv + 2 * dv)
    )
    # Shared-Attention: shared (d, n, W) + per depth a transformer layer (W = Dt + Dv, FFN f)
    w, f = dt + dv, 1536
    layer = (3 * w * w + 3 * w) + (w * w + w) + (w * f + f) + (f * w + w) + 2 * (2 * w)
    assert count("shared-attention", depth=2) == 2 * n * w + 2 * layer + extra
    assert count("zeroshot") == 0
    assert count("full") == sum(p.numel() for p in vlsm.parameters())
    # the open_clip VLSM has no CLIPSeg decoder: the layer is off by default, an error when asked for
    oc = tiny_openclip_vlsm()
    assert create_learner("vpt-deep", oc, depth=2).decoder_layer is None
    with pytest.raises(ConfigError, match="decoder_layer"):
        create_learner("vpt-deep", oc, depth=2, decoder_layer=True)


def test_hooks_are_removed_and_the_library_model_is_unchanged(vlsm):
    images = _images(vlsm)
    tokens = vlsm.tokenize(TEXTS)
    with torch.no_grad():
        ref = vlsm(images, TEXTS)
        if hasattr(vlsm.model, "decoder"):  # CLIPSeg: the transformers forward as well
            lib_ref = vlsm.model(pixel_values=images, input_ids=tokens.input_ids).logits
    before = hook_count(vlsm)
    for name in PROMPT_LEARNERS:
        learner = create_learner(name, vlsm, depth=1)
        with torch.no_grad():
            vlsm(images, TEXTS, learner=learner)
        assert hook_count(vlsm) == before, name
    with torch.no_grad():
        assert torch.equal(vlsm(images, TEXTS), ref)
        if hasattr(vlsm.model, "decoder"):
            assert torch.equal(vlsm.model(pixel_values=images, input_ids=tokens.input_ids).logits, lib_ref)


@pytest.mark.parametrize("name", PROMPT_LEARNERS)
def test_learners_hold_no_state_between_calls(name):
    vlsm = tiny_openclip_vlsm()
    learner = create_learner(name, vlsm, depth=1).eval()
    images = _images(vlsm)
    with torch.no_grad():
        first = vlsm(images, TEXTS, learner=learner)
        vlsm(_images(vlsm, seed=5), ["dog", "tumour"], learner=learner)
        again = vlsm(images, TEXTS, learner=learner)
    assert torch.equal(first, again)
    assert set(learner.state_dict()) == {n for n, _ in learner.named_parameters()}
    assert not [k for k, v in vars(learner).items() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("name", ["coop", "vpt-deep", "maple", "shared-separate", "shared-attention"])
def test_attach_runs_the_library_forward_with_the_learner(name):
    """``learner.attach(vlsm)`` + transformers' own CLIPSeg forward = the wrapper's forward."""
    vlsm = tiny_clipseg()
    learner = create_learner(name, vlsm, depth=2).eval()
    images = _images(vlsm)
    tokens = vlsm.tokenize(TEXTS, n_ctx=learner.n_text_ctx)
    with torch.no_grad():
        ours = vlsm(images, tokens, learner=learner)
        with learner.attach(vlsm):
            lib = vlsm.model(pixel_values=images, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    torch.testing.assert_close(ours[:, 0], lib.logits, rtol=0, atol=1e-5)


def test_cocoop_needs_image_features():
    vlsm = tiny_clipseg()
    cocoop = create_learner("cocoop", vlsm)
    with pytest.raises(ConfigError, match="image_features"):
        vlsm.text_features(TEXTS, learner=cocoop)
    with pytest.raises(ConfigError, match="image_features"):
        with cocoop.attach(vlsm):
            pass
    images = _images(vlsm)
    with torch.no_grad():
        feats = vlsm.image_features(images)
        text = vlsm.text_features(TEXTS, learner=cocoop, image_features=feats)
        other = vlsm.text_features(TEXTS, learner=cocoop, image_features=feats.flip(0))
    assert text.shape == (2, vlsm.feature_dim)
    assert not torch.allclose(text, other)  # per-image prompts


def test_seeded_initialisation_leaves_the_global_rng_alone():
    vlsm = tiny_openclip_vlsm()
    state = torch.random.get_rng_state()
    a = create_learner("maple", vlsm, depth=2, seed=3)
    b = create_learner("maple", vlsm, depth=2, seed=3)
    c = create_learner("maple", vlsm, depth=2, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.proj[0][0].weight, c.proj[0][0].weight)
    # CoOp's default is TuneVLSeg's random context (context_initializer: null): every row N(0, 0.02)
    coop = create_learner("coop", vlsm, depth=3)
    assert 0.01 < coop.ctx.std() < 0.03
    assert not torch.equal(coop.ctx[0], vlsm.text_tower.token_embeddings("a photo of a"))
    # init="auto" (MaPLe's default, TuneVLSeg's maple config): row 0 is "a photo of a"; deeper rows N(0, 0.02)
    coop = create_learner("coop", vlsm, depth=3, init="auto")
    assert torch.equal(coop.ctx[0], vlsm.text_tower.token_embeddings("a photo of a"))
    assert 0.01 < coop.ctx[1:].std() < 0.03
    maple = create_learner("maple", vlsm, depth=2)
    assert torch.equal(maple.ctx[0], vlsm.text_tower.token_embeddings("a photo of a"))


def test_a_few_steps_lower_the_loss():
    vlsm = tiny_clipseg()
    learner = create_learner("vpt-deep", vlsm, depth=2)
    opt = torch.optim.Adam(learner.trainable_parameters(), lr=0.05)
    images = _images(vlsm)
    target = torch.zeros(2, 1, *vlsm.image_size)
    target[..., 16:48, 16:48] = 1
    losses = []
    for _ in range(8):
        loss = F.binary_cross_entropy_with_logits(vlsm(images, TEXTS, learner=learner), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_full_finetune_and_checkpoint_state():
    vlsm = tiny_openclip_vlsm()
    full = create_learner("full", vlsm)
    assert isinstance(full, FullFinetune) and vlsm.trainable_scope == "all"
    assert len(vlsm.trainable_state_dict()) == len(list(vlsm.parameters()))
    assert full.state_dict() == {}
    names = [n for n, _ in trainable_named_parameters(vlsm, full)]
    assert len(names) == len(set(names)) == len(list(vlsm.parameters()))
    vlsm.train()
    assert vlsm.model.training
