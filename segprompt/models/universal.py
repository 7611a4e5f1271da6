"""``universal``: the SEEM-style decoder (:mod:`segprompt.universal`) as a Segmenter.

.. code-block:: python

    seg = create_segmenter("universal-tiny")              # bundled demo model, no download
    state = seg.encode(image)                              # (H, W, 3) uint8 RGB
    pred = seg.segment(state, [
        PromptSet(points=Points.positive((120, 80))),                 # a click
        PromptSet(points=Points.positive((120, 80)), box=Box(...)),   # click + box together
        PromptSet(text=Text("star")),                                 # text
        PromptSet(reference=Reference(other_image, other_mask)),      # a visual example
    ])
    out = seg.generic(state, vocabulary=["disc", "star"])  # every object, classes by text
    out.semantic   # (H, W) int64: index into the vocabulary, -1 = background

Every prompt kind is accepted alone or combined. The decoder gives ``num_prompt_queries``
(3) candidate masks per prompt set with a predicted IoU each, so the multimask policies behave as
for SAM; ``"single"`` returns the candidate of highest predicted IoU. ``Prediction.logits`` are
the stride-4 mask logits in the padded model frame; passed back as
``MaskPrompt(logits, kind="logits")`` they become the next round's **memory** prompt.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from segprompt.errors import ConfigError, PromptError, WeightsError
from segprompt.models.base import ImageState, Prediction, Segmenter
from segprompt.models.resize import LongestSide
from segprompt.prompts import PROMPT_KINDS, PromptSet

__all__ = ["UniversalSegmenter", "GenericOutput", "create_universal_tiny", "universal_tiny_path"]

ASSET = "universal_tiny.safetensors"
#: reference images whose features a segmenter keeps (an LRU of their encodings)
REFERENCE_CACHE = 16
#: rules for keeping one candidate (see UniversalSegmenter's ``pick``)
PICK_RULES = ("score", "clicks")


@dataclass
class GenericOutput:
    """Generic (prompt-free) output for one image.

    Attributes:
        semantic: (H, W) int64 index into ``vocabulary``, -1 where no class wins (background).
        masks: (N, H, W) bool instance masks (panoptic segments, non-overlapping).
        classes: (N,) int64 indices into ``vocabulary``; scores: (N,) float32 confidences.
        vocabulary: the class names used.
    """

    semantic: np.ndarray
    masks: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    vocabulary: tuple[str, ...]


class UniversalSegmenter(Segmenter):
    """A :class:`~segprompt.universal.model.UniversalModel` behind the Segmenter interface.

    Args:
        checkpoint: a universal safetensors file (config in its metadata) or a training run's
            ``checkpoints/best.pt``.
        model: an already built model instead (tests, finetuning).
        vocabulary: default class names for :meth:`generic` and :meth:`classify` (the model's
            words for a closed-vocabulary model).
        max_rows: prompt sets decoded per decoder call.
        pick: how one candidate is kept where a single mask is asked for (``"single"``, and sets
            other than one lone click under ``"auto"``): ``"clicks"`` (default), among the
            candidates that agree with the most clicks (positive clicks inside, negative outside,
            read from the low-res logits) the highest predicted IoU -- the IoU head alone
            sometimes ranks first a candidate that drops most of the user's positive clicks;
            ``"score"``, the highest predicted IoU alone (SAM's rule, universal-tiny v1-v2's).
            Sets without clicks: the score either way.
    """

    name = "universal"
    accepts = frozenset(PROMPT_KINDS)
    has_multimask = True

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        model: Any = None,
        multimask: str = "auto",
        device: str = "cpu",
        precision: str = "fp32",
        cache: Any = None,
        vocabulary: Sequence[str] | None = None,
        max_rows: int = 32,
        pick: str = "clicks",
    ) -> None:
        if pick not in PICK_RULES:
            raise ConfigError(f"pick must be one of {', '.join(PICK_RULES)}, got {pick!r}")
        super().__init__(multimask=multimask, device=device, precision=precision, cache=cache)  # type: ignore[arg-type]
        if model is None:
            if checkpoint is None:
                raise WeightsError("the universal segmenter needs checkpoint=<a universal .safetensors> (or use 'universal-tiny')")
            from segprompt.universal.checkpoint import load_universal

            model = load_universal(checkpoint, device=self.device)
        self.model = model.to(self.device).eval()
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        words = tuple(model.cfg.words)  # the class names it was trained with
        self.vocabulary: tuple[str, ...] = tuple(vocabulary) if vocabulary is not None else words
        self.max_rows = int(max_rows)
        self.pick = pick
        self._ref_cache: OrderedDict[str, tuple[Any, LongestSide]] = OrderedDict()  # reference features, see _reference_features
        #: images through the image encoder: targets (``encode``) and reference images (cache misses), for cost tables
        self.counts: dict[str, int] = {"image_encoder": 0, "reference_encoder": 0}

    # -- helpers ---------------------------------------------------------------
    def transform(self, size: tuple[int, int]) -> LongestSide:
        return LongestSide(self.model.img_size, (int(size[0]), int(size[1])))

    def _autocast(self) -> contextlib.AbstractContextManager:
        from segprompt.engine.loop import autocast

        return autocast(self.precision, str(self.device))

    def _pixels(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[LongestSide]]:
        from segprompt.universal.prompting import model_input

        x, tfs = model_input(images, self.model.img_size)
        return x.to(self.device), tfs

    def cache_signature(self) -> str | None:
        return None  # features are a dict of several tensors; the cache is not used yet

    # -- Segmenter hooks ---------------------------------------------------------
    @torch.no_grad()
    def _encode(self, image: np.ndarray) -> ImageState:
        x, (tf,) = self._pixels([image])
        with self._autocast():
            feats = self.model.encode_images(x, [tf.input_size])
        self.counts["image_encoder"] += 1
        features = {"mask_features": feats.mask_features.float(), **{f"scale{i}": s.float() for i, s in enumerate(feats.scales)}}
        return ImageState(original_size=tf.original_size, input_size=tf.input_size, features=features)

    def _features(self, state: ImageState) -> Any:
        from segprompt.universal.model import ImageFeatures

        f = state.features
        return ImageFeatures(f["mask_features"], [f[f"scale{i}"] for i in range(3)])

    @torch.no_grad()
    def decode_sets(self, state: ImageState, sets: Sequence[PromptSet]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw outputs of R prompt sets: candidate logits (R, P, h4, w4), predicted IoU (R, P),
        class embeddings (R, P, E), in the padded model frame."""
        from segprompt.universal.model import ImageFeatures
        from segprompt.universal.prompting import prompt_tensors

        tf = self.transform(state.original_size)
        feats = self._features(state)
        ref_index, ref_tfs = [-1] * len(sets), [None] * len(sets)
        refs = [i for i, s in enumerate(sets) if s.reference is not None]
        if refs:
            encoded = self._reference_features([sets[i].reference.image for i in refs])  # type: ignore[union-attr]
            unique = list(dict.fromkeys(key for key, _ in encoded))
            cached = [self._ref_cache[key] for key in unique]
            feats = ImageFeatures(
                torch.cat([feats.mask_features] + [c[0].mask_features for c in cached]),
                [torch.cat([a] + [c[0].scales[k] for c in cached]) for k, a in enumerate(feats.scales)],
            )
            for i, (key, ref_tf) in zip(refs, encoded):
                ref_index[i], ref_tfs[i] = 1 + unique.index(key), ref_tf  # type: ignore[call-overload]
        lowres = int(feats.mask_features.shape[-1])
        logits, scores, embeds = [], [], []
        for start in range(0, len(sets), self.max_rows):
            idx = list(range(start, min(len(sets), start + self.max_rows)))
            pt = prompt_tensors(
                [sets[i] for i in idx], [tf] * len(idx), [0] * len(idx), self.model.cfg.tokens_per_prompt, lowres,
                ref_index=[ref_index[i] for i in idx], ref_transforms=[ref_tfs[i] for i in idx],
            ).to(self.device)
            with self._autocast():
                out = self.model.decode(feats, pt)[-1]
            logits.append(out.masks.float())
            scores.append(out.scores.float())
            embeds.append(out.class_embed.float())
        return torch.cat(logits), torch.cat(scores), torch.cat(embeds)

    def _segment(self, state: ImageState, sets: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        logits, scores, _ = self.decode_sets(state, sets)
        if not multimask_output:
            best = self.pick_index(logits, scores, sets, self.transform(state.original_size))
            rows = torch.arange(len(sets))
            logits, scores = logits[rows, best][:, None], scores[rows, best][:, None]
        tf = self.transform(state.original_size)
        up = tf.upscale_logits(logits)
        return Prediction(masks=(up > 0).cpu().numpy(), scores=scores.cpu().numpy().astype(np.float32), logits=logits.cpu().numpy().astype(np.float32))

    def pick_index(self, logits: torch.Tensor, scores: torch.Tensor, sets: Sequence[PromptSet], tf: LongestSide) -> torch.Tensor:
        """(R,) the candidate each set keeps where one mask is asked for (``pick``)."""
        return scores.argmax(1) if self.pick == "score" else pick_by_clicks(logits, scores, sets, tf)

    def refinable(self, state: ImageState, prompts: PromptSet) -> Any:
        """The decode of one prompt set as a function of the image features, for backpropagating
        refinement (:mod:`segprompt.models.brs`): a :class:`~segprompt.models.brs.Refinable` whose
        ``features`` are the mask features and the decoder's scales of this image (each (1, C, h, w))
        and whose ``decode`` maps them to (P, l, l) candidate logits and (P,) scores. None for a set
        with a reference image (its features come from two images)."""
        from segprompt.models.brs import Refinable
        from segprompt.universal.model import ImageFeatures
        from segprompt.universal.prompting import prompt_tensors

        if prompts.reference is not None:
            return None
        tf = self.transform(state.original_size)
        feats = self._features(state)
        lowres = int(feats.mask_features.shape[-1])
        pt = prompt_tensors([prompts], [tf], [0], self.model.cfg.tokens_per_prompt, lowres).to(self.device)

        def decode(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model.decode(ImageFeatures(features[0], list(features[1:])), pt)[-1]
            return out.masks[0].float(), out.scores[0].float()

        def pick(logits: torch.Tensor, scores: torch.Tensor) -> int:
            return int(self.pick_index(logits[None], scores[None], [prompts], tf)[0])

        features = [feats.mask_features.float()] + [s.float() for s in feats.scales]
        return Refinable(features=[f.detach() for f in features], decode=decode, pick=pick, transform=tf)

    @torch.no_grad()
    def _reference_features(self, images: Sequence[np.ndarray]) -> list[tuple[str, LongestSide]]:
        """(cache key, geometry) of each reference image; the images not yet in the cache of the
        last ``REFERENCE_CACHE`` references are encoded, in one batch (a reference reused across
        prompt sets, calls or target images -- live preview, Show-or-Tell -- is encoded once)."""
        import hashlib

        keys = [f"{im.shape}:{hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).hexdigest()}" for im in images]
        todo = {k: im for k, im in zip(keys, images) if k not in self._ref_cache}
        if todo:
            x, tfs = self._pixels(list(todo.values()))
            with self._autocast():
                rf = self.model.encode_images(x, [t.input_size for t in tfs])
            self.counts["reference_encoder"] += len(todo)
            for j, key in enumerate(todo):
                self._ref_cache[key] = (rf.rows(j), tfs[j])
        for key in keys:
            self._ref_cache.move_to_end(key)
        while len(self._ref_cache) > max(REFERENCE_CACHE, len(set(keys))):
            self._ref_cache.popitem(last=False)
        return [(k, self._ref_cache[k][1]) for k in keys]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "checkpoint": self.checkpoint, "pick": self.pick}

    # -- classes -----------------------------------------------------------------
    def _vocabulary(self, vocabulary: Sequence[str] | None) -> tuple[str, ...]:
        vocab = tuple(vocabulary) if vocabulary is not None else self.vocabulary
        if not vocab:
            raise PromptError("generic mode needs vocabulary=[class names] (this model has no default vocabulary)")
        return vocab

    @torch.no_grad()
    def classify(self, state: ImageState, sets: Sequence[PromptSet], vocabulary: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Class of each prompt set's best candidate: (indices (N,) into the vocabulary, probabilities (N,))."""
        vocab = self._vocabulary(vocabulary)
        _, scores, embeds = self.decode_sets(state, list(sets))
        best = embeds[torch.arange(len(sets)), scores.argmax(1)]
        probs = self.model.class_logits(best, self.model.embed_texts(vocab), no_object=False).softmax(-1)
        p, i = probs.max(-1)
        return i.cpu().numpy(), p.cpu().numpy()

    @torch.no_grad()
    def generic(self, state_or_image: ImageState | np.ndarray, vocabulary: Sequence[str] | None = None, threshold: float = 0.5, overlap: float = 0.8) -> GenericOutput:
        """Every object, no prompt: Mask2Former's panoptic inference over the object queries
        (classes by cosine similarity to the vocabulary's text embeddings); ``semantic`` is the
        label map of the panoptic segments."""
        from segprompt.universal.inference import panoptic_inference, semantic_from_segments

        state = self.encode(state_or_image) if isinstance(state_or_image, np.ndarray) else state_or_image
        vocab = self._vocabulary(vocabulary)
        feats = self._features(state)
        with self._autocast():
            out = self.model.decode(feats)[-1]
        cls = self.model.class_logits(out.object_embed[0].float(), self.model.embed_texts(vocab))
        tf = self.transform(state.original_size)
        masks = tf.upscale_logits(out.object_masks.float())[0]
        seg_masks, classes, scores = panoptic_inference(cls, masks, threshold, overlap)
        semantic = semantic_from_segments(seg_masks, classes)
        return GenericOutput(semantic.cpu().numpy(), seg_masks.cpu().numpy(), classes.cpu().numpy(), scores.cpu().numpy(), vocab)


def pick_by_clicks(logits: torch.Tensor, scores: torch.Tensor, sets: Sequence[PromptSet], tf: LongestSide) -> torch.Tensor:
    """(R,) index of each set's candidate: the most clicks agreed with, then the highest score.

    ``logits`` (R, P, l, l) in the padded model frame, ``scores`` (R, P). A click agrees with a
    candidate when the logit at its cell (nearest, ``(x, y)`` brought to the frame) is > 0 for a
    positive click and <= 0 for a negative one. (Reading the mask at the image size instead,
    :meth:`LongestSide.logits_at`, was tried: NoC@85 0.25 clicks worse on average over three seeds,
    plain and with zoom-in, within the noise; the cell rule stays.)"""
    r, p, side = logits.shape[0], logits.shape[1], logits.shape[-1]
    agree = torch.zeros(r, p)
    for i, s in enumerate(sets):
        if s.points is None or not len(s.points):
            continue
        xy = tf.apply_coords(s.points.coords) * (side / tf.target)
        col = torch.from_numpy(np.clip(np.floor(xy[:, 0]), 0, side - 1).astype(np.int64))
        row = torch.from_numpy(np.clip(np.floor(xy[:, 1]), 0, side - 1).astype(np.int64))
        inside = logits[i][:, row, col].cpu() > 0  # (P, N)
        positive = torch.from_numpy(s.points.labels == 1)
        agree[i] = (inside == positive).sum(1).float()
    # agreement first, the score only among the candidates tied on it (scores of sigmoid IoUs lie in [0, 1])
    return (agree * 2.0 + scores.float().cpu().clamp(0, 1)).argmax(1).to(logits.device)


def universal_tiny_path() -> Path:
    """Path of the shipped universal-tiny weights."""
    from segprompt.models.sam_tiny import bundled_asset

    return bundled_asset(ASSET, "`python scripts/train_universal_tiny.py` (see docs/universal.md)")


class UniversalTinySegmenter(UniversalSegmenter):
    name = "universal-tiny"


def create_universal_tiny(**kwargs: Any) -> UniversalSegmenter:
    """The bundled demo universal model; keyword arguments as for :class:`UniversalSegmenter` (not ``checkpoint``)."""
    if "checkpoint" in kwargs or "model" in kwargs:
        raise WeightsError("universal-tiny uses its bundled weights; for another checkpoint use create_segmenter('universal', checkpoint=...)")
    return UniversalTinySegmenter(checkpoint=universal_tiny_path(), **kwargs)
