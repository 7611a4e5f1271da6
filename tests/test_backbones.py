"""segprompt.backbones: prompt injection through hooks, one definition of depth, clean removal.

Tiny random models only (no downloads): transformers CLIPSeg and CLIP, open_clip CLIP and
CustomTextCLIP, and a BiomedCLIP-shaped open_clip model (HF BERT text tower, timm ViT).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segprompt.backbones import (
    CLIPBPETokenizer,
    OpenCLIPTokenizer,
    Tokens,
    VisionTower,
    adapt,
    check_depth,
    evenly_spaced_layers,
)
from segprompt.errors import ConfigError
from tunevlseg.models import tiny_clipseg, tiny_openclip_model
from tunevlseg.testing import tiny_biomedclip_like, tiny_custom_text_clip, tiny_hf_clip

N_CTX = 2


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# -- the towers under test ---------------------------------------------------------------------

_CACHE: dict[str, tuple[nn.Module, object]] = {}


def _model(kind: str) -> tuple[nn.Module, object]:
    """(library model, adapter), built once per kind."""
    if kind not in _CACHE:
        if kind == "clipseg":
            model = tiny_clipseg(layers=4).model
            _CACHE[kind] = (model, adapt(model))
        elif kind == "hf-clip":
            model = tiny_hf_clip()
            _CACHE[kind] = (model, adapt(model))
        elif kind == "openclip":
            model, tok = tiny_openclip_model()
            model.eval()
            _CACHE[kind] = (model, adapt(model, tok))
        elif kind == "openclip-custom":
            model, tok = tiny_custom_text_clip()
            _CACHE[kind] = (model, adapt(model, tok))
        elif kind == "biomedclip-like":
            model, tok = tiny_biomedclip_like()
            _CACHE[kind] = (model, adapt(model, tok))
        else:  # pragma: no cover
            raise KeyError(kind)
    return _CACHE[kind]


KINDS = ("clipseg", "hf-clip", "openclip", "openclip-custom", "biomedclip-like")
TOWERS = [(kind, modality) for kind in KINDS for modality in ("text", "vision")]


def _runner(kind: str, modality: str):
    """(tower, run) where run() does one forward through the tower's library encode."""
    _, adapter = _model(kind)
    tower = getattr(adapter, modality)
    if modality == "text":
        tokens = tower.tokenize(["a cat", "pink polyp"], n_ctx=N_CTX)
        return tower, lambda: tower.encode(tokens)
    gen = torch.Generator().manual_seed(0)
    h, w = tower.image_size
    images = torch.randn(2, 3, h, w, generator=gen)
    return tower, lambda: tower.encode(images)


def _block_outputs(tower, run, prompts):
    with torch.no_grad(), tower.observe(range(1, tower.num_layers + 1)) as found, tower.prompted(prompts):
        final = run()
    return [found[i] for i in range(1, tower.num_layers + 1)], final


@pytest.mark.parametrize("kind,modality", TOWERS)
def test_a_prompt_at_layer_k_changes_nothing_before_k_and_everything_from_k(kind, modality):
    tower, run = _runner(kind, modality)
    depth = tower.num_layers
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(depth, N_CTX, tower.width, generator=gen)
    ref, ref_final = _block_outputs(tower, run, base)
    for k in range(1, depth + 1):  # the row entering block k (1-based) is prompts[k - 1]
        prompts = base.clone()
        prompts[k - 1] += 1.0
        out, final = _block_outputs(tower, run, prompts)
        for j in range(1, k):
            assert torch.equal(out[j - 1], ref[j - 1]), f"block {j} changed by the layer-{k} prompt"
        # tiny random models mix tokens weakly: the changes can be small, but the forward is
        # deterministic (blocks before k are bit-identical), so bit-inequality is the test
        for j in range(k, depth + 1):
            assert not torch.equal(out[j - 1], ref[j - 1]), f"block {j} unchanged by the layer-{k} prompt"
        assert not torch.equal(final, ref_final)
    if modality == "vision":  # observed outputs are CLS + patch tokens only
        rows, cols = tower.grid(*tower.image_size)
        assert ref[0].shape[1] == tower.num_prefix_tokens + rows * cols


def test_depth_agrees_with_transformers_hidden_states():
    """CLIPSeg text tower: hidden_states[0] is the embedding output (row 0 is already in it),
    hidden_states[j] block j's output as computed (row j is written into the slots at block
    j + 1's input). So the layer-k prompt (row k - 1) leaves hidden_states[1..k-1] (and [0] for
    k > 1) bit-identical and changes hidden_states[k..L]."""
    model, adapter = _model("clipseg")
    tower = adapter.text
    tokens = tower.tokenize(["a cat", "dog"], n_ctx=N_CTX)
    text_model = model.clip.text_model
    base = torch.randn(tower.num_layers, N_CTX, tower.width, generator=torch.Generator().manual_seed(2))

    def hidden(prompts):
        with torch.no_grad(), tower.prompted(prompts):
            return text_model(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
            ).hidden_states

    ref = hidden(base)
    assert len(ref) == tower.num_layers + 1
    for k in range(1, tower.num_layers + 1):
        prompts = base.clone()
        prompts[k - 1] -= 0.5
        out = hidden(prompts)
        same = [torch.equal(out[j], ref[j]) for j in range(len(ref))]
        expected = [k > 1] + [j < k for j in range(1, len(ref))]
        assert same == expected, (k, same)


