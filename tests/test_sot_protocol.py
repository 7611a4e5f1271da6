"""Show-or-Tell protocol core: merging, calibration, reference sampling, SoT's mIoU.

The merge and the metric are compared with short re-implementations of SoT's code written here
(FocoosAI/ShowOrTell ``models/base_model.py: BaseModel.evaluate`` in torch, and
``common/evaluation.py: SegmentationMetrics``), not with our own functions.
Real-data tests need SEGPROMPT_DATA_ROOT (camvid, sammed2d_demo).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segprompt.data import Sample, SegmentationDataset, load_dataset
from segprompt.errors import ConfigError, DataError
from segprompt.metrics import ConfusionMatrix
from segprompt.sot import (
    fit_threshold_miou,
    MIN_AREA,
    MIN_AREA_AS_RUN,
    Calibration,
    ReferenceIndex,
    fit_temperature,
    merge_calibrated,
    merge_sot,
    min_area_for,
    sample_reference_sets,
    sample_references,
    sot_miou,
)

realdata = pytest.mark.skipif(
    not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)"
)


# --------------------------------------------------------------------------- SoT re-implementations


def sot_merge_reference(prob_maps: np.ndarray, ignore_background: bool) -> np.ndarray:
    """SoT BaseModel.evaluate's merge, in torch, as their code does it."""
    segm_mask = [torch.from_numpy(np.ascontiguousarray(m)) for m in prob_maps]
    if ignore_background:
        segm_mask.insert(0, torch.zeros_like(segm_mask[0]))
        for i in range(len(segm_mask)):
            mask_copy = segm_mask[i].clone()
            segm_mask[i] = torch.where(mask_copy > 0.2, mask_copy, 0)
    return torch.stack(segm_mask).argmax(dim=0).numpy()


def sot_metrics_reference(gts, preds, n_classes: int, ignore_background: bool):
    """SoT SegmentationMetrics: _fast_hist accumulation and get_results' mean IoU / class IoU."""
    hist = np.zeros((n_classes, n_classes))
    for lt, lp in zip(gts, preds):
        lt, lp = lt.flatten(), lp.flatten()
        mask = (lt >= 0) & (lt < n_classes)
        hist += np.bincount(n_classes * lt[mask].astype(int) + lp[mask], minlength=n_classes**2).reshape(n_classes, n_classes)
    gt_sum = hist.sum(axis=1)
    mask = gt_sum != 0
    diag = np.diag(hist)
    iu = diag / (gt_sum + hist.sum(axis=0) - diag + 1e-6)
    mean_iu = np.mean(iu[mask][1:]) if ignore_background else np.mean(iu[mask])
    return hist, mean_iu, {i: (iu[i] if m else "X") for i, m in enumerate(mask)}


# --------------------------------------------------------------------------- merge


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merge_threshold_at_exactly_0_2_is_background_and_just_above_is_the_class(dtype):
    above = np.nextafter(dtype(0.2), dtype(1))
    p = np.array([[[0.2, above, 0.0, 0.5]]], dtype=dtype)  # K=1, H=1, W=4
    got = merge_sot(p, has_background=True)
    assert got.dtype == np.int64 and got.shape == (1, 4)
    assert got.tolist() == [[0, 1, 0, 1]]
    np.testing.assert_array_equal(got, sot_merge_reference(p, True))
    # a custom threshold moves the cut the same way
    assert merge_sot(p, True, threshold=0.5).tolist() == [[0, 0, 0, 0]]


def test_merge_ties_go_to_the_first_index():
    p = np.array([[[0.7, 0.1, 0.3]], [[0.7, 0.1, 0.3]], [[0.1, 0.1, 0.3]]])  # classes 0 and 1 tie
    with_bg = merge_sot(p, True)
    without = merge_sot(p, False)
    assert with_bg.tolist() == [[1, 0, 1]]  # all <= 0.2: the zero background map wins the tie
    assert without.tolist() == [[0, 0, 0]]
    np.testing.assert_array_equal(with_bg, sot_merge_reference(p, True))
    np.testing.assert_array_equal(without, sot_merge_reference(p, False))


