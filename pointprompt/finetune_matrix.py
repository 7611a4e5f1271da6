"""Train-on-A / test-on-B: one finetuned SAM per prompt strategy, each evaluated on every strategy.

The PointPrompt study trained SAM's prompt encoder once per automated strategy and compared the
models across strategies. :func:`run_matrix` does that: ``<out>/train_<strategy>/`` holds each
finetuning run (its checkpoint chosen on the validation split), and ``<out>`` the matrix
(``matrix.csv``, ``report.md``, ``matrix.png``), evaluated on the shared TEST split (source images
held out of every training and validation, :func:`pointprompt.finetune.split_by_image`; the
validation split only when ``test_fraction`` is 0), with the un-finetuned model as the ``none``
row. Rerunning resumes: finished trainings are not retrained and finished cells are not
re-evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segprompt.devices import check_device
from segprompt.engine.report import markdown_table, save_figure, short_name, text_table, write_csv
from segprompt.engine.runfolder import RunFolder

from pointprompt.finetune import FinetuneConfig, _load_model, describe_model, evaluate, finetune_sam, format_lr, load_split, plural


def heatmap_figure(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], n_test: int, dataset: str = "") -> Any:
    """The matrix as a figure: rows = trained with, columns = tested with, cells = mean IoU."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.6, 0.8 * len(rows) + 1.9))
    im = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("tested with")
    ax.set_ylabel("trained with")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color="white" if values[i, j] < 0.6 else "black", fontsize=8)
    where = f"{short_name(dataset, 24)}, " if dataset else ""
    ax.set_title(f"Train on A, test on B\n{where}n={n_test} test images", fontsize=10)
    fig.colorbar(im, ax=ax, label="mean IoU")
    fig.tight_layout()
    return fig


def _heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: Path, n_test: int, dataset: str = "") -> Path:
    return save_figure(heatmap_figure(values, rows, cols, n_test, dataset), path)


def _evaluate_cells(run: RunFolder, todo: Sequence[tuple[str, str]], configs: dict[str, FinetuneConfig], out: Path, device: str, progress: bool) -> None:
    """Evaluate the (trained with, tested with) cells still missing on the test split (the
    validation split when there is none); one results row each."""
    from segprompt.models import create_segmenter

    first = next(iter(configs.values()))
    samples, _, val_idx, test_idx = load_split(first, run=run, progress=progress)
    held = [samples[i] for i in (test_idx or val_idx)]
    models: dict[str, Any] = {}
    for train_name, test in todo:
        if train_name not in models:
            models[train_name] = _load_model(first) if train_name == "none" else create_segmenter("sam", checkpoint=str(out / f"train_{train_name}" / "sam_best.pth"), device=device)
        m = evaluate(models[train_name], held, configs[test], run, progress=progress)
        run.results.append({"train": train_name, "test": test, "iou": m["iou"], "dice": m["dice"], "n": m["n"], "split": "test" if test_idx else "validation"})


def run_matrix(
    strategies: Sequence[str], out: str | Path, base: dict[str, Any], train: Sequence[str] = ("prompt_encoder",), n_positive: int = 3, n_negative: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Finetune one model per strategy (resuming finished or interrupted runs) and test each on all.

    ``base``: FinetuneConfig fields shared by every model (a preset's, see
    :func:`pointprompt.finetune.preset_fields`); each model trains on its strategy's prompts and
    is tested with every strategy at the same budget (``budget="auto"``: the study's).
    """
    from segprompt.data.registry import load_dataset

    check_device(base.get("device", "cpu"))
    out = Path(out)
    own = ("train", "prompts", "n_positive", "n_negative", "eval_strategy", "eval_positive", "eval_negative")
    shared = {k: v for k, v in base.items() if k not in own}
    configs = {
        s: FinetuneConfig(**shared, train=list(train), prompts=s, n_positive=n_positive, n_negative=n_negative, eval_strategy=s, eval_positive=None, eval_negative=None)
        for s in strategies
    }
    load_dataset(base["dataset"], **base.get("dataset_kwargs", {}))  # a wrong --dataset or --root fails before the folder is made
    run = RunFolder(out, {"suite": "finetune-matrix", **shared, "strategies": list(strategies), "train": list(train), "n_positive": n_positive, "n_negative": n_negative}, volatile=("device",))
    for s, cfg in configs.items():
        finetune_sam(cfg, out / f"train_{s}", progress=progress)
    row_names = ["none", *strategies]
    done = {(r["train"], r["test"]) for r in run.results}
    todo = [(a, b) for a in row_names for b in strategies if (a, b) not in done]
    run.announce(done=len(row_names) * len(strategies) - len(todo), todo=len(todo), unit="(model, strategy) cells")
    if todo:
        _evaluate_cells(run, todo, configs, out, base.get("device", "cpu"), progress)
    run.finish(len(todo))
    rows = run.results.rows()
    table = {(r["train"], r["test"]): r["iou"] for r in rows}
    n_test = max(int(r["n"]) for r in rows)
    values = np.array([[table[(a, b)] for b in strategies] for a in row_names])
    write_csv(out / "matrix.csv", rows, ["train", "test", "iou", "dice", "n"])
    pivot = [{"trained with": a, **{b: table[(a, b)] for b in strategies}} for a in row_names]
    cols = ["trained with", *strategies]
    _heatmap(values, row_names, list(strategies), out / "matrix.png", n_test, base["dataset"])
    _write_report(run, pivot, cols, configs, train, n_test, split=rows[0].get("split", "validation"))
    return {"matrix": pivot, "table_text": text_table(pivot, cols), "values": values.tolist()}


def _write_report(run: RunFolder, pivot: list[dict[str, Any]], cols: list[str], configs: dict[str, FinetuneConfig], train: Sequence[str], n_test: int, split: str = "test") -> None:
    cfg = next(iter(configs.values()))
    held = (
        f"{plural(n_test, 'held-out test image')} (split by source image, never used for training or for choosing a checkpoint)"
        if split == "test" else f"{plural(n_test, 'validation image')} (no test split: the images that chose each checkpoint)"
    )
    recipe = f" with preset `{cfg.preset}`" if cfg.preset else ""
    n_err = len(run.errors.rows())
    report = [
        "# Train-on-A / test-on-B prompt-strategy matrix",
        "",
        f"Model {describe_model(cfg)}.",
        "",
        f"Each row is that model finetuned ({', '.join(train)}){recipe} with one strategy's prompts ({cfg.n_positive} + {cfg.n_negative} points) "
        f"for up to {plural(cfg.epochs, 'epoch')} at lr {format_lr(cfg.lr)} (runs in `train_<strategy>/`, checkpoint chosen on validation); "
        f"each column tests it with one strategy on the same {held} of `{cfg.dataset}`. Mean IoU; `none` is the model before finetuning.",
        "",
        markdown_table(pivot, cols),
        "",
        "![matrix](matrix.png)",
        "",
        f"Skipped inputs: {n_err} (see errors.jsonl)." if n_err else "Skipped inputs: none.",
        "",
        run.timing_text(),
        "",
    ]
    run.write_text("report.md", "\n".join(report))
