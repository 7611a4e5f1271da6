"""``create_segmenter(name, **kwargs)``: the registry of Segmenter implementations.

Built-in models are registered by an import path so that ``import segprompt`` stays light
(torch and segment-anything load only when a model is created). A plugin or user module
registers a class directly with ``@register_segmenter("my-model")``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Union

from segprompt.models.base import Segmenter
from segprompt.registry import Registry

Factory = Union[str, Callable[..., Segmenter]]

SEGMENTERS: Registry[Factory] = Registry("segmenter")

# name -> "module:attribute" of a class or factory, imported on first use
SEGMENTERS.add("sam", "segprompt.models.sam:SamSegmenter")
SEGMENTERS.add("sam-tiny", "segprompt.models.sam_tiny:create_sam_tiny")
SEGMENTERS.add("sam2", "segprompt.models.sam2:Sam2Segmenter")
SEGMENTERS.add("universal", "segprompt.models.universal:UniversalSegmenter")
SEGMENTERS.add("universal-tiny", "segprompt.models.universal:create_universal_tiny")
SEGMENTERS.add("classical", "segprompt.models.classical:ClassicalSegmenter")
SEGMENTERS.add("grabcut", "segprompt.models.classical:create_grabcut")
SEGMENTERS.add("random-walker", "segprompt.models.classical:create_random_walker")
SEGMENTERS.add("persam", "segprompt.models.persam:PerSamSegmenter")
SEGMENTERS.add("prototype", "segprompt.models.prototype:PrototypeSegmenter")
SEGMENTERS.add("maskclip", "segprompt.models.maskclip:MaskClipSegmenter")
# CLIPSeg runs on the tunevlseg VLSM (a tuned prompt learner enters too), so it lives in that package;
# the core names it here as a lazy path, as the CLI mounts the packages' commands, and never imports it
SEGMENTERS.add("clipseg", "tunevlseg.segmenter:ClipSegSegmenter")
SEGMENTERS.add("clipseg-tiny", "tunevlseg.segmenter:create_clipseg_tiny")


def register_segmenter(name: str, *aliases: str) -> Callable[[Factory], Factory]:
    """Decorator registering a Segmenter subclass or factory under ``name``."""
    return SEGMENTERS.register(name, *aliases)


def _resolve(factory: Factory) -> Callable[..., Segmenter]:
    if isinstance(factory, str):
        module, attr = factory.split(":")
        return getattr(importlib.import_module(module), attr)
    return factory


#: create_segmenter options that wrap the model (segprompt.models.wrapper), innermost first
WRAPPERS = (
    ("brs", "segprompt.models.brs:brs"),
    ("cascade", "segprompt.models.cascade:cascade"),
    ("zoom_in", "segprompt.models.zoom_in:zoom_in"),
)


def create_segmenter(name: str, **kwargs: Any) -> Segmenter:
    """Build the segmenter registered as ``name`` (``sam``, ``sam-tiny``, ``classical``, ...).

    Keyword arguments go to its constructor, e.g. ``create_segmenter("sam",
    checkpoint="sam_vit_b_01ec64.pth", multimask="best", device="cuda")``, except
    ``zoom_in`` (True, or a mapping of :class:`~segprompt.models.zoom_in.ZoomInSettings` fields),
    which wraps the model in RITM's zoom-in (:mod:`segprompt.models.zoom_in`), and ``brs`` (True,
    or a mapping of :class:`~segprompt.models.brs.BRSSettings` fields), f-BRS's refinement of the
    mask towards its clicks (:mod:`segprompt.models.brs`; inside the zoom-in when both are asked for,
    as RITM refines the crop), and ``cascade`` (True, or a mapping of
    :class:`~segprompt.models.cascade.CascadeSettings` fields), the model's own logits fed back as
    its mask prompt (:mod:`segprompt.models.cascade`).
    """
    # innermost first: f-BRS refines what the cascade feeds back and the zoom-in decodes on its crop
    wrappers = [(kwargs.pop(option, None), factory) for option, factory in WRAPPERS]
    segmenter = _resolve(SEGMENTERS.get(name))(**kwargs)
    for value, factory in wrappers:
        if value is not None and value is not False:
            segmenter = _resolve(factory)(segmenter, value)
    return segmenter


def list_segmenters() -> list[str]:
    return SEGMENTERS.names()
