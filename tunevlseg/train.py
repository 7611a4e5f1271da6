"""Train one prompt learner on one dataset, keep the best checkpoint by validation Dice, test it.

.. code-block:: python

    from tunevlseg.train import TrainConfig, train_and_evaluate
    cfg = TrainConfig(vlsm="clipseg", vlsm_kwargs={"weights": "clipseg-rd64-refined"}, method="maple",
                      depth=3, dataset="kvasir", batch_size=32)              # recipe="tvs", the default
    summary = train_and_evaluate(cfg, "runs/tunevlseg/kvasir_maple_d3")   # rerun to resume
    summary["dice_mean"], summary["dice_std"], summary["trainable_params"]

Training recipes (``TrainConfig.recipe``; fields left at None take the recipe's value, an explicit
value wins, and the run's config.yaml records the resolved values):

* ``tvs`` (the default): TuneVLSeg's protocol, read from naamiinepal/tunevlseg: monai
  ``DiceCELoss(sigmoid=True, lambda_dice=1, lambda_ce=0.2)`` (configs/model/*/clipseg.yaml; its
  smoothing 1e-5, see :func:`dice_ce_loss`), AdamW lr 2e-4 with weight decay 0.0
  (configs/experiment/coop/clipseg.yaml), ReduceLROnPlateau(mode min, factor 0.2, patience 5)
  stepped each epoch on the validation loss (image_text_mask_module.py ``configure_optimizers``:
  ``monitor: "val_loss"``), early stopping on the validation loss with patience 10 and min_delta 0
  (configs/callbacks/default.yaml over the lightning-hydra-template's early_stopping.yaml), never
  before epoch 10 and at most 100 epochs (``trainer.min_epochs`` / ``max_epochs``), the checkpoint
  of the best validation Dice (ModelCheckpoint ``monitor: val_dice, mode: max``), chosen among
  trained epochs only (Lightning validates the untrained model only as a sanity check).
* ``segprompt``: this project's earlier recipe: plateau (0.2, patience 5) and early stopping
  (patience 10) on validation Dice, weight decay 1e-2, Dice smoothing 1, at most 20 epochs, the
  untrained model (epoch 0) a candidate for the best checkpoint.

The validation loss (``val_loss`` of every epoch row) is the training DiceCE on the validation
split, at the model's input size, averaged over items (as Lightning averages ``val_loss`` over
batches weighted by their size). Evaluation fixes two of TuneVLSeg's weak points:

* validation and test items go through the deterministic evaluation resize, never through the
  training augmentation;
* predictions are resized to each image's ORIGINAL resolution (bilinear on the logits,
  threshold 0) and scored per image with :func:`segprompt.metrics.dice` / :func:`~segprompt.metrics.iou`
  (empty prediction vs empty target = 1); Dice and IoU are both per-image means (never a
  per-image Dice next to a dataset-global IoU), with their standard deviation over images.

Test-split rule: the test split is used when the dataset has one. The natural sets (Pascal VOC,
Cityscapes) have no labelled test data; TuneVLSeg silently reported val as test. Here the test
phase then runs on val and every test row says so (``split: "val"``, ``test_is_val: true`` and a
``note``), since that split also chose the checkpoint.

The run folder (``out``) follows the project's layout: ``config.yaml``; ``results.jsonl`` with one
``kind: "epoch"`` row per epoch (epoch 0 = before training, with the zero-shot baseline of the
bare VLSM), one ``kind: "image"`` row per test image and one ``kind: "summary"`` row; every row
carries the trainable parameter count. ``checkpoints/last.pt`` (full training state, every RNG)
and ``checkpoints/best.pt`` (learner + trainable VLSM weights). ``resume=True`` continues an
interrupted run exactly (data order from (seed, epoch), augmentation and random prompts from
(seed, epoch, index), the RNG states saved); a finished run returns its summary row. A folder
written before recipes existed (its config.yaml has no ``recipe``) ran the ``segprompt``
recipe: it resumes with ``recipe="segprompt"`` (its config.yaml is then rewritten with the
resolved fields), and any other recipe is refused with a message saying so.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segprompt.engine.losses import dice_ce_loss as _monai_dice_ce
from segprompt.engine.runfolder import RunFolder
from segprompt.engine.loop import FitConfig, FitTask, autocast as _autocast, checkpoint_from_parts, fit
from segprompt.engine.training import load_checkpoint, seed_everything
from segprompt.errors import ConfigError, DataError
from segprompt.metrics import dice as dice_score
from segprompt.metrics import iou as iou_score

log = logging.getLogger(__name__)

__all__ = [
    "TrainConfig",
    "RECIPES",
    "RECIPE_FIELDS",
    "recipe_settings",
    "legacy_train_config",
    "train_and_evaluate",
    "dice_ce_loss",
    "decay_groups",
    "predict",
    "evaluate",
    "build_model",
    "NO_DEPTH_METHODS",
    "method_depth",
]

#: methods without prompt depth: they run once, with depth recorded as 0
NO_DEPTH_METHODS = ("zeroshot", "full")
#: methods whose depth is fixed by definition
FIXED_DEPTH = {"vpt-shallow": 1}


def method_depth(method: str, depth: int) -> int:
    """The depth a method actually uses: 0 for methods without prompts, 1 for vpt-shallow."""
    from tunevlseg.learners import LEARNERS

    name = LEARNERS.resolve(method)
    if name in NO_DEPTH_METHODS:
        return 0
    return FIXED_DEPTH.get(name, int(depth))


#: Training recipes: the values of the TrainConfig fields a run leaves at None. Sources, in
#: naamiinepal/tunevlseg: configs/experiment/coop/clipseg.yaml (trainer min_epochs 10, max_epochs
#: 100; model.weight_decay 0.0, optimizer lr 2e-4, loss lambdas 1 / 0.2), configs/model/*/clipseg.yaml
#: (monai DiceCELoss(sigmoid=True); ReduceLROnPlateau mode min, factor 0.2, patience 5),
#: src/models/image_text_mask_module.py (the scheduler monitors "val_loss", once per epoch),
#: configs/callbacks/default.yaml (EarlyStopping monitor val_loss, patience 10; ModelCheckpoint
#: monitor val_dice, mode max) over lightning-hydra-template's callbacks/early_stopping.yaml
#: (min_delta 0.). ``segprompt`` is this project's recipe before ``tvs`` became the default.
RECIPES: dict[str, dict[str, Any]] = {
    "tvs": {
        "epochs": 100, "min_epochs": 10, "lr": 2e-4, "weight_decay": 0.0, "schedule": "plateau", "plateau_factor": 0.2,
        "plateau_patience": 5, "monitor": "val_loss", "early_stop": 10, "min_delta": 0.0, "best_by": "val_dice",
        "baseline_counts": False, "dice_smooth": 1e-5,
    },
    "segprompt": {
        "epochs": 20, "min_epochs": 0, "lr": 2e-4, "weight_decay": 1e-2, "schedule": "plateau", "plateau_factor": 0.2,
        "plateau_patience": 5, "monitor": "val_dice", "early_stop": 10, "min_delta": 0.0, "best_by": "val_dice",
        "baseline_counts": True, "dice_smooth": 1.0,
    },
}
#: the TrainConfig fields a recipe sets
RECIPE_FIELDS: tuple[str, ...] = tuple(RECIPES["tvs"])
#: the recipe of run folders written before recipes existed (config.yaml without ``recipe``)
LEGACY_RECIPE = "segprompt"
#: what each monitored metric's "better" is
MODES = {"val_loss": "min", "val_dice": "max"}


def recipe_settings(train: Mapping[str, Any]) -> dict[str, Any]:
    """``train`` (TrainConfig fields, e.g. a sweep's ``train`` settings) with the recipe's values
    filled in where a field is missing or None; no ``recipe`` key means a folder written before
    recipes (:data:`LEGACY_RECIPE`), an unknown recipe a ConfigError."""
    recipe = train["recipe"] if "recipe" in train else LEGACY_RECIPE
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    out = {**dict(train), "recipe": recipe}
    for key, value in RECIPES[recipe].items():
        if out.get(key) is None:
            out[key] = value
    return out


def legacy_train_config(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A TrainConfig dict stored before recipes existed (no ``recipe`` key), with the fields it
    lacks filled in as that code ran them: the ``segprompt`` recipe."""
    return recipe_settings({k: v for k, v in stored.items() if k != "recipe"})


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved as the run's config.yaml).

    ``recipe`` (``tvs`` or ``segprompt``, see :data:`RECIPES`) fills every field of
    :data:`RECIPE_FIELDS` left at None; ``monitor`` drives early stopping and the plateau
    schedule, ``best_by`` the best checkpoint (``val_loss`` lower is better, ``val_dice`` higher).
    """

    vlsm: str = "clipseg-tiny"
    vlsm_kwargs: dict[str, Any] = field(default_factory=dict)
    method: str = "coop"
    depth: int = 1
    n_ctx: int = 4
    learner_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    dataset_root: str | None = None
    prompt: str | int = "p0"
    text: str | None = None
    augment: bool = True
    recipe: str = "tvs"
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    plateau_factor: float | None = None
    plateau_patience: int | None = None
    monitor: str | None = None
    early_stop: int | None = None
    min_delta: float | None = None
    min_epochs: int | None = None
    best_by: str | None = None
    baseline_counts: bool | None = None
    lambda_dice: float = 1.0
    lambda_ce: float = 0.2
    dice_smooth: float | None = None
    grad_clip: float | None = None
    precision: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    eval_batch_size: int | None = None
    num_workers: int = 0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    test_split: str = "test"
    checkpoint_every: int = 0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        from tunevlseg.learners import LEARNERS
        from tunevlseg.models import VLSMS

        # the messages name the command line's options (``segprompt bench tunevlseg``); the
        # fields without an option of their own are set through --train-kwargs
        if self.recipe not in RECIPES:
            raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for key, value in RECIPES[self.recipe].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.method = LEARNERS.resolve(self.method)
        VLSMS.resolve(self.vlsm)
        self.depth = method_depth(self.method, self.depth)
        if not self.dataset:
            raise ConfigError("no dataset given: pass --dataset (a TuneVLSeg dataset name or a folder)")
        self.dataset = str(self.dataset)
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.epochs < 0:
            raise ConfigError(f"--epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.schedule not in ("plateau", "cosine", "constant"):
            raise ConfigError(f"schedule (in --train-kwargs) must be plateau, cosine or constant, got {self.schedule!r}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.n_ctx < 1:
            raise ConfigError(f"--n-ctx must be >= 1, got {self.n_ctx}")
        if self.early_stop < 0:
            raise ConfigError(f"--early-stop must be >= 0 (0 = never), got {self.early_stop}")
        for name in ("monitor", "best_by"):
            if getattr(self, name) not in MODES:
                raise ConfigError(f"{name} (in --train-kwargs) must be {' or '.join(MODES)}, got {getattr(self, name)!r}")
        for name in ("min_epochs", "min_delta", "plateau_patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} (in --train-kwargs) must be >= 0, got {getattr(self, name)}")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"plateau_factor (in --train-kwargs) must be in (0, 1), got {self.plateau_factor}")
        if self.dice_smooth <= 0:
            raise ConfigError(f"dice_smooth (in --train-kwargs) must be > 0, got {self.dice_smooth}")
        self.baseline_counts = bool(self.baseline_counts)
        for name, value in (("--max-train-samples", self.max_train_samples), ("--max-eval-samples", self.max_eval_samples)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} (or --limit) must be >= 1, got {value}")
        prompt = f"p{self.prompt}" if isinstance(self.prompt, int) and not isinstance(self.prompt, bool) else str(self.prompt)
        if prompt != "random" and not re.fullmatch(r"p\d+", prompt):
            raise ConfigError(f"--prompt must be p<k> (a prompt of the split files, e.g. p0), k or random, got {self.prompt!r}")

    @property
    def learner_depth(self) -> int:
        """The depth passed to ``create_learner`` (1 for the methods without depth)."""
        return max(1, self.depth)

    def identity(self) -> dict[str, Any]:
        """The fields that name this run in every row."""
        from tunevlseg.data import dataset_label

        return {"vlsm": self.vlsm, "method": self.method, "depth": self.depth, "n_ctx": self.n_ctx if self.depth else 0,
                "dataset": dataset_label(self.dataset), "seed": self.seed}


# -- loss and optimizer groups -----------------------------------------------------------------


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    lambda_dice: float = 1.0,
    lambda_ce: float = 0.2,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """TuneVLSeg's loss: ``monai.losses.DiceCELoss(sigmoid=True, lambda_dice=1, lambda_ce=0.2)``
    as configs/model/*/clipseg.yaml builds it (MONAI's other defaults: ``include_background``,
    ``batch=False``, ``smooth_nr = smooth_dr = 1e-5``; the CE of one channel is BCE with logits),
    on (B, 1, H, W) logits; see :func:`segprompt.engine.losses.dice_ce_loss`. ``valid`` (same
    shape, 1 = counted) removes ignore pixels from both terms. ``smooth=1`` is the ``segprompt``
    recipe's Dice (:func:`segprompt.engine.losses.dice_loss`'s ``eps``)."""
    return _monai_dice_ce(logits, target, lambda_dice, lambda_ce, smooth, smooth, valid=valid)


def decay_groups(named: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of (name, parameter) pairs: :func:`segprompt.engine.training.param_groups`'s
    rule (no decay for biases, norms, embeddings, 1-D tensors and prompt context vectors)."""
    from segprompt.engine.training import param_groups

    return param_groups(named, weight_decay)


# -- model and data ---------------------------------------------------------------------------


def build_model(cfg: TrainConfig) -> tuple[Any, Any]:
    """(vlsm, learner) on ``cfg.device``; the learner is seeded by ``cfg.seed``."""
    from tunevlseg.learners import create_learner
    from tunevlseg.models import create_vlsm

    vlsm = create_vlsm(cfg.vlsm, device=cfg.device, **cfg.vlsm_kwargs)
    settings: dict[str, Any] = dict(cfg.learner_kwargs)
    if cfg.method not in NO_DEPTH_METHODS:
        settings.setdefault("n_ctx", cfg.n_ctx)
    settings.setdefault("depth", cfg.learner_depth)
    settings.setdefault("seed", cfg.seed)
    learner = create_learner(cfg.method, vlsm, **settings)
    return vlsm, learner


def _load(cfg: TrainConfig, split: str, limit: int | None, check: bool = True):  # noqa: ANN202 - SegmentationDataset
    from tunevlseg.data import load_benchmark_split

    ds = load_benchmark_split(cfg.dataset, split, root=cfg.dataset_root, check=check and split == "train")
    if limit is not None and len(ds) > limit:
        ds = ds.subset(list(range(limit)))
    if len(ds) == 0:
        raise DataError(f"{cfg.dataset}: the {split} split is empty")
    return ds


def _default_text(cfg: TrainConfig) -> str | None:
    if cfg.text is not None:
        return cfg.text
    from tunevlseg.data import BENCHMARKS, _is_path, _key

    key = None if _is_path(cfg.dataset) else _key(cfg.dataset)
    return BENCHMARKS[key].text if key and "{" not in BENCHMARKS[key].text else None


def _loader(ds: Any, batches: Sequence[Sequence[int]], workers: int) -> Iterable[dict[str, Any]]:
    from tunevlseg.data import collate

    # a private generator: creating the iterator must not draw from the global RNG (dropout of
    # shared-attention), or a resumed epoch would see other random numbers than an uninterrupted one
    return torch.utils.data.DataLoader(
        ds, batch_sampler=[list(b) for b in batches], collate_fn=collate, num_workers=workers, generator=torch.Generator().manual_seed(0)
    )


def _eval_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


@torch.no_grad()
def predict(
    vlsm: Any,
    learner: Any,
    ds: Any,
    batch_size: int = 8,
    precision: str = "fp32",
    device: str = "cpu",
    workers: int = 0,
    on_error: Callable[[dict[str, Any]], None] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Iterable[tuple[dict[str, Any], np.ndarray]]:
    """(item, prediction) per item of an evaluation :class:`~tunevlseg.data.VLSegDataset`: the
    logits resized bilinearly to the item's original size, thresholded at 0 (bool (H0, W0)).

    ``on_error``: called with each unreadable item of a dataset built with ``skip_errors=True``
    (``{"error", "id", "index"}``), which is then left out; without it such an item raises
    :class:`DataError`. ``loss_fn(logits, mask, valid)``: adds ``item["loss"]``, the item's loss
    at the model input size (the validation loss)."""
    if ds.train:
        raise ConfigError("predict() needs an evaluation dataset (train=False): never score on training augmentation")
    was = (vlsm.training, learner.training if learner is not None else False)
    vlsm.eval()
    if learner is not None:
        learner.eval()
    try:
        for batch in _loader(ds, _eval_batches(len(ds), batch_size), workers):
            for err in batch.pop("errors", []):
                if on_error is None:
                    raise DataError(err["error"])
                on_error(err)
            if "image" not in batch:
                continue
            images = vlsm.preprocess(batch["image"].to(vlsm.mean.device))
            with _autocast(precision, device):
                logits = vlsm(images, batch["text"], learner=learner)
            logits = logits.float()
            for i, size in enumerate(batch["size"]):
                up = F.interpolate(logits[i : i + 1], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
                item = {k: v[i] for k, v in batch.items() if k not in ("image", "mask", "valid")}
                if loss_fn is not None:
                    dev = logits.device
                    item["loss"] = float(loss_fn(logits[i : i + 1], batch["mask"][i : i + 1].to(dev), batch["valid"][i : i + 1].to(dev)))
                yield item, (up > 0).cpu().numpy()
    finally:
        vlsm.train(was[0])
        if learner is not None:
            learner.train(was[1])


def evaluate(
    vlsm: Any,
    learner: Any,
    ds: Any,
    cfg: TrainConfig,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
    on_error: Callable[[dict[str, Any]], None] | None = None,
    losses: list[float] | None = None,
) -> list[dict[str, Any]]:
    """Per-image rows (``id``, ``dice``, ``iou``, ``prompt``, ``height``, ``width``) at the original
    resolution; ignore pixels count for neither prediction nor target. ``on_error``: see
    :func:`predict`; ``losses``: receives each item's DiceCE loss (``cfg``'s weights)."""
    rows = []

    def item_loss(logits: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return dice_ce_loss(logits, mask, valid, cfg.lambda_dice, cfg.lambda_ce, cfg.dice_smooth)

    loss_fn = item_loss if losses is not None else None
    for item, pred in predict(vlsm, learner, ds, cfg.eval_batch_size or cfg.batch_size, cfg.precision, cfg.device, cfg.num_workers, on_error, loss_fn):
        if losses is not None:
            losses.append(item["loss"])
        if item["id"] in skip:
            continue
        target = item["target"]
        if item.get("ignore") is not None:
            pred = pred & ~item["ignore"]
            target = target & ~item["ignore"]
        rows.append({"id": item["id"], "dice": dice_score(pred, target), "iou": iou_score(pred, target), "prompt": item["text"],
                     "height": int(target.shape[0]), "width": int(target.shape[1])})
    return rows


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    arr = np.asarray(values, np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


# -- the run ------------------------------------------------------------------------------------


def _trainable(vlsm: Any, learner: Any) -> list[tuple[str, torch.nn.Parameter]]:
    from tunevlseg.learners import trainable_named_parameters

    return trainable_named_parameters(vlsm, learner)


class _SkipLog:
    """Unreadable items, recorded once per run folder (an item fails again every epoch)."""

    def __init__(self, run: RunFolder) -> None:
        self.run = run

    def __call__(self, err: dict[str, Any], split: str) -> None:
        self.run.record_error_once(str(err["id"]), DataError(err["error"]), split=split)

    @property
    def seen(self) -> set[tuple[str, str]]:
        """(split, item) of every item skipped in this run folder."""
        return {(str(e["split"]), str(e.get("item"))) for e in self.run.errors if "split" in e}

    def load(self, cfg: TrainConfig, split: str, limit: int | None, check: bool) -> Any:
        ds = _load(cfg, split, limit, check=check)
        for item_id, message in getattr(ds, "skipped", []):  # left out while indexing (label maps)
            self({"id": item_id, "error": message}, split)
        return ds


def fit_config(cfg: TrainConfig, progress: bool = False) -> FitConfig:
    """The shared loop's settings for ``cfg`` (its recipe resolved): early stopping and the
    plateau schedule on ``cfg.monitor``, the best checkpoint by ``cfg.best_by``, the untrained model
    (epoch 0) a candidate for both only when ``cfg.baseline_counts``."""
    return FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, grad_clip=cfg.grad_clip or None, precision=cfg.precision,
        device=cfg.device, schedule=cfg.schedule, plateau_patience=cfg.plateau_patience, plateau_factor=cfg.plateau_factor,
        monitor=cfg.monitor, monitor_mode=MODES[cfg.monitor], best_by=cfg.best_by, best_mode=MODES[cfg.best_by], patience=cfg.early_stop,
        min_delta=cfg.min_delta, min_epochs=cfg.min_epochs, baseline_counts=cfg.baseline_counts,
        checkpoint_every=cfg.checkpoint_every or None, max_steps=cfg.max_steps, progress=progress,
    )


class _Model(torch.nn.Module):
    """The VLSM and its prompt learner as one module: train/eval modes for both; the state is the
    learner's plus the VLSM's trainable tensors (what best.pt and last.pt have always held)."""

    def __init__(self, vlsm: Any, learner: Any) -> None:
        super().__init__()
        self.vlsm, self.learner = vlsm, learner

    def trained_state(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(), "vlsm": self.vlsm.trainable_state_dict()}

    def load_trained_state(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.vlsm.load_state_dict(state["vlsm"], strict=False)


def _upgrade_checkpoint(cfg: TrainConfig) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``last.pt`` as train_and_evaluate wrote it before the shared loop -> the loop's layout."""

    def upgrade(ck: dict[str, Any]) -> dict[str, Any]:
        st, es = ck["state"], ck["early_stopping"]
        return checkpoint_from_parts(
            fit_config(cfg), {"learner": ck["learner"], "vlsm": ck["vlsm"]}, ck["optimizer"], ck["scheduler"], ck["scaler"], ck["rng"],
            st["epoch"], st["batch"], st["global_step"], st["history"], es.get("best"), es.get("bad_checks", 0),
            done=bool(st.get("done")), stopped_early=bool(st.get("stopped_early", False)), losses=list(st.get("epoch_losses", [])),
            step_seconds=float(st.get("step_seconds", 0.0)), steps_timed=int(st.get("steps_timed", 0)),
        )

    return upgrade


def _fit_task(cfg: TrainConfig, model: _Model, params: list, train_ds: Any, val_ds: Any, skip: _SkipLog, ident: dict[str, Any], name: str) -> FitTask:
    """TuneVLSeg's part of the loop: the DiceCE step, validation (with the zero-shot baseline at
    epoch 0) and the epoch lines."""
    from tunevlseg.report import format_lr

    vlsm, learner = model.vlsm, model.learner

    def step(batch: dict[str, Any], epoch: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        for err in batch.pop("errors", []):
            skip(err, "train")
        if "image" not in batch:  # every item of this batch was unreadable
            return None, {}
        images = vlsm.preprocess(batch["image"].to(cfg.device))
        logits = vlsm(images, batch["text"], learner=learner)
        return dice_ce_loss(logits, batch["mask"].to(cfg.device), batch["valid"].to(cfg.device), cfg.lambda_dice, cfg.lambda_ce, cfg.dice_smooth), {}

    def validate(model_learner: Any) -> dict[str, float]:
        losses: list[float] = []
        rows = evaluate(vlsm, model_learner, val_ds, cfg, on_error=lambda err: skip(err, "val"), losses=losses)
        if not rows:
            raise DataError(f"{cfg.dataset}: no readable item in the val split ({len(val_ds)} listed; see {skip.run.errors.path})")
        d, d_std = _mean_std([r["dice"] for r in rows])
        return {"val_loss": float(np.mean(losses)) if losses else float("nan"), "val_dice": d, "val_dice_std": d_std, "val_iou": _mean_std([r["iou"] for r in rows])[0]}

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        metrics = validate(learner)
        if epoch == 0:  # the bare VLSM: the zero-shot baseline
            zero = validate(None)
            metrics.update(val_dice_zeroshot=zero["val_dice"], val_iou_zeroshot=zero["val_iou"])
        return metrics

    def describe(row: dict[str, Any]) -> str:
        if row["epoch"] == 0:
            steps = math.ceil(len(train_ds) / cfg.batch_size)
            return (f"{name}: before training: val loss {row['val_loss']:.4f}, val Dice {row['val_dice']:.4f} (bare {cfg.vlsm}: "
                    f"{row['val_dice_zeroshot']:.4f}); {len(train_ds)} train / {len(val_ds)} val items, {cfg.epochs} "
                    f"{'epoch' if cfg.epochs == 1 else 'epochs'} of {steps} {'step' if steps == 1 else 'steps'}")
        loss = "\u2013" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
        return (f"{name} epoch {row['epoch']}/{cfg.epochs}: train loss {loss}, val loss {row['val_loss']:.4f}, val Dice {row['val_dice']:.4f}"
                f"{' (best)' if row['best'] else ''}, lr {format_lr(row['lr'])} ({row['seconds']:.1f} s)")

    return FitTask(
        model, step, evaluate_epoch, params=decay_groups(params, cfg.weight_decay), state_dict=model.trained_state,
        load_state_dict=model.load_trained_state, load_batches=lambda batches: _loader(train_ds, batches, cfg.num_workers),
        on_epoch_start=train_ds.set_epoch, describe_epoch=describe, row_extra=ident,
        best_state=lambda row: {**model.trained_state(), "config": asdict(cfg), "identity": ident, "epoch": row["epoch"], "val_dice": row["val_dice"]},
    )


#: config keys that do not change a training run's results
TRAIN_VOLATILE = ("device", "max_steps", "num_workers", "eval_batch_size", "checkpoint_every")


def adopt_legacy_config(
    out: Path, config: Mapping[str, Any], volatile: Sequence[str], is_legacy: Callable[[dict], bool], upgrade: Callable[[dict], dict]
) -> None:
    """Before a RunFolder reopens ``out``: a config.yaml written before training recipes existed
    (``is_legacy``) is completed as that code ran it (``upgrade``: the ``segprompt`` recipe). If it
    then equals ``config`` (``volatile`` keys aside) it is rewritten in today's form, so the run
    resumes; otherwise a ConfigError says which recipe the folder needs."""
    import yaml

    from segprompt.fileio import atomic_write_text

    path = out / "config.yaml"
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    if not isinstance(old, dict) or not is_legacy(old):
        return
    new = json.loads(json.dumps(dict(config), default=str))
    done = json.loads(json.dumps(upgrade(old), default=str))
    skip = set(volatile)
    a = {k: v for k, v in done.items() if k not in skip}
    b = {k: v for k, v in new.items() if k not in skip}
    if a == b:
        atomic_write_text(path, yaml.safe_dump(done, sort_keys=False))
        log.info("%s: a run folder from before training recipes: it ran the %s recipe; config.yaml completed", out, LEGACY_RECIPE)
        return
    diff = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            diff += [f"{k}.{j}" for j in sorted(set(a[k]) | set(b[k])) if a[k].get(j) != b[k].get(j)]
        elif a.get(k) != b.get(k):
            diff.append(k)
    raise ConfigError(
        f"{out} holds a run made before training recipes existed: it ran what is now --recipe {LEGACY_RECIPE} (the default is "
        f"now tvs, TuneVLSeg's protocol). This run differs from it in: {', '.join(diff)}. Rerun with --recipe {LEGACY_RECIPE} "
        "(and the options it was started with) to resume it, or use another --out folder"
    )


def train_and_evaluate(
    cfg: TrainConfig, out: str | Path, resume: bool = True, test: bool = True, progress: bool = False, check_counts: bool = True
) -> dict[str, Any]:
    """Train (or resume) ``cfg`` into ``out``, then test the best checkpoint; returns the summary row.

    ``resume=False`` refuses a folder that already holds this run's checkpoints. ``test=False``
    stops after training (Optuna trials select on validation only) and returns the training
    summary (``kind: "trained"``, not written as a row).

    Progress is logged at INFO: one line before training (the bare VLSM's validation Dice) and
    one per epoch (train loss, val loss, val Dice, learning rate, seconds); ``progress=True``
    adds a progress bar over each epoch's batches. ``check_counts=False`` skips the split-count
    comparison with the TuneVLSeg benchmark (a sweep does it once per dataset). The loop itself
    is :func:`segprompt.engine.loop.fit`.

    An item that cannot be read (a missing mask, an unreadable image: :class:`DataError`) is
    skipped in training, validation and test, and written once to ``out/errors.jsonl`` with its
    split and the file named in the message; the summary counts them (``skipped_items``).
    """
    from tunevlseg.data import VLSegDataset

    out = Path(out)
    if (out / "checkpoints" / "last.pt").exists() and not resume:
        raise ConfigError(f"{out} already holds a training run (checkpoints/last.pt); rerun with resuming on (resume=True) to continue it, or use another folder")
    config, volatile = {"suite": "tunevlseg-train", **asdict(cfg)}, TRAIN_VOLATILE
    adopt_legacy_config(out, config, volatile, lambda old: old.get("suite") == "tunevlseg-train" and "recipe" not in old, lambda old: {"suite": old.get("suite"), **legacy_train_config(
        {k: v for k, v in old.items() if k != "suite"})})
    run = RunFolder(out, config, volatile=volatile)
    for row in run.results:
        if row.get("kind") == "summary" and test:
            return row
    skip = _SkipLog(run)
    seed_everything(cfg.seed)
    vlsm, learner = build_model(cfg)
    params = _trainable(vlsm, learner)
    ident = {**cfg.identity(), "trainable_params": int(sum(p.numel() for _, p in params)), "learner_params": int(learner.num_trainable_parameters())}
    common = dict(prompt=cfg.prompt, seed=cfg.seed, text=_default_text(cfg), skip_errors=True)
    train_ds = VLSegDataset(skip.load(cfg, "train", cfg.max_train_samples, check_counts), vlsm.image_size, train=True, augment=cfg.augment, **common)
    val_ds = VLSegDataset(skip.load(cfg, "val", cfg.max_eval_samples, check_counts), vlsm.image_size, train=False, **common)
    model = _Model(vlsm, learner)
    if not params:
        log.info("%s: %s on %s has nothing to train; evaluating the frozen model", out.name, cfg.method, cfg.vlsm)
    fitted = fit(_fit_task(cfg, model, params, train_ds, val_ds, skip, ident, out.name), list(range(len(train_ds))),
                 fit_config(cfg, progress), out, run=run, upgrade=_upgrade_checkpoint(cfg))
    if fitted.interrupted:
        return {"kind": "interrupted", **ident, "global_step": fitted.global_step, "out": str(out)}
    if fitted.stopped_early and not fitted.already_finished:
        log.info("%s: stopped early after epoch %d (no better %s for %d epochs)", out.name, fitted.history[-1]["epoch"],
                 cfg.monitor.replace("_", " ").replace("dice", "Dice"), cfg.early_stop)
    trained = _trained_summary(cfg, fitted, ident, train_ds, val_ds)
    if not test:
        return {"kind": "trained", **trained, "skipped_items": len(skip.seen), "out": str(out)}
    return _test_best(cfg, model, run, skip, trained, val_ds, common, fitted)


def _trained_summary(cfg: TrainConfig, fitted: Any, ident: dict[str, Any], train_ds: Any, val_ds: Any) -> dict[str, Any]:
    """What training ended with. The tested model is the best checkpoint's (``best_epoch``); when
    no epoch could be chosen (nothing trained under a recipe that excludes epoch 0) it is the last
    epoch's, and that epoch's values are reported."""
    history = fitted.history
    timed = [h["ms_per_step"] for h in history if h.get("ms_per_step") is not None]
    best_epoch = fitted.best_epoch if fitted.best_epoch is not None else history[-1]["epoch"]
    best = next(h for h in history if h["epoch"] == best_epoch)
    losses = [h["val_loss"] for h in history if (h["epoch"] > 0 or cfg.baseline_counts) and not math.isnan(h.get("val_loss", math.nan))]
    return {
        **ident,
        "recipe": cfg.recipe,
        "val_dice_best": best["val_dice"],
        "best_epoch": best_epoch,
        "best_by": cfg.best_by,
        "val_dice_zeroshot": history[0]["val_dice_zeroshot"],
        "val_dice_init": history[0]["val_dice"],
        "val_loss_best_epoch": best.get("val_loss"),
        "val_loss_min": min(losses) if losses else history[-1].get("val_loss"),
        "val_loss_last": history[-1].get("val_loss"),
        "epochs_run": history[-1]["epoch"],
        "stopped_early": fitted.stopped_early,
        "steps": fitted.global_step,
        "ms_per_step": timed[-1] if timed else None,
        "train_images": len(train_ds),
        "val_images": len(val_ds),
    }


def _load_best_weights(model: _Model, out: Path) -> None:
    """The best checkpoint's weights (``learner`` and ``vlsm`` state, as best.pt has always held them)."""
    path = out / "checkpoints" / "best.pt"
    if path.exists():
        model.load_trained_state(load_checkpoint(path))


def _test_best(cfg: TrainConfig, model: _Model, run: RunFolder, skip: _SkipLog, trained: dict[str, Any], val_ds: Any, common: dict[str, Any], fitted: Any) -> dict[str, Any]:
    """Test the best checkpoint on the test split (val where there is none, said in every row)."""
    from tunevlseg.data import VLSegDataset, has_split

    _load_best_weights(model, run.path)
    split, note = cfg.test_split, None
    if not has_split(cfg.dataset, split, cfg.dataset_root):
        split = "val"
        note = (f"{cfg.dataset} has no labelled {cfg.test_split} split: these scores are on the validation split, which "
                "also selected the checkpoint (TuneVLSeg reported them as test)")
        log.warning("%s", note)
    test_ds = val_ds if split == "val" else VLSegDataset(skip.load(cfg, split, cfg.max_eval_samples, False), model.vlsm.image_size, train=False, **common)
    ident = {k: trained[k] for k in (*cfg.identity(), "trainable_params", "learner_params")}
    split_info = {"split": split, "test_is_val": split == "val", **({"note": note} if note else {})}
    done = {r["id"]: r for r in run.results if r.get("kind") == "image"}
    for row in evaluate(model.vlsm, model.learner, test_ds, cfg, skip=set(done), on_error=lambda err: skip(err, split)):
        row = {"kind": "image", **ident, **split_info, **row}
        run.results.append(row)
        done[row["id"]] = row
    rows = list(done.values())
    if not rows:
        raise DataError(f"{cfg.dataset}: no readable item in the {split} split ({len(test_ds)} listed; see {run.errors.path})")
    dm, dsd = _mean_std([r["dice"] for r in rows])
    im, isd = _mean_std([r["iou"] for r in rows])
    seen = skip.seen
    summary = {"kind": "summary", **trained, **split_info, "n_test": len(rows), "dice_mean": dm, "dice_std": dsd, "iou_mean": im, "iou_std": isd,
               "skipped_items": len(seen), "skipped_test": sum(1 for sp, _ in seen if sp == split),
               "train_seconds": round(sum(h["seconds"] for h in fitted.history), 3), "out": str(run.path)}
    run.results.append(summary)
    log.debug("%s: test Dice %.4f \u00b1 %.4f over %d %s images%s", run.path.name, dm, dsd, len(rows), split,
              f" ({summary['skipped_test']} unreadable, skipped)" if summary["skipped_test"] else "")
    return summary
