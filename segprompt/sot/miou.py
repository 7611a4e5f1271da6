"""Show-or-Tell's mIoU read from a confusion matrix accumulated with :mod:`segprompt.metrics`.

Accumulate with :class:`segprompt.metrics.ConfusionMatrix` (rows = target, columns = prediction;
pixels whose target is ``ignore_index`` are skipped, as SoT's ``_fast_hist`` skips targets outside
``[0, n_classes)``), then:

>>> from segprompt.metrics import ConfusionMatrix
>>> from segprompt.sot import sot_miou
>>> cm = ConfusionMatrix(num_classes=3, ignore_index=255)
>>> _ = cm.update([[0, 1, 2, 2]], [[0, 1, 1, 255]])
>>> miou, per_class = sot_miou(cm, has_background=True)
>>> round(miou, 3), [None if v != v else round(float(v), 3) for v in per_class]
(0.5, [1.0, 0.5, None])

Where SoT (FocoosAI/ShowOrTell ``common/evaluation.py: SegmentationMetrics.get_results``) differs
from :meth:`ConfusionMatrix.miou`:

- only classes with ground-truth pixels enter the mean (a class predicted but absent from every
  target is left out; ``ConfusionMatrix.miou`` counts it as IoU 0), and their per-class IoU is NaN
  (SoT prints ``"X"``);
- where the dataset has an unprompted background (SoT's ``ignore_background``), background leaves
  the mean: SoT slices ``iu[present][1:]``, i.e. drops the first class present in the targets,
  which is background whenever any target pixel is background (``background_rule="sot"``, the
  default); ``background_rule="class0"`` drops class 0 itself (they differ only when no target
  pixel is background);
- SoT adds ``1e-6`` to each IoU denominator; we do not (a relative difference below ``1e-6`` on
  every class that enters the mean).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from segprompt.errors import ConfigError, DataError
from segprompt.metrics import ConfusionMatrix

__all__ = ["sot_miou"]


def sot_miou(
    conf: ConfusionMatrix | Any, has_background: bool, *, background_rule: Literal["sot", "class0"] = "sot"
) -> tuple[float, np.ndarray]:
    """SoT's mean IoU and per-class IoU of a ``(C, C)`` confusion matrix (rows = target).

    Args:
        conf: a :class:`~segprompt.metrics.ConfusionMatrix` or its ``(C, C)`` counts.
        has_background: label 0 is an unprompted background class (SoT's ``ignore_background``).
        background_rule: ``"sot"`` drops the first class present in the targets (SoT's slicing),
            ``"class0"`` drops class 0.

    Returns:
        ``(miou, per_class)``: ``miou`` a float (NaN when no class is left), ``per_class`` float64
        ``(C,)`` with NaN for classes without ground-truth pixels.
    """
    if background_rule not in ("sot", "class0"):
        raise ConfigError(f"background_rule must be 'sot' or 'class0', got {background_rule!r}")
    m = conf.matrix if isinstance(conf, ConfusionMatrix) else np.asarray(conf)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise DataError(f"a confusion matrix must be square (C, C), got shape {m.shape}")
    m = m.astype(np.float64)
    tp = np.diag(m)
    gt = m.sum(axis=1)
    union = gt + m.sum(axis=0) - tp
    present = gt > 0
    per_class = np.full(m.shape[0], np.nan)
    np.divide(tp, union, out=per_class, where=present)
    if has_background and background_rule == "sot":
        vals = per_class[present][1:]
    elif has_background:
        vals = per_class[1:][present[1:]]
    else:
        vals = per_class[present]
    return (float(vals.mean()) if vals.size else float("nan")), per_class
