"""``segprompt bench sot``: Show or Tell (text prompts against visual references) from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from segprompt.engine.launchers import echo_bench_end, launch_from_options, launch_options
from segprompt.errors import ConfigError


def _split(values: tuple[str, ...] | str | None) -> list[str]:
    items = (values,) if isinstance(values, str) else tuple(values or ())
    return [v.strip() for item in items for v in item.split(",") if v.strip()]


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in _split(text)]
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers, e.g. {option} 0,1,2; got {text!r}") from None


@click.command("sot", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", "datasets", multiple=True, default=("synthetic-objects",), show_default=True, help="Registry name or dataset folder; repeat (or comma-separate) for several. Label maps prompt every class but background; binary sets their text.")
@click.option("--methods", default="universal-text,universal-reference,persam", show_default=True, help="Comma-separated SoT methods. Text: universal-text, clipseg, maskclip; visual: universal-reference, persam, prototype, clipseg-visual. clipseg and maskclip need their weights (segprompt weights list).")
@click.option("--segmenter", "segmenters", multiple=True, metavar="METHOD=NAME", help="Run METHOD on another registered segmenter, e.g. clipseg=clipseg-tiny (a random tiny CLIPSeg, for a dry run); repeat for several. Keywords for it (weights, learner_checkpoint, ...) go in --config under segmenters.")
@click.option("--shots", default="1,5", show_default=True, help="Comma-separated k: references per class.")
@click.option("--seed", "seeds", multiple=True, default=("0,1,2",), show_default=True, help="Seed; repeat (or comma-separate) for several; each draws its own references.")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N images of each dataset's evaluated part.")
@click.option("--size", default="518", show_default=True, help="original, or a side in pixels: images, labels and references resized to it (SoT: 518).")
@click.option("--calibration", "calibration", type=click.Choice(["nll", "miou"]), default=None, help="The calibrated merge's fit on the validation part: miou (the background threshold with the best validation mIoU; the default) or nll (temperature and threshold minimising the NLL).")
@click.option("--no-oracle", is_flag=True, help="Leave out the oracle rows (per class the better of a text and a visual method).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="YAML of SotBenchConfig fields (a run folder's config.yaml works); options given on the command line override it.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (rerun the same command to resume). Required.")
@launch_options
@click.pass_context
def sot(ctx, datasets, methods, segmenters, shots, seeds, limit, size, calibration, no_oracle, device, config_file, out, **launch) -> None:
    """Show or Tell: text-prompted against reference-prompted segmentation, per-class maps merged
    by SoT's fixed 0.2 rule and by a calibrated rule; mIoU mean / std / worst over seeds, an oracle
    per class, cost per image. Resumable.

    Scale-out: `--workers 4` runs 4 shards in processes of this machine, `--launcher submitit --workers 50
    --slurm-partition gpu --slurm-gpus 1` a SLURM array of 50 jobs, `--shard 2/4` one shard by hand; a unit
    is one (dataset, shots, seed, image) with all its methods' rows. The shards write into the same run
    folder (`segprompt runs status/merge RUN_DIR`)."""
    if out is None:
        raise click.UsageError("Missing option '--out' (the run folder).")
    from segprompt.devices import check_device
    from segprompt.sot.bench import SotBenchConfig, run_sot
    from segprompt.sot.report import format_summary

    check_device(device)
    given = dict(
        datasets=_split(datasets),
        methods=_split(methods),
        shots=_ints(shots, "--shots"),
        seeds=_ints(",".join(seeds), "--seed"),
        limit=limit,
        size=size,
        device=device,
        oracle=not no_oracle,
    )
    if segmenters:
        given["segmenters"] = _segmenter_specs(segmenters)
    if calibration is not None:
        given["calibration"] = {"fit": "both" if calibration == "nll" else "miou"}
    file_launch: dict = {}
    if config_file is not None:
        given, file_launch = _merge_config(ctx, config_file, given)
    cfg = SotBenchConfig(**given)
    launch_cfg, shard = launch_from_options(launch, file_launch)
    summary = run_sot(cfg, out, launch=launch_cfg, shard=shard)
    echo_bench_end(summary, out, "(dataset, shots, seed, image) units", format_summary, "report.md, summary.csv, seeds.csv, variance.png, results*.jsonl")


def _segmenter_specs(values: tuple[str, ...]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in _split(values):
        method, sep, name = item.partition("=")
        if not sep or not method.strip() or not name.strip():
            raise ConfigError(f"--segmenter takes METHOD=NAME, e.g. --segmenter clipseg=clipseg-tiny; got {item!r}")
        out[method.strip()] = {"name": name.strip()}
    return out


_OPTION_FIELDS = {
    "datasets": ("datasets",), "methods": ("methods",), "shots": ("shots",), "seeds": ("seeds",), "limit": ("limit",),
    "size": ("size",), "device": ("device",), "no_oracle": ("oracle",), "calibration": ("calibration",), "segmenters": ("segmenters",),
}  # fmt: skip


def _merge_config(ctx: click.Context, path: Path, given: dict) -> tuple[dict, dict]:
    """Fields from a YAML file, overridden by the options given on the command line; and the file's
    launch keys (launcher, workers, slurm_*), which the launch options override."""
    import dataclasses

    from segprompt.engine.config_files import apply_command_line, read_config_file
    from segprompt.engine.launchers import LAUNCH_FILE_KEYS, split_launch_keys
    from segprompt.sot.bench import SotBenchConfig

    data = read_config_file(path, [*(f.name for f in dataclasses.fields(SotBenchConfig)), *LAUNCH_FILE_KEYS], drop=("suite", "launch"))
    file_launch, data = split_launch_keys(data)
    return apply_command_line(ctx, data, given, _OPTION_FIELDS, merge=("calibration", "segmenters")), file_launch
