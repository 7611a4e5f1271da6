"""The point-prompt benchmark: strategies x models x images x steps -> a run folder.

For each model and image the image is encoded once; then every (strategy, step) prompt set
is decoded, as one batched call for the placement strategies and one call per step for the
correction strategies. Step semantics:

* placement strategy with budget P positive + N negative and K steps: step k uses the first
  ``ceil(k (P + N) / K)`` points of the strategy's ordered point list (K defaults to P + N,
  one more point per step);
* correction strategy: step 1 is the strategy's opening click (:meth:`first`), each later step
  adds the strategy's correction click(s) computed from the previous step's mask and the
  clicks so far (``microsam`` adds two, ``ritm`` one).

NoC@85 / NoC@90 in the summary count *clicks* (the points in the prompt at the first step
reaching the IoU), not steps.

Every results.jsonl row is one (model, image, strategy, step) with the points as
``[[x, y, label], ...]``, IoU and Dice against the ground truth, the model's score and the
chosen candidate. Randomness comes from ``(seed, image id, strategy)``, so a rerun, a resumed
run and a run over a subset give the same rows.

Sharded runs (:mod:`segprompt.engine.shards`): a work unit is one (dataset, model, image),
keyed by :func:`unit_key`; ``shard=Shard(k, n)`` computes only shard k's units into
``results.shard-k-of-n.jsonl``; ``launch=LaunchConfig("local", workers=4)`` (or ``submitit``,
``submitit-local``) runs shards 1..4 in other processes and then builds the summary and report
from the rows of every shard. Summaries are computed from the rows in the canonical order of
:func:`canonical_rows`, so a sharded run's summary.csv equals an unsharded run's.

With recorded human prompts (``human=``, ``--human``) report.md also holds the study's human
protocol (:mod:`pointprompt.human_protocol`: best step per annotator, human vs automated at
each annotator's best step, replayed vs recorded IoU) and the run folder its tables
(human_best_steps.csv, human_annotators.csv, human_vs_automated.csv, human_replay.csv).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.engine.launchers import LaunchConfig, launch_pending_shards
from segprompt.engine.report import Series, curve_panels, line_plot, markdown_table, short_name, text_table, write_csv
from segprompt.engine.runfolder import RunFolder
from segprompt.engine.shards import Shard, UnitProgress, canonical, pick
from segprompt.errors import ConfigError, DataError, PromptError
from segprompt.metrics import dice, iou, noc
from segprompt.models.base import BENCH_MULTIMASK_POLICIES, MULTIMASK_DESCRIPTIONS, SINGLE_MASK_POLICIES, Segmenter
from segprompt.prompts import MaskPrompt, Points, PromptSet

from pointprompt.budgets import budget_for
from pointprompt.human_protocol import human_protocol, human_protocol_section, write_human_protocol
from pointprompt.strategies import check_budget, create_strategy, is_correction

log = logging.getLogger(__name__)

HUMAN = "human"
SUITE = "pointprompt"


@dataclass
class PointBenchConfig:
    """Everything that determines a point-prompt benchmark's results.

    ``budget``: ``None`` uses ``n_positive`` / ``n_negative`` for every dataset; ``"auto"``
    uses the PointPrompt study's per-dataset budget where one is known (``kvasir`` -> polyp
    14 / 2, ``busi`` -> breast 4 / 1, ...; see ``pointprompt/budgets.yaml``) and the defaults
    elsewhere; a study set name (``"polyp"``, ``"one"``) applies that budget everywhere.
    """

    datasets: list[str] = field(default_factory=lambda: ["synthetic-lesions"])
    dataset_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: list[str] = field(default_factory=lambda: ["sam-tiny"])
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    strategies: list[str] = field(default_factory=lambda: ["centre", "random", "microsam"])
    n_positive: int = 3
    n_negative: int = 1
    budget: str | None = None
    steps: int | None = None
    seed: int = 0
    multimask: str = "auto"
    mask_feedback: bool = False
    limit: int | None = None
    human: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        check_budget(self.n_positive, self.n_negative)
        if self.budget not in (None, "auto"):
            budget_for(self.budget)
        if self.multimask not in BENCH_MULTIMASK_POLICIES:
            raise ConfigError(f"--multimask must be one of {', '.join(BENCH_MULTIMASK_POLICIES)}; got {self.multimask!r}")
        for m, kw in (self.model_kwargs or {}).items():
            if self.multimask == "model" and kw.get("multimask") is not None and kw["multimask"] not in SINGLE_MASK_POLICIES:
                raise ConfigError(f"{m}: --multimask model needs a policy that keeps one mask, and model_kwargs gives {kw['multimask']!r}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not self.models or not self.strategies:
            raise ConfigError("give at least one model and one strategy")
        for s in self.strategies:
            if s == HUMAN:
                raise ConfigError("'human' is not a strategy: pass recorded human prompts with human=PATH (--human)")
            create_strategy(s)  # unknown names fail now, not after an hour
        if not self.datasets:
            raise ConfigError("give at least one dataset")

    def budget_of(self, dataset: str) -> tuple[int, int]:
        """(n_positive, n_negative) used on ``dataset``."""
        if self.budget is None:
            return self.n_positive, self.n_negative
        if self.budget == "auto":
            try:
                return budget_for(Path(dataset).name if Path(dataset).exists() else dataset)
            except ConfigError:
                return self.n_positive, self.n_negative
        return budget_for(self.budget)

    def steps_of(self, dataset: str) -> int:
        """Number of steps per trajectory on ``dataset`` (default: its point budget)."""
        return self.steps or sum(self.budget_of(dataset))


def _rng(seed: int, image_id: str, strategy: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(image_id.encode()), zlib.crc32(strategy.encode())])


def placement_prefixes(n_total: int, n_steps: int) -> list[int]:
    """Number of points used at steps 1..K: ceil(k * n_total / K)."""
    return [max(1, math.ceil(k * n_total / n_steps)) for k in range(1, n_steps + 1)]


def _row(cfg: PointBenchConfig, ds_name: str, model: str, image_id: str, strategy: str, step: int, pts: Points, mask: np.ndarray, gt: np.ndarray, score: float, chosen: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": ds_name,
        "image": image_id,
        "model": model,
        "strategy": strategy,
        "step": step,
        "n_points": len(pts),
        "n_positive": pts.n_positive,
        "n_negative": pts.n_negative,
        "points": [[round(x, 2), round(y, 2), l] for x, y, l in pts.to_list()],
        "iou": float(iou(mask, gt)),
        "dice": float(dice(mask, gt)),
        "score": None if score is None or np.isnan(score) else round(float(score), 5),
        "candidate": None if chosen is None else int(chosen),
        **extra,
    }


def row_key(row: dict[str, Any]) -> tuple[str, str, int]:
    """What identifies a row within one (dataset, model, image): strategy, annotator, step."""
    return (row["strategy"], row.get("annotator") or "", int(row["step"]))


def evaluate_image(
    cfg: PointBenchConfig,
    seg: Segmenter,
    model_name: str,
    ds_name: str,
    sample: Sample,
    budget: tuple[int, int] | None = None,
    steps: int | None = None,
    human: Sequence[Any] = (),
) -> list[dict[str, Any]]:
    """All (strategy, step) rows for one model on one image.

    ``budget`` (positive, negative) and ``steps`` default to the config's. ``human``:
    recorded :class:`~pointprompt.trajectory.Trajectory` objects of this image; each of their
    steps is replayed with this model (rows with strategy ``"human"`` and the annotator).
    """
    gt = np.asarray(sample.mask, bool)
    if not gt.any():
        raise PromptError("empty ground-truth mask: no positive point can be placed (image skipped)")
    state = seg.encode(sample.image)
    rows: list[dict[str, Any]] = []
    strategies = {name: create_strategy(name) for name in cfg.strategies}
    n_pos, n_neg = budget or (cfg.n_positive, cfg.n_negative)
    K = steps or (n_pos + n_neg)

    policy = model_policy(cfg.multimask, seg, model_name)

    def predict(points: Points) -> np.ndarray:
        """The model's mask for a points prompt on this image (for strategies that ask the model)."""
        return seg.segment(state, PromptSet(points=points), multimask=policy, targets=gt).masks[0, 0]

    # placement strategies: every step of every strategy in one batched call
    sets, keys = [], []
    for name, strat in strategies.items():
        if is_correction(strat):
            continue
        extra = {"predict": predict} if getattr(strat, "needs_model", False) else {}
        pts = strat(gt, sample.image, _rng(cfg.seed, sample.id, name), n_pos, n_neg, **extra)
        for step, n in enumerate(placement_prefixes(len(pts), K), 1):
            sets.append(PromptSet(points=pts[:n]))
            keys.append((name, step))
    if sets:
        pred = seg.segment(state, sets, multimask=policy, targets=gt)
        for i, (name, step) in enumerate(keys):
            rows.append(_row(cfg, ds_name, model_name, sample.id, name, step, sets[i].points, pred.masks[i, 0], gt, float(pred.scores[i, 0]), None if pred.chosen is None else pred.chosen[i]))

    # recorded human prompts: every step of every annotator in one batched call
    hsets, hkeys = [], []
    for traj in human:
        for k, step in enumerate(traj.steps, 1):
            if step.points is not None and len(step.points):
                hsets.append(PromptSet(points=step.points))
                hkeys.append((traj, k, step))
    if hsets:
        pred = seg.segment(state, hsets, multimask=policy, targets=gt)
        for i, (traj, k, step) in enumerate(hkeys):
            extra = {"annotator": traj.annotator or "", "round": step.round, "recorded_iou": step.iou}
            rows.append(_row(cfg, ds_name, model_name, sample.id, HUMAN, k, hsets[i].points, pred.masks[i, 0], gt, float(pred.scores[i, 0]), None if pred.chosen is None else pred.chosen[i], **extra))

    # correction strategies: one call per step, all strategies together
    corr = {name: s for name, s in strategies.items() if is_correction(s)}
    if corr:
        feedback = cfg.mask_feedback and "mask" in seg.accepts
        rngs = {name: _rng(cfg.seed, sample.id, name) for name in corr}
        points = {name: s.first(gt, rngs[name]) for name, s in corr.items()}
        logits: dict[str, np.ndarray | None] = {name: None for name in corr}
        for step in range(1, K + 1):
            names = list(corr)
            step_sets = [
                PromptSet(points=points[n], mask=MaskPrompt(logits[n], kind="logits") if feedback and logits[n] is not None else None)
                for n in names
            ]
            pred = seg.segment(state, step_sets, multimask=policy, targets=gt)
            for i, n in enumerate(names):
                mask = pred.masks[i, 0]
                rows.append(_row(cfg, ds_name, model_name, sample.id, n, step, points[n], mask, gt, float(pred.scores[i, 0]), None if pred.chosen is None else pred.chosen[i]))
                if pred.logits is not None:
                    logits[n] = pred.logits[i, 0]
                if step < K:
                    points[n] = points[n] + corr[n].correct(gt, mask, rngs[n], sample.image, clicked=points[n])
    if cfg.multimask == "model":  # which policy "model" meant for this model, on every row
        for r in rows:
            r["multimask"] = policy
    return rows


