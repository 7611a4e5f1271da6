"""Tests of segprompt.metrics: parity with MONAI / torchmetrics, properties, real masks.

Real-data tests need SEGPROMPT_DATA_ROOT, a folder holding the sample sets (kvasir_seg, camvid, ...;
.ci/run points it at the shared sample data); run locally with
``SEGPROMPT_DATA_ROOT=path/to/data python -m pytest tests/test_metrics.py -q``. Speed is measured
in ``benchmarks/metrics_speed.py``, not here.
"""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from segprompt import metrics as M
from segprompt.errors import ConfigError, DataError

torch = pytest.importorskip("torch")
monai_metrics = pytest.importorskip("monai.metrics")
monai_utils = pytest.importorskip("monai.metrics.utils")
tm_cls = pytest.importorskip("torchmetrics.classification")
tm_fcls = pytest.importorskip("torchmetrics.functional.classification")

# MONAI warns on every empty mask (the empty cases are exercised on purpose), and MONAI 1.5+
# passes its own deprecated ``always_return_as_numpy`` argument internally.
pytestmark = [
    pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning"),
]

HYP = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def blob(rng: np.random.Generator, shape: tuple[int, int], frac: float, sigma: float = 3.0) -> np.ndarray:
    """Smooth random blobs covering about ``frac`` of the image."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, 1.0 - frac)


def shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift with zero fill (no wrap-around)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def _t(*masks: np.ndarray) -> torch.Tensor:
    """Masks -> MONAI one-hot-style batch (B, 1, H, W) float."""
    return torch.as_tensor(np.stack(masks)[:, None].astype(np.float32))


def monai_dice(p, t) -> float:
    return float(monai_metrics.compute_dice(_t(p), _t(t), include_background=True, ignore_empty=False).item())


def monai_iou(p, t) -> float:
    return float(monai_metrics.compute_iou(_t(p), _t(t), include_background=True, ignore_empty=False).item())


def monai_hd(p, t, percentile=95, spacing=None, directed=False) -> float:
    return float(
        monai_metrics.compute_hausdorff_distance(
            _t(p), _t(t), include_background=True, percentile=percentile, spacing=spacing, directed=directed
        ).item()
    )


def monai_nsd(p, t, tol, spacing=None) -> float:
    return float(
        monai_metrics.compute_surface_dice(_t(p), _t(t), [tol], include_background=True, spacing=spacing).item()
    )


def synthetic_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Seeded random blob pairs over several shapes, with the empty cases."""
    rng = np.random.default_rng(1234)
    pairs = []
    for shape in [(32, 32), (17, 41), (64, 48), (96, 130)]:
        for k in range(3):
            t = blob(rng, shape, frac=rng.uniform(0.05, 0.4))
            choice = k % 3
            if choice == 0:  # independent blob
                p = blob(rng, shape, frac=rng.uniform(0.05, 0.4))
            elif choice == 1:  # shifted target
                p = shift(t, int(rng.integers(-4, 5)), int(rng.integers(-4, 5)))
            else:  # eroded + noise
                p = ndimage.binary_erosion(t, iterations=2) | (rng.random(shape) > 0.995)
            pairs.append((f"{shape}-{k}", p, t))
    z = np.zeros((20, 24), dtype=bool)
    o = z.copy()
    o[3:9, 5:15] = True
    pairs += [("empty-empty", z, z), ("pred-empty", z, o), ("target-empty", o, z)]
    full = np.ones((12, 12), dtype=bool)
    pairs.append(("full-vs-square", full, np.pad(np.ones((6, 6), bool), 3)))
    return pairs


PAIRS = synthetic_pairs()
NONEMPTY = [(n, p, t) for n, p, t in PAIRS if p.any() and t.any()]


@st.composite
def mask_pairs(draw, max_side: int = 14):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    a = draw(arrays(np.bool_, (h, w)))
    b = draw(arrays(np.bool_, (h, w)))
    return a, b


# --------------------------------------------------------------------------------------------
# parity: Dice / IoU
# --------------------------------------------------------------------------------------------


def test_dice_iou_match_monai_and_torchmetrics_on_blobs():
    for name, p, t in PAIRS:
        d, j = M.dice(p, t), M.iou(p, t)
        assert d == pytest.approx(monai_dice(p, t), abs=1e-6), name
        assert j == pytest.approx(monai_iou(p, t), abs=1e-6), name
        ref = tm_fcls.binary_jaccard_index(torch.as_tensor(p).long(), torch.as_tensor(t).long(), zero_division=1.0)
        assert j == pytest.approx(float(ref), abs=1e-6), name


