"""``sam`` / ``sam-tiny`` vision pyramids: segment-anything's ``ImageEncoderViT`` (its neck kept).

The base map is the encoder's output, the stride-16 image embedding SAM's mask decoder reads
(``Sam.image_encoder(Sam.preprocess(x))``), 256 channels for the official sizes. The
architecture is read off the checkpoint by :func:`segprompt.models.sam_arch.load_sam`, exactly as
the ``sam`` Segmenter does; only the image encoder is kept. LoRA goes on every block's
``attn.qkv`` and ``attn.proj`` (the layers SAM-LoRA adapters such as micro-sam's target).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from segprompt.backbones.pyramid import VisionPyramid, require
from segprompt.errors import ConfigError

__all__ = ["SamPyramid", "create_sam_pyramid", "create_sam_tiny_pyramid"]


class SamPyramid(VisionPyramid):
    """A simple feature pyramid over a segment-anything ``ImageEncoderViT``.

    The geometry is read off the encoder (``img_size``, patch size, neck width); ``arch`` is the
    :class:`~segprompt.models.sam_arch.SamArch` it came from when known (else None).
    """

    lora_targets = ("blocks.*.attn.qkv", "blocks.*.attn.proj")

    def __init__(
        self,
        encoder: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        arch: Any = None,
        **kwargs: Any,
    ) -> None:
        patch = encoder.patch_embed.proj.kernel_size
        if patch[0] != patch[1]:
            raise ConfigError(f"SAM encoder with non-square patches {tuple(patch)} is not supported")
        super().__init__(
            encoder,
            in_channels=int(encoder.neck[0].out_channels),
            base_stride=int(patch[0]),
            img_size=int(encoder.img_size),
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            **kwargs,
        )
        self.arch = arch

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)  # segment-anything's own forward: blocks, then the neck


def _sam_parts(model: nn.Module) -> tuple[nn.Module, list[float], list[float]]:
    """(image encoder, pixel mean, pixel std) of a ``Sam``, or of a bare ``ImageEncoderViT``."""
    encoder = getattr(model, "image_encoder", model)
    if not hasattr(encoder, "neck") or not hasattr(encoder, "patch_embed"):
        raise ConfigError(
            f"create_pyramid('sam', model=...) needs a segment-anything Sam or ImageEncoderViT, got {type(model).__name__}"
        )
    mean = getattr(model, "pixel_mean", None)
    std = getattr(model, "pixel_std", None)
    if mean is None or std is None:
        from segprompt.models.sam_arch import SamArch

        mean, std = SamArch().pixel_mean, SamArch().pixel_std
    return encoder, [float(v) for v in torch.as_tensor(mean).reshape(-1)], [float(v) for v in torch.as_tensor(std).reshape(-1)]


def create_sam_pyramid(
    checkpoint: str | Path | None = None,
    arch: Any = None,
    model: nn.Module | None = None,
    arch_overrides: dict[str, Any] | None = None,
    attention: str = "sdpa",
    **kwargs: Any,
) -> SamPyramid:
    """A :class:`SamPyramid` from one of:

    * ``checkpoint``: a SAM checkpoint of any size (official key layout, ``.pth`` / ``.safetensors``),
      read by :func:`~segprompt.models.sam_arch.load_sam` (``arch_overrides`` go there);
    * ``arch``: a :class:`~segprompt.models.sam_arch.SamArch` (or its JSON / dict form) built with
      random weights (tests, or before loading a saved state dict; seed with
      ``torch.manual_seed``), e.g. ``tiny_arch()``;
    * ``model``: a segment-anything ``Sam`` (or its ``ImageEncoderViT``), used in place (LoRA is
      injected into it).

    ``attention``: the encoder's attention path, ``"sdpa"`` (default: the ``sam`` Segmenter's fast
    path, :mod:`segprompt.models.sam_fast`) or ``"reference"`` (segment-anything's own forward).
    Other keyword arguments (``out_channels``, ``scales``, ``trainable``, ``lora_rank``,
    ``lora_alpha``) go to :class:`~segprompt.backbones.pyramid.VisionPyramid`.
    """
    require("segment_anything", "segment-anything", "create_pyramid('sam')")
    given = [k for k, v in (("checkpoint", checkpoint), ("arch", arch), ("model", model)) if v is not None]
    if len(given) != 1:
        raise ConfigError(
            "create_pyramid('sam') needs exactly one of checkpoint= (a SAM checkpoint file), arch= (a SamArch, "
            f"random weights) or model= (a segment-anything Sam); got {', '.join(given) or 'none'}"
        )
    if checkpoint is not None:
        from segprompt.models.sam_arch import load_sam

        model, arch = load_sam(checkpoint, arch_overrides)
    elif arch is not None:
        if isinstance(arch, (str, Mapping)):  # e.g. from a JSON config
            from segprompt.models.sam_arch import SamArch

            arch = SamArch.from_json(arch)
        if arch_overrides:
            raise ConfigError("arch_overrides applies to checkpoint=; change the SamArch instead")
        model = arch.build()
    assert model is not None
    encoder, mean, std = _sam_parts(model)
    from segprompt.models.sam_fast import enable_fast_attention

    return SamPyramid(enable_fast_attention(encoder, attention), mean, std, arch=arch, **kwargs)


def create_sam_tiny_pyramid(**kwargs: Any) -> SamPyramid:
    """The bundled ``sam-tiny`` demo model's image encoder (256 px, stride 16); keyword arguments
    as for :func:`create_sam_pyramid` except the weights."""
    for key in ("checkpoint", "arch", "model"):
        if key in kwargs:
            raise ConfigError(
                f"sam-tiny uses its bundled weights ({key}= given); for other weights use create_pyramid('sam', {key}=...)"
            )
    from segprompt.models.sam_tiny import sam_tiny_path

    return create_sam_pyramid(checkpoint=sam_tiny_path(), **kwargs)
