"""The TuneVLSeg split layout: read it, and write a folder dataset into it.

TuneVLSeg (Poudel et al., ACCV 2024; github.com/naamiinepal/tunevlseg) keeps each preprocessed
dataset as::

    <root>/images/<img_name>          # RGB images
    <root>/masks/<mask_name>          # grayscale masks, 0 = background, 255 = foreground
    <root>/anns/train.json            # one split file per split
    <root>/anns/val.json
    <root>/anns/test.json

Schema, as read by ``src/data/core_datasets/image_text_mask_dataset.py``
(``ImageTextMaskDataset``) and wired in ``configs/data/image_text_mask.yaml``: a split file is a
JSON **list**, one object per (image, mask) pair::

    [
      {"img_name": "cju0qkwl35piu0993l0dewei2.jpg",
       "mask_name": "cju0qkwl35piu0993l0dewei2.png",
       "prompts": {"p0": "polyp", "p1": "pink polyp", "p2": ["a round pink polyp", "..."]}},
      ...
    ]

* ``img_name`` / ``mask_name`` are paths relative to ``images/`` and ``masks/``.
* ``prompts`` maps ``"p<k>"`` to a string or to a list of strings (TuneVLSeg picks one at random
  from a list). ``p0`` is the plain class name; the others are richer descriptions.
* TuneVLSeg's ``prompt_index=k`` uses ``p<k>``; ``prompt_index=-1`` ("random") picks a random key
  among ``p1..pN`` (``p0`` excluded), keys ordered by their number.
* The mask is read as ``gray / 255`` (so 0/255 PNGs). CAMUS is the one set whose images and
  masks are further split into ``images/train`` and ``images/test`` (``val.json`` refers to
  ``images/train``; ``configs/data/image_text_mask_camus.yaml``); :class:`TuneVLSegDataset`
  looks for ``images/<split>`` first for that reason.

Here randomness is seeded: ``prompt="random"`` and list-valued prompts choose with
``numpy.random.default_rng([seed, index])`` where ``index`` is the entry's position in the split
file, so a seed always gives the same prompts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from segprompt.data.folder import mask_threshold_for
from segprompt.data.io import read_json, read_binary_mask, read_image, write_image, write_mask
from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

__all__ = ["TuneVLSegDataset", "read_split_file", "write_tunevlseg_split", "ordered_prompts", "SPLITS"]


def _prompt_number(key: str) -> int:
    try:
        return int(key[1:]) if key[:1] == "p" else -1
    except ValueError:
        return -1


def ordered_prompts(prompts: Mapping[str, Any]) -> list[tuple[str, str | list[str]]]:
    """``prompts`` items ordered p0, p1, ..., pN (by number, not by dict order)."""
    return sorted(prompts.items(), key=lambda kv: _prompt_number(kv[0]))


def read_split_file(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a TuneVLSeg split file (a JSON list of img_name/mask_name/prompts entries).

    Raises:
        DataError: the file is missing, not JSON, or an entry does not follow the schema.
    """
    path = Path(path)
    data = read_json(path, "split file")
    if not isinstance(data, list):
        raise DataError(f"{path}: a TuneVLSeg split file is a JSON list of entries, got a {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: entry {i} is a {type(entry).__name__}, expected an object with img_name, mask_name, prompts")
        for key in ("img_name", "mask_name"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise DataError(f"{path}: entry {i} has no {key!r} string")
        prompts = entry.get("prompts")
        if not isinstance(prompts, dict) or not prompts:
            raise DataError(f"{path}: entry {i} ({entry['img_name']}) has no 'prompts' object of p0..pN")
        for k, v in prompts.items():
            if _prompt_number(k) < 0:
                raise DataError(f"{path}: entry {i} ({entry['img_name']}) has prompt key {k!r}; keys are p0, p1, ...")
            ok = isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(s, str) for s in v))
            if not ok:
                raise DataError(f"{path}: entry {i} ({entry['img_name']}) prompt {k!r} must be a string or a list of strings")
    return data


