"""Tower adapters for open_clip models (any model name, BiomedCLIP included).

Text towers
    * ``CLIP`` (the standard layout: ``token_embedding`` and ``transformer`` on the model);
    * ``CustomTextCLIP`` with a ``TextTransformer`` (``model.text``);
    * ``CustomTextCLIP`` with an ``HFTextEncoder`` (BiomedCLIP's PubMedBERT, other HF encoders):
      the placeholder slots are replaced at the HF model's input embeddings
      (``get_input_embeddings()``, before position embeddings) and deep prompts at the inputs of
      the encoder layers (``encoder.<layer_attr>``, e.g. BERT's ``encoder.layer``). Encoders whose
      layers cannot be found raise ConfigError naming what is missing.

Vision towers
    Visual prompts enter before the pre-norm (``ln_pre``, timm's ``norm_pre``; an ``nn.Identity``
    when the model has none), see :mod:`segprompt.backbones.towers`.

    * open_clip ``VisionTransformer`` (prompts dropped at the output of ``visual.transformer``,
      before ``ln_post`` / pooling, so ``tok`` / ``avg`` / attentional pooling see CLS + patches);
    * ``TimmModel`` wrapping a timm ViT (BiomedCLIP's ``vit_base_patch16_224``): blocks
      ``trunk.blocks``, prompts dropped at the input of ``trunk.norm``.
    * ResNet towers (``ModifiedResNet``) have no token sequence: ConfigError.

Text features are ``model.encode_text(ids)`` and image features ``model.encode_image(x)``,
the library's own functions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segprompt.backbones.model_adapter import ModelAdapter
from segprompt.backbones.tokenizers import OpenCLIPTokenizer, PromptTokenizer, Tokens
from segprompt.backbones.towers import TextTower, VisionTower
from segprompt.errors import ConfigError


__all__ = ["openclip_text_tower", "openclip_vision_tower", "adapt_openclip", "is_openclip_model"]


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def is_openclip_model(model: nn.Module) -> bool:
    try:
        from open_clip.model import CLIP, CustomTextCLIP
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, (CLIP, CustomTextCLIP))


def _flag(module: nn.Module, attr: str) -> Any:
    return lambda: bool(getattr(module, attr, False))


def _prompt_tokenizer(tokenizer: Any) -> PromptTokenizer:
    if tokenizer is None:
        raise ConfigError("an open_clip text tower needs its tokenizer: pass open_clip.get_tokenizer(model_name)")
    if isinstance(tokenizer, PromptTokenizer):
        return tokenizer
    return OpenCLIPTokenizer(tokenizer)


def _hf_encoder_blocks(hf_model: nn.Module) -> list[nn.Module]:
    from open_clip.hf_configs import arch_dict

    model_type = getattr(hf_model.config, "model_type", "")
    layer_attr = arch_dict.get(model_type, {}).get("config_names", {}).get("layer_attr", "layer")
    encoder = getattr(hf_model, "encoder", hf_model)
    blocks = getattr(encoder, layer_attr, None)
    if blocks is None:
        raise ConfigError(
            f"unsupported HF text encoder {type(hf_model).__name__} (model_type {model_type!r}): no "
            f"encoder.{layer_attr} block list, so prompts cannot be placed between its layers"
        )
    return list(blocks)


def openclip_text_tower(model: nn.Module, tokenizer: Any) -> TextTower:
    """The text tower of an open_clip ``CLIP`` / ``CustomTextCLIP`` model."""
    from open_clip.hf_model import HFTextEncoder
    from open_clip.transformer import TextTransformer

    tok = _prompt_tokenizer(tokenizer)

    def encode(tokens: Tokens) -> torch.Tensor:
        return model.encode_text(tokens.input_ids)

    text = getattr(model, "text", None)
    if text is None:  # CLIP: the text tower's modules live on the model
        transformer = model.transformer
        return TextTower(
            "openclip-text",
            model.token_embedding,
            transformer.resblocks,
            transformer.width,
            tok,
            encode,
            batch_first=getattr(transformer, "batch_first", True),
            checkpointing=_flag(transformer, "grad_checkpointing"),
        )
    if isinstance(text, TextTransformer):
        return TextTower(
            "openclip-text",
            text.token_embedding,
            text.transformer.resblocks,
            text.transformer.width,
            tok,
            encode,
            batch_first=getattr(text.transformer, "batch_first", True),
            checkpointing=_flag(text.transformer, "grad_checkpointing"),
        )
    if isinstance(text, HFTextEncoder):
        hf = text.transformer
        embedding = hf.get_input_embeddings()
        if embedding is None:
            raise ConfigError(f"unsupported HF text encoder {type(hf).__name__}: no input embeddings")
        width = int(getattr(hf.config, "hidden_size", embedding.weight.shape[1]))
        from segprompt.backbones.hf_clip import hf_checkpointing

        blocks = _hf_encoder_blocks(hf)
        return TextTower(
            "openclip-hf-text", embedding, blocks, width, tok, encode, checkpointing=hf_checkpointing(blocks)
        )
    raise ConfigError(f"unsupported open_clip text tower {type(text).__name__}")


def openclip_vision_tower(model: nn.Module) -> VisionTower:
    """The vision tower of an open_clip model (ViT, or a timm ViT through ``TimmModel``)."""
    from open_clip.transformer import VisionTransformer

    visual = model.visual

    def encode(images: torch.Tensor) -> torch.Tensor:
        return model.encode_image(images)

    if isinstance(visual, VisionTransformer):
        transformer = visual.transformer
        return VisionTower(
            "openclip-vision",
            transformer.resblocks,
            transformer.width,
            exit=(transformer, "output"),
            encode=encode,
            patch_size=_pair(visual.patch_size),
            image_size=_pair(visual.image_size),
            num_prefix_tokens=1,
            batch_first=getattr(transformer, "batch_first", True),
            checkpointing=_flag(transformer, "grad_checkpointing"),
            entry=getattr(visual, "ln_pre", None),
        )
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:
        return timm_vit_tower(trunk, encode, name="openclip-timm-vision")
    raise ConfigError(
        f"unsupported open_clip vision tower {type(visual).__name__}: visual prompts and dense "
        "features need a ViT (a token sequence); ResNet towers have none"
    )


def timm_vit_tower(trunk: nn.Module, encode: Any, name: str = "timm-vision") -> VisionTower:
    """A timm VisionTransformer-like model (``blocks``, ``patch_embed``, ``norm``)."""
    blocks = getattr(trunk, "blocks", None)
    patch_embed = getattr(trunk, "patch_embed", None)
    norm = getattr(trunk, "norm", None)
    if blocks is None or patch_embed is None or norm is None:
        raise ConfigError(
            f"unsupported timm vision model {type(trunk).__name__}: visual prompts need a ViT with "
            "blocks, patch_embed and norm"
        )
    if getattr(trunk, "dynamic_img_size", False):
        raise ConfigError(f"timm model {type(trunk).__name__} uses dynamic_img_size (NHWC tokens): unsupported")
    return VisionTower(
        name,
        list(blocks),
        int(trunk.embed_dim),
        exit=(norm, "input"),
        encode=encode,
        patch_size=_pair(patch_embed.patch_size),
        image_size=_pair(patch_embed.img_size),
        num_prefix_tokens=int(getattr(trunk, "num_prefix_tokens", 1)),
        checkpointing=_flag(trunk, "grad_checkpointing"),
        entry=getattr(trunk, "norm_pre", None),
    )


def adapt_openclip(model: nn.Module, tokenizer: Any = None) -> ModelAdapter:
    """Both towers of an open_clip model; the text tower only when a tokenizer is given."""
    text = openclip_text_tower(model, tokenizer) if tokenizer is not None else None
    return ModelAdapter(model, text, openclip_vision_tower(model))
