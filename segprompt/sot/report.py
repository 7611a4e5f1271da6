"""The Show-or-Tell run's summary (:func:`summarise`) and report: summary.csv and the other tables,
the variance plot, report.md."""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from segprompt.engine.report import MISSING, markdown_table, place_legend, save_figure, short_name, text_table, write_csv
from segprompt.engine.runfolder import RunFolder
from segprompt.sot.miou import sot_miou

if TYPE_CHECKING:
    from segprompt.sot.bench import SotBenchConfig

SUMMARY_COLUMNS = [
    "dataset", "method", "modality", "shots", "seeds", "images", "miou_sot", "miou_sot_std", "miou_sot_worst",
    "miou_cal", "miou_cal_std", "miou_cal_worst", "s_per_image", "passes_per_image", "peak_mem_mb", "prepare_s",
]  # fmt: skip
SEED_COLUMNS = [
    "dataset", "method", "modality", "shots", "seed", "images", "miou_sot", "miou_cal", "temperature", "threshold",
    "val_nll_before", "val_nll_after", "s_per_image", "passes_per_image", "peak_mem_mb",
]  # fmt: skip

#: the domain of a dataset in the text-vs-visual table (SoT groups its 14 datasets in 7 domains)
DOMAINS = {
    "synthetic-objects": "synthetic", "camvid": "urban", "cityscapes": "urban", "kvasir": "medical", "busi": "medical",
    "ph2": "medical", "sammed2d-demo": "medical", "sammed2d_demo": "medical", "voc": "common", "ade20k": "common",
}  # fmt: skip

METHOD_NOTES = {
    "universal-text": "text: universal decoder, `Text(class name)`, sigmoid of the best candidate's logits",
    "universal-reference": "visual: universal decoder, `Reference(image, mask)` per reference, mean of the k best-candidate sigmoids",
    "persam": "visual: PerSAM on sam-tiny, k-shot mean target embedding, ShowOrTell's PerSAM map (mean similarity inside the final mask)",
    "prototype": "visual: mean reference feature (sam-tiny features by default) matched by cosine, refined by SAM from PerSAM's points; map = mean similarity inside the mask",
    "clipseg": "text: CLIPSeg (tunevlseg VLSM, a tuned prompt learner optional), sigmoid of its logits",
    "clipseg-visual": "visual: CLIPSeg conditioned on the mean CLIP embedding of the k references (crop, blur, darken), sigmoid of its logits",
    "maskclip": "text: MaskCLIP, open_clip's value path in the last block, softmax over the prompted classes of the scaled cosine",
}


# ------------------------------------------------------------------------------- summary


