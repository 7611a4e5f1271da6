#!/usr/bin/env python
"""Finetuning steps per second with the frozen image encoder read from the embedding cache vs
run on every step, in one process, same model, data, prompts and batch.

    python benchmarks/finetune_speed.py                    # sam-tiny on CPU
    python benchmarks/finetune_speed.py --checkpoint sam_vit_b --device cuda --images 16 --steps 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam-tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", default="mixed", help="training prompts: a strategy, iterative, box-jitter or mixed")
    ap.add_argument("--arch", default=None, choices=[None, "vit_b", "vit_l", "vit_h"], help="random-weight official architecture instead of --model")
    args = ap.parse_args()

    from pointprompt.finetune import FinetuneConfig, SamTrainStep, _load_model, _prepare_model, to_frame
    from segprompt.data.synthetic import SyntheticLesions
    from segprompt.engine.training import param_groups

    cfg = FinetuneConfig(model=None if args.checkpoint else args.model, checkpoint=args.checkpoint, train=["mask_decoder"], prompts=args.prompts, iterations=3, device=args.device)  # 3 forward passes (micro-sam counting), the old 2 corrections
    if args.arch:
        from segprompt.models.sam import SamSegmenter
        from segprompt.models.sam_arch import OFFICIAL_ARCHS

        torch.manual_seed(0)
        seg = SamSegmenter(model=OFFICIAL_ARCHS[args.arch].build(), device=args.device)
    else:
        seg = _load_model(cfg)
    _prepare_model(seg, cfg)
    seg.model.to(args.device)
    samples = list(SyntheticLesions(n=args.images, seed=5, size=args.size))
    frames = [to_frame(s, i, seg.arch.img_size, seg.arch.lowres_size) for i, s in enumerate(samples)]
    t0 = time.perf_counter()
    emb = {fs.id: seg.encode(fs.original.image).features["embeddings"] for fs in frames}
    t_encode = time.perf_counter() - t0

    def run(embeddings) -> float:
        torch.manual_seed(0)
        step = SamTrainStep(seg.model, cfg, embeddings)
        opt = torch.optim.AdamW(param_groups(seg.model, 0.01), lr=1e-5)
        rng = np.random.default_rng(0)
        step(frames[: args.batch_size], 0)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for k in range(args.steps):
            batch = [frames[i] for i in rng.choice(len(frames), args.batch_size, replace=False)]
            loss, _ = step(batch, k)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return args.steps / (time.perf_counter() - t)

    with_cache = run(emb)
    without = run(None)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch or args.checkpoint or args.model} on {device}; mask decoder trained, batch {args.batch_size}, {args.prompts} prompts, images {args.size}px")
    print(f"encoder run every step (no cache): {without:7.2f} steps/s")
    print(f"embeddings from the cache:         {with_cache:7.2f} steps/s   (one-off encoding of {args.images} images: {t_encode:.1f} s)")
    print(f"speed-up: {with_cache / without:.1f}x")


if __name__ == "__main__":
    main()
