"""Interpretable prompt, data and trajectory features: known answers on hand-made masks and points."""

from __future__ import annotations

import math

import numpy as np
import pytest

import pointprompt.features as F
from pointprompt.features import (
    FEATURE_GROUPS,
    MaskGeometry,
    chamfer_distance,
    feature_columns,
    feature_table,
    glcm_properties,
    image_features,
    prompt_features,
    trajectory_features,
)
from segprompt.data.sample import Sample
from segprompt.errors import DataError, PromptError
from segprompt.prompts import Points


def square(h=64, w=64, r0=10, c0=10, side=20):
    m = np.zeros((h, w), bool)
    m[r0 : r0 + side, c0 : c0 + side] = True
    return m


CORNERS = [[10, 10, 1], [29, 10, 1], [29, 29, 1], [10, 29, 1]]
D = 20 * math.sqrt(2)  # bounding-box diagonal of the 20 x 20 square


def test_square_corners_coverage_spread_nn_boundary():
    f = prompt_features(CORNERS, square())
    assert f["coverage"] == pytest.approx(1.0)
    assert f["coverage_per_point"] == pytest.approx(0.25)
    assert f["max_spread"] == pytest.approx(19 * math.sqrt(2) / D)
    assert f["mean_nn_dist"] == pytest.approx(19 / D)
    # corner pixels sit next to the background: half a pixel from the boundary, on the right side
    assert f["inc_boundary_dist"] == pytest.approx(0.5 / D)
    assert f["boundary_dist"] == pytest.approx(0.5 / D)
    assert (f["n_inclusion"], f["n_exclusion"], f["n_points"]) == (4, 0, 4)


def test_half_coverage_triangle_and_centre_depth():
    # triangle over half the square: the pixels on or under the diagonal, 210 of 400
    f = prompt_features([[10, 10, 1], [29, 29, 1], [10, 29, 1]], square())
    assert f["coverage"] == pytest.approx(210 / 400)
    # a point in the middle of the square: 9.5 px from the edge (edges at 9.5 and 29.5)
    g = prompt_features([[19, 19, 1]], square())
    assert g["inc_boundary_dist"] == pytest.approx(9.5 / D)


def test_chamfer_and_exclusion_features():
    a = np.array([[10.0, 10.0], [20.0, 10.0]])
    b = np.array([[10.0, 40.0]])
    expected = ((30 + math.hypot(10, 30)) / 2 + 30) / 2
    assert chamfer_distance(a, b) == pytest.approx(expected)
    assert chamfer_distance(b, a) == pytest.approx(expected)  # symmetric
    pts = [[10, 10, 1], [20, 10, 1], [10, 40, 0], [40, 40, 0]]
    f = prompt_features(pts, square(), image_size=(64, 64))
    G = math.hypot(64, 64)
    assert f["chamfer_dist"] == pytest.approx(chamfer_distance(a, np.array([[10, 40], [40, 40]])) / G)
    assert f["exc_spread"] == pytest.approx(30 / G)
    # exclusion (10, 40) is 10.5 px below the square's bottom edge (y = 29.5): positive = right side
    sd = MaskGeometry.of(square()).boundary_at(np.array([[10.0, 40.0]]))
    assert sd[0] == pytest.approx(-10.5)
    assert f["exc_boundary_dist"] > 0


def test_misplaced_points_count_negative():
    f = prompt_features([[50, 50, 1], [19, 19, 0]], square())
    assert f["inc_boundary_dist"] < 0 and f["exc_boundary_dist"] < 0 and f["boundary_dist"] < 0


def test_nan_and_zero_rules():
    m = square()
    only_inc = prompt_features([[12, 12, 1]], m)
    assert math.isnan(only_inc["chamfer_dist"]) and math.isnan(only_inc["exc_spread"]) and math.isnan(only_inc["exc_boundary_dist"])
    assert only_inc["max_spread"] == 0.0 and math.isnan(only_inc["mean_nn_dist"])
    assert only_inc["coverage"] == 0.0  # fewer than 3 points: no hull
    collinear = prompt_features([[10, 10, 1], [15, 15, 1], [20, 20, 1], [25, 25, 1]], m)
    assert collinear["coverage"] == 0.0 and collinear["max_spread"] > 0
    dup = prompt_features([[10, 10, 1], [10, 10, 1], [20, 20, 1]], m)
    assert dup["coverage"] == 0.0
    only_exc = prompt_features([[50, 50, 0]], m)
    assert only_exc["coverage"] == 0.0 and math.isnan(only_exc["coverage_per_point"]) and math.isnan(only_exc["max_spread"])
    assert only_exc["exc_spread"] == 0.0
    empty = prompt_features([], m)
    assert empty["n_points"] == 0 and math.isnan(empty["boundary_dist"])
    full = prompt_features([[5, 5, 1]], np.ones((16, 16), bool))
    assert math.isnan(full["inc_boundary_dist"])  # no boundary: the image border does not count
    none = prompt_features([[5, 5, 1]], np.zeros((16, 16), bool))
    assert math.isnan(none["coverage"]) and math.isnan(none["max_spread"])


