"""``segprompt finetune``: SAM finetuning runs and the train-on-A / test-on-B strategy matrix.

Rerunning a command on the same ``--out`` folder resumes it (a finished run is not retrained);
the option names are those of ``segprompt bench pointprompt``.
"""

from __future__ import annotations

from pathlib import Path

import click

from segprompt.errors import ConfigError


@click.group("finetune", context_settings={"help_option_names": ["-h", "--help"]})
def finetune() -> None:
    """Finetune SAM (prompt encoder, mask decoder, LoRA or all) with automated or iterative prompts."""


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
        click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Share of the images held out for validation."),
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


def _base_kwargs(dataset, root, model, checkpoint, epochs, batch_size, lr, val_fraction, limit, seed, device, precision) -> dict:  # noqa: ANN001
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
        val_fraction=val_fraction,
        limit=limit,
        seed=seed,
        device=device,
        precision=precision,
    )


@finetune.command("sam")
@_common
@click.option("--train", default="mask_decoder", show_default=True, help="Comma-separated: prompt_encoder, mask_decoder, image_encoder, lora, all, or dotted submodule names.")
@click.option("--prompts", default="mixed", show_default=True, help="A strategy name (random, centre, ...), iterative, box-jitter or mixed.")
@click.option("--strategy", default="random", show_default=True, help="Point strategy used by --prompts mixed.")
@click.option("--positive", "n_positive", type=int, default=1, show_default=True)
@click.option("--negative", "n_negative", type=int, default=0, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "plateau", "constant"]), default="cosine", show_default=True)
@click.option("--loss", type=click.Choice(["dice+bce", "dice+focal"]), default="dice+bce", show_default=True)
@click.option("--early-stop", type=int, default=5, show_default=True, help="Epochs without a better validation Dice before stopping (0: never).")
@click.option("--lora-rank", type=int, default=4, show_default=True)
@click.option("--checkpoint-every", type=int, default=0, help="Also checkpoint every N steps (default: every epoch).")
@click.option("--resume", is_flag=True, hidden=True, help="Kept for old scripts: rerunning the same command resumes.")
def sam(train, prompts, strategy, n_positive, n_negative, schedule, loss, early_stop, lora_rank, checkpoint_every, resume, out, **common) -> None:  # noqa: ANN001
    """Finetune SAM on a dataset; writes checkpoints (SAM layout), results.jsonl, report.md.

    Rerun the same command to resume an interrupted run; a finished run is not retrained.
    """
    from pointprompt.finetune import FinetuneConfig, finetune_sam, plural

    cfg = FinetuneConfig(
        **_base_kwargs(**common),
        train=_split((train,)),
        prompts=prompts,
        strategy=strategy,
        n_positive=n_positive,
        n_negative=n_negative,
        schedule=schedule,
        loss=loss,
        early_stop=early_stop,
        lora_rank=lora_rank,
        checkpoint_every=checkpoint_every,
    )
    result = finetune_sam(cfg, out)
    if "final" not in result:
        click.echo(f"stopped at step {result['stopped_at_step']}; rerun the same command to resume")
        return
    b, f = result["baseline"], result["final"]
    click.echo(f"trainable parameters: {result['trainable_parameters']:,}; {result['train_images']} training / {result['val_images']} validation images")
    click.echo(
        f"validation IoU {b['val_iou']:.4f} -> {f['val_iou']:.4f}, Dice {b['val_dice']:.4f} -> {f['val_dice']:.4f} "
        f"after {plural(result['epochs_run'], 'epoch')} (best Dice {result['best_val_dice']:.4f})"
    )
    click.echo(f"checkpoint: {result['checkpoint']}  (load with create_segmenter('sam', checkpoint=...)); report: {out / 'report.md'}")


@finetune.command("matrix")
@_common
@click.option("--strategies", multiple=True, default=("random,centre,kmedoids",), show_default=True, help="Comma-separated strategy names, or repeat the option: one model trained per strategy, each tested on all.")
@click.option("--train", default="prompt_encoder", show_default=True, help="What each model trains (PointPrompt: prompt_encoder).")
@click.option("--positive", "n_positive", type=int, default=3, show_default=True)
@click.option("--negative", "n_negative", type=int, default=1, show_default=True)
def matrix(strategies, train, n_positive, n_negative, out, **common) -> None:  # noqa: ANN001
    """Train one model per prompt strategy and evaluate every model on every strategy.

    Rerun the same command to resume: finished trainings and evaluations are not redone.
    """
    from pointprompt.finetune_matrix import run_matrix

    names = _split(strategies)
    if len(names) < 2:
        raise ConfigError("--strategies: a matrix needs at least two strategies")
    result = run_matrix(names, out, base=_base_kwargs(**common), train=_split((train,)), n_positive=n_positive, n_negative=n_negative)
    click.echo(result["table_text"])
    click.echo(f"\nreport: {out / 'report.md'}, heatmap: {out / 'matrix.png'}")
