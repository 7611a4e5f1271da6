"""Show-or-Tell methods on CLIPSeg (:mod:`tunevlseg.segmenter`): ``clipseg`` (text) and
``clipseg-visual`` (visual reference).

.. code-block:: python

    from segprompt.models import create_segmenter
    from segprompt.sot.methods_clipseg import ClipSegText, ClipSegVisual

    seg = create_segmenter("clipseg")                     # both methods share one segmenter
    out = ClipSegText(seg).maps(image, prompts)           # (K, H, W) float32 in [0, 1]
    visual = ClipSegVisual(seg)
    visual.prepare(prompts)                               # every class's reference embedding, once
    out = visual.maps(image, prompts)

* ``clipseg`` (text): the class name is the text prompt, as it is (no template); all K names in one
  batched decoder call on one vision pass; the map is the sigmoid of CLIPSeg's logits resized to
  the image (:meth:`ClipSegSegmenter.probabilities`). A loaded prompt learner (``learner_checkpoint=``
  on the segmenter) prompts the names.
* ``clipseg-visual`` (visual): each class's k references become CLIPSeg visual prompts (the
  segmenter's ``visual_prompt`` rule, default ``crop-blur-darken``); the class's condition is the
  mean of its k conditional embeddings; all K classes in one batched decoder call.

Cost (:class:`~segprompt.sot.methods.Cost`), read from the segmenter's counters:
``encoder_passes`` = images through CLIP's vision tower (the target; reference images whose
embedding is not cached yet) + batched text-tower calls (class names not cached yet: one call for
all of them, then none: the embeddings are kept); ``decoder_calls`` = batched decoder calls
(``ceil(K / max_rows)``). ``prepare`` reports the reference images it encoded.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from segprompt.sot.methods import ClassPrompt, Cost, SotMethod, _Meter

__all__ = ["ClipSegText", "ClipSegVisual"]


class _ClipSegMethod(SotMethod):
    segmenter_name = "clipseg"

    def _counted(self, cost: Cost, before: dict[str, int]) -> None:
        c = self.segmenter.counts
        cost.encoder_passes += (c["image_encoder"] - before["image_encoder"]) + (c["text_encoder"] - before["text_encoder"])
        cost.decoder_calls += c["mask_decoder"] - before["mask_decoder"]

    def _conditions(self, prompts: list[ClassPrompt]) -> list[Any]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        seg = self.segmenter
        return {**super().describe(), "visual_prompt": getattr(seg, "visual_prompt", None), "learner": getattr(seg, "method", None)}

    def _maps(self, image: np.ndarray, prompts: list[ClassPrompt], cost: Cost) -> tuple[np.ndarray, dict[int, str]]:
        seg = self.segmenter
        before = dict(seg.counts)
        state = seg.encode(image)
        maps = seg.probabilities(state, self._conditions(prompts))
        self._counted(cost, before)
        return maps, {}


class ClipSegText(_ClipSegMethod):
    """``clipseg``: the class name as CLIPSeg's text prompt; map = sigmoid of the logits."""

    name, modality = "clipseg", "text"

    def _conditions(self, prompts: list[ClassPrompt]) -> list[Any]:
        return [p.name for p in prompts]


class ClipSegVisual(_ClipSegMethod):
    """``clipseg-visual``: a class's k references as CLIPSeg visual prompts, their embeddings averaged."""

    name, modality = "clipseg-visual", "visual"

    def _conditions(self, prompts: list[ClassPrompt]) -> list[Any]:
        from segprompt.prompts import Reference

        return [[Reference(i, m) for i, m in p.references] for p in prompts]

    def prepare(self, prompts: Sequence[ClassPrompt]) -> Cost:
        """Every class's reference embeddings, computed once and kept in the segmenter."""
        seg = self.segmenter
        before = dict(seg.counts)
        with _Meter(self.device) as cost:
            for refs in self._conditions([p for p in prompts if p.references]):
                seg.reference_embedding(refs)
        self._counted(cost, before)
        return cost
