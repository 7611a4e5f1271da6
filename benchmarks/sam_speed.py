#!/usr/bin/env python
"""Image-encoder throughput: segment-anything's ``SamPredictor.set_image`` vs the ``sam`` Segmenter's ``encode``.

Both run in this process on the same random weights (two copies of one model): the reference
keeps segment-anything's attention, ours uses ``attention="sdpa"`` (:mod:`segprompt.models.sam_fast`).
The input is a square image of the model's size (1024 for vit_b), so both see identical pixels;
the largest relative difference of the two embeddings is printed next to the speeds.

    OMP_NUM_THREADS=2 python benchmarks/sam_speed.py --quick          # vit_b on CPU, 1 timed image each
    python benchmarks/sam_speed.py --device cuda --precision bf16 --images 8

With ``--precision bf16`` / ``fp16`` the reference runs ``set_image`` under ``torch.autocast`` of
that dtype, ours with ``precision=`` of the same name. The GPU variant is written but not yet run.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--images", type=int, default=3, help="timed images per path (after one warm-up each)")
    ap.add_argument("--quick", action="store_true", help="one timed image per path")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the numbers to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 1 if args.quick else args.images

    from segment_anything import SamPredictor

    from segprompt.models.sam import SamSegmenter
    from segprompt.models.sam_arch import OFFICIAL_ARCHS
    from segprompt.models.sam_fast import attention_mode

    torch.manual_seed(0)
    ref_model = OFFICIAL_ARCHS[args.arch].build().to(args.device).eval()
    ours = SamSegmenter(model=copy.deepcopy(ref_model), device=args.device, precision=args.precision, attention="sdpa")
    predictor = SamPredictor(ref_model)
    assert attention_mode(ref_model) == "reference" and attention_mode(ours.model) == "sdpa"
    size = ours.arch.img_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n + 1)]

    def ref_encode(image: np.ndarray) -> torch.Tensor:
        if args.precision == "fp32":
            predictor.set_image(image)
        else:
            dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
            with torch.autocast(device_type=torch.device(args.device).type, dtype=dtype):
                predictor.set_image(image)
        return predictor.features.float()

    def our_encode(image: np.ndarray) -> torch.Tensor:
        return ours.encode(image).features["embeddings"]

    results = {}
    errors = []
    for name, fn in (("reference", ref_encode), ("ours", our_encode)):
        fn(images[0])  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        outs = [fn(im) for im in images[1:]]
        sync(args.device)
        results[name] = (time.perf_counter() - t0, outs)
    for a, b in zip(results["ours"][1], results["reference"][1]):
        errors.append(float((a - b).abs().max() / b.abs().max()))
    t_ref, t_ours = results["reference"][0], results["ours"][0]
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model {args.arch} (random weights) at {size} px on {dev}, {args.precision}, {n} timed image(s) per path")
    print(f"segment-anything SamPredictor.set_image:  {t_ref / n:8.3f} s/image  {n / t_ref:8.3f} images/s")
    print(f"segprompt sam encode (attention=sdpa):    {t_ours / n:8.3f} s/image  {n / t_ours:8.3f} images/s")
    print(f"speed-up: {t_ref / t_ours:.2f}x   max relative error of the embeddings: {max(errors):.2e}")
    if args.json:
        record = dict(
            arch=args.arch, device=dev, precision=args.precision, images=n, img_size=size,
            reference_images_per_s=n / t_ref, ours_images_per_s=n / t_ours, ratio=t_ref / t_ours,
            max_relative_error=max(errors),
        )
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
