"""PointPrompt human prompt data: a synthetic folder in the study's layout, read into trajectories.

The folder is built with numpy exactly as the collection tool (olivesgatech/SAM-ECE-4803-8803,
workbook.save_metrics) and the published dataset (PointPrompt README) store it: per-timestep
point lists saved with ``np.array(list, dtype=object)``, ``<i>score.npy``, ``np.argsort(-score)``
as the sort, round labels, per-timestep PNG masks; annotator st2 uses the tool's raw forms
(stacked ``<i>_mask.npy`` of 0/5 and ``eachround = [n_round_one, n_round_two]``).

The image is 40 x 90 (H x W) and every object lies in columns >= 45, so a reader that swapped
(x, y) for (row, col) would put the inclusion points below the image (row >= 45 > 40) or off
the object: the test checks every green point falls on the object and every red one off it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pointprompt.human_data import (
    HUMAN_META,
    best_step_table,
    human_protocol,
    human_protocol_section,
    matched_step,
    read_pointprompt_human,
    write_human_protocol,
    write_pointprompt_human,
)
from pointprompt.trajectory import Trajectory, load_trajectories, save_trajectories, to_rows
from segprompt.errors import DataError

H, W = 40, 90
OBJECTS = {0: (5, 15, 55, 85), 1: (20, 35, 45, 70), 2: (2, 12, 50, 88)}  # rows r0:r1, columns c0:c1


def gt_mask(i: int) -> np.ndarray:
    r0, r1, c0, c1 = OBJECTS[i]
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def inside(i: int, k: int) -> tuple[int, int]:
    """The k-th inclusion click on image i, as the tool stores it: (x, y) = (column, row)."""
    r0, r1, c0, c1 = OBJECTS[i]
    return c0 + 1 + (7 * k) % (c1 - c0 - 2), r0 + 1 + (3 * k) % (r1 - r0 - 2)


def outside(i: int, k: int) -> tuple[int, int]:
    return 2 + 5 * k, H - 2 - 3 * k  # left of every object (x < 45)


# (green click indices, red click indices) per timestep, and the round of each timestep
PLANS = {
    "st1": {
        0: ([((0,), (0,)), ((0, 1), (0,)), ((0, 1), (0, 1)), ((0, 1, 2), (0, 1)), ((3,), (2,)), ((3, 4), (2,))], [0, 0, 0, 0, 1, 1]),
        1: ([((0,), (0,)), ((0, 1), (0,)), ((0, 1, 2), (0,))], [0, 0, 0]),
        2: ([((0,), (0,)), ((1,), (1,))], [0, 0]),  # same counts: np.array(..., dtype=object) is (2, 1, 2)
    },
    "st2": {
        0: ([((0,), (0,)), ((0, 1), (0,)), ((0, 1), (0, 1)), ((0, 1, 3), (0, 1))], [0, 0, 0, 0]),
        1: ([((0,), (0,)), ((0, 1), (0,)), ((2,), (1,)), ((2, 3), (1,)), ((2, 3, 4), (1, 2))], [0, 0, 1, 1, 1]),
        2: ([((0,), (0,)), ((0, 1), (0,)), ((0, 1), (0, 1)), ((5,), (3,))], [0, 0, 0, 1]),
    },
}
RAW_EACHROUND = {0: [0, 0], 1: [2, 3], 2: [3, 0]}  # the tool's [steps in round one, steps in round two]


def predicted(i: int, k: int, n: int) -> np.ndarray:
    """A stand-in for SAM's mask at timestep k of n: a growing part of the object plus a stray pixel."""
    r0, r1, c0, c1 = OBJECTS[i]
    m = np.zeros((H, W), bool)
    m[r0:r1, c0 : c0 + max(1, (c1 - c0) * (k + 1) // n)] = True
    m[0, k] = True
    return m


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = (a & b).sum()
    return 0 if inter == 0 else inter / (a | b).sum()


def build(root: Path) -> dict:
    """Write the synthetic 'Prompting Results/Polyp/{st1,st2}' folders; return what was written."""
    expected = {}
    for annotator, plans in PLANS.items():
        folder = root / "Polyp" / annotator
        for sub in ("points", "scores", "sorts", "eachround", "masks"):
            (folder / sub).mkdir(parents=True)
        for i, (plan, rounds) in plans.items():
            gp = [np.multiply([inside(i, k) for k in g], 1) for g, _ in plan]  # as the tool: np.multiply(green, 1)
            rp = [np.multiply([outside(i, k) for k in r], 1) for _, r in plan]
            masks = [predicted(i, k, len(plan)) for k in range(len(plan))]
            score = [iou(m, gt_mask(i)) for m in masks]
            np.save(folder / "points" / f"{i}_green", np.array(gp, dtype=object))
            np.save(folder / "points" / f"{i}_red", np.array(rp, dtype=object))
            np.save(folder / "sorts" / f"{i}_sort", np.argsort(-np.array(score)))
            np.save(folder / "scores" / f"{i}score", score)
            if annotator == "st1":  # the published form
                np.save(folder / "eachround" / f"{i}_", np.array(rounds))
                for k, m in enumerate(masks):
                    if i == 0:
                        img = Image.fromarray((m * 5).astype(np.uint8))  # the tool's 0/5 values
                    elif i == 1:
                        img = Image.fromarray((m * 255).astype(np.uint8))
                    else:
                        img = Image.fromarray(np.stack([m * 255] * 3, -1).astype(np.uint8))  # grey RGB
                    img.save(folder / "masks" / f"{i}_{k}_mask.png")
            else:  # the collection tool's raw form
                np.save(folder / "eachround" / f"{i}_", RAW_EACHROUND[i])
                np.save(folder / "masks" / f"{i}_mask", np.array([np.multiply(m, 5) for m in masks]))
            expected[(annotator, i)] = dict(gp=gp, rp=rp, masks=masks, score=score, rounds=rounds, sort=np.argsort(-np.array(score)).tolist())
    return expected


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pp") / "Prompting Results"
    return root, build(root)


def test_object_arrays_have_both_shapes(data):
    root, _ = data
    assert np.load(root / "Polyp/st1/points/0_green.npy", allow_pickle=True).shape == (6,)  # ragged: 1-D object
    assert np.load(root / "Polyp/st1/points/2_green.npy", allow_pickle=True).shape == (2, 1, 2)  # equal counts: 3-D


def test_reads_points_as_xy_rounds_ranking_ious_masks(data):
    root, expected = data
    trajs = read_pointprompt_human(root)
    assert [(t.dataset, t.annotator, t.image_id) for t in trajs] == [("Polyp", a, str(i)) for a in ("st1", "st2") for i in range(3)]
    for t in trajs:
        i = int(t.image_id)
        exp = expected[(t.annotator, i)]
        gt = gt_mask(i)
        assert t.source == "human" and t.image_size == (H, W)
        assert t.meta == {**HUMAN_META, "index": i}
        assert len(t) == len(exp["gp"])
        assert [s.round for s in t.steps] == exp["rounds"]
        assert t.ranking == exp["sort"]
        assert [s.iou for s in t.steps] == [float(v) for v in exp["score"]] and all(isinstance(s.iou, float) for s in t.steps)
        assert t.best_index() == exp["sort"][0]
        for k, s in enumerate(t.steps):
            g, r = exp["gp"][k], exp["rp"][k]
            assert s.points.labels.tolist() == [1] * len(g) + [0] * len(r)
            assert s.points.coords.dtype == np.float32
            assert np.array_equal(s.points.coords, np.concatenate([g, r]).astype(np.float32))
            xy = s.points.coords.astype(int)
            on_object = gt[xy[:, 1], xy[:, 0]]  # (x, y) -> mask[row=y, col=x]
            assert on_object.tolist() == [True] * len(g) + [False] * len(r)
            assert s.mask is not None and np.array_equal(s.mask, exp["masks"][k])
            assert s.box is None and s.score is None and s.time_s is None


def test_select_datasets_annotators_and_root_forms(data):
    root, _ = data
    assert [t.image_id for t in read_pointprompt_human(root, dataset="Polyp", annotators=["st2"])] == ["0", "1", "2"]
    assert {t.annotator for t in read_pointprompt_human(root / "Polyp", annotators="st1")} == {"st1"}
    one = read_pointprompt_human(root / "Polyp" / "st2")
    assert len(one) == 3 and one[0].dataset == "Polyp" and one[0].annotator == "st2"
    with pytest.raises(DataError, match=r"no annotator folder \['st9'\]; available: \['st1', 'st2'\]"):
        read_pointprompt_human(root, annotators=["st9"])
    with pytest.raises(DataError, match=r"Skin: no such dataset folder; available: \['Polyp'\]"):
        read_pointprompt_human(root, dataset="Skin")
    with pytest.raises(DataError, match="no PointPrompt human data found"):
        read_pointprompt_human(root / "Polyp" / "st1" / "masks")
    lazy = read_pointprompt_human(root, annotators="st1", load_masks=False)
    assert all(s.mask is None for t in lazy for s in t.steps) and lazy[0].image_size == (H, W)


def test_missing_and_malformed_pieces(data, tmp_path):
    src, _ = data
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    st1 = root / "Polyp" / "st1"
    # optional pieces missing: no IoUs, ranking, rounds or masks, and no image size unless given
    for p in [st1 / "scores/1score.npy", st1 / "sorts/1_sort.npy", st1 / "eachround/1_.npy", *st1.glob("masks/1_*_mask.png")]:
        p.unlink()
    t1 = read_pointprompt_human(root, annotators="st1")[1]
    assert t1.image_size is None and t1.ranking is None
    assert all(s.iou is None and s.mask is None and s.round == 0 for s in t1.steps)
    assert read_pointprompt_human(root, annotators="st1", image_sizes={"1": (H, W)})[1].image_size == (H, W)
    with pytest.raises(DataError, match=r"1_green\.npy: step 0: point 0 at \(x=46, y=21\) lies outside the image of width 30"):
        read_pointprompt_human(root, annotators="st1", image_sizes={("Polyp", 1): (40, 30)})
    # required pieces missing or inconsistent
    np.save(st1 / "scores/2score.npy", [0.5])
    with pytest.raises(DataError, match=r"2score\.npy has 1 scores but .*2_green\.npy has 2 timesteps"):
        read_pointprompt_human(root, annotators="st1")
    np.save(st1 / "scores/2score.npy", [0.5, 0.25])
    np.save(st1 / "eachround/2_.npy", [1, 0, 1])
    with pytest.raises(DataError, match=r"2_\.npy: expected one round label"):
        read_pointprompt_human(root, annotators="st1")
    np.save(st1 / "eachround/2_.npy", [0, 1])
    (st1 / "points/2_red.npy").unlink()
    with pytest.raises(DataError, match=r"points/2_red\.npy: missing"):
        read_pointprompt_human(root, annotators="st1")
    (st1 / "points/2_red.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"2_red\.npy: cannot be read"):
        read_pointprompt_human(root, annotators="st1")
    np.save(st1 / "points/2_red.npy", np.zeros((3, 3)))
    with pytest.raises(DataError, match=r"2_red\.npy: expected one \(n, 2\) point array per timestep"):
        read_pointprompt_human(root, annotators="st1")


def test_inconsistent_scores_ranking_and_masks_name_their_file(data, tmp_path):
    src, _ = data
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    st1, st2 = root / "Polyp" / "st1", root / "Polyp" / "st2"

    def fails(match: str, annotator: str = "st1", **kwargs) -> None:
        with pytest.raises(DataError, match=match):
            read_pointprompt_human(root, annotators=annotator, **kwargs)

    np.save(st1 / "scores/2score.npy", [0.5, 1.5])
    fails(r"2score\.npy: scores are IoUs in \[0, 1\]; timestep 1 has 1\.5")
    np.save(st1 / "scores/2score.npy", [0.5, np.nan])  # NaN is "not scored"
    assert read_pointprompt_human(root, annotators="st1")[2].steps[1].iou is None
    np.save(st1 / "sorts/2_sort.npy", [0, 0])
    fails(r"2_sort\.npy: expected distinct timestep indices in 0\.\.1, got \[0, 0\]")
    np.save(st1 / "sorts/2_sort.npy", [1, 0])
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(st1 / "masks/2_1_mask.png")
    fails(r"2_1_mask\.png: mask is 40x91, other masks of image 2 are 40x90")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(st1 / "masks/2_1_mask.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(st1 / "masks/2_7_mask.png")
    fails(r"2_7_mask\.png: timestep 7 but .*2_green\.npy has 2 timesteps")
    (st1 / "masks/2_7_mask.png").unlink()
    fails(r"2_1_mask\.png: mask is 40x90 but image_sizes gives 50x90 for image 2", image_sizes={"2": (50, 90)})
    np.save(st2 / "masks/1_mask.npy", np.zeros((1, H, W), np.uint8))
    fails(r"1_mask\.npy: expected \d+ stacked \(H, W\) masks \(one per timestep\), got shape \(1, 40, 90\)", annotator="st2")
    np.save(st1 / "points/2_red.npy", np.array([np.multiply([outside(2, 0)], 1)], dtype=object))
    fails(r"2_green\.npy has 2 timesteps but .*2_red\.npy has 1")


def test_write_then_read_is_lossless(data, tmp_path):
    root, _ = data
    trajs = read_pointprompt_human(root)
    out = tmp_path / "out"
    folders = write_pointprompt_human(out, trajs)
    assert folders == [out / "Polyp" / "st1", out / "Polyp" / "st2"]
    back = read_pointprompt_human(out)
    assert back == trajs  # st2's raw forms come back in the published form, same content
    assert sorted(p.name for p in (out / "Polyp/st2/masks").iterdir())[:2] == ["0_0_mask.png", "0_1_mask.png"]
    # a napari session exported in the layout: float clicks, a box and times are not part of it
    m = gt_mask(1)
    s = Trajectory("5", "napari", annotator="me", dataset="Skin", image_size=(H, W))
    s.add_step([[50.25, 22.5, 1], [3.0, 3.0, 0]], mask=m, iou=1.0, time_s=1.0, box=[40, 10, 80, 39])
    s.add_step([[50.25, 22.5, 1], [3.0, 3.0, 0], [60.0, 30.0, 1]], iou=0.5, round=1)
    write_pointprompt_human(out, [s])
    (r,) = read_pointprompt_human(out, dataset="Skin")
    assert r.annotator == "me" and r.image_id == "5" and r.ranking == [0, 1] and [x.round for x in r.steps] == [0, 1]
    assert r.steps[0].points == s.steps[0].points and np.array_equal(r.steps[0].mask, m)
    # the layout keeps green and red apart: clicks come back green first, then red (as SAM got them)
    assert r.steps[1].points.to_list() == [[50.25, 22.5, 1], [60.0, 30.0, 1], [3.0, 3.0, 0]]
    assert r.steps[1].mask is None and [x.iou for x in r.steps] == [1.0, 0.5]
    with pytest.raises(DataError, match="not an image index"):
        write_pointprompt_human(out, [Trajectory("case_3.png", "napari", annotator="me", dataset="Skin")])
    with pytest.raises(DataError, match="has no annotator"):
        write_pointprompt_human(out, [Trajectory("3", "kmedoids", dataset="Skin")])
    # ...and the same trajectories through the segprompt trajectory file
    assert load_trajectories(save_trajectories(tmp_path / "human.jsonl", trajs)) == trajs


def test_human_rows_share_the_benchmark_table(data):
    root, expected = data
    rows = to_rows(read_pointprompt_human(root, annotators="st2"))
    assert len(rows) == sum(len(expected[("st2", i)]["gp"]) for i in range(3))
    r = rows[0]
    assert (r["dataset"], r["image"], r["strategy"], r["source"], r["annotator"], r["model"], r["step"]) == ("Polyp", "0", "human", "human", "st2", "sam_vit_h", 1)
    g, red = expected[("st2", 0)]["gp"][0], expected[("st2", 0)]["rp"][0]
    assert r["points"] == [[float(x), float(y), 1] for x, y in g] + [[float(x), float(y), 0] for x, y in red]
    assert r["iou"] == expected[("st2", 0)]["score"][0]
    assert sum(x["best"] for x in rows) == 3


# ---------------------------------------------------------------------------------------------
# the study's protocol: best step and round per annotator, human vs automated, replay


def test_best_step_table_follows_the_study(data):
    root, expected = data
    table = best_step_table(read_pointprompt_human(root))
    assert len(table) == 6
    for row in table:
        exp = expected[(row["annotator"], int(row["image"]))]
        # feature_extraction/gather_statistics.py, re-done on the arrays that were written
        rounds, sort = np.array(exp["rounds"]), exp["sort"]
        best_round = rounds[sort[0]]
        best_timestamp = sort[0] if best_round == 0 else sort[0] - np.sum(rounds == 0)
        assert row["best_step"] == sort[0] + 1
        assert row["best_round"] == best_round and row["best_round_length"] == np.sum(rounds == best_round)
        assert row["best_step_in_round"] == best_timestamp + 1 and row["n_rounds"] == len(np.unique(rounds))
        assert row["best_n_inclusion"] == len(exp["gp"][sort[0]]) and row["best_n_exclusion"] == len(exp["rp"][sort[0]])
        assert row["recorded_iou"] == pytest.approx(exp["score"][sort[0]]) and row["best_by"] == "ranking"
    assert {r["best_round"] for r in table} == {0, 1}


def _h(image, annot, step, rnd, rec, rep, n_pos, n_neg):
    return {"dataset": "polyp", "model": "m", "image": image, "strategy": "human", "annotator": annot, "step": step, "round": rnd,
            "recorded_iou": rec, "iou": rep, "n_points": n_pos + n_neg, "n_positive": n_pos, "n_negative": n_neg}


def _a(image, strategy, step, n, v):
    return {"dataset": "polyp", "model": "m", "image": image, "strategy": strategy, "step": step, "iou": v, "n_points": n, "n_positive": n, "n_negative": 0}


PROTO_ROWS = [
    # st1 on image 0: best recorded step 2 (round 0); best replayed step 4 (round 1)
    _h("0", "st1", 1, 0, 0.5, 0.45, 1, 1), _h("0", "st1", 2, 0, 0.8, 0.70, 2, 1),
    _h("0", "st1", 3, 1, 0.6, 0.65, 1, 1), _h("0", "st1", 4, 1, 0.7, 0.90, 2, 1),
    # st2 on image 0: best step 3 with 4 points; the tie 0.6 / 0.6 does not matter
    _h("0", "st2", 1, 0, 0.6, 0.50, 1, 0), _h("0", "st2", 2, 0, 0.6, 0.60, 1, 1), _h("0", "st2", 3, 0, 0.9, 0.85, 3, 1),
    # st1 on image 1: best step 1 with 2 points
    _h("1", "st1", 1, 0, 0.3, 0.35, 1, 1), _h("1", "st1", 2, 0, 0.2, 0.10, 2, 1),
    # automated: random on both images (1, 3, 5 points), centre on image 1 only
    _a("0", "random", 1, 1, 0.2), _a("0", "random", 2, 3, 0.5), _a("0", "random", 3, 5, 0.6),
    _a("1", "random", 1, 1, 0.1), _a("1", "random", 2, 3, 0.2), _a("1", "random", 3, 5, 0.3),
    _a("1", "centre", 1, 2, 0.25), _a("1", "centre", 2, 4, 0.4),
]


def test_human_protocol_numbers():
    proto = human_protocol(PROTO_ROWS)
    best = {(u["image"], u["annotator"]): u for u in proto["best_steps"]}
    assert {k: (u["best_step"], u["best_round"], u["best_step_in_round"], u["best_n_points"], u["replayed_iou"]) for k, u in best.items()} == {
        ("0", "st1"): (2, 0, 2, 3, 0.70), ("0", "st2"): (3, 0, 3, 4, 0.85), ("1", "st1"): (1, 0, 1, 2, 0.35)
    }
    assert best[("0", "st1")]["n_rounds"] == 2 and best[("0", "st1")]["best_round_length"] == 2
    cmp = {r["strategy"]: r for r in proto["comparison"]}
    human = (0.70 + 0.85 + 0.35) / 3
    assert cmp["human"]["human_iou"] == pytest.approx(human) and cmp["human"]["trajectories"] == 3 and cmp["human"]["images"] == 2
    r = cmp["random"]
    assert r["iou_full"] == pytest.approx((0.6 + 0.3) / 2) and r["points_full"] == 5
    # matched point counts: 3 -> the 3-point step (0.5); 4 -> the 3-point step (0.5); 2 -> the 1-point step (0.1)
    assert r["iou_matched"] == pytest.approx((0.5 + 0.5 + 0.1) / 3) and r["points_matched"] == pytest.approx(7 / 3)
    assert r["gain_full_pct"] == pytest.approx(100 * (human / 0.45 - 1))
    assert r["gain_matched_pct"] == pytest.approx(100 * (human / (1.1 / 3) - 1))
    c = cmp["centre"]  # only image 1, only st1 there: 2 points -> the 2-point step
    assert (c["images"], c["trajectories"], c["human_iou"], c["iou_full"], c["iou_matched"]) == (1, 1, 0.35, 0.4, 0.25)
    ann = {a["annotator"]: a for a in proto["annotators"]}
    assert ann["st1"]["images"] == 2 and ann["st1"]["best_step"] == pytest.approx(1.5) and ann["st1"]["best_in_round_two"] == 0
    assert ann["st1"]["recorded_iou"] == pytest.approx(0.55) and ann["st2"]["best_n_inclusion"] == 3
    (rep,) = proto["replay"]
    rec = np.array([0.5, 0.8, 0.6, 0.7, 0.6, 0.6, 0.9, 0.3, 0.2])
    got = np.array([0.45, 0.70, 0.65, 0.90, 0.50, 0.60, 0.85, 0.35, 0.10])
    assert rep["steps"] == 9 and rep["trajectories"] == 3
    assert rep["mean_abs_diff"] == pytest.approx(np.abs(got - rec).mean()) and rep["max_abs_diff"] == pytest.approx(0.2)
    assert rep["within_0.05"] == pytest.approx(np.mean(np.abs(got - rec) <= 0.05 + 1e-12))
    assert rep["pearson_r"] == pytest.approx(np.corrcoef(rec, got)[0, 1])
    assert rep["best_recorded_iou"] == pytest.approx((0.8 + 0.9 + 0.3) / 3)
    steps = proto["replay_steps"]
    assert [(s["image"], s["annotator"], s["step"]) for s in steps[:3]] == [("0", "st1", 1), ("0", "st1", 2), ("0", "st1", 3)]
    assert steps[3]["diff"] == pytest.approx(0.2)


def test_human_protocol_best_by_replayed_and_fallback(tmp_path):
    proto = human_protocol(PROTO_ROWS, best_by="replayed")
    best = {(u["image"], u["annotator"]): u for u in proto["best_steps"]}
    assert (best[("0", "st1")]["best_step"], best[("0", "st1")]["best_round"], best[("0", "st1")]["best_step_in_round"]) == (4, 1, 2)
    assert {a["annotator"]: a["best_in_round_two"] for a in proto["annotators"]} == {"st1": 0.5, "st2": 0.0}
    no_record = [dict(r, recorded_iou=None) if r.get("annotator") == "st2" else r for r in PROTO_ROWS]
    units = {u["annotator"] + u["image"]: u for u in human_protocol(no_record)["best_steps"]}
    assert units["st20"]["best_by"] == "replayed" and units["st10"]["best_by"] == "recorded"
    md = human_protocol_section(proto)
    assert md.startswith("## Human prompts: the study's protocol") and "highest replayed IoU" in md
    assert "| centre" in md and "| st1" in md and "### Replayed vs recorded IoU" in md
    assert human_protocol_section(human_protocol([r for r in PROTO_ROWS if r["strategy"] != "human"])) == ""
    assert write_human_protocol(tmp_path / "none", human_protocol([])) == []
    paths = write_human_protocol(tmp_path, proto)
    text = (tmp_path / "human_vs_automated.csv").read_text().splitlines()
    assert text[0].startswith("dataset,model,strategy,images,trajectories,human_iou,iou_full") and len(text) == 4
    assert len(paths) == 4
    with pytest.raises(DataError):
        human_protocol(PROTO_ROWS, best_by="best")
    assert matched_step([(1, 3, 0.2), (2, 5, 0.4)], 1) == (1, 3, 0.2)  # every step has more points: the first
