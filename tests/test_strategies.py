"""Point strategies: positives inside, negatives outside, (x, y) axes, counts, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pointprompt.saliency import frequency_tuned_saliency, local_entropy, patch_entropy, spectral_residual_saliency, to_grey
from pointprompt.strategies import SaliencyOracleStrategy, create_strategy, interleave, kmedoids, list_strategies, needs_model
from segprompt.errors import ConfigError, DataError, PromptError
from segprompt.prompts import Points

STUDY = ["random", "kmedoids", "shi-tomasi", "entropy", "max-distance", "saliency", "obj"]  # PointPrompt's names and rules
EARLIER = ["kmedoids-ring", "shi-tomasi-ring", "entropy-spread", "max-distance-spread", "saliency-oracle"]
PLACEMENT = [*STUDY, "centre", "grid", *EARLIER]
CORRECTION = ["microsam", "ritm", "error-centre"]
RING = ["centre", "kmedoids-ring", "shi-tomasi-ring", "entropy-spread", "max-distance-spread", "grid"]  # negatives in a ring
SEEDED = ["random", "kmedoids", "entropy", "max-distance", "saliency", "obj", "kmedoids-ring", "entropy-spread", "max-distance-spread", "saliency-oracle"]  # the rng changes their points
PLUS_SEED = ["entropy", "max-distance", "saliency"]  # the study's seed point on each side, on top of the budget
GT_FREE = ["saliency"]  # points from the model's mask: positives beyond the probe may leave the ground truth
# no repeated positive while the region has enough pixels (the study's shi-tomasi fill, entropy and
# max-distance candidates may repeat a corner or the seed, as in its code)
DISTINCT = ["random", "kmedoids", "obj", "centre", "grid", *EARLIER]


def expected(name, n):
    """Points a strategy returns for a budget n on one side."""
    return n + (n > 0) * (name in PLUS_SEED)


def dilated(gt):
    """A predict() stub for the saliency strategy: the gt grown by 2 px, counting its calls."""

    def predict(points):
        assert isinstance(points, Points)
        predict.calls += 1
        return ndimage.binary_dilation(gt, iterations=2) if gt.any() else gt.copy()

    predict.calls = 0
    return predict


def fixed_box(gt):
    def predict(points):
        predict.calls += 1
        out = np.zeros(gt.shape, bool)
        out[: gt.shape[0] // 2, : gt.shape[1] // 2] = True  # unrelated to the object
        return out

    predict.calls = 0
    return predict


def run(name, mask, image, seed, n_pos, n_neg, predict=None):
    """Call a placement strategy the way the benchmark does (``predict`` only where needed)."""
    strat = create_strategy(name)
    kw = {"predict": predict or dilated(mask)} if needs_model(strat) else {}
    return strat(mask, image, np.random.default_rng(seed), n_pos, n_neg, **kw)


def texture(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3)).astype(np.uint8)


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


@pytest.mark.parametrize("name", PLACEMENT)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=masks(), n_pos=st.integers(0, 6), n_neg=st.integers(0, 4), seed=st.integers(0, 2**32 - 1), with_image=st.booleans(), stub=st.sampled_from([dilated, fixed_box]))
def test_placement_properties(name, mask, n_pos, n_neg, seed, with_image, stub):
    if n_pos + n_neg == 0:
        return
    image = texture(mask.shape, seed % 97) if with_image else None
    strat = create_strategy(name)
    predict = stub(mask)
    kw = {"predict": predict} if needs_model(strat) else {}
    pts = strat(mask, image, np.random.default_rng(seed), n_pos, n_neg, **kw)
    assert (pts.n_positive, pts.n_negative) == (expected(name, n_pos), expected(name, n_neg))
    inside = _inside(mask, pts)
    if name in GT_FREE:  # only the probe points come from the ground truth
        pos_in, neg_in = inside[pts.labels == 1], inside[pts.labels == 0]
        assert (pos_in[:1].all() if n_pos else True) and (not neg_in[:1].any() if n_neg else True)
    else:
        assert inside[pts.labels == 1].all() and not inside[pts.labels == 0].any()
    if n_pos:
        assert pts.labels[0] == 1
    # distinct points whenever the region is big enough (repeats only for tiny regions)
    pos = pts.coords[pts.labels == 1]
    if mask.sum() >= n_pos and name in DISTINCT:
        assert len(np.unique(pos, axis=0)) == n_pos
    again = strat(mask, image, np.random.default_rng(seed), n_pos, n_neg, **kw)
    assert again == pts
    if needs_model(strat):
        assert predict.calls == 2  # once per call


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


@pytest.mark.parametrize("name", PLACEMENT)
@pytest.mark.parametrize("with_image", [False, True])
def test_axes_are_xy_on_a_non_square_image(name, with_image):
    # object in the top-right corner of a wide image: transposed axes would land outside it
    m = np.zeros((40, 200), bool)
    m[2:12, 170:195] = True
    image = texture(m.shape) if with_image else None
    pts = run(name, m, image, 0, 3, 2)
    pos, neg = pts.coords[pts.labels == 1], pts.coords[pts.labels == 0]
    if name in GT_FREE:  # positives come from the model's mask (the gt grown by 2 px)
        pos = pos[:1]
    assert (pos[:, 0] >= 170).all() and (pos[:, 0] < 195).all() and (pos[:, 1] >= 2).all() and (pos[:, 1] < 12).all(), name
    if name in RING:  # the ring is 0.1 x diameter (2.7 px) wide -> at most 3 px from the object
        assert (neg[:, 0] >= 167).all() and (neg[:, 0] < 198).all() and (neg[:, 1] < 15).all(), name
    if name == "saliency-oracle":  # the crop: the dilated object's box padded by 10%
        assert (neg[:, 0] >= 160).all() and (neg[:, 1] < 20).all()


@pytest.mark.parametrize("name", PLACEMENT)
def test_axes_on_a_tall_image(name):
    m = np.zeros((200, 30), bool)
    m[180:196, 1:9] = True  # bottom-left corner
    pts = run(name, m, texture(m.shape, 3), 1, 4, 0)
    c = pts.coords[:1] if name in GT_FREE else pts.coords
    assert (c[:, 0] < 9).all() and (c[:, 1] >= 180).all(), name
    if name in GT_FREE:  # the model's mask: the gt grown by 2 px
        assert (pts.coords[:, 0] < 11).all() and (pts.coords[:, 1] >= 178).all()


@pytest.mark.parametrize("name", PLACEMENT)
def test_determinism(name):
    m = np.zeros((64, 96), bool)
    m[8:56, 10:80] = True
    img = texture(m.shape, 5)
    a, b = run(name, m, img, 7, 5, 3), run(name, m, img, 7, 5, 3)
    assert a == b
    if name in SEEDED:
        assert run(name, m, img, 8, 5, 3) != a
    else:  # centre and grid ignore the rng; shi-tomasi finds 5 corners in noise, 3 in the background
        assert run(name, m, img, 8, 5, 3) == a


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


@pytest.mark.parametrize("name", PLACEMENT)
def test_empty_and_tiny_masks(name):
    empty = np.zeros((10, 10), bool)
    with pytest.raises(PromptError, match="empty"):
        run(name, empty, None, 0, 1, 0)
    neg_only = run(name, empty, None, 0, 0, 2)  # no object: negatives anywhere
    assert neg_only.labels.tolist() == [0] * expected(name, 2)
    one = np.zeros((10, 10), bool)
    one[4, 7] = True
    for image in (None, texture(one.shape)):  # one pixel: every positive is that pixel (documented repeat)
        pts = run(name, one, image, 0, 3, 1)
        pos = pts.coords[pts.labels == 1]
        assert (pos[: 1 if name in GT_FREE else None] == [7, 4]).all() and len(pos) == expected(name, 3)
        assert pts.n_negative == expected(name, 1) and not one[int(pts.coords[pts.labels == 0][0, 1]), int(pts.coords[pts.labels == 0][0, 0])]
    full = np.ones((5, 5), bool)
    with pytest.raises(PromptError, match="whole image"):
        run(name, full, None, 0, 1, 1)
    assert run(name, full, None, 0, 2, 0).n_positive == expected(name, 2)


def test_saliency_needs_predict_and_calls_it_once():
    m = np.zeros((30, 40), bool)
    m[5:20, 10:30] = True
    strat = create_strategy("saliency")
    assert needs_model(strat) and not needs_model(create_strategy("kmedoids"))
    with pytest.raises(ConfigError, match="predict="):
        strat(m, None, np.random.default_rng(0), 2, 1)
    predict = dilated(m)
    strat(m, texture(m.shape), np.random.default_rng(0), 4, 2, predict=predict)
    assert predict.calls == 1
    with pytest.raises(ConfigError, match="shape"):
        strat(m, None, np.random.default_rng(0), 1, 0, predict=lambda p: np.zeros((3, 3), bool))
    with pytest.raises(DataError, match="does not match"):
        strat(m, np.zeros((10, 10, 3), np.uint8), np.random.default_rng(0), 1, 0, predict=predict)


def test_saliency_oracle_samples_the_salient_spot():
    img = np.full((100, 100, 3), 100, np.uint8)
    img[30:36, 60:66] = 255  # a small bright spot inside the object
    sal = spectral_residual_saliency(img)
    assert sal.shape == (100, 100) and 0 <= sal.min() and sal.max() == 1
    r, c = np.unravel_index(np.argmax(sal), sal.shape)
    assert 28 <= r < 38 and 58 <= c < 68  # the peak is on the spot (row 30-35, column 60-65)
    m = np.zeros((100, 100), bool)
    m[20:80, 20:80] = True
    pts = SaliencyOracleStrategy(method="spectral-residual")(m, img, np.random.default_rng(0), 6, 2, predict=lambda p: m)
    d = np.hypot(pts.coords[:, 0] - 62.5, pts.coords[:, 1] - 32.5)
    assert (d < 15).all()  # all 8 points around the spot; uniform sampling would spread over 60 x 60
    assert spectral_residual_saliency(np.full((20, 30), 7, np.uint8)).max() == 0  # flat: no saliency
    assert frequency_tuned_saliency(np.full((20, 30, 3), 7, np.uint8)).max() == 0
    ft = frequency_tuned_saliency(img)
    assert ft[32, 62] == 1 and ft[50, 50] < 0.01  # the spot is the one region unlike the mean colour
    ft_pts = SaliencyOracleStrategy(method="frequency-tuned")(m, img, np.random.default_rng(0), 4, 0, predict=lambda p: m)
    assert (np.hypot(ft_pts.coords[:, 0] - 62.5, ft_pts.coords[:, 1] - 32.5) < 6).all()
    with pytest.raises(ConfigError, match="saliency method"):
        SaliencyOracleStrategy(method="vst")(m, img, np.random.default_rng(0), 1, 0, predict=lambda p: m)


def test_kmedoids_points_are_spread():
    m = np.zeros((120, 120), bool)
    m[10:110, 10:110] = True

    def mean_nn(pts):
        d = np.hypot(*(pts.coords[:, None, :] - pts.coords[None, :, :]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        return d.min(1).mean()

    for name in ("kmedoids", "kmedoids-ring"):
        km = np.mean([mean_nn(run(name, m, None, s, 9, 0)) for s in range(3)])
        rnd = np.mean([mean_nn(run("random", m, None, s, 9, 0)) for s in range(20)])
        assert km > 1.4 * rnd, name  # about 33 px (a 3 x 3 layout of medoids) against about 20 px
    first = run("kmedoids-ring", m, None, 0, 9, 0).coords[0]
    assert np.hypot(*(first - 59.5)) < 6  # BUILD's first point is the 1-medoid: the centre


def test_kmedoids_algorithm_finds_clusters():
    rng = np.random.default_rng(0)
    a = rng.normal((10, 10), 1.5, (100, 2))
    b = rng.normal((60, 30), 1.5, (50, 2))
    idx = kmedoids(np.concatenate([a, b]), 2)
    assert sorted((i >= 100) for i in idx) == [False, True]  # one medoid per cluster
    fixed = kmedoids(np.concatenate([a, b]), 1, fixed=[[10, 10]])
    assert fixed[0] >= 100  # with cluster a already covered, the new medoid goes to b


def test_shi_tomasi_picks_the_corners_of_a_drawn_square():
    img = np.zeros((80, 120, 3), np.uint8)
    img[25:55, 50:90] = 255  # a bright 30 x 40 rectangle, corners (x, y) = (50|89, 25|54)
    m = np.zeros((80, 120), bool)
    m[10:70, 30:110] = True  # the object contains the rectangle
    pts = create_strategy("shi-tomasi")(m, img, np.random.default_rng(0), 4, 0)
    corners = np.array([[50, 25], [89, 25], [50, 54], [89, 54]])
    d = np.hypot(*(pts.coords[:, None, :] - corners[None]).transpose(2, 0, 1))
    assert (d.min(1) <= 2).all() and (d.min(0) <= 2).all()  # each point at a corner, each corner taken
    ring = create_strategy("shi-tomasi-ring")(m, img, np.random.default_rng(0), 4, 0)
    assert ring == pts  # the same corners under the earlier rule
    # no image (or no corner): the points are k-medoid points, as the study's fallback (subsample 2000)
    assert run("shi-tomasi", m, None, 3, 4, 2) == create_strategy("kmedoids", subsample=2000)(m, None, np.random.default_rng(3), 4, 2)
    assert run("shi-tomasi-ring", m, None, 3, 4, 2) == run("kmedoids-ring", m, None, 3, 4, 2)
    # 6 asked, 4 corners: two k-medoid points fill in; the earlier rule keeps them away from the corners
    for name in ("shi-tomasi", "shi-tomasi-ring"):
        six = create_strategy(name)(m, img, np.random.default_rng(0), 6, 0)
        assert np.array_equal(six.coords[:4], pts.coords)
    assert np.hypot(*(six.coords[4:, None, :] - corners[None]).transpose(2, 0, 1)).min() > 5


def test_entropy_picks_the_differently_textured_half():
    img = np.full((60, 120, 3), 128, np.uint8)
    img[10:50, 10:60] = texture((40, 50), 1)  # left half of the object: noise; right half: flat
    m = np.zeros((60, 120), bool)
    m[10:50, 10:110] = True
    for name in ("entropy", "entropy-spread"):
        halves = set()
        for seed in range(10):
            pts = run(name, m, img, seed, 5, 0)
            assert len(pts) == expected(name, 5)
            x0 = pts.coords[0, 0]
            if abs(x0 - 59.5) < 5:  # a seed whose patch straddles the seam: ambiguous, skip it
                continue
            seed_left = x0 < 60
            halves.add(bool(seed_left))
            rest = pts.coords[1:, 0]
            # the ranked points lie in the other half, clear of the 9 x 9 patches straddling the seam
            assert ((rest >= 64) if seed_left else (rest < 56)).all(), (name, seed, pts.coords)
        assert halves == {True, False}  # both seed halves were exercised
    ent = local_entropy(to_grey(img))
    assert ent[30, 30] > 5.5 and ent[30, 90] == 0
    # the strategy's vectorised per-pixel entropy equals scikit-image's filter, borders included
    rc = np.argwhere(np.ones(ent.shape, bool))[::7]
    assert np.allclose(patch_entropy(to_grey(img), rc), ent[rc[:, 0], rc[:, 1]])


def test_max_distance_points_are_at_the_far_end():
    m = np.zeros((20, 220), bool)
    m[8:13, 10:210] = True  # a 5 x 200 bar
    for seed in range(5):
        # the study's rule: the seed, then the 3 subsample pixels farthest from it, all at the far end
        pts = run("max-distance", m, None, seed, 3, 0)
        x0 = pts.coords[0, 0]
        far = 10 if x0 - 10 > 209 - x0 else 209
        assert len(pts) == 4 and (np.abs(pts.coords[1:, 0] - far) <= 10).all(), (seed, pts.coords)
        # the earlier rule spreads: the far end, then the other end
        pts = run("max-distance-spread", m, None, seed, 3, 0)
        x0, x1, x2 = pts.coords[:, 0]
        far = 10 if x0 - 10 > 209 - x0 else 209
        assert abs(x1 - far) <= 10, (seed, pts.coords)
        assert abs(x2 - (219 - far)) <= 10 or abs(x2 - x0) > 0.4 * abs(x1 - x0)  # then the other end


def test_grid_points_form_a_lattice():
    m = np.zeros((60, 80), bool)
    m[10:50, 20:60] = True  # 40 x 40: 16 points -> a 4 x 4 lattice of spacing 10
    pts = run("grid", m, None, 0, 16, 0)
    xs, ys = np.unique(pts.coords[:, 0]), np.unique(pts.coords[:, 1])
    assert xs.tolist() == [25, 35, 45, 55] and ys.tolist() == [15, 25, 35, 45]
    assert len(np.unique(pts.coords, axis=0)) == 16
    bar = np.zeros((40, 100), bool)
    bar[10:30, 10:90] = True  # 20 x 80: 4 points -> one row, spacing 20
    row = run("grid", bar, None, 0, 4, 0).coords
    assert set(row[:, 1].tolist()) == {20} and sorted(row[:, 0].tolist()) == [20, 40, 60, 80]
    # more lattice points than asked: trimmed in spread order, deepest first
    disc = np.hypot(*np.mgrid[-30:31, -30:31]) <= 25
    p7 = run("grid", disc, None, 0, 7, 0).coords
    assert len(np.unique(p7, axis=0)) == 7 and tuple(p7[0]) == (30, 30)
    steps = np.diff(np.unique(p7[:, 0]))
    assert steps.min() >= 8 and steps.max() - steps.min() <= 1  # lattice columns, evenly spaced


def test_interleave_keeps_ratio_in_prefixes():
    pos, neg = np.zeros((14, 2)), np.ones((2, 2))
    labels = interleave(pos, neg).labels
    assert labels[0] == 1 and labels.sum() == 14
    assert labels.tolist().index(0) in range(3, 6)  # first negative about a quarter of the way


def test_registry_names():
    assert set(PLACEMENT + CORRECTION) <= set(list_strategies())
    assert create_strategy("center").name == "centre"
    assert create_strategy("shitomasi").name == "shi-tomasi"
    assert create_strategy("maxdistance").name == "max-distance"
    assert create_strategy("k_medoids").name == "kmedoids"
    for name in PLACEMENT + CORRECTION:  # every name reports itself (rows are keyed by it)
        assert create_strategy(name).name == name
    assert [create_strategy(n).seed_points for n in STUDY] == [0, 0, 0, 1, 1, 1, 0]