def test_xy_not_row_col_on_non_square_image():
    # H = 30, W = 60: the object is the top-right block rows 0..9, columns 40..59
    m = np.zeros((30, 60), bool)
    m[0:10, 40:60] = True
    pts = [[40, 0, 1], [59, 0, 1], [59, 9, 1], [40, 9, 1], [10, 20, 0]]
    f = prompt_features(pts, m, image_size=(30, 60))
    assert f["coverage"] == pytest.approx(1.0)
    assert f["inc_boundary_dist"] > 0 and f["exc_boundary_dist"] > 0
    # the same numbers read as (row, col) would lie outside a 30-row image
    with pytest.raises(PromptError):
        prompt_features([[y, x, l] for x, y, l in pts], m)
    # a point inside the block as (x, y) is outside it read the other way round
    assert prompt_features([[50, 5, 1]], m)["inc_boundary_dist"] > 0
    assert prompt_features([[5, 50 - 30, 1]], m)["inc_boundary_dist"] < 0
    with pytest.raises(DataError):
        prompt_features(pts, m, image_size=(60, 30))


def test_points_input_forms_agree():
    m = square()
    a = prompt_features(CORNERS + [[50, 50, 0]], m)
    b = prompt_features(Points(np.array([p[:2] for p in CORNERS] + [[50, 50]], np.float32), np.array([1, 1, 1, 1, 0])), m)
    c = prompt_features((np.array([p[:2] for p in CORNERS] + [[50, 50]]), np.array([1, 1, 1, 1, 0])), MaskGeometry.of(m))
    assert a == pytest.approx(b)
    assert a == pytest.approx(c)
    with pytest.raises(PromptError):
        prompt_features([[1, 2]], m)
    with pytest.raises(PromptError):
        prompt_features([[1, 2, 3]], m)


def test_components_size_edges():
    img = np.zeros((40, 40, 3), np.uint8)
    m = np.zeros((40, 40), bool)
    m[2:10, 2:10] = True
    m[20:30, 20:30] = True
    f = image_features(img, m)
    assert f["n_components"] == 2
    assert f["mask_size"] == pytest.approx((64 + 100) / 1600)
    assert f["edge_density"] == 0.0  # a constant image has no edges
    step = np.zeros((40, 40, 3), np.uint8)
    step[:, 25:] = 255  # a vertical step edge through the second blob
    assert image_features(step, m)["edge_density"] > 0
    diag = np.zeros((10, 10), bool)
    diag[2, 2] = diag[3, 3] = True
    # the study counts components with scipy.ndimage.label's default, 4-connectivity
    assert image_features(np.zeros((10, 10, 3), np.uint8), diag)["n_components"] == 2
    assert image_features(np.zeros((10, 10, 3), np.uint8), diag, connectivity=8)["n_components"] == 1


def test_glcm_constant_vs_striped():
    m = square(48, 48, 8, 8, 32)
    const = np.full((48, 48, 3), 128, np.uint8)
    stripes = np.zeros((48, 48, 3), np.uint8)
    stripes[:, ::2] = 255
    # the earlier "pooled" rule: 32 levels, four angles, symmetric, counts summed: values in 0..1
    fc, fs = image_features(const, m, glcm="pooled"), image_features(stripes, m, glcm="pooled")
    assert fc["obj_contrast"] == 0.0 and fs["obj_contrast"] > 100
    assert fc["obj_homogeneity"] == pytest.approx(1.0) and fs["obj_homogeneity"] < 0.5
    assert fc["obj_energy"] == pytest.approx(1.0) and fs["obj_energy"] < 1.0
    assert fc["obj_asm"] == pytest.approx(1.0) and fc["obj_dissimilarity"] == 0.0
    # the stripes cover the background too
    assert fs["bg_contrast"] > 100 and fc["bg_contrast"] == 0.0
    # stripes only inside the object: the background stays smooth
    inside = const.copy()
    inside[m] = stripes[m]
    fi = image_features(inside, m, glcm="pooled")
    assert fi["obj_contrast"] > 100 and fi["bg_contrast"] == 0.0
    # the study's rule (default): per-angle values summed over 0 and 90 degrees
    pc, ps = image_features(const, m), image_features(stripes, m)
    assert pc["obj_homogeneity"] == pytest.approx(2.0) and pc["obj_energy"] == pytest.approx(2.0) and pc["obj_asm"] == pytest.approx(2.0)
    assert pc["obj_correlation"] == pytest.approx(2.0) and pc["obj_contrast"] == 0.0
    # 0/255 columns: every horizontal pair differs by 255, no vertical one does
    assert ps["obj_contrast"] == pytest.approx(255.0**2) and ps["obj_dissimilarity"] == pytest.approx(255.0)


