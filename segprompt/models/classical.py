"""Classical, weight-free promptable segmentation: GrabCut and the random walker.

A real baseline that needs no checkpoint and runs anywhere on CPU:

.. code-block:: python

    seg = create_segmenter("grabcut")                 # or "random-walker", or
    seg = create_segmenter("classical", method="random_walker", beta=2000)
    pred = seg.predict(image, PromptSet(box=Box([40, 30, 160, 120])))
    pred.masks          # (N, 1, H, W) bool
    pred.scores         # (N, 1): NaN for GrabCut, mean P(foreground) in the mask for the walker
    pred.probabilities  # (N, 1, H, W) float32 soft foreground maps

How prompts become seeds. Each prompt set is turned into a GrabCut-style *trimap* in a
downscaled working frame (longest side <= ``max_side``), with the labels ``GC_BGD`` (sure
background), ``GC_FGD`` (sure foreground), ``GC_PR_BGD`` / ``GC_PR_FGD`` (probable):

* box: outside is sure background, inside probable foreground (GrabCut's rectangle semantics);
* binary mask prompt: probable foreground inside, probable background outside (inside the box
  when both are given);
* clicks only (no box, no mask): probable background everywhere except probable-foreground
  discs of ``8 x`` the seed radius (12 % of the diagonal) around the positive points and strokes;
* positive points and positive scribbles: sure-foreground discs / strokes; negative ones:
  sure background. Points are applied in the given order (a later click wins), then scribbles.

The seed radius is ``seed_radius`` pixels of the original image, or 1.5 % of the image diagonal.
The working image is blurred with a Gaussian of ``smooth`` pixels (speckle and texture hurt
both methods; default 0.5 for GrabCut, 1.0 for the random walker).

GrabCut (``cv2.grabCut`` with ``GC_INIT_WITH_MASK``, RNG seeded with 0 so results are
deterministic) refines the trimap in at most ``iterations`` (5) iterations. Its smoothness
term can outweigh the colour models on speckled images (ultrasound) and wipe out all the
probable foreground (it *collapses*: less than 2 % of the probable foreground is left); when
that happens it is rerun on a 2x and 4x smoother image, for clicks only with twice wider
probable-foreground discs, and for a box or mask prompt without clicks, last, with a
sure-foreground seed in the box centre / the eroded mask. Most of GrabCut's time goes into the
graph cut of the first iteration (about 0.1 s on 320 x 256 pixels), so the cuts are kept small
and few:

* *region*: the cut is confined to the bounding box of the sure and probable foreground grown
  by ``crop_margin`` (10 %) of the working frame's diagonal on each side. Outside it, probable
  background is held as background, while the colour models (two 5-component GMMs) and
  GrabCut's contrast constant are still fitted on the whole frame: as long as the whole-frame
  cut would keep those pixels background, the result is exactly the whole-frame one. If the
  foreground reaches the region's edge after an iteration (it might go on outside), the attempt
  is redone on the whole frame. A box prompt holds nothing back (outside the box is sure
  background already). The region also keeps clicks-only GrabCut from taking look-alike areas
  far from the clicks: IoU from one centre click on 20 BUSI images 0.37 -> 0.68, on 20
  Kvasir-SEG images 0.36 -> 0.44, on 20 PH2 images 0.78 either way
  (``benchmarks/classical_speed.py``);
* *convergence*: one iteration per ``cv2.grabCut`` call (``GC_EVAL`` with the returned models
  and labels goes on exactly as the next internal iteration would), stopping once at most
  ``converge_tol`` (0.2 %) of the working pixels changed side;
* *early collapse*: an attempt counts as collapsed as soon as an iteration leaves less than 2 %
  of the probable foreground, and then gives way to the next attempt at once (the last attempt
  always runs on). Before, only the last iteration was judged, which let attempts that had
  collapsed and crept back just above 2 % through: box IoU on 20 BUSI images 0.76 -> 0.80, on
  20 Kvasir-SEG images 0.63 -> 0.66, on 20 PH2 images 0.894 either way;
* the prompt sets of one ``segment`` call are cut in ``workers`` threads (``cv2.grabCut``
  releases the GIL and OpenCV's RNG is per thread: the results do not depend on the number of
  threads).

``crop_margin=None, converge_tol=None`` gives the algorithm as it was before these: the whole
frame, all ``iterations`` in one call, collapse judged after the last. On the 12 images of
``segprompt demo`` (3 strategies x 4 steps, 144 prompt sets) GrabCut took 56 s before, 25 s
after in one thread and 17 s in two (a 2-CPU machine), with the summary's IoUs within 0.006.

For either method, a prompt set already segmented on the same encoded image (the same points,
box, mask and scribbles, the same settings) is not segmented again: the last 16 results are
kept in the image state.

The random walker (:func:`skimage.segmentation.random_walker`, image scaled to [0, 1]) uses
sure foreground as label 1 and sure background as label 2. Without a box or mask prompt, or
without any background seed, the 1-pixel image border is background too; without foreground
seeds (box or mask prompt only) a disc at the box centre (radius 0.3 x its smaller side) or the
eroded mask prompt is foreground. ``beta`` defaults to 4000, not skimage's 130: on the
synthetic lesions 130 lets the walk diffuse through weak edges (box-prompt IoU 0.63 against
0.83). ``rw_mode="bf"`` (direct sparse solve) is exact and 2-3x faster than ``"cg_j"`` at
these sizes.

Scores: GrabCut has no quality estimate, so its scores are NaN. The random walker scores a mask
by the mean foreground probability inside it (0 for an empty mask). ``logits`` is None (there
is no SAM-style low-resolution logit to feed back). ``probabilities`` holds, for the walker, its
foreground probability and, for GrabCut, the posterior of the fitted foreground/background
colour models (the graph-cut smoothness term is not in it; sure seeds are 0 / 1).

A prompt set with no positive evidence (only negative points or scribbles, or an empty
binary mask prompt alone) gives an empty mask. ``device`` and ``precision`` are recorded but
the computation always runs on the CPU in float64 / uint8.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from segprompt.errors import ConfigError, PromptError
from segprompt.models.base import ImageState, MultimaskPolicy, Prediction, Segmenter
from segprompt.prompts import PromptSet, Scribble

log = logging.getLogger(__name__)

ClassicalMethod = Literal["grabcut", "random_walker"]
METHODS: tuple[str, ...] = ("grabcut", "random_walker")
_METHOD_ALIASES = {"grabcut": "grabcut", "grab_cut": "grabcut", "random_walker": "random_walker", "random-walker": "random_walker", "rw": "random_walker"}

#: radius of the seed discs around points as a fraction of the image diagonal
SEED_RADIUS_FRACTION = 0.015
#: clicks-only prompts: probable-foreground discs are this many seed radii wide (12 % of the
#: diagonal by default; GrabCut retries with twice that when it collapses)
PROBABLE_RADIUS_FACTOR = 8.0
#: default Gaussian pre-blur (sigma, working pixels) per method, measured on the synthetic lesions
DEFAULT_SMOOTH = {"grabcut": 0.5, "random_walker": 1.0}
#: GrabCut counts as collapsed when it keeps less than this part of the probable foreground
COLLAPSE_FRACTION = 0.02
#: results kept per encoded image, so that a prompt set seen before is not segmented again
MEMO_SIZE = 16


@dataclass
class ClassicalPrediction(Prediction):
    """:class:`Prediction` plus ``probabilities``: float32 (N, 1, H, W) soft foreground maps."""

    probabilities: np.ndarray | None = None


class ResizeFrame:
    """The one transform between the original image frame and the downscaled working frame.

    Pixels, point coordinates, box edges and masks all go through this object, so that a point
    lands on the pixel it was placed on. Conventions: a point ``(x, y)`` names the pixel at
    column ``x``, row ``y`` (pixel centres at integer coordinates); box edges are pixel edges
    (``Box.from_mask`` gives ``x1 = last column + 1``). Resizing follows OpenCV's half-pixel
    alignment, so a pixel centre maps as ``x' = (x + 0.5) * sx - 0.5`` and an edge as ``x * sx``.
    """

    def __init__(self, original_size: tuple[int, int], work_size: tuple[int, int]) -> None:
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.work_size = (int(work_size[0]), int(work_size[1]))
        (h0, w0), (h1, w1) = self.original_size, self.work_size
        self.sx, self.sy = w1 / w0, h1 / h0

    @classmethod
    def fit(cls, original_size: tuple[int, int], max_side: int) -> "ResizeFrame":
        """Frame whose working size has its longest side <= ``max_side`` (never upscaled)."""
        h, w = original_size
        s = min(1.0, max_side / max(h, w))
        return cls((h, w), (max(2, int(round(h * s))), max(2, int(round(w * s)))))

    @property
    def identity(self) -> bool:
        return self.original_size == self.work_size

    @property
    def scale(self) -> float:
        """Mean linear scale factor (working / original)."""
        return 0.5 * (self.sx + self.sy)

    # -- coordinates --------------------------------------------------------
    def coords(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) point ``(x, y)`` in the original frame -> float (N, 2) in the working frame."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        out = np.empty_like(xy)
        out[:, 0] = (xy[:, 0] + 0.5) * self.sx - 0.5
        out[:, 1] = (xy[:, 1] + 0.5) * self.sy - 0.5
        return out

    def box(self, xyxy: np.ndarray) -> np.ndarray:
        """Box edges ``(x0, y0, x1, y1)`` -> working frame (edges scale without offset)."""
        b = np.asarray(xyxy, np.float64).reshape(4)
        return b * np.array([self.sx, self.sy, self.sx, self.sy])

    def pixels(self, xy: np.ndarray) -> np.ndarray:
        """Points -> int (N, 2) ``(col, row)`` working-frame pixel indices, clipped inside."""
        c = np.rint(self.coords(xy)).astype(np.int64)
        c[:, 0] = np.clip(c[:, 0], 0, self.work_size[1] - 1)
        c[:, 1] = np.clip(c[:, 1], 0, self.work_size[0] - 1)
        return c

    def length(self, value: float) -> float:
        """A length in original pixels -> working pixels."""
        return float(value) * self.scale

    # -- rasters ------------------------------------------------------------
    def image(self, image: np.ndarray) -> np.ndarray:
        """Original image -> working frame (area averaging when shrinking)."""
        if self.identity:
            return image
        h, w = self.work_size
        interp = cv2.INTER_AREA if (self.sx < 1 or self.sy < 1) else cv2.INTER_LINEAR
        return cv2.resize(image, (w, h), interpolation=interp)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """bool mask, original -> working frame (nearest neighbour, half-pixel aligned)."""
        if self.identity:
            return np.asarray(mask, bool)
        h, w = self.work_size
        return cv2.resize(np.asarray(mask, np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)

    def restore_mask(self, mask: np.ndarray) -> np.ndarray:
        """bool mask, working -> original frame (nearest neighbour, half-pixel aligned)."""
        if self.identity:
            return np.asarray(mask, bool)
        h, w = self.original_size
        return cv2.resize(np.asarray(mask, np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)

    def restore_map(self, values: np.ndarray) -> np.ndarray:
        """float map, working -> original frame (bilinear)."""
        values = np.asarray(values, np.float32)
        if self.identity:
            return values
        h, w = self.original_size
        return cv2.resize(values, (w, h), interpolation=cv2.INTER_LINEAR)


def _disc(canvas: np.ndarray, centre: np.ndarray, radius: int, value: int) -> None:
    cv2.circle(canvas, (int(centre[0]), int(centre[1])), int(max(0, radius)), int(value), -1)


class ClassicalSegmenter(Segmenter):
    """GrabCut or random-walker segmentation from points, boxes, scribbles and binary masks.

    Args:
        method: ``"grabcut"`` or ``"random_walker"``.
        max_side: images are processed with their longest side shrunk to at most this many
            pixels (results are upsampled back, nearest neighbour for masks).
        iterations: GrabCut iterations.
        beta: random-walker edge penalty (higher: diffusion stops more at colour edges), for
            an image scaled to [0, 1] as in skimage.
        seed_radius: radius in original-image pixels of the seed discs drawn around points;
            None: 1.5 % of the image diagonal.
        smooth: sigma in working-frame pixels of a Gaussian blur applied before segmenting
            (0: none; None: 0.5 for GrabCut, 1.0 for the random walker).
        rw_mode: solver of :func:`skimage.segmentation.random_walker` (``"bf"``, ``"cg_j"``,
            ``"cg"``).
        rw_tol: tolerance of the conjugate-gradient solver.
        crop_margin: GrabCut's graph cut is confined to the bounding box of the sure and
            probable foreground grown by this fraction of the working frame's diagonal on each
            side (redone on the whole frame when the foreground reaches the box's edge); None:
            always the whole frame. Default 0.1.
        converge_tol: GrabCut runs one iteration at a time and stops once at most this fraction
            of the working pixels changed side, or as soon as it has collapsed; None: always
            ``iterations`` iterations in one call, collapse judged at the end. Default 0.002.
        workers: threads that cut the prompt sets of one ``segment`` call in parallel (GrabCut
            only); None: one per CPU this process may use. Results do not depend on it.
        multimask, device, precision: as for every :class:`Segmenter`; there is a single output
            (K = 1) and the computation runs on the CPU whatever ``device`` says.
    """

    name = "classical"
    accepts = frozenset({"points", "box", "scribble", "mask"})
    has_multimask = False
    box_seed_fraction = 0.3

    def __init__(
        self,
        method: ClassicalMethod | str = "grabcut",
        max_side: int = 320,
        iterations: int = 5,
        beta: float = 4000.0,
        seed_radius: float | None = None,
        multimask: MultimaskPolicy = "single",
        device: str = "cpu",
        precision: str = "fp32",
        smooth: float | None = None,
        rw_mode: str = "bf",
        rw_tol: float = 1e-3,
        crop_margin: float | None = 0.1,
        converge_tol: float | None = 0.002,
        workers: int | None = None,
    ) -> None:
        super().__init__(multimask=multimask, device=device, precision=precision)
        key = str(method).lower()
        if key not in _METHOD_ALIASES:
            raise ConfigError(f"unknown classical method {method!r}; use one of {', '.join(METHODS)}")
        self.method: str = _METHOD_ALIASES[key]
        if int(max_side) < 16:
            raise ConfigError(f"max_side must be >= 16 pixels, got {max_side!r}")
        if int(iterations) < 1:
            raise ConfigError(f"iterations must be >= 1, got {iterations!r}")
        if not float(beta) > 0:
            raise ConfigError(f"beta must be positive, got {beta!r}")
        if seed_radius is not None and not float(seed_radius) > 0:
            raise ConfigError(f"seed_radius must be a positive number of pixels or None, got {seed_radius!r}")
        if smooth is None:
            smooth = DEFAULT_SMOOTH[_METHOD_ALIASES.get(str(method).lower(), "grabcut")]
        if not float(smooth) >= 0:
            raise ConfigError(f"smooth must be a Gaussian sigma >= 0 (0: off), got {smooth!r}")
        if rw_mode not in ("cg", "cg_j", "bf"):
            raise ConfigError(f"rw_mode must be 'cg', 'cg_j' or 'bf', got {rw_mode!r}")
        self.max_side = int(max_side)
        self.iterations = int(iterations)
        self.beta = float(beta)
        self.seed_radius = None if seed_radius is None else float(seed_radius)
        self.smooth = float(smooth)
        self.rw_mode = rw_mode
        self.rw_tol = float(rw_tol)
        if crop_margin is not None and not float(crop_margin) >= 0:
            raise ConfigError(f"crop_margin must be a fraction of the image diagonal >= 0, or None (whole frame), got {crop_margin!r}")
        if converge_tol is not None and not float(converge_tol) >= 0:
            raise ConfigError(f"converge_tol must be a fraction >= 0, or None (always run all iterations), got {converge_tol!r}")
        self.crop_margin = None if crop_margin is None else float(crop_margin)
        self.converge_tol = None if converge_tol is None else float(converge_tol)
        if workers is not None and int(workers) < 1:
            raise ConfigError(f"workers must be >= 1, or None (one per CPU), got {workers!r}")
        self.workers = None if workers is None else int(workers)
        if device != "cpu":
            log.debug("classical segmenter runs on the CPU; device=%r is recorded only", device)

    # -- Segmenter ----------------------------------------------------------
    def _encode(self, image: np.ndarray) -> ImageState:
        frame = ResizeFrame.fit(image.shape[:2], self.max_side)
        small = np.ascontiguousarray(frame.image(image))
        return ImageState(
            original_size=frame.original_size,
            input_size=frame.work_size,
            features={"image": small, "smoothed": {}, "scale": (frame.sx, frame.sy)},
            image=image,
        )

    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> ClassicalPrediction:
        small = state.features.get("image") if isinstance(state.features, dict) else None
        if small is None or tuple(small.shape[:2]) != tuple(state.input_size):
            raise PromptError(
                "this image state was not made by a classical segmenter's encode(); "
                "call encode() on the same segmenter first"
            )
        frame = ResizeFrame(state.original_size, state.input_size)
        memo = state.features.setdefault("results", {})
        keys = [self._result_key(frame, ps) for ps in prompts]
        todo: dict[str, tuple[int, PromptSet]] = {}
        for i, (key, ps) in enumerate(zip(keys, prompts)):
            if key not in memo and key not in todo:
                todo[key] = (i, ps)
        workers = min(len(todo), self.workers or _cpu_count()) if self.method == "grabcut" else 1
        if workers > 1:
            # cv2.grabCut releases the GIL, and OpenCV's RNG (seeded before each call) is per thread
            with ThreadPoolExecutor(workers) as pool:
                done = list(pool.map(lambda item: self._segment_one(state, frame, item[1], item[0]), todo.values()))
        else:
            done = [self._segment_one(state, frame, ps, i) for i, ps in todo.values()]
        for key, result in zip(todo, done):
            memo[key] = result
        results = [memo[key] for key in keys]
        while len(memo) > max(MEMO_SIZE, len(keys)):
            memo.pop(next(iter(memo)))
        masks = [frame.restore_mask(r[0]) for r in results]
        scores = [r[1] for r in results]
        probs = [frame.restore_map(r[2]) for r in results]
        return ClassicalPrediction(
            masks=np.stack(masks)[:, None],
            scores=np.asarray(scores, np.float32).reshape(-1, 1),
            logits=None,
            probabilities=np.stack(probs).astype(np.float32)[:, None],
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            method=self.method,
            max_side=self.max_side,
            iterations=self.iterations,
            beta=self.beta,
            seed_radius=self.seed_radius,
            smooth=self.smooth,
            rw_mode=self.rw_mode,
            rw_tol=self.rw_tol,
            crop_margin=self.crop_margin,
            converge_tol=self.converge_tol,
            workers=self.workers,
        )
        return d

    def _result_key(self, frame: ResizeFrame, ps: PromptSet) -> str:
        """Digest of everything one prompt set's result depends on (settings, frame, prompts)."""
        settings = sorted((k, v) for k, v in self.describe().items() if k not in ("workers", "device"))
        h = hashlib.sha1(repr((settings, frame.original_size, frame.work_size)).encode())
        if ps.points is not None:
            h.update(b"p" + np.ascontiguousarray(ps.points.coords, np.float64).tobytes() + np.ascontiguousarray(ps.points.labels, np.int64).tobytes())
        if ps.box is not None:
            h.update(b"b" + np.ascontiguousarray(ps.box.xyxy, np.float64).tobytes())
        if ps.mask is not None:
            data = np.ascontiguousarray(ps.mask.data)
            h.update(b"m" + repr((ps.mask.kind, data.shape, data.dtype.str)).encode() + data.tobytes())
        for sc in ps.scribbles:
            h.update(b"s" + repr((int(sc.label), float(sc.width))).encode() + np.ascontiguousarray(sc.coords, np.float64).tobytes())
        return h.hexdigest()

    # -- seeds ----------------------------------------------------------------
    def _radius(self, frame: ResizeFrame) -> float:
        """Seed radius in working-frame pixels."""
        if self.seed_radius is not None:
            return max(1.0, frame.length(self.seed_radius))
        h, w = frame.work_size
        return max(1.0, SEED_RADIUS_FRACTION * float(np.hypot(h, w)))

    def trimap(self, frame: ResizeFrame, ps: PromptSet, index: int = 0, probable_factor: float = PROBABLE_RADIUS_FACTOR) -> np.ndarray:
        """uint8 (h, w) GrabCut trimap (GC_BGD / GC_FGD / GC_PR_BGD / GC_PR_FGD) of one prompt set.

        ``probable_factor``: radius of the probable-foreground discs around positive clicks and
        strokes (clicks-only prompt sets), in seed radii.
        """
        h, w = frame.work_size
        r = self._radius(frame)
        r_int = int(round(r))
        tri = np.full((h, w), cv2.GC_PR_BGD, np.uint8)

        box_slice = None
        if ps.box is not None:
            if ps.box.xyxy[2] <= ps.box.xyxy[0] or ps.box.xyxy[3] <= ps.box.xyxy[1]:
                raise PromptError(
                    f"prompt set {index}: the box {ps.box.xyxy.tolist()} has zero width or height; "
                    "give x1 > x0 and y1 > y0 (XYXY pixel edges)"
                )
            x0, y0, x1, y1 = frame.box(ps.box.xyxy)
            c0, r0 = int(np.floor(x0 + 1e-6)), int(np.floor(y0 + 1e-6))
            c1, r1 = int(np.ceil(x1 - 1e-6)), int(np.ceil(y1 - 1e-6))
            c0, r0 = min(max(c0, 0), w - 1), min(max(r0, 0), h - 1)
            c1, r1 = min(max(c1, c0 + 1), w), min(max(r1, r0 + 1), h)
            box_slice = (slice(r0, r1), slice(c0, c1))
            tri[:] = cv2.GC_BGD
            tri[box_slice] = cv2.GC_PR_FGD

        if ps.mask is not None:
            if ps.mask.kind != "binary":
                raise PromptError(
                    f"prompt set {index}: the classical segmenter accepts binary mask prompts only, got "
                    f"{ps.mask.kind!r} (low-resolution logits); threshold them, resize to the image "
                    "size and pass MaskPrompt(mask) instead"
                )
            m = frame.mask(ps.mask.data)
            prob = np.where(m, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
            if box_slice is not None:
                tri[box_slice] = prob[box_slice]
            else:
                tri[:] = prob
        elif box_slice is None:
            # clicks / strokes only: probable foreground in wide discs around the positive ones
            big = int(round(probable_factor * r))
            if ps.points is not None:
                for c in frame.pixels(ps.points.coords[ps.points.labels == 1]):
                    _disc(tri, c, big, cv2.GC_PR_FGD)
            for s in ps.scribbles:
                if s.label == 1:
                    grown = cv2.dilate(self._scribble(frame, s).astype(np.uint8), _ellipse(big)).astype(bool)
                    tri[grown] = cv2.GC_PR_FGD

        if ps.points is not None:
            for c, lab in zip(frame.pixels(ps.points.coords), ps.points.labels):
                _disc(tri, c, r_int, cv2.GC_FGD if lab == 1 else cv2.GC_BGD)
        for s in ps.scribbles:
            tri[self._scribble(frame, s)] = cv2.GC_FGD if s.label == 1 else cv2.GC_BGD
        return tri

    @staticmethod
    def _scribble(frame: ResizeFrame, s: Scribble) -> np.ndarray:
        """bool (h, w) stroke of a scribble drawn in the working frame."""
        xy = frame.coords(s.coords)
        return Scribble(xy, label=s.label, width=max(1.0, frame.length(s.width))).rasterize(frame.work_size)

    # -- one prompt set -------------------------------------------------------
    def _segment_one(self, state: ImageState, frame: ResizeFrame, ps: PromptSet, index: int) -> tuple[np.ndarray, float, np.ndarray]:
        tri = self.trimap(frame, ps, index)
        fg_any = (tri == cv2.GC_FGD) | (tri == cv2.GC_PR_FGD)
        h, w = frame.work_size
        if not fg_any.any():
            # no positive evidence at all (e.g. only negative clicks): nothing to segment
            score = float("nan") if self.method == "grabcut" else 0.0
            return np.zeros((h, w), bool), score, np.zeros((h, w), np.float32)
        if self.method == "grabcut":
            return self._grabcut(state, tri, ps, frame)
        return self._random_walker(_smoothed(state, self.smooth), tri, ps, frame)

    def _grabcut(self, state: ImageState, tri: np.ndarray, ps: PromptSet, frame: ResizeFrame) -> tuple[np.ndarray, float, np.ndarray]:
        ready = _grabcut_ready(tri)
        if ready is None:
            # GrabCut needs both colour models; with (almost) no pixels on one side the trimap
            # already decides everything that can be decided
            fg = (tri == cv2.GC_FGD) | (tri == cv2.GC_PR_FGD)
            return fg, float("nan"), fg.astype(np.float32)
        tri = ready
        probable = tri == cv2.GC_PR_FGD
        n_probable = int(probable.sum())
        # GrabCut's smoothness term (fixed gamma = 50) can outweigh the colour term on textured or
        # speckled images and wipe out the whole probable foreground. Then retry on a smoother
        # image; for clicks only with wider probable-foreground discs; for a box or mask prompt
        # without clicks, last, with a sure-foreground seed in its centre.
        base = max(self.smooth, 1.0)
        attempts: list[tuple[float, np.ndarray | None]] = [(self.smooth, tri), (2 * base, tri), (4 * base, tri)]
        if ps.box is None and ps.mask is None:
            wide = _grabcut_ready(self.trimap(frame, ps, probable_factor=2 * PROBABLE_RADIUS_FACTOR))
            attempts += [(self.smooth, wide), (2 * base, wide)]
        if not (tri == cv2.GC_FGD).any():
            seeded = tri.copy()
            seeded[self._implicit_foreground(tri, ps, frame)] = cv2.GC_FGD
            attempts.append((2 * base, _grabcut_ready(seeded)))
        attempts = [(sigma, t) for sigma, t in attempts if t is not None]
        for k, (sigma, trimap) in enumerate(attempts):
            bgr = _smoothed(state, sigma)[..., ::-1]
            # an attempt that is not the last may give up as soon as it has collapsed
            out, bgd, fgd = self._run_grabcut(bgr, trimap, probable if k + 1 < len(attempts) else None)
            mask = (out == cv2.GC_FGD) | (out == cv2.GC_PR_FGD)
            if n_probable == 0 or (mask & probable).sum() >= COLLAPSE_FRACTION * n_probable:
                break
            log.debug("GrabCut kept no probable foreground (smooth=%.1f); retrying", sigma)
        pixels = bgr.reshape(-1, 3).astype(np.float64)
        lf, lb = _gmm_likelihood(fgd, pixels), _gmm_likelihood(bgd, pixels)
        prob = (lf / np.maximum(lf + lb, 1e-300)).reshape(tri.shape).astype(np.float32)
        prob[trimap == cv2.GC_FGD] = 1.0
        prob[trimap == cv2.GC_BGD] = 0.0
        return mask, float("nan"), prob

    def _region(self, trimap: np.ndarray) -> np.ndarray | None:
        """bool (h, w): where the graph cut may change labels, the bounding box of the sure and
        probable foreground grown by ``crop_margin`` x the frame diagonal on each side; None for
        the whole frame (``crop_margin`` None, or the grown box covers the frame)."""
        h, w = trimap.shape
        if self.crop_margin is None:
            return None
        fg = (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)
        rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
        if not len(rows):
            return None
        m = int(np.ceil(self.crop_margin * float(np.hypot(h, w))))
        r0, r1 = max(0, int(rows[0]) - m), min(h, int(rows[-1]) + 1 + m)
        c0, c1 = max(0, int(cols[0]) - m), min(w, int(cols[-1]) + 1 + m)
        if (r0, r1, c0, c1) == (0, h, 0, w):
            return None
        inside = np.zeros((h, w), bool)
        inside[r0:r1, c0:c1] = True
        return inside

    def _run_grabcut(self, bgr: np.ndarray, trimap: np.ndarray, probable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """GrabCut on ``trimap`` with the cut confined to :meth:`_region`; returns the result (the
        trimap's labels, refined) and the fitted background / foreground GMMs (1 x 65 each).

        Outside the region the probable background is made sure background, so the graph cut
        only works inside it while the colour models and GrabCut's contrast constant still come
        from the whole frame: as long as the whole-frame cut would keep those pixels background,
        this is the whole-frame result. When the foreground reaches the region's edge (it might
        have gone on outside), the whole frame is cut instead. ``probable``: the probable
        foreground whose collapse ends the attempt early (None: run it to the end).
        """
        img = np.ascontiguousarray(bgr)
        inside = self._region(trimap)
        held = None if inside is None else ~inside & (trimap == cv2.GC_PR_BGD)
        if held is None or not held.any():  # nothing to hold (e.g. a box prompt): the same cut
            return self._grabcut_call(img, trimap.copy(), probable)[:3]
        tri = trimap.copy()
        tri[held] = cv2.GC_BGD
        # the region's inner edge, next to the held pixels
        edge = inside & ~cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=1).astype(bool)
        out, bgd, fgd, status = self._grabcut_call(img, tri, probable, edge)
        if status == "escaped":
            log.debug("GrabCut's foreground reached the edge of its region; cutting the whole frame")
            return self._grabcut_call(img, trimap.copy(), probable)[:3]
        out[held] = cv2.GC_PR_BGD
        return out, bgd, fgd

    def _grabcut_call(self, img: np.ndarray, tri: np.ndarray, probable: np.ndarray | None = None, edge: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """``cv2.grabCut`` (``GC_INIT_WITH_MASK``, RNG seeded with 0), up to ``iterations``
        iterations; ``tri`` is overwritten. Returns the labels, the two GMMs and a status: "ok",
        "escaped" (foreground on ``edge``) or "collapsed" (less than ``COLLAPSE_FRACTION`` of
        ``probable`` left foreground).

        With ``converge_tol`` set, one iteration per call (``GC_EVAL`` with the returned models
        and labels goes on exactly as the next internal iteration would), stopping once at most
        ``converge_tol`` x the pixels changed side, or as soon as the status is not "ok".
        """
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        n_probable = 0 if probable is None else int(probable.sum())

        def status(out: np.ndarray) -> str:
            fg = (out & 1).astype(bool)  # GC_FGD = 1, GC_PR_FGD = 3
            if edge is not None and fg[edge].any():
                return "escaped"
            if n_probable and np.count_nonzero(fg & probable) < COLLAPSE_FRACTION * n_probable:
                return "collapsed"
            return "ok"

        cv2.setRNGSeed(0)
        if self.converge_tol is None or self.iterations == 1:
            out, bgd, fgd = cv2.grabCut(img, tri, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
            return out, bgd, fgd, status(out)
        limit = self.converge_tol * tri.size
        out, bgd, fgd = cv2.grabCut(img, tri, None, bgd, fgd, 1, cv2.GC_INIT_WITH_MASK)
        for _ in range(self.iterations - 1):
            now = status(out)
            if now != "ok":
                return out, bgd, fgd, now
            before = out & 1
            out, bgd, fgd = cv2.grabCut(img, out, None, bgd, fgd, 1, cv2.GC_EVAL)
            if np.count_nonzero(before != (out & 1)) <= limit:
                break
        return out, bgd, fgd, status(out)

    def _random_walker(self, small: np.ndarray, tri: np.ndarray, ps: PromptSet, frame: ResizeFrame) -> tuple[np.ndarray, float, np.ndarray]:
        from skimage.segmentation import random_walker

        h, w = tri.shape
        labels = np.zeros((h, w), np.int32)
        labels[tri == cv2.GC_BGD] = 2
        fg = tri == cv2.GC_FGD
        if not fg.any():
            fg = self._implicit_foreground(tri, ps, frame)
        if not fg.any():
            return np.zeros((h, w), bool), 0.0, np.zeros((h, w), np.float32)
        if not (labels == 2).any() or (ps.box is None and ps.mask is None):
            ring = _border_ring((h, w)) & ~fg
            if ps.mask is not None and ps.mask.kind == "binary":
                # a mask prompt alone: what lies well outside it is background
                r = int(round(self._radius(frame)))
                grown = cv2.dilate(frame.mask(ps.mask.data).astype(np.uint8), _ellipse(r)).astype(bool)
                ring |= ~grown & ~fg
            labels[ring] = 2
        labels[fg] = 1
        if not (labels == 2).any():  # the foreground covers everything
            return np.ones((h, w), bool), 1.0, np.ones((h, w), np.float32)
        if (labels > 0).all():
            prob = (labels == 1).astype(np.float32)
        else:
            data = small.astype(np.float64) / 255.0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                full = random_walker(
                    data, labels, beta=self.beta, mode=self.rw_mode, tol=self.rw_tol,
                    return_full_prob=True, channel_axis=-1,
                )
            prob = np.clip(full[0], 0.0, 1.0).astype(np.float32)
        mask = prob > 0.5
        score = float(prob[mask].mean()) if mask.any() else 0.0
        return mask, score, prob

    def _implicit_foreground(self, tri: np.ndarray, ps: PromptSet, frame: ResizeFrame) -> np.ndarray:
        """Sure-foreground seeds for a prompt set without positive clicks or strokes.

        Mask prompt: the mask (inside the box, if any) eroded by the seed radius. Box: a disc at
        its centre with a radius of ``box_seed_fraction`` of its smaller side. Used by the random
        walker always and by GrabCut as the last resort when it collapses.
        """
        h, w = tri.shape
        r = int(round(self._radius(frame)))
        fg = np.zeros((h, w), bool)
        if ps.mask is not None:
            # the eroded mask prompt (inside the box, if any)
            pr = tri == cv2.GC_PR_FGD
            eroded = cv2.erode(pr.astype(np.uint8), _ellipse(r)).astype(bool)
            fg = eroded if eroded.any() else pr
        elif ps.box is not None:
            x0, y0, x1, y1 = frame.box(ps.box.xyxy)
            centre = frame.coords(np.array([[(ps.box.xyxy[0] + ps.box.xyxy[2]) / 2 - 0.5, (ps.box.xyxy[1] + ps.box.xyxy[3]) / 2 - 0.5]]))[0]
            rad = max(1, int(round(self.box_seed_fraction * min(x1 - x0, y1 - y0))))
            canvas = np.zeros((h, w), np.uint8)
            _disc(canvas, np.rint(centre), rad, 1)
            fg = canvas.astype(bool) & (tri == cv2.GC_PR_FGD)
            if not fg.any():
                fg = tri == cv2.GC_PR_FGD
        else:
            fg = tri == cv2.GC_PR_FGD
        return fg


def _grabcut_ready(tri: np.ndarray) -> np.ndarray | None:
    """The trimap with probable background on the border if it has no background at all (a box
    over the whole image); None when either colour model would get fewer than 10 pixels."""
    tri = tri.copy()
    if not ((tri == cv2.GC_BGD) | (tri == cv2.GC_PR_BGD)).any():
        tri[_border_ring(tri.shape) & (tri != cv2.GC_FGD)] = cv2.GC_PR_BGD
    n_fg = int(((tri == cv2.GC_FGD) | (tri == cv2.GC_PR_FGD)).sum())
    n_bg = int(((tri == cv2.GC_BGD) | (tri == cv2.GC_PR_BGD)).sum())
    return tri if min(n_fg, n_bg) >= 10 else None


def _smoothed(state: ImageState, sigma: float) -> np.ndarray:
    """The working image blurred with Gaussian ``sigma`` (cached in the state)."""
    image = state.features["image"]
    if sigma <= 0:
        return image
    cache = state.features.setdefault("smoothed", {})
    key = round(float(sigma), 3)
    if key not in cache:
        cache[key] = np.ascontiguousarray(cv2.GaussianBlur(image, (0, 0), float(sigma)))
    return cache[key]


def _cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _ellipse(radius: int) -> np.ndarray:
    k = 2 * max(0, int(radius)) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _border_ring(shape: tuple[int, int]) -> np.ndarray:
    ring = np.zeros(shape, bool)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True
    return ring


def _gmm_likelihood(model: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Likelihood of (P, 3) colours under an OpenCV GrabCut GMM (1 x 65: 5 weights, means, covs)."""
    m = np.asarray(model, np.float64).reshape(-1)
    k = 5
    weights, means, covs = m[:k], m[k : 4 * k].reshape(k, 3), m[4 * k :].reshape(k, 3, 3)
    out = np.zeros(len(pixels), np.float64)
    for j in range(k):
        if weights[j] <= 0:
            continue
        cov = covs[j] + np.eye(3) * 1e-3
        det = np.linalg.det(cov)
        if not det > 0:
            continue
        inv = np.linalg.inv(cov)
        d = pixels - means[j]
        maha = np.einsum("pi,pi->p", d @ inv, d)
        out += weights[j] * np.exp(-0.5 * np.minimum(maha, 1400.0)) / np.sqrt(((2 * np.pi) ** 3) * det)
    return out


def _fixed_method(kwargs: dict[str, Any], method: str) -> dict[str, Any]:
    given = kwargs.pop("method", method)
    if _METHOD_ALIASES.get(str(given).lower()) != method:
        raise ConfigError(f"this factory builds the {method!r} method, got method={given!r}; use create_segmenter('classical', method=...)")
    return {**kwargs, "method": method}


def create_grabcut(**kwargs: Any) -> ClassicalSegmenter:
    """``create_segmenter("grabcut", ...)``: a :class:`ClassicalSegmenter` with ``method="grabcut"``."""
    return ClassicalSegmenter(**_fixed_method(kwargs, "grabcut"))


def create_random_walker(**kwargs: Any) -> ClassicalSegmenter:
    """``create_segmenter("random-walker", ...)``: a :class:`ClassicalSegmenter` with ``method="random_walker"``."""
    return ClassicalSegmenter(**_fixed_method(kwargs, "random_walker"))


__all__ = [
    "ClassicalPrediction",
    "ClassicalSegmenter",
    "METHODS",
    "ResizeFrame",
    "create_grabcut",
    "create_random_walker",
]
