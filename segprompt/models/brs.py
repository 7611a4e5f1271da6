"""f-BRS: backpropagating refinement at inference, so that a mask agrees with its clicks.

A click model's mask does not always contain its positive clicks or leave out its negative ones.
f-BRS (Sofiiuk et al., CVPR 2020; ``isegm/inference/predictors/brs*.py`` in
SamsungLabs/fbrs_interactive_segmentation, also an option of RITM) optimises a per-channel scale
and bias on intermediate features, with the network frozen, until the prediction satisfies the
clicks. Its rules, kept here (``BRSSettings`` defaults are f-BRS's but the regulariser weight):

* refinement starts once a set has more than ``after_clicks`` clicks (f-BRS: 2);
* the features are multiplied by ``1 + scale`` and shifted by ``bias`` (one pair per channel,
  both starting at 0; f-BRS-B's "after ASPP", here the decoder's inputs: universal's mask features
  and scales, SAM's image embedding);
* loss: mean of ``(1 - p)^2`` over the pixels of squares of side ``2 * click_radius + 1`` around
  the positive clicks plus mean of ``p^2`` around the negative ones, ``p`` the probability of the
  kept candidate at the image size; plus ``reg_weight * (sum scale^2 + reg_bias_weight * sum bias^2)``;
* minimised by L-BFGS-B (scipy's ``fmin_l_bfgs_b``, m = 20, at most ``max_evals`` evaluations);
  an evaluation returns a zero gradient (which ends the search) once every click is satisfied
  (``prob_thresh``) or the mask changed by less than ``min_iou_diff`` IoU since the last one;
* the prediction of the lowest loss seen is returned.

Differences, because a Segmenter call is stateless and this is a wrapper: the scale and bias
start from zero at every call (f-BRS carries them over from the previous click); no horizontal
flip averaging (f-BRS's ``with_flip``); the clicks still reach the network at every count (f-BRS
stops feeding clicks to its backbone after 8, ``net_clicks_limit``); the mask is thresholded at
probability 0.5 as every Segmenter's (f-BRS: 0.49); ``reg_weight`` is 0.1 (f-BRS: 1e-3, for its
features: on universal-tiny 1e-3 lets the search satisfy every click with a broken mask; 0.1 was
chosen on the tuning scenes, seed 77, among 0.03 / 0.1 / 0.3). Sets that return several candidates
(one lone click under ``"auto"``) are left as decoded.

.. code-block:: python

    seg = create_segmenter("universal-tiny", brs=True)     # or FeatureBRSSegmenter(create_segmenter(...))
    pred = seg.predict(image, PromptSet(points=Points(xy, labels)))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from segprompt.errors import ConfigError
from segprompt.models.base import ImageState, Prediction, Segmenter
from segprompt.models.wrapper import WrappedSegmenter, wrap_on_request
from segprompt.models.resize import LongestSide
from segprompt.prompts import Points, PromptSet

__all__ = ["BRSSettings", "Refinable", "BRSObjective", "FeatureBRSSegmenter", "click_squares", "refine", "brs"]


@dataclass(frozen=True)
class BRSSettings:
    """f-BRS's parameters (its defaults, ``get_predictor`` and ``ScaleBiasOptimizer``, but ``reg_weight``).

    Attributes:
        after_clicks: sets with at most this many clicks are not refined.
        max_evals: loss evaluations (forward + backward passes of the decoder) per set at most.
        history: L-BFGS memory (``m``).
        reg_weight: weight of the squared scale and bias (f-BRS: 1e-3; see the module docstring).
        reg_bias_weight: extra weight of the bias inside the regulariser.
        prob_thresh: a click is satisfied when its pixels' probability is on its side of this.
        min_iou_diff: stop when the mask moved by less than this IoU since the last evaluation.
        click_radius: half side of the square of pixels each click stands for.
    """

    after_clicks: int = 2
    max_evals: int = 20
    history: int = 20
    reg_weight: float = 0.1
    reg_bias_weight: float = 10.0
    prob_thresh: float = 0.49
    min_iou_diff: float = 0.01
    click_radius: int = 1

    def __post_init__(self) -> None:
        if self.after_clicks < 0:
            raise ConfigError(f"brs after_clicks must be >= 0, got {self.after_clicks}")
        if self.max_evals < 1:
            raise ConfigError(f"brs max_evals must be >= 1, got {self.max_evals}")
        if not 0 < self.prob_thresh < 1:
            raise ConfigError(f"brs prob_thresh must lie in (0, 1), got {self.prob_thresh}")
        if self.click_radius < 0:
            raise ConfigError(f"brs click_radius must be >= 0, got {self.click_radius}")


@dataclass
class Refinable:
    """One prompt set's decode as a function of the image features (what a model offers f-BRS).

    Attributes:
        features: tensors (1, C_j, h_j, w_j) the scale and bias act on, channel by channel.
        decode: features -> ((P, l, l) candidate logits in the padded model frame, (P,) scores);
            differentiable.
        pick: (logits, scores) of the unchanged features -> index of the candidate the model keeps.
        transform: the model's geometry for this image (logits to image pixels).
    """

    features: list[torch.Tensor]
    decode: Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
    pick: Callable[[torch.Tensor, torch.Tensor], int]
    transform: LongestSide


def click_squares(points: Points, radius: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The pixels f-BRS's click maps mark: a square of side ``2 * radius + 1`` about each click,
    inside the image of ``size`` (H, W). Returns (M, 2) ``(x, y)`` pixel coordinates (float64) and
    (M,) bool, True for the positive map; a pixel is listed once per map."""
    h, w = size
    out: dict[bool, set[tuple[int, int]]] = {True: set(), False: set()}
    col = np.clip(np.floor(points.coords[:, 0]).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(points.coords[:, 1]).astype(np.int64), 0, h - 1)
    for x, y, label in zip(col, row, points.labels):
        for yy in range(max(0, y - radius), min(h, y + radius + 1)):
            for xx in range(max(0, x - radius), min(w, x + radius + 1)):
                out[bool(label == 1)].add((xx, yy))
    pos, neg = sorted(out[True]), sorted(out[False])
    coords = np.array(pos + neg, np.float64).reshape(-1, 2)
    return coords, np.array([True] * len(pos) + [False] * len(neg), bool)


