"""Training building blocks used by the one training loop (:mod:`segprompt.engine.loop`).

* parameter freezing by explicit module names (a wrong name raises, it never freezes nothing);
* AdamW parameter groups with and without weight decay;
* cosine (with warm-up) and plateau schedules;
* exact resume: checkpoints hold model, optimizer, scheduler, grad scaler, counters and every
  RNG state, and are written atomically (temporary file + rename);
* ``torch.distributed`` helpers for DistributedDataParallel under ``torchrun``.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from segprompt.errors import ConfigError, WeightsError
from segprompt.fileio import atomic_path

log = logging.getLogger(__name__)


# -- freezing ----------------------------------------------------------------------------
def set_trainable(model: nn.Module, modules: Sequence[str], extra_params: Iterable[nn.Parameter] = ()) -> int:
    """Freeze every parameter of ``model``, then unfreeze the named submodules.

    Args:
        modules: dotted submodule names (``"mask_decoder"``, ``"image_encoder.neck"``); each must
            exist, else ConfigError listing the top-level children.
        extra_params: parameters to unfreeze as well (e.g. LoRA adapters).
    Returns the number of trainable parameters.
    """
    subs = []
    for name in modules:
        try:
            subs.append(model.get_submodule(name))
        except AttributeError:
            children = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"no submodule {name!r} to train (--train) in {type(model).__name__}; its parts are: {children}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    for sub in subs:
        for p in sub.parameters():
            p.requires_grad_(True)
    for p in extra_params:
        p.requires_grad_(True)
    n = count_trainable(model)
    if n == 0:
        raise ConfigError(f"training {list(modules)} leaves no trainable parameter")
    return n


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def no_weight_decay(name: str, p: torch.Tensor) -> bool:
    """True for parameters AdamW should not decay: biases, norms, embeddings (token, position,
    relative position), prompt context vectors (``...ctx``) and every 1-D tensor."""
    low = name.lower()
    return p.ndim < 2 or low.endswith(".bias") or "norm" in low or "embed" in low or "rel_pos" in low or low.endswith("ctx")


def param_groups(params: nn.Module | Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of a model's trainable parameters (or of ``(name, parameter)`` pairs):
    decay for weight matrices, none where :func:`no_weight_decay` says so."""
    named = params.named_parameters() if isinstance(params, nn.Module) else params
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if no_weight_decay(name, p) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class CosineWithWarmup:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine to ``floor``."""

    def __init__(self, total_steps: int, warmup: int = 0, floor: float = 0.01) -> None:
        self.total, self.warmup, self.floor = max(1, total_steps), warmup, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup: int = 0, patience: int = 2, factor: float = 0.2) -> Any:
    """``cosine`` (stepped every optimizer step) or ``plateau`` (stepped per epoch with val Dice)."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, CosineWithWarmup(total_steps, warmup))
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=patience)
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ConfigError(f"unknown schedule {kind!r}; use cosine, plateau or constant")


# -- RNG and checkpoints ---------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint written by :func:`atomic_torch_save` (trusted: it holds RNG states)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file raises many types
        raise WeightsError(f"{path}: not a readable training checkpoint ({type(exc).__name__}: {exc})") from exc


# -- distributed -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on CUDA).

    Without torchrun's variables this is a single process (rank 0 of 1) and nothing is initialised.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    if str(device).startswith("cuda"):
        torch.cuda.set_device(local)
    return DistInfo(rank, world, local)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Sum floats over ranks (identity in a single process)."""
    if not info.enabled:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()
