#!/usr/bin/env python
"""Point-prompt benchmark speed: segprompt's evaluation vs the study's loop, in one process.

Both evaluate the same strategies, steps, images and model and produce the same IoUs:

* reference: the loop of the PointPrompt scripts, written with segment-anything's
  ``SamPredictor`` on the same weights with segment-anything's own attention: for every image *and every strategy* ``set_image``, then one ``predict``
  per prompt (multimask output, mask 0 kept, as the study did);
* ours: :func:`pointprompt.bench.evaluate_image`: encode each image once, decode every
  strategy's steps in batched ``segment`` calls.

Point selection and IoU are the same code on both sides, so the ratio is the cost of the loop
and of the model paths (segprompt's fast encoder and decoder against segment-anything's). The per-prompt IoUs are compared before any number is printed.

    python benchmarks/pointprompt_speed.py                          # sam-tiny on CPU
    python benchmarks/pointprompt_speed.py --arch vit_b --device cuda --images 8 --size 1024
"""

from __future__ import annotations

import argparse
import copy
import time
from contextlib import contextmanager
from typing import Iterator

import torch

STRATEGIES = ["random", "centre", "kmedoids", "max-distance", "grid", "microsam"]


@contextmanager
def autocast(device: str, precision: str) -> Iterator[None]:
    """``torch.autocast`` of ``precision`` (``bf16`` / ``fp16``) on ``device``; nothing for fp32."""
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def sa_predict(predictor, coords, labels, precision: str = "fp32"):
    """``SamPredictor.predict(..., multimask_output=True)``: (masks bool (3, H, W), scores float32 (3,)).

    fp32 calls ``predict`` itself. Under autocast ``predict`` cannot hand its bf16 scores to NumPy,
    so the same steps run through ``predict_torch`` (what ``predict`` calls) and are cast afterwards.
    """
    if precision == "fp32":
        masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, multimask_output=True)
        return masks, scores
    dev = predictor.device
    xy = torch.as_tensor(predictor.transform.apply_coords(coords, predictor.original_size), dtype=torch.float, device=dev)[None]
    lab = torch.as_tensor(labels, dtype=torch.int, device=dev)[None]
    masks, scores, _ = predictor.predict_torch(xy, lab, multimask_output=True)
    return masks[0].cpu().numpy(), scores[0].float().cpu().numpy()


