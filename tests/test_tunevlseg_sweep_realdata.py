"""The issue's CI sweep on real sample data: kvasir_seg and busi (from $SEGPROMPT_DATA_ROOT)
converted to TuneVLSeg's split-file layout by `segprompt data convert-tunevlseg`, then every
method x 2 depths x both datasets with the tiny open_clip VLSM, and the report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from segprompt.cli import cli
from segprompt.engine.runfolder import JsonlLog

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)"),
]

SETS = {"kvasir_seg": ("kvasir", "polyp"), "busi": ("busi", "breast tumor")}
METHODS = "zeroshot,coop,cocoop,vpt-shallow,vpt-deep,maple,shared-separate,shared-attention,full"


def test_sweep_on_converted_kvasir_and_busi(tmp_path):
    root = Path(os.environ["SEGPROMPT_DATA_ROOT"])
    present = list(SETS)
    missing = [folder for folder in SETS if not (root / folder).is_dir()]
    assert not missing, f"{missing} missing under {root}"
    runner = CliRunner()
    converted = []
    for folder in present:
        name, text = SETS[folder]
        out = tmp_path / name
        res = runner.invoke(cli, ["data", "convert-tunevlseg", name, str(out), "--text", text])
        assert res.exit_code == 0, res.output
        assert (out / "anns" / "test.json").is_file()
        converted.append(str(out))
    run = tmp_path / "sweep"
    res = runner.invoke(cli, ["bench", "tunevlseg", "--vlsm", "openclip-tiny", "--methods", METHODS, "--depths", "1,2",
                              "--datasets", ",".join(converted), "--epochs", "1", "--batch-size", "4", "--max-train-samples", "8",
                              "--max-eval-samples", "4", "--out", str(run)])
    assert res.exit_code == 0, res.output
    cells = [r for r in JsonlLog(run / "results.jsonl") if r.get("kind") == "cell"]
    assert len(cells) == 14 * len(converted)
    assert all(r["split"] == "test" and not r["test_is_val"] and r["n_test"] == 4 for r in cells)
    table = (run / "table.md").read_text()
    assert all(f"| {m} " in table for m in METHODS.split(","))
    assert (run / "table.tex").read_text().count(r"\\") == 10
    for path in converted:
        assert (run / f"dice_vs_depth_{Path(path).name}.png").read_bytes()[:4] == b"\x89PNG"
