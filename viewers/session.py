"""The plugin's logic without Qt: image slices, embeddings, prompts, decoding, recording.

:class:`SegmentationSession` is what the dock widget drives; it imports neither napari nor Qt,
so it is tested (and benchmarked) on its own:

* :class:`ImageSource`: one napari image layer's data (2-D grey / RGB of any dtype, or a 3-D
  stack, numpy or lazy dask/zarr) served slice by slice as ``(H, W, 3) uint8`` through
  :func:`segprompt.data.to_rgb_uint8` (the one documented normalisation);
* :class:`EmbeddingLRU`: the image states of the last ``capacity`` slices in memory; the
  segmenter's own on-disk cache (``cache=``) sits behind it when enabled;
* :func:`encode_with_progress`: ``Segmenter.encode`` with per-block progress and a cancel flag
  for SAM-style encoders (forward pre-hooks on ``model.image_encoder.blocks``), so a long
  encode can be stopped between two transformer blocks;
* :func:`build_prompt_set`: the prompt layers' data (napari ``(row, col)`` order) -> a
  :class:`~segprompt.prompts.PromptSet` in ``(x, y)`` (conversion in :mod:`viewers.coords`);
* :class:`ObjectRecorder`: every prompt step of one object (cumulative points, box, mask, time)
  as a :class:`pointprompt.trajectory.Trajectory` with ``source="napari"``;
* :meth:`SegmentationSession.segment_everything`: every object of a slice without prompts
  (:func:`segprompt.everything.segment_everything`, with progress and cancel) as a label map,
  and :func:`instances_write`: where those instances go in the committed-objects label image;
* :meth:`SegmentationSession.propagate`: the prompts of several slices of a 3-D stack propagated
  through it (:mod:`segprompt.volumes`: the model's own propagation, e.g. SAM 2's video memory,
  else the slice-by-slice fallback), with progress and cancel; :func:`volume_write` puts the
  result into the committed-objects label volume, and :meth:`SegmentationSession.finish_volume`
  closes the recordings of the prompted slices.

Recording on 3-D stacks: the recording of an object is per slice (``image_id`` ``<name>_z0007``,
``meta["slice"]``), and every step also names its slice (``extra["slice"]``), so each click keeps
the slice it was made on; a propagated object adds ``meta["propagation"]`` (direction, method,
the prompted slices, the slices labelled). Readers of the trajectory format ignore what they do
not know, so files stay readable by older versions.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np

from segprompt.data.io import to_rgb_uint8
from segprompt.errors import DataError, PromptError
from segprompt.models.base import ImageState, Segmenter
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet, Reference, Scribble, Text

from viewers.coords import clip_xy, rc_to_xy, slice_of

log = logging.getLogger(__name__)

_UIDS = count(1)

#: candidate policies offered in the widget: "auto" = SAM's advice (3 candidates for an
#: ambiguous single click, the single-output head otherwise) unless the model's own policy is the
#: single head (sam-tiny's), which it keeps; "all" = always the candidates
CANDIDATE_POLICIES = ("auto", "all", "single")


# --------------------------------------------------------------------------------------------
# images


class ImageSource:
    """Slices of one image as ``(H, W, 3) uint8`` RGB.

    Args:
        data: array-like of shape (H, W), (H, W, C) with ``rgb=True``, (Z, H, W) or (Z, H, W, C)
            with ``rgb=True``; any dtype. Lazy arrays (dask, zarr) are read one slice at a time.
        rgb: the last axis holds colour channels (napari's ``layer.rgb``).
        name: image name, used as the trajectory ``image_id`` (``<name>_z0007`` for slices).
        normalisation, window: passed to :func:`segprompt.data.to_rgb_uint8` for non-uint8 data.
    """

    def __init__(
        self,
        data: Any,
        *,
        rgb: bool = False,
        name: str = "image",
        normalisation: str = "percentile",
        window: tuple[float, float] | None = None,
    ) -> None:
        shape = tuple(int(s) for s in data.shape)
        spatial = shape[:-1] if rgb else shape
        if len(spatial) not in (2, 3):
            raise DataError(
                f"image {name!r} has shape {shape}{' (RGB)' if rgb else ''}; the plugin segments 2-D images "
                "and 3-D stacks (Z, H, W) slice by slice"
            )
        if min(spatial[-2:]) < 2:
            raise DataError(f"image {name!r} of shape {shape} is too small to segment")
        self.data = data
        self.rgb = bool(rgb)
        self.name = str(name) or "image"
        self.normalisation = normalisation
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.ndim = len(spatial)
        self.spatial_shape: tuple[int, ...] = spatial
        self.n_slices = spatial[0] if self.ndim == 3 else 1
        self.size: tuple[int, int] = (spatial[-2], spatial[-1])
        self.uid = next(_UIDS)

    def raw_slice(self, z: int = 0) -> np.ndarray:
        if self.ndim == 2:
            return np.asarray(self.data)
        if not 0 <= z < self.n_slices:
            raise DataError(f"slice {z} is outside the stack of {self.n_slices} slices")
        return np.asarray(self.data[z])

    def rgb_slice(self, z: int = 0) -> np.ndarray:
        """Slice ``z`` (0 for 2-D) as (H, W, 3) uint8 RGB."""
        return to_rgb_uint8(self.raw_slice(z), normalisation=self.normalisation, window=self.window)  # type: ignore[arg-type]

    def key(self, z: int = 0) -> tuple[Hashable, ...]:
        return (self.uid, int(z), self.normalisation, self.window)

    def volume(self) -> Any:
        """The whole 3-D stack as a :class:`segprompt.volumes.Volume` ((Z, H, W, 3) uint8) for
        propagation: :func:`segprompt.volumes.as_volume` with this source's normalisation, i.e. ONE
        intensity window for the whole stack (a window per slice would change the contrast from
        slice to slice, which propagation would follow); an RGBA stack loses its alpha. Reads
        every slice of a lazy array."""
        from segprompt.volumes import as_volume

        if self.ndim != 3:
            raise DataError(f"image {self.name!r} is 2-D; propagation needs a 3-D stack (Z, H, W)")
        arr = np.asarray(self.data)
        if self.rgb:
            if arr.shape[-1] not in (3, 4):
                raise DataError(f"image {self.name!r}: an RGB stack needs 3 or 4 channels, got shape {arr.shape}")
            arr = arr[..., :3]
        return as_volume(arr, normalisation=self.normalisation, window=self.window)

    def image_id(self, z: int = 0) -> str:
        return self.name if self.ndim == 2 else f"{self.name}_z{int(z):04d}"


# --------------------------------------------------------------------------------------------
# embeddings


class EmbeddingLRU:
    """Image states of the most recently used ``capacity`` slices (thread-safe)."""

    def __init__(self, capacity: int = 16) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._items: OrderedDict[Hashable, ImageState] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> ImageState | None:
        with self._lock:
            state = self._items.get(key)
            if state is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return state

    def put(self, key: Hashable, state: ImageState) -> None:
        with self._lock:
            self._items[key] = state
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class EncodeCancelled(Exception):
    """Raised inside an encode when its cancel flag is set."""


def encoder_blocks(segmenter: Segmenter) -> list[Any]:
    """The transformer blocks of a SAM-style image encoder (empty for other models), under any
    inference wrappers (their encode is the model's)."""
    from segprompt.models.wrapper import innermost

    enc = getattr(getattr(innermost(segmenter), "model", None), "image_encoder", None)
    blocks = getattr(enc, "blocks", None)
    try:
        return list(blocks) if blocks is not None else []
    except TypeError:
        return []


_ENCODE_LOCKS: dict[int, threading.Lock] = {}
_ENCODE_LOCKS_GUARD = threading.Lock()


def _encode_lock(segmenter: Segmenter) -> threading.Lock:
    with _ENCODE_LOCKS_GUARD:
        return _ENCODE_LOCKS.setdefault(id(segmenter), threading.Lock())


def encode_with_progress(
    segmenter: Segmenter,
    image: np.ndarray,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> ImageState:
    """``segmenter.encode(image)`` reporting ``progress(done, total)`` and honouring ``cancel``.

    For SAM-style encoders ``total`` is the number of transformer blocks + 1 and the encode
    stops (``EncodeCancelled``) before the next block once ``cancel`` is set; other models
    report ``(0, 1)`` then ``(1, 1)``, and a cancel during their encode discards the result.
    Goes through ``Segmenter.encode``, so the segmenter's on-disk cache is used when it has one.
    """
    blocks = encoder_blocks(segmenter)
    total = len(blocks) + 1

    def report(done: int) -> None:
        if progress is not None:
            progress(done, total)

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise EncodeCancelled("embedding cancelled")

    with _encode_lock(segmenter):
        handles = []
        for i, block in enumerate(blocks):
            def hook(_module: Any, _inputs: Any, i: int = i) -> None:
                check()
                report(i)

            handles.append(block.register_forward_pre_hook(hook))
        try:
            check()
            report(0)
            state = segmenter.encode(image)
        finally:
            for h in handles:
                h.remove()
    check()
    report(total)
    return state


# --------------------------------------------------------------------------------------------
# prompts from layers


@dataclass
class ShapeItem:
    """One shape of the prompt shapes layer: napari type, vertices ``(…, row, col)``, label 1/0."""

    kind: str
    data: np.ndarray
    label: int = 1


def _rasterise_polygon(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = size
    canvas = np.zeros((h, w), np.uint8)
    cv2.fillPoly(canvas, [np.round(xy).astype(np.int32).reshape(-1, 1, 2)], 1)
    return canvas.astype(bool)


def _rasterise_ellipse(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """napari ellipses are stored as their 4 bounding-box corners."""
    h, w = size
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0


def build_prompt_set(
    *,
    image_size: tuple[int, int],
    ndim: int = 2,
    z: int = 0,
    points: np.ndarray | None = None,
    point_labels: Sequence[int] | np.ndarray | None = None,
    shapes: Iterable[ShapeItem] = (),
    text: str | None = None,
    reference: Reference | None = None,
    accepts: Iterable[str] | None = None,
) -> tuple[PromptSet, list[str]]:
    """The prompt set of slice ``z`` from the prompt layers' data.

    Points (napari ``(row, col)`` / ``(z, row, col)``) with labels 1/0 keep their order (the
    click order). Shapes: rectangles -> the box (the last one; SAM takes one box), paths and
    lines -> scribbles with their label, polygons and ellipses -> a binary mask prompt (the
    union of the positive ones). Prompt kinds the model does not accept (``accepts``) are left
    out and named in the returned notes.
    """
    h, w = image_size
    accepts = None if accepts is None else frozenset(accepts)
    notes: list[str] = []

    def ok(kind: str) -> bool:
        if accepts is None or kind in accepts:
            return True
        notes.append(f"the model ignores {kind} prompts")
        return False

    pts = None
    if points is not None and len(points):
        data = np.asarray(points, np.float64).reshape(len(points), -1)
        labels = np.asarray(point_labels if point_labels is not None else np.ones(len(data)), np.int64).reshape(-1)
        on_slice = slice_of(data, ndim) == z
        if on_slice.any() and ok("points"):
            pts = Points(clip_xy(rc_to_xy(data[on_slice]), (h, w)), labels[on_slice])
    box = None
    scribbles: list[Scribble] = []
    mask = None
    n_boxes = 0
    for item in shapes:
        data = np.asarray(item.data, np.float64)
        if data.size == 0 or not (slice_of(data, ndim) == z).all():
            continue
        xy = clip_xy(rc_to_xy(data), (h, w))
        kind = item.kind
        if kind == "rectangle":
            if not ok("box"):
                continue
            n_boxes += 1
            box = Box([*xy.min(axis=0), *xy.max(axis=0)])
        elif kind in ("path", "line", "polyline"):
            if ok("scribble"):
                scribbles.append(Scribble(xy, label=int(item.label)))
        elif kind in ("polygon", "ellipse"):
            if not ok("mask"):
                continue
            if int(item.label) != 1:
                notes.append("negative polygons are ignored (a mask prompt marks the object)")
                continue
            m = _rasterise_ellipse(xy, (h, w)) if kind == "ellipse" else _rasterise_polygon(xy, (h, w))
            mask = m if mask is None else mask | m
    if n_boxes > 1:
        notes.append(f"{n_boxes} boxes drawn: the last one is used")
    txt = None
    if text and text.strip() and ok("text"):
        txt = Text(text.strip())
    ref = reference if reference is not None and ok("reference") else None
    mask_prompt = MaskPrompt(mask) if mask is not None and mask.any() else None
    ps = PromptSet(points=pts, box=box, scribbles=tuple(scribbles), mask=mask_prompt, text=txt, reference=ref)
    return ps, sorted(set(notes))


# --------------------------------------------------------------------------------------------
# decoding


@dataclass
class Preview:
    """What one decode gave for one prompt set: K candidates, their scores, the chosen one."""

    masks: np.ndarray  # bool (K, H, W)
    scores: np.ndarray  # float32 (K,), NaN where the model has no estimate
    chosen: int
    logits: np.ndarray | None = None  # (K, h, w) low-res logits or None
    seconds: float = 0.0

    @property
    def mask(self) -> np.ndarray:
        return self.masks[self.chosen]

    @property
    def score(self) -> float | None:
        s = float(self.scores[self.chosen])
        return s if math.isfinite(s) else None

    def choose(self, k: int) -> None:
        if not 0 <= k < len(self.masks):
            raise PromptError(f"candidate {k} does not exist; there are {len(self.masks)}")
        self.chosen = int(k)


def candidate_policy(segmenter: Segmenter, prompt_set: PromptSet, policy: str = "auto") -> str:
    """The ``multimask`` argument for ``segment``: ``"all"`` (K candidates) or ``"single"``.

    ``"auto"`` follows SAM's advice (K candidates for one click, the single head otherwise) unless
    the model's own policy is the single head (sam-tiny's: its IoU head ranks well only on the
    synthetic images it was trained on), which it then keeps.
    """
    if policy not in CANDIDATE_POLICIES:
        raise PromptError(f"unknown candidate policy {policy!r}; use one of {', '.join(CANDIDATE_POLICIES)}")
    if not segmenter.has_multimask or policy == "single" or (policy == "auto" and segmenter.multimask == "single"):
        return "single"
    if policy == "all":
        return "all"
    single_click = prompt_set.kinds == {"points"} and prompt_set.points is not None and len(prompt_set.points) == 1
    return "all" if single_click else "single"


def decode(segmenter: Segmenter, state: ImageState, prompt_set: PromptSet, policy: str = "auto") -> Preview:
    """Decode one prompt set (never re-encodes): all candidates, the best-scored one chosen."""
    t0 = time.perf_counter()
    pred = segmenter.segment(state, [prompt_set], multimask=candidate_policy(segmenter, prompt_set, policy))  # type: ignore[arg-type]
    masks = np.asarray(pred.masks[0], bool)
    scores = np.asarray(pred.scores[0], np.float32)
    chosen = int(np.nan_to_num(scores, nan=-np.inf).argmax()) if len(scores) > 1 else 0
    logits = None if pred.logits is None else np.asarray(pred.logits[0])
    return Preview(masks=masks, scores=scores, chosen=chosen, logits=logits, seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# recording


def _step_extra(prompt_set: PromptSet, preview: Preview, extra: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if prompt_set.scribbles:
        out["scribbles"] = [{"points": s.coords.tolist(), "label": int(s.label)} for s in prompt_set.scribbles]
    if prompt_set.mask is not None:
        out["mask_prompt_pixels"] = int(np.count_nonzero(prompt_set.mask.data))
    if prompt_set.text is not None:
        out["text"] = prompt_set.text.text
    if prompt_set.reference is not None:
        out["reference"] = True
    out["candidate"] = int(preview.chosen)
    out["candidates"] = int(len(preview.masks))
    out["scores"] = [None if not math.isfinite(float(s)) else round(float(s), 6) for s in preview.scores]
    out.update(extra or {})
    return out


class ObjectRecorder:
    """The prompt steps of one object on one image (slice), as a napari trajectory.

    Each :meth:`add` appends a :class:`~pointprompt.trajectory.PromptStep` with the cumulative
    points, the box, the chosen mask, the model's score, and ``time_s`` = seconds from this
    object's first prompt to the prompt change that produced the step (not to the decode).
    """

    def __init__(
        self,
        image_id: str,
        image_size: tuple[int, int],
        *,
        annotator: str | None = None,
        dataset: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        from pointprompt.trajectory import Trajectory

        self.trajectory = Trajectory(
            image_id=image_id,
            source="napari",
            annotator=annotator or None,
            dataset=dataset or None,
            image_size=tuple(image_size),  # type: ignore[arg-type]
            meta=dict(meta or {}),
        )
        self.t0: float | None = None

    def __len__(self) -> int:
        return len(self.trajectory.steps)

    def add(self, prompt_set: PromptSet, preview: Preview, t_prompt: float, extra: dict[str, Any] | None = None) -> Any:
        from pointprompt.trajectory import PromptStep

        if self.t0 is None:
            self.t0 = t_prompt
        points = prompt_set.points if prompt_set.points is not None else None
        step = PromptStep(
            points=points,  # type: ignore[arg-type]
            box=prompt_set.box,
            mask=preview.mask.copy(),
            iou=None,
            score=preview.score,
            round=0,
            time_s=round(max(0.0, t_prompt - self.t0), 6),
            extra=_step_extra(prompt_set, preview, extra),
        )
        self.trajectory.add_step(step)
        return step

    def update_last(self, preview: Preview) -> None:
        """The user picked another candidate for the last step: its mask and score follow."""
        if not self.trajectory.steps:
            return
        step = self.trajectory.steps[-1]
        step.mask = preview.mask.copy()
        step.score = preview.score
        step.extra["candidate"] = int(preview.chosen)

    def finish(self, **meta: Any) -> Any:
        self.trajectory.meta.update(meta)
        return self.trajectory.validate()


# --------------------------------------------------------------------------------------------
# segment everything


@dataclass
class EverythingResult:
    """Every object of one slice: ``labels`` = :func:`segprompt.everything.label_map` of ``records``
    (int32 (H, W), 0 = background, 1..K largest first)."""

    labels: np.ndarray
    records: list[dict[str, Any]]
    z: int = 0
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return int(np.max(self.labels, initial=0))


def instances_write(labels: np.ndarray, instances: np.ndarray, z: int | None = None) -> tuple[tuple[np.ndarray, ...], np.ndarray, int]:
    """How to add the instances of a label map to a committed-objects label image, as new objects.

    Instance ``k`` of ``instances`` (1..K, 0 = none) becomes object ``offset + k`` with
    ``offset = labels.max()``, so the new ids follow the committed ones; pixels already owned by a
    committed object keep their id (:func:`commit_mask`'s rule: a new object never erases one).
    Returns ``(indices, values, offset)``: fancy indices into ``labels`` (all of its dimensions,
    slice ``z`` of a 3-D one) and the ids to write there; nothing is written here, so the caller can
    write through napari's ``Labels.data_setitem`` (one undoable step).
    """
    offset = int(np.max(labels, initial=0))
    target = labels if z is None else labels[z]
    instances = np.asarray(instances)
    if target.shape != instances.shape:
        raise PromptError(f"instances of shape {instances.shape} do not fit the labels slice of shape {target.shape}")
    where = np.nonzero((instances > 0) & (target == 0))
    values = instances[where].astype(np.int64) + offset
    indices = where if z is None else (np.full(len(where[0]), int(z), np.intp), *where)
    return tuple(indices), values, offset


def volume_write(labels: np.ndarray, mask: np.ndarray, object_id: int | None = None) -> tuple[tuple[np.ndarray, ...], int]:
    """Where a propagated 3-D object goes in a committed-objects label volume, as a new object.

    ``mask`` bool (Z, H, W) must have the shape of ``labels``; the id is ``labels.max() + 1``
    unless given; voxels already owned by a committed object keep their id (:func:`commit_mask`'s
    rule). Returns ``(indices, object_id)``: fancy indices into ``labels`` to set to the id; nothing
    is written here, so the caller writes through napari's ``Labels.data_setitem`` (one undoable
    step).
    """
    mask = np.asarray(mask, bool)
    if labels.shape != mask.shape:
        raise PromptError(f"a propagated mask of shape {mask.shape} does not fit the label volume of shape {labels.shape}")
    if object_id is None:
        object_id = int(np.max(labels, initial=0)) + 1
    return tuple(np.nonzero(mask & (np.asarray(labels) == 0))), int(object_id)


# --------------------------------------------------------------------------------------------
# the session


@dataclass
class SessionInfo:
    annotator: str | None = None
    dataset: str | None = None
    extra_meta: dict[str, Any] = field(default_factory=dict)


class SegmentationSession:
    """One segmenter, one image source, the embeddings of its slices, and the recordings.

    Thread-safety: :meth:`encode` and :meth:`decode` may run in worker threads (the widget
    does so); everything else is called from one (the GUI) thread.
    """

    def __init__(self, segmenter: Segmenter | None = None, *, model_label: str = "", lru_size: int = 16) -> None:
        self.segmenter: Segmenter | None = None
        self.model_label = ""
        self.lru = EmbeddingLRU(lru_size)
        self.source: ImageSource | None = None
        self.info = SessionInfo()
        self.recorders: dict[tuple[int, int], ObjectRecorder] = {}
        #: finished (committed) trajectories, in commit order
        self.trajectories: list[Any] = []
        if segmenter is not None:
            self.set_segmenter(segmenter, model_label)

    # -- model and image -----------------------------------------------------------------
    def set_segmenter(self, segmenter: Segmenter, label: str = "") -> None:
        self.segmenter = segmenter
        self.model_label = label or getattr(segmenter, "name", type(segmenter).__name__)
        self.lru.clear()
        # an unfinished object's recording belongs to the model that produced its masks: the
        # new model starts a new recording (committed trajectories are kept)
        self.recorders.clear()
        self._model_token = next(_UIDS)

    def set_source(self, source: ImageSource | None) -> None:
        self.source = source

    def _require(self) -> tuple[Segmenter, ImageSource]:
        if self.segmenter is None:
            raise PromptError("no model loaded: pick one in the model list and press Load")
        if self.source is None:
            raise PromptError("no image selected: open an image and pick it in the image list")
        return self.segmenter, self.source

    @property
    def accepts(self) -> frozenset[str]:
        return frozenset() if self.segmenter is None else frozenset(self.segmenter.accepts)

    def state_key(self, z: int = 0) -> tuple[Hashable, ...]:
        _, src = self._require()
        return (self._model_token, *src.key(z))

    def cached_state(self, z: int = 0) -> ImageState | None:
        if self.segmenter is None or self.source is None:
            return None
        return self.lru.get(self.state_key(z))

    def has_state(self, z: int = 0) -> bool:
        return self.segmenter is not None and self.source is not None and self.state_key(z) in self.lru

    def encode(
        self,
        z: int = 0,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> ImageState:
        """The image state of slice ``z``: from the LRU, else computed (and stored)."""
        seg, src = self._require()
        key = self.state_key(z)
        state = self.lru.get(key)
        if state is not None:
            if progress is not None:
                progress(1, 1)
            return state
        image = src.rgb_slice(z)
        state = encode_with_progress(seg, image, progress, cancel)
        self.lru.put(key, state)
        return state

    def segment_everything(
        self,
        z: int = 0,
        settings: Any = None,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> EverythingResult:
        """Every object of slice ``z`` without prompts: :func:`segprompt.everything.segment_everything`
        on the slice's RGB image, then :func:`segprompt.everything.label_map` of its records.

        ``progress(done, total)`` follows the batches of grid points; once ``cancel`` is set the run
        stops at the next batch with :class:`segprompt.errors.Cancelled`. Holds the segmenter's
        encode lock (the encoder's progress hooks must not fire inside this run's encodes).
        """
        from segprompt.everything import label_map, segment_everything

        seg, src = self._require()
        image = src.rgb_slice(z)
        t0 = time.perf_counter()
        with _encode_lock(seg):
            records = segment_everything(seg, image, settings, progress=progress, cancel=None if cancel is None else cancel.is_set)
        labels = label_map(records, tuple(image.shape[:2]))
        return EverythingResult(labels=labels, records=records, z=int(z), seconds=time.perf_counter() - t0)

    # -- volumes ---------------------------------------------------------------------------
    def propagation_support(self) -> str:
        """``"native"`` when the loaded model propagates volumes itself (SAM 2), else ``"fallback"``
        (:func:`segprompt.volumes.volume_support`); ``""`` without a model."""
        from segprompt.volumes import volume_support

        return "" if self.segmenter is None else volume_support(self.segmenter)

    def _volume(self) -> Any:
        _, src = self._require()
        key = (src.uid, src.normalisation, src.window)
        cached = getattr(self, "_volume_cache", None)
        if cached is None or cached[0] != key or cached[2] is not src.data:
            cached = (key, src.volume(), src.data)
            self._volume_cache = cached
        return cached[1]

    def propagate(
        self,
        prompts: Any,
        direction: str = "both",
        method: str = "auto",
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Any:
        """Propagate ``prompts`` (a :class:`segprompt.volumes.VolumePrompts`: slice index, object id,
        prompts in the slice's (x, y) pixels) through the 3-D source.

        Goes through :func:`segprompt.volumes.volume_propagator` (``method`` ``"auto"``: the
        model's own propagation where it has one, e.g. SAM 2's video predictor, else the
        slice-by-slice fallback; ``"native"`` / ``"fallback"`` to choose), on
        :meth:`ImageSource.volume` (converted once per source and kept). Each call starts from a
        fresh :class:`~segprompt.volumes.VolumeState` holding exactly ``prompts``; with the fallback
        the encoded slices are kept across calls (the same model and source), so a correction only
        decodes. ``progress(done, total)`` after each slice step; ``cancel()`` True stops at the
        next slice step with :class:`segprompt.errors.Cancelled`. Holds the segmenter's encode lock
        (the embedding's progress hooks must not fire inside these encodes).

        Returns:
            a :class:`segprompt.volumes.VolumeResult` (``labels`` int32 (Z, H, W), ``masks`` by id).
        """
        from segprompt.volumes.api import check_direction, volume_propagator

        seg, src = self._require()
        if src.ndim != 3:
            raise DataError(f"image {src.name!r} is 2-D; propagation needs a 3-D stack (Z, H, W)")
        check_direction(direction)
        if not len(prompts):
            raise PromptError("nothing to propagate: click on a slice first")
        prop = volume_propagator(seg, method)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        with _encode_lock(seg):
            state = prop.init_volume(self._volume())
            if getattr(state, "method", "") == "fallback" and getattr(state, "native", None) is None:
                key = (self._model_token, src.uid, src.normalisation, src.window)
                kept = getattr(self, "_volume_slices", None)
                if kept is None or kept[0] != key:
                    kept = (key, {})
                    self._volume_slices = kept
                state.slices = kept[1]  # encoded slices, shared across propagations
            result = prop.propagate(state, prompts, direction=direction, progress=progress, cancel=cancel)  # type: ignore[arg-type]
        from dataclasses import replace

        return replace(result, seconds=time.perf_counter() - t0)

    def finish_volume(self, object_id: int, result: Any, prompts: Any, direction: str, obj_id: int = 1) -> list[Any]:
        """Close the recordings of the slices ``prompts`` prompted for object ``obj_id``, now
        committed as ``object_id`` from the propagation ``result``.

        A prompted slice with no recorded step yet (live preview off) gets one: its prompts and
        the propagated mask on that slice. Every trajectory gets ``meta["propagation"]``:
        ``{"direction", "method", "prompted_slices", "slices_labelled", "seconds"}``. Returns the
        finished trajectories (slice order).
        """
        _, src = self._require()
        slices = list(prompts.slices(obj_id))
        info = {
            "direction": str(direction),
            "method": str(result.method),
            "prompted_slices": [int(z) for z in slices],
            "slices_labelled": [int(z) for z in result.slices_labelled(obj_id)] if obj_id in result.masks else [],
            "seconds": None if not math.isfinite(float(result.seconds)) else round(float(result.seconds), 6),
        }
        row = list(result.obj_ids).index(obj_id) if obj_id in result.obj_ids else None
        out = []
        for z in slices:
            rec = self.recorder(z)
            if not len(rec):
                mask = np.asarray(result.masks[obj_id][z], bool) if obj_id in result.masks else np.zeros(src.size, bool)
                score = np.float32(np.nan) if row is None else result.scores[row, z]
                preview = Preview(masks=mask[None], scores=np.asarray([score], np.float32), chosen=0)
                self.record(prompts.get(z, obj_id), preview, time.monotonic(), z, extra={"propagated": True})
            self.recorders.pop((src.uid, int(z)), None)
            traj = rec.finish(object_id=int(object_id), committed=True, propagation=dict(info))
            self.trajectories.append(traj)
            out.append(traj)
        return out

    def decode(self, prompt_set: PromptSet, z: int = 0, policy: str = "auto") -> Preview:
        """Decode ``prompt_set`` on slice ``z`` from its cached state (raises if not encoded)."""
        seg, _ = self._require()
        state = self.cached_state(z)
        if state is None:
            raise PromptError(f"slice {z} has no embedding yet: compute it first")
        return decode(seg, state, prompt_set, policy)

    # -- recording -------------------------------------------------------------------------
    def recorder(self, z: int = 0) -> ObjectRecorder:
        _, src = self._require()
        key = (src.uid, int(z))
        rec = self.recorders.get(key)
        if rec is None:
            meta: dict[str, Any] = {"image_name": src.name, "model": self.model_label, **self.info.extra_meta}
            if src.ndim == 3:
                meta["slice"] = int(z)
            rec = ObjectRecorder(src.image_id(z), src.size, annotator=self.info.annotator, dataset=self.info.dataset, meta=meta)
            self.recorders[key] = rec
        return rec

    def record(self, prompt_set: PromptSet, preview: Preview, t_prompt: float, z: int = 0, extra: dict[str, Any] | None = None) -> Any:
        """Add a step to slice ``z``'s recording; on a 3-D stack the step names its slice
        (``extra["slice"]``) besides the trajectory's ``meta["slice"]``."""
        if self.source is not None and self.source.ndim == 3:
            extra = {"slice": int(z), **(extra or {})}
        return self.recorder(z).add(prompt_set, preview, t_prompt, extra)

    def discard(self, z: int = 0) -> None:
        if self.source is not None:
            self.recorders.pop((self.source.uid, int(z)), None)

    def finish(self, object_id: int, z: int = 0) -> Any | None:
        """Close the recording of slice ``z``'s object (committed as ``object_id``)."""
        if self.source is None:
            return None
        rec = self.recorders.pop((self.source.uid, int(z)), None)
        if rec is None or not len(rec):
            return None
        traj = rec.finish(object_id=int(object_id), committed=True)
        self.trajectories.append(traj)
        return traj

    def export(self, path: str | Path, include_open: bool = False) -> Path:
        """Write the committed trajectories (and with ``include_open`` the unfinished ones) to
        ``.jsonl`` / ``.json`` in the pointprompt trajectory format."""
        from pointprompt.trajectory import save_trajectories

        trajs = list(self.trajectories)
        if include_open:
            for rec in self.recorders.values():
                if len(rec):
                    trajs.append(rec.finish(committed=False))
        return save_trajectories(path, trajs)


def commit_mask(labels: np.ndarray, mask: np.ndarray, z: int | None = None, object_id: int | None = None) -> int:
    """Write ``mask`` into the label image ``labels`` (slice ``z`` of a 3-D one) with a new id.

    The id is ``labels.max() + 1`` unless given; pixels already owned by another object keep
    their id (a new object never erases a committed one). Returns the id used.
    """
    if object_id is None:
        object_id = int(np.max(labels, initial=0)) + 1
    target = labels if z is None else labels[z]
    if target.shape != mask.shape:
        raise PromptError(f"mask of shape {mask.shape} does not fit the labels slice of shape {target.shape}")
    target[np.asarray(mask, bool) & (target == 0)] = object_id
    return int(object_id)


__all__ = [
    "CANDIDATE_POLICIES",
    "EmbeddingLRU",
    "EncodeCancelled",
    "EverythingResult",
    "ImageSource",
    "ObjectRecorder",
    "Preview",
    "SegmentationSession",
    "ShapeItem",
    "build_prompt_set",
    "candidate_policy",
    "commit_mask",
    "decode",
    "encode_with_progress",
    "encoder_blocks",
    "instances_write",
    "volume_write",
]
