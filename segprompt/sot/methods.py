"""Show-or-Tell methods: a segmenter + a class (its name, or its k references) -> one probability map.

A method turns a target image and one prompt per class into a ``(K, H, W)`` float32 stack of
per-class probability maps in ``[0, 1]`` (what :func:`segprompt.sot.merge_sot` merges), and counts
what that cost (forward passes, seconds, peak GPU memory):

.. code-block:: python

    from segprompt.sot.methods import ClassPrompt, create_method

    method = create_method("universal-reference")              # builds universal-tiny
    prompts = [ClassPrompt("disc", references=[(ref_image, ref_mask)]), ...]
    method.prepare(prompts)                                    # one-off work per reference set
    out = method.maps(target_image, prompts)
    out.maps       # (K, H, W) float32 in [0, 1], one map per prompted class, in prompt order
    out.cost       # Cost(seconds, encoder_passes, decoder_calls, peak_mem_mb)
    out.failed     # {class index: reason} for classes the method could not prompt (their map is 0)

Registered methods (:func:`list_methods`):

* ``universal-text`` (text): the universal decoder prompted with ``Text(class name)``; the map is the
  sigmoid of the logits of the best candidate (highest predicted IoU), upsampled to the image.
  All classes go in one decoder call. A closed-vocabulary model (universal-tiny) refuses a name
  with no word it knows: that class's map is 0 and it is listed in ``failed``.
* ``universal-reference`` (visual): the universal decoder prompted with
  ``Reference(image, mask)``; each of a class's k references is decoded (all classes and
  references of an image in one batched call), the best candidate's sigmoid taken, and the class
  map is the **mean over the k references** (``reference_mode="mean"``, default; the decoder takes
  one reference per prompt set, so this is how k-shot enters). ``reference_mode="first"`` decodes
  only the first reference (k-shot then equals 1-shot; kept for comparison).
* ``persam`` (visual): PerSAM on sam-tiny (:mod:`segprompt.models.persam`), k-shot through the mean
  of the k per-reference target embeddings, the map is ``probability(kind="sot")`` (ShowOrTell's
  ``PERSAM_model.py`` rule: the mean similarity inside PerSAM's final mask, 0 outside), clipped to
  ``[0, 1]`` (the similarity is a cosine in ``[-1, 1]``; below 0 it can never beat SoT's zero
  background map, so the fixed merge is unchanged by the clipping).

Not built yet (:data:`MISSING_METHODS`): CLIPSeg (text and visual prompt) and MaskCLIP (dense
open_clip similarity) from the issue; asking for them raises :class:`ConfigError` saying so.

Cost accounting: ``encoder_passes`` counts images through an image encoder (the target, and for
``universal-reference`` the reference images the segmenter had not encoded yet: it keeps the
features of the last 16 and more if one call needs them, so within a seed a reference is
encoded once, on the first image), ``decoder_calls`` counts mask-decoder calls (one batched call = 1; PerSAM: 3 per class,
its prior pass and two refinements). ``prepare`` does the per-reference-set work a method can
reuse over images (PerSAM's target embeddings) and reports it as its own :class:`Cost`.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from segprompt.errors import ConfigError, PromptError
from segprompt.registry import Registry

__all__ = [
    "ClassPrompt",
    "Cost",
    "METHODS",
    "MISSING_METHODS",
    "MethodOutput",
    "SotMethod",
    "create_method",
    "list_methods",
    "method_modality",
]


@dataclass(frozen=True)
class ClassPrompt:
    """The prompt of one class: its ``name`` (text methods) and its ``references``
    (visual methods): ``[(image (H, W, 3) uint8 RGB, mask (H, W) bool), ...]``, k of them."""

    name: str
    references: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple((np.asarray(i), np.asarray(m, bool)) for i, m in self.references))


@dataclass
class Cost:
    """What one call cost: wall seconds, images through an image encoder, mask-decoder calls, and the
    peak GPU memory in MiB (``None`` on CPU, where torch does not track it)."""

    seconds: float = 0.0
    encoder_passes: int = 0
    decoder_calls: int = 0
    peak_mem_mb: float | None = None

    @property
    def forward_passes(self) -> int:
        return int(self.encoder_passes + self.decoder_calls)

    def as_row(self) -> dict[str, Any]:
        return {
            "seconds": round(float(self.seconds), 5),
            "forward_passes": self.forward_passes,
            "encoder_passes": int(self.encoder_passes),
            "decoder_calls": int(self.decoder_calls),
            "peak_mem_mb": None if self.peak_mem_mb is None else round(float(self.peak_mem_mb), 1),
        }


@dataclass
class MethodOutput:
    """``maps``: (K, H, W) float32 in [0, 1]; ``cost``: :class:`Cost`; ``failed``: {class index: reason}."""

    maps: np.ndarray
    cost: Cost
    failed: dict[int, str] = field(default_factory=dict)


class _Meter:
    """Times a block and reads the peak GPU memory of ``device`` over it."""

    def __init__(self, device: str) -> None:
        self.cuda = str(device).startswith("cuda")
        self.cost = Cost()

    def __enter__(self) -> Cost:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._t0 = time.perf_counter()
        return self.cost

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.cost.peak_mem_mb = torch.cuda.max_memory_allocated() / 2**20
        self.cost.seconds = time.perf_counter() - self._t0


class SotMethod(abc.ABC):
    """One way of getting per-class probability maps. Subclasses set ``name``, ``modality``
    (``"text"`` or ``"visual"``) and ``segmenter_name``, and implement :meth:`_maps`."""

    name: str = ""
    modality: str = ""
    segmenter_name: str = ""

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    @property
    def device(self) -> str:
        return str(getattr(self.segmenter, "device", "cpu"))

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "modality": self.modality, "segmenter": self.segmenter_name}

    def prepare(self, prompts: Sequence[ClassPrompt]) -> Cost | None:
        """Work done once per reference set and reused for every image; ``None`` when a method has none."""
        return None

    def maps(self, image: np.ndarray, prompts: Sequence[ClassPrompt]) -> MethodOutput:
        """Per-class probability maps of ``image`` ((H, W, 3) uint8 RGB) for ``prompts`` (K classes).

        Returns a :class:`MethodOutput` whose ``maps`` are (K, H, W) float32 in ``[0, 1]``.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise PromptError(f"target image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if self.modality == "visual":
            for p in prompts:
                if not p.references:
                    raise PromptError(f"{self.name} needs references for class {p.name!r}; got none")
        if not prompts:  # every class failed upstream (no references): nothing to run
            return MethodOutput(np.zeros((0, *image.shape[:2]), np.float32), Cost())
        with _Meter(self.device) as cost:
            maps, failed = self._maps(image, list(prompts), cost)
        maps = np.clip(np.nan_to_num(np.asarray(maps, np.float32), nan=0.0), 0.0, 1.0)
        if maps.shape != (len(prompts), *image.shape[:2]):
            raise RuntimeError(f"{self.name} returned maps of shape {maps.shape}, expected {(len(prompts), *image.shape[:2])}")
        return MethodOutput(maps, cost, failed)

    @abc.abstractmethod
    def _maps(self, image: np.ndarray, prompts: list[ClassPrompt], cost: Cost) -> tuple[np.ndarray, dict[int, str]]:
        """(K, H, W) maps and {class index: reason} of failed classes; add passes to ``cost``."""


# --------------------------------------------------------------------------------- universal


def _best_probability(seg: Any, state: Any, logits: Any, scores: Any) -> np.ndarray:
    """(R, H, W) float32: sigmoid of each row's best candidate (highest predicted IoU) at the image size."""
    import torch

    rows = torch.arange(logits.shape[0])
    best = logits[rows, scores.argmax(1)][:, None]
    up = seg.transform(state.original_size).upscale_logits(best)[:, 0]
    return up.sigmoid().cpu().numpy().astype(np.float32)


class UniversalText(SotMethod):
    """``universal-text``: ``Text(class name)`` prompts, sigmoid of the best candidate's logits."""

    name, modality, segmenter_name = "universal-text", "text", "universal-tiny"

    def _maps(self, image: np.ndarray, prompts: list[ClassPrompt], cost: Cost) -> tuple[np.ndarray, dict[int, str]]:
        from segprompt.prompts import PromptSet, Text

        seg = self.segmenter
        before = seg.counts["image_encoder"]
        state = seg.encode(image)
        cost.encoder_passes += seg.counts["image_encoder"] - before  # 0 when the segmenter's cache had it
        out = np.zeros((len(prompts), *image.shape[:2]), np.float32)
        failed: dict[int, str] = {}
        ok = []
        known = getattr(seg.model.text, "word_ids", None)  # a closed vocabulary refuses unknown words
        for k, p in enumerate(prompts):
            try:
                if known is not None:
                    known(p.name)
                ok.append(k)
            except PromptError as exc:
                failed[k] = str(exc)
        if ok:
            sets = [PromptSet(text=Text(prompts[k].name)) for k in ok]
            logits, scores, _ = seg.decode_sets(state, sets)
            cost.decoder_calls += math.ceil(len(sets) / seg.max_rows)
            out[ok] = _best_probability(seg, state, logits, scores)
        return out, failed


class UniversalReference(SotMethod):
    """``universal-reference``: ``Reference(image, mask)`` prompts; a class's map is the mean over
    its k references of the best candidate's sigmoid (``reference_mode="mean"``), or the first
    reference's alone (``"first"``)."""

    name, modality, segmenter_name = "universal-reference", "visual", "universal-tiny"

    def __init__(self, segmenter: Any, reference_mode: str = "mean") -> None:
        super().__init__(segmenter)
        if reference_mode not in ("mean", "first"):
            raise ConfigError(f"universal-reference: reference_mode must be 'mean' or 'first', got {reference_mode!r}")
        self.reference_mode = reference_mode

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "reference_mode": self.reference_mode}

    def _maps(self, image: np.ndarray, prompts: list[ClassPrompt], cost: Cost) -> tuple[np.ndarray, dict[int, str]]:
        from segprompt.prompts import PromptSet, Reference

        seg = self.segmenter
        before = dict(seg.counts)
        state = seg.encode(image)
        sets, owner = [], []
        for k, p in enumerate(prompts):
            refs = p.references[:1] if self.reference_mode == "first" else p.references
            for ref_image, ref_mask in refs:
                sets.append(PromptSet(reference=Reference(ref_image, ref_mask)))
                owner.append(k)
        logits, scores, _ = seg.decode_sets(state, sets)
        # the target, and the reference images the segmenter had not encoded yet (it keeps an LRU of them)
        cost.encoder_passes += sum(seg.counts[k] - before[k] for k in ("image_encoder", "reference_encoder"))
        cost.decoder_calls += math.ceil(len(sets) / seg.max_rows)
        probs = _best_probability(seg, state, logits, scores)
        owner_arr = np.asarray(owner)
        out = np.stack([probs[owner_arr == k].mean(axis=0) for k in range(len(prompts))])
        return out, {}


