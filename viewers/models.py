"""What the model picker offers, and how each choice is loaded.

* ``sam-tiny``: the bundled demo model (a demo and test model, not a foundation model);
* ``classical`` (GrabCut) and ``random-walker``: no weights at all;
* ``universal-tiny``: the bundled demo universal (SEEM-style) model, which also takes text and
  reference prompts; other ``universal-*`` segmenters registered in
  :func:`segprompt.models.list_segmenters` (``universal`` itself needs a checkpoint: below);
* every SAM checkpoint file in the weights cache (``segprompt weights fetch sam_vit_b`` puts
  them there; ``$SEGPROMPT_HOME/checkpoints``), official or finetuned: the architecture is read
  from the file (:func:`segprompt.models.sam_arch.load_sam`);
* a checkpoint file the user picks (``Open checkpoint...``), e.g. one's own finetuned SAM; a
  universal ``.safetensors`` (its metadata says so) loads as ``universal``.

Listing never hashes a checkpoint nor loads its tensors; of a ``.safetensors`` it reads the header
(the metadata tells a universal checkpoint from a SAM one). Loading happens in a worker thread in
the widget.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from segprompt.models.base import Segmenter

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

#: what the universal segmenters take (:attr:`segprompt.models.universal.UniversalSegmenter.accepts`,
#: written here so that listing does not import torch; a test checks they agree)
UNIVERSAL_ACCEPTS = frozenset({"points", "box", "scribble", "mask", "text", "reference"})


@dataclass
class ModelChoice:
    """One entry of the model picker.

    ``name`` is a segmenter registry name (built-ins), ``checkpoint`` a SAM checkpoint file, or
    ``factory`` any callable returning a Segmenter (for scripts and tests).
    """

    label: str
    name: str | None = None
    checkpoint: Path | None = None
    factory: Callable[..., Segmenter] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    available: bool = True
    note: str = ""
    #: prompt kinds the model takes when known before loading (the universal models), else None
    accepts: frozenset[str] | None = None

    def load(self, device: str = "cpu", cache: str | Path | None = None) -> Segmenter:
        """Build the segmenter (may take seconds for big checkpoints)."""
        from segprompt.models import create_segmenter

        avoid_llvm_clash()
        kwargs = dict(self.kwargs)
        if self.factory is not None:
            return self.factory(**kwargs)
        kwargs.setdefault("device", device)
        if cache is not None and self.name not in ("classical", "grabcut", "random-walker"):
            kwargs.setdefault("cache", cache)
        if self.checkpoint is not None:
            return create_segmenter("sam", checkpoint=self.checkpoint, **kwargs)
        if self.name is None:
            raise ValueError(f"model choice {self.label!r} has no name, checkpoint or factory")
        return create_segmenter(self.name, **kwargs)


def avoid_llvm_clash() -> bool:
    """Keep a process that already draws with Mesa from crashing when torch loads triton.

    Mesa's OpenGL drivers (llvmpipe, the software renderer of Xvfb and many Linux desktops;
    radeonsi) load ``libLLVM``. triton's ``libtriton`` carries its own LLVM and exports its
    symbols, and loading it after another LLVM ends in a segmentation fault; torchvision (hence
    segment-anything) imports ``torch._dynamo``, which imports triton. So when the napari window
    is already drawing (``libLLVM`` is mapped) and triton is not loaded yet, triton is made
    unimportable for this process (``sys.modules["triton"] = None``): torch then runs without it,
    which changes nothing on the CPU and only disables ``torch.compile``'s GPU kernels.
    ``segprompt napari`` avoids this by importing torch before the window opens.

    Returns True when triton was blocked.
    """
    import sys

    if "triton" in sys.modules or sys.platform != "linux":
        return False
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return False
    if "libLLVM" not in maps:
        return False
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    log.warning(
        "OpenGL (Mesa) already loaded LLVM in this process; triton is disabled here to avoid its LLVM clash "
        "(CPU inference is unaffected; start with `segprompt napari` to keep triton)"
    )
    return True


def _sam_tiny_present() -> bool:
    try:
        from segprompt.models.sam_tiny import sam_tiny_path

        sam_tiny_path()
        return True
    except Exception:  # noqa: BLE001 - WeightsError when not built yet
        return False


def checkpoint_files(folder: str | Path | None = None) -> list[Path]:
    """SAM-looking checkpoint files in the weights cache (sorted, hidden and partial files skipped).

    Registry entries of other families (CLIPSeg, open_clip) are left out by file name.
    """
    from segprompt import weights

    folder = Path(folder) if folder is not None else weights.checkpoints_dir()
    if not folder.is_dir():
        return []
    other = {e.filename for e in weights.list_weights() if e.family != "sam"}
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in CHECKPOINT_SUFFIXES and p.name not in other:
            out.append(p)
    return out


def _registry_name(path: Path) -> str | None:
    from segprompt import weights

    for e in weights.list_weights():
        if e.filename == path.name:
            return e.name
    return None


def _universal_tiny_present() -> bool:
    try:
        from segprompt.models.universal import universal_tiny_path

        universal_tiny_path()
        return True
    except Exception:  # noqa: BLE001 - WeightsError while the demo model is not built yet
        return False


def is_universal_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a segprompt universal ``.safetensors`` (its header's metadata says
    ``format: segprompt-universal/...``); reads the header only, without torch."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return False
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return False
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except (OSError, ValueError, struct.error, AttributeError):
        return False
    return str(meta.get("format", "")).startswith("segprompt-universal/")


def checkpoint_choice(path: str | Path) -> ModelChoice:
    path = Path(path)
    if is_universal_checkpoint(path):
        return ModelChoice(f"universal: {path.name}", name="universal", kwargs={"checkpoint": path}, note=str(path), accepts=UNIVERSAL_ACCEPTS)
    reg = _registry_name(path)
    label = f"SAM: {path.name}" + (f" ({reg})" if reg else "")
    return ModelChoice(label=label, checkpoint=path, note=str(path))


def discover_models(checkpoints_folder: str | Path | None = None) -> list[ModelChoice]:
    """The model picker's entries, in display order."""
    from segprompt.models import list_segmenters

    names = set(list_segmenters())
    tiny = _sam_tiny_present()
    choices = [
        ModelChoice(
            "sam-tiny (bundled demo)",
            name="sam-tiny",
            available=tiny,
            note="" if tiny else "the bundled demo weights are missing (segprompt/assets/sam_tiny.safetensors)",
        ),
        ModelChoice("classical (GrabCut)", name="classical"),
        ModelChoice("random walker", name="random-walker"),
    ]
    if "universal-tiny" in names:
        present = _universal_tiny_present()
        choices.append(
            ModelChoice(
                "universal-tiny (bundled demo)",
                name="universal-tiny",
                available=present,
                note="takes text and reference prompts too"
                if present
                else "the bundled demo weights are missing (segprompt/assets/universal_tiny.safetensors)",
                accepts=UNIVERSAL_ACCEPTS,
            )
        )
    for n in sorted(names):  # plug-in universal models; ``universal`` itself needs a checkpoint file
        if n.startswith("universal-") and n != "universal-tiny":
            choices.append(ModelChoice(n, name=n, accepts=UNIVERSAL_ACCEPTS))
    try:
        for p in checkpoint_files(checkpoints_folder):
            choices.append(checkpoint_choice(p))
    except Exception as exc:  # noqa: BLE001 - a broken cache folder must not break the widget
        log.warning("could not list the checkpoints folder: %s", exc)
    return choices


__all__ = [
    "CHECKPOINT_SUFFIXES",
    "UNIVERSAL_ACCEPTS",
    "ModelChoice",
    "avoid_llvm_clash",
    "checkpoint_choice",
    "checkpoint_files",
    "discover_models",
    "is_universal_checkpoint",
]