def test_merge_without_background_takes_no_threshold():
    p = np.array([[[0.1, 0.05]], [[0.05, 0.15]]])
    assert merge_sot(p, False).tolist() == [[0, 1]]  # 0.1 and 0.15 win although below 0.2
    assert merge_sot(p, True).tolist() == [[0, 0]]
    assert merge_sot(np.zeros((0, 2, 3)), True).tolist() == [[0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("has_background", [True, False])
def test_merge_equals_sot_code_on_random_maps(dtype, has_background):
    rng = np.random.default_rng(0)
    for k in (1, 2, 4):
        # multiples of 0.05: many pixels at exactly 0.2 and many ties
        p = (rng.integers(0, 21, size=(k, 17, 13)) * 0.05).astype(dtype)
        np.testing.assert_array_equal(merge_sot(p, has_background), sot_merge_reference(p, has_background))
        p = rng.random((k, 9, 11)).astype(dtype)
        np.testing.assert_array_equal(merge_sot(p, has_background), sot_merge_reference(p, has_background))


def test_merge_rejects_bad_maps():
    with pytest.raises(DataError, match=r"\(K, H, W\)"):
        merge_sot(np.zeros((4, 4)), True)
    with pytest.raises(DataError, match="floating point"):
        merge_sot(np.zeros((1, 4, 4), dtype=np.uint8), True)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        merge_sot(np.full((1, 2, 2), 1.5), True)
    with pytest.raises(DataError, match="NaN"):
        merge_sot(np.full((1, 2, 2), np.nan), True)
    with pytest.raises(DataError, match="nothing to merge"):
        merge_sot(np.zeros((0, 2, 2)), False)
    with pytest.raises(ConfigError, match="threshold"):
        merge_sot(np.zeros((1, 2, 2)), True, threshold=1.0)


# --------------------------------------------------------------------------- metrics


def test_ignore_index_untouched_and_sot_miou_equals_sot_code():
    rng = np.random.default_rng(1)
    k = 3
    gts, preds = [], []
    cm = ConfusionMatrix(num_classes=k + 1, ignore_index=255)
    for _ in range(4):
        gt = rng.integers(0, k + 1, size=(12, 10))
        gt[rng.random(gt.shape) < 0.2] = 255
        pred = merge_sot(rng.random((k, 12, 10)), has_background=True)
        cm.update(pred, gt)
        gts.append(gt)
        preds.append(pred)
    for ignore_background in (True, False):
        hist, mean_iu, cls_iu = sot_metrics_reference(gts, preds, k + 1, ignore_background)
        np.testing.assert_array_equal(cm.matrix, hist)  # 255 never counted, as SoT's range mask
        miou, per_class = sot_miou(cm, has_background=ignore_background)
        assert miou == pytest.approx(mean_iu, abs=1e-6)
        for c, v in cls_iu.items():
            assert (np.isnan(per_class[c]) and v == "X") or per_class[c] == pytest.approx(v, abs=1e-6)
    assert cm.total == sum(int((g != 255).sum()) for g in gts)


def test_sot_miou_leaves_out_classes_absent_from_targets():
    # class 2 is predicted but never in the targets: SoT leaves it out of the mean, ConfusionMatrix counts 0
    gt = np.array([[0, 0, 1, 1, 255]])
    pred = np.array([[0, 2, 1, 1, 2]])
    cm = ConfusionMatrix(3, 255).update(pred, gt)
    for bg in (True, False):
        _, mean_iu, cls_iu = sot_metrics_reference([gt], [pred], 3, bg)
        miou, per_class = sot_miou(cm.matrix, bg)
        assert miou == pytest.approx(mean_iu, abs=1e-6)
        assert np.isnan(per_class[2]) and cls_iu[2] == "X"
    assert sot_miou(cm, False)[0] != pytest.approx(cm.miou())
    # no background pixel in the targets: SoT's slicing drops the first present class instead
    gt2 = np.array([[1, 1, 2, 2]])
    pred2 = np.array([[1, 0, 2, 2]])
    _, mean_iu, _ = sot_metrics_reference([gt2], [pred2], 3, True)
    assert sot_miou(ConfusionMatrix(3).update(pred2, gt2), True)[0] == pytest.approx(mean_iu, abs=1e-6) == 1.0
    assert sot_miou(ConfusionMatrix(3).update(pred2, gt2), True, background_rule="class0")[0] == pytest.approx(0.75)


# --------------------------------------------------------------------------- calibration


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _synthetic_calibration_set(n, k, temperature, threshold, seed, has_background=True, size=40):
    """Labels drawn from softmax([0,] L); maps p_k = sigmoid(logit(t_k) + T_k * L_k) (mis-scaled by T)."""
    rng = np.random.default_rng(seed)
    temps = np.broadcast_to(np.asarray(temperature, float), (k,))
    thr = np.broadcast_to(np.asarray(threshold, float), (k,))
    maps, labels = [], []
    for _ in range(n):
        z = rng.normal(0.0, 2.0, size=(k, size, size)) + rng.normal(0, 1.0, size=(k, 1, 1))
        full = np.concatenate([np.zeros((1, size, size)), z]) if has_background else z
        post = np.exp(full - full.max(0))
        post /= post.sum(0)
        cum = post.cumsum(0)
        u = rng.random((size, size))
        y = (u[None] > cum).sum(0).clip(0, full.shape[0] - 1)
        c = _logit(thr) if has_background else np.zeros(k)
        p = _sigmoid(c[:, None, None] + temps[:, None, None] * z)
        maps.append(p)
        labels.append(y.astype(np.int64))
    return maps, labels


def test_calibrated_merge_at_sot_parameters_equals_merge_sot():
    rng = np.random.default_rng(3)
    for bg in (True, False):
        p = rng.random((3, 20, 20))
        np.testing.assert_array_equal(merge_calibrated(p, has_background=bg), sot_merge_reference(p, bg))
        np.testing.assert_array_equal(merge_calibrated(p, Calibration.sot(bg)), merge_sot(p, bg))
    post = Calibration.sot(True).apply(rng.random((2, 5, 5)))
    assert post.shape == (3, 5, 5) and np.allclose(post.sum(0), 1.0)


def test_fit_recovers_a_known_temperature_and_threshold():
    maps, labels = _synthetic_calibration_set(6, 3, temperature=2.5, threshold=0.3, seed=0)
    cal = fit_temperature(maps, labels, has_background=True)
    assert cal.temperature.shape == (1,) and cal.temperature[0] == pytest.approx(2.5, rel=0.08)
    assert cal.threshold[0] == pytest.approx(0.3, abs=0.03)
    assert cal.nll_after < cal.nll_before and cal.converged
    per = fit_temperature(*_synthetic_calibration_set(6, 3, [1.5, 2.5, 4.0], [0.1, 0.3, 0.6], seed=1), per_class=True)
    np.testing.assert_allclose(per.temperature, [1.5, 2.5, 4.0], rtol=0.12)
    np.testing.assert_allclose(per.threshold, [0.1, 0.3, 0.6], atol=0.05)
    nobg = fit_temperature(*_synthetic_calibration_set(6, 3, 0.5, 0.5, seed=2, has_background=False), has_background=False)
    assert nobg.threshold is None and nobg.temperature[0] == pytest.approx(0.5, rel=0.08)


def test_fit_on_a_seeded_pixel_subsample():
    maps, labels = _synthetic_calibration_set(6, 3, temperature=2.5, threshold=0.3, seed=0)
    a = fit_temperature(maps, labels, max_pixels=4000, seed=1)
    b = fit_temperature(maps, labels, max_pixels=4000, seed=1)
    assert a.n_pixels == 4000 and a.temperature[0] == b.temperature[0]
    assert a.temperature[0] == pytest.approx(2.5, rel=0.25)
    assert fit_temperature(maps, labels, max_pixels=4000, seed=2).temperature[0] != a.temperature[0]


@pytest.mark.parametrize("scale", [0.3, 4.0])  # flattened and sharpened maps
def test_fit_lowers_validation_nll(scale):
    train = _synthetic_calibration_set(4, 2, scale, 0.5, seed=10)
    val = _synthetic_calibration_set(4, 2, scale, 0.5, seed=11)
    for kind in ("both", "temperature", "threshold"):
        cal = fit_temperature(*train, fit=kind)
        before, after = Calibration.sot(True).nll(*val), cal.nll(*val)
        assert after < before - 0.01, (kind, before, after)
    assert fit_temperature(*train, fit="threshold").temperature[0] == 1.0
    assert fit_temperature(*train, fit="temperature").threshold[0] == pytest.approx(0.2)


def test_fit_skips_ignored_pixels_and_checks_labels():
    maps, labels = _synthetic_calibration_set(2, 2, 2.0, 0.3, seed=5, size=20)
    labels = [y.copy() for y in labels]
    for y in labels:
        y[:5] = 255
    noisy = [m.copy() for m in maps]
    for m in noisy:
        m[:, :5] = np.random.default_rng(0).random(m[:, :5].shape)
    a, b = fit_temperature(maps, labels), fit_temperature(noisy, labels)
    np.testing.assert_allclose(a.temperature, b.temperature)
    np.testing.assert_allclose(a.threshold, b.threshold)
    labels[0][6, 6] = 3  # K = 2 with background: labels 0..2
    with pytest.raises(DataError, match="outside"):
        fit_temperature(maps, labels)
    with pytest.raises(ConfigError):
        fit_temperature(maps, labels, has_background=False, fit="threshold")
    with pytest.raises(ConfigError):
        merge_calibrated(maps[0], Calibration.sot(True), has_background=False)


# --------------------------------------------------------------------------- references


@functools.lru_cache(maxsize=None)
def _objects():
    ds = load_dataset("synthetic-objects", n=24, seed=0, size=64)
    return ds, ReferenceIndex.build(ds)


def _independent_eligible(ds, class_index, min_area, exclude=()):
    out = []
    for s in ds:
        n = int((s.mask == class_index).sum())
        if n > 0 and n > min_area * s.mask.size and s.id not in exclude:
            out.append(s.id)
    return out


def test_references_respect_the_area_rule_and_the_documented_draw():
    ds, index = _objects()
    # the object class in most scenes; min_area = its second smallest share, so the rule rejects two
    shares = {n: sorted(a for a in ((s.mask == c).mean() for s in ds) if a > 0) for c, n in enumerate(ds.class_names) if c}
    name = max(shares, key=lambda n: len(shares[n]))
    c, min_area = ds.class_names.index(name), float(shares[name][1])
    eligible = _independent_eligible(ds, c, min_area)
    assert 3 <= len(eligible) <= len(_independent_eligible(ds, c, 0.0)) - 2
    refs = sample_references(ds, name, shots=3, seed=7, min_area=min_area, index=index)
    assert len(refs) == 3 and len({r.sample_id for r in refs}) == 3
    for r in refs:
        sample = ds[index.position(r.sample_id)]
        assert r.sample_id in eligible and r.mask.dtype == bool
        np.testing.assert_array_equal(r.mask, sample.mask == c)
        assert r.mask.mean() > min_area
    order = np.random.default_rng([7, c]).permutation(len(eligible))[:3]
    assert [r.sample_id for r in refs] == [eligible[i] for i in order]
    assert [r.sample_id for r in sample_references(ds, c, 3, 7, min_area)] == [r.sample_id for r in refs]  # id = name, no index
    with pytest.raises(DataError, match=rf"has {len(eligible)} eligible reference image\(s\), {len(eligible) + 1} shot"):
        sample_references(ds, name, len(eligible) + 1, 0, min_area, index=index)


class _Tiny(SegmentationDataset):
    """10 x 10 label maps: class 1 covers 9, 10, 11 and 30 pixels; a row of ignore in each."""

    task = "multiclass"
    class_names = ("background", "thing")

    def __init__(self):
        super().__init__()
        self.name = "tiny"
        self.records = [9, 10, 11, 30]

    def record_id(self, record):
        return f"tiny_{record}"

    def load(self, record):
        mask = np.zeros((10, 10), dtype=np.int64)
        mask.flat[:record] = 1
        mask[9] = 255
        return Sample(id=self.record_id(record), image=np.zeros((10, 10, 3), np.uint8), mask=mask, class_names=self.class_names)


def test_reference_area_rule_rejects_a_mask_at_exactly_min_area():
    # SoT: rejected when mask.sum() <= H * W * pct / 100, ignore pixels in H * W
    ds = _Tiny()
    got = {r.sample_id for s in range(6) for r in sample_references(ds, "thing", 2, s, min_area=0.10)}
    assert got == {"tiny_11", "tiny_30"}
    with pytest.raises(DataError, match=r"has 2 eligible .* 4 of 4 images contain it, 2 cover <= min_area=0.1"):
        sample_references(ds, 1, 3, 0, min_area=0.10)
    with pytest.raises(DataError, match=r"has 1 eligible .* 1 more are excluded"):
        sample_references(ds, 1, 2, 0, min_area=0.10, exclude_ids={"tiny_30"})


def test_references_seed_and_nested_shots():
    ds, index = _objects()
    ids = lambda seed, k: [r.sample_id for r in sample_references(ds, "star", k, seed, 0.0, index=index)]  # noqa: E731
    assert ids(0, 3) == ids(0, 3)
    assert any(ids(s, 3) != ids(0, 3) for s in (1, 2, 3))
    assert ids(5, 1) == ids(5, 3)[:1]
    sets = sample_reference_sets(ds, ["star", "ring"], 2, 0, 0.0, index=index)
    assert [r.sample_id for r in sets["star"]] == ids(0, 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), shots=st.integers(1, 3), drop=st.sets(st.integers(0, 23), max_size=12))
def test_references_never_return_an_excluded_image(seed, shots, drop):
    ds, index = _objects()
    exclude = {index.ids[i] for i in drop}
    try:
        refs = sample_references(ds, "square", shots, seed, 0.005, exclude, index=index)
    except DataError as exc:
        assert len(_independent_eligible(ds, ds.class_names.index("square"), 0.005, exclude)) < shots, exc
        return
    got = [r.sample_id for r in refs]
    assert len(got) == shots == len(set(got)) and not set(got) & exclude


def test_reference_arguments_and_min_area_table():
    ds, index = _objects()
    with pytest.raises(ConfigError, match="unknown class"):
        sample_references(ds, "zebra", 1, 0, index=index)
    with pytest.raises(ConfigError, match="shots"):
        sample_references(ds, "disc", 0, 0, index=index)
    with pytest.raises(ConfigError, match="min_area"):
        sample_references(ds, "disc", 1, 0, 1.0, index=index)
    with pytest.raises(ConfigError, match="another dataset"):
        sample_references(ds.subset([0, 1]), "disc", 1, 0, index=index)
    assert min_area_for("VOC") == min_area_for("pascal-voc") == 0.10 == MIN_AREA["voc"]
    assert min_area_for("ADE20K") == 0.04 and min_area_for("Cityscapes") == 0.01
    assert min_area_for("camvid") == 0.0 and min_area_for("VOC", MIN_AREA_AS_RUN) == 0.02


def test_references_on_a_binary_set():
    ds = load_dataset("synthetic-object-instances", n=6, seed=0, size=64)
    index = ReferenceIndex.build(ds)
    name = ds[0].texts[0]
    refs = sample_references(ds, name, 2, 0, 0.0, index=index)
    for r in refs:
        s = ds[index.position(r.sample_id)]
        assert name in s.texts and r.mask.any()
        np.testing.assert_array_equal(r.mask, s.mask)
    assert len(sample_references(ds, 1, 3, 0, index=index)) == 3
    with pytest.raises(ConfigError, match="binary"):
        sample_references(ds, 2, 1, 0, index=index)


@realdata
def test_camvid_car_references_with_min_area():
    ds = load_dataset("camvid")
    index = ReferenceIndex.build(ds)
    car = ds.class_names.index("car")
    evaluated = set(ds.ids[:10])
    refs = sample_references(ds, "car", 5, 0, min_area=0.01, exclude_ids=evaluated, index=index)
    assert len({r.sample_id for r in refs}) == 5
    for r in refs:
        assert r.sample_id not in evaluated
        labels = ds[index.position(r.sample_id)].mask
        assert (labels == car).sum() > 0.01 * labels.size
        np.testing.assert_array_equal(r.mask, labels == car)
    with pytest.raises(DataError, match=r"class 'car' has \d+ eligible"):
        sample_references(ds, "car", 5, 0, min_area=0.2, index=index)


@realdata
def test_sammed2d_exclusion_covers_every_structure_of_an_evaluated_image():
    ds = load_dataset("sammed2d_demo")
    index = ReferenceIndex.build(ds)
    image_of = {sid: key for sid, key in zip(index.ids, index.image_keys)}
    for seed in range(4):
        liver = [s for s in index.ids if "liver" in s]
        refs = sample_references(ds, "liver", 1, seed, exclude_ids={liver[0]}, index=index)
        assert image_of[refs[0].sample_id] != image_of[liver[0]]
    excluded = index.excluded({index.ids[0]})
    assert excluded.sum() > 1 and {image_of[s] for s, e in zip(index.ids, excluded) if e} == {image_of[index.ids[0]]}


def _two_level_maps(inside, outside, n=3, k=2, size=24, seed=0):
    """k classes, each a random square of its own; map k is ``inside[k]`` on its square, ``outside[k]``
    elsewhere (labels: 0 background, k + 1 class k)."""
    rng = np.random.default_rng(seed)
    maps, labels = [], []
    for _ in range(n):
        y = np.zeros((size, size), np.int64)
        m = np.empty((k, size, size))
        for j in range(k):
            r, c = rng.integers(0, size - 8, 2)
            y[r : r + 6, c : c + 6] = j + 1
        for j in range(k):
            m[j] = np.where(y == j + 1, inside[j], outside[j])
        maps.append(m)
        labels.append(y)
    return maps, labels


def test_miou_fit_picks_the_threshold_that_separates_and_per_class_thresholds():
    # one shared level pair: anything in [0.35, 0.5) separates; the grid value nearest 0.2 in it is 0.35
    maps, labels = _two_level_maps([0.5, 0.5], [0.35, 0.35])
    cal = fit_threshold_miou(maps, labels)
    assert cal.fit == "threshold-miou" and cal.threshold[0] == pytest.approx(0.35)
    assert cal.meta["val_miou_after"] == pytest.approx(1.0) and cal.meta["val_miou_before"] < 0.6
    assert (merge_calibrated(maps[0], cal) == labels[0]).all()
    assert cal.temperature[0] == 1.0
    # classes whose separating ranges do not overlap: a shared threshold cannot, per-class can
    maps, labels = _two_level_maps([0.3, 0.9], [0.1, 0.6])
    shared, per = fit_threshold_miou(maps, labels), fit_threshold_miou(maps, labels, per_class=True)
    assert shared.meta["val_miou_after"] < 1.0
    assert per.meta["val_miou_after"] == pytest.approx(1.0)
    assert 0.1 <= per.threshold[0] < 0.3 and 0.6 <= per.threshold[1] < 0.9
    # SoT's 0.2 already best: it stays (ties go to the value nearest 0.2)
    maps, labels = _two_level_maps([0.9, 0.9], [0.05, 0.05])
    assert fit_threshold_miou(maps, labels).threshold[0] == pytest.approx(0.2)
    # no background: a threshold cannot move the argmax; SoT's merge comes back, and says why
    nobg = fit_threshold_miou(maps, [np.maximum(y - 1, 0) for y in labels], has_background=False)
    assert nobg.threshold is None and nobg.fit == "none" and "background" in nobg.meta["note"]
    with pytest.raises(ConfigError, match="grid"):
        fit_threshold_miou(maps, labels, grid=[0.0, 0.5])