# ------------------------------------------------------------------------------------ persam


class PerSam(SotMethod):
    """``persam``: PerSAM's k-shot map, ``probability(kind="sot")`` clipped to [0, 1]."""

    name, modality, segmenter_name = "persam", "visual", "persam"

    def _refs(self, p: ClassPrompt) -> list[Any]:
        from segprompt.prompts import Reference

        return [Reference(i, m) for i, m in p.references]

    def prepare(self, prompts: Sequence[ClassPrompt]) -> Cost:
        """Compute (and cache inside the segmenter) every class's target embedding once."""
        seg = self.segmenter
        before = dict(seg.counts)
        with _Meter(self.device) as cost:
            for p in prompts:
                seg.target_embedding(self._refs(p))
        cost.encoder_passes += seg.counts["image_encoder"] - before["image_encoder"]
        return cost

    def _maps(self, image: np.ndarray, prompts: list[ClassPrompt], cost: Cost) -> tuple[np.ndarray, dict[int, str]]:
        seg = self.segmenter
        before = dict(seg.counts)
        state = seg.encode(image)
        out = np.stack([seg.probability(state, self._refs(p), kind="sot") for p in prompts]) if prompts else np.zeros((0, *image.shape[:2]), np.float32)
        cost.encoder_passes += seg.counts["image_encoder"] - before["image_encoder"]
        cost.decoder_calls += seg.counts["mask_decoder"] - before["mask_decoder"]
        return out, {}


