"""Show-or-Tell text method ``maskclip``: MaskCLIP's per-class probabilities (dense open_clip).

.. code-block:: python

    from segprompt.sot.methods import ClassPrompt, create_method

    method = create_method("maskclip")                 # segmenter create_segmenter("maskclip")
    out = method.maps(image, [ClassPrompt("cat"), ClassPrompt("dog")])
    out.maps    # (2, H, W) float32: softmax over the K prompted classes (MaskCLIP's argmax rule)

One image encoding per image (the dense features do not depend on the prompts; with
``inference="slide"`` every crop counts as one encoder pass), and all K classes in one similarity
head call (``decoder_calls`` = 1). Class embeddings are computed once per class name and reused over
images; :meth:`MaskClipText.prepare` computes them ahead and reports that as its own cost
(``encoder_passes`` there counts text-encoder calls: the new names' K x T template texts in
chunks of the segmenter's ``text_batch``). Without ``prepare`` that one-off cost lands in the first
image's ``seconds``.

The maps are each class's probability under the softmax over the classes prompted together (plus
the segmenter's ``background`` channel when it has one), so at a pixel they sum to at most 1; SoT's
fixed rule (zero background map, probabilities <= 0.2 zeroed) then acts on these.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from segprompt.sot.methods import ClassPrompt, Cost, SotMethod, _Meter

__all__ = ["MaskClipText"]


class MaskClipText(SotMethod):
    """``maskclip`` (text): :meth:`MaskClipSegmenter.probability_maps` of the K class names."""

    name, modality, segmenter_name = "maskclip", "text", "maskclip"

    def describe(self) -> dict[str, Any]:
        seg = self.segmenter
        extra = seg.describe() if hasattr(seg, "describe") else {}
        keep = ("model", "templates", "background", "logit_scale", "inference", "key_smoothing", "prompt_denoising")
        return {**super().describe(), **{k: extra[k] for k in keep if k in extra}}

    def prepare(self, prompts: Sequence[ClassPrompt]) -> Cost:
        """Embed every class name once (cached in the segmenter); ``encoder_passes`` = text-encoder calls."""
        seg = self.segmenter
        before = seg.counts["text_encoder"]
        with _Meter(self.device) as cost:
            if prompts:
                seg.text_embeddings([p.name for p in prompts])
        cost.encoder_passes += seg.counts["text_encoder"] - before
        return cost

    def _maps(self, image: np.ndarray, prompts: list[ClassPrompt], cost: Cost) -> tuple[np.ndarray, dict[int, str]]:
        seg = self.segmenter
        before = seg.counts["image_encoder"]
        state = seg.encode(image)
        cost.encoder_passes += seg.counts["image_encoder"] - before
        maps = seg.probability_maps(state, [p.name for p in prompts])
        cost.decoder_calls += 1
        return maps, {}
