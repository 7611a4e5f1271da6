"""The distillation's images: which dataset items are usable, the held-out split, and each
image's pixels for the student and embedding for the teacher.

Only images are needed (masks are not read by stage 1). Each distinct source image is used
once (readers with several structures per image repeat it; ``meta["image_id"]`` names it). An
item that cannot be read is skipped and recorded in the run's ``errors.jsonl`` (once per run
folder, however often it is met again). The teacher's embeddings are computed once per image
and kept in a signed :class:`~segprompt.cache.EmbeddingCache` inside the run folder (the teacher
is frozen, so an embedding never changes; MobileSAM's reproduction likewise saves the teacher's
``SamPredictor.features`` per image before training: liuguoyou/MobileSAM-pytorch ``preprocess.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from segprompt.errors import DataError, PromptError

log = logging.getLogger("segprompt.distill")

#: what a reader or the image check raises for an unusable item
SKIPPABLE = (DataError, PromptError, OSError, ValueError)


def image_key(sample: Any) -> str:
    """The source image of a sample: ``meta["image_id"]``, else the sample id."""
    key = sample.meta.get("image_id") if getattr(sample, "meta", None) else None
    return str(sample.id if key is None else key)


def split_images(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, held-out) positions of ``n`` images: a permutation by ``seed``;
    the first ``round(val_fraction x n)`` (at least 1, at most n - 1) are held out."""
    if n < 2:
        raise DataError(f"distillation needs at least 2 usable images (training and held-out), got {n}")
    order = [int(i) for i in np.random.default_rng(seed).permutation(n)]
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


@dataclass
class DistillImages:
    """The usable items of a dataset and their split.

    Attributes:
        dataset: the :class:`SegmentationDataset` (read lazily, item by item).
        train: dataset indices used for training.
        val: dataset indices held out for the embedding MSE / cosine.
        ids: dataset index -> sample id (for error rows).
        skipped: number of items skipped while scanning.
    """

    dataset: Any
    train: list[int]
    val: list[int]
    ids: dict[int, str] = field(default_factory=dict)
    skipped: int = 0

    def image(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of dataset item ``index`` (raises what the reader raises)."""
        from segprompt.models.base import check_image

        return check_image(self.dataset[index].image)


def scan_images(dataset: Any, limit: int | None, val_fraction: float, seed: int, teacher: Any, run: Any, progress: bool = False) -> DistillImages:
    """Read every item once (the first ``limit``), skip and record unusable ones, keep one item
    per source image, encode each with ``teacher`` (filling its embedding cache) and split.

    ``teacher``: a :class:`SamSegmenter` with an embedding cache; ``run``: the RunFolder (or None).
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    ids = dataset.ids
    usable: list[int] = []
    seen: set[str] = set()
    skipped = 0
    for i in tqdm(range(n), desc="teacher embeddings", unit="image", disable=not progress, leave=False, delay=2.0):
        try:
            sample = dataset[i]
            key = image_key(sample)
            if key in seen:
                continue
            from segprompt.models.base import check_image

            teacher.encode(check_image(sample.image))
        except SKIPPABLE as exc:
            skipped += 1
            record_skip(run, ids[i], exc, stage="loading")
            continue
        seen.add(key)
        usable.append(i)
    train, val = split_images(len(usable), val_fraction, seed)
    return DistillImages(dataset, [usable[j] for j in train], [usable[j] for j in val], {i: ids[i] for i in usable}, skipped)


def record_skip(run: Any, item: str, exc: BaseException, **extra: Any) -> None:
    """Record a skipped input once per run folder (a WARNING line the first time)."""
    if run is None:
        log.warning("skipped %s: %s", item, exc)
    else:
        run.record_error_once(item, exc, **extra)


def student_pixels(image: np.ndarray, model: Any, device: str) -> torch.Tensor:
    """The student's input for one image: resized so its longest side is the student's
    ``img_size`` (PIL bilinear, as segment-anything), normalised and padded bottom-right by the
    model's own ``preprocess`` -> float32 (1, 3, S, S) on ``device``."""
    from segprompt.models.resize import LongestSide

    size = int(model.image_encoder.img_size)
    tf = LongestSide(size, (int(image.shape[0]), int(image.shape[1])))
    pixels = torch.from_numpy(np.array(tf.apply_image(image))).to(device).permute(2, 0, 1).contiguous()[None]
    return model.preprocess(pixels.float())


def load_pairs(images: DistillImages, indices: Sequence[int], model: Any, teacher: Any, device: str, run: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Student inputs (B, 3, S, S) and teacher embeddings (B, C_t, g_t, g_t), float32 on
    ``device``, of the readable items among ``indices`` ((None, None) when none is readable).
    The teacher's embeddings come from its cache (computed by :func:`scan_images`)."""
    xs, ts = [], []
    for i in indices:
        try:
            image = images.image(i)
        except SKIPPABLE as exc:
            record_skip(run, images.ids.get(i, str(i)), exc, stage="training")
            continue
        xs.append(student_pixels(image, model, device))
        ts.append(teacher.encode(image).features["embeddings"].to(device).float())
    if not xs:
        return None, None
    return torch.cat(xs), torch.cat(ts)


__all__ = ["DistillImages", "SKIPPABLE", "image_key", "load_pairs", "record_skip", "scan_images", "split_images", "student_pixels"]
