"""The bundled sam-tiny on real images: at least as good as GrabCut from the centre click and
after two micro-sam correction clicks on kvasir_seg, busi and ph2 (issue 16's bar), while still
segmenting the synthetic lesions it has always been tested on. sam-tiny never saw these sets:
it is trained on the domain-randomised synthetic data only (its record says so).

Two benchmark runs on the same images and trajectories rules: ``real_table`` with the
benchmark's ``auto`` policy (one click: the best-scored of three candidates) and
``single_table`` with the single-mask head, sam-tiny's own policy."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import ndimage

from pointprompt.bench import PointBenchConfig, run_pointprompt
from segprompt.data.synthetic import SyntheticLesions
from segprompt.models import create_segmenter
from segprompt.models.sam_tiny import sam_tiny_record
from segprompt.prompts import Points, PromptSet

REAL_SETS = ("kvasir_seg", "busi", "ph2")


def real(test):
    """The real-data marks: ``realdata``, skipped (with the reason) without SEGPROMPT_DATA_ROOT."""
    skip = pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)")
    return pytest.mark.realdata(skip(test))


@pytest.fixture(scope="module")
def real_table(tmp_path_factory):
    """sam-tiny and GrabCut on every image of each set (BUSI's 4 normal images have no lesion
    and are skipped for both), the same micro-sam trajectories for both: click 1 at the centre
    (the point farthest from the border), clicks 2-3 at the centre of the largest error region."""
    cfg = PointBenchConfig(datasets=list(REAL_SETS), models=["sam-tiny", "sam-tiny@refined", "grabcut"], strategies=["microsam"], n_positive=3, n_negative=0, steps=3,
                           model_kwargs={"sam-tiny@refined": REFINED})
    summary = run_pointprompt(cfg, tmp_path_factory.mktemp("real") / "run", progress=False)
    table = {(t["dataset"], t["model"]): t for t in summary["table"]}
    for name in REAL_SETS:
        tiny, grab = table[(name, "sam-tiny")], table[(name, "grabcut")]
        assert tiny["trajectories"] == grab["trajectories"] >= 36
        print(f"{name}: sam-tiny {tiny['iou@1']:.3f} / {tiny['iou@last']:.3f}, grabcut {grab['iou@1']:.3f} / {grab['iou@last']:.3f}")
    return table


@pytest.fixture(scope="module")
def single_table(tmp_path_factory, real_table):
    """sam-tiny with its own policy, the single-mask head at every click, and the same with f-BRS
    for the corrections; GrabCut has no candidates, so its rows stay ``real_table``'s."""
    cfg = PointBenchConfig(datasets=list(REAL_SETS), models=["sam-tiny", "sam-tiny@brs"], strategies=["microsam"], n_positive=3, n_negative=0, steps=3,
                           multimask="single", model_kwargs={"sam-tiny@brs": {"brs": True}})
    summary = run_pointprompt(cfg, tmp_path_factory.mktemp("single") / "run", progress=False)
    table = {(t["dataset"], t["model"]): t for t in summary["table"]}
    for name in REAL_SETS:
        table[(name, "grabcut")] = real_table[(name, "grabcut")]
        assert table[(name, "sam-tiny")]["trajectories"] == table[(name, "grabcut")]["trajectories"]
    return table


#: sam-tiny's two inference options: the first click's logits fed back once (segprompt.models.cascade),
#: then f-BRS from the third click (segprompt.models.brs)
REFINED = {"cascade": {"max_clicks": 1}, "brs": True}
#: (set, clicks) where the bundled sam-tiny is at least GrabCut, and where not yet (issue 16). Its
#: own policy, the single head (measured, first click / after two corrections: kvasir_seg 0.449 /
#: 0.519 against GrabCut's 0.443 / 0.537, busi 0.474 / 0.516 against 0.459 / 0.459, ph2 0.749 /
#: 0.764 against 0.716 / 0.733); with f-BRS for the corrections (0.559, 0.541, 0.784) all six
SINGLE_REACHED = [("kvasir_seg", 1), ("busi", 1), ("ph2", 1), ("busi", 3), ("ph2", 3)]
SINGLE_NOT_REACHED = [("kvasir_seg", 3)]
ALL_SIX = [(n, c) for n in REAL_SETS for c in (1, 3)]
#: the same with the best-scored of three candidates for one click (the benchmark's ``auto``)
REACHED = [("busi", 3), ("ph2", 1), ("ph2", 3)]
NOT_REACHED = [("kvasir_seg", 1), ("kvasir_seg", 3), ("busi", 1)]
#: how far above the first sam-tiny's centre-click IoU the current one must stay
FLOOR_MARGIN = {"kvasir_seg": 0.15, "busi": 0.08, "ph2": 0.05}
#: the same with REFINED (measured, first click / after two corrections: kvasir_seg 0.441 / 0.550
#: against GrabCut's 0.443 / 0.537, busi 0.469 / 0.544 against 0.459 / 0.459, ph2 0.755 / 0.776
#: against 0.716 / 0.733)
REFINED_REACHED = [("busi", 1), ("ph2", 1), ("kvasir_seg", 3), ("busi", 3), ("ph2", 3)]
REFINED_NOT_REACHED = [("kvasir_seg", 1)]


