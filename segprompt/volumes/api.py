"""The volume API: prompt some slices of a (Z, H, W) stack, propagate through it, get 3-D labels.

.. code-block:: python

    from segprompt.models import create_segmenter
    from segprompt.volumes import VolumePrompts, segment_volume

    seg = create_segmenter("sam-tiny")
    prompts = VolumePrompts().add(z=6, obj_id=1, points=[(30.5, 20.5)])   # (x, y) inside slice 6
    result = segment_volume(seg, volume, prompts, direction="both")          # volume (Z, H, W[, 3])
    result.labels      # (Z, H, W) int32: 0 background, else the object id
    result.scores      # (n_objects, Z) float32 per-slice predicted quality (NaN: none / not labelled)

Conventions (DESIGN.md, "Volumes"): a volume is ``(Z, H, W)`` (grey, any dtype) or ``(Z, H, W, 3)``;
slice ``z`` is ``volume[z]`` (0-based); prompts on a slice are the 2-D prompts of
:mod:`segprompt.prompts` in that slice's own ``(x, y)`` pixels (x = column, y = row, origin top-left);
object ids are ints >= 1 (0 is the background of the label volume). Voxel ``spacing`` is
``(z, y, x)`` in the file's unit and travels with the :class:`Volume` to the written labels.

Two steps, so that interactive use (napari) keeps the expensive part:

* ``state = propagator.init_volume(volume)``: converts the volume once (:class:`VolumeState`);
* ``result = propagator.propagate(state, prompts, direction=..., progress=..., cancel=...)``: adds
  ``prompts`` to those the state already holds (a prompt on the same slice and object replaces the
  earlier one, like sam2's ``add_new_points_or_box(clear_old_points=True)``) and propagates every
  object from all its prompted slices. A correction is simply a prompt on another slice: the
  propagation restarts from it.

Who propagates (:func:`volume_propagator`): a Segmenter that has ``init_volume`` and ``propagate``
itself (it satisfies :class:`VolumePropagator`, e.g. a SAM 2 segmenter running its video predictor)
propagates natively; else a propagator registered for its class with
:func:`register_volume_propagator` (by import path, so nothing is imported early); else the
slice-by-slice fallback of :mod:`segprompt.volumes.fallback`, which works for every Segmenter.

How a SAM 2 video predictor fits (sam2/sam2_video_predictor.py): ``init_volume`` builds sam2's
``inference_state`` dict from ``state.volume`` in memory (the frames resized and normalised as
``load_video_frames`` does, no JPEG folder) and keeps it in ``VolumeState.native``;
``propagate`` calls ``add_new_points_or_box(state, frame_idx=z, obj_id=..., points=(x, y) coords,
labels=..., box=XYXY)`` or ``add_new_mask`` for each new :class:`SlicePrompt`, then
``propagate_in_video`` forward and/or with ``reverse=True``, polling ``cancel`` and calling
``progress`` per yielded frame, and returns :meth:`VolumeResult.from_masks`.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from segprompt.errors import Cancelled, ConfigError, DataError, PromptError
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet

Direction = Literal["both", "forward", "backward"]
DIRECTIONS: tuple[str, ...] = ("both", "forward", "backward")
#: ``progress(done, total)``: called after each slice step
ProgressFn = Callable[[int, int], None]
#: ``cancel() -> bool``: polled before each slice step; True stops with :class:`Cancelled`
CancelFn = Callable[[], bool]
Method = Literal["auto", "native", "fallback"]
METHODS: tuple[str, ...] = ("auto", "native", "fallback")


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ConfigError(f"unknown propagation direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
    return direction


# -- volumes -----------------------------------------------------------------------------------
@dataclass
class Volume:
    """A stack of slices ready for the models, with its physical geometry.

    Attributes:
        data: (Z, H, W, 3) uint8 RGB, slice ``z`` = ``data[z]`` (converted from the file's
            intensities by :func:`as_volume`).
        spacing: voxel size ``(z, y, x)`` in ``unit``, or None when unknown; may be anisotropic.
        unit: the spacing's unit (``"mm"``, ``"micron"``, ...) or None.
        affine: (4, 4) float64 voxel-to-world matrix of a NIfTI input (its ``(i, j, k)`` voxel
            order, i.e. ``(x, y, z)`` of this array), kept to write the labels back; else None.
        source: the file it was read from, or None.
        raw_dtype: dtype name of the intensities before conversion (``"uint16"``, ``"float32"``...).
    """

    data: np.ndarray
    spacing: tuple[float, float, float] | None = None
    unit: str | None = None
    affine: np.ndarray | None = None
    source: Path | None = None
    raw_dtype: str = "uint8"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, H, W)."""
        z, h, w = self.data.shape[:3]
        return int(z), int(h), int(w)

    def __len__(self) -> int:
        return int(self.data.shape[0])