def test_glcm_ignores_pairs_leaving_the_region():
    gray = np.zeros((20, 20), np.uint8)
    gray[:, 10:] = 255
    left = np.zeros((20, 20), bool)
    left[:, :10] = True
    assert glcm_properties(gray, left)["contrast"] == 0.0  # the bright half is outside the region
    one = np.zeros((20, 20), bool)
    one[5, 5] = True
    assert all(math.isnan(v) for v in glcm_properties(gray, one).values())


def test_trajectory_features():
    rows = [
        {"image": "a", "step": 3, "iou": 0.5, "points": [[1, 1, 1], [2, 2, 1], [3, 3, 0]]},
        {"image": "a", "step": 1, "iou": 0.2, "points": [[1, 1, 1]]},
        {"image": "a", "step": 2, "iou": 0.7, "points": [[1, 1, 1], [2, 2, 1]]},
    ]
    t = trajectory_features(rows)
    assert t["n_steps"] == 3 and t["best_step"] == 2
    assert (t["first_n_points"], t["best_n_points"], t["last_n_points"]) == (1, 2, 3)
    assert (t["last_n_inclusion"], t["last_n_exclusion"]) == (2, 1)
    assert (t["first_iou"], t["best_iou"], t["last_iou"]) == (0.2, 0.7, 0.5)
    assert t["best_first_gap"] == pytest.approx(0.5)
    assert math.isnan(t["n_rounds"])
    human = [dict(r, round=0 if r["step"] < 3 else 1) for r in rows]
    assert trajectory_features(human)["n_rounds"] == 2
    tie = trajectory_features([{"image": "a", "step": 1, "iou": 0.6, "n_points": 1, "n_positive": 1, "n_negative": 0}, {"image": "a", "step": 2, "iou": 0.6, "n_points": 2, "n_positive": 1, "n_negative": 1}])
    assert tie["best_step"] == 1 and tie["last_n_exclusion"] == 1


