"""Calibrated per-class posteriors for one-class probability maps (our addition to Show-or-Tell).

SoT merges per-class maps with a fixed 0.2 background threshold on raw scores
(:func:`segprompt.sot.merge.merge_sot`). Here each method gets a temperature ``T`` and, where the
dataset has background, a threshold ``t`` (shared, or one per class), fitted on a validation split
to minimise the negative log-likelihood of the true label under the per-pixel class posterior

    l_k = (logit(p_k) - logit(t_k)) / T_k        for the K prompted classes,
    l_0 = 0                                        for background (only where the dataset has one),
    P(label | pixel) = softmax(l_0, l_1, ..., l_K).

Class ``k`` beats background exactly where ``p_k > t_k``; ``T = 1, t = 0.2`` is SoT's merge, the
starting point of the fit. Without background there is no threshold: ``l_k = logit(p_k) / T_k``
(a shared ``T`` then changes the posterior, not the argmax; per-class ``T`` changes both).

>>> from segprompt.sot import fit_temperature, merge_calibrated
>>> cal = fit_temperature(val_maps, val_labels, ignore_index=255, has_background=True)  # doctest: +SKIP
>>> cal.temperature, cal.threshold, cal.nll_before, cal.nll_after                       # doctest: +SKIP
>>> labels = merge_calibrated(test_maps, cal)                                            # doctest: +SKIP

The fit optimises log-temperatures and logit-thresholds with ``scipy.optimize.minimize``
(L-BFGS-B, analytic gradient) on at most ``max_pixels`` pixels drawn with ``seed``.

:func:`fit_threshold_miou` is the other objective: the background threshold (shared, or per class
by coordinate ascent from the shared one) chosen on a grid to maximise the validation mIoU itself
(SoT's rule, :func:`segprompt.sot.sot_miou`), ``T = 1``. NLL rewards confident, well-ranked
posteriors; mIoU only the argmax. On weak or over-confident models the two disagree: the NLL fit
can push ``t`` to 0.9+ and send almost everything to background, which the mIoU fit never does
unless it scores better on validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from segprompt.errors import ConfigError, DataError
from segprompt.sot.merge import SOT_THRESHOLD, check_prob_maps

__all__ = ["Calibration", "FitKind", "MIOU_GRID", "fit_temperature", "fit_threshold_miou"]

log = logging.getLogger(__name__)

FitKind = Literal["both", "temperature", "threshold"]

_EPS = 1e-12
_LOG_T_BOUNDS = (float(np.log(1e-2)), float(np.log(1e2)))
_LOGIT_BOUNDS = (-30.0, 30.0)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(q) - np.log1p(-q)


def _as_vector(value: float | Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if v.ndim != 1 or v.size == 0:
        raise ConfigError(f"{name} must be a number or a 1-D list of numbers, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ConfigError(f"{name} must be finite, got {v.tolist()}")
    return v


@dataclass(frozen=True, eq=False)
class Calibration:
    """Temperatures and thresholds of one method (see the module docstring for the model).

    Attributes:
        temperature: ``(1,)`` shared or ``(K,)`` per class, > 0.
        threshold: probability thresholds, ``(1,)`` or ``(K,)`` in ``(0, 1)``, where the dataset has
            background; ``None`` without background.
        has_background: labels are ``0`` = background, ``k + 1`` = map ``k``; else ``k`` = map ``k``.
        fit: what was fitted (``"both"``, ``"temperature"``, ``"threshold"``; ``"none"`` when built
            from given parameters).
        nll_before, nll_after: mean NLL on the fitting pixels at SoT's parameters (``T = 1``,
            ``t = 0.2``) and at the fitted ones; NaN when not fitted.
        n_pixels: pixels the fit used; ``converged``: the optimiser's success flag.
    """

    temperature: np.ndarray
    threshold: np.ndarray | None
    has_background: bool
    fit: str = "none"
    nll_before: float = float("nan")
    nll_after: float = float("nan")
    n_pixels: int = 0
    converged: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = _as_vector(self.temperature, "temperature")
        if (t <= 0).any():
            raise ConfigError(f"temperature must be > 0, got {t.tolist()}")
        object.__setattr__(self, "temperature", t)
        if self.has_background:
            th = _as_vector(SOT_THRESHOLD if self.threshold is None else self.threshold, "threshold")
            if ((th <= 0) | (th >= 1)).any():
                raise ConfigError(f"threshold must be in (0, 1), got {th.tolist()}")
            object.__setattr__(self, "threshold", th)
        elif self.threshold is not None:
            raise ConfigError("a threshold needs a dataset with background (has_background=True)")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_parameters(
        cls,
        temperature: float | Sequence[float] = 1.0,
        threshold: float | Sequence[float] | None = SOT_THRESHOLD,
        *,
        has_background: bool,
    ) -> Calibration:
        """Given parameters (no fit); ``threshold`` is ignored without background."""
        return cls(temperature=temperature, threshold=threshold if has_background else None, has_background=has_background)

    @classmethod
    def sot(cls, has_background: bool) -> Calibration:
        """SoT's merge as a posterior: ``T = 1``, ``t = 0.2``."""
        return cls.from_parameters(1.0, SOT_THRESHOLD, has_background=has_background)

    # ------------------------------------------------------------------ use

    def _params_for(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        for name, v in (("temperature", self.temperature), ("threshold", self.threshold)):
            if v is not None and v.size not in (1, k):
                raise DataError(f"the calibration has {v.size} {name} values but the maps have {k} classes")
        temp = np.broadcast_to(self.temperature, (k,))
        c = _logit(np.broadcast_to(self.threshold, (k,))) if self.threshold is not None else np.zeros(k)
        return temp, c

    def logits(self, prob_maps: Any) -> np.ndarray:
        """``(K, H, W)`` float64 class logits ``(logit(p_k) - logit(t_k)) / T_k`` (background logit is 0)."""
        p = check_prob_maps(prob_maps)
        temp, c = self._params_for(p.shape[0])
        return (_logit(p) - c[:, None, None]) / temp[:, None, None]

    def apply(self, prob_maps: Any) -> np.ndarray:
        """Per-pixel class posterior: ``(K + 1, H, W)`` (background first) or ``(K, H, W)``, float64, summing to 1."""
        z = self.logits(prob_maps)
        if self.has_background:
            z = np.concatenate([np.zeros((1,) + z.shape[1:]), z], axis=0)
        if z.shape[0] == 0:
            raise DataError("prob_maps has no class map and the dataset has no background")
        z = z - z.max(axis=0, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=0, keepdims=True)

    def nll(self, prob_maps_list: Sequence[Any], labels_list: Sequence[Any], ignore_index: int | None = 255) -> float:
        """Mean negative log-likelihood of the labels (every non-ignored pixel of every image)."""
        if len(prob_maps_list) != len(labels_list):
            raise DataError(f"{len(prob_maps_list)} probability stacks but {len(labels_list)} label maps")
        total, n = 0.0, 0
        for pm, lab in zip(prob_maps_list, labels_list):  # one image at a time: memory stays per image
            if ignore_index is not None and (np.asarray(lab) == ignore_index).all():
                continue
            u, y, k = _gather([pm], [lab], ignore_index, self.has_background)
            temp, c = self._params_for(k)
            total += _nll(u, y, np.log(temp), c, self.has_background)[0] * y.size
            n += y.size
        if n == 0:
            raise DataError("no labelled pixel to score")
        return total / n


# ---------------------------------------------------------------------------------- fitting


def _gather(
    prob_maps_list: Sequence[Any],
    labels_list: Sequence[Any],
    ignore_index: int | None,
    has_background: bool,
    max_pixels: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(N, K)`` float64 logits of the non-ignored pixels, their ``(N,)`` labels, K.

    With ``max_pixels``, N is at most that: a uniform draw (``seed``) over every non-ignored pixel of
    every image, chosen from the label maps first so that only the drawn pixels are converted.
    """
    if len(prob_maps_list) != len(labels_list):
        raise DataError(f"{len(prob_maps_list)} probability stacks but {len(labels_list)} label maps")
    if not len(prob_maps_list):
        raise DataError("no images to calibrate on")
    keeps, k = [], None
    for i, (pm, lab) in enumerate(zip(prob_maps_list, labels_list)):
        p = np.asarray(pm)
        if p.ndim != 3:
            raise DataError(f"prob_maps[{i}] must be (K, H, W), got shape {p.shape}")
        if k is None:
            k = p.shape[0]
            if k == 0:
                raise DataError("prob_maps[0] has no class map: nothing to calibrate")
        elif p.shape[0] != k:
            raise DataError(f"prob_maps[{i}] has {p.shape[0]} class maps, the first had {k}")
        y = np.asarray(lab)
        if y.dtype.kind not in "iu":
            raise DataError(f"labels[{i}] must be an integer label map, got dtype {y.dtype}")
        if y.shape != p.shape[1:]:
            raise DataError(f"labels[{i}] has shape {y.shape}, its probability maps {p.shape[1:]}")
        keep = np.ones(y.shape, dtype=bool) if ignore_index is None else y != ignore_index
        yk = y[keep]
        n_labels = k + (1 if has_background else 0)
        if yk.size and (yk.min() < 0 or yk.max() >= n_labels):
            bad = int(yk.min() if yk.min() < 0 else yk.max())
            raise DataError(
                f"labels[{i}] holds {bad}, outside [0, {n_labels}) for {k} class maps "
                f"({'0 = background, k + 1 = map k' if has_background else 'k = map k'}) and not ignore_index={ignore_index}"
            )
        keeps.append(np.flatnonzero(keep))
    sizes = np.array([len(kp) for kp in keeps])
    total = int(sizes.sum())
    if total == 0:
        raise DataError("every pixel is ignore_index: nothing to calibrate on")
    if max_pixels is not None and total > max_pixels:
        chosen = np.sort(np.random.default_rng(seed).choice(total, int(max_pixels), replace=False))
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        keeps = [kp[chosen[(chosen >= lo) & (chosen < hi)] - lo] for kp, lo, hi in zip(keeps, bounds[:-1], bounds[1:])]
    us, ys = [], []
    for i, (pm, lab, kp) in enumerate(zip(prob_maps_list, labels_list, keeps)):
        p = check_prob_maps(np.asarray(pm).reshape(int(k or 0), -1)[:, kp][:, None, :], f"prob_maps[{i}]")
        us.append(_logit(p[:, 0, :]).T)
        ys.append(np.asarray(lab).ravel()[kp].astype(np.int64))
    return np.concatenate(us), np.concatenate(ys), int(k or 0)


def _nll(
    u: np.ndarray, y: np.ndarray, log_t: np.ndarray, c: np.ndarray, has_background: bool
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean NLL and its gradient w.r.t. per-class ``log T`` and logit-threshold ``c``."""
    n = y.size
    inv_t = np.exp(-log_t)
    z = (u - c) * inv_t
    full = np.concatenate([np.zeros((n, 1)), z], axis=1) if has_background else z
    m = full.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(full - m).sum(axis=1, keepdims=True)))[:, 0]
    rows = np.arange(n)
    loss = float(np.mean(lse - full[rows, y]))
    g = np.exp(full - lse[:, None])
    g[rows, y] -= 1.0
    g /= n
    gz = g[:, 1:] if has_background else g
    grad_log_t = -(gz * z).sum(axis=0)
    grad_c = -(gz.sum(axis=0) * inv_t)
    return loss, grad_log_t, grad_c


