"""Backbone adapters: transformer blocks of text / vision towers, and prompt-token injection.

Prompts go in through forward hooks and pre-hooks registered for one ``with`` block, never by
copying library forward code; outside the block the model is exactly the library model. See
:mod:`segprompt.backbones.towers` for the one definition of prompt depth used everywhere.

>>> adapter = adapt(clipseg_model)                               # doctest: +SKIP
>>> tokens = adapter.text.tokenize(["a polyp"], n_ctx=4)        # "X X X X a polyp"
>>> with adapter.prompted(text=ctx, vision=vpt):                 # (d, 4, D) tensors
...     out = clipseg_model(pixel_values=x, input_ids=tokens.input_ids)   # doctest: +SKIP

LoRA injection for ``nn.Linear`` layers lives in :mod:`segprompt.backbones.lora`.
"""

from segprompt.backbones.adapters import CLIPSegAdapter, ModelAdapter, adapt
from segprompt.backbones.hooks import HookBag
from segprompt.backbones.tokenizers import (
    PLACEHOLDER,
    CLIPBPETokenizer,
    HFTokenizer,
    OpenCLIPTokenizer,
    PromptTokenizer,
    Tokens,
)
from segprompt.backbones.towers import (
    VISION_PROMPT_POSITIONS,
    TextTower,
    Tower,
    VisionTower,
    check_depth,
    evenly_spaced_layers,
)

__all__ = [
    "adapt",
    "ModelAdapter",
    "CLIPSegAdapter",
    "HookBag",
    "Tower",
    "TextTower",
    "VisionTower",
    "check_depth",
    "evenly_spaced_layers",
    "VISION_PROMPT_POSITIONS",
    "Tokens",
    "PromptTokenizer",
    "CLIPBPETokenizer",
    "OpenCLIPTokenizer",
    "HFTokenizer",
    "PLACEHOLDER",
]

# multi-scale vision adapters (issue 11): the backbone libraries load only when a pyramid is created
from segprompt.backbones.pyramid import (  # noqa: E402
    PYRAMIDS,
    SimpleFeaturePyramid,
    VisionPyramid,
    create_pyramid,
    list_pyramids,
    register_pyramid,
)

__all__ += ["VisionPyramid", "SimpleFeaturePyramid", "create_pyramid", "register_pyramid", "list_pyramids", "PYRAMIDS"]
