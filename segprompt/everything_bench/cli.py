"""``segprompt bench everything``: the instance benchmark of segment-everything from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from segprompt.commands.everything_options import SETTING_FIELDS, settings_options
from segprompt.engine.launchers import echo_bench_end, launch_from_options, launch_options
from segprompt.errors import ConfigError

_NO_DEVICE = ("classical", "grabcut", "random-walker")


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def parse_classes(items: tuple[str, ...], datasets: list[str]) -> dict[str, list[str]]:
    """``--classes`` values -> ``{dataset: [names]}``: ``NAME=c1,c2`` for one dataset, or a plain
    ``c1,c2`` for every label-map dataset (key ``"*"``)."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        key, names = (name.strip(), rest) if sep else ("*", item)
        if sep and key not in datasets:
            raise ConfigError(f"--classes {item}: {key!r} is not one of the --dataset values ({', '.join(datasets)})")
        out.setdefault(key, []).extend(n.strip() for n in names.split(",") if n.strip())
    return out


@click.command("everything", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", "datasets", multiple=True, default=("kvasir",), show_default=True, help="Registry name, dataset folder or COCO JSON file; repeat for several.")
@click.option("--root", "roots", multiple=True, help="Folder of a --dataset: FOLDER (one dataset) or NAME=FOLDER (a COCO JSON's image folder likewise).")
@click.option("--model", "models", multiple=True, default=("sam-tiny",), show_default=True, help="Segmenter name; repeat for several (sam-tiny, sam, ...).")
@click.option("--checkpoint", default=None, help="Checkpoint file or registry name for the `sam` model.")
@click.option("--gt", type=click.Choice(["auto", "components", "labels", "coco"]), default="auto", show_default=True, help="Ground-truth instances: auto = components of binary masks / of --classes in label maps / COCO annotations; labels = instance label images (each id > 0 one instance).")
@click.option("--classes", "classes", multiple=True, help="Instance classes of a label-map dataset: NAME=car,pedestrian or car,pedestrian for every one.")
@click.option("--other-classes", type=click.Choice(["background", "ignore"]), default="background", show_default=True, help="With --classes: pixels of the other classes count as background (predictions there are false positives) or are ignored.")
@click.option("--connectivity", type=click.Choice(["8", "4"]), default="8", show_default=True, help="Connected components: 8 (diagonal neighbours join) or 4.")
@click.option("--min-gt-area", type=int, default=0, show_default=True, help="Ground-truth instances under this many pixels are dropped.")
@click.option("--ignore-id", type=int, default=None, help="With --gt labels: this id is an ignore region, not an instance.")
@click.option("--max-dets", type=int, default=100, show_default=True, help="Predictions per image kept for AP (COCO's 100).")
@click.option("--overlays", type=int, default=3, show_default=True, help="Images per dataset drawn in overlays.png.")
@click.option("--limit", type=int, default=None, help="Use only the first N images of each dataset.")
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded in config.yaml (segment everything draws no random numbers).")
@click.option("--cache", type=click.Path(path_type=Path), default=None, help="Embedding cache folder.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="YAML of EverythingBenchConfig fields (a run folder's config.yaml works); options given on the command line override it.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (rerun the same command to resume). Required.")
@launch_options
@click.pass_context
@settings_options()
def everything(ctx, datasets, roots, models, checkpoint, gt, classes, other_classes, connectivity, min_gt_area, ignore_id, max_dets, settings, overlays, limit, seed, cache, device, config_file, out, **launch) -> None:
    """Segment everything on each image and score the masks against instance ground truth:
    AP50, AP (COCO), PQ / SQ / RQ, mean best IoU per object, seconds per image. Resumable."""
    if out is None:
        raise click.UsageError("Missing option '--out' (the run folder).")
    from segprompt.data.registry import parse_root_options
    from segprompt.devices import check_device
    from segprompt.everything_bench.bench import EverythingBenchConfig, format_summary, run_everything_bench

    check_device(device)
    datasets = _split(datasets)
    model_kwargs: dict[str, dict] = {}
    for m in models:
        kw = {"device": device} if m not in _NO_DEVICE else {}
        if m.split("@")[0] == "sam" and checkpoint:
            kw["checkpoint"] = checkpoint
        model_kwargs[m] = kw
    given = dict(
        datasets=datasets,
        dataset_kwargs={name: {"root": folder} for name, folder in parse_root_options(roots, datasets).items()},
        models=list(models),
        model_kwargs=model_kwargs,
        gt=gt,
        classes=parse_classes(classes, datasets),
        connectivity=int(connectivity),
        min_gt_area=min_gt_area,
        ignore_id=ignore_id,
        other_classes=other_classes,
        max_dets=max_dets,
        settings=settings,
        limit=limit,
        seed=seed,
        overlays=overlays,
    )
    file_launch: dict = {}
    if config_file is not None:
        given, file_launch = _merge_config(ctx, config_file, given)
    launch_cfg, shard = launch_from_options(launch, file_launch)
    summary = run_everything_bench(EverythingBenchConfig(**given), out, cache=cache, launch=launch_cfg, shard=shard)
    echo_bench_end(summary, out, "(model, image) pairs", format_summary, "summary.csv, report.md, overlays.png, results.jsonl")


# command-line option name -> the config fields it sets
_OPTION_FIELDS = {
    "datasets": ("datasets",), "roots": ("dataset_kwargs",), "models": ("models", "model_kwargs"), "checkpoint": ("model_kwargs",),
    "device": ("model_kwargs",), "gt": ("gt",), "classes": ("classes",), "other_classes": ("other_classes",),
    "connectivity": ("connectivity",), "min_gt_area": ("min_gt_area",), "ignore_id": ("ignore_id",), "max_dets": ("max_dets",),
    "overlays": ("overlays",), "limit": ("limit",), "seed": ("seed",),
    **{name: ("settings",) for name in SETTING_FIELDS},
}


def _merge_config(ctx: click.Context, path: Path, given: dict) -> tuple[dict, dict]:
    """Fields from a YAML file, overridden by the options given on the command line (settings
    merged field by field)."""
    import dataclasses

    from segprompt.engine.config_files import apply_command_line, read_config_file
    from segprompt.everything_bench.bench import EverythingBenchConfig

    from segprompt.engine.launchers import LAUNCH_FILE_KEYS, split_launch_keys

    data = read_config_file(path, [*(f.name for f in dataclasses.fields(EverythingBenchConfig)), *LAUNCH_FILE_KEYS], drop=("suite", "resolved_settings", "launch"))
    file_launch, data = split_launch_keys(data)
    return apply_command_line(ctx, data, given, _OPTION_FIELDS, merge=("settings",)), file_launch
