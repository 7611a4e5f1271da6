"""benchmarks/sam_speed.py stays runnable (its GPU variant has never run here): all three parts on a tiny SAM.

Not a timing test: the ratios are not asserted, only that both sides agree and the JSON has its rows.
"""

from __future__ import annotations

import json
import os
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


def test_decoder_paths_script_runs_and_the_paths_agree():
    """benchmarks/sam_decoder_paths.py (the numbers behind decoder="auto"): both paths give the same masks."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sam_decoder_paths.py"), "--sizes", "128", "--sets", "4", "--rounds", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = [line for line in proc.stdout.splitlines() if line.startswith("| tiny | 128 px |")]
    assert len(row) == 1
    assert float(row[0].split("|")[-2]) >= 0.999  # masks equal


def test_decoder_paths_populate_mode_times_both_allocators_and_restores_the_default():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sam_decoder_paths.py"), "--sizes", "128", "--sets", "3", "--rounds", "2", "--populate"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split(":")[0].strip(): line.split(":")[1] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert set(rows) == {"populated_empty", "np.empty"}
    assert all(len(v.split(",")) == 2 and all(float(x) > 0 for x in v.split(",")) for v in rows.values())


def test_sam2_batch_script_runs_and_batch_sizes_agree():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sam2_batch.py"), "--arch", "tiny", "--sets", "4", "--batches", "1,4", "--rounds", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| 1 |") or line.startswith("| 4 |")]
    assert len(rows) == 2 and all(float(r[2]) > 0 and float(r[3]) >= 0.999 for r in rows)


def test_decoder_paths_resize_mode_times_both_and_the_masks_agree():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sam_decoder_paths.py"), "--resize", "--sets", "2", "--rounds", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split(":")[0].strip(): line.split(":")[1] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert float(rows["torch"]) > 0 and float(rows["opencv"]) > 0
    assert float(rows["pixels equal"]) >= 0.9999
