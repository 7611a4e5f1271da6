"""Prompt sets -> the tensors the universal decoder reads (:class:`PromptTensors`).

How each prompt kind becomes tokens (all coordinates through one
:class:`~segprompt.models.resize.LongestSide`, so tokens land on the pixels prompted):

* points: one token per click, at the click, polarity = its label;
* box: the two corners plus positions spread inside the box (SEEM turns a box into its region);
* scribble: positions spread along the rasterised stroke, polarity = its label;
* mask (``kind="binary"``): positions spread inside the mask;
* mask (``kind="logits"``, what ``Prediction.logits`` returned last round): the **memory**
  prompt, no tokens; its region (logits > 0) masks the memory tokens' cross-attention;
* text: the text encoder's tokens (added by the model, not here);
* reference: positions inside the reference mask, sampled on the reference image's features by
  the model (they carry no position encoding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segprompt.models.resize import LongestSide
from segprompt.prompts import PromptSet, Reference
from segprompt.universal.sampler import KIND_INDEX, region_positions

__all__ = ["PromptTensors", "RegionToken", "prompt_tensors", "set_tokens"]


@dataclass
class RegionToken:
    """Tokens of one prompt set before padding: ``coords`` (n, 2) model-input pixels, ``kinds`` / ``polarity`` (n,)."""

    coords: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    polarity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, coords: np.ndarray, kind: str, polarity: int | np.ndarray) -> None:
        coords = np.asarray(coords, np.float32).reshape(-1, 2)
        self.coords = np.concatenate((self.coords, coords))
        self.kinds = np.concatenate((self.kinds, np.full(len(coords), KIND_INDEX[kind], np.int64)))
        pol = np.broadcast_to(np.asarray(polarity, np.int64), (len(coords),))
        self.polarity = np.concatenate((self.polarity, pol))


@dataclass
class PromptTensors:
    """The decoder's view of R prompt sets (one row each).

    Attributes:
        row_image: (R,) int64, the image of the batch each row prompts.
        coords: (R, T, 2) float32 ``(x, y)`` in [0, 1] of the padded model input.
        kinds, polarity: (R, T) int64.
        valid: (R, T) bool, False for padding.
        texts: R entries, a text or None.
        references: R entries, a :class:`Reference` or None.
        memory: (R, h, w) float32 region (0/1) of the previous round's mask at the mask-feature
            resolution, or None; ``has_memory`` (R,) bool says which rows have one.
        ref_image: (R,) int64 index, in the same feature batch, of the row's reference image
            (-1: none); ref_coords (R, T_ref, 2) in [0, 1] of that image's model input, inside
            the reference mask; ref_valid (R, T_ref) bool.
        box_region: (R, h, w) float32, the share of each mask-feature cell inside the row's box
            (0 where the row has none), or None when no row has a box.
    """

    row_image: torch.Tensor
    coords: torch.Tensor
    kinds: torch.Tensor
    polarity: torch.Tensor
    valid: torch.Tensor
    texts: list[str | None]
    references: list[Reference | None]
    memory: torch.Tensor | None = None
    has_memory: torch.Tensor | None = None
    ref_image: torch.Tensor | None = None
    ref_coords: torch.Tensor | None = None
    ref_valid: torch.Tensor | None = None
    box_region: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.row_image.shape[0])

    def to(self, device: torch.device | str) -> "PromptTensors":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PromptTensors(
            move(self.row_image), move(self.coords), move(self.kinds), move(self.polarity), move(self.valid),
            self.texts, self.references, move(self.memory), move(self.has_memory),
            move(self.ref_image), move(self.ref_coords), move(self.ref_valid), move(self.box_region),
        )


def set_tokens(s: PromptSet, tf: LongestSide, k: int, rng: np.random.Generator | None = None) -> RegionToken:
    """The visual tokens of one prompt set in model-input pixels (see the module docstring)."""
    out = RegionToken()
    if s.points is not None and len(s.points):
        out.add(tf.apply_coords(s.points.coords), "point", s.points.labels)
    h, w = tf.original_size
    if s.box is not None:
        x0, y0, x1, y1 = s.box.xyxy.astype(float)
        region = np.zeros((h, w), bool)
        region[int(np.floor(y0)) : max(int(np.ceil(y1)), int(np.floor(y0)) + 1), int(np.floor(x0)) : max(int(np.ceil(x1)), int(np.floor(x0)) + 1)] = True
        corners = np.array([[x0, y0], [x1, y1]], np.float32)
        out.add(tf.apply_coords(np.concatenate((corners, region_positions(region, k - 2, rng)))), "box", 1)
    for sc in s.scribbles:
        out.add(tf.apply_coords(region_positions(sc.rasterize((h, w)), k, rng)), "scribble", int(sc.label))
    if s.mask is not None and s.mask.kind == "binary":
        out.add(tf.apply_coords(region_positions(s.mask.data, k, rng)), "mask", 1)
    return out


def _memory(s: PromptSet, tf: LongestSide, lowres: int) -> np.ndarray | None:
    if s.mask is None or s.mask.kind != "logits":
        return None
    logits = torch.from_numpy(s.mask.data)[None, None]
    region = F.interpolate(logits, (lowres, lowres), mode="bilinear", align_corners=False)[0, 0] > 0
    return region.float().numpy()


def _box_region(s: PromptSet, tf: LongestSide, lowres: int) -> np.ndarray | None:
    """(lowres, lowres) float32: the share of each cell of the padded model frame inside the box."""
    if s.box is None:
        return None
    (x0, y0), (x1, y1) = tf.apply_coords(s.box.xyxy.astype(np.float64).reshape(2, 2)) * (lowres / tf.target)
    cells = np.arange(lowres, dtype=np.float64)

    def cover(lo: float, hi: float) -> np.ndarray:
        return np.clip(np.minimum(cells + 1, hi) - np.maximum(cells, lo), 0.0, 1.0)

    return np.outer(cover(y0, y1), cover(x0, x1)).astype(np.float32)


def _stacked(maps: Sequence[np.ndarray | None], lowres: int) -> torch.Tensor | None:
    """(R, lowres, lowres) float32 of the rows' dense maps, zeros for rows without one; None
    when no row has one."""
    if all(m is None for m in maps):
        return None
    return torch.from_numpy(np.stack([m if m is not None else np.zeros((lowres, lowres), np.float32) for m in maps]))


def prompt_tensors(
    sets: Sequence[PromptSet],
    transforms: Sequence[LongestSide],
    row_image: Sequence[int],
    k: int,
    lowres: int,
    rng: np.random.Generator | None = None,
    ref_index: Sequence[int] | None = None,
    ref_transforms: Sequence[LongestSide | None] | None = None,
) -> PromptTensors:
    """Pack R prompt sets (row r prompts image ``row_image[r]`` whose geometry is ``transforms[r]``).

    ``k``: tokens per region prompt; ``lowres``: side of the mask features (memory regions);
    ``rng``: None for deterministic token positions (inference), a generator for training;
    ``ref_index`` / ``ref_transforms``: for rows whose set has a reference, the index of the
    reference image in the feature batch and its geometry (-1 / None elsewhere).
    """
    tokens = [set_tokens(s, tf, k, rng) for s, tf in zip(sets, transforms)]
    r = len(tokens)
    t = max([len(x.coords) for x in tokens] + [0])
    coords = np.zeros((r, t, 2), np.float32)
    kinds = np.zeros((r, t), np.int64)
    polarity = np.zeros((r, t), np.int64)
    valid = np.zeros((r, t), bool)
    for i, (tok, tf) in enumerate(zip(tokens, transforms)):
        n = len(tok.coords)
        coords[i, :n] = tok.coords / tf.target
        kinds[i, :n], polarity[i, :n], valid[i, :n] = tok.kinds, tok.polarity, True
    mems = [_memory(s, tf, lowres) for s, tf in zip(sets, transforms)]
    memory = _stacked(mems, lowres)
    has = torch.tensor([m is not None for m in mems]) if memory is not None else None
    box_region = _stacked([_box_region(s, tf, lowres) for s, tf in zip(sets, transforms)], lowres)
    ref_index = list(ref_index) if ref_index is not None else [-1] * r
    ref_pos = [
        tf_ref.apply_coords(region_positions(s.reference.mask, k, rng)) / tf_ref.target
        if s.reference is not None and tf_ref is not None and ref_index[i] >= 0 else np.zeros((0, 2))
        for i, (s, tf_ref) in enumerate(zip(sets, ref_transforms or [None] * r))
    ]
    tr = max([len(x) for x in ref_pos] + [0])
    ref_coords = np.zeros((r, tr, 2), np.float32)
    ref_valid = np.zeros((r, tr), bool)
    for i, pos in enumerate(ref_pos):
        ref_coords[i, : len(pos)], ref_valid[i, : len(pos)] = pos, True
    return PromptTensors(
        row_image=torch.as_tensor(list(row_image), dtype=torch.int64),
        coords=torch.from_numpy(np.clip(coords, 0.0, 1.0)),
        kinds=torch.from_numpy(kinds),
        polarity=torch.from_numpy(polarity),
        valid=torch.from_numpy(valid),
        texts=[s.text.text if s.text is not None else None for s in sets],
        references=[s.reference for s in sets],
        memory=memory,
        has_memory=has,
        ref_image=torch.as_tensor(ref_index, dtype=torch.int64),
        ref_coords=torch.from_numpy(np.clip(ref_coords, 0.0, 1.0)),
        ref_valid=torch.from_numpy(ref_valid),
        box_region=box_region,
    )


def model_input(images: Sequence[np.ndarray], img_size: int) -> tuple[torch.Tensor, list[LongestSide]]:
    """(H, W, 3) uint8 RGB images -> (B, 3, S, S) float32 0..255 (longest side resized to S,
    zero-padded bottom-right) and the geometry of each (one :class:`LongestSide`)."""
    tfs = [LongestSide(int(img_size), (int(im.shape[0]), int(im.shape[1]))) for im in images]
    x = torch.stack([tf.pad(torch.from_numpy(np.array(tf.apply_image(im))).permute(2, 0, 1).float()) for tf, im in zip(tfs, images)])
    return x, tfs
