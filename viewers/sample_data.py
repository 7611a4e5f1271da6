"""Sample data contributions: synthetic images to try the plugin at once (no download).

They come from :class:`segprompt.data.synthetic.SyntheticLesions` (seeded, deterministic):
demo data, not medical data. The 2-D sample is named by its dataset id (``lesion_0_00000``),
so trajectories recorded on it carry that ``image_id``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def synthetic_lesion(seed: int = 0, style: str = "endoscopy", size: int = 256) -> list[tuple[Any, dict[str, Any], str]]:
    """One synthetic lesion image (RGB uint8) and, hidden, its ground-truth mask."""
    from segprompt.data.synthetic import SyntheticLesions

    sample = SyntheticLesions(n=1, seed=seed, size=size, style=style)[0]
    return [
        (sample.image, {"name": sample.id, "rgb": True}, "image"),
        (sample.mask.astype(np.uint8), {"name": f"{sample.id} ground truth", "visible": False, "opacity": 0.4}, "labels"),
    ]


def synthetic_ultrasound_stack(n_slices: int = 6, seed: int = 1, size: int = 192) -> list[tuple[Any, dict[str, Any], str]]:
    """A 3-D stack of grey 16-bit ultrasound-like slices (segmented slice by slice)."""
    from segprompt.data.synthetic import SyntheticLesions

    ds = SyntheticLesions(n=n_slices, seed=seed, size=size, style="ultrasound")
    stack = np.stack([ds[i].image[..., 0].astype(np.uint16) * 200 for i in range(n_slices)])
    return [(stack, {"name": f"synthetic ultrasound stack {seed}"}, "image")]


__all__ = ["synthetic_lesion", "synthetic_ultrasound_stack"]
