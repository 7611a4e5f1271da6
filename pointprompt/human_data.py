"""Read (and write) the PointPrompt human prompt data as :class:`~pointprompt.trajectory.Trajectory` objects.

PointPrompt (Quesada et al., CVPRW 2024; data at zenodo.org/records/11187949, "Prompting
data.zip") recorded, for 16 image sets x 400 images, how students prompted SAM vit_h with green
(inclusion) and red (exclusion) clicks. The layout, per dataset and per annotator folder::

    <root>/                              "Prompting Results"
      <dataset>/                         e.g. "Baseball bat", "Polyp", "Salt dome"
        <annotator>/                     "st1", "st2", ... (one per student)
          points/<i>_green.npy           inclusion points, one (n_g, 2) array per timestep
          points/<i>_red.npy             exclusion points, one (n_r, 2) array per timestep
          scores/<i>score.npy            IoU against the ground truth per timestep (no "_"!)
          sorts/<i>_sort.npy             timestep indices sorted by score, best first
          eachround/<i>_.npy             the round (0 or 1) of each timestep
          masks/<i>_<t>_mask.png         SAM's mask at timestep t

``<i>`` is the image index (0-399) into the dataset's ``samples.npy`` / ``labels.npy``.

What was verified, and from which files (read through the code search tools)
------------------------------------------------------------------------------
* Folder and file names: ``olivesgatech/PointPrompt`` README.md (dataset section) and
  ``feature_extraction/gather_statistics.py``, which loads ``points/<i>_green.npy``,
  ``points/<i>_red.npy``, ``scores/<i>score.npy``, ``sorts/<i>_sort.npy`` and
  ``eachround/<i>_.npy`` exactly so, indexes the point files by timestep (``g[timestamp]``),
  and treats ``eachround`` as one round label per timestep (``rounds == 0`` is round one,
  ``len(np.unique(rounds))`` the number of rounds, ``rounds[sort[0]]`` the best step's round).
* How the files were produced: the collection tool ``olivesgatech/SAM-ECE-4803-8803``
  (``predictor.py`` and ``workbook.py``). Per click it records, only once both a green and a red
  point exist, the full current green and red lists (``gp.append(np.multiply(green, 1))``),
  the IoU of SAM's ``masks[0]`` (``multimask_output=True``, vit_h) against the ground truth,
  and the mask times 5; ``save_metrics`` writes ``np.array(gp, dtype=object)`` (which numpy
  turns into a 3-D (t, n, 2) array when every timestep has the same number of points, and a
  1-D object array of (n, 2) arrays otherwise: both are read here), ``np.argsort(-score)`` as
  the sort, the score list, and ``round``. Points are integers (``int(event.xdata)``), exactly
  what SAM was given, so they are kept as they are (no half-pixel shift). Rounds: after a run
  of clicks without a better IoU (the tool's README says 5; its code counts to 10) the points
  are cleared and round two starts from scratch; the same again closes the window. The
  annotator's ``<name>.xlsx``, ``time.txt`` (total time only) and ``servey.npy`` are not read.
* **Points are (x, y) = (column, row)**, the segprompt convention, so they are used as stored.
  Evidence: the tool takes ``x, y = int(event.xdata), int(event.ydata)`` from a matplotlib
  click on ``imshow`` (xdata = column, ydata = row), appends ``(x, y)``, draws them with
  ``ax.plot(x, y)`` / ``scatter(coords[:, 0], coords[:, 1])`` over the image, and passes the
  same arrays unchanged as ``SamPredictor.predict(point_coords=...)``, which takes (X, Y);
  the masks and IoUs in the data were computed from exactly those coordinates. The study's
  feature code agrees: it rasterises the green points' hull with ``cv2.fillPoly`` and measures
  point-to-boundary distance with ``cv2.pointPolygonTest`` on ``cv2.findContours`` output (both
  (x, y)); and the finetuning code (``finetuning SAM/train.py``) feeds the human green/red
  arrays to ``SamProcessor(input_points=...)``, also (x, y). The (x, y) / (row, col) mix-up
  lives in the *automated* strategies (``point_sampling/point_selection.py``:
  ``get_entropy_points`` and ``get_distance_points`` iterate ``np.argwhere`` rows as ``x, y``),
  not in the human arrays. ``get_mask_diameter`` uses (row, col) but only for distances.

What is assumed (not visible in any code we could read)
-------------------------------------------------------
* The published masks are per-timestep PNGs ``masks/<i>_<t>_mask.png`` with 0-based ``t`` (the
  README's wording); their pixel values are not documented. Any non-zero grey value is the
  object (the tool stored 0/5); a colour PNG with two colours counts the brighter as object.
  If ``t`` runs 1..T instead of 0..T-1 it is shifted. The tool's own raw form, one stacked
  ``masks/<i>_mask.npy`` (t, H, W) array of 0/5, is read as well.
* The published ``eachround`` holds one 0-based label per timestep (what the feature code
  uses). The collection tool itself saved ``[n_round_one, n_round_two]`` (``[0, 0]`` without a
  second round); that form is recognised and converted when it cannot be a label list.
* The image size is not stored with the prompts: it comes from the masks (the PNG header is
  enough), or from ``image_sizes=``; otherwise ``Trajectory.image_size`` is None.
* Object arrays need ``allow_pickle=True``: only read PointPrompt files you trust.

Points of a step are green then red (the order the tool gave them to SAM); labels 1 then 0.
Human trajectories carry ``meta = {"layout": "pointprompt-human", "index": i, "model":
"sam_vit_h", "multimask": "first"}``, ``ranking`` from ``sorts`` and rounds from ``eachround``.

The study's protocol on these data (best step per annotator, human vs automated, replay) is in
:mod:`pointprompt.human_protocol`; its names stay importable from here.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from segprompt.errors import DataError, SegpromptError
from segprompt.fileio import atomic_write_bytes
from segprompt.prompts import Points

from pointprompt.human_protocol import natural_key
from pointprompt.human_protocol import (  # re-exported: the protocol lived here before
    ANNOTATOR_COLUMNS,
    BEST_BY,
    BEST_STEP_COLUMNS,
    COMPARISON_COLUMNS,
    HUMAN,
    HUMAN_PROTOCOL_FILES,
    REPLAY_COLUMNS,
    REPLAY_STEP_COLUMNS,
    best_step_index,
    best_step_table,
    human_protocol,
    human_protocol_section,
    matched_step,
    write_human_protocol,
)
from pointprompt.trajectory import PromptStep, Trajectory

log = logging.getLogger(__name__)

SUBFOLDERS = ("points", "scores", "sorts", "eachround", "masks")
HUMAN_META = {"layout": "pointprompt-human", "model": "sam_vit_h", "multimask": "first"}

_GREEN_RE = re.compile(r"^(\d+)_(green|red)\.npy$")
_MASK_PNG_RE = re.compile(r"^(\d+)_(\d+)_mask\.png$")

ImageSizes = Mapping[Any, Sequence[int]] | Callable[[str, str], Sequence[int] | None]


# --------------------------------------------------------------------------------------------
# low-level readers


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=True)
    except Exception as exc:  # noqa: BLE001 - np.load raises assorted errors (ValueError, EOFError, UnpicklingError)
        raise DataError(f"{path}: cannot be read as a .npy array ({exc})") from exc


def _per_timestep_points(arr: np.ndarray, path: Path) -> list[np.ndarray]:
    """The tool's ``np.array(list_of_(n, 2)_arrays, dtype=object)`` -> list of float64 (n, 2)."""
    if arr.ndim == 1 and (arr.dtype == object or arr.size == 0):
        items = list(arr)
    elif arr.ndim == 3 and arr.shape[2] == 2:
        items = list(arr)
    else:
        raise DataError(
            f"{path}: expected one (n, 2) point array per timestep (an object array or a (t, n, 2) array), "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    out = []
    for t, item in enumerate(items):
        try:
            pts = np.asarray(item, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: timestep {t} does not hold numbers ({exc})") from None
        if pts.size == 0:
            pts = np.zeros((0, 2))
        if pts.ndim == 1 and pts.shape == (2,):
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise DataError(f"{path}: timestep {t} has shape {pts.shape}, expected (n, 2) (x, y) points")
        if not np.isfinite(pts).all():
            raise DataError(f"{path}: timestep {t} has NaN or infinite coordinates")
        out.append(pts)
    return out


def _png_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA")
            arr = np.asarray(im)
    except Exception as exc:  # noqa: BLE001 - PIL raises assorted errors on bad files
        raise DataError(f"{path}: cannot be read as a PNG mask ({exc})") from exc
    if arr.ndim == 3:
        if arr.shape[2] in (2, 4):
            arr = arr[..., :-1]  # drop alpha
        if arr.shape[2] == 1 or (arr == arr[..., :1]).all():
            arr = arr[..., 0]
        else:  # a colour-mapped image: the brighter of its colours is the object
            lum = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            lo, hi = float(lum.min()), float(lum.max())
            return lum > (lo + hi) / 2 if hi > lo else np.zeros(lum.shape, bool)
    if arr.ndim != 2:
        raise DataError(f"{path}: a mask must be a 2-D image, got shape {arr.shape}")
    return arr != 0


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot be read as a PNG mask ({exc})") from exc
    return int(h), int(w)


def _rounds(arr: np.ndarray, t: int, path: Path) -> list[int]:
    """Per-timestep round labels from either the published form (one label per timestep) or the
    collection tool's raw ``[n_round_one, n_round_two]``."""
    try:
        v = np.asarray(arr).reshape(-1).astype(np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: round data must be integers, got dtype {np.asarray(arr).dtype}") from None
    if not (np.isfinite(v).all() and (v == np.round(v)).all() and (v >= 0).all()):
        raise DataError(f"{path}: round data must be non-negative integers, got {v.tolist()[:10]}")
    v = v.astype(np.int64)
    if len(v) == t and (t == 0 or (v[0] == 0 and (np.diff(v) >= 0).all() and v.max() <= 1)):
        return v.tolist()
    if len(v) == 2:  # the tool's raw [steps in round one (0 when there was no second round), steps in round two]
        n1, n2 = int(v[0]), int(v[1])
        if n1 <= t and n1 + n2 <= t:
            return [0] * t if n1 == 0 else [0] * n1 + [1] * (t - n1)
    raise DataError(
        f"{path}: expected one round label (0, then 1) per timestep ({t} timesteps) or the raw "
        f"[steps in round one, steps in round two]; got {v.tolist()[:10]}"
    )


def _lookup_size(image_sizes: ImageSizes | None, dataset: str, image_id: str) -> tuple[int, int] | None:
    if image_sizes is None:
        return None
    if callable(image_sizes):
        size = image_sizes(dataset, image_id)
    else:
        size = None
        for key in ((dataset, image_id), (dataset, int(image_id)), image_id, int(image_id)):
            if key in image_sizes:
                size = image_sizes[key]
                break
    return None if size is None else (int(size[0]), int(size[1]))


# --------------------------------------------------------------------------------------------
# reading


def _read_image(
    folder: Path,
    index: int,
    *,
    dataset: str,
    annotator: str,
    mask_files: dict[int, Path],
    raw_masks: Path | None,
    image_sizes: ImageSizes | None,
    load_masks: bool,
) -> Trajectory:
    """One image's trajectory from the study's per-image files (points, and the optional scores,
    sorts, rounds and masks); DataError naming the file at the first inconsistency."""
    green, red, green_path = _read_clicks(folder, index)
    t = len(green)
    ious = _read_scores(folder / "scores" / f"{index}score.npy", t, green_path)
    ranking = _read_ranking(folder / "sorts" / f"{index}_sort.npy", t)
    round_path = folder / "eachround" / f"{index}_.npy"
    rounds = _rounds(_load_npy(round_path), t, round_path) if round_path.is_file() else [0] * t
    if mask_files:
        masks, size, size_source = _read_mask_files(mask_files, t, green_path, index, load_masks)
    elif raw_masks is not None:
        masks, size, size_source = _read_mask_stack(raw_masks, t, load_masks)
    else:
        masks, size, size_source = [None] * t, None, None

    image_id = str(index)
    given = _lookup_size(image_sizes, dataset, image_id)
    if given is not None:
        if size is not None and given != size:
            raise DataError(f"{size_source}: mask is {size[0]}x{size[1]} but image_sizes gives {given[0]}x{given[1]} for image {image_id}")
        size = given

    steps = []
    for k in range(t):
        coords = np.concatenate([green[k], red[k]]).astype(np.float32)
        labels = np.concatenate([np.ones(len(green[k]), np.int64), np.zeros(len(red[k]), np.int64)])
        try:
            steps.append(PromptStep(points=Points(coords, labels), mask=masks[k], iou=ious[k], round=rounds[k]))
        except SegpromptError as exc:
            raise DataError(f"{green_path}: timestep {k}: {exc}") from None
    try:
        return Trajectory(
            image_id=image_id,
            source="human",
            annotator=annotator,
            dataset=dataset,
            image_size=size,
            steps=steps,
            ranking=ranking,
            meta={**HUMAN_META, "index": index},
        )
    except DataError as exc:
        raise DataError(f"{green_path}: {exc}") from None


def _read_clicks(folder: Path, index: int) -> tuple[list[np.ndarray], list[np.ndarray], Path]:
    """(green per timestep, red per timestep, the green file): each (n, 2) float (x, y)."""
    green_path = folder / "points" / f"{index}_green.npy"
    red_path = folder / "points" / f"{index}_red.npy"
    for p in (green_path, red_path):
        if not p.is_file():
            raise DataError(f"{p}: missing (each image needs both points/<i>_green.npy and points/<i>_red.npy)")
    green = _per_timestep_points(_load_npy(green_path), green_path)
    red = _per_timestep_points(_load_npy(red_path), red_path)
    if len(red) != len(green):
        raise DataError(f"{green_path} has {len(green)} timesteps but {red_path} has {len(red)}")
    return green, red, green_path


def _read_scores(path: Path, t: int, green_path: Path) -> list[float | None]:
    """The study's IoU per timestep (None where NaN or where the file is absent)."""
    if not path.is_file():
        return [None] * t
    try:
        sc = np.asarray(_load_npy(path), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: scores must be numbers ({exc})") from None
    if len(sc) != t:
        raise DataError(f"{path} has {len(sc)} scores but {green_path} has {t} timesteps")
    bad = ~np.isnan(sc) & ((sc < 0) | (sc > 1) | ~np.isfinite(sc))
    if bad.any():
        raise DataError(f"{path}: scores are IoUs in [0, 1]; timestep {int(np.flatnonzero(bad)[0])} has {float(sc[bad][0])!r}")
    return [None if np.isnan(v) else float(v) for v in sc]


def _read_ranking(path: Path, t: int) -> list[int] | None:
    """The study's ranking of the timesteps (distinct indices in 0..t-1), None where absent."""
    if not path.is_file():
        return None
    srt = np.asarray(_load_npy(path)).reshape(-1)
    if srt.size and (not np.issubdtype(srt.dtype, np.integer) or srt.min() < 0 or srt.max() >= t or len(set(srt.tolist())) != len(srt)):
        raise DataError(f"{path}: expected distinct timestep indices in 0..{t - 1}, got {srt.tolist()[:10]}")
    return [int(v) for v in srt]


#: (mask per timestep or None, (H, W) or None, the file the size was read from or None)
MaskRead = tuple[list[np.ndarray | None], tuple[int, int] | None, Path | None]


def _read_mask_files(mask_files: dict[int, Path], t: int, green_path: Path, index: int, load_masks: bool) -> MaskRead:
    """(mask per timestep or None, (H, W), the file the size came from) from per-timestep PNGs,
    numbered from 0 or from 1 (the study's exports do both)."""
    masks: list[np.ndarray | None] = [None] * t
    steps_idx = sorted(mask_files)
    shift = 1 if (0 not in mask_files and steps_idx[-1] == t and steps_idx[0] >= 1) else 0
    for b in steps_idx:
        if not 0 <= b - shift < t:
            raise DataError(f"{mask_files[b]}: timestep {b} but {green_path} has {t} timesteps (0..{t - 1})")
    if not load_masks:
        return masks, _png_size(mask_files[steps_idx[0]]), mask_files[steps_idx[0]]
    size: tuple[int, int] | None = None
    size_source: Path | None = None
    for b in steps_idx:  # in timestep order, so a size mismatch names the later file
        p = mask_files[b]
        m = _png_mask(p)
        if size is not None and m.shape != size:
            raise DataError(f"{p}: mask is {m.shape[0]}x{m.shape[1]}, other masks of image {index} are {size[0]}x{size[1]}")
        size, size_source = (int(m.shape[0]), int(m.shape[1])), p
        masks[b - shift] = m
    return masks, size, size_source


def _read_mask_stack(raw_masks: Path, t: int, load_masks: bool) -> MaskRead:
    """The same from one ``.npy`` stack of (H, W) masks, one per timestep."""
    stack = _load_npy(raw_masks)
    if stack.dtype == object:
        try:
            stack = np.stack([np.asarray(m) for m in stack])
        except ValueError as exc:
            raise DataError(f"{raw_masks}: masks differ in shape ({exc})") from None
    if stack.ndim != 3 or len(stack) != t:
        raise DataError(f"{raw_masks}: expected {t} stacked (H, W) masks (one per timestep), got shape {stack.shape}")
    masks: list[np.ndarray | None] = [np.asarray(m) != 0 for m in stack] if load_masks else [None] * t
    return masks, (int(stack.shape[1]), int(stack.shape[2])), raw_masks


def read_annotator_folder(
    folder: str | Path,
    *,
    dataset: str | None = None,
    annotator: str | None = None,
    image_sizes: ImageSizes | None = None,
    load_masks: bool = True,
) -> list[Trajectory]:
    """Read one annotator folder (``<dataset>/<annotator>/`` with ``points/`` inside)."""
    folder = Path(folder)
    points_dir = folder / "points"
    if not points_dir.is_dir():
        raise DataError(f"{points_dir}: missing; a PointPrompt annotator folder holds points/<i>_green.npy and points/<i>_red.npy")
    dataset = dataset if dataset is not None else folder.parent.name
    annotator = annotator if annotator is not None else folder.name
    indices: set[int] = set()
    for name in os.listdir(points_dir):
        m = _GREEN_RE.match(name)
        if m:
            indices.add(int(m.group(1)))
    masks_by_image: dict[int, dict[int, Path]] = {}
    raw_by_image: dict[int, Path] = {}
    masks_dir = folder / "masks"
    if masks_dir.is_dir():
        for name in os.listdir(masks_dir):
            m = _MASK_PNG_RE.match(name)
            if m:
                masks_by_image.setdefault(int(m.group(1)), {})[int(m.group(2))] = masks_dir / name
                continue
            m = re.match(r"^(\d+)_mask\.npy$", name)
            if m:
                raw_by_image[int(m.group(1))] = masks_dir / name
    out = []
    for index in sorted(indices):
        out.append(
            _read_image(
                folder,
                index,
                dataset=dataset,
                annotator=annotator,
                mask_files=masks_by_image.get(index, {}),
                raw_masks=raw_by_image.get(index),
                image_sizes=image_sizes,
                load_masks=load_masks,
            )
        )
    return out


def _is_annotator_dir(p: Path) -> bool:
    return (p / "points").is_dir()


def _subdirs(p: Path) -> list[Path]:
    return sorted((c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")), key=lambda c: natural_key(c.name))


def _as_names(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def read_pointprompt_human(
    root: str | Path,
    dataset: str | Iterable[str] | None = None,
    annotators: str | Iterable[str] | None = None,
    *,
    image_sizes: ImageSizes | None = None,
    load_masks: bool = True,
) -> list[Trajectory]:
    """Read PointPrompt human prompting data into trajectories (``source="human"``).

    ``root`` is the "Prompting Results" folder (``<root>/<dataset>/<annotator>/points/...``); a
    single dataset folder or a single annotator folder works too. ``dataset`` and
    ``annotators`` select by folder name (default: all). ``image_sizes`` maps an image id
    (``"17"``, ``17`` or ``(dataset, id)``) to (H, W), or is a callable ``(dataset, id) -> (H, W)``;
    it is needed only where an image has no masks. ``load_masks=False`` skips decoding the
    masks (the image size is still read from the first PNG's header).

    Returns trajectories ordered by dataset, annotator (st1, st2, ..., st10) and image index.
    Raises DataError naming the file for missing or malformed pieces; ``scores``, ``sorts``,
    ``eachround`` and ``masks`` are optional (IoUs, ranking and masks are then None, rounds 0).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected the PointPrompt 'Prompting Results' folder)")
    datasets = _as_names(dataset)
    wanted = _as_names(annotators)

    groups: list[tuple[str, list[Path]]]  # (dataset name, its annotator folders)
    if _is_annotator_dir(root):  # one annotator folder
        groups = [(datasets[0] if datasets else root.parent.name, [root])]
    else:
        children = _subdirs(root)
        annotator_dirs = [c for c in children if _is_annotator_dir(c)]
        if annotator_dirs and not (datasets and all((root / d).is_dir() for d in datasets)):  # one dataset folder
            if datasets and len(datasets) > 1:
                raise DataError(f"{root} is one dataset folder ({root.name!r}); give its parent to read datasets {datasets}")
            groups = [(datasets[0] if datasets else root.name, annotator_dirs)]
        else:  # the "Prompting Results" folder
            available = [c.name for c in children if any(_is_annotator_dir(a) for a in _subdirs(c))]
            if datasets is None:
                if not available:
                    raise DataError(
                        f"{root}: no PointPrompt human data found; expected <root>/<dataset>/<annotator>/points/<i>_green.npy"
                    )
                datasets = available
            groups = []
            for d in datasets:
                dpath = root / d
                if not dpath.is_dir():
                    raise DataError(f"{dpath}: no such dataset folder; available: {available}")
                groups.append((d, [c for c in _subdirs(dpath) if _is_annotator_dir(c)]))

    out: list[Trajectory] = []
    for ds_name, folders in groups:
        if wanted is not None:
            names = {f.name for f in folders}
            missing = [a for a in wanted if a not in names]
            if missing:
                where = folders[0].parent if folders else root
                raise DataError(f"{where}: no annotator folder {missing}; available: {sorted(names, key=natural_key)}")
            folders = [f for f in folders if f.name in wanted]
        for f in folders:
            out.extend(read_annotator_folder(f, dataset=ds_name, annotator=f.name, image_sizes=image_sizes, load_masks=load_masks))
    return out


# --------------------------------------------------------------------------------------------
# writing


def _atomic_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _png_bytes(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _object_array(parts: list[np.ndarray]) -> np.ndarray:
    arr = np.empty(len(parts), dtype=object)
    for k, p in enumerate(parts):
        arr[k] = p
    return arr


def _stored_coords(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64).reshape(-1, 2)
    return c.astype(np.int64) if np.array_equal(c, np.round(c)) else c


def write_pointprompt_human(root: str | Path, trajectories: Iterable[Trajectory], *, dataset: str | None = None) -> list[Path]:
    """Write trajectories in the PointPrompt human-data layout under ``root`` (the "Prompting
    Results" level): ``<root>/<dataset>/<annotator>/{points,scores,sorts,eachround,masks}/``.

    Each trajectory needs an ``annotator`` (the folder name, e.g. ``"st1"``), a dataset (its own
    or ``dataset=``) and an integer image id (the layout indexes images 0..399). Written per
    image: green / red points per step (integers when the coordinates are whole pixels), IoUs
    (NaN where unknown; only when some step has one), the ranking (or the steps sorted by IoU,
    best first, when every step has one), per-step round labels, and 0/255 PNG masks for the
    steps that have one. Boxes, model scores, times and ``extra`` have no place in this layout
    and are dropped (logged). Files are written atomically; returns the annotator folders.
    """
    root = Path(root)
    seen: set[tuple[str, str, int]] = set()
    folders: list[Path] = []
    for n, t in enumerate(trajectories):
        if not isinstance(t, Trajectory):
            raise DataError(f"item {n} is a {type(t).__name__}, not a Trajectory")
        ds = dataset or t.dataset
        if not ds:
            raise DataError(f"trajectory {n} (image {t.image_id!r}) has no dataset; pass dataset=...")
        if not t.annotator:
            raise DataError(f"trajectory {n} (image {t.image_id!r}) has no annotator; the layout has one folder per annotator (st1, st2, ...)")
        if not re.fullmatch(r"\d+", t.image_id):
            raise DataError(f"trajectory {n}: image id {t.image_id!r} is not an image index; the PointPrompt layout names images 0, 1, 2, ...")
        index = int(t.image_id)
        key = (ds, t.annotator, index)
        if key in seen:
            raise DataError(f"two trajectories for dataset {ds!r}, annotator {t.annotator!r}, image {index}")
        seen.add(key)
        t.validate()
        folder = root / ds / t.annotator
        for sub in SUBFOLDERS:
            (folder / sub).mkdir(parents=True, exist_ok=True)
        if folder not in folders:
            folders.append(folder)
        if any(s.box is not None or s.score is not None or s.time_s is not None or s.extra for s in t.steps):
            log.info("image %s: boxes, scores, times and extra have no place in the PointPrompt layout; not written", index)

        greens = [_stored_coords(s.points.coords[s.points.labels == 1]) for s in t.steps]
        reds = [_stored_coords(s.points.coords[s.points.labels == 0]) for s in t.steps]
        _atomic_bytes(folder / "points" / f"{index}_green.npy", _npy_bytes(_object_array(greens)))
        _atomic_bytes(folder / "points" / f"{index}_red.npy", _npy_bytes(_object_array(reds)))
        ious = [s.iou for s in t.steps]
        score_path = folder / "scores" / f"{index}score.npy"
        if any(v is not None for v in ious):
            _atomic_bytes(score_path, _npy_bytes(np.array([np.nan if v is None else v for v in ious], dtype=np.float64)))
        elif score_path.exists():
            score_path.unlink()
        ranking = t.ranking
        if ranking is None and ious and all(v is not None for v in ious):
            ranking = np.argsort(-np.asarray(ious, dtype=np.float64), kind="stable").tolist()
        sort_path = folder / "sorts" / f"{index}_sort.npy"
        if ranking is not None:
            _atomic_bytes(sort_path, _npy_bytes(np.asarray(ranking, dtype=np.int64)))
        elif sort_path.exists():
            sort_path.unlink()
        _atomic_bytes(folder / "eachround" / f"{index}_.npy", _npy_bytes(np.asarray([s.round for s in t.steps], dtype=np.int64)))
        keep = set()
        for k, s in enumerate(t.steps):
            if s.mask is not None:
                name = f"{index}_{k}_mask.png"
                _atomic_bytes(folder / "masks" / name, _png_bytes(s.mask))
                keep.add(name)
        for name in os.listdir(folder / "masks"):  # masks left from an earlier, longer write
            m = _MASK_PNG_RE.match(name)
            if (m and int(m.group(1)) == index and name not in keep) or name == f"{index}_mask.npy":
                (folder / "masks" / name).unlink()
    return folders


__all__ = [
    "read_pointprompt_human",
    "read_annotator_folder",
    "write_pointprompt_human",
    "HUMAN_META",
    "best_step_index",
    "best_step_table",
    "matched_step",
    "human_protocol",
    "human_protocol_section",
    "write_human_protocol",
    "HUMAN_PROTOCOL_FILES",
    "HUMAN",
    "BEST_BY",
    "BEST_STEP_COLUMNS",
    "ANNOTATOR_COLUMNS",
    "COMPARISON_COLUMNS",
    "REPLAY_COLUMNS",
    "REPLAY_STEP_COLUMNS",
]
