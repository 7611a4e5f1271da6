#!/usr/bin/env python
"""Train ``universal-tiny``, the small universal (SEEM-style) demo model shipped in segprompt/assets.

A demo model trained on *synthetic* scenes only (``synthetic-objects``,
:mod:`segprompt.data.scenes`: eight word-named classes -- disc, star, ring, square, triangle,
cross, crescent, leaf -- told by shape, colour family and texture, 1-6 per scene, occluding each
other on procedural backgrounds). Its vocabulary is those eight words; it is not a foundation
model and knows nothing of real classes.

Architecture (:data:`MODEL`): the bundled sam-tiny's image encoder (frozen; 256 px, stride 16)
under a ViTDet simple feature pyramid, an FPN pixel decoder, a 6-layer decoder of width 128 with
16 object queries, 3 prompt queries and 2 memory tokens, a closed-vocabulary text encoder of
width 64. Training is one run of ``segprompt train universal`` (:func:`segprompt.universal.run.
train_universal`, the engine's loop): resumable, ``--max-steps`` stops early.

Usage::

    python scripts/train_universal_tiny.py --work runs/universal_tiny            # stage 1 (resumes)
    python scripts/train_universal_tiny.py --stage 2 --lr 2e-4 --init runs/universal_tiny --work runs/universal_tiny_2
    git show 5d88f24:segprompt/assets/universal_tiny.safetensors > universal_tiny_v1.safetensors   # (+ its .json)
    python scripts/train_universal_tiny.py --stage 3 --init universal_tiny_v1.safetensors --work runs/universal_tiny_3 --epochs 2 --lr 3e-4
    python scripts/train_universal_tiny.py --stage 4 --init runs/universal_tiny_3 --work runs/universal_tiny_4 --epochs 1 --lr 2e-4
    python scripts/train_universal_tiny.py --stage 6 --init segprompt/assets/universal_tiny.safetensors --work runs/universal_tiny_6 --epochs 1 --lr 1.5e-4
    python scripts/train_universal_tiny.py --stage 7 --init segprompt/assets/universal_tiny.safetensors --work runs/universal_tiny_7 --epochs 2 --lr 1e-4
    python scripts/train_universal_tiny.py --work runs/universal_tiny_4 --export segprompt/assets/universal_tiny.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

MODEL = {
    "backbone": "sam-tiny",
    "backbone_kwargs": {"out_channels": 96},
    "text": "vocabulary",
    "hidden_dim": 128,
    "mask_dim": 64,
    "embed_dim": 64,
    "num_queries": 16,
    "num_prompt_queries": 3,
    "num_memory": 2,
    "dec_layers": 6,
    "num_heads": 4,
    "dim_feedforward": 384,
    "encoder_layers": 1,
    "tokens_per_prompt": 16,
}
TRAIN = {"n": 4800, "seed": 0}
VAL = {"n": 24, "seed": 999}  # held out: the tests use other seeds again (2024, 4242)
#: stage 2 continues from stage 1's best on new scenes with interactive rounds: more second
#: rounds, up to 4 correction clicks each, memory in half of them (stage 1 rarely showed a
#: prompt set with more than a few clicks, and its masks did not improve with corrections)
STAGE2_TRAIN = {"n": 4000, "seed": 1}
#: stage 3 grows the bundled model two parts that start at zero and trains on new scenes with
#: stage 2's interactive rounds: a stride-4 detail stem on the pixels (``detail_dim``,
#: :class:`segprompt.universal.pixel_decoder.DetailStem`: every edge came from sam-tiny's
#: stride-16 grid) and prompt-aware mask features (``prompt_to_pixel``,
#: :class:`segprompt.universal.pixel_prompt.PixelPromptAttention`: a click could move a query but
#: not change the features near it, so the masks of stages 1-2 stopped improving after ~3 clicks)
STAGE3_TRAIN = {"n": 4000, "seed": 2}
STAGE3_GROW = {"detail_dim": 32, "prompt_to_pixel": True}
#: stage 4 grows stage 3's best the box as a dense prompt (``box_map``): after stage 3 a box
#: added to a click no longer raised the mean IoU (its tokens sample a region half background)
STAGE4_TRAIN = {"n": 4000, "seed": 3}
STAGE4_GROW = {"box_map": True}
#: stage 5 continues stage 4's best on new scenes with more correction rounds (80 % of the
#: visual prompt sets), for the clicks-to-85 % that stages 3-4 left above the issue's bar
STAGE5_TRAIN = {"n": 4000, "seed": 4}
#: stage 6 continues the bundled v2 (stage 4's best) on new scenes for the point benchmark's long
#: correction sessions: 80 % correction rounds, up to 2 more rounds before the graded one (the
#: sets of 5-13 clicks the benchmark gives), negative clicks on a same-class twin in 30 % of the
#: click rows (v2 kept both of two touching rings whatever the negatives said), and the best epoch
#: chosen with the IoU after 5 clicks in the validation score
STAGE6_TRAIN = {"n": 4000, "seed": 5}
STAGE6 = {"second_round": 0.8, "extra_rounds": 2, "sibling_negatives": 0.3, "val_kinds": ("click", "text", "ref", "click5")}
#: stage 7 continues the bundled v3 (stage 6's best) with stage 6's rounds on new scenes, half of
#: them grey and more of the objects touching: on the held-out seed 2024, 8 of v3's 15 objects
#: that never reached 85 % were in its 3 grey scenes (10 of its 40 objects), where only shape and
#: texture, not the class colour, part two touching objects
STAGE7_TRAIN = {"n": 4000, "seed": 6, "settings": {"p_grey": 0.5, "p_touch": 0.45}}


def config(args: argparse.Namespace):  # noqa: ANN201 - UniversalTrainConfig, imported lazily
    from segprompt.universal.train import UniversalTrainConfig

    if args.stage in (3, 4, 5, 6, 7):
        init = Path(args.init)
        init = init / "universal.safetensors" if init.is_dir() else _copied_into_run(init, Path(args.work))
        grow, data = {3: (STAGE3_GROW, STAGE3_TRAIN), 4: (STAGE4_GROW, STAGE4_TRAIN), 5: ({}, STAGE5_TRAIN), 6: ({}, STAGE6_TRAIN), 7: ({}, STAGE7_TRAIN)}[args.stage]
        rounds = {"second_round": 0.8} if args.stage == 5 else dict(STAGE6) if args.stage in (6, 7) else {"second_round": 0.6}
        return UniversalTrainConfig(
            init=str(init), grow=dict(grow), dataset="synthetic-objects",
            dataset_kwargs=json.loads(json.dumps(data)), val_kwargs=dict(VAL), epochs=args.epochs, batch_size=8, lr=args.lr, warmup_steps=20,
            rows_per_image=4, correction_clicks=4, memory_share=0.5, seed=2, checkpoint_every=100,
            max_steps=args.max_steps, progress=not args.quiet, device=args.device, precision=args.precision, **rounds,
        )
    if args.stage == 2:
        return UniversalTrainConfig(
            init=str(Path(args.init) / "universal.safetensors"), dataset="synthetic-objects", dataset_kwargs=dict(STAGE2_TRAIN),
            val_kwargs=dict(VAL), epochs=1, batch_size=8, lr=args.lr, warmup_steps=20, rows_per_image=4, second_round=0.6,
            correction_clicks=4, memory_share=0.5, seed=1, checkpoint_every=100, max_steps=args.max_steps, progress=not args.quiet, device=args.device, precision=args.precision,
        )
    return UniversalTrainConfig(
        model=dict(MODEL), dataset="synthetic-objects", dataset_kwargs=dict(TRAIN), val_kwargs=dict(VAL),
        epochs=args.epochs, batch_size=8, lr=args.lr, warmup_steps=50, rows_per_image=4, second_round=0.3,
        seed=0, checkpoint_every=100, max_steps=args.max_steps, progress=not args.quiet, device=args.device, precision=args.precision,
    )


def _grown_stages(model_cfg, run_cfg: dict) -> dict:  # noqa: ANN001 - a UniversalConfig
    """The data of stages 3-7 for the record, from what the model holds and this run's data."""
    stages = {}
    if model_cfg.prompt_to_pixel:
        stages["stage3"] = {"dataset": "synthetic-objects", **STAGE3_TRAIN, "grow": STAGE3_GROW}
    if model_cfg.box_map:
        stages["stage4"] = {"dataset": "synthetic-objects", **STAGE4_TRAIN, "grow": STAGE4_GROW}
    if run_cfg.get("dataset_kwargs") == STAGE5_TRAIN:
        stages["stage5"] = {"dataset": "synthetic-objects", **STAGE5_TRAIN}
    rounds = {k: list(v) if isinstance(v, tuple) else v for k, v in STAGE6.items()}
    if run_cfg.get("dataset_kwargs") in (STAGE6_TRAIN, STAGE7_TRAIN):  # stage 7 continues stage 6's bundled v3
        stages["stage6"] = {"dataset": "synthetic-objects", **STAGE6_TRAIN, **rounds}
    if run_cfg.get("dataset_kwargs") == STAGE7_TRAIN:
        stages["stage7"] = {"dataset": "synthetic-objects", **STAGE7_TRAIN, **rounds}
    return stages


