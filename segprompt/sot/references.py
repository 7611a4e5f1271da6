"""k-shot reference (support) sampling per class, with Show-or-Tell's minimum-area rule.

>>> from segprompt.data import load_dataset
>>> from segprompt.sot import ReferenceIndex, min_area_for, sample_references
>>> train = load_dataset("synthetic-objects", n=16, seed=0, size=64)
>>> index = ReferenceIndex.build(train)            # one pass over the masks, reused for every class / seed
>>> refs = sample_references(train, "disc", shots=1, seed=0, min_area=0.01, index=index)
>>> refs[0].mask.dtype, refs[0].sample_id in index.ids
(dtype('bool'), True)

The rule, as SoT's ``data/*_fss.py: load_support_set`` (FocoosAI/ShowOrTell): the candidates of
a class are the training images that contain it; a candidate is rejected when the class covers
``<= min_area`` of the whole image (``mask.sum() <= H * W * min_area``, ignore pixels counted in
``H * W``); ``shots`` distinct images are drawn uniformly among the rest. SoT draws with the global
``np.random`` seeded once (``seed 0``) in class order, so one class's references depend on the
classes drawn before it; here class ``c`` draws ``default_rng([seed, c]).permutation(eligible)[:shots]``,
independent of the other classes, of the order they are asked in and of ``shots`` (the 1-shot
reference is the first of the 5-shot ones). The distribution is the same as SoT's (uniform without
replacement over the eligible images). We also never draw an excluded (evaluated) image, and
raise :class:`DataError` when fewer than ``shots`` images are eligible (SoT repeats images then).

Label-map datasets (``Sample.mask`` int labels): a class is its label value (index in
``class_names``) or its name. Binary datasets (bool masks): the one class is ``1`` (every sample
with a non-empty mask) or a text (samples whose ``texts`` hold it: the dataset's text, or one
structure of ``sammed2d_demo``); the seed key of a named binary class is ``crc32(name)``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from segprompt.data.sample import SegmentationDataset
from segprompt.errors import ConfigError, DataError

__all__ = [
    "MIN_AREA",
    "MIN_AREA_AS_RUN",
    "Reference",
    "ReferenceIndex",
    "min_area_for",
    "sample_reference_sets",
    "sample_references",
]

MIN_AREA: dict[str, float] = {
    "voc": 0.10,
    "pascal": 0.10,
    "pascalvoc": 0.10,
    "voc2012": 0.10,
    "ade": 0.04,
    "ade20k": 0.04,
    "cityscapes": 0.01,
}
"""SoT's minimum reference-mask share of the image per dataset (its ``pixel_percentage`` / 100):
Pascal VOC 10 %, ADE20K 4 %, Cityscapes 1 %. Its ten other datasets use 0 (no rejection), which is
also :func:`min_area_for`'s answer for any dataset not listed."""

MIN_AREA_AS_RUN: dict[str, float] = {**MIN_AREA, "voc": 0.02, "pascal": 0.02, "pascalvoc": 0.02, "voc2012": 0.02}
"""What SoT's released code applies: ``DatasetVOC.load_support_set(self, pixels_percentage=2)``
uses its argument (2 %), never the ``self.pixel_percentage = 10`` it declares; the others as
:data:`MIN_AREA`."""


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def min_area_for(dataset_name: str, table: Mapping[str, float] = MIN_AREA) -> float:
    """SoT's minimum area for ``dataset_name`` (case, ``-`` and ``_`` ignored); ``0.0`` when not listed."""
    norm = {_key(k): v for k, v in table.items()}
    return float(norm.get(_key(dataset_name), 0.0))


class Reference(NamedTuple):
    """One reference: the training sample's id and the class's ``(H, W)`` bool mask at its resolution.

    The image is ``dataset[index.position(sample_id)].image``.
    """

    sample_id: str
    mask: np.ndarray


