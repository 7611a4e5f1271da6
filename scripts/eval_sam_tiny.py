#!/usr/bin/env python
"""Compare demo models with the point benchmark on the real sample sets and the synthetic sets.

Every model gets the same trajectories: micro-sam's clicker (the first click at the object's
centre, the point farthest from its border; then one correction click per step at the centre of
the largest error region), 3 steps, ``--multimask auto`` unless ``--multimask`` says otherwise
(``single``, or ``model`` for each model's own policy; table.md names it). ``iou@1`` is the IoU from
the centre point and ``iou@3`` the IoU after two correction clicks. CamVid is evaluated one
class at a time (every class covering at least 1 % of an image; void ignored). Nothing here
trains; ``../shared/data`` is only read.

Usage::

    python scripts/eval_sam_tiny.py --out runs/sam_tiny_eval \\
        --model sam-tiny --model grabcut --model sam@v1=scratch/sam_tiny_v1.safetensors

A model is a registry name (``sam-tiny``, ``grabcut``, ...) or ``sam@LABEL=CHECKPOINT``. The
run folder resumes like every benchmark's; ``table.md`` holds the model x set x clicks table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segprompt.data.labelmap import ClassSamples
from segprompt.data.registry import load_dataset

REAL = ("kvasir_seg", "busi", "ph2", "camvid")
SYNTHETIC = {"synthetic-lesions": {"n": 60, "seed": 2}, "synthetic-random": {"n": 60, "seed": 77}}


def dataset(name: str):  # noqa: ANN201 - a SegmentationDataset
    if name in SYNTHETIC:
        return load_dataset(name, **SYNTHETIC[name])
    ds = load_dataset(name)
    return ClassSamples(ds) if ds.task == "multiclass" else ds


def main() -> int:
    from pointprompt.bench import PointBenchConfig, run_pointprompt

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--dataset", action="append", default=None, help=f"default: {', '.join(REAL + tuple(SYNTHETIC))}")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--zoom-in", action="store_true", help="RITM's zoom-in for the learned models (segprompt.models.zoom_in): the clicks after the first")
    ap.add_argument("--cascade", default=None, help="the learned models' own logits fed back as their mask prompt (segprompt.models.cascade): 'true' or a JSON mapping of CascadeSettings")
    ap.add_argument("--brs", action="store_true", help="f-BRS for the learned models that allow it (segprompt.models.brs): sets of 3+ clicks")
    ap.add_argument("--multimask", default="auto", help="the benchmark's candidate policy (default auto: the best-scored of three for one click, the single head for more)")
    args = ap.parse_args()
    models, kwargs = [], {}
    for m in args.model:
        name, _, ckpt = m.partition("=")
        models.append(name)
        if ckpt:
            kwargs[name] = {"checkpoint": ckpt}
        if name not in ("grabcut", "classical", "random-walker"):  # the wrappers are for the learned models
            if args.zoom_in:
                kwargs.setdefault(name, {})["zoom_in"] = True
            if args.brs:
                kwargs.setdefault(name, {})["brs"] = True
            if args.cascade:
                kwargs.setdefault(name, {})["cascade"] = json.loads(args.cascade)
    table = {}
    for name in args.dataset or [*REAL, *SYNTHETIC]:
        cfg = PointBenchConfig(datasets=[name], models=models, model_kwargs=kwargs, strategies=["microsam"], n_positive=args.steps, n_negative=0,
                               steps=args.steps, multimask=args.multimask, limit=args.limit)
        summary = run_pointprompt(cfg, args.out / name, dataset=dataset(name), progress=False)
        for row in summary["table"]:
            table[(row["model"], name)] = row
    lines = ["| model | set | n | IoU, 1 click | IoU, 3 clicks |", "|---|---|---|---|---|"]
    for (model, name), row in table.items():
        lines.append(f"| {model} | {name} | {row['trajectories']} | {row['iou@1']:.3f} | {row['iou@last']:.3f} |")
    (args.out / "table.md").write_text("\n".join(lines) + f"\n\nmultimask policy: {args.multimask}\n")
    (args.out / "table.json").write_text(json.dumps([{"model": m, "set": s, **r} for (m, s), r in table.items()], indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
