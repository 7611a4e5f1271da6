"""``sam``: Segment Anything (segment-anything's model classes) behind the Segmenter interface.

* The architecture (vit_b / vit_l / vit_h, or any image size, depth and width) is read from the
  checkpoint, so official and tiny checkpoints load the same way (see :mod:`sam_arch`).
* ``encode`` runs the image encoder once; ``segment`` decodes many prompt sets per call.
  Prompt sets with the same structure (number of points, box or not, mask or not) go through
  the prompt encoder and mask decoder as one batch; sets of different structures form separate
  batches, so results equal segment-anything's ``SamPredictor.predict`` on each set alone
  (padding point sets to one length would change SAM's output, so it is not done).
* Prompt handling: points and boxes as SAM takes them; scribbles become up to
  ``scribble_points`` points spaced evenly along the stroke; a binary mask prompt becomes
  low-res logits ``(2 p - 1) * mask_logit_scale`` of its area-downsampled occupancy ``p``;
  logits from an earlier ``Prediction.logits`` pass through unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from segprompt.errors import ConfigError, PromptError, WeightsError
from segprompt.models.base import ImageState, MultimaskPolicy, Prediction, Segmenter
from segprompt.models.host_memory import populated_empty
from segprompt.models.resize import LongestSide, MaskUpscaler, check_mask_resize
from segprompt.models.sam_arch import SamArch, load_sam
from segprompt.models.sam_decode import decode_shared, hooks_on
from segprompt.models.sam_fast import attention_mode, enable_fast_attention
from segprompt.prompts import PromptSet

log = logging.getLogger(__name__)

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: mask-decoder paths: many prompt sets sharing the prompt-independent work (one set at a time),
#: segment-anything's own batched forward, or ``auto``: shared from this many image tokens up
DECODERS = ("auto", "shared", "reference")
#: from benchmarks/sam_decoder_paths.py (64 three-point sets, 2-core CPU, a 32-channel decoder): 16 x 16
#: tokens 112 ms shared against 44 ms batched, 32 x 32 236 against 199, 64 x 64 492 against 769
SHARED_DECODER_MIN_TOKENS = 2048


def _chunks(seq: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _auto_decoder(device: str, tokens: int) -> str:
    """``decoder="auto"``: the shared path on a CPU for grids of SHARED_DECODER_MIN_TOKENS tokens and more.

    The shared path runs one prompt set at a time so that its tensors stay in a CPU's caches; on
    a GPU that is about 150 kernel launches per set, so the batched forward stays the default
    there until the GPU benchmark (benchmarks/sam_speed.py --device cuda) has measured both.
    """
    if torch.device(device).type != "cpu":
        return "reference"
    return "shared" if tokens >= SHARED_DECODER_MIN_TOKENS else "reference"


def _consecutive(rows: np.ndarray) -> bool:
    """Whether ``rows`` (1-D ints) is a run r, r + 1, ... (then ``a[rows]`` is the slice ``a[r : r + len]``)."""
    return len(rows) > 0 and bool(np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))))


def _threshold_into(out: np.ndarray, rows: np.ndarray, logits: torch.Tensor, threshold: float) -> None:
    """``out[rows] = logits > threshold``; logits (len(rows), K, H, W), out (n, K, H, W) bool.

    On the CPU with consecutive rows the comparison writes straight into ``out`` (no bool tensor,
    no second copy through fancy indexing).
    """
    if logits.device.type == "cpu" and _consecutive(rows):
        torch.gt(logits, threshold, out=torch.from_numpy(out[rows[0] : rows[0] + len(rows)]))
    else:
        out[rows] = (logits > threshold).cpu().numpy()


def scribble_to_points(coords: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` points (x, y) spaced evenly by arc length along a polyline (N, 2)."""
    coords = np.asarray(coords, np.float64)
    if len(coords) == 1:
        return coords.copy()
    seg = np.linalg.norm(np.diff(coords, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] == 0:
        return coords[:1].copy()
    count = max(1, min(n, len(coords) if n <= 0 else n))
    targets = (np.arange(count) + 0.5) / count * arc[-1]
    xs = np.interp(targets, arc, coords[:, 0])
    ys = np.interp(targets, arc, coords[:, 1])
    return np.stack([xs, ys], axis=1)


def cached_dense_pe(owner: Any, prompt_encoder: Any) -> torch.Tensor:
    """A SAM / SAM 2 prompt encoder's dense positional encoding, kept on ``owner``: it depends only
    on a fixed buffer, so it is computed once per device (and autocast state) instead of on every
    decoder call. A changed buffer (new weights, another device) recomputes it."""
    buf = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    key = (buf.device, buf.data_ptr(), buf._version, torch.is_autocast_enabled())
    if getattr(owner, "_dense_pe_key", None) != key:
        owner._dense_pe_cache = prompt_encoder.get_dense_pe()
        owner._dense_pe_key = key
    return owner._dense_pe_cache


class SamSegmenter(Segmenter):
    """Segment Anything.

    Args:
        checkpoint: a registry name (``sam_vit_b``), or a path to a ``.pth`` / ``.safetensors``
            state dict in segment-anything's key layout (official, finetuned or tiny).
        model: alternatively an already built ``segment_anything.modeling.Sam``.
        arch_overrides: architecture values that cannot be read from the weights (decoder heads).
        multimask: ``auto`` (default: best of 3 for a lone point, the single head otherwise),
            ``single``, ``all``, ``first``, ``best`` or ``oracle``.
        device, precision: ``"cpu"``/``"cuda"``; ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
        cache: an :class:`EmbeddingCache` or a folder for one.
        max_batch: prompt sets per decoder call.
        scribble_points: points sampled along each scribble.
        mask_logit_scale: logit magnitude of a binary mask prompt.
        attention: the image encoder's attention, ``"sdpa"`` (default: scaled_dot_product_attention,
            see :mod:`segprompt.models.sam_fast`) or ``"reference"`` (segment-anything's own forward).
            A ``model=`` passed in is patched in place.
        decoder: ``"shared"`` (many prompt sets on one image share the decoder's
            prompt-independent first-layer work and run one set at a time, see
            :mod:`segprompt.models.sam_decode`), ``"reference"`` (segment-anything's batched
            ``MaskDecoder.forward``) or ``"auto"`` (default: shared for image grids of at least
            ``SHARED_DECODER_MIN_TOKENS`` tokens, such as the official SAMs' 64 x 64, where it is
            2-3x faster per set on a CPU; the batched forward for small grids such as sam-tiny's
            16 x 16, where batching wins, and on GPUs, where a set at a time is launch-bound).
            Equal within fp32 rounding.
        compile_mode: ``None`` (default) or a ``torch.compile`` mode (``"default"``,
            ``"reduce-overhead"``, ``"max-autotune-no-cudagraphs"``) for the image encoder; the
            first encode compiles (vit_b on the 2-core CPU: 34 s, then 7.3 s per image against
            6.4 s eager, so it is for GPUs). The weights and state dict are unchanged.
        mask_resize: on a CPU, how ``segment`` resizes mask logits to the image before
            thresholding: ``"opencv"`` (default, :class:`~segprompt.models.resize.MaskUpscaler`:
            the same two bilinear steps by ``cv2.resize``, several times faster; a pixel whose
            logit is within rounding of the threshold may differ) or ``"torch"`` (segment-anything's
            ``F.interpolate``, bit for bit). The returned low-res logits are the same either way.
    """

    name = "sam"
    accepts = frozenset({"points", "box", "mask", "scribble"})
    has_multimask = True

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        model: "torch.nn.Module | None" = None,
        arch_overrides: Mapping[str, Any] | None = None,
        multimask: MultimaskPolicy = "auto",
        device: str = "cpu",
        precision: str = "fp32",
        cache: Any = None,
        max_batch: int = 64,
        scribble_points: int = 5,
        mask_logit_scale: float = 10.0,
        attention: str = "sdpa",
        decoder: str = "auto",
        compile_mode: str | None = None,
        mask_resize: str = "opencv",
    ) -> None:
        super().__init__(multimask=multimask, device=device, precision=precision, cache=cache)
        if (checkpoint is None) == (model is None):
            raise WeightsError(
                "SAM needs exactly one of checkpoint= (a file or a registry name such as sam_vit_b) or model="
            )
        self.checkpoint_path: Path | None = None
        if checkpoint is not None:
            from segprompt.weights import find_weights

            self.checkpoint_path = find_weights(checkpoint)
            model, self.arch = load_sam(self.checkpoint_path, arch_overrides)
        else:
            self.arch = SamArch.from_state_dict(model.state_dict(), arch_overrides)
        self.model = enable_fast_attention(model.to(device).eval(), attention)
        if decoder not in DECODERS:
            raise ConfigError(f"unknown SAM decoder {decoder!r}; choose one of {sorted(DECODERS)}")
        self.compile_mode = compile_mode
        self.mask_resize = check_mask_resize(mask_resize)
        self._compiled: tuple[Any, Any] | None = None  # (image encoder, its compiled wrapper)
        grid = self.model.prompt_encoder.image_embedding_size
        #: the decoder path that runs (``decoder`` with ``auto`` resolved)
        self.decoder_path = decoder if decoder != "auto" else _auto_decoder(str(device), grid[0] * grid[1])
        self.max_batch = int(max_batch)
        self.scribble_points = int(scribble_points)
        self.mask_logit_scale = float(mask_logit_scale)
        self._weights_hash: str | None = None

    # -- helpers --------------------------------------------------------------
    @property
    def _run_encoder(self) -> Any:
        """The image encoder to call: the model's own, or its ``torch.compile`` wrapper (made once per
        encoder; the module stays in the model, so state dict, hashing and saving are untouched)."""
        encoder = self.model.image_encoder
        if not self.compile_mode:
            return encoder
        if self._compiled is None or self._compiled[0] is not encoder:
            self._compiled = (encoder, torch.compile(encoder, mode=self.compile_mode, dynamic=False))
        return self._compiled[1]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        device_type = "cuda" if str(self.device).startswith("cuda") else "cpu"
        return torch.autocast(device_type=device_type, dtype=_AUTOCAST[self.precision])

    def transform(self, original_size: tuple[int, int]) -> LongestSide:
        """The geometry object that maps this image's pixels and coordinates into the model."""
        return LongestSide(self.arch.img_size, tuple(original_size))

    @property
    def weights_hash(self) -> str:
        """SHA-256 of the image encoder's weights and pixel statistics: what an embedding depends on.

        Computed once and remembered; call :meth:`forget_weights_hash` after changing the
        image encoder's weights in place (finetuning), so the cache does not serve stale states.
        A decoder-only finetune keeps the hash, so cached embeddings stay valid.
        """
        if self._weights_hash is None:
            from segprompt.cache import tensor_digest

            tensors = dict(self.model.image_encoder.state_dict())
            tensors.update(pixel_mean=self.model.pixel_mean, pixel_std=self.model.pixel_std)
            self._weights_hash = tensor_digest(tensors)
        return self._weights_hash

    def forget_weights_hash(self) -> None:
        self._weights_hash = None

    def cache_signature(self) -> dict[str, Any]:
        return {
            "model": "segment-anything",
            "arch": self.arch.to_json(),
            "image_encoder": self.weights_hash,
            "preprocessing": {"resize": "longest-side-pil-bilinear", "target": self.arch.img_size},
            "precision": self.precision,
            # the two modes agree to ~1e-6, not bit for bit: an embedding is served to the mode that made it
            "attention": attention_mode(self.model),
        }

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            architecture=self.arch.name,
            img_size=self.arch.img_size,
            checkpoint=str(self.checkpoint_path) if self.checkpoint_path else None,
            attention=attention_mode(self.model),
            decoder=self.decoder_path,
        )
        return out

    # -- encode -----------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, image: np.ndarray) -> ImageState:
        tf = self.transform(image.shape[:2])
        pixels = torch.from_numpy(np.array(tf.apply_image(image))).to(self.device).permute(2, 0, 1).contiguous()[None]
        x = self.model.preprocess(pixels)  # normalise, pad bottom-right to img_size
        with self._autocast():
            emb = self._run_encoder(x)
        return ImageState(original_size=tf.original_size, input_size=tf.input_size, features={"embeddings": emb.float()})

    @torch.no_grad()
    def encode_batch(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[ImageState]:
        """Encode several images, ``batch_size`` per encoder call (faster on a GPU)."""
        from segprompt.models.base import check_image

        images = [check_image(im) for im in images]
        if self.cache is not None:
            return [self.encode(im) for im in images]
        states: list[ImageState] = []
        for chunk in _chunks(list(range(len(images))), batch_size):
            tfs = [self.transform(images[i].shape[:2]) for i in chunk]
            x = torch.cat(
                [
                    self.model.preprocess(torch.from_numpy(np.array(tf.apply_image(images[i]))).to(self.device).permute(2, 0, 1)[None])
                    for tf, i in zip(tfs, chunk)
                ]
            )
            with self._autocast():
                emb = self._run_encoder(x).float()
            for j, tf in enumerate(tfs):
                states.append(ImageState(tf.original_size, tf.input_size, {"embeddings": emb[j : j + 1]}))
        return states

    # -- prompts -> model inputs ------------------------------------------------
    def _prompt_inputs(self, s: PromptSet, tf: LongestSide) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(coords (n, 2) model frame, labels (n,), box (4,) or None, mask logits (l, l) or None)."""
        coords, labels = [], []
        if s.points is not None:
            coords.append(s.points.coords)
            labels.append(s.points.labels)
        for sc in s.scribbles:
            pts = scribble_to_points(sc.coords, self.scribble_points)
            coords.append(pts)
            labels.append(np.full(len(pts), sc.label, np.int64))
        xy = tf.apply_coords(np.concatenate(coords)) if coords else np.zeros((0, 2))
        lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        box = tf.apply_boxes(s.box.xyxy) if s.box is not None else None
        mask = None
        if s.mask is not None:
            lowres = self.arch.lowres_size
            if s.mask.kind == "logits":
                mask = s.mask.data
                if mask.shape != (lowres, lowres):
                    raise PromptError(
                        f"mask-prompt logits must be {lowres}x{lowres} for this model (from Prediction.logits), got {mask.shape}"
                    )
            else:
                mask = (2.0 * tf.mask_to_lowres(s.mask.data, lowres) - 1.0) * self.mask_logit_scale
        return xy, lab, box, mask

    def _dense_pe(self) -> torch.Tensor:
        return cached_dense_pe(self, self.model.prompt_encoder)

    def _input_tensors(self, inputs: list[tuple]) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None, torch.Tensor | None]:
        """Same-structure :meth:`_prompt_inputs` of B sets, stacked for the prompt encoder: points
        ((B, n, 2) float, (B, n) int) or None, boxes (B, 4) or None, mask logits (B, 1, l, l) or None."""
        dev = self.device
        coords, labels, boxes, masks = zip(*inputs)
        points = None
        if len(coords[0]):
            points = (
                torch.as_tensor(np.stack(coords), dtype=torch.float, device=dev),
                torch.as_tensor(np.stack(labels), dtype=torch.int, device=dev),
            )
        box_t = torch.as_tensor(np.stack(boxes), dtype=torch.float, device=dev) if boxes[0] is not None else None
        mask_t = torch.as_tensor(np.stack(masks), dtype=torch.float, device=dev)[:, None] if masks[0] is not None else None
        return points, box_t, mask_t

    @torch.no_grad()
    def _decode(
        self, embeddings: torch.Tensor, inputs: list[tuple], multimask_output: bool, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt-encoder + mask-decoder call for same-structure inputs -> (low-res logits, scores).

        ``out``: an optional float32 (B, K, l, l) tensor the logits are written into (and returned).
        """
        points, box_t, mask_t = self._input_tensors(inputs)
        pe = self.model.prompt_encoder
        with self._autocast():
            if self.decoder_path == "shared" and embeddings.shape[0] == 1 and not hooks_on(self.model.mask_decoder):
                # each set's prompts encoded alone (a batched matmul rounds differently with the batch
                # size), so a set's masks are the same bit for bit whatever else shares the call
                encoded = [
                    pe(
                        points=None if points is None else (points[0][i : i + 1], points[1][i : i + 1]),
                        boxes=None if box_t is None else box_t[i : i + 1],
                        masks=None if mask_t is None else mask_t[i : i + 1],
                    )
                    for i in range(len(inputs))
                ]
                sparse = torch.cat([sp for sp, _ in encoded])
                # without mask inputs every row's dense embedding is no_mask_embed: pass it once
                dense = torch.cat([de for _, de in encoded]) if mask_t is not None else encoded[0][1]
                low, iou = decode_shared(self.model.mask_decoder, embeddings, self._dense_pe(), sparse, dense, multimask_output, out)
            else:
                sparse, dense = pe(points=points, boxes=box_t, masks=mask_t)
                low, iou = self.model.mask_decoder(
                    image_embeddings=embeddings,
                    image_pe=self._dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=multimask_output,
                )
        if out is not None and low is not out:
            low = out.copy_(low)
        return low.float(), iou.float()

    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        tf = LongestSide(self.arch.img_size, tuple(state.original_size))
        embeddings = state.features["embeddings"].to(self.device)
        inputs = [self._prompt_inputs(s, tf) for s in prompts]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (xy, _, box, mask) in enumerate(inputs):
            groups[(len(xy), box is not None, mask is not None)].append(i)
        # with a first / best policy one candidate per set is kept before upscaling (1/3 of the work)
        keep_one = multimask_output and select in ("first", "best")
        n, (h, w) = len(prompts), state.original_size
        k = 1 if keep_one or not multimask_output else 3
        lowres = self.arch.lowres_size
        # every row is written below (the groups cover all sets), so no zero-fill; the large arrays are
        # mapped in one madvise call rather than one page fault at a time (host_memory)
        out_masks = populated_empty((n, k, h, w), bool)
        out_scores = np.empty((n, k), np.float32)
        out_logits = populated_empty((n, k, lowres, lowres), np.float32)
        chosen = np.zeros(n, np.int64) if keep_one else None
        threshold = float(self.model.mask_threshold)
        # upscale a few sets at a time (a block of at most 16 MB of float32), the first resize into one
        # reused tensor rather than a fresh one per block (a fresh large tensor is fresh pages to fault in)
        upscale_batch = max(1, int(2**22 // max(1, k * h * w)))
        padded: torch.Tensor | None = None  # the first resize's output, reused across blocks of sets
        # on the CPU the masks come from the float32 low-res logits in out_logits, by OpenCV (MaskUpscaler)
        on_cpu = torch.device(self.device).type == "cpu"
        upscaler = MaskUpscaler(tf) if on_cpu and self.mask_resize == "opencv" else None
        for idx in groups.values():
            for chunk in _chunks(idx, self.max_batch):
                rows = np.asarray(chunk)
                # the logits of all three candidates go straight into the result when its rows are consecutive
                direct = not keep_one and on_cpu and _consecutive(rows)
                into = torch.from_numpy(out_logits[rows[0] : rows[0] + len(rows)]) if direct else None
                low, iou = self._decode(embeddings, [inputs[i] for i in chunk], multimask_output, into)
                if keep_one:
                    pick = torch.zeros(len(chunk), dtype=torch.long) if select == "first" else iou.argmax(dim=1).cpu()
                    ar = torch.arange(len(chunk))
                    low, iou = low[ar, pick][:, None], iou[ar, pick][:, None]
                    chosen[rows] = pick.numpy()
                if not direct:
                    out_logits[rows] = low.cpu().numpy()
                out_scores[rows] = iou.cpu().numpy()
                if upscaler is not None:
                    for r in rows:
                        upscaler(out_logits[r], threshold, out_masks[r])
                    continue
                for start in range(0, len(chunk), upscale_batch):
                    sub = slice(start, start + upscale_batch)
                    block = low[sub]
                    if padded is None or padded.shape[:2] != block.shape[:2]:
                        padded = block.new_empty((*block.shape[:2], tf.target, tf.target))
                    _threshold_into(out_masks, rows[sub], tf.upscale_logits(block, padded), threshold)
        return Prediction(masks=out_masks, scores=out_scores, logits=out_logits, chosen=chosen)

    def refinable(self, state: ImageState, prompts: PromptSet) -> Any:
        """One set's decode as a function of the image embedding, for f-BRS
        (:mod:`segprompt.models.brs`): ``features`` = [the (1, C, h, w) embedding]; ``decode`` gives
        the mask decoder's four outputs (token 0, the single-mask one, then the three multimask
        candidates) and ``pick`` the one this segmenter returns for a set of several clicks (token 0
        under ``auto`` / ``single``, else the first or best-scored of the three)."""
        from segprompt.models.brs import Refinable

        tf = LongestSide(self.arch.img_size, tuple(state.original_size))
        embeddings = state.features["embeddings"].to(self.device).float()
        points, box_t, mask_t = self._input_tensors([self._prompt_inputs(prompts, tf)])
        with torch.no_grad():
            sparse, dense = self.model.prompt_encoder(points=points, boxes=box_t, masks=mask_t)
        pe = self._dense_pe()

        def decode(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            masks, iou = self.model.mask_decoder.predict_masks(features[0], pe, sparse, dense)
            return masks[0].float(), iou[0].float()

        def pick(logits: torch.Tensor, scores: torch.Tensor) -> int:
            if self.multimask in ("auto", "single"):
                return 0
            return 1 if self.multimask == "first" else 1 + int(scores[1:].argmax())

        return Refinable(features=[embeddings.detach()], decode=decode, pick=pick, transform=tf)

    @torch.no_grad()
    def segment_lowres(
        self, state: ImageState, prompts: Sequence[PromptSet], multimask_output: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits and predicted IoU, before any resize to the image.

        For automatic mask generation (:mod:`segprompt.everything`), which drops candidates by
        their predicted IoU before it pays for bringing them to the image size
        (:meth:`upscale_lowres`). Prompts are not checked here (the caller builds them inside the
        image); every set must have the same structure.

        Returns:
            (logits float32 (N, K, l, l) in the padded frame, scores float32 (N, K)), on ``self.device``.
        """
        tf = LongestSide(self.arch.img_size, tuple(state.original_size))
        embeddings = state.features["embeddings"].to(self.device)
        inputs = [self._prompt_inputs(s, tf) for s in prompts]
        if len({(len(xy), box is not None, mask is not None) for xy, _, box, mask in inputs}) > 1:
            raise PromptError("segment_lowres() needs prompt sets of one structure (same number of points, box, mask)")
        logits, scores = [], []
        for chunk in _chunks(inputs, self.max_batch):
            low, iou = self._decode(embeddings, list(chunk), multimask_output)
            logits.append(low)
            scores.append(iou)
        if len(logits) == 1:
            return logits[0], scores[0]
        return torch.cat(logits), torch.cat(scores)

    @torch.no_grad()
    def upscale_lowres(self, state: ImageState, logits: torch.Tensor) -> torch.Tensor:
        """(M, l, l) low-res logits -> (M, H, W) at the image size, as ``Sam.postprocess_masks`` (bit for bit)."""
        tf = LongestSide(self.arch.img_size, tuple(state.original_size))
        return tf.upscale_logits(logits[:, None])[:, 0]

    @torch.no_grad()
    def segment_logits(
        self, state: ImageState, prompts: Sequence[PromptSet], multimask_output: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-size logits and predicted IoU, as segment-anything's
        ``SamPredictor.predict_torch(..., return_logits=True)`` returns them.

        Prompts are not checked here; every set must have the same structure.

        Returns:
            (logits float32 (N, K, H, W), scores float32 (N, K)), torch tensors on ``self.device``.
        """
        low, scores = self.segment_lowres(state, prompts, multimask_output)
        n, k = low.shape[:2]
        return self.upscale_lowres(state, low.flatten(0, 1)).unflatten(0, (n, k)), scores