@dataclass
class ReferenceIndex:
    """Per-sample class pixel counts of a training set, read once (label maps only: no images for
    :class:`~segprompt.data.labelmap.LabelMapDataset`).

    Attributes:
        name: the dataset's name. binary: bool-mask dataset.
        class_names: label-map class names (``()`` for binary sets).
        ids: sample ids in dataset order; image_keys: what identifies the image (``meta["image_id"]``,
            else ``meta["image_path"]``, else the id) so that several samples of one image are
            excluded together.
        pixels: ``(N,)`` image size ``H * W``.
        counts: ``(N, C)`` pixels of each class (label maps) or ``(N, 1)`` foreground pixels (binary).
        texts: per sample, its ``Sample.texts``.
    """

    name: str
    binary: bool
    class_names: tuple[str, ...]
    ids: list[str]
    image_keys: list[str]
    pixels: np.ndarray
    counts: np.ndarray
    texts: list[tuple[str, ...]]

    @classmethod
    def build(cls, dataset: SegmentationDataset) -> ReferenceIndex:
        """Read every sample's mask once."""
        from segprompt.data.labelmap import LabelMapDataset

        binary = getattr(dataset, "task", "binary") == "binary"
        names: tuple[str, ...] = () if binary else tuple(getattr(dataset, "class_names", ()) or ())
        ids, keys, pixels, counts, texts = [], [], [], [], []
        fast = isinstance(dataset, LabelMapDataset)
        for i, record in enumerate(dataset.records):
            if fast:
                sid, mask, sample_texts = dataset.record_id(record), dataset.read_labels(record["mask"]), ()
                meta: Mapping[str, Any] = {"image_path": str(record["image"])}
            else:
                sample = dataset[i]
                sid, mask, meta, sample_texts = sample.id, sample.mask, sample.meta, tuple(sample.texts)
                if not binary and not names:
                    names = tuple(sample.class_names)
            ids.append(str(sid))
            keys.append(str(meta.get("image_id") or meta.get("image_path") or sid))
            texts.append(sample_texts)
            if mask is None:
                pixels.append(0)
                counts.append(None)
                continue
            mask = np.asarray(mask)
            pixels.append(int(mask.shape[0] * mask.shape[1]))
            if binary:
                if mask.dtype != bool:
                    raise DataError(f"{dataset.name}: sample {sid!r} of a binary dataset has a {mask.dtype} mask, not bool")
                counts.append(np.array([int(mask.sum())]))
            else:
                if mask.dtype == bool:
                    raise DataError(f"{dataset.name}: sample {sid!r} has a bool mask in a label-map dataset")
                if not names:
                    raise DataError(f"{dataset.name}: a label-map dataset needs class_names to sample references by class")
                valid = mask[(mask >= 0) & (mask < len(names))].astype(np.int64)
                counts.append(np.bincount(valid.ravel(), minlength=len(names)))
        width = 1 if binary else len(names)
        table = np.stack([c if c is not None else np.zeros(width, dtype=np.int64) for c in counts]) if counts else np.zeros((0, width), dtype=np.int64)
        return cls(
            name=str(getattr(dataset, "name", "dataset")),
            binary=binary,
            class_names=names,
            ids=ids,
            image_keys=keys,
            pixels=np.asarray(pixels, dtype=np.int64),
            counts=table.astype(np.int64),
            texts=texts,
        )

    def position(self, sample_id: str) -> int:
        """Index in the dataset of ``sample_id``."""
        try:
            return self.ids.index(sample_id)
        except ValueError:
            raise DataError(f"{self.name}: no sample {sample_id!r}") from None

    def resolve(self, class_id_or_name: int | str) -> tuple[int, str, int, np.ndarray]:
        """``(label value or 1, display name, seed key, (N,) class pixel counts)`` of a class."""
        if self.binary:
            if isinstance(class_id_or_name, str):
                name = class_id_or_name
                has = np.array([name in t for t in self.texts], dtype=bool)
                if not has.any():
                    known = sorted({t for ts in self.texts for t in ts})
                    shown = ", ".join(known[:12]) + (" ..." if len(known) > 12 else "")
                    raise ConfigError(f"{self.name}: no sample has the text {name!r}; texts: {shown or '(none)'}")
                return 1, name, zlib.crc32(name.encode("utf-8")), np.where(has, self.counts[:, 0], 0)
            if int(class_id_or_name) != 1:
                raise ConfigError(f"{self.name} is binary: its class is 1 (the foreground) or a text, got {class_id_or_name!r}")
            return 1, "foreground", 1, self.counts[:, 0].copy()
        names = list(self.class_names)
        if isinstance(class_id_or_name, str):
            if class_id_or_name not in names:
                raise ConfigError(f"{self.name}: unknown class {class_id_or_name!r}; classes: {', '.join(names)}")
            c = names.index(class_id_or_name)
        else:
            c = int(class_id_or_name)
            if not 0 <= c < len(names):
                raise ConfigError(f"{self.name}: class id {class_id_or_name} outside 0-{len(names) - 1}")
        return c, names[c], c, self.counts[:, c].copy()

    def excluded(self, exclude_ids: Iterable[str]) -> np.ndarray:
        """``(N,)`` bool: samples whose id, or whose image, is in ``exclude_ids``."""
        ex = {str(e) for e in exclude_ids}
        where = {k: i for i, k in enumerate(self.ids)}
        keys = ex | {self.image_keys[where[e]] for e in ex if e in where}
        return np.array([sid in ex or key in keys for sid, key in zip(self.ids, self.image_keys)], dtype=bool)


