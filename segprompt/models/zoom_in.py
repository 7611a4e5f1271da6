"""RITM's *zoom-in* for any Segmenter: after the first clicks, decode again on a crop around the object.

Interactive models see an image at their input size (universal-tiny: 256 px, SAM: 1024 px); a
small object covers few feature cells, and late corrections act on a coarse grid. RITM
(Sofiiuk et al. 2022, ``isegm/inference/transforms/zoom_in.py``; also used by f-BRS, FocalClick
and SimpleClick in their evaluation) crops the image around the current object and runs the
model on the crop, resized to the model's input. Its rules, kept here:

* no zoom while a set has at most ``skip_clicks`` clicks (RITM: 1, the first click sees the
  whole image);
* the region of interest is the box of the current mask (probability > ``prob_thresh``) joined
  with the positive clicks, grown ``expansion`` times about its centre (RITM: 1.4) to at least
  ``min_crop`` pixels a side, clamped to the image;
* the crop's prediction is pasted into an empty (background) mask of the image size.

One difference, because a Segmenter call is stateless (the same prompts give the same masks):
RITM takes "the current mask" from the previous click's prediction, kept inside the predictor.
Here it is the set's own mask prompt when one is given (``MaskPrompt``, as with the point
benchmark's ``--mask-feedback``), else the prediction for the same prompts on the whole image
(one more decode, no second image encoding). RITM also keeps its region until it moves by more
than ``recompute_thresh_iou``; a stateless call recomputes it every time.

.. code-block:: python

    seg = create_segmenter("universal-tiny", zoom_in=True)        # or ZoomIn(create_segmenter(...))
    pred = seg.predict(image, PromptSet(points=Points(xy, labels)))   # masks at the image size
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from segprompt.errors import ConfigError
from segprompt.models.base import ImageState, Prediction, Segmenter
from segprompt.models.wrapper import WrappedSegmenter, wrap_on_request
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet, Scribble

__all__ = ["ZoomInSettings", "ZoomInSegmenter", "object_roi", "zoom_in", "clicks_agreed", "crop_prompts"]


#: a region narrower than this (pixels) is not zoomed on: the whole-image decode stays
MIN_CROP_PIXELS = 8


@dataclass(frozen=True)
class ZoomInSettings:
    """RITM's ZoomIn parameters (its defaults, except ``min_crop``: RITM's 200 px is for 400-600
    px evaluation images; here it is a share of the image's longest side).

    Attributes:
        skip_clicks: sets with at most this many clicks are decoded on the whole image.
        expansion: the region's box is grown this many times about its centre.
        min_crop: smallest crop side, as a share of the image's longest side (0..1).
        prob_thresh: probability above which a pixel belongs to the current mask.
        keep_better: keep the whole-image mask where it agrees with more of the set's clicks than
            the crop's (positive clicks inside, negative outside); RITM always takes the crop's.
    """

    skip_clicks: int = 1
    expansion: float = 1.4
    min_crop: float = 0.25
    prob_thresh: float = 0.5
    keep_better: bool = False

    def __post_init__(self) -> None:
        if self.skip_clicks < 0:
            raise ConfigError(f"zoom-in skip_clicks must be >= 0, got {self.skip_clicks}")
        if self.expansion < 1:
            raise ConfigError(f"zoom-in expansion must be >= 1, got {self.expansion}")
        if not 0 <= self.min_crop <= 1:
            raise ConfigError(f"zoom-in min_crop is a share of the image side in [0, 1], got {self.min_crop}")


def object_roi(mask: np.ndarray, points: Points | None, settings: ZoomInSettings) -> tuple[int, int, int, int] | None:
    """Region of interest ``(x0, y0, x1, y1)`` (pixel edges, x1 / y1 exclusive) around bool
    ``mask`` (H, W) and the positive clicks of ``points``; None when both are empty.

    The box of the union is grown ``settings.expansion`` times about its centre, each side to at
    least ``settings.min_crop`` x max(H, W) pixels, then clamped to the image (RITM's
    ``get_object_roi`` + ``expand_bbox`` + ``clamp_bbox``)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    xs_f, ys_f = xs.astype(np.float64), ys.astype(np.float64)
    if points is not None and len(points):
        pos = points.coords[points.labels == 1]
        xs_f = np.concatenate([xs_f, np.clip(np.floor(pos[:, 0]), 0, w - 1)])
        ys_f = np.concatenate([ys_f, np.clip(np.floor(pos[:, 1]), 0, h - 1)])
    if xs_f.size == 0:
        return None
    x0, x1 = xs_f.min(), xs_f.max() + 1
    y0, y1 = ys_f.min(), ys_f.max() + 1
    smallest = settings.min_crop * max(h, w)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w = max((x1 - x0) * settings.expansion, smallest) / 2
    half_h = max((y1 - y0) * settings.expansion, smallest) / 2
    rx0, rx1 = int(np.floor(max(0.0, cx - half_w))), int(np.ceil(min(float(w), cx + half_w)))
    ry0, ry1 = int(np.floor(max(0.0, cy - half_h))), int(np.ceil(min(float(h), cy + half_h)))
    return rx0, ry0, max(rx1, rx0 + 1), max(ry1, ry0 + 1)


def clicks_agreed(mask: np.ndarray, points: Points) -> int:
    """How many of ``points`` bool ``mask`` (H, W) agrees with: positive clicks on a mask pixel,
    negative clicks off the mask."""
    h, w = mask.shape
    col = np.clip(np.floor(points.coords[:, 0]).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(points.coords[:, 1]).astype(np.int64), 0, h - 1)
    return int((mask[row, col] == (points.labels == 1)).sum())


