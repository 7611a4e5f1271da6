"""The dock widget's "Volume propagation" panel: prompt some slices of a 3-D stack, propagate.

Enabled on 3-D image layers with a model loaded. The current object's prompts on every slice
(the clicks and shapes of the prompt layers, each on the slice it was made on) become
:class:`segprompt.volumes.VolumePrompts` (one object, its prompted slices); Propagate runs
:meth:`viewers.session.SegmentationSession.propagate` in a worker thread (superqt
``create_worker``, the engine of napari's ``thread_worker``) with a progress bar over the slice
steps and a Cancel button. The propagator is :func:`segprompt.volumes.volume_propagator`'s
choice: the model's own (SAM 2's video memory) where it has one, else the slice-by-slice
fallback (each slice prompted from its neighbour's mask with a box and a centre point); the
"method" box forces one.

Directions: ``both`` (default), ``forward`` (toward higher slice indices) or ``backward``.

Where the result goes: into the committed-objects labels layer (``<image> objects``, a 3-D
label volume of the image's shape) as ONE new object, id ``max + 1``; voxels of objects
committed before keep their id (the Commit rule). It is one undoable step, written through
napari's ``Labels.data_setitem``: the labels layer's own undo (Ctrl+Z on the layer) removes it,
and so does the widget's Undo on any slice the object covers while it is the newest action there.
The prompts of the prompted slices are then cleared and their recordings closed with
``meta["propagation"]`` (:meth:`~viewers.session.SegmentationSession.finish_volume`).

Cancel: the worker stops before its next slice step and NOTHING is written (no partial object,
no new layer); the prompts stay, so Propagate can run again. A result that arrives after the
model or the image changed is dropped too.

Follows micro-sam's 3-D annotator (``SegmentNDWidget``, "Segment All Slices" of the current
object; computational-cell-analytics/micro-sam, micro_sam/sam_annotator/_widgets.py), which
writes into its current-object layer and commits with a second action; here the result is
committed at once (one undoable step). Long work in a worker with progress and cancel, as
napari's ``thread_worker`` (napari/qt/threading.py).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel

from segprompt.errors import SegpromptError
from viewers.layer_edits import revert_write, write_undoable
from viewers.run_controls import WorkerProgressMixin, add_run_controls

#: the direction box's entries (:data:`segprompt.volumes.DIRECTIONS`, written here so that the
#: widget opens without importing the volume package; a test checks they agree)
DIRECTIONS = ("both", "forward", "backward")
#: the method box's entries (:data:`segprompt.volumes.METHODS`)
METHODS = ("auto", "native", "fallback")
#: object id of the current object inside the propagation (the committed id is the labels' next)
OBJ = 1


class PropagatePanel(WorkerProgressMixin, QGroupBox):
    """Direction, method, Propagate, Cancel and a progress bar (module docstring).

    ``done`` is emitted with ``"ready"``, ``"cancelled"`` or ``"failed"`` when a run ends;
    ``progressed(done, total)`` follows the slice steps.
    """

    done = Signal(str)
    progressed = Signal(int, int)

    def __init__(self, widget: Any) -> None:
        super().__init__("Volume propagation (3-D)")
        self.widget = widget
        self._job: dict[str, Any] | None = None
        self._steps: list[dict[str, Any]] = []  # undoable results, oldest first
        self.last_result: Any = None
        self.last_object_id: int | None = None
        form = QFormLayout(self)
        self.direction_combo = QComboBox()
        self.direction_combo.addItems(list(DIRECTIONS))
        self.direction_combo.setToolTip("both: up and down from the prompted slices; forward: toward higher slice indices; backward: lower")
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
        self.method_combo.setToolTip("auto: the model's own propagation (SAM 2's video memory) where it has one, else slice by slice")
        row = QHBoxLayout()
        row.addWidget(QLabel("direction"))
        row.addWidget(self.direction_combo, 1)
        row.addWidget(QLabel("method"))
        row.addWidget(self.method_combo, 1)
        form.addRow(row)
        controls = add_run_controls(form, self, "Propagate", "Propagate the current object's prompts (on any slices) through the stack; the result is committed as one new object")
        self.run_button, self.cancel_button, self.progress = controls.run_button, controls.cancel_button, controls.progress
        self.info_label, self._bridge = controls.label, controls.bridge
        self._bridge.progress.connect(self._on_progress)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.update_state()

    # -- state ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._job is not None

    def update_state(self) -> None:
        """Enable for a 3-D image with a model; say which propagation the model gets."""
        w = self.widget
        src = getattr(w, "source", None)
        seg = w.session.segmenter
        is3d = src is not None and src.ndim == 3
        self.run_button.setEnabled(is3d and seg is not None and self._job is None)
        if src is not None and not is3d:
            self.info_label.setText("for 3-D stacks (Z, H, W)")
        elif seg is None:
            self.info_label.setText("load a model")
        else:
            support = w.session.propagation_support()
            self.info_label.setText(
                f"{w.session.model_label}: its own propagation (video memory)" if support == "native" else f"{w.session.model_label}: slice by slice (box + centre point from the neighbour's mask)"
            )

    # -- prompts -------------------------------------------------------------------------
    def prompted_slices(self) -> list[int]:
        """Slice indices holding any of the current object's prompts (points or shapes), ascending."""
        from viewers.coords import slice_of

        w = self.widget
        zs: set[int] = set()
        if w._layer_ok(w.points_layer) and len(w.points_layer.data):
            zs.update(int(z) for z in slice_of(np.asarray(w.points_layer.data), 3))
        if w._layer_ok(w.shapes_layer):
            for d in w.shapes_layer.data:
                s = slice_of(np.asarray(d), 3)
                if len(s) and (s == s[0]).all():
                    zs.add(int(s[0]))
        return sorted(zs)

    def volume_prompts(self) -> Any:
        """The current object's prompts as :class:`segprompt.volumes.VolumePrompts`: one entry per
        prompted slice (the widget's :meth:`prompt_set` of that slice, in its (x, y) pixels)."""
        from segprompt.volumes import VolumePrompts

        out = VolumePrompts()
        for z in self.prompted_slices():
            ps = self.widget.prompt_set(z)
            if not ps.is_empty():
                out = out.add(z, OBJ, prompts=ps)
        return out

    # -- run -----------------------------------------------------------------------------
    def run(self, direction: str | None = None, method: str | None = None) -> Any:
        """Propagate the current object's prompts in a worker thread; returns the worker (None
        when nothing can run: no 3-D image or model, no prompt, or a run is going on)."""
        w = self.widget
        if self._job is not None:
            w.set_status("propagation is already running")
            return None
        src = w.source
        if w.session.segmenter is None or src is None:
            w.set_status("load a model and pick a 3-D image first")
            return None
        if src.ndim != 3:
            w.set_status("propagation needs a 3-D stack (Z, H, W); this image is 2-D")
            return None
        direction = direction or self.direction_combo.currentText()
        method = method or self.method_combo.currentText()
        try:
            prompts = self.volume_prompts()
        except SegpromptError as exc:
            w._error(exc)
            return None
        if not len(prompts):
            w.set_status("nothing to propagate: click on the object on one of its slices first")
            return None
        from superqt.utils import create_worker

        key = w.session.state_key(0)
        cancel = threading.Event()
        self.progress.setRange(0, 0)
        self.progress.setFormat("propagating: %p%")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        w.set_status(f"propagating from slice(s) {', '.join(map(str, prompts.slices()))} ({direction}) ... (Cancel stops it; nothing is written then)")

        def changed() -> bool:
            try:
                return w.session.state_key(0) != key
            except SegpromptError:
                return True

        def returned(result: Any) -> None:
            if cancel.is_set() or changed():
                w.set_status("propagation cancelled; nothing written" if cancel.is_set() else "propagation: the model or image changed meanwhile; result dropped")
                self.done.emit("cancelled")
                return
            self.last_result = result
            self._apply(result, prompts, direction)
            self.done.emit("ready")

        def errored(exc: BaseException) -> None:
            self._job_failed(exc, cancel.is_set(), "propagation cancelled; nothing written")

        def finished() -> None:
            self._job_ended()
            self.update_state()

        worker = create_worker(
            w.session.propagate,
            prompts,
            direction=direction,
            method=method,
            progress=self._bridge.progress.emit,
            cancel=cancel.is_set,
            _start_thread=False,
            _connect={"returned": returned, "errored": errored, "finished": finished},
        )
        self._job = {"worker": worker, "cancel": cancel, "t0": time.perf_counter()}
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running propagation before its next slice step (nothing is written)."""
        self._request_cancel("cancelling the propagation ...")

    # -- result into the objects layer, one undoable step ----------------------------------
    def _apply(self, result: Any, prompts: Any, direction: str) -> None:
        from viewers.session import volume_write

        w = self.widget
        if not w._layer_ok(w.labels_layer):
            w._ensure_layers()
        layer = w.labels_layer
        mask = result.masks.get(OBJ)
        if mask is None or not mask.any():
            w.set_status(f"propagation ({result.method}) found no object; nothing written")
            return
        indices, object_id = volume_write(layer.data, mask)
        item = write_undoable(layer, indices, object_id)
        slices = list(result.slices_labelled(OBJ))
        self._steps.append({"indices": indices, "id": object_id, "item": item, "slices": slices})
        w.session.finish_volume(object_id, result, prompts, direction, OBJ)
        for z in prompts.slices():
            w._clear_prompts(z)
        w._end_object()
        w._history.extend(("propagate", z) for z in slices)
        w._update_record_label()
        self.last_object_id = object_id
        text = (
            f"propagated object {object_id}: slices {slices[0]}..{slices[-1]} ({len(slices)} labelled; "
            f"{result.method}, {direction}, {result.seconds:.1f} s); Undo removes it"
        )
        self.info_label.setText(text)
        w.set_status(text)
        w.committed.emit(object_id)

    def undo(self, z: int) -> bool:
        """Remove the newest propagated object covering slice ``z`` from the objects layer (the
        labels layer's own undo when it is that layer's newest edit, so Redo brings it back; else
        the voxels still holding its id are reset)."""
        w = self.widget
        for i in range(len(self._steps) - 1, -1, -1):
            step = self._steps[i]
            if z not in step["slices"]:
                continue
            del self._steps[i]
            for other in step["slices"]:  # its entries on the other slices go too
                if other != z and ("propagate", other) in w._history:
                    j = len(w._history) - 1 - w._history[::-1].index(("propagate", other))
                    del w._history[j]
            layer = w.labels_layer
            if not w._layer_ok(layer):
                return False
            revert_write(layer, step["indices"], step["id"], step["item"])
            w.set_status(f"undid the propagation (object {step['id']} removed)")
            self.info_label.setText("")
            return True
        return False


__all__ = ["DIRECTIONS", "METHODS", "PropagatePanel"]
