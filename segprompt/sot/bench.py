"""``segprompt bench sot``: Show-or-Tell as a resumable benchmark (datasets x methods x shots x seeds x images).

.. code-block:: python

    from segprompt.sot.bench import SotBenchConfig, run_sot

    cfg = SotBenchConfig(datasets=["synthetic-objects"], methods=["universal-text", "persam"], shots=[1], seeds=[0, 1], limit=8)
    summary = run_sot(cfg, "runs/sot/demo")      # rerun the same call to resume

For every dataset, shots k and seed, the protocol (FocoosAI/ShowOrTell ``models/base_model.py``,
``data/*_fss.py``, with our additions) is:

1. **Parts.** ``synthetic-objects``: references from seed-0 scenes (``synthetic_train``), evaluation
   on seed-2024 scenes (``synthetic_eval``, capped by ``limit``); validation = the last
   ``val_fraction`` of the seed-0 scenes, or ``synthetic_val`` scenes of ``val_seed`` when set.
   Real sets without a split (CamVid, Kvasir, ... in ``../shared/data``): images sorted by id
   (samples grouped by ``meta["image_id"]``), the last ``eval_fraction`` evaluated, the rest the
   training pool, whose last ``val_fraction`` is the validation part (CamVid's 40: 30 pool =
   24 references + 6 validation, 10 evaluated).
2. **References.** Per class, k references drawn with :func:`segprompt.sot.sample_references`
   (seed, SoT's minimum-area rule :func:`min_area_for`), never a validation or evaluated image;
   the same references for every image of that seed, their ids in every row.
3. **Maps.** Each method (:mod:`segprompt.sot.methods`) gives one probability map per class;
   label maps prompt every class but background, binary sets their one text per image.
4. **Merges.** SoT's fixed-0.2 merge (:func:`merge_sot`) and the calibrated merge
   (:func:`merge_calibrated`), the calibration fitted per (method, k, seed) on the validation
   part by :func:`fit_threshold_miou` (``calibration={"fit": "miou"}``, the default: the threshold
   with the best validation mIoU) or :func:`fit_temperature` (``{"fit": "both"}``: temperature and
   threshold minimising the NLL, which on weak models pushes the threshold to 0.8-1.0 and sends
   almost every pixel to background), kept in ``calibration.jsonl``.
5. **Oracle.** For each (text method, visual method) pair, per class the method with the higher
   validation IoU (ties and classes absent from validation: the text method), evaluated on the
   same images with each merge (rows ``oracle:<text>+<visual>``).

``results.jsonl`` holds one row per (dataset, method, shots, seed, image): reference ids, the
``(C, C)`` confusion counts of both merges (C = the dataset's labels; mIoU is pooled over images),
seconds, forward passes and peak GPU memory. The summary pools the confusion per seed
(:func:`segprompt.sot.sot_miou`) and gives mean / std (ddof 1) / worst over seeds.

Sharded runs (:mod:`segprompt.engine.shards`, as ``bench pointprompt``): a work unit is one
(dataset, shots, seed, evaluated image), keyed by :func:`unit_key`, with every method's and
oracle's row of that image (they are evaluated together). ``shard=Shard(k, n)`` (or ``"k/n"``)
computes only shard k's units into ``results.shard-k-of-n.jsonl``; each shard refits the
(deterministic, seeded) calibrations its units need unless any shard's ``calibration*.jsonl``
holds them already (rows written through ``run.log("calibration")``, duplicates dropped on read).
``launch=LaunchConfig("local", workers=4)`` (or ``submitit``, ``submitit-local``) runs shards 1..4
in other processes and then summarises every shard's rows. Summaries are computed from the rows in
the canonical order of :func:`canonical_rows` / :func:`canonical_calibration`, so a sharded run's
summary.csv equals an unsharded run's except the timing columns (``s_per_image``, ``prepare_s``;
``passes_per_image`` too for a method that keeps reference features over images, which each
process encodes once). SoT itself shards with torch's ``DistributedSampler`` over ranks and syncs
its confusion matrix (FocoosAI/ShowOrTell ``benchmark.py``); here each image's confusion is a row.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from segprompt.data.sample import IGNORE_INDEX
from segprompt.engine.launchers import LaunchConfig, launch_pending_shards
from segprompt.engine.runfolder import RunFolder
from segprompt.engine.shards import Shard, UnitProgress, canonical, pick
from segprompt.errors import ConfigError, DataError, PromptError
from segprompt.sot.calibration import Calibration, fit_temperature, fit_threshold_miou
from segprompt.sot.merge import merge_sot
from segprompt.sot.miou import sot_miou
from segprompt.sot.parts import (  # noqa: F401  (re-exported: the protocol's data side)
    BACKGROUND_NAMES,
    SYNTHETIC,
    Item,
    Parts,
    build_parts,
    confusion,
    load_item,
    resize_pair,
    to_dataset_labels,
    to_merge_labels,
)
from segprompt.sot.references import sample_references

log = logging.getLogger(__name__)

ORACLE = "oracle"
SUITE = "sot"
UNIT = "(dataset, shots, seed, image) units"
#: ``calibration["fit"]``: the NLL fits of :func:`fit_temperature`, or ``"miou"`` (:func:`fit_threshold_miou`)
CALIBRATION_FITS = ("both", "temperature", "threshold", "miou")


@dataclass
class SotBenchConfig:
    """Everything that determines a Show-or-Tell run's results (module docstring for the protocol).

    ``segmenters``: per method, the segmenter it runs on instead of its default
    (:func:`segprompt.sot.methods.create_method`'s ``segmenter_spec``: ``{"clipseg": {"name":
    "clipseg-tiny"}}``, ``{"clipseg": {"learner_checkpoint": "runs/coop/checkpoints/best.pt"}}``).
    ``size``: ``518`` (SoT: images, labels and references resized to 518 x 518, labels nearest)
    or ``"original"``. ``min_area``: ``None`` = SoT's per-dataset rule. ``calibration``:
    ``fit_temperature`` options (``fit``, ``per_class``, ``max_pixels``).
    """

    datasets: list[str] = field(default_factory=lambda: [SYNTHETIC])
    dataset_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    methods: list[str] = field(default_factory=lambda: ["universal-text", "universal-reference", "persam"])
    method_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    segmenters: dict[str, dict[str, Any]] = field(default_factory=dict)
    shots: list[int] = field(default_factory=lambda: [1, 5])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    limit: int | None = None
    size: int | str = 518
    device: str = "cpu"
    synthetic_train: int = 48
    synthetic_eval: int = 32
    synthetic_val: int = 8
    val_seed: int | None = None
    eval_fraction: float = 0.25
    val_fraction: float = 0.2
    min_area: float | None = None
    calibration: dict[str, Any] = field(default_factory=lambda: {"fit": "miou", "per_class": False, "max_pixels": 500_000})
    oracle: bool = True

    def __post_init__(self) -> None:
        from segprompt.sot.methods import METHODS, MISSING_METHODS

        as_list = lambda v: [v] if isinstance(v, (str, int)) else list(v)  # noqa: E731
        self.datasets, self.methods = [str(d) for d in as_list(self.datasets)], [str(m) for m in as_list(self.methods)]
        self.shots, self.seeds = [int(s) for s in as_list(self.shots)], [int(s) for s in as_list(self.seeds)]
        if not self.datasets or not self.methods or not self.shots or not self.seeds:
            raise ConfigError("give at least one dataset, method, shot count and seed")
        for m in self.methods:
            if m.lower() in MISSING_METHODS and m not in METHODS:
                raise ConfigError(f"SoT method {m!r} is not available: {MISSING_METHODS[m.lower()]}")
            METHODS.resolve(m)
        for m, spec in self.segmenters.items():
            METHODS.resolve(m)
            if not isinstance(spec, dict):
                raise ConfigError(f"segmenters[{m!r}] must be a mapping such as {{'name': 'clipseg-tiny'}}, got {spec!r}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"a method is listed twice: {', '.join(self.methods)}")
        if min(self.shots) < 1 or min(self.seeds) < 0:
            raise ConfigError(f"shots must be >= 1 and seeds >= 0, got shots {self.shots}, seeds {self.seeds}")
        if str(self.size) != "original":
            try:
                self.size = int(self.size)
            except ValueError:
                raise ConfigError(f"size must be 'original' or a side in pixels (SoT: 518), got {self.size!r}") from None
            if self.size < 32:
                raise ConfigError(f"size must be at least 32 pixels, got {self.size}")
        if self.limit is not None and int(self.limit) < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        for name in ("eval_fraction", "val_fraction"):
            if not 0.0 < float(getattr(self, name)) < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        unknown = set(self.calibration) - {"fit", "per_class", "max_pixels"}
        if unknown:
            raise ConfigError(f"calibration: unknown option(s) {', '.join(sorted(unknown))}; known: fit, per_class, max_pixels")
        fit = self.calibration.get("fit", "both")
        if fit not in CALIBRATION_FITS:
            raise ConfigError(f"calibration fit must be one of {', '.join(CALIBRATION_FITS)} (miou: the threshold with the best validation mIoU; the others minimise the NLL), got {fit!r}")

    def oracle_pairs(self) -> list[tuple[str, str, str]]:
        """``(row name, text method, visual method)`` of every oracle of the run."""
        from segprompt.sot.methods import method_modality

        if not self.oracle:
            return []
        text = [m for m in self.methods if method_modality(m) == "text"]
        visual = [m for m in self.methods if method_modality(m) == "visual"]
        return [(f"{ORACLE}:{t}+{v}", t, v) for t in text for v in visual]

    def row_methods(self) -> list[str]:
        return [*self.methods, *(o for o, _, _ in self.oracle_pairs())]


# -------------------------------------------------------------------------------- the run

MethodFactory = Callable[[str], Any]


def default_method_factory(cfg: SotBenchConfig) -> MethodFactory:
    """Methods built on shared segmenters (``universal-text`` and ``universal-reference`` share one)."""
    from segprompt.models import create_segmenter
    from segprompt.sot.methods import create_method

    segmenters: dict[str, Any] = {}

    def make_segmenter(name: str, kwargs: dict[str, Any]) -> Any:
        key = f"{name}:{sorted(kwargs.items())}"
        if key not in segmenters:
            segmenters[key] = create_segmenter(name, **kwargs)
        return segmenters[key]

    return lambda name: create_method(
        name, device=cfg.device, make_segmenter=make_segmenter, segmenter_spec=cfg.segmenters.get(name), **cfg.method_kwargs.get(name, {})
    )


class _Cache:
    """A first-in first-out cache bounded in bytes: prepared images, and a text method's maps (they
    do not depend on shots or seed, so they are computed once per image)."""

    def __init__(self, size_of: Callable[[Any], int], max_bytes: int = 512 * 2**20) -> None:
        self.items: dict[Any, Any] = {}
        self.size_of, self.bytes, self.max_bytes = size_of, 0, max_bytes

    def get(self, key: Any) -> Any:
        return self.items.get(key)

    def put(self, key: Any, value: Any) -> None:
        self.items[key] = value
        self.bytes += self.size_of(value)
        while self.bytes > self.max_bytes and len(self.items) > 1:
            self.bytes -= self.size_of(self.items.pop(next(iter(self.items))))


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6) for v in values]


def _references(parts: Parts, shots: int, seed: int, size: int | str) -> tuple[dict[int, list[tuple[np.ndarray, np.ndarray]]], dict[int, list[str]], dict[int, str]]:
    """Per prompted label: k (image, mask) references (resized like the images), their ids; failures."""
    refs, ids, failed = {}, {}, {}
    for label in parts.prompted:
        try:
            drawn = sample_references(parts.train, parts.class_key(label), shots, seed, parts.min_area, parts.exclude, index=parts.index)
        except (DataError, ConfigError) as exc:
            failed[label] = str(exc)
            continue
        pairs = []
        for r in drawn:
            image, mask = resize_pair(parts.train[parts.index.position(r.sample_id)].image, r.mask, size)
            pairs.append((image, mask))
        refs[label], ids[label] = pairs, [r.sample_id for r in drawn]
    return refs, ids, failed


class _Runner:
    """One invocation: the run folder, the methods, the caches."""

    def __init__(self, cfg: SotBenchConfig, run: RunFolder, make: MethodFactory, progress: bool) -> None:
        self.cfg, self.run, self.make, self.progress = cfg, run, make, progress
        self.calibration = run.log("calibration")  # this process's file; reading gives every shard's rows
        self.cal_rows: dict[tuple[str, str, int, int], dict[str, Any]] = {}
        self.reload_calibration()
        self.methods: dict[str, Any] = {}
        self.cache = _Cache(lambda out: out.maps.nbytes)
        self.items = _Cache(lambda item: item.image.nbytes + item.target.nbytes, 256 * 2**20)
        self.new_rows = 0

    def reload_calibration(self) -> None:
        """The calibration rows of every shard (the first of duplicates, in reading order): another
        shard may have fitted a (method, shots, seed) since this process started."""
        self.cal_rows = {calibration_identity(r): r for r in canonical(self.calibration, identity=calibration_identity)}

    def method(self, name: str) -> Any:
        if name not in self.methods:
            self.methods[name] = self.make(name)
            described = {n: m.describe() | {"checkpoint": getattr(m.segmenter, "checkpoint", None)} for n, m in self.methods.items()}
            path = self.run.path / "methods.json"
            try:  # shards share the file: keep what the others described
                described = {**json.loads(path.read_text()), **described} if path.exists() else described
            except (OSError, json.JSONDecodeError):
                pass
            self.run.write_text("methods.json", json.dumps(described, indent=1, default=str))
        return self.methods[name]

    def item(self, parts: Parts, which: str, pos: int) -> Item:
        key = (parts.key, which, pos)
        if self.items.get(key) is None:
            self.items.put(key, load_item(parts, parts.val if which == "val" else parts.test, pos, self.cfg.size))
        return self.items.get(key)

    def prompts(self, parts: Parts, item: Item, refs: dict[int, Any], visual: bool) -> tuple[list[Any], dict[int, str]]:
        from segprompt.sot.methods import ClassPrompt

        out, missing = [], {}
        for k, lab in enumerate(item.label_of_map):
            if visual and lab not in refs:
                missing[k] = "no references"
            out.append(ClassPrompt(parts.labels[lab], tuple(refs.get(lab, ()))))
        return out, missing

    def maps(self, parts: Parts, name: str, which: str, item: Item, refs: dict[int, Any]) -> Any:
        """A method's output on one item; classes without references get a zero map."""
        from segprompt.sot.methods import MethodOutput

        method = self.method(name)
        visual = method.modality == "visual"
        key = (parts.key, name, which, item.id)
        if not visual and self.cache.get(key) is not None:
            return self.cache.get(key)
        prompts, missing = self.prompts(parts, item, refs, visual)
        keep = [k for k in range(len(prompts)) if k not in missing]
        out = method.maps(item.image, [prompts[k] for k in keep])
        maps = np.zeros((len(prompts), *item.image.shape[:2]), np.float32)
        maps[keep] = out.maps
        failed = {keep[k]: why for k, why in out.failed.items()} | missing
        full = MethodOutput(maps, out.cost, failed)
        if not visual:
            self.cache.put(key, full)
        return full

    # -- validation: calibration and the oracle's choices -------------------------------
    def prepare(self, parts: Parts, name: str, refs: dict[int, Any]) -> Any:
        """The method's once-per-reference-set work before any image: PerSAM's target embeddings, a
        prototype per class, CLIPSeg's reference embeddings; for text methods the class names' text
        embeddings (MaskCLIP's template ensemble), so that the first image does not pay for them."""
        from segprompt.sot.methods import ClassPrompt

        method = self.method(name)
        if method.modality != "visual":
            return method.prepare([ClassPrompt(parts.labels[lab]) for lab in parts.prompted])
        return method.prepare([ClassPrompt(parts.labels[lab], tuple(refs[lab])) for lab in parts.prompted if lab in refs])

    def calibrate(self, parts: Parts, name: str, shots: int, seed: int, refs: dict[int, Any], ref_ids: dict[int, list[str]], prep: Any) -> dict[str, Any]:
        key = (parts.key, name, shots, seed)
        if key not in self.cal_rows:
            self.reload_calibration()
        if key in self.cal_rows:
            return self.cal_rows[key]
        method = self.method(name)
        hb, n = parts.has_background, len(parts.labels)
        maps, merge_labels, items, outs = [], [], [], []
        for pos in parts.val_pos:
            try:
                item = self.item(parts, "val", pos)
                out = self.maps(parts, name, "val", item, refs)
            except (DataError, PromptError) as exc:
                self.run.record_error_once(f"val:{pos}", exc, dataset=parts.key, method=name)
                continue
            items.append(item)
            outs.append(out)
            maps.append(out.maps)
            merge_labels.append(to_merge_labels(item.target, item.label_of_map, hb))
        opts = dict(self.cfg.calibration)
        if parts.binary:
            opts["per_class"] = False  # one map per image, its class varies: one shared calibration
        try:
            if opts.get("fit") == "miou":
                opts.pop("fit")
                cal = fit_threshold_miou(maps, merge_labels, IGNORE_INDEX, hb, seed=seed, **opts)
            else:
                cal = fit_temperature(maps, merge_labels, IGNORE_INDEX, hb, seed=seed, **opts)
        except DataError as exc:
            self.run.record_error_once(f"calibration:{parts.key}:{name}", exc, dataset=parts.key, method=name)
            cal = Calibration.sot(hb)
        row = {
            "dataset": parts.key, "method": name, "shots": shots, "seed": seed,
            "val_ids": [i.id for i in items], "reference_ids": {parts.labels[lab]: ids for lab, ids in ref_ids.items()} if method.modality == "visual" else {},
            "temperature": cal.temperature.tolist(), "threshold": None if cal.threshold is None else cal.threshold.tolist(),
            "has_background": hb, "fit": cal.fit, "nll_before": _nan_to_none([cal.nll_before])[0], "nll_after": _nan_to_none([cal.nll_after])[0],
            "converged": cal.converged, "n_pixels": cal.n_pixels,
            "prepare": None if prep is None else prep.as_row(),
        }
        cal = stored_calibration(row)
        cm_sot, cm_cal = np.zeros((n, n), np.int64), np.zeros((n, n), np.int64)
        for item, out in zip(items, outs):
            cm_sot += confusion(to_dataset_labels(merge_sot(out.maps, hb), item.label_of_map, hb), item.target, n)
            cm_cal += confusion(to_dataset_labels(np.argmax(cal.apply(out.maps), 0), item.label_of_map, hb), item.target, n)
        row["val_iou_sot"] = _nan_to_none(sot_miou(cm_sot, hb)[1].tolist())
        row["val_iou_cal"] = _nan_to_none(sot_miou(cm_cal, hb)[1].tolist())
        self.calibration.append(row)
        self.cal_rows[key] = row
        return row

    # -- one evaluated image: every method's maps, both merges, the oracles ------------
    def evaluate_image(
        self, parts: Parts, shots: int, seed: int, pos: int, todo: Sequence[str], refs: dict[int, Any], ref_ids: dict[int, list[str]], cal_rows: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The rows of ``todo`` (methods and oracles) on evaluated image ``pos``; errors go to errors.jsonl."""
        cfg, run, hb = self.cfg, self.run, parts.has_background
        pairs = [p for p in cfg.oracle_pairs() if p[0] in todo]
        image_id = parts.test.ids[pos]
        try:
            item = self.item(parts, "test", pos)
        except DataError as exc:
            run.record_error(image_id, exc, dataset=parts.key, method=None)
            return []
        named_refs = {parts.labels[lab]: ids for lab, ids in ref_ids.items()}
        cals = {m: stored_calibration(r) for m, r in cal_rows.items()}
        outs, costs, logits = {}, {}, {}
        for m in cfg.methods:
            if m not in todo and not any(m in (t, v) for _, t, v in pairs):
                continue
            try:
                outs[m] = self.maps(parts, m, "test", item, refs)
            except (DataError, PromptError) as exc:
                run.record_error(image_id, exc, dataset=parts.key, method=m)
                continue
            costs[m], logits[m] = outs[m].cost.as_row(), cals[m].logits(outs[m].maps)
        lom, rows = item.label_of_map, []
        for m in cfg.methods:
            if m in todo and m in outs:
                modality = self.method(m).modality
                pred_sot = to_dataset_labels(merge_sot(outs[m].maps, hb), lom, hb)
                pred_cal = to_dataset_labels(_argmax_bg(logits[m], hb), lom, hb)
                failed = {parts.labels[lom[k]]: why for k, why in outs[m].failed.items()}
                rows.append(_eval_row(parts, m, modality, shots, seed, item, pred_sot, pred_cal, costs[m], named_refs if modality == "visual" else {}, failed))
        for o_name, t, v in pairs:
            if t not in outs or v not in outs:
                continue
            pick_sot = _oracle_choice(cal_rows[t], cal_rows[v], "sot")[lom]
            pick_cal = _oracle_choice(cal_rows[t], cal_rows[v], "cal")[lom]
            pred_sot = to_dataset_labels(merge_sot(np.where(pick_sot[:, None, None], outs[v].maps, outs[t].maps), hb), lom, hb)
            pred_cal = to_dataset_labels(_argmax_bg(np.where(pick_cal[:, None, None], logits[v], logits[t]), hb), lom, hb)
            rows.append(_eval_row(
                parts, o_name, ORACLE, shots, seed, item, pred_sot, pred_cal, _combine_costs([costs[t], costs[v]]), named_refs, {},
                visual_classes_sot=[parts.labels[lab] for lab, p in zip(lom, pick_sot) if p],
                visual_classes_cal=[parts.labels[lab] for lab, p in zip(lom, pick_cal) if p],
            ))  # fmt: skip
        return rows


def stored_calibration(row: dict[str, Any]) -> Calibration:
    """The :class:`Calibration` of a ``calibration.jsonl`` row (what every evaluated image uses)."""
    return Calibration.from_parameters(row["temperature"], row["threshold"], has_background=bool(row["has_background"]))


def _oracle_choice(text_row: dict[str, Any], visual_row: dict[str, Any], which: str) -> np.ndarray:
    """(C,) bool: labels where the visual method's validation IoU beats the text method's."""
    t = np.array([np.nan if v is None else v for v in text_row[f"val_iou_{which}"]], float)
    v = np.array([np.nan if x is None else x for x in visual_row[f"val_iou_{which}"]], float)
    return np.nan_to_num(v, nan=-1.0) > np.nan_to_num(t, nan=-1.0)


def _eval_row(parts: Parts, name: str, modality: str, shots: int, seed: int, item: Item, pred_sot: np.ndarray, pred_cal: np.ndarray, cost: dict[str, Any], ref_ids: dict[str, list[str]], failed: dict[str, str], **extra: Any) -> dict[str, Any]:
    n = len(parts.labels)
    return {
        "dataset": parts.key, "method": name, "modality": modality, "shots": shots, "seed": seed, "image": item.id,
        "size": list(item.target.shape), "labels": list(parts.labels), "has_background": parts.has_background,
        "prompted": [parts.labels[lab] for lab in item.label_of_map], "reference_ids": ref_ids,
        "confusion_sot": confusion(pred_sot, item.target, n).tolist(), "confusion_cal": confusion(pred_cal, item.target, n).tolist(),
        **cost, "failed_classes": failed, **extra,
    }


def _combine_costs(costs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = {k: sum(c[k] for c in costs) for k in ("seconds", "forward_passes", "encoder_passes", "decoder_calls")}
    mem = [c["peak_mem_mb"] for c in costs if c.get("peak_mem_mb") is not None]
    return {**out, "seconds": round(out["seconds"], 5), "peak_mem_mb": max(mem) if mem else None}


# -------------------------------------------------------------------- units, shards, the run


def unit_key(dataset: str, shots: int, seed: int, image_id: str) -> str:
    """The stable key of one work unit, a (dataset, shots, seed, evaluated image):
    ``["camvid", 5, 0, "0016E5_07959"]`` as JSON text (what :func:`~segprompt.engine.shards.shard_of` hashes)."""
    return json.dumps([str(dataset), int(shots), int(seed), str(image_id)])


def row_identity(row: dict[str, Any]) -> tuple[str, str, int, int, str]:
    """What identifies a results row in a run: dataset, method (or oracle), shots, seed, image."""
    return (str(row["dataset"]), str(row["method"]), int(row["shots"]), int(row["seed"]), str(row["image"]))


def calibration_identity(row: dict[str, Any]) -> tuple[str, str, int, int]:
    """What identifies a calibration row: dataset, method, shots, seed."""
    return (str(row["dataset"]), str(row["method"]), int(row["shots"]), int(row["seed"]))


def _orders(cfg: SotBenchConfig) -> tuple[dict[str, int], dict[int, int], dict[int, int], dict[str, int]]:
    return ({d: i for i, d in enumerate(cfg.datasets)}, {k: i for i, k in enumerate(cfg.shots)},
            {s: i for i, s in enumerate(cfg.seeds)}, {m: i for i, m in enumerate(cfg.row_methods())})


def canonical_rows(rows: Sequence[dict[str, Any]], cfg: SotBenchConfig) -> list[dict[str, Any]]:
    """``rows`` (from any number of shard files, in any order) without duplicates, in one order:
    dataset, shots and seed as in the config, image id, method as in the config (oracles last).
    Summaries and reports are computed from this list."""
    do, ko, so, mo = _orders(cfg)

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        ds, m, k, seed, image = row_identity(r)
        return (do.get(ds, len(do)), ds, ko.get(k, len(ko)), k, so.get(seed, len(so)), seed, image, mo.get(m, len(mo)), m)

    return canonical(rows, identity=row_identity, order=order)


def canonical_calibration(rows: Sequence[dict[str, Any]], cfg: SotBenchConfig) -> list[dict[str, Any]]:
    """Calibration rows of every shard without duplicates (a (method, shots, seed) fitted by two
    shards: the first read is kept), ordered by dataset, shots, method, seed as in the config."""
    do, ko, so, mo = _orders(cfg)

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        ds, m, k, seed = calibration_identity(r)
        return (do.get(ds, len(do)), ds, ko.get(k, len(ko)), k, mo.get(m, len(mo)), m, so.get(seed, len(so)), seed)

    return canonical(rows, identity=calibration_identity, order=order)


def _progress(cfg: SotBenchConfig, all_parts: Sequence[Parts], run: RunFolder) -> tuple[UnitProgress, dict[str, set[str]]]:
    """Every unit of the run (datasets x shots x seeds x evaluated images, in that order) and its
    state, from the rows of every shard; and per unit to do, the row names (methods, oracles) it
    still lacks. A row skipped with an error (errors.jsonl: that method, or the image itself, on
    that image) is not redone; nor is an oracle row whose text or visual method was skipped there.
    A unit with a skipped row and every other row present is *failed*."""
    done = {row_identity(r) for r in run.results}
    skipped = {(e.get("dataset"), e.get("method"), e.get("item")) for e in run.errors}
    pairs = {o: (t, v) for o, t, v in cfg.oracle_pairs()}
    prog, missing = UnitProgress([]), {}
    for parts in all_parts:
        ids = [parts.test.ids[p] for p in parts.test_pos]
        for shots in cfg.shots:
            for seed in cfg.seeds:
                for image in ids:
                    key = unit_key(parts.key, shots, seed, image)
                    prog.units.append(key)

                    def skip(m: str) -> bool:
                        return (parts.key, m, image) in skipped or (parts.key, None, image) in skipped or any(skip(x) for x in pairs.get(m, ()))

                    absent = [m for m in cfg.row_methods() if (parts.key, m, shots, seed, image) not in done]
                    todo = {m for m in absent if not skip(m)}
                    if todo:
                        missing[key] = todo
                    elif absent:
                        prog.failed.add(key)
                    else:
                        prog.done.add(key)
    return prog, missing


def _config_record(cfg: SotBenchConfig, launch: LaunchConfig) -> dict[str, Any]:
    return {"suite": SUITE, **asdict(cfg), "launch": launch.record()}


def _write_parts(run: RunFolder, all_parts: Sequence[Parts]) -> dict[str, str]:
    """The datasets' part notes (report.md's "Datasets" lines) into parts.json, for `runs merge`."""
    notes = {p.key: p.note for p in all_parts}
    run.write_text("parts.json", json.dumps(notes, indent=1))
    return notes


def run_sot(
    cfg: SotBenchConfig,
    out: str | Path,
    method_factory: MethodFactory | None = None,
    progress: bool = True,
    launch: LaunchConfig | None = None,
    shard: Shard | str | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the benchmark into ``out``; returns :func:`summarise`'s summary and writes
    summary.csv, the other tables and report.md.

    ``launch``: spread the run over ``launch.workers`` shards (local processes or a SLURM array, see
    :class:`~segprompt.engine.launchers.LaunchConfig`), then write the summary and report from every
    shard's rows; the result then also holds ``failed_shards`` (labels). ``method_factory`` then goes
    to each shard's process (cloudpickle). ``shard`` (``Shard(2, 3)`` or ``"2/3"``): compute only that
    shard's units, in this process; it writes the summary and report only when no unit of any shard
    is left (``report=False``: never), and returns ``{"shard", "new_rows", "todo"}`` otherwise
    (``todo``: units left in the whole run).
    """
    from tqdm.auto import tqdm

    launch = launch or LaunchConfig()
    shard = Shard.parse(shard) if shard is not None else None
    if shard is not None and launch.parallel:
        raise ConfigError("shard= runs one shard in this process; it does not go with a parallel launch")
    if launch.parallel:
        return _run_launched(cfg, out, method_factory, launch, report)
    run = RunFolder(out, _config_record(cfg, launch), shard=shard)
    runner = _Runner(cfg, run, method_factory or default_method_factory(cfg), progress)
    all_parts = [build_parts(cfg, key) for key in cfg.datasets]
    state, missing = _progress(cfg, all_parts, run)
    mine = set(pick(state.units, shard=shard))
    todo_units = {u: missing[u] for u in state.todo if u in mine}
    run.announce(done=len(mine) - len(todo_units), todo=len(todo_units), unit=UNIT)

    pairs = cfg.oracle_pairs()
    for parts in all_parts:
        for shots in cfg.shots:
            for seed in cfg.seeds:
                work = [(pos, todo_units[k]) for pos in parts.test_pos if (k := unit_key(parts.key, shots, seed, parts.test.ids[pos])) in todo_units]
                if not work:
                    continue
                refs, ref_ids, ref_failed = _references(parts, shots, seed, cfg.size)
                for label, why in ref_failed.items():
                    run.record_error_once(f"references:{parts.labels[label]}", why, dataset=parts.key, shots=shots, seed=seed)
                need = {m for _, todo in work for m in todo}
                for o, t, v in pairs:
                    if o in need:
                        need |= {t, v}
                preps = {m: runner.prepare(parts, m, refs) for m in cfg.methods if m in need}
                cal_rows = {m: runner.calibrate(parts, m, shots, seed, refs, ref_ids, preps[m]) for m in cfg.methods if m in need}
                for pos, todo in tqdm(work, desc=f"{parts.key} k={shots} seed={seed}", disable=not progress, leave=False):
                    rows = runner.evaluate_image(parts, shots, seed, pos, [m for m in cfg.row_methods() if m in todo], refs, ref_ids, cal_rows)
                    run.results.extend(rows)
                    runner.new_rows += len(rows)
    run.finish(runner.new_rows)
    if shard is not None:
        left = _progress(cfg, all_parts, run)[0].todo
        if left or not report:
            if left:
                log.info("shard %s done (%d new rows); %d %s left in other shards: rerun them, or `segprompt runs merge %s` "
                         "for a report of what is there", shard.label, runner.new_rows, len(left), UNIT, run.path)
            return {"shard": shard.label, "new_rows": runner.new_rows, "todo": len(left)}
    return _summarise_and_report(run, cfg, _write_parts(run, all_parts), report)