class TuneVLSegDataset(SegmentationDataset):
    """Binary samples of a TuneVLSeg split (see the module doc for the layout and schema).

    Args:
        root: folder with ``images/``, ``masks/`` and ``anns/<split>.json``.
        split: ``"train"``, ``"val"``, ``"test"`` (any ``anns/<split>.json``), or None for every
            split file present (train, val, test order; ``meta["split"]`` tells which).
        prompt: ``"p<k>"`` or ``k`` (an int) picks that prompt; ``"random"`` picks one of
            ``p1..pN`` per entry like TuneVLSeg's ``prompt_index=-1`` (``p0`` when it is the only one).
        seed: seeds ``"random"`` and list-valued prompts.
        threshold: mask binarisation (None: strict 0/255, JPEG masks at 127).

    ``Sample.texts`` holds every prompt in p0..pN order (list values flattened);
    ``meta["prompt"]`` is the chosen one, ``meta["prompt_key"]`` its key.
    """

    task = "binary"

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        prompt: str | int = "p0",
        seed: int = 0,
        threshold: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        root = Path(root)
        self.root, self.seed, self.threshold = root, int(seed), threshold
        self.name = name or root.name
        anns = root / "anns"
        if not anns.is_dir():
            raise DataError(f"{root}: no anns/ folder; a TuneVLSeg dataset has images/, masks/ and anns/{{train,val,test}}.json")
        available = sorted(p.stem for p in anns.glob("*.json"))
        if isinstance(prompt, bool) or not (isinstance(prompt, int) or isinstance(prompt, str)):
            raise ConfigError(f"prompt must be 'p<k>', an int k or 'random', got {prompt!r}")
        if isinstance(prompt, int):
            if prompt < 0:
                raise ConfigError(f"prompt index must be >= 0 (use prompt='random'), got {prompt}")
            prompt = f"p{prompt}"
        if prompt != "random" and _prompt_number(prompt) < 0:
            raise ConfigError(f"prompt must be 'p<k>', an int k or 'random', got {prompt!r}")
        self.prompt = prompt
        if split is None:
            splits = [s for s in SPLITS if s in available] or available
            if not splits:
                raise DataError(f"{anns}: no split files (expected train.json, val.json, test.json)")
        else:
            if split not in available:
                raise DataError(
                    f"{anns}: no split file {split}.json (found: {', '.join(p + '.json' for p in available) or 'none'})"
                )
            splits = [split]
        self.split = split
        seen: dict[str, int] = {}
        for sp in splits:
            entries = read_split_file(anns / f"{sp}.json")
            image_dir = self._split_dir(root / "images", sp)
            mask_dir = self._split_dir(root / "masks", sp)
            for i, entry in enumerate(entries):
                rid = Path(entry["mask_name"]).with_suffix("").as_posix()
                if rid in seen:  # the same mask listed twice (or in two splits)
                    seen[rid] += 1
                    rid = f"{rid}_{seen[rid]}"
                else:
                    seen[rid] = 0
                self.records.append(
                    {"id": rid, "split": sp, "index": i, "entry": entry, "image": image_dir / entry["img_name"], "mask": mask_dir / entry["mask_name"]}
                )

    @staticmethod
    def _split_dir(folder: Path, split: str) -> Path:
        """``images/<split>`` (CAMUS; val lives in train) when present, else ``images``."""
        for cand in (folder / split, folder / "train" if split == "val" else None):
            if cand is not None and cand.is_dir():
                return cand
        return folder

    def _choose(self, record: Mapping[str, Any]) -> tuple[str, str]:
        prompts = ordered_prompts(record["entry"]["prompts"])
        rng = np.random.default_rng([self.seed, record["index"]])
        if self.prompt == "random":
            keys = [k for k, _ in prompts if k != "p0"] or [prompts[0][0]]
            key = keys[int(rng.integers(len(keys)))]
        else:
            key = self.prompt
            if key not in dict(prompts):
                raise DataError(
                    f"{self.root / 'anns' / (record['split'] + '.json')}: entry {record['index']} "
                    f"({record['entry']['img_name']}) has no prompt {key!r} (has {', '.join(k for k, _ in prompts)})"
                )
        value = dict(prompts)[key]
        if isinstance(value, list):
            value = value[int(rng.integers(len(value)))]
        return key, value

    def load(self, record: Mapping[str, Any]) -> Sample:
        image = read_image(record["image"])
        mask_path: Path = record["mask"]
        mask = read_binary_mask(mask_path, threshold=mask_threshold_for(mask_path, self.threshold))
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{mask_path}: mask size {mask.shape[0]}x{mask.shape[1]} differs from the image size "
                f"{image.shape[0]}x{image.shape[1]} of {record['image']}"
            )
        entry = record["entry"]
        texts: list[str] = []
        for _, v in ordered_prompts(entry["prompts"]):
            texts.extend(v if isinstance(v, list) else [v])
        key, chosen = self._choose(record)
        meta = {k: v for k, v in entry.items() if k not in ("img_name", "mask_name", "prompts")}
        meta.update(
            split=record["split"], img_name=entry["img_name"], mask_name=entry["mask_name"], prompts=dict(entry["prompts"]),
            prompt=chosen, prompt_key=key, image_path=str(record["image"]), mask_path=str(mask_path),
        )
        return Sample(id=record["id"], image=image, mask=mask, texts=tuple(texts), meta=meta)


