"""``sam-tiny``: the small SAM-architecture demo model shipped inside the package.

A demo and test model, *not* a foundation model: segment-anything's classes at 256 px input
with a 4-block, 128-wide ViT (1.85 M parameters, 3.7 MB in fp16), trained on domain-randomised
synthetic images only (``synthetic-random``, :mod:`segprompt.data.synthetic_random`) by
``scripts/train_sam_tiny.py`` (training record in ``segprompt/assets/sam_tiny.json``; the
whole story in docs/sam_tiny.md). It makes ``segprompt demo``, the tests and the napari plugin
work with no download; on real images it is about as good as GrabCut from a click.

Its default multimask policy is ``"single"``: one click is decoded by the single-mask head, not
by the best-scored of the three candidates (SAM's ``"auto"``). sam-tiny's IoU head learnt to rank
candidates on synthetic images only, and its ranking does not carry over to real ones: from the
centre click the single head gives 0.449 / 0.474 / 0.749 / 0.253 on kvasir_seg / busi / ph2 /
CamVid where the best-scored candidate gives 0.432 / 0.410 / 0.744 / 0.211 (on its own synthetic
training distribution the ranking wins, 0.558 against 0.525 on 40 images). ``multimask="auto"`` or ``"all"``
still gives the three candidates.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from segprompt.errors import WeightsError
from segprompt.models.sam import SamSegmenter

ASSET = "sam_tiny.safetensors"
#: sam-tiny's own multimask policy: its IoU head ranks candidates well on synthetic images only
DEFAULT_MULTIMASK = "single"


def bundled_asset(filename: str, rebuild: str) -> Path:
    """Path of a demo model shipped in ``segprompt/assets``; WeightsError saying how to ``rebuild`` it when missing."""
    path = Path(str(resources.files("segprompt") / "assets" / filename))
    if not path.is_file():
        raise WeightsError(f"the bundled demo model {path} is missing; rebuild it with {rebuild}, or reinstall segprompt")
    return path


def sam_tiny_path() -> Path:
    """Path of the shipped sam-tiny weights."""
    return bundled_asset(ASSET, "`python scripts/train_sam_tiny.py` then `--export segprompt/assets/sam_tiny.safetensors`")


def sam_tiny_record() -> dict[str, Any]:
    """The training record written next to the weights (steps, validation IoU, command)."""
    return json.loads(sam_tiny_path().with_suffix(".json").read_text())


class SamTinySegmenter(SamSegmenter):
    name = "sam-tiny"


def create_sam_tiny(**kwargs: Any) -> SamSegmenter:
    """The bundled demo SAM; keyword arguments as for :class:`SamSegmenter` (not ``checkpoint``).

    ``multimask`` defaults to :data:`DEFAULT_MULTIMASK` (the single-mask head; see the module docstring).
    """
    if "checkpoint" in kwargs or "model" in kwargs:
        raise WeightsError("sam-tiny uses its bundled weights; for another checkpoint use create_segmenter('sam', checkpoint=...)")
    kwargs.setdefault("multimask", DEFAULT_MULTIMASK)
    return SamTinySegmenter(checkpoint=sam_tiny_path(), **kwargs)
