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

from pointprompt.human_data import HUMAN_META, read_pointprompt_human, write_pointprompt_human
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
