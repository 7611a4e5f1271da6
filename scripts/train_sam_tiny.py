#!/usr/bin/env python
"""Train ``sam-tiny``, the small SAM-architecture demo model shipped in segprompt/assets.

A demo model trained on *synthetic* data only: the domain-randomised generator
(``synthetic-random``, :mod:`segprompt.data.synthetic_random`), never on real images. What the
randomisation teaches is "the coherent region around the click", which is what lets the model
work on real colonoscopy, ultrasound and dermoscopy images it has never seen. It is still not a
foundation model.

Architecture (:data:`ARCH`): segment-anything's own classes at 256 px input, patch 16, a 4-block
ViT of width 128 (windowed attention, 2 global blocks), a 128-wide two-way decoder; 1.9 M
parameters, 3.7 MB as fp16 safetensors.

Training is a run of the SAM finetuning engine (:func:`pointprompt.finetune.finetune_sam`, which
drives :func:`segprompt.engine.loop.fit`): every part trained, prompts ``mixed`` (per image one
of: one random positive point with three candidates; a jittered box; micro-sam's iterative
prompting, three forward passes with correction clicks and mask feedback), Dice + BCE on the best
candidate + MSE on the IoU head, AdamW with warm-up and cosine decay, the best epoch chosen on
the synthetic validation split's IoU from the centre point. The run folder resumes when the
command is rerun (``--max-steps`` stops early, resumably; ``--minutes`` converts a wall-clock
budget into that).

Usage::

    python scripts/train_sam_tiny.py --work runs/sam_tiny_train                  # train (resumes)
    python scripts/train_sam_tiny.py --work runs/sam_tiny_train --export segprompt/assets/sam_tiny.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import torch

from segprompt.models.sam_arch import SamArch, load_sam, save_sam

ARCH = SamArch(
    img_size=256,
    patch_size=16,
    encoder_embed_dim=128,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    window_size=8,
    prompt_embed_dim=128,
    mask_in_chans=16,
    decoder_depth=2,
    decoder_mlp_dim=512,
    decoder_num_heads=4,
    iou_head_hidden_dim=128,
)
TRAIN_SEED = 1000  # the synthetic pool's default seed (--data-seed); the validation split is a part of it
DATASET = "synthetic-random"


def finetune_config(args: argparse.Namespace, init: Path):  # noqa: ANN201 - FinetuneConfig, imported lazily
    from pointprompt.finetune import FinetuneConfig

    return FinetuneConfig(
        dataset=DATASET, dataset_kwargs={"n": args.pool, "seed": args.data_seed, "variant": args.variant}, val_fraction=args.val_fraction, test_fraction=0.0,
        model=None, checkpoint=str(init), train=args.train.split(","), prompts=args.prompts, strategy="random", n_positive=1, n_negative=0,
        iterations=3, mask_feedback=0.5, refine_passes=args.refine_passes, box_jitter=0.1, box_jitter_mode="microsam", train_multimask="auto",
        epochs=args.epochs, batch_size=args.batch, lr=args.lr, weight_decay=0.01, schedule="cosine", warmup_steps=args.warmup,
        grad_clip=1.0, early_stop=0, select_on="val_dice", loss="dice+bce", iou_weight=1.0,
        eval_strategy="centre", eval_positive=1, eval_negative=0, eval_multimask="best", seed=args.seed,
        checkpoint_every=args.checkpoint_every, max_steps=args.max_steps, device=args.device,
    )


def initial_weights(args: argparse.Namespace) -> Path:
    """The starting checkpoint: ``--init random`` (seeded initialisation of :data:`ARCH`) or a
    SAM checkpoint of the same architecture (e.g. the previous sam-tiny)."""
    path = args.work / "init.safetensors"
    if path.exists():
        return path
    args.work.mkdir(parents=True, exist_ok=True)
    if args.init == "random":
        torch.manual_seed(args.seed)
        model = ARCH.build()
    else:
        model, arch = load_sam(args.init)
        if arch != ARCH:
            raise SystemExit(f"--init {args.init}: its architecture differs from sam-tiny's ({arch.name} vs {ARCH.name})")
    save_sam(model, path, ARCH)
    record = {"init": str(args.init), "sha256": _sha256(Path(args.init)) if args.init != "random" else None}
    if args.init != "random":
        record["from_run"] = _run_record(Path(args.init).parent)
        bundled = Path(args.init).with_suffix(".json")  # an exported model (the bundled sam-tiny): its record holds its chain
        if record["from_run"] is None and bundled.exists():
            record["from_record"] = json.loads(bundled.read_text())
    (args.work / "init.json").write_text(json.dumps(record, indent=2) + "\n")
    return path


def _run_record(work: Path) -> dict | None:
    """How an earlier run of this script (the folder of an ``--init`` checkpoint) was trained:
    its arguments, its epoch rows and where its own weights came from; None for another file."""
    if not (work / "train_args.json").exists():
        return None
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines() if line.strip()]
    epochs = [{k: r.get(k) for k in ("epoch", "val_iou", "val_dice", "train_loss", "lr", "seconds")} for r in rows if r.get("kind") == "epoch"]
    init = json.loads((work / "init.json").read_text()) if (work / "init.json").exists() else None
    return {"folder": str(work), "trained_with": "python scripts/train_sam_tiny.py " + " ".join(f"--{k} {v}" for k, v in _recorded_args(work).items()),
            "epochs": epochs, "training_seconds": round(sum(e["seconds"] or 0 for e in epochs), 1), "init": init}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(args: argparse.Namespace) -> int:
    """Write the run's best checkpoint as fp16 safetensors plus the record JSON beside it."""
    best = args.work / "sam_best.pth"
    if not best.exists():
        raise SystemExit(f"{best}: no best checkpoint yet; train first")
    model, arch = load_sam(best)
    save_sam(model, args.export, arch, dtype=torch.float16)
    summary_path = args.work / "summary.json"
    rows = [json.loads(line) for line in (args.work / "results.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    best_row = max((r for r in epochs if r["epoch"] > 0), key=lambda r: r["val_dice"], default=None)
    config = (args.work / "config.yaml").read_text()
    recorded = _recorded_args(args.work)
    init = json.loads((args.work / "init.json").read_text()) if (args.work / "init.json").exists() else None
    record = {
        "model": "sam-tiny",
        "version": 2,
        "note": "demo model trained on domain-randomised synthetic images only (segprompt.data.synthetic_random); never on real images; not a foundation model",
        "arch": json.loads(arch.to_json()),
        "data": {"dataset": DATASET, "seed": recorded.get("data-seed", TRAIN_SEED), "pool": recorded.get("pool"), "variant": recorded.get("variant")},
        "init": init,
        "best_epoch": best_row["epoch"] if best_row else None,
        "metrics": {k: v for k, v in (best_row or {}).items() if k.startswith(("val_", "train_"))},
        "training_seconds": round(sum(r.get("seconds") or 0 for r in epochs) + _earlier_seconds(init), 1),
        "summary": json.loads(summary_path.read_text()) if summary_path.exists() else None,
        "trained_with": "python scripts/train_sam_tiny.py " + " ".join(f"--{k} {v}" for k, v in _recorded_args(args.work).items()),
        "finetune_config": config,
    }
    args.export.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("best_epoch", "metrics", "training_seconds", "trained_with")}, indent=2))
    return 0


