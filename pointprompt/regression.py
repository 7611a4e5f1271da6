"""Which interpretable features predict prompting quality: grouped cross-validated regression.

The PointPrompt study reports that interpretable features predict SAM's IoU with R^2 above 0.5
but publishes no regression code. This module makes the claim testable on any feature table
(:func:`pointprompt.features.feature_table`):

* :func:`run_regression` fits a linear model (median imputation + standardisation), a random
  forest and gradient boosting (median imputation) with **grouped** K-fold cross-validation:
  all rows of one image are in the same fold (by default; ``group_by`` / ``--group-by`` also
  groups by annotator, by both, by dataset, or not at all), so no image is ever in both the
  training and the test part. Image and annotator ids are qualified by the dataset, and samples
  that are structures of one source image (``meta["image_id"]``) count as that one image. It reports per
  model the mean and std over folds of the out-of-fold R^2 and MAE, the pooled out-of-fold R^2
  (all held-out predictions together), permutation importances on the held-out folds (averaged
  over folds) and, for the tree models, impurity importances; and per feature the R^2 of a
  single-feature linear fit under the same folds ("which features predict quality").
* :func:`write_regression_report` writes ``regression.csv``, ``importances.csv``,
  ``features_r2.csv``, ``regression.md`` and ``importances.png``.
* :func:`features_for_run` does both for a finished benchmark run folder.

How far to trust it: :func:`reliability_warnings` (stored as ``result["warnings"]``,
written at the top of ``regression.md``, into ``regression.json`` and first in the CLI's output)
flags too few groups (fewer than 2 images per held-out fold: ``n_groups < 2 * n_splits``), too
few rows per feature (``n_rows < 10 * n_features``) and models whose pooled out-of-fold R^2 is
<= 0, i.e. no better than predicting the mean. The importances of such a model are not ranked
(``importances.csv`` keeps the values with an empty rank and the note ``not ranked: R^2 < 0``),
and when no model beats the mean there is no ``importances.png``. R^2 below -1 is displayed
as ``< -1``; the files keep the exact values.

Leakage: the general columns computed from the trajectory's IoU values (best step, first / best
/ last IoU, ...; :data:`pointprompt.features.TARGET_DERIVED`) are left out by default
(``drop_target_derived=True``), since they contain the target of an IoU regression.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
import math
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from segprompt.engine.report import MISSING, markdown_table, write_csv
from segprompt.engine.runfolder import ShardedLog, atomic_write_text
from segprompt.errors import ConfigError, DataError

from pointprompt.features import FEATURE_GROUPS, SOURCE_COLUMN, TARGET_DERIVED, feature_columns, feature_table

log = logging.getLogger(__name__)

__all__ = [
    "MODELS",
    "run_regression",
    "make_groups",
    "parse_group_by",
    "GROUP_BY_CHOICES",
    "reliability_warnings",
    "format_r2",
    "format_summary",
    "importance_figure",
    "write_regression_report",
    "features_for_run",
    "run_feature_table",
    "read_table",
]

MODELS = ("linear", "random_forest", "gradient_boosting")
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "linear": {},
    "random_forest": {"n_estimators": 200, "min_samples_leaf": 2},
    "gradient_boosting": {"n_estimators": 200, "max_depth": 3, "learning_rate": 0.05, "subsample": 0.8},
}

#: Fewer groups (images) than this per held-out fold makes the cross-validation unreliable.
MIN_GROUPS_PER_FOLD = 2
#: Fewer rows than this per feature lets the models fit noise.
MIN_ROWS_PER_FEATURE = 10


def _make_model(name: str, seed: int, params: Mapping[str, Any] | None = None) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    kw = {**DEFAULT_PARAMS.get(name, {}), **(params or {})}
    impute = ("impute", SimpleImputer(strategy="median", keep_empty_features=True))
    if name == "linear":
        return Pipeline([impute, ("scale", StandardScaler()), ("model", LinearRegression(**kw))])
    if name == "random_forest":
        return Pipeline([impute, ("model", RandomForestRegressor(random_state=seed, n_jobs=1, **kw))])
    if name == "gradient_boosting":
        return Pipeline([impute, ("model", GradientBoostingRegressor(random_state=seed, **kw))])
    raise ConfigError(f"unknown regression model {name!r}; use one of {', '.join(MODELS)}")


def _float(v: Any) -> float:
    if v is None or v == "":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _resolve_features(table: Sequence[Mapping[str, Any]], feature_groups: Iterable[str], target: str, drop_target_derived: bool) -> tuple[list[str], dict[str, str]]:
    """Columns named by ``feature_groups`` (group names or column names) that the table holds."""
    wanted: list[str] = []
    for g in feature_groups:
        cols = FEATURE_GROUPS.get(g, [g])
        wanted += [c for c in cols if c not in wanted]
    present = set().union(*(r.keys() for r in table))
    dropped: dict[str, str] = {}
    features = []
    for c in wanted:
        if c == target:
            continue
        if c not in present:
            dropped[c] = "not in the table"
        elif drop_target_derived and c in TARGET_DERIVED:
            dropped[c] = "computed from the trajectory's IoU (leaks the target)"
        else:
            features.append(c)
    if not features:
        raise ConfigError(f"none of the features {wanted} is in the table (columns: {sorted(present)})")
    return features, dropped


#: ``--group-by`` choices and the columns each one groups by (``none``: every row is its own group).
GROUP_BY_CHOICES: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "annotator": ("annotator",),
    "image+annotator": ("image", "annotator"),
    "dataset": ("dataset",),
    "none": (),
}
#: Columns whose values are unique only within a dataset: their group keys carry the dataset.
_PER_DATASET = ("image", "annotator")


def _missing(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def _group_value(r: Mapping[str, Any], c: str) -> Any:
    """The value of row ``r`` that column ``c`` groups by: images by their source image when the
    table has one (:data:`pointprompt.features.SOURCE_COLUMN`), image and annotator ids qualified by
    the dataset; None when the row has none."""
    v = r.get(c)
    if c == "image" and not _missing(r.get(SOURCE_COLUMN)):
        v = r[SOURCE_COLUMN]
    if _missing(v):
        return None
    return (r.get("dataset"), v) if c in _PER_DATASET else v


def parse_group_by(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Columns to group by from a :data:`GROUP_BY_CHOICES` name (``"image+annotator"``, ``"none"``),
    a comma/plus-separated list of columns, or a sequence of columns; None means ``("image",)``."""
    if value is None:
        return ("image",)
    if isinstance(value, str):
        if value in GROUP_BY_CHOICES:
            return GROUP_BY_CHOICES[value]
        return tuple(v.strip() for v in value.replace("+", ",").split(",") if v.strip() and v.strip() != "none")
    return tuple(value)


