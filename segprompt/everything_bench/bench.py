"""The instance benchmark of "segment everything": datasets x models -> a run folder.

For each model and image, :func:`segprompt.everything.segment_everything` proposes masks (the
settings of segment-anything's SamAutomaticMaskGenerator, ``EverythingSettings``); they are
matched to the image's ground-truth instances (:mod:`segprompt.instances`) and one
results.jsonl row per (model, image) keeps what the dataset metrics need: the kept
predictions' scores and their per-threshold match flags (COCOeval's evaluateImg output), the
panoptic counts (TP, FP, FN, IoU sum) and each ground-truth instance's best IoU, plus the
seconds the image took. A rerun on the same folder resumes: rows present are not recomputed.

Ground truth (``gt``): ``auto`` picks by dataset kind; binary masks -> connected components
(``connectivity`` 8 or 4, ``min_gt_area``); semantic label maps -> the components of the
``classes`` given for that dataset (CamVid ``car,pedestrian``); a COCO JSON given as the
dataset (``--root`` its image folder) -> its annotations (crowd = ignore); ``labels`` reads
``images/`` + ``masks/`` where each mask id > 0 is one instance (``ignore_id`` optional).

Run folder: config.yaml, results.jsonl, errors.jsonl, invocations.jsonl, summary.csv,
report.md (the dataset x model table, the overlay grid), overlays.png and overlays/ (the tiles
of the first ``overlays`` images of each dataset, written when they are computed).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.engine.report import short_name, text_table
from segprompt.engine.runfolder import RunFolder
from segprompt.errors import ConfigError, DataError
from segprompt import instances as inst
from segprompt.everything_bench.report import SUMMARY_COLUMNS, overlay_tile, tile_path, write_png, write_reports

log = logging.getLogger(__name__)

GT_KINDS = ("auto", "components", "labels", "coco")
#: the EverythingSettings fields the command line sets (others: --config)
SETTING_OPTIONS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_mask_region_area")


@dataclass
class EverythingBenchConfig:
    """Everything that determines the benchmark's results.

    ``classes``: ``{dataset: [class names]}`` for semantic label-map datasets (instances = the
    connected components of those classes); the key ``"*"`` applies to every label-map dataset.
    ``settings``: EverythingSettings fields that differ from segment-anything's defaults.
    ``max_dets``: predictions kept per image for AP (COCO's 100). ``overlays``: images per
    dataset drawn in the overlay grid.
    """

    datasets: list[str] = field(default_factory=lambda: ["kvasir"])
    dataset_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: list[str] = field(default_factory=lambda: ["sam-tiny"])
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    gt: str = "auto"
    classes: dict[str, list[str]] = field(default_factory=dict)
    connectivity: int = 8
    min_gt_area: int = 0
    ignore_id: int | None = None
    other_classes: str = "background"
    max_dets: int = 100
    settings: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    seed: int = 0
    overlays: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        if not self.datasets or not self.models:
            raise ConfigError("give at least one dataset and one model")
        if self.gt not in GT_KINDS:
            raise ConfigError(f"gt must be one of {', '.join(GT_KINDS)}; got {self.gt!r}")
        if self.connectivity not in (4, 8):
            raise ConfigError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.other_classes not in ("background", "ignore"):
            raise ConfigError(f"other_classes must be 'background' or 'ignore', got {self.other_classes!r}")
        if self.max_dets < 1:
            raise ConfigError(f"max_dets must be >= 1, got {self.max_dets}")
        unknown = sorted(set(self.classes) - {"*", *self.datasets})
        if unknown:
            raise ConfigError(f"classes given for {', '.join(unknown)}, which is not a --dataset ({', '.join(self.datasets)})")

    def classes_of(self, dataset: str) -> list[str]:
        return list(self.classes.get(dataset) or self.classes.get("*") or [])


# ---------------------------------------------------------------------------------------------
# datasets and their ground truth


class InstanceLabelFolder(SegmentationDataset):
    """``root/images`` + ``root/masks`` of the same stem, masks read as integers (each id > 0
    one instance); ``Sample.mask`` is the raw int64 label image."""

    task = "multiclass"

    def __init__(self, root: str | Path) -> None:
        from segprompt.data.io import list_images

        super().__init__()
        self.root = Path(root)
        self.name = self.root.name
        for sub in ("images", "masks"):
            if not (self.root / sub).is_dir():
                raise DataError(f"{self.root}: no {sub}/ folder (instance label images: images/ + masks/ of the same stem)")
        masks = {p.stem: p for p in list_images(self.root / "masks")}
        for img in list_images(self.root / "images"):
            if img.stem not in masks:
                raise DataError(f"{img}: no instance label image {self.root / 'masks' / img.stem}.*")
            self.records.append({"id": img.stem, "image": img, "mask": masks[img.stem]})

    def load(self, record: dict[str, Any]) -> Sample:
        from segprompt.data.io import read_image, read_mask_array

        return Sample(id=record["id"], image=read_image(record["image"]), mask=read_mask_array(record["mask"]).astype(np.int64), meta={"mask_path": str(record["mask"])})


def load_bench_dataset(cfg: EverythingBenchConfig, key: str) -> SegmentationDataset:
    """The dataset named ``key``: a COCO JSON file (its images under ``--root``), an instance
    label folder (``gt="labels"``), or anything :func:`segprompt.data.registry.load_dataset` reads."""
    from segprompt.data.registry import load_dataset

    kwargs = dict(cfg.dataset_kwargs.get(key, {}))
    if str(key).lower().endswith(".json") or cfg.gt == "coco":
        from segprompt.data.coco import CocoDataset

        root = kwargs.pop("root", None)
        if root is None:
            root = Path(key).parent
        return CocoDataset(root, key, mode="semantic", name=Path(key).stem)
    if cfg.gt == "labels":
        return InstanceLabelFolder(kwargs.get("root") or key)
    return load_dataset(key, **kwargs)


def truth_for(cfg: EverythingBenchConfig, key: str, ds: SegmentationDataset, sample: Sample) -> inst.InstanceTruth:
    """Ground-truth instances of ``sample`` by the config's rule (see the module doc)."""
    from segprompt.data.coco import CocoDataset

    if isinstance(ds, CocoDataset):
        anns = sorted(ds.coco.imgToAnns.get(sample.meta["image_id"], []), key=lambda a: a["id"])
        return inst.from_coco(anns, sample.size, categories=list(ds.category_index), min_area=cfg.min_gt_area)
    if sample.mask is None:
        raise DataError("no annotation for this image")
    if cfg.gt == "labels":
        return inst.from_label_image(sample.mask, cfg.ignore_id, cfg.min_gt_area)
    if sample.mask.dtype == bool:
        return inst.from_binary(sample.mask, cfg.connectivity, cfg.min_gt_area)
    names = cfg.classes_of(key)
    if not names:
        known = ", ".join(n for n in sample.class_names)
        raise ConfigError(f"{key} holds semantic label maps: say which classes are instances, e.g. --classes {key}=car,pedestrian (classes: {known})")
    ids = {}
    for n in names:
        if n not in sample.class_names:
            raise ConfigError(f"{key}: no class {n!r} (classes: {', '.join(sample.class_names)})")
        ids[n] = sample.class_names.index(n)
    return inst.from_semantic(sample.mask, ids, (sample.ignore_index,), cfg.connectivity, cfg.min_gt_area, cfg.other_classes)


# ---------------------------------------------------------------------------------------------
# one image


def _bits(a: np.ndarray) -> list[str]:
    return ["".join("1" if v else "0" for v in row) for row in np.asarray(a, bool)]


def _unbits(rows: Sequence[str], n: int) -> np.ndarray:
    return np.array([[c == "1" for c in r] for r in rows], bool).reshape(len(inst.IOU_THRESHOLDS), n)


def evaluate_image(cfg: EverythingBenchConfig, seg: Any, settings: Any, model: str, ds_key: str, sample: Sample, truth: inst.InstanceTruth) -> tuple[dict[str, Any], np.ndarray]:
    """One results row for (model, image) and the predicted label map (for the overlay)."""
    from segprompt.everything import label_map, segment_everything

    t0 = time.perf_counter()
    records = segment_everything(seg, sample.image, settings)
    seconds = time.perf_counter() - t0
    h, w = sample.size
    masks = np.stack([np.asarray(r["segmentation"], bool) for r in records]) if records else np.zeros((0, h, w), bool)
    scores = [float(r["predicted_iou"]) for r in records]
    m = inst.match_image(masks, scores, truth, max_dets=cfg.max_dets)
    labels = label_map(records, (h, w)) if records else np.zeros((h, w), np.int32)
    pq = inst.panoptic_counts(labels, truth)
    row = {
        "dataset": ds_key,
        "model": model,
        "image": sample.id,
        "n_gt": m["n_gt"],
        "n_pred": len(records),
        "seconds": round(seconds, 4),
        "scores": [round(s, 6) for s in m["scores"]],
        "matched": _bits(m["matched"]),
        "ignored": _bits(m["ignored"]),
        "best_iou": [round(v, 6) for v in m["best_iou"]],
        **pq,
    }
    return row, labels


def row_arrays(row: dict[str, Any]) -> dict[str, Any]:
    """A results row with its match flags as arrays, for :func:`segprompt.instances.accumulate_ap`."""
    n = len(row["scores"])
    return {**row, "matched": _unbits(row["matched"], n), "ignored": _unbits(row["ignored"], n)}


# ---------------------------------------------------------------------------------------------
# the run


ModelFactory = Callable[[str], Any]


def default_model_factory(cfg: EverythingBenchConfig, cache: str | Path | None = None) -> ModelFactory:
    from segprompt.models import create_segmenter

    def make(name: str) -> Any:
        kwargs = dict(cfg.model_kwargs.get(name, {}))
        if cache is not None:
            kwargs.setdefault("cache", cache)
        return create_segmenter(name.split("@")[0], **kwargs)

    return make


def resolved_settings(cfg: EverythingBenchConfig) -> Any:
    """The EverythingSettings of the run (segment-anything's defaults, then ``cfg.settings``)."""
    import dataclasses

    from segprompt.everything import EverythingSettings

    known = {f.name for f in dataclasses.fields(EverythingSettings)}
    unknown = sorted(set(cfg.settings) - known)
    if unknown:
        raise ConfigError(f"unknown EverythingSettings field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return EverythingSettings(**cfg.settings)


def _settings_record(settings: Any) -> dict[str, Any]:
    out = {k: v for k, v in asdict(settings).items() if k != "point_grids"}
    return out


def everything_unit_key(dataset: str, model: str, image_id: str) -> str:
    """The stable key of one work unit, a (dataset, model, image), as JSON text (what
    :func:`segprompt.engine.shards.shard_of` hashes)."""
    return json.dumps([str(dataset), str(model), str(image_id)])


def canonical_everything_rows(rows: Sequence[dict[str, Any]], cfg: EverythingBenchConfig) -> list[dict[str, Any]]:
    """``rows`` from any number of shard files without duplicates, in one order (datasets and
    models as in the config, then image): summaries are computed from this list."""
    from segprompt.engine.shards import canonical

    dorder = {d: i for i, d in enumerate(cfg.datasets)}
    morder = {m: i for i, m in enumerate(cfg.models)}

    def identity(r: dict[str, Any]) -> tuple[str, str, str]:
        return (str(r["dataset"]), str(r["model"]), str(r["image"]))

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        d, m, i = identity(r)
        return (dorder.get(d, len(dorder)), d, morder.get(m, len(morder)), m, i)

    return canonical(rows, identity=identity, order=order)


def _config_record(cfg: EverythingBenchConfig, settings: Any, launch: Any) -> dict[str, Any]:
    return {"suite": "everything", **asdict(cfg), "resolved_settings": _settings_record(settings), "launch": launch.record()}


def _everything_plans(cfg: EverythingBenchConfig, run: RunFolder) -> tuple[list[Any], dict[str, list[str]], list[str], set[str], set[str]]:
    """(plans: per dataset (key, dataset, ids, {model: [image index to do]}), drawn ids, every unit
    key, the keys done, the keys skipped with an error)."""
    done = {(r["dataset"], r["model"], r["image"]) for r in run.results}
    skipped = {(e.get("dataset"), e.get("model"), e.get("item")) for e in run.errors}
    plans, drawn, units, finished, failed = [], {}, [], set(), set()
    for key in cfg.datasets:
        ds = load_bench_dataset(cfg, key)
        n = len(ds) if cfg.limit is None else min(cfg.limit, len(ds))
        ids = ds.ids[:n]
        drawn[key] = ids[: cfg.overlays]
        work: dict[str, list[int]] = {}
        for m in cfg.models:
            work[m] = []
            for i in range(n):
                u = everything_unit_key(key, m, ids[i])
                units.append(u)
                if (key, m, ids[i]) in done:
                    finished.add(u)
                elif (key, m, ids[i]) in skipped:
                    failed.add(u)
                else:
                    work[m].append(i)
        plans.append((key, ds, ids, work))
    return plans, drawn, units, finished, failed


def run_everything_bench(
    cfg: EverythingBenchConfig,
    out: str | Path,
    model_factory: ModelFactory | None = None,
    cache: str | Path | None = None,
    progress: bool = True,
    launch: Any = None,
    shard: Any = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the benchmark into ``out``; returns the summary (``table`` rows).

    ``launch`` / ``shard``: sharded runs as :func:`pointprompt.bench.run_pointprompt` (a unit is a
    (dataset, model, image), :func:`everything_unit_key`; overlay tiles are written atomically, so
    shards drawing the same ground-truth tile do not collide); the summary comes from
    :func:`canonical_everything_rows`, so a sharded run's tables equal an unsharded run's.
    """
    from tqdm.auto import tqdm

    from segprompt.engine.launchers import LaunchConfig
    from segprompt.engine.shards import Shard

    launch = launch or LaunchConfig()
    shard = Shard.parse(shard) if shard is not None else None
    if shard is not None and launch.parallel:
        raise ConfigError("shard= runs one shard in this process; it does not go with a parallel launch")
    settings = resolved_settings(cfg)
    if launch.parallel:
        return _run_everything_launched(cfg, out, model_factory, cache, settings, launch, report)
    run = RunFolder(out, _config_record(cfg, settings, launch), shard=shard)
    make = model_factory or default_model_factory(cfg, cache)
    models: dict[str, Any] = {}
    plans, drawn, units, finished, failed = _everything_plans(cfg, run)
    mine = [u for u in units if shard is None or shard.owns(u)]
    n_todo = sum(1 for u in mine if u not in finished and u not in failed)
    run.announce(done=len(mine) - n_todo, todo=n_todo, unit="(model, image) pairs")

    new_rows = 0
    for key, ds, ids, work in plans:
        for model in cfg.models:
            todo = [i for i in work[model] if shard is None or shard.owns(everything_unit_key(key, model, ids[i]))]
            if not todo:
                continue
            if model not in models:
                models[model] = make(model)
            for i in tqdm(todo, desc=f"{model} on {short_name(key)}", disable=not progress, leave=False):
                image_id = ids[i]
                try:
                    sample = ds[i]
                    truth = truth_for(cfg, key, ds, sample)
                    row, labels = evaluate_image(cfg, models[model], settings, model, key, sample, truth)
                except DataError as exc:
                    run.record_error(image_id, exc, model=model, dataset=key)
                    continue
                if image_id in drawn[key]:
                    gt_tile = tile_path(run, key, image_id, "gt")
                    if not gt_tile.exists():
                        write_png(gt_tile, overlay_tile(sample.image, truth.label_map()))
                    write_png(tile_path(run, key, image_id, model), overlay_tile(sample.image, labels))
                run.results.append(row)
                new_rows += 1
    run.finish(new_rows)
    if shard is not None:
        _, _, units, finished, failed = _everything_plans(cfg, run)
        left = [u for u in units if u not in finished and u not in failed]
        if left or not report:
            return {"shard": shard.label, "new_rows": new_rows, "todo": len(left)}
    summary = summarise(canonical_everything_rows(run.results.rows(), cfg), cfg)
    if report:
        write_reports(run, summary, cfg, _settings_record(settings), drawn)
    return summary


def _everything_shard_job(cfg: EverythingBenchConfig, out: str, model_factory: Any, cache: Any, shard: Any) -> dict[str, Any]:
    """One shard of a launched run, in a process of its own; the launching process writes the report."""
    return run_everything_bench(cfg, out, model_factory, cache, progress=False, shard=shard, report=False)


def _run_everything_launched(cfg: EverythingBenchConfig, out: str | Path, model_factory: Any, cache: Any, settings: Any, launch: Any, report: bool) -> dict[str, Any]:
    """Launch the shards that still have units, wait, then summarise every shard's rows."""
    import functools

    from segprompt.engine.launchers import launch_pending_shards

    run = RunFolder(out, _config_record(cfg, settings, launch))
    _, drawn, units, finished, skipped = _everything_plans(cfg, run)
    todo = [u for u in units if u not in finished and u not in skipped]
    job = functools.partial(_everything_shard_job, cfg, str(run.path.resolve()), model_factory, None if cache is None else str(Path(cache).resolve()))
    failed = launch_pending_shards(run, units, todo, job, launch, "everything", "(model, image) pairs")
    summary = summarise(canonical_everything_rows(run.results.rows(), cfg), cfg)
    if report:
        write_reports(run, summary, cfg, _settings_record(settings), drawn)
    summary["failed_shards"] = failed
    return summary


def _cfg_from_record(config: dict[str, Any]) -> EverythingBenchConfig:
    from segprompt.engine.config_files import config_from_record

    return config_from_record(EverythingBenchConfig, config)


def suite_progress(config: dict[str, Any], run: RunFolder) -> Any:
    """``segprompt runs status``: every (dataset, model, image) unit of the run folder and its state."""
    from segprompt.engine.shards import UnitProgress

    _, _, units, finished, failed = _everything_plans(_cfg_from_record(config), run)
    return UnitProgress(list(units), set(finished), set(failed))


def merge_run_folder(run_dir: str | Path) -> dict[str, Any]:
    """``segprompt runs merge``: summary and report from the rows of every shard present."""
    run = RunFolder.load(run_dir)
    cfg = _cfg_from_record(run.config)
    settings = resolved_settings(cfg)
    drawn = {key: list(load_bench_dataset(cfg, key).ids[: cfg.overlays]) for key in cfg.datasets}
    summary = summarise(canonical_everything_rows(run.results.rows(), cfg), cfg)
    write_reports(run, summary, cfg, _settings_record(settings), drawn)
    return summary


def summarise(rows: Sequence[dict[str, Any]], cfg: EverythingBenchConfig) -> dict[str, Any]:
    """One table row per (dataset, model), in the config's order (see :func:`segprompt.instances.summarise_instances`)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"])].append(row_arrays(r))
    table = []
    for d in cfg.datasets:
        for m in cfg.models:
            if (d, m) in groups:
                table.append({"dataset": d, "model": m, **inst.summarise_instances(groups[(d, m)])})
    return {"table": table}


def format_summary(summary: dict[str, Any]) -> str:
    return text_table(summary["table"], SUMMARY_COLUMNS)
