"""Instance ground truth and metrics (segprompt.instances): hand-worked numbers, pycocotools'
COCOeval for AP, scikit-image for connected components."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from segprompt import instances as inst


def _first_k(region: np.ndarray, k: int) -> np.ndarray:
    """The first k pixels (raster order) of a region."""
    out = np.zeros_like(region)
    idx = np.flatnonzero(region)[:k]
    out.ravel()[idx] = True
    return out


def _box(shape, r0, r1, c0, c1) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


# ---------------------------------------------------------------------------------------------
# AP by hand


def test_ap_hand_worked():
    """Two 100-px instances; predictions ranked 0.9 (IoU 0.84 with g1), 0.8 (no overlap), 0.7
    (IoU 0.62 with g2).

    Thresholds 0.50, 0.55, 0.60: TP, FP, TP -> recall .5, .5, 1; precision 1, .5, 2/3, made
    monotone 1, 2/3, 2/3; the 51 recall points 0..0.50 read 1, the 50 above read 2/3:
    AP_t = (51 + 100/3) / 101 = 253/303. Thresholds 0.65..0.80: only g1 -> 51/101. 0.85..0.95: 0.
    AP = (3 * 253/303 + 4 * 51/101) / 10 = 457/1010.
    """
    shape = (30, 30)
    g1, g2 = _box(shape, 0, 10, 0, 10), _box(shape, 15, 25, 15, 25)
    truth = inst.InstanceTruth(np.stack([g1, g2]))
    preds = np.stack([_first_k(g1, 84), _box(shape, 0, 5, 20, 30), _first_k(g2, 62)])
    m = inst.match_image(preds, [0.9, 0.8, 0.7], truth)
    ap = inst.accumulate_ap([m])
    assert ap[0] == pytest.approx(253 / 303, abs=1e-12)
    assert np.mean(ap) == pytest.approx(457 / 1010, abs=1e-12)
    assert m["best_iou"] == pytest.approx([0.84, 0.62])
    s = inst.summarise_instances([{**m, "tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0, "seconds": 1.0}])
    assert s["ap50"] == pytest.approx(253 / 303) and s["ap"] == pytest.approx(457 / 1010)
    assert s["mean_best_iou"] == pytest.approx(0.73)


def test_ap_ignores_unmatched_prediction_in_void():
    """A prediction more than half inside the ignore region is neither TP nor FP: the same AP
    as without it (1.0 here: one perfect match)."""
    shape = (20, 20)
    g = _box(shape, 0, 5, 0, 5)
    void = _box(shape, 10, 20, 0, 20)
    truth = inst.InstanceTruth(g[None], ignore=void)
    on_void = _box(shape, 9, 20, 0, 10)  # 110 px, 100 inside void
    m = inst.match_image(np.stack([on_void, g]), [0.95, 0.5], truth)
    assert m["ignored"][:, 0].all() and not m["matched"][:, 0].any()
    assert inst.accumulate_ap([m]) == pytest.approx(np.ones(10))
    # the same prediction off the void is a false positive ranked first: precision 1/2 at recall 1
    m2 = inst.match_image(np.stack([_box(shape, 0, 5, 10, 20), g]), [0.95, 0.5], inst.InstanceTruth(g[None]))
    assert inst.accumulate_ap([m2])[0] == pytest.approx(0.5)


def test_iou_takes_void_out_of_prediction():
    shape = (10, 10)
    g = _box(shape, 0, 4, 0, 5)  # 20 px
    void = _box(shape, 4, 10, 0, 10)
    p = _box(shape, 0, 6, 0, 5)  # 30 px, 10 in the void -> 20 counted
    assert inst.iou_matrix(p[None], g[None], void)[0, 0] == pytest.approx(1.0)
    assert inst.iou_matrix(p[None], g[None])[0, 0] == pytest.approx(20 / 30)


# ---------------------------------------------------------------------------------------------
# PQ by hand


def test_panoptic_quality_hand_worked():
    """Three ground-truth instances (100 px each) and a void strip (id 255); predicted segments:
    p1 IoU 0.8 with g1 and p2 IoU 0.6 with g2 (TP), p3 IoU 0.4 with g3 (FP, and g3 FN), p4 on the
    background (FP), p5 60 px of which 50 in the void (ignored).
    TP 2, FP 2, FN 1; SQ = (0.8 + 0.6) / 2 = 0.7; RQ = 2 / (2 + 1 + 0.5) = 4/7; PQ = 1.4 / 3.5 = 0.4."""
    shape = (40, 40)
    gt = np.zeros(shape, np.int64)
    gt[0:10, 0:10] = 1
    gt[0:10, 20:30] = 2
    gt[20:30, 0:10] = 3
    gt[35:40, :] = 255
    truth = inst.from_label_image(gt, ignore_id=255)
    assert len(truth) == 3 and truth.ignore.sum() == 200
    pred = np.zeros(shape, np.int32)
    pred[0:8, 0:10] = 1
    pred[0:6, 20:30] = 2
    pred[20:24, 0:10] = 3
    pred[20:30, 20:30] = 4
    pred[34:40, 0:10] = 5
    c = inst.panoptic_counts(pred, truth)
    assert (c["tp"], c["fp"], c["fn"]) == (2, 2, 1)
    assert c["iou_sum"] == pytest.approx(1.4)
    s = inst.summarise_instances([{"scores": [], "matched": np.zeros((10, 0)), "ignored": np.zeros((10, 0)), "n_gt": 3, "best_iou": [0.8, 0.6, 0.4], "seconds": 2.0, **c}])
    assert s["sq"] == pytest.approx(0.7)
    assert s["rq"] == pytest.approx(4 / 7)
    assert s["pq"] == pytest.approx(0.4)
    assert s["pq"] == pytest.approx(s["sq"] * s["rq"])
    assert s["mean_best_iou"] == pytest.approx(0.6)
    assert s["s_per_image"] == 2.0


def test_pq_match_needs_iou_above_half():
    """IoU exactly 0.5 is not a match (panopticapi: iou > 0.5)."""
    shape = (10, 10)
    g = _box(shape, 0, 2, 0, 10)  # 20 px
    pred = np.zeros(shape, np.int32)
    pred[0:1, 0:10] = 1  # 10 px inside -> IoU 0.5
    c = inst.panoptic_counts(pred, inst.InstanceTruth(g[None]))
    assert (c["tp"], c["fp"], c["fn"]) == (0, 1, 1)


# ---------------------------------------------------------------------------------------------
# COCOeval parity


def _coco_case(seed: int):
    """Random images: rectangles as ground truth; predictions = jittered ground truth (some
    missing) plus random boxes, random scores (with a tie)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(4):
        h, w = 48, 64
        gts = []
        for _ in range(rng.integers(0, 5)):
            r, c = rng.integers(0, h - 8), rng.integers(0, w - 8)
            gts.append(_box((h, w), r, r + rng.integers(4, 16), c, c + rng.integers(4, 20)))
        preds = []
        for g in gts:
            if rng.random() < 0.8:
                rr, cc = np.nonzero(g)
                dr, dc = rng.integers(-3, 4, 2)
                preds.append(_box((h, w), max(rr.min() + dr, 0), rr.max() + 1 + dr + rng.integers(-2, 3), max(cc.min() + dc, 0), cc.max() + 1 + dc))
        for _ in range(rng.integers(0, 4)):
            r, c = rng.integers(0, h - 4), rng.integers(0, w - 4)
            preds.append(_box((h, w), r, r + rng.integers(2, 12), c, c + rng.integers(2, 12)))
        preds = [p for p in preds if p.any()]
        scores = list(np.round(rng.random(len(preds)), 2))
        if len(scores) >= 2:
            scores[1] = scores[0]
        images.append(((h, w), gts, preds, scores))
    return images


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ap_matches_cocoeval(seed):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = _coco_case(seed)
    gt_json = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    dts = []
    ours = []
    aid = 1
    for i, ((h, w), gts, preds, scores) in enumerate(images, 1):
        gt_json["images"].append({"id": i, "height": h, "width": w, "file_name": f"{i}.png"})
        for g in gts:
            rle = mask_utils.encode(np.asfortranarray(g.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            gt_json["annotations"].append({"id": aid, "image_id": i, "category_id": 1, "segmentation": rle, "area": float(g.sum()), "bbox": list(mask_utils.toBbox(rle)), "iscrowd": 0})
            aid += 1
        for p, s in zip(preds, scores):
            rle = mask_utils.encode(np.asfortranarray(p.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            dts.append({"image_id": i, "category_id": 1, "segmentation": rle, "score": float(s)})
        truth = inst.InstanceTruth(np.stack(gts) if gts else np.zeros((0, h, w), bool))
        ours.append(inst.match_image(np.stack(preds) if preds else np.zeros((0, h, w), bool), scores, truth))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt_json
        coco.createIndex()
        det = coco.loadRes(dts) if dts else None
        ev = COCOeval(coco, det, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap = inst.accumulate_ap(ours)
    assert float(np.mean(ap)) == pytest.approx(ev.stats[0], abs=1e-12)
    assert float(ap[0]) == pytest.approx(ev.stats[1], abs=1e-12)
    assert float(ap[5]) == pytest.approx(ev.stats[2], abs=1e-12)  # AP75


# ---------------------------------------------------------------------------------------------
# ground truth from each source


def test_components_8_and_4_connectivity_match_skimage():
    from skimage.measure import label

    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) > 0.6
    for conn, sk in ((8, 2), (4, 1)):
        lab = label(mask, connectivity=sk)
        expected = [lab == k for k in range(1, lab.max() + 1)]
        got = inst.from_binary(mask, connectivity=conn).masks
        assert len(got) == len(expected)
        # same components (as sets of pixels), whatever the order
        assert sorted(np.flatnonzero(m)[0] for m in got) == sorted(np.flatnonzero(m)[0] for m in expected)
        assert all(any(np.array_equal(g, e) for e in expected) for g in got)


def test_components_diagonal_and_min_area():
    m = np.zeros((6, 6), bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours
    m[4:6, 4:6] = True  # 4 px
    assert len(inst.from_binary(m, connectivity=8)) == 2
    assert len(inst.from_binary(m, connectivity=4)) == 3
    assert len(inst.from_binary(m, connectivity=8, min_area=3)) == 1


def test_label_image_ids_and_ignore():
    lab = np.array([[0, 1, 1], [2, 2, 9], [5, 0, 9]])
    t = inst.from_label_image(lab, ignore_id=9)
    assert len(t) == 3
    assert [int(m.sum()) for m in t.masks] == [2, 2, 1]
    assert t.ignore.sum() == 2
    assert len(inst.from_label_image(lab, ignore_id=9, min_area=2)) == 2


def test_semantic_components_camvid_like():
    """Two cars (id 8) apart are two instances, touching cars one; a pedestrian (9); void 255."""
    lab = np.zeros((10, 12), np.int64)  # class 0 = sky
    lab[0:3, 0:3] = 8
    lab[0:3, 5:8] = 8
    lab[5:8, 0:3] = 8
    lab[5:8, 3:5] = 8  # touches the third car: one component
    lab[8:10, 8:10] = 9
    lab[0:2, 10:12] = 255
    t = inst.from_semantic(lab, {"car": 8, "pedestrian": 9}, ignore_values=(255,))
    assert t.names == ["car", "car", "car", "pedestrian"]
    assert [int(m.sum()) for m in t.masks] == [9, 9, 15, 4]
    assert t.ignore.sum() == 4
    t2 = inst.from_semantic(lab, {"car": 8}, ignore_values=(255,), other_classes="ignore")
    assert len(t2) == 3
    assert t2.ignore.sum() == lab.size - 33  # everything but the cars


def test_coco_polygons_rle_and_crowd():
    anns = [
        {"id": 1, "category_id": 1, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]], "area": 100, "iscrowd": 0},
        {"id": 2, "category_id": 2, "segmentation": {"size": [20, 30], "counts": [0, 5, 595]}, "area": 5, "iscrowd": 0},
        {"id": 3, "category_id": 1, "segmentation": {"size": [20, 30], "counts": [300, 20, 280]}, "area": 20, "iscrowd": 1},
    ]
    t = inst.from_coco(anns, (20, 30))
    assert len(t) == 2
    assert t.masks[1].sum() == 5 and t.masks[1][:5, 0].all()  # column-major RLE: the first column
    assert t.ignore.sum() == 20
    assert len(inst.from_coco(anns, (20, 30), categories=[1])) == 1