def crop_prompts(prompts: PromptSet, roi: tuple[int, int, int, int], image_size: tuple[int, int]) -> PromptSet:
    """``prompts`` in the frame of the crop ``roi`` of an image of ``image_size`` (H, W): clicks
    shifted (clicks outside the crop dropped: the crop's outside is background anyway), the box
    shifted and clipped, scribbles shifted and clipped, a binary mask cropped; a logits mask prompt is dropped (its frame is the
    whole image's model input; the region already used it)."""
    x0, y0, x1, y1 = roi
    points = None
    if prompts.points is not None and len(prompts.points):
        c = prompts.points.coords
        inside = (c[:, 0] >= x0) & (c[:, 0] <= x1) & (c[:, 1] >= y0) & (c[:, 1] <= y1)
        if inside.any():
            points = Points(c[inside] - np.array([x0, y0], np.float32), prompts.points.labels[inside])
    box = None
    if prompts.box is not None:
        b = prompts.box.xyxy
        box = Box(np.clip(b - np.array([x0, y0, x0, y0], np.float32), 0, [x1 - x0, y1 - y0, x1 - x0, y1 - y0]))
    mask = None
    if prompts.mask is not None and prompts.mask.kind == "binary":
        mask = MaskPrompt(np.asarray(prompts.mask.data, bool)[y0:y1, x0:x1], kind="binary")
    scribbles = tuple(
        Scribble(np.clip(sc.coords - np.array([x0, y0], np.float32), 0, [x1 - x0, y1 - y0]), sc.label, sc.width) for sc in prompts.scribbles
    )
    return PromptSet(points=points, box=box, scribbles=scribbles, mask=mask, text=prompts.text, reference=prompts.reference)


class ZoomInSegmenter(WrappedSegmenter):
    """``inner`` with RITM's zoom-in (module docstring). Masks and scores are the crop's, pasted
    into the image; ``logits`` stay those of the whole-image decode (the memory prompt a caller
    feeds back is in the whole image's frame), so a fed-back mask prompt steers the region."""

    settings_class = ZoomInSettings
    option = "zoom_in"

    def __init__(self, inner: Segmenter, settings: ZoomInSettings | None = None, **kwargs: Any) -> None:
        super().__init__(inner, settings, **kwargs)
        #: decodes on a crop (one crop encoding each), for cost tables
        self.zoomed = 0

    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        inner_state: ImageState = state.features["inner"]
        whole = self.inner._segment(inner_state, prompts, multimask_output, select)
        if whole.masks.shape[1] > 1 and select in ("first", "best"):
            whole = whole.select(select)  # type: ignore[arg-type]
        masks, scores = whole.masks.copy(), whole.scores.copy()
        chosen = None if whole.chosen is None else whole.chosen.copy()
        h, w = state.original_size
        for i, s in enumerate(prompts):
            if s.points is None or len(s.points) <= self.settings.skip_clicks:
                continue
            current = self._current_mask(inner_state, s, whole, i)
            roi = object_roi(current, s.points, self.settings)
            if roi is None or roi == (0, 0, w, h) or min(roi[2] - roi[0], roi[3] - roi[1]) < MIN_CROP_PIXELS:
                continue  # nothing to zoom on, the whole image already, or too few pixels to encode
            x0, y0, x1, y1 = roi
            crop_state = self.inner.encode(np.ascontiguousarray(state.image[y0:y1, x0:x1]))  # type: ignore[index]
            local = self.inner._segment(crop_state, [crop_prompts(s, roi, (h, w))], multimask_output, select)
            if local.masks.shape[1] != masks.shape[1]:
                local = local.select(select or "best")  # type: ignore[arg-type]
            pasted = np.zeros_like(masks[i])
            pasted[:, y0:y1, x0:x1] = local.masks[0]
            if self.settings.keep_better and clicks_agreed(pasted[0], s.points) < clicks_agreed(masks[i, 0], s.points):
                continue
            masks[i] = pasted
            scores[i] = local.scores[0]
            if chosen is not None and local.chosen is not None:
                chosen[i] = local.chosen[0]
            self.zoomed += 1
        return Prediction(masks=masks, scores=scores, logits=whole.logits, chosen=chosen)

    def _current_mask(self, inner_state: ImageState, prompts: PromptSet, whole: Prediction, row: int) -> np.ndarray:
        """bool (H, W): the set's binary mask prompt, its logits mask prompt brought to the image
        size, else the whole-image prediction's best candidate."""
        if prompts.mask is not None and prompts.mask.kind == "binary":
            return np.asarray(prompts.mask.data, bool)
        if prompts.mask is not None and hasattr(self.inner, "transform"):
            import torch

            logits = torch.from_numpy(np.asarray(prompts.mask.data, np.float32))[None, None]
            prob = self.inner.transform(inner_state.original_size).upscale_logits(logits)[0, 0].sigmoid()
            return (prob > self.settings.prob_thresh).numpy()
        k = 0 if whole.masks.shape[1] == 1 else int(np.nan_to_num(whole.scores[row], nan=-np.inf).argmax())
        return whole.masks[row, k]


def zoom_in(inner: Segmenter, zoom: bool | dict | ZoomInSettings | None) -> Segmenter:
    """``inner`` wrapped in :class:`ZoomInSegmenter` when ``zoom`` asks for it (True, a dict of
    :class:`ZoomInSettings` fields, or settings); ``inner`` itself for None / False."""
    return wrap_on_request(inner, zoom, ZoomInSegmenter)
