"""``segprompt finetune sam2``: SAM 2 through finetune_sam's loop (no second copy): the adapter against
the sam2 package's own predictor, learning on synthetic lesions, exact resume, the exported
checkpoint in the package's ``build_sam2``, the CLI."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")
from sam2.build_sam import build_sam2  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

from pointprompt.finetune import FinetuneConfig  # noqa: E402
from pointprompt.finetune_prompts import TrainPrompt  # noqa: E402
from pointprompt.finetune_sam2 import (  # noqa: E402
    SAM2_LORA_TARGETS,
    Sam2TrainStep,
    export_sam2,
    finetune_sam2,
    load_sam2_segmenter,
    pack_features,
    prepare_sam2,
    sam2_config,
    sam2_frame,
    state_maps,
)
from segprompt.backbones.lora import LoRALinear  # noqa: E402
from segprompt.data.synthetic import SyntheticLesions  # noqa: E402
from segprompt.models import create_segmenter  # noqa: E402
from segprompt.models.sam2_build import read_checkpoint, tiny_arch, write_tiny_checkpoint  # noqa: E402
from segprompt.prompts import Points, PromptSet  # noqa: E402

SIZE = 128  # the tiny SAM 2's square input
DATA = {"dataset": "synthetic-lesions", "dataset_kwargs": {"n": 12, "seed": 0, "size": 96}}  # 8 train, 2 validation, 2 test images


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("sam2") / "tiny_sam2.pt", seed=0, image_size=SIZE))


def _cfg(ckpt, **kw):
    base = dict(**DATA, model=None, checkpoint=ckpt, epochs=2, batch_size=2, lr=1e-3, iterations=2, early_stop=0)
    base.update(kw)
    return FinetuneConfig(**base)


def _rows(path):
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


def _predictor(model):
    pred = SAM2ImagePredictor(model)
    pred._bb_feat_sizes = [(SIZE // 4, SIZE // 4), (SIZE // 8, SIZE // 8), (SIZE // 16, SIZE // 16)]  # sam2 1.1.0 assumes 1024 px
    return pred


def test_training_step_decodes_as_the_packages_predictor(tiny_ckpt):
    """The adapter (packed features, SAM's call signatures, box as corner points, mask feedback)
    gives SAM2ImagePredictor's low-res logits and IoU predictions, from the cached and from the
    live (differentiable) image encoding alike."""
    sample = SyntheticLesions(n=1, seed=3, size=(90, 140))[0]
    seg = load_sam2_segmenter(_cfg(tiny_ckpt))
    fs = sam2_frame(sample, 0, seg.image_size, seg.lowres_size)
    assert fs.image.shape == (SIZE, SIZE, 3) and fs.lowres.shape == (SIZE // 4, SIZE // 4)
    cached = pack_features(state_maps(seg.encode(sample.image).features))
    step = Sam2TrainStep(seg, _cfg(tiny_ckpt), {fs.id: cached}).eval()
    live = Sam2TrainStep(seg, _cfg(tiny_ckpt), None).eval()
    with torch.no_grad():
        emb_live = live._embed([fs])
    torch.testing.assert_close(emb_live, cached, atol=1e-5, rtol=0)

    pred = _predictor(seg.model)
    pred.set_image(sample.image)
    h, w = sample.size
    scale = np.array([SIZE / w, SIZE / h])
    ys, xs = np.nonzero(sample.mask)
    click = np.array([[xs.mean(), ys.mean()], [5.0, h - 6.0]])
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    feedback = None
    for coords, labels, bx, multimask in [(click[:1], [1], None, True), (click, [1, 0], None, False), (click[1:], [0], box, False)]:
        p = TrainPrompt(coords * scale, np.array(labels), None if bx is None else (bx.reshape(2, 2) * scale).reshape(4), multimask)
        with torch.no_grad():
            logits, iou = step._decode(step._embed([fs]), p, feedback)
        _, ref_iou, ref_low = pred.predict(point_coords=coords, point_labels=np.array(labels), box=bx, mask_input=None if feedback is None else feedback[0].numpy(), multimask_output=multimask, return_logits=True)
        np.testing.assert_allclose(logits[0].numpy(), ref_low, atol=2e-4)
        np.testing.assert_allclose(iou[0].numpy(), ref_iou, atol=1e-4)
        feedback = logits[:, int(iou[0].argmax()) : int(iou[0].argmax()) + 1]  # the next pass gets the best logits back


def test_finetuning_learns_on_synthetic_lesions(tiny_ckpt, tmp_path):
    """32 steps of the mask decoder: the training loss falls and validation / test IoU and Dice rise
    above the untrained tiny model's."""
    result = finetune_sam2(_cfg(tiny_ckpt, train=["mask_decoder"], prompts="random", epochs=8, lr=3e-3), tmp_path / "run", progress=False)
    rows = [r for r in _rows(tmp_path / "run") if r["kind"] == "epoch"]
    losses = [r["train_loss"] for r in rows[1:]]
    base, final = result["baseline"], result["final"]
    print(f"train loss {losses[0]:.4f} -> {losses[-1]:.4f}; val IoU {base['val_iou']:.4f} -> {final['val_iou']:.4f}, "
          f"Dice {base['val_dice']:.4f} -> {final['val_dice']:.4f}; test IoU {result['test']['before']['iou']:.4f} -> {result['test']['best']['iou']:.4f}")
    assert losses[-1] < 0.7 * losses[0]
    assert final["val_iou"] > base["val_iou"] + 0.1 and final["val_dice"] > base["val_dice"] + 0.1
    assert result["test"]["best"]["dice"] > result["test"]["before"]["dice"]
    # only the mask decoder moved, and not its projections of the cached high-resolution features
    before, _ = read_checkpoint(tiny_ckpt)
    after, record = read_checkpoint(result["checkpoint"])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("sam_mask_decoder.") and ".conv_s" not in k for k in changed)
    assert record == tiny_arch(SIZE).to_json()
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.startswith("# SAM 2 finetuning") and "`sam2_best.pt`" in report


