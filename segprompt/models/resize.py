"""One transform object for the resize-longest-side-and-pad geometry used by SAM-style models.

Pixels, point coordinates, boxes and masks all go through the same :class:`LongestSide`
instance, so a point always lands on the pixel it was placed on. Coordinates are ``(x, y)``.

The image resize is PIL bilinear on uint8, which is what segment-anything's
``ResizeLongestSide.apply_image`` does; mask logits come back to the original size by the
same two bilinear steps as ``Sam.postprocess_masks`` (to the padded square, crop, to the
original size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segprompt.errors import ConfigError


@dataclass(frozen=True)
class LongestSide:
    """Resize so the longest side is ``target`` pixels, then pad bottom-right to a square.

    Attributes:
        target: side of the square model input (SAM: 1024; sam-tiny: 256).
        original_size: (H, W) of the original image.
    """

    target: int
    original_size: tuple[int, int]

    @property
    def input_size(self) -> tuple[int, int]:
        """(h, w) of the resized image before padding (segment-anything's rounding)."""
        h, w = self.original_size
        scale = self.target / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    # -- pixels -------------------------------------------------------------
    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8, PIL bilinear (not yet padded)."""
        h, w = self.input_size
        if (h, w) == tuple(image.shape[:2]):
            return np.ascontiguousarray(image)
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def pad(self, tensor: torch.Tensor) -> torch.Tensor:
        """Pad a (..., h, w) tensor bottom-right with zeros to (..., target, target)."""
        h, w = tensor.shape[-2:]
        return F.pad(tensor, (0, self.target - w, 0, self.target - h))

    # -- coordinates ----------------------------------------------------------
    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """(..., 2) (x, y) in original pixels -> model-input pixels (float64)."""
        (oh, ow), (h, w) = self.original_size, self.input_size
        out = np.array(coords, dtype=np.float64, copy=True)
        out[..., 0] *= w / ow
        out[..., 1] *= h / oh
        return out

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """(..., 4) XYXY in original pixels -> model-input pixels."""
        boxes = np.asarray(boxes, dtype=np.float64)
        return self.apply_coords(boxes.reshape(-1, 2, 2)).reshape(boxes.shape)

    def inverse_coords(self, coords: np.ndarray) -> np.ndarray:
        """Model-input (x, y) -> original pixels (inverse of :meth:`apply_coords`)."""
        (oh, ow), (h, w) = self.original_size, self.input_size
        out = np.array(coords, dtype=np.float64, copy=True)
        out[..., 0] *= ow / w
        out[..., 1] *= oh / h
        return out

    # -- masks ----------------------------------------------------------------
    def mask_to_lowres(self, mask: np.ndarray, lowres: int) -> np.ndarray:
        """bool (H, W) at the original size -> float32 (lowres, lowres) in the padded frame (0/1)."""
        h, w = self.input_size
        t = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
        t = F.interpolate(t, (h, w), mode="bilinear", align_corners=False)
        t = self.pad(t)
        t = F.interpolate(t, (lowres, lowres), mode="area")
        return t[0, 0].numpy()

    def upscale_logits(self, logits: torch.Tensor, padded_out: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, l, l) low-res logits in the padded frame -> (B, K, H, W) at the original size.

        ``padded_out``: an optional contiguous (B, K, target, target) tensor of the logits' dtype
        the first resize is written into (a caller upscaling many sets reuses one, instead of a
        fresh large tensor per call); the result may be a view of it.
        """
        h, w = self.input_size
        size = [self.target, self.target]
        if padded_out is None:
            x = F.interpolate(logits, size, mode="bilinear", align_corners=False)
        else:  # F.interpolate's bilinear kernel, with an output tensor
            x = torch._C._nn.upsample_bilinear2d(logits, size, False, None, None, out=padded_out)
        x = x[..., :h, :w]
        if (h, w) == tuple(self.original_size):  # a same-size bilinear resize returns its input: skip the pass
            return x
        return F.interpolate(x, self.original_size, mode="bilinear", align_corners=False)

    def logits_at(self, logits: torch.Tensor, coords: np.ndarray) -> torch.Tensor:
        """(B, K, l, l) low-res logits in the padded frame, read at ``coords`` (N, 2) ``(x, y)``
        original pixels (the pixel ``(floor(y), floor(x))``) -> (B, K, N): the values
        :meth:`upscale_logits` gives at those pixels, without upscaling to the whole image.

        Reading the low-res map at the nearest cell instead disagrees with the mask the user sees
        next to a sharp edge (the correction clicks lie on edges)."""
        h, w = self.input_size
        oh, ow = self.original_size
        x = F.interpolate(logits, [self.target, self.target], mode="bilinear", align_corners=False)[..., :h, :w]
        c = np.asarray(coords, np.float64).reshape(-1, 2)
        col = np.clip(np.floor(c[:, 0]), 0, ow - 1)
        row = np.clip(np.floor(c[:, 1]), 0, oh - 1)
        # the second bilinear step (crop -> original size) at the pixel centres only; border
        # padding is F.interpolate's clamping of the source index
        grid = np.stack([(col + 0.5) / ow * 2 - 1, (row + 0.5) / oh * 2 - 1], axis=-1)
        g = torch.as_tensor(grid, dtype=x.dtype, device=x.device)[None, None].expand(x.shape[0], 1, -1, 2)
        return F.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]


