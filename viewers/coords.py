"""The one place where napari coordinates meet segprompt coordinates.

napari stores layer data in *array order*: the last two axes of a point or a shape vertex are
``(row, col)`` = ``(y, x)``, and a 3-D layer puts the slice index first: ``(z, y, x)``.
segprompt's prompts are ``(x, y)`` = ``(column, row)`` pixels of the 2-D image (see
``segprompt.prompts``). Every conversion in the plugin goes through :func:`rc_to_xy` and
:func:`xy_to_rc`; nothing else swaps axes.
"""

from __future__ import annotations

import numpy as np


def rc_to_xy(data: np.ndarray) -> np.ndarray:
    """napari layer coordinates ``(..., row, col)`` (N, D >= 2) -> float32 ``(x, y)`` (N, 2).

    Leading axes (the slice index of a 3-D layer) are dropped; select the slice first with
    :func:`slice_of`.
    """
    arr = np.asarray(data, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2), np.float32)
    arr = arr.reshape(-1, arr.shape[-1])
    if arr.shape[1] < 2:
        raise ValueError(f"napari coordinates need at least 2 axes (row, col), got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, [-1, -2]], dtype=np.float32)


def xy_to_rc(xy: np.ndarray, z: int | None = None) -> np.ndarray:
    """``(x, y)`` (N, 2) -> napari coordinates ``(row, col)``, or ``(z, row, col)`` when ``z`` is given."""
    arr = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    rc = arr[:, [1, 0]]
    if z is None:
        return rc
    return np.concatenate([np.full((len(rc), 1), float(z)), rc], axis=1)


def slice_of(data: np.ndarray, ndim_spatial: int) -> np.ndarray:
    """The slice index of every row of ``data`` (N, D): 0 for 2-D layers, ``round(z)`` for 3-D ones."""
    arr = np.asarray(data, dtype=np.float64)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    arr = arr.reshape(-1, arr.shape[-1])
    if ndim_spatial == 2:
        return np.zeros(len(arr), np.int64)
    return np.round(arr[:, -3]).astype(np.int64)


def clip_xy(xy: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Clip ``(x, y)`` points into ``[0, W] x [0, H]`` (a click on the border lands a hair outside)."""
    h, w = image_size
    arr = np.asarray(xy, dtype=np.float32).reshape(-1, 2).copy()
    arr[:, 0] = np.clip(arr[:, 0], 0, w)
    arr[:, 1] = np.clip(arr[:, 1], 0, h)
    return arr


__all__ = ["rc_to_xy", "xy_to_rc", "slice_of", "clip_xy"]
