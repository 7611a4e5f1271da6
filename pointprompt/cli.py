"""``segprompt bench pointprompt``: the point-prompt benchmark from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click

from segprompt.commands.inference_options import CLASSICAL_MODELS, inference_options, model_wrappers
from segprompt.engine.launchers import echo_bench_end, launch_from_options, launch_options
from segprompt.errors import ConfigError
from segprompt.models.base import BENCH_MULTIMASK_POLICIES, multimask_help
from segprompt.volumes.fallback import PROJECTIONS


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@click.group("pointprompt", invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", "datasets", multiple=True, default=("synthetic-lesions",), show_default=True, help="Registry name (see `segprompt data list`) or a dataset folder; repeat for several.")
@click.option("--root", "roots", multiple=True, help="Folder of a registry-named --dataset: FOLDER (one dataset) or NAME=FOLDER; repeat for several (default: $SEGPROMPT_DATA_ROOT/<folder>).")
@click.option("--model", "models", multiple=True, default=("sam-tiny",), show_default=True, help="Segmenter name; repeat for several (sam-tiny, sam, universal-tiny, universal, classical, grabcut, random-walker).")
@click.option("--checkpoint", "checkpoints", multiple=True, help="Checkpoint of the models that take one (`sam`: a file or registry name; `universal`: a universal .safetensors): PATH for them all (of one kind), or MODEL=PATH; repeatable.")
@click.option("--strategies", multiple=True, default=("centre,random,microsam",), show_default=True, help="Comma-separated strategy names, or 'all' for every registered one.")
@click.option("--positive", "n_positive", type=int, default=3, show_default=True)
@click.option("--negative", "n_negative", type=int, default=1, show_default=True)
@click.option("--budget", default=None, help="'auto': the PointPrompt study's per-dataset budget (kvasir 14/2, busi 4/1, ...); or a study set name (polyp, breast, one, ...).")
@click.option("--steps", type=int, default=None, help="Steps per trajectory (default: positive + negative).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--multimask", type=click.Choice(BENCH_MULTIMASK_POLICIES), default="auto", show_default=True, help=multimask_help(BENCH_MULTIMASK_POLICIES))
@click.option("--mask-feedback/--no-mask-feedback", default=False, help="Feed the previous low-res logits back with each correction click (for `universal`: its memory prompt).")
@click.option("--limit", type=int, default=None, help="Use only the first N images.")
@click.option("--human", type=click.Path(path_type=Path), default=None, help="Recorded human prompts to replay: a trajectory file (.jsonl/.json) or a PointPrompt human-data folder.")
@click.option("--cache", type=click.Path(path_type=Path), default=None, help="Embedding cache folder.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="YAML of PointBenchConfig fields (see configs/pointprompt/); options given on the command line override it.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (rerun the same command to resume). Required.")
@launch_options
@inference_options
@click.pass_context
def pointprompt(ctx, config_file, datasets, roots, models, checkpoints, strategies, n_positive, n_negative, budget, steps, seed, multimask, mask_feedback, wrappers, limit, human, cache, device, out,
                **launch) -> None:
    """Benchmark point-prompt strategies on datasets; resumable, deterministic for a seed.

    `segprompt bench pointprompt features RUN_DIR` then fits the prompt-feature regressions;
    `segprompt bench pointprompt volumes --out DIR` runs the 3-D benchmark (prompt a slice, propagate).

    Scale-out: `--workers 4` runs 4 shards in processes of this machine, `--launcher submitit --workers 50
    --slurm-partition gpu --slurm-gpus 1` a SLURM array of 50 jobs, `--shard 2/4` one shard by hand; the
    shards write into the same run folder (`segprompt runs status/merge RUN_DIR`). Share --cache between them.
    """
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise click.UsageError("Missing option '--out' (the run folder).")
    from pointprompt.bench import PointBenchConfig, format_summary, run_pointprompt
    from pointprompt.strategies import STRATEGIES
    from segprompt.data.registry import parse_root_options
    from segprompt.devices import check_device

    check_device(device)
    model_kwargs: dict[str, dict] = {}
    given_checkpoints = checkpoint_kwargs(checkpoints, models)
    for m in models:
        learned = m not in CLASSICAL_MODELS
        kw = {"device": device} if learned else {}
        if m in given_checkpoints:
            kw["checkpoint"] = given_checkpoints[m]
        model_kwargs[m] = kw
    datasets = _split(datasets)
    given = dict(
        datasets=datasets,
        dataset_kwargs={name: {"root": folder} for name, folder in parse_root_options(roots, datasets).items()},
        models=list(models),
        model_kwargs=model_kwargs,
        strategies=STRATEGIES.expand(_split(strategies)),
        n_positive=n_positive,
        n_negative=n_negative,
        budget=budget,
        steps=steps,
        seed=seed,
        multimask=multimask,
        mask_feedback=mask_feedback,
        limit=limit,
        human=str(human) if human else None,
    )
    file_launch: dict = {}
    if config_file is not None:
        given, file_launch = _merge_config(ctx, config_file, given)
    # the inference switches go to every learned model of the run, the config file's included
    kwargs_of = dict(given.get("model_kwargs") or {})
    given["model_kwargs"] = {**kwargs_of, **{m: {**kwargs_of.get(m, {}), **model_wrappers(m, wrappers)} for m in given["models"]}}
    cfg = PointBenchConfig(**given)
    launch_cfg, shard = launch_from_options(launch, file_launch)
    summary = run_pointprompt(cfg, out, cache=cache, launch=launch_cfg, shard=shard)
    echo_bench_end(summary, out, "(model, image) pairs", format_summary, "summary.csv, curves.csv, matched_budget.csv, report.md, iou_per_step.png")


def takes_checkpoint(model: str) -> bool:
    """Whether the segmenter registered as ``model`` (``sam@vitb``: ``sam``) takes ``checkpoint=``
    (``sam``, ``universal``; the bundled ``sam-tiny`` / ``universal-tiny`` and the classical ones do not)."""
    import inspect

    from segprompt.models.registry import SEGMENTERS, _resolve

    return "checkpoint" in inspect.signature(_resolve(SEGMENTERS.get(model.split("@")[0]))).parameters


def checkpoint_kwargs(values: Sequence[str], models: Sequence[str]) -> dict[str, str]:
    """``--checkpoint`` values -> ``{model: checkpoint}``.

    ``MODEL=PATH`` gives that model (one of ``models``) its checkpoint; a plain ``PATH`` goes to
    every other model that takes one (:func:`takes_checkpoint`), which must all be of one kind
    (``sam`` and ``sam@2`` may share a file, ``sam`` and ``universal`` cannot). A checkpoint that
    no model would take is an error, not ignored.
    """
    out: dict[str, str] = {}
    plain: list[str] = []
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in models:
            if not takes_checkpoint(name):
                raise ConfigError(f"--checkpoint {value}: model {name!r} takes no checkpoint (it has bundled weights or none)")
            out[name] = path
        else:
            plain.append(value)
    if len(plain) > 1:
        raise ConfigError(f"--checkpoint given {len(plain)} plain paths; name the model of each: --checkpoint MODEL=PATH")
    if plain:
        takers = [m for m in models if m not in out and takes_checkpoint(m)]
        if not takers:
            raise ConfigError(f"--checkpoint {plain[0]}: none of the models ({', '.join(models)}) takes a checkpoint (sam and universal do)")
        if len({m.split("@")[0] for m in takers}) > 1:
            raise ConfigError(f"--checkpoint {plain[0]} would go to models of different kinds ({', '.join(takers)}); name the model of each: --checkpoint MODEL=PATH")
        out.update({m: plain[0] for m in takers})
    return out


# command-line option name -> the PointBenchConfig fields it sets
_OPTION_FIELDS = {
    "datasets": ("datasets",), "roots": ("dataset_kwargs",), "models": ("models", "model_kwargs"), "checkpoints": ("model_kwargs",),
    "device": ("model_kwargs",), "strategies": ("strategies",), "n_positive": ("n_positive",), "n_negative": ("n_negative",),
    "budget": ("budget",), "steps": ("steps",), "seed": ("seed",), "multimask": ("multimask",), "mask_feedback": ("mask_feedback",),
    "limit": ("limit",), "human": ("human",),
}


def _merge_config(ctx: click.Context, path: Path, given: dict) -> tuple[dict, dict]:
    """Fields from a YAML file, overridden by the options that were given on the command line;
    and the file's launch keys (launcher, workers, slurm_*), which the launch options override."""
    import dataclasses

    from pointprompt.bench import PointBenchConfig
    from segprompt.engine.config_files import apply_command_line, read_config_file
    from segprompt.engine.launchers import LAUNCH_FILE_KEYS, split_launch_keys

    data = read_config_file(path, [*(f.name for f in dataclasses.fields(PointBenchConfig)), *LAUNCH_FILE_KEYS], drop=("suite", "launch"))
    file_launch, data = split_launch_keys(data)
    return apply_command_line(ctx, data, given, _OPTION_FIELDS), file_launch