#: how the SAM Segmenters bring mask logits to the image size on a CPU (on a GPU: PyTorch's, on the device)
MASK_RESIZES = ("opencv", "torch")


def check_mask_resize(value: str) -> str:
    """A ``mask_resize=`` option, checked: ``"opencv"`` (:class:`MaskUpscaler`) or ``"torch"``."""
    if value not in MASK_RESIZES:
        raise ConfigError(f"unknown mask_resize {value!r}; choose one of {list(MASK_RESIZES)}")
    return value


class MaskUpscaler:
    """Low-res mask logits -> bool masks at the original size, on the CPU, with OpenCV's resize.

    The same two bilinear steps as :meth:`LongestSide.upscale_logits` (to the padded square, crop,
    to the original size; half-pixel centres as ``F.interpolate(..., align_corners=False)``, edges
    clamped, no antialiasing), each by ``cv2.resize(..., INTER_LINEAR)``, then ``> threshold``
    straight into the caller's array. The two resizes round differently in the last bit, so a
    pixel whose logit is within rounding of the threshold can differ: 66 of 36 million pixels for
    a 2000 x 1500 image, none at 1024 x 1024 (tests/test_mask_upscaler.py). It is several times faster
    than PyTorch's bilinear kernel here (3 masks of 1024 x 1024: 0.85 against 5.5-8.0 ms,
    ``benchmarks/sam_decoder_paths.py --resize``) and keeps one reused float buffer per step
    instead of a full (K, target, target) tensor.
    """

    def __init__(self, tf: LongestSide | None = None, *, size: tuple[int, int] | None = None) -> None:
        """``MaskUpscaler(tf)``: SAM's two steps for ``tf``; ``MaskUpscaler(size=(H, W))``: one
        bilinear resize straight to (H, W), as SAM 2's ``F.interpolate(low, (H, W))``."""
        if (tf is None) == (size is None):
            raise ValueError("MaskUpscaler needs exactly one of tf= (SAM's two steps) or size= (one resize)")
        if tf is not None:
            self._first: tuple[int, int] = (tf.target, tf.target)
            self._crop: tuple[int, int] | None = tf.input_size
            final = tuple(tf.original_size)
            self._final_size: tuple[int, int] | None = None if tf.input_size == final else final
        else:
            self._first, self._crop, self._final_size = (int(size[0]), int(size[1])), None, None
        self._buf_first = np.empty(self._first, np.float32)
        self._buf_final = None if self._final_size is None else np.empty(self._final_size, np.float32)

    def __call__(self, logits: np.ndarray, threshold: float, out: np.ndarray) -> np.ndarray:
        """logits float32 (K, l, l) -> ``out`` bool (K, H, W) = upscaled > threshold."""
        import cv2  # noqa: PLC0415  (a heavy import, needed only here)

        fh, fw = self._first
        for k in range(logits.shape[0]):
            cv2.resize(np.ascontiguousarray(logits[k], np.float32), (fw, fh), dst=self._buf_first, interpolation=cv2.INTER_LINEAR)
            x = self._buf_first if self._crop is None else self._buf_first[: self._crop[0], : self._crop[1]]
            if self._final_size is not None:
                oh, ow = self._final_size
                x = cv2.resize(x, (ow, oh), dst=self._buf_final, interpolation=cv2.INTER_LINEAR)
            np.greater(x, threshold, out=out[k])
        return out
