"""Automated point-prompt strategies: where to click, given the ground-truth mask.

Two kinds, each registered by name (``create_strategy("centre")``):

* **placement** strategies, ``strategy(mask, image, rng, n_positive, n_negative) -> Points``:
  an *ordered* point set (positives first, then positives and negatives interleaved in
  proportion); a benchmark step k uses the first k points, so the order is part of the strategy.
* **correction** strategies, ``strategy.correct(gt, pred, rng, image=None, *, clicked=None) -> Points``:
  the click(s) to add after a prediction, for iterative prompting (``clicked``: the points
  placed so far); they start from :meth:`first`.

The PointPrompt study's strategies carry its names and follow its code (olivesgatech/PointPrompt,
``point_sampling/point_selection.py``, ``intelligent_point_selection.py`` and ``main.py``):
``random``, ``kmedoids``, ``shi-tomasi``, ``entropy``, ``max-distance``, ``saliency`` and ``obj``
(per connected component k-medoids). As in the study, their negatives come from the *whole*
background (its ``mode='ex'`` runs the same rule on ``1 - mask``), and ``entropy``,
``max-distance`` and ``saliency`` return their seed (probe) point *plus* n points on each side
that has a budget (``seed_points = 1``: n + 1 inclusion and n + 1 exclusion points for a budget
of n + n, as ``main.py`` concatenates ``inc_init`` with the n chosen points). ``saliency``
prompts the model once, so it is called with ``predict=`` (:func:`needs_model`). The rules
we deliberately do not copy (transposed (x, y) / (row, col) in entropy and max-distance, ...)
are listed in each class. Our earlier rules stay available under their own names:
``kmedoids-ring``, ``shi-tomasi-ring``, ``entropy-spread``, ``max-distance-spread`` (negatives
in a ring around the object, spread-out choices) and ``saliency-oracle`` (saliency sampled
inside the ground truth); ``centre`` and ``grid`` are not from the study.

Corrections: ``microsam`` (micro-sam's ``IterativePromptGenerator``), ``ritm`` (RITM's
``Clicker``) and ``error-centre``.

Conventions: masks are bool (H, W) indexed ``mask[y, x]``; points are ``(x, y)`` =
(column, row) of the pixel; the same ``rng`` state gives the same points. An empty mask
cannot hold a positive point: placement strategies raise :class:`PromptError` for it, and a
mask covering the whole image cannot hold a negative one. A placement strategy returns
``n + seed_points`` points for each side with a budget n > 0 (none for n = 0); a point repeats
only when its region has fewer pixels than points asked, and then the distinct points cycle
(raster order where the study tiles its pixel list).

Layout (each module one job; importing this package registers every strategy):
:mod:`~pointprompt.strategies.base` (registry, protocol, checks, ordering, the region-strategy
base), :mod:`~pointprompt.strategies.geometry` (distance maps, farthest points, k-medoids),
:mod:`~pointprompt.strategies.study` (the study's placement rules),
:mod:`~pointprompt.strategies.salient` (``saliency``, ``saliency-oracle``),
:mod:`~pointprompt.strategies.variants` (``centre``, ``grid``, the ``-ring`` / ``-spread``
rules) and :mod:`~pointprompt.strategies.clickers` (corrections). Every name importable from
the single module this package replaces is importable from here.
"""

from __future__ import annotations

from pointprompt.strategies.base import (
    STRATEGIES,
    PlacementStrategy,
    _background,
    _cycle,
    _grey,
    _negative_region,
    _pick,
    _RegionStrategy,
    _subsample,
    _xy,
    check_budget,
    check_mask,
    create_strategy,
    interleave,
    is_correction,
    list_strategies,
    needs_model,
    register_strategy,
)
from pointprompt.strategies.clickers import (
    ErrorCentreCorrection,
    MicroSamCorrection,
    RitmClicker,
    _Correction,
)
from pointprompt.strategies.geometry import (
    _MEMO,
    _cross,
    _distance_inside,
    _distance_outside,
    _MaskMemo,
    _pairwise,
    _ring,
    diameter,
    farthest_points,
    kmedoids,
    kmedoids_heuristic,
)
from pointprompt.strategies.salient import (
    SaliencyOracleStrategy,
    SaliencyStrategy,
    _box_slices,
    _call_predict,
    _check_predict,
    _draw_tiers,
    _random_subbox,
)
from pointprompt.strategies.study import (
    EntropyStrategy,
    KMedoidsStrategy,
    MaxDistanceStrategy,
    ObjectKMedoidsStrategy,
    RandomStrategy,
    ShiTomasiStrategy,
    _good_features,
    _pp_candidates,
    _pp_diameter,
    _pp_kmedoid_points,
)
from pointprompt.strategies.variants import (
    CentreStrategy,
    EntropySpreadStrategy,
    GridStrategy,
    KMedoidsRingStrategy,
    MaxDistanceSpreadStrategy,
    ShiTomasiRingStrategy,
    _erode_cascade,
    _kmedoid_points,
    _lattice,
    _seed_and_candidates,
    _spread_order,
)

__all__ = [
    "PlacementStrategy",
    "STRATEGIES",
    "register_strategy",
    "create_strategy",
    "list_strategies",
    "check_mask",
    "interleave",
    "is_correction",
    "needs_model",
    "check_budget",
    "MicroSamCorrection",
    "RitmClicker",
    "ErrorCentreCorrection",
    "farthest_points",
    "diameter",
    "kmedoids",
    "kmedoids_heuristic",
    "SaliencyStrategy",
    "SaliencyOracleStrategy",
    "RandomStrategy",
    "KMedoidsStrategy",
    "ObjectKMedoidsStrategy",
    "ShiTomasiStrategy",
    "EntropyStrategy",
    "MaxDistanceStrategy",
    "CentreStrategy",
    "GridStrategy",
    "KMedoidsRingStrategy",
    "ShiTomasiRingStrategy",
    "EntropySpreadStrategy",
    "MaxDistanceSpreadStrategy",
]

# private helpers, importable from here as before the split (some tests import them)
_COMPAT = (
    _pick,
    _xy,
    _cycle,
    _negative_region,
    _grey,
    _subsample,
    _RegionStrategy,
    _background,
    _Correction,
    _MaskMemo,
    _MEMO,
    _distance_inside,
    _distance_outside,
    _ring,
    _cross,
    _pairwise,
    _box_slices,
    _random_subbox,
    _check_predict,
    _call_predict,
    _draw_tiers,
    _pp_kmedoid_points,
    _pp_diameter,
    _pp_candidates,
    _good_features,
    _lattice,
    _kmedoid_points,
    _erode_cascade,
    _spread_order,
    _seed_and_candidates,
)
