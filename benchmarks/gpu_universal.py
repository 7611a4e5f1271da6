#!/usr/bin/env python
"""Universal-model training and inference throughput for a lent GPU: SAM ViT-B image features at
1024 px, random weights.

The model is a :class:`~segprompt.universal.model.UniversalModel` on ``create_pyramid("sam",
arch=<SamArch ViT-B>)`` (segment-anything's ViT-B encoder with random weights, frozen: only the
feature pyramid, the pixel decoder, the sampler, the text vocabulary and the decoder train), with
SEEM's decoder sizes (hidden 512, 9 layers, 101 object queries; ``--decoder tiny`` gives
:class:`UniversalConfig`'s defaults). Data: ``synthetic-objects`` scenes, resized by the model to
its 1024 px input as any image is. For each precision:

* **training step** (:class:`~segprompt.universal.train.UniversalStep`, what ``segprompt train
  universal`` runs): B images, R simulated prompt rows per image (plus the simulated second
  round), frozen-trunk forward, decoder forward and backward with deep supervision and Hungarian
  matching, AdamW step; seconds per step, images/s, peak GPU memory, and the share of the step
  spent in the frozen trunk's forward (measured alone on the same batch);
* **inference**: images/s through ``encode_images`` in batches of ``--encode-batch``; prompt sets
  decoded per second with ``--decode-sets`` click sets in one ``segment`` call (masks at full
  size, ``multimask="best"``), and the latency of one set per call.

    python benchmarks/gpu_universal.py                       # on the GPU, JSON to $OUT/gpu_universal.json
    python benchmarks/gpu_universal.py --batch-size 8 --rows 8 --precisions bf16 --out uni.json
    python benchmarks/gpu_universal.py --device cpu --quick  # smoke test: a tiny ViT at 256 px, 1 step

``--quick`` swaps in a tiny SAM encoder (``tiny_arch()``, 256 px), the small decoder and single
steps: it checks that the script runs, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

#: decoder sizes: SEEM's (ANCHORS.md section 5: hidden 512, 9 layers, 101 queries) and UniversalConfig's defaults
DECODERS = {
    "seem": {"hidden_dim": 512, "mask_dim": 512, "embed_dim": 512, "num_queries": 101, "dec_layers": 9, "num_heads": 8, "dim_feedforward": 2048},
    "tiny": {},
}


def build(arch: str, decoder: str, device: str, seed: int):
    """(UniversalModel with random weights, its config dict)."""
    from segprompt.data.scenes import OBJECT_CLASSES
    from segprompt.models.sam_arch import OFFICIAL_ARCHS, tiny_arch
    from segprompt.universal.config import UniversalConfig
    from segprompt.universal.model import UniversalModel

    sam_arch = tiny_arch() if arch == "tiny" else OFFICIAL_ARCHS[arch]
    cfg = UniversalConfig(backbone="sam", backbone_kwargs={"arch": json.loads(sam_arch.to_json())}, words=tuple(OBJECT_CLASSES), **DECODERS[decoder])
    torch.manual_seed(seed)
    return UniversalModel(cfg).to(device), cfg.to_dict()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def timed(fn, device: str, warmup: int, repeats: int) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / max(1, repeats)


def training(model, scenes, args, precision: str) -> dict:
    from segprompt.data.scenes import OBJECT_CLASSES
    from segprompt.engine.loop import autocast
    from segprompt.universal.prompting import model_input
    from segprompt.universal.train import UniversalStep, UniversalTrainConfig, param_groups

    tcfg = UniversalTrainConfig(rows_per_image=args.rows, device=args.device, precision=precision, batch_size=args.batch_size)
    model.train()
    step = UniversalStep(model, tcfg, OBJECT_CLASSES)
    opt = torch.optim.AdamW(param_groups(model, tcfg), lr=1e-5)
    counter = {"k": 0}

    def batch():
        k = counter["k"]
        counter["k"] += 1
        return [scenes[(k * args.batch_size + i) % len(scenes)] for i in range(args.batch_size)], np.random.default_rng([args.seed, k])

    def one_step() -> None:
        scenes_k, rng = batch()
        with autocast(precision, args.device):
            loss, _ = step(scenes_k, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    reset_peak(args.device)
    t_step = timed(one_step, args.device, args.warmup, args.steps)
    peak = peak_gib(args.device)

    pixels, tfs = model_input([s.image for s in scenes[: args.batch_size]], model.img_size)
    pixels = pixels.to(args.device)
    sizes = [tf.input_size for tf in tfs]

    def trunk() -> None:
        with torch.no_grad(), autocast(precision, args.device):
            model.pyramid.base_map(pixels, sizes)

    t_trunk = timed(trunk, args.device, 1, args.steps)
    return {
        "seconds_per_step": t_step, "images_per_s": args.batch_size / t_step, "rows_per_s": args.batch_size * args.rows / t_step,
        "trunk_forward_share": t_trunk / t_step, "peak_gib": peak,
    }


def inference(model, scenes, args, precision: str) -> dict:
    from segprompt.engine.loop import autocast
    from segprompt.models.universal import UniversalSegmenter
    from segprompt.prompts import Points, PromptSet
    from segprompt.universal.prompting import model_input

    model.eval()
    images = [scenes[i % len(scenes)].image for i in range(args.encode_batch)]
    pixels, tfs = model_input(images, model.img_size)
    pixels = pixels.to(args.device)
    sizes = [tf.input_size for tf in tfs]

    def encode() -> None:
        with torch.no_grad(), autocast(precision, args.device):
            model.encode_images(pixels, sizes)

    reset_peak(args.device)
    t_enc = timed(encode, args.device, args.warmup, args.steps)

    seg = UniversalSegmenter(model=model, device=args.device, precision=precision, multimask="best", max_rows=args.decode_sets)
    scene = scenes[0]
    state = seg.encode(scene.image)
    rng = np.random.default_rng(args.seed)
    sets = []
    for i in range(args.decode_sets):
        mask = scene.masks[i % len(scene.masks)]
        ys, xs = np.nonzero(mask)
        j = rng.integers(0, len(xs), 2)
        by, bx = np.nonzero(~mask)
        n = int(rng.integers(0, len(bx)))
        coords = np.array([[xs[j[0]], ys[j[0]]], [xs[j[1]], ys[j[1]]], [bx[n], by[n]]], np.float32)
        sets.append(PromptSet(points=Points(coords, np.array([1, 1, 0]))))
    t_dec = timed(lambda: seg.segment(state, sets), args.device, args.warmup, args.steps)
    t_one = timed(lambda: seg.segment(state, sets[0]), args.device, args.warmup, args.steps)
    return {
        "encode_images_per_s": args.encode_batch / t_enc, "decode_sets_per_s": args.decode_sets / t_dec,
        "one_set_latency_ms": 1000 * t_one, "peak_gib": peak_gib(args.device),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--arch", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"], help="SAM image encoder (random weights)")
    ap.add_argument("--decoder", default="seem", choices=sorted(DECODERS), help="decoder sizes: SEEM's or UniversalConfig's defaults")
    ap.add_argument("--batch-size", type=int, default=4, help="B: images per training step")
    ap.add_argument("--rows", type=int, default=4, help="R: simulated prompt rows per image")
    ap.add_argument("--steps", type=int, default=10, help="timed repetitions of each measurement")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--encode-batch", type=int, default=8)
    ap.add_argument("--decode-sets", type=int, default=64, help="click sets decoded in one segment call")
    ap.add_argument("--scene-size", type=int, default=1024, help="side of the generated scenes (the model resizes them to its input)")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on the CPU, as benchmarks/universal_speed.py; 0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny encoder at 256 px, small decoder, single steps")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: $OUT/gpu_universal.json when $OUT is set)")
    args = ap.parse_args()
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.arch, args.decoder, args.batch_size, args.rows, args.steps, args.warmup = "tiny", "tiny", 1, 2, 1, 0
        args.encode_batch, args.decode_sets, args.scene_size, args.scenes = 1, 4, 256, 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: use --device cpu (with --quick for a smoke test)")
    out = args.out if args.out is not None else (Path(os.environ["OUT"]) / "gpu_universal.json" if os.environ.get("OUT") else None)

    from segprompt.data.scenes import ObjectScenes
    from segprompt.universal.run import scenes_of

    ds = ObjectScenes(n=args.scenes, seed=7, size=args.scene_size)
    scenes = scenes_of(ds, range(len(ds)))
    model, cfg = build(args.arch, args.decoder, args.device, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"universal model on SAM {args.arch} (random weights, frozen trunk), {model.img_size} px, decoder {args.decoder}; "
          f"{n_params / 1e6:.1f} M parameters, {n_train / 1e6:.1f} M trained; {device_name}")
    print(f"training: B = {args.batch_size} images x R = {args.rows} rows; inference: encode batch {args.encode_batch}, "
          f"{args.decode_sets} click sets per segment call; mean of {args.steps} after {args.warmup} warm-up"
          f"{'  (--quick: a smoke test, not a measurement)' if args.quick else ''}")
    results = []
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        row: dict = {"precision": precision}
        for part, fn in (("train", training), ("infer", inference)):
            try:  # one failing setting (say bf16 in a layer autocast does not cover) must not cost the others
                row.update({f"{part}_{k}": v for k, v in fn(model, scenes, args, precision).items()})
            except (RuntimeError, ValueError) as exc:
                row[f"{part}_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                print(f"{precision} {part}: FAILED: {row[f'{part}_error']}", flush=True)
        results.append(row)

    def gib(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def train_cells(r: dict) -> str:
        if "train_error" in r:
            return f"{'failed (see above)':>40}"
        return (f"{r['train_seconds_per_step']:>8.3f} {r['train_images_per_s']:>7.2f} {r['train_rows_per_s']:>7.1f} "
                f"{100 * r['train_trunk_forward_share']:>5.1f}% {gib(r['train_peak_gib']):>8}")

    def infer_cells(r: dict) -> str:
        if "infer_error" in r:
            return f"{'failed (see above)':>45}"
        return (f"{r['infer_encode_images_per_s']:>12.2f} {r['infer_decode_sets_per_s']:>13.1f} "
                f"{r['infer_one_set_latency_ms']:>9.1f} {gib(r['infer_peak_gib']):>8}")

    head = (f"{'precision':<9} {'s/step':>8} {'img/s':>7} {'rows/s':>7} {'trunk':>6} {'peak GiB':>8} | "
            f"{'encode img/s':>12} {'decode sets/s':>13} {'1 set ms':>9} {'peak GiB':>8}")
    print()
    print(f"{'':<9} {'training step':^41} | {'inference':^46}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['precision']:<9} {train_cells(r)} | {infer_cells(r)}")
    print("trunk: share of the training step spent in the frozen encoder's forward (timed alone on the same batch)")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": device_name, "arch": args.arch, "decoder": args.decoder, "img_size": model.img_size, "config": cfg,
                   "parameters": n_params, "trained_parameters": n_train, "batch_size": args.batch_size, "rows": args.rows,
                   "steps": args.steps, "warmup": args.warmup, "encode_batch": args.encode_batch, "decode_sets": args.decode_sets,
                   "quick": args.quick, "results": results}
        out.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
