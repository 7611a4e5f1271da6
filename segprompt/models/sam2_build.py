"""Build SAM 2 models through the sam2 package's own hydra configs, chosen from a checkpoint.

.. code-block:: python

    from segprompt.models.sam2_build import load_sam2, tiny_sam2, write_tiny_checkpoint

    model, arch = load_sam2("sam2.1_hiera_tiny.pt")       # config read from the file's keys
    arch.config, arch.overrides                             # "configs/sam2.1/sam2.1_hiera_t.yaml", ()
    tiny = tiny_sam2(seed=0, image_size=256)                # random, CPU, ~1.3 M parameters
    video = tiny_sam2(seed=0, video=True)                   # the same weights as a SAM2VideoPredictor
    write_tiny_checkpoint("tiny_sam2.pt", seed=0)           # {"model": state_dict, "sam2_arch": {...}}

* A :class:`Sam2Arch` is a package config name (``configs/sam2.1/sam2.1_hiera_t.yaml``) plus
  hydra overrides; :func:`build_sam2_model` passes both to ``sam2.build_sam.build_sam2`` (or
  ``build_sam2_video_predictor``), so the models are the package's classes, never copies.
* :func:`detect_arch` reads a state dict's keys and shapes (:class:`KeyLayout`): SAM 2 vs 2.1
  (2.1 adds ``no_obj_embed_spatial`` and ``obj_ptr_tpos_proj``), the Hiera trunk width
  (``patch_embed.proj``: 96 for t / s, 112 for b+, 144 for l) and its blocks per stage (a
  block with its own ``proj`` opens a stage: t [1, 2, 7, 2], s [1, 2, 11, 2], b+ [2, 3, 16, 3],
  l [2, 6, 36, 4]). Any finetune with an official layout (MedSAM2 is a sam2.1 hiera_t) loads.
* What the weights cannot tell (input size, attention heads, global-attention blocks) comes
  from the official config, from a ``"sam2_arch"`` record a file may carry beside ``"model"``
  (tiny and custom models written by :func:`save_sam2`), or from the caller (``arch=``).
  MedSAM2 runs at 512 px: its registry entry names ``sam2.1_hiera_t512``.

Follows sam2/build_sam.py (``build_sam2``, ``_load_checkpoint``) and sam2/configs/sam2.1/*.yaml
of the sam2 package 1.1.0.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from segprompt.errors import ConfigError, WeightsError
from segprompt.registry import Registry

log = logging.getLogger(__name__)

#: the key a checkpoint file may carry beside "model" to name its configuration
ARCH_KEY = "sam2_arch"


@dataclass(frozen=True)
class Sam2Arch:
    """A SAM 2 configuration: a config shipped in the sam2 package plus hydra overrides.

    Attributes:
        name: short name (``sam2.1_hiera_t``, ``sam2.1_hiera_t512``, ``sam2.1_tiny256``).
        config: config name inside the sam2 package, e.g. ``configs/sam2.1/sam2.1_hiera_t.yaml``.
        overrides: hydra override strings applied on top (``++model.image_size=512``, ...).
    """

    name: str
    config: str
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(str(o) for o in self.overrides))

    @property
    def image_size(self) -> int:
        """Square model input side in pixels (the config's 1024 unless overridden)."""
        for item in reversed(self.overrides):
            m = re.fullmatch(r"\+{0,2}model\.image_size=(\d+)", item.strip())
            if m:
                return int(m.group(1))
        return 1024

    def with_overrides(self, *extra: str, name: str | None = None) -> "Sam2Arch":
        return Sam2Arch(name or self.name, self.config, self.overrides + tuple(extra))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "overrides": list(self.overrides)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Sam2Arch":
        try:
            return cls(str(data["name"]), str(data["config"]), tuple(data.get("overrides", ())))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"a SAM 2 architecture record needs 'name' and 'config', got {dict(data)!r}") from exc


