"""``sam2``: SAM 2 / 2.1 image prediction (the sam2 package's model) behind the Segmenter interface.

.. code-block:: python

    seg = create_segmenter("sam2", checkpoint="sam2.1_hiera_tiny.pt")   # config from the keys
    state = seg.encode(image)                   # (H, W, 3) uint8 RGB
    pred = seg.segment(state, [PromptSet(points=Points.positive((120, 80))), PromptSet(box=Box((10, 10, 90, 70)))])
    pred.masks, pred.scores, pred.logits        # (N, K, H, W) bool, (N, K), (N, K, S/4, S/4)
    seg.model, seg.config_name, seg.arch        # SAM2Base, package config, hydra overrides (for video)

What it does as ``SAM2ImagePredictor`` does (sam2/sam2_image_predictor.py, set_image / _predict):

* geometry: the image is resized to the model's square input (``image_size``: 1024, MedSAM2
  512) without keeping the aspect ratio (torchvision bilinear with antialias, ImageNet mean /
  std); points and boxes scale by ``S / W`` and ``S / H``; low-res logits (S/4 square) come back
  to (H, W) by one bilinear step. There is no padding.
* encode: ``forward_image`` (whose FPN levels 0 and 1 are already projected by the mask decoder's
  ``conv_s0`` / ``conv_s1``), ``no_mem_embed`` added to the lowest-resolution level; the state
  holds the image embedding and both high-resolution maps, so the embedding cache stores all three.
* decode: a box is two corner points (labels 2, 3) placed before the clicks, as the predictor
  does; prompt sets of the same structure (points, box or not, mask or not) go through the prompt
  encoder and mask decoder as one batch; returned low-res logits are clamped to [-32, 32].
* the ``"single"`` policy is SAM 2's single-mask head with the package's default postprocessing
  (``build_sam2(apply_postprocessing=True)``): an unstable single mask falls back to the best of
  the three candidates.

Scribbles become points along the stroke and binary mask prompts become low-res logits as in
:mod:`segprompt.models.sam`.

Volumes: the segmenter is a :class:`~segprompt.volumes.api.VolumePropagator` itself
(``init_volume`` / ``propagate``), running the package's ``SAM2VideoPredictor`` with the same
weights on an in-memory stack (:mod:`segprompt.volumes.sam2_video`):

.. code-block:: python

    state = seg.init_volume(volume)             # (Z, H, W[, 3])
    res = seg.propagate(state, VolumePrompts().add(6, points=[(30.5, 20.5)]), direction="both")
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segprompt.errors import ConfigError, PromptError, WeightsError
from segprompt.models.base import ImageState, MultimaskPolicy, Prediction, Segmenter, check_image
from segprompt.models.host_memory import populated_empty
from segprompt.models.resize import MaskUpscaler, check_mask_resize
from segprompt.models.sam import scribble_to_points
from segprompt.models.sam2_build import Sam2Arch, build_sam2_model, detect_arch, get_arch, load_sam2
from segprompt.prompts import PromptSet

#: prompt sets per decoder call by default (``max_batch=None``): small on a CPU, where a call's
#: per-set copies of the image features outgrow the cache, large on a GPU
CPU_MAX_BATCH = 1
GPU_MAX_BATCH = 64

if TYPE_CHECKING:
    from segprompt.volumes.api import CancelFn, Direction, ProgressFn, Volume, VolumePrompts, VolumeResult, VolumeState
    from segprompt.volumes.sam2_video import Sam2VolumePropagator

log = logging.getLogger(__name__)

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: SAM 2's pixel statistics (sam2/utils/transforms.py: SAM2Transforms), on a 0..1 scale
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
#: high-resolution feature maps kept in an image state, finest first
HIGH_RES_KEYS = ("high_res_0", "high_res_1")


def _chunks(seq: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def resolve_precision(precision: str, device: str) -> str:
    """``"auto"``: bf16 on a CUDA device that has it, fp32 elsewhere (CPU stays fp32).

    An explicit ``"bf16"`` on a CUDA device without bf16 support raises ConfigError.
    """
    cuda = str(device).startswith("cuda")
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and cuda and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision bf16: the GPU on {device} has no bfloat16 support; use fp16 or fp32")
    return precision


class Sam2Segmenter(Segmenter):
    """SAM 2 / SAM 2.1 (and finetunes such as MedSAM2) for images.

    Args:
        checkpoint: a registry name (``sam2.1_hiera_tiny``, ``medsam2``) or a path to a file in
            the official layout (``{"model": state_dict}``) or a bare state dict.
        model: alternatively an already built ``SAM2Base`` (give ``arch`` unless it is official).
        arch: the configuration (a :class:`Sam2Arch` or a registered name such as
            ``sam2.1_hiera_t512``); default: the registry entry's, else read from the file's keys.
        multimask: ``auto`` (default), ``single``, ``all``, ``first``, ``best`` or ``oracle``.
        device: ``"cpu"`` / ``"cuda"``.
        precision: ``"auto"`` (default: bf16 autocast on a CUDA device with bf16, fp32 on CPU),
            ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        cache: an :class:`EmbeddingCache` or a folder for one.
        max_batch: prompt sets per decoder call; ``None`` (default): ``CPU_MAX_BATCH`` (1) on a CPU,
            64 on a GPU. SAM 2's decoder copies the image features for every set of a call, and on
            a CPU large calls run out of cache: 32 three-point sets on hiera-t took 56.8 / 58.4 /
            67.0 / 106.1 ms per set with 1 / 2 / 4 / 64 sets per call (2-core CPU,
            ``benchmarks/sam2_batch.py``). One set per call also makes a set's result independent
            of the other sets in the call.
        mask_resize: on a CPU, ``"opencv"`` (default: the masks by ``cv2.resize``, as the ``sam``
            Segmenter; a pixel whose logit is within float rounding of the threshold can differ)
            or ``"torch"`` (the package's ``F.interpolate``, bit for bit). The logits are the
            same. On hiera-t the two took the same time within the noise (61.5-63.5 against
            61.9-65.2 ms per set, ``benchmarks/sam2_batch.py --batches 1 --mask-resize ...``):
            its decoder, not the resize, dominates.
        scribble_points: points sampled along each scribble.
        mask_logit_scale: logit magnitude of a binary mask prompt.
        mask_threshold: logit threshold of the output masks (the predictor's 0.0; volumes too).
        video_settings: volume propagation options, a
            :class:`~segprompt.volumes.sam2_video.Sam2VideoSettings` or a dict of its fields
            (``offload_video_to_cpu``, ``offload_state_to_cpu``, ``keep_features``,
            ``corrections_as_cond``, ``postprocessing``, ``fill_hole_area``, ``non_overlap_masks``).
    """

    name = "sam2"
    accepts = frozenset({"points", "box", "mask", "scribble"})
    has_multimask = True

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        model: torch.nn.Module | None = None,
        arch: Sam2Arch | str | None = None,
        multimask: MultimaskPolicy = "auto",
        device: str = "cpu",
        precision: str = "auto",
        cache: Any = None,
        max_batch: int | None = None,
        scribble_points: int = 5,
        mask_logit_scale: float = 10.0,
        mask_threshold: float = 0.0,
        video_settings: Any = None,
        mask_resize: str = "opencv",
    ) -> None:
        from segprompt.devices import check_device

        device = check_device(device)
        super().__init__(multimask=multimask, device=device, precision=resolve_precision(precision, device), cache=cache)
        if (checkpoint is None) == (model is None):
            raise WeightsError("SAM 2 needs exactly one of checkpoint= (a file or a registry name such as sam2.1_hiera_tiny) or model=")
        if isinstance(arch, str):
            arch = get_arch(arch)
        self.checkpoint_path: Path | None = None
        if checkpoint is not None:
            from segprompt.weights import entry_for, find_weights

            self.checkpoint_path = find_weights(checkpoint)
            entry = entry_for(checkpoint) or entry_for(self.checkpoint_path)
            if arch is None and entry is not None and entry.family == "sam2" and entry.architecture:
                arch = get_arch(entry.architecture)
            model, arch = load_sam2(self.checkpoint_path, arch)
        elif arch is None:
            arch = detect_arch(model.state_dict())
        self.arch: Sam2Arch = arch
        self.model = model.to(self.device).eval()
        self.mask_resize = check_mask_resize(mask_resize)
        self.max_batch = int(max_batch) if max_batch is not None else (CPU_MAX_BATCH if torch.device(device).type == "cpu" else GPU_MAX_BATCH)
        self.scribble_points = int(scribble_points)
        self.mask_logit_scale = float(mask_logit_scale)
        self.mask_threshold = float(mask_threshold)
        self._weights_hash: str | None = None
        from segprompt.volumes.sam2_video import Sam2VideoSettings

        self.video_settings = Sam2VideoSettings.coerce(video_settings)
        self._volume_propagator: Any = None

    # -- properties -------------------------------------------------------------
    @property
    def config_name(self) -> str:
        """The sam2 package config this model was built from (with :attr:`hydra_overrides`)."""
        return self.arch.config

    @property
    def hydra_overrides(self) -> tuple[str, ...]:
        return self.arch.overrides

    @property
    def image_size(self) -> int:
        """Side of the square model input in pixels."""
        return int(self.model.image_size)

    @property
    def lowres_size(self) -> int:
        """Side of the low-resolution logits (``Prediction.logits``, mask feedback)."""
        return 4 * int(self.model.sam_image_embedding_size)

    def video_predictor(self, device: str | None = None, postprocessing: bool = True, extra_overrides: Sequence[str] = ()) -> torch.nn.Module:
        """A ``SAM2VideoPredictor`` of the same configuration and weights (a copy of them), with
        hydra ``extra_overrides`` (e.g. ``"++model.add_all_frames_to_correct_as_cond=true"``)."""
        return build_sam2_model(
            self.arch, self.model.state_dict(), device=device or self.device, video=True, postprocessing=postprocessing, extra_overrides=extra_overrides
        )

    # -- volumes ------------------------------------------------------------------
    def volume_propagator(self) -> "Sam2VolumePropagator":
        """The :class:`~segprompt.volumes.sam2_video.Sam2VolumePropagator` of this model with
        :attr:`video_settings` (built once: its video predictor holds a copy of the weights;
        :meth:`forget_weights_hash` or new ``video_settings`` make a new one)."""
        from segprompt.volumes.sam2_video import Sam2VideoSettings, Sam2VolumePropagator

        self.video_settings = Sam2VideoSettings.coerce(self.video_settings)
        prop = self._volume_propagator
        if prop is None or prop.settings != self.video_settings:
            prop = self._volume_propagator = Sam2VolumePropagator(self, self.video_settings)
        return prop

    def init_volume(self, volume: "Volume | np.ndarray") -> "VolumeState":
        """Prepare a (Z, H, W[, 3]) stack for :meth:`propagate` (frames resized and normalised
        once, sam2's ``inference_state`` in ``state.native``); see :mod:`segprompt.volumes.sam2_video`."""
        return self.volume_propagator().init_volume(volume)

    def propagate(
        self,
        state: "VolumeState",
        prompts: "VolumePrompts | None" = None,
        *,
        direction: "Direction" = "both",
        progress: "ProgressFn | None" = None,
        cancel: "CancelFn | None" = None,
    ) -> "VolumeResult":
        """Add ``prompts`` (by slice and object) to ``state`` and propagate every object with
        SAM 2's video memory, ``direction`` ``"both"`` / ``"forward"`` / ``"backward"``;
        ``progress(done, total)`` per slice, ``cancel()`` polled per slice (True raises
        :class:`~segprompt.errors.Cancelled`). See :mod:`segprompt.volumes.sam2_video`."""
        return self.volume_propagator().propagate(state, prompts, direction=direction, progress=progress, cancel=cancel)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        device_type = "cuda" if str(self.device).startswith("cuda") else "cpu"
        return torch.autocast(device_type=device_type, dtype=_AUTOCAST[self.precision])

    @property
    def weights_hash(self) -> str:
        """SHA-256 of what an image state depends on: the image encoder, the decoder's
        high-resolution projections (``conv_s0`` / ``conv_s1``) and ``no_mem_embed``.
        Call :meth:`forget_weights_hash` after changing them in place."""
        if self._weights_hash is None:
            from segprompt.cache import tensor_digest

            tensors = {f"image_encoder.{k}": v for k, v in self.model.image_encoder.state_dict().items()}
            dec = self.model.sam_mask_decoder
            for name in ("conv_s0", "conv_s1"):
                if hasattr(dec, name):
                    tensors.update({f"{name}.{k}": v for k, v in getattr(dec, name).state_dict().items()})
            tensors["no_mem_embed"] = self.model.no_mem_embed
            self._weights_hash = tensor_digest(tensors)
        return self._weights_hash

    def forget_weights_hash(self) -> None:
        """Call after changing the weights in place: the cache key and the volume propagator's
        copy of the weights are rebuilt on next use."""
        self._weights_hash = None
        self._volume_propagator = None

    def cache_signature(self) -> dict[str, Any]:
        return {
            "model": "sam2",
            "arch": self.arch.to_json(),
            "image_encoder": self.weights_hash,
            "preprocessing": {"resize": "square-torchvision-bilinear-antialias", "target": self.image_size},
            "precision": self.precision,
        }

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            architecture=self.arch.name,
            config=self.arch.config,
            overrides=list(self.arch.overrides),
            image_size=self.image_size,
            checkpoint=str(self.checkpoint_path) if self.checkpoint_path else None,
        )
        return out

    # -- encode -----------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 images -> float32 (B, 3, S, S): to 0..1, resized, normalised (SAM2Transforms)."""
        from torchvision.transforms.functional import resize

        s = self.image_size
        mean = torch.tensor(PIXEL_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD, device=self.device).view(1, 3, 1, 1)
        out = []
        for im in images:
            x = torch.from_numpy(im).to(self.device).permute(2, 0, 1).float().div(255.0)
            out.append(resize(x, [s, s], antialias=True))
        return (torch.stack(out) - mean) / std

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Image encoder on a (B, 3, S, S) batch -> per image {image_embed, high_res_0, high_res_1}."""
        m = self.model
        with self._autocast():
            backbone_out = m.forward_image(x)
            _, feats, _, sizes = m._prepare_backbone_features(backbone_out)
            if m.directly_add_no_mem_embed:
                feats[-1] = feats[-1] + m.no_mem_embed
        b = x.shape[0]
        maps = [f.permute(1, 2, 0).reshape(b, -1, h, w).float() for f, (h, w) in zip(feats, sizes)]
        out = []
        for i in range(b):
            d = {"image_embed": maps[-1][i : i + 1]}
            d.update({k: v[i : i + 1] for k, v in zip(HIGH_RES_KEYS, maps[:-1])})
            out.append(d)
        return out

    def _encode(self, image: np.ndarray) -> ImageState:
        feats = self._features(self.preprocess([image]))[0]
        s = self.image_size
        return ImageState(original_size=tuple(image.shape[:2]), input_size=(s, s), features=feats)

    def encode_batch(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[ImageState]:
        """Encode several images, ``batch_size`` per image-encoder call (faster on a GPU)."""
        images = [check_image(im) for im in images]
        if self.cache is not None:
            return [self.encode(im) for im in images]
        s = self.image_size
        states: list[ImageState] = []
        for chunk in _chunks(list(range(len(images))), batch_size):
            feats = self._features(self.preprocess([images[i] for i in chunk]))
            states += [ImageState(tuple(images[i].shape[:2]), (s, s), f) for i, f in zip(chunk, feats)]
        return states

    # -- prompts -> model inputs ------------------------------------------------
    def _prompt_inputs(self, s: PromptSet, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(coords (n, 2) model frame, labels (n,), box (2, 2) model frame or None, mask logits (l, l) or None)."""
        h, w = size
        scale = np.array([self.image_size / w, self.image_size / h])
        coords, labels = [], []
        if s.points is not None:
            coords.append(s.points.coords)
            labels.append(s.points.labels)
        for sc in s.scribbles:
            pts = scribble_to_points(sc.coords, self.scribble_points)
            coords.append(pts)
            labels.append(np.full(len(pts), sc.label, np.int64))
        xy = np.concatenate(coords).astype(np.float64) * scale if coords else np.zeros((0, 2))
        lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        box = np.asarray(s.box.xyxy, np.float64).reshape(2, 2) * scale if s.box is not None else None
        mask = None
        if s.mask is not None:
            low = self.lowres_size
            if s.mask.kind == "logits":
                mask = s.mask.data
                if mask.shape != (low, low):
                    raise PromptError(f"mask-prompt logits must be {low}x{low} for this model (from Prediction.logits), got {mask.shape}")
            else:
                occ = F.adaptive_avg_pool2d(torch.from_numpy(s.mask.data.astype(np.float32))[None, None], (low, low))[0, 0].numpy()
                mask = (2.0 * occ - 1.0) * self.mask_logit_scale
        return xy, lab, box, mask

    def _dense_pe(self) -> torch.Tensor:
        from segprompt.models.sam import cached_dense_pe

        return cached_dense_pe(self, self.model.sam_prompt_encoder)

    @torch.no_grad()
    def _decode(self, feats: dict[str, torch.Tensor], inputs: list[tuple], multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt-encoder + mask-decoder call for same-structure inputs -> (low-res logits, scores), float32."""
        dev = self.device
        coords, labels, boxes, masks = zip(*inputs)
        n = len(inputs)
        pts_xy = torch.as_tensor(np.stack(coords), dtype=torch.float, device=dev).reshape(n, -1, 2)
        pts_lab = torch.as_tensor(np.stack(labels), dtype=torch.int, device=dev).reshape(n, -1)
        if boxes[0] is not None:  # the box's corners go first, labelled 2 and 3 (as the predictor does)
            box_xy = torch.as_tensor(np.stack(boxes), dtype=torch.float, device=dev)
            box_lab = torch.tensor([[2, 3]], dtype=torch.int, device=dev).repeat(n, 1)
            pts_xy, pts_lab = torch.cat([box_xy, pts_xy], 1), torch.cat([box_lab, pts_lab], 1)
        points = (pts_xy, pts_lab) if pts_xy.shape[1] else None
        mask_t = torch.as_tensor(np.stack(masks), dtype=torch.float, device=dev)[:, None] if masks[0] is not None else None
        high_res = [feats[k].to(dev) for k in HIGH_RES_KEYS if k in feats] or None
        with self._autocast():
            sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=None, masks=mask_t)
            low, iou, _, _ = self.model.sam_mask_decoder(
                image_embeddings=feats["image_embed"].to(dev),
                image_pe=self._dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
                repeat_image=True,
                high_res_features=high_res,
            )
        return low.float(), iou.float()

    def _upscale(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, K, l, l) low-res logits -> (B, K, H, W) at the original size (one bilinear step)."""
        return F.interpolate(low, size, mode="bilinear", align_corners=False)

    def _groups(self, inputs: list[tuple]) -> list[list[int]]:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (xy, _, box, mask) in enumerate(inputs):
            groups[(len(xy), box is not None, mask is not None)].append(i)
        return list(groups.values())

    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        size = tuple(state.original_size)
        inputs = [self._prompt_inputs(s, size) for s in prompts]
        keep_one = multimask_output and select in ("first", "best")
        n, (h, w) = len(prompts), size
        k = 1 if keep_one or not multimask_output else 3
        low_side = self.lowres_size
        # every row is written below (the groups cover all sets); the large arrays are mapped in one call
        out_masks = populated_empty((n, k, h, w), bool)
        out_scores = np.empty((n, k), np.float32)
        out_logits = populated_empty((n, k, low_side, low_side), np.float32)
        chosen = np.zeros(n, np.int64) if keep_one else None
        upscale_batch = max(1, int(2**25 // max(1, k * h * w)))
        # on the CPU: OpenCV's bilinear resize straight into the result (MaskUpscaler, see docs/speed.md)
        upscaler = MaskUpscaler(size=size) if self.mask_resize == "opencv" and torch.device(self.device).type == "cpu" else None
        for idx in self._groups(inputs):
            for chunk in _chunks(idx, self.max_batch):
                low, iou = self._decode(state.features, [inputs[i] for i in chunk], multimask_output)
                rows = np.asarray(chunk)
                if keep_one:
                    pick = torch.zeros(len(chunk), dtype=torch.long) if select == "first" else iou.argmax(dim=1).cpu()
                    ar = torch.arange(len(chunk))
                    low, iou = low[ar, pick.to(low.device)][:, None], iou[ar, pick.to(iou.device)][:, None]
                    chosen[rows] = pick.numpy()
                out_logits[rows] = low.clamp(-32.0, 32.0).cpu().numpy()
                out_scores[rows] = iou.cpu().numpy()
                if upscaler is not None:
                    low_np = low.float().cpu().numpy()  # unclamped, as the threshold below sees them
                    for j, r in enumerate(rows):
                        upscaler(low_np[j], self.mask_threshold, out_masks[r])
                    continue
                for sub in _chunks(list(range(len(chunk))), upscale_batch):
                    out_masks[rows[list(sub)]] = (self._upscale(low[list(sub)], size) > self.mask_threshold).cpu().numpy()
        return Prediction(masks=out_masks, scores=out_scores, logits=out_logits, chosen=chosen)

    @torch.no_grad()
    def segment_lowres(self, state: ImageState, prompts: Sequence[PromptSet], multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (N, K, l, l) and scores (N, K) on ``self.device``, before any resize
        (automatic mask generation filters by score first, then :meth:`upscale_lowres`).
        Prompts are not checked; every set must have the same structure."""
        size = tuple(state.original_size)
        inputs = [self._prompt_inputs(s, size) for s in prompts]
        if len(self._groups(inputs)) > 1:
            raise PromptError("segment_lowres() needs prompt sets of one structure (same number of points, box, mask)")
        logits, scores = [], []
        for chunk in _chunks(inputs, self.max_batch):
            low, iou = self._decode(state.features, list(chunk), multimask_output)
            logits.append(low)
            scores.append(iou)
        return (logits[0], scores[0]) if len(logits) == 1 else (torch.cat(logits), torch.cat(scores))

    @torch.no_grad()
    def upscale_lowres(self, state: ImageState, logits: torch.Tensor) -> torch.Tensor:
        """(M, l, l) low-res logits -> (M, H, W) at the image size, as segment_logits resizes them."""
        return self._upscale(logits[:, None], tuple(state.original_size))[:, 0]

    @torch.no_grad()
    def segment_logits(self, state: ImageState, prompts: Sequence[PromptSet], multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-size logits float32 (N, K, H, W) and scores (N, K) on ``self.device``, as
        ``SAM2ImagePredictor._predict(..., return_logits=True)``. Prompts are not checked; every
        set must have the same structure."""
        low, scores = self.segment_lowres(state, prompts, multimask_output)
        n, k = low.shape[:2]
        return self.upscale_lowres(state, low.flatten(0, 1)).unflatten(0, (n, k)), scores


__all__ = ["Sam2Segmenter", "resolve_precision", "PIXEL_MEAN", "PIXEL_STD"]