def test_dice_matches_monai_dicemetric_batched():
    shape = (32, 32)
    batch = [(p, t) for _, p, t in PAIRS if p.shape == shape]
    metric = monai_metrics.DiceMetric(include_background=True, ignore_empty=False, reduction="none")
    metric(_t(*[p for p, _ in batch]), _t(*[t for _, t in batch]))
    ref = metric.aggregate().numpy().ravel()
    ours = np.array([M.dice(p, t) for p, t in batch])
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_empty_conventions_dice_iou():
    z = np.zeros((5, 5), bool)
    o = z.copy()
    o[1:3, 1:3] = True
    assert M.dice(z, z) == 1.0 and M.iou(z, z) == 1.0  # MONAI ignore_empty=False agrees
    assert monai_dice(z, z) == 1.0 and monai_iou(z, z) == 1.0
    assert math.isnan(M.dice(z, z, empty_score=float("nan")))
    assert M.iou(z, z, empty_score=0.0) == 0.0
    assert M.dice(o, z) == 0.0 and M.iou(o, z) == 0.0
    assert M.dice(z, o) == 0.0 and M.iou(z, o) == 0.0


def test_dice_iou_hand_numbers():
    p = np.zeros((4, 4), int)
    t = np.zeros((4, 4), int)
    p[0, :3] = 1  # 3 px
    t[0, 1:] = 1  # 3 px, overlap 2
    assert M.dice(p, t) == pytest.approx(2 * 2 / 6)
    assert M.iou(p, t) == pytest.approx(2 / 4)
    assert M.dice(p.astype(float), t.astype(np.uint8)) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------
# parity: boundaries, HD95, surface Dice
# --------------------------------------------------------------------------------------------


def test_mask_boundary_matches_monai_get_mask_edges():
    for name, p, t in PAIRS:
        ep, et = monai_utils.get_mask_edges(p, t, crop=False)
        np.testing.assert_array_equal(M.mask_boundary(p), ep, err_msg=name)
        np.testing.assert_array_equal(M.mask_boundary(t), et, err_msg=name)


def test_mask_boundary_hand_example():
    m = np.zeros((5, 6), bool)
    m[1:4, 1:5] = True  # 3x4 rectangle: only (2,2) and (2,3) are interior
    b = M.mask_boundary(m)
    assert b.sum() == 12 - 2
    assert not b[2, 2] and not b[2, 3] and b[1, 1]
    full = np.ones((4, 4), bool)
    assert M.mask_boundary(full).sum() == 12  # image border counts as background


@pytest.mark.parametrize("percentile", [95, None, 50])
def test_hausdorff_matches_monai(percentile):
    for name, p, t in NONEMPTY:
        ours = M.hausdorff(p, t, percentile=percentile)
        assert ours == pytest.approx(monai_hd(p, t, percentile), rel=1e-5, abs=1e-4), name
    for name, p, t in NONEMPTY[:4]:
        ours = M.hausdorff(p, t, percentile=percentile, directed=True)
        assert ours == pytest.approx(monai_hd(p, t, percentile, directed=True), rel=1e-5, abs=1e-4), name


def test_hd95_with_spacing_matches_monai():
    for name, p, t in NONEMPTY[:6]:
        ours = M.hd95(p, t, spacing=(2.0, 0.5))
        assert ours == pytest.approx(monai_hd(p, t, 95, spacing=[2.0, 0.5]), rel=1e-5, abs=1e-4), name


def test_hd95_empty_conventions_vs_monai():
    z = np.zeros((20, 24), bool)
    o = z.copy()
    o[3:9, 5:15] = True
    # both empty: ours 0.0 (documented), MONAI NaN
    assert M.hd95(z, z) == 0.0
    assert math.isnan(monai_hd(z, z))
    # exactly one empty: NaN for both
    for p, t in [(z, o), (o, z)]:
        assert math.isnan(M.hd95(p, t)) and math.isnan(M.hausdorff(p, t))
        assert math.isnan(monai_hd(p, t))