def volume_window(array: np.ndarray, normalisation: str = "percentile", window: tuple[float, float] | None = None, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float] | None:
    """The (low, high) intensity window of a whole volume, as :func:`segprompt.data.to_rgb_uint8`
    computes it for one image (None for uint8 data, which is kept as it is).

    One window for the whole stack: a window per slice would change the contrast from slice to
    slice, and propagation would follow the contrast rather than the object.
    """
    arr = np.asarray(array)
    if arr.dtype == np.uint8:
        return None
    if arr.dtype == bool:
        return 0.0, 1.0
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise DataError(f"cannot convert a volume of dtype {arr.dtype} to RGB")
    if normalisation == "window":
        if window is None:
            raise DataError("normalisation='window' needs window=(low, high)")
        return float(window[0]), float(window[1])
    finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr.reshape(-1)
    if finite.size == 0:
        raise DataError("volume holds no finite values")
    if normalisation == "minmax":
        return float(finite.min()), float(finite.max())
    if normalisation == "percentile":
        lo, hi = np.percentile(finite.astype(np.float64), percentiles)
        return float(lo), float(hi)
    raise DataError(f"unknown normalisation {normalisation!r}; use percentile, minmax or window")


def as_volume(
    volume: "Volume | np.ndarray",
    spacing: Sequence[float] | None = None,
    normalisation: str = "percentile",
    window: tuple[float, float] | None = None,
) -> Volume:
    """A :class:`Volume` from an array (or a Volume, returned as it is).

    Args:
        volume: (Z, H, W) of any real dtype, or (Z, H, W, 3) (uint8 kept; other dtypes scaled);
            Z >= 2.
        spacing: (z, y, x) voxel size, or None.
        normalisation, window: as :func:`segprompt.data.to_rgb_uint8`, but one window for the
            whole stack (:func:`volume_window`): ``"percentile"`` (0.5..99.5, default),
            ``"minmax"`` or ``"window"`` with ``window=(low, high)`` (e.g. a CT window in HU).

    Raises:
        DataError: not 3-D / 4-D with 3 channels, a single slice, or no finite values.
    """
    if isinstance(volume, Volume):
        return volume
    from segprompt.data.io import to_rgb_uint8

    arr = np.asarray(volume)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)):
        raise DataError(
            f"an array of shape {arr.shape} is a 2-D image, not a volume; a volume is (Z, H, W) or (Z, H, W, 3) "
            "(segment one image with `segprompt segment`)"
        )
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[3] == 3)):
        raise DataError(f"a volume must be (Z, H, W) or (Z, H, W, 3), got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise DataError(f"a volume needs at least 2 slices, got shape {arr.shape} (segment one image with `segprompt segment`)")
    if min(arr.shape[1:3]) < 2:
        raise DataError(f"volume slices of shape {arr.shape[1:3]} are too small to segment")
    win = volume_window(arr, normalisation, window)
    if win is None:
        data = np.ascontiguousarray(arr if arr.ndim == 4 else np.repeat(arr[..., None], 3, axis=3))
    else:
        data = np.stack([to_rgb_uint8(s, normalisation="window", window=win) for s in arr])
    return Volume(data=data, spacing=check_spacing(spacing), raw_dtype=str(arr.dtype))


def check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    """``(z, y, x)`` as three positive floats, or None."""
    if spacing is None:
        return None
    vals = tuple(float(v) for v in spacing)
    if len(vals) != 3 or not all(np.isfinite(v) and v > 0 for v in vals):
        raise DataError(f"voxel spacing must be three positive numbers (z, y, x), got {spacing!r}")
    return vals  # type: ignore[return-value]


# -- prompts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlicePrompt:
    """The prompts of one object on one slice.

    Attributes:
        z: slice index, 0-based (``volume[z]``).
        obj_id: object id >= 1 (its value in the label volume).
        prompts: a :class:`PromptSet` in the slice's (x, y) pixels: points, box, mask (a bool
            (H, W) mask is taken as the object's mask on that slice, as sam2's ``add_new_mask``), ...
    """

    z: int
    obj_id: int
    prompts: PromptSet

    def __post_init__(self) -> None:
        if isinstance(self.z, bool) or not isinstance(self.z, (int, np.integer)):
            raise PromptError(f"a slice index must be an integer, got {self.z!r}")
        if isinstance(self.obj_id, bool) or not isinstance(self.obj_id, (int, np.integer)) or self.obj_id < 1:
            raise PromptError(f"object ids must be integers >= 1 (0 is the background), got {self.obj_id!r}")
        if self.prompts.is_empty():
            raise PromptError(f"the prompt for object {self.obj_id} on slice z={self.z} is empty")
        object.__setattr__(self, "z", int(self.z))
        object.__setattr__(self, "obj_id", int(self.obj_id))


@dataclass(frozen=True)
class VolumePrompts:
    """Prompts by slice and object, for several objects at once; immutable (``add`` returns a new one).

    At most one :class:`SlicePrompt` per ``(z, obj_id)``: a later one replaces an earlier one
    (a click added on the same slice is given with the earlier clicks, as in sam2). Prompts of the
    same object on several slices are corrections: each one is a new starting point.

    .. code-block:: python

        p = VolumePrompts().add(6, points=[(30, 20)])                 # object 1, positive click
        p = p.add(6, obj_id=2, box=(40, 5, 60, 25))                  # a second object, same slice
        p = p.add(9, obj_id=1, points=[(33, 22), (40, 30)], labels=[1, 0])   # a correction on slice 9
    """

    entries: tuple[SlicePrompt, ...] = ()

    def __post_init__(self) -> None:
        latest: dict[tuple[int, int], SlicePrompt] = {}
        for e in self.entries:
            if not isinstance(e, SlicePrompt):
                raise PromptError(f"VolumePrompts holds SlicePrompt entries, got {type(e).__name__}")
            latest.pop((e.z, e.obj_id), None)
            latest[(e.z, e.obj_id)] = e
        object.__setattr__(self, "entries", tuple(latest.values()))

    def add(
        self,
        z: int,
        obj_id: int = 1,
        *,
        points: Points | Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | None = None,
        box: Box | Sequence[float] | None = None,
        mask: MaskPrompt | np.ndarray | None = None,
        prompts: PromptSet | None = None,
    ) -> "VolumePrompts":
        """A copy with one more slice prompt.

        Args:
            z: slice index; obj_id: object id >= 1.
            points: a :class:`Points` or (x, y) pairs (positive unless ``labels`` says 1/0 each).
            box: XYXY in the slice's pixels. mask: bool (H, W) mask of the object on slice ``z``.
            prompts: a ready :class:`PromptSet` instead of the three above.
        """
        if prompts is None:
            if points is not None and not isinstance(points, Points):
                coords = np.asarray(points, np.float32).reshape(-1, 2)
                points = Points(coords, np.ones(len(coords), np.int64) if labels is None else np.asarray(labels))
            if box is not None and not isinstance(box, Box):
                box = Box(box)
            if mask is not None and not isinstance(mask, MaskPrompt):
                mask = MaskPrompt(np.asarray(mask))
            prompts = PromptSet(points=points, box=box, mask=mask)
        elif points is not None or box is not None or mask is not None:
            raise PromptError("give either prompts= or points / box / mask, not both")
        return VolumePrompts(self.entries + (SlicePrompt(z, obj_id, prompts),))

    def merged(self, other: "VolumePrompts | None") -> "VolumePrompts":
        """These prompts, then ``other``'s (which replace ours on the same slice and object)."""
        return self if other is None else VolumePrompts(self.entries + tuple(other.entries))

    @property
    def obj_ids(self) -> tuple[int, ...]:
        """Object ids, ascending."""
        return tuple(sorted({e.obj_id for e in self.entries}))

    def slices(self, obj_id: int | None = None) -> tuple[int, ...]:
        """Prompted slice indices (of one object, or of any), ascending."""
        return tuple(sorted({e.z for e in self.entries if obj_id is None or e.obj_id == obj_id}))

    def get(self, z: int, obj_id: int) -> PromptSet | None:
        """The prompt of object ``obj_id`` on slice ``z``: the latest one given (a later entry
        replaces an earlier one), or ``None``."""
        for e in reversed(self.entries):
            if e.z == z and e.obj_id == obj_id:
                return e.prompts
        return None

    def on_slice(self, z: int) -> list[SlicePrompt]:
        """The entries in force on slice ``z`` (the latest per object), by ascending object id."""
        latest = {e.obj_id: e for e in self.entries if e.z == z}
        return [latest[k] for k in sorted(latest)]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):  # noqa: ANN204
        return iter(self.entries)

    def check(self, shape: Sequence[int]) -> "VolumePrompts":
        """Validate against a volume of ``shape`` (Z, H, W[, 3]): every slice index inside the
        stack, every point / box / mask inside its slice. Raises one-line :class:`PromptError`."""
        depth, h, w = (int(v) for v in tuple(shape)[:3])
        for e in self.entries:
            if not 0 <= e.z < depth:
                raise PromptError(f"slice z={e.z} (object {e.obj_id}) is outside the stack of {depth} slices (0..{depth - 1})")
            try:
                e.prompts.check((h, w))
            except PromptError as exc:
                raise PromptError(f"slice z={e.z}, object {e.obj_id}: {str(exc).replace('the image', 'the slice')}") from None
        return self

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> "VolumePrompts":
        """From JSON-like rows ``{"z": 6, "object": 1, "points": [[x, y, label], ...], "box": [x0, y0, x1, y1]}``
        (``"object"`` defaults to 1; ``"points"`` rows may omit the label, meaning positive)."""
        out = cls()
        for i, r in enumerate(records):
            if not isinstance(r, Mapping) or "z" not in r:
                raise PromptError(f"volume prompt {i}: expected an object with a slice index \"z\", got {r!r}")
            unknown = set(r) - {"z", "object", "points", "box"}
            if unknown:
                raise PromptError(f"volume prompt {i}: unknown keys {', '.join(sorted(unknown))}; use z, object, points, box")
            rows = [list(p) + ([1] if len(p) == 2 else []) for p in r.get("points") or []]
            pts = Points.from_list(rows) if rows else None
            out = out.add(r["z"], r.get("object", 1), points=pts, box=r.get("box"))
        return out


