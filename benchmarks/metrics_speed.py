#!/usr/bin/env python
"""Binary metrics speed: segprompt.metrics.binary_scores vs MONAI's metrics, same masks, same process.

``binary_scores`` computes Dice, IoU, boundary F and HD95 in one pass over shared distance maps;
the reference computes Dice (``monai.metrics.DiceMetric``) and HD95
(``monai.metrics.compute_hausdorff_distance(percentile=95)``). The Dice and HD95 values are
checked to agree before any time is printed.

    python benchmarks/metrics_speed.py --size 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def masks(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    c, r = size / 2, 0.3 * size
    a = (yy - c) ** 2 + (xx - c + 0.02 * size) ** 2 < r**2
    b = (yy - c - 0.02 * size) ** 2 / 1.2 + (xx - c) ** 2 < (0.29 * size) ** 2
    return a, b


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    from segprompt import metrics as M

    a, b = masks(args.size)
    pa, pb = torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float()

    def ours() -> dict:
        return M.binary_scores(a, b)

    def reference() -> tuple[float, float]:
        dice = DiceMetric(include_background=True, reduction="mean")(pa, pb).item()
        hd95 = compute_hausdorff_distance(pa, pb, include_background=True, percentile=95).item()
        return dice, hd95

    s, (d_ref, h_ref) = ours(), reference()  # warm-up and agreement
    assert abs(s["dice"] - d_ref) < 1e-6, (s["dice"], d_ref)
    assert abs(s["hd95"] - h_ref) < 1.0, (s["hd95"], h_ref)
    t_ours, t_ref = best_of(ours, args.repeats), best_of(reference, args.repeats)
    print(f"masks {args.size}x{args.size}, best of {args.repeats}")
    print(f"segprompt binary_scores (dice, iou, boundary F, hd95): {t_ours * 1e3:8.1f} ms")
    print(f"MONAI DiceMetric + hd95:                              {t_ref * 1e3:8.1f} ms")
    print(f"ratio reference / ours: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
