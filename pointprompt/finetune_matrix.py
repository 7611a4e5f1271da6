"""Train-on-A / test-on-B: one finetuned SAM per prompt strategy, each evaluated on every strategy.

The PointPrompt study trained SAM's prompt encoder once per automated strategy and compared the
models across strategies. :func:`run_matrix` does that: ``<out>/train_<strategy>/`` holds each
finetuning run (its checkpoint chosen on the validation split), and ``<out>`` the matrix
(``matrix.csv``, ``report.md``, ``matrix.png``), evaluated on the shared TEST split (source images
held out of every training and validation, :func:`pointprompt.finetune.split_by_image`; the
validation split only when ``test_fraction`` is 0), with the un-finetuned model as the ``none``
row. Rerunning resumes: finished trainings are not retrained and finished cells are not
re-evaluated.

Sharded runs (:mod:`segprompt.engine.shards`, the recipe of ``pointprompt.bench``): a work unit is
one ROW of the matrix, a training strategy (``none`` and each strategy), keyed by
:func:`unit_key`; its shard trains that model (``train_<strategy>/``, a resumable finetuning run
whose checkpoints are written atomically) and then evaluates the row's cells (one results row per
tested strategy). ``shard=Shard(k, n)`` computes only shard k's rows into
``results.shard-k-of-n.jsonl``; ``launch=LaunchConfig("submitit", workers=n, ...)`` (or
``local`` / ``submitit-local``) runs the shards that still have rows as processes or SLURM array
jobs and then writes the matrix from the rows of every shard, in the canonical order of
:func:`canonical_cells`, so ``matrix.csv`` and the report's table equal an unsharded run's.
A row killed halfway is redone alone on a rerun: its training resumes from its last checkpoint
(a finished training is not retrained) and only its missing cells are evaluated.

``train_processes=P`` (``--slurm-gpus P`` on the command line): each row's training runs as
``torchrun --standalone --nproc_per_node P`` (DistributedDataParallel, one process per GPU; gloo on
CPU) in the row's shard, which then evaluates the row in its own process; see
:func:`train_row`. The anchor for the shard layer is ``pointprompt/bench.py`` (``_run_launched``,
``_shard_job``), for DDP ``pointprompt/finetune.py`` (``init_distributed`` in ``finetune_sam``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segprompt.devices import check_device
from segprompt.engine.launchers import LaunchConfig, launch_pending_shards
from segprompt.engine.report import MISSING, markdown_table, save_figure, short_name, text_table, write_csv
from segprompt.engine.runfolder import RunFolder
from segprompt.engine.shards import Shard, UnitProgress, canonical, pick
from segprompt.errors import ConfigError, SegpromptError

from pointprompt.finetune import FinetuneConfig, _load_model, describe_model, evaluate, finetune_sam, format_lr, load_split, plural

log = logging.getLogger(__name__)

SUITE = "finetune-matrix"
#: the row of the model before finetuning
NONE = "none"
#: FinetuneConfig fields each row's configuration sets itself (not shared by the rows)
OWN_FIELDS = ("train", "prompts", "n_positive", "n_negative", "eval_strategy", "eval_positive", "eval_negative")


def heatmap_figure(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], n_test: int, dataset: str = "") -> Any:
    """The matrix as a figure: rows = trained with, columns = tested with, cells = mean IoU
    (a cell not computed yet, NaN, is blank with a dash)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.6, 0.8 * len(rows) + 1.9))
    im = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("tested with")
    ax.set_ylabel("trained with")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = values[i, j]
            text = MISSING if np.isnan(v) else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    where = f"{short_name(dataset, 24)}, " if dataset else ""
    ax.set_title(f"Train on A, test on B\n{where}n={n_test} test images", fontsize=10)
    fig.colorbar(im, ax=ax, label="mean IoU")
    fig.tight_layout()
    return fig


def _heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: Path, n_test: int, dataset: str = "") -> Path:
    return save_figure(heatmap_figure(values, rows, cols, n_test, dataset), path)


