"""``segprompt bench tunevlseg``: the prompt-tuning grid and its report from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from segprompt.errors import ConfigError


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _ints(values: tuple[str, ...], what: str) -> list[int]:
    try:
        return [int(v) for v in _split(values)]
    except ValueError:
        raise ConfigError(f"--{what}: expected comma-separated integers, got {','.join(values)!r}") from None


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


@click.group("tunevlseg", invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--vlsm", "vlsms", multiple=True, default=("clipseg-tiny",), show_default=True, help="VLSM name(s), comma-separated: clipseg, openclip, clipseg-tiny, openclip-tiny.")
@click.option("--vlsm-kwargs", default=None, help='JSON object: VLSM name -> create_vlsm kwargs, e.g. \'{"clipseg": {"weights": "clipseg-rd64-refined"}}\'.')
@click.option("--methods", multiple=True, default=("zeroshot,coop,cocoop,vpt-shallow,vpt-deep,maple,shared-separate,shared-attention,full",), show_default=True, help="Prompt learners, comma-separated.")
@click.option("--depths", multiple=True, default=("1,3,6,9,12",), show_default=True, help="Prompt depths (1 = input only); methods without depth run once.")
@click.option("--datasets", multiple=True, help="TuneVLSeg dataset names (kvasir, busi, ..., pascal-voc, cityscapes) or folders, comma-separated. Required.")
@click.option("--root", "roots", multiple=True, help="NAME=FOLDER for a named dataset (default: $SEGPROMPT_DATA_ROOT/<folder>); repeat.")
@click.option("--seeds", multiple=True, default=("0",), show_default=True)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--weight-decay", type=float, default=1e-2, show_default=True)
@click.option("--n-ctx", type=int, default=4, show_default=True, help="Context tokens per depth.")
@click.option("--prompt", default="p0", show_default=True, help="p<k> (fixed prompt of the split files) or random.")
@click.option("--early-stop", type=int, default=10, show_default=True, help="Epochs without a better validation Dice before stopping (0 = never).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--max-train-samples", type=int, default=None, help="Use only the first N training samples (smoke tests).")
@click.option("--max-eval-samples", type=int, default=None, help="Use only the first N validation / test samples (smoke tests).")
@click.option("--train-kwargs", default=None, help="JSON object of further TrainConfig fields (lambda_ce, plateau_patience, ...).")
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
def tunevlseg(ctx, vlsms, vlsm_kwargs, methods, depths, datasets, roots, seeds, epochs, batch_size, lr, weight_decay, n_ctx, prompt, early_stop,
              precision, device, max_train_samples, max_eval_samples, train_kwargs, launcher, workers, threads, slurm_partition, timeout_min,
              gpus_per_node, cpus_per_task, mem_gb, slurm_array_parallelism, optuna_trials, out) -> None:
    """Prompt tuning of VLSMs over methods x depths x datasets x seeds (TuneVLSeg), one run folder.

    `segprompt bench tunevlseg report RUN_DIR` rewrites the tables and plots of a run.
    """
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise click.UsageError("Missing option '--out' (the run folder).")
    if not _split(datasets):
        raise click.UsageError("Missing option '--datasets' (names or folders).")
    from tunevlseg.sweep import SweepConfig, run_sweep

    dataset_roots = {}
    for item in roots:
        if "=" not in item:
            raise ConfigError(f"--root {item!r}: expected NAME=FOLDER")
        name, folder = item.split("=", 1)
        dataset_roots[name.strip()] = folder.strip()
    train = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, n_ctx=n_ctx, early_stop=early_stop, precision=precision,
                 device=device, max_train_samples=max_train_samples, max_eval_samples=max_eval_samples,
                 prompt=f"p{prompt}" if prompt.isdigit() else prompt)
    train.update(_json(train_kwargs, "train-kwargs"))
    cfg = SweepConfig(vlsms=_split(vlsms), methods=_split(methods), depths=_ints(depths, "depths"), datasets=_split(datasets), seeds=_ints(seeds, "seeds"),
                      vlsm_kwargs=_json(vlsm_kwargs, "vlsm-kwargs"), dataset_roots=dataset_roots, train=train)
    slurm = dict(slurm_partition=slurm_partition, timeout_min=timeout_min, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task, mem_gb=mem_gb,
                 slurm_array_parallelism=slurm_array_parallelism)
    result = run_sweep(cfg, out, launcher=launcher, workers=workers, threads=threads, slurm=slurm, optuna_trials=optuna_trials)
    click.echo(f"{result['cells']} cells: {result['ran']} run now, {result['cells'] - result['ran'] - len(result['failed'])} already finished, "
               f"{len(result['skipped'])} skipped (see errors.jsonl), {len(result['failed'])} failed")
    if result["report"]:
        click.echo((Path(out) / "table.md").read_text())
        click.echo(f"run folder: {out}  (report.md, table.md, table.tex, summary.csv, params.csv, dice_vs_depth_*.png)")
    if result["failed"]:
        raise ConfigError(f"{len(result['failed'])} cell(s) failed: {', '.join(result['failed'][:5])}; see {Path(out) / 'errors.jsonl'} and rerun to retry")


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
    """List the TuneVLSeg datasets and their split counts; --check a folder against one."""
    from tunevlseg.data import BENCHMARKS, check_split_counts, split_counts

    if folder is not None:
        if name is None:
            raise click.UsageError("--check needs --name (the dataset it should match)")
        found = split_counts(folder)
        click.echo(f"{folder}: " + (", ".join(f"{k} {v}" for k, v in found.items()) or "no split files"))
        problems = check_split_counts(name, folder, warn=False)
        click.echo("\n".join(problems) if problems else f"matches TuneVLSeg's {name} split counts")
        return
    for spec in BENCHMARKS.values():
        counts = "/".join("-" if v is None else str(v) for v in spec.counts.values())
        click.echo(f"{spec.name:13s} {spec.domain:8s} {'/'.join(spec.counts):15s} {counts:15s} {spec.title}" + ("" if spec.has_test else "  (no test split)"))
