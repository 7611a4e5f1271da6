"""The dock widget's "Segment everything" panel: every object of the current slice, no prompts.

Runs :meth:`viewers.session.SegmentationSession.segment_everything` (segment-anything's automatic
mask generator over the loaded model, :mod:`segprompt.everything`) in a worker thread, as the
widget's embedding does: a progress bar over the batches of grid points, and Cancel, which stops
the run at the next batch (nothing is written then).

Where the result goes: into the committed-objects labels layer (``<image> objects``), as new
objects. Instance ``k`` of the label map (1..K, largest first) becomes object ``N + k`` where N is
the largest id already there; pixels of objects committed before keep their id (the Commit rule).
The whole result is ONE undoable step: written through napari's ``Labels.data_setitem``, so the
labels layer's own undo (Ctrl+Z on the layer) removes it, and the widget's Undo removes it too
when it is the newest action on the slice (prompts added later are undone first). Each instance
is then an ordinary object: erase, paint or fill it with napari's label tools, and objects
committed afterwards get the next ids. The instances are not prompt trajectories (nobody
prompted them), so nothing is added to the recording.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QDoubleSpinBox, QFormLayout, QGroupBox, QSpinBox

from segprompt.errors import SegpromptError
from viewers.layer_edits import revert_write, write_undoable
from viewers.run_controls import WorkerProgressMixin, add_run_controls


#: the panel's starting values: segment-anything's SamAutomaticMaskGenerator defaults, as
#: :class:`segprompt.everything.EverythingSettings` (a test checks they agree); written here so that
#: opening the widget does not import torch
DEFAULTS = {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "min_mask_region_area": 0, "crop_n_layers": 0}


class EverythingPanel(WorkerProgressMixin, QGroupBox):
    """Settings (points per side, predicted-IoU and stability thresholds, minimum region area, crop
    layers; segment-anything's defaults), Segment everything, Cancel and a progress bar.

    ``done`` is emitted with ``"ready"``, ``"cancelled"`` or ``"failed"`` when a run ends.
    """

    done = Signal(str)
    progressed = Signal(int, int)

    def __init__(self, widget: Any) -> None:
        super().__init__("Segment everything")
        self.widget = widget
        self._job: dict[str, Any] | None = None
        self._steps: list[dict[str, Any]] = []  # undoable results, oldest first
        self.last_result: Any = None
        d = DEFAULTS
        form = QFormLayout(self)
        self.points_per_side = QSpinBox()
        self.points_per_side.setRange(1, 256)
        self.points_per_side.setValue(int(d["points_per_side"]))
        self.pred_iou_thresh = QDoubleSpinBox()
        self.stability_score_thresh = QDoubleSpinBox()
        for box, value in ((self.pred_iou_thresh, d["pred_iou_thresh"]), (self.stability_score_thresh, d["stability_score_thresh"])):
            box.setRange(0.0, 1.0)
            box.setDecimals(3)
            box.setSingleStep(0.01)
            box.setValue(float(value))
        self.min_mask_region_area = QSpinBox()
        self.min_mask_region_area.setRange(0, 10_000_000)
        self.min_mask_region_area.setValue(int(d["min_mask_region_area"]))
        self.crop_n_layers = QSpinBox()
        self.crop_n_layers.setRange(0, 4)
        self.crop_n_layers.setValue(int(d["crop_n_layers"]))
        self.points_per_side.setToolTip("grid points per image side (segment-anything: 32)")
        self.pred_iou_thresh.setToolTip("drop masks whose predicted IoU is below this (0.88)")
        self.stability_score_thresh.setToolTip("drop masks whose stability score is below this (0.95)")
        self.min_mask_region_area.setToolTip("remove disconnected regions and holes smaller than this many pixels (0 = off)")
        self.crop_n_layers.setToolTip("also run on image crops, this many layers of them (0 = whole image only)")
        form.addRow("points per side", self.points_per_side)
        form.addRow("predicted IoU >=", self.pred_iou_thresh)
        form.addRow("stability >=", self.stability_score_thresh)
        form.addRow("min region area", self.min_mask_region_area)
        form.addRow("crop layers", self.crop_n_layers)
        controls = add_run_controls(form, self, "Segment everything", "Every object of the current slice, added to the objects layer as new ids (one Undo removes them)")
        self.run_button, self.cancel_button, self.progress = controls.run_button, controls.cancel_button, controls.progress
        self.result_label, self._bridge = controls.label, controls.bridge
        self._bridge.progress.connect(self._on_progress)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)

    # -- settings ------------------------------------------------------------------------
    def settings(self, **overrides: Any) -> Any:
        """The panel's :class:`segprompt.everything.EverythingSettings`, with ``overrides``."""
        from segprompt.everything import EverythingSettings

        values = {
            "points_per_side": self.points_per_side.value(),
            "pred_iou_thresh": self.pred_iou_thresh.value(),
            "stability_score_thresh": self.stability_score_thresh.value(),
            "min_mask_region_area": self.min_mask_region_area.value(),
            "crop_n_layers": self.crop_n_layers.value(),
        }
        values.update(overrides)
        return EverythingSettings(**values)

    @property
    def running(self) -> bool:
        return self._job is not None

    # -- run -----------------------------------------------------------------------------
    def run(self, **overrides: Any) -> Any:
        """Segment everything on the current slice in a worker thread; returns the worker (None
        when nothing can run: no model or image, or a run is going on)."""
        w = self.widget
        if self._job is not None:
            w.set_status("segment everything is already running")
            return None
        if w.session.segmenter is None or w.source is None:
            w.set_status("load a model and pick an image first")
            return None
        try:
            settings = self.settings(**overrides)
        except (SegpromptError, TypeError, ValueError) as exc:
            w._error(exc)
            return None
        from superqt.utils import create_worker

        z = w.current_slice()
        key = w.session.state_key(z)
        cancel = threading.Event()
        self.progress.setRange(0, 0)
        self.progress.setFormat("segment everything: %p%")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        w.set_status("segmenting everything ... (the viewer stays usable; Cancel stops it)")

        def returned(result: Any) -> None:
            try:
                current = w.session.state_key(z)
            except SegpromptError:
                current = None
            if cancel.is_set() or current != key:  # cancelled late, or the model / image changed
                w.set_status("segment everything cancelled" if cancel.is_set() else "segment everything: the model or image changed meanwhile; result dropped")
                self.done.emit("cancelled")
                return
            self.last_result = result
            self._apply(result)
            self.done.emit("ready")

        def errored(exc: BaseException) -> None:
            self._job_failed(exc, cancel.is_set(), "segment everything cancelled")

        def finished() -> None:
            self._job_ended()
            self.run_button.setEnabled(True)

        worker = create_worker(
            w.session.segment_everything,
            z,
            settings,
            progress=self._bridge.progress.emit,
            cancel=cancel,
            _start_thread=False,
            _connect={"returned": returned, "errored": errored, "finished": finished},
        )
        self._job = {"worker": worker, "cancel": cancel, "z": z, "t0": time.perf_counter()}
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running segment everything at its next batch of points."""
        self._request_cancel("cancelling segment everything ...")

    # -- result into the objects layer, one undoable step ----------------------------------
    def _apply(self, result: Any) -> None:
        from viewers.session import instances_write

        w = self.widget
        if not w._layer_ok(w.labels_layer):
            w._ensure_layers()
        layer = w.labels_layer
        z = result.z if w.source is not None and w.source.ndim == 3 else None
        indices, values, offset = instances_write(layer.data, result.labels, z)
        if len(values) == 0:
            w.set_status(f"segment everything: no new object ({len(result.records)} masks found, {result.seconds:.1f} s)")
            self.result_label.setText("no new object")
            return
        item = write_undoable(layer, indices, values)
        ids = sorted(set(int(v) for v in values))
        self._steps.append({"z": result.z, "indices": indices, "values": values, "item": item, "ids": ids})
        w._history.append(("everything", result.z))
        text = f"segment everything: {len(ids)} objects added (ids {ids[0]}..{ids[-1]}; {result.seconds:.1f} s); Undo removes them"
        self.result_label.setText(text)
        w.set_status(text)

    def undo(self, z: int) -> bool:
        """Remove the newest segment-everything result of slice ``z`` from the objects layer.

        Uses the labels layer's own undo when that result is its newest edit (so Redo brings it
        back); after later edits on the layer, resets the pixels that still hold the result's ids.
        """
        w = self.widget
        for i in range(len(self._steps) - 1, -1, -1):
            step = self._steps[i]
            if step["z"] != z:
                continue
            del self._steps[i]
            layer = w.labels_layer
            if not w._layer_ok(layer):
                return False
            revert_write(layer, step["indices"], step["values"], step["item"])
            w.set_status(f"undid segment everything ({len(step['ids'])} objects removed)")
            self.result_label.setText("")
            return True
        return False


__all__ = ["DEFAULTS", "EverythingPanel"]
