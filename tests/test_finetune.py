"""SAM finetuning: freezing, cache use, exact resume, checkpoint compatibility, DDP, CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pointprompt.finetune import FinetuneConfig, SamTrainStep, _load_model, _prepare_model, export_checkpoint, finetune_sam
from segprompt.backbones.lora import LoRALinear, inject_lora, merge_lora
from segprompt.errors import ConfigError
from segprompt.models import create_segmenter
from segprompt.models.sam_arch import save_sam, tiny_arch

DATA = {"dataset": "synthetic-lesions", "dataset_kwargs": {"n": 12, "seed": 0, "size": 96}}  # 8 train, 2 validation, 2 test images


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return str(save_sam(tiny_arch().build(), tmp_path_factory.mktemp("m") / "tiny.safetensors"))


def _cfg(ckpt, **kw):
    base = dict(**DATA, model=None, checkpoint=ckpt, epochs=2, batch_size=2, lr=1e-3, iterations=2, early_stop=0)
    base.update(kw)
    return FinetuneConfig(**base)


def _params(seg):
    return {k: v.detach().clone() for k, v in seg.model.state_dict().items()}


def test_freezing_by_explicit_names(tiny_ckpt):
    seg = _load_model(_cfg(tiny_ckpt))
    n = _prepare_model(seg, _cfg(tiny_ckpt, train=["prompt_encoder"]))
    assert n == sum(p.numel() for p in seg.model.prompt_encoder.parameters())
    assert not any(p.requires_grad for p in seg.model.mask_decoder.parameters())
    seg = _load_model(_cfg(tiny_ckpt))
    n = _prepare_model(seg, _cfg(tiny_ckpt, train=["lora"], lora_rank=2))
    arch = seg.arch
    dim = arch.encoder_embed_dim
    expected = sum(p.numel() for p in seg.model.mask_decoder.parameters()) + arch.encoder_depth * 2 * (dim + 3 * dim)
    assert n == expected
    with pytest.raises(ConfigError, match=r"no submodule 'mask_decodr' to train \(--train\).*mask_decoder"):
        _prepare_model(_load_model(_cfg(tiny_ckpt)), _cfg(tiny_ckpt, train=["mask_decodr"]))
    with pytest.raises(ConfigError, match="matches no linear layer"):
        inject_lora(_load_model(_cfg(tiny_ckpt)).model, ["image_encoder.blocks.*.attn.qkvv"])


def test_only_trained_parts_change_and_cache_replaces_encoder(tiny_ckpt, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = SamTrainStep._embed

    def counting_embed(self, batch):
        if self.embeddings is None:
            calls["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(SamTrainStep, "_embed", counting_embed)
    cfg = _cfg(tiny_ckpt, train=["mask_decoder"], prompts="mixed")
    before = _params(_load_model(cfg))
    finetune_sam(cfg, tmp_path / "run", progress=False)
    after = _params(create_segmenter("sam", checkpoint=str(tmp_path / "run" / "sam_last.pth")))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("mask_decoder.") for k in changed)
    assert calls["n"] == 0  # the frozen encoder never ran inside a training step
    assert len(list((tmp_path / "run" / "embeddings").glob("*/*.safetensors"))) == 12  # 8 train + 2 val + 2 test images cached


def test_resume_after_interruption_is_exact(tiny_ckpt, tmp_path, caplog):
    cfg = _cfg(tiny_ckpt, train=["mask_decoder", "prompt_encoder"], prompts="mixed", epochs=3, checkpoint_every=1)
    full = finetune_sam(cfg, tmp_path / "a", progress=False)
    stopped = finetune_sam(_cfg(tiny_ckpt, train=["mask_decoder", "prompt_encoder"], prompts="mixed", epochs=3, checkpoint_every=1, max_steps=5), tmp_path / "b", progress=False)
    assert stopped["stopped_at_step"] == 5  # mid-epoch 2 (4 steps per epoch)
    # the same call on the same folder resumes (no resume=True), and says where it starts
    with caplog.at_level(logging.INFO, logger="pointprompt.finetune"):
        resumed = finetune_sam(cfg, tmp_path / "b", progress=False)
    starts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming")]
    assert starts == [f"resuming {tmp_path / 'b'}: epoch 2 batch 2 of 3 epochs (4 batches each; 5 of 12 steps already done)"]
    a = torch.load(tmp_path / "a" / "sam_last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "sam_last.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final"] == {**full["final"], "seconds": resumed["final"]["seconds"]}
    rows_a = [json.loads(l) for l in (tmp_path / "a" / "results.jsonl").read_text().splitlines()]
    rows_b = [json.loads(l) for l in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    epochs_a, epochs_b = ([r for r in rows if r["kind"] == "epoch"] for rows in (rows_a, rows_b))
    assert [r["epoch"] for r in epochs_b] == [0, 1, 2, 3]
    assert [r["val_dice"] for r in epochs_a] == [r["val_dice"] for r in epochs_b]
    # the test rows (before finetuning, and the checkpoint chosen on validation) are the same too
    assert [(r["model"], r["iou"]) for r in rows_a if r["kind"] == "test"] == [(r["model"], r["iou"]) for r in rows_b if r["kind"] == "test"]
    assert resumed["test"] == full["test"] and full["test"]["best"]["n"] == 2


def test_a_checkpoint_of_the_old_layout_still_resumes(tiny_ckpt, tmp_path):
    """A run folder written before the shared loop (last.pt with the old keys) resumes and ends
    with the same weights; only the interrupted epoch's train loss, whose first batches the old
    layout did not keep, may differ."""
    from segprompt.engine.training import atomic_torch_save, load_checkpoint

    kw = dict(train=["mask_decoder"], prompts="mixed", epochs=2, checkpoint_every=1)
    full = finetune_sam(_cfg(tiny_ckpt, **kw), tmp_path / "a", progress=False)
    finetune_sam(_cfg(tiny_ckpt, max_steps=5, **kw), tmp_path / "b", progress=False)
    last = tmp_path / "b" / "checkpoints" / "last.pt"
    ck = load_checkpoint(last)
    st = ck["state"]
    old = {
        "model": ck["model"], "optimizer": ck["optimizer"], "scheduler": ck["scheduler"], "scaler": ck["scaler"],
        "early_stopping": {"best": ck["stopper"]["best"] if ck["stopper"]["best"] is not None else float("-inf"), "bad_checks": ck["stopper"]["bad_epochs"]},
        "epoch": st["epoch"], "batch": st["batch"], "global_step": st["global_step"],
        "history": [{k: h[k] for k in ("epoch", "train_loss", "val_iou", "val_dice", "lr", "seconds")} for h in st["history"]],
        "rng": ck["rng"], "config": ck["config"],
    }
    atomic_torch_save(old, last)
    resumed = finetune_sam(_cfg(tiny_ckpt, **kw), tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "sam_last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "sam_last.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final"]["val_dice"] == full["final"]["val_dice"] and resumed["best_val_dice"] == full["best_val_dice"]


def test_lora_merge_and_official_layout(tiny_ckpt, tmp_path):
    cfg = _cfg(tiny_ckpt, train=["lora"], prompts="box-jitter", epochs=1)
    seg = _load_model(cfg)
    _prepare_model(seg, cfg)
    with torch.no_grad():
        for m in seg.model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0, 0.05)
    image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    from segprompt.prompts import Points, PromptSet

    ps = PromptSet(points=Points([[40, 30]], [1]))
    ref = seg.segment(seg.encode(image), ps, multimask="all")
    path = export_checkpoint(seg, tmp_path / "ft.pth")
    sd = torch.load(path, weights_only=True)
    assert not any("lora" in k or ".base." in k for k in sd)
    assert set(sd) == set(tiny_arch().build().state_dict())
    loaded = create_segmenter("sam", checkpoint=str(path))
    got = loaded.segment(loaded.encode(image), ps, multimask="all")
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
    assert (got.masks == ref.masks).mean() > 0.999
    # the same export of an official-size model loads in segment-anything's own registry
    from segment_anything import sam_model_registry

    from segprompt.models.sam import SamSegmenter
    from segprompt.models.sam_arch import OFFICIAL_ARCHS

    torch.manual_seed(0)
    big = SamSegmenter(model=OFFICIAL_ARCHS["vit_b"].build())
    inject_lora(big.model, ["image_encoder.blocks.*.attn.qkv"], rank=2)
    with torch.no_grad():
        big.model.image_encoder.blocks[0].attn.qkv.lora_b.fill_(0.01)
    expected = big.model.image_encoder.blocks[0].attn.qkv.merged().weight.clone()
    path = export_checkpoint(big, tmp_path / "vitb.pth")
    official = sam_model_registry["vit_b"](checkpoint=str(path))
    assert torch.equal(official.image_encoder.blocks[0].attn.qkv.weight, expected)
    merge_lora(big.model)
    assert not any(isinstance(m, LoRALinear) for m in big.model.modules())


@pytest.mark.slow
def test_ddp_two_processes_match_one(tiny_ckpt, tmp_path):
    """torchrun with 2 gloo processes x batch 2 gives the weights of 1 process x batch 4."""
    data = {"n": 12, "seed": 0, "size": 96}  # 8 training images: 2 steps per epoch either way
    script = tmp_path / "ddp_run.py"
    script.write_text(
        "import sys, json\n"
        "from pointprompt.finetune import FinetuneConfig, finetune_sam\n"
        "bs = int(sys.argv[2])\n"
        f"cfg = FinetuneConfig(dataset='synthetic-lesions', dataset_kwargs={data!r}, model=None, checkpoint={tiny_ckpt!r}, "
        "train=['mask_decoder'], prompts='random', epochs=2, batch_size=bs, lr=1e-3, early_stop=0)\n"
        "finetune_sam(cfg, sys.argv[1], progress=False)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", str(script), str(tmp_path / "ddp"), "2"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "4"], capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    a = torch.load(tmp_path / "ddp" / "sam_last.pth", weights_only=True)
    b = torch.load(tmp_path / "one" / "sam_last.pth", weights_only=True)
    diffs = [float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point()]
    assert max(diffs) < 1e-4
    moved = [k for k in a if k.startswith("mask_decoder.") and a[k].is_floating_point()]
    assert moved


def test_cli_finetune_and_resume_flag(tiny_ckpt, tmp_path, capsys):
    from segprompt.cli import main

    args = ["finetune", "sam", "--dataset", "synthetic-lesions", "--checkpoint", tiny_ckpt, "--limit", "6", "--epochs", "1", "--batch-size", "2", "--train", "prompt_encoder", "--prompts", "centre", "--out", str(tmp_path / "cli")]
    # --limit works on the synthetic set's default 32 images
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "trainable parameters" in printed and "validation IoU" in printed
    # rerunning the finished run trains nothing and says so; --resume is still accepted (a no-op)
    assert main(args) == 0
    assert f"{tmp_path / 'cli'}: already finished (1 epoch); nothing to train" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert main(["finetune", "sam", "--checkpoint", tiny_ckpt, "--train", "decoder", "--out", str(tmp_path / "x")]) == 2
    assert "no submodule 'decoder'" in capsys.readouterr().err


def test_strategy_matrix(tiny_ckpt, tmp_path, capsys):
    from segprompt.cli import main

    out = tmp_path / "matrix"
    args = ["finetune", "matrix", "--dataset", "synthetic-lesions", "--checkpoint", tiny_ckpt, "--limit", "6", "--epochs", "1",
            "--batch-size", "2", "--lr", "1e-3", "--strategies", "random,centre", "--positive", "2", "--negative", "1", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["train"], r["test"]) for r in rows} == {(a, b) for a in ("none", "random", "centre") for b in ("random", "centre")}
    assert all(0.0 <= r["iou"] <= 1.0 for r in rows)
    assert (out / "train_random" / "sam_best.pth").exists() and (out / "matrix.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| trained with" in report and "| none" in report
    # the models differ from the base model: each was trained with its own prompts
    none = {r["test"]: r["iou"] for r in rows if r["train"] == "none"}
    assert any(r["iou"] != none[r["test"]] for r in rows if r["train"] != "none")
    # rerun: no training, no evaluation
    before = (out / "results.jsonl").read_text()
    assert main(args) == 0
    assert (out / "results.jsonl").read_text() == before
