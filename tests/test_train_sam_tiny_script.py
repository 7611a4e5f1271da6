"""scripts/train_sam_tiny.py: ``--train`` trains only the parts named, from the bundled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from segprompt.models.sam_arch import load_sam
from segprompt.models.sam_tiny import sam_tiny_path

ROOT = Path(__file__).resolve().parents[1]


def test_iou_head_only_run_changes_only_the_iou_head_and_records_the_chain(tmp_path):
    work = tmp_path / "run"
    cmd = [
        sys.executable, str(ROOT / "scripts" / "train_sam_tiny.py"), "--work", str(work), "--init", str(sam_tiny_path()),
        "--variant", "v3", "--pool", "24", "--epochs", "1", "--batch", "4", "--lr", "1e-2", "--warmup", "1",
        "--train", "mask_decoder.iou_prediction_head", "--prompts", "random", "--threads", "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = load_sam(sam_tiny_path())[0].state_dict()
    after = load_sam(work / "sam_last.pth")[0].state_dict()
    changed = {k for k in before if not torch.equal(before[k].float(), after[k].float())}
    assert changed and all(k.startswith("mask_decoder.iou_prediction_head.") for k in changed), sorted(changed)[:5]
    args = json.loads((work / "train_args.json").read_text())
    assert args["train"] == "mask_decoder.iou_prediction_head" and args["prompts"] == "random"
    init = json.loads((work / "init.json").read_text())
    assert init["from_record"]["model"] == "sam-tiny"  # the bundled model's record, with its training chain
