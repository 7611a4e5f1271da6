"""The prompts of one training sample, in the model frame: the jittered ground-truth box
(MedSAM's, micro-sam's or the symmetric rule, :func:`medsam_box`, :func:`microsam_box`) and a
placement strategy's points, with the per-sample generator they are drawn from. The iterative
corrections live with the forward passes they follow (:class:`pointprompt.finetune_step.SamTrainStep`).
Re-exported by :mod:`pointprompt.finetune`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pointprompt.finetune_data import FrameSample
from pointprompt.strategies import create_strategy, is_correction


#: MedSAM's box shift is in pixels of its 1024 x 1024 input frame
MEDSAM_FRAME = 1024


@dataclass
class TrainPrompt:
    coords: np.ndarray  # (n, 2) model-frame (x, y)
    labels: np.ndarray  # (n,)
    box: np.ndarray | None  # (4,) model frame
    multimask: bool


def _rng(*keys: Any) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


def _box_prompt(fs: FrameSample, rng: np.random.Generator, jitter: float, mode: str = "medsam") -> TrainPrompt:
    """The ground-truth box in the model frame, jittered by ``mode`` (see :mod:`pointprompt.finetune`)."""
    ys, xs = np.nonzero(fs.mask)
    h, w = fs.mask.shape
    if mode == "medsam":
        box = medsam_box(fs.mask, rng, int(jitter), fs.transform.target / MEDSAM_FRAME)
    elif mode == "microsam":
        box = microsam_box(fs.mask, rng, jitter)
    else:  # "symmetric": the rule before MedSAM's, in pixels of the original image
        scale = fs.transform.input_size[1] / fs.transform.original_size[1]
        j = rng.uniform(-jitter, jitter, 4) * scale
        box = np.array([xs.min() + j[0], ys.min() + j[1], xs.max() + 1 + j[2], ys.max() + 1 + j[3]])
        box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
        box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
    return TrainPrompt(np.zeros((0, 2)), np.zeros(0, np.int64), np.asarray(box, np.float64), False)


def medsam_box(mask: np.ndarray, rng: np.random.Generator, shift: int, scale: float = 1.0) -> np.ndarray:
    """MedSAM's training box (bowang-lab/MedSAM ``train_one_gpu.py``, ``NpyDataset.__getitem__``):
    the tight box of ``mask`` as (x_min, y_min, x_max, y_max) with the max the last foreground
    index, each side moved OUTWARD by ``randint(0, shift)`` (inclusive; drawn in the order x_min,
    x_max, y_min, y_max), clipped to [0, W] x [0, H]. ``shift`` is in pixels of MedSAM's
    1024 x 1024 input frame; ``scale`` (frame side / 1024) turns it into this frame's pixels.
    The box always contains the tight box and stays in the image."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    d = [scale * int(rng.integers(0, shift, endpoint=True)) for _ in range(4)]
    return np.array([max(0.0, xs.min() - d[0]), max(0.0, ys.min() - d[2]), min(float(w), xs.max() + d[1]), min(float(h), ys.max() + d[3])])


def microsam_box(mask: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """micro-sam's distorted box (``training/util.py: ConvertToSamInputs._distort_boxes``): the
    region-props box (max exclusive), each side moved outward by ``uniform(0, factor)`` x the box
    side (drawn in the order y0, y1, x0, x1), rounded, clipped to the image; returned as XYXY."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    ly, lx = y1 - y0, x1 - x0
    y0 = int(round(max(0, y0 - rng.uniform(0, factor) * ly)))
    y1 = int(round(min(h, y1 + rng.uniform(0, factor) * ly)))
    x0 = int(round(max(0, x0 - rng.uniform(0, factor) * lx)))
    x1 = int(round(min(w, x1 + rng.uniform(0, factor) * lx)))
    return np.array([x0, y0, x1, y1], np.float64)


def _strategy_prompt(fs: FrameSample, rng: np.random.Generator, name: str, n_pos: int, n_neg: int, multimask: str = "auto") -> TrainPrompt:
    strat = create_strategy(name)
    if is_correction(strat):
        pts = strat.first(fs.mask, rng)
    else:
        pts = strat(fs.mask, fs.image, rng, n_pos, n_neg)
    return TrainPrompt(pts.coords.astype(np.float64), pts.labels, None, multimask == "auto" and len(pts) == 1)