def test_shallow_prompts_touch_only_the_input():
    """Depth 1: the input is prompted, no pre-hooks on later blocks; vision row 0 enters before
    ln_pre ("pre-norm", the default) or at block 1's input ("post-norm")."""
    model, adapter = _model("openclip")
    before = hook_count(model)
    text, vision = torch.zeros(1, N_CTX, adapter.text.width), torch.zeros(1, 3, adapter.vision.width)
    blocks = adapter.vision.blocks
    with adapter.prompted(text=text, vision=vision):
        # text: hook on the token embedding; vision: pre-hook on ln_pre + exit hook
        assert hook_count(model) == before + 3
        assert all(len(b._forward_pre_hooks) == 0 for b in adapter.text.blocks)
        assert len(model.visual.ln_pre._forward_pre_hooks) == 1
        assert [len(b._forward_pre_hooks) for b in blocks] == [0] * len(blocks)
    with adapter.prompted(vision=vision, vision_position="post-norm"):
        assert len(model.visual.ln_pre._forward_pre_hooks) == 0
        assert [len(b._forward_pre_hooks) for b in blocks] == [1] + [0] * (len(blocks) - 1)
    assert hook_count(model) == before
    with pytest.raises(ConfigError, match="position"):
        with adapter.prompted(vision=vision, vision_position="after-norm"):
            pass


