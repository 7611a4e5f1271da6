#!/usr/bin/env python
"""Which SAM decoder path is faster on this machine: the shared path against segment-anything's batched forward.

The numbers behind ``decoder="auto"`` (``SHARED_DECODER_MIN_TOKENS`` in segprompt/models/sam.py).
For each image size, one random model of the chosen architecture runs the same ``segment`` call
(``--sets`` three-point prompt sets, the last point negative, all three masks) with
``decoder="shared"`` and ``decoder="reference"`` (segment-anything's ``MaskDecoder.forward`` on
all sets at once), alternating for ``--rounds`` rounds; the fastest round of each is printed with
their ratio, and the masks are compared.

    OMP_NUM_THREADS=2 python benchmarks/sam_decoder_paths.py                      # 32-channel tiny, 256/512/1024 px
    OMP_NUM_THREADS=2 python benchmarks/sam_decoder_paths.py --arch vit_b --sizes 1024

``--threshold`` also times the thresholding of one 1024 x 1024 x 3 set into a fresh ``np.zeros``
against a fresh ``np.empty`` array (why ``segment`` allocates its results with ``np.empty``).

``--populate`` times a whole ``segment`` call (``--arch``, the largest of ``--sizes``, ``--sets``
sets) with its result arrays from :func:`segprompt.models.host_memory.populated_empty` (mapped in
one ``madvise`` call) against a plain ``np.empty``, alternating for ``--rounds`` rounds:

    OMP_NUM_THREADS=2 python benchmarks/sam_decoder_paths.py --arch vit_b --sizes 1024 --sets 256 --populate

``--resize`` only times bringing one set's three low-res masks to a 1024 x 1024 image and
thresholding them into a fresh result array: segment-anything's two ``F.interpolate`` steps
(``LongestSide.upscale_logits``) against :class:`segprompt.models.resize.MaskUpscaler` (OpenCV),
``--sets`` sets per round, alternating for ``--rounds`` rounds, with the share of equal pixels.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def build(arch: str, size: int):
    from segprompt.models.sam_arch import OFFICIAL_ARCHS, tiny_arch

    torch.manual_seed(0)
    if arch == "tiny":
        return tiny_arch(img_size=size).build().eval()
    if size != 1024:
        raise SystemExit(f"--arch {arch} is built at 1024 px only, got --sizes {size}")
    return OFFICIAL_ARCHS[arch].build().eval()


def compare(arch: str, size: int, sets: int, rounds: int) -> dict:
    from segprompt.models.sam import SamSegmenter
    from segprompt.prompts import Points, PromptSet

    model = build(arch, size)
    paths = {d: SamSegmenter(model=model, decoder=d, multimask="all") for d in ("shared", "reference")}
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    prompts = [PromptSet(points=Points(rng.uniform(0, size - 1, (3, 2)), [1, 1, 0])) for _ in range(sets)]
    seconds: dict[str, list[float]] = {d: [] for d in paths}
    masks = {}
    with torch.inference_mode():
        state = paths["shared"].encode(image)
        for seg in paths.values():
            seg.segment(state, prompts[:2])  # warm-up
        for _ in range(rounds):
            for name, seg in paths.items():
                t0 = time.perf_counter()
                masks[name] = seg.segment(state, prompts).masks
                seconds[name].append(time.perf_counter() - t0)
    grid = model.prompt_encoder.image_embedding_size
    return dict(
        arch=arch, size=size, tokens=grid[0] * grid[1], channels=model.mask_decoder.transformer_dim,
        shared_s=min(seconds["shared"]), reference_s=min(seconds["reference"]),
        equal_pixels=float((masks["shared"] == masks["reference"]).mean()),
    )


def threshold_into_fresh_arrays(rounds: int = 3, sets: int = 64) -> dict[str, list[float]]:
    """Seconds per set of thresholding into a fresh array, per round: np.zeros first, then np.empty.

    The first round is the one that meets memory the process has not used yet; later rounds can
    get pages it has just freed, where the two are alike.
    """
    logits = torch.randn(1, 3, 1024, 1024)
    out: dict[str, list[float]] = {}
    for name, alloc in (("np.zeros", np.zeros), ("np.empty", np.empty)):
        out[name] = []
        for _ in range(rounds):
            result = alloc((sets, 3, 1024, 1024), bool)
            t0 = time.perf_counter()
            for s in range(sets):
                torch.gt(logits, 0.0, out=torch.from_numpy(result[s : s + 1]))
            out[name].append((time.perf_counter() - t0) / sets)
            del result
    return out


def populate_against_empty(arch: str, size: int, sets: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per set of one ``segment`` call, per round, with the result arrays populated or not."""
    import segprompt.models.sam as sam_module
    from segprompt.models.host_memory import populated_empty
    from segprompt.models.sam import SamSegmenter
    from segprompt.prompts import Points, PromptSet

    seg = SamSegmenter(model=build(arch, size), multimask="all")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    prompts = [PromptSet(points=Points(rng.uniform(0, size - 1, (3, 2)), [1, 1, 0])) for _ in range(sets)]
    allocators = {"populated_empty": populated_empty, "np.empty": lambda shape, dtype: np.empty(shape, dtype)}
    out: dict[str, list[float]] = {name: [] for name in allocators}
    try:
        with torch.inference_mode():
            state = seg.encode(image)
            seg.segment(state, prompts[:2])  # warm-up
            for _ in range(rounds):
                for name, alloc in allocators.items():
                    sam_module.populated_empty = alloc
                    t0 = time.perf_counter()
                    pred = seg.segment(state, prompts)
                    out[name].append((time.perf_counter() - t0) / sets)
                    del pred
    finally:
        sam_module.populated_empty = populated_empty
    return out


