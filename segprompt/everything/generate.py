"""``segment_everything``: segment-anything's automatic mask generator over any Segmenter.

The algorithm is ``SamAutomaticMaskGenerator.generate`` (segment-anything
``segment_anything/automatic_mask_generator.py``), step for step:

1. crop boxes: the whole image, plus 2^i x 2^i overlapping crops per extra layer i;
2. per crop: encode the crop once, then decode a grid of single positive points,
   ``points_per_batch`` prompt sets per decoder call, 3 candidates per point (multimask);
3. per batch: keep candidates with predicted IoU > ``pred_iou_thresh`` and stability score
   >= ``stability_score_thresh`` (logits at the crop size cut at mask_threshold +- offset),
   binarise, drop masks whose box touches a crop side that is not an image side, paste into
   the image frame, compress to RLE;
4. per crop: box NMS (``box_nms_thresh``) by predicted IoU;
5. across crops: box NMS (``crop_nms_thresh``) preferring masks from smaller crops;
6. with ``min_mask_region_area`` > 0: fill small holes, drop small islands, NMS again
   preferring masks that needed no change.

With the ``sam`` segmenter the decoder gets the same inputs as segment-anything's, so the
masks agree (tests/test_everything.py). Other segmenters work too: those without full-size
logits count as perfectly stable, and those without a quality estimate (NaN scores) pass the
predicted-IoU filter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import numpy as np
import torch

from segprompt.errors import Cancelled, ConfigError
from segprompt.everything import masks as M
from segprompt.models.base import Segmenter
from segprompt.prompts import Points, PromptSet

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclass
class EverythingSettings:
    """``SamAutomaticMaskGenerator``'s settings, names and defaults (tuned there for ViT-H)."""

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: list[np.ndarray] | None = None
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"  # or "uncompressed_rle" / "coco_rle"

    def check(self) -> "EverythingSettings":
        """Raise ConfigError on an inconsistent setting; return self."""
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ConfigError("give exactly one of points_per_side and point_grids")
        if self.output_mode not in OUTPUT_MODES:
            raise ConfigError(f"unknown output_mode {self.output_mode!r}; use one of {', '.join(OUTPUT_MODES)}")
        if self.points_per_batch < 1:
            raise ConfigError(f"points_per_batch must be >= 1, got {self.points_per_batch}")
        if self.crop_n_layers < 0:
            raise ConfigError(f"crop_n_layers must be >= 0, got {self.crop_n_layers}")
        if self.point_grids is not None and len(self.point_grids) < self.crop_n_layers + 1:
            raise ConfigError(f"point_grids has {len(self.point_grids)} grids; crop_n_layers={self.crop_n_layers} needs one per layer")
        return self

    def grids(self) -> list[np.ndarray]:
        """Normalised (x, y) point grids in [0, 1], one per crop layer."""
        if self.point_grids is not None:
            return [np.asarray(g, np.float64).reshape(-1, 2) for g in self.point_grids]
        return M.layer_point_grids(int(self.points_per_side), self.crop_n_layers, self.crop_n_points_downscale_factor)


