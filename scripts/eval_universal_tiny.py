#!/usr/bin/env python
"""The numbers of universal-tiny's closing note, on held-out data (seeds the training never saw).

1. the point benchmark (``segprompt bench pointprompt``'s engine, micro-sam corrector, 10 steps:
   1 + 2 x 9 = 19 clicks, the most micro-sam's two clicks per step allow within the issue's 20) for universal-tiny, sam-tiny and GrabCut on the synthetic scenes' objects
   (``synthetic-object-instances``) and on ../shared/data kvasir_seg / busi / ph2;
2. text prompts: mIoU over the eight scene classes (pooled per class);
3. reference prompts: a class's largest instance in one scene prompting the same class in the
   next scene that has it;
4. a centre click alone vs the click plus the object's box.

Usage::

    python scripts/eval_universal_tiny.py --out runs/universal_tiny_eval [--scenes 40] [--real 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

SEED = 2024  # held-out scenes (training: seed 0, validation: 999)


def point_bench(out: Path, dataset: str, models: list[str], limit: int | None, kwargs: dict) -> dict:
    from pointprompt.bench import PointBenchConfig, run_pointprompt

    cfg = PointBenchConfig(
        datasets=[dataset], models=models, strategies=["microsam"], steps=10, limit=limit, dataset_kwargs={dataset: kwargs} if kwargs else {},
    )
    return run_pointprompt(cfg, out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/universal_tiny_eval")
    p.add_argument("--scenes", type=int, default=40, help="held-out scenes for the text / reference / box numbers")
    p.add_argument("--bench-scenes", type=int, default=12, help="held-out scenes whose objects go through the point benchmark")
    p.add_argument("--real", type=int, default=20, help="images per real dataset in the point benchmark (0: skip)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from segprompt.data.scenes import ObjectScenes
    from segprompt.models.registry import create_segmenter
    from segprompt.universal.evaluate import box_gain, reference_iou, text_miou
    from segprompt.universal.run import scenes_of

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seg = create_segmenter("universal-tiny")
    scenes = scenes_of(ObjectScenes(n=args.scenes, seed=SEED), range(args.scenes))
    t0 = time.time()
    result: dict = {"held_out_seed": SEED, "scenes": args.scenes}
    result["text"] = text_miou(seg, scenes)
    result["reference"] = reference_iou(seg, scenes)
    result["box"] = box_gain(seg, scenes)
    print(json.dumps({k: result[k] for k in ("text", "reference", "box")}, indent=1))
    bench = {}
    models = ["universal-tiny", "sam-tiny", "grabcut"]
    bench["synthetic-object-instances"] = point_bench(out / "bench_synthetic", "synthetic-object-instances", models, None, {"n": args.bench_scenes, "seed": SEED})
    if args.real and os.environ.get("SEGPROMPT_DATA_ROOT"):
        for name in ("kvasir_seg", "busi", "ph2"):
            bench[name] = point_bench(out / f"bench_{name}", name, models, args.real, {})
    result["bench"] = {k: v.get("summary", v) if isinstance(v, dict) else v for k, v in bench.items()}
    result["seconds"] = time.time() - t0
    (out / "numbers.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out / 'numbers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
