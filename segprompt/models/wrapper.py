"""What the Segmenters that wrap another one share (zoom-in, f-BRS): the inner model's identity,
its image state kept under ``features["inner"]``, and the ``option=True | {settings}`` factory."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from segprompt.errors import ConfigError
from segprompt.models.base import ImageState, Segmenter

__all__ = ["WrappedSegmenter", "innermost", "wrap_on_request"]


class WrappedSegmenter(Segmenter):
    """A Segmenter around ``inner``: same name, prompt kinds and multimask head; ``encode`` keeps
    the inner state (and the image, for crops) in ``features["inner"]``. ``settings_class`` is the
    subclass's frozen settings dataclass, ``option`` its name in ``create_segmenter`` and ``describe``."""

    settings_class: Any = None
    option: str = ""

    def __init__(self, inner: Segmenter, settings: Any = None, **kwargs: Any) -> None:
        super().__init__(multimask=inner.multimask, device=inner.device, precision=inner.precision)
        self.inner = inner
        self.settings = settings or self.settings_class(**kwargs)
        self.name = inner.name
        self.accepts = inner.accepts
        self.has_multimask = inner.has_multimask

    def _encode(self, image: np.ndarray) -> ImageState:
        inner = self.inner.encode(image)
        return ImageState(inner.original_size, inner.input_size, {"inner": inner}, image=image)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), self.option: asdict(self.settings)}


def wrap_on_request(inner: Segmenter, value: Any, wrapper: type[WrappedSegmenter]) -> Segmenter:
    """``inner`` wrapped in ``wrapper`` when ``value`` asks for it (True, a dict of the wrapper's
    settings fields, or settings); ``inner`` itself for None / False."""
    cls = wrapper.settings_class
    if value is None or value is False:
        return inner
    if value is True:
        return wrapper(inner)
    if isinstance(value, cls):
        return wrapper(inner, value)
    if isinstance(value, dict):
        return wrapper(inner, cls(**value))
    raise ConfigError(f"{wrapper.option} must be true, false or a mapping of {sorted(cls.__dataclass_fields__)}, got {value!r}")


def innermost(segmenter: Any) -> Any:
    """The model under any wrappers (``segmenter`` itself when it wraps nothing, or is no Segmenter)."""
    while isinstance(segmenter, WrappedSegmenter):
        segmenter = segmenter.inner
    return segmenter