# ---------------------------------------------------------------------------------- registry

METHODS: Registry[type[SotMethod]] = Registry("SoT method")
METHODS.add("universal-text", UniversalText)
METHODS.add("universal-reference", UniversalReference)
METHODS.add("persam", PerSam)

#: methods named by the issue that are not built (none left; kept so a future gap says so clearly)
MISSING_METHODS: dict[str, str] = {}


def list_methods() -> list[str]:
    return METHODS.names()


def method_modality(name: str) -> str:
    """``"text"`` or ``"visual"`` for a registered method name."""
    return METHODS.get(name).modality


def segmenter_kwargs(name: str, device: str = "cpu") -> tuple[str, dict[str, Any]]:
    """``(segmenter name, kwargs)`` a method is built on; methods on the same pair share one segmenter."""
    cls = METHODS.get(name)
    kwargs: dict[str, Any] = {"device": device}
    if cls.segmenter_name == "persam":
        kwargs["reference_cache"] = 4096  # every class x shot of a run stays cached (a few KB each)
    return cls.segmenter_name, kwargs


SegmenterFactory = Callable[[str, dict[str, Any]], Any]


def create_method(
    name: str,
    segmenter: Any = None,
    *,
    device: str = "cpu",
    make_segmenter: SegmenterFactory | None = None,
    segmenter_spec: dict[str, Any] | None = None,
    **kwargs: Any,
) -> SotMethod:
    """The method registered as ``name``, on ``segmenter`` or on a new one (``make_segmenter(name,
    kwargs)``, default :func:`segprompt.models.create_segmenter`). ``segmenter_spec`` changes the
    segmenter a new one is built as: ``{"name": "clipseg-tiny"}`` another registered segmenter, any
    other key a keyword for it (``{"weights": "/data/clipseg", "learner_checkpoint": "runs/coop"}``).
    ``kwargs`` go to the method (``reference_mode=`` for ``universal-reference``)."""
    key = str(name).strip().lower()
    if key in MISSING_METHODS and key not in METHODS:
        raise ConfigError(f"SoT method {name!r} is not available: {MISSING_METHODS[key]}. Available: {', '.join(list_methods())}")
    cls = METHODS.get(name)
    if segmenter is None:
        seg_name, seg_kwargs = segmenter_kwargs(name, device)
        spec = dict(segmenter_spec or {})
        seg_name = str(spec.pop("name", seg_name))
        seg_kwargs.update(spec)
        if make_segmenter is None:
            from segprompt.models import create_segmenter

            segmenter = create_segmenter(seg_name, **seg_kwargs)
        else:
            segmenter = make_segmenter(seg_name, seg_kwargs)
    return cls(segmenter, **kwargs)


# ------------------------------------------------------------------ methods in their own modules
# (imported at the bottom: they subclass SotMethod from this module)
from segprompt.sot.methods_clipseg import ClipSegText, ClipSegVisual  # noqa: E402
from segprompt.sot.methods_maskclip import MaskClipText  # noqa: E402
from segprompt.sot.methods_prototype import PrototypeMatch  # noqa: E402

METHODS.add("clipseg", ClipSegText)
METHODS.add("clipseg-visual", ClipSegVisual)
METHODS.add("maskclip", MaskClipText)
METHODS.add("prototype", PrototypeMatch)
