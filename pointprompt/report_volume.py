"""Summary, CSV tables, the slice-IoU-by-dz plot and report.md of the 3-D benchmark
(:mod:`pointprompt.bench_volume`), in the house's report conventions (:mod:`segprompt.engine.report`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from segprompt.engine.report import Series, curve_panels, line_plot, markdown_table, short_name, text_table, write_csv
from segprompt.engine.runfolder import RunFolder

SUMMARY_COLUMNS = ["dataset", "model", "strategy", "method", "n", "volumes", "dice3d", "dice3d_std", "iou3d", "prompt_iou", "coverage", "seconds_per_volume"]
CURVE_COLUMNS = ["dataset", "model", "strategy", "dz", "iou", "iou_std", "n"]

#: what a reader should know about a model in this report (others: pointprompt.bench.MODEL_NOTES)
VOLUME_MODEL_NOTES = {
    "sam2": "SAM 2 with the checkpoint given in config.yaml (model_kwargs); propagates with its own video memory "
    "(the sam2 package's video predictor on the in-memory stack)",
}


def _order(cfg: Any) -> Any:
    d = {x: i for i, x in enumerate(cfg.datasets)}
    m = {x: i for i, x in enumerate(cfg.models)}
    p = {x: i for i, x in enumerate(cfg.prompts)}
    return lambda k: (d.get(k[0], 99), m.get(k[1], 99), p.get(k[2], 99), k)


def summarise_volumes(rows: Sequence[dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """Aggregate results rows.

    Returns ``{"table": [...], "curves": [...]}``: ``table`` one row per (dataset, model,
    strategy) with n objects and volumes, mean and std (population, ``np.std``) 3-D Dice, mean
    3-D IoU, mean IoU on the prompted slice, mean coverage (share of ground-truth slices with slice
    IoU >= ``cover_iou``), the propagation method and the mean seconds per volume; ``curves`` the
    mean / std slice IoU and n per (dataset, model, strategy, dz), over the objects present at
    that dz in the prediction or the ground truth.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"], r["strategy"])].append(r)
    table, curves = [], []
    for key in sorted(groups, key=_order(cfg)):
        rs = groups[key]
        dice = np.array([r["dice3d"] for r in rs], float)
        secs = {r["volume"]: float(r["seconds"]) for r in rs}
        table.append(
            {
                "dataset": key[0],
                "model": key[1],
                "strategy": key[2],
                "method": "/".join(sorted({str(r["method"]) for r in rs})),
                "n": len(rs),
                "volumes": len(secs),
                "dice3d": float(dice.mean()),
                "dice3d_std": float(dice.std()),
                "iou3d": float(np.mean([r["iou3d"] for r in rs])),
                "prompt_iou": float(np.mean([r["prompt_iou"] for r in rs])),
                "coverage": float(np.mean([r["coverage"] for r in rs])),
                "seconds_per_volume": float(np.mean(list(secs.values()))),
            }
        )
        by_dz: dict[int, list[float]] = defaultdict(list)
        for r in rs:
            for dz, v in r["slice_iou"]:
                by_dz[int(dz)].append(float(v))
        for dz in sorted(by_dz):
            v = np.array(by_dz[dz])
            curves.append({"dataset": key[0], "model": key[1], "strategy": key[2], "dz": dz, "iou": float(v.mean()), "iou_std": float(v.std()), "n": len(v)})
    return {"table": table, "curves": curves}


