"""``segprompt demo``: the main job end to end on the embedded defaults, with no download.

A point-prompt benchmark of the bundled ``sam-tiny`` demo model and the weight-free GrabCut
baseline on synthetic lesion images: three strategies (centre, random, micro-sam-style
correction clicks), four steps each. Writes a run folder (config.yaml, results.jsonl,
summary.csv, curves.csv, report.md, iou_per_step.png) and prints the summary table.
Rerunning on the same folder resumes (and recomputes nothing if the run finished).
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True, help="Run folder.")
@click.option("--images", type=int, default=12, show_default=True, help="Number of synthetic images.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: Path, images: int, seed: int) -> None:
    """Benchmark point prompts on synthetic lesions with sam-tiny and GrabCut (no download)."""
    from pointprompt.bench import PointBenchConfig, format_summary, run_pointprompt
    from segprompt.engine.runfolder import timing_text

    cfg = PointBenchConfig(
        datasets=["synthetic-lesions"],
        dataset_kwargs={"synthetic-lesions": {"n": images, "seed": seed, "size": None}},
        models=["sam-tiny", "grabcut"],
        strategies=["centre", "random", "microsam"],
        n_positive=3,
        n_negative=1,
        steps=4,
        seed=seed,
        multimask="model",  # each model as shipped: sam-tiny with its own single-mask head
    )
    click.echo(f"segprompt demo: {images} synthetic lesion images, models sam-tiny (bundled demo model) and grabcut -> {out}")
    summary = run_pointprompt(cfg, out)
    click.echo("")
    click.echo(format_summary(summary))
    click.echo(f"\n{timing_text(out)}\nreport: {out / 'report.md'}, plot: {out / 'iou_per_step.png'}")
