#!/usr/bin/env python
"""Segment-everything speed: segprompt's ``segment_everything`` vs segment-anything's
``SamAutomaticMaskGenerator``, on the same weights and the same image.

Both run in this process, one after the other, ``--repeats`` times each (after one warm-up
run each on the same image); the best time of each is reported, with their ratio and the share
of reference masks that one of ours matches at IoU >= ``--match-iou``.

    python benchmarks/everything_speed.py                                    # vit_b random, 1024 px, 32 x 32 points, CPU
    python benchmarks/everything_speed.py --size 512 --points-per-side 8     # a quick run
    python benchmarks/everything_speed.py --device cuda --crop-n-layers 1

The weights are random (no download), so with segment-anything's default thresholds few or no
masks survive; ``--pred-iou-thresh 0 --stability-score-thresh 0.01`` keeps many of them, which
also times the filtering, NMS and RLE steps.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def build(arch: str, device: str, seed: int, widen: float):
    """(segprompt segmenter, segment-anything Sam) holding one set of weights.

    Random weights give logits near a constant; ``widen`` scales the last layer of the mask
    decoder's hypernetwork MLPs (and zeroes its bias), as tests/test_sam_parity.py does, so
    that masks have edges and some pass the filters."""
    from segprompt.models import create_segmenter
    from segprompt.models.sam import SamSegmenter
    from segprompt.models.sam_arch import OFFICIAL_ARCHS

    if arch == "sam-tiny":
        seg = create_segmenter("sam-tiny", device=device)
    else:
        torch.manual_seed(seed)
        model = OFFICIAL_ARCHS[arch].build()
        with torch.no_grad():
            for mlp in model.mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight.mul_(widen)
                mlp.layers[-1].bias.zero_()
        seg = SamSegmenter(model=model, device=device)
    return seg, seg.model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def agreement(ours: list[dict], ref: list[dict], threshold: float) -> float:
    """Share of reference masks matched by one of ours at IoU >= threshold (1.0 when there are none)."""
    if not ref:
        return 1.0 if not ours else 0.0
    a = np.stack([r["segmentation"].ravel() for r in ref]).astype(np.float32)
    if not ours:
        return 0.0
    b = np.stack([o["segmentation"].ravel() for o in ours]).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    return float((iou.max(1) >= threshold).mean())


def timed(fn, device: str, repeats: int) -> tuple[float, list[dict]]:
    best, out = float("inf"), []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_b", choices=["sam-tiny", "vit_b", "vit_l", "vit_h"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=1024, help="image side (pixels)")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--pred-iou-thresh", type=float, default=0.88)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--min-mask-region-area", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed first run of each")
    ap.add_argument("--match-iou", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--widen", type=float, default=40.0, help="scale of the random mask head (see build)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from segment_anything import SamAutomaticMaskGenerator

    from segprompt.data.synthetic import SyntheticLesions
    from segprompt.everything import EverythingSettings, segment_everything

    seg, model = build(args.arch, args.device, args.seed, args.widen)
    image = SyntheticLesions(n=1, seed=123, size=(args.size, args.size))[0].image
    settings = EverythingSettings(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        crop_n_layers=args.crop_n_layers,
        min_mask_region_area=args.min_mask_region_area,
    )
    kwargs = {k: getattr(settings, k) for k in (
        "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "crop_n_layers", "min_mask_region_area")}
    generator = SamAutomaticMaskGenerator(model, **kwargs)

    def ours():
        return segment_everything(seg, image, settings)

    def ref():
        return generator.generate(image)

    if not args.no_warmup:
        ours()
        ref()
    t_ref, ref_out = timed(ref, args.device, args.repeats)
    t_ours, our_out = timed(ours, args.device, args.repeats)
    agree = agreement(our_out, ref_out, args.match_iou)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    weights = "bundled weights" if args.arch == "sam-tiny" else f"random weights, seed {args.seed}, widen {args.widen}"
    print(f"model {args.arch} ({weights}) on {device_name}; image {args.size} x {args.size}; "
          f"{args.points_per_side} x {args.points_per_side} points, {args.crop_n_layers} crop layer(s)")
    print(f"thresholds: pred_iou {args.pred_iou_thresh}, stability {args.stability_score_thresh}; "
          f"min_mask_region_area {args.min_mask_region_area}; best of {args.repeats}")
    print(f"reference SamAutomaticMaskGenerator.generate: {t_ref:8.2f} s/image  {len(ref_out):5d} masks")
    print(f"segprompt segment_everything:                 {t_ours:8.2f} s/image  {len(our_out):5d} masks")
    if ref_out:
        print(f"ratio reference / ours: {t_ref / t_ours:.2f}x   reference masks matched at IoU >= {args.match_iou}: {agree:.3f}")
    else:  # nothing to match: say so rather than print a vacuous 1.000
        print(f"ratio reference / ours: {t_ref / t_ours:.2f}x   agreement not checked: the reference kept no masks "
              "(lower --pred-iou-thresh / --stability-score-thresh)")


if __name__ == "__main__":
    main()
