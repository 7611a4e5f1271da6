"""Prompt trajectories: lossless .jsonl / .json round trip, versioned format, errors, rows."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pointprompt.trajectory import (
    FORMAT,
    FORMAT_VERSION,
    PromptStep,
    Trajectory,
    decode_mask,
    encode_mask,
    load_trajectories,
    save_trajectories,
    to_rows,
    trajectories_from_rows,
)
from segprompt.errors import DataError
from segprompt.prompts import Box, Points

# ---------------------------------------------------------------------------------------------
# hypothesis strategies

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=6)
finite = st.floats(allow_nan=False, allow_infinity=False)


def _coord(limit: int):
    return st.floats(0, limit, allow_nan=False, width=32)


@st.composite
def steps_for(draw, h: int, w: int) -> PromptStep:
    n = draw(st.integers(0, 5))
    xs = [draw(_coord(w)) for _ in range(n)]
    ys = [draw(_coord(h)) for _ in range(n)]
    labels = [draw(st.integers(0, 1)) for _ in range(n)]
    points = Points(np.array(list(zip(xs, ys)), np.float32).reshape(-1, 2), np.array(labels, np.int64))
    box = None
    if draw(st.booleans()):
        x0, x1 = sorted([draw(_coord(w)), draw(_coord(w))])
        y0, y1 = sorted([draw(_coord(h)), draw(_coord(h))])
        box = Box([x0, y0, x1, y1])
    mask = draw(st.one_of(st.none(), arrays(bool, (h, w)), st.just(np.zeros((h, w), bool)), st.just(np.ones((h, w), bool))))
    return PromptStep(
        points=points,
        box=box,
        mask=mask,
        iou=draw(st.one_of(st.none(), st.floats(0, 1))),
        score=draw(st.one_of(st.none(), finite)),
        round=draw(st.integers(0, 2)),
        time_s=draw(st.one_of(st.none(), st.floats(0, 1e6))),
        extra=draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)),
    )


@st.composite
def trajectories(draw) -> Trajectory:
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    steps = draw(st.lists(steps_for(h, w), max_size=4))
    ranking = draw(st.one_of(st.none(), st.permutations(list(range(len(steps))))))
    return Trajectory(
        image_id=draw(st.text(min_size=1, max_size=6)),
        source=draw(st.sampled_from(["human", "kmedoids", "napari"])),
        annotator=draw(st.one_of(st.none(), st.text(max_size=4))),
        dataset=draw(st.one_of(st.none(), st.text(max_size=6))),
        image_size=(h, w),
        steps=steps,
        ranking=None if ranking is None else list(ranking),
        meta=draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
    )


def _assert_bit_exact(a: Trajectory, b: Trajectory) -> None:
    assert a == b
    for sa, sb in zip(a.steps, b.steps):
        assert sb.points.coords.dtype == np.float32 and sa.points.coords.tobytes() == sb.points.coords.tobytes()
        assert sa.points.labels.tolist() == sb.points.labels.tolist()
        if sa.box is not None:
            assert sa.box.xyxy.tobytes() == sb.box.xyxy.tobytes()
        if sa.mask is not None:
            assert sb.mask.dtype == bool and sb.mask.shape == sa.mask.shape and np.array_equal(sa.mask, sb.mask)
        for name in ("iou", "score", "time_s"):
            assert repr(getattr(sa, name)) == repr(getattr(sb, name))
        assert sa.round == sb.round
    assert a.ranking == b.ranking and a.meta == b.meta


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(trajectories(), max_size=3))
def test_round_trip_is_bit_exact(trajs):
    with tempfile.TemporaryDirectory() as d:
        for name in ("t.jsonl", "t.json"):
            path = save_trajectories(Path(d) / name, trajs)
            back = load_trajectories(path)
            assert len(back) == len(trajs)
            for a, b in zip(trajs, back):
                _assert_bit_exact(a, b)
        assert sorted(os.listdir(d)) == ["t.json", "t.jsonl"]  # no temporary files left


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode vs numpy 2
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9).flatmap(lambda h: st.integers(1, 9).flatmap(lambda w: arrays(bool, (h, w)))))
def test_rle_matches_pycocotools(mask):
    from pycocotools import mask as mask_utils

    rle = encode_mask(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    ref = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decode_mask(rle), ref.astype(bool))
    assert np.array_equal(decode_mask(rle), mask)


# ---------------------------------------------------------------------------------------------
# the data model


def _traj(**kw) -> Trajectory:
    t = Trajectory(image_id="img7", source="kmedoids", dataset="kvasir", image_size=(4, 6), meta={"model": "sam-tiny"}, **kw)
    m = np.zeros((4, 6), bool)
    m[1:3, 2:5] = True
    t.add_step([[3.0, 2.0, 1]], mask=m, iou=0.5, score=0.8, time_s=0.0)
    t.add_step(Points(np.array([[3, 2], [0.5, 0.5]], np.float32), np.array([1, 0])), iou=0.75, round=0, time_s=1.5)
    t.add_step(PromptStep(points=[[3.0, 2.0, 1], [0.5, 0.5, 0], [5.0, 3.0, 1]], box=[1, 1, 5, 3], iou=0.75, round=1))
    return t


def test_best_step_len_and_add_step_checks():
    t = _traj()
    assert len(t) == 3 and t.best_index() == 1 and t.best_step() is t.steps[1]  # earliest of the tied best
    assert Trajectory("a", "human").best_step() is None
    assert Trajectory("a", "human", steps=[PromptStep(), PromptStep()], ranking=[1, 0]).best_index() == 1
    with pytest.raises(DataError, match="outside the image"):
        t.add_step([[7.0, 1.0, 1]])  # x = 7 > width 6
    with pytest.raises(DataError, match="mask is 6x4"):
        t.add_step([[1.0, 1.0, 1]], mask=np.zeros((6, 4), bool))  # transposed mask
    with pytest.raises(DataError, match="iou"):
        PromptStep(iou=1.5)
    with pytest.raises(DataError, match="ranking"):
        Trajectory("a", "human", steps=[PromptStep()], ranking=[0, 1])
    u = Trajectory("b", "napari")
    u.add_step([[1.0, 2.0, 1]], mask=np.ones((3, 5), bool))
    assert u.image_size == (3, 5)  # taken from the first mask


def test_to_rows_and_back():
    rows = to_rows(_traj())
    assert [r["step"] for r in rows] == [1, 2, 3]
    r = rows[1]
    assert r["image"] == "img7" and r["source"] == r["strategy"] == "kmedoids" and r["model"] == "sam-tiny"
    assert r["points"] == [[3.0, 2.0, 1], [0.5, 0.5, 0]] and r["n_positive"] == 1 and r["n_negative"] == 1
    assert r["iou"] == 0.75 and r["time_s"] == 1.5 and [x["best"] for x in rows] == [False, True, False]
    assert rows[2]["round"] == 1
    json.dumps(rows)  # plain JSON values
    back = trajectories_from_rows(rows, image_sizes={"img7": (4, 6)})
    assert len(back) == 1 and [s.points for s in back[0].steps] == [s.points for s in _traj().steps]
    assert back[0].meta == {"model": "sam-tiny"} and back[0].image_size == (4, 6)
    # benchmark rows (pointprompt.bench) group by strategy
    bench = [
        {"dataset": "d", "image": "0", "model": "m", "strategy": "random", "step": 2, "points": [[1, 1, 1], [2, 2, 0]], "iou": 0.5, "score": 0.1},
        {"dataset": "d", "image": "0", "model": "m", "strategy": "random", "step": 1, "points": [[1, 1, 1]], "iou": 0.25, "score": None},
        {"dataset": "d", "image": "0", "model": "m", "strategy": "centre", "step": 1, "points": [[3, 3, 1]], "iou": 0.125, "score": 0.2},
    ]
    ts = trajectories_from_rows(bench)
    assert [(t.source, len(t)) for t in ts] == [("random", 2), ("centre", 1)]
    assert [s.iou for s in ts[0].steps] == [0.25, 0.5]


# ---------------------------------------------------------------------------------------------
# format, version and validation errors name the file and the line


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(version=2), "version 2, newer"),
        (lambda r: r.update(version=0), "unknown version 0"),
        (lambda r: r.pop("version"), "no valid \"version\""),
        (lambda r: r.update(format="something.else"), "not a segprompt trajectory"),
        (lambda r: r.pop("steps"), "missing \"steps\""),
        (lambda r: r.update(colour="red"), "unknown keys \\['colour'\\]"),
        (lambda r: r["steps"][0].update(points=[[1, 2]]), "step 0: each point must be"),
        (lambda r: r["steps"][0].update(points=[[1, 2, 3]]), "step 0: point labels"),
        (lambda r: r["steps"][1].update(points=[[6.5, 1, 1]]), "step 1: point 0 at \\(x=6.5, y=1\\) lies outside"),
        (lambda r: r["steps"][0]["mask"].update(counts="P"), "ends in the middle of a number"),
        (lambda r: r["steps"][0].update(mask=encode_mask(np.ones((4, 5), bool))), "step 0: mask is 4x5 but the image is 4x6"),
        (lambda r: r["steps"][0]["mask"].update(counts=r["steps"][0]["mask"]["counts"] + "1"), "RLE counts cover"),
        (lambda r: r["steps"][0]["mask"].update(counts="\x7f"), "invalid character"),
        (lambda r: r["steps"][0].update(iou="high"), "iou must be a number"),
        (lambda r: r.update(ranking=[0, 0, 1]), "ranking repeats"),
        (lambda r: r.update(image_size=[0, 6]), "image_size must be positive"),
    ],
)
def test_bad_rows_raise_dataerror_naming_file_and_line(tmp_path, mutate, message):
    good = tmp_path / "good.jsonl"
    save_trajectories(good, [_traj(), _traj(), _traj()])
    rows = _rows(good)
    mutate(rows[1])
    bad = tmp_path / "bad.jsonl"
    _write_rows(bad, rows)
    with pytest.raises(DataError, match=message) as err:
        load_trajectories(bad)
    assert str(err.value).startswith(f"{bad}:2: ")


def test_json_errors_name_the_line(tmp_path):
    path = save_trajectories(tmp_path / "t.json", [_traj(), _traj(), _traj()])
    lines = path.read_text().splitlines()
    assert json.loads(lines[0] + "]}")["format"] == FORMAT  # header line, then one trajectory per line
    row = json.loads(lines[3])  # the last trajectory (no trailing comma)
    row["version"] = 99
    lines[3] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"t\.json:4 \(trajectory 2\): .*version 99") as err:
        load_trajectories(path)
    assert str(path) in str(err.value)
    # a pretty-printed list written by another tool: the line where the bad object starts
    objs = [_traj().to_dict(), _traj().to_dict()]
    objs[1]["steps"][0]["round"] = -1
    other = tmp_path / "other.json"
    other.write_text(json.dumps(objs, indent=2))
    start = other.read_text().splitlines().index("  {", 2) + 1  # the second element's first line
    with pytest.raises(DataError, match=rf"other\.json:{start} \(trajectory 1\): step 0: round"):
        load_trajectories(other)
    # broken JSON and a wrong file header
    other.write_text('{"format": "segprompt.trajectory",\n "version": 1, "trajectories": [}\n')
    with pytest.raises(DataError, match=r"other\.json:2: not valid JSON"):
        load_trajectories(other)
    other.write_text(json.dumps({"format": FORMAT, "version": FORMAT_VERSION + 1, "trajectories": []}))
    with pytest.raises(DataError, match=r"other\.json:1: the file has version 2, newer"):
        load_trajectories(other)


def test_jsonl_syntax_error_and_suffix(tmp_path):
    path = tmp_path / "t.jsonl"
    save_trajectories(path, [_traj()])
    path.write_text(path.read_text() + "\n{not json\n")
    with pytest.raises(DataError, match=r"t\.jsonl:3: not valid JSON"):
        load_trajectories(path)
    with pytest.raises(DataError, match=r"\.jsonl .* or \.json"):
        save_trajectories(tmp_path / "t.txt", [_traj()])
    with pytest.raises(DataError, match="no such trajectory file"):
        load_trajectories(tmp_path / "missing.jsonl")


def test_failed_save_keeps_the_old_file(tmp_path):
    path = save_trajectories(tmp_path / "t.jsonl", [_traj()])
    before = path.read_text()
    bad = _traj()
    bad.meta["handle"] = object()
    with pytest.raises(DataError, match="meta and extra must hold JSON values"):
        save_trajectories(path, [_traj(), bad])
    bad = _traj()
    bad.ranking = [5]  # changed in place: checked on save
    with pytest.raises(DataError, match="ranking names step 5"):
        save_trajectories(path, [bad])
    assert path.read_text() == before and os.listdir(tmp_path) == ["t.jsonl"]
    # numpy values in meta are converted
    t = _traj()
    t.meta.update(n=np.int64(3), x=np.float32(0.5), arr=np.arange(3))
    assert load_trajectories(save_trajectories(path, t))[0].meta == {"model": "sam-tiny", "n": 3, "x": 0.5, "arr": [0, 1, 2]}
