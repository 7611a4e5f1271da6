"""Text and reference prompts in the dock widget, for the models that take them (``universal-tiny``).

The widget's *Prompts* box holds a text field and two reference pickers (an example image layer
and a labels layer marking the object in it). :class:`UniversalPrompts` drives them:

* **which model takes what**: with a model that takes text (``"text" in segmenter.accepts``) the
  text field is enabled, its tooltip and a completer list the words the model knows (a closed
  vocabulary such as ``universal-tiny``'s ``disc, star, ...``); with one that does not (``sam-tiny``,
  GrabCut, SAM checkpoints) the field is disabled and its tooltip names the models in the picker
  that do take it. The same for the reference pickers.
* **text**: typing decodes live (after the widget's debounce) once the text holds a word the model
  knows; a text without one is not decoded while typing (a hint says which words the model knows)
  but **Enter** or **Segment** decodes it anyway, and the model's own ``PromptError`` ("has no word
  this model knows; it knows: ...") is shown in the status line.
* **reference**: ``PromptSet(reference=Reference(image, mask))`` from the chosen layers: the image
  converted as the segmented image is (the widget's intensity normalisation), the mask = labels > 0
  (every object of the layer together); for 3-D layers the slice the viewer shows. Picking a
  reference image picks a labels layer of the same size when none is chosen. An empty mask, sizes
  that differ, or a layer that went away give a message (status line and preview notes), and the
  reference is left out.

Text and reference join the clicked points, box, scribbles and mask prompt of the current object in
one :class:`~segprompt.prompts.PromptSet` (the widget's ``prompt_set``): the universal decoder takes
every kind together, as SEEM's demo combines "Stroke", "Example" and "Text"
(UX-Decoder/Segment-Everything-Everywhere-All-At-Once ``demo/seem/app.py``, ``tasks/interactive.py``).
The decode, reference encoding included (seconds on a CPU), runs in the widget's decode worker
thread, never in the GUI thread; its mask goes to the ``segprompt preview`` labels layer, and
Commit writes it into ``<image> objects`` as for clicks.
"""

from __future__ import annotations

import re
import time
from typing import Any, Sequence

import numpy as np
from qtpy.QtCore import QObject, QStringListModel, Qt
from qtpy.QtWidgets import QCompleter

from segprompt.prompts import Reference

#: a text's words as the closed-vocabulary text encoder splits them
#: (:class:`segprompt.universal.text.VocabularyTextEncoder`)
WORD = re.compile(r"[a-z0-9\-]+")

TEXT_HELP = "what to segment: a class word, e.g. star"
REFERENCE_HELP = (
    "an example: an image layer and a labels layer marking the object in it (labels > 0); "
    "the model segments the same kind of object in the current image"
)


def known_words(segmenter: Any) -> tuple[str, ...] | None:
    """The words a closed-vocabulary text encoder knows (``universal-tiny``), or None when the model
    takes any text (an open-vocabulary text tower) or says nothing about it."""
    from segprompt.models.wrapper import innermost

    text = getattr(getattr(innermost(segmenter), "model", None), "text", None)
    words = getattr(text, "words", None)
    return tuple(words) if words else None


def has_known_word(text: str, words: Sequence[str] | None) -> bool:
    """Whether ``text`` holds a word of ``words`` (always True for an open vocabulary)."""
    if words is None:
        return True
    vocab = set(words)
    return any(w in vocab for w in WORD.findall(text.lower()))


