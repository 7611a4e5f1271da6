"""Train-on-A / test-on-B: one finetuned SAM per prompt strategy, each evaluated on every strategy.

The PointPrompt study trained SAM's prompt encoder once per automated strategy and compared the
models across strategies. :func:`run_matrix` does that: ``<out>/train_<strategy>/`` holds each
finetuning run (resumable), and ``<out>`` the matrix (``matrix.csv``, ``report.md``,
``matrix.png``), evaluated on the shared validation split, with the un-finetuned model as the
``none`` row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segprompt.engine.report import markdown_table, text_table, write_csv
from segprompt.engine.runfolder import RunFolder
from segprompt.fileio import atomic_path

from pointprompt.finetune import FinetuneConfig, _load_model, evaluate, finetune_sam, load_split


def _heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.2, 0.8 * len(rows) + 1.6))
    im = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("tested with")
    ax.set_ylabel("trained with")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color="white" if values[i, j] < 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="mean IoU")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def run_matrix(strategies: Sequence[str], out: str | Path, base: dict[str, Any], train: Sequence[str] = ("prompt_encoder",), n_positive: int = 3, n_negative: int = 1) -> dict[str, Any]:
    """Finetune one model per strategy (resuming finished or interrupted runs) and test each on all."""
    from segprompt.models import create_segmenter

    out = Path(out)
    run = RunFolder(out, {"suite": "finetune-matrix", "strategies": list(strategies), "train": list(train), "n_positive": n_positive, "n_negative": n_negative, **base}, volatile=("device",))
    configs = {
        s: FinetuneConfig(**base, train=list(train), prompts=s, n_positive=n_positive, n_negative=n_negative, eval_strategy=s, eval_positive=n_positive, eval_negative=n_negative)
        for s in strategies
    }
    for s, cfg in configs.items():
        folder = out / f"train_{s}"
        if (folder / "summary.json").exists():
            continue
        finetune_sam(cfg, folder, resume=(folder / "checkpoints" / "last.pt").exists(), progress=False)
    samples, _, val_idx = load_split(next(iter(configs.values())))
    val = [samples[i] for i in val_idx]
    done = {(r["train"], r["test"]) for r in run.results}
    models = {"none": _load_model(next(iter(configs.values())))}
    for s in strategies:
        models[s] = create_segmenter("sam", checkpoint=str(out / f"train_{s}" / "sam_best.pth"), device=base.get("device", "cpu"))
    for train_name, seg in models.items():
        for test in strategies:
            if (train_name, test) in done:
                continue
            m = evaluate(seg, val, configs[test])
            run.results.append({"train": train_name, "test": test, "iou": m["iou"], "dice": m["dice"], "n": m["n"]})
    rows = run.results.rows()
    table = {(r["train"], r["test"]): r["iou"] for r in rows}
    row_names = ["none", *strategies]
    values = np.array([[table[(a, b)] for b in strategies] for a in row_names])
    write_csv(out / "matrix.csv", rows, ["train", "test", "iou", "dice", "n"])
    pivot = [{"trained with": a, **{b: table[(a, b)] for b in strategies}} for a in row_names]
    cols = ["trained with", *strategies]
    _heatmap(values, row_names, list(strategies), out / "matrix.png")
    report = [
        "# Train-on-A / test-on-B prompt-strategy matrix",
        "",
        f"Each row is a SAM finetuned ({', '.join(train)}) with one strategy's prompts ({n_positive} + {n_negative} points); "
        f"each column tests it with one strategy on the {len(val)} validation images of `{base['dataset']}`. Mean IoU; "
        "`none` is the model before finetuning.",
        "",
        markdown_table(pivot, cols),
        "",
        "![matrix](matrix.png)",
        "",
    ]
    run.write_text("report.md", "\n".join(report))
    return {"matrix": pivot, "table_text": text_table(pivot, cols), "values": values.tolist()}
