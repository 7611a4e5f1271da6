"""Model adapters: a text tower and a vision tower of one model, prompted together.

:func:`adapt` picks the adapter for a model object:

* transformers ``CLIPSegForImageSegmentation`` -> :class:`CLIPSegAdapter` (also hands CLIPSeg's
  decoder the activations with the visual prompt tokens, as TuneVLSeg does, and drops them after
  the decoder's last layer; optionally adds TuneVLSeg's extra decoder layer);
* transformers ``CLIPModel`` / ``CLIPSegModel`` -> :class:`ModelAdapter` over both towers;
* open_clip ``CLIP`` / ``CustomTextCLIP`` (any model name, BiomedCLIP included) ->
  :class:`ModelAdapter` over both towers.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from segprompt.backbones import hf_clip, openclip
from segprompt.backbones.hooks import HookBag, first_tensor, replace_first_tensor
from segprompt.backbones.model_adapter import ModelAdapter
from segprompt.backbones.tokenizers import PromptTokenizer
from segprompt.errors import ConfigError

__all__ = ["ModelAdapter", "CLIPSegAdapter", "adapt"]


class CLIPSegAdapter(ModelAdapter):
    """transformers' ``CLIPSegForImageSegmentation``.

    ``decoder_layers``: the vision blocks (1-based) whose outputs the decoder reads:
    ``hidden_states[i + 1]`` for ``i`` in ``config.extract_layers``, i.e. blocks i + 1
    (3, 6, 9 -> blocks 4, 7, 10).

    With visual prompts attached, the decoder receives what TuneVLSeg's CLIPSeg hands it
    (``base_clipseg.py`` / ``vpt_clipseg.py``, ``decoder_forward``): the activations *with* the
    prompt tokens, those of a block j < depth already holding row j (TuneVLSeg replaces the slots
    in place right after block j, before storing ``hidden_states[j]``); the decoder's reductions,
    FiLM and transformer layers run over CLS + patches + prompts, and the prompt tokens are
    dropped after its last layer, with the CLS token, before the transposed convolution. Rows
    r <= max(decoder_layers) can change the logits; deeper rows only the pooled image feature.
    """

    def __init__(self, model: nn.Module, tokenizer: PromptTokenizer) -> None:
        clip = model.clip
        text = hf_clip.hf_text_tower(clip.text_model, clip.text_projection, tokenizer, name="clipseg-text")
        vision = hf_clip.hf_vision_tower(clip.vision_model, clip.visual_projection, name="clipseg-vision", interpolate=True)
        super().__init__(model, text, vision)
        self.decoder_layers = [int(i) + 1 for i in model.extract_layers]

    @contextlib.contextmanager
    def decoder_hooks(self, n_prompt: int, extra: nn.Module | None = None) -> Iterator[None]:
        """For decoder calls inside the block: drop the last ``n_prompt`` tokens after the
        decoder's last transformer layer (TuneVLSeg's ``output[:, 1:-num_context]``; the library
        drops the CLS token itself), and with ``extra`` replace the transposed convolution's
        logits by ``extra(features, logits)`` (features: the (B, reduce_dim, h, w) grid the
        transposed convolution reads; TuneVLSeg's ``additive_decoder_layer``)."""
        decoder = self.model.decoder

        def strip(module: nn.Module, args: tuple, output: Any) -> Any:
            x = first_tensor(output)
            return replace_first_tensor(output, x[:, : x.shape[1] - n_prompt])

        def add(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            assert extra is not None
            return extra(args[0], output)

        with HookBag() as bag:
            if n_prompt:
                bag.post(decoder.layers[-1], strip)
            if extra is not None:
                bag.post(decoder.transposed_convolution, add)
            yield

    @contextlib.contextmanager
    def _consumers(self, vision_prompted: bool, decoder: nn.Module | None) -> Iterator[None]:
        """The library forward (``model(pixel_values=..., input_ids=...)``) inside ``prompted``:
        the decoder gets the activations as TuneVLSeg hands them (see the class docstring)."""
        vision = self.vision
        assert vision is not None
        n = vision.active_prompt_tokens if vision_prompted else 0
        layers = self.decoder_layers

        def as_next(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            acts = args[0] if args else kwargs["hidden_states"]
            new = type(acts)(vision.next_input(a, layer) for a, layer in zip(acts, layers))
            if args:
                return (new,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = new
            return args, kwargs

        with HookBag() as bag:
            if n:
                bag.pre(self.model.decoder, as_next)
            with self.decoder_hooks(n, decoder):
                yield


def adapt(model: nn.Module, tokenizer: Any = None) -> ModelAdapter:
    """The adapter for ``model`` (see the module docstring). ``tokenizer``: a
    :class:`~segprompt.backbones.tokenizers.PromptTokenizer`, an open_clip tokenizer, or a
    transformers tokenizer; CLIP-BPE models default to the vocabulary shipped with open_clip."""
    if hf_clip.is_clipseg_segmentation(model):
        return CLIPSegAdapter(model, hf_clip.as_prompt_tokenizer(tokenizer, model.config.text_config))
    if hf_clip.is_hf_clip_model(model):
        return hf_clip.adapt_hf_clip(model, tokenizer)
    if openclip.is_openclip_model(model):
        return openclip.adapt_openclip(model, tokenizer)
    raise ConfigError(
        f"no backbone adapter for {type(model).__name__}: supported are transformers CLIPSeg / CLIP "
        "models and open_clip CLIP / CustomTextCLIP models"
    )
