#!/usr/bin/env python
"""Prompt-decoding throughput: segprompt's batched ``segment`` vs segment-anything's SamPredictor.

Both run the same model on the same images and prompt sets in this process:

* reference: ``SamPredictor.set_image`` once per image, then one ``predict`` per prompt set;
* ours: ``encode`` once per image, then one ``segment`` call for all of the image's prompt sets.

The masks are checked to agree (>= 99.9% of pixels) before any number is printed.

    python benchmarks/sam_decode_speed.py                       # sam-tiny on CPU
    python benchmarks/sam_decode_speed.py --arch vit_b --device cuda --images 8 --sets 256
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def build(arch: str, device: str):
    from segprompt.models import create_segmenter
    from segprompt.models.sam import SamSegmenter
    from segprompt.models.sam_arch import OFFICIAL_ARCHS

    if arch == "sam-tiny":
        seg = create_segmenter("sam-tiny", device=device, multimask="all")
    else:
        torch.manual_seed(0)
        seg = SamSegmenter(model=OFFICIAL_ARCHS[arch].build(), device=device, multimask="all")
    return seg


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sam-tiny", choices=["sam-tiny", "vit_b", "vit_l", "vit_h"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--sets", type=int, default=64, help="prompt sets per image")
    ap.add_argument("--points", type=int, default=3, help="points per set (last one negative)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from segment_anything import SamPredictor

    from segprompt.data.synthetic import SyntheticLesions
    from segprompt.prompts import Points, PromptSet

    seg = build(args.arch, args.device)
    predictor = SamPredictor(seg.model)
    samples = list(SyntheticLesions(n=args.images, seed=123, size=(300, 400)))
    rng = np.random.default_rng(0)
    prompt_sets = []
    for s in samples:
        ys, xs = np.nonzero(s.mask)
        sets = []
        for _ in range(args.sets):
            idx = rng.integers(0, len(xs), args.points - 1)
            pos = np.stack([xs[idx], ys[idx]], 1)
            neg = rng.uniform([0, 0], [s.image.shape[1] - 1, s.image.shape[0] - 1], (1, 2))
            sets.append((np.concatenate([pos, neg]).astype(np.float32), np.array([1] * (args.points - 1) + [0])))
        prompt_sets.append(sets)

    # warm-up both paths once
    st = seg.encode(samples[0].image)
    seg.segment(st, [PromptSet(points=Points(*prompt_sets[0][0]))])
    predictor.set_image(samples[0].image)
    predictor.predict(point_coords=prompt_sets[0][0][0], point_labels=prompt_sets[0][0][1], multimask_output=True)

    sync(args.device)
    t0 = time.perf_counter()
    ref_masks = []
    for s, sets in zip(samples, prompt_sets):
        predictor.set_image(s.image)
        ref_masks.append([predictor.predict(point_coords=c, point_labels=l, multimask_output=True)[0] for c, l in sets])
    sync(args.device)
    t_ref = time.perf_counter() - t0

    t0 = time.perf_counter()
    ours = []
    for s, sets in zip(samples, prompt_sets):
        state = seg.encode(s.image)
        ours.append(seg.segment(state, [PromptSet(points=Points(c, l)) for c, l in sets]).masks)
    sync(args.device)
    t_ours = time.perf_counter() - t0

    agree = min(float((ours[i][j] == ref_masks[i][j]).mean()) for i in range(len(samples)) for j in range(args.sets))
    assert agree >= 0.999, f"outputs disagree: {agree:.5f}"
    n = args.images * args.sets
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model {args.arch} on {device_name}; {args.images} images x {args.sets} prompt sets of {args.points} points, multimask")
    print(f"reference SamPredictor (set_image + one predict per set): {t_ref:8.2f} s  {n / t_ref:9.1f} prompts/s")
    print(f"segprompt (encode + one batched segment per image):     {t_ours:8.2f} s  {n / t_ours:9.1f} prompts/s")
    print(f"speed-up: {t_ref / t_ours:.2f}x   (min mask agreement {agree:.5f})")


if __name__ == "__main__":
    main()
