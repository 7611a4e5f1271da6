"""The controls every long-running panel shares: a run button, Cancel, a progress bar and a
result line, with a bridge that carries progress from the worker thread to the Qt thread."""

from __future__ import annotations

from dataclasses import dataclass

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton


class ProgressBridge(QObject):
    """``progress(done, total)`` emitted from a worker, received on the Qt thread."""

    progress = Signal(int, int)


@dataclass
class RunControls:
    run_button: QPushButton
    cancel_button: QPushButton
    progress: QProgressBar
    label: QLabel
    bridge: ProgressBridge


def add_run_controls(form: QFormLayout, parent: QObject, run_text: str, tooltip: str) -> RunControls:
    """Append [run | Cancel], a progress bar (0 of 1) and a word-wrapped result label to ``form``."""
    run_button = QPushButton(run_text)
    run_button.setToolTip(tooltip)
    cancel_button = QPushButton("Cancel")
    cancel_button.setEnabled(False)
    row = QHBoxLayout()
    row.addWidget(run_button, 1)
    row.addWidget(cancel_button)
    form.addRow(row)
    progress = QProgressBar()
    progress.setRange(0, 1)
    progress.setValue(0)
    form.addRow(progress)
    label = QLabel("")
    label.setWordWrap(True)
    form.addRow(label)
    return RunControls(run_button, cancel_button, progress, label, ProgressBridge(parent))


class WorkerProgressMixin:
    """For a panel that runs one worker at a time (``self._job``: ``{"cancel": threading.Event, ...}``
    or None) with :func:`add_run_controls`' bar and a ``progressed`` signal: the progress slot and
    the cancel request they share."""

    def _on_progress(self, done: int, total: int) -> None:
        if self._job is None:
            return
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(min(done, total))
        self.progressed.emit(done, total)

    def _request_cancel(self, status: str) -> None:
        if self._job is not None:
            self._job["cancel"].set()
            self.widget.set_status(status)

    def _job_failed(self, exc: BaseException, cancelled: bool, cancelled_status: str) -> None:
        """A worker's error: a cancel (``Cancelled``, or the cancel flag set) says ``cancelled_status``
        and emits ``done("cancelled")``; anything else goes to the widget's error display, ``done("failed")``."""
        from segprompt.errors import Cancelled

        if isinstance(exc, Cancelled) or cancelled:
            self.widget.set_status(cancelled_status)
            self.done.emit("cancelled")
        else:
            self.widget._error(exc)
            self.done.emit("failed")

    def _job_ended(self) -> None:
        """After a worker ends, however it ended: no job, Cancel off, the progress bar's text reset."""
        self._job = None
        self.cancel_button.setEnabled(False)
        self.progress.setFormat("%p%")
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
