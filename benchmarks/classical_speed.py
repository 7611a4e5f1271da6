#!/usr/bin/env python
"""GrabCut speed and accuracy on real images: the previous settings against the current ones.

Runs :class:`~segprompt.models.classical.ClassicalSegmenter` (GrabCut) from a centre point (the
mask pixel farthest from the mask's border) and from the mask's bounding box on the first
``--images`` images with a non-empty mask of each dataset (Kvasir-SEG, BUSI, PH2 by default),
once with the settings that reproduce the segmenter before the speed work (``crop_margin=None``:
cut the whole frame; ``converge_tol=None``: always all iterations, collapse judged at the end)
and once with the current defaults. Both run in this process, image by image and in alternating
order, so that the machine's load weighs on both alike; the time is the wall time of
``segment`` per prompt set (the image is encoded outside it). Both share the rest of today's code
(the vectorised colour-model posterior, for one), so the ratio is that of the settings alone.

    SEGPROMPT_DATA_ROOT=/path/to/data python benchmarks/classical_speed.py
    python benchmarks/classical_speed.py --root /path/to/data --images 20
    python benchmarks/classical_speed.py --set crop_margin=0.15 --set converge_tol=0.005  # other "new" settings

The data root holds one folder per dataset (``kvasir_seg``, ``busi``, ``ph2``) with ``images/``
and ``masks/``. Prints one row per dataset and prompt: seconds per prompt set (old, new, the
ratio old / new) and mean IoU (old, new, new - old), then the same over all datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

DATASETS = ("kvasir_seg", "busi", "ph2")
#: the settings that reproduce the segmenter as it was before the speed work
OLD = {"crop_margin": None, "converge_tol": None}


def centre_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask pixel farthest from the mask's border."""
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return float(x), float(y)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("SEGPROMPT_DATA_ROOT"), help="data root (default: $SEGPROMPT_DATA_ROOT)")
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated dataset folders under the root")
    ap.add_argument("--images", type=int, default=20, help="images per dataset (the first ones with a non-empty mask)")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="a ClassicalSegmenter setting for the new run (JSON value; null for None); repeatable")
    args = ap.parse_args()
    if not args.root:
        sys.exit("give the data root with --root or $SEGPROMPT_DATA_ROOT")

    from segprompt.data.registry import load_dataset
    from segprompt.models.classical import ClassicalSegmenter
    from segprompt.prompts import Box, Points, PromptSet

    new_kw = {}
    for item in args.settings:
        key, _, value = item.partition("=")
        new_kw[key] = parse_value(value)
    runs = {"old": ClassicalSegmenter(method="grabcut", **OLD), "new": ClassicalSegmenter(method="grabcut", **new_kw)}
    print("old:", {k: runs["old"].describe()[k] for k in ("max_side", "iterations", "smooth", "crop_margin", "converge_tol")})
    print("new:", {k: runs["new"].describe()[k] for k in ("max_side", "iterations", "smooth", "crop_margin", "converge_tol")})

    # results[dataset][prompt][run] = (seconds list, iou list)
    results: dict[str, dict[str, dict[str, tuple[list[float], list[float]]]]] = {}
    for name in [d for d in args.datasets.split(",") if d]:
        ds = load_dataset(name, root=Path(args.root) / name)
        res = results.setdefault(name, {p: {r: ([], []) for r in runs} for p in ("point", "box")})
        used = 0
        for idx in range(len(ds)):
            if used >= args.images:
                break
            sample = ds[idx]
            gt = np.asarray(sample.mask, bool)
            if not gt.any():
                continue
            used += 1
            prompts = {"point": PromptSet(points=Points.positive(centre_point(gt))), "box": PromptSet(box=Box.from_mask(gt))}
            order = list(runs) if used % 2 else list(runs)[::-1]
            for run in order:
                seg = runs[run]
                state = seg.encode(sample.image)
                for kind, ps in prompts.items():
                    t = time.perf_counter()
                    pred = seg.segment(state, ps)
                    res[kind][run][0].append(time.perf_counter() - t)
                    res[kind][run][1].append(iou(pred.masks[0, 0], gt))
        print(f"{name}: {used} images", flush=True)

    head = f"{'dataset':<11} {'prompt':<6} {'n':>3} {'old s/set':>9} {'new s/set':>9} {'speedup':>7} {'old IoU':>7} {'new IoU':>7} {'dIoU':>7}"
    print()
    print(head)
    print("-" * len(head))

    def row(label: str, kind: str, old: tuple[list[float], list[float]], new: tuple[list[float], list[float]]) -> None:
        to, tn = float(np.mean(old[0])), float(np.mean(new[0]))
        io, inn = float(np.mean(old[1])), float(np.mean(new[1]))
        print(f"{label:<11} {kind:<6} {len(old[0]):>3} {to:>9.3f} {tn:>9.3f} {to / tn:>6.2f}x {io:>7.4f} {inn:>7.4f} {inn - io:>+7.4f}")

    for name, res in results.items():
        for kind in ("point", "box"):
            row(name, kind, res[kind]["old"], res[kind]["new"])
    for kind in ("point", "box"):
        old = ([t for r in results.values() for t in r[kind]["old"][0]], [v for r in results.values() for v in r[kind]["old"][1]])
        new = ([t for r in results.values() for t in r[kind]["new"][0]], [v for r in results.values() for v in r[kind]["new"][1]])
        row("all", kind, old, new)


if __name__ == "__main__":
    main()
