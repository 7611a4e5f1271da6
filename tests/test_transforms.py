"""Transforms move points and boxes exactly as they move the pixels (hypothesis property tests)."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from segprompt.data.transforms import (
    SampleTransform,
    TransformResult,
    eval_transform,
    longest_side,
    pad_to_square,
    train_transform,
)
from segprompt.errors import PromptError
from segprompt.prompts import Box, Points

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def geometric(draw, rotation: bool = True):
    """A deterministic random chain: optional flips, an affine warp, a resize; and an image size."""
    h = draw(st.integers(24, 64))
    w = draw(st.integers(24, 64))
    steps = []
    if draw(st.booleans()):
        steps.append(A.HorizontalFlip(p=1.0))
    if draw(st.booleans()):
        steps.append(A.VerticalFlip(p=1.0))
    s = draw(st.floats(0.75, 1.3))
    rot = draw(st.floats(-30, 30)) if rotation else 0.0
    tx = draw(st.integers(-4, 4))
    ty = draw(st.integers(-4, 4))
    steps.append(
        A.Affine(scale=(s, s), rotate=(rot, rot), translate_px={"x": (tx, tx), "y": (ty, ty)}, interpolation=cv2.INTER_LINEAR, p=1.0)
    )
    nh = int(round(h * draw(st.floats(0.6, 1.6))))
    nw = int(round(w * draw(st.floats(0.6, 1.6))))
    steps.append(A.Resize(nh, nw, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0))
    return (h, w), steps


def centroid(channel: np.ndarray) -> tuple[float, float] | None:
    v = channel.astype(np.float64)
    total = v.sum()
    if total <= 0:
        return None
    ys, xs = np.mgrid[0 : v.shape[0], 0 : v.shape[1]]
    return float((xs * v).sum() / total), float((ys * v).sum() / total)


@SETTINGS
@given(geometric(), st.data())
def test_point_follows_its_marked_pixel(chain, data):
    (h, w), steps = chain
    r = data.draw(st.integers(0, h - 1))
    c = data.draw(st.integers(0, w - 1))
    img = np.zeros((h, w, 3), np.uint8)
    img[r, c] = 255
    everywhere = SampleTransform(steps, remove_invisible=False, seed=0)(img, points=[[c, r]], labels=[1])
    out = SampleTransform(steps, remove_invisible=True, seed=0)(img, points=[[c, r]], labels=[1])
    x, y = everywhere.points[0]
    oh, ow = out.size
    if 1 <= x <= ow - 2 and 1 <= y <= oh - 2:  # well inside: kept, and on the marked pixel
        assert out.points.shape == (1, 2) and out.labels.tolist() == [1]
        found = centroid(out.image[..., 0])
        assert found is not None
        assert abs(x - found[0]) <= 1.0 and abs(y - found[1]) <= 1.0, ((x, y), found)
        np.testing.assert_array_equal(out.points, everywhere.points)
    elif not (0 <= x < ow and 0 <= y < oh):  # it left the image: dropped, with its label
        assert out.points.shape == (0, 2) and out.labels.shape == (0,)


@SETTINGS
@given(st.data())
def test_point_follows_marked_pixel_through_train_transform(data):
    h, w = data.draw(st.integers(32, 80)), data.draw(st.integers(32, 80))
    r = data.draw(st.integers(h // 4, 3 * h // 4))
    c = data.draw(st.integers(w // 4, 3 * w // 4))
    seed = data.draw(st.integers(0, 2**16))
    img = np.zeros((h, w, 3), np.uint8)
    img[r, c] = 255
    t = train_transform(48, p_color=0.0, vflip=0.5, translate=0.05, seed=seed)
    out = t(img, points=[[c, r]])
    assert out.image.shape == (48, 48, 3)
    found = centroid(out.image[..., 0])
    assume(found is not None and len(out.points) == 1)
    assert np.abs(out.points[0] - np.array(found)).max() <= 1.0


@st.composite
def rect_mask(draw, size):
    h, w = size
    x0 = draw(st.integers(w // 5, w // 2))
    y0 = draw(st.integers(h // 5, h // 2))
    x1 = draw(st.integers(x0 + 3, 4 * w // 5))
    y1 = draw(st.integers(y0 + 3, 4 * h // 5))
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@SETTINGS
@given(geometric(rotation=False), st.data())
def test_box_corners_follow_the_mask_bounding_box(chain, data):
    (h, w), steps = chain
    mask = data.draw(rect_mask((h, w)))
    img = np.zeros((h, w, 3), np.uint8)
    out = SampleTransform(steps, seed=0)(img, mask=mask, boxes=Box.from_mask(mask))
    assert out.mask.dtype == bool
    assume(out.mask.any())
    assert out.box_index.tolist() == [0]
    expected = Box.from_mask(out.mask).xyxy
    np.testing.assert_allclose(out.boxes[0], expected, atol=1.5)


@SETTINGS
@given(geometric(rotation=True), st.data())
def test_rotated_box_contains_the_mask(chain, data):
    (h, w), steps = chain
    mask = data.draw(rect_mask((h, w)))
    out = SampleTransform(steps, seed=0)(np.zeros((h, w, 3), np.uint8), mask=mask, boxes=[Box.from_mask(mask)])
    assume(out.mask.any())
    bx = Box.from_mask(out.mask).xyxy
    b = out.boxes[0]
    assert b[0] <= bx[0] + 1.5 and b[1] <= bx[1] + 1.5 and b[2] >= bx[2] - 1.5 and b[3] >= bx[3] - 1.5


@SETTINGS
@given(
    st.integers(8, 90),
    st.integers(8, 90),
    st.integers(16, 64),
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.integers(0, 1)), min_size=1, max_size=8),
)
def test_eval_transform_is_deterministic_and_keeps_points(h, w, size, rows):
    pts = np.array([[fx * w, fy * h] for fx, fy, _ in rows], np.float32)  # edges x = W, y = H included
    labels = np.array([l for _, _, l in rows])
    img = np.random.default_rng(h * 100 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = img[..., 0] > 128
    a = eval_transform(size)(img, mask=mask, points=pts, labels=labels)
    b = eval_transform(size)(img, mask=mask, points=pts, labels=labels)
    t = eval_transform(size)
    c, d = t(img, mask=mask, points=pts, labels=labels), t(img, mask=mask, points=pts, labels=labels)
    for o in (b, c, d):
        np.testing.assert_array_equal(a.image, o.image)
        np.testing.assert_array_equal(a.mask, o.mask)
        np.testing.assert_array_equal(a.points, o.points)
    assert a.image.shape == (size, size, 3)
    assert len(a.points) == len(pts) and a.point_index.tolist() == list(range(len(pts)))
    np.testing.assert_array_equal(a.labels, labels)
    scale = size / max(h, w)
    np.testing.assert_allclose(a.points, pts * scale, atol=1e-3 * size)


@SETTINGS
@given(
    st.integers(20, 60),
    st.integers(20, 60),
    st.integers(-25, 25),
    st.integers(-25, 25),
    st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59), st.integers(0, 1)), min_size=1, max_size=12),
)
def test_labels_stay_aligned_when_points_are_dropped(h, w, tx, ty, rows):
    pts = np.array([[x % w, y % h] for x, y, _ in rows], np.float32)
    labels = np.array([l for _, _, l in rows])
    shift = A.Affine(translate_px={"x": (tx, tx), "y": (ty, ty)}, p=1.0)
    img = np.zeros((h, w, 3), np.uint8)
    out = SampleTransform([shift], remove_invisible=True, seed=0)(img, points=pts, labels=labels)
    moved = pts + np.array([tx, ty], np.float32)
    inside = (moved[:, 0] >= 0) & (moved[:, 0] < w) & (moved[:, 1] >= 0) & (moved[:, 1] < h)
    assert out.point_index.tolist() == np.flatnonzero(inside).tolist()
    np.testing.assert_array_equal(out.labels, labels[inside])
    np.testing.assert_allclose(out.points, moved[inside], atol=1e-3)
    # the same with remove_invisible=False keeps every point, outside ones included
    kept = SampleTransform([shift], remove_invisible=False, seed=0)(img, points=pts, labels=labels)
    assert kept.point_index.tolist() == list(range(len(pts)))
    np.testing.assert_allclose(kept.points, moved, atol=1e-3)
    np.testing.assert_array_equal(kept.labels, labels)


def test_flip_conventions_exact():
    img = np.zeros((10, 20, 3), np.uint8)
    out = SampleTransform([A.HorizontalFlip(p=1.0)])(img, points=Points([[3, 4]], [0]), boxes=[[2, 1, 5, 6]])
    np.testing.assert_allclose(out.points, [[16, 4]])  # pixel column 3 -> 20 - 1 - 3
    np.testing.assert_allclose(out.boxes, [[15, 1, 18, 6]], atol=1e-4)  # edges 2..5 -> 15..18
    assert out.labels.tolist() == [0]


def test_train_transform_shapes_dtypes_and_seed():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (70, 110, 3), dtype=np.uint8)
    labels_map = rng.integers(0, 4, (70, 110)).astype(np.int64)
    pts = np.array([[50, 30], [10, 60]], np.float32)
    runs = []
    for _ in range(2):
        t = train_transform(64, seed=7, fill_mask=255)
        runs.append([t(img, mask=labels_map, points=pts, labels=[1, 0], boxes=[[20, 10, 90, 60]]) for _ in range(3)])
    for a, b in zip(*runs):
        assert isinstance(a, TransformResult)
        assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
        assert a.mask.shape == (64, 64) and a.mask.dtype == np.int64
        assert set(np.unique(a.mask)) <= {0, 1, 2, 3, 255}
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not all(np.array_equal(runs[0][0].image, r.image) for r in runs[0][1:])  # it does augment
    for mode in ("crop", "stretch"):
        out = train_transform((40, 56), resize=mode, seed=1)(img, mask=labels_map > 1)
        assert out.image.shape == (40, 56, 3) and out.mask.dtype == bool


def test_building_blocks_and_errors():
    img = np.zeros((30, 60, 3), np.uint8)
    t = SampleTransform([longest_side(40), pad_to_square(40)])
    out = t(img, points=[[59, 29]], boxes=np.array([[0, 0, 60, 30]]))
    assert out.image.shape == (40, 40, 3)
    np.testing.assert_allclose(out.points, [[59 * 40 / 60, 29 * 40 / 60]], atol=1e-3)
    np.testing.assert_allclose(out.boxes, [[0, 0, 40, 20]], atol=1e-3)
    empty = t(img)
    assert empty.points.shape == (0, 2) and empty.boxes.shape == (0, 4) and empty.mask is None
    assert "LongestMaxSize" in repr(t) and t.describe()["transforms"][0]["__class_fullname__"] == "LongestMaxSize"
    with pytest.raises(PromptError):
        t(img, points=[[1, 2]], labels=[1, 0])
    with pytest.raises(PromptError):
        t(img, boxes=[[5, 5, 5, 9]])