@dataclass(frozen=True)
class KeyLayout:
    """What a SAM 2 state dict's keys and shapes say about its architecture.

    Attributes:
        version: ``"sam2"`` or ``"sam2.1"``.
        embed_dim: Hiera trunk width of the first stage.
        stages: Hiera blocks per stage.
        d_model: FPN neck / prompt-encoder width (256 in the official models).
        mem_dim: memory-encoder output width (64 in the official models).
        memory_layers: memory-attention layers (4 in the official models).
    """

    version: str
    embed_dim: int
    stages: tuple[int, ...]
    d_model: int
    mem_dim: int
    memory_layers: int

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> "KeyLayout":
        """Read the layout; ConfigError when the keys are not those of a SAM 2 model."""
        need = ("image_encoder.trunk.patch_embed.proj.weight", "image_encoder.neck.convs.0.conv.weight", "sam_mask_decoder.iou_token.weight")
        missing = [k for k in need if k not in state_dict]
        if missing:
            hint = ""
            if any(k.startswith("image_encoder.blocks.") or k.startswith("mask_decoder.") for k in state_dict):
                hint = " (it looks like a SAM 1 checkpoint: use create_segmenter('sam', checkpoint=...))"
            raise ConfigError(f"not a SAM 2 checkpoint: key {missing[0]!r} is missing{hint}")
        blocks: dict[int, bool] = {}
        for key in state_dict:
            m = re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.(proj\.)?", key)
            if m:
                i = int(m.group(1))
                blocks[i] = blocks.get(i, False) or bool(m.group(2))
        if not blocks or sorted(blocks) != list(range(len(blocks))):
            raise ConfigError("not a SAM 2 checkpoint: its Hiera trunk blocks are missing or not numbered 0..N-1")
        starts = [0] + [i for i in sorted(blocks) if blocks[i] and i > 0]
        ends = starts[1:] + [len(blocks)]
        stages = tuple(e - s for s, e in zip(starts, ends))
        mem_layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"memory_attention\.layers\.(\d+)\.", k))}
        out_proj = state_dict.get("memory_encoder.out_proj.weight")
        d_model = int(state_dict["image_encoder.neck.convs.0.conv.weight"].shape[0])
        version = "sam2.1" if "no_obj_embed_spatial" in state_dict else "sam2"
        return cls(
            version=version,
            embed_dim=int(state_dict["image_encoder.trunk.patch_embed.proj.weight"].shape[0]),
            stages=stages,
            d_model=d_model,
            mem_dim=int(out_proj.shape[0]) if out_proj is not None else d_model,
            memory_layers=len(mem_layers),
        )

    def describe(self) -> str:
        return (
            f"{self.version}, Hiera embed_dim {self.embed_dim}, stages {list(self.stages)}, "
            f"neck d_model {self.d_model}, memory dim {self.mem_dim}, {self.memory_layers} memory-attention layers"
        )


# -- the official configurations -------------------------------------------------------

ARCHS: Registry[Sam2Arch] = Registry("SAM 2 architecture")
#: layout of each official architecture (checked against the package's configs in the tests)
OFFICIAL_LAYOUTS: dict[str, KeyLayout] = {}

_HIERA = {"t": (96, (1, 2, 7, 2)), "s": (96, (1, 2, 11, 2)), "b+": (112, (2, 3, 16, 3)), "l": (144, (2, 6, 36, 4))}
for _version in ("sam2", "sam2.1"):
    for _size, (_dim, _stages) in _HIERA.items():
        _name = f"{_version}_hiera_{_size}"
        ARCHS.add(_name, Sam2Arch(_name, f"configs/{_version}/{_name}.yaml"), *([f"{_version}_hiera_b_plus"] if _size == "b+" else []))
        OFFICIAL_LAYOUTS[_name] = KeyLayout(_version, _dim, _stages, 256, 64, 4)
