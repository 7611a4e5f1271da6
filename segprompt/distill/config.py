"""The distillation's configuration: :class:`DistillConfig`, every field checked once and the
student's defaults (``init``, ``decoder_epochs``) resolved, so that a run's config.yaml holds the
values that were used."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from segprompt.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "constant")


@dataclass
class DistillConfig:
    """Everything that determines a distillation run (saved as the run's config.yaml).

    Attributes:
        teacher: the SAM to distil: a checkpoint file (``.pth`` / ``.safetensors`` in
            segment-anything's key layout) or a weights-registry name (``sam_vit_h``).
        student: a name of :data:`segprompt.distill.students.STUDENTS` (``vit_t-like``, ``sam-tiny``).
        init: where the student's image encoder starts: ``random``, ``bundled`` (sam-tiny
            only: the shipped demo weights) or a SAM checkpoint whose ``image_encoder.*``
            tensors fit the student. None: the student's default (vit_t-like: random;
            sam-tiny: bundled).
        student_options: architecture knobs of the student (vit_t-like: ``embed_dim``,
            ``depth``, ``num_heads``, ``global_attn_indexes``, ``window_size``, ``mlp_ratio``).
        dataset, dataset_kwargs, limit: the images (a registry name or a folder; reader
            kwargs such as ``root``; only the first ``limit`` items).
        val_fraction, split_seed: share of the distinct source images held out to measure
            the embedding MSE / cosine (at least one image), and the split's seed.
        epochs, batch_size, lr, weight_decay, schedule, warmup_steps, grad_clip: stage 1's
            optimisation (AdamW through :func:`segprompt.engine.loop.fit`; ``grad_clip`` 0 = none).
        precision, device, seed: ``fp32`` / ``bf16`` / ``fp16`` autocast (CUDA), the device and
            the seed of the student's initialisation and the data order.
        max_steps: stop each stage after this many optimizer steps, leaving a resumable run (a
            controlled kill; rerun without it to continue).
        checkpoint_every: also write ``checkpoints/last.pt`` every N optimizer steps (0: per epoch).
        decoder_epochs: stage 2 (the prompt-driven mask-decoder finetuning) epochs; 0 skips it;
            None: the student's default (vit_t-like: 0, MobileSAM's copied decoder; sam-tiny: 5).
        decoder_lr, decoder_batch_size: stage 2's learning rate and batch size (None: ``batch_size``).
        speed_images: timed encoder passes per model for the report's ms/image (0: not timed).
    """

    teacher: str
    student: str = "vit_t-like"
    init: str | None = None
    student_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "synthetic-lesions"
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 0.0
    precision: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    max_steps: int | None = None
    checkpoint_every: int = 0
    decoder_epochs: int | None = None
    decoder_lr: float = 1e-4
    decoder_batch_size: int | None = None
    speed_images: int = 3

    def __post_init__(self) -> None:
        from segprompt.distill.students import STUDENTS

        self.teacher = str(self.teacher)
        spec = STUDENTS.get(self.student)  # ConfigError naming the known students
        self.student = spec.name
        self.init = spec.check_init(self.init)
        spec.check_options(self.student_options)
        if self.decoder_epochs is None:
            self.decoder_epochs = spec.default_decoder_epochs
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"--epochs and --batch-size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.decoder_epochs < 0 or (self.decoder_batch_size is not None and self.decoder_batch_size < 1):
            raise ConfigError(f"--decoder-epochs must be >= 0 and --decoder-batch-size >= 1, got {self.decoder_epochs} and {self.decoder_batch_size}")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"--limit must leave at least 2 images (training and held-out), got {self.limit}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.speed_images < 0 or self.grad_clip < 0 or self.checkpoint_every < 0:
            raise ConfigError("--speed-images, --grad-clip and --checkpoint-every must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: config keys that do not change the numbers (a rerun may change them and still resume)
VOLATILE = ("device", "max_steps", "speed_images", "checkpoint_every")
