"""``segprompt bench``: benchmark suites, each mounted lazily from its package."""

from __future__ import annotations

import click

from segprompt.cli import LazyGroup

SUITES = {
    "pointprompt": ("pointprompt.cli:pointprompt", "Human and automated point prompts for SAM-like models."),
    "everything": ("segprompt.everything_bench.cli:everything", "Segment everything, scored against instance ground truth (AP, PQ, best IoU)."),
    "tunevlseg": ("tunevlseg.cli:tunevlseg", "Prompt tuning of vision-language segmentation models across depths."),
    "sot": ("segprompt.commands.bench_sot:sot", "Show or Tell: text prompts against visual references, fixed and calibrated merges, seeds, oracle, cost."),
}


@click.group(cls=LazyGroup, lazy=SUITES)
def bench() -> None:
    """Benchmarks; each writes a resumable run folder (config.yaml, results.jsonl, summary.csv, report.md)."""