def make_groups(table: Sequence[Mapping[str, Any]], group_by: Sequence[str]) -> np.ndarray:
    """Group label per row such that rows sharing a value in *any* ``group_by`` column share a group.

    ``("image",)`` groups by image: by the source image (``source_image``, the sample's
    ``meta["image_id"]``) when the table has one, so the structure masks of one CT slice or the
    annotations of one COCO image stay together, else by ``image``. Image ids and annotator ids
    are qualified by ``dataset`` (ids are unique only within a dataset: annotator ``st1`` of polyp
    is not ``st1`` of skin). ``("image", "annotator")`` links rows of the same image and rows of
    the same annotator (connected components), so a fold split keeps both images and annotators
    apart; ``("dataset",)`` holds out whole datasets; ``()`` makes every row its own group (plain
    K-fold). Rows with no value in a column are not linked through that column.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(table)
    if n == 0:
        return np.zeros(0, np.int64)
    keys: dict[tuple[str, Any], int] = {}
    src, dst = [], []
    for i, r in enumerate(table):
        for c in group_by:
            v = _group_value(r, c)
            if v is None:
                continue
            key = (c, v)
            j = keys.setdefault(key, n + len(keys))
            src.append(i)
            dst.append(j)
    size = n + len(keys)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    # renumber the row groups 0..G-1 in order of first appearance
    _, first, inv = np.unique(labels[:n], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inv].astype(np.int64)


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import r2_score

    if len(y) < 2 or np.allclose(y, y[0]):
        return math.nan  # R^2 is undefined on a constant held-out target
    return float(r2_score(y, p))


def _check_inputs(table: Sequence[Mapping[str, Any]], target: str, models: Sequence[str]) -> None:
    if not table:
        raise DataError("the feature table is empty: nothing to regress")
    for m in models:
        if m not in MODELS:
            raise ConfigError(f"unknown regression model {m!r}; use one of {', '.join(MODELS)}")
    if target not in set().union(*(r.keys() for r in table)):
        raise ConfigError(f"target column {target!r} is not in the table")


def _design_matrix(
    table: Sequence[Mapping[str, Any]], target: str, feature_groups: Iterable[str], drop_target_derived: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], dict[str, str]]:
    """(used row indices, X, y, features, dropped): rows with a numeric target, informative columns only."""
    features, dropped = _resolve_features(table, feature_groups, target, drop_target_derived)
    y_all = np.array([_float(r.get(target)) for r in table])
    used = np.flatnonzero(np.isfinite(y_all))
    if len(used) == 0:
        raise DataError(f"no row has a numeric {target!r}")
    rows = [table[i] for i in used]
    X = np.array([[_float(r.get(c)) for c in features] for r in rows], dtype=np.float64).reshape(len(rows), len(features))
    keep = []  # drop columns that carry no information on these rows
    for j, c in enumerate(features):
        fin = X[:, j][np.isfinite(X[:, j])]
        if fin.size == 0:
            dropped[c] = "no values (all NaN)"
        elif np.allclose(fin, fin[0]):
            # constant where present: also constant after median imputation
            dropped[c] = "constant" if fin.size == len(X) else "constant where present (NaN elsewhere)"
        else:
            keep.append(j)
    if not keep:
        raise DataError(f"every feature is empty or constant on these rows: {dropped}")
    return used, X[:, keep], y_all[used], [features[j] for j in keep], dropped


def _grouped_folds(
    rows: Sequence[Mapping[str, Any]], X: np.ndarray, y: np.ndarray, group_by: Sequence[str] | None, n_splits: int, seed: int
) -> tuple[tuple[str, ...], np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """(group_by, group of each row, [(train, test), ...]): grouped K-fold, K cut to the number of groups."""
    from sklearn.model_selection import GroupKFold

    group_by = parse_group_by(group_by)
    for c in group_by:
        if not any(c in r for r in rows):
            raise ConfigError(f"group_by column {c!r} is not in the table")
    groups = make_groups(rows, group_by)
    n_groups = int(groups.max()) + 1
    if n_groups < 2:
        raise DataError(
            f"only {n_groups} group(s) by {group_label(group_by)}: grouped cross-validation needs at least 2 "
            "(use more images, or group by fewer columns)"
        )
    if n_groups < n_splits:
        log.warning("only %d groups by %s: using %d folds instead of %d", n_groups, group_label(group_by), n_groups, n_splits)
        n_splits = n_groups
    if n_splits < 2:
        raise ConfigError(f"n_splits must be >= 2, got {n_splits}")
    cv = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return group_by, groups, list(cv.split(X, y, groups))


def group_label(group_by: Sequence[str]) -> str:
    """``"image / annotator"``, or ``"none"`` for no grouping."""
    return " / ".join(group_by) if group_by else "none"


def _fold_permutation(model: Any, X: np.ndarray, y: np.ndarray, n_repeats: int, seed: int) -> np.ndarray:
    """Permutation importance (drop of R^2) of each column on one held-out fold; NaN where R^2 is undefined."""
    from sklearn.inspection import permutation_importance

    if len(y) < 2 or np.allclose(y, y[0]):
        return np.full(X.shape[1], np.nan)  # R^2 undefined on a constant fold
    return permutation_importance(model, X, y, n_repeats=n_repeats, random_state=seed, n_jobs=1, scoring="r2").importances_mean


def _nan_stat(fn: Any, v: np.ndarray) -> float:
    return float(fn(v)) if np.isfinite(v).any() else math.nan


def _cross_validate(
    name: str, X: np.ndarray, y: np.ndarray, features: Sequence[str], splits: Sequence[tuple[np.ndarray, np.ndarray]],
    seed: int, n_repeats: int, params: Mapping[str, Any] | None, progress: bool = False,
) -> dict[str, Any]:
    """One model under the folds: fold and pooled R^2 / MAE, permutation and impurity importances."""
    from tqdm.auto import tqdm

    oof = np.full(len(y), np.nan)
    fr2, fmae, perm, imp = [], [], [], []
    for k, (train, test) in enumerate(tqdm(splits, desc=f"{name} folds", leave=False, disable=not progress)):
        model = _make_model(name, seed, params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.fit(X[train], y[train])
        pred = model.predict(X[test])
        oof[test] = pred
        fr2.append(_r2(y[test], pred))
        fmae.append(float(np.mean(np.abs(y[test] - pred))))
        if n_repeats > 0:
            perm.append(_fold_permutation(model, X[test], y[test], n_repeats, seed + k))
        est = model.named_steps["model"]
        if hasattr(est, "feature_importances_"):
            imp.append(est.feature_importances_)
    perm_arr = np.array(perm) if perm else np.full((1, len(features)), np.nan)
    imp_mean = np.mean(imp, axis=0) if imp else np.full(len(features), np.nan)
    importances = {
        c: {"permutation_mean": _nan_stat(np.nanmean, perm_arr[:, j]), "permutation_std": _nan_stat(np.nanstd, perm_arr[:, j]), "impurity": float(imp_mean[j])}
        for j, c in enumerate(features)
    }
    fr2a = np.array(fr2)
    r2_pooled = _r2(y, oof)
    return {
        "r2_mean": _nan_stat(np.nanmean, fr2a),
        "r2_std": _nan_stat(np.nanstd, fr2a),
        "r2_pooled": r2_pooled,
        "mae_mean": float(np.mean(fmae)),
        "mae_std": float(np.std(fmae)),
        "mae_pooled": float(np.mean(np.abs(y - oof))),
        "fold_r2": fr2,
        "fold_mae": fmae,
        "ranked": unranked_reason(r2_pooled) is None,
        "importances": importances,
    }


def _fit_logged(name: str, X: np.ndarray, y: np.ndarray, features: Sequence[str], splits: Sequence[tuple[np.ndarray, np.ndarray]],
                seed: int, n_repeats: int, params: Mapping[str, Any] | None, progress: bool) -> dict[str, Any]:
    """:func:`_cross_validate` with its start and its scores logged at INFO."""
    t0 = time.perf_counter()
    log.info("fitting %s ...", name)
    m = _cross_validate(name, X, y, features, splits, seed, n_repeats, params, progress)
    log.info(
        "%s: pooled R^2 %s (fold mean %s, std %s), MAE %.3f%s (%.1f s)", name, format_r2(m["r2_pooled"]), format_r2(m["r2_mean"]),
        format_spread(m["r2_std"]), m["mae_pooled"], "" if m["ranked"] else ": no better than predicting the mean", time.perf_counter() - t0,
    )
    return m


def _univariate(X: np.ndarray, y: np.ndarray, features: Sequence[str], splits: Sequence[tuple[np.ndarray, np.ndarray]], seed: int) -> list[dict[str, Any]]:
    """Per feature: a linear fit on it alone under the same folds (out-of-fold R^2) and its correlation; best first."""
    group_of = {c: g for g, cols in FEATURE_GROUPS.items() for c in cols}
    uni: list[dict[str, Any]] = []
    for j, c in enumerate(features):
        x = X[:, j : j + 1]
        oof = np.full(len(y), np.nan)
        for train, test in splits:
            model = _make_model("linear", seed)
            model.fit(x[train], y[train])
            oof[test] = model.predict(x[test])
        valid = np.isfinite(x[:, 0])
        corr = math.nan
        if valid.sum() >= 2 and np.std(x[valid, 0]) > 0 and np.std(y[valid]) > 0:
            corr = float(np.corrcoef(x[valid, 0], y[valid])[0, 1])
        r2_fit = corr * corr if not math.isnan(corr) else math.nan
        uni.append({"feature": c, "group": group_of.get(c, ""), "r2_cv": _r2(y, oof), "r2_fit": r2_fit, "corr": corr, "n_valid": int(valid.sum())})
    uni.sort(key=lambda r: -np.inf if math.isnan(r["r2_cv"]) else -r["r2_cv"])
    return uni


def run_regression(
    table: Sequence[Mapping[str, Any]],
    target: str = "iou",
    feature_groups: Iterable[str] = ("prompt", "data", "general"),
    models: Sequence[str] = MODELS,
    group_by: Sequence[str] | None = None,
    n_splits: int = 5,
    seed: int = 0,
    n_repeats: int = 5,
    drop_target_derived: bool = True,
    model_params: Mapping[str, Mapping[str, Any]] | None = None,
    univariate: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Grouped cross-validated regression of ``target`` on interpretable features.

    Args:
        table: feature rows (dicts; values may be numbers, None or numeric strings as read from CSV).
        target: the column to predict (rows where it is missing are dropped).
        feature_groups: names from :data:`FEATURE_GROUPS` and/or column names.
        models: any of ``linear``, ``random_forest``, ``gradient_boosting``.
        group_by: columns that define the CV groups (see :func:`make_groups`), or a
            :data:`GROUP_BY_CHOICES` name (``"image"``, ``"annotator"``, ``"image+annotator"``,
            ``"dataset"``, ``"none"``); default ``("image",)``, with or without annotators.
        n_splits: folds; reduced (with a warning) to the number of groups when there are fewer.
        seed: seeds the fold assignment, the models and the permutations.
        n_repeats: permutations per feature and fold for the permutation importance.
        drop_target_derived: leave out the IoU-derived general columns (:data:`TARGET_DERIVED`).
        model_params: per-model keyword overrides, e.g. ``{"random_forest": {"n_estimators": 50}}``.
        univariate: also fit each feature alone (linear) under the same folds.
        progress: show a progress bar over the folds of each model.

    Returns a dict: ``target``, ``features``, ``dropped`` ({column: reason}), ``n_rows``,
    ``n_groups``, ``n_splits``, ``n_splits_requested``, ``group_by``, ``fold`` (held-out fold of
    each used row), ``groups``, ``rows_used`` (indices into ``table``), ``models`` ({name:
    {r2_mean, r2_std, r2_pooled, mae_mean, mae_std, mae_pooled, fold_r2, fold_mae, ranked,
    importances: {feature: {permutation_mean, permutation_std, impurity}}}}), ``best_model``
    (highest pooled R^2), ``importance_model`` (``best_model`` when its pooled R^2 > 0, else
    None: no model's importances are worth ranking), ``univariate`` (rows: feature, group, r2_cv,
    r2_fit, corr, n_valid; best first) and ``warnings`` (see :func:`reliability_warnings`:
    why the numbers may not be trusted; written at the top of the report and first by the CLI).

    Raises DataError with fewer than 2 groups or no usable rows; ConfigError for unknown models
    or features.
    """
    table = list(table)
    _check_inputs(table, target, models)
    used, X, y, features, dropped = _design_matrix(table, target, feature_groups, drop_target_derived)
    group_by, groups, splits = _grouped_folds([table[i] for i in used], X, y, group_by, n_splits, seed)
    n_groups = int(groups.max()) + 1
    fold = np.empty(len(y), np.int64)
    for k, (_, test) in enumerate(splits):
        fold[test] = k
    log.info("regression of %s on %d features: %d rows, %d groups by %s, %d-fold grouped CV", target, len(features), len(y), n_groups, group_label(group_by), len(splits))

    result_models = {
        name: _fit_logged(name, X, y, features, splits, seed, n_repeats, (model_params or {}).get(name), progress) for name in models
    }
    finite = {m: v["r2_pooled"] for m, v in result_models.items() if not math.isnan(v["r2_pooled"])}
    best = max(finite, key=finite.get) if finite else (models[0] if models else None)
    uni: list[dict[str, Any]] = []
    if univariate:
        log.info("single-feature fits: %d features", len(features))
        uni = _univariate(X, y, features, splits, seed)

    result = {
        "target": target,
        "features": features,
        "dropped": dropped,
        "n_rows": int(len(y)),
        "n_groups": n_groups,
        "n_splits": len(splits),
        "n_splits_requested": int(n_splits),
        "group_by": list(group_by),
        "seed": seed,
        "fold": fold.tolist(),
        "groups": groups.tolist(),
        "rows_used": used.tolist(),
        "models": result_models,
        "best_model": best,
        "importance_model": best if best is not None and result_models[best]["ranked"] else None,
        "univariate": uni,
    }
    result["warnings"] = reliability_warnings(result)  # shown by the report and the CLI, not logged twice
    if result["warnings"]:
        log.info("%d caveat(s) about these numbers: see the report's caveat", len(result["warnings"]))
    return result


