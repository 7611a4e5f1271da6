"""The :class:`Sample` every reader yields, and the :class:`SegmentationDataset` base class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

IGNORE_INDEX = 255


@dataclass
class Sample:
    """One image with its annotation.

    Attributes:
        id: a stable identifier, unique inside its dataset (the image file stem for folders).
        image: (H, W, 3) uint8 RGB.
        mask: for binary tasks a bool (H, W) mask; for multi-class tasks an int64 (H, W) label
            map whose pixels hold class indices, ``ignore_index`` where unlabelled; ``None`` when
            the dataset has no annotation for this image.
        texts: text prompts that describe the object (TuneVLSeg "p0".."pN", a class name, ...).
        class_names: for label maps, the name of each class index.
        ignore_index: label-map value excluded from metrics.
        meta: anything else the reader knows (paths, diagnosis, split, ...).
    """

    id: str
    image: np.ndarray
    mask: np.ndarray | None = None
    texts: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def is_binary(self) -> bool:
        return self.mask is not None and self.mask.dtype == bool


TaskKind = Literal["binary", "multiclass"]


class SegmentationDataset(Sequence[Sample]):
    """A list of samples read lazily: ``len(ds)``, ``ds[i]`` loads image and mask from disk.

    Subclasses fill ``self.records`` (one item per sample, whatever the reader needs) and
    implement :meth:`load`. ``ids`` lists the sample ids without reading any pixels.
    """

    name: str = "dataset"
    task: TaskKind = "binary"
    class_names: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX
    root: Path | None = None

    def __init__(self) -> None:
        self.records: list[Any] = []

    def record_id(self, record: Any) -> str:
        return str(record["id"] if isinstance(record, dict) else record)

    @property
    def ids(self) -> list[str]:
        return [self.record_id(r) for r in self.records]

    def load(self, record: Any) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("slice a dataset with dataset.subset(indices)")
        return self.load(self.records[index])

    def __iter__(self) -> Iterator[Sample]:
        for r in self.records:
            yield self.load(r)

    def subset(self, indices: Sequence[int]) -> "SegmentationDataset":
        """A view holding only ``indices`` (same loader)."""
        import copy

        view = copy.copy(self)
        view.records = [self.records[i] for i in indices]
        return view

    def __repr__(self) -> str:
        where = f", root={str(self.root)!r}" if self.root else ""
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)}, task={self.task!r}{where})"