# MedSAM2 (bowang-lab/MedSAM2, configs/sam2.1_hiera_t512.yaml): sam2.1 hiera_t at 512 px input,
# the memory attention's RoPE grid at 512 / 16 = 32 (the keys are those of sam2.1_hiera_t)
ARCHS.add(
    "sam2.1_hiera_t512",
    Sam2Arch(
        "sam2.1_hiera_t512",
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        (
            "++model.image_size=512",
            "++model.memory_attention.layer.self_attention.feat_sizes=[32,32]",
            "++model.memory_attention.layer.cross_attention.feat_sizes=[32,32]",
        ),
    ),
    "medsam2",
)
del _version, _size, _dim, _stages, _name


def get_arch(name: str) -> Sam2Arch:
    """A registered architecture by name (``sam2.1_hiera_b+``, ``sam2.1_hiera_t512`` ...)."""
    return ARCHS.get(name)


def detect_arch(state_dict: Mapping[str, Any], record: Mapping[str, Any] | None = None) -> Sam2Arch:
    """The configuration of a SAM 2 state dict.

    A ``record`` (the ``"sam2_arch"`` entry of a file written by :func:`save_sam2`) wins;
    otherwise the layout must be one of the official ones. Raises ConfigError for keys that are
    not SAM 2's, or a layout that matches no official configuration.
    """
    layout = KeyLayout.from_state_dict(state_dict)
    if record is not None:
        return Sam2Arch.from_json(record)
    for name, official in OFFICIAL_LAYOUTS.items():
        if official == layout:
            return ARCHS.get(name)
    raise ConfigError(
        f"unknown SAM 2 key layout ({layout.describe()}): it is none of the official hiera t / s / b+ / l "
        "configurations; pass arch=Sam2Arch(name, config, overrides) naming the package config and hydra overrides"
    )


# -- building -----------------------------------------------------------------------------


def _hydra_ready() -> None:
    """The sam2 package initialises hydra's config module on import; another hydra user may
    have cleared it since."""
    import sam2  # noqa: F401  (initialises hydra with the package's configs)
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")


def build_sam2_model(
    arch: Sam2Arch,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    device: str = "cpu",
    video: bool = False,
    postprocessing: bool = True,
    extra_overrides: Sequence[str] = (),
) -> torch.nn.Module:
    """A SAM2Base (``video=True``: a SAM2VideoPredictor) from the package's config and overrides.

    ``postprocessing`` is ``build_sam2``'s ``apply_postprocessing`` (the single-mask head falls
    back to the best multimask candidate when unstable; for video also hole filling and binarised
    click masks for the memory). ``state_dict`` loads strictly; a mismatch raises ConfigError.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _hydra_ready()
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    builder = build_sam2_video_predictor if video else build_sam2
    overrides = list(arch.overrides) + list(extra_overrides)
    try:
        model = builder(arch.config, None, device="cpu", mode="eval", hydra_overrides_extra=overrides, apply_postprocessing=postprocessing)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"SAM 2 config {arch.config!r} with overrides {overrides} does not build: {str(exc).splitlines()[0]}") from exc
    if state_dict is not None:
        load_state_dict_strict(model, state_dict, arch)
    return model.to(device).eval()


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], arch: Sam2Arch) -> None:
    """``model.load_state_dict`` that names the first missing / unexpected / misshaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shaped = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})")
        if shaped:
            k = shaped[0]
            parts.append(f"{len(shaped)} shape mismatches (first {k!r}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})")
        raise ConfigError(f"the checkpoint does not fit SAM 2 architecture {arch.name!r}: {'; '.join(parts)}")
    model.load_state_dict(dict(state_dict), strict=True)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, ``"sam2_arch"`` record or None) of a ``.pt`` / ``.pth`` / ``.safetensors`` file.

    Accepts the official layout ``{"model": state_dict}`` and a bare state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"SAM 2 checkpoint {p} not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                import json

                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
            record = json.loads(meta[ARCH_KEY]) if ARCH_KEY in meta else None
            return sd, record
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file raises whatever the parser hits
        raise WeightsError(f"cannot read SAM 2 checkpoint {p}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(data, Mapping):
        raise WeightsError(f"SAM 2 checkpoint {p} holds a {type(data).__name__}, not a state dict")
    record = data.get(ARCH_KEY) if isinstance(data.get(ARCH_KEY), Mapping) else None
    sd = data["model"] if isinstance(data.get("model"), Mapping) else data
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    return sd, record


def load_sam2(
    checkpoint: str | os.PathLike[str],
    arch: Sam2Arch | str | None = None,
    device: str = "cpu",
    video: bool = False,
) -> tuple[torch.nn.Module, Sam2Arch]:
    """Build the model a checkpoint file holds; the architecture from ``arch`` or from the file."""
    sd, record = read_checkpoint(checkpoint)
    if isinstance(arch, str):
        arch = get_arch(arch)
    if arch is None:
        arch = detect_arch(sd, record)
    else:
        KeyLayout.from_state_dict(sd)  # a clear error for files that are not SAM 2 at all
    return build_sam2_model(arch, sd, device=device, video=video), arch


def save_sam2(model: torch.nn.Module, arch: Sam2Arch, path: str | os.PathLike[str]) -> Path:
    """Write ``{"model": state_dict, "sam2_arch": arch}`` atomically: the official layout (the
    package's ``build_sam2(config, path, hydra_overrides_extra=arch.overrides)`` loads it) plus
    the record that lets :func:`load_sam2` rebuild a non-official configuration by itself."""
    from segprompt.fileio import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"model": state, ARCH_KEY: arch.to_json()}, tmp)
    return Path(path)


