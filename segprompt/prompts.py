"""Prompt types: points, boxes, scribbles, masks, text and reference images.

Conventions (see DESIGN.md):

* coordinates are ``(x, y)`` pixels of the *original* image, ``x`` = column, ``y`` = row,
  origin at the top-left corner, float32;
* boxes are ``XYXY`` = ``(x0, y0, x1, y1)`` with ``x0 <= x1`` and ``y0 <= y1``;
* point labels are ``1`` (positive / inclusion) and ``0`` (negative / exclusion);
* masks are ``bool`` arrays of shape ``(H, W)``.

Every prompt validates itself on construction and raises :class:`PromptError` saying what is
wrong. Passing ``image_size=(H, W)`` (or calling :meth:`PromptSet.check`) also checks that the
prompt lies inside the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import numpy as np

from segprompt.errors import PromptError

PromptKind = Literal["points", "box", "scribble", "mask", "text", "reference"]
PROMPT_KINDS: tuple[PromptKind, ...] = ("points", "box", "scribble", "mask", "text", "reference")

ImageSize = tuple[int, int]  # (H, W)


def _check_inside(coords: np.ndarray, image_size: ImageSize | None, what: str) -> None:
    """Raise if any (x, y) in ``coords`` (N, 2) lies outside ``[0, W] x [0, H]``."""
    if image_size is None or len(coords) == 0:
        return
    h, w = image_size
    bad = (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        x, y = coords[i]
        raise PromptError(
            f"{what} {i} at (x={x:g}, y={y:g}) lies outside the image of width {w} and height {h}; "
            "coordinates are (x, y) = (column, row) pixels of the original image"
        )


def _as_coords(value: object, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{what} must be numbers, got {value!r}") from exc
    if arr.size == 0:
        return np.zeros((0, 2), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise PromptError(f"{what} must have shape (N, 2) as (x, y) pairs, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PromptError(f"{what} contain NaN or infinite values")
    return arr


@dataclass(frozen=True, eq=False)
class Points:
    """Point clicks: ``coords`` (N, 2) float32 ``(x, y)`` and ``labels`` (N,) int64 in {0, 1}."""

    coords: np.ndarray
    labels: np.ndarray
    image_size: ImageSize | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        coords = _as_coords(self.coords, "point coordinates")
        labels = np.asarray(self.labels).reshape(-1)
        if labels.size and not np.issubdtype(labels.dtype, np.number):
            raise PromptError(f"point labels must be 0 or 1, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if len(labels) != len(coords):
            raise PromptError(
                f"{len(coords)} point coordinates but {len(labels)} labels; give one label per point"
            )
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise PromptError(
                f"point labels must be 1 (positive) or 0 (negative), got {sorted(set(labels.tolist()))}"
            )
        _check_inside(coords, self.image_size, "point")
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "labels", labels)

    @classmethod
    def from_list(cls, rows: Iterable[Sequence[float]], image_size: ImageSize | None = None) -> "Points":
        """From ``[[x, y, label], ...]`` (the results.jsonl form)."""
        rows = [list(r) for r in rows]
        for r in rows:
            if len(r) != 3:
                raise PromptError(f"each point must be [x, y, label], got {r!r}")
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        return cls(arr[:, :2], arr[:, 2].round().astype(np.int64), image_size)

    @classmethod
    def positive(cls, *xy: Sequence[float], image_size: ImageSize | None = None) -> "Points":
        """Positive points: ``Points.positive((x0, y0), (x1, y1))``."""
        return cls(np.asarray(xy, np.float32).reshape(-1, 2), np.ones(len(xy), np.int64), image_size)

    def to_list(self) -> list[list[float]]:
        """``[[x, y, label], ...]`` with plain Python numbers (JSON-ready)."""
        return [[float(x), float(y), int(l)] for (x, y), l in zip(self.coords, self.labels)]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_positive(self) -> int:
        return int((self.labels == 1).sum())

    @property
    def n_negative(self) -> int:
        return int((self.labels == 0).sum())

    def __add__(self, other: "Points") -> "Points":
        return Points(np.concatenate([self.coords, other.coords]), np.concatenate([self.labels, other.labels]))

    def __getitem__(self, index: slice | int) -> "Points":
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Points(self.coords[index], self.labels[index])

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Points)
            and np.array_equal(self.coords, other.coords)
            and np.array_equal(self.labels, other.labels)
        )


@dataclass(frozen=True, eq=False)
class Box:
    """An axis-aligned box ``xyxy`` = (x0, y0, x1, y1), float32, original-image pixels."""

    xyxy: np.ndarray
    image_size: ImageSize | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        try:
            arr = np.asarray(self.xyxy, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise PromptError(f"box must be 4 numbers (x0, y0, x1, y1), got {self.xyxy!r}") from exc
        if arr.shape != (4,):
            raise PromptError(f"box must be 4 numbers (x0, y0, x1, y1), got {arr.size}")
        if not np.isfinite(arr).all():
            raise PromptError("box contains NaN or infinite values")
        x0, y0, x1, y1 = arr.tolist()
        if x1 < x0 or y1 < y0:
            raise PromptError(
                f"box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) has x1 < x0 or y1 < y0; boxes are XYXY"
            )
        _check_inside(arr.reshape(2, 2), self.image_size, "box corner")
        object.__setattr__(self, "xyxy", arr)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "Box":
        """Tight box around the ``True`` pixels of a bool (H, W) mask (pixel-edge inclusive)."""
        ys, xs = np.nonzero(np.asarray(mask))
        if len(xs) == 0:
            raise PromptError("cannot make a box from an empty mask")
        return cls([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], image_size=np.asarray(mask).shape[:2])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and np.array_equal(self.xyxy, other.xyxy)


@dataclass(frozen=True, eq=False)
class Scribble:
    """A polyline ``coords`` (N, 2) ``(x, y)`` drawn with ``width`` pixels and a label 1/0."""

    coords: np.ndarray
    label: int = 1
    width: float = 3.0
    image_size: ImageSize | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        coords = _as_coords(self.coords, "scribble coordinates")
        if len(coords) == 0:
            raise PromptError("a scribble needs at least one point")
        if self.label not in (0, 1):
            raise PromptError(f"scribble label must be 1 (positive) or 0 (negative), got {self.label!r}")
        if not self.width > 0:
            raise PromptError(f"scribble width must be positive, got {self.width!r}")
        _check_inside(coords, self.image_size, "scribble point")
        object.__setattr__(self, "coords", coords)

    def rasterize(self, image_size: ImageSize) -> np.ndarray:
        """bool (H, W) mask of the drawn polyline."""
        import cv2

        h, w = image_size
        canvas = np.zeros((h, w), np.uint8)
        pts = np.round(self.coords).astype(np.int32).reshape(-1, 1, 2)
        thickness = max(1, int(round(self.width)))
        if len(pts) == 1:
            cv2.circle(canvas, tuple(int(v) for v in pts[0, 0]), max(1, thickness // 2), 1, -1)
        else:
            cv2.polylines(canvas, [pts], False, 1, thickness)
        return canvas.astype(bool)


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """A dense mask prompt.

    ``kind="binary"``: ``data`` is a bool (H, W) mask at the original image size.
    ``kind="logits"``: ``data`` is float32 low-resolution logits (h, w) as returned in
    ``Prediction.logits`` (SAM: 256 x 256), used for mask feedback between clicks.
    """

    data: np.ndarray
    kind: Literal["binary", "logits"] = "binary"
    image_size: ImageSize | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        arr = np.asarray(self.data)
        if arr.ndim != 2:
            raise PromptError(f"a mask prompt must be 2-D (H, W), got shape {arr.shape}")
        if self.kind == "binary":
            if arr.dtype != bool:
                if not np.isin(np.unique(arr), (0, 1)).all():
                    raise PromptError("a binary mask prompt must hold only 0/1 or bool values")
                arr = arr.astype(bool)
            if self.image_size is not None and arr.shape != tuple(self.image_size):
                raise PromptError(f"mask prompt of shape {arr.shape} does not match the image size {self.image_size}")
        elif self.kind == "logits":
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                raise PromptError("mask-prompt logits contain NaN or infinite values")
        else:
            raise PromptError(f"mask prompt kind must be 'binary' or 'logits', got {self.kind!r}")
        object.__setattr__(self, "data", arr)


@dataclass(frozen=True)
class Text:
    """A text prompt (class name or referring expression)."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise PromptError(f"a text prompt must be a non-empty string, got {self.text!r}")


