"""Segmenters: the interface, the registry, and the built-in implementations."""

from segprompt.models.base import ImageState, MULTIMASK_POLICIES, Prediction, Segmenter
from segprompt.models.registry import create_segmenter, list_segmenters, register_segmenter

__all__ = [
    "ImageState",
    "MULTIMASK_POLICIES",
    "Prediction",
    "Segmenter",
    "create_segmenter",
    "list_segmenters",
    "register_segmenter",
]
