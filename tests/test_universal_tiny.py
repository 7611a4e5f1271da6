"""The bundled universal-tiny against the issue's bars, on held-out synthetic scenes (seed 4242:
training used seed 0, validation 999, the closing-note evaluation 2024).

A bar the model does not reach yet is a strict expected failure: a retrained model that reaches
it makes the marker fail, which tells whoever retrains to move it. universal-tiny v3 (v2's
detail stem, prompt-aware mask features and box map, then stage 6's correction sessions) reaches
the text bar (0.750 here), the reference bar (0.627) and the box bar (0.711 -> 0.777); NoC@85
(7.17, 5.33 with RITM's zoom-in, vs GrabCut 7.0) is not reached.
"""

from __future__ import annotations

import numpy as np
import pytest

SEED = 4242


@pytest.fixture(scope="module")
def seg():
    from segprompt.models.registry import create_segmenter

    return create_segmenter("universal-tiny")


@pytest.fixture(scope="module")
def scenes():
    from segprompt.data.scenes import ObjectScenes
    from segprompt.universal.run import scenes_of

    return scenes_of(ObjectScenes(n=24, seed=SEED), range(24))


def test_the_bundled_model_and_its_record(seg):
    from segprompt.models.universal import universal_tiny_path

    record = __import__("json").loads(universal_tiny_path().with_suffix(".json").read_text())
    assert record["model"] == "universal-tiny" and record["data"]["train"]["seed"] != SEED
    assert universal_tiny_path().stat().st_size < 10e6, "the bundled file is fp16"
    assert seg.vocabulary == ("disc", "star", "ring", "square", "triangle", "cross", "crescent", "leaf")


def test_text_prompts_reach_the_miou_bar(seg, scenes):
    from segprompt.universal.evaluate import text_miou

    out = text_miou(seg, scenes)
    assert out["miou"] >= 0.6, out


def test_a_reference_from_one_scene_segments_its_class_in_another(seg, scenes):
    from segprompt.universal.evaluate import reference_iou

    out = reference_iou(seg, scenes)
    assert out["n"] >= 20 and out["mean_iou"] >= 0.5, out


def test_adding_a_box_to_a_point_never_lowers_mean_iou(seg, scenes):
    from segprompt.universal.evaluate import box_gain

    out = box_gain(seg, scenes)
    assert out["point_box"] >= out["point"], out


@pytest.mark.parametrize("zoom_in", [
    pytest.param(False, marks=pytest.mark.xfail(strict=True, reason="universal-tiny v3 without zoom-in: NoC@85 7.17 against GrabCut's 7.0 here (v2 8.5, v1 16.0); see docs/universal.md")),
    pytest.param(True, marks=pytest.mark.xfail(strict=True, reason="universal-tiny v3 with RITM's zoom-in: NoC@85 5.33 against GrabCut's 7.0 here (0.76x; 0.54x on the tuning seed 77); with f-BRS 5.83 (tests/test_brs.py); two touching rings of one class and a pale crescent are never reached, see docs/universal.md")),
], ids=["plain", "zoom-in"])
def test_noc85_is_at_most_0_7_of_grabcuts(tmp_path, zoom_in):
    """The point benchmark's protocol (micro-sam corrector, 10 steps = up to 19 clicks) on the
    objects of 4 held-out scenes, universal-tiny (plain, and with RITM's zoom-in) and GrabCut on
    the same objects."""
    from pointprompt.bench import PointBenchConfig, run_pointprompt

    cfg = PointBenchConfig(
        datasets=["synthetic-object-instances"], dataset_kwargs={"synthetic-object-instances": {"n": 4, "seed": SEED}},
        models=["universal-tiny", "grabcut"], strategies=["microsam"], steps=10,
        model_kwargs={"universal-tiny": {"zoom_in": True}} if zoom_in else {},
    )
    summary = run_pointprompt(cfg, tmp_path / "bench", progress=False)
    rows = {r["model"]: r for r in summary["table"]}
    assert rows["universal-tiny"]["trajectories"] == rows["grabcut"]["trajectories"] >= 8
    assert rows["universal-tiny"]["noc85"] <= 0.7 * rows["grabcut"]["noc85"], rows