# ---------------------------------------------------------------------------------------------
# how far to trust it


def unranked_reason(r2: float) -> str | None:
    """None when a model with this pooled R^2 beats predicting the mean (R^2 > 0), else why its importances are not ranked."""
    if math.isnan(r2):
        return "not ranked: R^2 undefined"
    if r2 < 0:
        return "not ranked: R^2 < 0"
    if r2 == 0:
        return "not ranked: R^2 = 0"
    return None


def format_r2(v: float | None) -> str:
    """R^2 for display: 3 decimals, values below -1 shown as ``< -1`` (the exact value stays in the CSV and JSON files), missing as a dash."""
    if v is None or math.isnan(v):
        return MISSING
    return "< -1" if v < -1 else f"{v:.3f}"


def format_spread(v: float | None) -> str:
    """A std of R^2 for display: 3 decimals, values above 1 shown as ``> 1``, missing as a dash."""
    if v is None or math.isnan(v):
        return MISSING
    return "> 1" if v > 1 else f"{v:.3f}"


def _unit(group_by: Sequence[str], long: bool = False) -> str:
    """What a group is, for sentences: images, rows (no grouping) or groups."""
    if list(group_by) == ["image"]:
        return "images"
    if not group_by:
        return "rows (no grouping)" if long else "rows"
    return f"groups (by {group_label(group_by)})" if long else "groups"


