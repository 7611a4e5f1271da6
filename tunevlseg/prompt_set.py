"""The prompts of one VLSM forward, and a seeded block for the prompt learners' initialisation.

Its own module so that the prompt learners (:mod:`tunevlseg.learners`) and the models they prompt
(:mod:`tunevlseg.models`) both import it without importing each other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

__all__ = ["PromptSet", "seeded"]


@dataclass
class PromptSet:
    """The prompts of one forward: one row per depth (see :mod:`segprompt.backbones.towers`).

    text:             (d, n, D_text) or (B, d, n, D_text) (image-conditioned), or None.
    vision:           (d, n, D_vision) or (B, d, n, D_vision), or None.
    vision_position:  where vision row 0 enters: ``"pre-norm"`` (before the vision tower's
                      pre-LayerNorm, TuneVLSeg's and MaPLe's placement) or ``"post-norm"``.
    decoder:          an extra decoder layer (:class:`tunevlseg.models.TVSDecoderLayer`) applied to the CLIPSeg
                      decoder's output, or None.
    """

    text: torch.Tensor | None = None
    vision: torch.Tensor | None = None
    vision_position: str = "pre-norm"
    decoder: nn.Module | None = None

    @property
    def n_text_ctx(self) -> int:
        return 0 if self.text is None else int(self.text.shape[-2])

    @property
    def n_vision_ctx(self) -> int:
        return 0 if self.vision is None else int(self.vision.shape[-2])


def seeded(seed: int | None) -> contextlib.AbstractContextManager:
    """Run a block with torch's CPU RNG seeded, restoring the global RNG afterwards."""
    if seed is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def block() -> Iterator[None]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    return block()
