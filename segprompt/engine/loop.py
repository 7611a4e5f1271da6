"""The one training loop: epochs, accumulation, AMP, DDP data sharding, schedules, early stopping,
best/last checkpoints and bit-exact resume. Suites supply only what is theirs.

.. code-block:: python

    def step(batch, epoch):                  # a list of training items -> (loss tensor, {name: float})
        loss = criterion(model(x(batch)), y(batch))
        return loss, {}

    def evaluate(epoch):                      # -> {"val_dice": ..., "val_loss": ...}
        return {"val_dice": dice_on_validation(model)}

    result = fit(
        FitTask(model, step, evaluate, params=param_groups(model, 0.01)),
        train_items,                          # any sequence; batches are lists of its items
        FitConfig(epochs=10, batch_size=8, lr=1e-4, monitor="val_dice"),
        out="runs/ft",                        # checkpoints/last.pt, checkpoints/best.pt, results rows
    )

What it owns (and the suites must not repeat):

* **Data order.** Epoch ``e`` visits the items in ``default_rng([seed, e]).permutation(n)``;
  under DDP every rank takes every ``world_size``-th item of the first ``world_size x
  (n // world_size)`` (lock-step). Batches are lists of items, loaded lazily by ``load_batch``.
* **Optimisation.** AdamW over ``FitTask.params`` (groups allowed); ``accumulate`` micro-batches
  per optimizer step (each loss divided by ``accumulate``; a short last group is scaled by its
  own size, so k batches of n equal one batch of k x n for a mean loss); gradient clipping;
  autocast for ``bf16`` / ``fp16`` on CUDA and a GradScaler for ``fp16``.
* **Schedules.** ``cosine`` (linear warm-up, stepped per optimizer step), ``plateau``
  (ReduceLROnPlateau on ``monitor``, per epoch) or ``constant``.
* **Stopping.** Early stopping on ``monitor`` (``monitor_mode`` max or min) with ``patience``,
  ``min_delta`` and ``min_epochs``; ``best_by`` (default: the monitor) picks the best checkpoint.
* **Checkpoints.** ``checkpoints/last.pt`` after every epoch and every ``checkpoint_every``
  optimizer steps, ``checkpoints/best.pt`` when ``best_by`` improves, both atomic. ``last.pt``
  holds the model, optimizer, scheduler, scaler, stopper, counters, the history, the position in
  the epoch and every RNG state, so a run killed anywhere and resumed from it ends bit-identical
  to an uninterrupted one (checkpoints are taken at optimizer-step boundaries; micro-batches of
  an unfinished accumulation group are recomputed).
* **Rows and progress.** One row per epoch (epoch 0: before training, when ``eval_before``)
  appended to ``results.jsonl`` of the run folder, a tqdm bar over batches and one INFO line
  per epoch; ``on_epoch_end(row)`` for per-epoch plots, ``on_best(row)`` for exports.

The loop writes only under ``out``; the suite owns its run folder's config (pass ``run``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from segprompt.engine.training import (
    DistInfo,
    atomic_torch_save,
    build_scheduler,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from segprompt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: the checkpoint layout written by :func:`fit` (older layouts are the suites' to convert)
CHECKPOINT_FORMAT = "segprompt-fit-1"


@dataclass
class FitConfig:
    """How to train: everything :func:`fit` needs that is not the model or the data.

    ``monitor`` / ``best_by`` name keys of the evaluation dict (``"val_dice"``, ``"val_loss"``);
    ``*_mode`` says whether higher (``"max"``) or lower (``"min"``) is better. ``eval_before``
    evaluates the untrained model as epoch 0; ``baseline_counts`` lets that epoch be the best
    (and the reference of early stopping). ``max_steps`` stops after that many optimizer steps
    in total, leaving a resumable run (a controlled kill).
    """

    epochs: int
    batch_size: int
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    accumulate: int = 1
    grad_clip: float | None = 1.0
    precision: str = "fp32"
    device: str = "cpu"
    schedule: str = "cosine"
    warmup_steps: int = 0
    plateau_patience: int = 2
    plateau_factor: float = 0.2
    plateau_min_lr: float = 0.0
    monitor: str = "val_dice"
    monitor_mode: str = "max"
    best_by: str | None = None
    best_mode: str | None = None
    patience: int = 0
    min_delta: float = 0.0
    min_epochs: int = 0
    eval_before: bool = True
    baseline_counts: bool = True
    checkpoint_every: int | None = None
    max_steps: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.accumulate < 1:
            raise ConfigError(f"epochs >= 0, batch size >= 1 and accumulate >= 1 are needed; got {self.epochs}, {self.batch_size}, {self.accumulate}")
        for mode in (self.monitor_mode, self.best_mode):
            if mode not in (None, "max", "min"):
                raise ConfigError(f"a monitor mode is 'max' or 'min', got {mode!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.schedule not in ("cosine", "plateau", "constant"):
            raise ConfigError(f"--schedule must be cosine, plateau or constant, got {self.schedule!r}")

    @property
    def best_key(self) -> str:
        return self.best_by or self.monitor

    @property
    def best_direction(self) -> str:
        return self.best_mode or (self.monitor_mode if self.best_by in (None, self.monitor) else "max")


@dataclass
class Monitor:
    """Tracks the best value of one metric (``mode`` max or min) and how long since it improved."""

    mode: str = "max"
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0

    def improved(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` of ``epoch``; True if it is a new best."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


@dataclass
class FitTask:
    """What a suite brings to :func:`fit`.

    Attributes:
        model: the module whose ``state_dict`` the checkpoints hold (the trained parameters).
        step: ``step(batch, epoch) -> (loss, parts)``; ``batch`` is what ``load_batch`` returns
            (by default the list of items), ``loss`` a scalar tensor with a graph, ``parts`` a
            dict of floats averaged into the epoch row as ``train_<name>``.
        evaluate: ``evaluate(epoch) -> {metric: float}`` on the validation data; the keys become
            the epoch row's columns (name them ``val_...``).
        params: what the optimizer trains: parameters or AdamW groups (default: the model's
            trainable parameters). Empty: nothing to train, only the evaluation runs.
        load_batches: ``load_batches(list of item lists) -> iterable of batches``, one batch per
            list, in order (e.g. a DataLoader with ``batch_sampler=`` and workers, when the items
            are indices); default: each list of items is the batch.
        state_dict / load_state_dict: override the model's (e.g. to save only trainable tensors).
        on_epoch_end: ``on_epoch_end(row)`` after each epoch's row is written (plots).
        describe_epoch: ``describe_epoch(row) -> str``, the epoch's INFO line (default: loss,
            the ``val...`` metrics, lr and seconds).
        on_epoch_start: ``on_epoch_start(epoch)`` before an epoch's batches are loaded (e.g. to
            seed augmentation by epoch); called again for the rest of an epoch after a resume.
        row_extra: fields added to every epoch row (e.g. the run's identity for a sweep).
        on_start: ``on_start(state)`` on the main process before training: the restored loop
            state (``epoch``, ``batch``, ``global_step``, ...) of a resumed run, None for a new one
            (to say where the run starts; the loop itself says it only at DEBUG).
        best_state: ``best_state(row) -> dict`` written as ``best.pt`` in the suite's own layout
            (default: ``{"model", "best", "epoch", "config"}``, read back by :func:`load_best`).

    ``step`` may return ``(None, parts)`` for a batch with nothing to learn from (every item
    unreadable): no backward, but the batch and its optimizer step are counted as usual.
        on_best: ``on_best(row)`` when ``best_by`` improves (exports).
    """

    model: nn.Module
    step: Callable[[Any, int], tuple[torch.Tensor, Mapping[str, float]]]
    evaluate: Callable[[int], Mapping[str, float]]
    params: Iterable[Any] | None = None
    load_batches: Callable[[list[list[Any]]], Iterable[Any]] | None = None
    state_dict: Callable[[], dict[str, Any]] | None = None
    load_state_dict: Callable[[dict[str, Any]], Any] | None = None
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None
    on_best: Callable[[dict[str, Any]], None] | None = None
    describe_epoch: Callable[[dict[str, Any]], str] | None = None
    on_epoch_start: Callable[[int], None] | None = None
    row_extra: Mapping[str, Any] | None = None
    on_start: Callable[[dict[str, Any] | None], None] | None = None
    best_state: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def model_state(self) -> dict[str, Any]:
        return self.state_dict() if self.state_dict else self.model.state_dict()

    def load_model_state(self, state: dict[str, Any]) -> None:
        (self.load_state_dict or self.model.load_state_dict)(state)


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best: float | None
    best_epoch: int | None
    stopped_early: bool
    interrupted: bool
    global_step: int
    resumed_from: dict[str, int] | None = None
    already_finished: bool = False


def epoch_order(n: int, seed: int, epoch: int, dist: DistInfo = DistInfo()) -> list[int]:
    """This rank's item indices of ``epoch``: a seeded permutation, sharded in lock-step."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    shard = n // dist.world_size
    return [int(i) for i in order[: shard * dist.world_size][dist.rank :: dist.world_size]]


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """Mixed precision for ``bf16`` / ``fp16`` (CUDA autocast; CPU autocast for bf16), else nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=dtype)


class _Trainer:
    """The state of one :func:`fit` call; methods are the loop's stages."""

    def __init__(self, task: FitTask, items: Sequence[Any], cfg: FitConfig, out: Path, run: Any, dist: DistInfo, upgrade: Any = None) -> None:
        self.task, self.items, self.cfg, self.out, self.run, self.dist, self.upgrade = task, items, cfg, out, run, dist, upgrade
        self.last_path, self.best_path = out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"
        params = list(task.params) if task.params is not None else [p for p in task.model.parameters() if p.requires_grad]
        self.params = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if self.params else None
        shard = len(items) // dist.world_size
        if self.optimizer is not None and shard == 0:
            raise DataError(f"{len(items)} training items cannot be shared by {dist.world_size} processes")
        self.batches_per_epoch = math.ceil(shard / cfg.batch_size) if shard else 0
        steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.accumulate)
        self.scheduler = None
        if self.optimizer is not None:
            if cfg.schedule == "plateau":
                self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    self.optimizer, mode=cfg.monitor_mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.plateau_min_lr
                )
            else:
                self.scheduler = build_scheduler(self.optimizer, cfg.schedule, total_steps=steps_per_epoch * cfg.epochs, warmup=cfg.warmup_steps)
        self.scaler = torch.amp.GradScaler(enabled=cfg.precision == "fp16" and str(cfg.device).startswith("cuda"))
        self.stopper = Monitor(cfg.monitor_mode, cfg.min_delta)
        self.best = Monitor(cfg.best_direction)
        self.state: dict[str, Any] = {
            "epoch": 0, "batch": 0, "global_step": 0, "history": [], "losses": [], "parts": {}, "done": False, "stopped_early": False,
            "step_seconds": 0.0, "steps_timed": 0,
        }

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        if not self.dist.is_main:
            return
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "model": self.task.model_state(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict(),
                "stopper": self.stopper.state_dict(),
                "best": self.best.state_dict(),
                "state": self.state,
                "rng": rng_state(),
                "config": asdict(self.cfg),
            },
            path,
        )

    def save_best(self, row: dict[str, Any]) -> None:
        """``best.pt``: the model state and the monitor, or the suite's own layout (``best_state``)."""
        if not self.dist.is_main:
            return
        blob = self.task.best_state(row) if self.task.best_state else {
            "format": CHECKPOINT_FORMAT, "model": self.task.model_state(), "best": self.best.state_dict(), "epoch": row["epoch"], "config": asdict(self.cfg),
        }
        atomic_torch_save(blob, self.best_path)

    def restore(self) -> dict[str, int] | None:
        if not self.last_path.exists():
            return None
        ck = load_checkpoint(self.last_path)
        if ck.get("format") != CHECKPOINT_FORMAT and self.upgrade is not None:
            ck = self.upgrade(ck)
            log.info("%s: a checkpoint of the layout before segprompt.engine.loop, converted", self.last_path)
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(
                f"{self.last_path}: a checkpoint of an older layout (no {CHECKPOINT_FORMAT!r} format tag); "
                "this version cannot resume it: use another --out folder, or delete the folder to start over"
            )
        self.task.load_model_state(ck["model"])
        if self.optimizer is not None and ck["optimizer"] is not None:
            self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None and ck["scheduler"] is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.stopper.load_state_dict(ck["stopper"])
        self.best.load_state_dict(ck["best"])
        self.state = ck["state"]
        set_rng_state(ck["rng"])
        return {k: int(self.state[k]) for k in ("epoch", "batch", "global_step")}

    def sync_rows(self) -> None:
        """Append the history rows that results.jsonl lacks (it is append-only)."""
        if self.run is None or not self.dist.is_main:
            return
        have = {r["epoch"] for r in self.run.results if r.get("kind", "epoch") == "epoch"}
        self.run.results.extend(h for h in self.state["history"] if h["epoch"] not in have)

    # -- stages ----------------------------------------------------------------------------
    def record_epoch(self, epoch: int, seconds: float) -> dict[str, Any]:
        """Evaluate, step the plateau schedule, update the monitors, write the row and checkpoints."""
        metrics = dict(self.task.evaluate(epoch))
        cfg = self.cfg
        for key in {cfg.monitor, cfg.best_key}:
            if key not in metrics:
                raise ConfigError(f"the evaluation returned {sorted(metrics)}, not the monitored {key!r}")
        losses, parts = self.state["losses"], self.state["parts"]
        row: dict[str, Any] = {"kind": "epoch", **(self.task.row_extra or {}), "epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None}
        row.update({f"train_{k}": float(np.mean(v)) for k, v in parts.items()})
        row.update(metrics)
        row["lr"] = self.optimizer.param_groups[0]["lr"] if self.optimizer else None
        row["seconds"] = round(seconds, 3)
        timed = self.state.get("steps_timed", 0)
        row["ms_per_step"] = 1000 * self.state.get("step_seconds", 0.0) / timed if timed else None
        if epoch > 0 and self.scheduler is not None and cfg.schedule == "plateau":
            self.scheduler.step(metrics[cfg.monitor])
        counts = epoch > 0 or cfg.baseline_counts
        if counts:
            self.stopper.update(metrics[cfg.monitor], epoch)
        improved = counts and self.best.update(metrics[cfg.best_key], epoch)
        row["best"] = improved
        self.state["history"].append(row)
        self.state.update(epoch=epoch, batch=0, losses=[], parts={})
        if improved:
            self.save_best(row)
            if self.task.on_best and self.dist.is_main:
                self.task.on_best(row)
        self.save(self.last_path)
        self.sync_rows()
        if self.task.on_epoch_end and self.dist.is_main:
            self.task.on_epoch_end(row)
        if self.dist.is_main:
            log.info((self.task.describe_epoch or self.describe_epoch)(row))
        return row

    def describe_epoch(self, row: dict[str, Any]) -> str:
        """The default INFO line of an epoch: ``run: epoch 3/10: train loss 0.4121, val_dice 0.8012, lr 1e-04, 2.1 s``."""
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val") and isinstance(v, (int, float)))
        if row["epoch"] == 0:
            return f"{self.out.name}: before training: {metrics}"
        loss = "" if row["train_loss"] is None else f"train loss {row['train_loss']:.4f}, "
        lr = "" if row["lr"] is None else f", lr {row['lr']:.0e}"
        return f"{self.out.name}: epoch {row['epoch']}/{self.cfg.epochs}: {loss}{metrics}{lr}, {row['seconds']:.1f} s"

    def should_stop(self, epoch: int) -> bool:
        cfg = self.cfg
        return cfg.patience > 0 and epoch >= max(cfg.min_epochs, 1) and self.stopper.bad_epochs >= cfg.patience

    def optimizer_step(self) -> None:
        cfg = self.cfg
        if any(p.grad is not None for p in self.params):  # else every batch of the group was empty
            if cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None and cfg.schedule != "plateau":
            self.scheduler.step()
        self.state["global_step"] += 1

    def train_epoch(self, epoch: int) -> bool:
        """Run (the rest of) ``epoch``; False if ``max_steps`` interrupted it."""
        cfg, task = self.cfg, self.task
        order = epoch_order(len(self.items), cfg.seed, epoch, self.dist)
        index_batches = [order[b : b + cfg.batch_size] for b in range(0, len(order), cfg.batch_size)]
        start = self.state["batch"]
        task.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if task.on_epoch_start:
            task.on_epoch_start(epoch)
        todo = [[self.items[i] for i in ib] for ib in index_batches[start:]]
        loaded = task.load_batches(todo) if task.load_batches else iter(todo)
        bar = _progress(range(start, len(index_batches)), f"{self.out.name} epoch {epoch + 1}/{cfg.epochs}", cfg.progress and self.dist.is_main, len(index_batches), start)
        for b, batch in zip(bar, loaded):
            group_start = (b // cfg.accumulate) * cfg.accumulate
            group = index_batches[group_start : group_start + cfg.accumulate]
            weight = len(index_batches[b]) / sum(len(g) for g in group)
            t0 = time.perf_counter()
            with autocast(cfg.precision, cfg.device):
                loss, parts = task.step(batch, epoch)
            if loss is not None:
                self.scaler.scale(loss.float() * weight).backward()
                self.state["losses"].append(float(loss.detach()))
            if str(cfg.device).startswith("cuda"):
                torch.cuda.synchronize()
            self.state["step_seconds"] = self.state.get("step_seconds", 0.0) + time.perf_counter() - t0
            self.state["steps_timed"] = self.state.get("steps_timed", 0) + 1
            for k, v in (parts or {}).items():
                self.state["parts"].setdefault(k, []).append(float(v))
            if b + 1 == group_start + len(group):
                self.optimizer_step()
                self.state["batch"] = b + 1
                if cfg.checkpoint_every and self.state["global_step"] % cfg.checkpoint_every == 0:
                    self.save(self.last_path)
                if cfg.max_steps is not None and self.state["global_step"] >= cfg.max_steps:
                    self.save(self.last_path)
                    return False
        return True


def _progress(it: Iterable[int], desc: str, enabled: bool, total: int, initial: int) -> Iterable[int]:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, initial=initial, unit="batch", leave=False, delay=2.0)


def fit(
    task: FitTask,
    items: Sequence[Any],
    cfg: FitConfig,
    out: str | Path,
    run: Any = None,
    dist: DistInfo = DistInfo(),
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> FitResult:
    """Train ``task`` on ``items`` under ``cfg`` into ``out`` (checkpoints), resuming from
    ``out/checkpoints/last.pt`` when it is there; returns the history and how the run ended.

    ``run``: the suite's :class:`~segprompt.engine.runfolder.RunFolder` (epoch rows are appended
    to its results); ``dist``: this process's place in a DDP group (only rank 0 writes);
    ``upgrade``: converts a ``last.pt`` of a suite's older layout to this one (see
    :func:`checkpoint_from_parts`); without it such a checkpoint is a ConfigError.
    """
    trainer = _Trainer(task, items, cfg, Path(out), run, dist, upgrade)
    resumed = trainer.restore()
    state = trainer.state
    if state["done"]:
        log.debug("%s: already finished (%d epochs); nothing to train", out, state["epoch"])
        trainer.sync_rows()
        return _result(trainer, resumed, already_finished=True)
    if resumed:
        log.debug("resuming %s: epoch %d, batch %d of %d (step %d)", out, state["epoch"] + 1, state["batch"], trainer.batches_per_epoch, state["global_step"])
    if task.on_start and dist.is_main:
        task.on_start(dict(state) if resumed else None)
    if not state["history"] and cfg.eval_before:
        trainer.record_epoch(0, 0.0)
    if trainer.optimizer is None:
        log.info("%s: nothing to train; evaluation only", out)
        state.update(done=True)
        trainer.save(trainer.last_path)
        return _result(trainer, resumed)
    while True:
        epoch = state["epoch"]
        if epoch >= cfg.epochs or trainer.should_stop(epoch):
            state.update(done=True, stopped_early=epoch < cfg.epochs)
            trainer.save(trainer.last_path)
            break
        t0 = time.perf_counter()
        if not trainer.train_epoch(epoch):
            return _result(trainer, resumed, interrupted=True)
        trainer.record_epoch(epoch + 1, time.perf_counter() - t0)
    return _result(trainer, resumed)


def _result(trainer: _Trainer, resumed: dict[str, int] | None, interrupted: bool = False, already_finished: bool = False) -> FitResult:
    s = trainer.state
    return FitResult(
        history=list(s["history"]),
        best=trainer.best.best,
        best_epoch=trainer.best.best_epoch,
        stopped_early=bool(s.get("stopped_early")),
        interrupted=interrupted,
        global_step=int(s["global_step"]),
        resumed_from=resumed,
        already_finished=already_finished,
    )


def checkpoint_from_parts(
    cfg: FitConfig,
    model: dict[str, Any],
    optimizer: dict[str, Any] | None,
    scheduler: dict[str, Any] | None,
    scaler: dict[str, Any],
    rng: dict[str, Any],
    epoch: int,
    batch: int,
    global_step: int,
    history: list[dict[str, Any]],
    stopper_best: float | None,
    bad_epochs: int,
    **state: Any,
) -> dict[str, Any]:
    """A checkpoint in :func:`fit`'s layout from the parts any training checkpoint holds (for a
    suite's ``upgrade`` of its older layout); ``state`` overrides loop-state fields (``done``,
    ``losses``, ``step_seconds``, ...). The losses of an epoch interrupted mid-way are not in
    old layouts: that epoch's ``train_loss`` then averages only the batches run after the resume."""
    history = [{"kind": "epoch", **h} for h in history]
    counted = [h for h in history if h["epoch"] > 0 or cfg.baseline_counts]
    best = Monitor(cfg.best_direction)
    for h in counted:
        best.update(h.get(cfg.best_key), h["epoch"])
    stopper = Monitor(cfg.monitor_mode, cfg.min_delta, None if stopper_best is None or not math.isfinite(stopper_best) else float(stopper_best), None, int(bad_epochs))
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
        "stopper": stopper.state_dict(),
        "best": best.state_dict(),
        "state": {
            "epoch": int(epoch), "batch": int(batch), "global_step": int(global_step), "history": history, "losses": [], "parts": {},
            "done": False, "stopped_early": False, "step_seconds": 0.0, "steps_timed": 0, **state,
        },
        "rng": rng,
        "config": asdict(cfg),
    }


def load_best(task: FitTask, out: str | Path) -> dict[str, Any] | None:
    """Load ``out/checkpoints/best.pt``'s model state into ``task``; returns that checkpoint's
    best-monitor state (None when there is no best checkpoint)."""
    path = Path(out) / "checkpoints" / "best.pt"
    if not path.exists():
        return None
    ck = load_checkpoint(path)
    task.load_model_state(ck["model"])
    return ck["best"]


__all__ = ["CHECKPOINT_FORMAT", "checkpoint_from_parts", "FitConfig", "FitResult", "FitTask", "Monitor", "autocast", "epoch_order", "fit", "load_best"]