def resize_paths(sets: int, rounds: int) -> tuple[dict[str, list[float]], float]:
    """Seconds per set of resize + threshold, per round, for PyTorch and OpenCV; and the share of equal pixels."""
    from segprompt.models.resize import LongestSide, MaskUpscaler

    tf = LongestSide(1024, (1024, 1024))
    g = torch.Generator().manual_seed(0)
    low = torch.nn.functional.avg_pool2d(torch.randn(sets, 3, 256, 256, generator=g), 5, 1, 2) * 6  # blob-like signs
    low_np = low.numpy()
    out: dict[str, list[float]] = {"torch": [], "opencv": []}
    masks: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name in out:
            result = np.empty((sets, 3, 1024, 1024), bool)
            t0 = time.perf_counter()
            if name == "torch":
                for s in range(sets):
                    torch.gt(tf.upscale_logits(low[s : s + 1]), 0.0, out=torch.from_numpy(result[s : s + 1]))
            else:
                up = MaskUpscaler(tf)
                for s in range(sets):
                    up(low_np[s], 0.0, result[s])
            out[name].append((time.perf_counter() - t0) / sets)
            masks[name] = result
    return out, float((masks["torch"] == masks["opencv"]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="tiny", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    ap.add_argument("--sizes", default="256,512,1024", help="comma-separated image sides (pixels)")
    ap.add_argument("--sets", type=int, default=64, help="prompt sets per segment call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threshold", action="store_true", help="also time thresholding into np.zeros vs np.empty")
    ap.add_argument("--populate", action="store_true", help="only time segment with populated result arrays against np.empty")
    ap.add_argument("--resize", action="store_true", help="only time the masks' resize + threshold: PyTorch against OpenCV")
    args = ap.parse_args()

    if args.resize:
        t, equal = resize_paths(args.sets, args.rounds)
        print(f"resize + threshold of one set (3 masks, 256 -> 1024 x 1024), {args.sets} sets per round, ms per set by round:")
        for name, per_round in t.items():
            print(f"  {name}: " + ", ".join(f"{1000 * x:.2f}" for x in per_round))
        print(f"  pixels equal: {equal:.7f}")
        return
    if args.populate:
        size = max(int(s) for s in args.sizes.split(",") if s)
        t = populate_against_empty(args.arch, size, args.sets, args.rounds)
        print(f"{args.arch}, {size} px, {args.sets} sets per segment call, ms per set by round:")
        for name, per_round in t.items():
            print(f"  {name}: " + ", ".join(f"{1000 * x:.1f}" for x in per_round))
        return

    print(f"CPU ({torch.get_num_threads()} threads), {args.sets} three-point sets per call, fastest of {args.rounds} rounds")
    print("| arch | image | tokens | channels | shared | batched (reference) | batched / shared | masks equal |")
    print("|---|---|---|---|---|---|---|---|")
    for size in [int(s) for s in args.sizes.split(",") if s]:
        r = compare(args.arch, size, args.sets, args.rounds)
        print(f"| {r['arch']} | {r['size']} px | {r['tokens']} | {r['channels']} | {1000 * r['shared_s']:.0f} ms | "
              f"{1000 * r['reference_s']:.0f} ms | {r['reference_s'] / r['shared_s']:.2f}x | {r['equal_pixels']:.5f} |", flush=True)
    if args.threshold:
        t = threshold_into_fresh_arrays()
        print("\nthreshold one 1024 x 1024 x 3 set into a fresh array, ms per set by round:")
        for name, per_round in t.items():
            print(f"  {name}: " + ", ".join(f"{1000 * x:.2f}" for x in per_round))


if __name__ == "__main__":
    main()
