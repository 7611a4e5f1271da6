"""segprompt: a workbench for promptable segmentation.

Light to import: models, datasets and torch load only when used.

>>> from segprompt import create_segmenter, Points, PromptSet
>>> seg = create_segmenter("sam-tiny")                      # doctest: +SKIP
>>> pred = seg.predict(image, PromptSet(points=Points.positive((120, 80))))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from segprompt.errors import ConfigError, DataError, PromptError, SegpromptError, WeightsError
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet, Reference, Scribble, Text

__version__ = "0.1.0"

_LAZY = {
    "create_segmenter": "segprompt.models.registry",
    "list_segmenters": "segprompt.models.registry",
    "register_segmenter": "segprompt.models.registry",
    "Segmenter": "segprompt.models.base",
    "Prediction": "segprompt.models.base",
    "ImageState": "segprompt.models.base",
    "load_dataset": "segprompt.data.registry",
    "list_datasets": "segprompt.data.registry",
    "Sample": "segprompt.data.sample",
    "read_image": "segprompt.data.io",
    "to_rgb_uint8": "segprompt.data.io",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segprompt' has no attribute {name!r}")


__all__ = [
    "Box",
    "ConfigError",
    "DataError",
    "MaskPrompt",
    "Points",
    "PromptError",
    "PromptSet",
    "Reference",
    "Scribble",
    "SegpromptError",
    "Text",
    "WeightsError",
    *_LAZY,
]