# -- state and result --------------------------------------------------------------------------
@dataclass
class VolumeState:
    """What :meth:`VolumePropagator.init_volume` prepared for one volume; mutable, reused across calls.

    Attributes:
        volume: the :class:`Volume` (``volume.data`` (Z, H, W, 3) uint8).
        prompts: every prompt given so far (:class:`VolumePrompts`).
        method: who fills it (``"fallback"``, ``"sam2"``, ...).
        native: the model's own propagation state (a SAM 2 implementation keeps sam2's
            ``inference_state`` dict here); None for the fallback.
        slices: per-slice image states (:class:`segprompt.models.base.ImageState`) by z, encoded
            on first use and kept, so repeated propagations (corrections) encode each slice once.
        masks: the latest result, bool (Z, H, W) per object id; filled slice by slice, so after a
            :class:`Cancelled` it holds what was done.
        scores: float32 (Z,) per object id, NaN where not labelled or the model has no estimate.
    """

    volume: Volume
    prompts: VolumePrompts = field(default_factory=VolumePrompts)
    method: str = "fallback"
    native: Any = None
    slices: dict[int, Any] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, H, W)."""
        return self.volume.shape

    def result(self, seconds: float = float("nan")) -> "VolumeResult":
        """The current masks as a :class:`VolumeResult` (also after a cancelled propagation)."""
        return VolumeResult.from_masks(self.masks, self.scores, self.prompts, self.shape, spacing=self.volume.spacing, method=self.method, seconds=seconds)


@dataclass
class VolumeResult:
    """Output of :meth:`VolumePropagator.propagate`.

    Attributes:
        labels: int32 (Z, H, W): 0 background, else the object id. Where objects overlap, the one
            with the higher score on that slice wins (NaN counts lowest; ties: the lower id).
        masks: bool (Z, H, W) per object id, before overlaps are resolved.
        obj_ids: the object ids, ascending; rows of ``scores``.
        scores: float32 (n_objects, Z): the model's predicted quality per slice (SAM: predicted
            IoU); NaN where the object is not labelled or the model has no estimate.
        prompted: per object id, the prompted slice indices, ascending.
        spacing: (z, y, x) voxel size of the volume, or None.
        method: ``"fallback"`` or the native propagator's name. seconds: wall time of the call.
    """

    labels: np.ndarray
    masks: dict[int, np.ndarray]
    obj_ids: tuple[int, ...]
    scores: np.ndarray
    prompted: dict[int, tuple[int, ...]]
    spacing: tuple[float, float, float] | None = None
    method: str = "fallback"
    seconds: float = float("nan")

    def slices_labelled(self, obj_id: int | None = None) -> tuple[int, ...]:
        """Slice indices holding any voxel of ``obj_id`` (or of any object), ascending."""
        if obj_id is None:
            return tuple(int(z) for z in np.flatnonzero(self.labels.reshape(len(self.labels), -1).any(axis=1)))
        m = self.masks[obj_id]
        return tuple(int(z) for z in np.flatnonzero(m.reshape(len(m), -1).any(axis=1)))

    @classmethod
    def from_masks(
        cls,
        masks: Mapping[int, np.ndarray],
        scores: Mapping[int, np.ndarray],
        prompts: VolumePrompts,
        shape: Sequence[int],
        *,
        spacing: tuple[float, float, float] | None = None,
        method: str = "fallback",
        seconds: float = float("nan"),
    ) -> "VolumeResult":
        """Assemble a result from per-object bool (Z, H, W) masks and float (Z,) scores (both by
        object id); a native propagator returns this too, so every method resolves overlaps alike."""
        depth, h, w = (int(v) for v in tuple(shape)[:3])
        obj_ids = tuple(sorted(set(masks) | set(prompts.obj_ids)))
        full = {o: np.asarray(masks[o], bool) if o in masks else np.zeros((depth, h, w), bool) for o in obj_ids}
        score = np.full((len(obj_ids), depth), np.nan, np.float32)
        for i, o in enumerate(obj_ids):
            if o in scores:
                score[i] = np.asarray(scores[o], np.float32)
        labels = np.zeros((depth, h, w), np.int32)
        if obj_ids:
            stack = np.stack([full[o] for o in obj_ids])  # (K, Z, H, W)
            rank = np.nan_to_num(score, nan=-np.inf)  # (K, Z)
            # per slice, objects by descending score (stable: the lower id first on ties)
            order = np.argsort(-rank, axis=0, kind="stable")  # (K, Z)
            for z in range(depth):
                for k in order[::-1, z]:  # paint the weakest first, the strongest last
                    labels[z][stack[k, z]] = obj_ids[k]
        prompted = {o: prompts.slices(o) for o in obj_ids}
        return cls(labels=labels, masks=full, obj_ids=obj_ids, scores=score, prompted=prompted, spacing=spacing, method=method, seconds=seconds)


# -- who propagates ------------------------------------------------------------------------------
@runtime_checkable
class VolumePropagator(Protocol):
    """Prompt slices of a volume and propagate through it. A Segmenter with these two methods
    propagates natively; :class:`segprompt.volumes.fallback.FallbackPropagator` serves the rest."""

    def init_volume(self, volume: "Volume | np.ndarray") -> VolumeState:
        """Prepare ``volume`` ((Z, H, W) or (Z, H, W, 3), or a :class:`Volume`) for propagation."""
        ...

    def propagate(
        self,
        state: VolumeState,
        prompts: VolumePrompts | None = None,
        *,
        direction: Direction = "both",
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> VolumeResult:
        """Add ``prompts`` to ``state`` and propagate every object from its prompted slices
        ``direction`` (toward higher z: ``"forward"``; lower z: ``"backward"``; ``"both"``).
        ``progress(done, total)`` after each slice step; ``cancel()`` polled before each, True
        raises :class:`Cancelled` with ``state.masks`` holding the slices done."""
        ...


# segmenter class ("module:QualName") -> propagator factory ("module:attr" or a callable(segmenter))
_PROPAGATORS: dict[str, "str | Callable[[Any], VolumePropagator]"] = {}


def register_volume_propagator(segmenter_class: str, factory: "str | Callable[[Any], VolumePropagator]") -> None:
    """Register a native propagator for a Segmenter class and its subclasses.

    Args:
        segmenter_class: ``"module:QualName"`` of the class (e.g. ``"segprompt.models.sam2:Sam2Segmenter"``),
            matched against the segmenter's class hierarchy without importing anything.
        factory: ``"module:attr"`` or a callable taking the segmenter and returning a :class:`VolumePropagator`.
    """
    if ":" not in segmenter_class:
        raise ConfigError(f"register a volume propagator under 'module:ClassName', got {segmenter_class!r}")
    _PROPAGATORS[segmenter_class] = factory


def _class_paths(obj: Any) -> list[str]:
    return [f"{c.__module__}:{c.__qualname__}" for c in type(obj).__mro__]


def _native(segmenter: Any) -> VolumePropagator | None:
    segmenter = _unwrapped(segmenter)
    if isinstance(segmenter, VolumePropagator):
        return segmenter
    for path in _class_paths(segmenter):
        if path in _PROPAGATORS:
            factory = _PROPAGATORS[path]
            if isinstance(factory, str):
                module, attr = factory.split(":")
                factory = getattr(importlib.import_module(module), attr)
            return factory(segmenter)
    return None


def _unwrapped(segmenter: Any) -> Any:
    """The model under 2-D inference wrappers (zoom-in, f-BRS, cascade): a native propagator runs it alone."""
    from segprompt.models.wrapper import innermost

    return innermost(segmenter)


def volume_support(segmenter: Any) -> str:
    """``"native"`` when ``segmenter`` propagates itself (or has a registered propagator), else ``"fallback"``."""
    segmenter = _unwrapped(segmenter)
    if isinstance(segmenter, VolumePropagator) or any(p in _PROPAGATORS for p in _class_paths(segmenter)):
        return "native"
    return "fallback"


def volume_propagator(segmenter: Any, method: Method = "auto", **fallback_settings: Any) -> VolumePropagator:
    """The propagator for ``segmenter``: its native one for ``"auto"`` / ``"native"`` where it has
    one, else (``"auto"`` / ``"fallback"``) :class:`~segprompt.volumes.fallback.FallbackPropagator`
    with ``fallback_settings`` (:class:`~segprompt.volumes.fallback.FallbackSettings` fields, or
    ``projection="box+point"`` and the other fields)."""
    if method not in METHODS:
        raise ConfigError(f"unknown propagation method {method!r}; use one of {', '.join(METHODS)}")
    if method != "fallback":
        native = _native(segmenter)
        if native is not None:
            if fallback_settings:
                raise ConfigError(f"{', '.join(sorted(fallback_settings))}: settings of the fallback, not of {getattr(segmenter, 'name', 'this model')}'s own propagation")
            return native
        if method == "native":
            raise ConfigError(f"model {getattr(segmenter, 'name', type(segmenter).__name__)!r} has no native volume propagation; use method 'fallback' or 'auto'")
    from segprompt.volumes.fallback import FallbackPropagator, FallbackSettings

    try:
        if {"use_box", "use_point", "use_mask"} & set(fallback_settings):
            settings = FallbackSettings(**fallback_settings)
        else:
            settings = FallbackSettings.from_projection(**fallback_settings)
    except TypeError as exc:
        raise ConfigError(f"unknown fallback setting: {exc}") from None
    return FallbackPropagator(segmenter, settings)


def segment_volume(
    segmenter: Any,
    volume: "Volume | np.ndarray",
    prompts: VolumePrompts,
    *,
    direction: Direction = "both",
    method: Method = "auto",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    **fallback_settings: Any,
) -> VolumeResult:
    """``init_volume`` then ``propagate`` in one call (see :func:`volume_propagator`)."""
    prop = volume_propagator(segmenter, method, **fallback_settings)
    start = time.perf_counter()
    state = prop.init_volume(volume)
    result = prop.propagate(state, prompts, direction=direction, progress=progress, cancel=cancel)
    return replace(result, seconds=time.perf_counter() - start)


def poll(cancel: CancelFn | None, what: str) -> None:
    """Raise :class:`Cancelled` saying ``what`` was done when ``cancel()`` is True."""
    if cancel is not None and cancel():
        raise Cancelled(f"volume propagation cancelled after {what}")


__all__ = [
    "DIRECTIONS",
    "METHODS",
    "Direction",
    "SlicePrompt",
    "Volume",
    "VolumePrompts",
    "VolumePropagator",
    "VolumeResult",
    "VolumeState",
    "as_volume",
    "check_direction",
    "register_volume_propagator",
    "segment_volume",
    "volume_propagator",
    "volume_support",
    "volume_window",
]
