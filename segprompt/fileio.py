"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A reader never sees a half-written file, and a process killed mid-write leaves the previous
version (or nothing) in place, plus at most a hidden ``.<name>.*.tmp`` file. The new file gets
the usual permissions (0666 minus the umask), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp", prefix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is fsynced and renamed to ``path``.

    .. code-block:: python

        with atomic_path("model.safetensors") as tmp:
            save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
