"""What the model picker offers, and how each choice is loaded.

* ``sam-tiny``: the bundled demo model (a demo and test model, not a foundation model);
* ``classical`` (GrabCut) and ``random-walker``: no weights at all;
* ``universal-tiny``: the bundled demo universal (SEEM-style) model, which also takes text and
  reference prompts; other ``universal-*`` segmenters registered in
  :func:`segprompt.models.list_segmenters` (``universal`` itself needs a checkpoint: below);
* every SAM checkpoint file in the weights cache (``segprompt weights fetch sam_vit_b`` puts
  them there; ``$SEGPROMPT_HOME/checkpoints``), official or finetuned: the architecture is read
  from the file (:func:`segprompt.models.sam_arch.load_sam`);
* ``sam2`` (SAM 2 / 2.1, MedSAM2): every SAM 2 checkpoint in the weights cache
  (``segprompt weights fetch sam2.1_hiera_tiny``), loaded with ``create_segmenter("sam2",
  checkpoint=...)``; with none there, one entry ``sam2 (SAM 2)`` is listed as not available with
  a note saying how to get one. SAM 2 propagates volumes with its own video memory (the widget's
  Propagate); the other models use the slice-by-slice fallback;
* a checkpoint file the user picks (``Open checkpoint...``), e.g. one's own finetuned SAM; a
  universal ``.safetensors`` (its metadata says so) loads as ``universal``, a SAM 2 file (any
  finetune with SAM 2's keys, MedSAM2) as ``sam2``.

What a file is (:func:`checkpoint_kind`): a registry entry's family by file name; else the
header of a ``.safetensors`` (universal metadata, or the tensor names and shapes); else the
tensor names of a ``.pt`` / ``.pth`` read with ``torch.load(mmap=True)`` (the tensors are mapped,
not read). SAM 2 is recognised by :class:`segprompt.models.sam2_build.KeyLayout` (the keys its
loader needs), never by the file name. Listing never hashes a checkpoint nor reads its tensors;
results are kept per (path, size, mtime). Loading happens in a worker thread in the widget.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from segprompt.commands.inference_options import CLASSICAL_MODELS
from segprompt.models.base import Segmenter

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

#: picker label of the SAM 2 entry listed when no SAM 2 checkpoint is present
SAM2_LABEL = "sam2 (SAM 2)"
#: what the SAM 2 entry says when no checkpoint is present
SAM2_MISSING_NOTE = (
    "no SAM 2 checkpoint in the weights cache: `segprompt weights fetch sam2.1_hiera_tiny` (or medsam2), "
    "or Open checkpoint... with a SAM 2 .pt file"
)
#: what the SAM 2 segmenter takes (:attr:`segprompt.models.sam2.Sam2Segmenter.accepts`; a test checks they agree)
SAM2_ACCEPTS = frozenset({"points", "box", "mask", "scribble"})

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

    def load(self, device: str = "cpu", cache: str | Path | None = None, wrappers: dict[str, Any] | None = None) -> Segmenter:
        """Build the segmenter (may take seconds for big checkpoints). ``wrappers``: inference
        options of the learned models (``create_segmenter``'s ``cascade`` / ``zoom_in`` / ``brs``),
        ignored for the classical ones."""
        from segprompt.models import create_segmenter

        avoid_llvm_clash()
        kwargs = dict(self.kwargs)
        if self.factory is not None:
            return self.factory(**kwargs)
        if self.name not in CLASSICAL_MODELS:
            kwargs.update(wrappers or {})
        kwargs.setdefault("device", device)
        if cache is not None and self.name not in CLASSICAL_MODELS:
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
    """SAM and SAM 2 looking checkpoint files in the weights cache (sorted, hidden and partial
    files skipped).

    Registry entries of other families (CLIPSeg, open_clip) are left out by file name.
    """
    from segprompt import weights

    folder = Path(folder) if folder is not None else weights.checkpoints_dir()
    if not folder.is_dir():
        return []
    other = {e.filename for e in weights.list_weights() if e.family not in ("sam", "sam2")}
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in CHECKPOINT_SUFFIXES and p.name not in other:
            out.append(p)
    return out


def _registry_entry(path: Path) -> object | None:
    from segprompt import weights

    for e in weights.list_weights():
        if e.filename == path.name:
            return e
    return None


def _registry_name(path: Path) -> str | None:
    e = _registry_entry(path)
    return None if e is None else e.name  # type: ignore[attr-defined]


def _universal_tiny_present() -> bool:
    try:
        from segprompt.models.universal import universal_tiny_path

        universal_tiny_path()
        return True
    except Exception:  # noqa: BLE001 - WeightsError while the demo model is not built yet
        return False


def _safetensors_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a ``.safetensors`` file (tensor names, dtypes, shapes, ``__metadata__``),
    or None when it is not one; reads the header only, without torch."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return header if isinstance(header, dict) else None


def is_universal_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a segprompt universal ``.safetensors`` (its header's metadata says
    ``format: segprompt-universal/...``); reads the header only, without torch."""
    header = _safetensors_header(Path(path))
    meta = (header or {}).get("__metadata__") or {}
    return isinstance(meta, dict) and str(meta.get("format", "")).startswith("segprompt-universal/")


@dataclass(frozen=True)
class _Shape:
    """Stands for a tensor where only its shape is needed (:class:`KeyLayout` reads shapes)."""

    shape: tuple[int, ...]


#: a tensor name only SAM 2 checkpoints have (first of the keys KeyLayout requires); a cheap
#: pre-check, so that files of other models never import torch while listing
_SAM2_PROBE_KEY = "image_encoder.trunk.patch_embed.proj.weight"


def _tensor_shapes(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """``({name: object with .shape}, "sam2_arch" record or None)`` of a checkpoint file without
    reading its tensors, or None when it cannot be read that way (damaged, or an old non-zip
    ``torch.save`` file, which cannot be memory-mapped)."""
    from segprompt.models.sam2_build import ARCH_KEY

    header = _safetensors_header(path)
    if header is not None:
        meta = header.get("__metadata__") or {}
        shapes = {k: _Shape(tuple(v.get("shape", ()))) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
        try:
            record = json.loads(meta[ARCH_KEY]) if isinstance(meta, dict) and ARCH_KEY in meta else None
        except ValueError:
            record = None
        return shapes, record
    if path.suffix.lower() == ".safetensors":
        return None
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a zip torch file, damaged, or not a checkpoint at all
        return None
    if not isinstance(data, dict):
        return None
    record = data.get(ARCH_KEY) if isinstance(data.get(ARCH_KEY), dict) else None
    sd = data["model"] if isinstance(data.get("model"), dict) else data
    return {k: v for k, v in sd.items() if hasattr(v, "shape")}, record


@functools.lru_cache(maxsize=256)
def _sam2_arch_cached(path: str, size: int, mtime_ns: int) -> str | None:
    p = Path(path)
    header = _safetensors_header(p)
    if header is not None and _SAM2_PROBE_KEY not in header:
        return None  # a safetensors file of another model: decided from the header alone
    read = _tensor_shapes(p)
    if read is None:
        return None
    shapes, record = read
    from segprompt.errors import SegpromptError
    from segprompt.models.sam2_build import KeyLayout, detect_arch

    try:
        layout = KeyLayout.from_state_dict(shapes)
    except SegpromptError:
        return None
    try:
        return detect_arch(shapes, record).name
    except SegpromptError:
        return f"SAM 2 keys, unknown configuration ({layout.describe()})"


def sam2_checkpoint_arch(path: str | Path) -> str | None:
    """The SAM 2 architecture name of a checkpoint file (``"sam2.1_hiera_t"``, ``"sam2.1_tiny256"``;
    for a SAM 2 layout that matches no known configuration, a description of it), or None when the
    file is not a SAM 2 checkpoint.

    Decided by :class:`segprompt.models.sam2_build.KeyLayout` / :func:`~segprompt.models.sam2_build.detect_arch`
    on the tensor names and shapes, read without loading the tensors (module docstring).
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError:
        return None
    return _sam2_arch_cached(str(p.resolve()), int(st.st_size), int(st.st_mtime_ns))


def checkpoint_kind(path: str | Path) -> str:
    """``"universal"``, ``"sam2"`` or ``"sam"``: which segmenter loads the checkpoint file ``path``
    (a registry entry's family by file name, else :func:`is_universal_checkpoint`, else
    :func:`sam2_checkpoint_arch`; SAM otherwise, whose loader says clearly what is wrong)."""
    p = Path(path)
    entry = _registry_entry(p)
    family = getattr(entry, "family", None)
    if family in ("sam", "sam2"):
        return str(family)
    if is_universal_checkpoint(p):
        return "universal"
    if sam2_checkpoint_arch(p) is not None:
        return "sam2"
    return "sam"


def checkpoint_choice(path: str | Path) -> ModelChoice:
    """The picker entry of a checkpoint file: universal, SAM 2 or SAM (:func:`checkpoint_kind`)."""
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "universal":
        return ModelChoice(f"universal: {path.name}", name="universal", kwargs={"checkpoint": path}, note=str(path), accepts=UNIVERSAL_ACCEPTS)
    reg = _registry_name(path)
    if kind == "sam2":
        entry = _registry_entry(path)
        arch = getattr(entry, "architecture", "") or sam2_checkpoint_arch(path) or ""
        detail = ", ".join(x for x in (reg, arch if arch != reg else "") if x)
        label = f"SAM 2: {path.name}" + (f" ({detail})" if detail else "")
        note = f"{path}; propagates volumes with SAM 2's video memory" + (f"; architecture {arch}" if arch else "")
        return ModelChoice(label=label, name="sam2", kwargs={"checkpoint": path}, note=note, accepts=SAM2_ACCEPTS)
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
    files: list[ModelChoice] = []
    try:
        for p in checkpoint_files(checkpoints_folder):
            files.append(checkpoint_choice(p))
    except Exception as exc:  # noqa: BLE001 - a broken cache folder must not break the widget
        log.warning("could not list the checkpoints folder: %s", exc)
    if "sam2" in names and not any(c.name == "sam2" for c in files):
        # listed, not available, saying how to get weights (a file chosen by path loads too)
        choices.append(ModelChoice(SAM2_LABEL, name="sam2", available=False, note=SAM2_MISSING_NOTE, accepts=SAM2_ACCEPTS))
    return choices + files


__all__ = [
    "CHECKPOINT_SUFFIXES",
    "SAM2_ACCEPTS",
    "SAM2_LABEL",
    "UNIVERSAL_ACCEPTS",
    "ModelChoice",
    "avoid_llvm_clash",
    "checkpoint_choice",
    "checkpoint_files",
    "checkpoint_kind",
    "discover_models",
    "is_universal_checkpoint",
    "sam2_checkpoint_arch",
]
