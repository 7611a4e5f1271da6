"""``segprompt train universal``: train or finetune the SEEM-style universal decoder.

Options on the command line win over the ``--config`` YAML (fields of
:class:`~segprompt.universal.train.UniversalTrainConfig`; a run folder's ``config.yaml`` works as
is). Rerunning the same command on the same ``--out`` resumes it exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.group("train", context_settings={"help_option_names": ["-h", "--help"]})
def train() -> None:
    """Train models on the engine's loop (resumable run folders)."""


#: option name -> the config fields it sets (for apply_command_line)
_OPTION_FIELDS = {
    "init": ["init"], "dataset": ["dataset"], "root": ["dataset_kwargs"], "split": ["dataset_kwargs"],
    "val_dataset": ["val_dataset"], "val_split": ["val_kwargs"], "val_fraction": ["val_fraction"], "limit": ["dataset_kwargs", "limit"], "epochs": ["epochs"], "batch_size": ["batch_size"], "lr": ["lr"],
    "backbone_lr": ["backbone_lr"], "rows_per_image": ["rows_per_image"], "second_round": ["second_round"], "seed": ["seed"],
    "device": ["device"], "precision": ["precision"], "max_steps": ["max_steps"], "checkpoint_every": ["checkpoint_every"], "export": ["export"],
}


@train.command("universal")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="YAML of UniversalTrainConfig fields (model: {...} sets the architecture).")
@click.option("--init", default=None, help="Start from a universal checkpoint (.safetensors or a run's best.pt), or 'universal-tiny': finetuning.")
@click.option("--dataset", default="synthetic-objects", show_default=True, help="Registry name or dataset folder (binary sets with text, label maps with class names; COCO through the library's CocoDataset).")
@click.option("--root", default=None, help="Folder of a registry-named dataset (default: $SEGPROMPT_DATA_ROOT/<folder>).")
@click.option("--split", default=None, help="Training split (train, val, test) where the dataset has splits.")
@click.option("--limit", type=int, default=None, help="Use only the first N images (synthetic sets: generate N scenes).")
@click.option("--val-dataset", default=None, help="Validation dataset [default: --dataset].")
@click.option("--val-split", default=None, help="Validation split of a dataset with splits [default: synthetic: another seed; else --val-fraction of the training images].")
@click.option("--val-fraction", type=float, default=0.2, show_default=True, help="Share of the images held out for validation when there is no --val-split / --val-dataset (real datasets).")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=3e-4, show_default=True, help="AdamW learning rate of the decoder (cosine schedule).")
@click.option("--backbone-lr", type=float, default=3e-5, show_default=True, help="Learning rate of a trainable backbone trunk (LoRA or full).")
@click.option("--rows-per-image", type=int, default=4, show_default=True, help="Simulated prompt sets per image and step.")
@click.option("--second-round", type=float, default=0.3, show_default=True, help="Share of the visual prompt sets that get a correction round with memory.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="Autocast on CUDA.")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps (rerun to continue).")
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Also checkpoint every N optimizer steps.")
@click.option("--export", default=None, help="Also write the best weights (fp16) to this .safetensors file.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (rerun the same command to resume).")
@click.pass_context
def universal(ctx: click.Context, config_file: Path | None, init: str | None, dataset: str, root: str | None, split: str | None, limit: int | None,
              val_dataset: str | None, val_split: str | None, val_fraction: float, epochs: int, batch_size: int, lr: float, backbone_lr: float, rows_per_image: int,
              second_round: float, seed: int, device: str, precision: str, max_steps: int | None, checkpoint_every: int, export: str | None, out: Path) -> None:
    """Train the universal decoder (points, boxes, scribbles, masks, text, references) into OUT;
    writes OUT/universal.safetensors, usable as create_segmenter("universal", checkpoint=...)."""
    from segprompt.engine.config_files import apply_command_line, read_config_file
    from segprompt.universal.run import train_universal
    from segprompt.universal.train import UniversalTrainConfig

    def explicit(name: str) -> bool:
        return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE

    # data options add keys to dataset_kwargs / val_kwargs only when given (a --config file's keys stay)
    data_kwargs: dict[str, Any] = {}
    val_kwargs: dict[str, Any] = {}
    if root:
        data_kwargs["root"] = val_kwargs["root"] = root
    held_out = 0.0
    if dataset.startswith("synthetic"):
        if limit is not None:
            data_kwargs["n"] = limit
            limit = None
    else:
        if split:
            data_kwargs["split"] = split
        if val_split:
            val_kwargs["split"] = val_split
        elif not val_dataset:
            held_out = val_fraction
    given = dict(
        init=init, dataset=dataset, dataset_kwargs=data_kwargs, val_dataset=val_dataset, val_kwargs=val_kwargs, epochs=epochs, batch_size=batch_size,
        lr=lr, backbone_lr=backbone_lr, rows_per_image=rows_per_image, second_round=second_round, seed=seed, device=device, precision=precision,
        max_steps=max_steps, checkpoint_every=checkpoint_every or None, export=export, limit=limit, val_fraction=held_out,
    )
    data: dict[str, Any] = {}
    if config_file is not None:
        data = read_config_file(config_file, [f for f in UniversalTrainConfig.__dataclass_fields__], label="--config ")
    if not dataset.startswith("synthetic") and "val_kwargs" in data and not explicit("val_split"):
        val_kwargs.pop("split", None)  # the file's validation split stays
    merged = apply_command_line(ctx, data, given, _OPTION_FIELDS, merge=("dataset_kwargs", "val_kwargs"))
    if str(merged.get("dataset", "")).startswith("synthetic"):  # generated data: n / seed defaults under the given keys
        defaults = UniversalTrainConfig()
        for key in ("dataset_kwargs", "val_kwargs"):
            merged[key] = {**getattr(defaults, key), **(merged.get(key) or {})}
    cfg = UniversalTrainConfig.from_dict(merged)
    click.echo(f"segprompt train universal: {cfg.init or 'new model'} on {cfg.dataset} -> {out}")
    result = train_universal(cfg, out)
    if result.get("interrupted"):
        click.echo(f"stopped after {result['stopped_at_step']} optimizer steps (--max-steps); rerun to continue")
        return
    click.echo(f"best epoch {result['best']['epoch']}: " + json.dumps({k: round(v, 4) for k, v in result["best"].items() if k != "epoch"}))
    click.echo(f"weights: {result['weights']}")
