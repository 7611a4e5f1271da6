"""The 3-D point-prompt benchmark: rows, 3-D Dice recomputed from the written labels, resume,
bad volumes skipped into errors.jsonl, the report and the command line.

Scores are recomputed here from the predicted label volumes the run keeps (labels/...npz) and
the ground truth, with short re-implementations of Dice, slice IoU and the prompted slice.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pointprompt.bench_volume import (
    SyntheticVolumes,
    VolumeBenchConfig,
    VolumeFolder,
    parse_prompt,
    prompt_slice,
    run_volume_bench,
)
from segprompt.cli import main
from segprompt.errors import ConfigError
from segprompt.models import create_segmenter

SYN = {"n": 3, "seed": 5, "depth": 5, "size": 40, "n_objects": 2}


def _rows(path):  # noqa: ANN001, ANN202
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sam2_ckpt(tmp_path_factory):  # noqa: ANN001, ANN201
    from segprompt.models.sam2_build import write_tiny_checkpoint

    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("sam2") / "tiny_sam2.pt", seed=0))


@pytest.fixture(scope="module")
def models(sam2_ckpt):  # noqa: ANN001, ANN201
    return {"sam-tiny": create_segmenter("sam-tiny"), "grabcut": create_segmenter("grabcut"), "sam2": create_segmenter("sam2", checkpoint=sam2_ckpt)}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, models):  # noqa: ANN001, ANN201
    cfg = VolumeBenchConfig(dataset_kwargs={"synthetic-volumes": SYN}, models=["sam-tiny", "grabcut", "sam2"], prompts=["centre", "centre+box"])
    out = tmp_path_factory.mktemp("vol") / "run"
    summary = run_volume_bench(cfg, out, model_factory=models.__getitem__, progress=False)
    return cfg, out, summary


def _dice(p, g):  # noqa: ANN001, ANN202
    return 2 * (p & g).sum() / (p.sum() + g.sum())


def test_rows_and_3d_dice_recomputed_from_labels(full_run, models):  # noqa: ANN001
    from segprompt.volumes import volume_support

    cfg, out, _ = full_run
    rows = _rows(out)
    assert len(rows) == 3 * 2 * 3 * 2  # volumes x objects x models x prompts
    src = SyntheticVolumes(**SYN)
    gts = {src.ids[i]: src.load(i).labels for i in range(3)}
    for r in rows:
        gt = gts[r["volume"]] == r["object"]
        pred = np.load(out / r["labels"])["labels"] == r["object"]
        assert pred.shape == gt.shape == (5, 40, 40)
        assert r["dice3d"] == pytest.approx(_dice(pred, gt), abs=1e-9)
        # the prompted slice: the middle of the object's z-extent
        zs = np.flatnonzero(gt.any(axis=(1, 2)))
        assert (r["z_first"], r["z_last"]) == (zs[0], zs[-1]) and r["z_prompt"] == math.floor((zs[0] + zs[-1]) / 2)
        # slice IoU by dz, on every slice holding the object in the prediction or the ground truth
        expect = [[z - r["z_prompt"], (pred[z] & gt[z]).sum() / (pred[z] | gt[z]).sum()] for z in range(5) if (pred[z] | gt[z]).any()]
        assert [d for d, _ in r["slice_iou"]] == [d for d, _ in expect]
        assert np.allclose([v for _, v in r["slice_iou"]], [v for _, v in expect], atol=1e-5)
        assert r["covered"] == sum((pred[z] & gt[z]).sum() / (pred[z] | gt[z]).sum() >= 0.5 for z in zs)
        # the centre point lies in the object on its prompted slice; +box adds its tight box
        (x, y, label), = r["points"]
        assert label == 1 and gt[r["z_prompt"], int(y), int(x)]
        if r["strategy"] == "centre+box":
            ys, xs = np.nonzero(gt[r["z_prompt"]])
            assert r["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        else:
            assert r["box"] is None
        native = volume_support(models[r["model"]]) == "native"
        assert (r["method"] != "fallback") == native
        assert r["multimask"] == models[r["model"]].multimask  # the policy the slices were decoded with
    assert {r["method"] for r in rows if r["model"] != "sam2"} == {"fallback"}
    grabcut = [r["dice3d"] for r in rows if r["model"] == "grabcut"]
    assert np.mean(grabcut) > 0.8  # a real segmentation propagated through the stack, not noise


def test_summary_curves_and_report(full_run):  # noqa: ANN001
    cfg, out, summary = full_run
    rows = _rows(out)
    assert len(summary["table"]) == 3 * 2
    for t in summary["table"]:
        d = [r["dice3d"] for r in rows if (r["model"], r["strategy"]) == (t["model"], t["strategy"])]
        assert t["n"] == 6 and t["volumes"] == 3
        assert t["dice3d"] == pytest.approx(np.mean(d)) and t["dice3d_std"] == pytest.approx(np.std(d))
    for c in summary["curves"]:
        v = [iou for r in rows if (r["model"], r["strategy"]) == (c["model"], c["strategy"]) for dz, iou in r["slice_iou"] if dz == c["dz"]]
        assert c["n"] == len(v) and c["iou"] == pytest.approx(np.mean(v), abs=1e-6)
    for name in ("config.yaml", "summary.csv", "curves.csv", "report.md", "iou_by_dz.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    t = summary["table"][0]
    assert f"{t['dice3d']:.3f} ± {t['dice3d_std']:.3f} (n=6)" in report
    assert "| model" in report and "centre+box" in report and "Skipped inputs: none." in report


def test_resume_computes_nothing_and_a_killed_run_completes(full_run, models, tmp_path):  # noqa: ANN001
    cfg, out, summary = full_run
    calls = []
    before = (out / "results.jsonl").read_text()
    again = run_volume_bench(cfg, out, model_factory=lambda n: calls.append(n) or models[n], progress=False)
    assert calls == [] and (out / "results.jsonl").read_text() == before
    assert [t["dice3d"] for t in again["table"]] == [t["dice3d"] for t in summary["table"]]
    # a run killed mid-way (some rows, then a torn one) computes only what is missing
    small = VolumeBenchConfig(dataset_kwargs={"synthetic-volumes": SYN}, models=["grabcut"], prompts=["centre", "box"])
    full = run_volume_bench(small, tmp_path / "a", model_factory=models.__getitem__, progress=False)
    lines = (tmp_path / "a" / "results.jsonl").read_text().splitlines(keepends=True)
    b = tmp_path / "b"
    b.mkdir()
    (b / "config.yaml").write_text((tmp_path / "a" / "config.yaml").read_text())
    (b / "results.jsonl").write_text("".join(lines[:5]) + lines[5][:40])
    resumed = run_volume_bench(small, b, model_factory=models.__getitem__, progress=False)
    strip = lambda rs: sorted(json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) for r in rs)  # noqa: E731
    assert strip(_rows(b)) == strip(_rows(tmp_path / "a"))
    assert [t["dice3d"] for t in resumed["table"]] == [t["dice3d"] for t in full["table"]]


def _write_folder(root, n_good=2):  # noqa: ANN001, ANN202
    """images/ + labels/: TIFF and NIfTI pairs, a label stack of the wrong shape, an image without labels."""
    import nibabel
    import tifffile

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    src = SyntheticVolumes(n=n_good + 1, seed=2, depth=5, size=40)
    gts = {}
    for i in range(n_good + 1):
        item = src.load(i)
        grey = (item.volume.data.astype(np.float32).mean(axis=3) * 4).astype(np.uint16)
        if i == 0:  # NIfTI: voxel axes (i, j, k) = (x, y, z)
            nibabel.Nifti1Image(grey.transpose(2, 1, 0), np.eye(4)).to_filename(root / "images" / "a.nii.gz")
            nibabel.Nifti1Image(item.labels.astype(np.uint16).transpose(2, 1, 0), np.eye(4)).to_filename(root / "labels" / "a.nii.gz")
            gts["a"] = item.labels
        elif i < n_good:
            tifffile.imwrite(root / "images" / f"t{i}.tif", grey)
            tifffile.imwrite(root / "labels" / f"t{i}.tif", item.labels.astype(np.uint16))
            gts[f"t{i}"] = item.labels
        else:
            tifffile.imwrite(root / "images" / "wrong.tif", grey)
            tifffile.imwrite(root / "labels" / "wrong.tif", item.labels[:, :20].astype(np.uint16))
            tifffile.imwrite(root / "images" / "orphan.tif", grey)
    return gts


def test_bad_volumes_are_skipped_and_recorded(tmp_path, models):  # noqa: ANN001
    gts = _write_folder(tmp_path / "set")
    assert VolumeFolder(tmp_path / "set").ids == ["a", "orphan", "t1", "wrong"]
    cfg = VolumeBenchConfig(datasets=[str(tmp_path / "set")], models=["grabcut"], prompts=["centre"])
    summary = run_volume_bench(cfg, tmp_path / "r", model_factory=models.__getitem__, progress=False)
    errors = [json.loads(line) for line in (tmp_path / "r" / "errors.jsonl").read_text().splitlines()]
    assert {e["item"]: e["error"] for e in errors}.keys() == {"orphan", "wrong"}
    assert any("no label stack" in e["error"] for e in errors) and any("does not match" in e["error"] for e in errors)
    rows = _rows(tmp_path / "r")
    assert {r["volume"] for r in rows} == {"a", "t1"} and summary["table"][0]["n"] == len(rows) == 4
    for r in rows:  # the NIfTI's labels read back in the volume's (Z, H, W) order
        pred = np.load(tmp_path / "r" / r["labels"])["labels"] == r["object"]
        assert r["dice3d"] == pytest.approx(_dice(pred, gts[r["volume"]] == r["object"]))
    assert np.mean([r["dice3d"] for r in rows]) > 0.6
    assert "Skipped inputs: 2" in (tmp_path / "r" / "report.md").read_text()
    # the rerun neither retries nor re-records them
    calls = []
    run_volume_bench(cfg, tmp_path / "r", model_factory=lambda n: calls.append(n) or models[n], progress=False)
    assert calls == [] and len((tmp_path / "r" / "errors.jsonl").read_text().splitlines()) == 2


def test_prompted_slice_and_prompt_names():
    m = np.zeros((9, 8, 8), bool)
    m[2:8, 2:4, 2:4] = True
    m[6, :, :] = True  # largest area on slice 6
    m[4:6] = False  # a gap at the middle of the extent 2..7 (middle 4): the nearest slice holding it, 3
    assert prompt_slice(m, "largest") == 6 and prompt_slice(m, "middle") == 3
    m[4] = m[3]
    assert prompt_slice(m, "middle") == 4
    assert parse_prompt("centre") == ("centre", False) and parse_prompt("kmedoids+box") == ("kmedoids", True) and parse_prompt("box") == (None, True)
    with pytest.raises(ConfigError, match="correction strategy"):
        VolumeBenchConfig(prompts=["microsam"])
    with pytest.raises(ConfigError, match="unknown point strategy"):
        VolumeBenchConfig(prompts=["centr+box"])
    with pytest.raises(ConfigError, match="slice_choice"):
        VolumeBenchConfig(slice_choice="first")


def test_cli_end_to_end(tmp_path, capsys):  # noqa: ANN001
    args = ["bench", "pointprompt", "volumes", "--n-volumes", "2", "--depth", "5", "--size", "32-40", "--model", "grabcut", "--strategies", "centre,box", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dice3d" in out and "iou_by_dz.png" in out
    rows = _rows(tmp_path / "r")
    assert len(rows) == 2 * 2 * 2 and {r["strategy"] for r in rows} == {"centre", "box"}
    assert [np.load(tmp_path / "r" / r["labels"])["labels"].shape for r in rows[:1]] == [(5, 32, 32)]
    assert {np.load(tmp_path / "r" / r["labels"])["labels"].shape[1] for r in rows} == {32, 40}
    assert main(args) == 0 and "nothing new computed" in capsys.readouterr().out
    assert main([*args[:-2], "--strategies", "ritm", "--out", str(tmp_path / "x")]) == 2
    assert "correction strategy" in capsys.readouterr().err


def test_shards_by_hand_equal_the_unsharded_run_and_runs_status(full_run, models, tmp_path):  # noqa: ANN001
    """The run cut into 3 shards (run one after the other in this process, each into its own
    results.shard-K-of-3.jsonl): the same rows and the same tables as the unsharded run; each
    shard computes only its units; `segprompt runs status` counts them; a killed shard reruns alone."""
    from segprompt.engine.shards import Shard, run_status

    cfg, out, summary = full_run
    sharded = tmp_path / "sharded"
    calls: dict[str, list[str]] = {}
    for k in (1, 2, 3):
        calls[k] = []
        result = run_volume_bench(cfg, sharded, model_factory=lambda n, k=k: calls[k].append(n) or models[n], progress=False, shard=f"{k}/3")
        if k < 3:
            assert result["shard"] == f"{k}/3"
    files = sorted(p.name for p in sharded.glob("results.shard-*.jsonl"))
    assert files == ["results.shard-1-of-3.jsonl", "results.shard-2-of-3.jsonl", "results.shard-3-of-3.jsonl"]
    for k in (1, 2, 3):  # a shard's file holds exactly its units
        rows = [json.loads(x) for x in (sharded / f"results.shard-{k}-of-3.jsonl").read_text().splitlines()]
        assert all(Shard(k, 3).owns(json.dumps([r["dataset"], r["volume"], r["model"], r["strategy"]])) for r in rows)
    strip = lambda rs: sorted(json.dumps({k: v for k, v in r.items() if k not in ("seconds", "labels_file")}, sort_keys=True) for r in rs)  # noqa: E731
    every = [json.loads(x) for f in files for x in (sharded / f).read_text().splitlines()]
    assert strip(every) == strip(_rows(out))
    assert [t["dice3d"] for t in result["table"]] == [t["dice3d"] for t in summary["table"]]
    status = run_status(sharded)
    assert status.done == status.units == 3 * 3 * 2 and status.todo == 0 and status.n_shards == 3
    # shard 2 killed half-way: rerunning shard 2 recomputes only its missing units
    path = sharded / "results.shard-2-of-3.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]))
    assert run_status(sharded).todo > 0
    again: list[str] = []
    run_volume_bench(cfg, sharded, model_factory=lambda n: again.append(n) or models[n], progress=False, shard="1/3")
    assert again == []  # shard 1 has nothing to do
    run_volume_bench(cfg, sharded, model_factory=lambda n: again.append(n) or models[n], progress=False, shard="2/3")
    assert again and run_status(sharded).todo == 0