def _stats(values: Sequence[float]) -> tuple[float, float, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    if not v.size:
        return math.nan, math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, float(v.min())


def summarise(rows: Sequence[dict[str, Any]], cal_rows: Sequence[dict[str, Any]], cfg: SotBenchConfig) -> dict[str, Any]:
    """Aggregate results rows.

    Returns ``seeds`` (one row per dataset, method, shots, seed: pooled-confusion mIoU of both
    merges, images, calibration), ``table`` (per dataset, method, shots: mean / std (ddof 1) /
    worst over seeds of both mIoUs, cost per image), ``per_class`` (per-class IoU, mean over
    seeds), ``text_vs_visual``, ``oracle`` (gain over the better of its two methods, per seed
    then averaged) and ``cost``.
    """
    pooled: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["dataset"], r["method"], int(r["shots"]), int(r["seed"]))
        p = pooled.setdefault(key, {"sot": 0, "cal": 0, "n": 0, "seconds": [], "passes": [], "mem": [], "modality": r["modality"], "labels": r["labels"], "hb": r["has_background"]})
        p["sot"] = p["sot"] + np.asarray(r["confusion_sot"], np.int64)
        p["cal"] = p["cal"] + np.asarray(r["confusion_cal"], np.int64)
        p["n"] += 1
        p["seconds"].append(float(r["seconds"]))
        p["passes"].append(float(r["forward_passes"]))
        if r.get("peak_mem_mb") is not None:
            p["mem"].append(float(r["peak_mem_mb"]))
    cals = {(c["dataset"], c["method"], int(c["shots"]), int(c["seed"])): c for c in cal_rows}
    order = {m: i for i, m in enumerate(cfg.row_methods())}
    dorder = {d: i for i, d in enumerate(cfg.datasets)}
    seeds, per_class_acc, per_class_seed = [], defaultdict(list), {}
    for key in sorted(pooled, key=lambda k: (dorder.get(k[0], 99), k[2], order.get(k[1], 99), k[3])):
        p = pooled[key]
        m_sot, pc_sot = sot_miou(p["sot"], p["hb"])
        m_cal, pc_cal = sot_miou(p["cal"], p["hb"])
        c = cals.get(key, {})
        seeds.append({
            "dataset": key[0], "method": key[1], "modality": p["modality"], "shots": key[2], "seed": key[3], "images": p["n"],
            "miou_sot": m_sot, "miou_cal": m_cal, "temperature": (c.get("temperature") or [math.nan])[0],
            "threshold": (c.get("threshold") or [math.nan])[0], "val_nll_before": c.get("nll_before"), "val_nll_after": c.get("nll_after"),
            "s_per_image": float(np.mean(p["seconds"])), "passes_per_image": float(np.mean(p["passes"])),
            "peak_mem_mb": max(p["mem"]) if p["mem"] else None,
        })
        per_class_acc[key[:3]].append((p["labels"], pc_sot, pc_cal))
        per_class_seed[key] = {"sot": pc_sot, "cal": pc_cal, "hb": p["hb"]}
    table = []
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for s in seeds:
        groups[(s["dataset"], s["method"], s["shots"])].append(s)
    for (ds, m, k), ss in groups.items():
        ms, sd, wo = _stats([s["miou_sot"] for s in ss])
        mc, sdc, woc = _stats([s["miou_cal"] for s in ss])
        prep = [c["prepare"]["seconds"] for c in cal_rows if c["dataset"] == ds and c["method"] == m and int(c["shots"]) == k and c.get("prepare")]
        mem = [s["peak_mem_mb"] for s in ss if s["peak_mem_mb"] is not None]
        table.append({
            "dataset": ds, "method": m, "modality": ss[0]["modality"], "shots": k, "seeds": len(ss), "images": int(np.mean([s["images"] for s in ss])),
            "miou_sot": ms, "miou_sot_std": sd, "miou_sot_worst": wo, "miou_cal": mc, "miou_cal_std": sdc, "miou_cal_worst": woc,
            "s_per_image": float(np.mean([s["s_per_image"] for s in ss])), "passes_per_image": float(np.mean([s["passes_per_image"] for s in ss])),
            "peak_mem_mb": max(mem) if mem else None, "prepare_s": float(np.mean(prep)) if prep else None,
        })
    per_class = []
    for (ds, m, k), items in per_class_acc.items():
        labels = items[0][0]
        with warnings.catch_warnings():  # a class without ground truth in every seed: NaN, said once in the table
            warnings.simplefilter("ignore", RuntimeWarning)
            sot = np.nanmean(np.stack([i[1] for i in items]), axis=0)
            cal = np.nanmean(np.stack([i[2] for i in items]), axis=0)
        for j, name in enumerate(labels):
            if not math.isnan(sot[j]) or not math.isnan(cal[j]):
                per_class.append({"dataset": ds, "method": m, "shots": k, "class": name, "iou_sot": float(sot[j]), "iou_cal": float(cal[j])})
    failed: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for r in rows:
        for name, why in (r.get("failed_classes") or {}).items():
            failed[(r["dataset"], r["method"])].setdefault(name, why)
    unprompted = [
        {"dataset": d, "method": m, "classes": ", ".join(sorted(f)), "n": len(f), "reason": next(iter(f.values())).split(";")[0]}
        for (d, m), f in failed.items()
    ]
    return {
        "seeds": seeds, "table": table, "per_class": per_class, "text_vs_visual": _text_vs_visual(table),
        "oracle": _oracle_gain(seeds, per_class_seed, cfg), "unprompted": unprompted,
    }


