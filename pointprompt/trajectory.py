"""Prompt trajectories: the sequence of prompts (and their results) given to one image.

A *trajectory* is what one annotator, one automated strategy or one napari session did on one
image: an ordered list of :class:`PromptStep`, each holding the **full** prompt at that step
(cumulative points, an optional box), the mask the model returned, its IoU against the ground
truth, the model's own score, the interaction round and the time since the trajectory started.
Human PointPrompt data (:mod:`pointprompt.human_data`), automated benchmark runs
(:func:`trajectories_from_rows`) and napari recordings all become :class:`Trajectory` objects,
and :func:`to_rows` turns any of them into benchmark-style rows, so they share one table.

File format (``FORMAT_VERSION = 1``)
------------------------------------
``save_trajectories(path, trajectories)`` writes either

* ``*.jsonl``: one trajectory object per line, or
* ``*.json``: ``{"format": "segprompt.trajectory", "version": 1, "trajectories": [...]}`` with
  each trajectory on its own line inside the array (so errors can name a line there too).

Every trajectory object carries ``"format": "segprompt.trajectory"`` and ``"version": 1``::

    {"format": "segprompt.trajectory", "version": 1,
     "image_id": "17", "source": "human", "annotator": "st1", "dataset": "Polyp",
     "image_size": [H, W], "ranking": [3, 0, 2, 1] | null, "meta": {...},
     "steps": [{"points": [[x, y, label], ...], "box": [x0, y0, x1, y1] | null,
                "mask": {"size": [H, W], "counts": "<COCO RLE string>"} | null,
                "iou": 0.91 | null, "score": 0.97 | null, "round": 0,
                "time_s": 1.25 | null, "extra": {...}}, ...]}

Conventions: points are ``(x, y)`` = (column, row) pixels of the original image (float32 in
memory; written with Python's shortest exact repr, so they read back bit-identically), labels 1
(positive / inclusion) and 0 (negative / exclusion); boxes XYXY; masks bool (H, W), stored as
COCO RLE (``pycocotools.mask.encode`` of the Fortran-ordered uint8 mask, counts as a str) with
their size; rounds are 0-based (PointPrompt's round labels are 0 and 1); ``ranking`` lists step
indices (0-based) best first, as PointPrompt's ``sorts`` files do. ``meta`` and ``extra`` must be
JSON-serialisable (numpy scalars and arrays are converted; tuples come back as lists).

Loading checks the format tag and the version and validates every row; any problem raises
:class:`~segprompt.errors.DataError` naming the file and the line. Files are written atomically
(temporary file + ``os.replace``).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from segprompt.errors import DataError, SegpromptError
from segprompt.prompts import Box, Points

FORMAT = "segprompt.trajectory"
FORMAT_VERSION = 1

ImageSize = tuple[int, int]

_TRAJ_KEYS = ("format", "version", "image_id", "source", "annotator", "dataset", "image_size", "ranking", "meta", "steps")
_STEP_KEYS = ("points", "box", "mask", "iou", "score", "round", "time_s", "extra")


# --------------------------------------------------------------------------------------------
# small validators


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _opt_float(value: Any, what: str, lo: float | None = None, hi: float | None = None) -> float | None:
    if value is None:
        return None
    if not _is_number(value):
        raise DataError(f"{what} must be a number or null, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise DataError(f"{what} must be finite, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise DataError(f"{what} must lie in [{lo}, {hi}], got {v!r}")
    return v


def _as_image_size(value: Any) -> ImageSize | None:
    if value is None:
        return None
    try:
        h, w = value
    except (TypeError, ValueError):
        raise DataError(f"image_size must be (H, W), got {value!r}") from None
    if not (isinstance(h, (int, np.integer)) and isinstance(w, (int, np.integer))) or isinstance(h, bool) or isinstance(w, bool):
        raise DataError(f"image_size must be two integers (H, W), got {value!r}")
    if h < 1 or w < 1:
        raise DataError(f"image_size must be positive, got {value!r}")
    return int(h), int(w)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------------------------
# COCO RLE (encode with pycocotools; decode after validating the counts string ourselves:
# pycocotools' C decoder does no bounds checks, so a corrupt string could overrun its buffer)


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Bool (H, W) mask -> ``{"size": [H, W], "counts": str}`` (COCO compressed RLE)."""
    from pycocotools import mask as mask_utils

    m = np.asfortranarray(np.asarray(mask, dtype=bool).astype(np.uint8))
    rle = mask_utils.encode(m)
    counts = rle["counts"]
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts)}


