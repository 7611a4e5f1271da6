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


@pytest.fixture
def run_under_x():
    """``run(script, out_dir)``: run ``script --child out_dir`` on a real X display (``DISPLAY``, or
    Xvfb through ``xvfb-run``) with ``QT_QPA_PLATFORM=xcb``; returns the child's ``result.json``.

    Skips when neither exists, and fails instead with ``SEGPROMPT_REQUIRE_XVFB`` set (CI);
    ``SEGPROMPT_FORCE_XVFB`` uses Xvfb even when a display is set.
    """
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    def run(script: str | Path, out_dir: str | Path, timeout: int = 240) -> dict:
        base = [sys.executable, str(script), "--child", str(out_dir)]
        if os.environ.get("DISPLAY") and not os.environ.get("SEGPROMPT_FORCE_XVFB"):
            cmd = base
        elif shutil.which("xvfb-run"):
            cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", *base]
        elif os.environ.get("SEGPROMPT_REQUIRE_XVFB"):
            pytest.fail("no X display and no xvfb-run: install xvfb (.ci/gui-deps.sh)")
        else:
            pytest.skip("no X display and no xvfb-run to start one (install xvfb: .ci/gui-deps.sh)")
        env = dict(os.environ, QT_QPA_PLATFORM="xcb", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        result = Path(out_dir) / "result.json"
        assert proc.returncode == 0 and result.exists(), f"X child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return json.loads(result.read_text())

    return run
