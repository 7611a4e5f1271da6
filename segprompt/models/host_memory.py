"""Large result arrays whose pages are mapped in one call rather than one fault at a time.

A ``segment`` call with 256 prompt sets on a 1024 x 1024 image returns 768 MB of masks and
200 MB of low-res logits, all fresh memory. Filling fresh memory takes a page fault per page
(4 KB, or 2 MB where numpy's ``MADV_HUGEPAGE`` gets huge pages); on this project's VM the
faults cost 0.1-1.8 ms per MB depending on the kernel's supply of free huge pages, several
milliseconds per prompt set. ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14+) maps the whole
range in one system call instead: in a 256-set ``segment`` on vit_b the later two of three
rounds took 25.9 and 23.6 ms per set, against 31.2-32.0 ms with a plain ``np.empty``
(``benchmarks/sam_decoder_paths.py --arch vit_b --sizes 1024 --sets 256 --populate``).
Elsewhere, or when the call fails, the array is a plain ``np.empty``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache
from typing import Any

import numpy as np

MADV_POPULATE_WRITE = 23  # linux/mman.h
PAGE = 4096
#: arrays smaller than this are left to the usual faults (a system call is not worth it)
MIN_POPULATE_BYTES = 1 << 22


@lru_cache(maxsize=1)
def _madvise() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def populated_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty(shape, dtype)`` with its whole-page interior mapped in before it is returned.

    The contents are as undefined as ``np.empty``'s: the caller writes every element. The first
    and last partial pages are left to fault as usual.
    """
    out = np.empty(shape, dtype)
    madvise = _madvise()
    if madvise is None or out.nbytes < MIN_POPULATE_BYTES:
        return out
    start = -(-out.ctypes.data // PAGE) * PAGE
    end = (out.ctypes.data + out.nbytes) // PAGE * PAGE
    if end > start:
        madvise(ctypes.c_void_p(start), end - start, MADV_POPULATE_WRITE)  # EINVAL before Linux 5.14: faults as usual
    return out