def reliability_warnings(result: Mapping[str, Any]) -> list[str]:
    """What makes the numbers of a :func:`run_regression` result untrustworthy, one sentence each.

    The rule (checked in this order):

    * **too few groups**: fewer than ``MIN_GROUPS_PER_FOLD`` (2) groups per held-out fold, i.e.
      ``n_groups < 2 * n_splits`` (with the requested number of folds when it had to be cut):
      a fold holding one image scores R^2 against that image's own mean, which can be hugely
      negative, and a handful of images says little about unseen images;
    * **too few rows per feature**: ``n_rows < MIN_ROWS_PER_FEATURE (10) * n_features``: the
      models can fit noise;
    * **worse than the mean**: a model's pooled out-of-fold R^2 is <= 0 (or undefined): it
      predicts no better than the mean of the target, so its importances are not ranked;
    * **unstable folds**: a model with a positive pooled R^2 whose mean fold R^2 is negative;
    * **not grouped by image**: ``group_by`` holds neither ``image`` nor ``dataset``, so rows of
      one image can fall on both sides of a split (placed right after the first rule).
    """
    out: list[str] = []
    n_groups, n_splits, n_rows = result["n_groups"], result["n_splits"], result["n_rows"]
    n_features = len(result["features"])
    asked = max(result.get("n_splits_requested", n_splits), n_splits)
    unit = _unit(result["group_by"], long=True)
    if n_groups < MIN_GROUPS_PER_FOLD * asked:
        cut = f", so only {n_splits} folds are used instead of {asked}" if n_splits < asked else ""
        out.append(
            f"too few {unit} for reliable cross-validation: {n_groups} {unit.split(' ')[0]} for {asked} folds{cut} "
            f"(at least {MIN_GROUPS_PER_FOLD * asked} needed, {MIN_GROUPS_PER_FOLD} per held-out fold); "
            "fold R^2 on one or two images is erratic and says little about new images"
        )
    if "image" not in result["group_by"] and "dataset" not in result["group_by"]:
        out.append(
            f"the folds are not grouped by image (group_by {group_label(result['group_by'])}): rows of one image can be in both "
            "the training and the test part, so the R^2 is optimistic for new images"
        )
    if n_rows < MIN_ROWS_PER_FEATURE * n_features:
        out.append(f"too few rows per feature: {n_rows} rows for {n_features} features (at least {MIN_ROWS_PER_FEATURE} per feature wanted): the models can fit noise")
    worse = {m: v["r2_pooled"] for m, v in result["models"].items() if not v["ranked"]}
    if worse:
        which = ", ".join(f"{m} (pooled R^2 {format_r2(r)})" for m, r in worse.items())
        tail = "no model predicts better than the mean: no feature importance is ranked" if len(worse) == len(result["models"]) else "their feature importances are not ranked"
        out.append(f"worse than predicting the mean (R^2 <= 0): {which}; {tail}")
    for m, v in result["models"].items():
        if v["ranked"] and v["r2_mean"] < 0:
            out.append(f"{m}: pooled R^2 {format_r2(v['r2_pooled'])} but mean fold R^2 {format_r2(v['r2_mean'])}: the fold scores are unstable")
    return out


