"""The report of a TuneVLSeg sweep: method x dataset table, Dice-vs-depth plots, parameter counts.

``segprompt bench tunevlseg report RUN_DIR`` (or :func:`write_report`) reads the ``kind: "cell"``
rows of ``RUN_DIR/results.jsonl`` (falling back to the cells' own summaries) and writes

* ``summary.csv``: one row per (VLSM, method, depth, dataset) with test Dice / IoU mean and std
  (a missing value is an empty field);
* ``table.md`` and ``table.tex``: the method x dataset table, ``mean ± std`` test Dice per cell.
  For a method with several depths the depth is chosen by mean *validation* Dice (never by test
  scores) and shown as ``(dK)``. With one seed, ± is the standard deviation over test images;
  with several seeds it is the standard deviation of the per-seed means over seeds. The best
  mean per (VLSM, dataset) is bold, every tied value included (ties at the 3 decimals shown).
  A dataset without a labelled test split is marked with † (its "test" scores are on val,
  which also chose the checkpoint);
* ``dice_vs_depth_<dataset>.png``: test Dice against prompt depth, one line per method with
  depth, one panel per VLSM; the methods without depth (``zeroshot``, ``full``) are dashed /
  dotted horizontal reference lines; with several seeds a ± 1 std band over seeds;
* ``params.csv``: trainable parameters per (VLSM, method, depth);
* ``report.md``: all of it, with what each model is, the training settings, the skipped inputs
  and the run's timing (first invocation and this one).
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from segprompt.engine.report import Series, format_lr, line_figure, markdown_table, plural, save_figure, short_name, write_csv
from segprompt.engine.runfolder import JsonlLog, atomic_write_text
from segprompt.errors import DataError

__all__ = [
    "load_cells",
    "aggregate",
    "method_table",
    "latex_table",
    "best_values",
    "depth_figure",
    "describe_vlsm",
    "format_lr",
    "format_value",
    "write_report",
]

METHOD_ORDER = ("zeroshot", "coop", "cocoop", "vpt-shallow", "vpt-deep", "maple", "shared-separate", "shared-attention", "full")
#: methods without prompt depth: drawn as horizontal reference lines in the Dice-vs-depth plots
REFERENCE_METHODS = ("zeroshot", "full")
#: methods whose table cell names the chosen depth
DEPTH_METHODS = ("coop", "cocoop", "maple", "shared-separate", "shared-attention", "vpt-deep")
DASH = "\u2013"  # shown for a missing value


# -- formatting ---------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: Any, fmt: str = ".3f", missing: str = DASH) -> str:
    """A table cell: floats with ``fmt``, None / NaN as ``missing`` (an en dash), never ``None``."""
    if _missing(value):
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, fmt)
    return str(value)


def _csv_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for a CSV: None / NaN as empty fields."""
    return [{k: "" if _missing(v) else v for k, v in r.items()} for r in rows]


# -- cells and aggregation ----------------------------------------------------------------------


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


def _mean_of(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    values = [r.get(key) for r in rows]
    return float(np.mean(values)) if values and not any(_missing(v) for v in values) else float("nan")


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
            "val_dice": _mean_of(rows, "val_dice_best"),
            "val_dice_zeroshot": _mean_of(rows, "val_dice_zeroshot"),
            "n_test": int(rows[0]["n_test"]),
            "train_images": rows[0].get("train_images"),
            "val_images": rows[0].get("val_images"),
            "skipped_items": max(int(r.get("skipped_items") or 0) for r in rows),
            "skipped_test": max(int(r.get("skipped_test") or 0) for r in rows),
            "test_is_val": bool(rows[0].get("test_is_val", False)),
            "trainable_params": int(rows[0]["trainable_params"]),
            "epochs_run": _mean_of(rows, "epochs_run"),
            "ms_per_step": _mean_of(rows, "ms_per_step"),
        })
    out.sort(key=lambda r: (r["vlsm"], _order(r["method"]), r["depth"], r["dataset"]))
    return out


def _best_by_val(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["vlsm"], r["method"], r["dataset"])
        val = -math.inf if _missing(r["val_dice"]) else r["val_dice"]
        if key not in best:
            best[key] = r
            continue
        other = -math.inf if _missing(best[key]["val_dice"]) else best[key]["val_dice"]
        if (val, -r["depth"]) > (other, -best[key]["depth"]):
            best[key] = r
    return best


