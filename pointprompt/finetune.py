"""Finetuning SAM with automated, iterative or box prompts: one loop for the recipes of PointPrompt
(prompt encoder per strategy), micro-sam (iterative error-region prompts) and MedSAM (jittered boxes).

.. code-block:: python

    from pointprompt.finetune import FinetuneConfig, finetune_sam
    result = finetune_sam(FinetuneConfig(dataset="kvasir", model="sam-tiny", train=["mask_decoder"],
                                         prompts="mixed", epochs=5), out="runs/ft_kvasir")
    result["checkpoint"]   # SAM state-dict layout, LoRA merged: create_segmenter("sam", checkpoint=...)

Everything happens in the model's input frame (image resized so its longest side is the
encoder's input size, padded bottom-right): prompts are drawn from the ground-truth mask in
that frame, and the loss compares the low-resolution logits with the mask downsampled to the
same grid (the PointPrompt recipe). Validation uses the real inference path
(:class:`SamSegmenter`, original resolution): mean Dice and IoU of ``eval_strategy`` prompts.

Prompt modes (``prompts=``):

* a strategy name (``random``, ``centre``, ``kmedoids``, ...): its points for the budget
  ``n_positive`` / ``n_negative``; one point -> multimask output, more -> single output;
* ``box-jitter``: the ground-truth box with each side moved by up to ``box_jitter`` pixels of
  the original image (MedSAM);
* ``iterative``: micro-sam's scheme: start from one positive point (multimask) or the box,
  then ``iterations`` corrections (one positive from the false negatives, one negative from the
  false positives of the previous prediction), with the previous logits fed back as the mask
  prompt with probability ``mask_feedback``; the loss is averaged over the sub-iterations;
* ``mixed``: per sample, one of the strategy, ``box-jitter`` and ``iterative``.

Loss: Dice + BCE (or focal) of the best multimask candidate + ``iou_weight`` x MSE of the IoU
head. Parts to train (``train=``): ``prompt_encoder``, ``mask_decoder``, ``image_encoder``,
``all``, ``lora`` (LoRA adapters in the image encoder's attention plus the mask decoder), or
any dotted submodule name; a wrong name raises. When the image encoder is frozen, embeddings
come from the embedding cache and the encoder never runs during training.

Rerunning on the same folder resumes, exactly: the data order depends on (seed, epoch), each
sample's prompts on (seed, epoch, sample), and checkpoints hold every optimizer, scheduler and
RNG state; a finished run is not retrained (only its report is rewritten), and a different
configuration in the same folder is a ConfigError. An image that cannot be read, or whose mask
is missing or empty, is skipped and recorded in ``errors.jsonl``. Progress (one line per epoch)
is logged at INFO. Under ``torchrun`` the loop runs DistributedDataParallel (gloo on CPU, nccl
on CUDA).
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.devices import check_device
from segprompt.engine.losses import sam_loss
from segprompt.engine.loop import FitConfig, FitTask, checkpoint_from_parts, fit
from segprompt.engine.report import format_lr, plural
from segprompt.engine.runfolder import RunFolder, atomic_write_text
from segprompt.engine.training import init_distributed, param_groups, seed_everything, set_trainable
from segprompt.errors import ConfigError, DataError, PromptError
from segprompt.models.resize import LongestSide
from segprompt.models.sam import SamSegmenter

from pointprompt.strategies import MicroSamCorrection, create_strategy, is_correction

log = logging.getLogger(__name__)

PROMPT_MODES = ("iterative", "box-jitter", "mixed")
TRAIN_PARTS = {
    "prompt_encoder": ["prompt_encoder"],
    "mask_decoder": ["mask_decoder"],
    "image_encoder": ["image_encoder"],
    "all": ["image_encoder", "prompt_encoder", "mask_decoder"],
    "lora": ["mask_decoder"],  # plus the LoRA adapters
}


def _check_strategy(name: str, flag: str, more: str = "") -> None:
    try:
        create_strategy(name)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}{more}") from None


@dataclass
class FinetuneConfig:
    """Everything that determines a finetuning run (saved as the run's config.yaml)."""

    dataset: str = "synthetic-lesions"
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.2
    split_seed: int = 0
    limit: int | None = None
    model: str | None = "sam-tiny"
    checkpoint: str | None = None
    train: list[str] = field(default_factory=lambda: ["mask_decoder"])
    prompts: str = "mixed"
    strategy: str = "random"
    n_positive: int = 1
    n_negative: int = 0
    iterations: int = 8
    mask_feedback: float = 0.5
    box_jitter: float = 20.0
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_steps: int = 0
    early_stop: int = 5
    loss: str = "dice+bce"
    iou_weight: float = 1.0
    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_targets: list[str] = field(default_factory=lambda: ["image_encoder.blocks.*.attn.qkv"])
    precision: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 0
    eval_strategy: str = "random"
    eval_positive: int = 1
    eval_negative: int = 0
    eval_multimask: str = "best"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.train, str):
            self.train = [t for t in self.train.split(",") if t]
        if (self.model is None) == (self.checkpoint is None):
            raise ConfigError("give exactly one of --model (model=, e.g. sam-tiny) or --checkpoint (checkpoint=, a SAM checkpoint file or registry name)")
        if self.prompts not in PROMPT_MODES:
            _check_strategy(self.prompts, "--prompts", f" (or one of {', '.join(PROMPT_MODES)})")
        _check_strategy(self.strategy, "--strategy")
        _check_strategy(self.eval_strategy, "eval_strategy")
        if self.loss not in ("dice+bce", "dice+focal"):
            raise ConfigError(f"--loss must be dice+bce or dice+focal, got {self.loss!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"--epochs and --batch-size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not 0 <= self.mask_feedback <= 1:
            raise ConfigError(f"mask_feedback is a probability in [0, 1], got {self.mask_feedback}")

    @property
    def placement_strategy(self) -> str:
        return self.prompts if self.prompts not in PROMPT_MODES else self.strategy

    @property
    def encoder_frozen(self) -> bool:
        return not any(t in ("image_encoder", "all", "lora") or t.startswith("image_encoder") for t in self.train)


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


def split_ids(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train / validation split of ``range(n)`` (at least one of each)."""
    if n < 2:
        raise DataError(f"finetuning needs at least 2 usable images, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _rng(*keys: Any) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


# -- prompts for one training sample -----------------------------------------------------------
@dataclass
class TrainPrompt:
    coords: np.ndarray  # (n, 2) model-frame (x, y)
    labels: np.ndarray  # (n,)
    box: np.ndarray | None  # (4,) model frame
    multimask: bool


def _box_prompt(fs: FrameSample, rng: np.random.Generator, jitter: float) -> TrainPrompt:
    ys, xs = np.nonzero(fs.mask)
    h, w = fs.mask.shape
    scale = fs.transform.input_size[1] / fs.transform.original_size[1]
    j = rng.uniform(-jitter, jitter, 4) * scale
    box = np.array([xs.min() + j[0], ys.min() + j[1], xs.max() + 1 + j[2], ys.max() + 1 + j[3]])
    box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
    box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
    return TrainPrompt(np.zeros((0, 2)), np.zeros(0, np.int64), box, False)


def _strategy_prompt(fs: FrameSample, rng: np.random.Generator, name: str, n_pos: int, n_neg: int) -> TrainPrompt:
    strat = create_strategy(name)
    if is_correction(strat):
        pts = strat.first(fs.mask, rng)
    else:
        pts = strat(fs.mask, fs.image, rng, n_pos, n_neg)
    return TrainPrompt(pts.coords.astype(np.float64), pts.labels, None, len(pts) == 1)


# -- the differentiable step ---------------------------------------------------------------
class SamTrainStep(nn.Module):
    """``forward(batch) -> loss`` for a batch of :class:`FrameSample`; wrap it in DDP for several GPUs."""

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
        return sam_loss(logits, iou, target, iou_weight=self.cfg.iou_weight, use_focal=self.cfg.loss == "dice+focal")

    def forward(self, batch: Sequence[FrameSample], epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        emb = self._embed(batch)
        losses, logs = [], []
        for i, fs in enumerate(batch):
            rng = _rng(cfg.seed, epoch, fs.index)
            target = torch.from_numpy(fs.lowres)[None].to(emb.device)
            mode = cfg.prompts
            if mode == "mixed":
                mode = ("strategy", "box-jitter", "iterative")[int(rng.integers(0, 3))]
            if mode == "iterative":
                loss, log_ = self._iterative(emb[i : i + 1], fs, rng, target)
            else:
                p = _box_prompt(fs, rng, cfg.box_jitter) if mode == "box-jitter" else _strategy_prompt(fs, rng, cfg.placement_strategy, cfg.n_positive, cfg.n_negative)
                logits, iou = self._decode(emb[i : i + 1], p, None)
                loss, log_ = self._loss(logits, iou, target)
            losses.append(loss)
            logs.append(log_)
        return torch.stack(losses).mean(), {k: float(np.mean([l[k] for l in logs])) for k in logs[0]}

    def _iterative(self, emb: torch.Tensor, fs: FrameSample, rng: np.random.Generator, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """micro-sam's iterative prompting: a start prompt, then error-region corrections."""
        corr = MicroSamCorrection()
        if rng.random() < 0.5:
            p = _strategy_prompt(fs, rng, "random", 1, 0)
        else:
            p = _box_prompt(fs, rng, self.cfg.box_jitter)
        h, w = fs.mask.shape
        mask_input = None
        losses, logs = [], []
        for it in range(self.cfg.iterations + 1):
            logits, iou = self._decode(emb, p, mask_input)
            loss, log_ = self._loss(logits, iou, target)
            losses.append(loss)
            logs.append(log_)
            if it == self.cfg.iterations:
                break
            best = int(iou[0].argmax()) if logits.shape[1] > 1 else 0
            chosen = logits[:, best : best + 1].detach()
            up = F.interpolate(chosen, (self.sam.image_encoder.img_size,) * 2, mode="bilinear", align_corners=False)[0, 0, :h, :w]
            pred = (up > 0).cpu().numpy()
            new = corr.correct(fs.mask, pred, rng)
            p = TrainPrompt(np.concatenate([p.coords, new.coords]), np.concatenate([p.labels, new.labels]), p.box, False)
            mask_input = chosen if rng.random() < self.cfg.mask_feedback else None
        return torch.stack(losses).mean(), {k: float(np.mean([l[k] for l in logs])) for k in logs[0]}


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
) -> tuple[list[Sample], list[int], list[int]]:
    """The usable samples (readable, non-empty masks) and the deterministic train / validation indices.

    Images that cannot be used are skipped and recorded in ``run``'s errors.jsonl.
    """
    from segprompt.data.registry import load_dataset

    ds = dataset if dataset is not None else load_dataset(cfg.dataset, **cfg.dataset_kwargs)
    samples = _usable_samples(ds, cfg, run, progress)
    train_idx, val_idx = split_ids(len(samples), cfg.val_fraction, cfg.split_seed)
    return samples, train_idx, val_idx


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
    """Mean IoU and Dice of ``eval_strategy`` prompts on ``samples`` (original resolution).

    An image that cannot be evaluated is skipped (recorded in ``run``'s errors.jsonl); ``n`` is
    the number of images evaluated.
    """
    from pointprompt.bench import PointBenchConfig, evaluate_image

    bench = PointBenchConfig(datasets=["eval"], models=["sam"], strategies=[cfg.eval_strategy], n_positive=cfg.eval_positive, n_negative=cfg.eval_negative, steps=1, seed=cfg.seed, multimask=cfg.eval_multimask)
    was_training = seg.model.training
    seg.model.eval()
    rows = []
    for s in tqdm(samples, desc="evaluating", unit="image", disable=not progress, leave=False, delay=2.0):
        try:
            rows += evaluate_image(bench, seg, "sam", "eval", s, (cfg.eval_positive, cfg.eval_negative), 1)
        except (DataError, PromptError) as exc:
            skip_input(run, s.id, exc, stage="evaluation")
    seg.model.train(was_training)
    if not rows:
        raise DataError(f"none of the {len(samples)} evaluation images could be evaluated (see errors.jsonl)")
    return {"iou": float(np.mean([r["iou"] for r in rows])), "dice": float(np.mean([r["dice"] for r in rows])), "n": len(rows)}


def export_checkpoint(seg: SamSegmenter, path: str | Path) -> Path:
    """Write the model in segment-anything's state-dict layout (LoRA merged): .pth or .safetensors."""
    import copy

    from segprompt.backbones.lora import merge_lora
    from segprompt.models.sam_arch import save_sam

    model = merge_lora(copy.deepcopy(seg.model)).cpu()
    return save_sam(model, path, seg.arch)


# -- words for logs and reports -------------------------------------------------------------------
def _epoch_line(out: Path, row: dict[str, Any], epochs: int) -> str:
    scores = f"val IoU {row['val_iou']:.4f}, val Dice {row['val_dice']:.4f}"
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


def _already_finished(run: RunFolder | None, out: Path, cfg: FinetuneConfig) -> dict[str, Any]:
    """The rerun of a finished run: nothing is trained or evaluated; the report is rewritten."""
    result = json.loads((out / "summary.json").read_text())
    if run is not None:
        early = ", stopped early" if result.get("stopped_early") else ""
        log.info("%s: already finished (%s%s); nothing to train, rewriting the report", out, plural(result["epochs_run"], "epoch"), early)
        run.finish(0)
        _write_report(run, result, sorted(run.results.rows(), key=lambda r: r["epoch"]), cfg)
    return result


def fit_config(cfg: FinetuneConfig, progress: bool = False) -> FitConfig:
    """The training loop's settings for ``cfg``: AdamW, clip 1.0, early stopping and the best
    checkpoint on validation Dice of the trained epochs (the untrained baseline never counts)."""
    return FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, grad_clip=1.0, precision=cfg.precision, device=cfg.device,
        schedule=cfg.schedule, warmup_steps=cfg.warmup_steps, monitor="val_dice", monitor_mode="max", patience=cfg.early_stop,
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


def _fit_task(seg: SamSegmenter, cfg: FinetuneConfig, train: list[FrameSample], val: list[Sample], out: Path, run: RunFolder | None, dist: Any, progress: bool) -> FitTask:
    """The finetuning's part of the loop: the SAM training step (DDP-wrapped under torchrun),
    validation through the real inference path, epoch lines and the best-checkpoint export."""
    embeddings = None
    if cfg.encoder_frozen:
        from segprompt.cache import EmbeddingCache

        seg.cache = EmbeddingCache(out / "embeddings")
        embeddings = {fs.id: seg.encode(fs.original.image).features["embeddings"].cpu() for fs in train}
    trainer: nn.Module = SamTrainStep(seg.model, cfg, embeddings)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(trainer, find_unused_parameters=True, device_ids=[dist.local_rank] if cfg.device.startswith("cuda") else None)

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        seg.forget_weights_hash()
        m = evaluate(seg, val, cfg, run, progress=progress and dist.is_main)
        return {"val_iou": m["iou"], "val_dice": m["dice"]}

    return FitTask(
        seg.model, lambda batch, epoch: trainer(batch, epoch), evaluate_epoch, params=param_groups(seg.model, cfg.weight_decay),
        on_best=lambda row: export_checkpoint(seg, out / "sam_best.pth"), describe_epoch=lambda row: _epoch_line(out, row, cfg.epochs),
    )


def finetune_sam(cfg: FinetuneConfig, out: str | Path, resume: bool | None = None, dataset: SegmentationDataset | None = None, progress: bool = True) -> dict[str, Any]:
    """Run a finetuning run into ``out``, or resume the one there; returns the final metrics and paths.

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
    samples, train_idx, val_idx = load_split(cfg, dataset, run, progress=progress and dist.is_main)
    train = _frames(samples, train_idx, seg, run)
    val = [samples[i] for i in val_idx]
    t0 = time.time()
    task = _fit_task(seg, cfg, train, val, out, run, dist, progress)
    t_cache = time.time() - t0
    if run is not None:
        shard = len(train) // dist.world_size
        task.on_start = lambda state: _announce(run, out, cfg, shard, state)
    n_rows = len(run.results.rows()) if run is not None else 0
    fitted = fit(task, train, fit_config(cfg, progress and dist.is_main), out, run=run, dist=dist, upgrade=_upgrade_checkpoint(cfg))
    new_rows = (len(run.results.rows()) - n_rows) if run is not None else 0
    if fitted.interrupted:
        if run is not None:
            run.finish(new_rows)
        return {"stopped_at_step": fitted.global_step, "out": str(out)}
    history = [{k: h[k] for k in HISTORY_COLUMNS} for h in fitted.history]
    result = {
        "out": str(out), "trainable_parameters": n_trainable, "train_images": len(train), "val_images": len(val),
        "baseline": history[0], "final": history[-1], "best_val_dice": fitted.best, "epochs_run": len(history) - 1,
        "stopped_early": fitted.stopped_early, "embedding_seconds": round(t_cache, 3), "checkpoint": str(out / "sam_best.pth"),
    }
    if dist.is_main:
        export_checkpoint(seg, out / "sam_last.pth")
        atomic_write_text(out / "summary.json", json.dumps(result, indent=2))
        run.finish(new_rows)
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


def _write_report(run: RunFolder, result: dict[str, Any], history: list[dict[str, Any]], cfg: FinetuneConfig) -> None:
    from segprompt.engine.report import markdown_table, write_csv

    write_csv(run.path / "summary.csv", _table_rows(history, ""), HISTORY_COLUMNS)
    _validation_plot(run, history, cfg, result["val_images"])
    base, best = result["baseline"], max(history, key=lambda h: h["val_dice"])
    n_err = len(run.errors.rows())
    ran = plural(result["epochs_run"], "epoch")
    if result["stopped_early"]:
        ran += f" of {cfg.epochs} (stopped early: no better validation Dice for {plural(cfg.early_stop, 'epoch')})"
    lines = [
        "# SAM finetuning",
        "",
        f"Model {describe_model(cfg)}.",
        "",
        f"Trained {', '.join(cfg.train)} ({result['trainable_parameters']:,} trainable parameters) with `{cfg.prompts}` prompts for "
        f"{ran}, lr {format_lr(cfg.lr)} ({cfg.schedule} schedule), batch size {cfg.batch_size}, "
        f"seed {cfg.seed}; {result['train_images']} training and {result['val_images']} validation images of `{cfg.dataset}`.",
        "",
        f"Validation ({cfg.eval_strategy} prompts, {cfg.eval_positive} + {cfg.eval_negative} points): IoU {base['val_iou']:.4f} before, "
        f"{best['val_iou']:.4f} at the best epoch ({best['epoch']}); Dice {base['val_dice']:.4f} -> {best['val_dice']:.4f}.",
        "",
        markdown_table(_table_rows(history, "\u2013"), HISTORY_COLUMNS, floatfmt=".4f"),
        "",
        "![validation](validation.png)",
        "",
        "Checkpoints (segment-anything layout, LoRA merged): `sam_best.pth`, `sam_last.pth`; training state: `checkpoints/`.",
        "",
        f"Skipped inputs: {n_err} (see errors.jsonl)." if n_err else "Skipped inputs: none.",
        "",
        run.timing_text(),
        "",
    ]
    run.write_text("report.md", "\n".join(lines))
