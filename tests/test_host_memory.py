"""populated_empty: an np.empty whose pages are mapped before it is returned (Linux 5.14+)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from segprompt.models.host_memory import populated_empty


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _kernel_at_least(major: int, minor: int) -> bool:
    parts = os.uname().release.split(".")
    try:
        return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()))) >= (major, minor)
    except (IndexError, ValueError):
        return False


@pytest.mark.parametrize("shape,dtype", [((3, 5), np.float32), ((2, 3, 1024, 1024), bool), ((7, 3, 257, 255), np.float32)])
def test_shape_dtype_and_every_element_writable(shape, dtype):
    a = populated_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    a[...] = 1
    assert a.all()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _kernel_at_least(5, 14), reason="MADV_POPULATE_WRITE needs Linux 5.14+")
def test_pages_are_resident_before_any_write():
    n = 64 << 20
    before = _rss_bytes()
    plain = np.empty(n, np.uint8)  # lazily mapped: no resident pages yet
    after_plain = _rss_bytes()
    populated = populated_empty((n,), np.uint8)
    after_populated = _rss_bytes()
    assert after_plain - before < n // 10
    assert after_populated - after_plain > 0.9 * n
    del plain, populated