class UniversalPrompts(QObject):
    """The controller of the widget's text field and reference pickers (see the module doc).

    Args:
        widget: the :class:`viewers.widget.SegpromptWidget` whose ``text_row`` / ``text_edit`` and
            ``reference_row`` / ``ref_image_combo`` / ``ref_mask_combo`` it drives.
    """

    def __init__(self, widget: Any) -> None:
        super().__init__(widget)
        self.widget = widget
        self.words: tuple[str, ...] | None = None
        self._notes: list[str] = []
        self._rgb_cache: dict[str, Any] = {}
        self._completer = QCompleter(QStringListModel([], self), widget.text_edit)
        self._completer.setCaseSensitivity(Qt.CaseInsensitive)
        widget.text_edit.setCompleter(self._completer)
        widget.text_edit.textChanged.connect(self._on_text)
        widget.text_edit.returnPressed.connect(widget.segment_now)
        widget.ref_image_combo.currentIndexChanged.connect(self._on_reference_image)
        widget.ref_mask_combo.currentIndexChanged.connect(lambda _: self._reference_changed())

    # -- which model takes what --------------------------------------------------------------
    def takers(self, kind: str) -> list[str]:
        """Labels of the picker's entries known to take prompt ``kind``."""
        choices = getattr(self.widget, "_choices", [])  # not listed yet while the widget is built
        return [c.label for c in choices if getattr(c, "accepts", None) is not None and kind in c.accepts]

    def _unavailable(self, kind: str, what: str) -> str:
        w = self.widget
        takers = self.takers(kind)
        who = ", ".join(takers) if takers else "none in the model list (a universal checkpoint: Open checkpoint...)"
        if w.session.segmenter is None:
            return f"{what} need a model that takes them: {who}. Pick one and press Load."
        kinds = ", ".join(sorted(w.session.accepts)) or "nothing"
        return f"{w.session.model_label} takes no {what} (it takes {kinds}); models that do: {who}"

    def update_for_model(self) -> None:
        """Enable or disable the fields for the loaded model (tooltips say why); called by the
        widget whenever the model changes."""
        w = self.widget
        accepts = w.session.accepts
        text_ok, ref_ok = "text" in accepts, "reference" in accepts
        self.words = known_words(w.session.segmenter) if text_ok else None
        for row in (w.text_row, w.reference_row):
            row.setHidden(False)
        w.text_row.setEnabled(text_ok)
        w.reference_row.setEnabled(ref_ok)
        if text_ok:
            tip = TEXT_HELP + (f"; this model knows: {', '.join(self.words)}" if self.words else " or a short phrase") + " (Enter segments)"
            w.text_edit.setPlaceholderText(f"e.g. {self.words[0]}" if self.words else "what to segment, e.g. polyp")
        else:
            tip = self._unavailable("text", "text prompts")
            w.text_edit.setPlaceholderText("needs a model that takes text")
        w.text_row.setToolTip(tip)
        w.text_edit.setToolTip(tip)
        self._completer.model().setStringList(list(self.words or ()))
        tip = REFERENCE_HELP if ref_ok else self._unavailable("reference", "reference prompts")
        for x in (w.reference_row, w.ref_image_combo, w.ref_mask_combo):
            x.setToolTip(tip)

    # -- text ----------------------------------------------------------------------------------
    def _on_text(self, text: str) -> None:
        w = self.widget
        if "text" not in w.session.accepts or not text.strip() or has_known_word(text, self.words):
            w._prompt_changed()
            return
        # a closed vocabulary and no known word yet (a word half typed): the object's prompts did
        # change (a Commit decodes again), but no live decode that could only fail
        w._t_prompt = time.monotonic()
        w._generation += 1
        w._debounce.stop()
        w.set_status(f"text {text.strip()!r}: no word {w.session.model_label} knows yet ({', '.join(self.words or ())}); Enter segments anyway")

    # -- reference -----------------------------------------------------------------------------
    def _on_reference_image(self, _index: int) -> None:
        w = self.widget
        name = w.ref_image_combo.currentText()
        if name and not w.ref_mask_combo.currentText():
            match = self._matching_labels(name)
            if match is not None:
                w.ref_mask_combo.blockSignals(True)
                w.ref_mask_combo.setCurrentIndex(w.ref_mask_combo.findText(match))
                w.ref_mask_combo.blockSignals(False)
        self._reference_changed()

    def _matching_labels(self, image_name: str) -> str | None:
        """A labels layer of the reference image's size, preferring one named after it."""
        w = self.widget
        try:
            image = w.viewer.layers[image_name]
        except KeyError:
            return None
        size = self._spatial(image)[-2:]
        names = [w.ref_mask_combo.itemText(i) for i in range(w.ref_mask_combo.count())]
        fits = [n for n in names if n and n in w.viewer.layers and tuple(np.shape(w.viewer.layers[n].data))[-2:] == size]
        named = [n for n in fits if n.startswith(image_name)]
        return (named or fits or [None])[0]

    def _reference_changed(self) -> None:
        w = self.widget
        if "reference" not in w.session.accepts:
            return
        self.reference()  # says now what is wrong with the choice, if anything
        if self._notes:
            w.set_status(self._notes[0])
        w._prompt_changed(immediate=True)

    @staticmethod
    def _spatial(layer: Any) -> tuple[int, ...]:
        shape = tuple(int(s) for s in np.shape(layer.data[0] if getattr(layer, "multiscale", False) else layer.data))
        return shape[:-1] if getattr(layer, "rgb", False) else shape

    def _plane(self, layer: Any) -> tuple[np.ndarray, int]:
        """The layer's 2-D plane the viewer shows and its slice index (the whole layer and 0 when
        the layer is 2-D)."""
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        spatial = self._spatial(layer)
        if len(spatial) == 2:
            return np.asarray(data), 0
        if len(spatial) != 3:
            raise ValueError(f"layer {layer.name!r} has shape {tuple(np.shape(data))}; a reference is a 2-D image or a slice of a 3-D stack")
        try:
            z = int(round(float(np.asarray(layer.world_to_data(self.widget.viewer.dims.point))[-3])))
        except Exception:  # noqa: BLE001 - fall back to the first slice
            z = 0
        z = min(max(z, 0), spatial[0] - 1)
        return np.asarray(data[z]), z

    def _rgb(self, layer: Any) -> np.ndarray:
        """The reference image as (H, W, 3) uint8, converted as the segmented image is (the
        widget's intensity normalisation); the last one is kept (prompt_set asks on every decode)."""
        from segprompt.data.io import to_rgb_uint8

        from viewers.widget import NORMALISATIONS

        norm, from_layer = NORMALISATIONS[self.widget.norm_combo.currentText()]
        window = tuple(float(v) for v in layer.contrast_limits) if from_layer else None
        plane, z = self._plane(layer)
        key = (id(layer), id(layer.data), z, norm, window)
        if self._rgb_cache.get("key") != key:
            self._rgb_cache = {"key": key, "rgb": to_rgb_uint8(plane, normalisation=norm, window=window)}  # type: ignore[arg-type]
        return self._rgb_cache["rgb"]

    def reference(self) -> Reference | None:
        """The chosen reference, or None (nothing chosen, or a problem, kept in :meth:`notes`)."""
        w = self.widget
        self._notes = []
        name_i, name_m = w.ref_image_combo.currentText(), w.ref_mask_combo.currentText()
        if not name_i and not name_m:
            return None
        if not name_i or not name_m:
            self._notes = [f"reference: pick {'an example image' if not name_i else 'a labels layer marking the object in ' + repr(name_i)} too"]
            return None
        layers = w.viewer.layers
        if name_i not in layers or name_m not in layers:
            self._notes = [f"reference: layer {name_i if name_i not in layers else name_m!r} is gone"]
            return None
        try:
            image = self._rgb(layers[name_i])
            mask = self._plane(layers[name_m])[0] > 0
        except Exception as exc:  # noqa: BLE001 - shown, never raised, while the user picks
            self._notes = [f"reference not usable: {exc}"]
            return None
        if mask.shape != image.shape[:2]:
            self._notes = [
                f"reference mask {name_m!r} is {mask.shape[0]}x{mask.shape[1]} but image {name_i!r} is "
                f"{image.shape[0]}x{image.shape[1]}: pick a labels layer drawn on that image"
            ]
            return None
        if not mask.any():
            self._notes = [f"reference mask {name_m!r} is empty: paint the example object in it (or commit one), then Segment"]
            return None
        return Reference(image, mask)

    def notes(self) -> list[str]:
        """What the last :meth:`reference` found wrong (shown with the preview)."""
        return list(self._notes)


__all__ = ["UniversalPrompts", "has_known_word", "known_words"]
