"""``persam``: PerSAM, training-free one-shot segmentation with SAM from a visual reference.

PerSAM (Zhang et al., "Personalize Segment Anything Model with One Shot", ICLR 2024) behind the
Segmenter interface, on any segment-anything based segmenter (``sam``, ``sam-tiny``):

.. code-block:: python

    seg = create_segmenter("persam")                    # base="sam-tiny"; or base="sam", checkpoint=...
    state = seg.encode(target_image)                     # (H, W, 3) uint8 RGB
    pred = seg.segment(state, PromptSet(reference=Reference(ref_image, ref_mask)))
    pred.masks                                           # (1, 1, H, W) bool
    seg.location_prior(state, Reference(ref_image, ref_mask)).coords   # (2, 2) (x, y): positive, negative
    seg.probability(state, Reference(ref_image, ref_mask))             # (H, W) float32 for SoT's merging

The steps follow ZrrSkywalker/Personalize-SAM ``persam.py`` (function ``persam``), with SAM's
decoder changes of ``per_segment_anything/modeling/transformer.py`` applied through hooks:

1. **target embedding**: the reference image's SAM embedding averaged over the cells its mask
   selects (:func:`reference_cells`: PerSAM's rule, the mask resized and normalised like the
   image, bilinearly downsampled to the embedding grid, cells > 0); L2-normalised for step 2;
2. **location confidence**: cosine similarity of that embedding with every target embedding
   cell, upsampled x4 then to the image like SAM's mask logits (``postprocess_masks``);
3. **location prior**: positive point at its argmax, negative point at its argmin (top-1 each,
   ``point_selection``), (x, y) pixels of the target image;
4. **first decoding** from those two points with the single-mask head, under
   :func:`persam_guidance`: *target-guided attention* (each token-to-image cross-attention's
   softmax map gets the sigmoid of the standardised confidence added and is softmaxed again) and
   *target-semantic prompting* (the raw target embedding added to the decoder's tokens before
   every block and the final attention, as PerSAM's ``queries += target_embedding``);
5. **cascaded post-refinement**: (a) the points + the first mask's low-res logits, 3 candidates,
   the one with the highest predicted IoU kept; (b) the points + those logits + the tight box of
   that mask (PerSAM's ``x.max()``, inclusive), 3 candidates; PerSAM's answer is the best scored.
   As ShowOrTell's ``PERSAM_model.py``, (b) is skipped when (a) gave an empty mask.

Multimask policy: ``best`` (the default) returns PerSAM's answer, K = 1, ``chosen`` its index among
the last pass's 3 candidates; ``single`` and ``auto`` return the same mask (``chosen`` = -1 under
``auto``, the base class's mark for "no multimask selection"); ``all`` the 3 candidates;
``first`` / ``oracle`` as for SAM. Only ``reference`` prompts are
accepted (one per prompt set); PerSAM combines no clicks with its prior, and neither do we.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from segprompt.backbones.hooks import HookBag
from segprompt.errors import ConfigError, PromptError
from segprompt.models.base import ImageState, MultimaskPolicy, Prediction, Segmenter
from segprompt.models.resize import LongestSide
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet, Reference, as_prompt_sets

log = logging.getLogger(__name__)

PROBABILITY_KINDS = ("sot", "confidence", "mask")
GUIDANCE_FRAMES = ("image", "padded")


# ----------------------------------------------------------------------- location prior ------
def _check_choice(what: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(f"unknown {what} {value!r}; use one of {', '.join(options)}")
    return value


def reference_cells(mask: np.ndarray, tf: LongestSide, grid: tuple[int, int], mean: float, std: float) -> np.ndarray:
    """PerSAM's choice of reference embedding cells: bool (gh, gw).

    As ``predictor.set_image(ref_image, ref_mask)`` then ``F.interpolate(..., mode="bilinear")``
    and ``> 0`` in persam.py: the mask as 0/255 uint8 is resized like the image (PIL bilinear),
    normalised by the red channel's pixel mean and std, zero-padded to the model's square,
    bilinearly resized to the embedding grid (no antialiasing), and thresholded at 0.
    """
    pixels = tf.apply_image(np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8))
    t = (torch.from_numpy(np.asarray(pixels, np.float32)) - mean) / std
    t = tf.pad(t[None, None])
    return (F.interpolate(t, size=tuple(grid), mode="bilinear", align_corners=False)[0, 0] > 0).numpy()


def masked_mean(features: torch.Tensor, cells: np.ndarray) -> torch.Tensor:
    """Mean of ``features`` (C, gh, gw) over the ``cells`` (gh, gw) bool -> (C,)."""
    sel = torch.as_tensor(np.asarray(cells, bool), device=features.device)
    return features[:, sel].mean(dim=1)


def cosine_map(target: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of ``target`` (C,) with every cell of ``features`` (C, gh, gw) -> (gh, gw)."""
    t = target / target.norm()
    f = features / features.norm(dim=0, keepdim=True)
    return torch.einsum("c,chw->hw", t, f)


