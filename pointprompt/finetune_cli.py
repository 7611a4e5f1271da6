"""``segprompt finetune``: SAM and SAM 2 finetuning runs and the train-on-A / test-on-B strategy matrix.

Rerunning a command on the same ``--out`` folder resumes it (a finished run is not retrained);
the option names are those of ``segprompt bench pointprompt``. ``--preset NAME`` starts from a
reference recipe (``pointprompt-study``, ``microsam``, ``medsam``; see
``pointprompt.finetune.PRESETS``); options given on the command line override its values, and
the run's config.yaml records the resolved values.
"""

from __future__ import annotations

from pathlib import Path

import click

from segprompt.engine.launchers import launch_from_options, launch_options, raise_for_failed_shards, shard_only_message
from segprompt.errors import ConfigError


@click.group("finetune", context_settings={"help_option_names": ["-h", "--help"]})
def finetune() -> None:
    """Finetune SAM or SAM 2 (prompt encoder, mask decoder, LoRA or all) with automated or iterative prompts."""


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _common(f):  # noqa: ANN001, ANN202 - click decorator stack
    options = [
        click.option("--dataset", default="synthetic-lesions", show_default=True, help="Registry name (see `segprompt data list`) or a dataset folder."),
        click.option("--root", type=str, default=None, help="Folder of a registry-named dataset (default: $SEGPROMPT_DATA_ROOT/<folder>)."),
        click.option("--model", default=None, help="Segmenter name, e.g. sam-tiny (default when no --checkpoint)."),
        click.option("--checkpoint", default=None, help="SAM checkpoint file or registry name (official or finetuned)."),
        click.option("--epochs", type=int, default=10, show_default=True),
        click.option("--batch-size", type=int, default=4, show_default=True),
        click.option("--lr", type=float, default=1e-4, show_default=True),
        click.option("--test-fraction", type=float, default=0.2, show_default=True, help="Share of the source images held out for test (the reported numbers); 0: no test split (the old behaviour)."),
        click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Share of the remaining source images held out for validation (chooses the checkpoint)."),
        click.option("--preset", default=None, help="A reference recipe: pointprompt-study, microsam or medsam; options given here override its values."),
        click.option("--limit", type=int, default=None, help="Use only the first N images."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True),
        click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (rerun the same command to resume)."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _dataset_kwargs(dataset: str, root: Path | None) -> dict:
    """``root=`` for a registry-named dataset; --root with a folder or a generated set is an error."""
    if root is None:
        return {}
    if Path(dataset).expanduser().is_dir():
        raise ConfigError(f"--dataset {dataset} is a folder; --root is only for a registry-named dataset: drop --root")
    from segprompt.data.registry import DATASETS

    if dataset in DATASETS and not DATASETS.get(dataset).needs_root:
        raise ConfigError(f"--dataset {dataset} is generated; it takes no --root")
    return {"root": str(root)}


def _base_kwargs(dataset, root, model, checkpoint, epochs, batch_size, lr, test_fraction, val_fraction, limit, seed, device, precision) -> dict:  # noqa: ANN001
    """FinetuneConfig fields from the common options; checks --device before any work."""
    from segprompt.devices import check_device

    check_device(device)
    if model is not None and checkpoint is not None:
        raise ConfigError("give one of --model and --checkpoint, not both")
    if model is None and checkpoint is None:
        model = "sam-tiny"
    return dict(
        dataset=dataset,
        dataset_kwargs=_dataset_kwargs(dataset, root),
        model=model,
        checkpoint=checkpoint,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        limit=limit,
        seed=seed,
        device=device,
        precision=precision,
    )


# command-line parameter -> the FinetuneConfig field it sets (when the names differ)
_PARAM_FIELDS = {"root": "dataset_kwargs"}


def _explicit(ctx: click.Context) -> set[str]:
    """The FinetuneConfig fields whose options were given on the command line."""
    source = click.core.ParameterSource.COMMANDLINE
    return {_PARAM_FIELDS.get(name, name) for name in ctx.params if ctx.get_parameter_source(name) == source}


def _train_options(f):  # noqa: ANN001, ANN202 - click decorator stack
    """The training options of ``finetune sam`` and ``finetune sam2``."""
    options = [
        click.option("--train", default="mask_decoder", show_default=True, help="Comma-separated: prompt_encoder, mask_decoder, image_encoder, lora, all, or dotted submodule names."),
        click.option("--prompts", default="mixed", show_default=True, help="A strategy name (random, centre, ...), iterative, box-jitter or mixed."),
        click.option("--strategy", default="random", show_default=True, help="Point strategy used by --prompts mixed."),
        click.option("--positive", "n_positive", type=int, default=1, show_default=True),
        click.option("--negative", "n_negative", type=int, default=0, show_default=True),
        click.option("--box-jitter", type=float, default=20.0, show_default=True, help="Largest box-side shift; unit of --box-jitter-mode (medsam: pixels at 1024)."),
        click.option("--box-jitter-mode", type=click.Choice(["medsam", "microsam", "symmetric"]), default="medsam", show_default=True,
                     help="medsam: each side moved outward by randint(0, J) px of the 1024 input frame; microsam: outward by uniform(0, J) x the box side; symmetric: the old uniform(-J, J) px of the original image."),
        click.option("--iterations", type=int, default=8, show_default=True, help="Forward passes per sample of --prompts iterative, the first included (micro-sam's n_sub_iteration)."),
        click.option("--weight-decay", type=float, default=0.01, show_default=True),
        click.option("--iou-weight", type=float, default=1.0, show_default=True, help="Weight of the IoU head's MSE loss (0: none)."),
        click.option("--schedule", type=click.Choice(["cosine", "plateau", "constant"]), default="cosine", show_default=True),
        click.option("--loss", type=click.Choice(["dice+bce", "dice+focal", "dice"]), default="dice+bce", show_default=True),
        click.option("--early-stop", type=int, default=5, show_default=True, help="Epochs without a better validation score before stopping (0: never)."),
        click.option("--lora-rank", type=int, default=4, show_default=True),
        click.option("--checkpoint-every", type=int, default=0, help="Also checkpoint every N steps (default: every epoch)."),
        click.option("--resume", is_flag=True, hidden=True, help="Kept for old scripts: rerunning the same command resumes."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _train_and_print(ctx, family, train, prompts, strategy, n_positive, n_negative, box_jitter, box_jitter_mode, iterations, weight_decay, iou_weight, schedule, loss, early_stop, lora_rank, checkpoint_every, resume, out, preset, **common) -> None:  # noqa: ANN001
    """Build the configuration from the options, run ``finetune_sam`` (``family``: ``sam`` or ``sam2``), print the outcome."""
    from pointprompt.finetune import FinetuneConfig, finetune_sam, plural, preset_fields

    given = dict(
        **_base_kwargs(**common),
        train=_split((train,)),
        prompts=prompts,
        strategy=strategy,
        n_positive=n_positive,
        n_negative=n_negative,
        box_jitter=box_jitter,
        box_jitter_mode=box_jitter_mode,
        iterations=iterations,
        weight_decay=weight_decay,
        iou_weight=iou_weight,
        schedule=schedule,
        loss=loss,
        early_stop=early_stop,
        lora_rank=lora_rank,
        checkpoint_every=checkpoint_every,
    )
    cfg = FinetuneConfig(**preset_fields(preset, given, _explicit(ctx)))
    if family == "sam2":
        from pointprompt.finetune_sam2 import finetune_sam2

        result = finetune_sam2(cfg, out)
    else:
        result = finetune_sam(cfg, out)
    if "final" not in result:
        click.echo(f"stopped at step {result['stopped_at_step']}; rerun the same command to resume")
        return
    b, f = result["baseline"], result["final"]
    n_test = result.get("test_images", 0)
    click.echo(f"trainable parameters: {result['trainable_parameters']:,}; {result['train_images']} training / {result['val_images']} validation / {n_test} test images")
    click.echo(
        f"validation IoU {b['val_iou']:.4f} -> {f['val_iou']:.4f}, Dice {b['val_dice']:.4f} -> {f['val_dice']:.4f} "
        f"after {plural(result['epochs_run'], 'epoch')} (checkpoint: epoch {result['best_epoch']}, chosen on {result['selected_on']})"
    )
    test = result.get("test")
    if test:
        tb, ta = test["before"], test["best"]
        click.echo(f"test IoU {tb['iou']:.4f} -> {ta['iou']:.4f}, Dice {tb['dice']:.4f} -> {ta['dice']:.4f} ({plural(ta['n'], 'held-out image')})")
    click.echo(f"checkpoint: {result['checkpoint']}  (load with create_segmenter('{family}', checkpoint=...)); report: {out / 'report.md'}")


@finetune.command("sam")
@_common
@_train_options
@click.pass_context
def sam(ctx, **options) -> None:  # noqa: ANN001
    """Finetune SAM on a dataset; writes checkpoints (SAM layout), results.jsonl, report.md.

    The checkpoint is chosen on the validation split; the numbers printed are those of the
    test split. Rerun the same command to resume an interrupted run; a finished run is not retrained.
    """
    _train_and_print(ctx, "sam", **options)


@finetune.command("sam2")
@_common
@_train_options
@click.pass_context
def sam2(ctx, **options) -> None:  # noqa: ANN001
    """Finetune SAM 2 / 2.1 (--checkpoint: a file or registry name such as sam2.1_hiera_tiny, medsam2).

    The same loop, prompts, losses and presets as `finetune sam`; --train prompt_encoder,
    mask_decoder, lora (LoRA on the Hiera blocks' attention + the mask decoder), image_encoder,
    all. Writes sam2_best.pt / sam2_last.pt in the sam2 package's layout (LoRA merged), which
    `create_segmenter('sam2', checkpoint=...)` and the package's build_sam2 load. Rerun the same
    command to resume.
    """
    _train_and_print(ctx, "sam2", **options)


@finetune.command("matrix")
@_common
@click.option("--strategies", multiple=True, default=("random,centre,kmedoids",), show_default=True, help="Comma-separated strategy names, or repeat the option: one model trained per strategy, each tested on all.")
@click.option("--train", default="prompt_encoder", show_default=True, help="What each model trains (PointPrompt: prompt_encoder).")
@click.option("--positive", "n_positive", type=int, default=3, show_default=True)
@click.option("--negative", "n_negative", type=int, default=1, show_default=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="YAML of the matrix's fields (FinetuneConfig fields, strategies, train, n_positive, n_negative) and launch keys "
                   "(launcher, workers, slurm_*); options given on the command line override it. A matrix run's config.yaml works as is.")
@launch_options
@click.pass_context
def matrix(ctx, strategies, train, n_positive, n_negative, out, preset, config_file, **options) -> None:  # noqa: ANN001
    """Train one model per prompt strategy and evaluate every model on every strategy (on the test split).

    Rerun the same command to resume: finished trainings and evaluations are not redone.

    Scale-out: each row of the matrix (none, and each strategy: its training, then its evaluation) is
    a unit. `--workers 3` runs the rows in 3 processes of this machine, `--launcher submitit --workers 4
    --slurm-partition gpu --slurm-gpus 1` as a SLURM array, `--shard 2/4` one shard by hand; all write
    into the --out folder (`segprompt runs status/merge OUT`). `--slurm-gpus N` (N > 1) trains each row
    with torchrun on N GPUs (DDP; --batch-size is per GPU).
    """
    from segprompt.engine.launchers import LAUNCH_FILE_KEYS

    launch = {k: options.pop(k) for k in [*LAUNCH_FILE_KEYS, "threads", "shard"]}
    values, file_launch = _matrix_values(ctx, config_file, strategies, train, n_positive, n_negative, preset, options)
    names = values.pop("strategies")
    if len(names) < 2:
        raise ConfigError("--strategies: a matrix needs at least two strategies")
    from pointprompt.finetune import FinetuneConfig
    from pointprompt.finetune_matrix import run_matrix

    FinetuneConfig(**values)  # every field checked before any training
    own = {k: values.pop(k) for k in ("train", "n_positive", "n_negative")}
    launch_cfg, shard = launch_from_options(launch, file_launch)
    processes = int(launch_cfg.slurm.get("slurm_gpus") or 1)
    result = run_matrix(names, out, base=values, **own, launch=launch_cfg, shard=shard, train_processes=processes)
    message = shard_only_message(result, out, "matrix rows", new="new cells")
    if message:  # one shard of several, others still to finish
        click.echo(message)
        return
    click.echo(result["table_text"])
    click.echo(f"\nreport: {out / 'report.md'}, heatmap: {out / 'matrix.png'}")
    raise_for_failed_shards(result, "cells")


# `finetune matrix` option -> the fields it sets (for --config: an option given wins over the file)
_MATRIX_OPTION_FIELDS = {
    "dataset": ("dataset",), "root": ("dataset_kwargs",), "model": ("model", "checkpoint"), "checkpoint": ("model", "checkpoint"),
    "epochs": ("epochs",), "batch_size": ("batch_size",), "lr": ("lr",), "test_fraction": ("test_fraction",), "val_fraction": ("val_fraction",),
    "limit": ("limit",), "seed": ("seed",), "device": ("device",), "precision": ("precision",), "strategies": ("strategies",),
    "train": ("train",), "n_positive": ("n_positive",), "n_negative": ("n_negative",),
}


def _matrix_values(ctx, config_file, strategies, train, n_positive, n_negative, preset, common) -> tuple[dict, dict]:  # noqa: ANN001
    """The matrix's fields (FinetuneConfig fields + ``strategies``) from the options, laid over
    ``--config`` (when given) and the preset; and the file's launch keys."""
    import dataclasses

    from pointprompt.finetune import FinetuneConfig, preset_fields
    from segprompt.engine.config_files import apply_command_line, read_config_file
    from segprompt.engine.launchers import LAUNCH_FILE_KEYS, split_launch_keys

    given = dict(**_base_kwargs(**common), train=_split((train,)), n_positive=n_positive, n_negative=n_negative,
                 strategies=_split(strategies))
    explicit = _explicit(ctx)
    if config_file is None:
        return preset_fields(preset, given, explicit), {}
    own = ("prompts", "eval_strategy", "eval_positive", "eval_negative")
    known = [*(f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in own), "strategies", *LAUNCH_FILE_KEYS]
    data = read_config_file(config_file, known, drop=("suite", "launch"))
    file_launch, data = split_launch_keys(data)
    if isinstance(data.get("strategies"), str):
        data["strategies"] = _split((data["strategies"],))
    if isinstance(data.get("train"), str):
        data["train"] = _split((data["train"],))
    merged = apply_command_line(ctx, data, given, _MATRIX_OPTION_FIELDS)
    if "model" not in explicit and "checkpoint" not in explicit and data.get("checkpoint") is not None and "model" not in data:
        merged["model"] = None  # the file names a checkpoint: the default model does not apply
    source = click.core.ParameterSource.COMMANDLINE
    name = preset if ctx.get_parameter_source("preset") == source else data.get("preset", preset)
    return preset_fields(name, merged, explicit | set(data)), file_launch
