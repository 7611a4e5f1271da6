"""Issue 16's opening scene, replayed in the napari widget: a real colonoscopy image, the picker's
default model (the bundled sam-tiny), one click at the polyp's centre. The preview once covered
121,301 px of background and had IoU 0.04 with the polyp. The widget's preview must be what the
library gives for the same click (sam-tiny's own policy, its single-mask head) and must find the
polyps: on kvasir_seg's first 12 images the mean IoU measured 0.441 (GrabCut from the same click:
0.386), with 1.5 % of the image shown as polyp where there is none."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from segprompt.data.registry import load_dataset  # noqa: E402
from segprompt.models import create_segmenter  # noqa: E402
from segprompt.prompts import Points, PromptSet  # noqa: E402

pytestmark = [
    pytest.mark.gui,
    pytest.mark.realdata,
    pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"),
]

WAIT_MS = 30000
N_IMAGES = 12


def _centre(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel farthest from the mask's border (micro-sam's and the benchmark's centre)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(c), float(r)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_one_click_on_a_real_polyp_with_the_default_model(qtbot, viewer, make_widget):
    samples = [s for _, s in zip(range(N_IMAGES), load_dataset("kvasir_seg"))]
    w = make_widget()
    assert w.model_combo.currentText() == "sam-tiny (bundled demo)"  # what a new user gets
    with qtbot.waitSignal(w.model_loaded, timeout=WAIT_MS):
        w.load_model()
    library = create_segmenter("sam-tiny")
    grabcut = create_segmenter("grabcut")
    ious, grabcut_ious, background = [], [], []
    for s in samples:
        polyp = s.mask.astype(bool)
        layer = viewer.add_image(s.image, name=s.id, rgb=True)
        w.set_image_layer(layer)
        assert w.prompt_set().points is None or len(w.prompt_set().points) == 0
        with qtbot.waitSignal(w.embedding_ready, timeout=WAIT_MS):
            w.compute_embedding()
        x, y = _centre(polyp)
        w.add_point(x, y)
        qtbot.waitUntil(lambda: not w.busy and w._shown_generation == w._generation and not w._debounce.isActive() and not w._soon.isActive(), timeout=WAIT_MS)
        shown = np.asarray(w.preview_mask, bool)
        assert len(w.preview.masks) == 1  # auto keeps sam-tiny's single head for one click
        click = PromptSet(points=Points([[x, y]], [1]))
        direct = library.predict(s.image, click).masks[0, 0]
        assert (shown != direct).mean() < 1e-3, s.id
        ious.append(_iou(shown, polyp))
        background.append(int((shown & ~polyp).sum()) / polyp.size)
        grabcut_ious.append(_iou(grabcut.predict(s.image, click).masks[0, 0], polyp))
        w.clear()
        viewer.layers.remove(layer)
    print(f"kvasir_seg, first {N_IMAGES}: napari sam-tiny IoU {np.mean(ious):.3f}, GrabCut {np.mean(grabcut_ious):.3f}, background share {np.mean(background):.3f}")
    assert np.mean(ious) >= np.mean(grabcut_ious)
    assert np.mean(ious) >= 0.35  # the preview: 0.04
    assert np.median(background) < 0.15  # the preview: 121,301 background px of a ~0.3 MP image