@dataclass(frozen=True, eq=False)
class Reference:
    """A visual reference: an example ``image`` (H, W, 3) uint8 RGB and its ``mask`` (H, W) bool."""

    image: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        mask = np.asarray(self.mask)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise PromptError(f"reference image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if mask.shape != image.shape[:2]:
            raise PromptError(f"reference mask shape {mask.shape} differs from its image {image.shape[:2]}")
        mask = mask.astype(bool)
        if not mask.any():
            raise PromptError("reference mask is empty: a reference must show the object")
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "mask", mask)


@dataclass(frozen=True)
class PromptSet:
    """All the prompts for one object on one image; a segmenter returns one output per set.

    Any combination may be given; a segmenter declares which kinds it accepts.
    """

    points: Points | None = None
    box: Box | None = None
    scribbles: tuple[Scribble, ...] = ()
    mask: MaskPrompt | None = None
    text: Text | None = None
    reference: Reference | None = None

    def __post_init__(self) -> None:
        if self.points is not None and len(self.points) == 0:
            object.__setattr__(self, "points", None)
        object.__setattr__(self, "scribbles", tuple(self.scribbles))
        if isinstance(self.text, str):
            object.__setattr__(self, "text", Text(self.text))

    @property
    def kinds(self) -> frozenset[str]:
        out = set()
        if self.points is not None:
            out.add("points")
        if self.box is not None:
            out.add("box")
        if self.scribbles:
            out.add("scribble")
        if self.mask is not None:
            out.add("mask")
        if self.text is not None:
            out.add("text")
        if self.reference is not None:
            out.add("reference")
        return frozenset(out)

    def is_empty(self) -> bool:
        return not self.kinds

    def check(self, image_size: ImageSize) -> "PromptSet":
        """Validate that every spatial prompt lies inside an image of ``image_size`` (H, W)."""
        if self.points is not None:
            _check_inside(self.points.coords, image_size, "point")
        if self.box is not None:
            _check_inside(self.box.xyxy.reshape(2, 2), image_size, "box corner")
        for s in self.scribbles:
            _check_inside(s.coords, image_size, "scribble point")
        if self.mask is not None and self.mask.kind == "binary" and self.mask.data.shape != tuple(image_size):
            raise PromptError(f"mask prompt of shape {self.mask.data.shape} does not match the image size {tuple(image_size)}")
        return self


