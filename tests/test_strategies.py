"""Point strategies: positives inside, negatives outside, (x, y) axes, counts, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointprompt.strategies import create_strategy, interleave, list_strategies
from segprompt.errors import PromptError

PLACEMENT = ["random", "centre"]
CORRECTION = ["microsam", "error-centre"]


@st.composite
def masks(draw):
    h = draw(st.integers(8, 48))
    w = draw(st.integers(8, 48))
    y0 = draw(st.integers(0, h - 2))
    x0 = draw(st.integers(0, w - 2))
    y1 = draw(st.integers(y0 + 1, h))
    x1 = draw(st.integers(x0 + 1, w))
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    if m.all():
        m[0, 0] = False
    return m


def _inside(mask, pts):
    x = pts.coords[:, 0].astype(int)
    y = pts.coords[:, 1].astype(int)
    assert np.array_equal(pts.coords, np.round(pts.coords)), "points sit on pixels"
    return mask[y, x]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks(), st.integers(0, 6), st.integers(0, 4), st.sampled_from(PLACEMENT), st.integers(0, 2**32 - 1))
def test_placement_properties(mask, n_pos, n_neg, name, seed):
    if n_pos + n_neg == 0:
        return
    strat = create_strategy(name)
    pts = strat(mask, None, np.random.default_rng(seed), n_pos, n_neg)
    assert (pts.n_positive, pts.n_negative) == (n_pos, n_neg)
    inside = _inside(mask, pts)
    assert inside[pts.labels == 1].all() and not inside[pts.labels == 0].any()
    if n_pos:
        assert pts.labels[0] == 1
    again = strat(mask, None, np.random.default_rng(seed), n_pos, n_neg)
    assert again == pts


@settings(max_examples=40, deadline=None)
@given(masks(), st.sampled_from(CORRECTION), st.integers(0, 2**32 - 1), st.integers(-3, 3), st.integers(-3, 3))
def test_correction_properties(gt, name, seed, dy, dx):
    pred = np.roll(gt, (dy, dx), axis=(0, 1))  # a shifted prediction: both error kinds
    strat = create_strategy(name)
    pts = strat.correct(gt, pred, np.random.default_rng(seed))
    inside = _inside(gt, pts)
    assert inside[pts.labels == 1].all() and not inside[pts.labels == 0].any()
    fn, fp = gt & ~pred, ~gt & pred
    x, y = pts.coords[:, 0].astype(int), pts.coords[:, 1].astype(int)
    if name == "microsam":
        if fn.any():
            assert fn[y[pts.labels == 1], x[pts.labels == 1]].all()
        if fp.any():
            assert fp[y[pts.labels == 0], x[pts.labels == 0]].all()
    assert strat.correct(gt, pred, np.random.default_rng(seed)) == pts


def test_axes_are_xy_on_a_non_square_image():
    # object in the top-right corner of a wide image: transposed axes would land outside it
    m = np.zeros((40, 200), bool)
    m[2:12, 170:195] = True
    for name in PLACEMENT:
        pts = create_strategy(name)(m, None, np.random.default_rng(0), 3, 0)
        assert (pts.coords[:, 0] >= 170).all() and (pts.coords[:, 1] < 12).all(), name


def test_centre_is_the_deepest_pixel_then_spreads():
    m = np.zeros((30, 60), bool)
    m[10:21, 5:56] = True  # an 11 x 51 bar: depth peaks on the middle row
    pts = create_strategy("centre")(m, None, np.random.default_rng(0), 3, 0)
    assert pts.coords[0, 1] == 15  # the middle row
    assert pts.coords[0, 0] == 30  # the middle of the deepest ridge
    # then the two ends of the interior (depth >= 0.4 x 6 px: columns 7..53)
    assert {abs(pts.coords[1, 0] - 30), abs(pts.coords[2, 0] - 30)} == {23}


def test_error_centre_targets_largest_error():
    gt = np.zeros((50, 50), bool)
    gt[10:40, 10:40] = True
    pred = gt.copy()
    pred[10:40, 10:20] = False  # a 30 x 10 miss
    pred[0:3, 0:3] = True  # a small false positive
    pts = create_strategy("error-centre").correct(gt, pred, np.random.default_rng(0))
    assert pts.labels.tolist() == [1]
    x, y = pts.coords[0]
    assert 10 <= x < 20 and 10 <= y < 40


def test_empty_and_tiny_masks():
    empty = np.zeros((10, 10), bool)
    for name in PLACEMENT:
        with pytest.raises(PromptError, match="empty"):
            create_strategy(name)(empty, None, np.random.default_rng(0), 1, 0)
    one = np.zeros((10, 10), bool)
    one[4, 7] = True
    for name in PLACEMENT:  # one pixel: every positive point is that pixel (documented repeat)
        pts = create_strategy(name)(one, None, np.random.default_rng(0), 3, 1)
        assert (pts.coords[pts.labels == 1] == [7, 4]).all()
    full = np.ones((5, 5), bool)
    for name in PLACEMENT:
        with pytest.raises(PromptError, match="whole image"):
            create_strategy(name)(full, None, np.random.default_rng(0), 1, 1)


def test_interleave_keeps_ratio_in_prefixes():
    pos, neg = np.zeros((14, 2)), np.ones((2, 2))
    labels = interleave(pos, neg).labels
    assert labels[0] == 1 and labels.sum() == 14
    assert labels.tolist().index(0) in range(3, 6)  # first negative about a quarter of the way


def test_registry_names():
    assert {"random", "centre", "microsam", "error-centre"} <= set(list_strategies())
    assert create_strategy("center").name == "centre"
