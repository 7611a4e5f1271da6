"""Tower adapters for transformers' CLIP-family models (CLIPSeg, CLIP).

Both libraries' text models hold ``embeddings.token_embedding`` and ``encoder.layers``; their
vision models hold ``encoder.layers`` and return the encoder's ``last_hidden_state``, from which
the CLS token is pooled; visual prompts enter before the vision model's ``pre_layrnorm`` (see
:mod:`segprompt.backbones.towers`). The towers encode through the library modules
(``text_model`` + ``text_projection``, ``vision_model`` + ``visual_projection``), the same modules
``CLIPSegForImageSegmentation`` / ``CLIPModel`` call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segprompt.backbones.model_adapter import ModelAdapter
from segprompt.backbones.tokenizers import CLIPBPETokenizer, HFTokenizer, PromptTokenizer, Tokens
from segprompt.backbones.towers import TextTower, VisionTower
from segprompt.errors import ConfigError


__all__ = ["hf_text_tower", "hf_vision_tower", "adapt_hf_clip", "is_clipseg_segmentation", "is_hf_clip_model"]


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def as_prompt_tokenizer(tokenizer: Any, text_config: Any = None) -> PromptTokenizer:
    """A PromptTokenizer from ``tokenizer`` (None: the CLIP BPE vocabulary of open_clip)."""
    if isinstance(tokenizer, PromptTokenizer):
        return tokenizer
    length = int(getattr(text_config, "max_position_embeddings", 77) or 77)
    if tokenizer is None:
        vocab = int(getattr(text_config, "vocab_size", 49408) or 49408)
        if vocab < 49408:
            raise ConfigError(
                f"the text model has a vocabulary of {vocab} tokens, smaller than CLIP's 49408: "
                "pass the model's own tokenizer"
            )
        return CLIPBPETokenizer(context_length=length)
    if hasattr(tokenizer, "convert_tokens_to_ids"):  # a transformers tokenizer
        return HFTokenizer(tokenizer, context_length=length)
    from segprompt.backbones.tokenizers import OpenCLIPTokenizer

    return OpenCLIPTokenizer(tokenizer)


def hf_text_tower(
    text_model: nn.Module, projection: nn.Module | None, tokenizer: PromptTokenizer, name: str = "hf-clip-text"
) -> TextTower:
    """A CLIPSegTextModel / CLIPTextModel (+ its ``text_projection``)."""
    try:
        embedding = text_model.embeddings.token_embedding
        blocks = text_model.encoder.layers
    except AttributeError as exc:
        raise ConfigError(f"{type(text_model).__name__} is not a CLIP-style text model: {exc}") from exc

    def encode(tokens: Tokens) -> torch.Tensor:
        out = text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        pooled = out.pooler_output
        return projection(pooled) if projection is not None else pooled

    return TextTower(
        name,
        embedding,
        blocks,
        text_model.config.hidden_size,
        tokenizer,
        encode,
        checkpointing=hf_checkpointing(blocks),
    )


def hf_vision_tower(
    vision_model: nn.Module, projection: nn.Module | None, name: str = "hf-clip-vision", interpolate: bool = False
) -> VisionTower:
    """A CLIPSegVisionModel / CLIPVisionModel (+ its ``visual_projection``). ``interpolate``:
    pass ``interpolate_pos_encoding=True`` (CLIPSeg's default) so other input sizes work."""
    try:
        blocks = vision_model.encoder.layers
    except AttributeError as exc:
        raise ConfigError(f"{type(vision_model).__name__} is not a CLIP-style vision model: {exc}") from exc
    config = vision_model.config

    def encode(images: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if interpolate else {}
        pooled = vision_model(pixel_values=images, **kwargs).pooler_output
        return projection(pooled) if projection is not None else pooled

    return VisionTower(
        name,
        blocks,
        config.hidden_size,
        exit=(vision_model.encoder, "output"),
        encode=encode,
        patch_size=_pair(config.patch_size),
        image_size=_pair(config.image_size),
        num_prefix_tokens=1,
        checkpointing=hf_checkpointing(blocks),
        entry=getattr(vision_model, "pre_layrnorm", None),
    )


def hf_checkpointing(blocks: Any) -> Any:
    """Whether transformers' gradient checkpointing is active on ``blocks``."""
    blocks = list(blocks)
    return lambda: any(getattr(b, "gradient_checkpointing", False) and b.training for b in blocks)


def is_clipseg_segmentation(model: nn.Module) -> bool:
    try:
        from transformers import CLIPSegForImageSegmentation
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, CLIPSegForImageSegmentation)


def is_hf_clip_model(model: nn.Module) -> bool:
    try:
        from transformers import CLIPModel, CLIPSegModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, (CLIPModel, CLIPSegModel))


def adapt_hf_clip(model: nn.Module, tokenizer: Any = None) -> ModelAdapter:
    """Both towers of a transformers ``CLIPModel`` or ``CLIPSegModel``."""
    prompt_tok = as_prompt_tokenizer(tokenizer, model.config.text_config)
    interpolate = type(model).__name__.startswith("CLIPSeg")
    text = hf_text_tower(model.text_model, model.text_projection, prompt_tok, name="hf-clip-text")
    vision = hf_vision_tower(
        model.vision_model, model.visual_projection, name="hf-clip-vision", interpolate=interpolate
    )
    return ModelAdapter(model, text, vision)
