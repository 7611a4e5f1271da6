"""SAM architecture read from a checkpoint's state dict, and checkpoint loading.

An official checkpoint (vit_b / vit_l / vit_h) and a tiny one built for tests load the same way:
every size that shapes a tensor is read off the tensors. Two numbers leave no trace in the
weights and fall back to the official value unless the checkpoint's metadata (safetensors
header key ``segprompt.sam_arch``) or the caller says otherwise: the mask decoder's attention
head count (8) and, for encoders without relative positions, the encoder head count.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch

from segprompt.errors import WeightsError

log = logging.getLogger(__name__)

ARCH_METADATA_KEY = "segprompt.sam_arch"

_WRAPPER_KEYS = ("model", "state_dict", "model_state", "model_state_dict", "sam")
_PREFIXES = ("module.", "sam.", "model.")


@dataclass(frozen=True)
class SamArch:
    """Every hyper-parameter needed to rebuild a segment-anything ``Sam`` model."""

    img_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_mlp_ratio: float = 4.0
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    use_rel_pos: bool = True
    qkv_bias: bool = True
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid (official: 64)."""
        return self.img_size // self.patch_size

    @property
    def lowres_size(self) -> int:
        """Side of the low-resolution mask logits (official: 256)."""
        return 4 * self.embedding_size

    @property
    def name(self) -> str:
        """``vit_b`` / ``vit_l`` / ``vit_h`` when the encoder matches an official size, else ``custom``."""
        for key, arch in OFFICIAL_ARCHS.items():
            if self == arch:
                return key
        return "custom"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> "SamArch":
        data = json.loads(text) if isinstance(text, str) else dict(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise WeightsError(f"unknown SAM architecture keys {sorted(unknown)}")
        for k in ("encoder_global_attn_indexes", "pixel_mean", "pixel_std"):
            if k in data:
                data[k] = tuple(data[k])
        return cls(**data)

    def build(self) -> "torch.nn.Module":
        """A randomly initialised segment-anything ``Sam`` of this architecture (eval mode)."""
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

        emb = self.embedding_size
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=self.encoder_depth,
                embed_dim=self.encoder_embed_dim,
                img_size=self.img_size,
                mlp_ratio=self.encoder_mlp_ratio,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=self.encoder_num_heads,
                patch_size=self.patch_size,
                qkv_bias=self.qkv_bias,
                use_rel_pos=self.use_rel_pos,
                global_attn_indexes=self.encoder_global_attn_indexes,
                window_size=self.window_size,
                out_chans=self.prompt_embed_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=self.prompt_embed_dim,
                image_embedding_size=(emb, emb),
                input_image_size=(self.img_size, self.img_size),
                mask_in_chans=self.mask_in_chans,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=self.num_multimask_outputs,
                transformer=TwoWayTransformer(
                    depth=self.decoder_depth,
                    embedding_dim=self.prompt_embed_dim,
                    mlp_dim=self.decoder_mlp_dim,
                    num_heads=self.decoder_num_heads,
                ),
                transformer_dim=self.prompt_embed_dim,
                iou_head_depth=self.iou_head_depth,
                iou_head_hidden_dim=self.iou_head_hidden_dim,
            ),
            pixel_mean=list(self.pixel_mean),
            pixel_std=list(self.pixel_std),
        )
        return sam.eval()

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], overrides: Mapping[str, Any] | None = None) -> "SamArch":
        """Read the architecture off the tensor shapes of a SAM state dict."""
        try:
            return _arch_from_state_dict(sd, dict(overrides or {}))
        except KeyError as exc:
            raise WeightsError(f"not a segment-anything SAM state dict: key {exc} is missing") from exc


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    return max(idx) + 1 if idx else 0


