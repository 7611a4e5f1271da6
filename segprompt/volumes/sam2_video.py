"""Native volume propagation for ``sam2``: the sam2 package's video predictor on an in-memory stack.

.. code-block:: python

    seg = create_segmenter("sam2", checkpoint="sam2.1_hiera_tiny")
    state = seg.init_volume(volume)                     # (Z, H, W[, 3]); frames prepared once
    res = seg.propagate(state, VolumePrompts().add(6, points=[(30.5, 20.5)]), direction="both")
    res = seg.propagate(state, VolumePrompts().add(9, points=[(33, 22), (40, 30)], labels=[1, 0]))  # a correction
    res.labels, res.scores                              # (Z, H, W) int32, (n_objects, Z) float32

The slices are the frames of a video (slice ``z`` = frame ``z``). What follows
``SAM2VideoPredictor`` (sam2/sam2_video_predictor.py of the sam2 package 1.1.0) and
``load_video_frames`` (sam2/utils/misc.py):

* frames (:func:`prepare_frames`): each (H, W, 3) uint8 slice is resized to the model's square
  input with PIL's bicubic ``Image.resize`` (what ``_load_img_as_tensor`` does to a decoded
  JPEG), scaled to 0..1, normalised with the ImageNet mean / std on the compute device, or kept
  on the CPU with ``offload_video_to_cpu``. No file is written or read.
* state (:func:`new_inference_state`): the same dict ``init_state`` builds (same keys; the
  ``offload_state_to_cpu`` option keeps outputs and memories on the CPU), held in
  :attr:`VolumeState.native`. The image encoder runs lazily, frame by frame.
* prompts: each new :class:`~segprompt.volumes.api.SlicePrompt` becomes one
  ``add_new_points_or_box`` (points ``(x, y)`` in slice pixels with their labels, the box XYXY,
  scribbles as points along the stroke; ``clear_old_points=True``: a prompt replaces the earlier
  one on that slice and object) or, for a binary mask alone, ``add_new_mask``.
* propagation (:func:`plan_runs`): ``"forward"`` runs ``propagate_in_video`` from the first
  prompted slice (of any object) to the last slice; ``"backward"`` with ``reverse=True`` from the
  last prompted slice to slice 0; ``"both"`` as the package's examples: forward from the first
  prompted slice, then ``reverse=True`` from that same slice (its default start), so that slice
  is stepped twice (an object not prompted there is re-tracked on it from the slices above).
  Every prompted slice is a conditioning frame whose memory every tracked slice attends to
  (the model's own rule), so slices between prompted slices see all of them. With
  ``"forward"`` an object gets no mask below its own first prompted slice, with ``"backward"``
  none above its last one.
* corrections: the predictor is built with ``add_all_frames_to_correct_as_cond=true``, so a
  prompt on a slice that was already tracked (decoded with the memory and the earlier mask
  logits, as SAM 2 refines) becomes a conditioning frame and survives the next propagation.
  With the package's default (false) the correction is stored as a plain tracked frame and the
  next ``propagate_in_video`` overwrites it (facebookresearch/sam2 issues #546, #719, #731).
  Every ``propagate`` call re-tracks the whole range, like the package's demo.
* outputs: masks are the video-resolution logits ``> mask_threshold`` (0.0, as the package's
  examples); the score of an object on a slice is SAM 2's object-presence probability
  ``sigmoid(object_score_logits)`` of the stored frame output (the video predictor keeps no IoU
  estimate per tracked frame). A slice judged "no object" has an empty mask and a score < 0.5.
* memory dtype (:func:`match_memory_dtype`): the predictor stores memories in bfloat16 and
  relies on autocast; in float32 a slice whose memory holds no object pointer (an object
  tracked toward its own prompted slice from before it, or a backward run started below its
  prompted slice) fails with "mat1 and mat2 must have the same dtype" (facebookresearch/sam2
  issues #308, #577). The memory is cast to the memory attention's dtype, exactly
  (bf16 -> fp32), as torch's type promotion already does whenever pointers are present.
* hole filling (``fill_hole_area``) needs sam2's CUDA extension; where it is missing or the
  model runs on the CPU it is set to 0 (the package would skip it with a warning per frame).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from segprompt.errors import ConfigError, PromptError
from segprompt.prompts import PromptSet
from segprompt.volumes.api import (
    CancelFn,
    Direction,
    ProgressFn,
    SlicePrompt,
    Volume,
    VolumePrompts,
    VolumeResult,
    VolumeState,
    as_volume,
    check_direction,
    poll,
)

#: SAM 2's pixel statistics on a 0..1 scale (sam2/utils/misc.py: load_video_frames defaults)
FRAME_MEAN = (0.485, 0.456, 0.406)
FRAME_STD = (0.229, 0.224, 0.225)
#: the package's hole-filling area with postprocessing (sam2/build_sam.py: build_sam2_video_predictor)
PACKAGE_FILL_HOLE_AREA = 8


@dataclass(frozen=True)
class Sam2VideoSettings:
    """How ``sam2`` propagates through a volume (``Sam2Segmenter(video_settings=...)``).

    Attributes:
        offload_video_to_cpu: keep the prepared frames on the CPU (``init_state``'s option; saves
            GPU memory: 12 MB per slice at 1024 px).
        offload_state_to_cpu: keep per-slice outputs and memories on the CPU (``init_state``'s option).
        keep_features: keep every slice's image-encoder output, so a second ``propagate`` (after
            a correction) does not encode the slices again; the package keeps only the latest
            frame's. Memory grows with the stack (hiera at 1024 px: about 35 MB per slice).
        corrections_as_cond: build the predictor with ``add_all_frames_to_correct_as_cond``
            (a correction on a tracked slice survives the next propagation; module docstring).
        postprocessing: ``build_sam2_video_predictor(apply_postprocessing=...)``: the unstable
            single mask falls back to the best of three, click masks binarised for the memory,
            small holes filled.
        fill_hole_area: pixels of low-res holes to fill; None: the package's 8 when
            ``postprocessing`` and sam2's CUDA extension is there and the model is on a GPU, else 0.
        non_overlap_masks: the predictor's own non-overlap constraint between objects (off, as
            the package's default: :meth:`VolumeResult.from_masks` resolves overlaps by score).
    """

    offload_video_to_cpu: bool = False
    offload_state_to_cpu: bool = False
    keep_features: bool = False
    corrections_as_cond: bool = True
    postprocessing: bool = True
    fill_hole_area: int | None = None
    non_overlap_masks: bool = False

    @classmethod
    def coerce(cls, value: "Sam2VideoSettings | Mapping[str, Any] | None") -> "Sam2VideoSettings":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            try:
                return cls(**dict(value))
            except TypeError as exc:
                raise ConfigError(f"unknown sam2 video setting: {exc}") from None
        raise ConfigError(f"video_settings must be a Sam2VideoSettings or a dict, got {type(value).__name__}")

    def __post_init__(self) -> None:
        if self.fill_hole_area is not None and int(self.fill_hole_area) < 0:
            raise ConfigError(f"fill_hole_area must be >= 0 pixels, got {self.fill_hole_area}")


def has_cuda_extension() -> bool:
    """Whether sam2's compiled ``_C`` extension (connected components for hole filling) is installed."""
    try:
        return importlib.util.find_spec("sam2._C") is not None
    except (ImportError, ValueError):
        return False