def _earlier_seconds(init: dict | None) -> float:
    """Training seconds of the runs this one started from (their records chain through ``init``)."""
    total = 0.0
    while init and init.get("from_run"):
        total += init["from_run"]["training_seconds"]
        init = init["from_run"].get("init")
    if init and init.get("from_record"):  # started from an exported model: its record counts all of its runs
        total += init["from_record"].get("training_seconds") or 0.0
    return total


def _recorded_args(work: Path) -> dict:
    path = work / "train_args.json"
    return json.loads(path.read_text()) if path.exists() else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/sam_tiny_train"), help="the run folder (rerun to resume)")
    ap.add_argument("--init", default="random", help="'random' or a SAM checkpoint of sam-tiny's architecture to start from")
    ap.add_argument("--epochs", type=int, default=12, help="epochs over the pool (the cosine schedule spans them)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--warmup", type=int, default=200, help="warm-up optimizer steps")
    ap.add_argument("--pool", type=int, default=6000, help="synthetic images generated for the run (train + validation)")
    ap.add_argument("--data-seed", type=int, default=TRAIN_SEED, help="seed of the synthetic pool (a new seed: new images)")
    ap.add_argument("--variant", default="v2", help="version of the randomised generator (segprompt.data.synthetic_random.VARIANTS)")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=200, help="optimizer steps between resumable checkpoints")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in total (resumable)")
    ap.add_argument("--minutes", type=float, default=None, help="stop after about this many minutes of this invocation (resumable)")
    ap.add_argument("--train", default="all", help="parts trained, comma-separated (finetuning's train=: all, mask_decoder, "
                    "or a module such as mask_decoder.iou_prediction_head)")
    ap.add_argument("--prompts", default="mixed", help="training prompts (finetuning's prompts=: mixed, random, iterative, box-jitter)")
    ap.add_argument("--refine-passes", type=int, default=0, help="SAM's passes without new clicks in the iterative prompts (finetuning's refine_passes=): "
                    "the model's own logits fed back, what create_segmenter(..., cascade=True) does at inference")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--export", type=Path, default=None, help="write the best checkpoint here (fp16 safetensors + record .json) and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.export is not None:
        return export(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pointprompt.finetune import finetune_sam

    init = initial_weights(args)
    recorded = {k: v for k, v in vars(args).items() if k in ("init", "variant", "data_seed", "epochs", "batch", "lr", "warmup", "pool", "val_fraction", "seed", "train", "prompts")}
    (args.work / "train_args.json").write_text(json.dumps({k.replace("_", "-"): v for k, v in recorded.items()}) + "\n")
    cfg = finetune_config(args, init)
    if args.minutes is not None:
        cfg.max_steps = _steps_within(args.work, args.minutes)
    t0 = time.time()
    result = finetune_sam(cfg, args.work, progress=False)
    print(json.dumps({k: result.get(k) for k in ("best_epoch", "best_val", "epochs_run", "stopped_at_step")}), f"({time.time() - t0:.0f} s)")
    return 0


def _steps_within(work: Path, minutes: float) -> int | None:
    """The total step count to stop at so that this invocation lasts about ``minutes``: the
    steps done so far plus ``minutes`` at the speed the last epoch row recorded (None: unknown)."""
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()] if (work / "results.jsonl").exists() else []
    last = work / "checkpoints" / "last.pt"
    done = int(torch.load(last, weights_only=False)["state"]["global_step"]) if last.exists() else 0
    ms = next((r["ms_per_step"] for r in reversed(rows) if r.get("ms_per_step")), None)
    return None if ms is None else done + int(minutes * 60_000 / ms)


if __name__ == "__main__":
    sys.exit(main())
