"""Words for the finetuning's logs and report: the per-epoch and resume lines, the epoch table's
columns, and report.md / summary.csv / validation.png of a run folder. Re-exported by
:mod:`pointprompt.finetune`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from segprompt.engine.report import format_lr, plural
from segprompt.engine.runfolder import RunFolder

from pointprompt.finetune_config import FinetuneConfig


def _epoch_line(out: Path, row: dict[str, Any], epochs: int) -> str:
    scores = f"val IoU {row['val_iou']:.4f}, val Dice {row['val_dice']:.4f}"
    if row.get("val_loss") is not None:
        scores += f", val loss {row['val_loss']:.4f}"
    if row["epoch"] == 0:
        return f"{out.name}: before finetuning: {scores}"
    loss = "" if row["train_loss"] is None else f"train loss {row['train_loss']:.4f}, "
    return f"{out.name}: epoch {row['epoch']}/{epochs}: {loss}{scores}, lr {format_lr(row['lr'])}, {row['seconds']:.1f} s"


def _resume_line(out: Path, cfg: FinetuneConfig, epoch: int, batch: int, steps_per_epoch: int, global_step: int, stopped: bool) -> str:
    if epoch >= cfg.epochs or (stopped and batch == 0):
        return f"resuming {out}: training finished after {plural(epoch, 'epoch')}; writing the final checkpoints and report"
    return (
        f"resuming {out}: epoch {epoch + 1} batch {batch + 1} of {plural(cfg.epochs, 'epoch')} "
        f"({steps_per_epoch} batches each; {global_step} of {steps_per_epoch * cfg.epochs} steps already done)"
    )


HISTORY_COLUMNS = ["epoch", "train_loss", "val_iou", "val_dice", "lr", "seconds"]


def history_columns(cfg: FinetuneConfig) -> list[str]:
    """The epoch table's columns (``val_loss`` when it chooses the checkpoint)."""
    return HISTORY_COLUMNS[:4] + ["val_loss"] + HISTORY_COLUMNS[4:] if cfg.select_on == "val_loss" else list(HISTORY_COLUMNS)


def _epoch_rows(run: RunFolder) -> list[dict[str, Any]]:
    return sorted((r for r in run.results.rows() if r.get("kind", "epoch") == "epoch"), key=lambda r: r["epoch"])


def _table_rows(history: Sequence[dict[str, Any]], missing: str) -> list[dict[str, Any]]:
    """History rows for tables: lr as ``1e-04``, seconds to 0.1 s, the baseline's absent train loss as ``missing``."""
    return [
        {**h, "train_loss": missing if h.get("train_loss") is None else h["train_loss"], "lr": format_lr(h.get("lr"), missing), "seconds": f"{h.get('seconds') or 0:.1f}"}
        for h in history
    ]


def describe_model(cfg: FinetuneConfig) -> str:
    """What the finetuned model is, for a report (sam-tiny is a demo model, not SAM)."""
    from pointprompt.bench import MODEL_NOTES

    if cfg.model is None:
        return f"SAM checkpoint `{cfg.checkpoint}`"
    note = MODEL_NOTES.get(cfg.model)
    return f"`{cfg.model}` \u2014 {note}" if note else f"`{cfg.model}`"


def _validation_plot(run: RunFolder, history: Sequence[dict[str, Any]], cfg: FinetuneConfig, n_val: int) -> None:
    from segprompt.engine.report import Series, line_plot, short_name

    xs = [h["epoch"] for h in history]
    series = {"IoU": Series(xs, [h["val_iou"] for h in history], n=n_val), "Dice": Series(xs, [h["val_dice"] for h in history], n=n_val)}
    title = f"Validation while finetuning {short_name(cfg.model or cfg.checkpoint, 24)}"
    line_plot({short_name(cfg.dataset): series}, run.path / "validation.png", xlabel="epoch (0 = before finetuning)", ylabel="mean over validation images", title=title)


def _test_lines(result: dict[str, Any], cfg: FinetuneConfig) -> list[str]:
    test = result.get("test")
    if not test:
        return [f"No test split (`test_fraction` {cfg.test_fraction:g}): the numbers below are validation numbers, on the images that chose the checkpoint.", ""]
    b, a = test["before"], test["best"]
    return [
        f"**Test** ({cfg.eval_description}; {plural(a['n'], 'held-out image')}, split by source image, never seen in training or "
        f"validation; the checkpoint of epoch {result['best_epoch']}, chosen on validation {'loss' if result['selected_on'] == 'val_loss' else 'Dice'}): "
        f"IoU {b['iou']:.4f} before finetuning -> {a['iou']:.4f}; Dice {b['dice']:.4f} -> {a['dice']:.4f}.",
        "",
    ]


def _write_report(run: RunFolder, result: dict[str, Any], history: list[dict[str, Any]], cfg: FinetuneConfig) -> None:
    from segprompt.engine.report import markdown_table, write_csv

    columns = history_columns(cfg)
    write_csv(run.path / "summary.csv", _table_rows(history, ""), columns)
    _validation_plot(run, history, cfg, result["val_images"])
    base = result["baseline"]
    best_epoch = result.get("best_epoch")
    best = next((h for h in history if h["epoch"] == best_epoch), None) or max(history, key=lambda h: h["val_dice"])
    criterion = "validation loss" if cfg.select_on == "val_loss" else "validation Dice"
    n_err = len(run.errors.rows())
    ran = plural(result["epochs_run"], "epoch")
    if result["stopped_early"]:
        ran += f" of {cfg.epochs} (stopped early: no better {criterion} for {plural(cfg.early_stop, 'epoch')})"
    recipe = f" (preset `{cfg.preset}`)" if cfg.preset else ""
    n_test = result.get("test_images", 0)
    lines = [
        "# SAM finetuning",
        "",
        f"Model {describe_model(cfg)}.",
        "",
        f"Trained {', '.join(cfg.train)}{recipe} ({result['trainable_parameters']:,} trainable parameters) with `{cfg.prompts}` prompts for "
        f"{ran}, lr {format_lr(cfg.lr)} ({cfg.schedule} schedule), batch size {cfg.batch_size}, "
        f"seed {cfg.seed}; {result['train_images']} training, {result['val_images']} validation and {n_test} test images of `{cfg.dataset}` "
        f"(split by source image).",
        "",
        *_test_lines(result, cfg),
        f"Validation ({cfg.eval_description}): IoU {base['val_iou']:.4f} before, "
        f"{best['val_iou']:.4f} at the epoch chosen on {criterion} ({best['epoch']}); Dice {base['val_dice']:.4f} -> {best['val_dice']:.4f}.",
        "",
        markdown_table(_table_rows(history, "\u2013"), columns, floatfmt=".4f"),
        "",
        "![validation](validation.png)",
        "",
        "Checkpoints (segment-anything layout, LoRA merged): `sam_best.pth` (the epoch chosen on validation), `sam_last.pth`; training state: `checkpoints/`.",
        "",
        f"Skipped inputs: {n_err} (see errors.jsonl)." if n_err else "Skipped inputs: none.",
        "",
        run.timing_text(),
        "",
    ]
    run.write_text("report.md", "\n".join(lines))
