"""Multi-scale vision adapters: a plain ViT's single feature map as a feature pyramid.

``create_pyramid(name, **kwargs)`` builds a :class:`VisionPyramid`: a vision trunk (SAM's image
encoder, an open_clip vision tower, a timm ViT, DINOv2 included) whose one stride-``p`` map goes
through ViTDet's *simple feature pyramid* (Li et al. 2022, detectron2
``detectron2/modeling/backbone/vit.py: SimpleFeaturePyramid``), giving maps at strides
``p / scale`` for ``scales`` (default 4, 2, 1, 0.5: strides 4, 8, 16, 32 for patch 16).

>>> pyr = create_pyramid("sam-tiny")                        # bundled demo weights, 256 px
>>> feats = pyr(images)            # (B, 3, 256, 256) RGB 0..255, resized and zero-padded
>>> [f.shape[-1] for f in feats]                            # doctest: +SKIP
[64, 32, 16, 8]
>>> optimiser = torch.optim.AdamW(pyr.trainable_parameters(), lr=1e-4)   # doctest: +SKIP

Built-in names (registered by import path, so importing this module loads no backbone library):

* ``sam``: segment-anything's ``ImageEncoderViT`` of any size, read from a checkpoint as the
  ``sam`` Segmenter reads it (:func:`segprompt.models.sam_arch.load_sam`); its own neck stays, so
  the base map is the stride-16 image embedding;
* ``sam-tiny``: the bundled demo model's encoder (256 px);
* ``open_clip``: an open_clip vision tower's patch tokens (ViT, or a timm trunk such as BiomedCLIP's);
* ``timm``: a plain timm ViT's ``forward_features`` patch tokens (``vit_*``, ``*_dinov2``).

Training (``trainable=``): ``"frozen"`` (default; only the pyramid convolutions train, the trunk
runs in eval mode and without autograd), ``"lora"`` (low-rank updates of the attention qkv and
output projections, :mod:`segprompt.backbones.lora`, ``lora_rank`` default 4; B starts at zero so
the output at initialisation equals the frozen one), ``"full"`` (the whole trunk trains).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable, Sequence, Union

import torch
from torch import nn

from segprompt.errors import ConfigError
from segprompt.registry import Registry

__all__ = [
    "VisionPyramid",
    "SimpleFeaturePyramid",
    "LayerNorm2d",
    "create_pyramid",
    "register_pyramid",
    "list_pyramids",
    "PYRAMIDS",
    "TRAINABLE_MODES",
    "DEFAULT_SCALES",
]

#: what ``trainable=`` accepts
TRAINABLE_MODES = ("frozen", "lora", "full")
#: ViTDet's scale factors (strides 4, 8, 16, 32 over a stride-16 map)
DEFAULT_SCALES = (4.0, 2.0, 1.0, 0.5)
_SUPPORTED_SCALES = (4.0, 2.0, 1.0, 0.5)


def check_trainable(mode: str) -> str:
    if mode not in TRAINABLE_MODES:
        raise ConfigError(f"trainable must be one of {', '.join(TRAINABLE_MODES)}, got {mode!r}")
    return mode


def require(module: str, pip_name: str, what: str) -> ModuleType:
    """Import ``module`` or raise ConfigError naming the missing package and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{what} needs the {pip_name!r} package, which is not installed: pip install {pip_name} "
            f"(or pip install 'segprompt[vlm]') ({exc})"
        ) from None


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (detectron2's ``LayerNorm`` for "LN")."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    if isinstance(scales, (int, float)):
        scales = (scales,)
    out = []
    for s in scales:
        s = float(s)
        if s not in _SUPPORTED_SCALES:
            raise ConfigError(f"pyramid scale {s} is not supported; use some of {_SUPPORTED_SCALES}")
        if s not in out:
            out.append(s)
    if not out:
        raise ConfigError("the pyramid needs at least one scale")
    return tuple(sorted(out, reverse=True))  # fine to coarse


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid over one (B, C, h, w) map, as detectron2's
    ``SimpleFeaturePyramid`` (``backbone/vit.py``) with ``norm="LN"``: scale 4: deconv 2x2 (C/2),
    LayerNorm, GELU, deconv 2x2 (C/4); 2: deconv 2x2 (C/2); 1: identity; 0.5: max-pool 2x2; each
    then a 1x1 conv and a 3x3 conv to ``out_channels``, each followed by LayerNorm (no conv bias).

    forward: (B, C, h, w) -> list of (B, out_channels, h * s, w * s) for s in ``scales``
    (fine to coarse; max-pooling floors odd sides)."""

    def __init__(self, in_channels: int, out_channels: int = 256, scales: Sequence[float] = DEFAULT_SCALES) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ConfigError(f"pyramid channels must be >= 1, got in {in_channels}, out {out_channels}")
        self.scales = _check_scales(scales)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.stages = nn.ModuleList(self._stage(s) for s in self.scales)

    def _stage(self, scale: float) -> nn.Sequential:
        dim = self.in_channels
        half, quarter = max(1, dim // 2), max(1, dim // 4)
        layers: list[nn.Module]
        if scale == 4.0:
            layers = [
                nn.ConvTranspose2d(dim, half, kernel_size=2, stride=2),
                LayerNorm2d(half),
                nn.GELU(),
                nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
            ]
            dim = quarter
        elif scale == 2.0:
            layers, dim = [nn.ConvTranspose2d(dim, half, kernel_size=2, stride=2)], half
        elif scale == 1.0:
            layers = []
        else:  # 0.5
            layers = [nn.MaxPool2d(kernel_size=2, stride=2)]
        out = self.out_channels
        layers += [
            nn.Conv2d(dim, out, kernel_size=1, bias=False),
            LayerNorm2d(out),
            nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out),
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [stage(x) for stage in self.stages]


class VisionPyramid(nn.Module):
    """A vision trunk plus a :class:`SimpleFeaturePyramid` over its stride-``base_stride`` map.

    forward(images): (B, 3, S, S) float RGB in 0..255, resized (longest side) and zero-padded to
    ``S = img_size``; normalised inside by ``pixel_mean`` / ``pixel_std`` (buffers (3,), 0..255
    units) -> list of (B, channels, S / strides[i], S / strides[i]) maps, fine to coarse (sides
    as the backbone grid gives them). ``sizes`` (optional, one (h, w) per image: the unpadded
    content) sets the padding to zero *after* normalisation, segment-anything's convention
    (``Sam.preprocess`` normalises, then pads).

    Subclasses set the trunk, the geometry and :meth:`_base`; :meth:`_add_lora` injects LoRA
    (default: :func:`segprompt.backbones.lora.inject_lora` on ``lora_targets``).
    """

    #: fnmatch patterns (relative to the trunk) of the attention linears that get LoRA
    lora_targets: tuple[str, ...] = ()
    #: run a ``"frozen"`` trunk without autograd (saves the activations' memory) unless the input
    #: requires grad or prompt tokens are attached to ``self.tower`` (towers.VisionTower.prompted);
    #: set False when something else inside the trunk trains
    frozen_no_grad: bool = True

    def __init__(
        self,
        trunk: nn.Module,
        *,
        in_channels: int,
        base_stride: float,
        img_size: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        out_channels: int = 256,
        scales: Sequence[float] = DEFAULT_SCALES,
        trainable: str = "frozen",
        lora_rank: int = 4,
        lora_alpha: float | None = None,
    ) -> None:
        super().__init__()
        self.trainable = check_trainable(trainable)
        self.trunk = trunk
        self.img_size = int(img_size)
        self.base_stride = float(base_stride)
        self.base_channels = int(in_channels)
        self.pyramid = SimpleFeaturePyramid(in_channels, out_channels, scales)
        self.register_buffer("pixel_mean", torch.as_tensor(pixel_mean, dtype=torch.float32).reshape(3).clone(), persistent=False)
        self.register_buffer("pixel_std", torch.as_tensor(pixel_std, dtype=torch.float32).reshape(3).clone(), persistent=False)
        self.lora_rank = int(lora_rank)
        trunk.requires_grad_(self.trainable == "full")
        if self.trainable == "lora" and not self._add_lora(self.lora_rank, lora_alpha):
            raise ConfigError(f"{type(self).__name__}: LoRA found no layer to adapt")
        self.train(trunk.training)

    # -- geometry --------------------------------------------------------------------------

    @property
    def scales(self) -> tuple[float, ...]:
        return self.pyramid.scales

    @property
    def strides(self) -> tuple[float, ...]:
        """Input pixels per feature cell of each level (base stride / scale), fine to coarse."""
        return tuple(self.base_stride / s for s in self.scales)

    @property
    def channels(self) -> int:
        return self.pyramid.out_channels

    # -- training --------------------------------------------------------------------------

    def _add_lora(self, rank: int, alpha: float | None) -> list[nn.Parameter]:
        from segprompt.backbones.lora import inject_lora

        if not self.lora_targets:
            raise ConfigError(f"{type(self).__name__}: LoRA is not supported for this trunk")
        return inject_lora(self.trunk, self.lora_targets, rank=rank, alpha=alpha)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What training optimises: the pyramid, plus the LoRA factors (``"lora"``) or the whole
        trunk (``"full"``)."""
        params = list(self.pyramid.parameters())
        if self.trainable == "lora":
            params += self.lora_parameters()
        elif self.trainable == "full":
            params += list(self.trunk.parameters())
        return params

    def lora_parameters(self) -> list[nn.Parameter]:
        """The LoRA factors in the trunk (``lora_a`` / ``lora_b`` of every adapted layer)."""
        return [p for n, p in self.trunk.named_parameters() if n.rsplit(".", 1)[-1] in ("lora_a", "lora_b")]

    def train(self, mode: bool = True) -> "VisionPyramid":
        super().train(mode)
        if self.trainable == "frozen":  # a frozen trunk never trains: no dropout / drop-path
            self.trunk.eval()
        return self

    # -- forward ---------------------------------------------------------------------------

    def normalise(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """(B, 3, S, S) 0..255 -> normalised (B, 3, S, S) float; checks the shape once."""
        s = self.img_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (s, s):
            raise ConfigError(
                f"{type(self).__name__} takes (B, 3, {s}, {s}) RGB images (resized and padded to "
                f"img_size {s}), got shape {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            images = images.float()
        x = (images - self.pixel_mean.view(1, 3, 1, 1)) / self.pixel_std.view(1, 3, 1, 1)
        if sizes is not None:
            if len(sizes) != x.shape[0]:
                raise ConfigError(f"sizes has {len(sizes)} entries for a batch of {x.shape[0]}")
            keep = torch.zeros(x.shape[0], 1, s, s, dtype=torch.bool, device=x.device)
            for i, (h, w) in enumerate(sizes):
                keep[i, :, : int(h), : int(w)] = True
            x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return x

    def base_map(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """The trunk's single (B, base_channels, S / base_stride, S / base_stride) map."""
        x = self.normalise(images, sizes)
        if self.trainable == "frozen" and self.frozen_no_grad and not x.requires_grad and not self._prompted():
            with torch.no_grad():
                return self._base(x)
        return self._base(x)

    def _prompted(self) -> bool:
        tower = getattr(self, "tower", None)
        return tower is not None and tower.active_prompt_tokens > 0

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, S, S) -> (B, C, h, w): the trunk's work only."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None) -> list[torch.Tensor]:
        return self.pyramid(self.base_map(images, sizes))

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, strides={self.strides}, channels={self.channels}, trainable={self.trainable!r}"


# -- registry ------------------------------------------------------------------------------

Factory = Union[str, Callable[..., VisionPyramid]]

PYRAMIDS: Registry[Factory] = Registry("vision pyramid")
PYRAMIDS.add("sam", "segprompt.backbones.pyramid_sam:create_sam_pyramid")
PYRAMIDS.add("sam-tiny", "segprompt.backbones.pyramid_sam:create_sam_tiny_pyramid")
PYRAMIDS.add("open-clip", "segprompt.backbones.pyramid_towers:create_openclip_pyramid", "openclip")
PYRAMIDS.add("timm", "segprompt.backbones.pyramid_towers:create_timm_pyramid")


def register_pyramid(name: str, *aliases: str) -> Callable[[Factory], Factory]:
    """Decorator registering a :class:`VisionPyramid` factory (or subclass) under ``name``."""
    return PYRAMIDS.register(name, *aliases)


def create_pyramid(name: str, **kwargs: Any) -> VisionPyramid:
    """Build the vision pyramid registered as ``name`` (``sam``, ``sam-tiny``, ``open_clip``, ``timm``).

    Common keyword arguments: ``out_channels`` (256), ``scales`` ((4, 2, 1, 0.5)), ``trainable``
    (``"frozen"`` | ``"lora"`` | ``"full"``), ``lora_rank`` (4), ``lora_alpha`` (= rank). The
    others go to the factory, e.g. ``create_pyramid("sam", checkpoint="sam_vit_b_01ec64.pth")``,
    ``create_pyramid("timm", model_name="vit_small_patch14_dinov2", img_size=518)``.
    """
    factory = PYRAMIDS.get(name)  # ConfigError for an unknown name, before anything is built
    check_trainable(kwargs.get("trainable", "frozen"))
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(**kwargs)


def list_pyramids() -> list[str]:
    return PYRAMIDS.names()
