"""Finetuning SAM with automated, iterative or box prompts: one loop for the recipes of PointPrompt
(prompt encoder per strategy), micro-sam (iterative error-region prompts) and MedSAM (jittered boxes).

.. code-block:: python

    from pointprompt.finetune import FinetuneConfig, finetune_sam
    result = finetune_sam(FinetuneConfig(dataset="kvasir", model="sam-tiny", train=["mask_decoder"],
                                         prompts="mixed", epochs=5), out="runs/ft_kvasir")
    result["checkpoint"]   # SAM state-dict layout, LoRA merged: create_segmenter("sam", checkpoint=...)
    result["test"]         # test-split IoU / Dice before finetuning and of the checkpoint chosen on validation

    # a reference recipe, with any field overridden
    cfg = FinetuneConfig.from_preset("pointprompt-study", dataset="kvasir", prompts="kmedoids")

Everything happens in the model's input frame (image resized so its longest side is the
encoder's input size, padded bottom-right): prompts are drawn from the ground-truth mask in
that frame, and the loss compares the low-resolution logits with the mask downsampled to the
same grid (the PointPrompt recipe). Validation and test use the real inference path
(:class:`SamSegmenter`, original resolution): mean Dice and IoU of ``eval_strategy`` prompts
(``box``: the ground-truth box).

Splits: the usable images are split by SOURCE image (``meta["image_id"]``, else the sample id),
so the structures of one image never straddle splits: ``test_fraction`` of the source images
are held out for test, then ``val_fraction`` of the rest for validation (the PointPrompt code's
``--train_ratio 0.8`` of its non-test images). The best checkpoint is chosen on validation
(``select_on``); the reported numbers are those of that checkpoint on test.
``test_fraction=0`` is the old split (validation only; the numbers are validation numbers).

Prompt modes (``prompts=``):

* a strategy name (``random``, ``centre``, ``kmedoids``, ...): its points for the budget
  ``n_positive`` / ``n_negative`` (``budget="auto"``: the study's per-dataset budget); one
  point -> multimask output (``train_multimask="auto"``), more -> single output;
* ``box-jitter``: the ground-truth box, jittered by ``box_jitter_mode``: ``medsam`` (default,
  MedSAM's train_one_gpu.py ``NpyDataset``: each side moved OUTWARD by ``randint(0,
  box_jitter)`` pixels of the 1024-pixel input frame, clipped to the image), ``microsam``
  (micro-sam's ``ConvertToSamInputs._distort_boxes``: each side outward by ``uniform(0,
  box_jitter)`` x the box's side) or ``symmetric`` (the old rule: each side moved by
  ``uniform(-box_jitter, box_jitter)`` pixels of the original image);
* ``iterative``: micro-sam's scheme (``training/sam_trainer.py``): start from one positive point
  (multimask) or the box, then corrections (one positive from the false negatives, one negative
  from the false positives of the best-IoU prediction), with the previous logits fed back as the
  mask prompt with probability ``mask_feedback``; ``iterations`` counts the forward passes
  including the first (micro-sam's ``n_sub_iteration``); the loss is averaged over them;
* ``mixed``: per sample, one of the strategy, ``box-jitter`` and ``iterative``.

Loss (``loss=``): Dice + BCE, Dice + focal, or Dice alone, of the best multimask candidate, plus
``iou_weight`` x MSE of the IoU head. ``dice="soft"`` is ``1 - (2I + 1) / (P + T + 1)``;
``"squared"`` is MONAI's ``DiceLoss(squared_pred=True)`` (MedSAM, PointPrompt) and torch_em's
Dice (micro-sam): ``1 - (2I + 1e-5) / (P^2 + T^2 + 1e-5)``. Parts to train (``train=``):
``prompt_encoder``, ``mask_decoder``, ``image_encoder``, ``all``, ``lora`` (LoRA adapters in
the image encoder's attention plus the mask decoder), or any dotted submodule name; a wrong name
raises. When the image encoder is frozen, embeddings come from the embedding cache and the
encoder never runs during training.

Presets (``FinetuneConfig.from_preset`` / ``--preset``): ``pointprompt-study``, ``microsam`` and
``medsam``, each the reference's recipe (see :data:`PRESETS`); fields given explicitly override
the preset, and the run's config.yaml records the resolved values.

Rerunning on the same folder resumes, exactly: the data order depends on (seed, epoch), each
sample's prompts on (seed, epoch, sample) (on (seed, sample) with ``resample_prompts=False``),
and checkpoints hold every optimizer, scheduler and RNG state; a finished run is not retrained
(only its report is rewritten), and a different configuration in the same folder is a
ConfigError. An image that cannot be read, or whose mask is missing or empty, is skipped and
recorded in ``errors.jsonl``. Progress (one line per epoch) is logged at INFO. Under
``torchrun`` the loop runs DistributedDataParallel (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.devices import check_device
from segprompt.engine.losses import bce_loss, focal_loss, mask_iou, sam_loss
from segprompt.engine.loop import FitConfig, FitTask, checkpoint_from_parts, fit, load_best
from segprompt.engine.report import format_lr, plural
from segprompt.engine.runfolder import RunFolder, atomic_write_text
from segprompt.engine.training import init_distributed, param_groups, seed_everything, set_trainable
from segprompt.errors import ConfigError, DataError, PromptError
from segprompt.models.resize import LongestSide
from segprompt.models.sam import SamSegmenter

from pointprompt.strategies import create_strategy, is_correction

log = logging.getLogger(__name__)

PROMPT_MODES = ("iterative", "box-jitter", "mixed")
BOX_JITTER_MODES = ("medsam", "microsam", "symmetric")
LOSSES = ("dice+bce", "dice+focal", "dice")
DICE_FORMS = ("soft", "squared")
SELECT_ON = ("val_dice", "val_loss")
TRAIN_MULTIMASK = ("auto", "single")
#: ``eval_strategy`` value: prompt with the ground-truth box instead of points
EVAL_BOX = "box"
#: ``eval_strategy`` value: the training prompts' strategy (and, for the eval budget, None: the training budget)
SAME = "same"
#: MedSAM's box shift is in pixels of its 1024 x 1024 input frame
MEDSAM_FRAME = 1024
TRAIN_PARTS = {
    "prompt_encoder": ["prompt_encoder"],
    "mask_decoder": ["mask_decoder"],
    "image_encoder": ["image_encoder"],
    "all": ["image_encoder", "prompt_encoder", "mask_decoder"],
    "lora": ["mask_decoder"],  # plus the LoRA adapters
}

#: The reference recipes. Each value was read in the reference's code (see scratch/readme_finetune.md
#: for what remains different on purpose):
#:
#: * ``pointprompt-study``: olivesgatech/PointPrompt ``finetuning SAM/train.py``: only the prompt
#:   encoder trained (image encoder and mask decoder frozen), ``multimask_output=False``,
#:   ``monai.losses.DiceCELoss(sigmoid=True, squared_pred=True)`` (MONAI 1.3: BCE for one
#:   channel), no IoU loss, ``Adam(lr=1e-3, weight_decay=0)``, batch size 1, 50 epochs, stop after
#:   5 epochs without a lower validation loss, the best checkpoint on validation loss, one prompt
#:   set per image (precomputed), ``--train_ratio 0.8`` (80 / 20 train / validation of the
#:   non-test images); points per image from the study's budgets (``point_sampling/main.py``).
#: * ``microsam``: computational-cell-analytics/micro-sam ``training/training.py: train_sam`` and
#:   ``training/sam_trainer.py``: nothing frozen, ``n_sub_iteration=8`` forward passes per sample
#:   (the first included), ``mask_prob=0.5``, start alternating one positive point (multimask)
#:   and the box (``box_distortion_factor=0.025``), loss = Dice (min over the multimask outputs)
#:   + MSE of the IoU head, ``AdamW(lr=1e-5)`` (weight decay 0.01, torch's default),
#:   ``ReduceLROnPlateau(factor=0.9, patience=3)``, ``early_stopping=10``, ``n_epochs=100``.
#: * ``medsam``: bowang-lab/MedSAM ``train_one_gpu.py``: image encoder + mask decoder trained,
#:   prompt encoder frozen, ground-truth boxes enlarged by 0-20 px (``bbox_shift=20``) at 1024,
#:   ``multimask_output=False``, ``DiceLoss(sigmoid=True, squared_pred=True)`` +
#:   ``BCEWithLogitsLoss``, no IoU loss, ``AdamW(lr=1e-4, weight_decay=0.01)`` over all trained
#:   parameters, batch size 2, 1000 epochs, no scheduler, no early stopping.
PRESETS: dict[str, dict[str, Any]] = {
    "pointprompt-study": dict(
        train=["prompt_encoder"], prompts="random", budget="auto", n_positive=1, n_negative=1, train_multimask="single",
        loss="dice+bce", dice="squared", iou_weight=0.0, lr=1e-3, weight_decay=0.0, decay_all=True, schedule="constant",
        grad_clip=0.0, batch_size=1, epochs=50, early_stop=5, select_on="val_loss", resample_prompts=False,
        val_fraction=0.2, test_fraction=0.2, eval_strategy=SAME, eval_positive=None, eval_negative=None, eval_multimask="single",
    ),
    "microsam": dict(
        train=["all"], prompts="iterative", iterations=8, mask_feedback=0.5, box_jitter_mode="microsam", box_jitter=0.025,
        train_multimask="auto", loss="dice", dice="squared", iou_weight=1.0, lr=1e-5, weight_decay=0.01, decay_all=True,
        schedule="plateau", plateau_factor=0.9, plateau_patience=3, grad_clip=0.0, batch_size=1, epochs=100, early_stop=10,
    ),
    "medsam": dict(
        train=["image_encoder", "mask_decoder"], prompts="box-jitter", box_jitter_mode="medsam", box_jitter=20.0,
        train_multimask="single", loss="dice+bce", dice="squared", iou_weight=0.0, lr=1e-4, weight_decay=0.01, decay_all=True,
        schedule="constant", grad_clip=0.0, batch_size=2, epochs=1000, early_stop=0, eval_strategy=EVAL_BOX, eval_multimask="single",
    ),
}


def preset_fields(preset: str | None, given: Mapping[str, Any], explicit: Iterable[str] | None = None) -> dict[str, Any]:
    """FinetuneConfig fields for ``preset`` with ``given`` on top: a given field overrides the
    preset's value when it is in ``explicit`` (default: every given field) or the preset does
    not set it. Giving ``n_positive`` or ``n_negative`` explicitly drops the preset's ``budget``."""
    explicit = set(given) if explicit is None else set(explicit)
    if preset is None:
        return dict(given)
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    values: dict[str, Any] = {**copy.deepcopy(PRESETS[preset]), "preset": preset}
    for key, value in given.items():
        if key in explicit or key not in values:
            values[key] = value
    if {"n_positive", "n_negative"} & explicit and "budget" not in explicit:
        values["budget"] = None
    return values