def _settings(settings: EverythingSettings | None, overrides: dict[str, Any]) -> EverythingSettings:
    base = settings if settings is not None else EverythingSettings()
    known = {f.name for f in fields(EverythingSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown segment_everything setting(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
    if overrides.get("point_grids") is not None and "points_per_side" not in overrides:
        overrides = {**overrides, "points_per_side": None}
    return replace(base, **overrides).check()


def _rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    from segprompt.data import to_rgb_uint8

    return to_rgb_uint8(arr)


def _decode(
    segmenter: Segmenter, state: Any, points: np.ndarray, pred_iou_thresh: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One positive point per set -> every candidate with predicted IoU > ``pred_iou_thresh``:
    (logits (M, H, W), scores (M,), points (M, 2), mask threshold), candidates in (set, k) order.

    A Segmenter with ``segment_lowres`` / ``upscale_lowres`` (SAM, SAM 2) has its candidates
    filtered by predicted IoU at low resolution, so only the kept ones are brought to the image
    size; segment-anything upscales all of them first. The kept logits are the same either way.
    Any other Segmenter's binary masks become +-inf logits (a binary mask is perfectly stable).
    """
    sets = [PromptSet(points=Points(p[None], np.ones(1, np.int64))) for p in points]
    lowres = getattr(segmenter, "segment_lowres", None)
    if lowres is not None:
        candidates, scores = lowres(state, sets, multimask_output=segmenter.has_multimask)
        threshold = float(getattr(getattr(segmenter, "model", None), "mask_threshold", 0.0))
    else:
        pred = segmenter.segment(state, sets, multimask="all" if segmenter.has_multimask else "single")
        candidates = torch.from_numpy(pred.masks)
        scores = torch.from_numpy(np.nan_to_num(pred.scores.astype(np.float32), nan=1.0))
        threshold = 0.0
    k = candidates.shape[1]
    candidates, scores = candidates.flatten(0, 1), scores.flatten(0, 1).float()
    pts = torch.as_tensor(np.repeat(points, k, axis=0))
    if pred_iou_thresh > 0:
        keep = scores > pred_iou_thresh
        if not bool(keep.all()):  # copies only when something is dropped
            candidates, scores, pts = candidates[keep], scores[keep], pts[keep.cpu()]
    if lowres is not None:
        return segmenter.upscale_lowres(state, candidates), scores, pts, threshold
    return torch.where(candidates, torch.inf, -torch.inf), scores, pts, threshold


def _process_batch(
    segmenter: Segmenter, state: Any, points: np.ndarray, crop: list[int], size: tuple[int, int], s: EverythingSettings
) -> dict[str, Any]:
    logits, scores, pts, threshold = _decode(segmenter, state, points, s.pred_iou_thresh)  # pred_iou_thresh applied

    def take(keep: torch.Tensor) -> None:  # copies only when something is dropped
        nonlocal logits, scores, pts
        if not bool(keep.all()):
            logits, scores, pts = logits[keep], scores[keep], pts[keep.cpu()]

    stability = M.stability_score(logits, threshold, s.stability_score_offset)
    if s.stability_score_thresh > 0:
        keep = stability >= s.stability_score_thresh
        take(keep)
        stability = stability[keep]
    masks = logits > threshold
    del logits
    boxes = M.mask_boxes(masks)
    h, w = size
    keep = ~M.near_crop_edge(boxes, crop, [0, 0, w, h]) & masks.flatten(1).any(1)
    if not bool(keep.all()):
        masks, boxes, scores, stability, pts = masks[keep], boxes[keep], scores[keep], stability[keep], pts[keep.cpu()]
    x0, y0, x1, y1 = crop
    if (x0, y0, x1, y1) != (0, 0, w, h):
        masks = torch.nn.functional.pad(masks, (x0, w - x1, y0, h - y1), value=False)
    return {
        "rles": M.masks_to_rle(masks),
        "boxes": boxes.cpu(),
        "scores": scores.cpu(),
        "stability": stability.cpu(),
        "points": pts.double(),
    }


_EMPTY = {
    "boxes": (torch.int64, (0, 4)),
    "scores": (torch.float, (0,)),
    "stability": (torch.float, (0,)),
    "points": (torch.float64, (0, 2)),
    "crops": (torch.int64, (0, 4)),
}


def _cat(parts: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Join per-batch (or per-crop) results: lists of RLEs end to end, tensors along dim 0."""
    out: dict[str, Any] = {"rles": [rle for p in parts for rle in p["rles"]]}
    for key in keys:
        dtype, shape = _EMPTY[key]
        out[key] = torch.cat([p[key] for p in parts]) if parts else torch.zeros(shape, dtype=dtype)
    return out


def _take(data: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    idx = keep.tolist()
    return {k: ([v[i] for i in idx] if k == "rles" else v[keep]) for k, v in data.items()}


def _clean_small_regions(data: dict[str, Any], min_area: int, nms_thresh: float) -> dict[str, Any]:
    """Fill small holes, drop small islands, NMS again preferring unchanged masks
    (``SamAutomaticMaskGenerator.postprocess_small_regions``)."""
    if not data["rles"]:
        return data
    cleaned, unchanged = [], []
    for rle in data["rles"]:
        mask, changed_holes = M.remove_small_regions(M.rle_to_mask(rle), min_area, "holes")
        mask, changed_islands = M.remove_small_regions(mask, min_area, "islands")
        cleaned.append(torch.from_numpy(mask))
        unchanged.append(not (changed_holes or changed_islands))
    stack = torch.stack(cleaned)
    boxes = M.mask_boxes(stack)
    keep = M.nms(boxes, torch.tensor(unchanged, dtype=torch.float), nms_thresh)
    data = dict(data, rles=list(data["rles"]), boxes=data["boxes"].clone())
    for i in keep.tolist():
        if not unchanged[i]:
            data["rles"][i] = M.masks_to_rle(stack[i : i + 1])[0]
            data["boxes"][i] = boxes[i]
    return _take(data, keep)


def segment_everything(
    segmenter: Segmenter,
    image: np.ndarray,
    settings: EverythingSettings | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **overrides: Any,
) -> list[dict]:
    """Every object in ``image``, as ``SamAutomaticMaskGenerator.generate`` finds them.

    Args:
        segmenter: a Segmenter that accepts point prompts (``sam`` gives segment-anything's masks);
            one under inference wrappers (``zoom_in``, ``brs``, ``cascade``) is used without them.
        image: (H, W, 3) uint8 RGB, or (H, W) grey of any dtype (uint16 included), converted by
            ``segprompt.data.to_rgb_uint8``.
        settings: an :class:`EverythingSettings`; keyword ``overrides`` replace its fields.
        progress: ``progress(done, total)`` after each batch, in points decoded over all crops.
        cancel: polled before each crop and each batch; True stops with :class:`Cancelled`.

    Returns:
        One record per mask: ``segmentation`` ((H, W) bool, or an RLE dict per ``output_mode``),
        ``area`` (int), ``bbox`` ([x, y, w, h] ints, w and h exclusive of the last pixel as in
        segment-anything), ``predicted_iou``, ``stability_score``, ``point_coords`` ([[x, y]]),
        ``crop_box`` ([x, y, w, h]).
    """
    from segprompt.models.wrapper import innermost

    segmenter = innermost(segmenter)  # zoom-in, f-BRS and the cascade are for prompted decodes, not the grid
    s = _settings(settings, overrides)
    if "points" not in segmenter.accepts:
        raise ConfigError(f"segment everything needs a model that takes point prompts; {segmenter.name!r} does not")
    image = _rgb(image)
    size = image.shape[:2]
    boxes, layers = M.crop_boxes(size, s.crop_n_layers, s.crop_overlap_ratio)
    grids = s.grids()
    total = sum(len(grids[layer]) for layer in layers)
    done = 0

    def stop() -> None:
        if cancel is not None and cancel():
            raise Cancelled(f"segment everything cancelled after {done} of {total} points")

    crops = []
    for crop, layer in zip(boxes, layers):
        stop()
        x0, y0, x1, y1 = crop
        state = segmenter.encode(image[y0:y1, x0:x1])
        points = grids[layer] * np.array([[x1 - x0, y1 - y0]], np.float64)
        parts = []
        with torch.no_grad():
            for start in range(0, len(points), s.points_per_batch):
                stop()
                chunk = points[start : start + s.points_per_batch]
                parts.append(_process_batch(segmenter, state, chunk, crop, size, s))
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        del state
        data = _cat(parts, ("boxes", "scores", "stability", "points"))
        data = _take(data, M.nms(data["boxes"], data["scores"], s.box_nms_thresh))
        offset = torch.tensor([x0, y0, x0, y0])
        data["boxes"] = data["boxes"] + offset
        data["points"] = data["points"] + torch.tensor([x0, y0], dtype=torch.float64)
        data["crops"] = torch.tensor([crop] * len(data["rles"]), dtype=torch.int64).reshape(-1, 4)
        crops.append(data)
    data = _cat(crops, ("boxes", "scores", "stability", "points", "crops"))
    if len(boxes) > 1:
        c = data["crops"].float()
        data = _take(data, M.nms(data["boxes"], 1.0 / ((c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])), s.crop_nms_thresh))
    if s.min_mask_region_area > 0:
        data = _clean_small_regions(data, s.min_mask_region_area, max(s.box_nms_thresh, s.crop_nms_thresh))
    return _records(data, s.output_mode)


def _xywh(box: torch.Tensor) -> list[int]:
    x0, y0, x1, y1 = (int(v) for v in box.tolist())
    return [x0, y0, x1 - x0, y1 - y0]


def _records(data: dict[str, Any], mode: str) -> list[dict]:
    out = []
    for i, rle in enumerate(data["rles"]):
        if mode == "binary_mask":
            seg: Any = M.rle_to_mask(rle)
        elif mode == "coco_rle":
            seg = M.coco_rle(rle)
        else:
            seg = rle
        out.append(
            {
                "segmentation": seg,
                "area": M.rle_area(rle),
                "bbox": _xywh(data["boxes"][i]),
                "predicted_iou": float(data["scores"][i]),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": float(data["stability"][i]),
                "crop_box": _xywh(data["crops"][i]),
            }
        )
    return out
