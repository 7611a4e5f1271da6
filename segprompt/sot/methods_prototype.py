"""``prototype`` (visual): prototype matching refined by SAM as a Show-or-Tell method.

.. code-block:: python

    from segprompt.sot.methods_prototype import PrototypeMatch
    from segprompt.models import create_segmenter

    method = PrototypeMatch(create_segmenter("prototype"))     # sam-tiny features, sam-tiny refines
    method.prepare(prompts)          # every class's prototype, once per reference set
    out = method.maps(image, prompts)
    out.maps                         # (K, H, W) float32 in [0, 1]
    out.cost                         # encoder passes (target; references not seen before), decoder calls

A class's map is :meth:`segprompt.models.prototype.PrototypeSegmenter.probability` with
``kind="sot"`` (default; ShowOrTell's Matcher / GF-SAM rule: the mean similarity inside the refined
mask, 0 outside) or the kind given as ``probability=``. k references enter as the mean of their
prototypes. :meth:`PrototypeMatch.prepare` computes each class's prototype once and keeps it,
keyed by the class's reference pixels, so every image of a run reuses it; a class not prepared
is computed (and counted) at its first image.

Cost per image: ``encoder_passes`` = 1 (the target through SAM's encoder when SAM's embedding is
the feature) or 2 (SAM + a separate extractor; 1 with ``refine="none"``), plus the references a
call had to encode; ``decoder_calls`` = (1 + cascade) per class with ``refine="sam"`` (3 by default).
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from segprompt.errors import ConfigError
from segprompt.sot.methods import ClassPrompt, Cost, SotMethod, _Meter

__all__ = ["PrototypeMatch"]

_KINDS = ("sot", "similarity", "mask")


def _class_key(p: ClassPrompt) -> str:
    """A digest of a class's references (images and masks): equal references, one prototype."""
    h = hashlib.sha1()
    for image, mask in p.references:
        for arr in (image, np.packbits(mask)):
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


class PrototypeMatch(SotMethod):
    """``prototype``: the k-shot prototype's SoT map (``probability`` kind, default ``"sot"``).

    Args:
        segmenter: a :class:`segprompt.models.prototype.PrototypeSegmenter`.
        probability: ``"sot"`` (default), ``"similarity"`` or ``"mask"``.
        max_classes: how many class prototypes to keep (they are (D,) vectors, a few KB each).
    """

    name, modality, segmenter_name = "prototype", "visual", "prototype"

    def __init__(self, segmenter: Any, probability: str = "sot", max_classes: int = 4096) -> None:
        super().__init__(segmenter)
        if probability not in _KINDS:
            raise ConfigError(f"prototype: probability must be one of {', '.join(_KINDS)}, got {probability!r}")
        self.probability = probability
        self.max_classes = int(max_classes)
        self._prototypes: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        seg = self.segmenter
        extra = {"features": seg.extractor.describe(), "refine": seg.refine} if hasattr(seg, "extractor") else {}
        return {**super().describe(), "probability": self.probability, **extra}

    def _prototype(self, p: ClassPrompt) -> Any:
        from segprompt.prompts import Reference

        key = _class_key(p)
        if key not in self._prototypes:
            if len(self._prototypes) >= self.max_classes:
                self._prototypes.pop(next(iter(self._prototypes)))
            self._prototypes[key] = self.segmenter.prototype([Reference(i, m) for i, m in p.references])
        return self._prototypes[key]

    def _passes(self, before: dict[str, int]) -> tuple[int, int]:
        c = self.segmenter.counts
        enc = (c["image_encoder"] - before["image_encoder"]) + (c["feature_encoder"] - before["feature_encoder"])
        return enc, c["mask_decoder"] - before["mask_decoder"]

    def prepare(self, prompts: Sequence[ClassPrompt]) -> Cost:
        """Every class's prototype, computed once (its reference images through the extractor)."""
        before = dict(self.segmenter.counts)
        with _Meter(self.device) as cost:
            for p in prompts:
                if p.references:
                    self._prototype(p)
        cost.encoder_passes += self._passes(before)[0]
        return cost

    def _maps(self, image: np.ndarray, prompts: list[ClassPrompt], cost: Cost) -> tuple[np.ndarray, dict[int, str]]:
        seg = self.segmenter
        before = dict(seg.counts)
        state = seg.encode(image)
        out = np.stack([seg.probability(state, self._prototype(p), kind=self.probability) for p in prompts])
        enc, dec = self._passes(before)
        cost.encoder_passes += enc
        cost.decoder_calls += dec
        return out, {}
