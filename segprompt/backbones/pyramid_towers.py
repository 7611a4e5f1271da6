"""``open_clip`` and ``timm`` vision pyramids: a ViT's patch tokens as the base map.

* ``timm``: ``trunk.forward_features(x)`` (the library's forward, final norm included), prefix
  tokens (CLS, registers) dropped, reshaped to the patch grid by
  :meth:`segprompt.backbones.towers.VisionTower.patch_tokens` of
  :func:`segprompt.backbones.openclip.timm_vit_tower`. DINOv2 names (``vit_small_patch14_dinov2``
  ...) give stride 14. LoRA: ``blocks.*.attn.qkv`` / ``blocks.*.attn.proj`` via
  :func:`segprompt.backbones.lora.inject_lora`.
* ``open_clip``: the output of the last transformer block, recorded by
  :meth:`~segprompt.backbones.towers.VisionTower.observe` of
  :func:`segprompt.backbones.openclip.openclip_vision_tower` while the library's own
  ``visual(x)`` runs, then ``ln_post`` (the tower's final norm, as timm's ``forward_features``
  ends with ``norm``), prefix token dropped, reshaped to the grid. A ``TimmModel`` tower
  (BiomedCLIP) is its timm trunk under the ``timm`` rule, with open_clip's normalisation.
  open_clip's ViT blocks use ``nn.MultiheadAttention``, whose projections are weights read
  directly, not ``nn.Linear`` calls: LoRA there is a low-rank parametrization of
  ``in_proj_weight`` (the fused qkv) and ``out_proj.weight`` (:func:`lora_attention_weights`),
  the same update ``W + (alpha / r) B A`` with B = 0 at the start.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from segprompt.backbones.pyramid import VisionPyramid, require
from segprompt.errors import ConfigError, WeightsError

__all__ = [
    "TimmPyramid",
    "OpenClipPyramid",
    "LowRankDelta",
    "lora_attention_weights",
    "create_timm_pyramid",
    "create_openclip_pyramid",
]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _square(value: Any, what: str) -> int:
    a, b = (value, value) if isinstance(value, (int, float)) else tuple(value)[:2]
    if a != b:
        raise ConfigError(f"{what} must be square for a vision pyramid, got {a}x{b}")
    return int(a)


def _to_255(values: Sequence[float]) -> list[float]:
    return [255.0 * float(v) for v in values]


class LowRankDelta(nn.Module):
    """A parametrization ``W -> W + (alpha / rank) B A`` (B zero at the start, A initialised like
    :class:`segprompt.backbones.lora.LoRALinear`'s), for weights a module reads directly."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        out_features, in_features = weight.shape
        kw = dict(dtype=weight.dtype, device=weight.device)
        self.scale = float(alpha if alpha is not None else rank) / int(rank)
        self.lora_a = nn.Parameter(torch.empty(int(rank), in_features, **kw))
        self.lora_b = nn.Parameter(torch.zeros(out_features, int(rank), **kw))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.lora_b @ self.lora_a)


def lora_attention_weights(module: nn.Module, rank: int = 4, alpha: float | None = None) -> list[nn.Parameter]:
    """LoRA on every attention layer under ``module`` that holds a 2-D ``in_proj_weight`` and an
    ``out_proj`` linear (torch's ``nn.MultiheadAttention``, open_clip's ``Attention``): both
    weights get a :class:`LowRankDelta` parametrization. Returns the new parameters; ConfigError
    when there is no such layer."""
    targets = [
        m for m in module.modules()
        if isinstance(getattr(m, "in_proj_weight", None), torch.Tensor)
        and m.in_proj_weight.ndim == 2
        and isinstance(getattr(m, "out_proj", None), nn.Linear)
    ]
    if not targets:
        raise ConfigError(
            f"no attention layer with in_proj_weight / out_proj under {type(module).__name__}: LoRA has nothing to adapt"
        )
    params: list[nn.Parameter] = []
    for attn in targets:
        for owner, name in ((attn, "in_proj_weight"), (attn.out_proj, "weight")):
            delta = LowRankDelta(getattr(owner, name), rank, alpha)
            parametrize.register_parametrization(owner, name, delta)
            params += [delta.lora_a, delta.lora_b]
    return params


class TimmPyramid(VisionPyramid):
    """A simple feature pyramid over a timm ViT's patch tokens (``forward_features``)."""

    lora_targets = ("blocks.*.attn.qkv", "blocks.*.attn.proj")

    def __init__(self, trunk: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float], **kwargs: Any) -> None:
        from segprompt.backbones.openclip import timm_vit_tower

        tower = timm_vit_tower(trunk, encode=trunk, name="timm-pyramid")
        if getattr(trunk.patch_embed, "img_size", None) is None:
            raise ConfigError(f"timm model {type(trunk).__name__} has no fixed img_size; create it with img_size=...")
        super().__init__(
            trunk,
            in_channels=tower.width,
            base_stride=_square(tower.patch_size, "the patch size"),
            img_size=_square(tower.image_size, "the timm model's img_size"),
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            **kwargs,
        )
        self.tower = tower

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)  # (B, prefix + h*w, D), final norm applied
        return self.tower.patch_tokens(tokens, x.shape[-2], x.shape[-1])


class _VisualOnly:
    """What :func:`openclip_vision_tower` reads of an open_clip model (``visual``,
    ``encode_image``), without keeping the text tower alive."""

    def __init__(self, visual: nn.Module) -> None:
        self.visual = visual

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