def fit_temperature(
    prob_maps_list: Sequence[Any],
    labels_list: Sequence[Any],
    ignore_index: int | None = 255,
    has_background: bool = True,
    *,
    per_class: bool = False,
    fit: FitKind = "both",
    max_pixels: int = 500_000,
    seed: int = 0,
) -> Calibration:
    """Fit one method's temperature (and background threshold) on a validation split.

    Args:
        prob_maps_list: per image, ``(K, H, W)`` float probabilities of the K prompted classes.
        labels_list: per image, the ``(H, W)`` integer ground truth in :func:`merge_sot`'s
            numbering (``0`` = background, ``k + 1`` = map ``k`` with background; ``k`` without).
        ignore_index: label excluded from the fit (``None``: none).
        has_background: the dataset has an unprompted background class 0.
        per_class: one temperature (and threshold) per class instead of one shared value.
        fit: ``"both"`` (temperature and threshold), ``"temperature"`` (threshold kept at SoT's 0.2)
            or ``"threshold"`` (``T = 1``); without background only the temperature is fitted.
        max_pixels: at most this many non-ignored pixels, drawn uniformly with ``seed``.

    Returns:
        A :class:`Calibration` with ``nll_before`` (SoT's ``T = 1, t = 0.2``) and ``nll_after``
        on the fitting pixels.

    Raises:
        ConfigError: unknown ``fit``, ``fit="threshold"`` without background, ``max_pixels < 1``.
        DataError: inconsistent maps and labels, labels out of range, nothing to fit on.
    """
    from scipy.optimize import minimize

    if fit not in ("both", "temperature", "threshold"):
        raise ConfigError(f"fit must be 'both', 'temperature' or 'threshold', got {fit!r}")
    if not has_background and fit == "threshold":
        raise ConfigError("fit='threshold' needs a dataset with background; without one only the temperature is fitted")
    if int(max_pixels) < 1:
        raise ConfigError(f"max_pixels must be >= 1, got {max_pixels}")
    u, y, k = _gather(prob_maps_list, labels_list, ignore_index, has_background, int(max_pixels), seed)
    fit_t = fit in ("both", "temperature") or not has_background
    fit_c = has_background and fit in ("both", "threshold")
    m = k if per_class else 1
    c0 = float(_logit(np.array(SOT_THRESHOLD))) if has_background else 0.0

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = 0
        log_t = np.zeros(m)
        c = np.full(m, c0)
        if fit_t:
            log_t, i = x[i : i + m], i + m
        if fit_c:
            c = x[i : i + m]
        return np.broadcast_to(log_t, (k,)), np.broadcast_to(c, (k,))

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        log_t, c = unpack(x)
        loss, g_t, g_c = _nll(u, y, log_t, c, has_background)
        if m == 1:
            g_t, g_c = g_t.sum(keepdims=True), g_c.sum(keepdims=True)
        parts = ([g_t] if fit_t else []) + ([g_c] if fit_c else [])
        return loss, np.concatenate(parts)

    x0 = np.concatenate(([np.zeros(m)] if fit_t else []) + ([np.full(m, c0)] if fit_c else []))
    bounds = ([_LOG_T_BOUNDS] * m if fit_t else []) + ([_LOGIT_BOUNDS] * m if fit_c else [])
    before = objective(x0)[0]
    res = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds)
    if not res.success:
        log.warning("calibration fit did not converge: %s", res.message)
    log_t, c = unpack(res.x)
    temp = np.exp(log_t[:m])
    thr = 1.0 / (1.0 + np.exp(-c[:m])) if has_background else None
    return Calibration(
        temperature=temp.copy(),
        threshold=None if thr is None else thr.copy(),
        has_background=has_background,
        fit=fit if has_background else "temperature",
        nll_before=float(before),
        nll_after=float(res.fun),
        n_pixels=int(y.size),
        converged=bool(res.success),
        meta={"per_class": per_class, "iterations": int(res.nit), "seed": seed, "max_pixels": int(max_pixels)},
    )