def test_resume_after_interruption_is_exact(tiny_ckpt, tmp_path, caplog):
    kw = dict(train=["lora", "prompt_encoder"], prompts="mixed", epochs=2)  # max_steps saves the interrupted state itself
    full = finetune_sam2(_cfg(tiny_ckpt, **kw), tmp_path / "a", progress=False)
    stopped = finetune_sam2(_cfg(tiny_ckpt, max_steps=3, **kw), tmp_path / "b", progress=False)
    assert stopped["stopped_at_step"] == 3  # mid-epoch 1 (4 steps per epoch)
    with caplog.at_level(logging.INFO, logger="pointprompt.finetune"):
        resumed = finetune_sam2(_cfg(tiny_ckpt, **kw), tmp_path / "b", progress=False)
    assert any(r.getMessage().startswith(f"resuming {tmp_path / 'b'}: epoch 1 batch 4 of 2 epochs") for r in caplog.records)
    a, _ = read_checkpoint(tmp_path / "a" / "sam2_last.pt")
    b, _ = read_checkpoint(tmp_path / "b" / "sam2_last.pt")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final"] == {**full["final"], "seconds": resumed["final"]["seconds"]}
    assert resumed["test"] == full["test"]
    # the run trained the Hiera attention through LoRA (merged at export) and the prompt encoder
    base, _ = read_checkpoint(tiny_ckpt)
    assert not torch.equal(a["image_encoder.trunk.blocks.0.attn.qkv.weight"], base["image_encoder.trunk.blocks.0.attn.qkv.weight"])
    assert not torch.equal(a["sam_prompt_encoder.point_embeddings.0.weight"], base["sam_prompt_encoder.point_embeddings.0.weight"])
    config = (tmp_path / "a" / "config.yaml").read_text()
    assert "finetune-sam2" in config and SAM2_LORA_TARGETS[0] in config