# ---------------------------------------------------------------------------------------------
# report

REGRESSION_COLUMNS = ["model", "r2_mean", "r2_std", "r2_pooled", "mae_mean", "mae_std", "mae_pooled", "n_rows", "n_groups", "n_splits"]
IMPORTANCE_COLUMNS = ["model", "rank", "feature", "permutation_mean", "permutation_std", "impurity", "note"]
UNIVARIATE_COLUMNS = ["feature", "group", "r2_cv", "r2_fit", "corr", "n_valid"]


def _regression_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"model": m, **{k: v[k] for k in REGRESSION_COLUMNS[1:7]}, "n_rows": result["n_rows"], "n_groups": result["n_groups"], "n_splits": result["n_splits"]}
        for m, v in result["models"].items()
    ]


def _importance_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per model: ranked by permutation importance when the model beats the mean, else in feature order with no rank and a note."""
    out = []
    for m, v in result["models"].items():
        note = unranked_reason(v["r2_pooled"])
        items = list(v["importances"].items())
        if note is None:
            items.sort(key=lambda kv: -np.inf if math.isnan(kv[1]["permutation_mean"]) else -kv[1]["permutation_mean"])
        for rank, (f, d) in enumerate(items, 1):
            out.append({"model": m, "rank": rank if note is None else "", "feature": f, **d, "note": note or ""})
    return out


def _display(rows: Sequence[Mapping[str, Any]], r2: Sequence[str] = (), spread: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows with the R^2 columns as display strings (see :func:`format_r2`)."""
    return [{**r, **{c: format_r2(r[c]) for c in r2}, **{c: format_spread(r[c]) for c in spread}} for r in rows]


