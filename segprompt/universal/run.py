"""A universal training run: data, the engine's loop, validation, export (see :mod:`segprompt.universal.train`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segprompt.errors import DataError, SegpromptError
from segprompt.universal.train import VOLATILE, UniversalStep, UniversalTrainConfig, build_model, param_groups

log = logging.getLogger("segprompt.universal")

__all__ = ["train_universal", "dataset_vocabulary", "EXPORT_NAME"]

EXPORT_NAME = "universal.safetensors"


def dataset_vocabulary(dataset: Any) -> tuple[str, ...]:
    """The class names a dataset can teach: its ``class_names`` (without ``background``), else
    the texts of its samples (binary sets: the dataset's text)."""
    names = [n for n in getattr(dataset, "class_names", ()) if n and n != "background"]
    if names:
        return tuple(names)
    categories = getattr(dataset, "categories", None)  # COCO readers know their category names
    if categories:
        return tuple(dict.fromkeys(c["name"] if isinstance(c, dict) else str(c) for c in categories))
    texts: list[str] = []
    for i in range(len(dataset)):  # every sample: a class may first appear late
        texts += list(dataset[i].texts[:1])
    if not texts:
        raise DataError(f"dataset {getattr(dataset, 'name', '?')} has neither class names nor texts: the text prompts have nothing to learn")
    return tuple(dict.fromkeys(texts))


def write_model_config(model: Any, out: Path) -> Path:
    """``checkpoints/universal_config.json``: the model's config (its vocabulary included), which
    makes the run's ``best.pt`` / ``last.pt`` loadable by ``load_universal``."""
    from segprompt.fileio import atomic_write_text

    path = out / "checkpoints" / "universal_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(model.cfg.to_dict(), indent=2))
    return path


def split_off(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, validation): ``fraction`` of the samples, drawn by a seeded permutation of the
    sorted ids (so the split does not depend on the reader's order), held out for validation."""
    ids = list(dataset.ids)
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    perm = [order[i] for i in np.random.default_rng([seed, 7]).permutation(len(order))]
    n_val = max(1, int(round(fraction * len(ids))))
    return dataset.subset(sorted(perm[n_val:])), dataset.subset(sorted(perm[:n_val]))


def _load(dataset: str, kwargs: dict[str, Any]) -> Any:
    from segprompt.data.registry import load_dataset

    return load_dataset(dataset, **kwargs)


def _scene(dataset: Any, i: int, run: Any) -> Any:
    from segprompt.universal.train_data import scene_from_sample

    try:
        scene = scene_from_sample(dataset[i])
    except SegpromptError as exc:
        run.record_error_once(str(i), exc)
        return None
    if len(scene.masks) == 0:
        run.record_error_once(scene.id, "no object to learn from")
        return None
    return scene


def train_universal(cfg: UniversalTrainConfig, out: str | Path, dataset: Any = None, val: Any = None) -> dict[str, Any]:
    """Train (or resume) into ``out``; returns ``summary.json``'s content. ``dataset`` / ``val``:
    ready datasets instead of ``cfg.dataset`` / ``cfg.val_dataset``."""
    from segprompt.devices import check_device
    from segprompt.engine.loop import FitConfig, FitTask, fit, load_best
    from segprompt.engine.runfolder import RunFolder
    from segprompt.engine.training import seed_everything
    from segprompt.fileio import atomic_write_text
    from segprompt.models.universal import UniversalSegmenter
    from segprompt.universal.checkpoint import save_universal
    from segprompt.universal.evaluate import evaluate_scenes

    check_device(cfg.device)
    out = Path(out)
    dataset = dataset if dataset is not None else _load(cfg.dataset, cfg.dataset_kwargs)
    if cfg.limit is not None:
        dataset = dataset.subset(list(range(min(cfg.limit, len(dataset)))))
    if val is None and cfg.val_fraction:
        dataset, val = split_off(dataset, cfg.val_fraction, cfg.seed)
    val = val if val is not None else _load(cfg.val_dataset or cfg.dataset, cfg.val_kwargs)
    run = RunFolder(out, {"suite": "train-universal", **cfg.to_dict()}, volatile=VOLATILE)
    seed_everything(cfg.seed)
    vocabulary = dataset_vocabulary(dataset)
    model = build_model(cfg, vocabulary).to(cfg.device)
    write_model_config(model, out)
    val_scenes = [s for s in (_scene(val, i, run) for i in range(len(val))) if s is not None]
    step = UniversalStep(model, cfg, vocabulary)

    def train_step(batch: list[int], epoch: int) -> tuple[Any, dict[str, float]]:
        scenes = [s for s in (_scene(dataset, i, run) for i in batch) if s is not None]
        if not scenes:
            return None, {}
        return step(scenes, np.random.default_rng([cfg.seed, epoch, *batch]))

    def evaluate(epoch: int) -> dict[str, float]:
        seg = UniversalSegmenter(model=model, device=cfg.device)
        metrics = evaluate_scenes(seg, val_scenes, kinds=cfg.val_kinds)
        vals = [v for v in metrics.values() if np.isfinite(v)]
        return {**{f"val_{k}": v for k, v in metrics.items()}, "val_score": float(np.mean(vals)) if vals else 0.0}

    def on_start(state: dict[str, Any] | None) -> None:
        if state is None:
            run.announce(done=0, todo=cfg.epochs, unit="epochs")
        else:
            log.info("resuming %s at epoch %d of %d, step %d", out, state["epoch"] + 1, cfg.epochs, state["global_step"])

    task = FitTask(
        model, train_step, evaluate, params=param_groups(model, cfg), on_start=on_start,
        on_best=lambda row: save_universal(model, out / EXPORT_NAME, extra={"epoch": row["epoch"], "val_score": row["val_score"]}),
    )
    fcfg = FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, precision=cfg.precision,
        device=cfg.device, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps, monitor="val_score", monitor_mode="max",
        patience=cfg.patience, checkpoint_every=cfg.checkpoint_every, max_steps=cfg.max_steps, progress=cfg.progress,
    )
    n_rows = len(run.results.rows())
    result = fit(task, list(range(len(dataset))), fcfg, out, run)
    run.finish(len(run.results.rows()) - n_rows)
    if result.interrupted:
        log.info("%s: stopped after %d optimizer steps (--max-steps); rerun the command to continue", out, result.global_step)
        return {"interrupted": True, "stopped_at_step": result.global_step, "out": str(out)}
    if result.already_finished:
        log.info("resuming %s: already finished (%d epochs); nothing to train, the summary is rewritten", out, len(result.history) - 1)
    load_best(task, out)
    if not (out / EXPORT_NAME).is_file():
        save_universal(model, out / EXPORT_NAME)
    history = result.history
    best = next((h for h in history if h["epoch"] == result.best_epoch), history[-1])
    summary = {
        "out": str(out), "weights": str(out / EXPORT_NAME), "vocabulary": list(model.cfg.words or vocabulary),
        "before": {k: v for k, v in history[0].items() if k.startswith("val_")},
        "best": {k: v for k, v in best.items() if k.startswith("val_") or k == "epoch"},
        "epochs_run": len(history) - 1, "global_step": result.global_step,
        "skipped": len(run.errors.rows()) if hasattr(run, "errors") else None,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    if cfg.export:
        save_universal(model, cfg.export, dtype=_dtype("fp16"), extra={"trained_in": str(out), "best": summary["best"]})
        log.info("exported the best weights to %s", cfg.export)
    log.info("%s: best epoch %s, %s", out, best["epoch"], ", ".join(f"{k} {v:.3f}" for k, v in best.items() if k.startswith("val_")))
    return summary


def _dtype(name: str) -> Any:
    import torch

    return {"fp16": torch.float16, "fp32": torch.float32}[name]


def scenes_of(dataset: Any, indices: Sequence[int]) -> list[Any]:
    """TrainScenes of ``dataset[indices]`` (unreadable ones left out)."""
    from segprompt.universal.train_data import scene_from_sample

    out = []
    for i in indices:
        try:
            out.append(scene_from_sample(dataset[i]))
        except SegpromptError:
            continue
    return out