class BRSObjective:
    """f-BRS's functor for one set: ``objective(x)`` -> (loss, gradient) for the flat parameters
    ``x`` = (scale of every channel, bias of every channel), as scipy's L-BFGS-B wants them.

    Attributes:
        candidate: index of the candidate refined (the model's choice on the unchanged features,
            made at the first evaluation).
        best: (loss, (l, l) logits, score) of the lowest loss seen.
        evals: evaluations so far.
    """

    def __init__(self, problem: Refinable, points: Points, size: tuple[int, int], settings: BRSSettings) -> None:
        self.problem, self.settings = problem, settings
        self.coords, positive = click_squares(points, settings.click_radius, size)
        self._pos, self._neg = torch.from_numpy(positive), torch.from_numpy(~positive)
        self._n_pos, self._n_neg = max(1, int(positive.sum())), max(1, int((~positive).sum()))
        self.channels = [int(f.shape[1]) for f in problem.features]
        self._total = sum(self.channels)
        #: length of ``x``: a scale and a bias per channel
        self.size = 2 * self._total
        self._threshold = float(np.log(settings.prob_thresh / (1 - settings.prob_thresh)))
        # chosen at the first evaluation, which L-BFGS makes at x = 0 (the unchanged features)
        self.candidate: int | None = None
        self.best: tuple[float, torch.Tensor | None, torch.Tensor | None] = (np.inf, None, None)
        self._last: torch.Tensor | None = None
        self.evals = 0

    def moved(self, scale: torch.Tensor, bias: torch.Tensor) -> list[torch.Tensor]:
        """The features with ``1 + scale`` and ``bias`` applied channel by channel."""
        out, start = [], 0
        for f, c in zip(self.problem.features, self.channels):
            out.append(f * (1 + scale[start : start + c]).view(1, c, 1, 1) + bias[start : start + c].view(1, c, 1, 1))
            start += c
        return out

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        cfg = self.settings
        self.evals += 1
        params = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        scale, bias = params[: self._total], params[self._total :]
        logits, scores = self.problem.decode(self.moved(scale, bias))
        if self.candidate is None:
            self.candidate = self.problem.pick(logits.detach(), scores.detach())
        k = self.candidate
        prob = torch.sigmoid(self.problem.transform.logits_at(logits[k][None, None], self.coords)[0, 0])  # (M,)
        pos_miss, neg_miss = (1 - prob) * self._pos, prob * self._neg
        loss = (pos_miss**2).sum() / self._n_pos + (neg_miss**2).sum() / self._n_neg
        loss = loss + cfg.reg_weight * ((scale**2).sum() + cfg.reg_bias_weight * (bias**2).sum())
        value = float(loss.detach())
        if self.best[1] is None or value < self.best[0]:
            self.best = (value, logits[k].detach(), scores[k].detach())
        zero = np.zeros_like(x)
        if float(pos_miss.detach().max()) < 1 - cfg.prob_thresh and float(neg_miss.detach().max()) < cfg.prob_thresh:
            return value, zero  # every click satisfied
        mask = logits[k].detach() > self._threshold
        if self._last is not None and cfg.min_iou_diff > 0:
            union = int((mask | self._last).sum())
            if union == 0 or int((mask & self._last).sum()) / union > 1 - cfg.min_iou_diff:
                return value, zero  # the mask stopped moving
        self._last = mask
        loss.backward()
        return value, params.grad.numpy().astype(np.float64)  # type: ignore[union-attr]