def _summarise_and_report(run: RunFolder, cfg: SotBenchConfig, notes: dict[str, str], report: bool = True) -> dict[str, Any]:
    """The summary of every shard's rows (canonical order); summary.csv, ... and report.md when ``report``."""
    from segprompt.sot.report import summarise, write_reports

    cal = canonical_calibration(run.log("calibration").rows(), cfg)
    summary = summarise(canonical_rows(run.results.rows(), cfg), cal, cfg)
    if report:
        write_reports(run, summary, cfg, notes, cal)
    return summary


def _shard_job(cfg: SotBenchConfig, out: str, method_factory: MethodFactory | None, shard: Shard) -> dict[str, Any]:
    """One shard of a launched run, in a process of its own; the launching process writes the report."""
    return run_sot(cfg, out, method_factory, progress=False, shard=shard, report=False)


def _run_launched(cfg: SotBenchConfig, out: str | Path, method_factory: MethodFactory | None, launch: LaunchConfig, report: bool) -> dict[str, Any]:
    """Launch the shards that still have units (each resumes its own file), wait, then summarise every shard's rows."""
    run = RunFolder(out, _config_record(cfg, launch))  # the config is checked (and written) before any job starts
    all_parts = [build_parts(cfg, key) for key in cfg.datasets]
    state = _progress(cfg, all_parts, run)[0]
    job = functools.partial(_shard_job, cfg, str(run.path.resolve()), method_factory)
    failed = launch_pending_shards(run, state.units, state.todo, job, launch, SUITE, UNIT)
    summary = _summarise_and_report(run, cfg, _write_parts(run, all_parts), report)
    summary["failed_shards"] = failed
    return summary