def _cases(table: str, model: str, reached: list, not_reached: list, reason: str) -> list:
    """pytest params (table, model, set, clicks); the ones not reached are strict expected failures."""
    xfail = pytest.mark.xfail(strict=True, reason=f"{reason} (see docs/sam_tiny.md); strict, so reaching it fails this marker")
    return [pytest.param(table, model, n, c, id=f"{table}-{model}-{n}-{c}") for n, c in reached] + [
        pytest.param(table, model, n, c, marks=xfail, id=f"{table}-{model}-{n}-{c}") for n, c in not_reached
    ]


@real
@pytest.mark.parametrize(
    "table,model,name,clicks",
    _cases("single_table", "sam-tiny", SINGLE_REACHED, SINGLE_NOT_REACHED, "without f-BRS two corrections on kvasir_seg give 0.519, GrabCut 0.537")
    + _cases("single_table", "sam-tiny@brs", ALL_SIX, [], "")
    + _cases("real_table", "sam-tiny", REACHED, NOT_REACHED, "the best-scored candidate does not reach GrabCut here")
    + _cases("real_table", "sam-tiny@refined", REFINED_REACHED, REFINED_NOT_REACHED, "from the centre click on kvasir_seg the refined sam-tiny gives 0.441, GrabCut 0.443"),
)
def test_sam_tiny_is_at_least_grabcut(request, table, model, name, clicks):
    rows = request.getfixturevalue(table)
    key = "iou@1" if clicks == 1 else "iou@last"
    assert rows[(name, model)][key] >= rows[(name, "grabcut")][key]


@real
@pytest.mark.parametrize("name", REAL_SETS)
def test_the_single_head_beats_the_best_scored_candidate_from_the_centre_click(real_table, single_table, name):
    """Why sam-tiny's own policy is the single head: its IoU head learnt to rank candidates on
    synthetic images and ranks them worse than the single head's one mask on every real set
    (kvasir_seg 0.432 -> 0.449, busi 0.410 -> 0.474, ph2 0.744 -> 0.749)."""
    assert single_table[(name, "sam-tiny")]["iou@1"] > real_table[(name, "sam-tiny")]["iou@1"]
    assert create_segmenter("sam-tiny").multimask == "single"


@real
@pytest.mark.parametrize("name", REAL_SETS)
def test_feeding_the_first_clicks_logits_back_raises_it_and_brs_the_corrections(real_table, name):
    """The cascade's one pass raises the centre click on every real set (kvasir_seg 0.432 -> 0.441,
    busi 0.410 -> 0.469, ph2 0.744 -> 0.755), and f-BRS the IoU after two corrections."""
    refined, plain = real_table[(name, "sam-tiny@refined")], real_table[(name, "sam-tiny")]
    assert refined["iou@1"] > plain["iou@1"]
    assert refined["iou@last"] > plain["iou@last"]


@real
def test_sam_tiny_is_far_above_its_first_version_everywhere(real_table):
    """The first sam-tiny (trained on three fixed synthetic looks) reached 0.16 / 0.26 / 0.64 from
    the centre click on kvasir_seg / busi / ph2 and its correction clicks did nothing; the
    randomised training must keep a clear margin over that on every set, and clicks must help."""
    first_version = {"kvasir_seg": 0.162, "busi": 0.259, "ph2": 0.637}
    for name, old in first_version.items():
        row = real_table[(name, "sam-tiny")]
        assert row["iou@1"] >= old + FLOOR_MARGIN[name], (name, row["iou@1"])
        assert row["iou@last"] > row["iou@1"], name


@pytest.fixture(scope="module")
def synthetic_centre_iou() -> float:
    """Mean IoU of sam-tiny from the centre click on 48 varied-size synthetic lesions (computed once)."""
    seg = create_segmenter("sam-tiny")
    ious = []
    for s in SyntheticLesions(n=48, seed=2, size=None, style="mixed"):
        state = seg.encode(s.image)
        dist = ndimage.distance_transform_edt(np.pad(s.mask, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
        m = seg.segment(state, PromptSet(points=Points([[float(c), float(r)]], [1]))).masks[0, 0]
        ious.append((m & s.mask).sum() / (m | s.mask).sum())
    return float(np.mean(ious))


def test_sam_tiny_still_segments_the_synthetic_lesions_from_the_centre_point(synthetic_centre_iou):
    """The three fixed looks of synthetic-lesions (48 images, seed 2), centre click, sam-tiny's own
    policy (the single head): 0.767 now (the best-scored candidate: 0.758; the first sam-tiny,
    trained on these looks only: 0.92)."""
    assert synthetic_centre_iou >= 0.74


@pytest.mark.xfail(strict=True, reason="issue 16 is open: the randomised sam-tiny reaches 0.767, not the issue's 0.8, on the old synthetic looks")
def test_sam_tiny_keeps_the_issues_synthetic_bar(synthetic_centre_iou):
    assert synthetic_centre_iou >= 0.8


def test_the_record_says_how_sam_tiny_was_trained():
    record = sam_tiny_record()
    assert record["version"] >= 2 and record["data"]["dataset"] == "synthetic-random"
    assert "never on real images" in record["note"]
    assert record["trained_with"].startswith("python scripts/train_sam_tiny.py")
    assert record["training_seconds"] > 0 and record["best_epoch"] >= 1
    assert record["arch"]["img_size"] == 256