def test_feature_table_joins_caches_and_skips(monkeypatch):
    m1 = square()
    m2 = np.zeros((64, 64), bool)
    m2[30:50, 5:25] = True
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ds = {"a": Sample("a", img, m1), "b": Sample("b", img, m2)}
    rows = []
    for image in ("a", "b", "ghost"):
        for strat in ("centre", "random"):
            for step in (1, 2):
                pts = [[15, 15, 1]] + ([[60, 60, 0]] if step == 2 else [])
                rows.append({"dataset": "d", "image": image, "model": "m", "strategy": strat, "step": step, "points": pts, "iou": 0.3 * step, "dice": 0.5, "score": None})
    rows.append({"dataset": "d", "image": "a", "model": "m", "strategy": "bad", "step": 1, "points": [[100, 5, 1]], "iou": 0.1})
    calls = []
    real = F.image_features
    monkeypatch.setattr(F, "image_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    table = feature_table(rows, ds)
    assert len(calls) == 2  # one computation per image
    assert len(table) == 8
    reasons = {s["image"]: s["reason"] for s in table.skipped}
    assert reasons["ghost"] == "image not in the dataset" and "outside the image" in reasons["a"]
    assert sum(s["rows"] for s in table.skipped) == 5
    cols = feature_columns(table)
    assert cols[:3] == ["dataset", "image", "model"] and "annotator" not in cols
    for g in FEATURE_GROUPS.values():
        assert set(g) <= set(table[0])
    ra = [r for r in table if r["image"] == "a" and r["strategy"] == "centre" and r["step"] == 2][0]
    assert ra["inc_boundary_dist"] > 0 and ra["chamfer_dist"] > 0 and ra["best_step"] == 2 and ra["n_steps"] == 2
    rb = [r for r in table if r["image"] == "b" and r["step"] == 1][0]
    assert rb["inc_boundary_dist"] < 0  # (15, 15) is outside the second mask (rows 30..49)
    assert rb["mask_size"] == pytest.approx(400 / 4096)


def test_human_rows_one_trajectory_per_annotator():
    img = np.zeros((64, 64, 3), np.uint8)
    ds = [Sample("7", img, square())]
    rows = []
    for annot, ious, rounds in (("st1", [0.2, 0.9, 0.4], [0, 0, 1]), ("st2", [0.6, 0.5, 0.55], [0, 0, 0])):
        for k, (v, rd) in enumerate(zip(ious, rounds), 1):
            rows.append({"dataset": "Polyp", "image": 7, "strategy": "human", "annotator": annot, "round": rd, "step": k, "points": [[15, 15, 1]] * k, "iou": v})
    table = feature_table(rows, ds)  # integer ids in rows match the string id of the sample
    by = {(r["annotator"], r["step"]): r for r in table}
    assert by[("st1", 1)]["best_step"] == 2 and by[("st1", 1)]["n_rounds"] == 2
    assert by[("st2", 3)]["best_step"] == 1 and by[("st2", 3)]["n_rounds"] == 1
    assert by[("st1", 3)]["round"] == 1 and "annotator" in feature_columns(table)


def test_feature_table_logs_progress(caplog, capsys):
    img = np.zeros((64, 64, 3), np.uint8)
    ds = {"a": Sample("a", img, square()), "b": Sample("b", img, square(r0=30))}
    rows = [{"image": i, "strategy": "centre", "step": k, "points": [[15, 15, 1]], "iou": 0.5} for i in ("a", "b", "ghost") for k in (1, 2)]
    with caplog.at_level("INFO", logger="pointprompt.features"):
        table = feature_table(rows, ds, progress=True)
    assert len(table) == 4
    info = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert "computing features for 6 prompts on 3 images (3 trajectories)" in info
    assert "features: 4 of 6 prompts done, 2 skipped" in info
    err = capsys.readouterr().err
    assert "/6 " in err and "prompt/s" in err  # the bar counts prompts (6), skipped ones included


# ---------------------------------------------------------------------------------------------
# the study's GLCM rule, object counts and round features (feature_extraction/gather_statistics.py)


def glcm_by_hand(gray, region, d):
    """The study's GLCM properties re-done by counting pixel pairs: horizontal and vertical pairs at
    distance d with both pixels in the region, 256 levels, each property per direction, summed."""
    total = {}
    for dr, dc in ((0, d), (d, 0)):
        h, w = gray.shape
        a = gray[: h - dr, : w - dc].astype(np.float64)
        b = gray[dr:, dc:].astype(np.float64)
        keep = region[: h - dr, : w - dc] & region[dr:, dc:]
        i, j = a[keep], b[keep]
        if i.size == 0:  # no pair in this direction: skimage's values of an empty matrix (0; correlation 1)
            for k, v in {"contrast": 0.0, "dissimilarity": 0.0, "homogeneity": 0.0, "energy": 0.0, "correlation": 1.0, "asm": 0.0}.items():
                total[k] = total.get(k, 0.0) + v
            continue
        _, counts = np.unique(np.stack([i, j], 1), axis=0, return_counts=True)
        p = counts / counts.sum()
        asm = float((p**2).sum())
        si, sj = i.std(), j.std()
        corr = 1.0 if si < 1e-12 or sj < 1e-12 else float(((i - i.mean()) * (j - j.mean())).mean() / (si * sj))
        props = {
            "contrast": float(((i - j) ** 2).mean()),
            "dissimilarity": float(np.abs(i - j).mean()),
            "homogeneity": float((1 / (1 + (i - j) ** 2)).mean()),
            "energy": math.sqrt(asm),
            "correlation": corr,
            "asm": asm,
        }
        for k, v in props.items():
            total[k] = total.get(k, 0.0) + v
    return total


def test_glcm_study_rule_matches_pair_counting_on_a_fixed_patch():
    rng = np.random.default_rng(7)
    gray = rng.integers(0, 256, (24, 30)).astype(np.uint8)
    gray[:, 12:] //= 4  # some structure, so correlation is not ~0
    yy, xx = np.mgrid[:24, :30]
    disk = (yy - 11) ** 2 + (xx - 14) ** 2 <= 81
    got = image_features(np.repeat(gray[..., None], 3, axis=2), disk)
    want_obj = glcm_by_hand(gray, disk, 1)  # diameter 18 px: int(0.18) -> distance 1
    want_bg = glcm_by_hand(gray, ~disk, 1)  # image diagonal < 100 px: distance 1
    for k in want_obj:
        assert got[f"obj_{k}"] == pytest.approx(want_obj[k], rel=1e-9), k
        assert got[f"bg_{k}"] == pytest.approx(want_bg[k], rel=1e-9), k
    assert set(F.GLCM_PROPS) == {"contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM"}


def test_glcm_distance_follows_object_diameter_and_image_diagonal():
    cols = np.arange(300)
    gray = np.tile(np.where(cols % 3 == 0, 90, 10).astype(np.uint8), (300, 1))  # period 3 along x
    m = np.zeros((300, 300), bool)
    m[20:270, 20:270] = True
    assert F.mask_diameter(m) == pytest.approx(math.hypot(249, 249))
    assert F.glcm_distance(m, "obj") == 3 and F.glcm_distance(~m, "bg") == int(0.01 * math.hypot(300, 300)) == 4
    f = image_features(np.repeat(gray[..., None], 3, axis=2), m)
    assert f["obj_contrast"] == 0.0  # pairs 3 px apart have equal values
    assert f["bg_contrast"] > 0  # pairs 4 px apart do not
    assert f["obj_contrast"] == pytest.approx(glcm_by_hand(gray, m, 3)["contrast"])
    assert f["bg_dissimilarity"] == pytest.approx(glcm_by_hand(gray, ~m, 4)["dissimilarity"])
    assert image_features(np.repeat(gray[..., None], 3, axis=2), m, glcm="pooled")["obj_contrast"] > 0  # distance 1


def test_glcm_small_regions_and_mask_diameter():
    gray = np.random.default_rng(0).integers(0, 256, (100, 100)).astype(np.uint8)
    tiny = np.zeros((100, 100), bool)
    tiny[10, 10:14] = True  # 4 px < 0.05 % of 10,000
    assert all(math.isnan(v) for v in glcm_properties(gray, tiny).values())
    assert not math.isnan(glcm_properties(gray, tiny, rule="pooled")["contrast"])
    small = np.zeros((100, 100), bool)
    small[10, 10:16] = True  # 6 px: kept; horizontal pairs only
    got, want = glcm_properties(gray, small), glcm_by_hand(gray, small, 1)
    assert got["contrast"] == pytest.approx(want["contrast"]) and got["homogeneity"] == pytest.approx(want["homogeneity"])
    assert got["correlation"] == pytest.approx(want["correlation"])  # the empty vertical direction adds 1, as in skimage
    line = np.zeros((20, 20), bool)
    line[5, 3:13] = True
    assert F.mask_diameter(line) == 9.0  # collinear pixels: no hull, still measured
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    assert F.mask_diameter(one) == 0.0 and math.isnan(F.mask_diameter(np.zeros((5, 5), bool)))
    blob = np.random.default_rng(1).random((30, 30)) > 0.7
    pts = np.argwhere(blob).astype(float)
    diffs = pts[:, None, :] - pts[None, :, :]
    assert F.mask_diameter(blob) == pytest.approx(np.sqrt((diffs**2).sum(-1)).max())
    with pytest.raises(ValueError):
        glcm_properties(gray, small, rule="nope")


def test_object_counts_merged_split_compact():
    img = np.zeros((40, 40, 3), np.uint8)
    touching = np.zeros((40, 40), bool)
    touching[5:15, 5:15] = touching[5:15, 15:25] = True  # two annotated objects fused into one component
    f = image_features(img, touching, n_objects=2)
    assert (f["n_components"], f["object_density"], f["merged"], f["split"], f["compact"]) == (1, 2, 1, 0, 0)
    occluded = np.zeros((40, 40), bool)
    occluded[5:30, 5:12] = occluded[5:30, 15:22] = True  # one object cut in two by an occluder
    f = image_features(img, occluded, n_objects=1)
    assert (f["n_components"], f["merged"], f["split"], f["compact"]) == (2, 0, 1, 0)
    f = image_features(img, square(40, 40, 5, 5, 10))  # no count given: 1, as the study
    assert (f["object_density"], f["merged"], f["split"], f["compact"]) == (1, 0, 0, 1)
    diag = np.zeros((40, 40), bool)
    diag[2:6, 2:6] = diag[6:10, 6:10] = True  # touching only at a corner: two components for the study
    assert image_features(img, diag, n_objects=2)["compact"] == 1
    assert image_features(img, diag, n_objects=2, connectivity=8)["merged"] == 1
    assert all(math.isnan(v) for v in F.object_flags(math.nan, 1).values())


def test_feature_table_object_counts_source_image_and_current_is_best(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    two = np.zeros((64, 64), bool)
    two[5:15, 5:15] = two[30:40, 30:40] = True
    ds = {
        "a": Sample("a", img, two, meta={"mask_path": ["a_1.png", "a_2.png"]}),  # two OR-merged lesion masks
        "liver": Sample("liver", img, square(), meta={"image_id": "ct_007"}),  # one structure of image ct_007
        "c": Sample("c", img, square()),
    }
    rows = [
        {"dataset": "d", "image": i, "strategy": "random", "step": k, "points": [[12, 12, 1]] * k, "iou": v}
        for i in ("a", "liver", "c")
        for k, v in ((1, 0.3), (2, 0.8), (3, 0.6))
    ]
    table = feature_table(rows, ds)
    by = {(r["image"], r["step"]): r for r in table}
    assert by[("a", 1)]["object_density"] == 2 and by[("a", 1)]["compact"] == 1
    assert by[("c", 1)]["object_density"] == 1 and by[("c", 1)]["compact"] == 1
    assert by[("liver", 1)]["source_image"] == "ct_007" and by[("c", 2)]["source_image"] == "c"
    assert "source_image" in feature_columns(table)
    assert [by[("c", k)]["current_is_best"] for k in (1, 2, 3)] == [0, 1, 0]
    counted = feature_table(rows, ds, object_counts={("d", "c"): 3, "a": 1})
    cb = {(r["image"], r["step"]): r for r in counted}
    assert cb[("c", 1)]["object_density"] == 3 and cb[("c", 1)]["merged"] == 1
    assert cb[("a", 1)]["object_density"] == 1 and cb[("a", 1)]["split"] == 1
    csv_path = tmp_path / "object_counts.csv"
    csv_path.write_text("Sample_Index,Objects Count,Dataset\n0,1,Camo\n1,4,Cow\n")
    assert F.read_object_counts(csv_path) == {("Camo", "0"): 1, ("Cow", "1"): 4}
    csv_path.write_text("index,count\n0,1\n")
    with pytest.raises(DataError, match="columns"):
        F.read_object_counts(csv_path)


def test_round_features_follow_the_best_round():
    ious, rounds = [0.2, 0.5, 0.4, 0.3, 0.9, 0.6], [0, 0, 0, 1, 1, 1]
    rows = [{"image": "a", "step": k, "iou": v, "round": r, "points": [[1, 1, 1]] * k + [[5, 5, 0]]} for k, (v, r) in enumerate(zip(ious, rounds), 1)]
    t = trajectory_features(rows)
    assert (t["best_step"], t["n_rounds"], t["best_round"], t["best_round_length"], t["best_step_in_round"]) == (5, 2, 1, 3, 2)
    # the study: first / last step of the best round (steps 4 and 6), not of the whole trajectory
    assert (t["first_iou"], t["last_iou"], t["first_n_points"], t["last_n_points"]) == (0.3, 0.6, 5, 7)
    assert t["best_first_gap"] == pytest.approx(0.6)
    whole = trajectory_features(rows, first_last="trajectory")
    assert (whole["first_iou"], whole["last_iou"], whole["first_n_points"]) == (0.2, 0.6, 2)
    best_in_first = trajectory_features([dict(r, iou=0.95) if r["step"] == 2 else r for r in rows])
    assert (best_in_first["best_round"], best_in_first["best_round_length"], best_in_first["best_step_in_round"]) == (0, 3, 2)
    assert (best_in_first["first_iou"], best_in_first["last_iou"]) == (0.2, 0.4)  # steps 1 and 3
    auto = trajectory_features([{k: v for k, v in r.items() if k != "round"} for r in rows])
    assert all(math.isnan(auto[k]) for k in ("n_rounds", "best_round", "best_round_length", "best_step_in_round"))
    assert auto["first_iou"] == 0.2
    assert {"best_round", "best_round_length", "best_step_in_round", "current_is_best"} <= F.TARGET_DERIVED
