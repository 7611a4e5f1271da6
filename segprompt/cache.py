"""A signed on-disk cache of image embeddings (one safetensors file per image and model).

The key is the SHA-256 of a *signature*: the image content (bytes, shape, dtype), the model
(architecture, weights hash, precision), the preprocessing and the cache format version. The
full signature and a SHA-256 of the stored tensor bytes are written into the file's header, and
checked on every read:

* a signature that differs from the expected one (a stale entry, e.g. written by an older
  format or a hash collision in the file name) is recomputed, never used;
* a file that cannot be parsed, or whose tensor bytes do not match their checksum (a corrupt
  or truncated entry) is recomputed and overwritten;

so a cached embedding is either exactly what the model would compute now, or it is not used.
Writes are atomic (temporary file + rename): a killed run leaves no half-written entry.

Several processes may share one cache folder (the shards of a run, local workers or SLURM jobs on
a cluster file system): each write goes to a temporary file of its own and is renamed over the
entry in one step, so a reader opens either the old complete file or the new complete one, and
two writers of the same key leave one of their two (equal) files. A rejected entry is deleted
only if it is still the file that was read, never a fresh one another process wrote meanwhile.

``dtype="fp16"`` stores embeddings in half precision (half the disk; values round to fp16,
about 1e-3 relative error) and gives them back as float32.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch

from segprompt.errors import ConfigError
from segprompt.fileio import atomic_path

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
StorageDtype = Literal["fp32", "fp16"]
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def image_digest(image: np.ndarray) -> str:
    """SHA-256 of an image array's bytes, shape and dtype."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256()
    h.update(f"{arr.shape}|{arr.dtype}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()


def _identity(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime ns) of a file: which version of an entry was read."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    rejected: int = 0  # stale or corrupt entries found and recomputed


class EmbeddingCache:
    """Embeddings on disk under ``folder``, keyed by image content and model signature.

    Args:
        folder: cache directory (created on first write).
        dtype: ``"fp32"`` (exact) or ``"fp16"`` (half the size, lossy) storage.
    """

    def __init__(self, folder: str | Path, dtype: StorageDtype = "fp32") -> None:
        if dtype not in _TORCH_DTYPES:
            raise ConfigError(f"cache dtype must be fp32 or fp16, got {dtype!r}")
        self.folder = Path(folder)
        self.dtype = dtype
        self.stats = CacheStats()

    def signature(self, image: np.ndarray, model_signature: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "image": image_digest(image),
            "model": dict(model_signature),
            "storage": self.dtype,
        }

    @staticmethod
    def key(signature: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    # -- low level ----------------------------------------------------------
    def read(self, key: str, signature: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Tensors and extra metadata stored under ``key``, or None if absent, stale or corrupt."""
        path = self.path(key)
        try:
            seen = _identity(path)
        except OSError:
            return None
        expected = json.dumps(signature, sort_keys=True, default=str)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except FileNotFoundError:  # removed by another process between the stat and the open
            return None
        except Exception as exc:  # a damaged file raises whatever the parser hits
            return self._reject(path, f"unreadable ({type(exc).__name__}: {exc})", seen)
        if meta.get("signature") != expected:
            return self._reject(path, "stale (its signature differs from this image/model)", seen)
        if meta.get("checksum") != tensor_digest(tensors):
            return self._reject(path, "corrupt (tensor checksum mismatch)", seen)
        try:
            extra = json.loads(meta.get("extra", "{}"))
        except json.JSONDecodeError:
            return self._reject(path, "corrupt (bad metadata)", seen)
        return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, extra

    def _reject(self, path: Path, reason: str, seen: tuple[int, int, int] | None = None) -> None:
        log.warning("embedding cache entry %s is %s; recomputing", path, reason)
        self.stats.rejected += 1
        try:
            if seen is None or _identity(path) == seen:  # not a fresh entry another process renamed in meanwhile
                path.unlink()
        except OSError:
            pass
        return None

    def write(self, key: str, signature: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any]) -> Path:
        """Store ``tensors`` (cast to the storage dtype) atomically under ``key``."""
        from safetensors.torch import save_file

        dtype = _TORCH_DTYPES[self.dtype]
        data = {k: (v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu()).contiguous() for k, v in tensors.items()}
        meta = {
            "signature": json.dumps(signature, sort_keys=True, default=str),
            "checksum": tensor_digest(data),
            "extra": json.dumps(dict(extra), sort_keys=True),
        }
        path = self.path(key)
        with atomic_path(path, suffix=".safetensors", prefix=".tmp-") as tmp:
            save_file(data, str(tmp), metadata=meta)
        return path

    # -- high level -----------------------------------------------------------
    def get_or_compute(
        self,
        image: np.ndarray,
        model_signature: Mapping[str, Any],
        compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]],
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
        """Return ``(tensors, extra, key)`` from disk, or from ``compute()`` (then stored)."""
        signature = self.signature(image, model_signature)
        key = self.key(signature)
        found = self.read(key, signature)
        if found is not None:
            self.stats.hits += 1
            return found[0], found[1], key
        self.stats.misses += 1
        tensors, extra = compute()
        self.write(key, signature, tensors, extra)
        if self.dtype == "fp16":  # give back what a later hit would give: fp16-rounded values
            tensors = {k: v.to(torch.float16).float() if v.is_floating_point() else v for k, v in tensors.items()}
        return tensors, extra, key

    def clear(self) -> int:
        """Delete every entry; returns how many files were removed."""
        n = 0
        if self.folder.is_dir():
            for p in self.folder.glob("*/*.safetensors"):
                if p.name.startswith("."):  # another process's write in flight
                    continue
                p.unlink()
                n += 1
        return n

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.folder)!r}, dtype={self.dtype!r})"
