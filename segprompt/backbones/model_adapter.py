"""The adapter base: a model's text and vision towers, prompted together for one ``with`` block.

Its own module so that the model families' adapters (:mod:`segprompt.backbones.hf_clip`,
:mod:`segprompt.backbones.openclip`) and :func:`segprompt.backbones.adapters.adapt`, which picks
among them, all import it without importing each other.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from segprompt.backbones.towers import TextTower, VisionTower
from segprompt.errors import ConfigError

__all__ = ["ModelAdapter"]


class ModelAdapter:
    """A model's towers. ``prompted(text=..., vision=...)`` attaches both for one ``with`` block."""

    def __init__(self, model: nn.Module, text: TextTower | None, vision: VisionTower | None) -> None:
        self.model = model
        self.text = text
        self.vision = vision

    @contextlib.contextmanager
    def prompted(
        self,
        text: torch.Tensor | None = None,
        vision: torch.Tensor | None = None,
        vision_position: str = "pre-norm",
        decoder: nn.Module | None = None,
    ) -> Iterator["ModelAdapter"]:
        """Attach text and vision prompt rows (see :mod:`segprompt.backbones.towers`);
        ``vision_position``: ``"pre-norm"`` (TuneVLSeg, MaPLe) or ``"post-norm"``; ``decoder``: an
        extra decoder layer for models with a CLIPSeg decoder (:class:`CLIPSegAdapter`)."""
        if text is not None and self.text is None:
            raise ConfigError(f"{type(self.model).__name__} has no text tower to prompt")
        if vision is not None and self.vision is None:
            raise ConfigError(f"{type(self.model).__name__} has no vision tower to prompt")
        with contextlib.ExitStack() as stack:
            if text is not None:
                stack.enter_context(self.text.prompted(text))  # type: ignore[union-attr]
            if vision is not None:
                stack.enter_context(self.vision.prompted(vision, position=vision_position))  # type: ignore[union-attr]
            stack.enter_context(self._consumers(vision is not None, decoder))
            yield self

    @contextlib.contextmanager
    def _consumers(self, vision_prompted: bool, decoder: nn.Module | None) -> Iterator[None]:
        """Extra hooks for modules that read intermediate vision tokens (none by default)."""
        if decoder is not None:
            raise ConfigError(f"{type(self.model).__name__} has no CLIPSeg decoder to add a decoder layer to")
        yield