def resolved_fill_hole_area(settings: Sam2VideoSettings, device: str) -> int:
    """The ``fill_hole_area`` the predictor gets (see :attr:`Sam2VideoSettings.fill_hole_area`)."""
    if settings.fill_hole_area is not None:
        return int(settings.fill_hole_area)
    usable = settings.postprocessing and str(device).startswith("cuda") and has_cuda_extension()
    return PACKAGE_FILL_HOLE_AREA if usable else 0


def _memory_to_weight_dtype(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    memory = kwargs.get("memory")
    if memory is None:
        return None
    dtype = next(module.parameters()).dtype
    if memory.dtype == dtype:
        return None
    kwargs = dict(kwargs)
    kwargs["memory"] = memory.to(dtype)
    if kwargs.get("memory_pos") is not None:
        kwargs["memory_pos"] = kwargs["memory_pos"].to(dtype)
    return args, kwargs


def match_memory_dtype(predictor: torch.nn.Module) -> torch.nn.Module:
    """Cast the memory a ``SAM2VideoPredictor`` feeds its memory attention to the attention's
    weight dtype (a forward pre-hook; module docstring, "memory dtype"). Under autocast the
    cast changes nothing: bf16 -> fp32 is exact and autocast rounds it back. Idempotent."""
    att = predictor.memory_attention
    if not getattr(att, "_segprompt_memory_dtype", False):
        att.register_forward_pre_hook(_memory_to_weight_dtype, with_kwargs=True)
        att._segprompt_memory_dtype = True
    return predictor


# -- frames and state ------------------------------------------------------------------------
def prepare_frames(data: np.ndarray, image_size: int, device: torch.device | str = "cpu", offload_video_to_cpu: bool = False) -> torch.Tensor:
    """Model input frames of a stack, as ``load_video_frames`` prepares a JPEG folder.

    Args:
        data: (Z, H, W, 3) uint8 RGB.
        image_size: side S of the model's square input.
        device: compute device; the frames stay on the CPU with ``offload_video_to_cpu``.

    Returns:
        float32 (Z, 3, S, S): each slice resized by PIL bicubic (aspect ratio not kept), / 255,
        minus :data:`FRAME_MEAN`, over :data:`FRAME_STD` (sam2/utils/misc.py:
        ``_load_img_as_tensor``, ``load_video_frames_from_jpg_images``).
    """
    from PIL import Image

    arr = np.asarray(data)
    if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
        raise ConfigError(f"prepare_frames needs (Z, H, W, 3) uint8 slices, got {arr.dtype} {arr.shape}")
    s = int(image_size)
    frames = torch.empty((len(arr), 3, s, s), dtype=torch.float32)
    for z, sl in enumerate(arr):
        small = np.asarray(Image.fromarray(np.ascontiguousarray(sl)).resize((s, s), Image.Resampling.BICUBIC))
        # float64 division then a float32 copy, as the package (numpy / 255.0 into a float32 tensor)
        frames[z] = torch.from_numpy(small / 255.0).permute(2, 0, 1)
    mean = torch.tensor(FRAME_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(FRAME_STD, dtype=torch.float32)[:, None, None]
    if not offload_video_to_cpu:
        frames, mean, std = frames.to(device), mean.to(device), std.to(device)
    frames -= mean
    frames /= std
    return frames


def new_inference_state(
    frames: torch.Tensor,
    video_size: tuple[int, int],
    device: torch.device,
    offload_video_to_cpu: bool = False,
    offload_state_to_cpu: bool = False,
) -> dict[str, Any]:
    """The ``inference_state`` dict of ``SAM2VideoPredictor.init_state`` for prepared ``frames``
    (Z, 3, S, S) of slices of ``video_size`` (H, W); nothing is encoded yet."""
    h, w = (int(v) for v in video_size)
    return {
        "images": frames,
        "num_frames": int(frames.shape[0]),
        "offload_video_to_cpu": bool(offload_video_to_cpu),
        "offload_state_to_cpu": bool(offload_state_to_cpu),
        "video_height": h,
        "video_width": w,
        "device": device,
        "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One ``propagate_in_video(start_frame_idx=start, max_frame_num_to_track=max_frames,
    reverse=reverse)`` call (``max_frames`` None: the whole stack)."""

    start: int
    reverse: bool
    max_frames: int | None = None

    def frames(self, depth: int) -> range:
        """The slices it yields, in order (the package's processing order: a reverse run from
        slice 0 yields nothing)."""
        n = depth if self.max_frames is None else int(self.max_frames)
        if self.reverse:
            return range(self.start, max(self.start - n, 0) - 1, -1) if self.start > 0 else range(0)
        return range(self.start, min(self.start + n, depth - 1) + 1)


def plan_runs(prompted: tuple[int, ...] | list[int], depth: int, direction: Direction = "both") -> list[Run]:
    """The ``propagate_in_video`` calls for prompts on slices ``prompted`` (any object) of a
    stack of ``depth`` slices (module docstring)."""
    check_direction(direction)
    if not prompted:
        raise PromptError("propagation needs at least one prompt on one slice")
    first, last = min(prompted), max(prompted)
    if direction == "forward":
        return [Run(first, False)]
    if direction == "backward":  # the package's reverse run from slice 0 yields nothing: step slice 0 alone
        return [Run(last, True)] if last > 0 else [Run(0, False, 0)]
    return [Run(first, False)] + ([Run(first, True)] if first > 0 else [])


def check_video_prompt(entry: SlicePrompt) -> SlicePrompt:
    """``entry`` if the video predictor can take it: points / box / scribbles together, or a
    binary mask alone (``add_new_mask``); else a one-line PromptError."""
    ps, where = entry.prompts, f"slice z={entry.z}, object {entry.obj_id}"
    unsupported = ps.kinds - {"points", "box", "scribble", "mask"}
    if unsupported:
        raise PromptError(f"{where}: sam2 volumes take points, boxes, scribbles or a mask, not {', '.join(sorted(unsupported))}")
    if ps.mask is not None:
        if ps.kinds != {"mask"}:
            raise PromptError(f"{where}: sam2's video predictor takes either a mask or points / box on a slice, not both")
        if ps.mask.kind != "binary":
            raise PromptError(f"{where}: give a binary (H, W) mask on a slice, not low-res logits")
    return entry


def _allowed(obj_slices: tuple[int, ...], z: int, direction: str) -> bool:
    if direction == "forward":
        return z >= obj_slices[0]
    if direction == "backward":
        return z <= obj_slices[-1]
    return True


# -- the propagator ------------------------------------------------------------------------------
class Sam2VolumePropagator:
    """The volume API over a ``Sam2Segmenter``'s weights run by ``SAM2VideoPredictor``.

    Args:
        segmenter: a :class:`~segprompt.models.sam2.Sam2Segmenter` (its model, device,
            precision, ``mask_threshold`` and ``scribble_points`` are used).
        settings: :class:`Sam2VideoSettings`.
    """

    method = "sam2"

    def __init__(self, segmenter: Any, settings: Sam2VideoSettings | Mapping[str, Any] | None = None) -> None:
        self.segmenter = segmenter
        self.settings = Sam2VideoSettings.coerce(settings)
        self._predictor: torch.nn.Module | None = None

    @property
    def predictor(self) -> torch.nn.Module:
        """The ``SAM2VideoPredictor`` (built on first use from the segmenter's weights)."""
        if self._predictor is None:
            st = self.settings
            extra = [f"++model.add_all_frames_to_correct_as_cond={'true' if st.corrections_as_cond else 'false'}"]
            extra.append(f"++model.non_overlap_masks={'true' if st.non_overlap_masks else 'false'}")
            pred = self.segmenter.video_predictor(postprocessing=st.postprocessing, extra_overrides=extra)
            # build_sam2_video_predictor appends its own fill_hole_area=8 after any override
            pred.fill_hole_area = resolved_fill_hole_area(st, str(self.segmenter.device))
            self._predictor = match_memory_dtype(pred)
        return self._predictor

    def init_volume(self, volume: "Volume | np.ndarray") -> VolumeState:
        """A state for ``volume`` ((Z, H, W) any dtype, (Z, H, W, 3), or a :class:`Volume`): the
        frames prepared once (:func:`prepare_frames`), sam2's ``inference_state`` in ``native``."""
        vol = as_volume(volume)
        pred = self.predictor
        frames = prepare_frames(vol.data, int(pred.image_size), pred.device, self.settings.offload_video_to_cpu)
        native = new_inference_state(frames, vol.shape[1:], pred.device, self.settings.offload_video_to_cpu, self.settings.offload_state_to_cpu)
        return VolumeState(volume=vol, method=self.method, native=native)

    # -- internals ----------------------------------------------------------------------------
    def _native(self, state: VolumeState) -> dict[str, Any]:
        native = state.native
        if not isinstance(native, dict) or "images" not in native or "output_dict_per_obj" not in native:
            raise ConfigError(f"this volume state was prepared by {state.method!r}, not by sam2: make it with seg.init_volume(volume)")
        if native["num_frames"] != state.shape[0] or (native["video_height"], native["video_width"]) != state.shape[1:]:
            raise ConfigError("this volume state's sam2 frames do not match its volume; make a new one with seg.init_volume(volume)")
        return native

    @contextlib.contextmanager
    def _session(self, state: VolumeState) -> Iterator[None]:
        """Autocast as the segmenter's precision, and (``keep_features``) every encoded slice
        kept in ``state.slices``: the predictor looks a frame up in ``cached_features`` and, on
        a miss, replaces the dict with that frame alone; we put our store back and keep what
        it added."""
        native = state.native
        keep = self.settings.keep_features
        store = state.slices  # z -> (frame, backbone output), as the predictor caches them
        if keep:
            native["cached_features"] = store
        try:
            with self.segmenter._autocast():
                yield
        finally:
            if keep:
                if native["cached_features"] is not store:
                    store.update(native["cached_features"])
                native["cached_features"] = store

    def _add(self, native: dict[str, Any], entry: SlicePrompt) -> None:
        """One ``add_new_points_or_box`` / ``add_new_mask`` call for ``entry`` (checked by
        :func:`check_video_prompt`)."""
        pred = self.predictor
        ps: PromptSet = entry.prompts
        if ps.mask is not None:
            pred.add_new_mask(native, frame_idx=entry.z, obj_id=entry.obj_id, mask=torch.from_numpy(np.asarray(ps.mask.data, bool)))
            return
        from segprompt.models.sam import scribble_to_points

        coords, labels = [], []
        if ps.points is not None:
            coords.append(np.asarray(ps.points.coords, np.float64))
            labels.append(np.asarray(ps.points.labels, np.int64))
        for sc in ps.scribbles:
            pts = scribble_to_points(sc.coords, int(getattr(self.segmenter, "scribble_points", 5)))
            coords.append(pts)
            labels.append(np.full(len(pts), sc.label, np.int64))
        points = np.concatenate(coords).astype(np.float32) if coords else None
        lab = np.concatenate(labels).astype(np.int32) if labels else None
        box = np.asarray(ps.box.xyxy, np.float32) if ps.box is not None else None
        pred.add_new_points_or_box(native, frame_idx=entry.z, obj_id=entry.obj_id, points=points, labels=lab, clear_old_points=True, box=box)

    def _score(self, native: dict[str, Any], obj_id: int, z: int) -> float:
        idx = native["obj_id_to_idx"][obj_id]
        outs = native["output_dict_per_obj"][idx]
        out = outs["cond_frame_outputs"].get(z)
        if out is None:
            out = outs["non_cond_frame_outputs"].get(z)
        if out is None or out.get("object_score_logits") is None:
            return math.nan
        return float(torch.sigmoid(out["object_score_logits"].float()).reshape(-1)[0])

    # -- the API --------------------------------------------------------------------------------
    def propagate(
        self,
        state: VolumeState,
        prompts: VolumePrompts | None = None,
        *,
        direction: Direction = "both",
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> VolumeResult:
        """Add ``prompts`` to ``state`` and propagate every object (module docstring).

        Args:
            state: from :meth:`init_volume`; its ``masks`` / ``scores`` are rebuilt by this call.
            prompts: new :class:`VolumePrompts` (None: propagate the prompts the state holds).
            direction: ``"both"`` (default), ``"forward"`` (toward higher z) or ``"backward"``.
            progress: ``progress(done, total)`` after each slice step (``total``: the steps of
                this call, :func:`plan_runs`; with ``"both"`` the first prompted slice is stepped
                by both runs; the prompts' own decoding comes first, uncounted).
            cancel: polled before each slice; True raises :class:`~segprompt.errors.Cancelled`,
                and ``state.result()`` then holds the slices done so far.

        Raises:
            PromptError: no prompt at all, a slice / point outside the volume, a prompt kind
                the video predictor cannot take. ConfigError: a state not made by sam2.
        """
        check_direction(direction)
        start = time.perf_counter()
        native = self._native(state)
        new = (prompts or VolumePrompts()).check(state.volume.data.shape)
        for entry in new:
            check_video_prompt(entry)
        all_prompts = state.prompts.merged(new)
        depth, h, w = state.shape
        runs = plan_runs(all_prompts.slices(), depth, direction)
        with self._session(state):
            for entry in new:
                poll(cancel, "0 slices (while adding the prompts)")
                self._add(native, entry)
                state.prompts = state.prompts.merged(VolumePrompts((entry,)))
        state.masks = {o: np.zeros((depth, h, w), bool) for o in all_prompts.obj_ids}
        state.scores = {o: np.full(depth, np.nan, np.float32) for o in all_prompts.obj_ids}
        bounds = {o: all_prompts.slices(o) for o in all_prompts.obj_ids}
        total, done = sum(len(r.frames(depth)) for r in runs), 0
        for run in runs:
            steps = self._steps(state, run)
            try:
                while True:
                    poll(cancel, f"{done} of {total} slices")
                    step = next(steps, None)
                    if step is None:
                        break
                    self._store(state, *step, bounds, direction)
                    done += 1
                    if progress is not None:
                        progress(done, total)
            finally:
                steps.close()
        return state.result(seconds=time.perf_counter() - start)

    def _steps(self, state: VolumeState, run: Run) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """``propagate_in_video``'s ``(z, obj_ids, video-res logits (n, 1, H, W))`` for ``run``,
        each step computed inside :meth:`_session`."""
        gen = self.predictor.propagate_in_video(state.native, start_frame_idx=run.start, max_frame_num_to_track=run.max_frames, reverse=run.reverse)
        try:
            while True:
                with self._session(state):
                    try:
                        step = next(gen)
                    except StopIteration:
                        return
                yield step
        finally:
            gen.close()

    def _store(self, state: VolumeState, z: int, ids: list[int], logits: torch.Tensor, bounds: dict[int, tuple[int, ...]], direction: str) -> None:
        """Slice ``z``'s masks (logits > ``mask_threshold``) and scores into ``state``."""
        masks = (logits[:, 0] > float(getattr(self.segmenter, "mask_threshold", 0.0))).cpu().numpy()
        for i, o in enumerate(ids):
            if o in state.masks and _allowed(bounds[o], z, direction):
                state.masks[o][z] = masks[i]
                state.scores[o][z] = self._score(state.native, o, z)


__all__ = [
    "FRAME_MEAN",
    "FRAME_STD",
    "Run",
    "Sam2VideoSettings",
    "Sam2VolumePropagator",
    "check_video_prompt",
    "has_cuda_extension",
    "match_memory_dtype",
    "new_inference_state",
    "plan_runs",
    "prepare_frames",
    "resolved_fill_hole_area",
]
