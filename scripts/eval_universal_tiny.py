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


#: run-folder and numbers-file suffixes of the inference options
WRAPPER_TAGS = {"zoom_in": "_zoom", "brs": "_brs", "cascade": "_cascade"}


def point_bench(out: Path, dataset: str, models: list[str], limit: int | None, kwargs: dict, checkpoint: str | None = None, wrappers: dict | None = None) -> dict:
    """``checkpoint``: a universal file that takes the place of the bundled universal-tiny;
    ``wrappers``: create_segmenter's inference options for the learned models (``zoom_in``,
    ``brs``, ``cascade``)."""
    from pointprompt.bench import PointBenchConfig, run_pointprompt

    model_kwargs: dict = {}
    if checkpoint:
        models = ["universal" if m == "universal-tiny" else m for m in models]
        model_kwargs = {"universal": {"checkpoint": checkpoint}}
    for m in models:
        if m in ("grabcut", "classical", "random-walker"):
            continue  # the wrappers are for the learned models
        model_kwargs.setdefault(m, {}).update(wrappers or {})
    cfg = PointBenchConfig(
        datasets=[dataset], models=models, strategies=["microsam"], steps=10, limit=limit, dataset_kwargs={dataset: kwargs} if kwargs else {},
        model_kwargs=model_kwargs,
    )
    return run_pointprompt(cfg, out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/universal_tiny_eval")
    p.add_argument("--scenes", type=int, default=40, help="held-out scenes for the text / reference / box numbers")
    p.add_argument("--bench-scenes", type=int, default=12, help="held-out scenes whose objects go through the point benchmark")
    p.add_argument("--real", type=int, default=10, help="images per real dataset in the point benchmark (0: skip)")
    p.add_argument("--models", default="universal-tiny,sam-tiny,grabcut", help="models of the point benchmark (each in its own run folder, so they can be run apart)")
    p.add_argument("--skip-prompts", action="store_true", help="only the point benchmark")
    p.add_argument("--zoom-in", action="store_true", help="the point benchmark with RITM's zoom-in for the learned models (segprompt.models.zoom_in)")
    p.add_argument("--brs", action="store_true", help="the point benchmark with f-BRS for the learned models (segprompt.models.brs)")
    p.add_argument("--brs-settings", default=None, help="f-BRS settings as JSON, e.g. '{\"reg_weight\": 0.03}' (with --brs)")
    p.add_argument("--cascade", default=None, help="the learned models' own logits fed back as their mask prompt (segprompt.models.cascade): 'true' or a JSON mapping of CascadeSettings")
    p.add_argument("--seed", type=int, default=SEED, help="scenes' seed (2024: held out; 77: the tuning seed)")
    p.add_argument("--checkpoint", default=None, help="a universal .safetensors to evaluate in the place of the bundled universal-tiny (a candidate before it is bundled)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from segprompt.data.scenes import ObjectScenes
    from segprompt.models.registry import create_segmenter
    from segprompt.universal.evaluate import box_gain, reference_iou, text_miou
    from segprompt.universal.run import scenes_of

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result: dict = {"seed": args.seed, "scenes": args.scenes, "checkpoint": args.checkpoint or "universal-tiny (bundled)", "zoom_in": args.zoom_in, "brs": args.brs, "cascade": args.cascade}
    if not args.skip_prompts:
        seg = create_segmenter("universal", checkpoint=args.checkpoint) if args.checkpoint else create_segmenter("universal-tiny")
        scenes = scenes_of(ObjectScenes(n=args.scenes, seed=args.seed), range(args.scenes))
        result["text"] = text_miou(seg, scenes)
        result["reference"] = reference_iou(seg, scenes)
        result["box"] = box_gain(seg, scenes)
        print(json.dumps({k: result[k] for k in ("text", "reference", "box")}, indent=1))
    table = []
    sets = [("synthetic-object-instances", None, {"n": args.bench_scenes, "seed": args.seed})]
    if args.real and os.environ.get("SEGPROMPT_DATA_ROOT"):
        sets += [(name, args.real, {}) for name in ("kvasir_seg", "busi", "ph2")]
    wrappers = {
        "zoom_in": args.zoom_in,
        "brs": (json.loads(args.brs_settings) if args.brs_settings else True) if args.brs else False,
        "cascade": json.loads(args.cascade) if args.cascade else False,
    }
    wrappers = {k: v for k, v in wrappers.items() if v is not False}
    tag = "".join(WRAPPER_TAGS[k] for k in wrappers)
    for name, limit, kwargs in sets:
        for model in args.models.split(","):
            learned = model != "grabcut"
            summary = point_bench(out / f"bench_{name}_{model}{tag if learned else ''}", name, [model], limit, kwargs,
                                  args.checkpoint if model == "universal-tiny" else None, wrappers if learned else None)
            table += summary["table"]
    for row in table:
        print(f"{row['dataset']:28s} {row['model']:15s} n {row['trajectories']:3d}  IoU@1 {row['iou@1']:.3f}  IoU@last {row['iou@last']:.3f}  NoC85 {row['noc85']:.2f}  NoC90 {row['noc90']:.2f}")
    result["bench"] = table
    result["seconds"] = time.time() - t0
    name = "numbers.json" if not args.skip_prompts and args.models == "universal-tiny,sam-tiny,grabcut" else f"numbers_{args.models.replace(',', '_')}.json"
    name = name.replace(".json", f"{tag}.json")
    (out / name).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
