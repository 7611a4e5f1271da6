"""The dock widget: pick a model, embed in the background, click prompts, preview, commit, record.

Layout (top to bottom): model (picker, Load, Open checkpoint..., device, disk cache), image
(layer, intensity normalisation, Compute embedding, progress bar, Cancel), prompts (polarity,
text field and reference pickers, enabled for the models that take them: :mod:`viewers.universal_panel`;
live preview, candidate policy,
Segment / Commit / Undo / Clear), candidates (scores; click one to pick it), segment everything
(:class:`viewers.everything_panel.EverythingPanel`: settings, run, Cancel, progress; the result
goes into the objects layer as new ids, one undoable step), volume propagation on 3-D stacks
(:class:`viewers.propagate_panel.PropagatePanel`: direction forward / backward / both, Propagate,
Cancel, progress; the current object's prompts on any slices are propagated through the stack in
a worker, by the model's own propagation (SAM 2) or the slice-by-slice fallback, and committed as
one new 3-D object), recording (annotator, dataset, steps count, Export...).

Threads: loading a model, computing an embedding and decoding a preview run in worker threads
(superqt ``create_worker``, the engine of ``napari.qt.threading``), so the viewer never
freezes; a SAM encode reports progress per transformer block and stops at the next block when
Cancel is pressed. Every prompt change is decoded from the cached embedding only (never
re-encoded): a click at once, continuous edits (dragging a point, typing text) after
``debounce_ms`` of quiet; at most one decode runs, and a change made meanwhile is decoded right
after it (the latest state wins).

Layers made by the widget: ``segprompt points`` (positive green / negative red; the ``label``
feature, 1 / 0), ``segprompt shapes`` (rectangles = box, paths and lines = scribbles, polygons
and ellipses = mask prompt), ``segprompt preview`` (the current object) and ``<image> objects``
(committed objects, one id each). Keys: S segment now, C commit, T toggle positive/negative,
Shift+C clear; bound on the viewer and on the plugin's layers (and the image being segmented)
so that they win over napari's layer shortcuts for the same letters.

The widget takes a ``napari.components.ViewerModel`` or a ``napari.Viewer``; everything it
needs (layers, dims, key bindings) is on the model, so it is tested without an OpenGL canvas.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from segprompt.errors import ConfigError, SegpromptError
from segprompt.prompts import PromptSet, Reference

from viewers.coords import slice_of, xy_to_rc
from viewers.models import ModelChoice, avoid_llvm_clash, checkpoint_choice, discover_models
from viewers.session import (
    CANDIDATE_POLICIES,
    EncodeCancelled,
    ImageSource,
    Preview,
    SegmentationSession,
    ShapeItem,
    build_prompt_set,
    commit_mask,
)

log = logging.getLogger(__name__)

POSITIVE_COLOR = "#00d000"
NEGATIVE_COLOR = "#ff2020"
PREVIEW_COLOR = "#00e5ff"
NORMALISATIONS = {
    "percentile (0.5-99.5)": ("percentile", False),
    "min-max": ("minmax", False),
    "layer contrast limits": ("window", True),
}
#: the learned models' inference options offered as check boxes: (create_segmenter kwarg, label, tooltip, value)
REFINE_OPTIONS = (
    ("cascade", "feed back", "Decode the first click again with its own mask as the mask prompt (SAM's and PerSAM's refinement pass, segprompt.models.cascade)", True),
    ("zoom_in", "zoom-in", "Decode 2+ clicks again on a crop around the object (RITM's zoom-in, segprompt.models.zoom_in)", True),
    ("brs", "f-BRS", "Refine 3+ clicks until the mask agrees with them (f-BRS, segprompt.models.brs; SAM and universal models)", True),
)
KEYS = {"S": "segment_now", "C": "commit", "T": "toggle_polarity", "Shift-C": "clear"}


class _Bridge(QObject):
    """Signals emitted from worker threads, delivered in the GUI thread (queued)."""

    progress = Signal(int, int)


def _action(event: Any) -> str:
    action = getattr(event, "action", None)
    return "" if action is None else str(getattr(action, "value", action)).lower()


class SegpromptWidget(QWidget):
    """The segprompt dock widget (npe2 widget contribution).

    Args:
        napari_viewer: the viewer (injected by napari), or a ``ViewerModel``.
        debounce_ms: delay between a continuous prompt change (a point or shape moved, text typed)
            and its preview decode; a click (a prompt added or removed) is decoded at once.
        lru_size: slice embeddings kept in memory.
        checkpoints_folder: where to look for SAM checkpoints (default: the weights cache).
        auto_embed: compute the embedding as soon as a model and an image are chosen.
    """

    model_loaded = Signal(str)
    embedding_ready = Signal(int)
    embedding_done = Signal(str)  # "ready", "cancelled" or "failed"
    preview_updated = Signal()
    committed = Signal(int)
    status_changed = Signal(str)
    everything_done = Signal(str)  # "ready", "cancelled" or "failed"
    propagate_done = Signal(str)  # "ready", "cancelled" or "failed"

    def __init__(
        self,
        napari_viewer: Any,
        *,
        debounce_ms: int = 40,
        lru_size: int = 16,
        checkpoints_folder: str | Path | None = None,
        auto_embed: bool = True,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        # napari hands npe2 widgets a PublicOnlyProxy of the viewer; every layer read through it
        # would be a fresh proxy object, which breaks identity checks on layers. The widget uses
        # only public API, so it works on the viewer itself.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        avoid_llvm_clash()  # before anything imports torch in a window that already draws
        self.session = SegmentationSession(lru_size=lru_size)
        self.source: ImageSource | None = None
        self.image_layer: Any = None
        self.points_layer: Any = None
        self.shapes_layer: Any = None
        self.preview_layer: Any = None
        self.labels_layer: Any = None
        self.preview: Preview | None = None
        self.positive = True
        self._sources: dict[tuple[int, str], ImageSource] = {}
        self._z = 0
        self._epoch = 0  # bumped when the current object ends (commit, clear, image or model change)
        self._generation = 0  # bumped on every prompt change
        self._shown_generation = -1
        self._t_prompt = time.monotonic()
        self._history: list[tuple[str, int]] = []  # (layer kind, slice) of every added prompt
        self._mute = 0
        self._bound: list[Any] = []
        self._encode_job: dict[str, Any] | None = None
        self._encode_next: int | None = None
        self._preview_after_encode = False
        self._decode_worker: Any = None
        self._decode_pending = False
        self._load_worker: Any = None
        self._closed = False
        self.encode_seconds: float | None = None
        self._notes: list[str] = []
        self._bridge = _Bridge(self)
        self._bridge.progress.connect(self._on_progress)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(int(debounce_ms))
        self._debounce.timeout.connect(self._request_preview)
        self._soon = QTimer(self)  # clicks: decode right after napari's add/remove returns
        self._soon.setSingleShot(True)
        self._soon.setInterval(0)
        self._soon.timeout.connect(self._request_preview)
        self._checkpoints_folder = checkpoints_folder
        self._build_ui(auto_embed)
        self.refresh_models()
        self._refresh_image_list()
        self._bind_keys(self.viewer)
        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh_image_list)
        layers.events.removed.connect(self._refresh_image_list)
        self.viewer.dims.events.current_step.connect(self._on_slice_change)

    # ======================================================================================
    # UI

    def _build_ui(self, auto_embed: bool) -> None:
        """The dock's boxes top to bottom (model, image, prompts, segment everything, propagation,
        recording, status), then their signals."""
        root = QVBoxLayout(self)
        root.addWidget(self._build_model_box())
        root.addWidget(self._build_image_box(auto_embed))
        root.addWidget(self._build_prompt_box())
        from viewers.everything_panel import EverythingPanel

        self.everything_panel = EverythingPanel(self)
        self.everything_panel.done.connect(self.everything_done.emit)
        root.addWidget(self.everything_panel)

        from viewers.propagate_panel import PropagatePanel

        self.propagate_panel = PropagatePanel(self)
        self.propagate_panel.done.connect(self.propagate_done.emit)
        root.addWidget(self.propagate_panel)

        root.addWidget(self._build_recording_box())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch(1)
        self._connect_ui()
        self._update_polarity_ui()
        self._update_model_ui()

    def _build_model_box(self) -> QGroupBox:
        """The picker, Load / Open, device, disk cache and the refine options."""
        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.model_combo = QComboBox()
        self.model_combo.setObjectName("model_combo")
        self.load_button = QPushButton("Load")
        self.open_button = QPushButton("Open checkpoint...")
        self.open_button.setToolTip(
            "A SAM or SAM 2 checkpoint file (official or finetuned, MedSAM2; .pt, .pth or .safetensors; the architecture is read from it) or a universal .safetensors"
        )
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.load_button)
        form.addRow(row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(self._devices())
        self.disk_cache = QCheckBox("disk cache")
        self.disk_cache.setToolTip("Keep embeddings on disk too (segprompt's signed embedding cache, $SEGPROMPT_HOME/embeddings); applies at the next Load")
        row = QHBoxLayout()
        row.addWidget(self.open_button)
        row.addWidget(QLabel("device"))
        row.addWidget(self.device_combo)
        row.addWidget(self.disk_cache)
        form.addRow(row)
        # the learned models' inference options (segprompt.models.registry.WRAPPERS), applied at the next Load
        self.refine_boxes = {}
        row = QHBoxLayout()
        for option, label, tip, _ in REFINE_OPTIONS:
            box_ = QCheckBox(label)
            box_.setObjectName(f"refine_{option}")
            box_.setToolTip(tip + "; applies at the next Load")
            self.refine_boxes[option] = box_
            row.addWidget(box_)
        row.addStretch(1)
        form.addRow("refine", row)
        self.model_label = QLabel("no model loaded")
        self.model_label.setWordWrap(True)
        form.addRow(self.model_label)

        return box

    def _build_image_box(self, auto_embed: bool) -> QGroupBox:
        """The image layer, its intensity mapping, the embedding buttons and progress."""
        box = QGroupBox("Image")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.norm_combo = QComboBox()
        self.norm_combo.addItems(list(NORMALISATIONS))
        self.norm_combo.setToolTip("How non-uint8 images (16-bit, float, CT) become 8-bit RGB for the model")
        form.addRow("layer", self.image_combo)
        form.addRow("intensity", self.norm_combo)
        self.embed_button = QPushButton("Compute embedding")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.auto_embed = QCheckBox("auto")
        self.auto_embed.setChecked(auto_embed)
        self.auto_embed.setToolTip("Compute the embedding of the current slice as soon as it is needed")
        row = QHBoxLayout()
        row.addWidget(self.embed_button, 1)
        row.addWidget(self.cancel_button)
        row.addWidget(self.auto_embed)
        form.addRow(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        form.addRow(self.progress)

        return box

    def _build_prompt_box(self) -> QGroupBox:
        """Polarity, live preview, text and reference fields, candidate policy, actions and the candidates."""
        box = QGroupBox("Prompts")
        form = QFormLayout(box)
        self.polarity_button = QPushButton()
        self.polarity_button.setCheckable(True)
        self.live_preview = QCheckBox("live preview")
        self.live_preview.setChecked(True)
        row = QHBoxLayout()
        row.addWidget(self.polarity_button, 1)
        row.addWidget(self.live_preview)
        form.addRow(row)
        self.text_row = QWidget()
        lay = QHBoxLayout(self.text_row)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel("text"))
        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("what to segment, e.g. polyp")
        lay.addWidget(self.text_edit, 1)
        form.addRow(self.text_row)
        self.reference_row = QWidget()
        lay = QFormLayout(self.reference_row)
        lay.setContentsMargins(0, 0, 0, 0)
        self.ref_image_combo = QComboBox()
        self.ref_mask_combo = QComboBox()
        lay.addRow("reference image", self.ref_image_combo)
        lay.addRow("reference mask", self.ref_mask_combo)
        form.addRow(self.reference_row)
        from viewers.universal_panel import UniversalPrompts

        self.universal = UniversalPrompts(self)  # drives the text field and the reference pickers
        self.policy_combo = QComboBox()
        self.policy_combo.addItems(list(CANDIDATE_POLICIES))
        self.policy_combo.setToolTip("auto: 3 candidates for a single click (ambiguous), one otherwise (SAM's advice); a model whose own policy is the single head (sam-tiny) keeps it. all: always the candidates")
        form.addRow("candidates", self.policy_combo)
        self.segment_button = QPushButton("Segment (S)")
        self.commit_button = QPushButton("Commit (C)")
        self.undo_button = QPushButton("Undo")
        self.clear_button = QPushButton("Clear (Shift+C)")
        row = QHBoxLayout()
        for b in (self.segment_button, self.commit_button, self.undo_button, self.clear_button):
            row.addWidget(b)
        form.addRow(row)
        self.candidate_list = QListWidget()
        self.candidate_list.setMaximumHeight(80)
        form.addRow(self.candidate_list)

        return box

    def _build_recording_box(self) -> QGroupBox:
        """Annotator and dataset of the recorded trajectories, and their export."""
        box = QGroupBox("Recording")
        form = QFormLayout(box)
        self.annotator_edit = QLineEdit()
        self.dataset_edit = QLineEdit()
        form.addRow("annotator", self.annotator_edit)
        form.addRow("dataset", self.dataset_edit)
        self.record_label = QLabel("0 objects recorded")
        self.export_button = QPushButton("Export trajectories...")
        row = QHBoxLayout()
        row.addWidget(self.record_label, 1)
        row.addWidget(self.export_button)
        form.addRow(row)

        return box

    def _connect_ui(self) -> None:
        """The widgets' signals to the widget's methods."""
        self.load_button.clicked.connect(lambda: self.load_model())
        self.open_button.clicked.connect(self._open_checkpoint_dialog)
        self.image_combo.currentIndexChanged.connect(self._on_image_combo)
        self.norm_combo.currentIndexChanged.connect(lambda _: self._reselect_image())
        self.embed_button.clicked.connect(lambda: self.compute_embedding())
        self.cancel_button.clicked.connect(self.cancel_embedding)
        self.polarity_button.clicked.connect(lambda _: self.toggle_polarity())
        self.segment_button.clicked.connect(self.segment_now)
        self.commit_button.clicked.connect(lambda: self.commit())
        self.undo_button.clicked.connect(self.undo)
        self.clear_button.clicked.connect(self.clear)
        self.candidate_list.currentRowChanged.connect(self._on_candidate_row)
        self.policy_combo.currentIndexChanged.connect(lambda _: self._prompt_changed())
        self.annotator_edit.textChanged.connect(self._on_info)
        self.dataset_edit.textChanged.connect(self._on_info)
        self.export_button.clicked.connect(lambda: self.export_trajectories())

    @staticmethod
    def _devices() -> list[str]:
        out = ["cpu"]
        try:
            import torch

            if torch.cuda.is_available():
                out.insert(0, "cuda")
        except Exception:  # noqa: BLE001
            pass
        return out

    def set_status(self, text: str) -> None:
        self.status.setText(text)
        log.info("segprompt: %s", text)
        self.status_changed.emit(text)

    def _error(self, exc: BaseException) -> None:
        msg = str(exc) if isinstance(exc, SegpromptError) else f"{type(exc).__name__}: {exc}"
        self.set_status(f"error: {msg}")

    # ======================================================================================
    # models

    def refresh_models(self) -> None:
        """Re-scan the model choices (built-ins, registered universal models, weights cache)."""
        current = self.model_combo.currentText()
        self._choices: list[ModelChoice] = list(getattr(self, "_extra_choices", []))
        self._choices = discover_models(self._checkpoints_folder) + self._choices
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for c in self._choices:
            self.model_combo.addItem(c.label)
            idx = self.model_combo.count() - 1
            if c.note:
                self.model_combo.setItemData(idx, c.note, Qt.ToolTipRole)
        first_ok = next((i for i, c in enumerate(self._choices) if c.available), 0)
        i = self.model_combo.findText(current)
        self.model_combo.setCurrentIndex(i if i >= 0 else first_ok)
        self.model_combo.blockSignals(False)
        self.universal.update_for_model()  # the tooltips name the listed models that take text / references

    @property
    def model_choices(self) -> list[ModelChoice]:
        return list(self._choices)

    def add_model_choice(self, choice: ModelChoice, select: bool = True) -> ModelChoice:
        """Add an entry to the picker (kept across :meth:`refresh_models`)."""
        self._extra_choices = [c for c in getattr(self, "_extra_choices", []) if c.label != choice.label] + [choice]
        self.refresh_models()
        if select:
            self.model_combo.setCurrentIndex(self.model_combo.findText(choice.label))
        return choice

    def add_checkpoint(self, path: str | Path, select: bool = True) -> ModelChoice:
        """Offer a checkpoint file (what ``Open checkpoint...`` does after the dialog): SAM, SAM 2
        or universal, recognised from the file (:func:`viewers.models.checkpoint_kind`)."""
        return self.add_model_choice(checkpoint_choice(path), select=select)

    def _open_checkpoint_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "SAM / SAM 2 checkpoint", "", "Checkpoints (*.pth *.pt *.bin *.safetensors);;All files (*)")
        if path:
            self.add_checkpoint(path)
            self.load_model()

    def select_model(self, label: str) -> None:
        i = self.model_combo.findText(label)
        if i < 0:
            raise ConfigError(f"no model {label!r} in the list; choices: {[c.label for c in self._choices]}")
        self.model_combo.setCurrentIndex(i)

    def load_model(self, choice: ModelChoice | None = None) -> Any:
        """Load the selected model (or ``choice``) in a worker thread; returns the worker."""
        if choice is None:
            i = self.model_combo.currentIndex()
            if i < 0 or i >= len(self._choices):
                self.set_status("no model selected")
                return None
            choice = self._choices[i]
        if not choice.available:
            self.set_status(f"{choice.label}: {choice.note or 'not available'}")
            return None
        from superqt.utils import create_worker

        device = self.device_combo.currentText() or "cpu"
        cache = None
        if self.disk_cache.isChecked():
            from segprompt.weights import home

            cache = home() / "embeddings"
        self.set_status(f"loading {choice.label} ...")
        self.load_button.setEnabled(False)
        self._busy_progress(True)

        def done(seg: Any) -> None:
            self.set_segmenter(seg, choice.label)

        def failed(exc: BaseException) -> None:
            self._error(exc)

        def finished() -> None:
            self._load_worker = None
            self.load_button.setEnabled(True)
            self._busy_progress(False)

        wrappers = self.refine_options()
        worker = create_worker(choice.load, device=device, cache=cache, wrappers=wrappers, _start_thread=False, _connect={"returned": done, "errored": failed, "finished": finished})
        self._load_worker = worker
        worker.start()
        return worker

    def refine_options(self) -> dict[str, Any]:
        """The ticked inference options as ``create_segmenter`` kwargs (``{"cascade": {...}, ...}``)."""
        return {option: value for option, _, _, value in REFINE_OPTIONS if self.refine_boxes[option].isChecked()}

    def set_segmenter(self, segmenter: Any, label: str = "") -> None:
        """Use ``segmenter`` from now on (synchronous; what a finished Load does)."""
        self.cancel_embedding()
        self.session.set_segmenter(segmenter, label)
        self._end_object()
        self._update_model_ui()
        self.set_status(f"model: {self.session.model_label}")
        self.model_loaded.emit(self.session.model_label)
        if self.auto_embed.isChecked() and self.source is not None:
            self.compute_embedding()

    def _update_model_ui(self) -> None:
        seg = self.session.segmenter
        accepts = self.session.accepts
        self.universal.update_for_model()
        self.policy_combo.setEnabled(bool(seg is not None and seg.has_multimask))
        if seg is None:
            self.model_label.setText("no model loaded")
        else:
            kinds = ", ".join(sorted(accepts))
            self.model_label.setText(f"{self.session.model_label} - takes {kinds}")
        if "reference" in accepts:
            self._refresh_reference_lists()
        self.propagate_panel.update_state()

    # ======================================================================================
    # images and layers

    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        mine = {id(self.preview_layer)}
        return [l for l in self.viewer.layers if isinstance(l, Image) and id(l) not in mine]

    def _refresh_image_list(self, *_: Any) -> None:
        if self._closed:
            return
        layers = self._image_layers()
        names = [l.name for l in layers]
        current = self.image_layer.name if self.image_layer is not None and self.image_layer in layers else None
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current is not None:
            self.image_combo.setCurrentIndex(names.index(current))
        self.image_combo.blockSignals(False)
        if self.image_layer is not None and self.image_layer not in layers:
            self.image_layer = None
            self.source = None
            self.session.set_source(None)
        if self.image_layer is None and layers:
            self.set_image_layer(layers[-1] if current is None else layers[names.index(current)])
        self._refresh_reference_lists()

    def _refresh_reference_lists(self) -> None:
        from napari.layers import Labels

        for combo, kind in ((self.ref_image_combo, None), (self.ref_mask_combo, Labels)):
            cur = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItem("")
            if kind is None:
                names = [l.name for l in self._image_layers()]
            else:
                names = [l.name for l in self.viewer.layers if isinstance(l, Labels) and l is not self.preview_layer]
            combo.addItems(names)
            i = combo.findText(cur)
            combo.setCurrentIndex(max(i, 0))
            combo.blockSignals(False)

    def _on_image_combo(self, index: int) -> None:
        layers = self._image_layers()
        if 0 <= index < len(layers):
            self.set_image_layer(layers[index])

    def _reselect_image(self) -> None:
        if self.image_layer is not None:
            self.set_image_layer(self.image_layer, force=True)

    def set_image_layer(self, layer: Any, force: bool = False) -> None:
        """Segment ``layer`` (a napari Image layer): 2-D grey/RGB of any dtype or a 3-D stack."""
        if layer is self.image_layer and not force:
            return
        norm_label = self.norm_combo.currentText()
        norm, from_layer = NORMALISATIONS[norm_label]
        window = tuple(layer.contrast_limits) if from_layer else None
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        key = (id(layer), f"{norm_label}|{window}")
        try:
            source = self._sources.get(key)
            if source is None or source.data is not data:
                source = ImageSource(data, rgb=bool(getattr(layer, "rgb", False)), name=layer.name, normalisation=norm, window=window)
                self._sources[key] = source
        except SegpromptError as exc:
            self._error(exc)
            return
        self.cancel_embedding()
        if self.image_layer is not None and self.image_layer is not layer:
            self._unbind_keys(self.image_layer)
        self.image_layer = layer
        self.source = source
        self.session.set_source(source)
        self._bind_keys(layer)
        self._end_object()
        self._ensure_layers()
        self._z = self.current_slice()
        i = self.image_combo.findText(layer.name)
        if i >= 0 and i != self.image_combo.currentIndex():
            self.image_combo.blockSignals(True)
            self.image_combo.setCurrentIndex(i)
            self.image_combo.blockSignals(False)
        self.propagate_panel.update_state()
        self.set_status(f"image: {layer.name} ({'x'.join(map(str, source.spatial_shape))}{', 3-D stack' if source.ndim == 3 else ''})")
        if self.auto_embed.isChecked() and self.session.segmenter is not None:
            self.compute_embedding()

    def _layer_ok(self, layer: Any) -> bool:
        return layer is not None and layer in self.viewer.layers

    def _ensure_layers(self) -> None:
        """Create (or re-create, when the image's dimensionality changed) the plugin's layers."""
        src = self.source
        if src is None:
            return
        img = self.image_layer
        ndim = src.ndim
        scale = tuple(img.scale)[-ndim:]
        translate = tuple(img.translate)[-ndim:]
        size = max(3.0, max(src.size) / 50.0)
        with self._muted():
            if not self._layer_ok(self.points_layer) or self.points_layer.ndim != ndim:
                if self._layer_ok(self.points_layer):
                    self.viewer.layers.remove(self.points_layer)
                with warnings.catch_warnings():  # "label looks categorical": it is, on purpose
                    warnings.simplefilter("ignore", RuntimeWarning)
                    self.points_layer = self._add_points(ndim, size)
                self.points_layer.events.data.connect(lambda e: self._on_layer_data("points", e))
                self._bind_keys(self.points_layer)
            if not self._layer_ok(self.shapes_layer) or self.shapes_layer.ndim != ndim:
                if self._layer_ok(self.shapes_layer):
                    self.viewer.layers.remove(self.shapes_layer)
                self.shapes_layer = self.viewer.add_shapes(
                    None,
                    ndim=ndim,
                    name="segprompt shapes",
                    features={"label": np.zeros(0, np.int64)},
                    edge_color=POSITIVE_COLOR if self.positive else NEGATIVE_COLOR,
                    face_color="transparent",
                    edge_width=max(1.0, size / 3),
                )
                self.shapes_layer.events.data.connect(lambda e: self._on_layer_data("shapes", e))
                self._bind_keys(self.shapes_layer)
            shape = src.spatial_shape
            if not self._layer_ok(self.preview_layer) or self.preview_layer.data.shape != shape:
                if self._layer_ok(self.preview_layer):
                    self.viewer.layers.remove(self.preview_layer)
                from napari.utils.colormaps import DirectLabelColormap

                self.preview_layer = self.viewer.add_labels(
                    np.zeros(shape, np.uint8),
                    name="segprompt preview",
                    opacity=0.5,
                    colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: PREVIEW_COLOR}),
                )
                self._bind_keys(self.preview_layer)
            objects = f"{img.name} objects"
            if not self._layer_ok(self.labels_layer) or self.labels_layer.name != objects or self.labels_layer.data.shape != shape:
                existing = [l for l in self.viewer.layers if l.name == objects and getattr(l, "data", None) is not None and l.data.shape == shape]
                self.labels_layer = existing[0] if existing else self.viewer.add_labels(np.zeros(shape, np.int32), name=objects)
                self._bind_keys(self.labels_layer)
            for layer in (self.points_layer, self.shapes_layer, self.preview_layer, self.labels_layer):
                layer.scale = scale
                layer.translate = translate
            # stacking, bottom to top: ..., committed objects, current object, shapes, points
            layers = self.viewer.layers
            for layer in (self.labels_layer, self.preview_layer, self.shapes_layer, self.points_layer):
                i = layers.index(layer)
                if i != len(layers) - 1:
                    layers.move(i, len(layers))
            self._update_polarity_ui()
            # prompts on top, ready to click
            self.viewer.layers.selection.active = self.points_layer
            try:
                self.points_layer.mode = "add"
            except Exception:  # noqa: BLE001
                pass
        self._refresh_reference_lists()

    def _add_points(self, ndim: int, size: float) -> Any:
        return self.viewer.add_points(
            np.zeros((0, ndim)),
            ndim=ndim,
            name="segprompt points",
            features={"label": np.zeros(0, np.int64)},
            face_color="label",
            face_color_cycle={1: POSITIVE_COLOR, 0: NEGATIVE_COLOR},
            border_color="white",
            size=size,
        )

    def current_slice(self) -> int:
        """The slice index shown in the viewer (0 for 2-D images)."""
        if self.source is None or self.source.ndim == 2 or self.image_layer is None:
            return 0
        try:
            coords = self.image_layer.world_to_data(self.viewer.dims.point)
            z = int(round(float(np.asarray(coords)[-3])))
        except Exception:  # noqa: BLE001 - fall back to the raw dims step
            z = int(self.viewer.dims.current_step[-3])
        return int(min(max(z, 0), self.source.n_slices - 1))

    def _on_slice_change(self, *_: Any) -> None:
        if self.source is None or self.source.ndim == 2:
            return
        z = self.current_slice()
        if z == self._z:
            return
        self._z = z
        self._show_preview(None)
        if self.session.segmenter is None:
            return
        if self.session.has_state(z):
            self._prompt_changed(record_time=False)
        elif self.auto_embed.isChecked():
            self.compute_embedding(z)

    # ======================================================================================
    # embeddings

    @property
    def encoding(self) -> bool:
        return self._encode_job is not None

    @property
    def busy(self) -> bool:
        return (
            self._encode_job is not None
            or self._decode_worker is not None
            or self._load_worker is not None
            or self.everything_panel.running
            or self.propagate_panel.running
        )

    def segment_everything(self, **settings: Any) -> Any:
        """Segment every object of the current slice in a worker thread (the panel's settings, with
        ``settings`` as overrides: ``points_per_side=8``, ...); the result goes into the objects
        layer as new ids, one undoable step. Returns the worker; ``everything_done`` follows."""
        return self.everything_panel.run(**settings)

    def cancel_everything(self) -> None:
        """Stop a running segment everything at its next batch of points."""
        self.everything_panel.cancel()

    def propagate(self, direction: str | None = None, method: str | None = None) -> Any:
        """Propagate the current object's prompts (on any slices of a 3-D image) through the stack
        in a worker thread (``direction`` ``"both"`` / ``"forward"`` / ``"backward"``, ``method``
        ``"auto"`` / ``"native"`` / ``"fallback"``; default: the panel's); the result is committed
        into the objects layer as one new object. Returns the worker; ``propagate_done`` follows."""
        return self.propagate_panel.run(direction, method)

    def cancel_propagation(self) -> None:
        """Stop a running propagation before its next slice step; nothing is written."""
        self.propagate_panel.cancel()

    def _busy_progress(self, on: bool) -> None:
        if on:
            self.progress.setRange(0, 0)  # indeterminate
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if self.session.has_state(self._z) else 0)

    def compute_embedding(self, z: int | None = None) -> Any:
        """Compute slice ``z``'s embedding (the current slice by default) in a worker thread.

        Returns the worker, or None when the embedding is already cached (``embedding_ready``
        is emitted at once then) or nothing can be encoded.
        """
        if self.session.segmenter is None or self.source is None:
            self.set_status("load a model and pick an image first")
            return None
        z = self.current_slice() if z is None else int(z)
        if self.session.has_state(z):
            self.progress.setRange(0, 1)
            self.progress.setValue(1)
            self.embedding_ready.emit(z)
            return None
        job = self._encode_job
        if job is not None:
            if job["z"] == z and job["key"] == self.session.state_key(z) and not job["cancel"].is_set():
                return job["worker"]
            job["cancel"].set()
            self._encode_next = z
            return None
        from superqt.utils import create_worker

        cancel = threading.Event()
        key = self.session.state_key(z)
        t0 = time.perf_counter()
        self.progress.setRange(0, 0)
        self.progress.setFormat(f"embedding slice {z}: %p%" if self.source.ndim == 3 else "embedding: %p%")
        self.cancel_button.setEnabled(True)
        self.embed_button.setEnabled(False)
        self.set_status("computing the image embedding ... (the viewer stays usable; Cancel stops it)")

        def done(_state: Any) -> None:
            try:
                current = self.session.state_key(z)
            except SegpromptError:
                current = None
            if current != key:  # the model or the image changed meanwhile
                return
            self.encode_seconds = time.perf_counter() - t0
            self.set_status(f"embedding ready ({self.encode_seconds:.2f} s)")
            self.embedding_ready.emit(z)
            self.embedding_done.emit("ready")
            if z == self._z and (self._preview_after_encode or self._has_prompts(z)):
                self._preview_after_encode = False
                self._request_preview()

        def failed(exc: BaseException) -> None:
            if isinstance(exc, EncodeCancelled) or cancel.is_set():
                self.set_status("embedding cancelled")
                self.embedding_done.emit("cancelled")
            else:
                self._error(exc)
                self.embedding_done.emit("failed")
            self._preview_after_encode = False

        def finished() -> None:
            if self._encode_job is not None and self._encode_job["cancel"] is cancel:
                self._encode_job = None
            self.cancel_button.setEnabled(False)
            self.embed_button.setEnabled(True)
            self.progress.setFormat("%p%")
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if self.session.has_state(self._z) else 0)
            nxt, self._encode_next = self._encode_next, None
            if nxt is not None and not self._closed:
                self.compute_embedding(nxt)

        worker = create_worker(
            self.session.encode,
            z,
            progress=self._bridge.progress.emit,
            cancel=cancel,
            _start_thread=False,
            _connect={"returned": done, "errored": failed, "finished": finished},
        )
        self._encode_job = {"worker": worker, "cancel": cancel, "z": z, "key": key}
        worker.start()
        return worker

    def _on_progress(self, done: int, total: int) -> None:
        if self._encode_job is None:
            return
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(min(done, total))

    def cancel_embedding(self) -> None:
        """Stop the running embedding (at the next encoder block for SAM models)."""
        self._encode_next = None
        if self._encode_job is not None:
            self._encode_job["cancel"].set()
            self.set_status("cancelling the embedding ...")

    # ======================================================================================
    # prompts

    @contextmanager
    def _muted(self) -> Iterator[None]:
        self._mute += 1
        try:
            yield
        finally:
            self._mute -= 1

    def _on_layer_data(self, kind: str, event: Any) -> None:
        action = _action(event)
        if action.endswith("ing"):  # adding / removing / changing: wait for the -ed event
            return
        if self._mute:
            return
        if action == "added":
            idx = getattr(event, "data_indices", None)
            n_new = len(idx) if idx is not None else 1
            for _ in range(max(1, n_new)):
                self._history.append((kind, self._z))
        if kind == "shapes":
            self._recolor_shapes()
        # a click (added / removed) is one discrete change: no debounce; moves and edits are
        # debounced (a drag emits many changes)
        self._prompt_changed(immediate=action in ("added", "removed"))

    def _recolor_shapes(self) -> None:
        """Shapes are coloured by their label feature (positive green, negative red)."""
        layer = self.shapes_layer
        if not self._layer_ok(layer) or not layer.nshapes or "label" not in layer.features:
            return
        from napari.utils.colormaps.standardize_color import transform_color

        labels = np.asarray(layer.features["label"], np.int64)
        pos, neg = transform_color(POSITIVE_COLOR)[0], transform_color(NEGATIVE_COLOR)[0]
        colors = np.where((labels == 1)[:, None], pos[None], neg[None])
        if not np.array_equal(np.asarray(layer.edge_color), colors):
            layer.edge_color = colors

    def _prompt_changed(self, record_time: bool = True, immediate: bool = False) -> None:
        if record_time:
            self._t_prompt = time.monotonic()
        self._generation += 1
        if self.live_preview.isChecked():
            if immediate:
                self._debounce.stop()
                self._soon.start()
            else:
                self._debounce.start()

    def _has_prompts(self, z: int) -> bool:
        return not self.prompt_set(z).is_empty()

    def _reference(self) -> Reference | None:
        return self.universal.reference()

    def prompt_set(self, z: int | None = None) -> PromptSet:
        """The current object's prompts on slice ``z`` (default: the current slice)."""
        if self.source is None:
            return PromptSet()
        z = self._z if z is None else z
        pts = self.points_layer
        points, labels = None, None
        if self._layer_ok(pts) and len(pts.data):
            points = np.asarray(pts.data)
            labels = np.asarray(pts.features["label"], dtype=np.int64) if "label" in pts.features else np.ones(len(points), np.int64)
        shapes: list[ShapeItem] = []
        sh = self.shapes_layer
        if self._layer_ok(sh) and sh.nshapes:
            feats = sh.features
            labs = np.asarray(feats["label"], np.int64) if "label" in feats and len(feats) == sh.nshapes else np.ones(sh.nshapes, np.int64)
            for data, kind, lab in zip(sh.data, sh.shape_type, labs, strict=True):
                shapes.append(ShapeItem(kind, np.asarray(data), int(lab)))
        accepts = self.session.accepts if self.session.segmenter is not None else None
        text = self.text_edit.text() if accepts is not None and "text" in accepts else None
        ref = self._reference() if accepts is not None and "reference" in accepts else None
        ps, notes = build_prompt_set(
            image_size=self.source.size,
            ndim=self.source.ndim,
            z=z,
            points=points,
            point_labels=labels,
            shapes=shapes,
            text=text,
            reference=ref,
            accepts=accepts,
        )
        self._notes = notes + (self.universal.notes() if ref is None and accepts is not None and "reference" in accepts else [])
        return ps

    def add_point(self, x: float, y: float, positive: bool | None = None) -> None:
        """Add a click at ``(x, y)`` = (column, row) on the current slice, as napari would."""
        self._ensure_prompt_layers()
        label = self.positive if positive is None else bool(positive)
        z = self._z if self.source is not None and self.source.ndim == 3 else None
        layer = self.points_layer
        if label == self.positive:
            layer.add(xy_to_rc([[x, y]], z))
            return
        layer.feature_defaults = {"label": int(label)}
        try:
            layer.add(xy_to_rc([[x, y]], z))
        finally:
            layer.feature_defaults = {"label": int(self.positive)}

    def add_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Draw a box prompt (XYXY) on the current slice."""
        self._ensure_prompt_layers()
        z = self._z if self.source is not None and self.source.ndim == 3 else None
        corners = xy_to_rc([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], z)
        self.shapes_layer.add([corners], shape_type="rectangle")

    def add_scribble(self, xy: Any, positive: bool | None = None) -> None:
        """Draw a scribble (a path through the (x, y) points) on the current slice."""
        self._ensure_prompt_layers()
        label = self.positive if positive is None else bool(positive)
        z = self._z if self.source is not None and self.source.ndim == 3 else None
        old = self.positive
        self._set_defaults(label)
        try:
            self.shapes_layer.add([xy_to_rc(xy, z)], shape_type="path")
        finally:
            self._set_defaults(old)

    def _ensure_prompt_layers(self) -> None:
        if self.source is None:
            raise ConfigError("no image selected: open an image first")
        if not (self._layer_ok(self.points_layer) and self._layer_ok(self.shapes_layer)):
            self._ensure_layers()

    def _set_defaults(self, positive: bool) -> None:
        value = 1 if positive else 0
        for layer in (self.points_layer, self.shapes_layer):
            if self._layer_ok(layer):
                layer.feature_defaults = {"label": value}
        if self._layer_ok(self.shapes_layer):
            layer = self.shapes_layer
            selected = set(layer.selected_data)
            layer.selected_data = set()  # current_edge_color would recolour the selection
            layer.current_edge_color = POSITIVE_COLOR if positive else NEGATIVE_COLOR
            layer.selected_data = selected

    def toggle_polarity(self) -> bool:
        """Switch new prompts between positive and negative (key T); returns the new polarity."""
        self.positive = not self.positive
        self._set_defaults(self.positive)
        self._update_polarity_ui()
        return self.positive

    def _update_polarity_ui(self) -> None:
        self.polarity_button.blockSignals(True)
        self.polarity_button.setChecked(not self.positive)
        self.polarity_button.setText("positive (T toggles)" if self.positive else "negative (T toggles)")
        color = POSITIVE_COLOR if self.positive else NEGATIVE_COLOR
        self.polarity_button.setStyleSheet(f"color: {color}; font-weight: bold")
        self.polarity_button.blockSignals(False)
        self._set_defaults(self.positive)

    def _indices_on_slice(self, layer: Any, z: int) -> list[int]:
        if not self._layer_ok(layer):
            return []
        ndim = self.source.ndim if self.source is not None else 2
        if layer is self.points_layer:
            return list(np.flatnonzero(slice_of(np.asarray(layer.data), ndim) == z)) if len(layer.data) else []
        return [i for i, d in enumerate(layer.data) if (slice_of(np.asarray(d), ndim) == z).all()]

    def undo(self) -> bool:
        """Remove the last prompt added on the current slice, or the objects of a segment everything
        or the object of a propagation done after it (the newest first); returns False if there was
        nothing."""
        z = self._z
        kind = None
        panels = {"everything": self.everything_panel, "propagate": self.propagate_panel}
        for i in range(len(self._history) - 1, -1, -1):
            k, hz = self._history[i]
            if hz == z and k in panels:
                del self._history[i]
                if panels[k].undo(z):
                    return True
                continue
            if hz == z:
                layer = self.points_layer if k == "points" else self.shapes_layer
                del self._history[i]
                if self._indices_on_slice(layer, z):
                    kind = k
                    break
        if kind is None:  # prompts the history does not know (e.g. pasted): newest point, then shape
            kind = "points" if self._indices_on_slice(self.points_layer, z) else "shapes" if self._indices_on_slice(self.shapes_layer, z) else None
        if kind is None:
            self.set_status("nothing to undo")
            return False
        layer = self.points_layer if kind == "points" else self.shapes_layer
        idx = max(self._indices_on_slice(layer, z))
        with self._muted():
            layer.selected_data = {int(idx)}
            layer.remove_selected()
        self._prompt_changed(immediate=True)
        return True

    def clear(self) -> None:
        """Remove the current object's prompts and preview without committing (Shift+C)."""
        self._clear_prompts(self._z)
        self.session.discard(self._z)
        self._epoch += 1
        self._show_preview(None)
        self.set_status("cleared")

    def _clear_prompts(self, z: int) -> None:
        with self._muted():
            for layer in (self.points_layer, self.shapes_layer):
                idx = self._indices_on_slice(layer, z)
                if idx:
                    layer.selected_data = set(int(i) for i in idx)
                    layer.remove_selected()
        self._history = [h for h in self._history if h[1] != z]
        self._generation += 1
        self._debounce.stop()
        self._soon.stop()

    def _end_object(self) -> None:
        self._epoch += 1
        self._debounce.stop()
        self._soon.stop()
        self._show_preview(None)

    # ======================================================================================
    # preview

    def segment_now(self) -> None:
        """Decode the current prompts now (key S), without waiting for the debounce."""
        self._debounce.stop()
        self._soon.stop()
        self._request_preview()

    def _request_preview(self) -> None:
        if self._closed or self.source is None:
            return
        z = self._z
        ps = self.prompt_set(z)
        if ps.is_empty():
            self._show_preview(None)
            if self._notes:  # e.g. an empty reference mask: say why nothing is segmented
                self.set_status("; ".join(self._notes))
            return
        if self.session.segmenter is None:
            self.set_status("load a model first (Model: Load)")
            return
        if not self.session.has_state(z):
            self._preview_after_encode = True
            if self.auto_embed.isChecked() or self.encoding:
                self.compute_embedding(z)
            else:
                self.set_status("compute the embedding first")
            return
        if self._decode_worker is not None:
            self._decode_pending = True
            return
        from superqt.utils import create_worker

        job = {"z": z, "generation": self._generation, "epoch": self._epoch, "t": self._t_prompt, "ps": ps, "policy": self.policy_combo.currentText()}

        def run() -> Preview:
            return self.session.decode(job["ps"], job["z"], job["policy"])

        def done(preview: Preview) -> None:
            self._on_decoded(job, preview)

        def failed(exc: BaseException) -> None:
            self._error(exc)

        def finished() -> None:
            self._decode_worker = None
            if self._decode_pending and not self._closed:
                self._decode_pending = False
                self._request_preview()

        worker = create_worker(run, _start_thread=False, _connect={"returned": done, "errored": failed, "finished": finished})
        self._decode_worker = worker
        worker.start()

    def _on_decoded(self, job: dict[str, Any], preview: Preview) -> None:
        if job["epoch"] != self._epoch:
            return  # the object was committed or cleared meanwhile
        self.session.record(job["ps"], preview, job["t"], job["z"], extra={"decode_s": round(preview.seconds, 6)})
        self._update_record_label()
        if job["z"] == self._z and job["generation"] == self._generation:
            self._shown_generation = job["generation"]
            self._show_preview(preview)
            notes = self._notes
            s = preview.score
            self.set_status(
                f"preview: {int(preview.mask.sum())} px"
                + (f", score {s:.3f}" if s is not None else "")
                + f" ({preview.seconds * 1000:.0f} ms)"
                + (f"; {'; '.join(notes)}" if notes else "")
            )

    def _show_preview(self, preview: Preview | None) -> None:
        self.preview = preview
        layer = self.preview_layer
        if self._layer_ok(layer):
            if self.source is not None and self.source.ndim == 3:
                layer.data[:] = 0
                if preview is not None:
                    layer.data[self._z] = preview.mask
            else:
                layer.data[:] = 0 if preview is None else preview.mask
            layer.refresh()
        self.candidate_list.blockSignals(True)
        self.candidate_list.clear()
        if preview is not None:
            for k, s in enumerate(preview.scores):
                score = "n/a" if not math.isfinite(float(s)) else f"{float(s):.3f}"
                item = QListWidgetItem(f"candidate {k + 1}: score {score}, {int(preview.masks[k].sum())} px")
                self.candidate_list.addItem(item)
            self.candidate_list.setCurrentRow(preview.chosen)
        self.candidate_list.blockSignals(False)
        if preview is None:
            self._shown_generation = -1
        self.preview_updated.emit()

    def _on_candidate_row(self, row: int) -> None:
        if row >= 0:
            self.choose_candidate(row)

    def choose_candidate(self, k: int) -> None:
        """Show candidate ``k`` of the current preview (its mask is what Commit writes)."""
        if self.preview is None:
            return
        self.preview.choose(k)
        rec = self.session.recorders.get((self.source.uid, self._z)) if self.source is not None else None
        if rec is not None:
            rec.update_last(self.preview)
        self._show_preview(self.preview)

    @property
    def preview_mask(self) -> np.ndarray | None:
        """bool (H, W) mask of the current object on the current slice, or None."""
        return None if self.preview is None else self.preview.mask

    # ======================================================================================
    # commit and recording

    def commit(self) -> int | None:
        """Write the current object into the objects layer with a new id (key C); returns the id."""
        if self.source is None:
            self.set_status("no image")
            return None
        z = self._z
        ps = self.prompt_set(z)
        if ps.is_empty() and self.preview is None:
            self.set_status("nothing to commit: add prompts first")
            return None
        stale = self.preview is None or self._shown_generation != self._generation
        if stale and not ps.is_empty():
            if not self.session.has_state(z):
                self.set_status("the embedding is not ready yet; commit again when it is")
                return None
            self._debounce.stop()
            try:
                preview = self.session.decode(ps, z, self.policy_combo.currentText())
            except SegpromptError as exc:
                self._error(exc)
                return None
            self.session.record(ps, preview, self._t_prompt, z, extra={"decode_s": round(preview.seconds, 6)})
            self._shown_generation = self._generation
            self.preview = preview
        assert self.preview is not None
        mask = self.preview.mask
        if not mask.any():
            self.set_status("the preview is empty: nothing committed")
            return None
        if not self._layer_ok(self.labels_layer):
            self._ensure_layers()
        labels = self.labels_layer
        object_id = commit_mask(labels.data, mask, z if self.source.ndim == 3 else None)
        labels.refresh()
        self.session.finish(object_id, z)
        self._clear_prompts(z)
        self._end_object()
        self._update_record_label()
        self.set_status(f"committed object {object_id} ({int(mask.sum())} px)")
        self.committed.emit(object_id)
        return object_id

    def _on_info(self, *_: Any) -> None:
        self.session.info.annotator = self.annotator_edit.text().strip() or None
        self.session.info.dataset = self.dataset_edit.text().strip() or None

    def _update_record_label(self) -> None:
        n = len(self.session.trajectories)
        steps = sum(len(t.steps) for t in self.session.trajectories)
        open_steps = sum(len(r) for r in self.session.recorders.values())
        self.record_label.setText(f"{n} objects recorded ({steps} steps); current: {open_steps} steps")

    @property
    def trajectories(self) -> list[Any]:
        return list(self.session.trajectories)

    def export_trajectories(self, path: str | Path | None = None, include_open: bool = False) -> Path | None:
        """Write the recorded trajectories (``.jsonl`` or ``.json``); asks for a file without ``path``."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export prompt trajectories", "trajectories.jsonl", "JSON lines (*.jsonl);;JSON (*.json)")
            if not path:
                return None
        try:
            out = self.session.export(path, include_open=include_open)
        except SegpromptError as exc:
            self._error(exc)
            return None
        self.set_status(f"wrote {len(self.session.trajectories)} trajectories to {out}")
        return out

    # ======================================================================================
    # keys and shutdown

    def _bind_keys(self, provider: Any) -> None:
        if provider is None:
            return
        for key, method in KEYS.items():
            fn = getattr(self, method)

            def cb(_target: Any = None, fn: Callable[[], Any] = fn) -> None:
                fn()

            provider.bind_key(key, cb, overwrite=True)
        if all(p is not provider for p in self._bound):
            self._bound.append(provider)

    def _unbind_keys(self, provider: Any) -> None:
        for key in KEYS:
            try:
                provider.bind_key(key, None)
            except Exception:  # noqa: BLE001
                pass
        self._bound = [p for p in self._bound if p is not provider]

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop workers and release key bindings (called on close)."""
        if self._closed:
            return
        self._closed = True
        self._debounce.stop()
        self._soon.stop()
        self.cancel_embedding()
        self.cancel_everything()
        self.cancel_propagation()
        for p in list(self._bound):
            self._unbind_keys(p)
        try:
            self.viewer.layers.events.inserted.disconnect(self._refresh_image_list)
            self.viewer.layers.events.removed.disconnect(self._refresh_image_list)
            self.viewer.dims.events.current_step.disconnect(self._on_slice_change)
        except Exception:  # noqa: BLE001
            pass
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(int(timeout_s * 1000))

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)


__all__ = ["SegpromptWidget", "KEYS"]
