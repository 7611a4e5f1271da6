"""``label_map``: instance records -> one int32 label image."""

from __future__ import annotations

import numpy as np

from segprompt.errors import ConfigError, PromptError
from segprompt.everything.masks import as_mask


def label_map(records: list[dict], shape: tuple[int, int] | None = None, min_area: int = 0) -> np.ndarray:
    """int32 (H, W) label image from ``segment_everything`` records (binary or RLE ``segmentation``).

    0 is background; masks with fewer than ``min_area`` pixels are dropped; the rest are numbered
    1..K from the largest to the smallest (ties keep the records' order) and painted in that
    order, so a smaller mask lying on a larger one stays visible. ``shape`` is required when
    ``records`` is empty, and checked against every mask otherwise.
    """
    masks = [as_mask(r["segmentation"]) for r in records]
    if shape is None:
        if not masks:
            raise ConfigError("label_map() needs shape= when there are no records")
        shape = masks[0].shape
    shape = (int(shape[0]), int(shape[1]))
    out = np.zeros(shape, np.int32)
    areas = []
    for i, m in enumerate(masks):
        if m.shape != shape:
            raise PromptError(f"record {i} has a mask of shape {m.shape}, expected {shape}")
        areas.append(int(m.sum()))
    order = sorted((i for i in range(len(masks)) if areas[i] >= min_area and areas[i] > 0), key=lambda i: -areas[i])
    for label, i in enumerate(order, start=1):
        out[masks[i]] = label
    return out
