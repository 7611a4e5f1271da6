"""Learning test: sam-tiny finetuned on the kvasir_seg training part improves held-out IoU."""

from __future__ import annotations

import os

import pytest

from pointprompt.finetune import FinetuneConfig, finetune_sam

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)"),
]


def test_sam_tiny_finetuned_on_kvasir_beats_the_unfinetuned_model(tmp_path):
    cfg = FinetuneConfig(
        dataset="kvasir",
        model="sam-tiny",
        train=["mask_decoder", "prompt_encoder"],
        prompts="mixed",
        strategy="random",
        epochs=10,
        batch_size=4,
        lr=1e-3,
        val_fraction=0.25,
        split_seed=0,
        seed=0,
        early_stop=0,
        eval_strategy="random",
        eval_positive=1,
        eval_negative=0,
    )
    result = finetune_sam(cfg, tmp_path / "ft", progress=False)
    before = result["baseline"]["val_iou"]
    assert result["train_images"] == 45 and result["val_images"] == 15  # fixed-seed 75/25 split of the 60 images
    # held-out mean IoU of random one-point prompts: measured 0.151 before, 0.269 after 10 epochs
    assert result["final"]["val_iou"] > before + 0.06, (before, result["final"]["val_iou"])
    assert result["final"]["val_dice"] > result["baseline"]["val_dice"]
