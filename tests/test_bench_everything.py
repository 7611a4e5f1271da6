"""`segprompt bench everything`: the real segment_everything over an oracle model with known
answers (exact AP / PQ / best IoU through the whole run), each ground-truth source, resume, and
the CI run on the real sample data (kvasir, busi, camvid car/pedestrian) with sam-tiny."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from segprompt.data.io import write_image, write_mask
from segprompt.errors import ConfigError
from segprompt.everything_bench import EverythingBenchConfig, run_everything_bench

H = W = 64


class HalfOracle:
    """A point-prompt model that knows the ground truth: a point on instance 1 gets instance 1
    (score 0.99), a point on instance 2 gets the left half of instance 2 (score 0.95), a point
    elsewhere an empty mask. Instance 1 is rows 8-23, cols 8-23; instance 2 rows 36-45, cols 28-47."""

    name = "half-oracle"
    accepts = frozenset({"points"})
    has_multimask = False

    def __init__(self) -> None:
        self.calls = 0
        lab = np.zeros((H, W), np.int64)
        lab[8:24, 8:24] = 1
        lab[36:46, 28:48] = 2
        self.labels = lab
        self.half = np.zeros((H, W), bool)
        self.half[36:46, 28:38] = True

    def encode(self, image):
        self.calls += 1
        return image

    def segment(self, state, sets, multimask="single", **_):
        masks, scores = [], []
        for s in sets:
            x, y = s.points.coords[0]
            v = self.labels[int(y), int(x)]
            masks.append(self.labels == 1 if v == 1 else self.half if v == 2 else np.zeros((H, W), bool))
            scores.append(0.99 if v == 1 else 0.95)
        return SimpleNamespace(masks=np.stack(masks)[:, None], scores=np.array(scores, np.float32)[:, None])


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _binary_folder(root: Path, n: int = 2) -> Path:
    """images/ + masks/ with the two instances as one binary mask (components = the instances)."""
    lab = HalfOracle().labels
    for i in range(n):
        write_image(root / "images" / f"im{i}.png", _image(i))
        write_mask(root / "masks" / f"im{i}.png", lab > 0)
    return root


# Expected, worked by hand (per image: g1 found exactly (IoU 1, score 0.99), g2 half found
# (IoU 0.5, score 0.95)); identical images pool to the same numbers:
# AP50: both matched at IoU >= 0.5 -> precision 1 at every recall -> 1.
# thresholds 0.55..0.95: only g1 -> TP, FP per image -> 51 of 101 recall points read 1 -> 51/101.
# AP = (1 + 9 * 51/101) / 10 = 560/1010.
# PQ: g1 TP (IoU 1), the half is not > 0.5 -> FP, g2 FN: SQ 1, RQ 1 / (1 + 1/2 + 1/2) = 0.5, PQ 0.5.
# mean best IoU = (1 + 0.5) / 2.
EXPECTED = {"ap50": 1.0, "ap": 560 / 1010, "pq": 0.5, "sq": 1.0, "rq": 0.5, "mean_best_iou": 0.75}
SETTINGS = {"points_per_side": 8, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}


def _check(summary, n_images=2):
    (row,) = summary["table"]
    for k, v in EXPECTED.items():
        assert row[k] == pytest.approx(v, abs=1e-12), k
    assert row["images"] == n_images and row["instances"] == 2 * n_images and row["predictions"] == 2 * n_images


def test_oracle_run_exact_metrics_and_resume(tmp_path):
    folder = _binary_folder(tmp_path / "data")
    oracle = HalfOracle()
    cfg = EverythingBenchConfig(datasets=[str(folder)], models=["half-oracle"], settings=SETTINGS)
    out = tmp_path / "run"
    _check(run_everything_bench(cfg, out, model_factory=lambda name: oracle, progress=False))
    assert oracle.calls == 2
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == ["im0", "im1"]
    assert all(r["n_gt"] == 2 and r["n_pred"] == 2 and r["seconds"] > 0 for r in rows)
    for name in ("config.yaml", "summary.csv", "report.md", "overlays.png", "invocations.jsonl"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "| AP50" in report and "0.554" in report and "![overlays](overlays.png)" in report
    cfg_written = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg_written["resolved_settings"]["points_per_side"] == 8 and cfg_written["resolved_settings"]["box_nms_thresh"] == 0.7
    # rerun = resume: nothing recomputed, same numbers, the invocation recorded with 0 new rows
    before = (out / "results.jsonl").read_text()
    _check(run_everything_bench(cfg, out, model_factory=lambda name: oracle, progress=False))
    assert oracle.calls == 2 and (out / "results.jsonl").read_text() == before
    inv = [json.loads(l) for l in (out / "invocations.jsonl").read_text().splitlines()]
    assert [i["new_rows"] for i in inv] == [2, 0]
    # a different config in the same folder is refused
    with pytest.raises(ConfigError, match="different configuration"):
        run_everything_bench(EverythingBenchConfig(datasets=[str(folder)], models=["half-oracle"], settings={**SETTINGS, "points_per_side": 4}), out, model_factory=lambda n: oracle)


def test_killed_run_resumes_the_missing_image(tmp_path):
    folder = _binary_folder(tmp_path / "data", n=3)
    oracle = HalfOracle()
    out = tmp_path / "run"
    cfg = EverythingBenchConfig(datasets=[str(folder)], models=["half-oracle"], settings=SETTINGS, limit=2)
    run_everything_bench(cfg, out, model_factory=lambda n: oracle, progress=False)
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:30])  # killed while writing row 2
    _check(run_everything_bench(cfg, out, model_factory=lambda n: oracle, progress=False))
    assert oracle.calls == 3


def test_instance_label_folder_and_bad_item(tmp_path):
    """--gt labels: each id > 0 one instance, --ignore-id a void region; an unreadable image is
    recorded in errors.jsonl and the run goes on."""
    root = tmp_path / "data"
    lab = HalfOracle().labels.copy()
    lab[60:64, :] = 7  # void strip
    for i in range(2):
        write_image(root / "images" / f"im{i}.png", _image(i))
        write_mask(root / "masks" / f"im{i}.png", lab.astype(np.uint8))
    (root / "images" / "im2.png").write_bytes(b"not a png")
    write_mask(root / "masks" / "im2.png", lab.astype(np.uint8))
    cfg = EverythingBenchConfig(datasets=[str(root)], models=["half-oracle"], gt="labels", ignore_id=7, settings=SETTINGS)
    _check(run_everything_bench(cfg, tmp_path / "run", model_factory=lambda n: HalfOracle(), progress=False))
    errors = [json.loads(l) for l in (tmp_path / "run" / "errors.jsonl").read_text().splitlines()]
    assert [e["item"] for e in errors] == ["im2"]


def test_coco_json_ground_truth(tmp_path):
    """A COCO JSON as the dataset (--root its images): its annotations are the instances."""
    from pycocotools import mask as mask_utils

    lab = HalfOracle().labels
    images, anns = [], []
    for i in range(2):
        write_image(tmp_path / "img" / f"im{i}.png", _image(i))
        images.append({"id": i + 1, "file_name": f"im{i}.png", "height": H, "width": W})
        for k, v in enumerate((1, 2)):
            rle = mask_utils.encode(np.asfortranarray((lab == v).astype(np.uint8)))
            anns.append({"id": 10 * i + k + 1, "image_id": i + 1, "category_id": 1, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}, "area": int((lab == v).sum()), "iscrowd": 0})
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    cfg = EverythingBenchConfig(datasets=[str(ann)], dataset_kwargs={str(ann): {"root": str(tmp_path / "img")}}, models=["half-oracle"], settings=SETTINGS)
    _check(run_everything_bench(cfg, tmp_path / "run", model_factory=lambda n: HalfOracle(), progress=False))


def test_label_map_needs_classes(tmp_path):
    from segprompt.everything_bench.bench import truth_for
    from segprompt.data.sample import Sample

    s = Sample(id="a", image=_image(0), mask=np.zeros((H, W), np.int64), class_names=("sky", "car"))
    cfg = EverythingBenchConfig(datasets=["camvid"])
    with pytest.raises(ConfigError, match="--classes camvid=car"):
        truth_for(cfg, "camvid", None, s)
    with pytest.raises(ConfigError, match="not one of|not a --dataset"):
        EverythingBenchConfig(datasets=["camvid"], classes={"kvasir": ["car"]})


# ---------------------------------------------------------------------------------------------
# real data


@pytest.mark.realdata
@pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)")
def test_real_data_cli_sam_tiny_then_resume(tmp_path, monkeypatch):
    """kvasir and busi as connected components, camvid car / pedestrian, sam-tiny, 2 images each,
    through the CLI with the real segment_everything; then the same command resumes (no call)."""
    from click.testing import CliRunner
    from skimage.measure import label

    import segprompt.everything as everything
    from segprompt.cli import cli
    from segprompt.data.registry import load_dataset

    calls = []
    real = everything.segment_everything
    monkeypatch.setattr(everything, "segment_everything", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "run"
    args = [
        "bench", "everything", "--dataset", "kvasir", "--dataset", "busi", "--dataset", "camvid", "--classes", "camvid=car,pedestrian",
        "--model", "sam-tiny", "--limit", "2", "--points-per-side", "6", "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.8",
        "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 6
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["dataset"], r["model"]) for r in rows] == [(d, "sam-tiny") for d in ("kvasir", "busi", "camvid") for _ in range(2)]
    # ground truth counted independently: scikit-image's 8-connected components
    for ds_name in ("kvasir", "busi", "camvid"):
        ds = load_dataset(ds_name)
        for r in (r for r in rows if r["dataset"] == ds_name):
            s = ds[ds.ids.index(r["image"])]
            region = s.mask if s.mask.dtype == bool else None
            if region is None:
                n = sum(int(label(s.mask == s.class_names.index(c), connectivity=2).max()) for c in ("car", "pedestrian"))
            else:
                n = int(label(region, connectivity=2).max())
            assert r["n_gt"] == n
            assert len(r["best_iou"]) == n and all(0 <= v <= 1 for v in r["best_iou"])
            assert r["tp"] + r["fn"] == n and r["seconds"] > 0
    assert any(r["n_pred"] > 0 for r in rows)
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("dataset,model,ap50,ap,pq,sq,rq,mean_best_iou") and len(summary) == 4
    report = (out / "report.md").read_text()
    assert "| camvid" in report and "overlays.png" in report and (out / "overlays.png").stat().st_size > 0
    # rerun = resume: nothing recomputed, and it says so
    before = (out / "results.jsonl").read_text()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert len(calls) == 6 and (out / "results.jsonl").read_text() == before
    assert "nothing new computed" in again.output
    assert [json.loads(l)["new_rows"] for l in (out / "invocations.jsonl").read_text().splitlines()] == [6, 0]


def test_cli_config_yaml_of_a_run_resumes_it(tmp_path):
    """--config takes a run folder's config.yaml as is: the same run, resumed (nothing new);
    an option on the command line overrides the file (a new folder, a different setting)."""
    from click.testing import CliRunner

    from segprompt.cli import cli

    folder = _binary_folder(tmp_path / "data", n=1)
    out = tmp_path / "run"
    first = CliRunner().invoke(cli, ["bench", "everything", "--dataset", str(folder), "--model", "sam-tiny", "--points-per-side", "2", "--pred-iou-thresh", "0", "--out", str(out)])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli, ["bench", "everything", "--config", str(out / "config.yaml"), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert [json.loads(l)["new_rows"] for l in (out / "invocations.jsonl").read_text().splitlines()] == [1, 0]
    other = CliRunner().invoke(cli, ["bench", "everything", "--config", str(out / "config.yaml"), "--points-per-side", "3", "--out", str(tmp_path / "run2")])
    assert other.exit_code == 0, other.output
    cfg = yaml.safe_load((tmp_path / "run2" / "config.yaml").read_text())
    assert cfg["settings"] == {"points_per_side": 3, "pred_iou_thresh": 0.0} and cfg["datasets"] == [str(folder)]


def test_three_shards_through_submitit_local_equal_the_unsharded_run(tmp_path):
    """The oracle run over 5 images in 3 shards (submitit's LocalExecutor, each shard a process of
    its own writing results.shard-K-of-3.jsonl): the same rows and summary.csv as one process; a
    shard cut half-way reruns alone; `runs status` counts every unit done."""
    import sys

    import cloudpickle

    from segprompt.engine.launchers import LaunchConfig
    from segprompt.engine.shards import run_status

    # the jobs unpickle the oracle in processes that cannot import this test module: send it by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    folder = _binary_folder(tmp_path / "data", n=5)
    cfg = EverythingBenchConfig(datasets=[str(folder)], models=["half-oracle"], settings=SETTINGS)
    one = tmp_path / "one"
    run_everything_bench(cfg, one, model_factory=lambda n: HalfOracle(), progress=False)
    three = tmp_path / "three"
    try:
        summary = run_everything_bench(cfg, three, model_factory=lambda n: HalfOracle(), progress=False, launch=LaunchConfig("submitit-local", workers=3))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert summary["failed_shards"] == []
    _check(summary, n_images=5)
    files = sorted(p.name for p in three.glob("results.shard-*-of-3.jsonl"))
    assert files and not (three / "results.jsonl").exists()
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    rows = sorted((strip(json.loads(x)) for f in files for x in (three / f).read_text().splitlines()), key=lambda r: r["image"])
    assert rows == [strip(json.loads(x)) for x in (one / "results.jsonl").read_text().splitlines()]
    without_time = lambda path: [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]  # noqa: E731  (s_per_image is last)
    assert without_time(three / "summary.csv") == without_time(one / "summary.csv")
    status = run_status(three)
    assert status.units == status.done == 5 and status.todo == 0
    # one shard's file cut: only its unit(s) are recomputed, in that shard
    biggest = max(files, key=lambda f: (three / f).read_text().count("\n"))
    lines = (three / biggest).read_text().splitlines(keepends=True)
    (three / biggest).write_text("".join(lines[:-1]))
    oracle = HalfOracle()
    k = biggest.split("-")[1]
    run_everything_bench(cfg, three, model_factory=lambda n: oracle, progress=False, shard=f"{k}/3")
    assert oracle.calls == 1 and run_status(three).todo == 0