@pytest.mark.parametrize("kind", ["clipseg", "hf-clip", "openclip", "biomedclip-like"])
def test_visual_prompts_enter_before_the_pre_norm(kind):
    """Row 0 is appended to the embedding sequence before the pre-LayerNorm (TuneVLSeg's
    vpt_clipseg.py, MaPLe's VisionTransformer_MaPLe): block 1 receives pre_norm(cat(emb, row 0)),
    so the prompt tokens arrive normalised like the patch tokens. "post-norm" appends the raw row
    after the norm. Checked against the library's own modules."""
    model, adapter = _model(kind)
    vision = adapter.vision
    norm = vision.entry
    assert norm is not None
    rows = torch.randn(1, 3, vision.width, generator=torch.Generator().manual_seed(3)) * 0.02
    images = torch.randn(2, 3, *vision.image_size, generator=torch.Generator().manual_seed(4))
    seen: dict[str, torch.Tensor] = {}

    def grab(key):
        def hook(module, args, kwargs):
            seen[key] = (args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))).detach()

        return hook

    handle_norm = norm.register_forward_pre_hook(lambda m, args: seen.__setitem__("emb", args[0].detach()))
    try:
        with torch.no_grad():
            vision.encode(images)  # the embedding sequence the pre-norm receives, unprompted
            emb = seen["emb"]
            for position in ("pre-norm", "post-norm"):
                with vision.prompted(rows, position=position):
                    h = vision.blocks[0].register_forward_pre_hook(grab(position), with_kwargs=True)
                    try:
                        vision.encode(images)
                    finally:
                        h.remove()
    finally:
        handle_norm.remove()
    first = lambda x: x if x.shape[0] == 2 else x.transpose(0, 1)  # noqa: E731 - sequence-first blocks
    appended = torch.cat([emb, rows.expand(2, -1, -1)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(first(seen["pre-norm"]), norm(appended), rtol=0, atol=1e-6)
        torch.testing.assert_close(first(seen["post-norm"]), torch.cat([norm(emb), rows.expand(2, -1, -1)], 1))
    if not isinstance(norm, nn.Identity):  # a LayerNorm brings the 0.02-scale prompts to the patches' scale
        tokens = first(seen["pre-norm"])
        assert tokens[:, -3:].std() > 10 * rows.std()


@pytest.mark.parametrize("kind", ["clipseg", "openclip", "biomedclip-like"])
def test_hooks_are_removed_and_the_model_is_the_library_model_again(kind):
    model, adapter = _model(kind)
    text_tower, run_text = _runner(kind, "text")
    vision_tower, run_vision = _runner(kind, "vision")
    with torch.no_grad():
        ref_t, ref_v = run_text(), run_vision()
    before = hook_count(model)
    text = torch.randn(text_tower.num_layers, N_CTX, text_tower.width)
    vision = torch.randn(vision_tower.num_layers, 3, vision_tower.width)
    with torch.no_grad(), adapter.prompted(text=text, vision=vision):
        assert hook_count(model) > before
        assert not torch.equal(run_text(), ref_t)
        assert not torch.equal(run_vision(), ref_v)
    assert hook_count(model) == before
    with torch.no_grad():
        assert torch.equal(run_text(), ref_t)
        assert torch.equal(run_vision(), ref_v)


def test_an_error_inside_the_block_still_removes_the_hooks():
    model, adapter = _model("openclip")
    before = hook_count(model)
    with pytest.raises(ZeroDivisionError):
        with adapter.prompted(vision=torch.zeros(2, 1, adapter.vision.width)):
            1 / 0
    assert hook_count(model) == before
    assert adapter.vision.active_prompt_tokens == 0
    # texts without the placeholder slots: a clear error, and no hooks left behind
    plain = adapter.text.tokenize(["a cat"])
    with pytest.raises(ConfigError, match="placeholder"):
        with adapter.text.prompted(torch.zeros(1, N_CTX, adapter.text.width)):
            adapter.text.encode(plain)
    assert hook_count(model) == before


def test_prompt_validation():
    _, adapter = _model("clipseg")
    text, vision = adapter.text, adapter.vision
    with pytest.raises(ConfigError, match="out of range"):
        with text.prompted(torch.zeros(text.num_layers + 1, N_CTX, text.width)):
            pass
    with pytest.raises(ConfigError, match="width"):
        with vision.prompted(torch.zeros(1, N_CTX, vision.width + 1)):
            pass
    with pytest.raises(ConfigError, match="depth"):
        check_depth(0, 12)
    with pytest.raises(ConfigError, match="1..12"):
        check_depth(13, 12)
    assert check_depth(12, 12) == 12
    with pytest.raises(RuntimeError, match="already attached"):
        with vision.prompted(torch.zeros(1, 1, vision.width)), vision.prompted(torch.zeros(1, 1, vision.width)):
            pass
    # per-sample prompts must match the batch
    images = torch.randn(2, 3, *vision.image_size)
    with pytest.raises(ConfigError, match="per-sample"):
        with torch.no_grad(), vision.prompted(torch.zeros(3, 1, 2, vision.width)):
            vision.encode(images)


def test_per_sample_prompts_equal_shared_prompts_row_by_row():
    _, adapter = _model("openclip")
    tower = adapter.text
    tokens = tower.tokenize(["a cat", "dog"], n_ctx=N_CTX)
    a, b = torch.randn(2, 2, N_CTX, tower.width).unbind(0)
    with torch.no_grad():
        with tower.prompted(torch.stack([a, b])):  # (B, d, n, D)
            both = tower.encode(tokens)
        with tower.prompted(a):
            first = tower.encode(tokens)[0]
        with tower.prompted(b):
            second = tower.encode(tokens)[1]
    torch.testing.assert_close(both, torch.stack([first, second]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["clipseg", "hf-clip", "openclip", "openclip-custom", "biomedclip-like"])
def test_context_from_a_photo_of_a_equals_the_plain_text(kind):
    """Depth-1 context = token embeddings of "a photo of a": the same features as the text."""
    _, adapter = _model(kind)
    tower = adapter.text
    ctx = tower.token_embeddings("a photo of a")
    assert ctx.shape == (4, tower.width)
    with torch.no_grad():
        plain = tower.encode(tower.tokenize(["a photo of a cat", "a photo of a pink polyp"]))
        with tower.prompted(ctx.unsqueeze(0)):
            prompted = tower.encode(tower.tokenize(["cat", "pink polyp"], n_ctx=4))
    torch.testing.assert_close(prompted, plain, rtol=0, atol=1e-5)


def test_clipseg_decoder_gets_the_prompt_tokens_as_tuneVLSeg_hands_them():
    """transformers' own CLIPSeg forward inside ``prompted``: the decoder receives the
    activations with the 5 prompt tokens (TuneVLSeg's decoder_forward runs its layers over them),
    each of a block j < depth already holding row j; the tokens are gone after its last layer."""
    model, adapter = _model("clipseg")
    vision = adapter.vision
    rows, cols = vision.grid(*vision.image_size)
    seen: list[torch.Tensor] = []
    last: list[tuple[int, ...]] = []
    tokens = adapter.text.tokenize(["a cat", "dog"])
    images = torch.randn(2, 3, *vision.image_size)
    prompts = torch.randn(vision.num_layers, 5, vision.width)
    with torch.no_grad():
        ref = model(pixel_values=images, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        with adapter.prompted(vision=prompts):
            handle = model.decoder.register_forward_pre_hook(lambda m, args: seen.extend(args[0]))
            handle2 = model.decoder.layers[-1].register_forward_hook(
                lambda m, args, out: last.append(tuple((out[0] if isinstance(out, tuple) else out).shape))
            )
            try:
                out = model(pixel_values=images, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            finally:
                handle.remove()
                handle2.remove()
    assert [tuple(a.shape) for a in seen] == [(2, 1 + rows * cols + 5, vision.width)] * len(adapter.decoder_layers)
    for act, layer in zip(seen, adapter.decoder_layers):  # layers 1, 2, 3 < depth 4: slots hold row j
        assert torch.equal(act[:, -5:], prompts[layer].expand(2, -1, -1))
    assert last == [(2, 1 + rows * cols, model.config.reduce_dim)]
    assert out.logits.shape == ref.logits.shape == (2, *vision.image_size)
    assert out.vision_model_output.last_hidden_state.shape == (2, 1 + rows * cols, vision.width)
    assert not torch.allclose(out.logits, ref.logits)


def test_gradient_checkpointing_is_refused():
    model, tok = tiny_openclip_model(layers=2)
    adapter = adapt(model, tok)
    model.set_grad_checkpointing(True)
    with pytest.raises(ConfigError, match="checkpointing"):
        with adapter.prompted(vision=torch.zeros(1, 1, adapter.vision.width)):
            pass


def test_vision_tower_with_sequence_first_blocks():
    """Blocks that run (N, B, D) (open_clip's batch_first=False layout) get the same semantics."""

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0) for _ in range(3))

        def forward(self, x):  # x: (B, N, D) -> blocks see (N, B, D) -> (B, N, D)
            x = x.transpose(0, 1)
            for block in self.blocks:
                x = block(x)
            return x.transpose(0, 1)

    torch.manual_seed(0)
    stack = Stack().eval()
    tokens = torch.randn(2, 5, 16)
    tower = VisionTower(
        "toy", stack.blocks, 16, exit=(stack, "output"), encode=lambda x: stack(x).mean(1),
        patch_size=(1, 1), image_size=(2, 2), batch_first=False,
    )
    base = torch.randn(3, 2, 16)
    ref, _ = _block_outputs(tower, lambda: tower.encode(tokens), base)
    for k in (1, 2, 3):
        prompts = base.clone()
        prompts[k - 1] += 1
        out, _ = _block_outputs(tower, lambda: tower.encode(tokens), prompts)
        assert all(torch.equal(out[j], ref[j]) for j in range(k - 1))
        assert all(not torch.equal(out[j], ref[j]) for j in range(k - 1, 3))
    with tower.prompted(base):
        assert stack(tokens).shape == (2, 5, 16)  # the exit hook dropped the prompts


def test_tokenizers_place_the_slots_after_the_start_token():
    from open_clip.tokenizer import SimpleTokenizer

    bpe = CLIPBPETokenizer()
    oc = OpenCLIPTokenizer(SimpleTokenizer())
    tokens = bpe(["cat", "a pink polyp"], n_ctx=4)
    assert isinstance(tokens, Tokens) and tokens.n_ctx == 4
    assert bpe.slot_start == oc.slot_start == 1
    assert bpe.placeholder_id == oc.placeholder_id
    assert (tokens.input_ids[:, 1:5] == bpe.placeholder_id).all()
    # the same ids as open_clip's own tokenizer, up to padding
    ref = oc(["cat", "a pink polyp"], n_ctx=4).input_ids
    assert torch.equal(tokens.input_ids, ref[:, : tokens.input_ids.shape[1]] * tokens.attention_mask)
    assert tokens.attention_mask.sum(1).tolist() == (ref != 0).sum(1).tolist()
    with pytest.raises(ConfigError, match="placeholder"):
        bpe.check_slots(bpe(["a photo of a cat"]).input_ids, 4)
    _, bert = tiny_biomedclip_like()
    assert bert.slot_start == 1  # after [CLS]
    assert bert(["cat"], n_ctx=3).input_ids[0, :5].tolist() == [2, 5, 5, 5, 10]


def test_evenly_spaced_layers():
    assert evenly_spaced_layers(12) == [4, 8, 12]
    assert evenly_spaced_layers(4) == [2, 3, 4]
    assert evenly_spaced_layers(6) == [2, 4, 6]
    assert evenly_spaced_layers(2) == [1, 2]
    assert evenly_spaced_layers(12, 4) == [3, 6, 9, 12]


def test_unsupported_models_raise_config_errors():
    with pytest.raises(ConfigError, match="no backbone adapter"):
        adapt(nn.Linear(2, 2))
    from open_clip.model import CLIP

    resnet = CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=(1, 1, 1, 1), width=16, image_size=64),
        text_cfg=dict(context_length=77, vocab_size=49408, width=16, heads=2, layers=1),
    )
    with pytest.raises(ConfigError, match="ResNet"):
        adapt(resnet)