class OpenClipPyramid(VisionPyramid):
    """A simple feature pyramid over an open_clip ``VisionTransformer``'s last-block patch tokens
    (after ``ln_post``)."""

    def __init__(self, visual: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float], **kwargs: Any) -> None:
        from segprompt.backbones.openclip import openclip_vision_tower

        tower = openclip_vision_tower(_VisualOnly(visual))
        super().__init__(
            visual,
            in_channels=tower.width,
            base_stride=_square(tower.patch_size, "the patch size"),
            img_size=_square(tower.image_size, "the open_clip image_size"),
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            **kwargs,
        )
        self.tower = tower

    def _add_lora(self, rank: int, alpha: float | None) -> list[nn.Parameter]:
        return lora_attention_weights(self.trunk.transformer, rank, alpha)

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        last = self.tower.num_layers
        with self.tower.observe([last]) as found:
            self.trunk(x)  # the library's forward; the hook records block L's (B, N, D) output
        tokens = self.trunk.ln_post(found[last])
        return self.tower.patch_tokens(tokens, x.shape[-2], x.shape[-1])


def _one_of(kind: str, model: Any, model_name: Any) -> None:
    if (model is None) == (model_name is None):
        raise ConfigError(f"create_pyramid({kind!r}) needs exactly one of model= (a built model) or model_name=")


def create_timm_pyramid(
    model: nn.Module | None = None,
    model_name: str | None = None,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    img_size: int | None = None,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> TimmPyramid:
    """A :class:`TimmPyramid` from a built timm ViT (``model=``, used in place) or a name
    (``model_name="vit_small_patch14_dinov2"``, ``pretrained`` as timm's, ``checkpoint`` a local
    weights file loaded through timm's own filter (``pretrained_cfg_overlay``, which resamples
    position embeddings to ``img_size``), ``img_size`` the square input side, ``model_kwargs``
    more ``timm.create_model`` arguments, e.g. ``drop_path_rate``). ``pixel_mean`` /
    ``pixel_std`` (0..255) default to the model's ``pretrained_cfg`` (ImageNet's if absent)."""
    timm = require("timm", "timm", "create_pyramid('timm')")
    _one_of("timm", model, model_name)
    if model is None:
        extra: dict[str, Any] = {"num_classes": 0, **(model_kwargs or {})}
        if img_size is not None:
            extra["img_size"] = int(img_size)
        if checkpoint is not None:
            if not Path(checkpoint).is_file():
                raise WeightsError(f"{checkpoint}: checkpoint file not found")
            pretrained, extra["pretrained_cfg_overlay"] = True, {"file": str(checkpoint)}
        model = timm.create_model(model_name, pretrained=pretrained, **extra)
    elif checkpoint is not None or pretrained or model_kwargs:
        raise ConfigError(
            "create_pyramid('timm', model=...) takes a built model: load its weights before, or pass model_name="
        )
    elif img_size is not None and getattr(model.patch_embed, "img_size", None) != (int(img_size), int(img_size)):
        raise ConfigError(f"img_size={img_size} differs from the given model's {model.patch_embed.img_size}")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = pixel_mean if pixel_mean is not None else _to_255(cfg.get("mean", _IMAGENET_MEAN))
    std = pixel_std if pixel_std is not None else _to_255(cfg.get("std", _IMAGENET_STD))
    return TimmPyramid(model, mean, std, **kwargs)


def create_openclip_pyramid(
    model: nn.Module | None = None,
    model_name: str | None = None,
    pretrained: str | None = None,
    img_size: int | None = None,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> VisionPyramid:
    """A pyramid over an open_clip model's vision tower: ``model=`` (a ``CLIP`` /
    ``CustomTextCLIP``, its ``visual`` used in place, the rest dropped) or ``model_name=`` with
    ``pretrained`` (a tag or a local file, as ``open_clip.create_model``) and ``img_size``
    (open_clip's ``force_image_size``; ``model_kwargs`` more ``create_model`` arguments).
    Normalisation: the model's ``preprocess_cfg`` (OpenAI's CLIP mean / std when it has none),
    unless ``pixel_mean`` / ``pixel_std`` (0..255) are given. A ``TimmModel`` tower (BiomedCLIP)
    gives a :class:`TimmPyramid` over its trunk."""
    open_clip = require("open_clip", "open_clip_torch", "create_pyramid('open_clip')")
    _one_of("open_clip", model, model_name)
    if model is None:
        extra = dict(model_kwargs or {})
        if img_size is not None:
            extra["force_image_size"] = int(img_size)
        model = open_clip.create_model(model_name, pretrained=pretrained, **extra)
    elif pretrained is not None or img_size is not None or model_kwargs:
        raise ConfigError(
            "create_pyramid('open_clip', model=...) takes a built model: pretrained=, img_size= and "
            "model_kwargs= go with model_name="
        )
    visual = getattr(model, "visual", None)
    if visual is None:
        raise ConfigError(
            f"create_pyramid('open_clip') needs an open_clip model with a visual tower, got {type(model).__name__}"
        )
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    if pixel_mean is None:
        pixel_mean = _to_255(cfg.get("mean") or getattr(visual, "image_mean", None) or _OPENAI_MEAN)
    if pixel_std is None:
        pixel_std = _to_255(cfg.get("std") or getattr(visual, "image_std", None) or _OPENAI_STD)
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:
        return TimmPyramid(trunk, pixel_mean, pixel_std, **kwargs)
    return OpenClipPyramid(visual, pixel_mean, pixel_std, **kwargs)
