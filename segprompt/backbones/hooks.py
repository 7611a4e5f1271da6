"""Small helpers for installing and removing PyTorch module hooks cleanly.

Everything in :mod:`segprompt.backbones` changes a library model only through forward hooks
and forward pre-hooks registered for the duration of a ``with`` block; :class:`HookBag` holds
the handles and removes every one of them on exit, also when the block raises. Outside such a
block a model behaves exactly like the library model.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

__all__ = ["HookBag", "hidden_from_call", "replace_hidden_in_call", "first_tensor", "replace_first_tensor"]

# keyword names under which transformer blocks of the supported libraries take their input
_HIDDEN_KWARGS = ("hidden_states", "x", "q_x")


class HookBag:
    """Collects hook handles; :meth:`remove` (or leaving the ``with`` block) removes them all."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def pre(self, module: nn.Module, hook: Callable[..., Any], prepend: bool = False) -> None:
        """A forward pre-hook ``hook(module, args, kwargs) -> None | (args, kwargs)``."""
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True, prepend=prepend))

    def post(self, module: nn.Module, hook: Callable[..., Any], prepend: bool = False) -> None:
        """A forward hook ``hook(module, args, output) -> None | new_output``."""
        self._handles.append(module.register_forward_hook(hook, prepend=prepend))

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> "HookBag":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def hidden_from_call(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden-state tensor a transformer block was called with (first positional argument,
    or the ``hidden_states`` / ``x`` / ``q_x`` keyword)."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in _HIDDEN_KWARGS:
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError("cannot find the hidden-state tensor among the block's arguments")


def replace_hidden_in_call(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with the hidden-state tensor replaced by ``new``."""
    if args and isinstance(args[0], torch.Tensor):
        return (new,) + tuple(args[1:]), kwargs
    for key in _HIDDEN_KWARGS:
        if isinstance(kwargs.get(key), torch.Tensor):
            kwargs = dict(kwargs)
            kwargs[key] = new
            return args, kwargs
    raise TypeError("cannot find the hidden-state tensor among the block's arguments")


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden states inside a block or stack output: a tensor, the first element of a
    tuple, or ``last_hidden_state`` of a transformers ``ModelOutput``."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find hidden states in a {type(output).__name__}")


def replace_first_tensor(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its hidden states (see :func:`first_tensor`) replaced by ``new``."""
    if isinstance(output, torch.Tensor):
        return new
    if hasattr(output, "last_hidden_state"):
        output.last_hidden_state = new  # a fresh ModelOutput of this call: safe to update
        return output
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    if isinstance(output, list):
        return [new] + list(output[1:])
    raise TypeError(f"cannot replace hidden states in a {type(output).__name__}")
