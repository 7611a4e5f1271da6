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

Runs are resumable exactly (``resume=True``): the data order depends on (seed, epoch), each
sample's prompts on (seed, epoch, sample), and checkpoints hold every optimizer, scheduler and
RNG state. Under ``torchrun`` the loop runs DistributedDataParallel (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import contextlib
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

from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.engine.losses import sam_loss
from segprompt.engine.runfolder import RunFolder, atomic_write_text
from segprompt.engine.training import (
    EarlyStopping,
    atomic_torch_save,
    build_scheduler,
    init_distributed,
    load_checkpoint,
    param_groups,
    rng_state,
    seed_everything,
    set_rng_state,
    set_trainable,
)
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
            raise ConfigError("give exactly one of model= (e.g. sam-tiny) or checkpoint= (a SAM checkpoint file or registry name)")
        if self.prompts not in PROMPT_MODES:
            create_strategy(self.prompts)  # a strategy name; raises with the known names
        create_strategy(self.strategy)
        create_strategy(self.eval_strategy)
        if self.loss not in ("dice+bce", "dice+focal"):
            raise ConfigError(f"loss must be dice+bce or dice+focal, got {self.loss!r}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if not 0 <= self.mask_feedback <= 1:
            raise ConfigError("mask_feedback is a probability in [0, 1]")

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
        raise ConfigError(f"finetuning needs a SAM model; {cfg.model!r} is {type(seg).__name__}")
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


def _usable_samples(ds: SegmentationDataset, cfg: FinetuneConfig, run: RunFolder | None) -> list[Sample]:
    n = len(ds) if cfg.limit is None else min(cfg.limit, len(ds))
    out = []
    for i in range(n):
        try:
            s = ds[i]
            if s.mask is None or not np.asarray(s.mask).any():
                raise PromptError("empty ground-truth mask: no prompt can be drawn (image skipped)")
            out.append(s)
        except (DataError, PromptError) as exc:
            if run is not None:
                run.record_error(ds.ids[i], exc)
    return out


def load_split(cfg: FinetuneConfig, dataset: SegmentationDataset | None = None, run: RunFolder | None = None) -> tuple[list[Sample], list[int], list[int]]:
    """The usable samples (non-empty masks) and the deterministic train / validation indices."""
    from segprompt.data.registry import load_dataset

    ds = dataset if dataset is not None else load_dataset(cfg.dataset, **cfg.dataset_kwargs)
    samples = _usable_samples(ds, cfg, run)
    train_idx, val_idx = split_ids(len(samples), cfg.val_fraction, cfg.split_seed)
    return samples, train_idx, val_idx


@torch.no_grad()
def evaluate(seg: SamSegmenter, samples: Sequence[Sample], cfg: FinetuneConfig) -> dict[str, float]:
    """Mean IoU and Dice of ``eval_strategy`` prompts on ``samples`` (original resolution)."""
    from pointprompt.bench import PointBenchConfig, evaluate_image

    bench = PointBenchConfig(datasets=["eval"], models=["sam"], strategies=[cfg.eval_strategy], n_positive=cfg.eval_positive, n_negative=cfg.eval_negative, steps=1, seed=cfg.seed, multimask=cfg.eval_multimask)
    was_training = seg.model.training
    seg.model.eval()
    rows = []
    for s in samples:
        rows += evaluate_image(bench, seg, "sam", "eval", s, (cfg.eval_positive, cfg.eval_negative), 1)
    seg.model.train(was_training)
    return {"iou": float(np.mean([r["iou"] for r in rows])), "dice": float(np.mean([r["dice"] for r in rows])), "n": len(rows)}


def _autocast(cfg: FinetuneConfig) -> contextlib.AbstractContextManager:
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
    return torch.autocast("cuda" if cfg.device.startswith("cuda") else "cpu", dtype=dtype)


def export_checkpoint(seg: SamSegmenter, path: str | Path) -> Path:
    """Write the model in segment-anything's state-dict layout (LoRA merged): .pth or .safetensors."""
    import copy

    from segprompt.backbones.lora import merge_lora
    from segprompt.models.sam_arch import save_sam

    model = merge_lora(copy.deepcopy(seg.model)).cpu()
    return save_sam(model, path, seg.arch)


def finetune_sam(cfg: FinetuneConfig, out: str | Path, resume: bool = False, dataset: SegmentationDataset | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a finetuning run into ``out``; returns the final metrics and paths."""
    dist = init_distributed(cfg.device)
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    if dist.is_main:
        if last_path.exists() and not resume:
            raise ConfigError(f"{out} already holds a training run (checkpoints/last.pt); pass --resume to continue it, or use another --out")
        run = RunFolder(out, {"suite": "finetune-sam", **asdict(cfg)}, volatile=("device", "max_steps"))
    else:
        run = None
    seed_everything(cfg.seed)
    seg = _load_model(cfg)
    n_trainable = _prepare_model(seg, cfg)
    log.info("trainable parameters: %d", n_trainable)
    seg.model.to(cfg.device)

    samples, train_idx, val_idx = load_split(cfg, dataset, run)
    lowres = seg.arch.lowres_size
    train = [to_frame(samples[i], i, seg.arch.img_size, lowres) for i in train_idx]
    val = [samples[i] for i in val_idx]

    embeddings = None
    t_cache = 0.0
    if cfg.encoder_frozen:
        from segprompt.cache import EmbeddingCache

        seg.cache = EmbeddingCache(out / "embeddings")
        t0 = time.time()
        embeddings = {fs.id: seg.encode(fs.original.image).features["embeddings"].cpu() for fs in train}
        t_cache = time.time() - t0
    step_module = SamTrainStep(seg.model, cfg, embeddings)
    trainer: nn.Module = step_module
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(step_module, find_unused_parameters=True, device_ids=[dist.local_rank] if cfg.device.startswith("cuda") else None)

    optimizer = torch.optim.AdamW(param_groups(seg.model, cfg.weight_decay), lr=cfg.lr)
    # every rank gets the same number of samples (DDP steps in lock-step): the remainder is dropped
    shard = len(train) // dist.world_size
    if shard == 0:
        raise DataError(f"{len(train)} training images cannot be shared by {dist.world_size} processes")
    steps_per_epoch = math.ceil(shard / cfg.batch_size)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps=steps_per_epoch * cfg.epochs, warmup=cfg.warmup_steps)
    scaler = torch.amp.GradScaler(enabled=cfg.precision == "fp16")
    stopper = EarlyStopping(patience=cfg.early_stop)
    start_epoch, start_batch, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []

    if resume and last_path.exists():
        ck = load_checkpoint(last_path)
        seg.model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        stopper.load_state_dict(ck["early_stopping"])
        start_epoch, start_batch, global_step = ck["epoch"], ck["batch"], ck["global_step"]
        history = ck["history"]
        set_rng_state(ck["rng"])
        log.info("resumed at epoch %d batch %d (step %d)", start_epoch, start_batch, global_step)

    def save(path: Path, epoch: int, batch: int) -> None:
        if not dist.is_main:
            return
        atomic_torch_save(
            {
                "model": seg.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "early_stopping": stopper.state_dict(),
                "epoch": epoch,
                "batch": batch,
                "global_step": global_step,
                "history": history,
                "rng": rng_state(),
                "config": asdict(cfg),
            },
            path,
        )

    def sync_results() -> None:
        """Append the epochs of ``history`` that results.jsonl lacks (it is append-only)."""
        if dist.is_main:
            have = {r["epoch"] for r in run.results}
            run.results.extend(h for h in history if h["epoch"] not in have)

    if not history:
        base = evaluate(seg, val, cfg)
        history.append({"epoch": 0, "train_loss": None, "val_iou": base["iou"], "val_dice": base["dice"], "lr": optimizer.param_groups[0]["lr"], "seconds": 0.0})
    sync_results()
    stopped_early = False
    t_train = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        if stopper.should_stop:
            stopped_early = True
            break
        seg.model.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train))
        mine = [train[i] for i in order[: shard * dist.world_size][dist.rank :: dist.world_size]]
        batches = [mine[b : b + cfg.batch_size] for b in range(0, len(mine), cfg.batch_size)]
        losses = []
        t0 = time.time()
        for b, batch in enumerate(batches):
            if epoch == start_epoch and b < start_batch:
                continue
            with _autocast(cfg):
                loss, parts = trainer(batch, epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in seg.model.parameters() if p.requires_grad], 1.0)
            scaler.step(optimizer)
            scaler.update()
            if cfg.schedule != "plateau":
                scheduler.step()
            global_step += 1
            losses.append(float(loss.detach()))
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                save(last_path, epoch, b + 1)
            if cfg.max_steps is not None and global_step >= cfg.max_steps:
                save(last_path, epoch, b + 1)
                return {"stopped_at_step": global_step, "out": str(out)}
        t_train += time.time() - t0
        start_batch = 0
        seg.forget_weights_hash()
        metrics = evaluate(seg, val, cfg)
        if cfg.schedule == "plateau":
            scheduler.step(metrics["dice"])
        improved = stopper.update(metrics["dice"])
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None, "val_iou": metrics["iou"], "val_dice": metrics["dice"], "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - t0, 3)}
        history.append(row)
        if improved and dist.is_main:
            save(ckpt_dir / "best.pt", epoch + 1, 0)
            export_checkpoint(seg, out / "sam_best.pth")
        save(last_path, epoch + 1, 0)
        sync_results()
        if progress and dist.is_main:
            log.warning("epoch %d: train loss %.4f, val IoU %.4f, val Dice %.4f", epoch + 1, row["train_loss"] or float("nan"), metrics["iou"], metrics["dice"])
    else:
        stopped_early = stopper.should_stop
    result = {
        "out": str(out),
        "trainable_parameters": n_trainable,
        "train_images": len(train),
        "val_images": len(val),
        "baseline": history[0],
        "final": history[-1],
        "best_val_dice": stopper.best,
        "epochs_run": len(history) - 1,
        "stopped_early": stopped_early,
        "embedding_seconds": round(t_cache, 3),
        "checkpoint": str(out / "sam_best.pth"),
    }
    if dist.is_main:
        export_checkpoint(seg, out / "sam_last.pth")
        atomic_write_text(out / "summary.json", json.dumps(result, indent=2))
        _write_report(run, result, history, cfg)
    return result


def _write_report(run: RunFolder, result: dict[str, Any], history: list[dict[str, Any]], cfg: FinetuneConfig) -> None:
    from segprompt.engine.report import line_plot, markdown_table, write_csv

    write_csv(run.path / "summary.csv", history, ["epoch", "train_loss", "val_iou", "val_dice", "lr", "seconds"])
    panels = {"validation": {"IoU": ([h["epoch"] for h in history], [h["val_iou"] for h in history]), "Dice": ([h["epoch"] for h in history], [h["val_dice"] for h in history])}}
    line_plot(panels, run.path / "validation.png", xlabel="epoch (0 = before finetuning)", ylabel="score", title="Validation")
    base, best = result["baseline"], max(history, key=lambda h: h["val_dice"])
    lines = [
        "# SAM finetuning",
        "",
        f"Model `{cfg.model or cfg.checkpoint}`, training {', '.join(cfg.train)} ({result['trainable_parameters']:,} trainable parameters), "
        f"prompts `{cfg.prompts}`; {result['train_images']} training and {result['val_images']} validation images of `{cfg.dataset}`.",
        "",
        f"Validation ({cfg.eval_strategy} prompts, {cfg.eval_positive} + {cfg.eval_negative} points): IoU {base['val_iou']:.4f} before, "
        f"{best['val_iou']:.4f} at the best epoch ({best['epoch']}); Dice {base['val_dice']:.4f} -> {best['val_dice']:.4f}.",
        "",
        markdown_table(history, ["epoch", "train_loss", "val_iou", "val_dice", "lr", "seconds"], floatfmt=".4f"),
        "",
        "![validation](validation.png)",
        "",
        "Checkpoints (segment-anything layout, LoRA merged): `sam_best.pth`, `sam_last.pth`; training state: `checkpoints/`.",
        "",
    ]
    run.write_text("report.md", "\n".join(lines))