def as_prompt_sets(prompts: "PromptSet | Points | Box | Sequence[PromptSet | Points | Box]") -> list[PromptSet]:
    """Normalise what users pass to ``segment``: one prompt, one set, or a list of either."""
    if isinstance(prompts, (PromptSet, Points, Box, Scribble, MaskPrompt, Text, Reference)):
        prompts = [prompts]
    out = []
    for p in prompts:
        if isinstance(p, PromptSet):
            out.append(p)
        elif isinstance(p, Points):
            out.append(PromptSet(points=p))
        elif isinstance(p, Box):
            out.append(PromptSet(box=p))
        elif isinstance(p, Scribble):
            out.append(PromptSet(scribbles=(p,)))
        elif isinstance(p, MaskPrompt):
            out.append(PromptSet(mask=p))
        elif isinstance(p, Text):
            out.append(PromptSet(text=p))
        elif isinstance(p, Reference):
            out.append(PromptSet(reference=p))
        else:
            raise PromptError(f"expected a PromptSet or a prompt, got {type(p).__name__}")
    return out


__all__ = [
    "PROMPT_KINDS",
    "PromptKind",
    "Points",
    "Box",
    "Scribble",
    "MaskPrompt",
    "Text",
    "Reference",
    "PromptSet",
    "as_prompt_sets",
]
