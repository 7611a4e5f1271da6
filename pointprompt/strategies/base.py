"""What every point strategy shares: the registry, the placement protocol, mask checks, the
positive / negative ordering, pixel draws and the region-strategy base class.

Pixel sets are handled as (row, col) int arrays (``np.argwhere`` order) and turned into
(x, y) = (col, row) exactly once, by :func:`_xy`. The strategies themselves live in
:mod:`~pointprompt.strategies.study`, :mod:`~pointprompt.strategies.salient`,
:mod:`~pointprompt.strategies.variants` and :mod:`~pointprompt.strategies.clickers`; importing
:mod:`pointprompt.strategies` registers them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from segprompt.errors import ConfigError, PromptError
from segprompt.prompts import Points
from segprompt.registry import Registry

from pointprompt.strategies.geometry import _ring, diameter


class PlacementStrategy(Protocol):
    name: str
    kind: str  # "placement"

    def __call__(self, mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator, n_positive: int, n_negative: int) -> Points: ...


STRATEGIES: Registry[Callable[..., Any]] = Registry("point strategy")


def register_strategy(name: str, *aliases: str) -> Callable:
    return STRATEGIES.register(name, *aliases)


def create_strategy(name: str, **kwargs: Any) -> Any:
    """A strategy instance by name (``random``, ``kmedoids``, ``shi-tomasi``, ``entropy``,
    ``max-distance``, ``saliency``, ``obj``, ``centre``, ``grid``, the ``-ring`` / ``-spread`` /
    ``-oracle`` variants, ``microsam``, ``ritm``, ``error-centre``; see :func:`list_strategies`)."""
    return STRATEGIES.get(name)(**kwargs)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


# -- helpers ------------------------------------------------------------------------------
def check_mask(mask: np.ndarray, n_positive: int = 1) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise PromptError(f"a ground-truth mask must be 2-D (H, W), got shape {m.shape}")
    m = m.astype(bool)
    if n_positive > 0 and not m.any():
        raise PromptError("the ground-truth mask is empty: no positive point can be placed")
    return m


def interleave(pos: np.ndarray, neg: np.ndarray) -> Points:
    """Order positives and negatives so that every prefix keeps their ratio; a positive first."""
    n_p, n_n = len(pos), len(neg)
    keys = np.concatenate([(np.arange(n_p) + 0.0) / max(n_p, 1), (np.arange(n_n) + 0.5) / max(n_n, 1)])
    tie = np.concatenate([np.zeros(n_p), np.ones(n_n)])
    order = np.lexsort((tie, keys))
    coords = np.concatenate([pos.reshape(-1, 2), neg.reshape(-1, 2)]).astype(np.float32)[order]
    labels = np.concatenate([np.ones(n_p, np.int64), np.zeros(n_n, np.int64)])[order]
    return Points(coords, labels)


def _pick(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n pixels (x, y) drawn uniformly without replacement; with fewer pixels than n, all of them
    in the given (raster) order, cycled, as PointPrompt's ``extract_random_mask_points`` tiles
    its pixel list (``mask_pixels.repeat(...)[:n]``; no random draw then)."""
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    if len(rows) == 0:
        raise PromptError("no pixel available to place a point")
    idx = np.arange(n) % len(rows) if len(rows) < n else rng.choice(len(rows), size=n, replace=False)
    return np.stack([cols[idx], rows[idx]], axis=1).astype(np.float32)


def _xy(rc: np.ndarray) -> np.ndarray:
    """(M, 2) (row, col) -> (M, 2) float32 (x, y)."""
    return np.asarray(rc).reshape(-1, 2)[:, ::-1].astype(np.float32)


def _cycle(xy: np.ndarray, n: int) -> np.ndarray:
    """Exactly n points: the first n, or the distinct ones repeated cyclically when too few."""
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    if len(xy) == 0:
        raise PromptError("no pixel available to place a point")
    return xy[np.arange(n) % len(xy)] if len(xy) < n else xy[:n]


def _negative_region(m: np.ndarray, ring: float) -> np.ndarray:
    """Where negatives go: background within ``ring`` x diameter (>= 2 px) of the object."""
    if m.all():
        raise PromptError("the mask covers the whole image: no negative point can be placed")
    if not m.any():
        return ~m
    return _ring(m, max(2.0, ring * diameter(m)))


def _grey(image: np.ndarray | None, m: np.ndarray) -> np.ndarray | None:
    from pointprompt.saliency import to_grey

    return None if image is None else to_grey(image, m.shape)


def _subsample(rc: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n rows of rc without replacement, in draw order (all of them, shuffled, if n >= len)."""
    n = min(int(n), len(rc))
    return rc[rng.choice(len(rc), size=n, replace=False)] if n > 0 else rc[:0]


@dataclass
class _RegionStrategy:
    """Base of the strategies that place positives in the mask and negatives in a background region
    by the same rule: subclasses implement ``_place(region, grey, rng, n) -> (n + seed_points, 2)
    (x, y)`` (called only for n > 0). Negatives come from the whole background (``ring=None``,
    PointPrompt's ``1 - mask``) or from a ring ``ring`` x the mask diameter (at least 2 px) wide
    around the object. The grey image is computed once per call (``None`` without an image); a
    ``predict=`` keyword is accepted and ignored, so a caller may pass it to every strategy."""

    ring: float | None = None
    kind: str = "placement"
    needs_model: bool = False
    seed_points: int = 0

    def __call__(self, mask, image, rng, n_positive, n_negative, *, predict=None) -> Points:
        m = check_mask(mask, n_positive)
        neg_region = None
        if n_negative > 0:
            neg_region = _negative_region(m, self.ring) if self.ring is not None else _background(m)
        grey = _grey(image, m)
        pos = self._place(m, grey, rng, n_positive) if n_positive > 0 else np.zeros((0, 2), np.float32)
        neg = self._place(neg_region, grey, rng, n_negative) if neg_region is not None else np.zeros((0, 2), np.float32)
        return interleave(pos, neg)

    def _place(self, region: np.ndarray, grey: np.ndarray | None, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError


def _background(m: np.ndarray) -> np.ndarray:
    """The whole background (PointPrompt's exclusion region); raises for a mask covering the image."""
    if m.all():
        raise PromptError("the mask covers the whole image: no negative point can be placed")
    return ~m


def is_correction(strategy: Any) -> bool:
    return getattr(strategy, "kind", "placement") == "correction"


def needs_model(strategy: Any) -> bool:
    """True for strategies that prompt the model themselves (``saliency``): call them with
    ``predict=`` (a function ``Points -> bool (H, W) mask``)."""
    return bool(getattr(strategy, "needs_model", False))


def check_budget(n_positive: int, n_negative: int) -> None:
    if n_positive < 0 or n_negative < 0 or n_positive + n_negative == 0:
        raise ConfigError(f"point budget must be >= 0 each and > 0 in total, got {n_positive} positive / {n_negative} negative")