def dice_cells(table: Sequence[dict[str, Any]], dataset: str, cfg: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """A model x strategy table of ``mean ± std (n)`` 3-D Dice on ``dataset``."""
    cells: dict[str, dict[str, Any]] = {}
    for t in table:
        if t["dataset"] == dataset:
            cells.setdefault(t["model"], {"model": t["model"]})[t["strategy"]] = f"{t['dice3d']:.3f} ± {t['dice3d_std']:.3f} (n={t['n']})"
    cols = ["model", *[p for p in cfg.prompts if any(p in c for c in cells.values())]]
    return [cells[m] for m in cfg.models if m in cells], cols


def dz_panels(curves: Sequence[dict[str, Any]]) -> dict[str, dict[str, Series]]:
    """``{"strategy on dataset": {model: Series}}`` of mean slice IoU by dz, with std and n."""
    return curve_panels(curves, lambda c: f"{c['strategy']} on {short_name(c['dataset'], 18)}", "model", "dz")


def write_volume_reports(run: RunFolder, summary: dict[str, Any], cfg: Any) -> None:
    """summary.csv, curves.csv, iou_by_dz.png and report.md in the run folder."""
    from pointprompt.bench import MODEL_NOTES

    write_csv(run.path / "summary.csv", summary["table"], SUMMARY_COLUMNS)
    write_csv(run.path / "curves.csv", summary["curves"], CURVE_COLUMNS)
    panels = dz_panels(summary["curves"])
    plot = (
        line_plot(panels, run.path / "iou_by_dz.png", xlabel="dz (slices from the prompted one)", ylabel="mean slice IoU", title="Slice IoU along z", spread_label="± 1 std")
        if panels
        else None
    )
    notes = {**MODEL_NOTES, **VOLUME_MODEL_NOTES}
    fallback = ", ".join(f"{k}={v}" for k, v in cfg.fallback.items()) or "the defaults (box + centre point, box margin 0.1)"
    slice_rule = "the middle of its z-extent, floor((first + last) / 2)" if cfg.slice_choice == "middle" else "the slice of its largest area"
    lines = [
        "# Point-prompt benchmark on volumes",
        "",
        f"Every object is prompted on one slice ({slice_rule}) with {cfg.n_positive} positive + {cfg.n_negative} negative "
        f"point(s) from each strategy (`+box`: and the object's tight box there; `box`: the box alone), then all objects of "
        f"a volume are propagated together, direction `{cfg.direction}`, method `{cfg.method}` (native where the model has "
        f"its own propagation, else the slice-by-slice fallback with {fallback}). Seed {cfg.seed}.",
        "",
        "Models:",
        "",
        *[f"- `{m}`: {notes.get(m.split('@')[0], 'see config.yaml')}" for m in cfg.models],
        "",
        "## 3-D Dice",
        "",
        "Mean ± standard deviation of the 3-D Dice over objects (n objects), on the predicted label volume (overlaps "
        "between objects resolved by score).",
        "",
    ]
    for ds in cfg.datasets:
        tab, cols = dice_cells(summary["table"], ds, cfg)
        if tab:
            lines += [f"`{ds}`:", "", markdown_table(tab, cols), ""]
    lines += [
        "## Summary",
        "",
        f"n objects in `volumes` volumes; iou3d the mean 3-D IoU, prompt_iou the mean IoU on the prompted slice, coverage "
        f"the mean share of an object's ground-truth slices with slice IoU >= {cfg.cover_iou}; seconds_per_volume is one "
        "propagation call (all the volume's objects, the slices' encoding included).",
        "",
        markdown_table(summary["table"], SUMMARY_COLUMNS),
        "",
    ]
    if plot is not None:
        lines += [
            "## Slice IoU along z",
            "",
            "Mean IoU on each slice by its distance dz from the object's prompted slice, over the objects present there in "
            "the prediction or the ground truth (n shrinks away from dz = 0); the band is ± 1 standard deviation.",
            "",
            f"![Slice IoU along z]({plot.name})",
            "",
        ]
    n_err = len(run.errors.rows())
    lines += [f"Skipped inputs: {n_err} (see errors.jsonl)." if n_err else "Skipped inputs: none.", "", run.timing_text(), ""]
    run.write_text("report.md", "\n".join(lines))


def format_volume_summary(summary: dict[str, Any]) -> str:
    return text_table(summary["table"], ["dataset", "model", "strategy", "method", "n", "dice3d", "dice3d_std", "prompt_iou", "coverage", "seconds_per_volume"])
