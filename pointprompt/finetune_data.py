"""The finetuning's data: the usable samples of a dataset, their split by source image
(:func:`split_by_image`, :func:`load_split`), and each training image in the model's input
frame (:class:`FrameSample`). Inputs that cannot be used are skipped and recorded
(:func:`skip_input`). Re-exported by :mod:`pointprompt.finetune`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.engine.runfolder import RunFolder
from segprompt.errors import DataError, PromptError
from segprompt.models.resize import LongestSide
from segprompt.models.sam import SamSegmenter

from pointprompt.finetune_config import FinetuneConfig

#: the finetuning's one logger, whichever of its modules speaks
log = logging.getLogger("pointprompt.finetune")


@dataclass
class FrameSample:
    """One training image in the model's input frame."""

    id: str
    index: int
    image: np.ndarray  # (h, w, 3) uint8, resized (not padded)
    mask: np.ndarray  # (h, w) bool in the same frame
    lowres: np.ndarray  # (L, L) float32 target on the low-res logit grid (padded frame)
    transform: LongestSide
    original: Sample


def to_frame(sample: Sample, index: int, img_size: int, lowres: int) -> FrameSample:
    tf = LongestSide(img_size, sample.size)
    h, w = tf.input_size
    m = torch.from_numpy(np.asarray(sample.mask, np.float32))[None, None]
    mask = (F.interpolate(m, (h, w), mode="bilinear", align_corners=False)[0, 0] > 0.5).numpy()
    target = (tf.mask_to_lowres(sample.mask, lowres) >= 0.5).astype(np.float32)
    return FrameSample(sample.id, index, tf.apply_image(sample.image), mask, target, tf, sample)


def image_key(sample: Sample) -> str:
    """The source image of a sample: ``meta["image_id"]`` (readers with several structures per
    image set it), else the sample id."""
    key = sample.meta.get("image_id") if sample.meta else None
    return str(sample.id if key is None else key)


def split_by_image(keys: Sequence[str], val_fraction: float, seed: int, test_fraction: float = 0.0) -> tuple[list[int], list[int], list[int]]:
    """Deterministic train / validation / test indices of ``keys`` (one source-image key per
    sample), split by source image so that no image straddles two splits.

    The distinct images, in order of first appearance, are permuted by ``seed``; the first
    ``round(test_fraction x images)`` (at least 1 when ``test_fraction > 0``) are the test
    images, then ``round(val_fraction x the rest)`` (at least 1) the validation images; at least
    one image is left for training. With one sample per image and ``test_fraction=0`` this is
    the split of the code before test splits existed.
    """
    groups = list(dict.fromkeys(keys))
    g = len(groups)
    need = 3 if test_fraction > 0 else 2
    if g < need:
        what = "train, validation and test" if test_fraction > 0 else "train and validation"
        raise DataError(f"finetuning needs at least {need} usable source images ({what}), got {g}")
    order = [groups[i] for i in np.random.default_rng(seed).permutation(g)]
    n_test = min(g - 2, max(1, round(g * test_fraction))) if test_fraction > 0 else 0
    rest = order[n_test:]
    n_val = min(len(rest) - 1, max(1, round(len(rest) * val_fraction)))
    test, val = set(order[:n_test]), set(rest[:n_val])
    out: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i, k in enumerate(keys):
        out[2 if k in test else 1 if k in val else 0].append(i)
    return out


def skip_input(run: RunFolder | None, item: str, exc: BaseException, **extra: Any) -> None:
    """Record a skipped input in ``errors.jsonl`` once per run folder (a resumed run, or the next
    epoch's validation, meets the same bad file again: that is logged at DEBUG only)."""
    if run is None:
        log.warning("skipped %s: %s", item, exc)
    else:
        run.record_error_once(item, exc, **extra)


def _usable_samples(ds: SegmentationDataset, cfg: FinetuneConfig, run: RunFolder | None, progress: bool = False) -> list[Sample]:
    n = len(ds) if cfg.limit is None else min(cfg.limit, len(ds))
    ids = ds.ids
    out = []
    for i in tqdm(range(n), desc="loading images", unit="image", disable=not progress, leave=False, delay=2.0):
        try:
            s = ds[i]  # a missing mask or an unreadable image raises DataError here
            if s.mask is None or not np.asarray(s.mask).any():
                raise PromptError("empty ground-truth mask: no prompt can be drawn (image skipped)")
            out.append(s)
        except (DataError, PromptError) as exc:
            skip_input(run, ids[i], exc, stage="loading")
    return out


def load_split(
    cfg: FinetuneConfig, dataset: SegmentationDataset | None = None, run: RunFolder | None = None, progress: bool = False
) -> tuple[list[Sample], list[int], list[int], list[int]]:
    """The usable samples (readable, non-empty masks) and their deterministic train, validation
    and test indices, split by source image (:func:`split_by_image`; test empty when
    ``cfg.test_fraction`` is 0). Images that cannot be used are skipped and recorded in
    ``run``'s errors.jsonl.
    """
    from segprompt.data.registry import load_dataset

    ds = dataset if dataset is not None else load_dataset(cfg.dataset, **cfg.dataset_kwargs)
    samples = _usable_samples(ds, cfg, run, progress)
    train_idx, val_idx, test_idx = split_by_image([image_key(s) for s in samples], cfg.val_fraction, cfg.split_seed, cfg.test_fraction)
    return samples, train_idx, val_idx, test_idx


def _frames(samples: Sequence[Sample], indices: Sequence[int], seg: SamSegmenter, run: RunFolder | None) -> list[FrameSample]:
    """The training samples in the model frame; one that cannot be converted is skipped."""
    out = []
    for i in indices:
        try:
            out.append(to_frame(samples[i], i, seg.arch.img_size, seg.arch.lowres_size))
        except DataError as exc:
            skip_input(run, samples[i].id, exc, stage="training")
    return out
