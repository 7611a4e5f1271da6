"""Test-session settings.

The default run (``python -m pytest``) spreads the test files over up to 4 worker processes
(pytest-xdist, ``--dist loadfile``: a file's tests and its module fixtures stay in one worker). Each
worker then uses one intra-op thread, so two workers on a 2-core machine do not fight over the
cores; run ``python -m pytest -p no:xdist`` (or ``-n 0``) for one process with the library's
default threads.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# napari widget fixtures (the GUI test files; they skip without napari / pytest-qt)
import pytest  # noqa: E402


@pytest.fixture
def viewer(qtbot):
    """A headless napari ``ViewerModel``."""
    pytest.importorskip("napari")
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def make_widget(qtbot, viewer):
    """``make(**kwargs)`` -> a ``SegpromptWidget`` on ``viewer`` (``auto_embed=False`` unless given),
    shut down after the test."""
    from viewers.widget import SegpromptWidget

    made = []

    def make(**kwargs):
        kwargs.setdefault("auto_embed", False)
        w = SegpromptWidget(viewer, **kwargs)
        qtbot.addWidget(w)
        made.append(w)
        return w

    yield make
    for w in made:
        w.shutdown()
