#!/usr/bin/env python
"""SAM 2 against SAM at a matched input size: image encoding and prompt decoding, through segprompt.

Both models run behind the same Segmenter interface in this process, on the same images and
prompt sets, with random weights of the named configurations (speed does not depend on the
weights' values):

* tiny (default): ``sam-tiny`` (segment-anything classes, 256 px, 4-block ViT) against the tiny
  SAM 2 test configuration at 256 px (:func:`segprompt.models.sam2_build.tiny_sam2`);
* ``--full``: SAM ``vit_b`` at 1024 px against the official SAM 2.1 Hiera configurations at
  1024 px (``--sam2-archs``, default ``sam2.1_hiera_t,sam2.1_hiera_b+``).

Timed, as medians over ``--repeats`` after one warm-up: ``encode`` of one image (= the
predictors' set_image), ``encode_batch`` of ``--batch`` images (per image), one ``segment`` call
with one point (multimask, the interactive latency) and one ``segment`` call with ``--sets``
prompt sets of ``--points`` points each (batched). ``--reference`` also times the packages' own
predictors (SamPredictor / SAM2ImagePredictor: set_image, then one predict per set).
Ratios are SAM time / SAM 2 time (above 1: SAM 2 is faster).

    python benchmarks/sam2_speed.py                               # tiny configs, CPU
    python benchmarks/sam2_speed.py --full --repeats 1            # official sizes, CPU (slow)
    python benchmarks/sam2_speed.py --full --device cuda --precision bf16 --reference
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_pairs(args) -> list[tuple[str, object, str, object]]:
    """[(sam label, sam segmenter, sam2 label, sam2 segmenter)] at matched input sizes."""
    from segprompt.models import create_segmenter
    from segprompt.models.sam import SamSegmenter
    from segprompt.models.sam2 import Sam2Segmenter
    from segprompt.models.sam2_build import build_sam2_model, get_arch, tiny_arch, tiny_sam2
    from segprompt.models.sam_arch import OFFICIAL_ARCHS

    common = dict(device=args.device, multimask="all")
    sam_prec = "fp32" if args.precision == "auto" else args.precision
    if not args.full:
        sam = create_segmenter("sam-tiny", precision=sam_prec, **common)
        sam2 = Sam2Segmenter(model=tiny_sam2(seed=0, image_size=256), arch=tiny_arch(256), precision=args.precision, **common)
        return [("sam-tiny (256 px)", sam, "sam2 tiny (256 px)", sam2)]
    torch.manual_seed(0)
    sam = SamSegmenter(model=OFFICIAL_ARCHS[args.sam_arch].build(), precision=sam_prec, **common)
    pairs = []
    for name in args.sam2_archs.split(","):
        arch = get_arch(name.strip())
        torch.manual_seed(0)
        sam2 = Sam2Segmenter(model=build_sam2_model(arch), arch=arch, precision=args.precision, **common)
        pairs.append((f"sam {args.sam_arch} (1024 px)", sam, f"{arch.name} ({arch.image_size} px)", sam2))
    return pairs


def measure(seg, images, prompt_sets, args) -> dict[str, float]:
    from segprompt.prompts import Points, PromptSet

    state = seg.encode(images[0])
    one = [PromptSet(points=Points(prompt_sets[0][0][0][:1], [1]))]
    many = [PromptSet(points=Points(c, l)) for c, l in prompt_sets[0]]
    return {
        "encode": timed(lambda: seg.encode(images[0]), args.device, args.repeats),
        "encode_batch": timed(lambda: seg.encode_batch(images[: args.batch], batch_size=args.batch), args.device, args.repeats) / args.batch,
        "segment_1": timed(lambda: seg.segment(state, one), args.device, args.repeats),
        "segment_n": timed(lambda: seg.segment(state, many), args.device, args.repeats),
    }


def measure_reference(seg, images, prompt_sets, args) -> dict[str, float]:
    """The package's own predictor on the same model: set_image, and one predict per set."""
    if seg.name == "sam2":
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        pred = SAM2ImagePredictor(seg.model)
        s = seg.image_size
        pred._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]  # 1.1.0 assumes 1024 px
    else:
        from segment_anything import SamPredictor

        pred = SamPredictor(seg.model)
    ctx = seg._autocast
    with torch.no_grad():
        with ctx():
            set_image = timed(lambda: pred.set_image(images[0]), args.device, args.repeats)

        def predict_all():
            with ctx():
                for c, l in prompt_sets[0]:
                    pred.predict(point_coords=c, point_labels=l, multimask_output=True)

        predict_n = timed(predict_all, args.device, args.repeats)
    return {"set_image": set_image, "predict_n": predict_n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="official sizes (1024 px) instead of the tiny configs")
    ap.add_argument("--sam-arch", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--sam2-archs", default="sam2.1_hiera_t,sam2.1_hiera_b+")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4, help="images per encode_batch call")
    ap.add_argument("--sets", type=int, default=64, help="prompt sets in the batched segment call")
    ap.add_argument("--points", type=int, default=3, help="points per set (last one negative)")
    ap.add_argument("--reference", action="store_true", help="also time the packages' own predictors")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from segprompt.data.synthetic import SyntheticLesions

    samples = list(SyntheticLesions(n=max(1, args.batch), seed=123, size=(300, 400)))
    images = [s.image for s in samples]
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

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{device_name}, torch {torch.__version__}, precision {args.precision}; image 300x400; "
          f"median of {args.repeats} after a warm-up; {args.sets} sets x {args.points} points, multimask")
    rows = [("encode (set_image)", "encode", 1e3), (f"encode_batch({args.batch}) per image", "encode_batch", 1e3),
            ("segment, 1 point", "segment_1", 1e3), (f"segment, {args.sets} sets batched", "segment_n", 1e3)]
    sam_cache: dict[int, dict[str, float]] = {}
    for sam_label, sam, sam2_label, sam2 in build_pairs(args):
        if id(sam) not in sam_cache:
            sam_cache[id(sam)] = measure(sam, images, prompt_sets, args)
            if args.reference:
                sam_cache[id(sam)].update(measure_reference(sam, images, prompt_sets, args))
        a = sam_cache[id(sam)]
        b = measure(sam2, images, prompt_sets, args)
        if args.reference:
            b.update(measure_reference(sam2, images, prompt_sets, args))
        print(f"\n{'':34s} {sam_label:>22s} {sam2_label:>26s} {'sam / sam2':>11s}")
        show = rows + ([("predictor.set_image", "set_image", 1e3), (f"predictor.predict x {args.sets}", "predict_n", 1e3)] if args.reference else [])
        for label, key, scale in show:
            print(f"{label:34s} {a[key] * scale:19.1f} ms {b[key] * scale:23.1f} ms {a[key] / b[key]:10.2f}x")
        print(f"{'prompts/s in one batched segment':34s} {args.sets / a['segment_n']:22.0f} {args.sets / b['segment_n']:26.0f}")


if __name__ == "__main__":
    main()