@dataclass
class MatrixPlan:
    """What determines a matrix run: the strategies (columns; rows are ``none`` + each), the
    FinetuneConfig fields every row shares (``base``) and each row's training parts and budget."""

    strategies: list[str]
    base: dict[str, Any]
    train: list[str] = field(default_factory=lambda: ["prompt_encoder"])
    n_positive: int = 3
    n_negative: int = 1

    def __post_init__(self) -> None:
        self.strategies = list(self.strategies)
        self.train = list(self.train)
        if len(set(self.strategies)) != len(self.strategies) or NONE in self.strategies:
            raise ConfigError(f"--strategies: each strategy once, and not {NONE!r} (the un-finetuned row); got {', '.join(self.strategies)}")

    @property
    def rows(self) -> list[str]:
        """The matrix rows (units), in order: ``none``, then each strategy."""
        return [NONE, *self.strategies]

    @property
    def shared(self) -> dict[str, Any]:
        return {k: v for k, v in self.base.items() if k not in OWN_FIELDS}

    def configs(self) -> dict[str, FinetuneConfig]:
        """Each strategy's FinetuneConfig: trained on its prompts and tested with its prompts."""
        return {
            s: FinetuneConfig(**self.shared, train=list(self.train), prompts=s, n_positive=self.n_positive, n_negative=self.n_negative,
                              eval_strategy=s, eval_positive=None, eval_negative=None)
            for s in self.strategies
        }

    def record(self, launch: LaunchConfig | None = None) -> dict[str, Any]:
        """The run folder's config.yaml (``launch`` is volatile: another launch resumes the folder)."""
        rec = {"suite": SUITE, **self.shared, "strategies": list(self.strategies), "train": list(self.train),
               "n_positive": self.n_positive, "n_negative": self.n_negative}
        return {**rec, "launch": launch.record()} if launch is not None else rec

    @classmethod
    def from_record(cls, config: dict[str, Any]) -> "MatrixPlan":
        """The plan of a run folder's config.yaml (``runs status`` / ``runs merge``)."""
        base = {k: v for k, v in config.items() if k not in ("suite", "launch", "strategies", "train", "n_positive", "n_negative")}
        return cls(list(config["strategies"]), base, list(config.get("train") or ["prompt_encoder"]), int(config["n_positive"]), int(config["n_negative"]))


def unit_key(train_name: str) -> str:
    """The stable key of a unit, one matrix row (``none`` or a training strategy): ``["random"]``
    as JSON text (what :func:`segprompt.engine.shards.shard_of` hashes)."""
    return json.dumps([str(train_name)])


def canonical_cells(rows: Sequence[dict[str, Any]], plan: MatrixPlan) -> list[dict[str, Any]]:
    """The results rows (of every shard file, in any order) without duplicates, one per
    (trained with, tested with) cell, rows in matrix order (``none`` first), columns in strategy order."""
    rorder = {r: i for i, r in enumerate(plan.rows)}
    corder = {s: i for i, s in enumerate(plan.strategies)}
    cells = [r for r in rows if "train" in r and "test" in r]
    return canonical(cells, identity=lambda r: (str(r["train"]), str(r["test"])),
                     order=lambda r: (rorder.get(r["train"], len(rorder)), str(r["train"]), corder.get(r["test"], len(corder)), str(r["test"])))


def matrix_progress(plan: MatrixPlan, run: RunFolder) -> UnitProgress:
    """Every row of the matrix (its unit key) and those whose cells are all present in some shard's file."""
    have = {(r.get("train"), r.get("test")) for r in run.results}
    prog = UnitProgress([unit_key(a) for a in plan.rows])
    prog.done = {unit_key(a) for a in plan.rows if all((a, b) in have for b in plan.strategies)}
    return prog


def _train_command(processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(int(processes)), "-m", "pointprompt.finetune_matrix"]


