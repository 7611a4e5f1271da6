"""``segprompt segment --everything``: a label image from segment_everything's records, for one
image or a resumable folder run (segment-anything's scripts/amg.py, as one label image per input).

The model is the bundled sam-tiny with a coarse grid (4-6 points per side) so each run takes about
a second on a CPU; the thresholds are lowered so that sam-tiny keeps some masks.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

import segprompt.everything as everything
from segprompt.cli import main
from segprompt.data.io import read_image, write_image
from segprompt.data.synthetic import SyntheticLesions
from segprompt.everything import EverythingSettings, segment_everything
from segprompt.models import create_segmenter

FAST = ["--points-per-side", "6", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


def _image(tmp_path, name="img.png", seed=3):
    s = SyntheticLesions(n=1, seed=seed, size=(96, 128), style="endoscopy")[0]
    write_image(tmp_path / name, s.image)
    return tmp_path / name


def _paint_largest_first(records, shape):
    """Independent rule (the contract's label_map): ids 1..K by decreasing area, ties in record
    order, painted in that order so smaller masks stay on top; empty masks dropped."""
    masks = [np.asarray(r["segmentation"], bool) for r in records]
    order = sorted((i for i, m in enumerate(masks) if m.any()), key=lambda i: -int(masks[i].sum()))
    out = np.zeros(shape, np.int64)
    for k, i in enumerate(order, start=1):
        out[masks[i]] = k
    return out


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_everything_writes_the_label_map_of_segment_everything(tmp_path, capsys):
    img_path = _image(tmp_path)
    out, ov = tmp_path / "labels.png", tmp_path / "overlay.png"
    rc = main(["segment", str(img_path), "--everything", "--model", "sam-tiny", *FAST, "--min-mask-region-area", "0", "--crop-n-layers", "0", "--out", str(out), "--overlay", str(ov)])
    text = capsys.readouterr()
    assert rc == 0, text.err
    img = read_image(img_path)
    records = segment_everything(create_segmenter("sam-tiny"), img, EverythingSettings(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0))
    assert records, "sam-tiny kept no mask: the test needs at least one instance"
    expected = _paint_largest_first(records, img.shape[:2])
    with Image.open(out) as im:
        assert im.mode == "L"  # <= 255 instances: 8-bit
        written = np.array(im)
    np.testing.assert_array_equal(written, expected)
    np.testing.assert_array_equal(written, everything.label_map(records, img.shape[:2]))
    n = int(expected.max())
    assert f"{n} instance" in text.out and "8-bit PNG" in text.out
    # the instance table: amg.py's metadata.csv columns, id = the label id
    order = sorted((i for i, r in enumerate(records) if np.any(r["segmentation"])), key=lambda i: -int(np.sum(records[i]["segmentation"])))
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["id"]) for r in rows] == list(range(1, n + 1))
    for r, i in zip(rows, order):
        assert int(r["area"]) == records[i]["area"] and float(r["predicted_iou"]) == pytest.approx(records[i]["predicted_iou"])
        assert [int(r[c]) for c in ("bbox_x0", "bbox_y0", "bbox_w", "bbox_h")] == list(records[i]["bbox"])
        assert int(r["visible_pixels"]) == int((written == int(r["id"])).sum())
    with Image.open(ov) as im:
        assert im.size == (128, 96) and im.mode == "RGB"


def test_label_image_is_8_bit_up_to_255_ids_and_16_bit_above(tmp_path):
    from segprompt.commands.segment_everything import write_label_image

    for n, bits, mode in ((255, 8, "L"), (300, 16, "I;16")):
        labels = np.arange(n + 1, dtype=np.int32).reshape(1, -1).repeat(3, axis=0)
        path = tmp_path / f"l{n}.png"
        assert write_label_image(path, labels) == bits
        with Image.open(path) as im:
            assert im.mode.startswith(mode)
            np.testing.assert_array_equal(np.array(im).astype(np.int64), labels)


def test_folder_skips_a_corrupt_image_and_a_rerun_resumes_without_recomputing(tmp_path, capsys, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    _image(src, "a.png", seed=3)
    (src / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "run"
    calls = []
    real = everything.segment_everything

    def counting(seg, image, *args, **kwargs):
        calls.append(image.shape)
        return real(seg, image, *args, **kwargs)

    monkeypatch.setattr(everything, "segment_everything", counting)
    cmd = ["segment", str(src), "--everything", "--model", "sam-tiny", *FAST, "--out", str(out)]

    assert main(cmd) == 0, capsys.readouterr().err
    assert len(calls) == 1
    assert (out / "a.png").is_file() and not (out / "broken.png").exists()
    (err,) = _rows(out / "errors.jsonl")
    assert err["item"] == "broken.png" and "not an image" in err["error"]
    (row,) = _rows(out / "results.jsonl")
    assert row["image"] == "a.png" and row["labels"] == "a.png" and row["seconds"] >= 0
    assert row["metadata"] == "a.csv" and (out / "a.csv").is_file()
    with Image.open(out / "a.png") as im:
        assert row["instances"] == int(np.array(im).max())
    img = read_image(src / "a.png")
    ref = real(create_segmenter("sam-tiny"), img, EverythingSettings(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0))
    with Image.open(out / "a.png") as im:
        np.testing.assert_array_equal(np.array(im), _paint_largest_first(ref, img.shape[:2]))
    capsys.readouterr()

    # a new image in the folder: the rerun computes only it and says it resumes
    _image(src, "b.png", seed=5)
    assert main(cmd) == 0
    err_text = capsys.readouterr().err
    assert len(calls) == 2
    assert f"resuming {out}: 1 images already done, 1 to do" in err_text
    assert [r["image"] for r in _rows(out / "results.jsonl")] == ["a.png", "b.png"]

    # nothing left: no recomputation, the corrupt image is not retried nor recorded twice
    assert main(cmd) == 0
    text = capsys.readouterr()
    assert len(calls) == 2
    assert "already finished (2 images done)" in text.err
    assert len(_rows(out / "errors.jsonl")) == 1 and len(_rows(out / "results.jsonl")) == 2
    inv = _rows(out / "invocations.jsonl")
    assert [r["new_rows"] for r in inv] == [1, 1, 0]
    assert "(0 new this run)" in text.out and "1 skipped input" in text.out
    assert "a resume" in (out / "report.md").read_text()

    # a different setting in the same folder is refused, not mixed in
    assert main(["segment", str(src), "--everything", "--model", "sam-tiny", "--points-per-side", "4", "--out", str(out)]) == 2
    assert "different configuration" in capsys.readouterr().err and len(calls) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--point", "5,5", "--points-per-side", "4"], "--points-per-side only apply with --everything"),
        (["--everything", "--point", "5,5"], "--everything segments without prompts"),
        (["--everything", "--out", "labels.tif"], "--everything writes a PNG label image"),
    ],
)
def test_everything_flags_are_checked(tmp_path, capsys, args, message):
    img = _image(tmp_path)
    out = [] if "--out" in args else ["--out", str(tmp_path / "o.png")]
    assert main(["segment", str(img), *args, *out]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_needs_everything(tmp_path, capsys):
    _image(tmp_path)
    assert main(["segment", str(tmp_path), "--point", "5,5", "--out", str(tmp_path / "o.png")]) == 2
    assert "needs --everything" in capsys.readouterr().err


def test_every_amg_setting_flag_reaches_the_settings(tmp_path, monkeypatch, capsys):
    img = _image(tmp_path)
    seen = []
    real = everything.segment_everything

    def spy(seg, image, settings=None, **kwargs):
        seen.append(settings)
        return real(seg, image, settings, **kwargs)

    monkeypatch.setattr(everything, "segment_everything", spy)
    flags = {
        "points_per_side": 4, "points_per_batch": 5, "pred_iou_thresh": 0.1, "stability_score_thresh": 0.2,
        "min_mask_region_area": 3, "crop_n_layers": 1, "stability_score_offset": 0.5, "box_nms_thresh": 0.6,
        "crop_nms_thresh": 0.65, "crop_overlap_ratio": 0.25, "crop_n_points_downscale_factor": 2,
    }  # fmt: skip
    args = [a for k, v in flags.items() for a in ("--" + k.replace("_", "-"), str(v))]
    assert main(["segment", str(img), "--everything", *args, "--out", str(tmp_path / "l.png")]) == 0, capsys.readouterr().err
    (settings,) = seen
    assert settings == EverythingSettings(**flags)
