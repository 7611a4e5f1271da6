"""LoRA (low-rank adaptation) for ``nn.Linear`` layers, injected by module-name patterns.

``inject_lora(model, ["image_encoder.blocks.*.attn.qkv"], rank=4)`` wraps every matching
linear layer as ``y = W x + b + (alpha / rank) * B A x`` with ``A`` (rank x in) initialised
like a linear layer and ``B`` (out x rank) at zero, so the model is unchanged until trained.
:func:`merge_lora` folds ``W + (alpha / rank) B A`` back into plain ``nn.Linear`` layers, so a
finetuned model is saved in its library's original state-dict layout.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Sequence

import torch
import torch.nn as nn

from segprompt.errors import ConfigError


class LoRALinear(nn.Module):
    """A frozen ``base`` linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank = int(rank)
        self.scale = float(alpha if alpha is not None else rank) / self.rank
        self.lora_a = nn.Parameter(torch.empty(self.rank, base.in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, self.rank, dtype=base.weight.dtype, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain linear layer equal to this one (the update folded into the weight)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
        out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        out.weight.requires_grad_(self.base.weight.requires_grad)
        return out


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def inject_lora(model: nn.Module, patterns: Sequence[str], rank: int = 4, alpha: float | None = None, dropout: float = 0.0) -> list[nn.Parameter]:
    """Wrap every ``nn.Linear`` whose dotted name matches one of ``patterns`` (fnmatch) in LoRA.

    Returns the new trainable parameters. A pattern that matches no linear layer raises
    ConfigError (so a typo never trains nothing).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    params: list[nn.Parameter] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(f"LoRA target {pattern!r} matches no linear layer (e.g. {', '.join(names[:3])} ...)")
        for n in hits:
            current = model.get_submodule(n)
            if isinstance(current, LoRALinear):
                continue
            wrapped = LoRALinear(current, rank, alpha, dropout)
            _set_submodule(model, n, wrapped)
            params += [wrapped.lora_a, wrapped.lora_b]
    return params


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` in ``model`` by its merged ``nn.Linear`` (in place)."""
    targets = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for n in targets:
        _set_submodule(model, n, model.get_submodule(n).merged())
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``model`` would have with its LoRA layers merged (model left unchanged)."""
    out = {}
    lora_prefixes = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    for key, value in model.state_dict().items():
        owner = next((p for p in lora_prefixes if key.startswith(p + ".")), None)
        if owner is None:
            out[key] = value
            continue
        rest = key[len(owner) + 1 :]
        if rest.startswith("lora_"):
            continue
        if rest == "base.weight":
            m = lora_prefixes[owner]
            out[f"{owner}.weight"] = value + m.scale * (m.lora_b @ m.lora_a).detach()
        elif rest == "base.bias":
            out[f"{owner}.bias"] = value
        else:  # pragma: no cover - LoRALinear has no other state
            out[key] = value
    return out