def train_row(cfg: FinetuneConfig, folder: Path, processes: int = 1, progress: bool = False) -> dict[str, Any]:
    """Train (or resume, or find finished) one row's model in ``folder``; returns finetune_sam's result.

    ``processes > 1``: ``torchrun --standalone --nproc_per_node P -m pointprompt.finetune_matrix
    FOLDER/matrix_cell.json`` (one DistributedDataParallel process per GPU; ``cfg.batch_size`` is
    per process, as under ``finetune sam`` with torchrun); this process waits and reads
    ``summary.json``. A finished training is not relaunched."""
    folder = Path(folder)
    if processes <= 1 or (folder / "summary.json").exists() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return finetune_sam(cfg, folder, progress=progress)
    from segprompt.fileio import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    spec = atomic_write_text(folder / "matrix_cell.json", json.dumps({"config": asdict(cfg), "out": str(folder.resolve())}))
    done = subprocess.run([*_train_command(processes), str(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise SegpromptError(f"{folder}: torchrun with {processes} processes failed (exit {done.returncode}):\n{tail}")
    summary = folder / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else {"stopped_at_step": None, "out": str(folder)}


def _run_rows(plan: MatrixPlan, run: RunFolder, rows: Sequence[str], out: Path, progress: bool, processes: int) -> int:
    """Train each of ``rows`` (``none``: nothing to train) and evaluate its missing cells on the
    test split (the validation split when there is none); one results row per cell. Returns the new rows."""
    from segprompt.models import create_segmenter

    configs = plan.configs()
    first = configs[plan.strategies[0]]
    device = str(plan.base.get("device", "cpu"))
    split: tuple[list[Any], str] | None = None
    new = 0
    for name in rows:
        if name != NONE:
            result = train_row(configs[name], out / f"train_{name}", processes, progress)
            if "final" not in result:
                log.warning("%s: the training of row %r stopped before its end; rerun to resume it (its cells are not evaluated)", out, name)
                continue
        have = {(r.get("train"), r.get("test")) for r in run.results}
        missing = [t for t in plan.strategies if (name, t) not in have]
        if not missing:
            continue
        if split is None:
            samples, _, val_idx, test_idx = load_split(first, run=run, progress=progress)
            split = ([samples[i] for i in (test_idx or val_idx)], "test" if test_idx else "validation")
        held, which = split
        model = _load_model(first) if name == NONE else create_segmenter("sam", checkpoint=str(out / f"train_{name}" / "sam_best.pth"), device=device)
        for test in missing:
            m = evaluate(model, held, configs[test], run, progress=progress)
            run.results.append({"train": name, "test": test, "iou": m["iou"], "dice": m["dice"], "n": m["n"], "split": which})
            new += 1
    return new


def run_matrix(
    strategies: Sequence[str],
    out: str | Path,
    base: dict[str, Any],
    train: Sequence[str] = ("prompt_encoder",),
    n_positive: int = 3,
    n_negative: int = 1,
    progress: bool = True,
    launch: LaunchConfig | None = None,
    shard: Shard | str | None = None,
    report: bool = True,
    train_processes: int = 1,
) -> dict[str, Any]:
    """Finetune one model per strategy (resuming finished or interrupted runs) and test each on all.

    ``base``: FinetuneConfig fields shared by every model (a preset's, see
    :func:`pointprompt.finetune.preset_fields`); each model trains on its strategy's prompts and
    is tested with every strategy at the same budget (``budget="auto"``: the study's).
    Returns ``{"matrix", "table_text", "values"}`` (a missing cell: None / NaN).

    ``launch``: spread the rows over ``launch.workers`` shards (local processes or a SLURM array),
    then write the matrix from every shard's rows; the result also holds ``failed_shards``.
    ``shard`` (``"2/3"``): compute only that shard's rows in this process; the matrix is written
    when no row of any shard is left (``report=False``: never), else ``{"shard", "new_rows",
    "todo"}`` is returned. ``train_processes``: DDP processes per training (:func:`train_row`).
    """
    from segprompt.data.registry import load_dataset

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("run `finetune matrix` as one process, not under torchrun: train_processes (--slurm-gpus N) runs each row's training with torchrun itself")
    plan = MatrixPlan(list(strategies), dict(base), list(train), int(n_positive), int(n_negative))
    launch = launch or LaunchConfig()
    shard = Shard.parse(shard) if shard is not None else None
    if shard is not None and launch.parallel:
        raise ConfigError("shard= runs one shard in this process; it does not go with a parallel launch")
    check_device(base.get("device", "cpu"))
    plan.configs()  # every row's configuration is checked before any folder is made
    load_dataset(base["dataset"], **base.get("dataset_kwargs", {}))  # a wrong --dataset or --root fails before the folder is made
    out = Path(out)
    if launch.parallel:
        return _run_launched(plan, out, launch, progress, report, train_processes)
    run = RunFolder(out, plan.record(launch), volatile=("device",), shard=shard)
    state = matrix_progress(plan, run)
    mine = set(pick(state.units, shard=shard))
    todo = [a for a in plan.rows if unit_key(a) in mine and unit_key(a) in set(state.todo)]
    run.announce(done=len(mine) - len(todo), todo=len(todo), unit="matrix rows (one model each)")
    new = _run_rows(plan, run, todo, out, progress, train_processes) if todo else 0
    run.finish(new)
    if shard is not None:
        left = matrix_progress(plan, run).todo
        if left or not report:
            if left:
                log.info("shard %s done (%d new cells); %d matrix rows left in other shards: rerun them, "
                         "or `segprompt runs merge %s` for a report of what is there", shard.label, new, len(left), run.path)
            return {"shard": shard.label, "new_rows": new, "todo": len(left)}
    if report:
        return write_matrix(run, plan)
    result = _matrix_values(run, plan)
    result.pop("rows")
    return result


def _shard_job(plan: MatrixPlan, out: str, progress: bool, train_processes: int, shard: Shard) -> dict[str, Any]:
    """One shard of a launched run, in a process (or SLURM job) of its own; the launcher writes the matrix."""
    return run_matrix(plan.strategies, out, plan.base, plan.train, plan.n_positive, plan.n_negative, progress=progress, shard=shard,
                      report=False, train_processes=train_processes)


def _run_launched(plan: MatrixPlan, out: Path, launch: LaunchConfig, progress: bool, report: bool, train_processes: int) -> dict[str, Any]:
    """Launch the shards that still have rows (each resumes its rows), wait, then write the matrix from every shard's rows."""
    run = RunFolder(out, plan.record(launch), volatile=("device",))  # the config is checked (and written) before any job starts
    state = matrix_progress(plan, run)
    job = functools.partial(_shard_job, plan, str(run.path.resolve()), False, train_processes)
    failed = launch_pending_shards(run, state.units, state.todo, job, launch, SUITE, "matrix rows (one model each)")
    result = write_matrix(run, plan) if report else {k: v for k, v in _matrix_values(run, plan).items() if k != "rows"}
    result["failed_shards"] = failed
    return result


def _matrix_values(run: RunFolder, plan: MatrixPlan) -> dict[str, Any]:
    """The matrix from every shard's rows (missing cells: None in the pivot, NaN in ``values``)."""
    rows = canonical_cells(run.results.rows(), plan)
    table = {(r["train"], r["test"]): r["iou"] for r in rows}
    values = np.array([[float(table.get((a, b), np.nan)) for b in plan.strategies] for a in plan.rows])
    pivot = [{"trained with": a, **{b: table.get((a, b)) for b in plan.strategies}} for a in plan.rows]
    cols = ["trained with", *plan.strategies]
    return {"matrix": pivot, "table_text": text_table(pivot, cols), "values": values.tolist(), "rows": rows}


def write_matrix(run: RunFolder, plan: MatrixPlan) -> dict[str, Any]:
    """matrix.csv, matrix.png and report.md from the rows of every shard present; returns the matrix."""
    result = _matrix_values(run, plan)
    rows = result.pop("rows")
    n_test = max((int(r["n"]) for r in rows), default=0)
    write_csv(run.path / "matrix.csv", rows, ["train", "test", "iou", "dice", "n"])
    cols = ["trained with", *plan.strategies]
    _heatmap(np.array(result["values"], dtype=float), plan.rows, plan.strategies, run.path / "matrix.png", n_test, str(plan.base["dataset"]))
    split = rows[0].get("split", "validation") if rows else ("test" if plan.configs()[plan.strategies[0]].test_fraction else "validation")
    _write_report(run, result["matrix"], cols, plan.configs(), plan.train, n_test, split=split, missing=sum(v is None for r in result["matrix"] for v in r.values()))
    return result


def suite_progress(config: dict[str, Any], run: RunFolder) -> UnitProgress:
    """``segprompt runs status``: every matrix row of the run folder's config and whether its cells are all there."""
    return matrix_progress(MatrixPlan.from_record(config), run)


def merge_run_folder(run_dir: str | Path) -> dict[str, Any]:
    """``segprompt runs merge``: matrix.csv, matrix.png and report.md from the rows of every shard
    present (missing cells shown as a dash); returns the matrix."""
    run = RunFolder.load(run_dir)
    return write_matrix(run, MatrixPlan.from_record(run.config))


def _write_report(run: RunFolder, pivot: list[dict[str, Any]], cols: list[str], configs: dict[str, FinetuneConfig], train: Sequence[str], n_test: int,
                  split: str = "test", missing: int = 0) -> None:
    cfg = next(iter(configs.values()))
    held = (
        f"{plural(n_test, 'held-out test image')} (split by source image, never used for training or for choosing a checkpoint)"
        if split == "test" else f"{plural(n_test, 'validation image')} (no test split: the images that chose each checkpoint)"
    )
    recipe = f" with preset `{cfg.preset}`" if cfg.preset else ""
    n_err = len({(str(e.get("item")), str(e.get("error"))) for e in run.errors})  # two shards may record one bad image each
    report = [
        "# Train-on-A / test-on-B prompt-strategy matrix",
        "",
        f"Model {describe_model(cfg)}.",
        "",
        f"Each row is that model finetuned ({', '.join(train)}){recipe} with one strategy's prompts ({cfg.n_positive} + {cfg.n_negative} points) "
        f"for up to {plural(cfg.epochs, 'epoch')} at lr {format_lr(cfg.lr)} (runs in `train_<strategy>/`, checkpoint chosen on validation); "
        f"each column tests it with one strategy on the same {held} of `{cfg.dataset}`. Mean IoU; `none` is the model before finetuning.",
        "",
        markdown_table(pivot, cols),
        "",
        "![matrix](matrix.png)",
        "",
        *([f"{plural(missing, 'cell')} not computed yet ({MISSING}): rerun the same command, or its missing shards (`segprompt runs status {run.path}`).", ""]
          if missing else []),
        f"Skipped inputs: {n_err} (see errors*.jsonl)." if n_err else "Skipped inputs: none.",
        "",
        run.timing_text(),
        "",
    ]
    run.write_text("report.md", "\n".join(report))


def _train_cell_main(argv: Sequence[str]) -> int:
    """``python -m pointprompt.finetune_matrix SPEC.json`` (each torchrun process of :func:`train_row`)."""
    if len(argv) != 1:
        print("usage: python -m pointprompt.finetune_matrix FOLDER/matrix_cell.json  (run by torchrun; see train_row)", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    finetune_sam(FinetuneConfig(**spec["config"]), spec["out"], progress=False)
    return 0


if __name__ == "__main__":  # pragma: no cover - run in torchrun's processes
    raise SystemExit(_train_cell_main(sys.argv[1:]))