#: thresholds :func:`fit_threshold_miou` tries: 0.05, 0.10, ..., 0.95 (SoT's 0.2 among them)
MIOU_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _grid_miou(u: np.ndarray, y: np.ndarray, c: np.ndarray) -> float:
    """SoT's mIoU of the argmax of ``[0, u - c]`` over the fitting pixels (background first)."""
    from segprompt.sot.miou import sot_miou

    k = u.shape[1]
    z = np.concatenate([np.zeros((len(y), 1)), u - c[None, :]], axis=1)
    pred = np.argmax(z, axis=1)
    cm = np.bincount(y * (k + 1) + pred, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
    m = sot_miou(cm, True)[0]
    return -1.0 if np.isnan(m) else m


def fit_threshold_miou(
    prob_maps_list: Sequence[Any],
    labels_list: Sequence[Any],
    ignore_index: int | None = 255,
    has_background: bool = True,
    *,
    per_class: bool = False,
    grid: Sequence[float] = MIOU_GRID,
    max_pixels: int = 500_000,
    seed: int = 0,
) -> Calibration:
    """The background threshold that maximises SoT's mIoU on a validation split (``T = 1``).

    Args as :func:`fit_temperature`; ``grid``: thresholds tried (each in (0, 1)). Shared: every
    grid value, the best kept, ties to the one nearest SoT's 0.2. ``per_class``: from the best
    shared threshold, each class's threshold is moved to its best grid value in turn (two passes of
    coordinate ascent). Without background nothing moves the argmax but per-class offsets, which the
    posterior model has no parameter for: the result is SoT's merge (``fit="none"``,
    ``meta["note"]`` says why).

    Returns:
        A :class:`Calibration` with ``fit="threshold-miou"``, ``meta["val_miou_before"]`` (at 0.2)
        and ``meta["val_miou_after"]`` on the fitting pixels, and the NLL at both for comparison.
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or not g.size or ((g <= 0) | (g >= 1)).any():
        raise ConfigError(f"grid must be thresholds in (0, 1), got {list(grid)}")
    if int(max_pixels) < 1:
        raise ConfigError(f"max_pixels must be >= 1, got {max_pixels}")
    if not has_background:
        cal = Calibration.sot(False)
        return Calibration(cal.temperature, None, False, fit="none", meta={"note": "no background: a threshold cannot move the argmax"})
    u, y, k = _gather(prob_maps_list, labels_list, ignore_index, True, int(max_pixels), seed)
    cg = _logit(g)
    order = np.argsort(np.abs(g - SOT_THRESHOLD), kind="stable")  # ties go to the value nearest 0.2
    c0 = float(_logit(np.array(SOT_THRESHOLD)))
    before = _grid_miou(u, y, np.full(k, c0))
    scores = [_grid_miou(u, y, np.full(k, cg[i])) for i in order]
    best_c = np.full(k, cg[order[int(np.argmax(scores))]])
    best = max(scores)
    if per_class:
        for _ in range(2):
            for j in range(k):
                for i in order:
                    trial = best_c.copy()
                    trial[j] = cg[i]
                    m = _grid_miou(u, y, trial)
                    if m > best + 1e-12:
                        best, best_c = m, trial
    thr = 1.0 / (1.0 + np.exp(-best_c))
    zeros = np.zeros(k)
    return Calibration(
        temperature=np.ones(k if per_class else 1),
        threshold=thr if per_class else thr[:1],
        has_background=True,
        fit="threshold-miou",
        nll_before=_nll(u, y, zeros, np.full(k, c0), True)[0],
        nll_after=_nll(u, y, zeros, best_c, True)[0],
        n_pixels=int(y.size),
        meta={"per_class": per_class, "seed": seed, "max_pixels": int(max_pixels), "val_miou_before": before, "val_miou_after": best},
    )