def _text_vs_visual(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for ds, k in dict.fromkeys((t["dataset"], t["shots"]) for t in table):
        for merge in ("sot", "cal"):
            best = {}
            for mod in ("text", "visual"):
                cand = [t for t in table if t["dataset"] == ds and t["shots"] == k and t["modality"] == mod and not math.isnan(t[f"miou_{merge}"])]
                if cand:
                    best[mod] = max(cand, key=lambda t: t[f"miou_{merge}"])
            if len(best) == 2:
                tx, vi = best["text"], best["visual"]
                out.append({
                    "dataset": ds, "shots": k, "merge": merge, "text": tx["method"], "text_miou": tx[f"miou_{merge}"],
                    "visual": vi["method"], "visual_miou": vi[f"miou_{merge}"], "visual_std": vi[f"miou_{merge}_std"],
                    "winner": "text" if tx[f"miou_{merge}"] >= vi[f"miou_{merge}"] else "visual",
                })
    return out


def _bound(t: Mapping[str, Any], v: Mapping[str, Any], merge: str) -> float:
    """The per-class oracle bound of one seed: each class's better IoU of the two methods on the
    evaluated images, averaged over the classes SoT's mIoU averages (background left out)."""
    best = np.fmax(t[merge], v[merge])  # NaN only where neither method's class has ground truth
    if t["hb"]:
        best = best[1:]
    best = best[~np.isnan(best)]
    return float(best.mean()) if best.size else math.nan


def _oracle_gain(seeds: Sequence[dict[str, Any]], per_class: Mapping[tuple, Mapping[str, Any]], cfg: SotBenchConfig) -> list[dict[str, Any]]:
    """Per (dataset, shots, oracle pair, merge): the validation-chosen oracle's mIoU, the better of
    its two methods, the gain over it, and the ``bound``: per class the better method's IoU **on the
    evaluated images** (a true oracle, not deployable; what choosing the modality per class could
    give at most, ignoring how the two methods' maps interact in the merge)."""
    at = {(s["dataset"], s["method"], s["shots"], s["seed"]): s for s in seeds}
    out = []
    for ds in cfg.datasets:
        for k in cfg.shots:
            for o, t, v in cfg.oracle_pairs():
                for merge in ("sot", "cal"):
                    gains, vals, bests, bounds = [], [], [], []
                    for seed in cfg.seeds:
                        so, st, sv = at.get((ds, o, k, seed)), at.get((ds, t, k, seed)), at.get((ds, v, k, seed))
                        if so and st and sv:
                            best = max(st[f"miou_{merge}"], sv[f"miou_{merge}"])
                            vals.append(so[f"miou_{merge}"])
                            bests.append(best)
                            gains.append(so[f"miou_{merge}"] - best)
                            bounds.append(_bound(per_class[(ds, t, k, seed)], per_class[(ds, v, k, seed)], merge))
                    if gains:
                        out.append({
                            "dataset": ds, "shots": k, "oracle": o, "merge": merge, "seeds": len(gains), "oracle_miou": float(np.mean(vals)),
                            "best_of_pair": float(np.mean(bests)), "gain": float(np.mean(gains)), "gain_std": _stats(gains)[1],
                            "bound": float(np.mean(bounds)), "bound_gain": float(np.mean(bounds) - np.mean(bests)),
                        })
    return out


# ------------------------------------------------------------------------------- report


def domain_of(dataset: str) -> str:
    return DOMAINS.get(str(dataset).lower(), "other")


def _pm(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return MISSING
    return f"{mean:.3f}" if std is None or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def miou_grid(table: Sequence[Mapping[str, Any]], shots: int, merge: str, datasets: Sequence[str], methods: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Method x dataset cells ``mean ± std`` over seeds for one shot count and merge."""
    rows = []
    for m in methods:
        cells = {t["dataset"]: _pm(t[f"miou_{merge}"], t[f"miou_{merge}_std"]) for t in table if t["method"] == m and t["shots"] == shots}
        if cells:
            rows.append({"method": m, **{d: cells.get(d, MISSING) for d in datasets}})
    return rows, ["method", *datasets]


def _tick(method: str) -> str:
    """An x tick for a method: an oracle's two methods on their own lines."""
    if method.startswith("oracle:"):
        return "oracle\n" + "\n+ ".join(short_name(p, 22) for p in method[len("oracle:"):].split("+"))
    return short_name(method, 24)


def variance_plot(seeds: Sequence[Mapping[str, Any]], path: Any, methods: Sequence[str]) -> Any:
    """mIoU per seed per method: one panel per (dataset, shots), a dot per seed (fixed merge filled,
    calibrated hollow), a bar at the mean; one legend beside the panels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from segprompt.engine.report import panel_grid

    panels = list(dict.fromkeys((s["dataset"], s["shots"]) for s in seeds))
    if not panels:
        return None
    rows, cols = panel_grid(len(panels), 2)
    present = [m for m in methods if any(s["method"] == m for s in seeds)]
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.2, 0.75 * len(present) + 1.8) * cols, 3.4 * rows + 0.4), squeeze=False, sharey=True)
    flat = [ax for row in axes for ax in row]
    for ax, (ds, k) in zip(flat, panels):
        n_seeds, n_images = set(), set()
        for x, m in enumerate(present):
            pts = [s for s in seeds if s["dataset"] == ds and s["shots"] == k and s["method"] == m]
            for merge, dx, style in (("sot", -0.12, dict(color="C0", label="SoT merge (fixed 0.2)")), ("cal", 0.12, dict(facecolors="none", edgecolors="C3", label="calibrated merge"))):
                ys = [s[f"miou_{merge}"] for s in pts if not math.isnan(s[f"miou_{merge}"])]
                if ys:
                    ax.scatter([x + dx] * len(ys), ys, s=22, zorder=3, **style)
                    ax.hlines(float(np.mean(ys)), x + dx - 0.1, x + dx + 0.1, color="0.2", linewidth=1.4, label="mean over seeds")
            n_seeds.update(s["seed"] for s in pts)
            n_images.update(s["images"] for s in pts)
        imgs = f"{min(n_images)}" if len(n_images) == 1 else f"{min(n_images or {0})}-{max(n_images or {0})}"
        ax.set_title(f"{short_name(ds, 22)}, {k}-shot (n={len(n_seeds)} seeds x {imgs} images)", fontsize=9)
        ax.set_xticks(range(len(present)))
        ax.set_xticklabels([_tick(m) for m in present], rotation=25, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(present) - 0.4)
        ax.set_ylim(0.0, 1.0)
        ax.grid(axis="y", alpha=0.3)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("mIoU (pooled over images)")
    fig.suptitle("mIoU per seed")
    fig.tight_layout()
    place_legend(fig, flat[: len(panels)])
    return save_figure(fig, path)


def _calibration_table(cal_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for c in cal_rows:
        groups.setdefault((c["dataset"], c["method"], int(c["shots"])), []).append(c)
    out = []
    mean = lambda v: float(np.mean([x for x in v if x is not None])) if any(x is not None for x in v) else None  # noqa: E731
    for (ds, m, k), cs in groups.items():
        out.append({
            "dataset": ds, "method": m, "shots": k, "seeds": len(cs), "val_images": int(np.mean([len(c["val_ids"]) for c in cs])),
            "temperature": mean([np.mean(c["temperature"]) for c in cs]),
            "threshold": mean([None if c["threshold"] is None else float(np.mean(c["threshold"])) for c in cs]),
            "nll_before": mean([c["nll_before"] for c in cs]), "nll_after": mean([c["nll_after"] for c in cs]),
            "val_miou_sot": mean([_val_miou(c, "sot") for c in cs]), "val_miou_cal": mean([_val_miou(c, "cal") for c in cs]),
        })
    return out


def _val_miou(cal_row: Mapping[str, Any], merge: str) -> float | None:
    """The validation mIoU of one calibration row's merge: the mean of its per-class IoUs (classes with
    ground truth; background, label 0, left out where the dataset has one)."""
    ious = cal_row.get(f"val_iou_{merge}") or []
    vals = [v for i, v in enumerate(ious) if v is not None and not (cal_row.get("has_background") and i == 0)]
    return float(np.mean(vals)) if vals else None


def write_reports(
    run: RunFolder, summary: Mapping[str, Any], cfg: SotBenchConfig, notes: Mapping[str, str], cal_rows: Sequence[Mapping[str, Any]] | None = None
) -> None:
    """summary.csv, seeds.csv, per_class.csv, text_vs_visual.csv, oracle.csv, calibration.csv,
    variance.png and report.md in the run folder. ``cal_rows``: the calibration rows of every shard
    in canonical order (default: read from the folder's calibration*.jsonl and put in that order)."""
    from segprompt.sot.bench import canonical_calibration
    from segprompt.sot.methods import MISSING_METHODS

    write_csv(run.path / "summary.csv", summary["table"], SUMMARY_COLUMNS)
    write_csv(run.path / "seeds.csv", summary["seeds"], SEED_COLUMNS)
    write_csv(run.path / "per_class.csv", summary["per_class"], ["dataset", "method", "shots", "class", "iou_sot", "iou_cal"])
    tv_cols = ["dataset", "shots", "merge", "text", "text_miou", "visual", "visual_miou", "visual_std", "winner"]
    write_csv(run.path / "text_vs_visual.csv", summary["text_vs_visual"], tv_cols)
    or_cols = ["dataset", "shots", "oracle", "merge", "seeds", "oracle_miou", "best_of_pair", "gain", "gain_std", "bound", "bound_gain"]
    write_csv(run.path / "oracle.csv", summary["oracle"], or_cols)
    if cal_rows is None:
        cal_rows = canonical_calibration(run.log("calibration").rows(), cfg)
    cal_table = _calibration_table(cal_rows)
    cal_cols = ["dataset", "method", "shots", "seeds", "val_images", "temperature", "threshold", "nll_before", "nll_after", "val_miou_sot", "val_miou_cal"]
    write_csv(run.path / "calibration.csv", cal_table, cal_cols)
    plot = variance_plot(summary["seeds"], run.path / "variance.png", cfg.row_methods())

    described = json.loads((run.path / "methods.json").read_text()) if (run.path / "methods.json").exists() else {}
    size = "518 x 518 (SoT's resize: images and references bilinear, labels nearest)" if cfg.size != "original" and int(cfg.size) == 518 else (
        "the original resolution" if cfg.size == "original" else f"{cfg.size} x {cfg.size}")
    method_lines = []
    for m in cfg.methods:
        ckpt = (described.get(m) or {}).get("checkpoint")
        method_lines.append(f"- `{m}`: {METHOD_NOTES.get(m, 'see methods.json')}" + (f"; weights `{ckpt}`" if ckpt else ""))
    for o, t, v in cfg.oracle_pairs():
        method_lines.append(f"- `{o}`: per class the better of `{t}` and `{v}` by validation IoU (ties and classes absent from validation: `{t}`)")
    lines = [
        "# Show or Tell: text prompts against visual references",
        "",
        f"Shots {', '.join(map(str, cfg.shots))}; seeds {', '.join(map(str, cfg.seeds))}; evaluated at {size}.",
        "",
        "Datasets (parts):",
        "",
        *[f"- `{d}` ({domain_of(d)}): {notes.get(d, '')}" for d in cfg.datasets],
        "",
        "Methods:",
        "",
        *method_lines,
        "",
        *(["Not built yet, so not in this run: " + "; ".join(f"`{k}` ({v.split(' (')[0]})" for k, v in MISSING_METHODS.items()) + ".", ""] if MISSING_METHODS else []),
        "Merges: **SoT** = SoT's rule (a zero background map, probabilities <= 0.2 zeroed where the dataset has background, "
        "argmax); **cal** = the calibrated merge, fitted per (method, shots, seed) on the validation part: "
        + ("the background threshold that maximises the validation mIoU" if cfg.calibration.get("fit") == "miou" else "temperature and threshold minimising the NLL")
        + f" (options {dict(cfg.calibration)}). mIoU is SoT's: from the confusion matrix pooled over "
        "the images of one seed, classes without ground truth left out, background left out where the dataset has one. "
        "± is the standard deviation over seeds (ddof 1); worst is the lowest seed. References: k per class drawn per seed, "
        "never a validation or evaluated image, minimum mask area "
        + (f"{cfg.min_area}" if cfg.min_area is not None else "SoT's per-dataset rule (VOC 10 %, ADE20K 4 %, Cityscapes 1 %, others 0)")
        + "; their ids are in every row of results.jsonl.",
        "",
    ]
    table = summary["table"]
    for k in cfg.shots:
        for merge, what in (("sot", "SoT merge (fixed 0.2)"), ("cal", "calibrated merge")):
            grid, cols = miou_grid(table, k, merge, cfg.datasets, cfg.row_methods())
            if grid:
                lines += [f"## mIoU, {k}-shot, {what}", "", "Mean ± std over seeds.", "", markdown_table(grid, cols), ""]
    lines += ["## All numbers", "", "Per (dataset, method, shots); also in summary.csv (per seed: seeds.csv; per class: per_class.csv).", "", markdown_table(table, SUMMARY_COLUMNS), ""]
    if summary["text_vs_visual"]:
        tv = [{**r, "domain": domain_of(r["dataset"])} for r in summary["text_vs_visual"]]
        lines += ["## Text vs visual", "", "Best text method against best visual method (by mean mIoU over seeds), per dataset and domain.", "",
                  markdown_table(tv, ["domain", *tv_cols]), ""]
    if plot is not None:
        lines += ["## Variance over seeds", "", "Each dot is one seed's mIoU (the seed draws the references; text methods take none, so their dots coincide).", "", f"![mIoU per seed]({plot.name})", ""]
    if summary["oracle"]:
        lines += ["## Oracle", "", "Two oracles per (text, visual) pair. **oracle_miou**: the `oracle:` rows, which pick each class's modality by "
                  "validation IoU and merge (deployable); gain = its mIoU minus the better of its two methods, per seed, then averaged. In the "
                  "merge one method's maps compete with the other's for every pixel, so that gain can be negative. **bound**: per class the "
                  "better method's IoU on the evaluated images themselves (a true oracle, not deployable), averaged over classes; bound_gain = "
                  "bound minus the better method. It is what choosing the modality per class could give at most.", "", markdown_table(summary["oracle"], or_cols), ""]
    cost_cols = ["dataset", "method", "shots", "s_per_image", "passes_per_image", "peak_mem_mb", "prepare_s"]
    lines += [
        "## Cost",
        "",
        "Per evaluated image: wall seconds, forward passes (images through an image encoder + mask-decoder calls; "
        "a reference image is encoded once per seed and its features kept, so `universal-reference` pays for them on the first image), peak GPU memory (MiB; none on CPU). prepare_s: "
        "the work done once per seed and k before the first image (PerSAM's target embeddings, the prototypes, CLIPSeg's "
        "reference embeddings, a text method's class-name embeddings). A text method's maps are computed once per image "
        "and reused over shots and seeds (its cost is that one computation's). Oracle rows cost both of their methods.",
        "",
        markdown_table(table, cost_cols),
        "",
    ]
    if cal_table:
        lines += ["## Calibration", "", "Mean over seeds of the fitted temperature, threshold, validation NLL (before: SoT's T = 1, t = 0.2; an mIoU fit reports the NLL too, which it does not minimise) and validation mIoU of SoT's merge and of the calibrated one.", "", markdown_table(cal_table, cal_cols), ""]
    if summary.get("unprompted"):
        lines += [
            "## Classes a method could not prompt",
            "",
            "Their map is 0 (so they are never predicted; without background, an all-zero stack is the first class). "
            "Text: a name outside a closed vocabulary; visual: no eligible reference image (errors.jsonl has the counts).",
            "",
            markdown_table(summary["unprompted"], ["dataset", "method", "n", "classes", "reason"]),
            "",
        ]
    n_err = len(run.errors.rows())
    lines += [f"Skipped inputs or classes: {n_err} (see errors.jsonl)." if n_err else "Skipped inputs: none.", "", run.timing_text(), ""]
    run.write_text("report.md", "\n".join(lines))


def format_summary(summary: Mapping[str, Any]) -> str:
    cols = ["dataset", "method", "shots", "seeds", "images", "miou_sot", "miou_sot_std", "miou_cal", "miou_cal_std", "s_per_image", "passes_per_image"]
    return text_table(summary["table"], cols)