def _rle_runs(counts: str, n: int) -> np.ndarray:
    """Parse a COCO compressed-RLE counts string into run lengths, checking it covers n pixels."""
    runs: list[int] = []
    p, length = 0, len(counts)
    while p < length:
        x, k, more = 0, 0, True
        while more:
            if p >= length:
                raise DataError("mask RLE counts string ends in the middle of a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise DataError(f"mask RLE counts contain an invalid character {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise DataError("mask RLE counts decode to a negative run length")
        runs.append(x)
    total = sum(runs)
    if total != n:
        raise DataError(f"mask RLE counts cover {total} pixels, its size says {n}")
    return np.asarray(runs, dtype=np.int64)


def decode_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """``{"size": [H, W], "counts": str}`` -> bool (H, W) mask; raises DataError if malformed."""
    if not isinstance(rle, Mapping) or set(rle) != {"size", "counts"}:
        raise DataError(f'a mask must be {{"size": [H, W], "counts": "..."}}, got {_short(rle)}')
    size = _as_image_size(rle["size"])
    counts = rle["counts"]
    if not isinstance(counts, str):
        raise DataError("mask counts must be a COCO RLE string")
    h, w = size  # type: ignore[misc]
    runs = _rle_runs(counts, h * w)
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(w, h).T.copy()  # column-major, as COCO stores it


def _short(obj: Any, limit: int = 80) -> str:
    s = repr(obj)
    return s if len(s) <= limit else s[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# the data model


@dataclass(eq=False)
class PromptStep:
    """One step of a trajectory: the *full* prompt at that step and what it produced.

    ``points`` are cumulative (everything the model was given at this step), ``mask`` is the
    predicted bool (H, W) mask, ``iou`` its IoU against the ground truth, ``score`` the model's
    own quality estimate, ``round`` the 0-based interaction round, ``time_s`` seconds since the
    trajectory started. ``points`` also accepts ``[[x, y, label], ...]``; ``box`` any 4 numbers.
    """

    points: Points = field(default_factory=lambda: Points(np.zeros((0, 2), np.float32), np.zeros(0, np.int64)))
    box: Box | None = None
    mask: np.ndarray | None = None
    iou: float | None = None
    score: float | None = None
    round: int = 0
    time_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            if self.points is None:
                self.points = Points(np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
            elif not isinstance(self.points, Points):
                self.points = Points.from_list(self.points)
            if self.box is not None and not isinstance(self.box, Box):
                self.box = Box(self.box)
        except SegpromptError as exc:
            raise DataError(str(exc)) from exc
        if self.mask is not None:
            m = np.asarray(self.mask)
            if m.ndim != 2:
                raise DataError(f"a step mask must be 2-D (H, W), got shape {m.shape}")
            self.mask = m if m.dtype == bool else m != 0
        self.iou = _opt_float(self.iou, "iou", 0.0, 1.0)
        self.score = _opt_float(self.score, "score")
        self.time_s = _opt_float(self.time_s, "time_s")
        if not isinstance(self.round, (int, np.integer)) or isinstance(self.round, bool) or self.round < 0:
            raise DataError(f"round must be a non-negative integer, got {self.round!r}")
        self.round = int(self.round)
        if self.extra is None:
            self.extra = {}
        if not isinstance(self.extra, dict):
            raise DataError(f"extra must be a dict, got {type(self.extra).__name__}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PromptStep):
            return NotImplemented
        return (
            self.points == other.points
            and (self.box == other.box if self.box is not None and other.box is not None else self.box is other.box)
            and _masks_equal(self.mask, other.mask)
            and self.iou == other.iou
            and self.score == other.score
            and self.round == other.round
            and self.time_s == other.time_s
            and self.extra == other.extra
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": self.points.to_list(),
            "box": None if self.box is None else [float(v) for v in self.box.xyxy],
            "mask": None if self.mask is None else encode_mask(self.mask),
            "iou": self.iou,
            "score": self.score,
            "round": self.round,
            "time_s": self.time_s,
            "extra": self.extra,
        }


def _masks_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _check_step(step: PromptStep, image_size: ImageSize | None, k: int) -> None:
    if image_size is None:
        return
    h, w = image_size
    if step.mask is not None and step.mask.shape != (h, w):
        raise DataError(f"step {k}: mask is {step.mask.shape[0]}x{step.mask.shape[1]} but the image is {h}x{w} (H x W)")
    c = step.points.coords
    if len(c):
        bad = (c[:, 0] < 0) | (c[:, 0] > w) | (c[:, 1] < 0) | (c[:, 1] > h)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"step {k}: point {i} at (x={float(c[i, 0]):g}, y={float(c[i, 1]):g}) lies outside the image of "
                f"width {w} and height {h}; points are (x, y) = (column, row)"
            )
    if step.box is not None:
        x0, y0, x1, y1 = (float(v) for v in step.box.xyxy)
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise DataError(f"step {k}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the image of width {w} and height {h}")


@dataclass(eq=False)
class Trajectory:
    """The prompt steps given to one image by one source.

    ``source`` is ``"human"``, a strategy name, or ``"napari"``; ``annotator`` names the person
    (PointPrompt's folder name, e.g. ``"st1"``); ``image_size`` is (H, W) or None when unknown
    (it is then taken from the first step mask, if any); ``ranking`` lists step indices best first.
    """

    image_id: str
    source: str
    annotator: str | None = None
    dataset: str | None = None
    image_size: ImageSize | None = None
    steps: list[PromptStep] = field(default_factory=list)
    ranking: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "Trajectory":
        """Check (and normalise) every field; raises DataError. Run on construction and on save,
        so fields changed in place are checked before they reach a file."""
        if isinstance(self.image_id, (int, np.integer)) and not isinstance(self.image_id, bool):
            self.image_id = str(int(self.image_id))
        if not isinstance(self.image_id, str) or not self.image_id:
            raise DataError(f"image_id must be a non-empty string, got {self.image_id!r}")
        if not isinstance(self.source, str) or not self.source:
            raise DataError(f"source must be a non-empty string ('human', a strategy name or 'napari'), got {self.source!r}")
        for name in ("annotator", "dataset"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise DataError(f"{name} must be a string or None, got {v!r}")
        self.image_size = _as_image_size(self.image_size)
        if not isinstance(self.steps, list):
            self.steps = [] if self.steps is None else list(self.steps)
        for k, s in enumerate(self.steps):
            if not isinstance(s, PromptStep):
                raise DataError(f"step {k} must be a PromptStep, got {type(s).__name__}")
        if self.image_size is None:
            for s in self.steps:
                if s.mask is not None:
                    self.image_size = (int(s.mask.shape[0]), int(s.mask.shape[1]))
                    break
        for k, s in enumerate(self.steps):
            _check_step(s, self.image_size, k)
        if self.ranking is not None:
            self.ranking = self._check_ranking(self.ranking, len(self.steps))
        if self.meta is None:
            self.meta = {}
        if not isinstance(self.meta, dict):
            raise DataError(f"meta must be a dict, got {type(self.meta).__name__}")
        return self

    @staticmethod
    def _check_ranking(ranking: Iterable[Any], n: int) -> list[int]:
        out = []
        for r in ranking:
            if not isinstance(r, (int, np.integer)) or isinstance(r, (bool, np.bool_)):
                raise DataError(f"ranking must list step indices (integers), got {r!r}")
            if not 0 <= int(r) < n:
                raise DataError(f"ranking names step {int(r)} but the trajectory has {n} steps (0-based indices)")
            out.append(int(r))
        if len(set(out)) != len(out):
            raise DataError(f"ranking repeats a step: {out}")
        return out

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[PromptStep]:
        return iter(self.steps)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trajectory):
            return NotImplemented
        return (
            self.image_id == other.image_id
            and self.source == other.source
            and self.annotator == other.annotator
            and self.dataset == other.dataset
            and self.image_size == other.image_size
            and self.ranking == other.ranking
            and self.meta == other.meta
            and len(self.steps) == len(other.steps)
            and all(a == b for a, b in zip(self.steps, other.steps))
        )

    def best_index(self) -> int | None:
        """Index of the step with the highest IoU (the earliest on ties); without any IoU, the
        first entry of ``ranking``; None for an empty trajectory or when nothing tells."""
        best, best_iou = None, -1.0
        for k, s in enumerate(self.steps):
            if s.iou is not None and s.iou > best_iou:
                best, best_iou = k, s.iou
        if best is None and self.ranking:
            best = self.ranking[0]
        return best

    def best_step(self) -> PromptStep | None:
        """The step with the highest IoU (see :meth:`best_index`)."""
        k = self.best_index()
        return None if k is None else self.steps[k]

    def add_step(self, step: PromptStep | Points | Sequence[Sequence[float]] | None = None, /, **kwargs: Any) -> PromptStep:
        """Append a step: ``add_step(PromptStep(...))`` or ``add_step(points, mask=..., iou=...)``."""
        if isinstance(step, PromptStep):
            if kwargs:
                raise DataError(f"give either a PromptStep or points with keywords, not both ({sorted(kwargs)})")
        else:
            step = PromptStep(points=step, **kwargs)  # type: ignore[arg-type]
        size = self.image_size
        if size is None and step.mask is not None:
            size = (int(step.mask.shape[0]), int(step.mask.shape[1]))
            for k, s in enumerate(self.steps):
                _check_step(s, size, k)
        _check_step(step, size, len(self.steps))
        self.image_size = size
        self.steps.append(step)
        return step

    # -- dict form -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this trajectory (format tag and version included)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "image_id": self.image_id,
            "source": self.source,
            "annotator": self.annotator,
            "dataset": self.dataset,
            "image_size": None if self.image_size is None else list(self.image_size),
            "ranking": self.ranking,
            "meta": self.meta,
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, obj: Any) -> "Trajectory":
        """Parse and validate one trajectory object; raises DataError saying what is wrong."""
        return _trajectory_from_dict(obj)

    def to_rows(self) -> list[dict[str, Any]]:
        """Benchmark-style rows, one per step (see :func:`to_rows`)."""
        return to_rows([self])


# --------------------------------------------------------------------------------------------
# parsing


def _check_header(obj: Mapping[str, Any], what: str) -> None:
    fmt = obj.get("format")
    if fmt != FORMAT:
        raise DataError(f'{what} is not a segprompt trajectory: "format" is {fmt!r}, expected {FORMAT!r}')
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise DataError(f'{what} has no valid "version" (got {version!r}); this segprompt reads version {FORMAT_VERSION}')
    if version > FORMAT_VERSION:
        raise DataError(f"{what} has version {version}, newer than this segprompt reads ({FORMAT_VERSION}); upgrade segprompt")
    if version != FORMAT_VERSION:
        raise DataError(f"{what} has unknown version {version}; this segprompt reads version {FORMAT_VERSION}")


def _parse_points(value: Any, k: int) -> Points:
    if not isinstance(value, list):
        raise DataError(f"step {k}: points must be a list of [x, y, label], got {_short(value)}")
    for p in value:
        if not (isinstance(p, list) and len(p) == 3 and _is_number(p[0]) and _is_number(p[1])):
            raise DataError(f"step {k}: each point must be [x, y, label] with numbers x, y; got {_short(p)}")
        if p[2] not in (0, 1) or isinstance(p[2], bool) or not isinstance(p[2], int):
            raise DataError(f"step {k}: point labels must be 1 (positive) or 0 (negative), got {_short(p[2])}")
        if not (math.isfinite(p[0]) and math.isfinite(p[1])):
            raise DataError(f"step {k}: point coordinates must be finite, got {_short(p)}")
    if not value:
        return Points(np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
    arr = np.asarray(value, dtype=np.float64)
    # float32 is the in-memory convention; values written by segprompt are float32 exactly
    return Points(arr[:, :2].astype(np.float32), arr[:, 2].astype(np.int64))


def _parse_step(obj: Any, k: int) -> PromptStep:
    if not isinstance(obj, dict):
        raise DataError(f"step {k} must be an object, got {_short(obj)}")
    unknown = sorted(set(obj) - set(_STEP_KEYS))
    if unknown:
        raise DataError(f"step {k} has unknown keys {unknown}; version {FORMAT_VERSION} steps have {list(_STEP_KEYS)}")
    if "points" not in obj:
        raise DataError(f'step {k} has no "points"')
    points = _parse_points(obj["points"], k)
    box = obj.get("box")
    if box is not None:
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise DataError(f"step {k}: box must be [x0, y0, x1, y1], got {_short(box)}")
    mask = obj.get("mask")
    try:
        mask_arr = None if mask is None else decode_mask(mask)
        rnd = obj.get("round", 0)
        if not isinstance(rnd, int) or isinstance(rnd, bool):
            raise DataError(f"round must be a non-negative integer, got {rnd!r}")
        for name in ("iou", "score", "time_s"):
            v = obj.get(name)
            if v is not None and not _is_number(v):
                raise DataError(f"{name} must be a number or null, got {_short(v)}")
        return PromptStep(
            points=points,
            box=None if box is None else Box(box),
            mask=mask_arr,
            iou=obj.get("iou"),
            score=obj.get("score"),
            round=rnd,
            time_s=obj.get("time_s"),
            extra={} if obj.get("extra") is None else obj["extra"],
        )
    except SegpromptError as exc:
        msg = str(exc)
        raise DataError(msg if msg.startswith(f"step {k}") else f"step {k}: {msg}") from exc


def _trajectory_from_dict(obj: Any) -> Trajectory:
    if not isinstance(obj, dict):
        raise DataError(f"a trajectory must be a JSON object, got {_short(obj)}")
    _check_header(obj, "this row")
    unknown = sorted(set(obj) - set(_TRAJ_KEYS))
    if unknown:
        raise DataError(f"unknown keys {unknown}; version {FORMAT_VERSION} trajectories have {list(_TRAJ_KEYS)}")
    for key in ("image_id", "source", "steps"):
        if key not in obj:
            raise DataError(f'missing "{key}"')
    image_id = obj["image_id"]
    if not isinstance(image_id, (str, int)) or isinstance(image_id, bool):
        raise DataError(f"image_id must be a string, got {_short(image_id)}")
    steps_raw = obj["steps"]
    if not isinstance(steps_raw, list):
        raise DataError(f"steps must be a list, got {_short(steps_raw)}")
    steps = [_parse_step(s, k) for k, s in enumerate(steps_raw)]
    ranking = obj.get("ranking")
    if ranking is not None and not isinstance(ranking, list):
        raise DataError(f"ranking must be a list of step indices or null, got {_short(ranking)}")
    size = obj.get("image_size")
    if size is not None and not isinstance(size, list):
        raise DataError(f"image_size must be [H, W] or null, got {_short(size)}")
    meta = {} if obj.get("meta") is None else obj["meta"]
    return Trajectory(
        image_id=image_id,
        source=obj["source"],
        annotator=obj.get("annotator"),
        dataset=obj.get("dataset"),
        image_size=size,
        steps=steps,
        ranking=ranking,
        meta=meta,
    )


# --------------------------------------------------------------------------------------------
# files


def _dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} cannot be written as JSON ({exc}); meta and extra must hold JSON values") from exc


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    raise DataError(f"{path}: trajectory files end in .jsonl (one trajectory per line) or .json")


def save_trajectories(path: str | Path, trajectories: Trajectory | Iterable[Trajectory]) -> Path:
    """Write trajectories to ``path`` (``.jsonl`` or ``.json``) atomically; returns the path."""
    from segprompt.engine.runfolder import atomic_write_text

    path = Path(path)
    kind = _kind(path)
    if isinstance(trajectories, Trajectory):
        trajectories = [trajectories]
    lines = []
    for i, t in enumerate(trajectories):
        if not isinstance(t, Trajectory):
            raise DataError(f"item {i} is a {type(t).__name__}, not a Trajectory")
        try:
            t.validate()
        except DataError as exc:
            raise DataError(f"trajectory {i} (image {t.image_id!r}) is invalid: {exc}") from None
        lines.append(_dumps(t.to_dict(), f"trajectory {i} (image {t.image_id!r})"))
    if kind == "jsonl":
        text = "".join(line + "\n" for line in lines)
    else:
        head = json.dumps({"format": FORMAT, "version": FORMAT_VERSION}, separators=(",", ":"))[:-1]
        body = ",\n".join(lines)
        text = head + ',"trajectories":[\n' + body + ("\n" if lines else "") + "]}\n"
    return atomic_write_text(path, text)


def iter_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Yield the trajectories of a ``.jsonl`` or ``.json`` file, validating each."""
    path = Path(path)
    kind = _kind(path)
    if not path.is_file():
        raise DataError(f"{path}: no such trajectory file")
    if kind == "jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                yield _parse_located(obj, path, lineno)
        return
    text = path.read_text(encoding="utf-8-sig")
    try:
        top = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    starts = _element_starts(text)
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    if isinstance(top, dict) and "trajectories" in top:
        try:
            _check_header(top, "the file")
        except DataError as exc:
            raise DataError(f"{path}:1: {exc}") from None
        items = top["trajectories"]
        if not isinstance(items, list):
            raise DataError(f'{path}:1: "trajectories" must be a list')
        extra = sorted(set(top) - {"format", "version", "trajectories"})
        if extra:
            raise DataError(f"{path}:1: unknown keys {extra} in the file header")
    elif isinstance(top, list):
        items = top
    elif isinstance(top, dict):
        items = [top]
        starts = [0]
    else:
        raise DataError(f"{path}:1: expected a JSON object or list of trajectories, got {type(top).__name__}")
    for i, obj in enumerate(items):
        lineno = line_of(starts[i]) if i < len(starts) else 1
        yield _parse_located(obj, path, lineno, index=i)


def _parse_located(obj: Any, path: Path, lineno: int, index: int | None = None) -> Trajectory:
    where = f"{path}:{lineno}" + ("" if index is None else f" (trajectory {index})")
    try:
        return _trajectory_from_dict(obj)
    except SegpromptError as exc:
        raise DataError(f"{where}: {exc}") from None


def load_trajectories(path: str | Path) -> list[Trajectory]:
    """Read all trajectories of a ``.jsonl`` or ``.json`` file (see the module docstring)."""
    return list(iter_trajectories(path))


_WS = " \t\n\r"


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _array_starts(text: str, i: int, dec: json.JSONDecoder) -> list[int]:
    starts: list[int] = []
    i = _skip_ws(text, i + 1)
    if text[i] == "]":
        return starts
    while True:
        starts.append(i)
        _, i = dec.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] != ",":
            return starts
        i = _skip_ws(text, i + 1)


def _element_starts(text: str) -> list[int]:
    """Character offsets where each trajectory object starts in an already-valid JSON text."""
    dec = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if text[i] == "[":
        return _array_starts(text, i, dec)
    if text[i] == "{":
        j = _skip_ws(text, i + 1)
        while text[j] != "}":
            key, j = dec.raw_decode(text, j)
            j = _skip_ws(text, _skip_ws(text, j) + 1)  # past ':'
            if key == "trajectories" and text[j] == "[":
                return _array_starts(text, j, dec)
            _, j = dec.raw_decode(text, j)
            j = _skip_ws(text, j)
            if text[j] == ",":
                j = _skip_ws(text, j + 1)
        return [i]
    return []


# --------------------------------------------------------------------------------------------
# rows: one table for human and automated results


def to_rows(trajectories: Trajectory | Iterable[Trajectory]) -> list[dict[str, Any]]:
    """Benchmark-style rows (as in ``pointprompt.bench`` results.jsonl), one per step.

    Each row: ``dataset, image, model, source, strategy, annotator, step, round, n_points,
    n_positive, n_negative, points [[x, y, label], ...], iou, score, time_s, best``.
    ``step`` is 1-based like the benchmark's (step k = ``trajectory.steps[k - 1]``);
    ``strategy`` equals ``source`` (``"human"`` for PointPrompt annotators, told apart by
    ``annotator``); ``model`` comes from ``meta["model"]``; ``best`` marks :meth:`Trajectory.best_index`.
    """
    if isinstance(trajectories, Trajectory):
        trajectories = [trajectories]
    rows = []
    for t in trajectories:
        best = t.best_index()
        for k, s in enumerate(t.steps):
            rows.append(
                {
                    "dataset": t.dataset,
                    "image": t.image_id,
                    "model": t.meta.get("model"),
                    "source": t.source,
                    "strategy": t.source,
                    "annotator": t.annotator,
                    "step": k + 1,
                    "round": s.round,
                    "n_points": len(s.points),
                    "n_positive": s.points.n_positive,
                    "n_negative": s.points.n_negative,
                    "points": s.points.to_list(),
                    "iou": s.iou,
                    "score": s.score,
                    "time_s": s.time_s,
                    "best": k == best,
                }
            )
    return rows


def trajectories_from_rows(
    rows: Iterable[Mapping[str, Any]], image_sizes: Mapping[str, ImageSize] | None = None
) -> list[Trajectory]:
    """Group benchmark rows (``pointprompt.bench`` results or :func:`to_rows` output) into
    trajectories, one per (dataset, image, model, source/strategy, annotator), steps in order.

    Benchmark rows carry points rounded to 0.01 px and no masks, so this is not lossless; use
    :func:`save_trajectories` for that. ``image_sizes`` maps image ids to (H, W).
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for i, r in enumerate(rows):
        try:
            key = (r.get("dataset"), str(r["image"]), r.get("model"), r.get("source") or r["strategy"], r.get("annotator"))
        except KeyError as exc:
            raise DataError(f"row {i} has no {exc.args[0]!r}; rows need image, strategy (or source), step and points") from None
        groups.setdefault(key, []).append(r)
    out = []
    for (dataset, image, model, source, annotator), rs in groups.items():
        rs = sorted(rs, key=lambda r: int(r["step"]))
        steps = [
            PromptStep(
                points=Points.from_list(r["points"]),
                iou=r.get("iou"),
                score=None if r.get("score") is None or not math.isfinite(float(r["score"])) else r["score"],
                round=int(r.get("round") or 0),
                time_s=r.get("time_s"),
            )
            for r in rs
        ]
        meta = {} if model is None else {"model": model}
        size = None if image_sizes is None else image_sizes.get(image)
        out.append(Trajectory(image_id=image, source=source, annotator=annotator, dataset=dataset, image_size=size, steps=steps, meta=meta))
    return out


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PromptStep",
    "Trajectory",
    "encode_mask",
    "decode_mask",
    "save_trajectories",
    "load_trajectories",
    "iter_trajectories",
    "to_rows",
    "trajectories_from_rows",
]
