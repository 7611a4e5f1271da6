"""``prototype``: training-free prototype matching on any dense vision encoder, refined by SAM.

A visual-reference Segmenter: the reference's object becomes one feature vector (its prototype),
its cosine similarity with every cell of the target's feature map gives a location map, and SAM
turns the map's best and worst point into a mask.

.. code-block:: python

    seg = create_segmenter("prototype")                          # features="sam-tiny", refine="sam"
    seg = create_segmenter("prototype", features="timm:vit_small_patch14_dinov2",
                           features_kwargs={"pretrained": True})  # DINOv2 through timm, sam-tiny refines
    state = seg.encode(target_image)                               # (H, W, 3) uint8 RGB
    pred = seg.segment(state, PromptSet(reference=Reference(ref_image, ref_mask)))
    pred.masks                                                     # (1, 1, H, W) bool
    seg.probability(state, [Reference(i, m) for i, m in shots])   # (H, W) float32 in [0, 1]

Features (``features=``, a name of :data:`FEATURES` or a built :class:`FeatureExtractor`):

* ``"sam-tiny"`` (default): the bundled sam-tiny's image-encoder embedding (no download). When the
  refining SAM (``base``) is the same model, one encoder pass serves both;
* ``"sam"``: a SAM checkpoint's embedding (``features_kwargs={"checkpoint": ...}``; shared with
  ``base="sam"`` when the kwargs agree);
* ``"timm:<model name>"``: a timm ViT's patch tokens (``forward_features``, prefix tokens dropped)
  through :func:`segprompt.backbones.pyramid.create_pyramid` ``("timm", ...)`` and
  :func:`segprompt.backbones.openclip.timm_vit_tower`; ``features_kwargs``: ``pretrained``,
  ``checkpoint``, ``img_size``, ``model`` (a built timm model), as ``create_timm_pyramid``;
* ``"open_clip:<model name>"``: an open_clip ViT's last-block patch tokens after ``ln_post``
  (``features_kwargs``: ``pretrained``, ``img_size``, ``model``).

Every extractor resizes the longest side to its input size and pads bottom-right (SAM's frame,
:class:`segprompt.models.resize.LongestSide`); the grid maps back to the image by the same two
bilinear steps as SAM's mask logits.

Steps (one target image, k references):

1. **prototype**: the reference mask is downsampled to the feature grid *by area* (the share of
   each cell it covers, :meth:`LongestSide.mask_to_lowres`); the prototype is the mean feature of
   the cells covered >= 0.5 (``min_coverage``). An object smaller than every cell (no cell reaches
   0.5) falls back to the area-weighted mean ``sum(f * cover) / sum(cover)``. k references: the
   mean of the k per-reference prototypes (each unnormalised, as PerSAM's k-shot mean);
2. **similarity**: cosine of the prototype with every target cell (gh, gw), upsampled
   bilinearly to the image (H, W) (to the padded square, crop, to the original size);
3. **points**: positive at the similarity's argmax, negative at its argmin, (x, y) pixels
   (:func:`segprompt.models.persam.location_prior`, PerSAM's ``point_selection(topk=1)``);
4. **refinement** (``refine="sam"``): SAM decodes the two points (plus, with ``box=True``, the
   tight box of the similarity region ``>= threshold``) with 3 candidates, the best predicted
   IoU kept; then PerSAM's cascade (``cascade`` passes, 0-2): (a) points + that mask's logits,
   (b) points + logits + its tight box, each keeping the best of 3 (b is skipped when a gave an
   empty mask). ``refine="none"``: the mask is the similarity region itself (no SAM call).

``threshold=None`` (default) puts the region at the midpoint ``(max + min) / 2`` of the image-size
similarity (GF-SAM's ``mean_sim_map_half``); a float is an absolute cosine.

:meth:`PrototypeSegmenter.probability` kinds (all (H, W) float32 in [0, 1]):

* ``"sot"`` (default): ShowOrTell's rule for Matcher (``models/Matcher/matcher/Matcher.py``,
  ``predict``: ``(dino_confidence_rsz * mask).sum() / mask.sum() * mask``) and GF-SAM
  (``models/GFSAM/matcher/GFSAM.py``, ``triplet_selection_b``): the mean similarity inside the
  final mask, that constant on the mask and 0 elsewhere; clipped to [0, 1] (a negative cosine
  never beats SoT's zero background anyway);
* ``"similarity"``: the clipped cosine map itself (no SAM call);
* ``"mask"``: the sigmoid of the final SAM logits at the image size (``refine="sam"`` only).

How this differs from Matcher (Liu et al., ICLR 2024; aim-uofa/Matcher, as vendored in
FocoosAI/ShowOrTell ``models/Matcher/matcher/Matcher.py``) and GF-SAM (ANDYZAQ/GF-SAM,
``matcher/GFSAM.py``), the published methods of this family:

* Matcher matches *every* reference patch inside the mask (avg-pooled mask ``> 0``, i.e. any
  coverage) to target patches by bidirectional Hungarian matching (forward, then reverse
  consistency), keeps the better half of the matches as points (or k-means++ centres), samples
  many subsets of 1-6 points (its robust prompt sampler), runs SAM's automatic generator on them,
  scores each mask by EMD / purity / coverage and merges the top ones. We keep one prototype
  (the mean feature, cells covered >= 0.5), one positive and one negative point, and one mask:
  cheaper (3 decoder calls), but a target with several instances gets the one at the argmax.
* Matcher's and GF-SAM's confidence map is the *mean of the per-cell cosines* over the
  reference cells (``S[ref_cells].mean(0)``); ours is the cosine with the mean feature.
* GF-SAM prompts SAM with the top-k cells of a map that mixes the max and the mean similarity
  and subtracts a background-reference map, clusters the resulting masks and keeps the
  consistent ones; no negative point. We use PerSAM's positive/negative pair and cascade instead.
* Both resize to 518 x 518 (stretching); we resize the longest side and pad, like SAM.
"""