def _check_strategy(name: str, flag: str, more: str = "") -> None:
    try:
        create_strategy(name)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}{more}") from None


def _choice(value: Any, allowed: Sequence[Any], flag: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{flag} must be one of {', '.join(map(str, allowed))}, got {value!r}")


@dataclass
class FinetuneConfig:
    """Everything that determines a finetuning run (saved as the run's config.yaml).

    Split: ``test_fraction`` of the source images for test (0: none), then ``val_fraction`` of
    the rest for validation. ``box_jitter``: the largest shift of a box side; its unit is that of
    ``box_jitter_mode`` (``medsam``: whole pixels of the 1024-pixel input frame; ``microsam``: a
    fraction of the box's side; ``symmetric``: pixels of the original image). ``iterations``:
    forward passes per sample of the ``iterative`` mode, the first included (micro-sam's
    ``n_sub_iteration``; the code before this counted one more). ``train_multimask``: ``auto``
    (one point -> 3 candidates, the best in the loss) or ``single``. ``dice``: ``soft`` or
    ``squared`` (see the module). ``decay_all``: weight decay on every trained tensor (torch's
    AdamW over ``model.parameters()``, as the references) instead of weight matrices only.
    ``grad_clip``: max gradient norm (0: none). ``resample_prompts``: False draws each image's
    training prompts once (PointPrompt's precomputed sets). ``select_on``: validation metric for
    the best checkpoint and early stopping (``val_loss``: the training loss on the validation
    images, with fixed prompts). ``budget``: ``"auto"`` takes ``n_positive`` / ``n_negative``
    from the study's per-dataset budget where one is known. ``eval_strategy``: ``"same"`` = the
    training strategy, ``"box"`` = the ground-truth box; ``eval_positive`` / ``eval_negative``
    None = the training budget. ``preset``: the preset the values came from (provenance).
    """

    dataset: str = "synthetic-lesions"
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    limit: int | None = None
    model: str | None = "sam-tiny"
    checkpoint: str | None = None
    preset: str | None = None
    train: list[str] = field(default_factory=lambda: ["mask_decoder"])
    prompts: str = "mixed"
    strategy: str = "random"
    n_positive: int = 1
    n_negative: int = 0
    budget: str | None = None
    iterations: int = 8
    mask_feedback: float = 0.5
    box_jitter: float = 20.0
    box_jitter_mode: str = "medsam"
    train_multimask: str = "auto"
    resample_prompts: bool = True
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.01
    decay_all: bool = False
    schedule: str = "cosine"
    warmup_steps: int = 0
    plateau_factor: float = 0.2
    plateau_patience: int = 2
    grad_clip: float = 1.0
    early_stop: int = 5
    select_on: str = "val_dice"
    loss: str = "dice+bce"
    dice: str = "soft"
    iou_weight: float = 1.0
    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_targets: list[str] = field(default_factory=lambda: ["image_encoder.blocks.*.attn.qkv"])
    precision: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 0
    eval_strategy: str = "random"
    eval_positive: int | None = 1
    eval_negative: int | None = 0
    eval_multimask: str = "best"
    max_steps: int | None = None

    @classmethod
    def from_preset(cls, preset: str, **fields_: Any) -> "FinetuneConfig":
        """The ``preset`` recipe (see :data:`PRESETS`) with ``fields_`` overriding its values."""
        return cls(**preset_fields(preset, fields_))

    def __post_init__(self) -> None:
        if isinstance(self.train, str):
            self.train = [t for t in self.train.split(",") if t]
        if (self.model is None) == (self.checkpoint is None):
            raise ConfigError("give exactly one of --model (model=, e.g. sam-tiny) or --checkpoint (checkpoint=, a SAM checkpoint file or registry name)")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"--preset: unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if self.prompts not in PROMPT_MODES:
            _check_strategy(self.prompts, "--prompts", f" (or one of {', '.join(PROMPT_MODES)})")
        _check_strategy(self.strategy, "--strategy")
        if self.eval_strategy == SAME:
            self.eval_strategy = self.placement_strategy
        if self.eval_strategy != EVAL_BOX:
            _check_strategy(self.eval_strategy, "eval_strategy", f" (or {EVAL_BOX})")
        self._resolve_budget()
        _choice(self.loss, LOSSES, "--loss")
        _choice(self.dice, DICE_FORMS, "--dice")
        _choice(self.box_jitter_mode, BOX_JITTER_MODES, "--box-jitter-mode")
        _choice(self.train_multimask, TRAIN_MULTIMASK, "--train-multimask")
        _choice(self.select_on, SELECT_ON, "--select-on")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"--epochs and --batch-size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.iterations < 1:
            raise ConfigError(f"--iterations counts forward passes, the first included: >= 1, got {self.iterations}")
        if not 0 <= self.mask_feedback <= 1:
            raise ConfigError(f"mask_feedback is a probability in [0, 1], got {self.mask_feedback}")
        if self.box_jitter < 0 or (self.box_jitter_mode == "medsam" and self.box_jitter != int(self.box_jitter)):
            raise ConfigError(f"--box-jitter must be >= 0 (whole pixels for --box-jitter-mode medsam, MedSAM's bbox_shift), got {self.box_jitter}")

    def _resolve_budget(self) -> None:
        from pointprompt.budgets import budget_for

        if self.budget not in (None, "auto"):
            self.n_positive, self.n_negative = budget_for(self.budget)
        elif self.budget == "auto":
            try:
                self.n_positive, self.n_negative = budget_for(Path(self.dataset).name if Path(self.dataset).expanduser().is_dir() else self.dataset)
            except ConfigError:
                pass  # no study budget for this dataset: the given n_positive / n_negative
        if self.eval_positive is None:
            self.eval_positive = self.n_positive
        if self.eval_negative is None:
            self.eval_negative = self.n_negative

    @property
    def placement_strategy(self) -> str:
        return self.prompts if self.prompts not in PROMPT_MODES else self.strategy

    @property
    def encoder_frozen(self) -> bool:
        return not any(t in ("image_encoder", "all", "lora") or t.startswith("image_encoder") for t in self.train)

    @property
    def eval_description(self) -> str:
        if self.eval_strategy == EVAL_BOX:
            return "ground-truth box prompts"
        return f"{self.eval_strategy} prompts, {self.eval_positive} + {self.eval_negative} points"


def config_fields() -> set[str]:
    return {f.name for f in fields(FinetuneConfig)}


# -- data in the model frame ------------------------------------------------------------------
@dataclass
class FrameSample:
    """One training image in the model's input frame."""

    id: str
    index: int
    image: np.ndarray  # (h, w, 3) uint8, resized (not padded)
    mask: np.ndarray  # (h, w) bool in the same frame
    lowres: np.ndarray  # (L, L) float32 target on the low-res logit grid (padded frame)
    transform: LongestSide
    original: Sample


def to_frame(sample: Sample, index: int, img_size: int, lowres: int) -> FrameSample:
    tf = LongestSide(img_size, sample.size)
    h, w = tf.input_size
    m = torch.from_numpy(np.asarray(sample.mask, np.float32))[None, None]
    mask = (F.interpolate(m, (h, w), mode="bilinear", align_corners=False)[0, 0] > 0.5).numpy()
    target = (tf.mask_to_lowres(sample.mask, lowres) >= 0.5).astype(np.float32)
    return FrameSample(sample.id, index, tf.apply_image(sample.image), mask, target, tf, sample)


def image_key(sample: Sample) -> str:
    """The source image of a sample: ``meta["image_id"]`` (readers with several structures per
    image set it), else the sample id."""
    key = sample.meta.get("image_id") if sample.meta else None
    return str(sample.id if key is None else key)


def split_by_image(keys: Sequence[str], val_fraction: float, seed: int, test_fraction: float = 0.0) -> tuple[list[int], list[int], list[int]]:
    """Deterministic train / validation / test indices of ``keys`` (one source-image key per
    sample), split by source image so that no image straddles two splits.

    The distinct images, in order of first appearance, are permuted by ``seed``; the first
    ``round(test_fraction x images)`` (at least 1 when ``test_fraction > 0``) are the test
    images, then ``round(val_fraction x the rest)`` (at least 1) the validation images; at least
    one image is left for training. With one sample per image and ``test_fraction=0`` this is
    the split of the code before test splits existed.
    """
    groups = list(dict.fromkeys(keys))
    g = len(groups)
    need = 3 if test_fraction > 0 else 2
    if g < need:
        what = "train, validation and test" if test_fraction > 0 else "train and validation"
        raise DataError(f"finetuning needs at least {need} usable source images ({what}), got {g}")
    order = [groups[i] for i in np.random.default_rng(seed).permutation(g)]
    n_test = min(g - 2, max(1, round(g * test_fraction))) if test_fraction > 0 else 0
    rest = order[n_test:]
    n_val = min(len(rest) - 1, max(1, round(len(rest) * val_fraction)))
    test, val = set(order[:n_test]), set(rest[:n_val])
    out: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i, k in enumerate(keys):
        out[2 if k in test else 1 if k in val else 0].append(i)
    return out


def _rng(*keys: Any) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


# -- prompts for one training sample -----------------------------------------------------------
@dataclass
class TrainPrompt:
    coords: np.ndarray  # (n, 2) model-frame (x, y)
    labels: np.ndarray  # (n,)
    box: np.ndarray | None  # (4,) model frame
    multimask: bool


def _box_prompt(fs: FrameSample, rng: np.random.Generator, jitter: float, mode: str = "medsam") -> TrainPrompt:
    """The ground-truth box in the model frame, jittered by ``mode`` (see the module docstring)."""
    ys, xs = np.nonzero(fs.mask)
    h, w = fs.mask.shape
    if mode == "medsam":
        box = medsam_box(fs.mask, rng, int(jitter), fs.transform.target / MEDSAM_FRAME)
    elif mode == "microsam":
        box = microsam_box(fs.mask, rng, jitter)
    else:  # "symmetric": the rule before MedSAM's, in pixels of the original image
        scale = fs.transform.input_size[1] / fs.transform.original_size[1]
        j = rng.uniform(-jitter, jitter, 4) * scale
        box = np.array([xs.min() + j[0], ys.min() + j[1], xs.max() + 1 + j[2], ys.max() + 1 + j[3]])
        box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
        box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
    return TrainPrompt(np.zeros((0, 2)), np.zeros(0, np.int64), np.asarray(box, np.float64), False)


def medsam_box(mask: np.ndarray, rng: np.random.Generator, shift: int, scale: float = 1.0) -> np.ndarray:
    """MedSAM's training box (bowang-lab/MedSAM ``train_one_gpu.py``, ``NpyDataset.__getitem__``):
    the tight box of ``mask`` as (x_min, y_min, x_max, y_max) with the max the last foreground
    index, each side moved OUTWARD by ``randint(0, shift)`` (inclusive; drawn in the order x_min,
    x_max, y_min, y_max), clipped to [0, W] x [0, H]. ``shift`` is in pixels of MedSAM's
    1024 x 1024 input frame; ``scale`` (frame side / 1024) turns it into this frame's pixels.
    The box always contains the tight box and stays in the image."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    d = [scale * int(rng.integers(0, shift, endpoint=True)) for _ in range(4)]
    return np.array([max(0.0, xs.min() - d[0]), max(0.0, ys.min() - d[2]), min(float(w), xs.max() + d[1]), min(float(h), ys.max() + d[3])])


def microsam_box(mask: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """micro-sam's distorted box (``training/util.py: ConvertToSamInputs._distort_boxes``): the
    region-props box (max exclusive), each side moved outward by ``uniform(0, factor)`` x the box
    side (drawn in the order y0, y1, x0, x1), rounded, clipped to the image; returned as XYXY."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    ly, lx = y1 - y0, x1 - x0
    y0 = int(round(max(0, y0 - rng.uniform(0, factor) * ly)))
    y1 = int(round(min(h, y1 + rng.uniform(0, factor) * ly)))
    x0 = int(round(max(0, x0 - rng.uniform(0, factor) * lx)))
    x1 = int(round(min(w, x1 + rng.uniform(0, factor) * lx)))
    return np.array([x0, y0, x1, y1], np.float64)


def _strategy_prompt(fs: FrameSample, rng: np.random.Generator, name: str, n_pos: int, n_neg: int, multimask: str = "auto") -> TrainPrompt:
    strat = create_strategy(name)
    if is_correction(strat):
        pts = strat.first(fs.mask, rng)
    else:
        pts = strat(fs.mask, fs.image, rng, n_pos, n_neg)
    return TrainPrompt(pts.coords.astype(np.float64), pts.labels, None, multimask == "auto" and len(pts) == 1)


# -- the loss ---------------------------------------------------------------------------------
def squared_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Dice loss with squared denominators per mask: (..., H, W) -> (...); MONAI's
    ``DiceLoss(sigmoid=True, squared_pred=True)`` (MedSAM, PointPrompt; smooth 1e-5) and, up to
    its 1e-7 clamp instead of smoothing, torch_em's ``DiceLoss`` (micro-sam)."""
    prob = logits.sigmoid().flatten(-2)
    tgt = target.float().flatten(-2)
    return 1.0 - (2.0 * (prob * tgt).sum(-1) + smooth) / ((prob * prob).sum(-1) + (tgt * tgt).sum(-1) + smooth)


def training_loss(
    logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, loss: str = "dice+bce", dice: str = "soft", iou_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """The mask loss of the best of the K candidates + ``iou_weight`` x MSE of the IoU head.

    ``logits`` (B, K, H, W), ``iou_pred`` (B, K), ``target`` (B, H, W). ``loss``: ``dice+bce``,
    ``dice+focal`` or ``dice``; ``dice``: ``soft`` (segprompt's :func:`sam_loss`) or ``squared``.
    """
    if dice == "soft":
        return sam_loss(logits, iou_pred, target, bce_weight=0.0 if loss == "dice" else 1.0, iou_weight=iou_weight, use_focal=loss == "dice+focal")
    tgt = target[:, None].expand_as(logits)
    per_mask = squared_dice_loss(logits, tgt)
    if loss == "dice+bce":
        per_mask = per_mask + bce_loss(logits, tgt)
    elif loss == "dice+focal":
        per_mask = per_mask + 20.0 * focal_loss(logits, tgt)
    best = per_mask.min(dim=1).values
    true_iou = mask_iou(logits, tgt)
    iou_mse = F.mse_loss(iou_pred, true_iou)
    total = best.mean() + iou_weight * iou_mse
    return total, {"mask": float(best.detach().mean()), "iou_mse": float(iou_mse.detach()), "iou": float(true_iou.max(dim=1).values.mean())}


# -- the differentiable step ---------------------------------------------------------------
#: the prompt key of validation-loss passes (the same prompts every epoch)
VAL_KEY = "val"


class SamTrainStep(nn.Module):
    """``forward(batch, epoch) -> loss`` for a batch of :class:`FrameSample`; wrap it in DDP for
    several GPUs. ``epoch`` keys each sample's prompts; :data:`VAL_KEY` gives the fixed
    prompts of the validation loss."""

    def __init__(self, sam: nn.Module, cfg: FinetuneConfig, embeddings: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        self.sam = sam
        self.cfg = cfg
        self.embeddings = embeddings  # image id -> (1, C, h, w) when the encoder is frozen
        self.lowres = 4 * sam.prompt_encoder.image_embedding_size[0]

    def _embed(self, batch: Sequence[FrameSample]) -> torch.Tensor:
        dev = next(self.sam.parameters()).device
        if self.embeddings is not None:
            return torch.cat([self.embeddings[fs.id] for fs in batch]).to(dev)
        x = torch.cat([self.sam.preprocess(torch.from_numpy(np.array(fs.image)).permute(2, 0, 1)[None].to(dev)) for fs in batch])
        return self.sam.image_encoder(x)

    def _decode(self, emb: torch.Tensor, p: TrainPrompt, mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        dev = emb.device
        pe = self.sam.prompt_encoder
        points = None
        if len(p.coords):
            points = (torch.as_tensor(p.coords[None], dtype=torch.float, device=dev), torch.as_tensor(p.labels[None], dtype=torch.int, device=dev))
        box = torch.as_tensor(p.box[None], dtype=torch.float, device=dev) if p.box is not None else None
        sparse, dense = pe(points=points, boxes=box, masks=mask_input)
        return self.sam.mask_decoder(
            image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=p.multimask
        )

    def _loss(self, logits: torch.Tensor, iou: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        return training_loss(logits, iou, target, loss=cfg.loss, dice=cfg.dice, iou_weight=cfg.iou_weight)

    def sample_rng(self, epoch: Any, fs: FrameSample) -> np.random.Generator:
        """The prompts' generator of ``fs`` in ``epoch``: keyed by (seed, epoch, sample), or by
        (seed, sample) alone when prompts are drawn once per image (``resample_prompts=False``)."""
        if epoch != VAL_KEY and not self.cfg.resample_prompts:
            return _rng(self.cfg.seed, "once", fs.index)
        return _rng(self.cfg.seed, epoch, fs.index)

    def forward(self, batch: Sequence[FrameSample], epoch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        emb = self._embed(batch)
        losses, logs = [], []
        for i, fs in enumerate(batch):
            rng = self.sample_rng(epoch, fs)
            target = torch.from_numpy(fs.lowres)[None].to(emb.device)
            mode = cfg.prompts
            if mode == "mixed":
                mode = ("strategy", "box-jitter", "iterative")[int(rng.integers(0, 3))]
            if mode == "iterative":
                loss, log_ = self._iterative(emb[i : i + 1], fs, rng, target)
            else:
                if mode == "box-jitter":
                    p = _box_prompt(fs, rng, cfg.box_jitter, cfg.box_jitter_mode)
                else:
                    p = _strategy_prompt(fs, rng, cfg.placement_strategy, cfg.n_positive, cfg.n_negative, cfg.train_multimask)
                logits, iou = self._decode(emb[i : i + 1], p, None)
                loss, log_ = self._loss(logits, iou, target)
            losses.append(loss)
            logs.append(log_)
        return torch.stack(losses).mean(), {k: float(np.mean([l[k] for l in logs])) for k in logs[0]}

    def _iterative(self, emb: torch.Tensor, fs: FrameSample, rng: np.random.Generator, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """micro-sam's iterative prompting (``sam_trainer.py: _compute_iterative_loss``):
        ``iterations`` forward passes, the first included; after each but the last, one
        correction from the errors of the best-IoU candidate and, with probability
        ``mask_feedback``, its logits as the next mask prompt; the loss is their mean."""
        cfg = self.cfg
        corr = create_strategy("microsam")
        if rng.random() < 0.5:
            p = _strategy_prompt(fs, rng, "random", 1, 0, cfg.train_multimask)
        else:
            p = _box_prompt(fs, rng, cfg.box_jitter, cfg.box_jitter_mode)
        h, w = fs.mask.shape
        mask_input = None
        losses, logs = [], []
        for it in range(cfg.iterations):
            logits, iou = self._decode(emb, p, mask_input)
            loss, log_ = self._loss(logits, iou, target)
            losses.append(loss)
            logs.append(log_)
            if it == cfg.iterations - 1:
                break
            best = int(iou[0].argmax()) if logits.shape[1] > 1 else 0
            chosen = logits[:, best : best + 1].detach()
            up = F.interpolate(chosen, (self.sam.image_encoder.img_size,) * 2, mode="bilinear", align_corners=False)[0, 0, :h, :w]
            pred = (up > 0).cpu().numpy()
            new = corr.correct(fs.mask, pred, rng)
            p = TrainPrompt(np.concatenate([p.coords, new.coords]), np.concatenate([p.labels, new.labels]), p.box, False)
            mask_input = chosen if rng.random() < cfg.mask_feedback else None
        return torch.stack(losses).mean(), {k: float(np.mean([l[k] for l in logs])) for k in logs[0]}


@torch.no_grad()
def validation_loss(step: SamTrainStep, frames: Sequence[FrameSample], batch_size: int = 1) -> float:
    """Mean training loss per validation image, with each image's fixed validation prompts
    (PointPrompt's criterion for the best checkpoint and early stopping)."""
    was_training = step.sam.training
    step.sam.eval()
    total = 0.0
    for b in range(0, len(frames), batch_size):
        batch = frames[b : b + batch_size]
        loss, _ = step(batch, VAL_KEY)
        total += float(loss) * len(batch)
    step.sam.train(was_training)
    return total / max(1, len(frames))


# -- the run ------------------------------------------------------------------------------------
def _load_model(cfg: FinetuneConfig) -> SamSegmenter:
    from segprompt.models import create_segmenter

    if cfg.checkpoint is not None:
        seg = create_segmenter("sam", checkpoint=cfg.checkpoint, device=cfg.device)
    else:
        seg = create_segmenter(cfg.model, device=cfg.device)
    if not isinstance(seg, SamSegmenter):
        raise ConfigError(f"finetuning needs a SAM model; --model {cfg.model} is a {type(seg).__name__}")
    return seg


def _prepare_model(seg: SamSegmenter, cfg: FinetuneConfig) -> int:
    from segprompt.backbones.lora import inject_lora

    extra: list[nn.Parameter] = []
    modules: list[str] = []
    for part in cfg.train:
        modules += TRAIN_PARTS.get(part, [part])
        if part == "lora":
            extra += inject_lora(seg.model, cfg.lora_targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
    return set_trainable(seg.model, sorted(set(modules)), extra)


def skip_input(run: RunFolder | None, item: str, exc: BaseException, **extra: Any) -> None:
    """Record a skipped input in ``errors.jsonl`` once per run folder (a resumed run, or the next
    epoch's validation, meets the same bad file again: that is logged at DEBUG only)."""
    if run is None:
        log.warning("skipped %s: %s", item, exc)
    else:
        run.record_error_once(item, exc, **extra)


def _usable_samples(ds: SegmentationDataset, cfg: FinetuneConfig, run: RunFolder | None, progress: bool = False) -> list[Sample]:
    n = len(ds) if cfg.limit is None else min(cfg.limit, len(ds))
    ids = ds.ids
    out = []
    for i in tqdm(range(n), desc="loading images", unit="image", disable=not progress, leave=False, delay=2.0):
        try:
            s = ds[i]  # a missing mask or an unreadable image raises DataError here
            if s.mask is None or not np.asarray(s.mask).any():
                raise PromptError("empty ground-truth mask: no prompt can be drawn (image skipped)")
            out.append(s)
        except (DataError, PromptError) as exc:
            skip_input(run, ids[i], exc, stage="loading")
    return out


def load_split(
    cfg: FinetuneConfig, dataset: SegmentationDataset | None = None, run: RunFolder | None = None, progress: bool = False
) -> tuple[list[Sample], list[int], list[int], list[int]]:
    """The usable samples (readable, non-empty masks) and their deterministic train, validation
    and test indices, split by source image (:func:`split_by_image`; test empty when
    ``cfg.test_fraction`` is 0). Images that cannot be used are skipped and recorded in
    ``run``'s errors.jsonl.
    """
    from segprompt.data.registry import load_dataset

    ds = dataset if dataset is not None else load_dataset(cfg.dataset, **cfg.dataset_kwargs)
    samples = _usable_samples(ds, cfg, run, progress)
    train_idx, val_idx, test_idx = split_by_image([image_key(s) for s in samples], cfg.val_fraction, cfg.split_seed, cfg.test_fraction)
    return samples, train_idx, val_idx, test_idx


def _frames(samples: Sequence[Sample], indices: Sequence[int], seg: SamSegmenter, run: RunFolder | None) -> list[FrameSample]:
    """The training samples in the model frame; one that cannot be converted is skipped."""
    out = []
    for i in indices:
        try:
            out.append(to_frame(samples[i], i, seg.arch.img_size, seg.arch.lowres_size))
        except DataError as exc:
            skip_input(run, samples[i].id, exc, stage="training")
    return out


@torch.no_grad()
def evaluate(seg: SamSegmenter, samples: Sequence[Sample], cfg: FinetuneConfig, run: RunFolder | None = None, progress: bool = False) -> dict[str, float]:
    """Mean IoU and Dice of ``eval_strategy`` prompts (``box``: the ground-truth box) on
    ``samples`` at original resolution, with the ``eval_multimask`` policy.

    An image that cannot be evaluated is skipped (recorded in ``run``'s errors.jsonl); ``n`` is
    the number of images evaluated.
    """
    from pointprompt.bench import PointBenchConfig, evaluate_image

    if cfg.eval_strategy == EVAL_BOX:
        def score(s: Sample) -> list[dict[str, Any]]:
            return [_box_scores(seg, s, cfg.eval_multimask)]
    else:
        bench = PointBenchConfig(datasets=["eval"], models=["sam"], strategies=[cfg.eval_strategy], n_positive=cfg.eval_positive, n_negative=cfg.eval_negative, steps=1, seed=cfg.seed, multimask=cfg.eval_multimask)

        def score(s: Sample) -> list[dict[str, Any]]:
            return evaluate_image(bench, seg, "sam", "eval", s, (cfg.eval_positive, cfg.eval_negative), 1)

    was_training = seg.model.training
    seg.model.eval()
    rows = []
    for s in tqdm(samples, desc="evaluating", unit="image", disable=not progress, leave=False, delay=2.0):
        try:
            rows += score(s)
        except (DataError, PromptError) as exc:
            skip_input(run, s.id, exc, stage="evaluation")
    seg.model.train(was_training)
    if not rows:
        raise DataError(f"none of the {len(samples)} evaluation images could be evaluated (see errors.jsonl)")
    return {"iou": float(np.mean([r["iou"] for r in rows])), "dice": float(np.mean([r["dice"] for r in rows])), "n": len(rows)}


def _box_scores(seg: SamSegmenter, sample: Sample, multimask: str) -> dict[str, float]:
    """IoU and Dice of the model prompted with the tight ground-truth box."""
    from segprompt.metrics import dice, iou
    from segprompt.prompts import Box, PromptSet

    gt = np.asarray(sample.mask, bool)
    if not gt.any():
        raise PromptError("empty ground-truth mask: no box can be drawn (image skipped)")
    mask = seg.segment(seg.encode(sample.image), PromptSet(box=Box.from_mask(gt)), multimask=multimask, targets=gt).masks[0, 0]
    return {"iou": float(iou(mask, gt)), "dice": float(dice(mask, gt))}


def export_checkpoint(seg: SamSegmenter, path: str | Path) -> Path:
    """Write the model in segment-anything's state-dict layout (LoRA merged): .pth or .safetensors."""
    from segprompt.backbones.lora import merge_lora
    from segprompt.models.sam_arch import save_sam

    model = merge_lora(copy.deepcopy(seg.model)).cpu()
    return save_sam(model, path, seg.arch)


# -- words for logs and reports -------------------------------------------------------------------
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


def _epoch_rows(run: RunFolder) -> list[dict[str, Any]]:
    return sorted((r for r in run.results.rows() if r.get("kind", "epoch") == "epoch"), key=lambda r: r["epoch"])


def _already_finished(run: RunFolder | None, out: Path, cfg: FinetuneConfig) -> dict[str, Any]:
    """The rerun of a finished run: nothing is trained or evaluated; the report is rewritten."""
    result = json.loads((out / "summary.json").read_text())
    if run is not None:
        early = ", stopped early" if result.get("stopped_early") else ""
        log.info("%s: already finished (%s%s); nothing to train, rewriting the report", out, plural(result["epochs_run"], "epoch"), early)
        run.finish(0)
        _write_report(run, result, [{k: h.get(k) for k in history_columns(cfg)} for h in _epoch_rows(run)], cfg)
    return result


def fit_config(cfg: FinetuneConfig, progress: bool = False) -> FitConfig:
    """The training loop's settings for ``cfg``: AdamW (Adam when the weight decay is 0),
    gradient clipping ``grad_clip``, early stopping and the best checkpoint on ``select_on`` over
    the trained epochs (the untrained baseline never counts)."""
    return FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, grad_clip=cfg.grad_clip or None, precision=cfg.precision, device=cfg.device,
        schedule=cfg.schedule, warmup_steps=cfg.warmup_steps, plateau_factor=cfg.plateau_factor, plateau_patience=cfg.plateau_patience,
        monitor=cfg.select_on, monitor_mode="min" if cfg.select_on == "val_loss" else "max", patience=cfg.early_stop,
        baseline_counts=False, checkpoint_every=cfg.checkpoint_every or None, max_steps=cfg.max_steps, progress=progress,
    )


def _upgrade_checkpoint(cfg: FinetuneConfig) -> Any:
    """``last.pt`` as finetune_sam wrote it before the shared loop -> the loop's layout."""

    def upgrade(ck: dict[str, Any]) -> dict[str, Any]:
        es = ck["early_stopping"]
        return checkpoint_from_parts(
            fit_config(cfg), ck["model"], ck["optimizer"], ck["scheduler"], ck["scaler"], ck["rng"], ck["epoch"], ck["batch"],
            ck["global_step"], ck["history"], es.get("best"), es.get("bad_checks", 0),
        )

    return upgrade


def _optimizer_params(seg: SamSegmenter, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """AdamW groups: decay on every trained tensor (``decay_all``, the references' plain
    ``AdamW(model.parameters())``), or on weight matrices only (segprompt's default)."""
    if cfg.decay_all:
        return [{"params": [p for p in seg.model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    return param_groups(seg.model, cfg.weight_decay)


def _fit_task(
    seg: SamSegmenter, cfg: FinetuneConfig, train: list[FrameSample], val: list[Sample], val_frames: list[FrameSample], out: Path, run: RunFolder | None, dist: Any, progress: bool
) -> FitTask:
    """The finetuning's part of the loop: the SAM training step (DDP-wrapped under torchrun),
    validation through the real inference path (plus the validation loss for
    ``select_on="val_loss"``), epoch lines and the best-checkpoint export."""
    embeddings = None
    if cfg.encoder_frozen:
        from segprompt.cache import EmbeddingCache

        seg.cache = EmbeddingCache(out / "embeddings")
        embeddings = {fs.id: seg.encode(fs.original.image).features["embeddings"].cpu() for fs in [*train, *val_frames]}
    step = SamTrainStep(seg.model, cfg, embeddings)
    trainer: nn.Module = step
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(step, find_unused_parameters=True, device_ids=[dist.local_rank] if cfg.device.startswith("cuda") else None)

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        seg.forget_weights_hash()
        m = evaluate(seg, val, cfg, run, progress=progress and dist.is_main)
        row = {"val_iou": m["iou"], "val_dice": m["dice"]}
        if cfg.select_on == "val_loss":
            row["val_loss"] = validation_loss(step, val_frames, cfg.batch_size)
        return row

    return FitTask(
        seg.model, lambda batch, epoch: trainer(batch, epoch), evaluate_epoch, params=_optimizer_params(seg, cfg),
        on_best=lambda row: export_checkpoint(seg, out / "sam_best.pth"), describe_epoch=lambda row: _epoch_line(out, row, cfg.epochs),
    )


def _recorded_test(run: RunFolder | None, which: str) -> dict[str, Any] | None:
    if run is None:
        return None
    rows = [r for r in run.results.rows() if r.get("kind") == "test" and r.get("model") == which]
    return {k: rows[-1][k] for k in ("iou", "dice", "n")} if rows else None


def _test_scores(seg: SamSegmenter, test: Sequence[Sample], cfg: FinetuneConfig, run: RunFolder, which: str, progress: bool, **extra: Any) -> dict[str, Any]:
    """Test IoU / Dice of the model as it is now (``which``: ``before`` or ``best``), evaluated
    once per run folder (a resumed or rerun run reads the recorded row)."""
    done = _recorded_test(run, which)
    if done is not None:
        return done
    seg.forget_weights_hash()
    m = evaluate(seg, test, cfg, run, progress=progress)
    run.results.append({"kind": "test", "model": which, **extra, **m})
    return m


def finetune_sam(cfg: FinetuneConfig, out: str | Path, resume: bool | None = None, dataset: SegmentationDataset | None = None, progress: bool = True) -> dict[str, Any]:
    """Run a finetuning run into ``out``, or resume the one there; returns the final metrics and paths.

    The best checkpoint is chosen on validation; ``result["test"]`` holds the test-split
    scores before finetuning and of that checkpoint (None with ``test_fraction=0``).
    Running again on the same folder continues where the run stopped (bit-identical to an
    uninterrupted run); a finished run is not retrained, only its report is rewritten.
    ``resume`` is ignored (kept for old callers: resuming is automatic). ``progress``: progress
    bars over images (shown only when a loop takes more than a few seconds); the per-epoch lines
    are logged at INFO either way. The loop itself is :func:`segprompt.engine.loop.fit`.
    """
    check_device(cfg.device)
    dist = init_distributed(cfg.device)
    out = Path(out)
    finished = (out / "summary.json").exists()
    if not finished:  # a wrong --dataset, --root, --model or --checkpoint fails before the run folder is made
        from segprompt.data.registry import load_dataset

        dataset = dataset if dataset is not None else load_dataset(cfg.dataset, **cfg.dataset_kwargs)
        seed_everything(cfg.seed)
        seg = _load_model(cfg)
    run = RunFolder(out, {"suite": "finetune-sam", **asdict(cfg)}, volatile=("device", "max_steps")) if dist.is_main else None
    if finished:
        return _already_finished(run, out, cfg)
    n_trainable = _prepare_model(seg, cfg)
    if run is not None:
        log.info("%s: %s trainable parameters (%s)", out.name, f"{n_trainable:,}", ", ".join(cfg.train))
    seg.model.to(cfg.device)
    samples, train_idx, val_idx, test_idx = load_split(cfg, dataset, run, progress=progress and dist.is_main)
    train = _frames(samples, train_idx, seg, run)
    val = [samples[i] for i in val_idx]
    test = [samples[i] for i in test_idx]
    val_frames = _frames(samples, val_idx, seg, run) if cfg.select_on == "val_loss" else []
    t0 = time.time()
    task = _fit_task(seg, cfg, train, val, val_frames, out, run, dist, progress)
    t_cache = time.time() - t0
    n_rows = len(run.results.rows()) if run is not None else 0
    test_before = _test_scores(seg, test, cfg, run, "before", progress) if test and run is not None else None
    if run is not None:
        shard = len(train) // dist.world_size
        task.on_start = lambda state: _announce(run, out, cfg, shard, state)
    fitted = fit(task, train, fit_config(cfg, progress and dist.is_main), out, run=run, dist=dist, upgrade=_upgrade_checkpoint(cfg))
    if fitted.interrupted:
        if run is not None:
            run.finish(len(run.results.rows()) - n_rows)
        return {"stopped_at_step": fitted.global_step, "out": str(out)}
    history = [{k: h.get(k) for k in history_columns(cfg)} for h in fitted.history]
    best_epoch = fitted.best_epoch if fitted.best_epoch is not None else history[-1]["epoch"]
    best_row = next(h for h in history if h["epoch"] == best_epoch)
    result = {
        "out": str(out), "trainable_parameters": n_trainable, "train_images": len(train), "val_images": len(val), "test_images": len(test),
        "baseline": history[0], "final": history[-1], "best_epoch": best_epoch, "selected_on": cfg.select_on, "best_val": fitted.best,
        "best_val_dice": best_row["val_dice"], "epochs_run": len(history) - 1, "stopped_early": fitted.stopped_early,
        "embedding_seconds": round(t_cache, 3), "checkpoint": str(out / "sam_best.pth"), "test": None,
    }
    if dist.is_main:
        export_checkpoint(seg, out / "sam_last.pth")
        if test:
            load_best(task, out)  # the checkpoint chosen on validation
            after = _test_scores(seg, test, cfg, run, "best", progress, epoch=best_epoch)
            result["test"] = {"before": test_before, "best": after}
        atomic_write_text(out / "summary.json", json.dumps(result, indent=2))
        run.finish(len(run.results.rows()) - n_rows)
        _write_report(run, result, history, cfg)
    return result


def _announce(run: RunFolder, out: Path, cfg: FinetuneConfig, shard: int, state: dict[str, Any] | None) -> None:
    """Say whether this is a new run or where it resumes (``state``: the loop's restored state)."""
    if state is None:
        run.announce(done=0, todo=cfg.epochs, unit="epoch" if cfg.epochs == 1 else "epochs")
        return
    steps_per_epoch = math.ceil(shard / cfg.batch_size)
    log.info(_resume_line(out, cfg, state["epoch"], state["batch"], steps_per_epoch, state["global_step"], bool(state.get("stopped_early"))))


# -- the report ---------------------------------------------------------------------------------
HISTORY_COLUMNS = ["epoch", "train_loss", "val_iou", "val_dice", "lr", "seconds"]


def history_columns(cfg: FinetuneConfig) -> list[str]:
    """The epoch table's columns (``val_loss`` when it chooses the checkpoint)."""
    return HISTORY_COLUMNS[:4] + ["val_loss"] + HISTORY_COLUMNS[4:] if cfg.select_on == "val_loss" else list(HISTORY_COLUMNS)


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