def test_hd95_hand_example():
    # two 1-px-wide horizontal lines 3 rows apart: every boundary distance is exactly 3
    p = np.zeros((10, 10), bool)
    t = np.zeros((10, 10), bool)
    p[2, 1:9] = True
    t[5, 1:9] = True
    assert M.hd95(p, t) == pytest.approx(3.0)
    assert M.hd95(p, t, spacing=(0.5, 1.0)) == pytest.approx(1.5)
    assert M.hausdorff(p, t, percentile=0) == pytest.approx(3.0)


@pytest.mark.parametrize("tol", [0.0, 1.0, 2.5])
def test_surface_dice_matches_monai(tol):
    for name, p, t in PAIRS:
        ref = monai_nsd(p, t, tol)
        ours = M.surface_dice(p, t, tol)
        if not p.any() and not t.any():
            assert math.isnan(ref) and ours == 1.0, name  # documented difference
            assert math.isnan(M.surface_dice(p, t, tol, empty_score=float("nan")))
        else:
            assert ours == pytest.approx(ref, abs=1e-6), name


def test_surface_dice_with_spacing_matches_monai():
    for name, p, t in NONEMPTY[:6]:
        ours = M.surface_dice(p, t, 1.5, spacing=(1.0, 0.4))
        assert ours == pytest.approx(monai_nsd(p, t, 1.5, spacing=[1.0, 0.4]), abs=1e-6), name


def _boundary_f1_from_monai(p, t, tol):
    (ep, et), (d_pt, d_tp), _ = monai_utils.get_edge_surface_distance(_t(p)[0, 0], _t(t)[0, 0], symmetric=True)
    prec = float((d_pt <= tol).float().mean())
    rec = float((d_tp <= tol).float().mean())
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


@pytest.mark.parametrize("tol", [0.0, 1.0, 2.0, 4.0])
def test_boundary_f1_matches_monai_surface_distances(tol):
    for name, p, t in NONEMPTY:
        assert M.boundary_f1(p, t, tol) == pytest.approx(_boundary_f1_from_monai(p, t, tol), abs=1e-6), name


def test_boundary_f1_hand_and_empty():
    p = np.zeros((12, 12), bool)
    p[2:8, 2:8] = True  # 6x6 square, boundary 20 px
    t = shift(p, 0, 3)  # shifted 3 columns right
    # tol 3: everything matched; tol 0: only the shared top/bottom-row pixels match (P = R)
    assert M.boundary_f1(p, t, tolerance=3.0) == 1.0
    ep, et = M.mask_boundary(p), M.mask_boundary(t)
    overlap = int((ep & et).sum())
    assert M.boundary_f1(p, t, tolerance=0.0) == pytest.approx(overlap / 20)
    z = np.zeros_like(p)
    assert M.boundary_f1(z, z) == 1.0
    assert M.boundary_f1(p, z) == 0.0 and M.boundary_f1(z, p) == 0.0
    far_a = np.zeros((40, 40), bool)
    far_b = far_a.copy()
    far_a[:3, :3] = True
    far_b[-3:, -3:] = True
    assert M.boundary_f1(far_a, far_b, tolerance=2.0) == 0.0


def test_binary_scores_equals_individual_functions():
    for name, p, t in PAIRS:
        s = M.binary_scores(p, t)
        assert set(s) == {"dice", "iou", "boundary_f1", "hd95"}
        assert s["dice"] == M.dice(p, t) and s["iou"] == M.iou(p, t), name
        assert s["boundary_f1"] == M.boundary_f1(p, t), name
        hd = M.hd95(p, t)
        assert (math.isnan(hd) and math.isnan(s["hd95"])) or s["hd95"] == hd, name


