"""The study strategies, RITM's clicker and micro-sam's correction against short independent
re-implementations of the references' rules, written here from their code:

* olivesgatech/PointPrompt ``point_sampling/point_selection.py`` (``extract_random_mask_points``,
  ``extract_kmedoid_points``, ``extract_corner_points``, ``get_entropy_points``,
  ``get_distance_points``, ``object_sample``) and ``main.py`` (seed + n points, ``1 - mask`` for
  exclusion points), with scikit-learn-extra's ``KMedoids`` defaults (heuristic init, alternate);
* SamsungLabs/ritm_interactive_segmentation ``isegm/inference/clicker.py`` (``_get_next_click``);
* computational-cell-analytics/micro-sam ``micro_sam/prompt_generators.py``
  (``IterativePromptGenerator``).

The study drew from torch's and numpy's global generators, which cannot be matched; each
re-implementation here draws from the rng in the strategy's order, so the points must be equal.
The re-implementations keep the study's rules and leave out only the documented bug fixes
((row, col) distances and patches, the n = 1 branch's (0, 0)).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist

from pointprompt.strategies import create_strategy
from segprompt.prompts import Points

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- random masks -------------------------------------------------------------------------
@st.composite
def blobs(draw, min_side=6, max_side=36):
    """A mask of 1-3 rectangles (so it may have several components), neither empty nor full."""
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    m = np.zeros((h, w), bool)
    for _ in range(draw(st.integers(1, 3))):
        y0 = draw(st.integers(0, h - 1))
        x0 = draw(st.integers(0, w - 1))
        m[y0 : draw(st.integers(y0 + 1, h)), x0 : draw(st.integers(x0 + 1, w))] = True
    if m.all():
        m[0, 0] = False
    return m


@st.composite
def noise_masks(draw, shape):
    seed = draw(st.integers(0, 2**16))
    p = draw(st.floats(0.05, 0.95))
    return np.random.default_rng(seed).random(shape) < p


def texture(shape, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
    img[: shape[0] // 2] //= 4  # two textures of different entropy
    return img


def split(pts: Points) -> tuple[np.ndarray, np.ndarray]:
    return pts.coords[pts.labels == 1], pts.coords[pts.labels == 0]


def xy(rc) -> np.ndarray:
    return np.asarray(rc, np.float32).reshape(-1, 2)[:, ::-1]


def tile(pix: np.ndarray, n: int) -> np.ndarray:
    """The study's ``mask_pixels.repeat(n // len + 1, 1)[:n]``."""
    return np.concatenate([pix] * (n // len(pix) + 1))[:n]


# -- PointPrompt, re-implemented --------------------------------------------------------------
def ref_sklearn_extra_kmedoids(X: np.ndarray, k: int, max_iter: int = 300) -> np.ndarray:
    """scikit-learn-extra ``KMedoids(n_clusters=k).fit(X).cluster_centers_`` (init='heuristic',
    method='alternate'); the k most central points ordered by a stable sort."""
    D = cdist(X, X)
    medoids = np.argsort(np.sum(D, axis=1), kind="stable")[:k]
    for _ in range(max_iter):
        before = np.copy(medoids)
        labels = np.argmin(D[medoids, :], axis=0)
        for j in range(k):
            members = np.where(labels == j)[0]
            if len(members) == 0:
                continue
            costs = np.sum(D[members, members[:, np.newaxis]], axis=1)
            best = np.argmin(costs)
            if costs[best] < costs[np.argmax(members == medoids[j])]:
                medoids[j] = members[best]
        if np.all(before == medoids):
            break
    return X[medoids]


def ref_kmedoid_points(region, rng, n, subsample=1800):
    """``extract_kmedoid_points``: (x, y)."""
    if n == 0:
        return np.zeros((0, 2), np.float32)
    pix = np.argwhere(region)
    if len(pix) < n:
        return xy(tile(pix, n))
    pix = pix[rng.choice(len(pix), size=min(subsample, len(pix)), replace=False)]
    return xy(ref_sklearn_extra_kmedoids(pix.astype(np.float64), n))


def ref_random_points(region, rng, n):
    """``extract_random_mask_points``."""
    if n == 0:
        return np.zeros((0, 2), np.float32)
    pix = np.argwhere(region)
    return xy(tile(pix, n) if len(pix) < n else pix[rng.choice(len(pix), size=n, replace=False)])


def ref_subsample(pix, rng, n):
    """The candidate count of ``get_entropy_points`` / ``get_distance_points``."""
    amt = int(0.15 * len(pix))
    base = 0.5
    while (amt < n) and (base <= 1.0):
        amt = int(base * len(pix))
        base += 0.1
    if amt < n:
        amt = len(pix)
        n = len(pix)
    return pix[rng.choice(len(pix), size=amt, replace=False)], n


def ref_rank(values, points, n):
    """The study's ``for pt in range(n): idx = all.index(max(all)); pop``."""
    values, points, chosen = list(values), [tuple(p) for p in points], []
    for _ in range(n):
        i = values.index(max(values))
        chosen.append(points.pop(i))
        values.pop(i)
    return chosen


def ref_seed_plus(region, rng, n, score):
    """main.py's ``inc_init`` + ``get_*_points``: the random seed, then n ranked candidates,
    cycled to n + 1 where the region is too small (our convention)."""
    if n == 0:
        return np.zeros((0, 2), np.float32)
    pix = np.argwhere(region)
    seed = pix[rng.integers(len(pix))]
    cand, n_eff = ref_subsample(pix, rng, n)
    out = [tuple(seed)] + ref_rank([score(seed, c) for c in cand], cand, n_eff)
    return xy(tile(np.array(out), n + 1))


def ref_distance(seed, c):
    return math.sqrt((int(c[0]) - int(seed[0])) ** 2 + (int(c[1]) - int(seed[1])) ** 2)  # (row, col) both


def ref_grid_entropy(grey, r, c, size=9):
    """``select_grid`` + ``image_entropy``: the patch starts 4 px up-left (0 at the edge), cut at the far edge."""
    top, left = max(r - size // 2, 0), max(c - size // 2, 0)
    patch = grey[top : min(top + size, grey.shape[0]), left : min(left + size, grey.shape[1])]
    hist = np.bincount(patch.ravel(), minlength=256) / patch.size
    hist = hist[hist > 0]
    return float(-(hist * np.log2(hist)).sum())


def ref_object_sample(region, rng, n, subsample=1800):
    """``object_sample``, with each component tiled to its own count (the documented fix)."""
    if n == 0:
        return np.zeros((0, 2), np.float32)
    distinct, k = ndimage.label(region)
    for j in range(k):
        if (distinct == j + 1).sum() <= 3:
            distinct[distinct == j + 1] = 0
    distinct, k = ndimage.label(distinct > 0)
    if k == 0:  # documented: the study divided by zero
        distinct, k = ndimage.label(region)
    per = int(n / k)
    count = [int((distinct == j + 1).sum()) for j in range(k)]
    points = [per] * k
    for _ in range(n if per < 1 else n - per * k):
        large = int(np.argmax(count))
        count[large] = 0
        points[large] += 1
    out = [ref_kmedoid_points(distinct == j + 1, rng, points[j], subsample) for j in range(k) if points[j]]
    return np.concatenate(out)


def ref_corner_points(region, grey, rng, n):
    """``extract_corner_points`` on the whole grey image; shortfall filled by k-medoids of 2000."""
    if n == 0:
        return np.zeros((0, 2), np.float32)
    u8 = region.astype(np.uint8)
    pix = np.argwhere(region)
    diam = np.linalg.norm(pix.max(0) - pix.min(0))
    eroded = None
    for q in (0.06, 0.02, 0.01):
        e = cv2.erode(u8, np.ones((int(diam * q), int(diam * q)), np.uint8), iterations=1)
        if e.sum() >= 10:
            eroded = e
            break
    if eroded is None:
        eroded = u8
    ep = np.argwhere(eroded)
    corners = cv2.goodFeaturesToTrack(grey, maxCorners=n, qualityLevel=0.001, minDistance=np.linalg.norm(ep.max(0) - ep.min(0)) / n, mask=eroded, blockSize=3, gradientSize=3)
    corners = np.zeros((0, 2), np.float32) if corners is None else corners.reshape(-1, 2)
    return np.concatenate([corners, ref_kmedoid_points(region, rng, n - len(corners), 2000)])


# -- the tests -------------------------------------------------------------------------------
@settings(max_examples=30, **SETTINGS)
@given(mask=blobs(), n_pos=st.integers(0, 5), n_neg=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_random_and_kmedoids_follow_the_study(mask, n_pos, n_neg, seed):
    if n_pos + n_neg == 0:
        return
    for name, ref in (("random", ref_random_points), ("kmedoids", ref_kmedoid_points)):
        pts = create_strategy(name)(mask, None, np.random.default_rng(seed), n_pos, n_neg)
        rng = np.random.default_rng(seed)
        pos, neg = ref(mask, rng, n_pos), ref(~mask, rng, n_neg)
        got_pos, got_neg = split(pts)
        np.testing.assert_array_equal(got_pos, pos, err_msg=name)
        np.testing.assert_array_equal(got_neg, neg, err_msg=name)


@pytest.mark.parametrize("seed", range(6))
def test_kmedoids_with_as_many_pixels_as_points_keeps_the_heuristic_order(seed):
    """A region of exactly n pixels: every pixel is a medoid, in scikit-learn-extra's heuristic
    order (most central first), not in the random subsample's order."""
    m = np.zeros((6, 6), bool)
    m[0, :3] = True
    m[3, 2] = True  # 4 pixels, 4 points
    got = split(create_strategy("kmedoids")(m, None, np.random.default_rng(seed), 4, 0))[0]
    np.testing.assert_array_equal(got, ref_kmedoid_points(m, np.random.default_rng(seed), 4))


def test_kmedoids_negatives_come_from_the_whole_background():
    m = np.zeros((120, 120), bool)
    m[50:70, 50:70] = True  # a small object in a big background
    neg = split(create_strategy("kmedoids")(m, None, np.random.default_rng(0), 1, 4))[1]
    # 4 medoids of the whole background sit far out (the earlier rule kept them within 3 px of the object)
    dist = ndimage.distance_transform_edt(~m)[neg[:, 1].astype(int), neg[:, 0].astype(int)]
    assert dist.min() > 15, neg
    ring = split(create_strategy("kmedoids-ring")(m, None, np.random.default_rng(0), 1, 4))[1]
    assert ndimage.distance_transform_edt(~m)[ring[:, 1].astype(int), ring[:, 0].astype(int)].max() <= 3


@settings(max_examples=25, **SETTINGS)
@given(mask=blobs(), n_pos=st.integers(0, 6), n_neg=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_max_distance_follows_the_study_in_row_col(mask, n_pos, n_neg, seed):
    if n_pos + n_neg == 0:
        return
    pts = create_strategy("max-distance")(mask, None, np.random.default_rng(seed), n_pos, n_neg)
    rng = np.random.default_rng(seed)
    pos = ref_seed_plus(mask, rng, n_pos, ref_distance)
    neg = ref_seed_plus(~mask, rng, n_neg, ref_distance)
    np.testing.assert_array_equal(split(pts)[0], pos)
    np.testing.assert_array_equal(split(pts)[1], neg)


@settings(max_examples=20, **SETTINGS)
@given(mask=blobs(min_side=8), n_pos=st.integers(0, 5), n_neg=st.integers(0, 3), seed=st.integers(0, 2**32 - 1), image_seed=st.integers(0, 99))
def test_entropy_follows_the_study_in_row_col(mask, n_pos, n_neg, seed, image_seed):
    if n_pos + n_neg == 0:
        return
    img = texture(mask.shape, image_seed)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    pts = create_strategy("entropy")(mask, img, np.random.default_rng(seed), n_pos, n_neg)

    def score(s, c):
        return round(abs(ref_grid_entropy(grey, int(c[0]), int(c[1])) - ref_grid_entropy(grey, int(s[0]), int(s[1]))), 9)

    rng = np.random.default_rng(seed)
    pos = ref_seed_plus(mask, rng, n_pos, score)
    neg = ref_seed_plus(~mask, rng, n_neg, score)
    np.testing.assert_array_equal(split(pts)[0], pos)
    np.testing.assert_array_equal(split(pts)[1], neg)


def test_max_distance_does_not_transpose_the_seed():
    # a wide object: measured from the transposed seed (the study's bug) the "farthest" pixels are not
    m = np.zeros((30, 200), bool)
    m[5:25, 5:195] = True
    rc = np.argwhere(m)
    bug_fails = 0
    for seed in range(8):
        pts = create_strategy("max-distance")(m, None, np.random.default_rng(seed), 4, 0)
        s = pts.coords[0]
        far = np.quantile(np.hypot(rc[:, 1] - s[0], rc[:, 0] - s[1]), 0.99) - 1
        # every chosen point is at least as far from the seed as 99% of the object's pixels
        assert np.hypot(*(pts.coords[1:] - s).T).min() >= far, (seed, pts.coords)
        # the study's code on the same draws: distances from (x, y) read as (row, col)
        rng = np.random.default_rng(seed)
        seed_rc = rc[rng.integers(len(rc))]
        cand, n = ref_subsample(rc, rng, 4)
        bug = xy(ref_rank([math.hypot(c[0] - seed_rc[1], c[1] - seed_rc[0]) for c in cand], cand, n))
        bug_fails += np.hypot(*(bug - s).T).min() < far
    assert bug_fails >= 2  # the check tells the two apart


@settings(max_examples=15, **SETTINGS)
@given(mask=blobs(min_side=10), n_pos=st.integers(0, 6), n_neg=st.integers(0, 3), seed=st.integers(0, 2**32 - 1), image_seed=st.integers(0, 99), flat=st.booleans())
def test_shi_tomasi_follows_the_study(mask, n_pos, n_neg, seed, image_seed, flat):
    if n_pos + n_neg == 0:
        return
    img = np.full((*mask.shape, 3), 90, np.uint8) if flat else texture(mask.shape, image_seed)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    pts = create_strategy("shi-tomasi")(mask, img, np.random.default_rng(seed), n_pos, n_neg)
    rng = np.random.default_rng(seed)
    pos = ref_corner_points(mask, grey, rng, n_pos)
    neg = ref_corner_points(~mask, grey, rng, n_neg)
    np.testing.assert_array_equal(split(pts)[0], pos)
    np.testing.assert_array_equal(split(pts)[1], neg)


@settings(max_examples=25, **SETTINGS)
@given(mask=blobs(), n_pos=st.integers(0, 7), n_neg=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_obj_follows_the_study_per_component(mask, n_pos, n_neg, seed):
    if n_pos + n_neg == 0:
        return
    pts = create_strategy("obj")(mask, None, np.random.default_rng(seed), n_pos, n_neg)
    rng = np.random.default_rng(seed)
    pos = ref_object_sample(mask, rng, n_pos)
    neg = ref_object_sample(~mask, rng, n_neg)
    np.testing.assert_array_equal(split(pts)[0], pos)
    np.testing.assert_array_equal(split(pts)[1], neg)


def test_obj_shares_points_between_components():
    m = np.zeros((60, 100), bool)
    m[5:45, 5:45] = True  # 1600 px
    m[10:20, 60:90] = True  # 300 px
    m[50:52, 95:97] = True  # 4 px: kept (> 3)
    m[55, 5:8] = True  # 3 px: dropped
    pos = split(create_strategy("obj")(m, None, np.random.default_rng(0), 5, 0))[0]
    lab, _ = ndimage.label(m)
    comp = lab[pos[:, 1].astype(int), pos[:, 0].astype(int)]
    # 5 // 3 = 1 each, the 2 left over to the two largest; the 3-pixel speck gets none
    assert comp.tolist() == [1, 1, 2, 2, 3] and 4 not in comp
    two = split(create_strategy("obj")(m, None, np.random.default_rng(0), 2, 0))[0]  # fewer points than components
    assert lab[two[:, 1].astype(int), two[:, 0].astype(int)].tolist() == [1, 2]


# -- saliency (no ground truth beyond the probe) -----------------------------------------------
def test_saliency_samples_the_prediction_not_the_ground_truth():
    gt = np.zeros((80, 120), bool)
    gt[10:40, 10:50] = True
    model = np.zeros_like(gt)
    model[30:70, 60:110] = True  # the model's mask lies elsewhere
    calls = []

    def predict(points):
        calls.append(points)
        return model

    img = texture(gt.shape, 3)
    pts = create_strategy("saliency")(gt, img, np.random.default_rng(0), 6, 3, predict=predict)
    pos, neg = split(pts)
    assert len(calls) == 1 and calls[0].labels.tolist() == [1, 0]
    probe = calls[0].coords
    # the probe: a gt pixel and a background pixel, both kept as the first point of their side
    assert gt[int(probe[0, 1]), int(probe[0, 0])] and not gt[int(probe[1, 1]), int(probe[1, 0])]
    np.testing.assert_array_equal(pos[0], probe[0])
    np.testing.assert_array_equal(neg[0], probe[1])
    assert len(pos) == 7 and len(neg) == 4
    assert model[pos[1:, 1].astype(int), pos[1:, 0].astype(int)].all()  # inside the model's mask
    assert not model[neg[1:, 1].astype(int), neg[1:, 0].astype(int)].any()  # outside it
    # the earlier rule samples inside the ground truth instead
    oracle = split(create_strategy("saliency-oracle")(gt, img, np.random.default_rng(0), 6, 0, predict=predict))[0]
    assert gt[oracle[:, 1].astype(int), oracle[:, 0].astype(int)].all()


def test_saliency_crop_is_the_prediction_box_padded_by_10_px():
    gt = np.zeros((100, 100), bool)
    gt[40:50, 40:50] = True
    pts = create_strategy("saliency", within="crop")(gt, None, np.random.default_rng(1), 400, 0, predict=lambda p: gt)
    pos = split(pts)[0][1:]
    # no image: uniform over the crop rows / columns [40 - 10, 49 + 10) (the study's slice end)
    assert pos[:, 0].min() == 30 and pos[:, 0].max() == 58 and pos[:, 1].min() == 30 and pos[:, 1].max() == 58


@settings(max_examples=30, **SETTINGS)
@given(gt=blobs(min_side=12), data=st.data(), n_pos=st.integers(0, 5), n_neg=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_saliency_points_come_from_the_prediction(gt, data, n_pos, n_neg, seed):
    if n_pos + n_neg == 0:
        return
    model = data.draw(noise_masks(gt.shape))
    pts = create_strategy("saliency")(gt, texture(gt.shape, seed % 50), np.random.default_rng(seed), n_pos, n_neg, predict=lambda p: model)
    pos, neg = split(pts)
    assert len(pos) == n_pos + (n_pos > 0) and len(neg) == n_neg + (n_neg > 0)
    if n_pos and model.sum() > n_pos + 2:
        assert gt[int(pos[0, 1]), int(pos[0, 0])] and model[pos[1:, 1].astype(int), pos[1:, 0].astype(int)].all()
    if n_neg and (~model).sum() > n_neg + 2:
        assert not gt[int(neg[0, 1]), int(neg[0, 0])] and not model[neg[1:, 1].astype(int), neg[1:, 0].astype(int)].any()


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_saliency_exclusion_box_is_the_studys_random_subbox(data, seed):
    from pointprompt.strategies import _random_subbox

    bg = data.draw(noise_masks((data.draw(st.integers(12, 140)), data.draw(st.integers(12, 140)))))
    if not bg.any():
        return
    rows, cols = np.nonzero(bg)
    ys, xs = _random_subbox(bg, np.random.default_rng(seed), 100)
    h, w = bg.shape
    assert rows.min() <= ys.start < ys.stop <= h and cols.min() <= xs.start < xs.stop <= w
    whole_box = (ys, xs) == (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))  # every draw failed: the fallback
    if not whole_box and cols.max() - cols.min() > 10 and rows.max() - rows.min() > 10 and bg[ys, xs].sum() >= 0.1 * (ys.stop - ys.start) * (xs.stop - xs.start):
        for a, b, lo, hi, size in ((xs.start, xs.stop, cols.min(), cols.max(), w), (ys.start, ys.stop, rows.min(), rows.max(), h)):
            assert lo <= a < hi - 10
            assert b - a >= 10
            # lengthened by exactly 100 when drawn shorter than 100 and there is room
            assert b < hi or (b - 100 >= a + 10 and b - 100 < hi and b - 100 - a < 100 and b < size)


# -- RITM ------------------------------------------------------------------------------------
def ref_ritm_next_click(gt, pred, not_clicked):
    """RITM ``Clicker._get_next_click`` (padding=True) with scipy's exact distance transform."""
    fn = np.logical_and(gt, np.logical_not(pred))
    fp = np.logical_and(np.logical_not(gt), pred)
    fn_dt = ndimage.distance_transform_edt(np.pad(fn, 1))[1:-1, 1:-1] * not_clicked
    fp_dt = ndimage.distance_transform_edt(np.pad(fp, 1))[1:-1, 1:-1] * not_clicked
    is_positive = fn_dt.max() > fp_dt.max()
    dt = fn_dt if is_positive else fp_dt
    y, x = np.argwhere(dt == dt.max())[0]
    return bool(is_positive), (int(y), int(x))


@settings(max_examples=80, **SETTINGS)
@given(gt=blobs(min_side=4, max_side=30), data=st.data(), n_clicked=st.integers(0, 20), seed=st.integers(0, 2**16))
def test_ritm_clicker_matches_ritms_get_next_click(gt, data, n_clicked, seed):
    kind = data.draw(st.sampled_from(["noise", "shifted", "eroded", "empty"]))
    if kind == "noise":
        pred = data.draw(noise_masks(gt.shape))
    elif kind == "shifted":
        pred = np.roll(gt, (data.draw(st.integers(-4, 4)), data.draw(st.integers(-4, 4))), axis=(0, 1))
    elif kind == "eroded":
        pred = ndimage.binary_erosion(gt, iterations=data.draw(st.integers(1, 3)))
    else:
        pred = np.zeros_like(gt)
    if np.array_equal(gt, pred):
        return
    rng = np.random.default_rng(seed)
    clicked_rc = np.argwhere(np.ones(gt.shape, bool))[rng.choice(gt.size, size=min(n_clicked, gt.size), replace=False)]
    not_clicked = np.ones(gt.shape, bool)
    not_clicked[clicked_rc[:, 0], clicked_rc[:, 1]] = False
    clicked = Points(xy(clicked_rc), np.ones(len(clicked_rc), np.int64)) if len(clicked_rc) else None
    got = create_strategy("ritm").correct(gt, pred, np.random.default_rng(0), clicked=clicked)
    positive, (y, x) = ref_ritm_next_click(gt, pred, not_clicked)
    assert got.labels.tolist() == [int(positive)]
    assert got.coords.tolist() == [[x, y]]


def test_ritm_first_click_tie_and_trajectory():
    gt = np.zeros((20, 30), bool)
    gt[4:15, 5:20] = True
    strat = create_strategy("ritm")
    first = strat.first(gt, np.random.default_rng(0))
    assert first.labels.tolist() == [1] and ref_ritm_next_click(gt, np.zeros_like(gt), np.ones_like(gt)) == (True, (9, 10))
    assert first.coords.tolist() == [[10, 9]]
    # equal FN and FP depths: RITM's strict '>' makes the click negative
    pred = np.zeros((20, 40), bool)
    pred[5:10, 25:30] = True
    gt2 = np.zeros_like(pred)
    gt2[5:10, 5:10] = True
    tie = strat.correct(gt2, pred, np.random.default_rng(0))
    assert tie.labels.tolist() == [0] and tie.coords.tolist() == [[27, 7]]
    # a clicked pixel is never clicked again: a clicker loop over a frozen prediction walks the error
    clicks = strat.first(gt, np.random.default_rng(0))
    frozen = np.zeros_like(gt)
    for _ in range(6):
        clicks = clicks + strat.correct(gt, frozen, np.random.default_rng(0), clicked=clicks)
    assert len(np.unique(clicks.coords, axis=0)) == 7
    assert len(strat.correct(gt, gt, np.random.default_rng(0))) == 0  # no error left: no click


# -- micro-sam -------------------------------------------------------------------------------
def ref_microsam_click(gt, pred, rng):
    """``IterativePromptGenerator`` for one object: positive from FN (else prediction & object),
    negative from FP, else the object's box padded by 3 px minus the object, else any background."""
    pos_loc = np.nonzero(gt & ~pred)
    if len(pos_loc[0]) == 0:
        pos_loc = np.nonzero(gt & pred)
    i = rng.choice(len(pos_loc[0]), size=1, replace=False)[0]
    neg_loc = np.nonzero(~gt & pred)
    if len(neg_loc[0]) == 0:
        r, c = np.nonzero(gt)
        box = np.zeros(gt.shape, int)
        box[max(r.min() - 3, 0) : min(r.max() + 1 + 3, gt.shape[0]), max(c.min() - 3, 0) : min(c.max() + 1 + 3, gt.shape[1])] = 1
        neg_loc = np.nonzero(np.abs(box - gt.astype(int)))
        if len(neg_loc[0]) == 0:
            neg_loc = np.nonzero(~gt)
    j = rng.choice(len(neg_loc[0]), size=1, replace=False)[0]
    return [[pos_loc[1][i], pos_loc[0][i]], [neg_loc[1][j], neg_loc[0][j]]]


@settings(max_examples=60, **SETTINGS)
@given(gt=blobs(min_side=4, max_side=60), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_microsam_correction_matches_its_prompt_generator(gt, data, seed):
    kind = data.draw(st.sampled_from(["noise", "inside", "shifted"]))
    if kind == "noise":
        pred = data.draw(noise_masks(gt.shape))
    elif kind == "inside":  # no false positive: the 3 px box fallback
        pred = gt & data.draw(noise_masks(gt.shape))
    else:
        pred = np.roll(gt, (data.draw(st.integers(-3, 3)), data.draw(st.integers(-3, 3))), axis=(0, 1))
    got = create_strategy("microsam").correct(gt, pred, np.random.default_rng(seed))
    assert got.labels.tolist() == [1, 0]
    assert got.coords.tolist() == ref_microsam_click(gt, pred, np.random.default_rng(seed))


def test_microsam_fallback_box_is_padded_by_3_px():
    gt = np.zeros((200, 200), bool)
    gt[40:160, 50:150] = True  # diameter 156: the earlier rule padded by 15 px
    far = [create_strategy("microsam").correct(gt, gt, np.random.default_rng(s)).coords[1] for s in range(30)]
    dist = ndimage.distance_transform_cdt(~gt, metric="chessboard")
    assert max(dist[int(y), int(x)] for x, y in far) <= 3
    old = [create_strategy("microsam", ring=0.1).correct(gt, gt, np.random.default_rng(s)).coords[1] for s in range(30)]
    assert max(dist[int(y), int(x)] for x, y in old) > 3
