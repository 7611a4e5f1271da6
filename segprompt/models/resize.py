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
