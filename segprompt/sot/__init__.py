"""Show-or-Tell (SoT): text prompts against visual reference prompts for semantic segmentation.

The protocol core, independent of any model:

- :func:`merge_sot` / :func:`merge_calibrated`: per-class probability maps -> one label map
  (SoT's fixed-threshold merge, and a per-method calibrated one);
- :func:`fit_temperature` -> :class:`Calibration`: temperatures / thresholds fitted on a
  validation split by minimising the NLL of the per-pixel class posterior, or
  :func:`fit_threshold_miou`: the background threshold that maximises the validation mIoU;
- :func:`sample_references` (+ :class:`ReferenceIndex`, :data:`MIN_AREA`): seeded k-shot
  references per class with SoT's minimum-area rule, never an evaluated image;
- :func:`sot_miou`: SoT's mIoU from a :class:`segprompt.metrics.ConfusionMatrix`.

Reference: FocoosAI/ShowOrTell (``models/base_model.py``, ``data/*_fss.py``, ``common/evaluation.py``).
"""

from segprompt.sot.calibration import Calibration, fit_temperature, fit_threshold_miou
from segprompt.sot.merge import SOT_THRESHOLD, check_prob_maps, merge_calibrated, merge_sot
from segprompt.sot.miou import sot_miou
from segprompt.sot.references import (
    MIN_AREA,
    MIN_AREA_AS_RUN,
    Reference,
    ReferenceIndex,
    min_area_for,
    sample_reference_sets,
    sample_references,
)

__all__ = [
    "MIN_AREA",
    "MIN_AREA_AS_RUN",
    "SOT_THRESHOLD",
    "Calibration",
    "Reference",
    "ReferenceIndex",
    "check_prob_maps",
    "fit_temperature",
    "fit_threshold_miou",
    "merge_calibrated",
    "merge_sot",
    "min_area_for",
    "sample_reference_sets",
    "sample_references",
    "sot_miou",
]
