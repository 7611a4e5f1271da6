#!/usr/bin/env python
"""GPU finetuning throughput for a lent GPU: SAM vit_b at 1024 px, random weights, bf16.

Two settings, same data and prompts: (a) frozen image encoder, embeddings precomputed once
(the cache path), mask decoder trained; (b) LoRA in the image encoder's attention + mask
decoder trained (the encoder runs forward and backward every step). Prints images/s and the
peak GPU memory of each.

    python benchmarks/gpu_finetune.py --steps 20 --batch-size 4 > $OUT/gpu_finetune.txt
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this script needs a CUDA GPU")

    from pointprompt.finetune import FinetuneConfig, SamTrainStep, _prepare_model, to_frame
    from segprompt.data.synthetic import SyntheticLesions
    from segprompt.engine.training import param_groups
    from segprompt.models.sam import SamSegmenter
    from segprompt.models.sam_arch import OFFICIAL_ARCHS

    samples = list(SyntheticLesions(n=args.images, seed=5, size=1024))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]

    def setting(train: list[str], cached: bool) -> tuple[float, float]:
        torch.manual_seed(0)
        seg = SamSegmenter(model=OFFICIAL_ARCHS[args.arch].build(), device="cuda", precision=args.precision)
        cfg = FinetuneConfig(model="sam", train=train, prompts="mixed", iterations=3, device="cuda", precision=args.precision)
        _prepare_model(seg, cfg)
        seg.model.cuda()
        frames = [to_frame(s, i, seg.arch.img_size, seg.arch.lowres_size) for i, s in enumerate(samples)]
        emb = None
        if cached:
            emb = {fs.id: s.features["embeddings"] for fs, s in zip(frames, seg.encode_batch([f.original.image for f in frames]))}
        step = SamTrainStep(seg.model, cfg, emb)
        opt = torch.optim.AdamW(param_groups(seg.model, 0.01), lr=1e-5)
        rng = np.random.default_rng(0)
        torch.cuda.reset_peak_memory_stats()
        for k in range(args.steps + 2):
            if k == 2:
                torch.cuda.synchronize()
                t = time.perf_counter()
            batch = [frames[i] for i in rng.choice(len(frames), args.batch_size, replace=False)]
            with torch.autocast("cuda", dtype=dtype, enabled=args.precision != "fp32"):
                loss, _ = step(batch, k)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        ips = args.steps * args.batch_size / (time.perf_counter() - t)
        return ips, torch.cuda.max_memory_allocated() / 2**30

    print(f"SAM {args.arch} 1024 px, random weights, {args.precision}, batch {args.batch_size}, {torch.cuda.get_device_name()}")
    a = setting(["mask_decoder"], cached=True)
    print(f"frozen encoder, cached embeddings, decoder trained: {a[0]:8.1f} images/s, peak memory {a[1]:.2f} GiB")
    b = setting(["lora"], cached=False)
    print(f"LoRA encoder + decoder trained:                     {b[0]:8.1f} images/s, peak memory {b[1]:.2f} GiB")


if __name__ == "__main__":
    main()
