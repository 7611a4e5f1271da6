"""A model's own mask fed back as its mask prompt: the refinement pass of SAM and PerSAM, for any Segmenter.

SAM is trained with "iterations where no additional points are sampled, allowing the model to
benefit from its own mask predictions" (Kirillov et al. 2023, appendix A: two of its eleven
training iterations), and PerSAM (Zhang et al. 2023, ``persam.py``) uses that at inference as
its *cascaded post-refinement*: the prompts decoded again with the previous logits as the mask
input. Here a prompt set is decoded as usual, then ``passes`` times again with the same points and
box and its chosen candidate's low-res logits (``Prediction.logits``) as a ``MaskPrompt(kind=
"logits")``. PerSAM's second cascade step (a box around the mask as well) is not done: on the
real sample sets it lowered the IoU (docs/sam_tiny.md).

Which sets are refined: those with clicks (at most ``max_clicks``, by default one) whose mask prompt, if
any, is earlier logits (mask feedback: they are replaced, as in SAM's iterations); a drawn
(binary) mask prompt is the user's and is left alone. When several candidates per set are asked
for (``multimask="all"``, the napari preview's list), each candidate is fed back on its own and
keeps its place; the single-candidate policies feed back the one they chose, and
``Prediction.chosen`` still names that one (with ``multimask=True`` the pass may return another
of the three new candidates). Under f-BRS (``brs=`` as well), a fed-back set of three or more
clicks is refined by f-BRS again at each pass (``max_clicks=None``; the default keeps them apart).
Sets without clicks (a box, a scribble, text or a reference alone) are not fed back.

.. code-block:: python

    seg = create_segmenter("sam-tiny", cascade=True)               # or CascadeSegmenter(create_segmenter(...))
    pred = seg.predict(image, PromptSet(points=Points(xy, labels)))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from segprompt.errors import ConfigError
from segprompt.models.base import ImageState, Prediction, Segmenter
from segprompt.models.wrapper import WrappedSegmenter, wrap_on_request
from segprompt.prompts import MaskPrompt, PromptSet

__all__ = ["CascadeSettings", "CascadeSegmenter", "cascade"]


@dataclass(frozen=True)
class CascadeSettings:
    """Attributes:
        passes: decodes after the first, each fed the previous one's logits.
        max_clicks: refine only sets of at most this many clicks (default 1: the first click, where
            it helps sam-tiny on every real sample set; fed back at every click, sam-tiny's
            corrections fell, docs/sam_tiny.md); None: every set with clicks.
        multimask: each pass decodes three candidates and keeps the highest predicted IoU
            (PerSAM's rule); False (default) takes the single-mask head, as SAM does whenever a
            mask prompt comes with the points.
    """

    passes: int = 1
    max_clicks: int | None = 1
    multimask: bool = False

    def __post_init__(self) -> None:
        if self.passes < 1:
            raise ConfigError(f"cascade passes must be >= 1, got {self.passes}")
        if self.max_clicks is not None and self.max_clicks < 1:
            raise ConfigError(f"cascade max_clicks must be >= 1 or None, got {self.max_clicks}")


class CascadeSegmenter(WrappedSegmenter):
    """``inner`` decoded again with its own logits as the mask prompt (module docstring). ``inner``
    must take mask prompts and return ``Prediction.logits`` (SAM, SAM 2's image predictor,
    universal)."""

    settings_class = CascadeSettings
    option = "cascade"

    def __init__(self, inner: Segmenter, settings: CascadeSettings | None = None, **kwargs: Any) -> None:
        if "mask" not in inner.accepts:
            raise ConfigError(f"model {inner.name!r} takes no mask prompt, so its masks cannot be fed back (cascade)")
        super().__init__(inner, settings, **kwargs)
        #: prompt sets decoded again, for cost tables
        self.refined = 0
        if hasattr(inner, "transform"):  # the resize of the models that have one (zoom-in reads logits masks with it)
            self.transform = inner.transform

    def _eligible(self, s: PromptSet) -> bool:
        if s.points is None or (self.settings.max_clicks is not None and len(s.points) > self.settings.max_clicks):
            return False
        return s.mask is None or s.mask.kind == "logits"

    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        inner_state: ImageState = state.features["inner"]
        pred = self.inner._segment(inner_state, prompts, multimask_output, select)
        if pred.masks.shape[1] > 1 and select in ("first", "best"):
            pred = pred.select(select)  # type: ignore[arg-type]
        rows = [i for i, s in enumerate(prompts) if self._eligible(s)]
        if pred.logits is None:
            raise ConfigError(f"model {self.inner.name!r} returns no logits, so its masks cannot be fed back (cascade)")
        if not rows:
            return pred
        masks, scores, logits = pred.masks.copy(), pred.scores.copy(), pred.logits.copy()
        k = masks.shape[1]
        multi = self.settings.multimask and self.inner.has_multimask
        for _ in range(self.settings.passes):
            again = [replace(prompts[i], mask=MaskPrompt(logits[i, j], kind="logits")) for i in rows for j in range(k)]
            out = self.inner._segment(inner_state, again, multimask_output=multi, select="best" if multi else None)
            if out.masks.shape[1] > 1:
                out = out.select("best")
            masks[rows] = out.masks.reshape(len(rows), k, *masks.shape[2:])
            scores[rows] = out.scores.reshape(len(rows), k)
            logits[rows] = out.logits.reshape(len(rows), k, *logits.shape[2:])  # type: ignore[union-attr]
        self.refined += len(rows)
        return Prediction(masks=masks, scores=scores, logits=logits, chosen=pred.chosen)


def cascade(inner: Segmenter, value: bool | dict | CascadeSettings | None) -> Segmenter:
    """``inner`` wrapped in :class:`CascadeSegmenter` when ``value`` asks for it (True, a dict of
    :class:`CascadeSettings` fields, or settings); ``inner`` itself for None / False."""
    return wrap_on_request(inner, value, CascadeSegmenter)