def _earlier_stages(init_file: Path | None) -> list[dict]:
    """The runs and records a run descends from, newest first: each run folder's epochs, until an
    exported model's record (which holds its own chain) or a run trained from scratch."""
    import yaml

    stages = []
    while init_file is not None:
        record = init_file.with_suffix(".json")
        if record.is_file():  # an exported model (v1, copied into stage 3's folder as init.json)
            earlier = json.loads(record.read_text())
            stages.append({"record": str(record), "sha256": earlier.get("sha256"), "command": earlier.get("command"),
                           "earlier_stages": earlier.get("earlier_stages"), "epochs": earlier.get("epochs"), "seconds": float(earlier.get("train_seconds", 0.0))})
            break
        run = init_file.parent
        rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]
        stages.append({"run": str(run), "epochs": [{k: r[k] for k in r if k.startswith(("epoch", "val_", "train_loss", "seconds", "lr"))} for r in rows],
                       "seconds": float(sum(r.get("seconds", 0.0) for r in rows))})
        run_cfg = yaml.safe_load((run / "config.yaml").read_text())
        init_file = Path(run_cfg["init"]) if run_cfg.get("init") else None
    return stages


def _copied_into_run(init: Path, work: Path) -> Path:
    """An exported model (the bundled one) copied into the run folder with its record, so that
    exporting over the original later does not change what the run started from."""
    import shutil

    copy = work / "init.safetensors"
    if not copy.exists():
        if not init.is_file():
            raise SystemExit(f"--init {init}: no such universal checkpoint (a .safetensors file or a run folder)")
        work.mkdir(parents=True, exist_ok=True)
        if init.with_suffix(".json").is_file():
            shutil.copyfile(init.with_suffix(".json"), copy.with_suffix(".json"))
        shutil.copyfile(init, copy.with_suffix(".tmp"))
        copy.with_suffix(".tmp").replace(copy)
    return copy


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(args: argparse.Namespace) -> int:
    """Write the run's best weights as fp16 safetensors and the training record beside them."""
    import torch
    import yaml

    from segprompt.universal.checkpoint import load_universal, save_universal

    work = Path(args.work)
    best = work / "universal.safetensors"
    summary = json.loads((work / "summary.json").read_text())
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in rows if r.get("kind", "epoch") == "epoch"]
    model = load_universal(best)
    target = Path(args.export)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    stages = _earlier_stages(Path(cfg["init"]) if cfg.get("init") else None)
    save_universal(model, target, dtype=torch.float16, extra={"trained_in": str(work)})
    record = {
        "model": "universal-tiny",
        # 2: stages 3-4 grew the detail stem, prompt-aware mask features and the box map; 3: stage 6's correction sessions
        "version": 3 if cfg.get("dataset_kwargs") == STAGE6_TRAIN else 2 if model.cfg.prompt_to_pixel else 1,
        "note": "demo model trained on synthetic scenes only (segprompt.data.scenes, 'synthetic-objects'); eight word classes; not a foundation model",
        "config": model.cfg.to_dict(),
        "data": {"train": {"dataset": "synthetic-objects", **TRAIN}, "stage2": {"dataset": "synthetic-objects", **STAGE2_TRAIN},
                 **_grown_stages(model.cfg, cfg), "val": {"dataset": "synthetic-objects", **VAL}},
        "training": {k: v for k, v in yaml.safe_load((work / "config.yaml").read_text()).items() if k not in ("model", "suite")},
        "epochs": [{k: r[k] for k in r if k.startswith(("epoch", "val_", "train_loss", "seconds", "lr"))} for r in epochs],
        "best": summary["best"],
        "earlier_stages": stages,
        "train_seconds": float(sum(r.get("seconds", 0.0) for r in epochs)) + sum(st["seconds"] for st in stages),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "command": "python scripts/train_universal_tiny.py " + " ".join(sys.argv[1:]),
        "sha256": _sha256(target),
        "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    target.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB) and {target.with_suffix('.json')}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/universal_tiny", help="Run folder (rerun to resume).")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--max-steps", type=int, default=None, help="Stop after N optimizer steps in total (rerun to continue).")
    p.add_argument("--stage", type=int, default=1, choices=(1, 2, 3, 4, 5, 6, 7),
                   help="1: from scratch; 2: continue from --init's best with interactive rounds; 3: grow --init a detail stem and "
                   "prompt-aware mask features, then as 2; 4: grow --init (stage 3's run) the box map, then as 2; "
                   "5: continue --init (stage 4's run) with 80 %% correction rounds; 6: continue --init (the bundled v2 file) "
                   "with longer correction sessions, negative clicks on same-class twins and a 5-click validation measure; "
                   "7: continue --init (the bundled v3 file) as 6 on scenes half grey, with more touching objects.")
    p.add_argument("--init", default="runs/universal_tiny", help="stages 2-3: the earlier run folder (or, stage 3, a universal .safetensors such as the bundled one).")
    p.add_argument("--export", default=None, help="Export the finished run's best weights here (fp16) with a JSON record; no training.")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the run folder resumes on either)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast precision of the training steps (bf16 on a recent GPU)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.export:
        return export(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from segprompt.universal.run import train_universal

    t0 = time.time()
    summary = train_universal(config(args), args.work)
    print(json.dumps(summary, indent=2))
    print(f"{time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