def test_kdtree_and_distance_transform_paths_agree(monkeypatch):
    rng = np.random.default_rng(7)
    cases = NONEMPTY + [("noise", rng.random((40, 50)) > 0.5, rng.random((40, 50)) > 0.7)]
    for sp in (None, (1.5, 0.7)):

        def run(sp=sp):
            return [
                (M.hausdorff(p, t, 95, sp), M.hausdorff(p, t, None, sp), M.surface_dice(p, t, 1.0, sp))
                for _, p, t in cases
            ]

        monkeypatch.setattr(M, "_KDTREE_FRACTION", 2.0)  # always KD-tree
        kd = run()
        monkeypatch.setattr(M, "_KDTREE_FRACTION", -1.0)  # always EDT
        edt = run()
        np.testing.assert_allclose(np.array(kd), np.array(edt), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def test_invalid_inputs_raise_data_error():
    a = np.zeros((4, 5), bool)
    with pytest.raises(DataError, match="same shape"):
        M.dice(a, np.zeros((5, 4), bool))
    with pytest.raises(DataError, match="same shape"):
        M.hd95(a, np.zeros((4, 6), bool))
    with pytest.raises(DataError, match="mask > 127"):
        M.iou(np.full((4, 5), 255, np.uint8), a)
    with pytest.raises(DataError, match="threshold"):
        M.dice(np.full((4, 5), 0.5), a)
    with pytest.raises(DataError, match="2-D"):
        M.dice(np.zeros(5, bool), np.zeros(5, bool))
    with pytest.raises(DataError, match="dtype"):
        M.dice(a.astype(complex), a)
    with pytest.raises(ConfigError):
        M.boundary_f1(a, a, tolerance=-1)
    with pytest.raises(ConfigError):
        M.hausdorff(a, a, percentile=101)
    with pytest.raises(ConfigError):
        M.hd95(a, a, spacing=(1.0, 1.0, 1.0))


def test_metrics_module_has_no_toplevel_torch_import():
    tree = ast.parse(Path(M.__file__).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert "torch" not in names and "monai" not in names and "torchmetrics" not in names


def test_large_masks():
    yy, xx = np.mgrid[:1000, :1000]
    a = (yy - 500) ** 2 + (xx - 480) ** 2 < 300**2
    b = (yy - 520) ** 2 / 1.2 + (xx - 500) ** 2 < 290**2
    s = M.binary_scores(a, b)
    assert 0.85 < s["iou"] < 0.95 and s["hd95"] > 0


# --------------------------------------------------------------------------------------------
# properties (hypothesis)
# --------------------------------------------------------------------------------------------


@HYP
@given(mask_pairs())
def test_property_dice_iou_symmetric_bounded_related(pair):
    a, b = pair
    d, j = M.dice(a, b), M.iou(a, b)
    assert d == M.dice(b, a) and j == M.iou(b, a)
    assert 0.0 <= j <= d <= 1.0
    assert d == pytest.approx(2 * j / (1 + j), abs=1e-12)


@HYP
@given(mask_pairs())
def test_property_identical_masks_are_perfect(pair):
    a, _ = pair
    assert M.dice(a, a) == 1.0 and M.iou(a, a) == 1.0
    assert M.hd95(a, a) == 0.0 and M.hausdorff(a, a) == 0.0
    assert M.boundary_f1(a, a, tolerance=0.0) == 1.0
    assert M.surface_dice(a, a, 0.0) == 1.0


@HYP
@given(mask_pairs(), st.floats(0.0, 5.0))
def test_property_boundary_scores_bounded_and_symmetric(pair, tol):
    a, b = pair
    f = M.boundary_f1(a, b, tol)
    assert 0.0 <= f <= 1.0 and f == pytest.approx(M.boundary_f1(b, a, tol))
    nsd = M.surface_dice(a, b, tol)
    assert 0.0 <= nsd <= 1.0
    h = M.hd95(a, b)
    if a.any() and b.any():
        assert h == pytest.approx(M.hd95(b, a)) and 0.0 <= h <= M.hausdorff(a, b) + 1e-9
        if h <= tol:  # most boundary pixels matched
            assert nsd > 0.0
    elif a.any() or b.any():
        assert math.isnan(h)


@settings(max_examples=25, deadline=None)
@given(mask_pairs(max_side=10))
def test_property_hd_matches_monai(pair):
    a, b = pair
    if a.any() and b.any():
        assert M.hd95(a, b) == pytest.approx(monai_hd(a, b), rel=1e-5, abs=1e-4)
        assert M.surface_dice(a, b, 1.0) == pytest.approx(monai_nsd(a, b, 1.0), abs=1e-6)


@HYP
@given(
    st.integers(1, 6).flatmap(
        lambda c: st.tuples(
            st.just(c),
            arrays(np.int64, (7, 9), elements=st.integers(0, c - 1)),
            arrays(np.int64, (7, 9), elements=st.sampled_from(list(range(c)) + [255])),
        )
    )
)
def test_property_confusion_matrix_sums(args):
    c, pred, target = args
    cm = M.confusion_matrix(pred, target, c)
    assert cm.dtype == np.int64 and cm.shape == (c, c)
    assert cm.sum() == np.count_nonzero(target != 255)
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(target[target != 255], minlength=c))
    acc = M.ConfusionMatrix(c).update(pred, target)
    ious = acc.iou_per_class()
    assert np.all(np.isnan(ious) | ((ious >= 0) & (ious <= 1)))


# --------------------------------------------------------------------------------------------
# NoC
# --------------------------------------------------------------------------------------------


def test_noc_examples():
    curve = [0.5, 0.7, 0.86, 0.88, 0.91, 0.95]
    assert M.noc(curve, 0.85) == 3
    assert M.noc(curve, 0.90) == 5
    assert M.noc(curve, 0.96) == 6  # never reached: max_clicks defaults to len(curve)
    assert M.noc(curve, 0.96, max_clicks=20) == 20
    assert M.noc(curve, 0.90, max_clicks=4) == 4  # reached only after the budget
    assert M.noc([0.9], 0.85) == 1
    assert M.noc(np.array([0.85]), 0.85) == 1  # >= threshold
    assert M.noc([], 0.85, max_clicks=20) == 20
    with pytest.raises(DataError):
        M.noc([], 0.85)
    with pytest.raises(DataError):
        M.noc([[0.1, 0.2]], 0.85)
    with pytest.raises(ConfigError):
        M.noc([0.1], 0.85, max_clicks=0)


def test_noc_counts_clicks_not_steps():
    curve = [0.5, 0.7, 0.9, 0.95]
    clicks = [1, 3, 5, 7]  # micro-sam-style: one click, then a positive and a negative per step
    assert M.noc(curve, 0.85, clicks=clicks) == 5  # the third step, five clicks
    assert M.noc(curve, 0.94, clicks=clicks) == 7
    assert M.noc(curve, 0.99, clicks=clicks) == 7  # never reached: the clicks of the last step
    assert M.noc(curve, 0.99, max_clicks=20, clicks=clicks) == 20
    assert M.noc(curve, 0.90, max_clicks=4, clicks=clicks) == 4  # reached at 5 clicks: over the budget
    assert M.noc(curve, 0.85, clicks=2) == 6  # two clicks every step
    assert M.noc(curve, 0.85, clicks=1) == M.noc(curve, 0.85) == 3
    assert M.noc_steps(curve, 0.85) == 3 and M.noc_steps(curve, 0.99, max_steps=20) == 20  # the step count, by name
    assert M.noc([0.5, 0.9], 0.85, clicks=[2, 2]) == 2  # a step that added no click
    with pytest.raises(DataError):
        M.noc(curve, 0.85, clicks=[1, 2])  # one count per step
    with pytest.raises(DataError):
        M.noc(curve, 0.85, clicks=[1, 3, 2, 4])  # cumulative: never decreasing
    with pytest.raises(DataError):
        M.noc(curve, 0.85, clicks=[0, 1, 2, 3])
    with pytest.raises(ConfigError):
        M.noc(curve, 0.85, clicks=0)
    s = M.noc_curve_stats([curve, [0.9]], thresholds=(0.85,), max_clicks=6, clicks=[clicks, [2]])
    assert s["noc@85"] == pytest.approx((5 + 2) / 2) and s["fail@85"] == 0
    s = M.noc_curve_stats([curve], thresholds=(0.94,), max_clicks=6, clicks=[clicks])
    assert s["noc@94"] == 6 and s["fail@94"] == 1  # reached at 7 clicks: over the budget


def test_noc_curve_stats_numbers():
    curves = [
        [0.9, 0.95, 0.96],  # NoC@85 = 1, NoC@90 = 1
        [0.5, 0.86, 0.89, 0.92],  # 2, 4
        [0.3, 0.4, 0.5],  # fails both -> 5, 5
    ]
    s = M.noc_curve_stats(curves, thresholds=(0.85, 0.9), max_clicks=5)
    assert s["noc@85"] == pytest.approx((1 + 2 + 5) / 3)
    assert s["noc@90"] == pytest.approx((1 + 4 + 5) / 3)
    assert s["fail@85"] == pytest.approx(1 / 3)
    assert s["fail@90"] == pytest.approx(1 / 3)
    assert s["n"] == 3
    s2 = M.noc_curve_stats(np.array([[0.1, 0.88], [0.9, 0.9]]), thresholds=(0.875,), max_clicks=1)
    assert s2["noc@87.5"] == pytest.approx(1.0) and s2["fail@87.5"] == pytest.approx(0.5)
    with pytest.raises(DataError):
        M.noc_curve_stats([])


# --------------------------------------------------------------------------------------------
# confusion matrix / mIoU
# --------------------------------------------------------------------------------------------


def test_confusion_matrix_hand_example():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 1, 7]])  # 7 sits on an ignored pixel: not checked
    cm = M.confusion_matrix(pred, target, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    acc = M.ConfusionMatrix(3).update(pred, target)
    np.testing.assert_allclose(acc.iou_per_class(), [1 / 2, 2 / 4, 0.0])
    assert acc.miou() == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert acc.miou(exclude=(0,)) == pytest.approx(0.25)
    assert acc.pixel_accuracy() == pytest.approx(3 / 5)
    assert acc.total == 5
    # class 3 absent in both -> NaN, left out of the mean
    acc4 = M.ConfusionMatrix(4).update(pred, target)
    assert math.isnan(acc4.iou_per_class()[3]) and acc4.miou() == pytest.approx(acc.miou())
    assert M.miou(pred, target, 4) == pytest.approx(acc.miou())
    assert acc.matrix is not acc.matrix  # a copy
    acc.merge(M.ConfusionMatrix(3).update(pred, target))
    assert acc.total == 10 and acc.miou() == pytest.approx((0.5 + 0.5) / 3)
    acc.reset()
    assert acc.total == 0 and math.isnan(acc.miou()) and math.isnan(acc.pixel_accuracy())


def test_confusion_matrix_errors():
    t = np.zeros((3, 3), np.uint8)
    with pytest.raises(DataError, match="pred holds label 5"):
        M.confusion_matrix(np.full((3, 3), 5), t, 3)
    with pytest.raises(DataError, match="pred holds label -1"):
        M.confusion_matrix(np.full((3, 3), -1), t, 3)
    with pytest.raises(DataError, match="target holds label 9"):
        M.confusion_matrix(t, np.full((3, 3), 9), 3)
    with pytest.raises(DataError, match="same shape"):
        M.confusion_matrix(t, np.zeros((3, 4), int), 3)
    with pytest.raises(DataError, match="integer"):
        M.confusion_matrix(t.astype(float), t, 3)
    with pytest.raises(ConfigError):
        M.ConfusionMatrix(0)


def _tm_iou(preds, targets, c, ignore):
    metric = tm_cls.MulticlassJaccardIndex(num_classes=c, average="none", ignore_index=ignore)
    confm = tm_cls.MulticlassConfusionMatrix(num_classes=c, ignore_index=ignore)
    for p, t in zip(preds, targets):
        pt, tt = torch.as_tensor(p.astype(np.int64)), torch.as_tensor(t.astype(np.int64))
        metric.update(pt, tt)
        confm.update(pt, tt)
    return metric.compute().numpy(), confm.compute().numpy()


def _check_against_torchmetrics(preds, targets, c, ignore):
    acc = M.ConfusionMatrix(c, ignore_index=ignore)
    for p, t in zip(preds, targets):
        acc.update(p, t)
    ref_iou, ref_cm = _tm_iou(preds, targets, c, ignore)
    np.testing.assert_array_equal(acc.matrix, ref_cm)
    ours = acc.iou_per_class()
    present = ~np.isnan(ours)
    np.testing.assert_allclose(ours[present], ref_iou[present], atol=1e-6)
    # absent classes: NaN here, 0 in torchmetrics (zero_division=0)
    np.testing.assert_array_equal(ref_iou[~present], 0.0)
    assert acc.miou() == pytest.approx(float(ref_iou[present].mean()), abs=1e-6)
    return acc


def test_miou_matches_torchmetrics_on_random_label_maps():
    rng = np.random.default_rng(3)
    c = 6
    targets, preds = [], []
    for shape in [(40, 50), (33, 21), (64, 64)]:
        t = rng.integers(0, c - 1, shape)  # class 5 never in the targets ...
        t[rng.random(shape) < 0.1] = 255
        p = np.where(rng.random(shape) < 0.7, np.where(t == 255, 0, t), rng.integers(0, c - 1, shape))
        targets.append(t)
        preds.append(p)  # ... nor predicted: NaN here
    acc = _check_against_torchmetrics(preds, targets, c, 255)
    assert math.isnan(acc.iou_per_class()[5])


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------


def _data_root() -> Path:
    root = os.environ.get("SEGPROMPT_DATA_ROOT")
    if not root:
        pytest.skip("SEGPROMPT_DATA_ROOT is not set (.ci/run sets it to the shared sample data)")
    path = Path(root)
    assert path.is_dir(), f"SEGPROMPT_DATA_ROOT={root} is not a folder"
    return path


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


@pytest.mark.realdata
def test_kvasir_masks_vs_monai_with_perturbations():
    files = sorted((_data_root() / "kvasir_seg" / "masks").glob("*.png"))[:3]
    assert len(files) == 3, "expected Kvasir-SEG mask PNGs under kvasir_seg/masks"
    for f in files:
        raw = _read_png(f)
        if raw.ndim == 3:
            raw = raw[..., 0]
        with pytest.raises(DataError):  # 0/255 PNG must be thresholded explicitly
            M.dice(raw, raw)
        t = raw > 127
        assert t.any()
        perturbed = {
            "shift": shift(t, 9, -6),
            "erode": ndimage.binary_erosion(t, iterations=5),
            "dilate+shift": shift(ndimage.binary_dilation(t, iterations=3), -4, 4),
        }
        for kind, p in perturbed.items():
            tag = f"{f.name}/{kind}"
            s = M.binary_scores(p, t)
            assert s["dice"] == pytest.approx(monai_dice(p, t), abs=1e-6), tag
            assert s["iou"] == pytest.approx(monai_iou(p, t), abs=1e-6), tag
            assert s["hd95"] == pytest.approx(monai_hd(p, t), rel=1e-5, abs=1e-4), tag
            assert M.surface_dice(p, t, 2.0) == pytest.approx(monai_nsd(p, t, 2.0), abs=1e-6), tag
            assert s["boundary_f1"] == pytest.approx(_boundary_f1_from_monai(p, t, 2.0), abs=1e-6), tag
            assert 0.5 < s["dice"] < 1.0, tag
        # a shift by (9, -6) moves every boundary pixel by at most sqrt(117) px
        assert M.hausdorff(perturbed["shift"], t) <= math.sqrt(9**2 + 6**2) + 1e-9
        assert M.hd95(perturbed["erode"], t) == pytest.approx(5.0, abs=1.5)


@pytest.mark.realdata
def test_camvid_miou_vs_torchmetrics_void_ignored():
    files = sorted((_data_root() / "camvid" / "masks").glob("*.png"))[:4]
    assert len(files) == 4, "expected CamVid label PNGs under camvid/masks"
    rng = np.random.default_rng(11)
    targets, preds = [], []
    for f in files:
        t = _read_png(f)
        assert t.max() <= 11
        p = shift(t, 3, -4).astype(np.int64)
        p[p == 11] = rng.integers(0, 11, int((p == 11).sum()))  # models never predict void
        y, x = rng.integers(0, t.shape[0] - 40), rng.integers(0, t.shape[1] - 60)
        p[y : y + 40, x : x + 60] = rng.integers(0, 11)  # a wrong block
        targets.append(t)
        preds.append(p)
    acc = _check_against_torchmetrics(preds, targets, 11, 11)
    assert acc.total == sum(int((t != 11).sum()) for t in targets)
    assert 0.3 < acc.miou() < 1.0
    # same result with void mapped to the default ignore index 255
    acc255 = M.ConfusionMatrix(11)
    for p, t in zip(preds, targets):
        acc255.update(p, np.where(t == 11, 255, t))
    np.testing.assert_array_equal(acc255.matrix, acc.matrix)
    # void left as a label without ignoring it is an error, not silent class 11
    with pytest.raises(DataError, match="target holds label 11"):
        M.confusion_matrix(preds[0], targets[0], 11, ignore_index=255)
    # pixel accuracy vs torchmetrics micro accuracy
    ref_acc = tm_cls.MulticlassAccuracy(num_classes=11, average="micro", ignore_index=11)
    for p, t in zip(preds, targets):
        ref_acc.update(torch.as_tensor(p), torch.as_tensor(t.astype(np.int64)))
    assert acc.pixel_accuracy() == pytest.approx(float(ref_acc.compute()), abs=1e-6)