def importance_figure(rows: Sequence[Mapping[str, Any]], result: Mapping[str, Any], model: str, top: int = 15) -> Any:
    """The bar chart of ``model``'s permutation importances (not saved): top ``top`` features, model and n in the title."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from segprompt.engine.report import place_legend, short_name

    rows = [r for r in rows if not math.isnan(r["permutation_mean"])][:top][::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * max(len(rows), 3) + 1.4))
    if rows:
        err = [0 if math.isnan(r["permutation_std"]) else r["permutation_std"] for r in rows]
        ax.barh([r["feature"] for r in rows], [r["permutation_mean"] for r in rows], xerr=err, color="#4c72b0", alpha=0.85, label="mean over folds\n(whiskers: ± 1 std)")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("permutation importance (drop in held-out R$^2$)")
    unit = _unit(result["group_by"])
    r2 = format_r2(result["models"][model]["r2_pooled"])
    ax.set_title(
        f"{short_name(model, 24)}: top features for {short_name(result['target'], 12)}\n"
        f"pooled R$^2$ {r2}; n = {result['n_rows']} rows, {result['n_groups']} {unit}; {result['n_splits']}-fold CV",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    place_legend(fig, [ax])
    return fig


def _plot_importances(result: Mapping[str, Any], imp: Sequence[Mapping[str, Any]], path: Path, top: int) -> Path | None:
    """importances.png of the importance model, or None (and no stale file) when no model beats the mean."""
    from segprompt.engine.report import save_figure

    model = result.get("importance_model")
    if model is None:
        path.unlink(missing_ok=True)  # left by an earlier call
        return None
    rows = [r for r in imp if r["model"] == model]
    return save_figure(importance_figure(rows, result, model, top), path)


def _caveat(result: Mapping[str, Any]) -> list[str]:
    if not result.get("warnings"):
        return []
    lines = ["> **Caveat: do not trust these numbers yet.**", ">"]
    lines += [f"> - {w}" for w in result["warnings"]]
    return lines + [""]


def _importance_section(result: Mapping[str, Any], imp: Sequence[Mapping[str, Any]], plot: Path | None, top: int) -> list[str]:
    model = result.get("importance_model")
    unranked = [f"{m} (pooled R^2 {format_r2(v['r2_pooled'])})" for m, v in result["models"].items() if not v["ranked"]]
    if model is None:
        return [
            "## Feature importances",
            "",
            "Not ranked: no model predicts better than the mean (pooled R^2 <= 0 for every model), so a ranking would only "
            "order noise. importances.csv holds the raw values without ranks; importances.png is not written.",
            "",
        ]
    lines = [
        f"## Feature importances ({model}, best pooled R^2 {format_r2(result['models'][model]['r2_pooled'])})",
        "",
        "Permutation importance: mean drop of held-out R^2 when a feature is shuffled, averaged over folds; "
        "impurity importance (tree models only) averaged over the fold models.",
        "",
        markdown_table([r for r in imp if r["model"] == model][:top], IMPORTANCE_COLUMNS[1:-1]),
        "",
        f"![importances]({plot.name})" if plot is not None else "",
        "",
    ]
    if unranked:
        lines += [f"Not ranked, no better than predicting the mean: {', '.join(unranked)}; importances.csv lists their values without ranks.", ""]
    return lines


def _report_markdown(result: Mapping[str, Any], reg: Sequence[Mapping[str, Any]], imp: Sequence[Mapping[str, Any]], plot: Path | None, top: int, extra: str) -> str:
    lines = [f"# Which features predict `{result['target']}`", ""] + _caveat(result)
    lines += [
        f"{result['n_rows']} rows in {result['n_groups']} groups (by {group_label(result['group_by'])}), "
        f"{result['n_splits']}-fold grouped cross-validation (no group is in both the training and the test part), seed {result['seed']}. "
        f"{len(result['features'])} features.",
        "",
        "R^2 mean / std are over the held-out folds; pooled R^2 is computed on all out-of-fold predictions together. "
        "R^2 below -1 is shown as `< -1` (exact values in regression.csv and regression.json). "
        "The study (PointPrompt) reports R^2 > 0.5 for some features.",
        "",
        "## Models",
        "",
        markdown_table(_display(reg, ("r2_mean", "r2_pooled"), ("r2_std",)), REGRESSION_COLUMNS),
        "",
    ]
    lines += _importance_section(result, imp, plot, top)
    lines += [
        "## Single-feature R^2",
        "",
        "`r2_cv`: a linear fit on the feature alone, same grouped folds (out-of-fold R^2); `r2_fit`: in-sample R^2 "
        "(squared Pearson correlation); `corr`: its sign shows the direction.",
        "",
        markdown_table(_display(result["univariate"], ("r2_cv",)), UNIVARIATE_COLUMNS),
        "",
    ]
    if result["dropped"]:
        lines += ["## Columns left out", "", markdown_table([{"column": k, "reason": v} for k, v in result["dropped"].items()], ["column", "reason"]), ""]
    if extra:
        lines += [extra, ""]
    return "\n".join(lines)


def write_regression_report(result: Mapping[str, Any], out_dir: str | Path, top: int = 15, extra: str = "") -> Path:
    """Write regression.csv, importances.csv, features_r2.csv, regression.md and (when a model beats the mean) importances.png into ``out_dir``.

    regression.md opens with a caveat listing ``result["warnings"]`` when there are any.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reg = _regression_rows(result)
    imp = _importance_rows(result)
    write_csv(out / "regression.csv", reg, REGRESSION_COLUMNS)
    write_csv(out / "importances.csv", imp, IMPORTANCE_COLUMNS)
    write_csv(out / "features_r2.csv", result["univariate"], UNIVARIATE_COLUMNS)
    plot = _plot_importances(result, imp, out / "importances.png", top)
    atomic_write_text(out / "regression.md", _report_markdown(result, reg, imp, plot, top, extra))
    log.info("wrote %s", out / "regression.md")
    return out


