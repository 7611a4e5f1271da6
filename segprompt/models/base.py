"""The Segmenter interface: image -> state (cacheable), state + prompt sets -> masks.

.. code-block:: python

    seg = create_segmenter("sam-tiny")
    state = seg.encode(image)                       # (H, W, 3) uint8 RGB
    pred = seg.segment(state, [PromptSet(points=Points.positive((120, 80)))])
    pred.masks    # (N, K, H, W) bool at the original image size
    pred.scores   # (N, K) float32 predicted quality (NaN where a model has none)
    pred.logits   # (N, K, h, w) float32 low-res logits for mask feedback, or None

Multimask policy (``multimask=`` on the segmenter or per call):

* ``"single"``: the model's single-output head (SAM ``multimask_output=False``), K = 1;
* ``"all"``: every candidate (SAM: 3), K = 3;
* ``"first"``: candidate 0 of the multimask head (what the PointPrompt code used), K = 1;
* ``"best"``: the candidate with the highest predicted score, K = 1;
* ``"oracle"``: the candidate with the highest IoU against ``targets``, K = 1;
* ``"auto"``: SAM's own advice: ``"best"`` for an ambiguous prompt (a single point and nothing
  else), ``"single"`` for everything else, K = 1 (``chosen`` is -1 where the single head answered).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from segprompt.errors import ConfigError, PromptError
from segprompt.prompts import PromptSet, as_prompt_sets

if TYPE_CHECKING:
    from segprompt.cache import EmbeddingCache

MultimaskPolicy = Literal["single", "all", "first", "best", "oracle", "auto"]
MULTIMASK_POLICIES: tuple[str, ...] = ("single", "all", "first", "best", "oracle", "auto")
#: the policies that keep one mask per prompt set (benchmarks, finetuning): all but ``"all"``
SINGLE_MASK_POLICIES: tuple[str, ...] = tuple(p for p in MULTIMASK_POLICIES if p != "all")
#: one line per policy, for ``--help`` texts and reports (the module docstring has the details)
MULTIMASK_DESCRIPTIONS: dict[str, str] = {
    "auto": "best of 3 for a lone point, the single-mask head otherwise (SAM's advice)",
    "single": "the single-mask head",
    "all": "all 3 candidates",
    "first": "candidate 0 (what the PointPrompt code uses)",
    "best": "the candidate with the highest predicted IoU",
    "oracle": "the candidate with the highest IoU against the ground truth",
    "model": "each model's own policy (its create_segmenter multimask: auto for SAM, SAM 2 and universal, the single-mask head for sam-tiny)",
}
#: the benchmarks' ``--multimask``: a policy that keeps one mask, or ``"model"`` (each model's own,
#: as the library, ``segment`` and napari use it)
BENCH_MULTIMASK_POLICIES: tuple[str, ...] = (*SINGLE_MASK_POLICIES, "model")


def multimask_help(policies: Sequence[str] = MULTIMASK_POLICIES) -> str:
    """A ``--help`` text listing ``policies`` with one phrase each, in one order everywhere."""
    return "; ".join(f"{p}: {MULTIMASK_DESCRIPTIONS[p]}" for p in (*MULTIMASK_POLICIES, "model") if p in policies) + "."


def check_policy(policy: str) -> str:
    if policy not in MULTIMASK_POLICIES:
        raise ConfigError(f"unknown multimask policy {policy!r}; use one of {', '.join(MULTIMASK_POLICIES)}")
    return policy


@dataclass
class ImageState:
    """What :meth:`Segmenter.encode` computed for one image.

    Attributes:
        original_size: (H, W) of the image given to ``encode``.
        input_size: (h, w) of the resized image inside the model input (before padding).
        features: model-specific arrays or tensors (SAM: ``{"embeddings": (1, C, h', w')}``).
        image: the RGB image itself, kept only by models that need pixels at decode time.
        key: cache signature of this state, when it came through the embedding cache.
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    features: dict[str, Any] = field(default_factory=dict)
    image: np.ndarray | None = None
    key: str | None = None


