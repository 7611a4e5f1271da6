#!/usr/bin/env python
"""Train ``sam-tiny``, the small SAM-architecture demo model shipped in segprompt/assets.

This is a demo and test model trained from scratch on *synthetic* lesion images
(segprompt.data.synthetic.SyntheticLesions); it is not a foundation model and knows nothing
about real anatomy. It exists so that ``segprompt demo``, the tests and the napari plugin have
a real, trained, promptable model without any download.

Architecture: segment-anything's classes at 256 px input, patch 16, a 4-block ViT of width 128
(windowed attention, 2 global blocks), a 128-wide two-way decoder (see ``ARCH``).

Training: AdamW, warm-up + cosine schedule; per image three prompt sets of one kind drawn from
{one positive point (multimask), the centre point (multimask), several positive and negative
points (single output), a jittered box (single output)}; loss = Dice + BCE on the best of the
candidates + MSE on the IoU head (segprompt.engine.losses.sam_loss). Checkpoints are written
atomically and training resumes from ``--work``/last.pt.

Usage::

    python scripts/train_sam_tiny.py --minutes 60 --work runs/sam_tiny_train
    python scripts/train_sam_tiny.py --export segprompt/assets/sam_tiny.safetensors --work runs/sam_tiny_train
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from segprompt.data.synthetic import SyntheticLesions
from segprompt.engine.losses import sam_loss
from segprompt.engine.training import atomic_torch_save
from segprompt.models.resize import LongestSide
from segprompt.models.sam_arch import SamArch, save_sam

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
TRAIN_SEED = 1000  # synthetic images for training; validation uses VAL_SEED
VAL_SEED = 2


def centre_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask pixel farthest from the background (distance-transform maximum)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(c), float(r)


def sample_prompts(mask: np.ndarray, rng: np.random.Generator, kind: str, n_sets: int) -> dict:
    """Prompt sets of one structure for one mask (model-input frame, (x, y))."""
    ys, xs = np.nonzero(mask)
    bys, bxs = np.nonzero(~mask)
    h, w = mask.shape
    out: dict = {"kind": kind}
    if kind in ("point1", "centre"):
        if kind == "centre":
            cx, cy = centre_point(mask)
            coords = np.tile([[cx, cy]], (n_sets, 1, 1)) + rng.normal(0, 1.0, (n_sets, 1, 2))
        else:
            dist = ndimage.distance_transform_edt(mask)[ys, xs]
            p = dist / dist.sum()
            idx = rng.choice(len(xs), size=n_sets, p=p)
            coords = np.stack([xs[idx], ys[idx]], axis=1)[:, None].astype(np.float64)
        out["coords"] = coords
        out["labels"] = np.ones((n_sets, 1), np.int64)
        out["multimask"] = True
    elif kind == "points":
        n_pos, n_neg = int(rng.integers(1, 4)), int(rng.integers(0, 3))
        coords, labels = [], []
        for _ in range(n_sets):
            ip = rng.choice(len(xs), size=n_pos)
            ineg = rng.choice(len(bxs), size=n_neg) if n_neg else np.zeros(0, int)
            # negatives near the object are the informative ones
            if n_neg:
                d = ndimage.distance_transform_edt(~mask)[bys, bxs]
                near = np.flatnonzero(d < max(8.0, 0.15 * max(h, w)))
                if len(near):
                    ineg = rng.choice(near, size=n_neg)
            c = np.concatenate([np.stack([xs[ip], ys[ip]], 1), np.stack([bxs[ineg], bys[ineg]], 1)])
            coords.append(c)
            labels.append(np.r_[np.ones(n_pos), np.zeros(n_neg)])
        out["coords"] = np.asarray(coords, np.float64)
        out["labels"] = np.asarray(labels, np.int64)
        out["multimask"] = False
    elif kind == "box":
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        bw, bh = x1 - x0, y1 - y0
        jitter = rng.normal(0, 0.08, (n_sets, 4)) * np.array([bw, bh, bw, bh])
        boxes = np.array([x0, y0, x1, y1], np.float64)[None] + jitter
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
        boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0] + 1)
        boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1] + 1)
        out["boxes"] = boxes
        out["multimask"] = False
    else:
        raise ValueError(kind)
    return out


KINDS = ("point1", "centre", "points", "box")
KIND_P = (0.3, 0.2, 0.3, 0.2)


class Pool:
    """Synthetic training images pre-rendered into the 256 px model frame."""

    def __init__(self, n: int, seed: int, size: int | None = None) -> None:
        ds = SyntheticLesions(n=n, seed=seed, size=size, style="mixed")
        self.images, self.masks, self.sizes = [], [], []
        for s in ds:
            tf = LongestSide(ARCH.img_size, s.image.shape[:2])
            img = tf.apply_image(s.image)
            h, w = tf.input_size
            m = F.interpolate(torch.from_numpy(s.mask.astype(np.float32))[None, None], (h, w), mode="bilinear", align_corners=False)[0, 0] > 0.5
            pad_img = np.zeros((ARCH.img_size, ARCH.img_size, 3), np.uint8)
            pad_img[:h, :w] = img
            pad_mask = np.zeros((ARCH.img_size, ARCH.img_size), bool)
            pad_mask[:h, :w] = m.numpy()
            if pad_mask.sum() < 16:
                continue
            self.images.append(pad_img)
            self.masks.append(pad_mask)
            self.sizes.append((h, w))

    def __len__(self) -> int:
        return len(self.images)


def normalise_padded(model, batch_imgs, sizes) -> torch.Tensor:
    """Exactly what ``Sam.preprocess`` gives: normalise the image, then zero the padding."""
    x = torch.from_numpy(np.stack(batch_imgs)).permute(0, 3, 1, 2).float()
    x = (x - model.pixel_mean) / model.pixel_std
    for i, (h, w) in enumerate(sizes):
        x[i, :, h:, :] = 0.0
        x[i, :, :, w:] = 0.0
    return x


def train_step(model, batch_imgs, batch_masks, batch_sizes, rng, n_sets: int) -> tuple[torch.Tensor, dict]:
    x = normalise_padded(model, batch_imgs, batch_sizes)
    emb = model.image_encoder(x)
    losses, logs = [], []
    pe = model.prompt_encoder
    for i, mask in enumerate(batch_masks):
        kind = KINDS[rng.choice(len(KINDS), p=KIND_P)]
        pr = sample_prompts(mask, rng, kind, n_sets)
        points = boxes = None
        if "coords" in pr:
            points = (torch.as_tensor(pr["coords"], dtype=torch.float), torch.as_tensor(pr["labels"], dtype=torch.int))
        if "boxes" in pr:
            boxes = torch.as_tensor(pr["boxes"], dtype=torch.float)
        sparse, dense = pe(points=points, boxes=boxes, masks=None)
        low, iou = model.mask_decoder(
            image_embeddings=emb[i : i + 1],
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=pr["multimask"],
        )
        logits = F.interpolate(low, (ARCH.img_size, ARCH.img_size), mode="bilinear", align_corners=False)
        target = torch.from_numpy(mask)[None].expand(logits.shape[0], -1, -1)
        loss, log = sam_loss(logits, iou, target)
        losses.append(loss)
        logs.append(log)
    loss = torch.stack(losses).mean()
    return loss, {k: float(np.mean([l[k] for l in logs])) for k in logs[0]}


@torch.no_grad()
def validate(model, n: int = 64, policy: str = "best") -> dict:
    """Mean IoU from the centre point on ``n`` synthetic validation images, via the real segmenter."""
    from segprompt.models.sam import SamSegmenter
    from segprompt.prompts import Points, PromptSet

    seg = SamSegmenter(model=model.eval(), multimask=policy)
    ds = SyntheticLesions(n=n, seed=VAL_SEED, size=None, style="mixed")
    ious = {"best": [], "single": [], "first": []}
    for s in ds:
        state = seg.encode(s.image)
        ps = PromptSet(points=Points([centre_point(s.mask)], [1]))
        for pol in ious:
            m = seg.segment(state, ps, multimask=pol).masks[0, 0]
            union = (m | s.mask).sum()
            ious[pol].append((m & s.mask).sum() / union if union else 1.0)
    model.train()
    return {f"val_iou_{k}": float(np.mean(v)) for k, v in ious.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/sam_tiny_train"))
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of this invocation")
    ap.add_argument("--steps", type=int, default=6000, help="total steps of the learning-rate schedule")
    ap.add_argument("--stop-at", type=int, default=None, help="stop after this step (the schedule still spans --steps)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sets", type=int, default=3, help="prompt sets per image per step")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--pool", type=int, default=3000, help="synthetic training images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--export", type=Path, default=None, help="write the best checkpoint here (fp16 safetensors) and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    last, best = args.work / "last.pt", args.work / "best.pt"

    if args.export is not None:
        ck = torch.load(best if best.exists() else last, weights_only=False)
        model = ARCH.build()
        model.load_state_dict(ck["model"])
        save_sam(model, args.export, ARCH, dtype=torch.float16)
        meta = {
            "model": "sam-tiny",
            "note": "demo/test model trained on synthetic lesions only; not a foundation model",
            "arch": json.loads(ARCH.to_json()),
            "step": ck["step"],
            "metrics": ck.get("metrics", {}),
            "trained_with": "python scripts/train_sam_tiny.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (ck.get("args", {}) | {"stop_at": ck["step"] if ck["step"] < ck.get("args", {}).get("steps", ck["step"]) else None}).items() if k in ("steps", "stop_at", "batch", "sets", "lr", "pool", "seed") and v is not None),
        }
        args.export.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(meta, indent=2))
        return 0

    torch.manual_seed(args.seed)
    model = ARCH.build().train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    warmup = 300

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, args.steps - warmup))
        return args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    step, best_iou = 0, -1.0
    if last.exists():
        ck = torch.load(last, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, best_iou = ck["step"], ck.get("best_iou", -1.0)
        print(f"resumed at step {step} (best val IoU {best_iou:.3f})", flush=True)
    rng = np.random.default_rng(args.seed + step)
    t0 = time.time()
    pool = Pool(args.pool, TRAIN_SEED)
    print(f"pool of {len(pool)} images in {time.time() - t0:.0f}s", flush=True)
    log_path = args.work / "log.jsonl"
    deadline = time.time() + args.minutes * 60
    running: dict[str, float] = {}
    tick = time.time()
    end = min(args.steps, args.stop_at or args.steps)
    while step < end and time.time() < deadline:
        idx = rng.choice(len(pool), size=args.batch, replace=False)
        imgs, masks, sizes = [pool.images[i] for i in idx], [pool.masks[i] for i in idx], [pool.sizes[i] for i in idx]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss, log = train_step(model, imgs, masks, sizes, rng, args.sets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        for k, v in {"loss": float(loss.detach()), **log}.items():
            running[k] = 0.98 * running.get(k, v) + 0.02 * v
        if step % 50 == 0:
            rate = 50 / (time.time() - tick)
            tick = time.time()
            print(f"step {step} lr {lr_at(step):.2e} " + " ".join(f"{k} {v:.4f}" for k, v in running.items()) + f" | {rate:.2f} it/s", flush=True)
        if step % 500 == 0 or step == end:
            metrics = validate(model)
            metrics.update(step=step, **{f"train_{k}": v for k, v in running.items()})
            with open(log_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            print("validation", json.dumps(metrics), flush=True)
            score = metrics["val_iou_best"]
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best_iou": max(best_iou, score), "args": vars(args) | {"work": str(args.work), "export": None}, "metrics": metrics}
            if score > best_iou:
                best_iou = score
                atomic_torch_save(state, best)
            atomic_torch_save(state, last)
    print(f"stopped at step {step}; best val IoU {best_iou:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