def refine(problem: Refinable, points: Points, size: tuple[int, int], settings: BRSSettings) -> tuple[torch.Tensor, torch.Tensor, int]:
    """f-BRS on one set: the kept candidate's (l, l) logits and its score after refinement, and the
    number of loss evaluations. ``size``: (H, W) of the image the clicks are in."""
    from scipy.optimize import fmin_l_bfgs_b

    objective = BRSObjective(problem, points, size, settings)
    fmin_l_bfgs_b(objective, np.zeros(objective.size), m=settings.history, factr=0, pgtol=1e-8, maxfun=settings.max_evals, maxiter=2 * settings.max_evals)
    _, logits, score = objective.best
    return logits, score, objective.evals


class FeatureBRSSegmenter(WrappedSegmenter):
    """``inner`` with f-BRS (module docstring). ``inner`` must offer ``refinable(state, prompts)``
    (:class:`~segprompt.models.universal.UniversalSegmenter`, :class:`~segprompt.models.sam.SamSegmenter`)."""

    settings_class = BRSSettings
    option = "brs"

    def __init__(self, inner: Segmenter, settings: BRSSettings | None = None, **kwargs: Any) -> None:
        if not hasattr(inner, "refinable"):
            raise ConfigError(f"model {inner.name!r} has no differentiable decode for f-BRS (it works with universal and SAM models)")
        super().__init__(inner, settings, **kwargs)
        #: sets refined and loss evaluations spent, for cost tables
        self.refined = 0
        self.evaluations = 0

    def transform(self, size: tuple[int, int]) -> LongestSide:
        return self.inner.transform(size)  # type: ignore[attr-defined]

    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        inner_state: ImageState = state.features["inner"]
        pred = self.inner._segment(inner_state, prompts, multimask_output, select)
        if pred.masks.shape[1] != 1:
            return pred  # several candidates asked for: left as decoded
        masks, scores = pred.masks.copy(), pred.scores.copy()
        logits = None if pred.logits is None else pred.logits.copy()
        for i, s in enumerate(prompts):
            if s.points is None or len(s.points) <= self.settings.after_clicks:
                continue
            problem = self.inner.refinable(inner_state, s)  # type: ignore[attr-defined]
            if problem is None:
                continue
            best, score, evals = refine(problem, s.points, state.original_size, self.settings)
            with torch.no_grad():
                masks[i, 0] = (problem.transform.upscale_logits(best[None, None].float())[0, 0] > 0).cpu().numpy()
            scores[i, 0] = float(score)
            if logits is not None and tuple(logits.shape[-2:]) == tuple(best.shape[-2:]):
                logits[i, 0] = best.cpu().numpy()
            self.refined += 1
            self.evaluations += evals
        return Prediction(masks=masks, scores=scores, logits=logits, chosen=pred.chosen)


def brs(inner: Segmenter, value: bool | dict | BRSSettings | None) -> Segmenter:
    """``inner`` wrapped in :class:`FeatureBRSSegmenter` when ``value`` asks for it (True, a dict
    of :class:`BRSSettings` fields, or settings); ``inner`` itself for None / False."""
    return wrap_on_request(inner, value, FeatureBRSSegmenter)