@pointprompt.command("volumes")
@click.option("--dataset", "datasets", multiple=True, default=("synthetic-volumes",), show_default=True, help="'synthetic-volumes' or a folder with images/ and labels/ (TIFF, NIfTI or .npy stacks matched by name); repeat for several.")
@click.option("--n-volumes", type=int, default=10, show_default=True, help="synthetic-volumes: number of volumes.")
@click.option("--depth", type=int, default=12, show_default=True, help="synthetic-volumes: slices per volume.")
@click.option("--size", default="64", show_default=True, help="synthetic-volumes: slice side in pixels, or LOW-HIGH spread over the volumes.")
@click.option("--objects", "n_objects", type=int, default=2, show_default=True, help="synthetic-volumes: objects per volume.")
@click.option("--model", "models", multiple=True, default=("sam-tiny",), show_default=True, help="Segmenter name; repeat for several (sam2 propagates natively, the others slice by slice).")
@click.option("--checkpoint", "checkpoints", multiple=True, help="As for the 2-D benchmark: PATH, or MODEL=PATH; repeatable.")
@click.option("--strategies", "prompts", multiple=True, default=("centre",), show_default=True, help="Comma-separated placement strategies, each optionally NAME+box (adds the object's box); 'box' alone is the box only.")
@click.option("--positive", "n_positive", type=int, default=1, show_default=True)
@click.option("--negative", "n_negative", type=int, default=0, show_default=True)
@click.option("--prompt-slice", "slice_choice", type=click.Choice(["middle", "largest"]), default="middle", show_default=True, help="Prompted slice of each object: the middle of its z-extent, or where its area is largest.")
@click.option("--direction", type=click.Choice(["both", "forward", "backward"]), default="both", show_default=True)
@click.option("--method", type=click.Choice(["auto", "native", "fallback"]), default="auto", show_default=True, help="auto: a model's own propagation where it has one, else the slice-by-slice fallback.")
@click.option("--projection", type=click.Choice(PROJECTIONS), default="box+point", show_default=True, help="Fallback: what a slice's mask passes to the next slice (its box, its centre point, the mask).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first N volumes of each set.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (rerun the same command to resume).")
@launch_options
def volumes(datasets, n_volumes, depth, size, n_objects, models, checkpoints, prompts, n_positive, n_negative, slice_choice, direction, method, projection, seed, limit, device, out,
            **launch) -> None:
    """Prompt one slice of each object of each volume, propagate, report 3-D Dice and slice IoU along z.

    Scale-out as `bench pointprompt`: `--workers 4` (shards on this machine), `--launcher submitit`
    (a SLURM array), `--shard K/N` (one shard by hand); a unit is a (volume, model, prompt)."""
    from pointprompt.bench_volume import VolumeBenchConfig, run_volume_bench
    from pointprompt.report_volume import format_volume_summary
    from segprompt.devices import check_device

    check_device(device)
    given_checkpoints = checkpoint_kwargs(checkpoints, models)
    model_kwargs = {m: ({"device": device} if m not in ("classical", "grabcut", "random-walker") else {}) | ({"checkpoint": given_checkpoints[m]} if m in given_checkpoints else {}) for m in models}
    lo, _, hi = size.partition("-")
    try:
        sizes = [int(lo), int(hi or lo)]
    except ValueError:
        raise ConfigError(f"--size {size!r}: give a number of pixels or LOW-HIGH") from None
    synthetic = {"n": n_volumes, "seed": seed, "depth": depth, "size": sizes, "n_objects": n_objects}
    datasets = _split(datasets)
    cfg = VolumeBenchConfig(
        datasets=datasets,
        dataset_kwargs={d: synthetic for d in datasets if d == "synthetic-volumes"},
        models=list(models),
        model_kwargs=model_kwargs,
        prompts=_split(prompts),
        n_positive=n_positive,
        n_negative=n_negative,
        slice_choice=slice_choice,
        direction=direction,
        method=method,
        fallback={"projection": projection} if projection else {},
        seed=seed,
        limit=limit,
    )
    launch_cfg, shard = launch_from_options(launch)
    summary = run_volume_bench(cfg, out, launch=launch_cfg, shard=shard)
    echo_bench_end(summary, out, "(volume, model, prompt) units", format_volume_summary, "summary.csv, curves.csv, report.md, iou_by_dz.png, labels/")