def _arch_from_state_dict(sd: Mapping[str, torch.Tensor], overrides: dict[str, Any]) -> SamArch:
    patch_w = sd["image_encoder.patch_embed.proj.weight"]  # (D, 3, p, p)
    embed_dim, patch = int(patch_w.shape[0]), int(patch_w.shape[-1])
    pos = sd.get("image_encoder.pos_embed")  # (1, H/p, W/p, D)
    depth = _count(sd, r"image_encoder\.blocks\.(\d+)\.")
    grid = int(pos.shape[1]) if pos is not None else None
    use_rel_pos = "image_encoder.blocks.0.attn.rel_pos_h" in sd
    window_size, global_idx, num_heads = 0, [], overrides.get("encoder_num_heads")
    if use_rel_pos:
        head_dim = int(sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        num_heads = num_heads or embed_dim // head_dim
        sizes = [(int(sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) + 1) // 2 for i in range(depth)]
        if grid is None:
            grid = max(sizes)
        window_sizes = {s for s in sizes if s != grid}
        if len(window_sizes) > 1:
            raise WeightsError(f"SAM encoder blocks have several window sizes {sorted(window_sizes)}")
        window_size = window_sizes.pop() if window_sizes else 0
        global_idx = [i for i, s in enumerate(sizes) if s == grid] if window_size else []
    else:
        num_heads = num_heads or max(1, embed_dim // 64)
    if grid is None:
        raise WeightsError("cannot tell the SAM input size: no pos_embed and no relative positions")
    mlp_hidden = int(sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0])
    out_chans = int(sd["image_encoder.neck.0.weight"].shape[0])
    mask_in = int(sd["prompt_encoder.mask_downscaling.3.weight"].shape[0])
    dec_depth = _count(sd, r"mask_decoder\.transformer\.layers\.(\d+)\.")
    dec_mlp = int(sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0])
    n_tokens = int(sd["mask_decoder.mask_tokens.weight"].shape[0])
    iou_depth = _count(sd, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.")
    iou_hidden = int(sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0])
    values: dict[str, Any] = dict(
        img_size=grid * patch,
        patch_size=patch,
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=int(num_heads),
        encoder_mlp_ratio=mlp_hidden / embed_dim,
        encoder_global_attn_indexes=tuple(global_idx),
        window_size=window_size,
        use_rel_pos=use_rel_pos,
        qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in sd,
        prompt_embed_dim=out_chans,
        mask_in_chans=mask_in,
        decoder_depth=dec_depth,
        decoder_mlp_dim=dec_mlp,
        num_multimask_outputs=n_tokens - 1,
        iou_head_depth=iou_depth,
        iou_head_hidden_dim=iou_hidden,
    )
    if "pixel_mean" in sd:
        values["pixel_mean"] = tuple(float(v) for v in sd["pixel_mean"].reshape(-1))
        values["pixel_std"] = tuple(float(v) for v in sd["pixel_std"].reshape(-1))
    for key, value in overrides.items():
        values[key] = tuple(value) if isinstance(value, list) else value
    return SamArch(**values)


OFFICIAL_ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(),
    "vit_l": SamArch(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamArch(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=(7, 15, 23, 31)),
}


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping) and not isinstance(obj.get("image_encoder.patch_embed.proj.weight"), torch.Tensor):
                return _unwrap(obj[key], path)
        sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if sd:
            for prefix in _PREFIXES:
                if all(k.startswith(prefix) for k in sd):
                    sd = {k[len(prefix):]: v for k, v in sd.items()}
            return sd
    raise WeightsError(f"{path}: no tensors found; expected a SAM state dict")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a SAM checkpoint (.pth / .pt / .bin via torch, .safetensors) -> (state dict, metadata).

    Common wrappers (``{"model": sd}``, ``{"state_dict": sd}``, a ``module.`` prefix from
    DistributedDataParallel) are unwrapped. Raises WeightsError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint file not found")
    metadata: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            sd = {}
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                for key in f.keys():
                    sd[key] = f.get_tensor(key)
            return _unwrap(sd, path), metadata
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as exc:  # torch/safetensors raise many types for a damaged file
        raise WeightsError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    return _unwrap(obj, path), metadata


def load_sam(
    checkpoint: str | Path, arch_overrides: Mapping[str, Any] | None = None
) -> tuple["torch.nn.Module", SamArch]:
    """Build a ``Sam`` whose architecture is read from ``checkpoint`` and load its weights (strict)."""
    sd, metadata = read_checkpoint(checkpoint)
    overrides: dict[str, Any] = {}
    sidecar = arch_sidecar(checkpoint)
    stored_json = metadata.get(ARCH_METADATA_KEY)
    if stored_json is None and sidecar.is_file():
        stored_json = sidecar.read_text()
    if stored_json is not None:
        try:
            stored = json.loads(stored_json)
        except ValueError as exc:
            raise WeightsError(f"{sidecar if ARCH_METADATA_KEY not in metadata else checkpoint}: the stored SAM architecture is not valid JSON ({exc})") from exc
        overrides.update({k: stored[k] for k in ("decoder_num_heads", "encoder_num_heads") if k in stored})
    overrides.update(arch_overrides or {})
    arch = SamArch.from_state_dict(sd, overrides)
    if stored_json is None and "decoder_num_heads" not in overrides and arch.prompt_embed_dim != 256:
        log.warning(
            "%s: a non-official SAM (decoder width %d) without its architecture record (%s); the mask decoder's "
            "head count is assumed to be %d, which the weights cannot confirm: pass arch_overrides="
            "{'decoder_num_heads': N} or save it as .safetensors", checkpoint, arch.prompt_embed_dim, sidecar.name, arch.decoder_num_heads,
        )
    model = arch.build()
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise WeightsError(f"{checkpoint}: weights do not fit the architecture read from them ({' '.join(first)})") from exc
    return model.eval(), arch


def save_sam(model: "torch.nn.Module", path: str | Path, arch: SamArch | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s state dict in segment-anything's key layout, atomically.

    ``.safetensors`` stores the architecture in the header metadata; ``.pth`` is a plain state
    dict that ``segment_anything.sam_model_registry[...](checkpoint=...)`` loads for official sizes.
    ``dtype`` (e.g. ``torch.float16``) shrinks floating-point tensors for shipping.
    """
    from segprompt.fileio import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    arch = arch or SamArch.from_state_dict(sd)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata={ARCH_METADATA_KEY: arch.to_json(), "format": "pt"})
        else:
            torch.save(sd, tmp)
    if path.suffix != ".safetensors":  # the head counts the weights cannot show, beside the plain state dict
        with atomic_path(arch_sidecar(path)) as tmp:
            Path(tmp).write_text(arch.to_json())
    return path


def arch_sidecar(checkpoint: str | Path) -> Path:
    """``<checkpoint>.arch.json``: the architecture record :func:`save_sam` writes beside a plain
    ``.pth`` state dict (segment-anything's layout has no room for it), read by :func:`load_sam`;
    it holds what the weights cannot show, such as the attention head counts."""
    path = Path(checkpoint)
    return path.with_name(path.name + ".arch.json")


def tiny_arch(**changes: Any) -> SamArch:
    """A small SAM architecture for tests and demos (256 px input, 2-4 blocks, width 64-128)."""
    base = SamArch(
        img_size=256,
        patch_size=16,
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        window_size=8,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    )
    return replace(base, **changes)