def load_human(path: str | Path) -> list[Any]:
    """Recorded prompt trajectories: a trajectory file (.jsonl / .json) or a PointPrompt human-data folder."""
    from pointprompt.human_data import read_pointprompt_human
    from pointprompt.trajectory import load_trajectories

    path = Path(path)
    if path.is_dir():
        return read_pointprompt_human(path)
    if not path.exists():
        raise DataError(f"{path}: human prompt data not found (a .jsonl/.json trajectory file or a PointPrompt folder)")
    return load_trajectories(path)


def human_for_dataset(trajectories: Sequence[Any], ds_key: str, ds: SegmentationDataset, single: bool) -> dict[str, list[Any]]:
    """Trajectories of ``ds``'s images, by image id. A trajectory's dataset name must match the
    dataset (its key, folder name or name) unless the run has a single dataset."""
    names = {ds_key, Path(ds_key).name, str(getattr(ds, "name", ""))}
    ids = set(ds.ids)
    out: dict[str, list[Any]] = defaultdict(list)
    for t in trajectories:
        if str(t.image_id) in ids and (single or t.dataset is None or t.dataset in names):
            out[str(t.image_id)].append(t)
    return out


ModelFactory = Callable[[str], Segmenter]


def default_model_factory(cfg: PointBenchConfig, cache: str | Path | None = None) -> ModelFactory:
    from segprompt.models import create_segmenter

    def make(name: str) -> Segmenter:
        kwargs = dict(cfg.model_kwargs.get(name, {}))
        if cache is not None and name not in ("classical", "grabcut", "random-walker"):
            kwargs.setdefault("cache", cache)
        base = name.split("@")[0]  # "sam@vitb" lets one run hold two sam configurations
        return create_segmenter(base, **kwargs)

    return make


