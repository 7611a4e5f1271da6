"""Cost of one training step of each TuneVLSeg method, relative to the frozen model's forward + backward.

Reference ("frozen f+b"): the VLSM without a learner, forward, DiceCE loss, and backward through
the whole frozen model to the input images (``images.requires_grad_()``): the least any prompt
learner must pay, since a prompt at the input needs gradients through every layer above it.
Each method's step is forward + DiceCE + backward + AdamW step on its trainable parameters
(zeroshot on the open_clip VLSM = decoder only; on CLIPSeg it has nothing to train: its row is
the forward alone, no backward). All rows are measured in one process, interleaved round by
round (so slow drift of a busy machine hits every method alike), on one frozen model shared by
the reference and the prompt learners (full finetuning gets its own copy); the median over rounds
is reported.

    python benchmarks/tunevlseg_cost.py                       # tiny CLIPSeg and open_clip on CPU
    python benchmarks/tunevlseg_cost.py --size base --vlsm clipseg --batch 2 --steps 3   # ViT-B/16 sizes, random init
    python benchmarks/tunevlseg_cost.py --device cuda --size base --precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from segprompt.engine.report import text_table
from tunevlseg.learners import create_learner, trainable_named_parameters
from tunevlseg.models import CLIPSegVLSM, OpenCLIPVLSM, create_vlsm
from tunevlseg.train import NO_DEPTH_METHODS, decay_groups, dice_ce_loss

METHODS = ["zeroshot", "coop", "cocoop", "vpt-shallow", "vpt-deep", "maple", "shared-separate", "shared-attention", "full"]


def base_vlsm(name: str) -> Any:
    """Real-size VLSMs with random weights (no download): CLIPSeg ViT-B/16 at 352 px
    (rd64, decoder layers 3/6/9) and an open_clip ViT-B-16 with the FiLM decoder."""
    if name == "clipseg":
        from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

        config = CLIPSegConfig(
            text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77),
            vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16),
            projection_dim=512, extract_layers=[3, 6, 9], reduce_dim=64,
        )
        torch.manual_seed(0)
        return CLIPSegVLSM(CLIPSegForImageSegmentation(config), image_size=352)
    if name == "openclip":
        import open_clip

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-16", pretrained=None)
        return OpenCLIPVLSM(model, open_clip.get_tokenizer("ViT-B-16"))
    raise SystemExit(f"--size base knows clipseg and openclip, not {name!r}")


def make(name: str, size: str, device: str) -> Any:
    if size == "tiny":
        return create_vlsm(f"{name}-tiny", device=device)
    return base_vlsm(name).to(device)


class Step:
    """One method's training step on a fixed batch."""

    def __init__(self, vlsm: Any, method: str | None, depth: int, batch: int, device: str, precision: str) -> None:
        self.vlsm = vlsm
        self.method = method or "frozen f+b"
        self.device, self.precision = device, precision
        self.learner = None
        if method is not None:
            kw = {} if method in NO_DEPTH_METHODS or method == "vpt-shallow" else {"depth": depth}
            self.learner = create_learner(method, self.vlsm, **kw)
            self.learner.train()
        self.depth = 0 if method in (None, *NO_DEPTH_METHODS) else (1 if method == "vpt-shallow" else depth)
        self.vlsm.train()
        g = torch.Generator().manual_seed(0)
        h, w = self.vlsm.image_size
        self.images = torch.rand(batch, 3, h, w, generator=g).to(device)
        self.target = (torch.rand(batch, 1, h, w, generator=g) > 0.7).float().to(device)
        self.texts = ["a polyp"] * batch
        params = trainable_named_parameters(self.vlsm, self.learner) if method is not None else []
        self.params = sum(p.numel() for _, p in params)
        self.optimizer = torch.optim.AdamW(decay_groups(params, 0.01), lr=1e-4) if params else None

    def __call__(self) -> float:
        t0 = time.perf_counter()
        x = self.vlsm.preprocess(self.images)
        if self.learner is None:
            x = x.detach().requires_grad_(True)  # the reference: backward through the frozen model
        ctx = torch.autocast("cuda" if self.device.startswith("cuda") else "cpu", dtype=torch.bfloat16) if self.precision == "bf16" else torch.autocast("cpu", enabled=False)
        if self.learner is None:
            # the VLSM skips autograd in a tower with nothing to train; the reference wants it
            self.vlsm._grad = lambda prompts, params: torch.is_grad_enabled()  # noqa: SLF001
        try:
            with ctx:
                logits = self.vlsm(x, self.texts, learner=self.learner)
        finally:
            self.vlsm.__dict__.pop("_grad", None)
        if logits.requires_grad:
            loss = dice_ce_loss(logits, self.target)
            loss.backward()
            if self.optimizer is not None:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vlsm", default="clipseg,openclip", help="clipseg, openclip (comma-separated)")
    ap.add_argument("--size", choices=["tiny", "base"], default="tiny")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--depths", default=None, help="depths of the methods with depth (default: 1 and all layers)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 8 tiny, 2 base)")
    ap.add_argument("--steps", type=int, default=None, help="timed rounds (default 20 tiny, 3 base)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (8 if args.size == "tiny" else 2)
    steps = args.steps or (20 if args.size == "tiny" else 3)
    rows = []
    for name in [v.strip() for v in args.vlsm.split(",") if v.strip()]:
        # one frozen model shared by the reference and every prompt learner (they leave it frozen);
        # full finetuning makes its model trainable, so it gets its own copy
        shared = make(name, args.size, args.device)
        layers = min(shared.num_text_layers, shared.num_vision_layers)
        depths = [int(d) for d in args.depths.split(",")] if args.depths else sorted({1, layers})
        runs = [Step(shared, None, 1, batch, args.device, args.precision)]
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            ds = [1] if method in NO_DEPTH_METHODS or method == "vpt-shallow" else depths
            for d in ds:
                if method == "vpt-deep" and d == 1:
                    continue  # = vpt-shallow
                model = make(name, args.size, args.device) if method == "full" else shared
                runs.append(Step(model, method, d, batch, args.device, args.precision))
        meta = [{"method": r.method, "depth": r.depth, "trainable": r.params} for r in runs]
        for _ in range(args.warmup):
            for r in runs:
                r()
        times: dict[int, list[float]] = {i: [] for i in range(len(runs))}
        for _ in range(steps):
            for i, r in enumerate(runs):
                times[i].append(r())
        ref = statistics.median(times[0])
        del runs, shared
        for i, r in enumerate(meta):
            ms = 1000 * statistics.median(times[i])
            rows.append({"vlsm": f"{name}-{args.size}", **r, "ms_per_step": round(ms, 2), "x_frozen_fb": round(ms / (1000 * ref), 2)})
    print(f"device {args.device}, precision {args.precision}, batch {batch}, {steps} rounds (median), torch threads {torch.get_num_threads()}")
    print(text_table(rows, ["vlsm", "method", "depth", "trainable", "ms_per_step", "x_frozen_fb"], floatfmt=".2f"))
    return rows


if __name__ == "__main__":
    main()
