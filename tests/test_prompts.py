"""Prompt types validate on construction and say what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segprompt.errors import PromptError
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet, Reference, Scribble, Text, as_prompt_sets


def test_points_round_trip_and_counts():
    p = Points.from_list([[10, 20, 1], [5.5, 7.25, 0], [1, 2, 1]])
    assert p.coords.dtype == np.float32 and p.labels.dtype == np.int64
    assert p.to_list() == [[10.0, 20.0, 1], [5.5, 7.25, 0], [1.0, 2.0, 1]]
    assert (p.n_positive, p.n_negative, len(p)) == (2, 1, 3)
    assert p[:2] == Points([[10, 20], [5.5, 7.25]], [1, 0])
    assert (p[:1] + p[2:]).to_list() == [[10.0, 20.0, 1], [1.0, 2.0, 1]]


@pytest.mark.parametrize(
    "coords,labels,match",
    [
        ([[1, 2, 3]], [1], r"shape \(N, 2\)"),
        ([[1, 2]], [1, 0], "2 labels"),
        ([[1, 2]], [2], "1 \\(positive\\) or 0"),
        ([[np.nan, 2]], [1], "NaN"),
        ("abc", [1], "numbers"),
    ],
)
def test_points_invalid(coords, labels, match):
    with pytest.raises(PromptError, match=match):
        Points(coords, labels)


def test_points_outside_image_names_axes():
    # (x, y) = (column, row): x may reach the width, not the height, of a wide image
    Points([[299, 10]], [1], image_size=(100, 300))
    with pytest.raises(PromptError, match=r"x=299, y=150.*width 300 and height 100"):
        Points([[299, 150]], [1], image_size=(100, 300))


def test_box_validation_and_from_mask():
    with pytest.raises(PromptError, match="XYXY"):
        Box([10, 10, 5, 20])
    with pytest.raises(PromptError, match="4 numbers"):
        Box([1, 2, 3])
    m = np.zeros((40, 60), bool)
    m[5:10, 20:31] = True  # rows 5..9, cols 20..30
    assert Box.from_mask(m).xyxy.tolist() == [20, 5, 31, 10]
    with pytest.raises(PromptError, match="empty"):
        Box.from_mask(np.zeros((4, 4), bool))
    with pytest.raises(PromptError, match="outside"):
        Box([0, 0, 61, 10], image_size=(40, 60))


def test_scribble_rasterize_follows_xy():
    s = Scribble([[2, 8], [17, 8]], label=1, width=1)
    r = s.rasterize((12, 20))
    assert r[8, 2:18].all() and r.sum() == 16  # a horizontal line on row y=8
    with pytest.raises(PromptError, match="label"):
        Scribble([[1, 1]], label=3)
    with pytest.raises(PromptError, match="at least one point"):
        Scribble(np.zeros((0, 2)))


def test_mask_reference_text():
    with pytest.raises(PromptError, match="2-D"):
        MaskPrompt(np.zeros((3, 3, 3)))
    with pytest.raises(PromptError, match="0/1"):
        MaskPrompt(np.array([[0, 2]]))
    with pytest.raises(PromptError, match="does not match"):
        MaskPrompt(np.zeros((4, 4), bool), image_size=(5, 4))
    assert MaskPrompt(np.array([[0, 1]])).data.dtype == bool
    with pytest.raises(PromptError, match="non-empty"):
        Text("  ")
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(PromptError, match="empty"):
        Reference(img, np.zeros((8, 8), bool))
    with pytest.raises(PromptError, match="differs"):
        Reference(img, np.ones((8, 9), bool))
    with pytest.raises(PromptError, match="uint8"):
        Reference(img.astype(np.float32), np.ones((8, 8), bool))


def test_prompt_set_kinds_and_check():
    s = PromptSet(points=Points([[1, 1]], [1]), box=Box([0, 0, 4, 4]), text="polyp")
    assert s.kinds == {"points", "box", "text"}
    assert PromptSet(points=Points(np.zeros((0, 2)), [])).is_empty()
    with pytest.raises(PromptError, match="outside"):
        s.check((3, 3))
    assert [x.kinds for x in as_prompt_sets([Points([[1, 1]], [1]), Box([0, 0, 1, 1])])] == [{"points"}, {"box"}]


@given(
    st.integers(1, 400),
    st.integers(1, 400),
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.integers(0, 1)), min_size=1, max_size=20),
)
def test_points_inside_any_image_are_accepted(h, w, rel):
    rows = [[fx * w, fy * h, lab] for fx, fy, lab in rel]
    p = Points.from_list(rows, image_size=(h, w))
    assert Points.from_list(p.to_list()) == p
