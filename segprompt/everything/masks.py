"""Mask helpers for automatic mask generation: grids, crops, stability, boxes, NMS, RLE, clean-up.

Each function follows the rule of the helper of the same purpose in segment-anything's
``segment_anything/utils/amg.py`` (cited per function); the code is our own. RLE is the
uncompressed pycocotools layout: ``{"size": [h, w], "counts": [run, ...]}`` over the mask in
column-major (Fortran) order, starting with a run of zeros (possibly of length 0).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from segprompt.errors import PromptError

#: distance (pixels) under which a box side counts as touching a crop side (amg.py ``atol``)
EDGE_TOLERANCE = 20.0


# -- sampling -----------------------------------------------------------------
def point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) (x, y) cell centres of an n x n grid over [0, 1]^2, rows of x varying fastest
    (amg.py ``build_point_grid``)."""
    if n_per_side < 1:
        return np.zeros((0, 2))
    side = (np.arange(n_per_side) + 0.5) / n_per_side
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer, layer i with ``int(n / downscale**i)`` points per side
    (amg.py ``build_all_layer_point_grids``)."""
    return [point_grid(int(n_per_side / downscale**i)) for i in range(n_layers + 1)]


def crop_boxes(size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes and their layer: the whole image, then 2^i x 2^i overlapping crops for
    layer i = 1..n_layers (amg.py ``generate_crop_boxes``; crops listed column by column)."""
    h, w = size
    boxes, layers = [[0, 0, w, h]], [0]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(h, w) * (2 / n))
        cw = int(math.ceil((overlap * (n - 1) + w) / n))
        ch = int(math.ceil((overlap * (n - 1) + h) / n))
        for i in range(n):
            for j in range(n):
                x0, y0 = int((cw - overlap) * i), int((ch - overlap) * j)
                boxes.append([x0, y0, min(x0 + cw, w), min(y0 + ch, h)])
                layers.append(layer)
    return boxes, layers


# -- scoring and boxes -----------------------------------------------------------
def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU of the masks cut at ``threshold + offset`` and ``threshold - offset`` (the first lies
    inside the second, so it is a ratio of areas); NaN for a mask empty at both cuts
    (amg.py ``calculate_stability_score``)."""
    # rows first in int16 (a row of under 32768 pixels fits), then int32: half the memory traffic
    row_dtype = torch.int16 if logits.shape[-1] < 2**15 else torch.int32
    inner = (logits > threshold + offset).sum(-1, dtype=row_dtype).sum(-1, dtype=torch.int32)
    outer = (logits > threshold - offset).sum(-1, dtype=row_dtype).sum(-1, dtype=torch.int32)
    return inner / outer


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool -> (B, 4) int64 XYXY with inclusive right/bottom pixel indices;
    [0, 0, 0, 0] for an empty mask (amg.py ``batched_mask_to_box``)."""
    b, h, w = masks.shape
    if b == 0:
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, -1).amax(1)
    x1 = torch.where(cols, ar_w, -1).amax(1)
    y0 = torch.where(rows, ar_h, h).amin(1)
    x0 = torch.where(cols, ar_w, w).amin(1)
    out = torch.stack([x0, y0, x1, y1], 1)
    empty = ~rows.any(1)
    out[empty] = 0
    return out


def near_crop_edge(boxes: torch.Tensor, crop: Sequence[int], image_box: Sequence[int], atol: float = EDGE_TOLERANCE) -> torch.Tensor:
    """(B,) bool: a side of the (crop-frame) box lies within ``atol`` of a crop side that is not
    also an image side (amg.py ``is_box_near_crop_edge``)."""
    dev = boxes.device
    x0, y0 = crop[0], crop[1]
    b = boxes.float() + torch.tensor([x0, y0, x0, y0], dtype=torch.float, device=dev)
    crop_t = torch.as_tensor(crop, dtype=torch.float, device=dev)
    image_t = torch.as_tensor(image_box, dtype=torch.float, device=dev)
    at_crop = (b - crop_t).abs() <= atol
    at_image = (b - image_t).abs() <= atol
    return (at_crop & ~at_image).any(1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept by greedy box NMS (torchvision ``batched_nms`` with one category, as
    segment-anything calls it), highest score first; equal scores keep the earlier box.

    Scores are replaced by their rank in a stable descending sort, so ties resolve the same way
    on every device and torchvision version.
    """
    from torchvision.ops import nms as tv_nms

    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores.float().cpu(), descending=True, stable=True).indices
    rank = torch.empty(len(order), dtype=torch.float)
    rank[order] = -torch.arange(len(order), dtype=torch.float)
    return tv_nms(boxes.float().cpu(), rank, float(iou_threshold))


# -- RLE ----------------------------------------------------------------------------
def masks_to_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """(B, H, W) bool -> uncompressed RLEs (amg.py ``mask_to_rle_pytorch``)."""
    b, h, w = masks.shape
    flat = masks.transpose(1, 2).reshape(b, h * w)
    change = (flat[:, 1:] != flat[:, :-1]).nonzero().cpu().numpy()
    first = flat[:, 0].cpu().numpy()
    bounds = np.searchsorted(change[:, 0], np.arange(b + 1))
    out = []
    for i in range(b):
        edges = np.concatenate([[0], change[bounds[i] : bounds[i + 1], 1] + 1, [h * w]])
        counts = ([0] if first[i] else []) + np.diff(edges).tolist()
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed or COCO (compressed string) RLE -> (H, W) bool."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        from pycocotools import mask as mask_utils

        enc = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        return mask_utils.decode(enc).astype(bool)
    counts = np.asarray(counts, np.int64)
    if counts.sum() != h * w:
        raise PromptError(f"RLE counts sum to {int(counts.sum())}, not {h} x {w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T.copy()


def rle_area(rle: dict[str, Any]) -> int:
    """Foreground pixels of an uncompressed RLE (every second run)."""
    return int(sum(rle["counts"][1::2]))


def coco_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> pycocotools compressed RLE with a str ``counts`` (JSON-able)."""
    from pycocotools import mask as mask_utils

    h, w = rle["size"]
    out = mask_utils.frPyObjects(rle, h, w)
    out["counts"] = out["counts"].decode("utf-8")
    return out


def as_mask(segmentation: Any) -> np.ndarray:
    """A record's ``segmentation`` (bool array or RLE dict) -> (H, W) bool."""
    if isinstance(segmentation, dict):
        return rle_to_mask(segmentation)
    return np.asarray(segmentation, bool)


# -- clean-up -------------------------------------------------------------------------
def remove_small_regions(mask: np.ndarray, min_area: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``min_area``
    (8-connected, OpenCV); if every island is small, the largest stays. Returns (mask, changed)
    (amg.py ``remove_small_regions``)."""
    import cv2

    holes = mode == "holes"
    work = (mask ^ holes).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(work, 8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.nonzero(sizes < min_area)[0] + 1
    if len(small) == 0:
        return mask, False
    if holes:
        # background of ``work`` (label 0) and the small holes become foreground
        return np.isin(labels, np.concatenate([[0], small])), True
    keep = np.setdiff1d(np.arange(1, n), small)
    if len(keep) == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, keep), True