@dataclass
class Prediction:
    """Output of :meth:`Segmenter.segment` for N prompt sets.

    Attributes:
        masks: bool (N, K, H, W) at the original image size.
        scores: float32 (N, K) predicted quality; NaN where the model has no estimate.
        logits: float32 (N, K, h, w) low-resolution logits (SAM 256 x 256) or None.
        chosen: int64 (N,) index of the candidate kept by a K=1 policy, else None.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray | None = None
    chosen: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def best(self) -> np.ndarray:
        """bool (N, H, W): the candidate with the highest score of each set (first if K = 1)."""
        if self.masks.shape[1] == 1:
            return self.masks[:, 0]
        idx = np.nan_to_num(self.scores, nan=-np.inf).argmax(axis=1)
        return self.masks[np.arange(len(idx)), idx]

    def select(self, policy: MultimaskPolicy, targets: Sequence[np.ndarray] | np.ndarray | None = None) -> "Prediction":
        """Reduce K candidates to one per set by ``policy`` (``first``, ``best``, ``oracle``)."""
        check_policy(policy)
        n, k = self.scores.shape
        if policy in ("all", "single") or k == 1:
            return self
        if policy == "first":
            idx = np.zeros(n, np.int64)
        elif policy == "best":
            idx = np.nan_to_num(self.scores, nan=-np.inf).argmax(axis=1)
        else:
            if targets is None:
                raise PromptError("the 'oracle' multimask policy needs the target mask of every prompt set")
            targets = [np.asarray(t, bool) for t in (targets if not isinstance(targets, np.ndarray) or targets.ndim == 3 else [targets] * n)]
            if len(targets) != n:
                raise PromptError(f"oracle selection got {len(targets)} targets for {n} prompt sets")
            idx = np.empty(n, np.int64)
            for i, t in enumerate(targets):
                if t.shape != self.masks.shape[2:]:
                    raise PromptError(f"target {i} has shape {t.shape}, predictions have {self.masks.shape[2:]}")
                inter = (self.masks[i] & t).reshape(k, -1).sum(1)
                union = (self.masks[i] | t).reshape(k, -1).sum(1)
                iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
                idx[i] = int(iou.argmax())
        rows = np.arange(n)
        return Prediction(
            masks=self.masks[rows, idx][:, None],
            scores=self.scores[rows, idx][:, None],
            logits=None if self.logits is None else self.logits[rows, idx][:, None],
            chosen=idx,
        )


class Segmenter(abc.ABC):
    """Turns an image and prompt sets into masks. Subclasses register with ``@register_segmenter``.

    Subclasses set ``accepts`` (the prompt kinds they understand), and implement
    :meth:`_encode` and :meth:`_segment`. The public methods check inputs and apply the
    multimask policy so that every model behaves the same at the boundary.
    """

    name: str = "segmenter"
    accepts: frozenset[str] = frozenset()
    #: True when the model has a multimask head (K = 3 candidates)
    has_multimask: bool = False

    def __init__(
        self,
        multimask: MultimaskPolicy = "single",
        device: str = "cpu",
        precision: str = "fp32",
        cache: "EmbeddingCache | str | Path | None" = None,
    ) -> None:
        from segprompt.devices import check_device

        self.multimask: MultimaskPolicy = check_policy(multimask)  # type: ignore[assignment]
        self.device = check_device(device)
        self.precision = check_precision(precision)
        self.cache: EmbeddingCache | None = None
        if cache is not None:
            from segprompt.cache import EmbeddingCache

            self.cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)

    # -- public API ---------------------------------------------------------
    def encode(self, image: np.ndarray) -> ImageState:
        """Compute the image state of one (H, W, 3) uint8 RGB image.

        When the segmenter has an embedding cache (``cache=`` folder) and the model is
        cacheable, the state is read from disk if a valid entry exists, else computed and stored.
        """
        image = check_image(image)
        signature = self.cache_signature() if self.cache is not None else None
        if signature is None:
            return self._encode(image)

        def compute() -> tuple[dict[str, Any], dict[str, Any]]:
            state = self._encode(image)
            return dict(state.features), {"original_size": list(state.original_size), "input_size": list(state.input_size)}

        tensors, extra, key = self.cache.get_or_compute(image, signature, compute)
        features = {k: v.to(self.device) for k, v in tensors.items()}
        return ImageState(tuple(extra["original_size"]), tuple(extra["input_size"]), features, key=key)

    def segment(
        self,
        state: ImageState,
        prompts: PromptSet | Sequence[PromptSet],
        *,
        multimask: MultimaskPolicy | None = None,
        targets: Sequence[np.ndarray] | np.ndarray | None = None,
    ) -> Prediction:
        """Decode every prompt set in one batched call where the model allows it.

        Args:
            state: from :meth:`encode` on the same segmenter.
            prompts: one :class:`PromptSet` or a list (N); each gives one output.
            multimask: override of the segmenter's policy for this call.
            targets: bool (H, W) masks, one per prompt set (or one for all), for ``"oracle"``.
        """
        policy = check_policy(multimask or self.multimask)
        sets = as_prompt_sets(prompts)
        if not sets:
            raise PromptError("segment() needs at least one prompt set")
        for i, s in enumerate(sets):
            extra = s.kinds - self.accepts
            if extra:
                raise PromptError(
                    f"model {self.name!r} does not accept {', '.join(sorted(extra))} prompts "
                    f"(prompt set {i}); it accepts {', '.join(sorted(self.accepts))}"
                )
            if s.is_empty():
                raise PromptError(f"prompt set {i} is empty")
            s.check(state.original_size)
        if policy == "auto":
            return self._segment_auto(state, sets)
        want_multi = self.has_multimask and policy != "single"
        pred = self._segment(state, sets, multimask_output=want_multi, select=policy if policy in ("first", "best") else None)
        if want_multi and policy != "all" and pred.masks.shape[1] > 1:
            pred = pred.select(policy, targets)
        return pred

    def _segment_auto(self, state: ImageState, sets: list[PromptSet]) -> Prediction:
        ambiguous = [i for i, s in enumerate(sets) if self.has_multimask and s.kinds == {"points"} and len(s.points) == 1]
        rest = [i for i in range(len(sets)) if i not in set(ambiguous)]
        parts: list[tuple[list[int], Prediction]] = []
        if ambiguous:
            parts.append((ambiguous, self._segment(state, [sets[i] for i in ambiguous], multimask_output=True, select="best").select("best")))
        if rest:
            single = self._segment(state, [sets[i] for i in rest], multimask_output=False)
            single.chosen = np.full(len(rest), -1, np.int64)
            parts.append((rest, single))
        if len(parts) == 1 and parts[0][0] == list(range(len(sets))):
            return parts[0][1]
        first = parts[0][1]
        n = len(sets)
        masks = np.zeros((n, *first.masks.shape[1:]), bool)
        scores = np.zeros((n, 1), np.float32)
        logits = None if first.logits is None else np.zeros((n, *first.logits.shape[1:]), np.float32)
        chosen = np.zeros(n, np.int64)
        for idx, pred in parts:
            masks[idx], scores[idx], chosen[idx] = pred.masks, pred.scores, pred.chosen
            if logits is not None and pred.logits is not None:
                logits[idx] = pred.logits
        return Prediction(masks=masks, scores=scores, logits=logits, chosen=chosen)

    def predict(self, image: np.ndarray, prompts: PromptSet | Sequence[PromptSet], **kwargs: Any) -> Prediction:
        """``encode`` then ``segment`` in one call."""
        return self.segment(self.encode(image), prompts, **kwargs)

    # -- for subclasses -----------------------------------------------------
    @abc.abstractmethod
    def _encode(self, image: np.ndarray) -> ImageState: ...

    @abc.abstractmethod
    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        """Decode ``prompts``. ``select`` (``"first"`` / ``"best"``) lets a model keep one
        candidate per set before producing full-size masks (cheaper); a model may ignore it
        and return all K candidates, and the caller then selects."""

    def cache_signature(self) -> dict[str, Any] | None:
        """What determines this model's image state (architecture, weights hash, preprocessing).

        ``None`` (the default) means the state is not worth caching (e.g. it is the image itself).
        Models whose ``features`` are all tensors return a JSON-able dict here to be cacheable.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (name, settings) recorded in run configs."""
        return {"name": self.name, "multimask": self.multimask, "device": self.device, "precision": self.precision}


PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def check_image(image: np.ndarray) -> np.ndarray:
    """Check that ``image`` is (H, W, 3) uint8 RGB; raise PromptError saying how to convert it."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise PromptError(
            f"images must be (H, W, 3) uint8 RGB, got shape {arr.shape} dtype {arr.dtype}; "
            "convert with segprompt.data.to_rgb_uint8"
        )
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise PromptError(f"image of shape {arr.shape} is too small to segment")
    return np.ascontiguousarray(arr)