# -- the tiny random test model ------------------------------------------------------------


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny test configuration (the package's sam2.1 hiera_t config, shrunk).

    Memory attention keeps the official structure (RoPE self / cross attention, object
    pointers) with one layer; SAM's mask decoder keeps its fixed internal sizes (2 layers,
    8 heads, MLP 2048), only its width follows ``d_model``.
    """

    image_size: int = 256
    embed_dim: int = 16
    stages: tuple[int, ...] = (1, 1, 2, 1)
    global_att_blocks: tuple[int, ...] = (3,)
    window_spec: tuple[int, ...] = (8, 4, 8, 4)
    d_model: int = 64
    mem_dim: int = 32
    memory_layers: int = 1
    ffn_dim: int = 128
    extra: tuple[str, ...] = field(default=())

    def overrides(self) -> tuple[str, ...]:
        s, g = self.image_size, self.image_size // 16
        if s % 32:
            raise ConfigError(f"tiny SAM 2 image_size must be a multiple of 32, got {s}")
        dims = [self.embed_dim * 2**i for i in range(len(self.stages))]

        def lst(xs: Sequence[int]) -> str:
            return "[" + ",".join(str(int(x)) for x in xs) + "]"

        trunk, mem, enc = "++model.image_encoder.trunk", "++model.memory_attention", "++model.memory_encoder"
        return (
            f"++model.image_size={s}",
            f"{trunk}.embed_dim={self.embed_dim}",
            f"{trunk}.num_heads=1",
            f"{trunk}.stages={lst(self.stages)}",
            f"{trunk}.global_att_blocks={lst(self.global_att_blocks)}",
            f"{trunk}.window_spec={lst(self.window_spec)}",
            f"++model.image_encoder.neck.d_model={self.d_model}",
            f"++model.image_encoder.neck.position_encoding.num_pos_feats={self.d_model}",
            f"++model.image_encoder.neck.backbone_channel_list={lst(dims[::-1])}",
            f"{mem}.d_model={self.d_model}",
            f"{mem}.num_layers={self.memory_layers}",
            f"{mem}.layer.d_model={self.d_model}",
            f"{mem}.layer.dim_feedforward={self.ffn_dim}",
            f"{mem}.layer.self_attention.embedding_dim={self.d_model}",
            f"{mem}.layer.self_attention.feat_sizes=[{g},{g}]",
            f"{mem}.layer.cross_attention.embedding_dim={self.d_model}",
            f"{mem}.layer.cross_attention.kv_in_dim={self.mem_dim}",
            f"{mem}.layer.cross_attention.feat_sizes=[{g},{g}]",
            f"{enc}.out_dim={self.mem_dim}",
            f"{enc}.in_dim={self.d_model}",
            f"{enc}.position_encoding.num_pos_feats={self.mem_dim}",
            f"{enc}.mask_downsampler.embed_dim={self.d_model}",
            f"{enc}.fuser.layer.dim={self.d_model}",
            f"{enc}.fuser.num_layers=1",
        ) + tuple(self.extra)


def tiny_arch(image_size: int = 256, **sizes: Any) -> Sam2Arch:
    """The tiny test configuration as a :class:`Sam2Arch` (sizes: fields of :class:`TinySpec`)."""
    spec = TinySpec(image_size=image_size, **sizes)
    return Sam2Arch(f"sam2.1_tiny{image_size}", "configs/sam2.1/sam2.1_hiera_t.yaml", spec.overrides())


def _liven(model: torch.nn.Module, generator: torch.Generator, object_score: float) -> None:
    """Make a random model's outputs informative: mask logits with real edges (the hypernetwork
    outputs widened), and, for video, objects judged present (the object-score head's last bias
    set to ``object_score``, its weights shrunk), else every tracked frame is NO_OBJ_SCORE."""
    dec = model.sam_mask_decoder
    with torch.no_grad():
        for mlp in dec.output_hypernetworks_mlps:
            last = mlp.layers[-1]
            last.weight.copy_(torch.randn(last.weight.shape, generator=generator) * 20.0 / last.weight.shape[1] ** 0.5)
            last.bias.zero_()
        head = getattr(dec, "pred_obj_score_head", None)
        if head is not None:
            last = head.layers[-1] if hasattr(head, "layers") else head
            last.weight.mul_(0.05)
            last.bias.fill_(object_score)


def tiny_sam2(
    seed: int = 0,
    image_size: int = 256,
    video: bool = False,
    device: str = "cpu",
    object_score: float = 2.0,
    postprocessing: bool = True,
    **sizes: Any,
) -> torch.nn.Module:
    """A tiny random SAM 2 (about 1.3 M parameters; set_image well under 1 s on a CPU).

    The package's sam2.1 hiera_t config shrunk through hydra overrides (:class:`TinySpec`);
    the same ``seed`` and sizes give the same weights whether ``video`` is False (a SAM2Base,
    for ``SAM2ImagePredictor``) or True (a ``SAM2VideoPredictor``). The global torch RNG is
    left as it was.
    """
    arch = tiny_arch(image_size, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam2_model(arch, None, device="cpu", video=False, postprocessing=postprocessing)
    _liven(model, torch.Generator().manual_seed(seed + 1), object_score)
    if video:
        model = build_sam2_model(arch, model.state_dict(), device="cpu", video=True, postprocessing=postprocessing)
    return model.to(device).eval()


def write_tiny_checkpoint(path: str | os.PathLike[str], seed: int = 0, image_size: int = 256, **sizes: Any) -> Path:
    """Write :func:`tiny_sam2` in the official file layout (``{"model": ...}``) plus its record."""
    return save_sam2(tiny_sam2(seed, image_size, **sizes), tiny_arch(image_size, **sizes), path)


__all__ = [
    "ARCHS",
    "ARCH_KEY",
    "KeyLayout",
    "OFFICIAL_LAYOUTS",
    "Sam2Arch",
    "TinySpec",
    "build_sam2_model",
    "detect_arch",
    "get_arch",
    "load_sam2",
    "load_state_dict_strict",
    "read_checkpoint",
    "save_sam2",
    "tiny_arch",
    "tiny_sam2",
    "write_tiny_checkpoint",
]