def best_values(chosen: Mapping[tuple[str, str, str], Mapping[str, Any]], digits: int = 3) -> set[tuple[str, str, str]]:
    """The (vlsm, method, dataset) keys to print in bold: per (VLSM, dataset), every method whose
    mean test Dice equals the best one at the ``digits`` shown (all tied values, not one of
    them). Nothing is bold in a group of a single method."""
    groups: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    for (vlsm, method, dataset), r in chosen.items():
        groups[(vlsm, dataset)].append((method, round(float(r["dice_mean"]), digits)))
    bold = set()
    for (vlsm, dataset), values in groups.items():
        if len(values) < 2:
            continue
        top = max(v for _, v in values)
        bold |= {(vlsm, m, dataset) for m, v in values if v == top}
    return bold


def _depth_text(r: Mapping[str, Any]) -> str:
    return f" (d{r['depth']})" if r["depth"] > 1 or r["method"] in DEPTH_METHODS else ""


def method_table(agg: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str], dict[tuple[str, str, str], dict[str, Any]]]:
    """(rows, datasets, chosen): one row per (vlsm, method) with a ``mean ± std (dK)`` cell per
    dataset (Markdown: the best per VLSM and dataset in bold, ties included)."""
    best = _best_by_val(list(agg))
    bold = best_values(best)
    datasets = sorted({r["dataset"] for r in agg})
    keys = sorted({(r["vlsm"], r["method"]) for r in agg}, key=lambda k: (k[0], _order(k[1])))
    rows = []
    for vlsm, method in keys:
        row: dict[str, Any] = {"vlsm": vlsm, "method": method}
        for d in datasets:
            r = best.get((vlsm, method, d))
            if r is None:
                row[d] = DASH
                continue
            mean = f"{r['dice_mean']:.3f}"
            if (vlsm, method, d) in bold:
                mean = f"**{mean}**"
            row[d] = f"{mean} ± {format_value(r['dice_std'])}{_depth_text(r)}"
        rows.append(row)
    return rows, datasets, best


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def latex_table(agg: Sequence[dict[str, Any]]) -> str:
    """A booktabs table of mean ± std test Dice; the best method per (VLSM, dataset) in bold,
    every tied value included."""
    rows, datasets, best = method_table(agg)
    bold = best_values(best)
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
            value = f"{r['dice_mean']:.3f}"
            if (row["vlsm"], row["method"], d) in bold:
                value = rf"\textbf{{{value}}}"
            std = "--" if _missing(r["dice_std"]) else f"{r['dice_std']:.3f}"
            cells.append(f"{value} $\\pm$ {std}{_depth_text(r)}")
        lines.append(f"{_tex(row['vlsm'])} & {_tex(row['method'])} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if any(marks.values()):
        lines.append(r"% $^\dagger$ no labelled test split: scores on the validation split, which also selected the checkpoint")
    return "\n".join(lines) + "\n"


# -- Dice vs depth ----------------------------------------------------------------------------


def _depth_panels(agg: Sequence[dict[str, Any]], dataset: str) -> tuple[dict[str, dict[str, Series]], dict[str, dict[str, float]], bool]:
    """(panels, references, with_bands) of one dataset's Dice-vs-depth figure: per VLSM one series
    per method with depth; zeroshot and full as reference values; bands when seeds > 1."""
    rows = [r for r in agg if r["dataset"] == dataset]
    multi = any(r["seeds"] > 1 for r in rows)
    panels: dict[str, dict[str, Series]] = {}
    references: dict[str, dict[str, float]] = {}
    for vlsm in sorted({r["vlsm"] for r in rows}):
        series: dict[str, Series] = {}
        refs: dict[str, float] = {}
        mine = [r for r in rows if r["vlsm"] == vlsm]
        for method in sorted({r["method"] for r in mine}, key=_order):
            pts = sorted((r["depth"], r) for r in mine if r["method"] == method)
            if method in REFERENCE_METHODS:
                refs[method] = float(pts[0][1]["dice_mean"])
                continue
            if method == "vpt-deep":  # vpt-deep at depth 1 is vpt-shallow (deduplicated in the sweep)
                shallow = [r for r in mine if r["method"] == "vpt-shallow"]
                if shallow and all(d != 1 for d, _ in pts):
                    pts = sorted(pts + [(1, shallow[0])], key=lambda t: t[0])
            spread = [float(r["dice_std"]) if r["seeds"] > 1 else 0.0 for _, r in pts] if multi else None
            n = [int(r["seeds"]) for _, r in pts] if multi else None
            series[method] = Series([float(d) for d, _ in pts], [float(r["dice_mean"]) for _, r in pts], spread=spread, n=n)
        panels[vlsm] = series
        # dashed first: the zero-shot line is the one every prompt learner is read against
        references[vlsm] = {m: refs[m] for m in REFERENCE_METHODS if m in refs}
    return panels, references, multi


def depth_figure(agg: Sequence[dict[str, Any]], dataset: str) -> Any:
    """The Dice-vs-depth figure of ``dataset`` (not saved): one panel per VLSM (titled by the
    VLSM), one title for the figure, the legend outside the axes, the zero-shot (dashed) and
    full-finetune (dotted) references, a ± 1 std band over seeds when there are several."""
    panels, references, multi = _depth_panels(agg, dataset)
    # the band's meaning on a second line: one long line would run under the legend of a
    # one-panel figure (the legend sits at the figure's top right)
    title = f"{short_name(dataset)}: test Dice vs prompt depth" + ("\n(bands: ± 1 std over n seeds)" if multi else "")
    return line_figure(panels, xlabel="prompt depth", ylabel="test Dice", title=title, references=references)


# -- what the models are ------------------------------------------------------------------------


def _factory_defaults(name: str) -> dict[str, Any]:
    try:
        from tunevlseg.models import VLSMS

        factory = VLSMS.get(name)
        return {k: p.default for k, p in inspect.signature(factory).parameters.items() if p.default is not inspect.Parameter.empty}
    except Exception:  # noqa: BLE001 - a description must never stop a report
        return {}


def describe_vlsm(name: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """One plain sentence on what VLSM ``name`` (with its ``--vlsm-kwargs``) is."""
    kw = {**_factory_defaults(name), **dict(kwargs or {})}
    if name == "clipseg-tiny":
        return (
            f"a tiny CLIPSeg built in the package for tests and demos: {kw.get('layers', 4)}-layer, {kw.get('width', 32)}-wide text and "
            f"vision towers, {kw.get('image_size', 64)} px input, **random weights** (seed {kw.get('seed', 0)}; nothing pretrained, "
            "not trained by the project). It is frozen like CLIPSeg, so only the prompts (or, for `full`, all its weights) train. "
            "It is not a real CLIPSeg: its scores test the pipeline, not the methods."
        )
    if name == "openclip-tiny":
        return (
            f"a tiny open_clip CLIP built in the package for tests and demos: {kw.get('layers', 4)}-layer, {kw.get('width', 32)}-wide towers, "
            f"{kw.get('image_size', 32)} px input, **random weights** (seed {kw.get('seed', 0)}; nothing pretrained), plus the light FiLM "
            "decoder that trains in every method (so its `zeroshot` row is \"decoder only\"). It is not a real open_clip model: "
            "its scores test the pipeline, not the methods."
        )
    if name == "clipseg":
        return (f"CLIPSeg (transformers `CLIPSegForImageSegmentation`) with the weights `{kw.get('weights', 'clipseg-rd64-refined')}`, "
                "frozen (decoder included): prompt learners change only the prompts.")
    if name == "openclip":
        weights = kw.get("pretrained") or kw.get("model", "biomedclip")
        return (f"the open_clip model `{kw.get('model', 'biomedclip')}` (weights `{weights}`), frozen towers plus a FiLM decoder "
                "trained from random initialisation in every method (its `zeroshot` row is \"decoder only\").")
    return f"`{name}` (a registered VLSM{', kwargs ' + str(dict(kwargs)) if kwargs else ''})."


# -- the report ----------------------------------------------------------------------------------


def _read_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = run_dir / "config.yaml"
    try:
        return dict(yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}


def _timing(run_dir: Path, config: Mapping[str, Any]) -> str:
    """The run folder's timing sentence (:func:`segprompt.engine.runfolder.timing_text`): the first
    invocation's time next to the last one's; empty when no invocation was recorded."""
    from segprompt.engine.runfolder import timing_text

    return timing_text(run_dir)


def _settings_rows(train: Mapping[str, Any], seeds: Sequence[int]) -> list[dict[str, str]]:
    from dataclasses import MISSING, fields

    from tunevlseg.train import TrainConfig, recipe_settings

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING and f.default is not None}
    t = {**defaults, **recipe_settings(train)}  # a folder from before recipes: the segprompt recipe it ran
    epochs = int(t["epochs"])
    metric = {"val_loss": "validation loss", "val_dice": "val Dice"}
    stop = ""
    if t.get("early_stop"):
        stop = (f" at most (early stop after {plural(int(t['early_stop']), 'epoch')} without a better {metric[t['monitor']]}"
                + (f", not before epoch {t['min_epochs']}" if t.get("min_epochs") else "") + ")")
    schedule = t["schedule"] + (f" on the {metric[t['monitor']]} (factor {format_value(float(t['plateau_factor']), 'g')}, patience "
                                f"{t['plateau_patience']})" if t["schedule"] == "plateau" else "")
    rows = [
        ("recipe", f"{t['recipe']}" + (" (TuneVLSeg's protocol)" if t["recipe"] == "tvs" else "")),
        ("epochs", plural(epochs, "epoch") + stop),
        ("learning rate", f"{format_lr(t['lr'])} (AdamW; schedule {schedule})"),
        ("weight decay", format_lr(t["weight_decay"]) if t["weight_decay"] else "0"),
        ("checkpoint", f"the best {metric[t['best_by']]}" + ("" if t["baseline_counts"] else " after training (epoch 0 excluded)")),
        ("batch size", str(t["batch_size"])),
        ("context tokens per depth", str(t["n_ctx"])),
        ("prompt", str(t["prompt"])),
        ("loss", f"DiceCE (Dice {format_value(float(t['lambda_dice']), 'g')}, CE {format_value(float(t['lambda_ce']), 'g')}; "
                 f"Dice smoothing {format_value(float(t['dice_smooth']), 'g')})"),
        ("precision", str(t["precision"])),
        ("training items", "all" if t.get("max_train_samples") is None else f"the first {t['max_train_samples']} of each train split"),
        ("evaluation items", "all" if t.get("max_eval_samples") is None else f"the first {t['max_eval_samples']} of each val / test split"),
        ("seeds", ", ".join(map(str, seeds))),
    ]
    return [{"setting": k, "value": v} for k, v in rows]


def write_report(run_dir: str | Path, timing: str | None = None) -> dict[str, Path]:
    """Write the report files of a sweep folder; returns their paths.

    ``timing``: the timing sentence to print (default: the folder's
    :meth:`~segprompt.engine.runfolder.RunFolder.timing_text`, from invocations.jsonl).
    """
    run_dir = Path(run_dir)
    cells = load_cells(run_dir)
    if not cells:
        raise DataError(f"{run_dir}: no finished cells (results.jsonl has no 'cell' rows); run the sweep first")
    config = _read_config(run_dir)
    agg = aggregate(cells)
    paths: dict[str, Path] = {}
    cols = ["vlsm", "method", "depth", "dataset", "seeds", "dice_mean", "dice_std", "iou_mean", "iou_std", "std_over", "val_dice",
            "val_dice_zeroshot", "n_test", "train_images", "val_images", "skipped_items", "test_is_val", "trainable_params", "ms_per_step"]
    paths["summary"] = write_csv(run_dir / "summary.csv", _csv_rows(agg), cols)
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
        path = save_figure(depth_figure(agg, d), run_dir / f"dice_vs_depth_{d}.png")
        paths[f"plot_{d}"] = path
        plots.append(path)

    seeds = sorted({int(c["seed"]) for c in cells})
    vlsms = sorted({c["vlsm"] for c in cells})
    vlsm_kwargs = dict(config.get("vlsm_kwargs") or {})
    lines = [
        "# TuneVLSeg prompt-tuning sweep",
        "",
        f"{plural(len(cells), 'finished cell')} (VLSM x method x depth x dataset x seed); "
        f"{plural(len(vlsms), 'VLSM')}, {plural(len(datasets), 'dataset')}, {plural(len(seeds), 'seed')}.",
        "",
        "## Models",
        "",
    ]
    lines += [f"* `{v}`: {describe_vlsm(v, vlsm_kwargs.get(v))}" for v in vlsms]
    lines += ["", "## Training settings", "", markdown_table(_settings_rows(config.get("train") or {}, seeds), ["setting", "value"]), ""]
    sizes = []
    for d in datasets:
        mine = [r for r in agg if r["dataset"] == d]
        first = mine[0]
        test = first["n_test"] + first["skipped_test"]
        sizes.append({"dataset": d, "train": format_value(first["train_images"]), "val": format_value(first["val_images"]),
                      "test": format_value(test) + (" (val)" if first["test_is_val"] else ""),
                      "unreadable": format_value(max(r["skipped_items"] for r in mine))})
    lines += ["Set sizes: items per split after the limits above; `unreadable` items (missing or broken files) were left out "
              "of training and scoring" + (" (see `errors.jsonl`)." if any(s["unreadable"] != "0" for s in sizes) and (run_dir / "errors.jsonl").is_file() else "."), "",
              markdown_table(sizes, ["dataset", "train", "val", "test", "unreadable"]), ""]
    lines += [
        "## Test Dice (mean ± std), method x dataset",
        "",
        "Per-image Dice at the original resolution (empty prediction vs empty target = 1). Depth chosen per "
        "(method, dataset) by validation Dice, shown as (dK). ± = std over test images (one seed) or over seeds. "
        "Bold: the best mean per VLSM and dataset (every tied value).",
        "",
        table_md,
        "",
    ]
    if any(marks.values()):
        lines += ["† no labelled test split: the scores are on the validation split, which also selected the checkpoint.", ""]
    lines += ["LaTeX: `table.tex`. Every (method, depth) cell: `summary.csv`.", "", "## Dice vs prompt depth", ""]
    lines += ["Methods without depth are horizontal lines: `zeroshot` dashed, `full` dotted."
              + (" Bands: ± 1 std over seeds." if any(r["seeds"] > 1 for r in agg) else ""), ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    if any(c["vlsm"].startswith("clipseg") for c in cells):
        lines += ["", "CLIPSeg's decoder reads three vision layers (3, 6, 9 of ViT-B/16's 12; 1, 2, 3 of clipseg-tiny's 4): visual "
                  "prompts deeper than the last of them cannot change its output."]
    prows = [{k: format_value(v) for k, v in r.items()} for r in prow]
    lines += ["", "## Trainable parameters", "", markdown_table(prows, ["vlsm", "method", "depth", "trainable_params"]), ""]
    optuna = [r for r in JsonlLog(run_dir / "results.jsonl") if r.get("kind") == "optuna"]
    if optuna:
        def param(k: str, v: Any) -> str:
            return f"{k}={format_lr(v)}" if k in ("lr", "weight_decay") else f"{k}={format_value(v, '.3g')}"

        names = {"val_loss_last": "the last epoch's validation loss, minimised", "val_dice_best": "the best validation Dice, maximised"}
        objective = names.get(str(optuna[0].get("objective", "val_dice_best")), str(optuna[0].get("objective")))
        orows = [{"study": r["study"], "trials": str(r["trials"]), "best_params": ", ".join(param(k, v) for k, v in r["best_params"].items()),
                  "objective": format_value(r.get("best_value", r["best_val_dice"]), ".4g"), "val_dice": format_value(r["best_val_dice"]),
                  "test_dice": format_value(r["dice_mean"])} for r in optuna]
        lines += [f"## Optuna search (selection on validation data: {objective})", "",
                  markdown_table(orows, ["study", "trials", "best_params", "objective", "val_dice", "test_dice"]), ""]
    errors = run_dir / "errors.jsonl"
    n_err = len(JsonlLog(errors).rows()) if errors.is_file() else 0
    lines += ["## Skipped", "", f"{n_err} {'entry' if n_err == 1 else 'entries'} in `errors.jsonl` (grid cells skipped or failed, unreadable items)." if n_err else "Nothing skipped.", ""]
    timing = _timing(run_dir, config) if timing is None else timing
    if timing:
        lines += ["## Timing", "", timing, ""]
    paths["report"] = atomic_write_text(run_dir / "report.md", "\n".join(lines))
    return paths
