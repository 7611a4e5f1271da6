"""The finetuning's configuration: :class:`FinetuneConfig` (every field checked once, budgets
and ``same`` resolved), the option vocabularies, and the reference recipes :data:`PRESETS`
(pointprompt-study, microsam, medsam) with :func:`preset_fields`, their override rule.

What the options mean is in :mod:`pointprompt.finetune`'s docstring; everything here is
re-exported there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from segprompt.errors import ConfigError

from pointprompt.strategies import create_strategy

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
    ``n_sub_iteration``; the code before this counted one more). ``refine_passes``: SAM's
    iterations "where no additional points are sampled": passes of the ``iterative`` mode, each at
    a random place after the first pass, that decode the same prompts with the previous pass's
    logits as the mask prompt (0: micro-sam's loop; SAM puts one of its two such passes at the
    end, here every one is placed at random, so one may follow the first click). ``train_multimask``: ``auto``
    (one point -> 3 candidates, the best in the loss) or ``single``. ``dice``: ``soft`` or
    ``squared`` (see :mod:`pointprompt.finetune`). ``decay_all``: weight decay on every trained tensor (torch's
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
    refine_passes: int = 0
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
        if self.refine_passes < 0:
            raise ConfigError(f"refine_passes counts passes without new clicks: >= 0, got {self.refine_passes}")
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
