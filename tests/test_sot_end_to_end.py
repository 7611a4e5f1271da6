"""Show-or-Tell end to end with the embedded models (bundled universal-tiny, sam-tiny): synthetic
scenes against chance, and the real sample sets (camvid, sammed2d_demo) through the whole suite."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from segprompt.sot.bench import SotBenchConfig, run_sot


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chance_miou(masks, n_labels, has_background=True, ignore_index=255):
    """SoT's mIoU expected from labelling every pixel uniformly at random among the ``n_labels``
    labels (background included): class c with pixel share f gets IoU (f / L) / (f + 1/L - f/L);
    the mean is over the classes with ground truth, background left out."""
    counts = np.zeros(n_labels)
    for m in masks:
        v = m[m != ignore_index]
        counts += np.bincount(v.ravel(), minlength=n_labels)[:n_labels]
    f, L = counts / counts.sum(), n_labels
    iou = (f / L) / (f + 1 / L - f / L)
    present = np.flatnonzero(counts > 0)
    present = present[1:] if has_background else present
    return float(iou[present].mean())


def test_synthetic_scenes_text_and_visual_beat_three_times_chance(tmp_path):
    """The bundled universal-tiny's text and reference prompts, SoT's protocol on 8 held-out scenes
    (seed 2024, 256 px), 1-shot, one seed: both above 3x the chance mIoU (about 0.03 here)."""
    from segprompt.data import load_dataset

    cfg = SotBenchConfig(methods=["universal-text", "universal-reference"], shots=[1], seeds=[0], limit=8, size="original", oracle=False, synthetic_train=24)
    summary = run_sot(cfg, tmp_path / "run", progress=False)
    evaluated = load_dataset("synthetic-objects", n=cfg.synthetic_eval, seed=2024)
    chance = chance_miou([evaluated[i].mask for i in range(8)], 9)
    by = {t["method"]: t for t in summary["table"]}
    for m in cfg.methods:
        assert by[m]["images"] == 8
        assert by[m]["miou_sot"] > 3 * chance, (m, by[m]["miou_sot"], chance)
    assert 0.02 < chance < 0.05
    assert (tmp_path / "run" / "report.md").exists()


@pytest.mark.realdata
@pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)")
def test_camvid_and_sammed2d_run_through_the_suite(tmp_path):
    """camvid (11 classes, no background) and sammed2d_demo (one text per structure) with the
    embedded methods: a row per image with its references, the closed vocabulary's refusals
    reported, never an evaluated image as a reference, and a resumed rerun computes nothing."""
    cfg = SotBenchConfig(
        datasets=["camvid", "sammed2d_demo"], methods=["universal-text", "universal-reference"], shots=[1], seeds=[0], limit=2, size=256, oracle=False
    )
    out = tmp_path / "run"
    summary = run_sot(cfg, out, progress=False)
    rows = _rows(out / "results.jsonl")
    assert len(rows) == 2 * 2 * 2
    cam = [r for r in rows if r["dataset"] == "camvid"]
    med = [r for r in rows if r["dataset"] == "sammed2d_demo"]
    assert not cam[0]["has_background"] and len(cam[0]["labels"]) == 11
    # universal-tiny knows 8 shape words, none of CamVid's: every class is refused and reported
    text_cam = next(r for r in cam if r["method"] == "universal-text")
    assert set(text_cam["failed_classes"]) == set(text_cam["prompted"])
    ref_cam = next(r for r in cam if r["method"] == "universal-reference")
    evaluated = {r["image"] for r in cam}
    drawn = {i for ids in ref_cam["reference_ids"].values() for i in ids}
    assert drawn and drawn.isdisjoint(evaluated)
    assert med[0]["has_background"] and med[0]["labels"][0] == "background" and len(med[0]["labels"]) > 2
    for r in rows:
        assert np.asarray(r["confusion_sot"]).sum() > 0
    assert {t["dataset"] for t in summary["table"]} == {"camvid", "sammed2d_demo"}
    again = run_sot(cfg, out, progress=False)
    assert len(_rows(out / "results.jsonl")) == len(rows)
    assert [t["miou_sot"] for t in again["table"]] == [t["miou_sot"] for t in summary["table"]]
