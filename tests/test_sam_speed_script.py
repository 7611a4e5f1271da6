"""benchmarks/sam_speed.py stays runnable (its GPU variant has never run here): all three parts on a tiny SAM.

Not a timing test: the ratios are not asserted, only that both sides agree and the JSON has its rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("precision,decoder", [("fp32", "shared"), ("bf16", "auto")])
def test_all_parts_run_and_agree(tmp_path, precision, decoder):
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sam_speed.py"), "--arch", "tiny", "--quick", "--sets", "1,4",
           "--precision", precision, "--decoder", decoder, "--threads", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    parts = [r["part"] for r in record["rows"]]
    assert parts == ["encoder", "decoder 1 sets", "decoder 4 sets", "point benchmark"]
    assert record["precision"] == precision
    for row in record["rows"]:
        assert row["reference_per_s"] > 0 and row["ours_per_s"] > 0 and row["ratio"] > 0
    enc, dec = record["rows"][0], record["rows"][2]
    assert enc["max_relative_error"] < (1e-5 if precision == "fp32" else 0.1)
    assert dec["equal_pixels"] >= (0.999 if precision == "fp32" else 0.95)
    assert "| tiny | encoder |" in proc.stdout