@pointprompt.command("features")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--target", default="iou", show_default=True, help="Column to predict (iou or dice).")
@click.option("--folds", "n_splits", type=int, default=5, show_default=True, help="Grouped cross-validation folds.")
@click.option("--splits", "old_splits", type=int, hidden=True, default=None, help="Old name of --folds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--group-by", "group_by", type=click.Choice(["image", "annotator", "image+annotator", "dataset", "none"]), default="image", show_default=True,
    help="What the cross-validation folds keep apart: images (a source image's structure masks count as one image), annotators "
    "(per dataset), both, whole datasets, or nothing (plain K-fold; optimistic).",
)
def features(run_dir: Path, target: str, n_splits: int, old_splits: int | None, seed: int, group_by: str) -> None:
    """Prompt features of a finished run and regressions predicting IoU (grouped by image by default).

    Prints warnings first when the numbers are not to be trusted (too few images for the folds,
    too few rows per feature, a model no better than predicting the mean, folds not grouped by
    image), then the models.
    """
    import json

    from pointprompt.regression import features_for_run, format_summary

    n_splits = old_splits if old_splits is not None else n_splits
    out = features_for_run(run_dir, target=target, n_splits=n_splits, seed=seed, group_by=group_by, progress=True)
    click.echo(format_summary(json.loads((out / "regression.json").read_text()), out))
