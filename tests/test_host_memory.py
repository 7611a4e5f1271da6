"""populated_empty: an np.empty whose pages are mapped before it is returned (Linux 5.14+)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from segprompt.models.host_memory import populated_empty


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


_RESIDENCY_PROBE = """
import os, numpy as np
from segprompt.models.host_memory import populated_empty
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
n = 64 << 20
before = rss()
plain = np.empty(n, np.uint8)
after_plain = rss()
populated = populated_empty((n,), np.uint8)
print(after_plain - before, rss() - after_plain)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _kernel_at_least(5, 14), reason="MADV_POPULATE_WRITE needs Linux 5.14+")
def test_pages_are_resident_before_any_write():
    """Measured in a fresh process: in a test worker that has already freed gigabytes, a new
    64 MB array can land on pages that are still resident, and RSS then says nothing (a CI run
    saw a plain and a populated array both add 0 bytes)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _RESIDENCY_PROBE], capture_output=True, text=True, check=True, timeout=120)
    plain_growth, populated_growth = (int(v) for v in out.stdout.split())
    n = 64 << 20
    assert plain_growth < n // 10
    assert populated_growth > 0.9 * n

