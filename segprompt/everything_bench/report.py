"""The report of the everything benchmark: summary.csv, report.md, the overlay tiles and grid."""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segprompt.engine.report import markdown_table, short_name, write_csv
from segprompt.engine.runfolder import RunFolder
from segprompt.fileio import atomic_path

if TYPE_CHECKING:
    from segprompt.everything_bench.bench import EverythingBenchConfig

SUMMARY_COLUMNS = ["dataset", "model", "ap50", "ap", "pq", "sq", "rq", "mean_best_iou", "images", "instances", "predictions", "s_per_image"]
HEADERS = ["dataset", "model", "AP50", "AP", "PQ", "SQ", "RQ", "mean best IoU", "n images", "GT instances", "predictions", "s/image"]


def _colour(i: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(str(i).encode()))
    return rng.integers(40, 256, 3).astype(np.float64)


def overlay_tile(image: np.ndarray, labels: np.ndarray, size: int = 256) -> np.ndarray:
    """``image`` with each instance of ``labels`` (0 = none) blended in its own colour, boundaries
    darkened, scaled so the longest side is ``size``."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    out = img[..., :3].astype(np.float64)
    for v in np.unique(labels):
        if v <= 0:
            continue
        m = labels == v
        out[m] = 0.45 * out[m] + 0.55 * _colour(int(v))
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    out[edge] *= 0.3
    step = max(1, int(np.ceil(max(labels.shape) / size)))
    return out[::step, ::step].clip(0, 255).astype(np.uint8)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:80]


def tile_path(run: RunFolder, ds_key: str, image_id: str, what: str) -> Path:
    return run.path / "overlays" / _safe(short_name(ds_key, 40)) / f"{_safe(image_id)}__{_safe(what)}.png"


def write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def overlay_grid(run: RunFolder, cfg: EverythingBenchConfig, images: dict[str, list[str]]) -> Path | None:
    """overlays.png: one row per drawn image, columns ground truth then each model."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    from segprompt.engine.report import save_figure

    rows = [(d, i) for d in cfg.datasets for i in images.get(d, [])]
    rows = [(d, i) for d, i in rows if tile_path(run, d, i, "gt").exists()]
    if not rows:
        return None
    cols = ["gt", *cfg.models]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.6 * len(cols), 2.2 * len(rows)), squeeze=False)
    for r, (d, i) in enumerate(rows):
        for c, what in enumerate(cols):
            ax = axes[r][c]
            ax.axis("off")
            p = tile_path(run, d, i, what)
            if p.exists():
                ax.imshow(np.asarray(Image.open(p)))
            if r == 0:
                ax.set_title("ground truth" if what == "gt" else what, fontsize=9)
            if c == 0:
                ax.text(-0.05, 0.5, f"{short_name(d, 14)}\n{short_name(i, 14)}", transform=ax.transAxes, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, run.path / "overlays.png")


def write_reports(run: RunFolder, summary: dict[str, Any], cfg: EverythingBenchConfig, s: dict[str, Any], drawn: dict[str, list[str]]) -> None:
    write_csv(run.path / "summary.csv", summary["table"], SUMMARY_COLUMNS)
    grid = overlay_grid(run, cfg, drawn)
    gt_rule = {
        "auto": f"binary masks: connected components ({cfg.connectivity}-connectivity); label maps: components of the chosen classes; COCO JSON: its annotations (crowd ignored)",
        "components": f"connected components ({cfg.connectivity}-connectivity)",
        "labels": "instance label images (each id > 0 one instance" + (f", {cfg.ignore_id} ignored)" if cfg.ignore_id is not None else ")"),
        "coco": "COCO annotations (crowd = ignore region)",
    }[cfg.gt]
    classes = "; ".join(f"{d}: {', '.join(c)}" for d, c in cfg.classes.items())
    lines = [
        "# Segment-everything instance benchmark",
        "",
        f"Models {', '.join(f'`{m}`' for m in cfg.models)}; settings: points_per_side {s.get('points_per_side')}, "
        f"pred_iou_thresh {s.get('pred_iou_thresh')}, stability_score_thresh {s.get('stability_score_thresh')}, "
        f"box_nms_thresh {s.get('box_nms_thresh')}, min_mask_region_area {s.get('min_mask_region_area')} (all in config.yaml).",
        "",
        f"Ground truth: {gt_rule}" + (f"; instance classes {classes}" + (" (other classes ignored)" if cfg.other_classes == "ignore" else " (other classes are background)") if classes else "")
        + (f"; instances under {cfg.min_gt_area} px dropped" if cfg.min_gt_area else "") + ".",
        "",
        "## Instance metrics",
        "",
        f"AP50 / AP: COCO's rule (pycocotools COCOeval), class-agnostic: predictions ranked by predicted IoU, at most {cfg.max_dets} "
        "per image, greedy matching at each IoU threshold (0.50 for AP50; 0.50:0.05:0.95 averaged for AP), 101-point "
        "interpolated precision over the dataset. PQ = SQ x RQ (panopticapi) on the non-overlapping prediction (the masks "
        "painted largest first): matches at IoU > 0.5, SQ their mean IoU, RQ = TP / (TP + FP/2 + FN/2). Every unmatched "
        "prediction counts as a false positive (an everything model also segments unannotated objects and background), "
        "except one lying more than half in the ignore region. mean best IoU: each ground-truth instance's best IoU over "
        "all predicted masks (everything recall). s/image: segment_everything's seconds per image (encoding included).",
        "",
        markdown_table(summary["table"], SUMMARY_COLUMNS, headers=HEADERS),
        "",
    ]
    if grid is not None:
        lines += ["## Overlays", "", "Ground-truth instances and each model's masks (label map, largest painted first), each in its own colour.", "", f"![overlays]({grid.name})", ""]
    n_err = len(run.errors.rows())
    lines += [f"Skipped inputs: {n_err} (see errors.jsonl)." if n_err else "Skipped inputs: none.", "", run.timing_text(), ""]
    run.write_text("report.md", "\n".join(lines))