def _expected_keys(cfg: PointBenchConfig, steps: int, human: Sequence[Any]) -> set[tuple[str, str, int]]:
    """Row keys one (model, image) pair must have: every strategy's steps and every replayed human step."""
    keys = {(s, "", k) for s in cfg.strategies for k in range(1, steps + 1)}
    for t in human:
        keys |= {(HUMAN, t.annotator or "", k) for k, st in enumerate(t.steps, 1) if st.points is not None and len(st.points)}
    return keys


def unit_key(dataset: str, model: str, image_id: str) -> str:
    """The stable key of one work unit, a (dataset, model, image): ``["kvasir", "sam", "cju0qkwl35piu0993l0dewei2"]``
    as JSON text (what :func:`segprompt.engine.shards.shard_of` hashes)."""
    return json.dumps([str(dataset), str(model), str(image_id)])


def row_identity(row: dict[str, Any]) -> tuple[str, str, str, str, str, int]:
    """What identifies a results row in a run: dataset, model, image, strategy, annotator, step."""
    return (str(row["dataset"]), str(row["model"]), str(row["image"]), *row_key(row))  # type: ignore[return-value]


def canonical_rows(rows: Sequence[dict[str, Any]], cfg: PointBenchConfig) -> list[dict[str, Any]]:
    """``rows`` (from any number of shard files, in any order) without duplicates, in one order:
    dataset and model as in the config, image id, strategy as in the config (human last),
    annotator, step. Summaries and reports are computed from this list."""
    dorder = {d: i for i, d in enumerate(cfg.datasets)}
    morder = {m: i for i, m in enumerate(cfg.models)}
    sorder = {s: i for i, s in enumerate([*cfg.strategies, HUMAN])}

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        ds, model, image, strat, annotator, step = row_identity(r)
        return (dorder.get(ds, len(dorder)), ds, morder.get(model, len(morder)), model, image, sorder.get(strat, len(sorder)), strat, annotator, step)

    return canonical(rows, identity=row_identity, order=order)