def compare_loops(
    seg,
    arch: str,
    images: int = 6,
    size: int = 384,
    positive: int = 4,
    negative: int = 2,
    strategies: list[str] | None = None,
    device: str = "cpu",
    reference_model=None,
    precision: str = "fp32",
) -> dict:
    """Time the study's loop and ours on the same weights and synthetic images; check their IoUs agree.

    The study's loop runs on ``reference_model`` (default: a copy of ``seg.model`` with
    segment-anything's own attention restored, so it is segment-anything as the study ran it),
    under ``torch.autocast`` when ``precision`` (the Segmenter's) is not fp32. IoUs must agree
    within 2e-3 in fp32; in bf16 / fp16 the mean difference must stay under 0.02.

    Returns a dict: prompts, reference_s, ours_s, ratio, max_iou_difference, images, size, steps.
    """
    from segment_anything import SamPredictor

    from pointprompt.bench import PointBenchConfig, _rng, evaluate_image, placement_prefixes
    from pointprompt.strategies import create_strategy, is_correction
    from segprompt.data.synthetic import SyntheticLesions
    from segprompt.metrics import iou

    strategies = list(strategies or STRATEGIES)
    cfg = PointBenchConfig(datasets=["synthetic-lesions"], models=[arch], strategies=strategies, n_positive=positive, n_negative=negative, multimask="first")
    K = cfg.steps_of("synthetic-lesions")
    samples = list(SyntheticLesions(n=images, seed=77, size=size))
    if reference_model is None:
        from segprompt.models.sam_fast import disable_fast_attention

        reference_model = disable_fast_attention(copy.deepcopy(seg.model))
    predictor = SamPredictor(reference_model)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def reference(sample) -> dict[tuple[str, int], float]:
        gt = sample.mask
        out = {}
        for name in strategies:
            strat = create_strategy(name)
            rng = _rng(cfg.seed, sample.id, name)
            with autocast(device, precision):
                predictor.set_image(sample.image)  # the study's scripts: once per image and strategy
            if is_correction(strat):
                pts = strat.first(gt, rng)
                for k in range(1, K + 1):
                    with autocast(device, precision):
                        masks, _ = sa_predict(predictor, pts.coords, pts.labels, precision)
                    out[(name, k)] = iou(masks[0], gt)
                    if k < K:
                        pts = pts + strat.correct(gt, masks[0], rng, sample.image)
            else:
                pts = strat(gt, sample.image, rng, positive, negative)
                for k, n in enumerate(placement_prefixes(len(pts), K), 1):
                    with autocast(device, precision):
                        masks, _ = sa_predict(predictor, pts.coords[:n], pts.labels[:n], precision)
                    out[(name, k)] = iou(masks[0], gt)
        return out

    def ours(sample) -> dict[tuple[str, int], float]:
        rows = evaluate_image(cfg, seg, arch, "synthetic-lesions", sample, (positive, negative), K)
        return {(r["strategy"], r["step"]): r["iou"] for r in rows}

    # the two loops alternate image by image, so a busy machine slows both alike
    ref, got, t_ref, t_ours = [], [], 0.0, 0.0
    with torch.inference_mode():
        reference(samples[0]), ours(samples[0])  # warm-up
        for s in samples:
            sync()
            t0 = time.perf_counter()
            ref.append(reference(s))
            sync()
            t1 = time.perf_counter()
            got.append(ours(s))
            sync()
            t_ref += t1 - t0
            t_ours += time.perf_counter() - t1

    diffs = [abs(r[k] - g[k]) for r, g in zip(ref, got) for k in r]
    assert len(diffs) == len(samples) * len(strategies) * K
    if precision == "fp32":
        assert max(diffs) < 2e-3, f"IoUs disagree by up to {max(diffs):.4f}"
    else:
        assert sum(diffs) / len(diffs) < 0.02, f"IoUs disagree by {sum(diffs) / len(diffs):.4f} on average in {precision}"
    return dict(
        prompts=len(diffs), reference_s=t_ref, ours_s=t_ours, ratio=t_ref / t_ours, max_iou_difference=max(diffs),
        mean_iou_difference=sum(diffs) / len(diffs),
        images=images, size=size, steps=K, strategies=strategies,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sam-tiny", choices=["sam-tiny", "vit_b", "vit_l", "vit_h"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--size", type=int, default=384, help="image side (synthetic lesions)")
    ap.add_argument("--positive", type=int, default=4)
    ap.add_argument("--negative", type=int, default=2)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    from segprompt.models import create_segmenter
    from segprompt.models.sam import SamSegmenter
    from segprompt.models.sam_arch import OFFICIAL_ARCHS

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arch == "sam-tiny":
        seg = create_segmenter("sam-tiny", device=args.device, precision=args.precision)
    else:
        torch.manual_seed(0)
        seg = SamSegmenter(model=OFFICIAL_ARCHS[args.arch].build(), device=args.device, precision=args.precision)
    strategies = [s for s in args.strategies.split(",") if s]
    r = compare_loops(seg, args.arch, args.images, args.size, args.positive, args.negative, strategies, args.device, precision=args.precision)
    n, t_ref, t_ours = r["prompts"], r["reference_s"], r["ours_s"]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch} ({args.precision}) on {device}: {args.images} images of {args.size}x{args.size}, {len(strategies)} strategies x {r['steps']} steps, budget {args.positive}+{args.negative}")
    print(f"reference loop (set_image per image x strategy, one predict per prompt): {t_ref:8.2f} s  {n / t_ref:8.1f} prompts/s")
    print(f"segprompt (encode once per image, batched segment):                    {t_ours:8.2f} s  {n / t_ours:8.1f} prompts/s")
    print(f"speed-up {t_ref / t_ours:.2f}x; max |IoU difference| {r['max_iou_difference']:.2e} over {n} prompts")


if __name__ == "__main__":
    main()