def _cfg_from_record(config: dict[str, Any]) -> SotBenchConfig:
    from segprompt.engine.config_files import config_from_record

    return config_from_record(SotBenchConfig, config)


def suite_progress(config: dict[str, Any], run: RunFolder) -> UnitProgress:
    """``segprompt runs status``: every (dataset, shots, seed, image) of the run folder's config and
    its state. The datasets are loaded (by name, as in config.yaml) to list their evaluated images."""
    cfg = _cfg_from_record(config)
    return _progress(cfg, [build_parts(cfg, key) for key in cfg.datasets], run)[0]


def merge_run_folder(run_dir: str | Path) -> dict[str, Any]:
    """``segprompt runs merge``: summary.csv, seeds.csv, ..., report.md from the rows of every shard
    present; returns the summary. The datasets' notes come from parts.json (loaded only without it)."""
    run = RunFolder.load(run_dir)
    cfg = _cfg_from_record(run.config)
    path = run.path / "parts.json"
    notes = json.loads(path.read_text()) if path.exists() else {p.key: p.note for p in (build_parts(cfg, k) for k in cfg.datasets)}
    return _summarise_and_report(run, cfg, notes)


def _argmax_bg(logits: np.ndarray, has_background: bool) -> np.ndarray:
    """argmax over [background logit 0, class logits] (or the class logits alone), ties to the first."""
    z = np.concatenate([np.zeros((1, *logits.shape[1:])), logits]) if has_background else logits
    return np.argmax(z, axis=0).astype(np.int64)
