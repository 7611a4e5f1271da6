"""Rendering under a real X server (Xvfb, QT_QPA_PLATFORM=xcb): a committed mask is drawn.

napari needs an OpenGL context to draw image layers, which the offscreen Qt platform cannot give,
and one process cannot switch Qt platforms, so the check runs in a child process started with
``xvfb-run`` (or directly when a display is already there). The child builds a full
``napari.Viewer``, docks the widget, segments a grey image with a model that returns a known
rectangle, commits it, and takes ``viewer.screenshot(canvas_only=False)`` with the objects layer
shown and hidden: the pixels that differ must form the rectangle, at the right place relative to
the drawn image, in the label's colour. It also runs ``segprompt napari``'s launcher without
entering the event loop.

Skipped only when neither a display nor ``xvfb-run``/``Xvfb`` is available (CI installs xvfb with
``.ci/gui-deps.sh``); set ``SEGPROMPT_REQUIRE_XVFB=1`` to make that a failure instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

H, W = 120, 160
RECT = (30, 90, 40, 100)  # rows 30:90, cols 40:100 of the image
GREY = 128

pytestmark = pytest.mark.gui


# ---------------------------------------------------------------------------------------------
# the child process


def _rect_model():
    from segprompt.models.base import ImageState, Prediction, Segmenter

    class RectModel(Segmenter):
        """Returns the same rectangle for any prompt (a known mask to look for on screen)."""

        name = "rect"
        accepts = frozenset({"points", "box"})

        def _encode(self, image):
            return ImageState(image.shape[:2], image.shape[:2])

        def _segment(self, state, prompts, multimask_output, select=None):
            h, w = state.original_size
            m = np.zeros((len(prompts), 1, h, w), bool)
            r0, r1, c0, c1 = RECT
            m[:, :, r0:r1, c0:c1] = True
            return Prediction(masks=m, scores=np.ones((len(prompts), 1), np.float32))

    return RectModel()


def _wait(app, cond, timeout=20.0):
    import time

    t0 = time.time()
    while not cond():
        app.processEvents()
        if time.time() - t0 > timeout:
            raise TimeoutError("timed out waiting for the widget")
        time.sleep(0.01)


def _largest_component(mask: np.ndarray) -> tuple[int, int, int, int, int]:
    """(row0, row1, col0, col1, pixels) of the largest 4-connected component (row1/col1 exclusive)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        return (0, 0, 0, 0, 0)
    sizes = ndimage.sum(mask, lab, index=range(1, n + 1))
    k = int(np.argmax(sizes)) + 1
    rows, cols = np.nonzero(lab == k)
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1, int(sizes[k - 1])


