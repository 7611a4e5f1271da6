"""The command-line switches of the learned models' inference options (the wrappers of
``create_segmenter``: ``zoom_in``, ``brs``, ``cascade``), one definition shared by ``segprompt
segment`` and ``segprompt bench pointprompt``.

:func:`inference_options` adds ``--zoom-in/--no-zoom-in``, ``--brs/--no-brs`` and
``--cascade/--no-cascade`` to a click command and hands the command one ``wrappers`` keyword:
``{option: True}`` for the switches turned on. This module imports click alone, so ``--help``
stays fast.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

__all__ = ["INFERENCE_OPTIONS", "CLASSICAL_MODELS", "inference_options", "model_wrappers"]

#: (create_segmenter keyword, help) in the order of ``--help``
INFERENCE_OPTIONS: tuple[tuple[str, str], ...] = (
    ("zoom_in", "RITM's zoom-in for the learned models: sets with 2+ clicks are decoded again on a crop around the object (segprompt.models.zoom_in)."),
    ("brs", "f-BRS for the learned models that allow it (universal, sam): sets with 3+ clicks are refined until the mask agrees with them (segprompt.models.brs)."),
    ("cascade", "Feed the learned models' own logits back once as their mask prompt (SAM's and PerSAM's refinement pass; segprompt.models.cascade)."),
)
#: registry names of the weight-free models, which the switches leave alone
CLASSICAL_MODELS = ("classical", "grabcut", "random-walker")


def inference_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator (place it directly above the function): adds the switches and passes
    ``wrappers={option: True}`` (the ones turned on) instead of one keyword each."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name, _ in INFERENCE_OPTIONS}
        return func(*args, wrappers={k: True for k, on in given.items() if on}, **kwargs)

    for name, text in reversed(INFERENCE_OPTIONS):
        flag = name.replace("_", "-")
        wrapper = click.option(f"--{flag}/--no-{flag}", name, default=False, help=text)(wrapper)
    return wrapper


def model_wrappers(model: str, wrappers: dict[str, Any]) -> dict[str, Any]:
    """``wrappers`` for a learned ``model``; nothing for the classical ones."""
    return {} if model.split("@")[0] in CLASSICAL_MODELS else dict(wrappers)