def _split_counts(n: int, splits: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of ``n * fraction`` so the counts sum to ``n``."""
    fractions = {k: float(v) for k, v in splits.items()}
    if any(v < 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
        raise ConfigError(f"split fractions must be >= 0 and not all 0, got {dict(splits)}")
    total = sum(fractions.values())
    exact = {k: n * v / total for k, v in fractions.items()}
    counts = {k: int(np.floor(v)) for k, v in exact.items()}
    left = n - sum(counts.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), list(exact).index(k)))[:left]:
        counts[k] += 1
    # a split asked for (fraction > 0) gets at least one sample when there are enough
    wanted = [k for k, v in fractions.items() if v > 0]
    if n >= len(wanted):
        for k in wanted:
            if counts[k] == 0:
                donor = max(counts, key=lambda j: counts[j])
                counts[donor] -= 1
                counts[k] += 1
    return counts


def _prompts_for(sample: Sample, prompts: Callable[[Sample], Any] | Sequence[str] | str | None) -> dict[str, str]:
    if prompts is None:
        values: Any = sample.texts
    elif callable(prompts):
        values = prompts(sample)
    else:
        values = prompts
    if isinstance(values, str):
        values = [values]
    values = [str(v) for v in (values or [])]
    if not values:
        raise DataError(
            f"sample {sample.id!r} has no text prompt; pass prompts= (a list such as ['polyp', 'pink polyp'] or a callable)"
        )
    return {f"p{k}": v for k, v in enumerate(values)}


def _skip(errors: Any, item: str, dataset: Any, index: int) -> None:
    """Record a sample the dataset already knows it cannot load."""
    try:
        dataset[index]
    except DataError as exc:
        log.warning("skipped %s: %s", item, exc)
        errors.append({"item": item, "error": str(exc), "type": type(exc).__name__})


def write_tunevlseg_split(
    dataset: Iterable[Sample] | SegmentationDataset,
    out_root: str | Path,
    splits: Mapping[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1},  # noqa: B006 - read only
    seed: int = 0,
    prompts: Callable[[Sample], Any] | Sequence[str] | str | None = None,
    link: str = "copy",
    overwrite: bool = False,
) -> dict[str, int]:
    """Write binary samples in the TuneVLSeg layout; returns the number of entries per split.

    Args:
        dataset: a binary dataset (e.g. :class:`FolderDataset`) or a list of samples.
        out_root: the new dataset folder (``images/``, ``masks/``, ``anns/<split>.json``).
        splits: split name -> fraction; counts use largest-remainder rounding (10 samples at
            0.8/0.1/0.1 -> 8/1/1), each split with a fraction > 0 getting at least one sample
            when there are enough (6 -> 4/1/1); samples are assigned after a shuffle seeded by ``seed``.
        prompts: None uses each sample's ``texts`` as p0..pN; a list (or one string) gives the same
            prompts to every sample; a callable ``sample -> list[str] | str`` computes them.
        link: ``"copy"`` copies the original image file when the sample knows it
            (``meta["image_path"]``), ``"symlink"`` links it; otherwise the image is written as PNG.
            Masks are always written as 0/255 PNG ``masks/<id>.png``.
        overwrite: allow writing into an ``out_root`` that already has ``anns/``.

    A sample that cannot be read (a missing mask, an unreadable image: :class:`DataError`) or
    has no binary mask is skipped, with the reason in ``out_root/errors.jsonl``; the split
    fractions apply to the samples that remain (those the dataset already knows to be missing,
    ``dataset.missing``, are left out before splitting).
    """
    if link not in ("copy", "symlink"):
        raise ConfigError(f"link must be 'copy' or 'symlink', got {link!r}")
    out_root = Path(out_root)
    if (out_root / "anns").exists() and not overwrite:
        raise DataError(f"{out_root}: already holds anns/; pass --overwrite (overwrite=True) or choose another folder")
    from segprompt.engine.runfolder import JsonlLog

    samples_src = dataset
    if not hasattr(samples_src, "__len__"):
        samples_src = list(samples_src)
    known_bad = set(getattr(samples_src, "missing", ()))
    ids = getattr(samples_src, "ids", None)
    errors = JsonlLog(out_root / "errors.jsonl")
    usable = [i for i in range(len(samples_src)) if ids is None or ids[i] not in known_bad]  # type: ignore[arg-type]
    for i in range(len(samples_src)):  # type: ignore[arg-type]
        if ids is not None and ids[i] in known_bad:
            _skip(errors, ids[i], samples_src, i)
    n = len(usable)
    counts = _split_counts(n, splits)
    order = np.random.default_rng(seed).permutation(n)
    split_of: dict[int, str] = {}
    start = 0
    for name, c in counts.items():
        for j in order[start : start + c]:
            split_of[usable[int(j)]] = name
        start += c
    entries: dict[str, list[dict[str, Any]]] = {name: [] for name in splits}
    (out_root / "images").mkdir(parents=True, exist_ok=True)
    (out_root / "masks").mkdir(parents=True, exist_ok=True)
    for i in usable:
        try:
            sample = samples_src[i]  # type: ignore[index]
            if sample.mask is None or sample.mask.dtype != bool:
                raise DataError(f"sample {sample.id!r}: the TuneVLSeg layout needs a binary (bool) mask")
        except DataError as exc:
            item = ids[i] if ids is not None else str(i)
            log.warning("skipped %s: %s", item, exc)
            errors.append({"item": item, "error": str(exc), "type": type(exc).__name__})
            continue
        src = sample.meta.get("image_path")
        if src and Path(src).is_file():
            img_name = f"{sample.id}{Path(src).suffix.lower()}"
            dst = out_root / "images" / img_name
            if dst.exists() or dst.is_symlink():
                dst.unlink()
            if link == "symlink":
                os.symlink(Path(src).resolve(), dst)
            else:
                shutil.copyfile(src, dst)
        else:
            img_name = f"{sample.id}.png"
            write_image(out_root / "images" / img_name, sample.image)
        mask_name = f"{sample.id}.png"
        write_mask(out_root / "masks" / mask_name, sample.mask)
        entries[split_of[i]].append({"img_name": img_name, "mask_name": mask_name, "prompts": _prompts_for(sample, prompts)})
    (out_root / "anns").mkdir(parents=True, exist_ok=True)
    for name, rows in entries.items():
        with open(out_root / "anns" / f"{name}.json", "w", encoding="utf-8") as fp:
            json.dump(rows, fp, indent=2)
    return {name: len(rows) for name, rows in entries.items()}
