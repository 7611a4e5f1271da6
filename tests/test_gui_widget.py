"""The napari dock widget driven with pytest-qt (offscreen Qt, a ViewerModel: no OpenGL needed).

Pick a model from the picker, compute the embedding in the background (the UI keeps running and
Cancel works), click points, check the live preview against a direct decode, pick a multimask
candidate, commit (labels get id 1), undo, key bindings, the text/reference fields, 3-D stacks
with per-slice embeddings, and a recorded trajectory exported and read back.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from segprompt.data.io import to_rgb_uint8  # noqa: E402
from segprompt.data.synthetic import SyntheticLesions  # noqa: E402
from segprompt.models import create_segmenter  # noqa: E402
from segprompt.models.base import ImageState, Prediction, Segmenter  # noqa: E402
from segprompt.models.sam_arch import save_sam, tiny_arch  # noqa: E402
from segprompt.prompts import Points, PromptSet  # noqa: E402

pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"),
]

WAIT_MS = 15000


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGPROMPT_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    save_sam(tiny_arch().build(), tmp_path / "home" / "checkpoints" / "my_finetuned_sam.safetensors")
    return tmp_path / "home"


# the viewer and make_widget fixtures: tests/conftest.py


def lesion(size=96):
    return SyntheticLesions(n=1, seed=3, size=size, style="endoscopy")[0]


def settle(qtbot, w):
    """Wait until the preview shows the latest prompts and no worker runs."""
    qtbot.waitUntil(lambda: not w.busy and w._shown_generation == w._generation and not w._debounce.isActive() and not w._soon.isActive(), timeout=WAIT_MS)


def test_full_session_pick_embed_click_preview_commit_undo_export(qtbot, home, viewer, make_widget, tmp_path):
    from pointprompt.trajectory import load_trajectories

    s = lesion()
    viewer.add_image(s.image, name=s.id, rgb=True)
    w = make_widget()
    assert w.image_combo.currentText() == s.id and w.source.size == (96, 96)
    # pick the finetuned checkpoint found in the weights cache and load it (worker thread)
    w.select_model("SAM: my_finetuned_sam.safetensors")
    with qtbot.waitSignal(w.model_loaded, timeout=WAIT_MS):
        qtbot.mouseClick(w.load_button, __import__("qtpy.QtCore", fromlist=["Qt"]).Qt.LeftButton)
    seg = w.session.segmenter
    assert seg.name == "sam" and not w.text_row.isEnabled() and not w.reference_row.isEnabled()
    # embedding in the background, then ready
    with qtbot.waitSignal(w.embedding_ready, timeout=WAIT_MS):
        w.compute_embedding()
    assert w.session.has_state(0) and w.progress.value() == w.progress.maximum()
    state = seg.encode(s.image)

    # one click -> live preview with 3 candidates, identical to a direct decode
    w.add_point(40, 50)
    settle(qtbot, w)
    ps1 = PromptSet(points=Points.positive((40, 50)))
    ref = seg.segment(state, ps1, multimask="all")
    np.testing.assert_array_equal(w.preview.masks, ref.masks[0])
    assert w.preview.chosen == int(np.argmax(ref.scores[0]))
    assert w.candidate_list.count() == 3 and w.candidate_list.currentRow() == w.preview.chosen
    np.testing.assert_array_equal(w.preview_layer.data.astype(bool), w.preview_mask)
    # pick another candidate from the list: the preview (and the recorded step) follow
    other = (w.preview.chosen + 1) % 3
    w.candidate_list.setCurrentRow(other)
    assert w.preview.chosen == other
    np.testing.assert_array_equal(w.preview_layer.data.astype(bool), ref.masks[0, other])

    # a negative click (T toggles), a box, then undo the box
    w.toggle_polarity()
    w.add_point(10, 12)
    w.toggle_polarity()
    settle(qtbot, w)
    np.testing.assert_array_equal(w.points_layer.features["label"], [1, 0])
    np.testing.assert_allclose(w.points_layer.face_color[1, :3], [1.0, 0.125, 0.125], atol=0.01)  # red
    ps2 = PromptSet(points=Points(np.array([[40, 50], [10, 12]], np.float32), np.array([1, 0])))
    np.testing.assert_array_equal(w.preview_mask, seg.segment(state, ps2, multimask="single").masks[0, 0])
    w.add_box(20, 25, 70, 80)
    settle(qtbot, w)
    assert w.prompt_set().box is not None and w.candidate_list.count() == 1
    assert w.undo() is True
    settle(qtbot, w)
    assert w.shapes_layer.nshapes == 0 and w.prompt_set().box is None
    np.testing.assert_array_equal(w.preview_mask, seg.segment(state, ps2, multimask="single").masks[0, 0])

    # commit: labels get id 1 exactly where the preview was; prompts and preview cleared
    expected = w.preview_mask.copy()
    assert expected.any()
    assert w.commit() == 1
    labels = w.labels_layer.data
    assert labels.dtype == np.int32 and set(np.unique(labels)) <= {0, 1}
    np.testing.assert_array_equal(labels == 1, expected)
    assert len(w.points_layer.data) == 0 and w.preview is None and not w.preview_layer.data.any()

    # the recording: 5 steps (click, pick-updated click, negative click, box, undo) -> 4 decodes
    (traj,) = w.trajectories
    assert traj.source == "napari" and traj.image_id == s.id and traj.meta["object_id"] == 1
    pts = [s_.points.to_list() for s_ in traj.steps]
    assert pts[0] == [[40.0, 50.0, 1]] and pts[-1] == [[40.0, 50.0, 1], [10.0, 12.0, 0]]
    assert traj.steps[0].extra["candidate"] == other  # the pick updated the step
    np.testing.assert_array_equal(traj.steps[0].mask, ref.masks[0, other])
    assert any(st.box is not None for st in traj.steps)
    times = [st.time_s for st in traj.steps]
    assert times[0] == 0.0 and times == sorted(times)
    np.testing.assert_array_equal(traj.steps[-1].mask, expected)
    out = w.export_trajectories(tmp_path / "session.jsonl")
    assert load_trajectories(out) == [traj]

    # a second object gets id 2
    w.add_point(80, 80)
    settle(qtbot, w)
    assert w.commit() == 2


def test_embedding_runs_in_background_ui_stays_responsive_and_cancels(qtbot, viewer, make_widget):
    from qtpy.QtCore import QTimer

    torch.manual_seed(0)
    n_blocks = 6
    seg = create_segmenter("sam", model=tiny_arch(encoder_depth=n_blocks, encoder_global_attn_indexes=(n_blocks - 1,)).build())
    ran = []  # blocks entered

    def slow(*_):  # a deliberately slow encoder: 0.2 s per block
        ran.append(1)
        time.sleep(0.2)

    for block in seg.model.image_encoder.blocks:
        block.register_forward_pre_hook(slow)
    viewer.add_image(lesion(64).image, name="img", rgb=True)
    w = make_widget()
    w.set_segmenter(seg, "slow")

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    try:
        t0 = time.perf_counter()
        w.compute_embedding()
        assert time.perf_counter() - t0 < 0.5  # returns at once
        assert w.encoding and w.cancel_button.isEnabled() and not w.embed_button.isEnabled()
        qtbot.waitUntil(lambda: w.progress.value() >= 1, timeout=WAIT_MS)  # per-block progress
        assert w.progress.maximum() == n_blocks + 1
        # meanwhile the event loop runs: timer ticks keep coming and the widget reacts
        w.toggle_polarity()
        assert w.polarity_button.text().startswith("negative")
        w.toggle_polarity()
        # Cancel stops it at the next block
        with qtbot.waitSignal(w.embedding_done, timeout=WAIT_MS) as blocker:
            qtbot.mouseClick(w.cancel_button, __import__("qtpy.QtCore", fromlist=["Qt"]).Qt.LeftButton)
        assert blocker.args == ["cancelled"]
        qtbot.waitUntil(lambda: not w.encoding, timeout=WAIT_MS)
        assert len(ran) < n_blocks, f"the encode ran all {n_blocks} blocks despite Cancel"
        assert not w.session.has_state(0) and "cancelled" in w.status.text()
        # run to completion now; the GUI thread stays responsive throughout
        ticks.clear()
        with qtbot.waitSignal(w.embedding_ready, timeout=WAIT_MS):
            w.compute_embedding()
        assert w.session.has_state(0) and w.encode_seconds >= 0.2 * n_blocks
    finally:
        timer.stop()
    gaps = np.diff(ticks)
    assert len(ticks) >= 25, f"only {len(ticks)} timer ticks during a {w.encode_seconds:.1f} s encode"
    assert gaps.max() < 0.3, f"the GUI thread was blocked for {gaps.max():.2f} s"


def test_key_bindings_win_over_layer_shortcuts(qtbot, viewer, make_widget):
    from napari.utils.key_bindings import KeymapHandler

    torch.manual_seed(0)
    seg = create_segmenter("sam", model=tiny_arch().build())
    viewer.add_image(lesion(64).image, name="img", rgb=True)
    w = make_widget()
    w.set_segmenter(seg, "tiny")
    w.live_preview.setChecked(False)  # no live preview: S must do it
    with qtbot.waitSignal(w.embedding_ready, timeout=WAIT_MS):
        w.compute_embedding()
    handler = KeymapHandler()
    handler.keymap_providers = [w.points_layer, viewer]  # the points layer is active, as when clicking
    assert w.positive
    handler.press_key("T")
    assert not w.positive and w.points_layer.mode == "add"  # not napari's 'S'/'T' layer modes
    handler.press_key("T")
    w.add_point(30, 30)
    assert w.preview is None
    handler.press_key("S")
    settle(qtbot, w)
    assert w.preview is not None
    handler.press_key("C")
    assert int(w.labels_layer.data.max()) == 1
    w.add_point(20, 20)
    handler.keymap_providers = [w.labels_layer, viewer]
    handler.press_key("Shift-C")
    assert len(w.points_layer.data) == 0 and w.preview is None
    handler.keymap_providers = [viewer.layers["img"], viewer]  # image layer: 'C' is not auto-contrast
    w.add_point(20, 20)
    handler.press_key("C")
    assert int(w.labels_layer.data.max()) == 2


class TextModel(Segmenter):
    """A stand-in model that takes text and references (the fields appear for it)."""

    name = "texty"
    accepts = frozenset({"points", "text", "reference"})

    def _encode(self, image):
        return ImageState(image.shape[:2], image.shape[:2], image=image)

    def _segment(self, state, prompts, multimask_output, select=None):
        h, w = state.original_size
        masks = np.zeros((len(prompts), 1, h, w), bool)
        for i, p in enumerate(prompts):
            if p.text is not None:
                masks[i, 0, : h // 2] = True
        return Prediction(masks=masks, scores=np.full((len(prompts), 1), np.nan, np.float32))


def test_text_and_reference_fields_follow_the_model(qtbot, viewer, make_widget):
    viewer.add_image(lesion(64).image, name="img", rgb=True)
    w = make_widget()
    assert not w.text_row.isEnabled() and not w.reference_row.isEnabled()
    w.set_segmenter(TextModel(), "texty")
    assert w.text_row.isEnabled() and w.reference_row.isEnabled()
    with qtbot.waitSignal(w.embedding_ready, timeout=WAIT_MS):
        w.compute_embedding()
    w.text_edit.setText("polyp")  # a text prompt alone triggers the preview
    settle(qtbot, w)
    assert w.prompt_set().text.text == "polyp" and w.preview_mask[:32].all() and not w.preview_mask[32:].any()
    assert w.candidate_list.item(0).text().startswith("candidate 1: score n/a")
    w.set_segmenter(create_segmenter("classical"), "classical")
    assert not w.text_row.isEnabled() and w.prompt_set().text is None


def test_3d_stack_slice_by_slice_with_cached_embeddings(qtbot, viewer, make_widget):
    torch.manual_seed(0)
    seg = create_segmenter("sam", model=tiny_arch().build())
    encoded = []  # slices the widget encoded
    stack = np.stack([lesion(64).image[..., 0].astype(np.uint16) * (k + 1) * 50 for k in range(5)])
    stack[3, :, :20] = 0  # slice 3 differs after normalisation
    viewer.add_image(stack, name="vol")
    w = make_widget(auto_embed=True)
    orig = w.session.encode
    w.session.encode = lambda z=0, **kw: (encoded.append(z), orig(z, **kw))[1]
    w.set_segmenter(seg, "tiny")  # embeds the slice shown (napari starts mid-stack)
    start = w.current_slice()
    viewer.dims.set_current_step(0, 3)  # moving on: the slice shown is embedded next
    qtbot.waitUntil(lambda: w.session.has_state(3) and not w.busy, timeout=WAIT_MS)
    assert w.current_slice() == 3 and w.points_layer.ndim == 3 and encoded[-1] == 3
    w.add_point(30, 30)
    settle(qtbot, w)
    ref = seg.segment(seg.encode(to_rgb_uint8(stack[3])), PromptSet(points=Points.positive((30, 30))), multimask="all")
    np.testing.assert_array_equal(w.preview.masks, ref.masks[0])
    np.testing.assert_array_equal(w.points_layer.data, [[3, 30, 30]])
    assert w.preview_layer.data[3].any() == w.preview_mask.any() and not w.preview_layer.data[[0, 1, 2, 4]].any()
    assert w.commit() == 1
    assert w.labels_layer.data.shape == stack.shape and not w.labels_layer.data[[0, 1, 2, 4]].any()
    assert w.trajectories[0].image_id == "vol_z0003" and w.trajectories[0].meta["slice"] == 3
    other = 0 if start != 0 else 4
    viewer.dims.set_current_step(0, other)
    qtbot.waitUntil(lambda: w.session.has_state(other) and not w.busy, timeout=WAIT_MS)
    n = len(encoded)
    viewer.dims.set_current_step(0, 3)  # back: the embedding comes from the in-memory LRU
    qtbot.wait(50)
    assert len(encoded) == n and w.session.has_state(3) and not w.busy
    # a click on slice 3 is decoded at once from the cached embedding
    w.add_point(50, 40)
    settle(qtbot, w)
    assert w.preview is not None and len(encoded) == n
    assert w.session.lru.hits >= 1


def test_16bit_grey_image_uses_the_documented_normalisation(qtbot, viewer, make_widget):
    torch.manual_seed(0)
    seg = create_segmenter("sam", model=tiny_arch().build())
    img = (lesion(64).image[..., 1].astype(np.uint16) * 257) + 1000
    viewer.add_image(img, name="u16")
    w = make_widget()
    w.set_segmenter(seg, "tiny")
    np.testing.assert_array_equal(w.source.rgb_slice(), to_rgb_uint8(img))
    w.norm_combo.setCurrentText("layer contrast limits")
    assert w.source.normalisation == "window" and w.source.window == tuple(viewer.layers["u16"].contrast_limits)
    with qtbot.waitSignal(w.embedding_ready, timeout=WAIT_MS):
        w.compute_embedding()
    w.add_point(20, 20)
    settle(qtbot, w)
    assert w.preview_mask.shape == (64, 64)


def test_user_checkpoint_file_bad_file_and_shapes(qtbot, viewer, make_widget, tmp_path):
    torch.manual_seed(1)
    mine = save_sam(tiny_arch(encoder_embed_dim=32, prompt_embed_dim=16).build(), tmp_path / "elsewhere" / "lab_sam.pth")
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    viewer.add_image(lesion(64).image, name="img", rgb=True)
    w = make_widget()
    # a damaged file: one clear line in the status, nothing loaded, the widget still works
    w.add_checkpoint(bad)
    assert w.load_model() is not None
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)
    assert w.session.segmenter is None and w.status.text().startswith("error:") and "broken.pth" in w.status.text()
    # the user's own checkpoint chosen from disk ("Open checkpoint..."): architecture from the file
    w.add_checkpoint(mine)
    assert w.model_combo.currentText() == "SAM: lab_sam.pth"
    with qtbot.waitSignal(w.model_loaded, timeout=WAIT_MS):
        w.load_model()
    assert w.session.segmenter.arch.encoder_embed_dim == 32
    with qtbot.waitSignal(w.embedding_ready, timeout=WAIT_MS):
        w.compute_embedding()
    # shapes: a negative scribble is red and becomes a negative Scribble; a box is the Box
    w.toggle_polarity()
    w.add_scribble([[5, 5], [20, 8], [30, 20]])
    w.toggle_polarity()
    w.add_box(10, 10, 50, 40)
    settle(qtbot, w)
    ps = w.prompt_set()
    assert len(ps.scribbles) == 1 and ps.scribbles[0].label == 0 and ps.box is not None
    np.testing.assert_array_equal(w.shapes_layer.features["label"], [0, 1])
    np.testing.assert_allclose(np.asarray(w.shapes_layer.edge_color)[0, :3], [1.0, 0.125, 0.125], atol=0.01)
    seg = w.session.segmenter
    ref = seg.segment(seg.encode(w.source.rgb_slice()), ps, multimask="single")
    np.testing.assert_array_equal(w.preview_mask, ref.masks[0, 0])


def test_sample_data_contribution_through_npe2(qtbot, viewer):
    npe2 = pytest.importorskip("npe2")
    from pathlib import Path

    pm = npe2.PluginManager.instance()
    registered = False
    try:
        pm.get_manifest("segprompt")
    except KeyError:
        pm.register(npe2.PluginManifest.from_file(Path(__file__).resolve().parents[1] / "viewers" / "napari.yaml"))
        registered = True
    try:
        viewer.open_sample("segprompt", "lesion")
        assert [layer.name for layer in viewer.layers] == ["lesion_0_00000", "lesion_0_00000 ground truth"]
        assert viewer.layers[0].rgb and viewer.layers[0].data.shape == (256, 256, 3)
    finally:
        if registered:
            pm.unregister("segprompt")


def test_bundled_sam_tiny_on_the_sample_image(qtbot, viewer, make_widget):
    from scipy import ndimage

    from viewers.models import discover_models
    from viewers.sample_data import synthetic_lesion

    choice = discover_models()[0]
    if not choice.available:
        pytest.skip(f"sam-tiny weights not built: {choice.note}")
    (img, meta, _), (gt, _, _) = synthetic_lesion()
    viewer.add_image(img, **meta)
    w = make_widget(auto_embed=True)
    w.select_model(choice.label)
    with qtbot.waitSignal(w.embedding_ready, timeout=WAIT_MS):  # Load, then the automatic embedding
        w.load_model()
    dist = ndimage.distance_transform_edt(gt)
    r, c = np.unravel_index(int(dist.argmax()), dist.shape)
    w.add_point(c + 0.5, r + 0.5)  # one click in the lesion
    settle(qtbot, w)
    m, g = w.preview_mask, gt.astype(bool)
    assert (m & g).sum() / (m | g).sum() > 0.7
    assert w.commit() == 1 and w.trajectories[0].image_id == "lesion_0_00000"


# --------------------------------------------------------------------------------------------
# segment everything (issue 15): a worker with progress and cancel; the result goes into the
# objects layer as new ids, as one undoable step

EVERYTHING_FAST = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def test_segment_everything_fills_the_objects_layer_as_one_undoable_step(qtbot, viewer, make_widget):
    from segprompt.everything import EverythingSettings, segment_everything

    s = lesion(96)
    viewer.add_image(s.image, name="img", rgb=True)
    w = make_widget()
    seg = create_segmenter("sam-tiny")
    w.set_segmenter(seg, "sam-tiny")
    labels = w.labels_layer
    labels.data[:6, :6] = 1  # an object committed before: it keeps its pixels and its id
    before = labels.data.copy()
    progress = []
    w.everything_panel.progressed.connect(lambda d, t: progress.append((d, t)))
    with qtbot.waitSignal(w.everything_done, timeout=WAIT_MS) as blocker:
        assert w.segment_everything(**EVERYTHING_FAST) is not None
    assert blocker.args == ["ready"]
    qtbot.waitUntil(lambda: not w.busy, timeout=WAIT_MS)

    # independent rule: segment_everything's records painted largest first as ids 1..K, shifted
    # after the committed ids, on the pixels no committed object owns
    records = segment_everything(seg, to_rgb_uint8(s.image), EverythingSettings(**EVERYTHING_FAST))
    masks = [np.asarray(r["segmentation"], bool) for r in records]
    order = sorted((i for i, m in enumerate(masks) if m.any()), key=lambda i: -int(masks[i].sum()))
    assert order, "sam-tiny kept no mask: the test needs at least one instance"
    lm = np.zeros(before.shape, np.int64)
    for k, i in enumerate(order, start=1):
        lm[masks[i]] = k
    expected = before.copy()
    free = (lm > 0) & (before == 0)
    expected[free] = 1 + lm[free]
    np.testing.assert_array_equal(labels.data, expected)
    assert "objects added" in w.status.text()
    # progress reported per batch of points, ending at the total
    assert progress and progress[-1][0] == progress[-1][1] == 36
    assert w.everything_panel.progress.value() == w.everything_panel.progress.maximum()

    # the widget's Undo removes the whole result at once; napari's redo brings it back, and the
    # layer's own undo removes it again (one history item)
    assert w.undo() is True
    np.testing.assert_array_equal(labels.data, before)
    labels.redo()
    np.testing.assert_array_equal(labels.data, expected)
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    assert w.undo() is False  # nothing left to undo on this slice


def test_segment_everything_undo_after_later_edits_and_prompts(qtbot, viewer, make_widget):
    s = lesion(96)
    viewer.add_image(s.image, name="img", rgb=True)
    w = make_widget()
    w.set_segmenter(create_segmenter("sam-tiny"), "sam-tiny")
    with qtbot.waitSignal(w.everything_done, timeout=WAIT_MS):
        w.segment_everything(**EVERYTHING_FAST)
    labels = w.labels_layer
    result = labels.data.copy()
    assert result.max() >= 1
    # a later paint stroke on the layer (its own undo item) and a prompt added afterwards
    labels.data_setitem((np.array([0]), np.array([0])), 77)
    w.add_point(10, 10)
    assert w.undo() is True  # the newest action first: the point
    assert len(w.points_layer.data) == 0 and labels.data.max() >= 1
    assert w.undo() is True  # then the segment-everything result; the painted pixel stays
    expected = np.zeros_like(result)
    expected[0, 0] = 77
    np.testing.assert_array_equal(labels.data, expected)


def test_segment_everything_runs_in_background_reports_progress_and_cancels(qtbot, viewer, make_widget):
    seg = create_segmenter("sam-tiny")
    decoded = []

    def slow(*_):  # a deliberately slow mask decoder: 0.15 s per batch of points
        decoded.append(1)
        time.sleep(0.15)

    seg.model.mask_decoder.register_forward_pre_hook(slow)
    viewer.add_image(lesion(64).image, name="img", rgb=True)
    w = make_widget()
    w.set_segmenter(seg, "slow")
    progress = []
    w.everything_panel.progressed.connect(lambda d, t: progress.append((d, t)))
    panel = w.everything_panel
    t0 = time.perf_counter()
    w.segment_everything(points_per_side=8, points_per_batch=4)  # 64 points: 16 batches
    assert time.perf_counter() - t0 < 0.5  # returns at once
    assert panel.running and panel.cancel_button.isEnabled() and not panel.run_button.isEnabled()
    qtbot.waitUntil(lambda: len(progress) >= 1, timeout=WAIT_MS)
    assert progress[0][1] == 64 and panel.progress.maximum() == 64
    w.toggle_polarity()  # the GUI thread keeps working meanwhile
    assert w.polarity_button.text().startswith("negative")
    with qtbot.waitSignal(w.everything_done, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(panel.cancel_button, __import__("qtpy.QtCore", fromlist=["Qt"]).Qt.LeftButton)
    assert blocker.args == ["cancelled"]
    qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)
    assert len(decoded) < 16, "segment everything decoded every batch despite Cancel"
    assert not w.labels_layer.data.any() and "cancelled" in w.status.text()
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert w.undo() is False


def test_segment_everything_on_a_3d_stack_writes_the_slice_shown(qtbot, viewer, make_widget):
    from segprompt.everything import EverythingSettings, label_map, segment_everything

    seg = create_segmenter("sam-tiny")
    stack = np.stack([lesion(64).image[..., 0].astype(np.uint16) * (k + 1) * 50 for k in range(3)])
    viewer.add_image(stack, name="vol")
    w = make_widget()
    w.set_segmenter(seg, "sam-tiny")
    viewer.dims.set_current_step(0, 2)
    assert w.current_slice() == 2
    with qtbot.waitSignal(w.everything_done, timeout=WAIT_MS) as blocker:
        w.segment_everything(**EVERYTHING_FAST)
    assert blocker.args == ["ready"]
    lm = label_map(segment_everything(seg, to_rgb_uint8(stack[2]), EverythingSettings(**EVERYTHING_FAST)), stack.shape[1:])
    assert lm.max() >= 1
    data = w.labels_layer.data
    np.testing.assert_array_equal(data[2], lm)  # no object before: ids 1..K as label_map's
    assert not data[[0, 1]].any()
    viewer.dims.set_current_step(0, 0)
    assert w.undo() is False  # Undo works on the slice shown: slice 0 has nothing to undo
    viewer.dims.set_current_step(0, 2)
    assert w.undo() is True and not data.any()


def test_segment_everything_panel_starts_at_segment_anythings_defaults(qtbot, viewer, make_widget):
    from dataclasses import asdict

    from segprompt.everything import EverythingSettings

    w = make_widget()
    ref = asdict(EverythingSettings())
    got = asdict(w.everything_panel.settings())
    for key in ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_mask_region_area", "crop_n_layers"):
        assert got[key] == pytest.approx(ref[key]), key
    assert {k: v for k, v in got.items() if v != ref[k]} == {}  # and the rest left at the defaults
    assert (ref["points_per_side"], ref["pred_iou_thresh"], ref["stability_score_thresh"]) == (32, 0.88, 0.95)  # SamAutomaticMaskGenerator's


def test_refine_boxes_wrap_the_learned_model_at_the_next_load(qtbot, viewer, make_widget):
    """The "refine" check boxes (feed back / zoom-in / f-BRS) become create_segmenter's wrappers at
    the next Load, the preview is the wrapped model's decode, and the classical models ignore them."""
    from segprompt.models.brs import FeatureBRSSegmenter
    from segprompt.models.cascade import CascadeSegmenter

    s = lesion()
    viewer.add_image(s.image, name=s.id, rgb=True)
    w = make_widget()
    assert w.refine_options() == {}
    w.refine_boxes["cascade"].setChecked(True)
    w.refine_boxes["brs"].setChecked(True)
    assert w.refine_options() == {"cascade": True, "brs": True}
    w.select_model("sam-tiny (bundled demo)")
    with qtbot.waitSignal(w.model_loaded, timeout=WAIT_MS):
        w.load_model()
    seg = w.session.segmenter
    assert isinstance(seg, CascadeSegmenter) and isinstance(seg.inner, FeatureBRSSegmenter) and seg.name == "sam-tiny"
    from viewers.session import encoder_blocks

    assert len(encoder_blocks(seg)) == 4  # per-block progress and cancel reach the wrapped encoder
    with qtbot.waitSignal(w.embedding_ready, timeout=WAIT_MS):
        w.compute_embedding()
    w.policy_combo.setCurrentText("all")  # sam-tiny's own policy is the single head
    w.add_point(40, 50)
    settle(qtbot, w)
    # the preview lists every candidate, each fed back on its own
    one = PromptSet(points=Points.positive((40, 50)))
    ref = create_segmenter("sam-tiny", cascade=True).predict(s.image, one, multimask="all")
    plain = create_segmenter("sam-tiny").predict(s.image, one, multimask="all")
    assert w.preview.chosen == int(np.argmax(ref.scores[0]))
    np.testing.assert_allclose(w.preview.scores, ref.scores[0], atol=1e-5)
    assert (w.preview_mask != ref.masks[0, w.preview.chosen]).mean() < 1e-3
    assert (ref.masks[0] != plain.masks[0]).any()  # the fed-back pass shows in the preview

    w.select_model("classical (GrabCut)")
    with qtbot.waitSignal(w.model_loaded, timeout=WAIT_MS):
        w.load_model()
    assert type(w.session.segmenter).__name__ == "ClassicalSegmenter"
