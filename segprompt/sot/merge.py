"""Multi-class label maps from one-class probability maps: Show-or-Tell's merge and a calibrated one.

A one-class method (a visual-reference method run with one class's references, or a text method run
with one class name) gives one probability map per class. Show-or-Tell (SoT, FocoosAI/ShowOrTell,
``models/base_model.py: BaseModel.evaluate``) turns the stack into a label map like this:

>>> import numpy as np
>>> from segprompt.sot import merge_sot
>>> p = np.array([[[0.9, 0.1]], [[0.5, 0.15]]])      # (K=2, H=1, W=2)
>>> merge_sot(p, has_background=True).tolist()         # 0 = background, k + 1 = class k
[[1, 0]]
>>> merge_sot(p, has_background=False).tolist()        # no background: k = class k
[[0, 1]]

Label numbering follows SoT's ``class_ids``: where the dataset has an unprompted background class
(SoT's ``ignore_background=True``: ADE20K, the ten "general" datasets), map ``prob_maps[k]`` becomes
label ``k + 1`` and ``0`` is background; where it has none (SoT's ``ignore_background=False``:
Cityscapes, and Pascal VOC, whose background is a prompted class with its own references there),
map ``k`` is label ``k`` and no threshold is applied. The label of a map is thus the dataset's
class id when the maps are stacked in class-id order (background excluded where it is not prompted).

:func:`merge_calibrated` is our calibrated variant (not in SoT): per-class logits
``(logit(p_k) - logit(t_k)) / T_k`` against a background logit of 0, so class ``k`` can beat the
background only where ``p_k > t_k``; temperatures ``T`` and thresholds ``t`` come from
:func:`segprompt.sot.calibration.fit_temperature`. With ``T = 1`` and ``t = 0.2`` it gives
:func:`merge_sot`'s labels (float64 inputs; see :func:`merge_calibrated`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from segprompt.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from segprompt.sot.calibration import Calibration

__all__ = ["SOT_THRESHOLD", "check_prob_maps", "merge_calibrated", "merge_sot"]

SOT_THRESHOLD = 0.2
"""SoT's fixed background threshold: probabilities ``<= 0.2`` are zeroed where the dataset has background."""


def check_prob_maps(prob_maps: Any, name: str = "prob_maps") -> np.ndarray:
    """``prob_maps`` as a float ``(K, H, W)`` array with values in ``[0, 1]`` (dtype kept: float32 stays float32).

    Raises:
        DataError: not 3-D, not floating point, NaN/inf, or a value outside ``[0, 1]``.
    """
    p = np.asarray(prob_maps)
    if p.ndim != 3:
        raise DataError(f"{name} must be (K, H, W) per-class probability maps, got shape {p.shape}")
    if p.dtype.kind != "f":
        raise DataError(f"{name} must be floating point probabilities, got dtype {p.dtype}; cast it explicitly")
    if p.size:
        if not np.isfinite(p).all():
            raise DataError(f"{name} holds NaN or infinite values")
        lo, hi = float(p.min()), float(p.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{name} must hold probabilities in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                "apply the model's sigmoid (or softmax) first"
            )
    return p


def merge_sot(prob_maps: Any, has_background: bool, threshold: float = SOT_THRESHOLD) -> np.ndarray:
    """SoT's merge of per-class probability maps into one label map.

    As SoT ``models/base_model.py: BaseModel.evaluate``: where the dataset has background, a zero
    map is stacked first and every probability ``<= threshold`` is set to 0 (a pixel keeps its
    probability only when strictly above the threshold; the comparison is done in the input's
    dtype, as torch does, so float32 ``0.2`` is zeroed); then the per-pixel argmax, ties going to
    the first index (numpy / torch ``argmax``), so a pixel where every class is ``<= threshold``,
    or where a class ties the zero map, is background. Without background: plain argmax of the
    maps, no threshold.

    Args:
        prob_maps: ``(K, H, W)`` float probabilities in ``[0, 1]``, one map per prompted class in
            class-id order. ``K = 0`` is allowed only with background (all pixels background).
        has_background: the dataset has an unprompted background class 0 (SoT's
            ``ignore_background``).
        threshold: SoT's 0.2; only used with background.

    Returns:
        ``(H, W)`` int64 labels: with background ``0`` = background and ``k + 1`` = ``prob_maps[k]``;
        without background ``k`` = ``prob_maps[k]``.
    """
    p = check_prob_maps(prob_maps)
    if not has_background:
        if p.shape[0] == 0:
            raise DataError("prob_maps has no class map and the dataset has no background: nothing to merge")
        return np.argmax(p, axis=0).astype(np.int64)
    t = float(threshold)
    if not 0.0 <= t < 1.0:
        raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
    kept = np.where(p > t, p, np.zeros((), dtype=p.dtype))
    scores = np.concatenate([np.zeros((1,) + p.shape[1:], dtype=p.dtype), kept], axis=0)
    return np.argmax(scores, axis=0).astype(np.int64)


def merge_calibrated(
    prob_maps: Any,
    calibration: Calibration | None = None,
    has_background: bool | None = None,
    *,
    temperature: float | Sequence[float] = 1.0,
    threshold: float | Sequence[float] = SOT_THRESHOLD,
) -> np.ndarray:
    """Label map from calibrated per-class posteriors: argmax of ``calibration.apply(prob_maps)``.

    Either pass a fitted :class:`~segprompt.sot.calibration.Calibration`, or ``temperature`` (one
    value or one per class) and, with background, ``threshold`` (one or one per class) with
    ``has_background``. Labels are numbered as in :func:`merge_sot`; ties go to the first index
    (background first). With ``temperature=1`` and ``threshold=0.2`` the labels equal
    :func:`merge_sot`'s except where a probability lies exactly at the threshold in float32
    (the calibrated logits are computed in float64) or two probabilities differ only within
    ``1e-12`` of 0 or 1 (logits are clipped there).

    Raises:
        ConfigError: ``has_background`` contradicts the calibration, or is missing without one.
        DataError: bad probability maps, or their class count differs from the calibration's.
    """
    from segprompt.sot.calibration import Calibration

    if calibration is None:
        if has_background is None:
            raise ConfigError("merge_calibrated needs has_background when no calibration is given")
        calibration = Calibration.from_parameters(temperature, threshold, has_background=bool(has_background))
    elif has_background is not None and bool(has_background) != calibration.has_background:
        raise ConfigError(
            f"has_background={has_background} but the calibration was fitted with has_background={calibration.has_background}"
        )
    posterior = calibration.apply(prob_maps)
    return np.argmax(posterior, axis=0).astype(np.int64)
