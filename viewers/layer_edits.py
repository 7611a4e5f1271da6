"""Undoable writes of panel results into the napari objects (labels) layer.

A panel (segment everything, volume propagation) writes its result with ``data_setitem`` and
keeps the labels layer's undo item of that write. Undoing it uses the layer's own undo when the
write is still the layer's newest edit (so Redo brings it back); after later edits on the layer,
only the voxels that still hold the written values are reset to 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def write_undoable(layer: Any, indices: tuple[np.ndarray, ...], values: Any) -> Any:
    """``layer.data_setitem(indices, values)``; returns the layer's undo item for it (None without one)."""
    layer.data_setitem(indices, values)
    history = getattr(layer, "_undo_history", None)
    return history[-1] if history else None


def revert_write(layer: Any, indices: tuple[np.ndarray, ...], values: Any, item: Any) -> None:
    """Undo a :func:`write_undoable` write (``values``: the array or scalar written, ``item``: its undo item)."""
    history = getattr(layer, "_undo_history", None)
    if item is not None and history and history[-1] is item:
        layer.undo()
    else:
        still = np.asarray(layer.data[indices]) == values
        layer.data_setitem(tuple(ix[still] for ix in indices), 0)