def confidence_to_image(similarity: torch.Tensor, tf: LongestSide) -> torch.Tensor:
    """Grid similarity (gh, gw) -> (H, W) location confidence: x4 bilinear, then SAM's
    ``postprocess_masks`` (to the padded square, crop the image, to the original size)."""
    x = F.interpolate(similarity[None, None], scale_factor=4, mode="bilinear", align_corners=False)
    return tf.upscale_logits(x)[0, 0]


def location_prior(confidence: torch.Tensor | np.ndarray) -> Points:
    """PerSAM's ``point_selection(topk=1)``: positive point at the argmax of the (H, W) confidence,
    negative at the argmin; (x, y) = (column, row) pixels of the target image."""
    conf = torch.as_tensor(confidence)
    w = conf.shape[1]
    hi, lo = int(conf.argmax()), int(conf.argmin())
    coords = np.array([[hi % w, hi // w], [lo % w, lo // w]], np.float32)
    return Points(coords, np.array([1, 0], np.int64))


def attention_bias(confidence: torch.Tensor, grid: tuple[int, int], tf: LongestSide, frame: str = "image") -> torch.Tensor:
    """PerSAM's target guidance for the cross-attention: the (H, W) confidence standardised
    (``torch.std``, unbiased), bilinearly resized to the embedding grid, sigmoid -> (1, 1, 1, gh*gw).

    ``frame="image"`` (PerSAM) resizes the image-frame map onto the whole grid, which stretches it
    over the padding for a non-square image; ``"padded"`` puts it where the image lies in SAM's
    padded square (padding = the map's minimum)."""
    z = (confidence - confidence.mean()) / torch.std(confidence)
    z = z[None, None]
    if frame == "padded":
        h, w = tf.input_size
        z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
        z = F.pad(z, (0, tf.target - w, 0, tf.target - h), value=float(z.min()))
    else:
        _check_choice("guidance frame", frame, GUIDANCE_FRAMES)
    z = F.interpolate(z, size=tuple(grid), mode="bilinear", align_corners=False)
    return z.sigmoid().flatten(2)[:, :, None]


# ----------------------------------------------------------------------- decoder hooks -------
class _SoftmaxBias(TorchFunctionMode):
    """While ``armed``, turns the one ``torch.softmax`` of segment-anything's ``Attention.forward``
    into PerSAM's ``softmax(softmax(qk) + attn_sim)``; every other op passes unchanged."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias, self.armed, self.calls = bias, False, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        if self.armed and func in (torch.softmax, torch.Tensor.softmax, F.softmax):
            self.calls += 1
            out = torch.softmax(out + self.bias.to(out.dtype), dim=-1)
        return out


def _add_to(args: tuple, kwargs: dict, index: int, key: str, value: torch.Tensor) -> tuple[tuple, dict]:
    if len(args) > index:
        args = args[:index] + (args[index] + value.to(args[index].dtype),) + args[index + 1 :]
    else:
        kwargs = dict(kwargs, **{key: kwargs[key] + value.to(kwargs[key].dtype)})
    return args, kwargs


@contextlib.contextmanager
def persam_guidance(transformer: torch.nn.Module, target: torch.Tensor | None = None, attn_sim: torch.Tensor | None = None) -> Iterator[None]:
    """PerSAM's changes to segment-anything's ``TwoWayTransformer``, as hooks for a ``with`` block.

    * ``target`` (C,): target-semantic prompting. PerSAM adds it in place to the queries before
      every block (the first time that tensor is also the tokens' positional embedding) and to
      the final attention's query: here a pre-hook adds it to ``point_embedding`` on entry, to
      ``queries`` of blocks 2.., and to ``q`` of ``final_attn_token_to_image``.
    * ``attn_sim`` (1, 1, 1, gh*gw): target-guided attention in every block's
      ``cross_attn_token_to_image`` (not the final attention, as PerSAM).
    """
    with HookBag() as bag, contextlib.ExitStack() as stack:
        if target is not None:
            t = target.reshape(1, 1, -1)
            bag.pre(transformer, lambda m, a, k: _add_to(a, k, 2, "point_embedding", t))
            for layer in list(transformer.layers)[1:]:
                bag.pre(layer, lambda m, a, k: _add_to(a, k, 0, "queries", t))
            bag.pre(transformer.final_attn_token_to_image, lambda m, a, k: _add_to(a, k, 0, "q", t))
        if attn_sim is not None:
            mode = stack.enter_context(_SoftmaxBias(attn_sim))

            def arm(module, args, kwargs):
                mode.armed, mode.calls = True, 0

            def disarm(module, args, output):
                mode.armed = False
                if mode.calls != 1:
                    raise RuntimeError(
                        f"target-guided attention expected one softmax in {type(module).__name__}.forward, saw "
                        f"{mode.calls}: segment-anything's Attention changed; use target_guided_attention=False"
                    )

            for layer in transformer.layers:
                bag.pre(layer.cross_attn_token_to_image, arm)
                bag.post(layer.cross_attn_token_to_image, disarm)
        yield


# ----------------------------------------------------------------------- the segmenter -------
@dataclass
class PerSamResult:
    """Everything one PerSAM run computed for one target image.

    Attributes:
        points: the location prior (positive, negative), (x, y) target-image pixels.
        similarity: float32 (gh, gw) cosine similarity on SAM's embedding grid (padded square).
        confidence: float32 (H, W) location confidence (``similarity`` at the image size).
        masks: bool (K, H, W) candidates of the last decoder pass (K = 3, or 1 without refinement).
        scores: float32 (K,) their predicted IoU; logits: float32 (K, l, l) their low-res logits.
        best: index of PerSAM's answer (highest predicted IoU).
    """

    points: Points
    similarity: np.ndarray
    confidence: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    best: int

    @property
    def mask(self) -> np.ndarray:
        return self.masks[self.best]


def persam_box(mask: np.ndarray) -> Box:
    """PerSAM's box of a bool (H, W) mask: ``[x.min(), y.min(), x.max(), y.max()]`` (inclusive
    pixels, as persam.py's ``x.max()``; :meth:`Box.from_mask` is pixel-edge exclusive)."""
    ys, xs = np.nonzero(mask)
    return Box([xs.min(), ys.min(), xs.max(), ys.max()])


def cascade_refine(
    decode: Any, points: Points, pred: Prediction, passes: int, best: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """PerSAM's cascaded post-refinement (step 5 of the module docstring), shared with prototype matching.

    ``decode(PromptSet) -> Prediction`` (3 candidates); ``pred``: the first decoding, whose candidate
    ``best`` (default: the highest scored) starts the cascade. Pass 1 adds its low-res logits, pass 2
    also the tight box of its mask (skipped when that mask is empty). Returns (masks, scores,
    logits, best) of the last pass.
    """
    masks, scores, logits = pred.masks[0], pred.scores[0], pred.logits[0]
    best = int(np.argmax(scores)) if best is None else best
    for step in range(passes):
        extra: dict[str, Any] = {"mask": MaskPrompt(logits[best], kind="logits")}
        if step == 1:
            if not masks[best].any():
                break
            extra["box"] = persam_box(masks[best])
        pred = decode(PromptSet(points=points, **extra))
        masks, scores, logits = pred.masks[0], pred.scores[0], pred.logits[0]
        best = int(np.argmax(scores))
    return masks, scores, logits, best


class PerSamSegmenter(Segmenter):
    """PerSAM on a segment-anything segmenter (module docstring).

    Args:
        base: registry name of the SAM segmenter (``sam-tiny``, ``sam``) or a built SamSegmenter.
        base_kwargs: keyword arguments for ``create_segmenter(base, ...)``; ``checkpoint=`` is a shortcut.
        target_guided_attention, target_semantic_prompting: PerSAM's two decoder changes (on).
        refinement: cascaded post-refinement passes, 0, 1 or 2 (PerSAM: 2).
        guidance_frame: ``"image"`` (PerSAM) or ``"padded"`` (:func:`attention_bias`).
        probability: default kind of :meth:`probability`: ``"sot"``, ``"confidence"`` or ``"mask"``.
        reference_cache: how many reference target embeddings to keep (they repeat over images).
        multimask, device, precision, cache: as for every Segmenter (cache goes to the base).
    """

    name = "persam"
    accepts = frozenset({"reference"})
    has_multimask = True

    def __init__(
        self,
        base: str | Segmenter = "sam-tiny",
        base_kwargs: Mapping[str, Any] | None = None,
        *,
        checkpoint: str | None = None,
        multimask: MultimaskPolicy = "best",
        device: str = "cpu",
        precision: str = "fp32",
        cache: Any = None,
        target_guided_attention: bool = True,
        target_semantic_prompting: bool = True,
        refinement: int = 2,
        guidance_frame: str = "image",
        probability: str = "sot",
        reference_cache: int = 32,
    ) -> None:
        from segprompt.models.registry import create_segmenter
        from segprompt.models.sam import SamSegmenter

        super().__init__(multimask=multimask, device=device, precision=precision)
        if isinstance(base, str):
            kwargs = dict(base_kwargs or {})
            if checkpoint is not None:
                kwargs["checkpoint"] = checkpoint
            base = create_segmenter(base, device=device, precision=precision, cache=cache, **kwargs)
        elif base_kwargs or checkpoint is not None:
            raise ConfigError("base_kwargs / checkpoint go with a base given by name, not with a built segmenter")
        if not isinstance(base, SamSegmenter):
            raise ConfigError(f"persam needs a segment-anything segmenter as base (sam, sam-tiny), got {type(base).__name__}")
        if refinement not in (0, 1, 2):
            raise ConfigError(f"refinement must be 0, 1 or 2 passes, got {refinement!r}")
        _check_choice("guidance frame", guidance_frame, GUIDANCE_FRAMES)
        _check_choice("probability kind", probability, PROBABILITY_KINDS)
        self.base = base
        self.target_guided_attention = bool(target_guided_attention)
        self.target_semantic_prompting = bool(target_semantic_prompting)
        self.refinement = int(refinement)
        self.guidance_frame = guidance_frame
        self.probability_kind = probability
        self.reference_cache = int(reference_cache)
        self._targets: OrderedDict[str, torch.Tensor] = OrderedDict()
        #: forward passes since creation (cost accounting): image_encoder, mask_decoder
        self.counts: dict[str, int] = {"image_encoder": 0, "mask_decoder": 0}

    # -- image state: the base's (and its embedding cache) ---------------------------------
    def encode(self, image: np.ndarray) -> ImageState:
        self.counts["image_encoder"] += 1
        return self.base.encode(image)

    def _encode(self, image: np.ndarray) -> ImageState:
        return self.base._encode(image)

    def cache_signature(self) -> dict[str, Any] | None:
        return self.base.cache_signature()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            base=self.base.describe(),
            target_guided_attention=self.target_guided_attention,
            target_semantic_prompting=self.target_semantic_prompting,
            refinement=self.refinement,
            guidance_frame=self.guidance_frame,
            probability=self.probability_kind,
        )
        return out

    def segment(self, state: ImageState, prompts: PromptSet | Sequence[PromptSet], **kwargs: Any) -> Prediction:
        for i, s in enumerate(as_prompt_sets(prompts)):
            if s.reference is None:
                raise PromptError(
                    f"persam needs a visual reference in every prompt set (prompt set {i} has none): "
                    "PromptSet(reference=Reference(image, mask))"
                )
        return super().segment(state, prompts, **kwargs)

    # -- the steps ------------------------------------------------------------------------------
    def target_embedding(self, reference: Reference | Sequence[Reference]) -> torch.Tensor:
        """(C,) raw target embedding: the masked mean of each reference's embedding (step 1);
        for several references (k-shot) the mean of their target embeddings."""
        refs = [reference] if isinstance(reference, Reference) else list(reference)
        if not refs or not all(isinstance(r, Reference) for r in refs):
            raise PromptError("persam needs at least one Reference(image, mask)")
        return torch.stack([self._one_target(r) for r in refs]).mean(dim=0)

    def _one_target(self, ref: Reference) -> torch.Tensor:
        digest = hashlib.sha1()
        for arr in (ref.image, np.packbits(ref.mask)):
            digest.update(str(arr.shape).encode())
            digest.update(np.ascontiguousarray(arr).tobytes())
        key = digest.hexdigest()
        if key in self._targets:
            self._targets.move_to_end(key)
            return self._targets[key]
        state = self.encode(ref.image)
        feats = state.features["embeddings"][0].float()
        tf = self.base.transform(ref.mask.shape)
        mean, std = float(self.base.model.pixel_mean.flatten()[0]), float(self.base.model.pixel_std.flatten()[0])
        cells = reference_cells(ref.mask, tf, feats.shape[1:], mean, std)
        if cells.any():
            target = masked_mean(feats, cells)
        else:  # an object smaller than a cell: weight the cells by the share of the mask in them
            weights = torch.as_tensor(tf.mask_to_lowres(ref.mask, feats.shape[1]), device=feats.device)
            target = (feats * weights).sum(dim=(1, 2)) / weights.sum()
            log.debug("reference mask selects no embedding cell; using the area-weighted mean")
        if self.reference_cache > 0:
            self._targets[key] = target
            while len(self._targets) > self.reference_cache:
                self._targets.popitem(last=False)
        return target

    def location_prior(self, state: ImageState, reference: Reference | Sequence[Reference]) -> Points:
        """Steps 1-3: the positive and negative point, (x, y) pixels of the target image."""
        target = self.target_embedding(reference)
        return location_prior(confidence_to_image(cosine_map(target, self._features(state)), self._tf(state)))

    def _features(self, state: ImageState) -> torch.Tensor:
        return state.features["embeddings"][0].to(self.base.device).float()

    def _tf(self, state: ImageState) -> LongestSide:
        return self.base.transform(state.original_size)

    def _decode(self, state: ImageState, prompt: PromptSet, policy: str) -> Prediction:
        self.counts["mask_decoder"] += 1
        return self.base.segment(state, prompt, multimask=policy)

    @torch.no_grad()
    def run(self, state: ImageState, reference: Reference | Sequence[Reference]) -> PerSamResult:
        """Steps 1-5 on one target image (``state`` from :meth:`encode`)."""
        target = self.target_embedding(reference)
        feats, tf = self._features(state), self._tf(state)
        similarity = cosine_map(target.to(feats.device), feats)
        confidence = confidence_to_image(similarity, tf)
        points = location_prior(confidence)
        attn = attention_bias(confidence, feats.shape[1:], tf, self.guidance_frame) if self.target_guided_attention else None
        semantic = target.to(feats.device) if self.target_semantic_prompting else None
        with persam_guidance(self.base.model.mask_decoder.transformer, semantic, attn):
            pred = self._decode(state, PromptSet(points=points), "single")
        masks, scores, logits, best = cascade_refine(
            lambda prompt: self._decode(state, prompt, "all"), points, pred, self.refinement, best=0
        )
        return PerSamResult(points, similarity.cpu().numpy(), confidence.cpu().numpy(), masks, scores, logits, best)

    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        results = [self.run(state, s.reference) for s in prompts]
        if multimask_output:
            return Prediction(
                masks=np.stack([r.masks for r in results]),
                scores=np.stack([r.scores for r in results]).astype(np.float32),
                logits=np.stack([r.logits for r in results]).astype(np.float32),
            )
        rows = [(r.masks[r.best], r.scores[r.best], r.logits[r.best]) for r in results]
        return Prediction(
            masks=np.stack([m for m, _, _ in rows])[:, None],
            scores=np.array([[s] for _, s, _ in rows], np.float32),
            logits=np.stack([lg for _, _, lg in rows])[:, None].astype(np.float32),
            chosen=np.array([r.best for r in results], np.int64),
        )

    def probability(self, state: ImageState, reference: Reference | Sequence[Reference], kind: str | None = None) -> np.ndarray:
        """float32 (H, W) score map of the reference's object in the target image, for SoT's merging.

        * ``"sot"`` (default): ShowOrTell ``PERSAM_model.py``: the grid similarity resized to (H, W)
          as one image (bilinear), averaged over PerSAM's final mask, that constant on the mask and
          0 elsewhere (values in [-1, 1]);
        * ``"confidence"``: the location confidence map (cosine similarity, [-1, 1]);
        * ``"mask"``: the sigmoid of PerSAM's final mask logits at the image size ([0, 1]).
        """
        kind = _check_choice("probability kind", kind or self.probability_kind, PROBABILITY_KINDS)
        if kind == "confidence":
            target = self.target_embedding(reference)
            return confidence_to_image(cosine_map(target, self._features(state)), self._tf(state)).cpu().numpy().astype(np.float32)
        res = self.run(state, reference)
        if kind == "mask":
            low = torch.as_tensor(res.logits[res.best])[None, None]
            return self._tf(state).upscale_logits(low)[0, 0].sigmoid().numpy().astype(np.float32)
        mask = res.mask
        if not mask.any():
            return np.zeros(mask.shape, np.float32)
        sim = F.interpolate(torch.as_tensor(res.similarity)[None, None], size=mask.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        return (float(sim[mask].mean()) * mask).astype(np.float32)
