"""The 3-D point-prompt benchmark: prompt one slice of each object, propagate, score in 3-D.

.. code-block:: python

    from pointprompt.bench_volume import VolumeBenchConfig, run_volume_bench

    cfg = VolumeBenchConfig(models=["sam-tiny", "grabcut"], prompts=["centre", "centre+box"],
                            dataset_kwargs={"synthetic-volumes": {"n": 10, "size": (64, 96)}})
    summary = run_volume_bench(cfg, "runs/pointprompt-volumes/demo")
    summary["table"]     # one row per (dataset, model, prompt): mean / std 3-D Dice over objects, n
    summary["curves"]    # mean / std slice IoU per dz (slices from the prompted one)

Protocol, per volume, model and prompt (after micro-sam's evaluation of volumetric
segmentation, micro_sam/evaluation/multi_dimensional_segmentation.py:
``segment_slices_from_ground_truth``):

1. every object of the label volume (each id > 0) is prompted on one slice ``z_prompt``:
   ``slice_choice="middle"`` (default) takes the middle of its z-extent,
   ``floor((z_first + z_last) / 2)`` as micro-sam does; ``"largest"`` the slice where its area is
   largest (ties: the lowest z). The prompt is a placement strategy's points on that slice's
   ground truth (``create_strategy(name)(mask, image, rng, n_positive, n_negative)``, as the 2-D
   benchmark, :mod:`pointprompt.bench`); ``"NAME+box"`` adds the object's tight box there, and
   ``"box"`` is the box alone (micro-sam's default first-slice prompt);
2. all objects of the volume are propagated together, both ways by default, in one
   :func:`segprompt.volumes.segment_volume` call: natively where the model has its own
   propagation (``sam2``: its video predictor), else by the slice-by-slice fallback
   (:mod:`segprompt.volumes.fallback`, box + centre point from the neighbour's mask);
3. each object is scored on the resulting label volume (overlaps resolved by score, as the
   volume API does): 3-D Dice and IoU against its ground truth, the IoU on every slice where the
   prediction or the ground truth holds it (``slice_iou``: ``[[dz, iou], ...]`` with
   ``dz = z - z_prompt``), and the ground-truth slices covered (slice IoU >= ``cover_iou``).

Every results.jsonl row is one (dataset, volume, object, model, prompt); ``seconds`` is the
volume's propagation call (all its objects together, slices encoded included), the same in each
of its objects' rows. The predicted label volume of each (volume, model, prompt) is kept in
``labels/<dataset>/<model>/<prompt>/<volume>.npz`` (key ``labels``, (Z, H, W) uint16), so every
number can be recomputed. Randomness comes from ``(seed, volume id, object, strategy)``; a rerun
on the same folder computes only the missing units, and bad volumes land in errors.jsonl.

Volume sources (:func:`open_volume_source`): ``"synthetic-volumes"``
(:class:`SyntheticVolumes`, seeded :func:`segprompt.data.synthetic.synthetic_volume`) or a
folder (:class:`VolumeFolder`): ``images/NAME.tif`` (TIFF stack, ``.nii`` / ``.nii.gz`` or
``.npy``, read by :func:`segprompt.volumes.io.read_volume`) with ``labels/NAME.<any of those>``,
an integer label stack of the same (Z, H, W), matched by NAME.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from segprompt.engine.report import short_name
from segprompt.engine.runfolder import RunFolder
from segprompt.errors import ConfigError, DataError, PromptError
from segprompt.fileio import atomic_path
from segprompt.models.base import Segmenter
from segprompt.prompts import Box, PromptSet
from segprompt.volumes import VolumePrompts, Volume, segment_volume, volume_support
from segprompt.volumes.api import DIRECTIONS, METHODS

from pointprompt.strategies import check_budget, create_strategy, is_correction, needs_model

log = logging.getLogger(__name__)

SUITE = "pointprompt-volumes"
SLICE_CHOICES = ("middle", "largest")
BOX = "box"


# -- volume sources ------------------------------------------------------------------------------
@dataclass
class VolumeItem:
    """One volume with its ground truth: ``volume.data`` (Z, H, W, 3) uint8, ``labels`` (Z, H, W)
    int32 (0 background, each id > 0 one object)."""

    id: str
    volume: Volume
    labels: np.ndarray


class VolumeSource(Protocol):
    """A list of volumes: ``ids`` known without reading them, ``load(i)`` reads one (DataError if bad)."""

    ids: list[str]

    def load(self, i: int) -> VolumeItem: ...


def _checked_labels(labels: np.ndarray, shape: tuple[int, int, int], what: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim == 4 and lab.shape[3] == 1:
        lab = lab[..., 0]
    if lab.shape != shape:
        raise DataError(f"{what}: label stack of shape {lab.shape} does not match its volume's (Z, H, W) = {shape}")
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise DataError(f"{what}: labels must be integer object ids, got non-integer values")
    elif lab.dtype.kind not in "iub":
        raise DataError(f"{what}: labels must be integer object ids, got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    if lab.min() < 0:
        raise DataError(f"{what}: labels must be >= 0 (0 background), got {lab.min()}")
    if not lab.any():
        raise DataError(f"{what}: the label stack holds no object (all 0)")
    return lab.astype(np.int32)


class SyntheticVolumes:
    """``n`` seeded synthetic stacks (:func:`segprompt.data.synthetic.synthetic_volume`).

    Args:
        n: number of volumes. seed: volume ``i`` depends only on ``(seed, i, depth, size, n_objects)``.
        depth: slices per volume. n_objects: objects per volume.
        size: slice side in pixels, or ``(low, high)``: sizes spread evenly from low to high over
            the volumes (volume 0 low, the last high).
    """

    def __init__(self, n: int = 10, seed: int = 0, depth: int = 12, size: int | Sequence[int] = 64, n_objects: int = 2) -> None:
        if n < 1:
            raise ConfigError(f"synthetic-volumes needs n >= 1 volumes, got {n}")
        lo, hi = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[-1]))
        self.n, self.seed, self.depth, self.n_objects = int(n), int(seed), int(depth), int(n_objects)
        self.sizes = [lo + round(i * (hi - lo) / max(1, n - 1)) for i in range(n)]
        self.ids = [f"vol{i:03d}" for i in range(n)]

    def load(self, i: int) -> VolumeItem:
        from segprompt.data.synthetic import synthetic_volume
        from segprompt.volumes import as_volume

        seed = int(np.random.SeedSequence([self.seed, i]).generate_state(1)[0])
        data, labels = synthetic_volume(seed, depth=self.depth, size=self.sizes[i], n_objects=self.n_objects)
        return VolumeItem(self.ids[i], as_volume(data), labels.astype(np.int32))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".tiff", ".tif", ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_label_stack(path: str | Path) -> np.ndarray:
    """The raw (Z, H, W) array of a label stack: :func:`segprompt.volumes.io.read_label_volume`."""
    from segprompt.volumes.io import read_label_volume

    return read_label_volume(path)


class VolumeFolder:
    """``ROOT/images/NAME.*`` volumes with ``ROOT/labels/NAME.*`` label stacks (module docstring).

    ``normalisation`` / ``window``: the intensity conversion of :func:`segprompt.volumes.io.read_volume`.
    An image without a label stack is listed, and skipped with its reason when loaded.
    """

    def __init__(self, root: str | Path, normalisation: str = "percentile", window: tuple[float, float] | None = None) -> None:
        from segprompt.volumes.io import VOLUME_SUFFIXES

        self.root = Path(root)
        images, labels = self.root / "images", self.root / "labels"
        if not images.is_dir() or not labels.is_dir():
            raise ConfigError(f"{self.root}: a volume folder holds images/ and labels/ (stacks matched by name), not found")
        ok = lambda p: p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)  # noqa: E731
        self.images = {_stem(p): p for p in sorted(images.iterdir()) if ok(p)}
        self.labels = {_stem(p): p for p in sorted(labels.iterdir()) if ok(p)}
        if not self.images:
            raise ConfigError(f"{images}: no volume (.tif, .tiff, .nii, .nii.gz, .npy)")
        self.ids = list(self.images)
        self.normalisation, self.window = normalisation, window

    def load(self, i: int) -> VolumeItem:
        from segprompt.volumes.io import read_volume

        name = self.ids[i]
        if name not in self.labels:
            raise DataError(f"{self.images[name]}: no label stack labels/{name}.* beside it")
        vol = read_volume(self.images[name], normalisation=self.normalisation, window=self.window)
        labels = _checked_labels(read_label_stack(self.labels[name]), vol.shape, str(self.labels[name]))
        return VolumeItem(name, vol, labels)


#: registry names of volume sources (anything else is a folder)
VOLUME_SOURCES: dict[str, Callable[..., VolumeSource]] = {"synthetic-volumes": SyntheticVolumes}


def open_volume_source(name: str, **kwargs: Any) -> VolumeSource:
    """A registered source by name (``synthetic-volumes``) or a :class:`VolumeFolder` path."""
    if name in VOLUME_SOURCES:
        return VOLUME_SOURCES[name](**kwargs)
    if Path(name).is_dir():
        return VolumeFolder(name, **kwargs)
    raise ConfigError(f"unknown volume set {name!r}: use {', '.join(VOLUME_SOURCES)} or a folder with images/ and labels/")


# -- configuration -------------------------------------------------------------------------------
def parse_prompt(name: str) -> tuple[str | None, bool]:
    """``"centre"`` -> ("centre", False); ``"centre+box"`` -> ("centre", True); ``"box"`` -> (None, True)."""
    if name == BOX:
        return None, True
    strategy, plus_box = (name[: -len("+box")], True) if name.endswith("+box") else (name, False)
    return strategy, plus_box


@dataclass
class VolumeBenchConfig:
    """Everything that determines a 3-D benchmark's results (module docstring).

    ``prompts``: placement strategy names (``centre``, ``random``, ``kmedoids``, ...), each
    optionally ``+box``, or ``box``. ``fallback``: :class:`~segprompt.volumes.fallback.FallbackSettings`
    fields (``projection``, ``box_margin``, ``min_area``, ``min_iou``) for the models without
    native propagation ({} = the house defaults). ``cover_iou``: a ground-truth slice counts as
    covered when its slice IoU reaches it.
    """

    datasets: list[str] = field(default_factory=lambda: ["synthetic-volumes"])
    dataset_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: list[str] = field(default_factory=lambda: ["sam-tiny"])
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=lambda: ["centre"])
    n_positive: int = 1
    n_negative: int = 0
    slice_choice: str = "middle"
    direction: str = "both"
    method: str = "auto"
    fallback: dict[str, Any] = field(default_factory=dict)
    cover_iou: float = 0.5
    seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        if not self.datasets or not self.models or not self.prompts:
            raise ConfigError("give at least one volume set, one model and one prompt")
        check_budget(self.n_positive, self.n_negative)
        if self.slice_choice not in SLICE_CHOICES:
            raise ConfigError(f"slice_choice must be one of {', '.join(SLICE_CHOICES)}; got {self.slice_choice!r}")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}; got {self.direction!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if not 0.0 < self.cover_iou <= 1.0:
            raise ConfigError(f"cover_iou must be in (0, 1], got {self.cover_iou}")
        for p in self.prompts:
            strategy, _ = parse_prompt(p)
            if strategy is not None and is_correction(create_strategy(strategy)):
                raise ConfigError(f"prompt {p!r}: {strategy} is a correction strategy; volumes take placement strategies (centre, random, kmedoids, ...)")


# -- one volume ------------------------------------------------------------------------------------
def _rng(seed: int, volume_id: str, obj: int, strategy: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(volume_id.encode()), obj, zlib.crc32(strategy.encode())])


def prompt_slice(mask3d: np.ndarray, how: str = "middle") -> int:
    """The slice to prompt an object on, from its bool (Z, H, W) mask: the middle of its z-extent
    (``floor((first + last) / 2)``; a gap there falls back to the nearest slice holding it) or the
    slice of its largest area (ties: the lowest z)."""
    area = mask3d.reshape(len(mask3d), -1).sum(axis=1)
    zs = np.flatnonzero(area)
    if how == "largest":
        return int(area.argmax())
    mid = math.floor((zs[0] + zs[-1]) / 2)
    return int(zs[np.abs(zs - mid).argmin()])


def volume_prompts(cfg: VolumeBenchConfig, item: VolumeItem, prompt: str, seg: Segmenter) -> tuple[VolumePrompts, dict[int, dict[str, Any]]]:
    """The prompts of every object of ``item`` for ``prompt`` and what each got: ``{obj: {"z_prompt",
    "points" [[x, y, label], ...], "box" [x0, y0, x1, y1] or None}}``."""
    strategy_name, with_box = parse_prompt(prompt)
    strategy = create_strategy(strategy_name) if strategy_name else None
    prompts, info = VolumePrompts(), {}
    for obj in (int(o) for o in np.unique(item.labels) if o > 0):
        gt3 = item.labels == obj
        z = prompt_slice(gt3, cfg.slice_choice)
        gt, image = gt3[z], item.volume.data[z]
        points = box = None
        if strategy is not None:
            extra: dict[str, Any] = {}
            if needs_model(strategy):
                state = seg.encode(image)
                extra["predict"] = lambda p, s=state: seg.segment(s, PromptSet(points=p)).best[0]
            points = strategy(gt, image, _rng(cfg.seed, item.id, obj, strategy_name), cfg.n_positive, cfg.n_negative, **extra)
        if with_box:
            box = Box.from_mask(gt)
        prompts = prompts.add(z, obj, prompts=PromptSet(points=points, box=box))
        info[obj] = {
            "z_prompt": z,
            "points": [] if points is None else [[round(x, 2), round(y, 2), l] for x, y, l in points.to_list()],
            "box": None if box is None else [round(float(v), 2) for v in box.xyxy],
        }
    return prompts, info


def object_scores(pred3: np.ndarray, gt3: np.ndarray, z_prompt: int, cover_iou: float) -> dict[str, Any]:
    """3-D Dice / IoU of bool (Z, H, W) ``pred3`` against ``gt3``, the slice IoUs by dz, coverage."""
    inter = np.logical_and(pred3, gt3).reshape(len(gt3), -1).sum(axis=1)
    union = np.logical_or(pred3, gt3).reshape(len(gt3), -1).sum(axis=1)
    p, g, i = int(pred3.sum()), int(gt3.sum()), int(inter.sum())
    slice_iou = [[int(z - z_prompt), round(float(inter[z] / union[z]), 5)] for z in np.flatnonzero(union)]
    gt_slices = np.flatnonzero(gt3.reshape(len(gt3), -1).any(axis=1))
    covered = int(sum(inter[z] / union[z] >= cover_iou for z in gt_slices))
    return {
        "dice3d": 2 * i / (p + g) if p + g else 1.0,
        "iou3d": i / int(union.sum()) if union.sum() else 1.0,
        "prompt_iou": float(inter[z_prompt] / union[z_prompt]) if union[z_prompt] else 1.0,
        "slice_iou": slice_iou,
        "gt_slices": int(len(gt_slices)),
        "pred_slices": int(pred3.reshape(len(pred3), -1).any(axis=1).sum()),
        "covered": covered,
        "coverage": covered / len(gt_slices),
    }


def _fallback_settings(cfg: VolumeBenchConfig, seg: Segmenter) -> dict[str, Any]:
    """The fallback settings to pass: none for a model that propagates natively (unless forced)."""
    if cfg.method == "fallback" or (cfg.method == "auto" and volume_support(seg) == "fallback"):
        return dict(cfg.fallback)
    return {}


def evaluate_volume(cfg: VolumeBenchConfig, seg: Segmenter, model: str, dataset: str, item: VolumeItem, prompt: str, labels_path: Path | None = None, labels_rel: str | None = None) -> list[dict[str, Any]]:
    """One row per object of ``item`` for ``model`` prompted by ``prompt`` (module docstring);
    the predicted label volume is written to ``labels_path`` when given."""
    prompts, info = volume_prompts(cfg, item, prompt, seg)
    result = segment_volume(seg, item.volume, prompts, direction=cfg.direction, method=cfg.method, **_fallback_settings(cfg, seg))  # type: ignore[arg-type]
    if labels_path is not None:
        with atomic_path(labels_path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, labels=result.labels.astype(np.uint16 if result.labels.max() < 2**16 else np.int32))
    rows = []
    objs = sorted(info)
    for obj in objs:
        gt3 = item.labels == obj
        z_ext = np.flatnonzero(gt3.reshape(len(gt3), -1).any(axis=1))
        rows.append(
            {
                "dataset": dataset,
                "volume": item.id,
                "object": obj,
                "n_objects": len(objs),
                "model": model,
                "strategy": prompt,
                "method": result.method,
                "multimask": seg.multimask,  # the model's own policy: slices are decoded with it
                "depth": int(len(gt3)),
                "z_first": int(z_ext[0]),
                "z_last": int(z_ext[-1]),
                **info[obj],
                **object_scores(result.labels == obj, gt3, info[obj]["z_prompt"], cfg.cover_iou),
                "seconds": round(float(result.seconds), 4),
                "labels": labels_rel,
            }
        )
    return rows


# -- the run ----------------------------------------------------------------------------------------
def _tag(text: str) -> str:
    """A file-name-safe folder name for a dataset / model / prompt."""
    return re.sub(r"[^\w.@+-]", "_", Path(text.rstrip("/\\")).name or text) or "_"


def labels_file(dataset: str, model: str, prompt: str, volume: str) -> str:
    """The run-folder-relative path of a predicted label volume."""
    return f"labels/{_tag(dataset)}/{_tag(model)}/{_tag(prompt)}/{_tag(volume)}.npz"


def _check_model(seg: Segmenter, model: str, prompts: Sequence[str]) -> None:
    accepts = set(getattr(seg, "accepts", ()))
    for p in prompts:
        strategy, with_box = parse_prompt(p)
        need = ({"points"} if strategy else set()) | ({"box"} if with_box else set())
        if need - accepts:
            raise ConfigError(f"model {model!r} does not take {' and '.join(sorted(need - accepts))} prompts (prompt {p!r}); it accepts {', '.join(sorted(accepts))}")


def volume_unit_key(dataset: str, volume: str, model: str, prompt: str) -> str:
    """The stable key of one work unit, a (dataset, volume, model, prompt), as JSON text (what
    :func:`segprompt.engine.shards.shard_of` hashes)."""
    return json.dumps([str(dataset), str(volume), str(model), str(prompt)])


def canonical_volume_rows(rows: Sequence[dict[str, Any]], cfg: VolumeBenchConfig) -> list[dict[str, Any]]:
    """``rows`` from any number of shard files without duplicates, in one order (datasets, models
    and prompts as in the config, then volume and object): summaries are computed from this list."""
    from segprompt.engine.shards import canonical

    dorder = {d: i for i, d in enumerate(cfg.datasets)}
    morder = {m: i for i, m in enumerate(cfg.models)}
    porder = {p: i for i, p in enumerate(cfg.prompts)}

    def identity(r: dict[str, Any]) -> tuple[str, str, str, str, int]:
        return (str(r["dataset"]), str(r["volume"]), str(r["model"]), str(r["strategy"]), int(r["object"]))

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        ds, vol, model, prompt, obj = identity(r)
        return (dorder.get(ds, len(dorder)), ds, morder.get(model, len(morder)), model, porder.get(prompt, len(porder)), prompt, vol, obj)

    return canonical(rows, identity=identity, order=order)


def _config_record(cfg: VolumeBenchConfig, launch: Any) -> dict[str, Any]:
    return {"suite": SUITE, **asdict(cfg), "launch": launch.record()}


def _volume_plans(cfg: VolumeBenchConfig, run: RunFolder, sources: dict[str, VolumeSource] | None) -> tuple[list[Any], list[str], set[str]]:
    """Per dataset (name, source, ids, {volume index: [(model, prompt) to do]}); every unit key of
    the run; and the keys finished or skipped (in any shard's files)."""
    done: dict[tuple[str, str, str, str], set[int]] = defaultdict(set)
    n_objects: dict[tuple[str, str, str, str], int] = {}
    for r in run.results:
        key = (r["dataset"], r["volume"], r["model"], r["strategy"])
        done[key].add(int(r["object"]))
        n_objects[key] = int(r["n_objects"])
    bad_items = {(e.get("dataset"), e.get("item")) for e in run.errors if e.get("model") is None}
    bad_units = {(e.get("dataset"), e.get("item"), e.get("model"), e.get("strategy")) for e in run.errors}
    plans, units, finished = [], [], set()
    for ds in cfg.datasets:
        src = (sources or {}).get(ds) or open_volume_source(ds, **cfg.dataset_kwargs.get(ds, {}))
        ids = src.ids[: cfg.limit] if cfg.limit is not None else list(src.ids)
        todo: dict[int, list[tuple[str, str]]] = {}
        for i, vol in enumerate(ids):
            for m in cfg.models:
                for p in cfg.prompts:
                    key = (ds, vol, m, p)
                    ukey = volume_unit_key(*key)
                    units.append(ukey)
                    if (ds, vol) in bad_items or key in bad_units or (key in n_objects and len(done[key]) >= n_objects[key]):
                        finished.add(ukey)
                    else:
                        todo.setdefault(i, []).append((m, p))
        plans.append((ds, src, ids, todo, done))
    return plans, units, finished


def run_volume_bench(
    cfg: VolumeBenchConfig,
    out: str | Path,
    sources: dict[str, VolumeSource] | None = None,
    model_factory: Callable[[str], Segmenter] | None = None,
    progress: bool = True,
    launch: Any = None,
    shard: Any = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the 3-D benchmark into ``out``; returns :func:`summarise_volumes`' summary.

    ``sources``: volume sources by dataset name, overriding :func:`open_volume_source` (for sets
    built in code). ``model_factory(name) -> Segmenter`` (default: :func:`create_segmenter` with
    ``cfg.model_kwargs``; ``"sam@2"`` builds a second ``sam``). ``launch`` / ``shard``: sharded
    runs, as :func:`pointprompt.bench.run_pointprompt` (a unit is a (dataset, volume, model,
    prompt), :func:`volume_unit_key`); summaries come from :func:`canonical_volume_rows`, so a
    sharded run's tables equal an unsharded run's.
    """
    from tqdm.auto import tqdm

    from pointprompt.bench import default_model_factory
    from pointprompt.report_volume import summarise_volumes, write_volume_reports
    from segprompt.engine.launchers import LaunchConfig
    from segprompt.engine.shards import Shard

    launch = launch or LaunchConfig()
    shard = Shard.parse(shard) if shard is not None else None
    if shard is not None and launch.parallel:
        raise ConfigError("shard= runs one shard in this process; it does not go with a parallel launch")
    if launch.parallel:
        return _run_volumes_launched(cfg, out, sources, model_factory, launch, report)
    run = RunFolder(out, _config_record(cfg, launch), shard=shard)
    make = model_factory or default_model_factory(cfg)  # type: ignore[arg-type]
    models: dict[str, Segmenter] = {}
    plans, units, finished = _volume_plans(cfg, run, sources)
    mine = [u for u in units if shard is None or shard.owns(u)]
    n_todo = sum(1 for u in mine if u not in finished)
    run.announce(done=len(mine) - n_todo, todo=n_todo, unit="(volume, model, prompt) units")

    new_rows = 0
    for ds, src, ids, todo, done in plans:
        if shard is not None:
            todo = {i: [(m, p) for m, p in mp if shard.owns(volume_unit_key(ds, ids[i], m, p))] for i, mp in todo.items()}
            todo = {i: mp for i, mp in todo.items() if mp}
        for i in tqdm(list(todo), desc=f"volumes of {short_name(ds)}", disable=not progress, leave=False):
            try:
                item = src.load(i)
            except DataError as exc:
                run.record_error_once(ids[i], exc, dataset=ds)
                continue
            for model, prompt in todo[i]:
                if model not in models:
                    models[model] = make(model)
                    _check_model(models[model], model, cfg.prompts)
                rel = labels_file(ds, model, prompt, item.id)
                try:
                    rows = evaluate_volume(cfg, models[model], model, ds, item, prompt, run.path / rel, rel)
                except (DataError, PromptError) as exc:
                    run.record_error(item.id, exc, dataset=ds, model=model, strategy=prompt)
                    continue
                have = done[(ds, item.id, model, prompt)]
                fresh = [r for r in rows if r["object"] not in have]
                run.results.extend(fresh)
                new_rows += len(fresh)
    run.finish(new_rows)
    if shard is not None:
        _, units, finished = _volume_plans(cfg, run, sources)
        left = [u for u in units if u not in finished]
        if left or not report:
            return {"shard": shard.label, "new_rows": new_rows, "todo": len(left)}
    summary = summarise_volumes(canonical_volume_rows(run.results.rows(), cfg), cfg)
    if report:
        write_volume_reports(run, summary, cfg)
    return summary


def _volume_shard_job(cfg: VolumeBenchConfig, out: str, sources: Any, model_factory: Any, shard: Any) -> dict[str, Any]:
    """One shard of a launched run, in a process of its own; the launching process writes the report."""
    return run_volume_bench(cfg, out, sources, model_factory, progress=False, shard=shard, report=False)


def _run_volumes_launched(cfg: VolumeBenchConfig, out: str | Path, sources: Any, model_factory: Any, launch: Any, report: bool) -> dict[str, Any]:
    """Launch the shards that still have units, wait, then summarise every shard's rows."""
    import functools

    from pointprompt.report_volume import summarise_volumes, write_volume_reports
    from segprompt.engine.launchers import launch_pending_shards

    run = RunFolder(out, _config_record(cfg, launch))
    _, units, finished = _volume_plans(cfg, run, sources)
    job = functools.partial(_volume_shard_job, cfg, str(run.path.resolve()), sources, model_factory)
    failed = launch_pending_shards(run, units, [u for u in units if u not in finished], job, launch, SUITE, "(volume, model, prompt) units")
    summary = summarise_volumes(canonical_volume_rows(run.results.rows(), cfg), cfg)
    if report:
        write_volume_reports(run, summary, cfg)
    summary["failed_shards"] = failed
    return summary


def _cfg_from_record(config: dict[str, Any]) -> VolumeBenchConfig:
    from segprompt.engine.config_files import config_from_record

    return config_from_record(VolumeBenchConfig, config)


def suite_progress(config: dict[str, Any], run: RunFolder) -> Any:
    """``segprompt runs status``: every (dataset, volume, model, prompt) unit and its state."""
    from segprompt.engine.shards import UnitProgress

    _, units, finished = _volume_plans(_cfg_from_record(config), run, None)
    failed = {volume_unit_key(e.get("dataset"), e.get("item"), e.get("model"), e.get("strategy")) for e in run.errors if e.get("model")}
    prog = UnitProgress(list(units))
    prog.done |= {u for u in finished if u not in failed}
    prog.failed |= {u for u in finished if u in failed}
    return prog


def merge_run_folder(run_dir: str | Path) -> dict[str, Any]:
    """``segprompt runs merge``: the tables and report from the rows of every shard present."""
    from pointprompt.report_volume import summarise_volumes, write_volume_reports

    run = RunFolder.load(run_dir)
    cfg = _cfg_from_record(run.config)
    summary = summarise_volumes(canonical_volume_rows(run.results.rows(), cfg), cfg)
    write_volume_reports(run, summary, cfg)
    return summary


__all__ = [
    "SLICE_CHOICES",
    "VOLUME_SOURCES",
    "SyntheticVolumes",
    "VolumeBenchConfig",
    "VolumeFolder",
    "VolumeItem",
    "VolumeSource",
    "evaluate_volume",
    "labels_file",
    "object_scores",
    "open_volume_source",
    "parse_prompt",
    "prompt_slice",
    "read_label_stack",
    "run_volume_bench",
    "volume_prompts",
]