def child(out_dir: str) -> None:
    import napari
    from qtpy.QtWidgets import QApplication, QDockWidget

    from viewers.widget import SegpromptWidget

    out = Path(out_dir)
    result: dict = {"platform": QApplication.platformName() if QApplication.instance() else None}
    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    result["platform"] = app.platformName()
    viewer.window.resize(1100, 800)
    viewer.add_image(np.full((H, W), GREY, np.uint8), name="grey", contrast_limits=(0, 255))
    # dock it the way napari's Plugins menu does: through the npe2 manifest
    import npe2

    pm = npe2.PluginManager.instance()
    try:
        pm.get_manifest("segprompt")
        result["manifest"] = "installed"
    except KeyError:
        pm.register(npe2.PluginManifest.from_file(Path(__file__).resolve().parents[1] / "viewers" / "napari.yaml"))
        result["manifest"] = "registered from viewers/napari.yaml"
    _dock, widget = viewer.window.add_plugin_dock_widget("segprompt", "Promptable segmentation")
    result["plugin_widget"] = type(widget).__name__
    assert isinstance(widget, SegpromptWidget)
    widget.set_segmenter(_rect_model(), "rect")
    _wait(app, lambda: widget.session.has_state(0) and not widget.busy)
    widget.add_point(70, 60)
    _wait(app, lambda: widget.preview is not None and not widget.busy)
    object_id = widget.commit()
    result["object_id"] = object_id
    labels = widget.labels_layer
    result["label_pixels"] = int((labels.data == object_id).sum())
    def shot():
        for _ in range(5):
            app.processEvents()
        return viewer.screenshot(canvas_only=False, flash=False)

    # the first grabs settle the window layout (the canvas is resized and the view reset)
    def changed(a, b):
        return float((np.abs(a[..., :3].astype(int) - b[..., :3].astype(int)).sum(axis=2) > 30).mean())

    previous = None
    for _ in range(6):
        viewer.reset_view()
        shown = shot()
        if previous is not None and changed(previous, shown) < 0.001:
            break
        previous = shown
    labels.visible = False
    hidden = shot()
    labels.visible = True
    result["unstable_fraction"] = changed(shot(), shown)

    # keys through napari's own key handler of the Qt viewer, where napari binds S (points:
    # select mode) and C (image: auto-contrast): the widget's bindings must win
    try:
        handler = viewer.window._qt_viewer._key_map_handler  # private: skip the check if it moves
    except AttributeError:
        handler = None
    if handler is not None:
        widget.live_preview.setChecked(False)
        viewer.layers.selection.active = widget.points_layer
        widget.points_layer.mode = "add"
        widget.add_point(20, 20)
        handler.press_key("S")
        _wait(app, lambda: widget.preview is not None and not widget.busy)
        keys = {"S_previewed": widget.preview is not None, "points_mode_after_S": str(widget.points_layer.mode)}
        viewer.layers.selection.active = viewer.layers["grey"]
        limits = tuple(viewer.layers["grey"].contrast_limits)
        ids = []
        widget.committed.connect(ids.append)
        handler.press_key("C")
        keys["C_committed"] = ids[0] if ids else None
        keys["contrast_unchanged"] = tuple(viewer.layers["grey"].contrast_limits) == limits
        result["keys"] = keys
    from PIL import Image

    Image.fromarray(shown).save(out / "screenshot.png")
    rgb_s, rgb_h = shown[..., :3].astype(int), hidden[..., :3].astype(int)
    diff = np.abs(rgb_s - rgb_h).sum(axis=2) > 30
    image_px = (np.abs(rgb_h - GREY) <= 3).all(axis=2)  # the grey image as drawn (objects hidden)
    result["screenshot_shape"] = list(shown.shape)
    result["mask_box"] = _largest_component(diff)
    result["image_box"] = _largest_component(image_px)
    r0, r1, c0, c1, _ = result["mask_box"]
    result["mask_colour"] = rgb_s[r0:r1, c0:c1][diff[r0:r1, c0:c1]].mean(axis=0).tolist() if r1 > r0 else None
    colour = np.asarray(labels.get_color(object_id), float)
    result["expected_colour"] = (labels.opacity * colour[:3] * 255 + (1 - labels.opacity) * GREY).tolist()
    result["black_canvas"] = bool(shown[..., :3].max() == 0)
    widget.shutdown()
    viewer.close()

    # the CLI launcher: opens the files, docks the widget, starts loading the model
    from viewers.launch import launch

    npy = out / "u16.npy"
    np.save(npy, (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 3))
    v2, w2 = launch([npy], model="classical", show=False, run=False)
    _wait(app, lambda: w2.session.segmenter is not None and not w2.busy)
    result["launch"] = {
        "layers": [layer.name for layer in v2.layers],
        "docked": isinstance(w2.parent(), QDockWidget),
        "model": w2.session.model_label,
        "image": w2.image_combo.currentText(),
        "dtype": str(v2.layers["u16"].data.dtype),
    }
    # a SAM checkpoint loaded after the window draws with Mesa (llvmpipe): torch must not crash
    # importing triton next to Mesa's LLVM (viewers.models.avoid_llvm_clash)
    ckpt = out / "tiny_sam.safetensors"
    if ckpt.exists():
        w2.add_checkpoint(ckpt)
        w2.load_model()
        _wait(app, lambda: w2.session.model_label == "SAM: tiny_sam.safetensors" and w2.session.has_state(0) and not w2.busy, 60)
        w2.add_point(50, 40)
        _wait(app, lambda: w2.preview is not None and not w2.busy)
        result["sam_after_gl"] = {"preview_shape": list(w2.preview_mask.shape), "candidates": len(w2.preview.masks)}
    w2.shutdown()
    v2.close()
    (out / "result.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# the test


def test_committed_mask_is_drawn_in_a_screenshot(tmp_path, run_under_x):
    pytest.importorskip("napari")
    torch = pytest.importorskip("torch")
    from segprompt.models.sam_arch import save_sam, tiny_arch

    torch.manual_seed(0)
    save_sam(tiny_arch().build(), tmp_path / "tiny_sam.safetensors")
    res = run_under_x(__file__, tmp_path)
    assert res["platform"] == "xcb" and res["plugin_widget"] == "SegpromptWidget"
    assert res["object_id"] == 1 and res["label_pixels"] == (RECT[1] - RECT[0]) * (RECT[3] - RECT[2])
    assert not res["black_canvas"] and res["unstable_fraction"] < 0.001
    # the grey image is on screen ...
    ir0, ir1, ic0, ic1, ipx = res["image_box"]
    assert ipx > 0.8 * (ir1 - ir0) * (ic1 - ic0) and (ic1 - ic0) / (ir1 - ir0) == pytest.approx(W / H, rel=0.05)
    # ... and the committed mask is drawn exactly over the rectangle's place in it
    mr0, mr1, mc0, mc1, mpx = res["mask_box"]
    sy, sx = (ir1 - ir0) / H, (ic1 - ic0) / W
    tol = 2 + 0.02 * max(ir1 - ir0, ic1 - ic0)
    assert mr0 == pytest.approx(ir0 + RECT[0] * sy, abs=tol) and mr1 == pytest.approx(ir0 + RECT[1] * sy, abs=tol)
    assert mc0 == pytest.approx(ic0 + RECT[2] * sx, abs=tol) and mc1 == pytest.approx(ic0 + RECT[3] * sx, abs=tol)
    assert mpx > 0.9 * (mr1 - mr0) * (mc1 - mc0)  # filled, not an outline
    # in the label's colour (blended over the grey at the layer's opacity)
    np.testing.assert_allclose(res["mask_colour"], res["expected_colour"], atol=20)
    if "keys" in res:
        assert res["keys"] == {"S_previewed": True, "points_mode_after_S": "add", "C_committed": 2, "contrast_unchanged": True}
    # `segprompt napari IMAGE` docks the widget with the image (dtype kept) and the model loaded
    launch = res["launch"]
    assert launch["docked"] and launch["model"] == "classical (GrabCut)" and launch["image"] == "u16"
    assert launch["dtype"] == "uint16" and "u16 objects" in launch["layers"]
    assert res["sam_after_gl"] == {"preview_shape": [H, W], "candidates": 3}


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    child(sys.argv[2])