@dataclass
class _DatasetPlan:
    key: str
    ds: SegmentationDataset
    ids: list[str]
    steps: int
    human: dict[str, list[Any]]


def _dataset_plans(cfg: PointBenchConfig, dataset: SegmentationDataset | None) -> list[_DatasetPlan]:
    from segprompt.data.registry import load_dataset

    trajectories = load_human(cfg.human) if cfg.human else []
    plans = []
    for ds_key in cfg.datasets:
        ds = dataset if dataset is not None else load_dataset(ds_key, **cfg.dataset_kwargs.get(ds_key, {}))
        n_images = len(ds) if cfg.limit is None else min(cfg.limit, len(ds))
        human = human_for_dataset(trajectories, ds_key, ds, single=len(cfg.datasets) == 1)
        plans.append(_DatasetPlan(ds_key, ds, list(ds.ids[:n_images]), cfg.steps_of(ds_key), human))
    return plans


def _progress(cfg: PointBenchConfig, plans: Sequence[_DatasetPlan], run: RunFolder) -> tuple[UnitProgress, dict[tuple[str, str, str], set[tuple[str, str, int]]]]:
    """Every unit of the run (datasets x models x images, in that order), those whose rows are
    all present (in any shard's file) and those skipped with an error; and the row keys present per unit."""
    have: dict[tuple[str, str, str], set[tuple[str, str, int]]] = defaultdict(set)
    for r in run.results:
        have[(r["dataset"], r["model"], r["image"])].add(row_key(r))
    skipped = {(e.get("dataset"), e.get("model"), e.get("item")) for e in run.errors}
    prog = UnitProgress([])
    for p in plans:
        for model_name in cfg.models:
            for image_id in p.ids:
                key = unit_key(p.key, model_name, image_id)
                prog.units.append(key)
                if _expected_keys(cfg, p.steps, p.human.get(image_id, ())) <= have[(p.key, model_name, image_id)]:
                    prog.done.add(key)
                elif (p.key, model_name, image_id) in skipped:
                    prog.failed.add(key)
    return prog, have


def _config_record(cfg: PointBenchConfig, launch: LaunchConfig) -> dict[str, Any]:
    return {"suite": SUITE, **asdict(cfg), "launch": launch.record()}


