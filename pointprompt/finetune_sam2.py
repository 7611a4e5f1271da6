"""Finetuning SAM 2 / 2.1 (and MedSAM2-style finetunes) through :func:`pointprompt.finetune.finetune_sam`'s
run: the same loop, prompt modes (strategies, ``box-jitter``, micro-sam's ``iterative`` with mask
feedback, ``mixed``), losses, presets, validation, test split, resume and reports. This module
only adapts the model (:data:`SAM2`, a :class:`pointprompt.finetune.ModelFamily`).

.. code-block:: python

    from pointprompt.finetune import FinetuneConfig
    from pointprompt.finetune_sam2 import finetune_sam2
    cfg = FinetuneConfig(model=None, checkpoint="sam2.1_hiera_tiny", train=["mask_decoder"], prompts="iterative", epochs=5)
    result = finetune_sam2(cfg, out="runs/ft_sam2")
    result["checkpoint"]   # runs/ft_sam2/sam2_best.pt: {"model": state_dict, "sam2_arch": {...}}, LoRA merged

    # the package loads it with the config and hydra overrides the file records:
    # sam2.build_sam.build_sam2(arch["config"], path, hydra_overrides_extra=arch["overrides"])
    seg = create_segmenter("sam2", checkpoint=result["checkpoint"])

How SAM 2 is fitted to the SAM loop (:class:`pointprompt.finetune_step.SamTrainStep` runs unchanged
on :class:`Sam2Parts`, whose prompt encoder / mask decoder / image encoder views have SAM's call
signatures):

* frame: SAM 2's input is the image resized to the model's square side S without keeping the
  aspect ratio (no padding), as ``SAM2ImagePredictor`` / :class:`Sam2Segmenter` do; training
  masks, prompts and the low-resolution target (S/4 square, area-averaged) live in that frame
  (:class:`SquareResize`, :func:`sam2_frame`).
* image embedding: SAM 2's mask decoder takes the image embedding (d, S/16) plus two
  high-resolution maps (d/8 at S/4, d/4 at S/8); :func:`pack_features` stacks the three into one
  (B, 4d, S/16, S/16) tensor by pixel-unshuffle (exact and invertible), so the loop's per-image
  indexing and its embedding cache work as for SAM. The maps are computed as the segmenter's
  ``encode`` does (``forward_image``, ``no_mem_embed`` added), with gradients when the image
  encoder trains (``lora``, ``image_encoder``, ``all``), from the cached states otherwise.
* prompts: a box becomes two corner points labelled 2 and 3 placed before the clicks
  (``SAM2ImagePredictor._predict``); mask feedback is the previous low-res logits (S/4 square).
* trained parts (``train=``): ``prompt_encoder`` -> ``sam_prompt_encoder``, ``mask_decoder`` ->
  ``sam_mask_decoder``, ``image_encoder``, ``all`` (the three), ``lora`` (LoRA on the Hiera
  blocks' attention ``qkv``, ``image_encoder.trunk.blocks.*.attn.qkv``, plus the mask decoder),
  or any dotted submodule name of ``SAM2Base``. The decoder's ``conv_s0`` / ``conv_s1`` project
  the image's high-resolution features, so they belong to the image embedding: frozen whenever
  the image encoder is (their output is cached), trained with the decoder otherwise. The memory
  modules (video) are never trained: an image step does not use them.
* export: :func:`export_sam2` writes ``{"model": state_dict, "sam2_arch": {...}}`` with LoRA merged
  into plain weights (the official layout: ``build_sam2(config, path)`` loads it strictly).

Follows the SAM 2 training code (facebookresearch/sam2 ``training/model/sam2.py``: ``SAM2Train``
on images forces point input, one initial click or box and 7 correction clicks with the previous
low-res logits fed back: ``prompts="iterative"``, ``iterations=8``, ``mask_feedback=1.0`` here;
``training/loss_fns.py``: focal x 20 + Dice + IoU head: ``loss="dice+focal"``), and
sam2/sam2_image_predictor.py for the geometry.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.engine.runfolder import RunFolder
from segprompt.engine.training import count_trainable, set_trainable
from segprompt.errors import ConfigError, DataError

from pointprompt.finetune import FinetuneConfig, ModelFamily, finetune_sam
from pointprompt.finetune_data import FrameSample, skip_input
from pointprompt.finetune_report import _write_report
from pointprompt.finetune_step import SamTrainStep

#: ``train=`` words -> SAM2Base submodules (any other word is a dotted submodule name)
SAM2_TRAIN_PARTS = {
    "prompt_encoder": ["sam_prompt_encoder"],
    "mask_decoder": ["sam_mask_decoder"],
    "image_encoder": ["image_encoder"],
    "all": ["image_encoder", "sam_prompt_encoder", "sam_mask_decoder"],
    "lora": ["sam_mask_decoder"],  # plus the LoRA adapters
}
#: LoRA on the Hiera trunk's attention (qkv of every block)
SAM2_LORA_TARGETS = ["image_encoder.trunk.blocks.*.attn.qkv"]
#: the decoder's projections of the high-resolution image features (part of the image embedding)
HIGH_RES_PROJECTIONS = ("conv_s0", "conv_s1")
_SAM_LORA_DEFAULT = FinetuneConfig.__dataclass_fields__["lora_targets"].default_factory()


# -- the frame ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SquareResize:
    """SAM 2's input geometry: (H, W) resized to (target, target), aspect ratio not kept, no padding.

    Has the attributes the training prompts read from a frame's transform (``target``,
    ``input_size``, ``original_size``), like :class:`segprompt.models.resize.LongestSide`.
    """

    target: int
    original_size: tuple[int, int]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.target, self.target

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (target, target, 3) uint8, PIL bilinear."""
        from PIL import Image

        if tuple(image.shape[:2]) == self.input_size:
            return np.ascontiguousarray(image)
        return np.asarray(Image.fromarray(image).resize((self.target, self.target), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """(..., 2) (x, y) original pixels -> model-input pixels (the predictor's S / W, S / H)."""
        (h, w), s = self.original_size, self.target
        out = np.array(coords, dtype=np.float64, copy=True)
        out[..., 0] *= s / w
        out[..., 1] *= s / h
        return out

    def mask_to_lowres(self, mask: np.ndarray, lowres: int) -> np.ndarray:
        """bool (H, W) -> float32 (lowres, lowres) occupancy (bilinear to the input, then area)."""
        t = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
        t = F.interpolate(t, self.input_size, mode="bilinear", align_corners=False)
        return F.interpolate(t, (lowres, lowres), mode="area")[0, 0].numpy()


def sam2_frame(sample: Sample, index: int, image_size: int, lowres: int) -> FrameSample:
    """One training image in SAM 2's frame: image and mask at (S, S), target at (S/4, S/4) (0/1)."""
    tf = SquareResize(image_size, sample.size)
    m = torch.from_numpy(np.asarray(sample.mask, np.float32))[None, None]
    mask = (F.interpolate(m, tf.input_size, mode="bilinear", align_corners=False)[0, 0] > 0.5).numpy()
    if not mask.any():
        raise DataError(f"the mask of {sample.id} vanishes at SAM 2's {image_size} px input (image skipped)")
    target = (tf.mask_to_lowres(sample.mask, lowres) >= 0.5).astype(np.float32)
    return FrameSample(sample.id, index, tf.apply_image(sample.image), mask, target, tf, sample)  # type: ignore[arg-type]


def _frames(samples: Sequence[Sample], indices: Sequence[int], seg: Any, run: RunFolder | None) -> list[FrameSample]:
    out = []
    for i in indices:
        try:
            out.append(sam2_frame(samples[i], i, seg.image_size, seg.lowres_size))
        except DataError as exc:
            skip_input(run, samples[i].id, exc, stage="training")
    return out


# -- the image embedding in one tensor ------------------------------------------------------


def feature_layout(model: nn.Module) -> list[tuple[int, int]]:
    """(channels, upscale factor) of each map the mask decoder takes, finest first, the image
    embedding last: ``[(d/8, 4), (d/4, 2), (d, 1)]`` with high-resolution features, else ``[(d, 1)]``."""
    d = int(model.sam_prompt_encoder.embed_dim)
    return [(d // 8, 4), (d // 4, 2), (d, 1)] if model.use_high_res_features_in_sam else [(d, 1)]


def pack_features(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Maps finest first ((B, c_i, f_i h, f_i w)), the image embedding last ((B, d, h, w)) ->
    one (B, sum c_i f_i^2, h, w) tensor (pixel-unshuffle; exact)."""
    h = maps[-1].shape[-1]
    return torch.cat([F.pixel_unshuffle(m, m.shape[-1] // h) if m.shape[-1] != h else m for m in maps], 1)


def unpack_features(packed: torch.Tensor, layout: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Inverse of :func:`pack_features` for a :func:`feature_layout`."""
    sizes = [c * f * f for c, f in layout]
    parts = torch.split(packed, sizes, 1)
    return [F.pixel_shuffle(p, f) if f > 1 else p for p, (_, f) in zip(parts, layout)]


def state_maps(features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """A :class:`Sam2Segmenter` image state's features as maps finest first, image embedding last."""
    from segprompt.models.sam2 import HIGH_RES_KEYS

    return [features[k] for k in HIGH_RES_KEYS if k in features] + [features["image_embed"]]


def encode_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """SAM 2's image features of a preprocessed (B, 3, S, S) batch, with gradients: what
    :meth:`Sam2Segmenter._features` computes (``forward_image``, ``no_mem_embed`` added to the
    lowest resolution), finest first."""
    backbone_out = model.forward_image(x)
    _, feats, _, sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        feats[-1] = feats[-1] + model.no_mem_embed
    b = x.shape[0]
    return [f.permute(1, 2, 0).reshape(b, -1, h, w) for f, (h, w) in zip(feats, sizes)]


# -- SAM's call signatures over SAM2Base -----------------------------------------------------


class _ImageEncoderView:
    """``image_encoder(x) -> packed features``; ``img_size``: the square input side."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model

    @property
    def img_size(self) -> int:
        return int(self._model.image_size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return pack_features(encode_maps(self._model, x))


class _PromptEncoderView:
    """SAM's ``prompt_encoder(points=, boxes=, masks=)``: a (B, 4) box becomes two corner points
    labelled 2 and 3 before the clicks, as ``SAM2ImagePredictor`` passes it."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model

    @property
    def image_embedding_size(self) -> tuple[int, int]:
        return tuple(self._model.sam_prompt_encoder.image_embedding_size)

    def get_dense_pe(self) -> torch.Tensor:
        return self._model.sam_prompt_encoder.get_dense_pe()

    def __call__(self, points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None, masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            labels = torch.tensor([[2, 3]], dtype=torch.int, device=corners.device).repeat(corners.shape[0], 1)
            points = (corners, labels) if points is None else (torch.cat([corners, points[0]], 1), torch.cat([labels, points[1].int()], 1))
        return self._model.sam_prompt_encoder(points=points, boxes=None, masks=masks)


class _MaskDecoderView:
    """SAM's ``mask_decoder(image_embeddings=packed, ...) -> (low-res logits, IoU predictions)``."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._layout = feature_layout(model)

    def __call__(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        maps = unpack_features(image_embeddings, self._layout)
        low, iou, _, _ = self._model.sam_mask_decoder(
            image_embeddings=maps[-1], image_pe=image_pe, sparse_prompt_embeddings=sparse_prompt_embeddings, dense_prompt_embeddings=dense_prompt_embeddings,
            multimask_output=multimask_output, repeat_image=False, high_res_features=maps[:-1] or None,
        )
        return low, iou


class Sam2Parts(nn.Module):
    """A ``SAM2Base`` (its only child, ``model``) seen through SAM's parts: ``image_encoder``,
    ``prompt_encoder`` and ``mask_decoder`` with segment-anything's call signatures (plain
    views, so the parameters and the state dict are the model's)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.image_encoder = _ImageEncoderView(model)
        self.prompt_encoder = _PromptEncoderView(model)
        self.mask_decoder = _MaskDecoderView(model)


class Sam2TrainStep(SamTrainStep):
    """:class:`SamTrainStep` on :class:`Sam2Parts`; only the live image encoding differs: it starts
    from each original image with the segmenter's own preprocessing (square resize in float, no
    uint8 rounding), so training sees what inference sees."""

    def __init__(self, seg: Any, cfg: FinetuneConfig, embeddings: dict[str, torch.Tensor] | None) -> None:
        super().__init__(Sam2Parts(seg.model), cfg, embeddings)
        self._preprocess = seg.preprocess

    def _embed(self, batch: Sequence[FrameSample]) -> torch.Tensor:
        if self.embeddings is not None:
            return super()._embed(batch)
        dev = next(self.sam.parameters()).device
        return self.sam.image_encoder(self._preprocess([fs.original.image for fs in batch]).to(dev))


# -- the model ----------------------------------------------------------------------------


def load_sam2_segmenter(cfg: FinetuneConfig) -> Any:
    """The :class:`Sam2Segmenter` of ``cfg.checkpoint`` (a file or a registry name)."""
    from segprompt.models.sam2 import Sam2Segmenter

    if cfg.checkpoint is None:
        raise ConfigError(f"finetune sam2 needs --checkpoint: a SAM 2 file or registry name (sam2.1_hiera_tiny, medsam2, ...); --model {cfg.model} is not a SAM 2 checkpoint")
    return Sam2Segmenter(checkpoint=cfg.checkpoint, device=cfg.device, precision=cfg.precision)


def prepare_sam2(seg: Any, cfg: FinetuneConfig) -> int:
    """Make ``cfg.train``'s parts trainable (LoRA injected for ``lora``); returns the count."""
    from segprompt.backbones.lora import inject_lora

    model = seg.model
    extra: list[nn.Parameter] = []
    modules: list[str] = []
    for part in cfg.train:
        modules += SAM2_TRAIN_PARTS.get(part, [part])
        if part == "lora":
            extra += inject_lora(model, cfg.lora_targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
    set_trainable(model, sorted(set(modules)), extra)
    if cfg.encoder_frozen:  # the projections' outputs are cached with the image embedding
        for name in HIGH_RES_PROJECTIONS:
            for p in getattr(model.sam_mask_decoder, name, nn.Identity()).parameters():
                p.requires_grad_(False)
    n = count_trainable(model)
    if n == 0:
        raise ConfigError(f"training {cfg.train} leaves no trainable parameter in SAM 2")
    seg.forget_weights_hash()
    return n


def export_sam2(seg: Any, path: str | Path) -> Path:
    """Write the model as ``{"model": state_dict, "sam2_arch": {...}}`` (LoRA merged), atomically."""
    from segprompt.backbones.lora import merge_lora
    from segprompt.models.sam2_build import save_sam2

    model = merge_lora(copy.deepcopy(seg.model)).cpu()
    return save_sam2(model, seg.arch, path)


def _embedding(seg: Any, image: np.ndarray) -> torch.Tensor:
    return pack_features(state_maps(seg.encode(image).features)).cpu()


def _report(run: RunFolder, result: dict[str, Any], history: list[dict[str, Any]], cfg: FinetuneConfig) -> None:
    """finetune sam's report, in SAM 2's words (title, model, checkpoint files)."""
    _write_report(run, result, history, cfg)
    path = run.path / "report.md"
    lines = path.read_text().split("\n")
    words = {
        "# SAM finetuning": "# SAM 2 finetuning",
        f"Model SAM checkpoint `{cfg.checkpoint}`.": f"Model: SAM 2 checkpoint `{cfg.checkpoint}`.",
    }
    out = []
    for line in lines:
        if line.startswith("Checkpoints (segment-anything layout"):
            line = "Checkpoints (the sam2 package's layout, `{\"model\": ..., \"sam2_arch\": ...}`, LoRA merged): `sam2_best.pt` (the epoch chosen on validation), `sam2_last.pt`; training state: `checkpoints/`."
        out.append(words.get(line, line))
    run.write_text("report.md", "\n".join(out))


#: SAM 2 for :func:`pointprompt.finetune.finetune_sam`
SAM2 = ModelFamily(
    name="SAM 2", suite="finetune-sam2", best_file="sam2_best.pt", last_file="sam2_last.pt", load=load_sam2_segmenter, prepare=prepare_sam2,
    frames=_frames, train_step=Sam2TrainStep, embedding=_embedding, export=export_sam2, report=_report,
)


def sam2_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with SAM's default LoRA targets (``image_encoder.blocks.*.attn.qkv``) replaced by
    the Hiera trunk's (:data:`SAM2_LORA_TARGETS`); the run's config.yaml records these."""
    if list(cfg.lora_targets) == _SAM_LORA_DEFAULT:
        return dataclasses.replace(cfg, lora_targets=list(SAM2_LORA_TARGETS))
    return cfg


def finetune_sam2(cfg: FinetuneConfig, out: str | Path, dataset: SegmentationDataset | None = None, progress: bool = True) -> dict[str, Any]:
    """:func:`pointprompt.finetune.finetune_sam` for a SAM 2 checkpoint (``cfg.checkpoint``); the
    result's ``checkpoint`` is ``out/sam2_best.pt`` (``create_segmenter("sam2", checkpoint=...)``)."""
    return finetune_sam(sam2_config(cfg), out, dataset=dataset, progress=progress, family=SAM2)


__all__ = [
    "SAM2",
    "SAM2_LORA_TARGETS",
    "SAM2_TRAIN_PARTS",
    "Sam2Parts",
    "Sam2TrainStep",
    "SquareResize",
    "encode_maps",
    "export_sam2",
    "feature_layout",
    "finetune_sam2",
    "load_sam2_segmenter",
    "pack_features",
    "prepare_sam2",
    "sam2_config",
    "sam2_frame",
    "state_maps",
    "unpack_features",
]