def test_lora_export_loads_in_the_packages_build_sam2(tiny_ckpt, tmp_path):
    """LoRA merged into plain weights: the file loads strictly in ``build_sam2(config, path,
    hydra_overrides_extra=...)`` and predicts the masks of the finetuned model, through the
    package's predictor and through our segmenter alike."""
    cfg = sam2_config(_cfg(tiny_ckpt, train=["lora"]))
    seg = load_sam2_segmenter(cfg)
    n = prepare_sam2(seg, cfg)
    wrapped = [m for m in seg.model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 5  # one qkv per Hiera block of the tiny trunk (1 + 1 + 2 + 1)
    assert n == sum(p.numel() for p in seg.model.sam_mask_decoder.parameters()) + sum(m.lora_a.numel() + m.lora_b.numel() for m in wrapped)
    with torch.no_grad():
        for m in wrapped:
            m.lora_b.normal_(0, 0.05)
    seg.forget_weights_hash()
    sample = SyntheticLesions(n=1, seed=5, size=(100, 120))[0]
    ys, xs = np.nonzero(sample.mask)
    click = np.array([[xs.mean(), ys.mean()]])
    ours = seg.segment(seg.encode(sample.image), PromptSet(points=Points(click, [1])), multimask="all")
    path = export_sam2(seg, tmp_path / "ft.pt")
    sd, record = read_checkpoint(path)
    assert not any("lora" in k or ".base." in k for k in sd)
    model = build_sam2(record["config"], str(path), device="cpu", hydra_overrides_extra=list(record["overrides"]))
    pred = _predictor(model)
    pred.set_image(sample.image)
    masks, scores, _ = pred.predict(point_coords=click, point_labels=np.array([1]), multimask_output=True)
    assert (masks.astype(bool) == ours.masks[0]).mean() > 0.999
    np.testing.assert_allclose(scores, ours.scores[0], atol=1e-4)
    loaded = create_segmenter("sam2", checkpoint=str(path))
    again = loaded.segment(loaded.encode(sample.image), PromptSet(points=Points(click, [1])), multimask="all")
    assert (again.masks == ours.masks).mean() > 0.999
    # and the LoRA update is in the file: the untrained model predicts something else
    base = create_segmenter("sam2", checkpoint=tiny_ckpt)
    before = base.segment(base.encode(sample.image), PromptSet(points=Points(click, [1])), multimask="all")
    assert np.abs(before.scores - ours.scores).max() > 1e-3


def test_cli_runs_and_a_rerun_resumes(tiny_ckpt, tmp_path, capsys, caplog):
    from segprompt.cli import main

    out = tmp_path / "cli"
    args = ["finetune", "sam2", "--checkpoint", tiny_ckpt, "--limit", "6", "--epochs", "2", "--batch-size", "2", "--train", "mask_decoder,prompt_encoder",
            "--prompts", "centre", "--out", str(out)]
    # the run the command would make, stopped after its first step (as if killed)
    cli_cfg = FinetuneConfig(dataset="synthetic-lesions", model=None, checkpoint=tiny_ckpt, limit=6, epochs=2, batch_size=2,
                             train=["mask_decoder", "prompt_encoder"], prompts="centre", max_steps=1)
    assert finetune_sam2(cli_cfg, out, progress=False)["stopped_at_step"] == 1
    with caplog.at_level(logging.INFO, logger="pointprompt.finetune"):
        assert main(args) == 0, capsys.readouterr().err
    assert any(r.getMessage().startswith(f"resuming {out}: epoch 1 batch 2 of 2 epochs") for r in caplog.records)
    printed = capsys.readouterr().out
    assert "trainable parameters" in printed and "validation IoU" in printed and "create_segmenter('sam2'" in printed
    assert (out / "sam2_best.pt").exists() and (out / "sam2_last.pt").exists()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pointprompt.finetune"):
        assert main(args) == 0
    assert any(r.getMessage().startswith(f"{out}: already finished (2 epochs)") for r in caplog.records)
    # a SAM checkpoint, no checkpoint, or a part SAM 2 does not have: one-line errors
    assert main(["finetune", "sam2", "--out", str(tmp_path / "x")]) == 2
    assert "finetune sam2 needs --checkpoint" in capsys.readouterr().err
    assert main(["finetune", "sam2", "--checkpoint", tiny_ckpt, "--train", "decoder", "--out", str(tmp_path / "y")]) == 2
    assert "no submodule 'decoder'" in capsys.readouterr().err
