"""``segprompt bench tunevlseg``: the prompt-tuning grid and its report from the command line.

Option names follow the rest of the CLI: ``--dataset`` and ``--seed`` repeat (comma-separated
lists are accepted too), ``--limit N`` uses only the first N items of each split, ``--device``
is checked before any work. Old spellings still work without being shown in ``--help``:
``--datasets`` (deprecated), ``--seeds``, ``--model`` (= ``--vlsm``), ``--method``, ``--depth``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from segprompt.errors import ConfigError, DataError, SegpromptError

log = logging.getLogger(__name__)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _ints(values: tuple[str, ...] | list[str], what: str) -> list[int]:
    try:
        return [int(v) for v in _split(tuple(values))]
    except ValueError:
        raise ConfigError(f"--{what}: expected integers (repeat the option or separate with commas), got {','.join(values)!r}") from None


def _json(text: str | None, what: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--{what}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--{what}: expected a JSON object")
    return value


def _roots(items: tuple[str, ...]) -> dict[str, str]:
    roots: dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ConfigError(f"--root {item}: expected NAME=FOLDER (a TuneVLSeg dataset name and its folder), e.g. --root kvasir=/data/kvasir_polyp")
        if name.strip() in roots:
            raise ConfigError(f"--root {name.strip()} is given twice")
        roots[name.strip()] = folder.strip()
    return roots


def sweep_config_from_options(
    vlsms: tuple[str, ...] = (),
    methods: tuple[str, ...] = (),
    depths: tuple[str, ...] = (),
    datasets: tuple[str, ...] = (),
    seeds: tuple[str, ...] = (),
    vlsm_kwargs: str | None = None,
    roots: tuple[str, ...] = (),
    train: dict | None = None,
):  # noqa: ANN201 - SweepConfig (imported lazily)
    """The :class:`~tunevlseg.sweep.SweepConfig` the command line builds (defaults filled in)."""
    from tunevlseg.sweep import SweepConfig

    return SweepConfig(
        vlsms=_split(vlsms) or ["clipseg-tiny"],
        methods=_split(methods) or ["all"],
        depths=_ints(depths, "depths") or [1, 3, 6, 9, 12],
        datasets=_split(datasets),
        seeds=_ints(seeds, "seed") or [0],
        vlsm_kwargs=_json(vlsm_kwargs, "vlsm-kwargs"),
        dataset_roots=_roots(roots),
        train=dict(train or {}),
    )


@click.group("tunevlseg", invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--vlsm", "vlsms", multiple=True, help="VLSM name; repeat or comma-separate for several: clipseg, openclip, clipseg-tiny, openclip-tiny "
              "(the -tiny ones are random-weight demo models for tests). [default: clipseg-tiny]")
@click.option("--model", "models_alias", multiple=True, hidden=True, help="Alias of --vlsm.")
@click.option("--vlsm-kwargs", default=None, help='JSON object: VLSM name -> create_vlsm kwargs, e.g. \'{"clipseg": {"weights": "clipseg-rd64-refined"}}\'.')
@click.option("--methods", multiple=True, help="Prompt learners, comma-separated or repeated, or 'all': zeroshot, coop, cocoop, vpt-shallow, "
              "vpt-deep, maple, shared-separate, shared-attention, full. [default: all]")
@click.option("--method", "methods_alias", multiple=True, hidden=True, help="Alias of --methods.")
@click.option("--depths", multiple=True, help="Prompt depths (1 = input only), comma-separated or repeated; methods without depth run once. [default: 1,3,6,9,12]")
@click.option("--depth", "depths_alias", multiple=True, hidden=True, help="Alias of --depths.")
@click.option("--dataset", "datasets", multiple=True, help="TuneVLSeg dataset name (kvasir, busi, ..., pascal-voc, cityscapes) or a folder; "
              "repeat (or comma-separate) for several. Required.")
@click.option("--datasets", "datasets_alias", multiple=True, hidden=True, help="Deprecated spelling of --dataset.")
@click.option("--root", "roots", multiple=True, help="NAME=FOLDER: the folder of a named --dataset (default: $SEGPROMPT_DATA_ROOT/<folder>); repeat.")
@click.option("--seed", "seeds", multiple=True, help="Seed; repeat (or comma-separate) for several. [default: 0]")
@click.option("--seeds", "seeds_alias", multiple=True, hidden=True, help="Alias of --seed.")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--weight-decay", type=float, default=1e-2, show_default=True)
@click.option("--n-ctx", type=int, default=4, show_default=True, help="Context tokens per depth.")
@click.option("--prompt", default="p0", show_default=True, help="p<k> (fixed prompt of the split files) or random.")
@click.option("--early-stop", type=int, default=10, show_default=True, help="Epochs without a better validation Dice before stopping (0 = never).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps (checked before any work).")
@click.option("--limit", type=int, default=None, help="Use only the first N items of each split (train, val, test), as --limit elsewhere in "
              "segprompt: sets --max-train-samples and --max-eval-samples, which override it. An item is an image (an image x class for label-map sets).")
@click.option("--max-train-samples", type=int, default=None, help="Use only the first N training items.")
@click.option("--max-eval-samples", type=int, default=None, help="Use only the first N validation / test items.")
@click.option("--train-kwargs", default=None, help="JSON object of further TrainConfig fields (lambda_ce, plateau_patience, schedule, ...).")
@click.option("--launcher", type=click.Choice(["local", "submitit", "submitit-local"]), default="local", show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Local processes.")
@click.option("--threads", type=int, default=None, help="Torch threads per cell.")
@click.option("--slurm-partition", default=None)
@click.option("--slurm-time", "timeout_min", type=int, default=240, show_default=True, help="Minutes per job.")
@click.option("--slurm-gpus", "gpus_per_node", type=int, default=None)
@click.option("--slurm-cpus", "cpus_per_task", type=int, default=None)
@click.option("--slurm-mem-gb", "mem_gb", type=int, default=None)
@click.option("--slurm-parallel", "slurm_array_parallelism", type=int, default=None, help="At most N jobs of the array at once.")
@click.option("--optuna-trials", type=int, default=0, show_default=True, help="Optional Optuna search per (VLSM, method, dataset, seed) over lr, weight decay and depth.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (rerun the same command to resume). Required.")
@click.pass_context
def tunevlseg(ctx, vlsms, models_alias, vlsm_kwargs, methods, methods_alias, depths, depths_alias, datasets, datasets_alias, roots, seeds, seeds_alias,
              epochs, batch_size, lr, weight_decay, n_ctx, prompt, early_stop, precision, device, limit, max_train_samples, max_eval_samples, train_kwargs,
              launcher, workers, threads, slurm_partition, timeout_min, gpus_per_node, cpus_per_task, mem_gb, slurm_array_parallelism, optuna_trials, out) -> None:
    """Prompt tuning of VLSMs over methods x depths x datasets x seeds (TuneVLSeg), one run folder.

    Rerunning the same command on the same folder resumes (finished cells are kept).
    `segprompt bench tunevlseg report RUN_DIR` rewrites the tables and plots of a run;
    `segprompt bench tunevlseg datasets` lists the datasets and checks a folder's split counts.
    """
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise click.UsageError("Missing option '--out' (the run folder).")
    if datasets_alias:
        log.warning("--datasets is deprecated; use --dataset (repeat it, or separate names with commas)")
    if not _split(datasets + datasets_alias):
        raise click.UsageError("Missing option '--dataset' (a TuneVLSeg dataset name or a folder; repeat for several).")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    from segprompt.devices import check_device

    check_device(device)  # before any model, folder or data is touched
    from tunevlseg.sweep import run_sweep

    train = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, n_ctx=n_ctx, early_stop=early_stop, precision=precision,
                 device=device, max_train_samples=max_train_samples if max_train_samples is not None else limit,
                 max_eval_samples=max_eval_samples if max_eval_samples is not None else limit,
                 prompt=f"p{prompt}" if prompt.isdigit() else prompt)
    train.update(_json(train_kwargs, "train-kwargs"))
    cfg = sweep_config_from_options(vlsms + models_alias, methods + methods_alias, depths + depths_alias, datasets + datasets_alias,
                                    seeds + seeds_alias, vlsm_kwargs, roots, train)
    slurm = dict(slurm_partition=slurm_partition, timeout_min=timeout_min, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task, mem_gb=mem_gb,
                 slurm_array_parallelism=slurm_array_parallelism)
    result = run_sweep(cfg, out, launcher=launcher, workers=workers, threads=threads, slurm=slurm, optuna_trials=optuna_trials)
    already = result["cells"] - result["ran"] - len(result["failed"])
    line = f"{result['cells']} cell{'' if result['cells'] == 1 else 's'}: {result['ran']} run now, {already} already finished, {len(result['failed'])} failed"
    if result["skipped"]:
        line += f"; {len(result['skipped'])} grid point{'' if len(result['skipped']) == 1 else 's'} not run"
    if result["errors"] is not None:
        line += f" (see {result['errors']})"
    click.echo(line)
    if result["report"]:
        click.echo((Path(out) / "table.md").read_text())
        click.echo(f"run folder: {out}  ({', '.join(p.name for p in result['report'].values())})")
    if result["failed"]:
        raise SegpromptError(f"{len(result['failed'])} cell(s) failed: {', '.join(result['failed'][:5])}; see {result['errors']} and rerun to retry")


@tunevlseg.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
def report(run_dir: Path) -> None:
    """Write the method x dataset table (Markdown, LaTeX), Dice-vs-depth plots and parameter counts."""
    from tunevlseg.report import write_report

    paths = write_report(run_dir)
    click.echo(paths["table_md"].read_text())
    click.echo("written: " + ", ".join(p.name for p in paths.values()))


@tunevlseg.command("datasets")
@click.option("--check", "folder", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None, help="A folder to compare with --name's split counts.")
@click.option("--name", default=None, help="The TuneVLSeg dataset the folder should match.")
def datasets(folder: Path | None, name: str | None) -> None:
    """List the TuneVLSeg datasets and their split counts; --check a folder against one.

    With --check, each difference is printed once and the command exits with status 2 when the
    folder does not match (0 when it does).
    """
    from tunevlseg.data import BENCHMARKS, benchmark_info, check_split_counts, split_counts

    if folder is not None:
        if name is None:
            raise click.UsageError("--check needs --name (the dataset it should match)")
        try:
            spec = benchmark_info(name)
        except ConfigError as exc:
            raise ConfigError(f"--name: {exc}") from None
        found = split_counts(folder)
        click.echo(f"{folder}: " + (", ".join(f"{k} {v}" for k, v in found.items()) or "no split files"))
        problems = check_split_counts(spec.name, folder, warn=False)
        if not problems:
            click.echo(f"matches TuneVLSeg's {spec.name} split counts")
            return
        for problem in problems:
            click.echo(problem)
        raise DataError(f"{folder} does not match TuneVLSeg's {spec.name} split counts "
                        f"({len(problems)} difference{'' if len(problems) == 1 else 's'}, listed above)")
    if name is not None:
        raise click.UsageError("--name goes with --check FOLDER")
    for spec in BENCHMARKS.values():
        counts = "/".join("-" if v is None else str(v) for v in spec.counts.values())
        click.echo(f"{spec.name:13s} {spec.domain:8s} {'/'.join(spec.counts):15s} {counts:15s} {spec.title}" + ("" if spec.has_test else "  (no test split)"))
