"""Device names checked once, with an error that says what is missing and what to do.

``device`` is an argument everywhere (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``);
:func:`check_device` turns a name this machine cannot run into a :class:`ConfigError`
(the CLI prints it as one line and exits 2) instead of torch's RuntimeError deep inside a run.
"""

from __future__ import annotations

from segprompt.errors import ConfigError


def check_device(device: object) -> str:
    """Return ``device`` as a string if this machine has it; raise ConfigError otherwise.

    ``"cpu"`` always works. ``"cuda"`` / ``"cuda:N"`` need a CUDA build of torch and a visible
    GPU N; ``"mps"`` needs Apple's Metal backend.
    """
    name = str(device).strip()
    kind, _, index = name.partition(":")
    if kind == "cpu" and not index:
        return name
    if kind not in ("cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps (--device)")
    import torch

    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"--device {name}: this machine has no Apple MPS backend; use --device cpu")
        return name
    if not torch.cuda.is_available():
        build = "this torch is a CPU-only build" if torch.version.cuda is None else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
        raise ConfigError(f"--device {name}: CUDA is not available ({build}); use --device cpu, or run on a machine with an NVIDIA GPU and driver")
    if index:
        if not index.isdigit():
            raise ConfigError(f"--device {name}: expected cuda:N with N a GPU index")
        if int(index) >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    return name


__all__ = ["check_device"]