def format_summary(summary: Mapping[str, Any], out_dir: str | Path | None = None) -> str:
    """The terminal summary of a ``regression.json``: warnings first, then the model table and where the report is."""
    from segprompt.engine.report import text_table

    lines = [f"warning: {w}" for w in summary.get("warnings", [])]
    lines.append(
        f"{summary['n_rows']} prompts, {summary['n_groups']} groups (by {group_label(summary['group_by'])}), "
        f"{summary['n_splits']}-fold grouped CV; target {summary['target']}; {len(summary['features'])} features"
    )
    rows = [
        {
            "model": m,
            "pooled R^2": format_r2(v["r2_pooled"]),
            "fold R^2 mean": format_r2(v["r2_mean"]),
            "fold R^2 std": format_spread(v["r2_std"]),
            "MAE": v["mae_pooled"],
            "importances": "ranked" if v.get("ranked", True) else unranked_reason(v["r2_pooled"]),
        }
        for m, v in summary["models"].items()
    ]
    lines += ["", text_table(rows, list(rows[0]) if rows else ["model"]), ""]
    if out_dir is not None:
        out = Path(out_dir)
        tail = f", importances ({summary['importance_model']}): {out / summary['importances_plot']}" if summary.get("importances_plot") else "; importances: not ranked (no model beats the mean)"
        lines.append(f"report: {out / 'regression.md'}{tail}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# run folders


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``features.csv`` back (numbers as floats, other cells as strings, empty as None)."""
    import csv

    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                    continue
                try:
                    row[k] = float(v)
                except ValueError:
                    row[k] = v
            out.append(row)
    return out


def _datasets_of(cfg: Mapping[str, Any], cfg_path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, kwargs) of each dataset a run config names: ``datasets`` + per-name ``dataset_kwargs``, or ``dataset`` + ``dataset_kwargs``."""
    kwargs = cfg.get("dataset_kwargs") or {}
    if cfg.get("datasets"):
        names = [cfg["datasets"]] if isinstance(cfg["datasets"], str) else list(cfg["datasets"])
        return [(str(n), dict(kwargs.get(n) or {})) for n in names]
    if cfg.get("dataset"):
        return [(str(cfg["dataset"]), dict(kwargs))]
    raise ConfigError(f"{cfg_path} names no dataset; pass dataset= to features_for_run")


def run_feature_table(run_dir: str | Path, dataset: Any = None, progress: bool = False) -> Any:
    """The :class:`~pointprompt.features.FeatureTable` of a run folder's results (see :func:`features_for_run`)."""
    import yaml

    from segprompt.data.registry import load_dataset

    from pointprompt.features import FeatureTable

    run = Path(run_dir)
    cfg_path, res_path = run / "config.yaml", run / "results.jsonl"
    if not run.is_dir():
        raise ConfigError(f"{run} is not a folder; give a finished benchmark run folder")
    if not cfg_path.is_file():
        raise ConfigError(f"{run} has no config.yaml: not a run folder (run the benchmark into it first)")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    rows = ShardedLog(run, "results", repair=False).rows()  # results.jsonl and every shard's file
    if not rows:
        raise DataError(f"{run} has no results (results.jsonl and its shard files are missing or empty); run or finish the benchmark first")
    log.info("read %d results rows from %s", len(rows), res_path)
    if dataset is not None:
        return feature_table(rows, dataset, progress=progress)
    specs = _datasets_of(cfg, cfg_path)
    if len(specs) == 1:  # every row belongs to it (older runs named rows by the dataset object's name)
        name, kw = specs[0]
        log.info("loading dataset %s", name)
        return feature_table(rows, load_dataset(name, **kw), progress=progress)
    table = FeatureTable()
    names = {n for n, _ in specs}
    for name, kw in specs:
        part = [r for r in rows if r.get("dataset") == name]
        if part:
            log.info("loading dataset %s (%d rows)", name, len(part))
            t = feature_table(part, load_dataset(name, **kw), progress=progress)
            table.extend(t)
            table.skipped.extend(t.skipped)
    for image, n in sorted(Counter(str(r.get("image")) for r in rows if r.get("dataset") not in names).items()):
        table.skipped.append({"image": image, "reason": "its dataset is not in config.yaml", "rows": n})
    return table


def features_for_run(run_dir: str | Path, target: str = "iou", dataset: Any = None, progress: bool = False, **regression_kwargs: Any) -> Path:
    """Feature table and regression report of a finished run folder, written to ``run_dir/features/``.

    Reads ``results.jsonl`` and ``config.yaml``; rebuilds each dataset with
    ``load_dataset(name, **kwargs)`` from the config (``datasets`` with per-name
    ``dataset_kwargs``, or a single ``dataset`` with flat ``dataset_kwargs``) unless ``dataset``
    is given (then used for every row); writes ``features.csv`` (and ``skipped.csv`` when rows
    were skipped), then the files of :func:`write_regression_report` and ``regression.json``
    (the headline numbers, the ``warnings``, ``importance_model`` and ``importances_plot``, the
    plot's file name or null). ``progress`` shows progress bars; ``regression_kwargs`` go to
    :func:`run_regression`. Returns the ``features`` folder.

    Raises ConfigError when the folder has no config.yaml or no dataset in it, DataError when it
    has no results or too few images for a grouped cross-validation.
    """
    run = Path(run_dir)
    table = run_feature_table(run, dataset, progress=progress)
    out = run / "features"
    out.mkdir(exist_ok=True)
    write_csv(out / "features.csv", [{k: "" if v is None else v for k, v in r.items()} for r in table], feature_columns(table), floatfmt=".6g")
    if table.skipped:
        write_csv(out / "skipped.csv", table.skipped, ["image", "reason", "rows"])
    elif (out / "skipped.csv").exists():
        (out / "skipped.csv").unlink()  # left by an earlier call
    if not table:
        raise DataError(f"{run}: no results row could be matched to an image of the dataset (see {out / 'skipped.csv'})")
    log.info("wrote %d feature rows to %s", len(table), out / "features.csv")
    result = run_regression(table, target=target, progress=progress, **regression_kwargs)
    write_regression_report(result, out, extra=_data_note(run, table))
    summary = {k: result[k] for k in ("target", "warnings", "features", "dropped", "n_rows", "n_groups", "n_splits", "n_splits_requested", "group_by", "best_model", "importance_model")}
    summary["importances_plot"] = "importances.png" if (out / "importances.png").is_file() else None
    summary["models"] = {m: {k: v for k, v in d.items() if k != "importances"} for m, d in result["models"].items()}
    atomic_write_text(out / "regression.json", json.dumps(summary, indent=1, default=float))
    return out


def _data_note(run: Path, table: Any) -> str:
    """The "Data" section of regression.md: which run, datasets, models and strategies, and what was skipped."""
    datasets = ", ".join(f"`{d}`" for d in sorted({str(r.get("dataset")) for r in table}))
    models = ", ".join(f"`{m}`" for m in sorted({str(r.get("model")) for r in table}))
    strategies = ", ".join(f"`{s}`" for s in sorted({str(r.get("strategy")) for r in table}))
    skipped = f"Skipped: {sum(s['rows'] for s in table.skipped)} rows (see skipped.csv)." if table.skipped else "Skipped rows: none."
    return f"## Data\n\nRun `{run.name}`: datasets {datasets}, models {models}, strategies {strategies} (pooled). {skipped}"
