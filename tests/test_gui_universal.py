"""The dock widget's text and reference prompts driving the universal decoder (pytest-qt, offscreen).

``universal-tiny`` is pointed at a tiny random universal model (its real weights may not be built):
the tests check the wiring -- the picker offers it with no download, the PromptSet that reaches
``segment`` (a spy), the preview labels layer it fills (shape, dtype, equal to a direct decode
of the same PromptSet), the messages -- not mask quality.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from segprompt.data.io import to_rgb_uint8  # noqa: E402
from segprompt.data.synthetic import SyntheticLesions  # noqa: E402
from segprompt.errors import WeightsError  # noqa: E402
from segprompt.models import create_segmenter  # noqa: E402
from segprompt.prompts import Box, Points, PromptSet, Reference, Text  # noqa: E402

pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"),
]

WAIT_MS = 20000
WORDS = ("disc", "star")
LABEL = "universal-tiny (bundled demo)"


@pytest.fixture(scope="module")
def universal_file(tmp_path_factory):
    from segprompt.universal.checkpoint import save_universal
    from segprompt.universal.config import UniversalConfig
    from segprompt.universal.model import UniversalModel

    torch.manual_seed(0)
    cfg = UniversalConfig(
        backbone="sam-tiny", backbone_kwargs={"out_channels": 32}, words=WORDS, hidden_dim=32, mask_dim=32,
        embed_dim=16, num_queries=4, dec_layers=3, dim_feedforward=64,
    )
    return save_universal(UniversalModel(cfg), tmp_path_factory.mktemp("universal") / "u.safetensors")


@pytest.fixture
def tiny(universal_file, monkeypatch):
    """universal-tiny = the random model, for this test."""
    monkeypatch.setattr("segprompt.models.universal.universal_tiny_path", lambda: universal_file)
    return universal_file


@pytest.fixture(scope="module")
def seg(universal_file):
    from segprompt.models.universal import UniversalTinySegmenter

    return UniversalTinySegmenter(checkpoint=universal_file)


# the viewer and make_widget fixtures: tests/conftest.py


@pytest.fixture
def spy(seg, monkeypatch):
    """Every (state, prompt sets, multimask) the widget sends to ``seg.segment``."""
    class Calls(list):
        pass

    calls = Calls()
    orig = seg.segment

    def segment(state, prompts, **kw):
        calls.append((state, list(prompts) if isinstance(prompts, (list, tuple)) else [prompts], kw.get("multimask")))
        return orig(state, prompts, **kw)

    monkeypatch.setattr(seg, "segment", segment)
    calls.orig = orig  # type: ignore[attr-defined]
    return calls


def image(seed=3, size=64):
    return SyntheticLesions(n=1, seed=seed, size=size, style="endoscopy")[0].image


def settle(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy and not w._debounce.isActive() and not w._soon.isActive(), timeout=WAIT_MS)


def ready(qtbot, w, seg, label="universal-tiny"):
    w.set_segmenter(seg, label)
    with qtbot.waitSignal(w.embedding_ready, timeout=WAIT_MS):
        w.compute_embedding()


def direct(spy, ps):
    """The mask of ``ps`` decoded directly from the state the widget used (single output)."""
    state = spy[-1][0]
    return spy.orig(state, [ps], multimask="single").masks[0, 0]


def check_preview(w, spy, ps, size):
    layer = w.preview_layer
    assert layer.data.shape == size and layer.data.dtype == np.uint8
    np.testing.assert_array_equal(layer.data.astype(bool), direct(spy, ps))
    np.testing.assert_array_equal(w.preview_mask, direct(spy, ps))


def same_prompts(a: PromptSet, b: PromptSet) -> None:
    """Field by field (PromptSet's arrays do not compare with ==)."""
    assert a.kinds == b.kinds
    if b.points is not None:
        np.testing.assert_allclose(a.points.coords, b.points.coords)
        np.testing.assert_array_equal(a.points.labels, b.points.labels)
    if b.box is not None:
        np.testing.assert_allclose(a.box.xyxy, b.box.xyxy)
    if b.text is not None:
        assert a.text.text == b.text.text
    if b.reference is not None:
        np.testing.assert_array_equal(a.reference.image, b.reference.image)
        np.testing.assert_array_equal(a.reference.mask, b.reference.mask)


# --------------------------------------------------------------------------------------------


def test_picker_offers_universal_tiny_without_download_and_loads_it(qtbot, tiny, viewer, make_widget, monkeypatch):
    from viewers.models import discover_models

    viewer.add_image(image(), name="img", rgb=True)
    w = make_widget()
    labels = [c.label for c in w.model_choices]
    assert LABEL in labels
    choice = w.model_choices[labels.index(LABEL)]
    assert choice.available and choice.name == "universal-tiny" and "text" in choice.accepts and "reference" in choice.accepts
    assert "universal" not in labels  # the bare 'universal' needs a checkpoint: not a picker entry
    w.select_model(LABEL)
    with qtbot.waitSignal(w.model_loaded, timeout=WAIT_MS):
        w.load_model()
    assert w.session.segmenter.name == "universal-tiny" and w.session.segmenter.checkpoint == str(tiny)
    # its prompt kinds are what the picker announced before loading
    assert frozenset(w.session.segmenter.accepts) == choice.accepts
    assert w.text_row.isEnabled() and w.reference_row.isEnabled()
    assert "disc, star" in w.text_edit.toolTip()
    completer = w.text_edit.completer()
    assert completer.model().stringList() == list(WORDS)

    # weights missing: listed, not available, saying why
    def missing():
        raise WeightsError("missing")

    monkeypatch.setattr("segprompt.models.universal.universal_tiny_path", missing)
    (c,) = [c for c in discover_models() if c.label == LABEL]
    assert not c.available and "universal_tiny.safetensors" in c.note


def test_text_word_and_enter_segment_into_the_preview_labels_layer(qtbot, seg, spy, viewer, make_widget):
    from qtpy.QtCore import Qt

    img = image()
    viewer.add_image(img, name="img", rgb=True)
    w = make_widget()
    w.live_preview.setChecked(False)  # only Enter / Segment decode
    ready(qtbot, w, seg)
    w.text_edit.setText("star")
    settle(qtbot, w)
    assert spy == [] and w.preview is None
    qtbot.keyClick(w.text_edit, Qt.Key_Return)  # Enter segments
    qtbot.waitUntil(lambda: w.preview is not None and not w.busy, timeout=WAIT_MS)
    (_, (ps,), _) = spy[-1]
    same_prompts(ps, PromptSet(text=Text("star")))
    check_preview(w, spy, PromptSet(text=Text("star")), img.shape[:2])
    assert w.status.text().startswith("preview:")
    # another word, the Segment button: the same layer is updated
    n = len(spy)
    w.text_edit.setText("the disc")
    qtbot.mouseClick(w.segment_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(spy) > n and not w.busy, timeout=WAIT_MS)
    assert spy[-1][1][0].text.text == "the disc"
    check_preview(w, spy, PromptSet(text=Text("the disc")), img.shape[:2])
    assert [l.name for l in viewer.layers].count("segprompt preview") == 1
    # committed like a click: the objects layer gets id 1 where the preview was
    expected = w.preview_mask.copy()
    if expected.any():
        assert w.commit() == 1
        np.testing.assert_array_equal(w.labels_layer.data == 1, expected)


def test_unknown_word_shows_the_models_message_not_a_traceback(qtbot, seg, spy, viewer, make_widget, capfd):
    from qtpy.QtCore import Qt

    viewer.add_image(image(), name="img", rgb=True)
    w = make_widget()  # live preview on
    ready(qtbot, w, seg)
    for k in range(1, 4):  # "s", "st", "sta": no known word yet, not decoded while typing
        w.text_edit.setText("star"[:k])
        settle(qtbot, w)
    assert spy == [] and "no word" in w.status.text() and "disc, star" in w.status.text()
    w.text_edit.setText("star")  # a known word: decoded live
    qtbot.waitUntil(lambda: len(spy) == 1 and not w.busy and w.preview is not None, timeout=WAIT_MS)
    w.text_edit.setText("polyp")
    settle(qtbot, w)
    assert len(spy) == 1
    qtbot.keyClick(w.text_edit, Qt.Key_Return)  # Enter decodes anyway: the model says why not
    qtbot.waitUntil(lambda: w.status.text().startswith("error:"), timeout=WAIT_MS)
    settle(qtbot, w)
    expected = "text prompt 'polyp' has no word this model knows; it knows: " + ", ".join(WORDS)
    assert w.status.text() == f"error: {expected}"
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    # Commit does not commit the old 'star' preview for the 'polyp' text
    assert w.commit() is None and w.status.text() == f"error: {expected}"


def test_reference_image_and_mask_segment_the_current_image(qtbot, seg, spy, viewer, make_widget):
    example, target = image(seed=5), image(seed=8)
    mask = np.zeros(example.shape[:2], np.int32)
    mask[20:40, 15:35] = 2
    viewer.add_image(example, name="example", rgb=True)
    viewer.add_labels(mask, name="example mask")
    viewer.add_labels(np.zeros((10, 10), np.int32), name="other size")
    viewer.add_image(target, name="target", rgb=True)
    w = make_widget()
    assert w.source.name == "target"
    ready(qtbot, w, seg)
    assert w.ref_mask_combo.currentText() == ""
    w.ref_image_combo.setCurrentIndex(w.ref_image_combo.findText("example"))
    assert w.ref_mask_combo.currentText() == "example mask"  # picked: the labels layer of its size
    qtbot.waitUntil(lambda: len(spy) == 1 and not w.busy and w.preview is not None, timeout=WAIT_MS)
    expected = PromptSet(reference=Reference(example, mask > 0))  # example is uint8 RGB already
    same_prompts(spy[-1][1][0], expected)
    check_preview(w, spy, expected, target.shape[:2])
    assert spy[-1][0].original_size == target.shape[:2]  # the current image, not the example


def test_empty_or_mismatched_reference_mask_says_so(qtbot, seg, spy, viewer, make_widget):
    viewer.add_image(image(seed=5), name="example", rgb=True)
    viewer.add_labels(np.zeros((64, 64), np.int32), name="example mask")
    viewer.add_labels(np.ones((32, 32), np.int32), name="small")
    viewer.add_image(image(seed=8), name="target", rgb=True)
    w = make_widget()
    ready(qtbot, w, seg)
    w.ref_image_combo.setCurrentIndex(w.ref_image_combo.findText("example"))
    settle(qtbot, w)
    assert "reference mask 'example mask' is empty" in w.status.text()
    w.segment_now()  # pressing Segment says it again, and nothing is decoded
    settle(qtbot, w)
    assert "is empty" in w.status.text() and spy == [] and w.preview is None
    w.ref_mask_combo.setCurrentIndex(w.ref_mask_combo.findText("small"))
    settle(qtbot, w)
    assert "'small' is 32x32 but image 'example' is 64x64" in w.status.text() and spy == []
    # with a click as well, the click is decoded and the preview's status names the problem
    w.add_point(30, 30)
    qtbot.waitUntil(lambda: len(spy) == 1 and not w.busy and w.preview is not None, timeout=WAIT_MS)
    assert spy[-1][1][0].reference is None and "32x32" in w.status.text()


def test_text_and_reference_combine_with_the_clicks_and_box(qtbot, seg, spy, viewer, make_widget):
    example, target = image(seed=5), image(seed=8)
    mask = np.zeros(example.shape[:2], np.int32)
    mask[10:30, 10:50] = 1
    viewer.add_image(example, name="example", rgb=True)
    viewer.add_labels(mask, name="example mask")
    viewer.add_image(target, name="target", rgb=True)
    w = make_widget()
    w.live_preview.setChecked(False)
    ready(qtbot, w, seg)
    w.add_point(30, 20)
    w.toggle_polarity()
    w.add_point(5, 50)
    w.toggle_polarity()
    w.add_box(10, 8, 50, 40)
    w.text_edit.setText("disc")
    w.ref_image_combo.setCurrentIndex(w.ref_image_combo.findText("example"))
    w.segment_now()
    qtbot.waitUntil(lambda: len(spy) == 1 and not w.busy and w.preview is not None, timeout=WAIT_MS)
    expected = PromptSet(
        points=Points(np.array([[30, 20], [5, 50]], np.float32), np.array([1, 0])),
        box=Box([10, 8, 50, 40]),
        text=Text("disc"),
        reference=Reference(example, mask > 0),
    )
    (_, (ps,), _) = spy[-1]
    same_prompts(ps, expected)
    check_preview(w, spy, expected, target.shape[:2])


def test_fields_disabled_with_a_tooltip_for_models_without_text_or_reference(qtbot, tiny, seg, viewer, make_widget):
    viewer.add_image(image(), name="img", rgb=True)
    w = make_widget()
    # no model yet: disabled, the tooltip names the picker's entries that take them
    assert not w.text_row.isEnabled() and not w.reference_row.isEnabled()
    assert not w.text_row.isHidden() and not w.reference_row.isHidden()
    assert LABEL in w.text_edit.toolTip() and LABEL in w.ref_image_combo.toolTip()
    w.set_segmenter(create_segmenter("sam-tiny"), "sam-tiny (bundled demo)")
    assert not w.text_edit.isEnabled() and not w.ref_mask_combo.isEnabled()
    tip = w.text_edit.toolTip()
    assert tip.startswith("sam-tiny (bundled demo) takes no text prompts") and LABEL in tip
    assert "takes no reference prompts" in w.reference_row.toolTip() and LABEL in w.reference_row.toolTip()
    w.text_edit.setText("star")
    assert w.prompt_set().text is None
    w.set_segmenter(seg, "universal-tiny")
    assert w.text_edit.isEnabled() and w.reference_row.isEnabled() and w.prompt_set().text.text == "star"


def test_open_checkpoint_takes_a_universal_file(qtbot, universal_file, viewer, make_widget, tmp_path):
    from segprompt.models.sam_arch import save_sam, tiny_arch
    from viewers.models import checkpoint_choice, is_universal_checkpoint

    sam = save_sam(tiny_arch().build(), tmp_path / "sam.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 4)
    assert is_universal_checkpoint(universal_file)
    assert not is_universal_checkpoint(sam) and not is_universal_checkpoint(tmp_path / "junk.safetensors")
    assert checkpoint_choice(sam).label == "SAM: sam.safetensors"
    w = make_widget()
    choice = w.add_checkpoint(universal_file)
    assert choice.label == "universal: u.safetensors" and "text" in choice.accepts
    with qtbot.waitSignal(w.model_loaded, timeout=WAIT_MS):
        w.load_model()
    assert w.session.segmenter.name == "universal" and w.text_row.isEnabled()


def test_reference_from_3d_stacks_uses_the_slice_shown(qtbot, viewer, make_widget):
    stack = np.stack([np.full((32, 40), 10 * (k + 1), np.uint16) for k in range(4)])
    stack[:, :, :20] = 0
    masks = np.zeros((4, 32, 40), np.int32)
    masks[2, 5:15, 5:15] = 1
    viewer.add_image(stack, name="vol")
    viewer.add_labels(masks, name="vol mask")
    w = make_widget()
    w.ref_image_combo.setCurrentIndex(w.ref_image_combo.findText("vol"))
    w.ref_mask_combo.setCurrentIndex(w.ref_mask_combo.findText("vol mask"))
    viewer.dims.set_current_step(0, 2)
    ref = w.universal.reference()
    np.testing.assert_array_equal(ref.mask, masks[2] > 0)
    np.testing.assert_array_equal(ref.image, to_rgb_uint8(stack[2]))  # the widget's default normalisation
    viewer.dims.set_current_step(0, 1)
    assert w.universal.reference() is None and "is empty" in w.universal.notes()[0]
    viewer.layers.remove("vol mask")  # the picker forgets it; the note says what is missing
    assert w.ref_mask_combo.currentText() == "" and w.universal.reference() is None
    assert w.universal.notes() == ["reference: pick a labels layer marking the object in 'vol' too"]