def _check_args(shots: int, seed: int, min_area: float) -> None:
    if int(shots) < 1:
        raise ConfigError(f"shots must be >= 1, got {shots}")
    if int(seed) < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= float(min_area) < 1.0:
        raise ConfigError(f"min_area is a share of the image in [0, 1), got {min_area}")


def sample_references(
    dataset: SegmentationDataset,
    class_id_or_name: int | str,
    shots: int,
    seed: int,
    min_area: float = 0.0,
    exclude_ids: Iterable[str] = frozenset(),
    *,
    index: ReferenceIndex | None = None,
) -> list[Reference]:
    """``shots`` reference ``(sample_id, mask)`` pairs of one class from a training set.

    Args:
        dataset: the training split (label-map or binary :class:`SegmentationDataset`).
        class_id_or_name: label value or class name; for binary sets ``1`` or a text.
        shots: k, the number of distinct reference images.
        seed: run seed (>= 0); the class's draw is ``default_rng([seed, class key])``.
        min_area: reject a reference whose mask covers ``<= min_area`` of its image
            (:data:`MIN_AREA` / :func:`min_area_for` give SoT's per-dataset values).
        exclude_ids: sample ids (or image ids) never to draw: the evaluated images.
        index: a :class:`ReferenceIndex` of ``dataset`` to avoid re-reading every mask.

    Returns:
        ``shots`` :class:`Reference` tuples in draw order; masks are bool ``(H, W)``.

    Raises:
        DataError: fewer than ``shots`` eligible images (the message says how many exist and why
            the others were left out).
        ConfigError: unknown class, ``shots < 1``, negative seed, ``min_area`` outside ``[0, 1)``,
            or an ``index`` built from another dataset.
    """
    _check_args(shots, seed, min_area)
    if index is None:
        index = ReferenceIndex.build(dataset)
    elif len(index.ids) != len(dataset) or index.ids != dataset.ids:
        raise ConfigError(f"the reference index was built from another dataset than {getattr(dataset, 'name', 'this one')}")
    label, name, seed_key, count = index.resolve(class_id_or_name)
    contains = count > 0
    big = contains & (count > float(min_area) * index.pixels)
    excluded = index.excluded(exclude_ids)
    eligible = np.flatnonzero(big & ~excluded)
    if eligible.size < int(shots):
        n_small = int((contains & ~big).sum())
        n_excl = int((big & excluded).sum())
        raise DataError(
            f"{index.name}: class {name!r} has {eligible.size} eligible reference image(s), {shots} shot(s) asked: "
            f"{int(contains.sum())} of {len(index.ids)} images contain it, {n_small} cover <= min_area={min_area} of "
            f"their image, {n_excl} more are excluded (evaluated) images; lower shots or min_area, or use a larger "
            "training split"
        )
    rng = np.random.default_rng([int(seed), int(seed_key)])
    picks = eligible[rng.permutation(eligible.size)[: int(shots)]]
    refs = []
    for pos in picks:
        sample = dataset[int(pos)]
        if sample.mask is None:  # pragma: no cover - the index saw a mask
            raise DataError(f"{index.name}: sample {sample.id!r} lost its mask")
        mask = sample.mask.astype(bool) if index.binary else sample.mask == label
        refs.append(Reference(sample_id=str(sample.id), mask=np.asarray(mask, dtype=bool)))
    return refs


def sample_reference_sets(
    dataset: SegmentationDataset,
    classes: Sequence[int | str],
    shots: int,
    seed: int,
    min_area: float = 0.0,
    exclude_ids: Iterable[str] = frozenset(),
    *,
    index: ReferenceIndex | None = None,
) -> dict[int | str, list[Reference]]:
    """:func:`sample_references` for several classes (one index pass): ``{class: [Reference, ...]}``."""
    _check_args(shots, seed, min_area)
    index = index or ReferenceIndex.build(dataset)
    exclude = frozenset(str(e) for e in exclude_ids)
    return {c: sample_references(dataset, c, shots, seed, min_area, exclude, index=index) for c in classes}
