"""The report of a TuneVLSeg sweep: method x dataset table, Dice-vs-depth plots, parameter counts.

``segprompt bench tunevlseg report RUN_DIR`` (or :func:`write_report`) reads the ``kind: "cell"``
rows of ``RUN_DIR/results.jsonl`` (falling back to the cells' own summaries) and writes

* ``summary.csv``: one row per (VLSM, method, depth, dataset) with test Dice / IoU mean and std;
* ``table.md`` and ``table.tex``: the method x dataset table, ``mean ± std`` test Dice per cell.
  For a method with several depths the depth is chosen by mean *validation* Dice (never by test
  scores) and shown as ``(dK)``. With one seed, ± is the standard deviation over test images;
  with several seeds it is the standard deviation of the per-seed means over seeds. A dataset
  without a labelled test split is marked with † (its "test" scores are on val, which also
  chose the checkpoint);
* ``dice_vs_depth_<dataset>.png``: test Dice against prompt depth, one line per method (methods
  without depth as flat lines), one panel per VLSM;
* ``params.csv``: trainable parameters per (VLSM, method, depth);
* ``report.md``: all of it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segprompt.engine.report import line_plot, markdown_table, write_csv
from segprompt.engine.runfolder import JsonlLog, atomic_write_text
from segprompt.errors import DataError

__all__ = ["load_cells", "aggregate", "method_table", "latex_table", "write_report"]

METHOD_ORDER = ("zeroshot", "coop", "cocoop", "vpt-shallow", "vpt-deep", "maple", "shared-separate", "shared-attention", "full")


def load_cells(run_dir: str | Path) -> list[dict[str, Any]]:
    """The finished cells of a sweep folder: the ``kind: "cell"`` rows (last one per cell), plus
    the summaries of cells whose row is missing (a sweep stopped before writing it)."""
    run_dir = Path(run_dir)
    rows: dict[str, dict[str, Any]] = {}
    for r in JsonlLog(run_dir / "results.jsonl"):
        if r.get("kind") == "cell":
            rows[r["cell"]] = r
    cells_dir = run_dir / "cells"
    if cells_dir.is_dir():
        for folder in sorted(p for p in cells_dir.iterdir() if p.is_dir() and p.name not in rows):
            summ = [r for r in JsonlLog(folder / "results.jsonl") if r.get("kind") == "summary"]
            if summ:
                rows[folder.name] = {**summ[-1], "kind": "cell", "cell": folder.name}
    return list(rows.values())


def _order(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def aggregate(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (vlsm, method, depth, dataset): seeds pooled (see the module doc for ±)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[(c["vlsm"], c["method"], int(c["depth"]), c["dataset"])].append(c)
    out = []
    for (vlsm, method, depth, dataset), rows in groups.items():
        dice = np.array([r["dice_mean"] for r in rows], float)
        iou = np.array([r["iou_mean"] for r in rows], float)
        multi = len(rows) > 1
        out.append({
            "vlsm": vlsm, "method": method, "depth": depth, "dataset": dataset, "seeds": len(rows),
            "dice_mean": float(dice.mean()),
            "dice_std": float(dice.std(ddof=1)) if multi else float(rows[0]["dice_std"]),
            "iou_mean": float(iou.mean()),
            "iou_std": float(iou.std(ddof=1)) if multi else float(rows[0]["iou_std"]),
            "std_over": "seeds" if multi else "images",
            "val_dice": float(np.mean([r["val_dice_best"] for r in rows])),
            "val_dice_zeroshot": float(np.mean([r["val_dice_zeroshot"] for r in rows])),
            "n_test": int(rows[0]["n_test"]),
            "test_is_val": bool(rows[0].get("test_is_val", False)),
            "trainable_params": int(rows[0]["trainable_params"]),
            "ms_per_step": float(np.mean([r["ms_per_step"] for r in rows])) if all(r.get("ms_per_step") is not None for r in rows) else float("nan"),
        })
    out.sort(key=lambda r: (r["vlsm"], _order(r["method"]), r["depth"], r["dataset"]))
    return out


def _best_by_val(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["vlsm"], r["method"], r["dataset"])
        if key not in best or (r["val_dice"], -r["depth"]) > (best[key]["val_dice"], -best[key]["depth"]):
            best[key] = r
    return best


def method_table(agg: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str], dict[tuple[str, str, str], dict[str, Any]]]:
    """(rows, datasets, chosen): one row per (vlsm, method) with a ``mean ± std (dK)`` cell per dataset."""
    best = _best_by_val(list(agg))
    datasets = sorted({r["dataset"] for r in agg})
    keys = sorted({(r["vlsm"], r["method"]) for r in agg}, key=lambda k: (k[0], _order(k[1])))
    rows = []
    for vlsm, method in keys:
        row: dict[str, Any] = {"vlsm": vlsm, "method": method}
        for d in datasets:
            r = best.get((vlsm, method, d))
            row[d] = "-" if r is None else _cell_text(r, "±")
        rows.append(row)
    return rows, datasets, best


def _cell_text(r: dict[str, Any], pm: str) -> str:
    depth = f" (d{r['depth']})" if r["depth"] > 1 or r["method"] in ("coop", "cocoop", "maple", "shared-separate", "shared-attention", "vpt-deep") else ""
    return f"{r['dice_mean']:.3f} {pm} {r['dice_std']:.3f}{depth}"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def latex_table(agg: Sequence[dict[str, Any]]) -> str:
    """A booktabs table of mean ± std test Dice; the best method per (VLSM, dataset) in bold."""
    rows, datasets, best = method_table(agg)
    top: dict[tuple[str, str], float] = {}
    for (vlsm, _, d), r in best.items():
        top[(vlsm, d)] = max(top.get((vlsm, d), -math.inf), r["dice_mean"])
    marks = {d: any(r["test_is_val"] for r in agg if r["dataset"] == d) for d in datasets}
    head = " & ".join(_tex(d) + (r"$^\dagger$" if marks[d] else "") for d in datasets)
    lines = [r"\begin{tabular}{ll" + "c" * len(datasets) + "}", r"\toprule", f"Model & Method & {head} \\\\", r"\midrule"]
    last = None
    for row in rows:
        if last is not None and row["vlsm"] != last:
            lines.append(r"\midrule")
        last = row["vlsm"]
        cells = []
        for d in datasets:
            r = best.get((row["vlsm"], row["method"], d))
            if r is None:
                cells.append("--")
                continue
            depth = row[d].split("(")[-1].rstrip(")") if "(" in row[d] else ""
            value = f"{r['dice_mean']:.3f}"
            if math.isclose(r["dice_mean"], top[(row["vlsm"], d)]):
                value = rf"\textbf{{{value}}}"
            cells.append(f"{value} $\\pm$ {r['dice_std']:.3f}" + (f" ({depth})" if depth else ""))
        lines.append(f"{_tex(row['vlsm'])} & {_tex(row['method'])} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if any(marks.values()):
        lines.append(r"% $^\dagger$ no labelled test split: scores on the validation split, which also selected the checkpoint")
    return "\n".join(lines) + "\n"


def _depth_panels(agg: Sequence[dict[str, Any]], dataset: str) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    rows = [r for r in agg if r["dataset"] == dataset]
    depths = sorted({r["depth"] for r in rows if r["depth"] > 0}) or [1]
    lo, hi = depths[0], depths[-1]
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for vlsm in sorted({r["vlsm"] for r in rows}):
        series: dict[str, tuple[list[float], list[float]]] = {}
        mine = [r for r in rows if r["vlsm"] == vlsm]
        for method in sorted({r["method"] for r in mine}, key=_order):
            pts = sorted((r["depth"], r["dice_mean"]) for r in mine if r["method"] == method)
            if method == "vpt-deep":  # vpt-deep at depth 1 is vpt-shallow (deduplicated in the sweep)
                shallow = [r for r in mine if r["method"] == "vpt-shallow"]
                if shallow and all(d != 1 for d, _ in pts):
                    pts = sorted(pts + [(1, shallow[0]["dice_mean"])])
            if method in ("zeroshot", "full"):  # no depth: a flat line
                series[method] = ([lo, hi], [pts[0][1], pts[0][1]])
            else:
                series[method] = ([float(d) for d, _ in pts], [v for _, v in pts])
        panels[vlsm] = series
    return panels


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write the report files of a sweep folder; returns their paths."""
    run_dir = Path(run_dir)
    cells = load_cells(run_dir)
    if not cells:
        raise DataError(f"{run_dir}: no finished cells (results.jsonl has no 'cell' rows); run the sweep first")
    agg = aggregate(cells)
    paths: dict[str, Path] = {}
    cols = ["vlsm", "method", "depth", "dataset", "seeds", "dice_mean", "dice_std", "iou_mean", "iou_std", "std_over", "val_dice",
            "val_dice_zeroshot", "n_test", "test_is_val", "trainable_params", "ms_per_step"]
    paths["summary"] = write_csv(run_dir / "summary.csv", agg, cols)
    params = sorted({(r["vlsm"], r["method"], r["depth"], r["trainable_params"]) for r in agg}, key=lambda t: (t[0], _order(t[1]), t[2]))
    prow = [{"vlsm": v, "method": m, "depth": d, "trainable_params": n} for v, m, d, n in params]
    paths["params"] = write_csv(run_dir / "params.csv", prow, ["vlsm", "method", "depth", "trainable_params"])
    rows, datasets, _ = method_table(agg)
    marks = {d: any(r["test_is_val"] for r in agg if r["dataset"] == d) for d in datasets}
    headers = ["vlsm", "method"] + [d + (" †" if marks[d] else "") for d in datasets]
    table_md = markdown_table(rows, ["vlsm", "method", *datasets], headers=headers)
    paths["table_md"] = atomic_write_text(run_dir / "table.md", table_md + "\n")
    paths["table_tex"] = atomic_write_text(run_dir / "table.tex", latex_table(agg))
    plots = []
    for d in datasets:
        panels = _depth_panels(agg, d)
        path = line_plot(panels, run_dir / f"dice_vs_depth_{d}.png", xlabel="prompt depth", ylabel="test Dice", title=f"{d}: Dice vs depth")
        paths[f"plot_{d}"] = path
        plots.append(path)
    seeds = sorted({c["seed"] for c in cells})
    lines = [
        "# TuneVLSeg prompt-tuning sweep",
        "",
        f"{len(cells)} finished cells; VLSMs {', '.join(sorted({c['vlsm'] for c in cells}))}; seeds {', '.join(map(str, seeds))}.",
        "",
        "## Test Dice (mean ± std), method x dataset",
        "",
        "Per-image Dice at the original resolution (empty prediction vs empty target = 1). Depth chosen per "
        "(method, dataset) by validation Dice, shown as (dK). ± = std over test images (one seed) or over seeds.",
        "",
        table_md,
        "",
    ]
    if any(marks.values()):
        lines += ["† no labelled test split: the scores are on the validation split, which also selected the checkpoint.", ""]
    lines += ["LaTeX: `table.tex`. Every (method, depth) cell: `summary.csv`.", "", "## Dice vs prompt depth", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    if any(c["vlsm"].startswith("clipseg") for c in cells):
        lines += ["", "CLIPSeg's decoder reads three vision layers: visual prompts deeper than the last one cannot change its output."]
    lines += ["", "## Trainable parameters", "", markdown_table(prow, ["vlsm", "method", "depth", "trainable_params"]), ""]
    optuna = [r for r in JsonlLog(run_dir / "results.jsonl") if r.get("kind") == "optuna"]
    if optuna:
        orows = [{"study": r["study"], "trials": r["trials"], "best_params": ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["best_params"].items()),
                  "val_dice": r["best_val_dice"], "test_dice": r["dice_mean"]} for r in optuna]
        lines += ["## Optuna search (selection on validation Dice)", "", markdown_table(orows, ["study", "trials", "best_params", "val_dice", "test_dice"]), ""]
    paths["report"] = atomic_write_text(run_dir / "report.md", "\n".join(lines))
    return paths