def run_pointprompt(
    cfg: PointBenchConfig,
    out: str | Path,
    dataset: SegmentationDataset | None = None,
    model_factory: ModelFactory | None = None,
    cache: str | Path | None = None,
    progress: bool = True,
    launch: LaunchConfig | None = None,
    shard: Shard | str | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the benchmark into ``out``; returns the summary (see :func:`summarise`).

    ``dataset`` overrides loading ``cfg.datasets[0]`` by name (for datasets built in code).
    ``launch``: spread the run over ``launch.workers`` shards (local processes or a SLURM array,
    see :class:`~segprompt.engine.launchers.LaunchConfig`), then write the summary and report from
    every shard's rows; the result then also holds ``failed_shards`` (labels). ``shard``
    (``Shard(2, 3)`` or ``"2/3"``): compute only that shard's units, in this process; it writes the
    summary and report only when no unit of any shard is left (``report=False``: never), and
    returns ``{"shard", "new_rows", "todo"}`` otherwise (``todo``: units left in the whole run).
    """
    from tqdm.auto import tqdm

    launch = launch or LaunchConfig()
    shard = Shard.parse(shard) if shard is not None else None
    if shard is not None and launch.parallel:
        raise ConfigError("shard= runs one shard in this process; it does not go with a parallel launch")
    if launch.parallel:
        return _run_launched(cfg, out, dataset, model_factory, cache, launch, report)
    run = RunFolder(out, _config_record(cfg, launch), shard=shard)
    make = model_factory or default_model_factory(cfg, cache)
    models: dict[str, Segmenter] = {}

    plans = _dataset_plans(cfg, dataset)
    state, done = _progress(cfg, plans, run)
    mine = set(pick(state.units, shard=shard))
    todo_keys = set(state.todo) & mine
    run.announce(done=len(mine) - len(todo_keys), todo=len(todo_keys), unit="(model, image) pairs")

    new_rows = 0
    for p in plans:
        budget = cfg.budget_of(p.key)
        for model_name in cfg.models:
            todo = [i for i, image_id in enumerate(p.ids) if unit_key(p.key, model_name, image_id) in todo_keys]
            if not todo:
                continue
            if model_name not in models:
                models[model_name] = make(model_name)
            seg = models[model_name]
            for i in tqdm(todo, desc=f"{model_name} on {short_name(p.key)}", disable=not progress, leave=False):
                image_id = p.ids[i]
                try:
                    sample = p.ds[i]
                    rows = evaluate_image(cfg, seg, model_name, p.key, sample, budget, p.steps, p.human.get(image_id, ()))
                except (DataError, PromptError) as exc:
                    run.record_error(image_id, exc, model=model_name, dataset=p.key)
                    continue
                have = done[(p.key, model_name, image_id)]
                fresh = [r for r in rows if row_key(r) not in have]
                run.results.extend(fresh)
                new_rows += len(fresh)
    run.finish(new_rows)
    if shard is not None:
        left = _progress(cfg, plans, run)[0].todo
        if left or not report:
            if left:
                log.info("shard %s done (%d new rows); %d (model, image) pairs left in other shards: rerun them, "
                         "or `segprompt runs merge %s` for a report of what is there", shard.label, new_rows, len(left), run.path)
            return {"shard": shard.label, "new_rows": new_rows, "todo": len(left)}
    summary = summarise(canonical_rows(run.results.rows(), cfg), cfg)
    if report:
        write_reports(run, summary, cfg)
    return summary


def _shard_job(cfg: PointBenchConfig, out: str, dataset: SegmentationDataset | None, model_factory: ModelFactory | None,
               cache: str | Path | None, shard: Shard) -> dict[str, Any]:
    """One shard of a launched run, in a process of its own; the launching process writes the report."""
    return run_pointprompt(cfg, out, dataset, model_factory, cache, progress=False, shard=shard, report=False)


def _run_launched(cfg: PointBenchConfig, out: str | Path, dataset: SegmentationDataset | None, model_factory: ModelFactory | None,
                  cache: str | Path | None, launch: LaunchConfig, report: bool) -> dict[str, Any]:
    """Launch the shards that still have units (each resumes its own file), wait, then summarise every shard's rows."""
    run = RunFolder(out, _config_record(cfg, launch))  # the config is checked (and written) before any job starts
    plans = _dataset_plans(cfg, dataset)
    state = _progress(cfg, plans, run)[0]
    job = functools.partial(_shard_job, cfg, str(run.path.resolve()), dataset, model_factory, None if cache is None else str(Path(cache).resolve()))
    failed = launch_pending_shards(run, state.units, state.todo, job, launch, SUITE, "(model, image) pairs")
    summary = summarise(canonical_rows(run.results.rows(), cfg), cfg)
    if report:
        write_reports(run, summary, cfg)
    summary["failed_shards"] = failed
    return summary


def _cfg_from_record(config: dict[str, Any]) -> PointBenchConfig:
    from segprompt.engine.config_files import config_from_record

    return config_from_record(PointBenchConfig, config)


def suite_progress(config: dict[str, Any], run: RunFolder) -> UnitProgress:
    """``segprompt runs status``: every (dataset, model, image) of the run folder's config and its state.
    The datasets are loaded by name (as in config.yaml)."""
    cfg = _cfg_from_record(config)
    return _progress(cfg, _dataset_plans(cfg, None), run)[0]


def merge_run_folder(run_dir: str | Path) -> dict[str, Any]:
    """``segprompt runs merge``: summary.csv, curves.csv, report.md, ... from the rows of every
    shard present (no dataset is loaded); returns the summary."""
    run = RunFolder.load(run_dir)
    cfg = _cfg_from_record(run.config)
    summary = summarise(canonical_rows(run.results.rows(), cfg), cfg)
    write_reports(run, summary, cfg)
    return summary


def summarise(rows: Sequence[dict[str, Any]], cfg: PointBenchConfig) -> dict[str, Any]:
    """Aggregate results rows.

    A *trajectory* is one (image, annotator) sequence of steps: one per image for automated
    strategies, one per annotator and image for recorded human prompts. Returns a dict with:

    * ``table``: one row per (dataset, model, strategy): trajectories, mean IoU after the first
      and the last step, mean over trajectories of their best step's IoU, mean IoU over steps,
      NoC@85/90 in clicks (the points in the prompt at the first step reaching IoU 0.85 / 0.90,
      :func:`segprompt.metrics.noc` with ``clicks``; when never reached, the clicks of the
      trajectory's last step, at least the configured steps) and the share that never reach 0.85;
    * ``curves``: mean IoU (and std) per (dataset, model, strategy, step);
    * ``matched``: mean IoU per (dataset, model, strategy, number of points), so strategies
      and human prompts are compared at equal point budgets;
    * ``steps``: configured steps per dataset.
    """
    by_step: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    units: dict[tuple[str, str, str], dict[tuple[str, str], dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    points_at: dict[tuple[str, str, str], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    by_points: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["dataset"], r["model"], r["strategy"])
        k = int(r["step"])
        by_step[key][k].append(float(r["iou"]))
        units[key][(r["image"], r.get("annotator") or "")][k] = (float(r["iou"]), int(r["n_points"]))
        points_at[key][k].append(int(r["n_points"]))
        by_points[key][int(r["n_points"])].append(float(r["iou"]))
    steps = {d: cfg.steps_of(d) for d in cfg.datasets}
    dorder = {d: i for i, d in enumerate(cfg.datasets)}
    morder = {m: i for i, m in enumerate(cfg.models)}
    sorder = {s: i for i, s in enumerate([*cfg.strategies, HUMAN])}
    table, curves, matched = [], [], []
    for key in sorted(by_step, key=lambda k: (dorder.get(k[0], 99), morder.get(k[1], 99), sorder.get(k[2], 99), k)):
        ds, model, strat = key
        K = steps.get(ds, max(by_step[key]))
        for k in sorted(by_step[key]):
            v = by_step[key][k]
            curves.append({"dataset": ds, "model": model, "strategy": strat, "step": k, "mean_points": float(np.mean(points_at[key][k])), "iou": float(np.mean(v)), "iou_std": float(np.std(v)), "n": len(v)})
        for n_pts in sorted(by_points[key]):
            v = by_points[key][n_pts]
            matched.append({"dataset": ds, "model": model, "strategy": strat, "n_points": n_pts, "iou": float(np.mean(v)), "n": len(v)})
        curves_u = [[u[k][0] for k in sorted(u)] for u in units[key].values()]
        clicks_u = [np.maximum.accumulate([max(1, u[k][1]) for k in sorted(u)]) for u in units[key].values()]
        nocs85 = [noc(c, 0.85, max_clicks=max(K, int(n[-1])), clicks=n) for c, n in zip(curves_u, clicks_u)]
        nocs90 = [noc(c, 0.90, max_clicks=max(K, int(n[-1])), clicks=n) for c, n in zip(curves_u, clicks_u)]
        table.append(
            {
                "dataset": ds,
                "model": model,
                "strategy": strat,
                "steps": K if strat != HUMAN else float(np.mean([len(c) for c in curves_u])),
                "trajectories": len(curves_u),
                "iou@1": float(np.mean(by_step[key][1])) if 1 in by_step[key] else float("nan"),
                "iou@last": float(np.mean([c[-1] for c in curves_u])),
                "iou_best": float(np.mean([max(c) for c in curves_u])),
                "iou_mean": float(np.mean([np.mean(c) for c in curves_u])),
                "noc85": float(np.mean(nocs85)),
                "noc90": float(np.mean(nocs90)),
                "fail85": float(np.mean([max(c) < 0.85 for c in curves_u])),
            }
        )
    policies: dict[str, list[str]] = defaultdict(list)  # --multimask model: each model's own, from its rows
    for r in rows:
        if r.get("multimask") and r["multimask"] not in policies[r["model"]]:
            policies[r["model"]].append(r["multimask"])
    return {"table": table, "curves": curves, "matched": matched, "steps": steps, "policies": dict(policies)}


SUMMARY_COLUMNS = ["dataset", "model", "strategy", "steps", "trajectories", "iou@1", "iou@last", "iou_best", "iou_mean", "noc85", "noc90", "fail85"]


def pivot(rows: Sequence[dict[str, Any]], row_key: str, col_key: str, value: str, fixed: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """A ``row_key`` x ``col_key`` table of ``value`` from long-format rows (filtered by ``fixed``)."""
    cols: list[str] = []
    table: dict[Any, dict[str, Any]] = {}
    for r in rows:
        if fixed and any(r.get(k) != v for k, v in fixed.items()):
            continue
        c = str(r[col_key])
        if c not in cols:
            cols.append(c)
        table.setdefault(r[row_key], {row_key: r[row_key]})[c] = r[value]
    return list(table.values()), [row_key, *cols]


#: the model wrappers a run can ask for (model_kwargs), as report.md names them
WRAPPER_TITLES = (
    ("zoom_in", "Zoom-in (RITM's, segprompt.models.zoom_in)"),
    ("brs", "f-BRS (segprompt.models.brs)"),
    ("cascade", "Cascade (own logits fed back as the mask prompt, segprompt.models.cascade)"),
)

#: what a reader should know about a model named in a report (others: see its describe())
MODEL_NOTES = {
    "sam-tiny": "the bundled demo model: a 1.85 M-parameter SAM-architecture model trained on domain-randomised synthetic "
    "images only (scripts/train_sam_tiny.py); not a foundation model: on real images about as good as GrabCut from a click",
    "grabcut": "OpenCV GrabCut, a weight-free classical baseline (no score: its predicted quality is empty)",
    "random-walker": "scikit-image's random walker, a weight-free classical baseline",
    "classical": "a weight-free classical baseline (GrabCut or the random walker)",
    "sam": "Segment Anything with the checkpoint given in config.yaml (model_kwargs)",
    # universal: the previous step's logits are its memory prompt; SEEM's own interactive evaluation
    # (modeling/architectures/seem_model_v1.py: evaluate_interactive) feeds the previous mask back every
    # round, here only with --mask-feedback, so that all models run one protocol (off by default)
    "universal-tiny": "the bundled demo universal model: a small SEEM-style decoder trained on synthetic "
    "multi-class scenes only (scripts/train_universal_tiny.py); 3 candidates with predicted IoU, like SAM; with mask "
    "feedback the previous step's logits are its memory prompt (SEEM's multi-round memory)",
    "universal": "the SEEM-style universal decoder (segprompt.universal) with the checkpoint given in config.yaml (model_kwargs); "
    "with mask feedback the previous step's logits are its memory prompt",
}

def model_policy(policy: str, seg: Segmenter, model_name: str) -> str:
    """The policy one model is run with: ``policy``, or the model's own for ``"model"``."""
    if policy != "model":
        return policy
    own = str(seg.multimask)
    if own not in SINGLE_MASK_POLICIES:
        raise ConfigError(f"{model_name}: --multimask model needs a policy that keeps one mask, and this model's own is {own!r}; give --multimask")
    return own


def _policy_lines(cfg: PointBenchConfig, policies: dict[str, list[str]]) -> list[str]:
    """With ``--multimask model``: the policy each model ran with, from its rows (two policies for
    one model mean its own default changed between the runs that wrote the rows)."""
    if cfg.multimask != "model":
        return []
    out = [""]
    for m in cfg.models:
        seen = policies.get(m, [])
        mixed = " (rows from more than one policy: the model's own default changed between runs; start a new run folder)" if len(seen) > 1 else ""
        out.append(f"- `{m}`: {' and '.join(f'`{p}`' for p in seen) or 'no rows yet'}{mixed}")
    return out


def multimask_note(policy: str) -> str:
    """The report's sentence on the multimask policy, from the one description of each policy."""
    return (
        f"`{policy}`: {MULTIMASK_DESCRIPTIONS[policy]}. `candidate` is the kept candidate (0-2), or -1 where the "
        "single-mask head answered."
    )


def iou_curve_panels(curves: Sequence[dict[str, Any]]) -> dict[str, dict[str, Series]]:
    """``{"model on dataset": {strategy: Series}}`` of mean IoU against the mean number of points
    placed at each step, with a std band and n, for :func:`line_plot`."""
    return curve_panels(curves, lambda c: f"{c['model']} on {short_name(c['dataset'], 18)}", "strategy", "mean_points")


def write_reports(run: RunFolder, summary: dict[str, Any], cfg: PointBenchConfig) -> None:
    write_csv(run.path / "summary.csv", summary["table"], SUMMARY_COLUMNS)
    write_csv(run.path / "curves.csv", summary["curves"], ["dataset", "model", "strategy", "step", "mean_points", "iou", "iou_std", "n"])
    write_csv(run.path / "matched_budget.csv", summary["matched"], ["dataset", "model", "strategy", "n_points", "iou", "n"])
    panels = iou_curve_panels(summary["curves"])
    plot = (
        line_plot(panels, run.path / "iou_per_step.png", xlabel="points placed (mean per image)", ylabel="mean IoU", title="IoU by points placed", spread_label="± 1 std")
        if panels
        else None
    )
    budgets = ", ".join(f"{d}: {p} positive + {n} negative over {cfg.steps_of(d)} steps" for d in cfg.datasets for p, n in [cfg.budget_of(d)])
    models = [f"- `{m}`: {MODEL_NOTES.get(m.split('@')[0], 'see config.yaml')}" for m in cfg.models]
    feedback = "on (each click goes with the previous step's logits, to the models that take a mask)" if cfg.mask_feedback else "off"
    wrapped = [
        f"{title}: {', '.join(f'`{m}`' for m in cfg.models if cfg.model_kwargs.get(m, {}).get(option) not in (None, False)) or 'off'}."
        for option, title in WRAPPER_TITLES
    ]
    lines = [
        "# Point-prompt benchmark",
        "",
        f"Strategies {', '.join(f'`{s}`' for s in cfg.strategies)}; seed {cfg.seed}. Point budgets: {budgets}.",
        "",
        "Models:",
        "",
        *models,
        "",
        f"Multimask policy {multimask_note(cfg.multimask)}",
        *_policy_lines(cfg, summary.get("policies", {})),
        "",
        f"Mask feedback between correction clicks: {feedback}.",
        "",
        *[line for w in wrapped for line in (w, "")],
        "## Summary",
        "",
        "A trajectory is one image (one image and annotator for human prompts). iou@1 and iou@last are the mean IoU "
        "after its first and last step, iou_best the mean of its best step, iou_mean the mean over its steps; NoC85/90 "
        "is the mean number of clicks (points in the prompt) to reach IoU 0.85 / 0.90 (counted as the clicks of the "
        "trajectory's last step, at least the configured steps, when never reached); fail85 is the share of "
        "trajectories that never reach 0.85. Placement strategies spread their points over the steps (one per step "
        "when the steps equal the points; `entropy`, `max-distance` and `saliency` add their seed point on each side, "
        "as the PointPrompt study does); correction strategies add their correction clicks per step (two for "
        "`microsam`, one for `ritm`); the plot's x axis counts points.",
        "",
        markdown_table(summary["table"], SUMMARY_COLUMNS),
        "",
    ]
    if summary["table"]:
        lines += ["## Strategy x dataset (mean IoU at the last step)", ""]
        for model in cfg.models:
            tab, cols = pivot(summary["table"], "strategy", "dataset", "iou@last", {"model": model})
            if tab:
                lines += [f"Model `{model}`:", "", markdown_table(tab, cols), ""]
    if plot is not None:
        lines += ["## IoU by points placed", "", "Mean IoU over images; the band is ± 1 standard deviation, n images per panel.", "", f"![IoU by points placed]({plot.name})", ""]
    lines += ["## IoU at matched point budgets", "", "Mean IoU by the number of points in the prompt (all steps pooled).", ""]
    for ds in cfg.datasets:
        for model in cfg.models:
            tab, cols = pivot(summary["matched"], "strategy", "n_points", "iou", {"dataset": ds, "model": model})
            if tab:
                lines += [f"`{model}` on `{ds}`:", "", markdown_table(tab, cols), ""]
    if cfg.human:  # only runs with recorded human prompts: the study's protocol on them
        proto = human_protocol(canonical_rows(run.results.rows(), cfg))
        if proto["best_steps"]:
            write_human_protocol(run.path, proto)
            lines += [human_protocol_section(proto)]
    n_err = len(run.errors.rows())
    lines += [f"Skipped inputs: {n_err} (see errors.jsonl)." if n_err else "Skipped inputs: none.", "", run.timing_text(), ""]
    run.write_text("report.md", "\n".join(lines))


def format_summary(summary: dict[str, Any]) -> str:
    return text_table(summary["table"], SUMMARY_COLUMNS)
