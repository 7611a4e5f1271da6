"""Augmentation and evaluation transforms that move points and boxes together with the pixels.

Built on albumentations (2.x). One :class:`SampleTransform` applies an image transform to the
image, its mask, its prompt points and its boxes in one call, so that a click or a box stays on
the same structure whatever flip, affine warp, crop or resize is applied:

.. code-block:: python

    t = train_transform(256, seed=0)
    out = t(image, mask=mask, points=[[120, 80], [30, 40]], labels=[1, 0], boxes=[[90, 50, 160, 120]])
    out.image, out.mask, out.points, out.labels, out.boxes
    out.point_index   # which input points survived (points leaving the image are dropped)

Coordinate conventions (albumentations' and segprompt's): a point ``(x, y)`` names the pixel at
column ``x``, row ``y``, pixel centres at integer coordinates (a horizontal flip maps ``x`` to
``W - 1 - x``); boxes are XYXY on pixel *edges* (``Box.from_mask`` gives ``x1 = last column + 1``;
a flip maps ``x0`` to ``W - x1``).

Points whose transformed position lies outside ``[0, W) x [0, H)`` are dropped together with
their labels (``remove_invisible=True``, the default of :func:`train_transform`), or kept with
coordinates outside the image (``remove_invisible=False``, the default of
:func:`eval_transform`, which never moves a point out). Boxes are clipped to the image and
dropped when nothing of them is left (or less than ``min_box_visibility`` of their area).

Factories: :func:`train_transform` (flip, affine, colour jitter, then resize to ``size``),
:func:`eval_transform` (deterministic: longest side to ``size`` and pad to a square, SAM's
convention), and the building blocks :func:`longest_side` and :func:`pad_to_square`.
Randomness comes from ``seed``: the same seed gives the same sequence of augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np

from segprompt.errors import ConfigError, DataError, PromptError

Size = int | tuple[int, int]
#: mask interpolation of resizes: OpenCV's INTER_NEAREST samples without the half-pixel offset
#: (masks drift by up to half a pixel against the image); INTER_NEAREST_EXACT does not
MASK_RESIZE = cv2.INTER_NEAREST_EXACT

PadPosition = Literal["center", "top_left", "top_right", "bottom_left", "bottom_right", "random"]


@dataclass
class TransformResult:
    """What a :class:`SampleTransform` returns.

    Attributes:
        image: the transformed (H', W', C) image.
        mask: the transformed mask (same dtype as given), or None.
        points: float32 (K, 2) ``(x, y)`` of the points kept.
        labels: int64 (K,) their labels, aligned with ``points``.
        boxes: float32 (M', 4) XYXY boxes kept (clipped to the image).
        point_index: int64 (K,) index in the input of each kept point.
        box_index: int64 (M',) index in the input of each kept box.
    """

    image: np.ndarray
    mask: np.ndarray | None
    points: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    point_index: np.ndarray
    box_index: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(H', W') of the transformed image."""
        return int(self.image.shape[0]), int(self.image.shape[1])


def _as_points(points: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    from segprompt.prompts import Points

    if points is None:
        if labels is not None and len(np.asarray(labels).reshape(-1)):
            raise PromptError("labels were given without points")
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.int64)
    if isinstance(points, Points):
        if labels is not None:
            raise PromptError("give labels either inside the Points object or as labels=, not both")
        return points.coords.astype(np.float32), points.labels.astype(np.int64)
    arr = np.asarray(points, np.float32)
    if arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise PromptError(f"points must have shape (N, 2) as (x, y), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise PromptError("points contain NaN or infinite values")
    if labels is None:
        lab = np.ones(len(arr), np.int64)
    else:
        lab = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(lab) != len(arr):
            raise PromptError(f"{len(arr)} points but {len(lab)} labels; give one label per point")
    return arr, lab


def _as_boxes(boxes: Any) -> np.ndarray:
    from segprompt.prompts import Box

    if boxes is None:
        return np.zeros((0, 4), np.float32)
    if isinstance(boxes, Box):
        boxes = [boxes]
    if isinstance(boxes, (list, tuple)) and boxes and isinstance(boxes[0], Box):
        boxes = [b.xyxy for b in boxes]
    arr = np.asarray(boxes, np.float32)
    if arr.size == 0:
        return np.zeros((0, 4), np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise PromptError(f"boxes must have shape (M, 4) as XYXY, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise PromptError("boxes contain NaN or infinite values")
    bad = (arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PromptError(f"box {i} {arr[i].tolist()} has zero or negative width or height; boxes are XYXY with x1 > x0, y1 > y0")
    return arr


def _mask_in(mask: np.ndarray, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.dtype]:
    """Mask -> a dtype OpenCV can warp (uint8 / uint16), remembering the original dtype."""
    m = np.asarray(mask)
    if m.shape[:2] != tuple(image_shape[:2]):
        raise DataError(f"mask of shape {m.shape} does not match the image of shape {tuple(image_shape)}")
    dtype = m.dtype
    if dtype == bool:
        return m.astype(np.uint8), dtype
    if not np.issubdtype(dtype, np.integer):
        if np.issubdtype(dtype, np.floating):
            return m.astype(np.float32), dtype
        raise DataError(f"masks must be bool, integer label maps or float, got dtype {dtype}")
    if m.size and (m.min() < 0 or m.max() > 65535):
        raise DataError(f"label map values must lie in 0..65535 to be transformed, got {m.min()}..{m.max()}")
    return m.astype(np.uint8 if (m.size == 0 or m.max() <= 255) else np.uint16), dtype


def _unwrap(transforms: Any) -> list[Any]:
    if isinstance(transforms, A.Compose):
        return list(transforms.transforms)
    if isinstance(transforms, (list, tuple)):
        out: list[Any] = []
        for t in transforms:
            out.extend(_unwrap(t))
        return out
    if isinstance(transforms, (A.BasicTransform, A.BaseCompose)):
        return [transforms]
    raise ConfigError(f"expected an albumentations transform or a list of them, got {type(transforms).__name__}")


class SampleTransform:
    """Apply albumentations transforms to an image, its mask, points (+ labels) and boxes at once.

    Args:
        transforms: an albumentations transform, a list of them, or an ``A.Compose`` (its
            transforms are taken; its own keypoint / bbox settings are replaced by these).
        remove_invisible: drop points that leave the image (with their labels); False keeps
            them, with coordinates outside the image.
        clip_boxes: clip boxes to the image after each transform.
        min_box_visibility: drop a box when less than this fraction of its area stays visible.
        seed: seed of the random augmentations (None: fresh entropy, not reproducible).
    """

    def __init__(
        self,
        transforms: Any,
        *,
        remove_invisible: bool = True,
        clip_boxes: bool = True,
        min_box_visibility: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= float(min_box_visibility) <= 1.0:
            raise ConfigError(f"min_box_visibility must lie in [0, 1], got {min_box_visibility!r}")
        self.remove_invisible = bool(remove_invisible)
        self.clip_boxes = bool(clip_boxes)
        self.min_box_visibility = float(min_box_visibility)
        self.seed = seed
        self.compose = A.Compose(
            _unwrap(transforms),
            keypoint_params=A.KeypointParams(
                format="xy", remove_invisible=self.remove_invisible, label_fields=["point_labels", "point_index"]
            ),
            bbox_params=A.BboxParams(
                format="pascal_voc",
                label_fields=["box_ids"],
                clip=self.clip_boxes,
                filter_invalid_bboxes=True,
                min_visibility=self.min_box_visibility,
            ),
            seed=seed,
        )

    @property
    def transforms(self) -> list[Any]:
        return list(self.compose.transforms)

    def set_seed(self, seed: int | None) -> None:
        """Restart the random stream from ``seed``."""
        self.seed = seed
        self.compose.set_random_seed(seed)

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        points: Any = None,
        labels: Any = None,
        boxes: Any = None,
    ) -> TransformResult:
        """Transform one sample.

        Args:
            image: (H, W, 3) uint8 RGB (or any image albumentations accepts).
            mask: bool (H, W), an integer label map (values 0..65535) or a float map, or None.
            points: (N, 2) ``(x, y)`` pixels, or a :class:`segprompt.prompts.Points`.
            labels: (N,) point labels (default all 1); with ``Points`` they come from it.
            boxes: (M, 4) XYXY, a :class:`Box` or a list of ``Box``.
        """
        img = np.asarray(image)
        if img.ndim not in (2, 3) or img.shape[0] < 1 or img.shape[1] < 1:
            raise DataError(f"images must be (H, W) or (H, W, C) arrays, got shape {img.shape}")
        pts, lab = _as_points(points, labels)
        bxs = _as_boxes(boxes)
        h, w = img.shape[:2]
        if len(bxs):
            # boxes partly outside the image are clipped first (albumentations refuses them)
            bxs = bxs.copy()
            bxs[:, [0, 2]] = np.clip(bxs[:, [0, 2]], 0, w)
            bxs[:, [1, 3]] = np.clip(bxs[:, [1, 3]], 0, h)
            keep_in = (bxs[:, 2] > bxs[:, 0]) & (bxs[:, 3] > bxs[:, 1])
        else:
            keep_in = np.zeros(0, bool)
        box_ids = np.flatnonzero(keep_in).astype(np.int64)
        data: dict[str, Any] = {
            "image": img,
            "keypoints": pts.reshape(-1, 2),
            "point_labels": lab,
            "point_index": np.arange(len(pts), dtype=np.int64),
            "bboxes": bxs[keep_in].reshape(-1, 4),
            "box_ids": box_ids,
        }
        mask_dtype = None
        if mask is not None:
            data["mask"], mask_dtype = _mask_in(mask, img.shape)
        out = self.compose(**data)

        out_mask = None
        if mask is not None:
            out_mask = np.asarray(out["mask"])
            out_mask = out_mask.astype(bool) if mask_dtype == bool else out_mask.astype(mask_dtype)
        kp = np.asarray(out["keypoints"], np.float32)
        kp = kp.reshape(len(kp), -1) if kp.size else np.zeros((0, 2), np.float32)
        return TransformResult(
            image=out["image"],
            mask=out_mask,
            points=np.ascontiguousarray(kp[:, :2]).astype(np.float32),
            labels=np.asarray(out["point_labels"]).reshape(-1).astype(np.int64),
            boxes=np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
            point_index=np.asarray(out["point_index"]).reshape(-1).astype(np.int64),
            box_index=np.asarray(out["box_ids"]).reshape(-1).astype(np.int64),
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able description (albumentations' serialisation), for run configs."""
        return {
            "transforms": [A.to_dict(t)["transform"] for t in self.compose.transforms],
            "remove_invisible": self.remove_invisible,
            "clip_boxes": self.clip_boxes,
            "min_box_visibility": self.min_box_visibility,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.compose.transforms)
        return f"SampleTransform([{names}], remove_invisible={self.remove_invisible}, seed={self.seed})"


# -- building blocks --------------------------------------------------------------


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"size must be an int or (H, W), got {size!r}") from exc
    if h < 1 or w < 1:
        raise ConfigError(f"size must be positive, got {size!r}")
    return h, w


def longest_side(size: Size, interpolation: int = cv2.INTER_LINEAR) -> A.LongestMaxSize:
    """Resize so that the longest side is ``size`` (or the sides fit ``(H, W)``), keeping the aspect.

    Masks use (half-pixel exact) nearest-neighbour interpolation.
    """
    if isinstance(size, (int, np.integer)):
        return A.LongestMaxSize(max_size=_hw(size)[0], interpolation=interpolation, mask_interpolation=MASK_RESIZE, p=1.0)
    return A.LongestMaxSize(max_size_hw=_hw(size), interpolation=interpolation, mask_interpolation=MASK_RESIZE, p=1.0)


def pad_to_square(size: Size, position: PadPosition = "top_left", fill: float = 0, fill_mask: float = 0) -> A.PadIfNeeded:
    """Pad with a constant to at least ``size`` x ``size`` (or ``(H, W)``).

    ``position="top_left"`` (SAM's convention) pads right and bottom only, so coordinates do not
    move. ``fill_mask`` is the mask value of the padding (e.g. 255, the ignore index, for label maps).
    """
    h, w = _hw(size)
    return A.PadIfNeeded(
        min_height=h, min_width=w, position=position, border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=fill_mask, p=1.0
    )


def eval_transform(
    size: Size,
    *,
    keep_aspect: bool = True,
    pad: bool = True,
    fill: float = 0,
    fill_mask: float = 0,
    remove_invisible: bool = False,
) -> SampleTransform:
    """Deterministic evaluation transform: resize only, no randomness.

    ``keep_aspect=True``: longest side to ``size`` and (``pad=True``) pad bottom/right to a square
    (SAM's convention); ``keep_aspect=False``: plain resize to ``size`` x ``size`` (or (H, W)).
    Every point is kept (it cannot leave the image; ``remove_invisible=False``).
    """
    h, w = _hw(size)
    if keep_aspect:
        steps: list[Any] = [longest_side(size)]
        if pad:
            steps.append(pad_to_square(size, "top_left", fill=fill, fill_mask=fill_mask))
    else:
        steps = [A.Resize(height=h, width=w, interpolation=cv2.INTER_LINEAR, mask_interpolation=MASK_RESIZE, p=1.0)]
    return SampleTransform(steps, remove_invisible=remove_invisible, seed=0)


def train_transform(
    size: Size,
    *,
    hflip: float = 0.5,
    vflip: float = 0.0,
    p_affine: float = 0.7,
    scale: tuple[float, float] = (0.8, 1.2),
    translate: float = 0.1,
    rotate: float = 20.0,
    shear: float = 0.0,
    p_color: float = 0.5,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.02,
    resize: Literal["pad", "crop", "stretch"] = "pad",
    crop_scale: tuple[float, float] = (0.6, 1.0),
    fill: float = 0,
    fill_mask: float = 0,
    remove_invisible: bool = True,
    min_box_visibility: float = 0.0,
    seed: int | None = None,
) -> SampleTransform:
    """Random training augmentation ending at ``size``.

    Steps: horizontal / vertical flip (probabilities ``hflip`` / ``vflip``); with probability
    ``p_affine`` an affine warp (``scale`` range, translation up to ``translate`` of the side,
    rotation up to ``rotate`` degrees, shear up to ``shear`` degrees, constant ``fill``); with
    probability ``p_color`` a colour jitter; then to ``size``: ``"pad"`` longest side + pad
    (bottom/right), ``"crop"`` a random resized crop (area fraction ``crop_scale``), or
    ``"stretch"`` a plain resize. Masks use nearest-neighbour interpolation and ``fill_mask``
    for the area that comes from outside the image (use the ignore index, 255, for label maps).
    """
    h, w = _hw(size)
    for name, p in (("hflip", hflip), ("vflip", vflip), ("p_affine", p_affine), ("p_color", p_color)):
        if not 0.0 <= float(p) <= 1.0:
            raise ConfigError(f"{name} is a probability in [0, 1], got {p!r}")
    if resize not in ("pad", "crop", "stretch"):
        raise ConfigError(f"resize must be 'pad', 'crop' or 'stretch', got {resize!r}")
    steps: list[Any] = []
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if vflip > 0:
        steps.append(A.VerticalFlip(p=vflip))
    if p_affine > 0:
        steps.append(
            A.Affine(
                scale=tuple(float(s) for s in scale),
                translate_percent=(-float(translate), float(translate)),
                rotate=(-float(rotate), float(rotate)),
                shear=(-float(shear), float(shear)),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=fill,
                fill_mask=fill_mask,
                p=p_affine,
            )
        )
    if p_color > 0:
        steps.append(
            A.ColorJitter(
                brightness=float(brightness), contrast=float(contrast), saturation=float(saturation), hue=float(hue), p=p_color
            )
        )
    if resize == "pad":
        steps += [longest_side(size), pad_to_square(size, "top_left", fill=fill, fill_mask=fill_mask)]
    elif resize == "crop":
        steps.append(
            A.RandomResizedCrop(
                size=(h, w), scale=tuple(float(s) for s in crop_scale), interpolation=cv2.INTER_LINEAR,
                mask_interpolation=MASK_RESIZE, p=1.0,
            )
        )
    else:
        steps.append(A.Resize(height=h, width=w, interpolation=cv2.INTER_LINEAR, mask_interpolation=MASK_RESIZE, p=1.0))
    return SampleTransform(steps, remove_invisible=remove_invisible, min_box_visibility=min_box_visibility, seed=seed)


__all__ = [
    "SampleTransform",
    "TransformResult",
    "eval_transform",
    "longest_side",
    "pad_to_square",
    "train_transform",
]
