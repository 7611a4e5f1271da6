#!/usr/bin/env python
"""Prompt-decoding throughput of the universal model: N prompt sets in one ``segment`` call
against one call per prompt set, with sam-tiny beside it for comparison.

For each model the images are encoded once (not timed); then, for every N in ``--sets``, the
first N prompt sets of each image (clicks inside the object, the last click of a set negative,
outside it) are decoded both ways in this process, one right after the other, in alternating
order, ``--repeats`` times; the best time of each is kept. Prints prompts decoded per second each
way and their ratio (one call / one call per set); at N = 1 the ratio is ~1 by construction.

    python benchmarks/universal_speed.py                                 # universal-tiny (or a random model) and sam-tiny
    python benchmarks/universal_speed.py --checkpoint run/universal.safetensors --out speed.json
    python benchmarks/universal_speed.py --quick                         # a smoke test (seconds)

On the CPU the default is one torch thread: the small matrices of these models decode several
times slower on two threads when other processes share the cores (a measured 10x on a loaded
2-core machine), which would drown the ratio; ``--threads 0`` uses torch's default.

The universal model is ``--checkpoint`` when given, else the bundled ``universal-tiny`` when its
weights are installed, else a universal model of the default :class:`UniversalConfig` sizes with
random weights on sam-tiny's encoder (the output says which; decoding cost does not depend on
the weights' values). The masks are not compared: the two ways run the same code on the same
rows (the universal segmenter decodes up to ``max_rows`` = 32 sets per decoder call).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def universal(checkpoint: str | None, device: str, multimask: str):
    """(segmenter, what its weights are)."""
    from segprompt.errors import WeightsError
    from segprompt.models import create_segmenter

    if checkpoint:
        return create_segmenter("universal", checkpoint=checkpoint, device=device, multimask=multimask), f"checkpoint {checkpoint}"
    try:
        return create_segmenter("universal-tiny", device=device, multimask=multimask), "bundled universal-tiny weights"
    except WeightsError:
        pass
    from segprompt.data.scenes import OBJECT_CLASSES
    from segprompt.models.universal import UniversalSegmenter
    from segprompt.universal.config import UniversalConfig
    from segprompt.universal.model import UniversalModel

    torch.manual_seed(0)
    model = UniversalModel(UniversalConfig(backbone="sam-tiny", words=tuple(OBJECT_CLASSES)))
    note = "RANDOM weights (universal-tiny is not installed): default UniversalConfig sizes on sam-tiny's encoder"
    return UniversalSegmenter(model=model, device=device, multimask=multimask), note


def prompt_pool(samples, n_sets: int, points: int, seed: int):
    """``n_sets`` click sets per image: ``points - 1`` positives inside the mask, one negative outside."""
    from segprompt.prompts import Points, PromptSet

    rng = np.random.default_rng(seed)
    pool = []
    for s in samples:
        ys, xs = np.nonzero(s.mask)
        by, bx = np.nonzero(~s.mask)
        sets = []
        for _ in range(n_sets):
            pos = rng.integers(0, len(xs), max(1, points - 1))
            coords = [np.stack([xs[pos], ys[pos]], 1)]
            labels = [np.ones(len(pos), int)]
            if points > 1:
                neg = rng.integers(0, len(bx), 1)
                coords.append(np.stack([bx[neg], by[neg]], 1))
                labels.append(np.zeros(1, int))
            sets.append(PromptSet(points=Points(np.concatenate(coords).astype(np.float32), np.concatenate(labels))))
        pool.append(sets)
    return pool


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(seg, states, pool, n: int, repeats: int, device: str) -> tuple[float, float]:
    """Best seconds over ``repeats`` for all images' first ``n`` sets: (one call per image, one call
    per set), after one untimed call of each."""

    def batched() -> None:
        for st, sets in zip(states, pool):
            seg.segment(st, sets[:n])

    def per_set() -> None:
        for st, sets in zip(states, pool):
            for s in sets[:n]:
                seg.segment(st, s)

    seg.segment(states[0], pool[0][:n])  # warm-up of this N's shapes, untimed
    seg.segment(states[0], pool[0][0])
    best = {"batched": float("inf"), "per_set": float("inf")}
    for r in range(repeats):
        order = [("batched", batched), ("per_set", per_set)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best["batched"], best["per_set"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="a universal .safetensors (default: universal-tiny, else random weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="image side (pixels)")
    ap.add_argument("--sets", default="1,8,32", help="comma-separated N: prompt sets per image")
    ap.add_argument("--points", type=int, default=3, help="clicks per set (the last one negative)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--multimask", default="all", help="multimask policy of both models (all: the 3 candidates)")
    ap.add_argument("--no-sam", action="store_true", help="leave sam-tiny out")
    ap.add_argument("--quick", action="store_true", help="1 image, 1 repeat (a smoke test, not a measurement)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on the CPU, see above; 0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON to this file")
    args = ap.parse_args()
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.repeats = 1, 1
    sizes = [int(v) for v in args.sets.split(",") if v.strip()]

    from segprompt.data.synthetic import SyntheticLesions
    from segprompt.models import create_segmenter

    samples = list(SyntheticLesions(n=args.images, seed=123, size=args.size))
    pool = prompt_pool(samples, max(sizes), args.points, args.seed)
    models = [("universal", *universal(args.checkpoint, args.device, args.multimask))]
    if not args.no_sam:
        models.append(("sam-tiny", create_segmenter("sam-tiny", device=args.device, multimask=args.multimask), "bundled sam-tiny weights"))

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{device_name}; {args.images} image(s) {args.size} x {args.size}; sets of {args.points} clicks; multimask {args.multimask}; "
          f"best of {args.repeats}{' (--quick: a smoke test, not a measurement)' if args.quick else ''}")
    result = {"device": device_name, "images": args.images, "size": args.size, "points": args.points, "multimask": args.multimask,
              "repeats": args.repeats, "quick": args.quick, "models": {}}
    rows = []
    for label, seg, weights in models:
        print(f"{label}: {weights}")
        states = [seg.encode(s.image) for s in samples]
        entries = []
        for n in sizes:
            t_batched, t_per_set = measure(seg, states, pool, n, args.repeats, args.device)
            total = n * len(samples)
            entry = {"n": n, "batched_prompts_per_s": total / t_batched, "per_set_prompts_per_s": total / t_per_set, "ratio": t_per_set / t_batched}
            entries.append(entry)
            rows.append((label, entry))
        result["models"][label] = {"weights": weights, "rows": entries}

    head = f"{'model':<10} {'N':>4} {'one call: prompts/s':>20} {'one call per set: prompts/s':>28} {'ratio':>7}"
    print()
    print(head)
    print("-" * len(head))
    for label, e in rows:
        print(f"{label:<10} {e['n']:>4} {e['batched_prompts_per_s']:>20.1f} {e['per_set_prompts_per_s']:>28.1f} {e['ratio']:>6.2f}x")
    if len(models) > 1:
        print()
        for e_u, e_s in zip(result["models"]["universal"]["rows"], result["models"]["sam-tiny"]["rows"]):
            print(f"N = {e_u['n']:>2}: universal / sam-tiny prompts/s in one call: {e_u['batched_prompts_per_s'] / e_s['batched_prompts_per_s']:.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
