#!/usr/bin/env python
"""SAM 2 ``segment`` speed by prompt sets per decoder call (``max_batch``): the numbers behind
``Sam2Segmenter``'s default (``CPU_MAX_BATCH`` on a CPU).

SAM 2's image decoder copies the image features for every prompt set of a call. One random
model runs the same ``segment`` call (``--sets`` three-point sets, the last point negative, all
three masks) at each ``--batches`` value, ``--rounds`` times, alternating; the fastest round of
each is printed with the share of mask pixels equal to the first batch size's.

    OMP_NUM_THREADS=2 python benchmarks/sam2_batch.py                      # sam2.1-hiera-t, 1024 px
    OMP_NUM_THREADS=2 python benchmarks/sam2_batch.py --arch tiny --sets 8  # a smoke test
    OMP_NUM_THREADS=2 python benchmarks/sam2_batch.py --batches 1 --mask-resize torch   # PyTorch's mask resize
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    from segprompt.models.sam2 import Sam2Segmenter
    from segprompt.models.sam2_build import build_sam2_model, get_arch, tiny_arch, tiny_sam2
    from segprompt.prompts import Points, PromptSet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sam2.1-hiera-t", help="a SAM 2 architecture name (random weights), or 'tiny'")
    ap.add_argument("--sets", type=int, default=32)
    ap.add_argument("--batches", default="1,4,8,16,64", help="comma-separated max_batch values")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mask-resize", default="opencv", choices=["opencv", "torch"], help="Sam2Segmenter's mask_resize")
    args = ap.parse_args()

    torch.manual_seed(0)
    if args.arch == "tiny":
        arch, model = tiny_arch(), tiny_sam2()
    else:
        arch = get_arch(args.arch)
        model = build_sam2_model(arch)
    batches = [int(b) for b in args.batches.split(",") if b]
    seg = Sam2Segmenter(model=model, arch=arch, multimask="all", mask_resize=args.mask_resize)
    size = 1024
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    prompts = [PromptSet(points=Points(rng.uniform(0, size - 1, (3, 2)), [1, 1, 0])) for _ in range(args.sets)]
    seconds: dict[int, list[float]] = {b: [] for b in batches}
    masks: dict[int, np.ndarray] = {}
    with torch.inference_mode():
        state = seg.encode(image)
        seg.segment(state, prompts[:2])  # warm-up
        for _ in range(args.rounds):
            for b in batches:
                seg.max_batch = b
                t0 = time.perf_counter()
                masks[b] = seg.segment(state, prompts).masks
                seconds[b].append(time.perf_counter() - t0)
    print(f"{args.arch}, CPU ({torch.get_num_threads()} threads), {args.sets} three-point sets, fastest of {args.rounds} rounds, mask_resize={args.mask_resize}")
    print("| sets per call | ms per set | mask pixels equal to the first row's |")
    print("|---|---|---|")
    for b in batches:
        equal = float((masks[b] == masks[batches[0]]).mean())
        print(f"| {b} | {1000 * min(seconds[b]) / args.sets:.1f} | {equal:.5f} |")


if __name__ == "__main__":
    main()
