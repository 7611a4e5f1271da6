"""Model adapters: a text tower and a vision tower of one model, prompted together.

:func:`adapt` picks the adapter for a model object:

* transformers ``CLIPSegForImageSegmentation`` -> :class:`CLIPSegAdapter` (also strips visual
  prompt tokens from the activations CLIPSeg's decoder reads, with a pre-hook on the decoder);
* transformers ``CLIPModel`` / ``CLIPSegModel`` -> :class:`ModelAdapter` over both towers;
* open_clip ``CLIP`` / ``CustomTextCLIP`` (any model name, BiomedCLIP included) ->
  :class:`ModelAdapter` over both towers.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from segprompt.backbones.hooks import HookBag
from segprompt.backbones.tokenizers import PromptTokenizer
from segprompt.backbones.towers import TextTower, VisionTower
from segprompt.errors import ConfigError

__all__ = ["ModelAdapter", "CLIPSegAdapter", "adapt"]


class ModelAdapter:
    """A model's towers. ``prompted(text=..., vision=...)`` attaches both for one ``with`` block."""

    def __init__(self, model: nn.Module, text: TextTower | None, vision: VisionTower | None) -> None:
        self.model = model
        self.text = text
        self.vision = vision

    @contextlib.contextmanager
    def prompted(
        self, text: torch.Tensor | None = None, vision: torch.Tensor | None = None
    ) -> Iterator["ModelAdapter"]:
        if text is not None and self.text is None:
            raise ConfigError(f"{type(self.model).__name__} has no text tower to prompt")
        if vision is not None and self.vision is None:
            raise ConfigError(f"{type(self.model).__name__} has no vision tower to prompt")
        with contextlib.ExitStack() as stack:
            if text is not None:
                stack.enter_context(self.text.prompted(text))  # type: ignore[union-attr]
            if vision is not None:
                stack.enter_context(self.vision.prompted(vision))  # type: ignore[union-attr]
                stack.enter_context(self._vision_consumers())
            yield self

    @contextlib.contextmanager
    def _vision_consumers(self) -> Iterator[None]:
        """Extra hooks for modules that read intermediate vision tokens (none by default)."""
        yield


class CLIPSegAdapter(ModelAdapter):
    """transformers' ``CLIPSegForImageSegmentation``.

    ``decoder_layers``: the vision blocks (1-based) whose outputs the decoder reads:
    ``hidden_states[i + 1]`` for ``i`` in ``config.extract_layers``, i.e. blocks i + 1
    (3, 6, 9 -> blocks 4, 7, 10). Visual prompts deeper than ``max(decoder_layers)`` cannot
    change the logits (they still change the pooled image feature).
    """

    def __init__(self, model: nn.Module, tokenizer: PromptTokenizer) -> None:
        from segprompt.backbones.hf_clip import hf_text_tower, hf_vision_tower

        clip = model.clip
        text = hf_text_tower(clip.text_model, clip.text_projection, tokenizer, name="clipseg-text")
        vision = hf_vision_tower(clip.vision_model, clip.visual_projection, name="clipseg-vision", interpolate=True)
        super().__init__(model, text, vision)
        self.decoder_layers = [int(i) + 1 for i in model.extract_layers]

    @contextlib.contextmanager
    def _vision_consumers(self) -> Iterator[None]:
        vision = self.vision
        assert vision is not None

        def strip(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            n = vision.active_prompt_tokens
            if not n:
                return None
            if args:
                acts, rest = args[0], tuple(args[1:])
            else:
                acts, rest = kwargs["hidden_states"], ()
            stripped = type(acts)(a[:, : a.shape[1] - n] for a in acts) if isinstance(acts, (list, tuple)) else acts
            if args:
                return (stripped,) + rest, kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = stripped
            return args, kwargs

        with HookBag() as bag:
            bag.pre(self.model.decoder, strip)
            yield


def adapt(model: nn.Module, tokenizer: Any = None) -> ModelAdapter:
    """The adapter for ``model`` (see the module docstring). ``tokenizer``: a
    :class:`~segprompt.backbones.tokenizers.PromptTokenizer`, an open_clip tokenizer, or a
    transformers tokenizer; CLIP-BPE models default to the vocabulary shipped with open_clip."""
    from segprompt.backbones import hf_clip, openclip

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