from __future__ import annotations

import abc
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch

from segprompt.errors import ConfigError, PromptError
from segprompt.models.base import ImageState, MultimaskPolicy, Prediction, Segmenter
from segprompt.models.persam import cascade_refine, cosine_map, location_prior, persam_box
from segprompt.models.resize import LongestSide
from segprompt.prompts import PromptSet, Reference, as_prompt_sets
from segprompt.registry import Registry

log = logging.getLogger(__name__)

PROBABILITY_KINDS = ("sot", "similarity", "mask")
REFINE_MODES = ("sam", "none")

#: a reference, k references, or a prototype already computed ((D,) tensor)
RefOrPrototype = Union[Reference, Sequence[Reference], torch.Tensor]


def _check_choice(what: str, value: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ConfigError(f"unknown {what} {value!r}; use one of {', '.join(options)}")
    return value


# ----------------------------------------------------------------------- feature extractors --
class FeatureExtractor(abc.ABC):
    """A dense image encoder: (H, W, 3) uint8 RGB -> (1, D, g, g) float32 features on a square grid
    over the model input, the image resized longest-side to ``img_size`` and padded bottom-right."""

    name: str = "features"

    @property
    @abc.abstractmethod
    def img_size(self) -> int:
        """Side of the square model input."""

    def transform(self, original_size: tuple[int, int]) -> LongestSide:
        return LongestSide(self.img_size, tuple(original_size))

    @abc.abstractmethod
    def features(self, image: np.ndarray) -> torch.Tensor:
        """(1, D, g, g) float32 features of one (H, W, 3) uint8 RGB image."""

    def describe(self) -> dict[str, Any]:
        return {"features": self.name}


class SamFeatures(FeatureExtractor):
    """The image-encoder embedding of a :class:`segprompt.models.sam.SamSegmenter` (its ``encode``,
    embedding cache included)."""

    def __init__(self, sam: Any, name: str = "sam") -> None:
        self.sam, self.name = sam, name

    @property
    def img_size(self) -> int:
        return int(self.sam.arch.img_size)

    def transform(self, original_size: tuple[int, int]) -> LongestSide:
        return self.sam.transform(original_size)

    def features(self, image: np.ndarray) -> torch.Tensor:
        return self.sam.encode(image).features["embeddings"].float()

    def describe(self) -> dict[str, Any]:
        return {"features": self.name, "model": self.sam.describe()}


class PyramidFeatures(FeatureExtractor):
    """The base map of a :class:`segprompt.backbones.pyramid.VisionPyramid` (a timm or open_clip
    ViT's patch tokens after the final norm; the pyramid neck is not used)."""

    def __init__(self, pyramid: Any, name: str, device: str = "cpu") -> None:
        self.pyramid = pyramid.to(device).eval()
        self.name, self.device = name, device

    @property
    def img_size(self) -> int:
        return int(self.pyramid.img_size)

    @torch.no_grad()
    def features(self, image: np.ndarray) -> torch.Tensor:
        tf = self.transform(image.shape[:2])
        pixels = torch.from_numpy(np.array(tf.apply_image(image), np.float32)).permute(2, 0, 1)[None]
        x = tf.pad(pixels.to(self.device))
        return self.pyramid.base_map(x, sizes=[tf.input_size]).float()


def _sam_features(kind: str) -> Callable[..., FeatureExtractor]:
    def make(model_name: str, device: str, precision: str, **kwargs: Any) -> FeatureExtractor:
        from segprompt.models.registry import create_segmenter

        if model_name:
            raise ConfigError(f"features {kind!r} takes no model name (got {kind}:{model_name}); pass checkpoint= in features_kwargs")
        return SamFeatures(create_segmenter(kind, device=device, precision=precision, **kwargs), name=kind)

    return make


def _pyramid_features(kind: str) -> Callable[..., FeatureExtractor]:
    def make(model_name: str, device: str, precision: str, **kwargs: Any) -> FeatureExtractor:
        from segprompt.backbones.pyramid import create_pyramid

        if not model_name and kwargs.get("model") is None:
            raise ConfigError(f"features {kind!r} need a model name, e.g. '{kind}:vit_small_patch14_dinov2', or model= in features_kwargs")
        if model_name:
            kwargs["model_name"] = model_name
        pyramid = create_pyramid(kind, out_channels=1, scales=(1.0,), **kwargs)  # the neck is unused: keep it 1 channel
        return PyramidFeatures(pyramid, f"{kind}:{model_name or type(kwargs['model']).__name__}", device)

    return make


#: feature extractor kinds: ``features="kind"`` or ``"kind:model name"``
FEATURES: Registry[Callable[..., FeatureExtractor]] = Registry("prototype feature extractor")
FEATURES.add("sam-tiny", _sam_features("sam-tiny"))
FEATURES.add("sam", _sam_features("sam"))
FEATURES.add("timm", _pyramid_features("timm"))
FEATURES.add("open-clip", _pyramid_features("open_clip"), "openclip")


def split_features_name(spec: str) -> tuple[str, str]:
    """``"timm:vit_small_patch14_dinov2"`` -> (``"timm"``, ``"vit_small_patch14_dinov2"``), kind canonical."""
    kind, _, model_name = str(spec).partition(":")
    return FEATURES.resolve(kind), model_name.strip()


def create_feature_extractor(spec: str, device: str = "cpu", precision: str = "fp32", **kwargs: Any) -> FeatureExtractor:
    """The extractor named ``spec`` (``"sam-tiny"``, ``"sam"``, ``"timm:<name>"``, ``"open_clip:<name>"``)."""
    kind, model_name = split_features_name(spec)
    return FEATURES.get(kind)(model_name, device, precision, **kwargs)


# ----------------------------------------------------------------------- prototype rules -----
def prototype_of(features: torch.Tensor, coverage: torch.Tensor | np.ndarray, min_coverage: float = 0.5) -> torch.Tensor:
    """One reference's prototype: the mean of ``features`` (D, g, g) over the cells whose mask
    ``coverage`` (g, g) in [0, 1] is >= ``min_coverage``; the coverage-weighted mean when none is."""
    cover = torch.as_tensor(np.asarray(coverage, np.float32), device=features.device)
    if float(cover.sum()) <= 0:
        raise PromptError("the reference mask covers no feature cell")
    cells = cover >= min_coverage
    if bool(cells.any()):
        return features[:, cells].mean(dim=1)
    log.debug("no cell is covered >= %s by the reference mask; using the area-weighted mean", min_coverage)
    return (features * cover).sum(dim=(1, 2)) / cover.sum()


def _digest(ref: Reference) -> str:
    h = hashlib.sha1()
    for arr in (ref.image, np.packbits(ref.mask)):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


@dataclass
class PrototypeResult:
    """What one run computed on one target image.

    Attributes:
        points: positive (argmax) and negative (argmin) point, (x, y) target-image pixels.
        similarity: float32 (g, g) cosine on the extractor's grid (padded square frame).
        similarity_image: float32 (H, W) that map at the image size.
        region: bool (H, W) ``similarity_image >= threshold``.
        masks: bool (K, H, W) candidates of the last pass (K = 3 with SAM, 1 for ``refine="none"``).
        scores: float32 (K,) SAM's predicted IoU (``"none"``: the mean similarity in the region).
        logits: float32 (K, l, l) SAM's low-res logits, or None without SAM.
        best: index of the answer among ``masks``.
    """

    points: Any
    similarity: np.ndarray
    similarity_image: np.ndarray
    region: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray | None
    best: int

    @property
    def mask(self) -> np.ndarray:
        return self.masks[self.best]


# ----------------------------------------------------------------------- the segmenter -------
class PrototypeSegmenter(Segmenter):
    """Prototype matching refined by SAM (module docstring).

    Args:
        features: extractor name (``"sam-tiny"``, ``"sam"``, ``"timm:<name>"``, ``"open_clip:<name>"``)
            or a built :class:`FeatureExtractor`; ``features_kwargs`` go to its factory.
        base: the refining SAM, a registry name (``sam-tiny``, ``sam``) or a built SamSegmenter;
            ``base_kwargs`` / ``checkpoint`` (shortcut) go to ``create_segmenter(base, ...)``.
        refine: ``"sam"`` (default) or ``"none"`` (the similarity region is the mask; no SAM built
            unless the features need it).
        box: add the tight box of the similarity region to the first SAM prompt (default False).
        threshold: the similarity region's cosine threshold; None: midpoint of min and max.
        cascade: PerSAM's post-refinement passes after the first decode, 0, 1 or 2 (default 2).
        min_coverage: share of a cell the reference mask must cover to enter the prototype (0.5).
        probability: default kind of :meth:`probability`: ``"sot"``, ``"similarity"`` or ``"mask"``.
        reference_cache: how many reference prototypes to keep (LRU; they repeat over images).
        multimask, device, precision, cache: as every Segmenter (cache goes to the SAM).
    """

    name = "prototype"
    accepts = frozenset({"reference"})
    has_multimask = True

    def __init__(
        self,
        features: str | FeatureExtractor = "sam-tiny",
        features_kwargs: Mapping[str, Any] | None = None,
        base: str | Segmenter = "sam-tiny",
        base_kwargs: Mapping[str, Any] | None = None,
        *,
        checkpoint: str | None = None,
        refine: str = "sam",
        box: bool = False,
        threshold: float | None = None,
        cascade: int = 2,
        min_coverage: float = 0.5,
        probability: str = "sot",
        reference_cache: int = 32,
        multimask: MultimaskPolicy = "best",
        device: str = "cpu",
        precision: str = "fp32",
        cache: Any = None,
    ) -> None:
        super().__init__(multimask=multimask, device=device, precision=precision)
        self.refine = _check_choice("refine mode", refine, REFINE_MODES)
        self.probability_kind = _check_choice("probability kind", probability, PROBABILITY_KINDS)
        if self.refine == "none" and self.probability_kind == "mask":
            raise ConfigError("probability='mask' needs SAM's logits: use refine='sam'")
        if cascade not in (0, 1, 2):
            raise ConfigError(f"cascade must be 0, 1 or 2 passes, got {cascade!r}")
        if not 0.0 < float(min_coverage) <= 1.0:
            raise ConfigError(f"min_coverage must be in (0, 1], got {min_coverage!r}")
        self.box, self.cascade, self.min_coverage = bool(box), int(cascade), float(min_coverage)
        self.threshold = None if threshold is None else float(threshold)
        self.has_multimask = self.refine == "sam"
        self.base = self._build_base(features, base, base_kwargs, checkpoint, cache)
        self.extractor = self._build_extractor(features, dict(features_kwargs or {}), base, base_kwargs, checkpoint)
        self.shared = isinstance(self.extractor, SamFeatures) and self.extractor.sam is self.base
        self.reference_cache = int(reference_cache)
        self._prototypes: OrderedDict[str, torch.Tensor] = OrderedDict()
        #: forward passes since creation (cost accounting): SAM's image encoder, the separate
        #: feature extractor (0 when SAM's embedding is the feature), SAM's mask decoder
        self.counts: dict[str, int] = {"image_encoder": 0, "feature_encoder": 0, "mask_decoder": 0}

    # -- construction ----------------------------------------------------------------------
    def _build_base(self, features: Any, base: Any, base_kwargs: Any, checkpoint: Any, cache: Any) -> Any:
        from segprompt.models.registry import create_segmenter
        from segprompt.models.sam import SamSegmenter

        needs = self.refine == "sam" or (isinstance(features, str) and split_features_name(features)[0] == _base_name(base))
        if not isinstance(base, str):
            if base_kwargs or checkpoint is not None:
                raise ConfigError("base_kwargs / checkpoint go with a base given by name, not with a built segmenter")
        elif needs:
            kwargs = dict(base_kwargs or {})
            if checkpoint is not None:
                kwargs["checkpoint"] = checkpoint
            base = create_segmenter(base, device=self.device, precision=self.precision, cache=cache, **kwargs)
        else:
            return None
        if not isinstance(base, SamSegmenter):
            raise ConfigError(f"prototype refines with a segment-anything segmenter (sam, sam-tiny), got {type(base).__name__}")
        return base

    def _build_extractor(self, features: Any, kwargs: dict, base: Any, base_kwargs: Any, checkpoint: Any) -> FeatureExtractor:
        if isinstance(features, FeatureExtractor):
            if kwargs:
                raise ConfigError("features_kwargs go with features given by name, not with a built extractor")
            return features
        kind, model_name = split_features_name(features)
        same_base = dict(base_kwargs or {}, **({"checkpoint": checkpoint} if checkpoint is not None else {}))
        if self.base is not None and kind == _base_name(base) and not model_name and (not kwargs or kwargs == same_base):
            return SamFeatures(self.base, name=kind)  # one SAM encoder pass serves features and refinement
        return create_feature_extractor(features, device=self.device, precision=self.precision, **kwargs)

    # -- image state ---------------------------------------------------------------------------
    def encode(self, image: np.ndarray) -> ImageState:
        from segprompt.models.base import check_image

        image = check_image(image)
        if self.base is not None:
            self.counts["image_encoder"] += 1
            state = self.base.encode(image)
        else:
            tf = self.extractor.transform(image.shape[:2])
            state = ImageState(tf.original_size, tf.input_size, {})
        if not self.shared:
            self.counts["feature_encoder"] += 1
            state.features["dense"] = self.extractor.features(image)
        return state

    def _encode(self, image: np.ndarray) -> ImageState:
        return self.encode(image)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            features=self.extractor.describe(),
            base=None if self.base is None else self.base.describe(),
            refine=self.refine,
            box=self.box,
            threshold=self.threshold,
            cascade=self.cascade,
            min_coverage=self.min_coverage,
            probability=self.probability_kind,
        )
        return out

    def dense(self, state: ImageState) -> torch.Tensor:
        """(D, g, g) float32 target features of ``state``."""
        key = "embeddings" if self.shared else "dense"
        if key not in state.features:
            raise PromptError(f"this image state has no {key!r} features: encode the image with this prototype segmenter")
        return state.features[key][0].float()

    # -- prototypes ----------------------------------------------------------------------------
    def prototype(self, reference: RefOrPrototype) -> torch.Tensor:
        """(D,) prototype of one or k references (the mean of the per-reference prototypes);
        a (D,) tensor passes through (a prototype computed before)."""
        if isinstance(reference, torch.Tensor):
            if reference.ndim != 1:
                raise PromptError(f"a prototype is a (D,) tensor, got shape {tuple(reference.shape)}")
            return reference
        refs = [reference] if isinstance(reference, Reference) else list(reference)
        if not refs or not all(isinstance(r, Reference) for r in refs):
            raise PromptError("prototype matching needs at least one Reference(image, mask)")
        return torch.stack([self._one_prototype(r) for r in refs]).mean(dim=0)

    def _one_prototype(self, ref: Reference) -> torch.Tensor:
        key = _digest(ref)
        if key in self._prototypes:
            self._prototypes.move_to_end(key)
            return self._prototypes[key]
        self.counts["image_encoder" if self.shared else "feature_encoder"] += 1
        feats = self.extractor.features(ref.image)[0].float()
        coverage = self.extractor.transform(ref.mask.shape).mask_to_lowres(ref.mask, feats.shape[-1])
        proto = prototype_of(feats, coverage, self.min_coverage)
        if self.reference_cache > 0:
            self._prototypes[key] = proto
            while len(self._prototypes) > self.reference_cache:
                self._prototypes.popitem(last=False)
        return proto

    def similarity(self, state: ImageState, reference: RefOrPrototype) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid (g, g), image (H, W)) cosine similarity of the prototype with the target cells."""
        feats = self.dense(state)
        grid = cosine_map(self.prototype(reference).to(feats.device).float(), feats)
        tf = self.extractor.transform(state.original_size)
        return grid, tf.upscale_logits(grid[None, None])[0, 0]

    # -- the run -------------------------------------------------------------------------------
    def _region(self, sim: torch.Tensor) -> np.ndarray:
        thr = self.threshold if self.threshold is not None else 0.5 * float(sim.max() + sim.min())
        region = (sim >= thr).cpu().numpy()
        if not region.any():  # an absolute threshold above the map: keep the argmax pixel
            region.flat[int(sim.argmax())] = True
        return region

    def _decode(self, state: ImageState, prompt: PromptSet) -> Prediction:
        self.counts["mask_decoder"] += 1
        return self.base.segment(state, prompt, multimask="all")

    @torch.no_grad()
    def run(self, state: ImageState, reference: RefOrPrototype) -> PrototypeResult:
        """Steps 1-4 of the module docstring on one target image (``state`` from :meth:`encode`)."""
        grid, sim = self.similarity(state, reference)
        points = location_prior(sim.cpu())
        region = self._region(sim)
        sim_np, grid_np = sim.cpu().numpy().astype(np.float32), grid.cpu().numpy().astype(np.float32)
        if self.refine == "none":
            score = np.array([sim_np[region].mean()], np.float32)
            return PrototypeResult(points, grid_np, sim_np, region, region[None], score, None, 0)
        first = PromptSet(points=points, box=persam_box(region) if self.box else None)
        pred = self._decode(state, first)
        masks, scores, logits, best = cascade_refine(lambda prompt: self._decode(state, prompt), points, pred, self.cascade)
        return PrototypeResult(points, grid_np, sim_np, region, masks, scores, logits, best)

    def segment(self, state: ImageState, prompts: PromptSet | Sequence[PromptSet], **kwargs: Any) -> Prediction:
        for i, s in enumerate(as_prompt_sets(prompts)):
            if s.reference is None:
                raise PromptError(
                    f"prototype needs a visual reference in every prompt set (prompt set {i} has none): "
                    "PromptSet(reference=Reference(image, mask))"
                )
        return super().segment(state, prompts, **kwargs)

    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        results = [self.run(state, s.reference) for s in prompts]
        has_logits = results[0].logits is not None
        if multimask_output:
            return Prediction(
                masks=np.stack([r.masks for r in results]),
                scores=np.stack([r.scores for r in results]).astype(np.float32),
                logits=np.stack([r.logits for r in results]).astype(np.float32) if has_logits else None,
            )
        return Prediction(
            masks=np.stack([r.mask for r in results])[:, None],
            scores=np.array([[r.scores[r.best]] for r in results], np.float32),
            logits=np.stack([r.logits[r.best] for r in results])[:, None].astype(np.float32) if has_logits else None,
            chosen=np.array([r.best for r in results], np.int64) if has_logits else None,
        )

    def probability(self, state: ImageState, reference: RefOrPrototype, kind: str | None = None) -> np.ndarray:
        """float32 (H, W) in [0, 1]: the reference's object in the target image, for SoT's merging
        (kinds ``"sot"``, ``"similarity"``, ``"mask"``: module docstring)."""
        kind = _check_choice("probability kind", kind or self.probability_kind, PROBABILITY_KINDS)
        if kind == "similarity":
            return np.clip(self.similarity(state, reference)[1].cpu().numpy(), 0.0, 1.0).astype(np.float32)
        if kind == "mask" and self.refine == "none":
            raise ConfigError("probability kind 'mask' needs SAM's logits: use refine='sam'")
        res = self.run(state, reference)
        if kind == "mask":
            low = torch.as_tensor(res.logits[res.best])[None, None]
            return self.base.transform(state.original_size).upscale_logits(low)[0, 0].sigmoid().numpy().astype(np.float32)
        mask = res.mask
        if not mask.any():
            return np.zeros(mask.shape, np.float32)
        return (np.clip(float(res.similarity_image[mask].mean()), 0.0, 1.0) * mask).astype(np.float32)


def _base_name(base: Any) -> str | None:
    """Canonical registry name of the base (a built segmenter: its ``name``), None if unknown."""
    from segprompt.models.registry import SEGMENTERS

    name = base if isinstance(base, str) else getattr(base, "name", None)
    try:
        return SEGMENTERS.resolve(name) if isinstance(name, str) else None
    except ConfigError:
        return None
