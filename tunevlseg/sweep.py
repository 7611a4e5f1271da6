"""The TuneVLSeg grid: VLSMs x methods x depths x datasets x seeds, one resumable run folder.

.. code-block:: python

    from tunevlseg.sweep import SweepConfig, run_sweep
    cfg = SweepConfig(vlsms=["clipseg"], methods=["coop", "vpt-deep", "maple"], depths=[1, 3, 6, 9, 12],
                      datasets=["kvasir", "busi"], seeds=[0], train={"epochs": 20, "batch_size": 32})
    run_sweep(cfg, "runs/tunevlseg/grid", launcher="local", workers=2)     # rerun to resume

Layout::

    <out>/config.yaml                 training settings shared by every cell (+ the grid)
    <out>/results.jsonl               one ``kind: "cell"`` row per finished cell (its test summary)
    <out>/errors.jsonl                cells skipped (depth out of range, duplicates) or failed, and the
                                      unreadable items of every cell (with its name)
    <out>/invocations.jsonl           one row per invocation (start, seconds, new rows)
    <out>/cells/<vlsm>_<method>_d<depth>_<dataset>_s<seed>/   one train_and_evaluate run each
    <out>/report.md, table.md, table.tex, summary.csv, params.csv, dice_vs_depth_<dataset>.png

Rerunning the command skips the cells that have a row (or whose own folder already holds its
summary: a sweep killed after a cell finished) and resumes interrupted cells from their
``checkpoints/last.pt``. The grid lists may grow between runs (add a method, a dataset, a seed);
the training settings may not (the folder's config.yaml must match, as for any run folder).

Depth is deduplicated per method, so no cell is trained twice for the same model:

* ``zeroshot`` and ``full`` have no prompts: one cell each, named ``d0``;
* ``vpt-shallow`` is depth 1 by definition: one cell, ``d1``;
* ``vpt-deep`` at depth 1 *is* ``vpt-shallow`` (same prompts, same initialisation): when both
  are in the grid the vpt-deep d1 cell is skipped and the report draws vpt-shallow's result as
  vpt-deep's depth-1 point;
* ``coop``, ``cocoop``, ``maple``, ``shared-separate``, ``shared-attention`` and ``vpt-deep``
  run at every depth of the grid that their prompted towers have (a depth beyond the layers of
  a tower is skipped and written to errors.jsonl, e.g. depth 12 on a 4-layer tiny model).
  CLIPSeg's decoder reads three vision layers (3, 6, 9 for ViT-B/16): visual prompts deeper than
  the last of them cannot change the logits (the report notes it; the cells still run).

Progress (logged at INFO; the CLI shows it): where the run starts (:meth:`RunFolder.announce`:
"resuming <out>: N cells already done, M to do"), a progress bar over the cells, one line per
finished cell (test Dice, seconds) and, for cells trained in this process, one line per epoch.
Each invocation is recorded (:meth:`RunFolder.finish`) and the report shows the first
invocation's time next to the last one's.

Unreadable items (a missing mask, a broken image) are skipped inside each cell and written to
the cell's errors.jsonl and to the sweep's (with the cell name); the cell still finishes.

Launchers: ``local`` (sequential, or ``workers`` processes through
:class:`concurrent.futures.ProcessPoolExecutor`), ``submitit`` (SLURM through
``submitit.AutoExecutor``: partition, time, GPUs, CPUs as options) and ``submitit-local``
(``submitit.LocalExecutor``: the same job path on this machine, which is how it is tested).
Results are appended by the launching process only, as jobs finish.

Training settings (``train``) follow a recipe (:data:`tunevlseg.train.RECIPES`; ``tvs``, TuneVLSeg's
protocol, unless ``train["recipe"]`` says otherwise); config.yaml records the resolved values.
A sweep folder written before recipes existed ran the ``segprompt`` recipe and resumes with it
(see :func:`tunevlseg.train.adopt_legacy_config`). ``learner_kwargs`` maps a method to the
keyword arguments of its learner (the method presets of configs/tunevlseg/ fill it).

Optuna (``optuna_trials=N``, optional, local launcher): per (VLSM, method, dataset, seed) a TPE
search, selecting on validation data only; the best trial is then tested and written as a
``kind: "optuna"`` row. It complements the explicit depth grid, it does not replace it. The space
follows the recipe (:data:`OPTUNA_SPACES`): ``tvs`` as TuneVLSeg's configs/hparams_search/*_optuna.yaml
(lr 1e-5..5e-3 and weight decay 1e-5..1e-2, both log-uniform, prompt depth ``range(1, 12)``, which
the Hydra Optuna sweeper turns into the integers 1..12, capped at the prompted towers' layers;
multivariate TPE with 10 random start-up trials; minimising ``val_loss``, the validation loss of
the last epoch, as ``trainer.callback_metrics`` holds it after fit); ``segprompt`` as before (lr
1e-5..1e-2, weight decay 1e-6..1e-1, maximising the best validation Dice).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from segprompt.engine.launchers import LAUNCHERS, run_jobs, submitit_executor
from segprompt.engine.runfolder import JsonlLog, RunFolder
from segprompt.errors import ConfigError, SegpromptError

log = logging.getLogger(__name__)

__all__ = ["SweepConfig", "Cell", "plan_cells", "run_cell", "run_sweep", "expand_methods", "LAUNCHERS", "OPTUNA_SPACES"]

#: grid axes: they may change between reruns of the same folder (the cells are independent)
GRID_KEYS = ("vlsms", "methods", "depths", "datasets", "seeds", "vlsm_kwargs", "learner_kwargs", "dataset_roots")


@dataclass
class SweepConfig:
    """The grid and the training settings every cell shares (``train``: TrainConfig fields)."""

    vlsms: list[str] = field(default_factory=lambda: ["clipseg-tiny"])
    methods: list[str] = field(default_factory=lambda: ["coop", "vpt-deep", "maple"])
    depths: list[int] = field(default_factory=lambda: [1])
    datasets: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    vlsm_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    learner_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset_roots: dict[str, str] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the messages name the command line's options (segprompt bench tunevlseg)
        from tunevlseg.data import _is_path, _key, benchmark_info
        from tunevlseg.learners import LEARNERS
        from tunevlseg.models import VLSMS
        from tunevlseg.train import RECIPE_FIELDS, TrainConfig

        for name, flag in (("vlsms", "--vlsm"), ("methods", "--methods"), ("depths", "--depths"), ("datasets", "--dataset"), ("seeds", "--seed")):
            if not getattr(self, name):
                raise ConfigError(f"the sweep needs at least one of {name} ({flag})")
        self.methods = expand_methods(self.methods)
        for v in self.vlsms:
            try:
                VLSMS.resolve(v)
            except ConfigError as exc:
                raise ConfigError(f"--vlsm: {exc}") from None
        try:
            self.depths = sorted({int(d) for d in self.depths})
            self.seeds = list(dict.fromkeys(int(s) for s in self.seeds))
        except (TypeError, ValueError):
            raise ConfigError(f"--depths and --seed take integers, got depths {self.depths}, seeds {self.seeds}") from None
        if any(d < 1 for d in self.depths):
            raise ConfigError(f"--depths are 1-based (1 = prompts at the input only), got {','.join(map(str, self.depths))}")
        self.datasets = list(dict.fromkeys(str(d) for d in self.datasets))
        for d in self.datasets:
            if not _is_path(d) and _key(d) is None:
                raise ConfigError(f"--dataset {d}: not a TuneVLSeg dataset name ({', '.join(list_names())}) and no such folder")
        roots: dict[str, str] = {}
        for name, folder in dict(self.dataset_roots).items():
            if _key(str(name)) is None:
                raise ConfigError(f"--root {name}={folder}: --root names the folder of a TuneVLSeg dataset ({', '.join(list_names())}); "
                                  "give any other folder directly as --dataset")
            match = [d for d in self.datasets if not _is_path(d) and _key(d) == _key(str(name))]
            if not match:
                raise ConfigError(f"--root {name}={folder}: {benchmark_info(str(name)).name} is not among the --dataset values ({', '.join(self.datasets)})")
            roots[match[0]] = str(folder)
        self.dataset_roots = roots
        extra = sorted(set(self.vlsm_kwargs) - set(self.vlsms))
        if extra:
            raise ConfigError(f"--vlsm-kwargs names {', '.join(extra)}, which {'is' if len(extra) == 1 else 'are'} not among the --vlsm values ({', '.join(self.vlsms)})")
        known = {f.name for f in fields(TrainConfig)}
        grid_owned = {"vlsm", "vlsm_kwargs", "method", "depth", "dataset", "dataset_root", "seed"}
        bad = sorted(set(self.train) - known)
        if bad:
            raise ConfigError(f"--train-kwargs: unknown training setting(s) {', '.join(bad)}; known: {', '.join(sorted(known - grid_owned))}")
        owned = sorted(set(self.train) & grid_owned)
        if owned:
            raise ConfigError(f"--train-kwargs: {', '.join(owned)} {'is' if len(owned) == 1 else 'are'} set by the grid (--vlsm, --vlsm-kwargs, --methods, --depths, --dataset, "
                              "--root, --seed), not by --train-kwargs")
        kwargs: dict[str, dict[str, Any]] = {}
        for name, value in dict(self.learner_kwargs or {}).items():
            try:
                method = LEARNERS.resolve(str(name))
            except ConfigError as exc:
                raise ConfigError(f"learner_kwargs: {exc}") from None
            if not isinstance(value, dict):
                raise ConfigError(f"learner_kwargs: {name} needs a mapping of keyword arguments, got {value!r}")
            _check_learner_kwargs(method, value)
            kwargs[method] = {**kwargs.get(method, {}), **value}
        self.learner_kwargs = kwargs  # methods outside the grid may have kwargs (a preset of every method)
        # every training setting checked now, before a run folder or a model exists; the recipe's
        # values are filled in, so config.yaml records what each cell runs
        tc = TrainConfig(vlsm=self.vlsms[0], method=self.methods[0], dataset=self.datasets[0], **self.train)
        self.train = {**self.train, **{k: getattr(tc, k) for k in ("recipe", *RECIPE_FIELDS)}}


def _check_learner_kwargs(method: str, kwargs: dict[str, Any]) -> None:
    """A ConfigError, before any work, for a keyword the method's learner does not take (the grid
    and create_learner set ``vlsm``, ``depth``, ``n_ctx`` and ``seed``)."""
    import inspect

    from tunevlseg.learners import LEARNERS

    params = inspect.signature(LEARNERS.get(method).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    owned = {"self", "vlsm", "depth", "seed", "n_ctx"}
    bad = sorted(k for k in kwargs if k not in params or k in owned)
    if bad:
        takes = ", ".join(k for k in params if k not in owned)
        raise ConfigError(f"learner_kwargs: {method} does not take {', '.join(bad)} (it takes {takes}; depth, seed and n_ctx come from the grid and --n-ctx)")


def list_names() -> list[str]:
    from tunevlseg.data import BENCHMARKS

    return list(BENCHMARKS)


def expand_methods(methods: list[str] | tuple[str, ...]) -> list[str]:
    """Canonical learner names, without duplicates; ``all`` = every registered prompt learner
    (in the report's order: zeroshot, coop, cocoop, vpt-shallow, vpt-deep, maple, shared-*, full)."""
    from tunevlseg.learners import LEARNERS
    from tunevlseg.report import _order

    out: list[str] = []
    for m in methods:
        if str(m).strip().lower() == "all":
            out += sorted(LEARNERS.names(), key=_order)
            continue
        try:
            out.append(LEARNERS.resolve(str(m)))
        except ConfigError as exc:
            raise ConfigError(f"--methods: {exc}, or all") from None
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Cell:
    vlsm: str
    method: str
    depth: int
    dataset: str
    seed: int

    @property
    def name(self) -> str:
        from tunevlseg.data import dataset_label

        return f"{self.vlsm}_{self.method}_d{self.depth}_{dataset_label(self.dataset)}_s{self.seed}"


def _tower_layers(vlsm: str, kwargs: dict[str, Any]) -> tuple[int, int]:
    """(text layers, vision layers) of a VLSM (built once, on the CPU)."""
    from tunevlseg.models import create_vlsm

    try:
        model = create_vlsm(vlsm, **kwargs)
    except TypeError as exc:  # a keyword the VLSM does not take
        raise ConfigError(f"--vlsm-kwargs for {vlsm}: {exc}") from None
    except SegpromptError as exc:  # missing weights, ...: say where a VLSM's keywords go on the command line
        names_kwargs = re.search(r"(?<![-\w])[a-z_]+=", str(exc)) is not None  # "pass pretrained=<file>"
        hint = "" if not names_kwargs else f" (keyword arguments of a VLSM go in --vlsm-kwargs '{{\"{vlsm}\": {{...}}}}')"
        raise type(exc)(f"--vlsm {vlsm}: {exc}{hint}") from exc
    layers = (int(model.num_text_layers), int(model.num_vision_layers))
    _FROZEN[vlsm] = not model.trainable_parameters()
    del model
    return layers


#: vlsm name -> True when its frozen model has nothing trainable (CLIPSeg: zeroshot trains nothing)
_FROZEN: dict[str, bool] = {}


def plan_cells(cfg: SweepConfig, layers: Callable[[str], tuple[int, int]] | None = None) -> tuple[list[Cell], list[tuple[str, str]]]:
    """The deduplicated cells of the grid and the skipped (name, reason) pairs."""
    from tunevlseg.data import dataset_label
    from tunevlseg.learners import LEARNERS
    from tunevlseg.train import FIXED_DEPTH, NO_DEPTH_METHODS

    labels: dict[str, str] = {}
    for d in cfg.datasets:
        lab = dataset_label(d)
        if lab in labels and labels[lab] != d:
            raise ConfigError(f"--dataset {labels[lab]} and --dataset {d} share the name {lab!r} (cell and report names); rename one folder")
        labels[lab] = d
    cache: dict[str, tuple[int, int]] = {}

    def get_layers(v: str) -> tuple[int, int]:
        if v not in cache:
            cache[v] = layers(v) if layers is not None else _tower_layers(v, cfg.vlsm_kwargs.get(v, {}))
        return cache[v]

    cells: list[Cell] = []
    skipped: list[tuple[str, str]] = []
    seen: set[Cell] = set()
    for vlsm in cfg.vlsms:
        for method in cfg.methods:
            cls = LEARNERS.get(method)
            if method in NO_DEPTH_METHODS:
                depths = [0]
            elif method in FIXED_DEPTH:
                depths = [FIXED_DEPTH[method]]
            else:
                text_l, vision_l = get_layers(vlsm)
                limit = min([n for n, used in ((text_l, cls.uses_text), (vision_l, cls.uses_vision)) if used] or [1])
                depths = []
                for d in cfg.depths:
                    if d > limit:
                        skipped.append((f"{vlsm}_{method}_d{d}", f"depth {d} exceeds the {limit} layers of the prompted tower(s) of {vlsm}"))
                    elif method == "vpt-deep" and d == 1 and "vpt-shallow" in cfg.methods:
                        skipped.append((f"{vlsm}_{method}_d1", "vpt-deep at depth 1 is vpt-shallow (run once, as vpt-shallow)"))
                    else:
                        depths.append(d)
            for depth in depths:
                for dataset in cfg.datasets:
                    for seed in cfg.seeds:
                        cell = Cell(vlsm, method, depth, dataset, seed)
                        if cell not in seen:
                            seen.add(cell)
                            cells.append(cell)
    return cells, skipped


def cell_config(cfg: SweepConfig, cell: Cell) -> Any:
    """The TrainConfig of one cell: the shared training settings, the cell's grid values and its
    method's ``learner_kwargs`` (over any ``train["learner_kwargs"]``)."""
    from tunevlseg.train import TrainConfig

    train = dict(cfg.train)
    learner_kwargs = {**dict(train.pop("learner_kwargs", None) or {}), **cfg.learner_kwargs.get(cell.method, {})}
    return TrainConfig(
        vlsm=cell.vlsm, vlsm_kwargs=dict(cfg.vlsm_kwargs.get(cell.vlsm, {})), method=cell.method, depth=max(1, cell.depth),
        dataset=cell.dataset, dataset_root=cfg.dataset_roots.get(cell.dataset), seed=cell.seed, learner_kwargs=learner_kwargs, **train,
    )


def run_cell(payload: dict[str, Any]) -> dict[str, Any]:
    """Train and test one cell (resuming its folder); the function every launcher runs.

    ``payload``: ``config`` (TrainConfig fields), ``out`` (the cell folder), ``threads`` (torch
    threads), ``progress`` (batch bars), ``log_level`` (set in a process of its own: worker
    processes log warnings, submitit jobs their epochs into the job log). The summary row comes
    back with ``cell_seconds``, the wall time of this call.
    """
    import torch

    from tunevlseg.train import TrainConfig, train_and_evaluate

    threads = payload.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    level = payload.get("log_level")
    if level:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("tunevlseg").setLevel(level)
    t0 = time.perf_counter()
    result = train_and_evaluate(TrainConfig(**payload["config"]), payload["out"], resume=True, progress=bool(payload.get("progress")), check_counts=False)
    return {**result, "cell_seconds": round(time.perf_counter() - t0, 2)}


def _cell_summary(folder: Path) -> dict[str, Any] | None:
    path = folder / "results.jsonl"
    if not path.exists():
        return None
    rows = [r for r in JsonlLog(path) if r.get("kind") == "summary"]
    return rows[-1] if rows else None


def _submitit_executor(out: Path, launcher: str, slurm: dict[str, Any]) -> Any:
    """The sweep's submitit executor (:func:`segprompt.engine.launchers.submitit_executor`), jobs named tunevlseg."""
    return submitit_executor(out / "submitit" / "%j", launcher, slurm, name="tunevlseg")


def _check_before_work(cfg: SweepConfig, launcher: str, workers: int, optuna_trials: int) -> None:
    """Everything that can be wrong before the first cell: launcher, device, dataset folders."""
    from segprompt.devices import check_device
    from tunevlseg.data import check_dataset

    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if optuna_trials < 0:
        raise ConfigError(f"--optuna-trials must be >= 0, got {optuna_trials}")
    if optuna_trials and launcher != "local":
        raise ConfigError("--optuna-trials runs with --launcher local (trials are sequential)")
    check_device(cfg.train.get("device", "cpu"))
    for d in cfg.datasets:
        _, messages = check_dataset(d, cfg.dataset_roots.get(d))
        for m in messages:  # once per dataset here, not once per cell
            log.warning("%s", m)


def _cell_line(done: int, total: int, name: str, result: dict[str, Any]) -> str:
    seconds = result.get("cell_seconds")
    skipped = int(result.get("skipped_items") or 0)
    return (f"[{done}/{total}] {name}: test Dice {result['dice_mean']:.3f} \u00b1 {result['dice_std']:.3f} "
            f"({result['n_test']} {result.get('split', 'test')} image{'' if result['n_test'] == 1 else 's'}"
            + (f"; {skipped} unreadable item{'' if skipped == 1 else 's'} skipped" if skipped else "") + ")"
            + (f", {seconds:.1f} s" if seconds is not None else ""))


def run_sweep(
    cfg: SweepConfig,
    out: str | Path,
    launcher: str = "local",
    workers: int = 1,
    threads: int | None = None,
    slurm: dict[str, Any] | None = None,
    executor: Any = None,
    optuna_trials: int = 0,
    report: bool = True,
    layers: Callable[[str], tuple[int, int]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the grid into ``out`` (resuming); returns counts and the report paths.

    Args:
        launcher: ``local``, ``submitit`` (SLURM) or ``submitit-local``.
        workers: local processes (1 = sequential in this process).
        threads: torch threads per cell (default: all cores / workers for local workers).
        slurm: SLURM settings (the launch options' names, ``slurm_time``, ``slurm_mem``, ..., or submitit's own: ``slurm_partition``, ``timeout_min``, ``gpus_per_node``,
            ``cpus_per_task``, ``mem_gb``, ``slurm_array_parallelism``, ``cluster``, ``name``).
        executor: a ready submitit executor (tests), instead of building one.
        optuna_trials: trials of the optional Optuna search per (VLSM, method, dataset, seed).
        layers: ``vlsm -> (text layers, vision layers)`` (tests); default builds each VLSM once.
        progress: progress bars (cells; batches of the cells trained in this process).

    The device, the datasets' folders and the launcher settings are checked before any work;
    progress is logged at INFO (see the module doc).
    """
    from tqdm import tqdm

    from tunevlseg.train import adopt_legacy_config, legacy_train_config

    _check_before_work(cfg, launcher, workers, optuna_trials)
    out = Path(out)
    cells, skipped = plan_cells(cfg, layers)
    config = {"suite": "tunevlseg-sweep", **asdict(cfg)}
    adopt_legacy_config(out, config, GRID_KEYS, lambda old: isinstance(old.get("train"), dict) and "recipe" not in old["train"],
                        lambda old: {**old, "train": legacy_train_config(old["train"])})
    run = RunFolder(out, config, volatile=GRID_KEYS)
    have_errors = {(e.get("item"), e.get("error")) for e in run.errors}
    for name, reason in skipped:
        if (name, reason) not in have_errors:
            run.errors.append({"item": name, "error": reason, "type": "skip"})
    copied = {(e["cell"], e.get("split"), e.get("item")) for e in run.errors if "cell" in e}

    def copy_item_errors(cell: Cell) -> None:
        """The cell's unreadable items, into the sweep's errors.jsonl (once each)."""
        for e in JsonlLog(out / "cells" / cell.name / "errors.jsonl"):
            key = (cell.name, e.get("split"), e.get("item"))
            if key not in copied:
                copied.add(key)
                run.errors.append({**e, "cell": cell.name})

    done = {r["cell"] for r in run.results if r.get("kind") == "cell"}
    pending: list[Cell] = []
    synced = 0
    for cell in cells:
        if cell.name in done:
            continue
        summary = _cell_summary(out / "cells" / cell.name)
        if summary is not None:  # finished, but the sweep stopped before writing its row
            run.results.append({**summary, "kind": "cell", "cell": cell.name})
            copy_item_errors(cell)
            synced += 1
        else:
            pending.append(cell)
    n_done = len(cells) - len(pending)
    counted = len(pending) if not run.resumed and n_done == 0 else n_done  # the number the message puts the unit after
    run.announce(done=n_done, todo=len(pending), unit="cell" if counted == 1 else "cells")
    if skipped:
        log.info("%d grid point%s not run (depth beyond the prompted towers, or vpt-deep d1 = vpt-shallow); listed in %s",
                 len(skipped), "" if len(skipped) == 1 else "s", run.errors.path)
    if threads is None and launcher == "local" and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    in_process = launcher == "local" and workers == 1
    extra: dict[str, Any] = {"progress": progress} if in_process else {"log_level": "WARNING" if launcher == "local" else "INFO"}
    payloads = {c.name: {"config": asdict(cell_config(cfg, c)), "out": str(out / "cells" / c.name), "threads": threads, **extra} for c in pending}
    failed: list[str] = []
    finished = [len(cells) - len(pending)]
    bar = tqdm(total=len(pending), desc="cells", unit="cell", disable=not progress or not pending, leave=False)

    def record(cell: Cell, result: dict[str, Any] | None, error: BaseException | None) -> None:
        bar.update(1)
        if error is not None:
            failed.append(cell.name)
            run.record_error(cell.name, error, stage="cell")  # logs it
            return
        run.results.append({**(result or {}), "kind": "cell", "cell": cell.name})
        copy_item_errors(cell)
        finished[0] += 1
        log.info("%s", _cell_line(finished[0], len(cells), cell.name, result or {}))

    try:
        run_jobs(
            run_cell, [payloads[c.name] for c in pending], lambda i, result, error: record(pending[i], result, error),
            launcher=launcher, workers=workers,
            executor=executor if executor is not None or launcher == "local" or not pending else _submitit_executor(out, launcher, slurm or {}),
            log_level=None,  # run_cell sets its own (payload["log_level"])
        )
    finally:
        bar.close()
    optuna_rows = 0
    if optuna_trials:
        optuna_rows = run_optuna(cfg, run, optuna_trials, threads)
    ran = len(pending) - len(failed)
    run.finish(new_rows=ran + synced + optuna_rows)
    timing = run.timing_text()
    paths: dict[str, Any] = {}
    if report:
        from tunevlseg.report import load_cells, write_report

        if load_cells(out):
            paths = write_report(out, timing=timing)
        else:
            log.warning("%s: no finished cell, no report written", out)
    return {"cells": len(cells), "ran": ran, "synced": synced, "failed": failed, "skipped": skipped, "optuna": optuna_rows,
            "report": paths, "timing": timing, "errors": run.errors.path if run.errors.path.exists() else None}


# -- Optuna -----------------------------------------------------------------------------------


#: Optuna search spaces per recipe: (lr range, weight-decay range, highest depth, objective key of
#: the training summary, direction, TPE settings). ``tvs``: naamiinepal/tunevlseg
#: configs/hparams_search/{coop,cocoop,vpt,maple,shared_separate,shared_attn}_optuna.yaml
#: (``tag(log, interval(1e-5, 5e-3))``, ``tag(log, interval(1e-5, 0.01))``, ``range(1, 12)`` =
#: IntUniformDistribution(1, 12) in hydra_optuna_sweeper, ``optimized_metric: val_loss``,
#: ``direction: minimize``, TPESampler(multivariate=True, n_startup_trials=10)); the value src/train.py
#: returns is ``trainer.callback_metrics["val_loss"]`` after fit: the last epoch's.
OPTUNA_SPACES: dict[str, dict[str, Any]] = {
    "tvs": {"lr": (1e-5, 5e-3), "weight_decay": (1e-5, 1e-2), "max_depth": 12, "objective": "val_loss_last", "direction": "minimize",
            "sampler": {"multivariate": True, "n_startup_trials": 10}},
    "segprompt": {"lr": (1e-5, 1e-2), "weight_decay": (1e-6, 1e-1), "max_depth": None, "objective": "val_dice_best", "direction": "maximize",
                  "sampler": {}},
}


def run_optuna(cfg: SweepConfig, run: RunFolder, trials: int, threads: int | None = None) -> int:
    """TPE per (VLSM, method, dataset, seed) over lr, weight decay and depth (1..the layers of the
    prompted towers, and at most 12 under ``tvs``), in the space and with the objective of the
    sweep's recipe (:data:`OPTUNA_SPACES`); the best trial's checkpoint is then tested. Studies live
    in ``<out>/optuna.db`` (resumable)."""
    try:
        import optuna
    except ImportError as exc:
        raise ConfigError("--optuna-trials needs optuna: pip install optuna") from exc
    import warnings

    from tunevlseg.data import dataset_label
    from tunevlseg.learners import LEARNERS
    from tunevlseg.train import FIXED_DEPTH, NO_DEPTH_METHODS, TrainConfig, train_and_evaluate

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(run.path / 'optuna.db').resolve()}"
    have = {r["study"] for r in run.results if r.get("kind") == "optuna"}
    space = OPTUNA_SPACES[cfg.train.get("recipe", "tvs")]
    objective_key = space["objective"]
    written = 0
    for vlsm in cfg.vlsms:
        text_l, vision_l = _tower_layers(vlsm, cfg.vlsm_kwargs.get(vlsm, {}))
        for method in cfg.methods:
            if method == "zeroshot" and _FROZEN.get(vlsm):
                continue  # nothing to train, nothing to search
            for dataset in cfg.datasets:
                for seed in cfg.seeds:
                    study_name = f"{vlsm}_{method}_{dataset_label(dataset)}_s{seed}"
                    if study_name in have:
                        continue
                    cls = LEARNERS.get(method)
                    max_depth = 0
                    if method not in NO_DEPTH_METHODS and method not in FIXED_DEPTH:
                        max_depth = min([n for n, u in ((text_l, cls.uses_text), (vision_l, cls.uses_vision)) if u] or [1])
                        max_depth = min(max_depth, space["max_depth"] or max_depth)
                    base = cell_config(cfg, Cell(vlsm, method, 1, dataset, seed))
                    folder = run.path / "optuna" / study_name

                    def make(trial: Any) -> TrainConfig:
                        depth = trial.suggest_int("depth", 1, max_depth) if max_depth > 1 else base.depth
                        return replace(base, lr=trial.suggest_float("lr", *space["lr"], log=True),
                                       weight_decay=trial.suggest_float("weight_decay", *space["weight_decay"], log=True), depth=depth)

                    def objective(trial: Any) -> float:
                        tc = make(trial)
                        res = train_and_evaluate(tc, folder / f"trial_{trial.number:03d}", resume=True, test=False, check_counts=False)
                        trial.set_user_attr("folder", str(folder / f"trial_{trial.number:03d}"))
                        trial.set_user_attr("val_dice_best", res["val_dice_best"])
                        return float(res[objective_key])

                    with warnings.catch_warnings():  # multivariate TPE is flagged experimental
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        sampler = optuna.samplers.TPESampler(seed=seed, **space["sampler"])
                    study = optuna.create_study(study_name=study_name, storage=storage, direction=space["direction"], load_if_exists=True,
                                                sampler=sampler)
                    complete = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
                    if complete < trials:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                            study.optimize(objective, n_trials=trials - complete, catch=(SegpromptError,))
                    best = study.best_trial
                    tc = make(optuna.trial.FixedTrial(best.params))
                    summary = train_and_evaluate(tc, best.user_attrs["folder"], resume=True, test=True, check_counts=False)
                    run.results.append({**summary, "kind": "optuna", "study": study_name, "trials": len(study.trials),
                                        "best_params": best.params, "objective": objective_key, "direction": space["direction"],
                                        "best_value": best.value, "best_val_dice": summary["val_dice_best"]})
                    log.info("optuna %s: %d trials, best %s %.4f (val Dice %.3f), its test Dice %.3f", study_name, len(study.trials),
                             objective_key, best.value, summary["val_dice_best"], summary["dice_mean"])
                    written += 1
    return written
