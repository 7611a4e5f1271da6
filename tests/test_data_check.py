"""``segprompt data check``: every problem of a dataset folder found in one run, never a traceback."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from segprompt.cli import main
from segprompt.data.check import Problem, check_dataset
from segprompt.data.io import write_image, write_mask


def _img(h: int = 32, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h: int = 32, w: int = 40) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[5:20, 8:30] = True
    return m


def _clean(root):
    for i in range(3):
        write_image(root / "images" / f"ok{i}.png", _img(seed=i))
        write_mask(root / "masks" / f"ok{i}.png", _mask())
    return root


@pytest.fixture()
def broken(tmp_path):
    root = _clean(tmp_path / "broken")
    # a truncated JPEG: the header decodes, the data stops half way
    buf = io.BytesIO()
    Image.fromarray(_img(64, 64, 9)).save(buf, format="JPEG", quality=95)
    (root / "images" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    write_mask(root / "masks" / "cut.png", _mask(64, 64))
    # a file that is no image at all, and a mask that is no image
    (root / "images" / "garbage.png").write_text("not a PNG")
    write_mask(root / "masks" / "garbage.png", _mask())
    write_image(root / "images" / "badmask.png", _img())
    (root / "masks" / "badmask.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    # a mask of the wrong size
    write_image(root / "images" / "small.png", _img())
    write_mask(root / "masks" / "small.png", _mask(16, 20))
    # a mask that is not binary
    write_image(root / "images" / "grey.png", _img())
    grey = _mask().astype(np.uint8) * 255
    grey[0, :3] = (7, 128, 200)
    Image.fromarray(grey).save(root / "masks" / "grey.png")
    # an image without mask, a mask without image, an empty mask
    write_image(root / "images" / "lonely.png", _img())
    write_mask(root / "masks" / "orphan.png", _mask())
    write_image(root / "images" / "blank.png", _img())
    write_mask(root / "masks" / "blank.png", np.zeros((32, 40), bool))
    return root


def test_check_finds_every_problem_in_one_run(broken, capsys):
    code = main(["data", "check", str(broken)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 1
    assert "Traceback" not in text
    lines = [line for line in out.out.splitlines() if line.strip()]
    problems = lines[:-1]
    expected = [
        ("error", "images/cut.jpg", "truncated image"),
        ("error", "images/garbage.png", "unreadable image (not a recognised image format)"),
        ("error", "masks/badmask.png", "unreadable mask"),
        ("error", "masks/small.png", "mask size 16x20 differs from image size 32x40"),
        ("error", "masks/grey.png", "mask is not binary (5 values: 0, 7, 128, 200, 255)"),
        ("error", "images/lonely.png", "no mask"),
        ("error", "masks/orphan.png", "mask without image"),
        ("warning", "masks/blank.png", "empty mask"),
    ]
    assert len(problems) == len(expected), problems
    for severity, path, message in expected:
        hits = [p for p in problems if p.startswith(f"{severity}  {path}: ") and message in p]
        assert len(hits) == 1, (severity, path, message, problems)
    assert lines[-1] == "10 images checked, 7 errors, 1 warning"


def test_check_dataset_returns_problems(broken):
    problems = check_dataset(broken)
    assert all(isinstance(p, Problem) for p in problems)
    assert sorted(p.path for p in problems if p.severity == "error") == [
        "images/cut.jpg", "images/garbage.png", "images/lonely.png", "masks/badmask.png", "masks/grey.png",
        "masks/orphan.png", "masks/small.png",
    ]


def test_clean_folder_exits_zero_and_warnings_alone_exit_zero(tmp_path, capsys):
    root = _clean(tmp_path / "clean")
    assert main(["data", "check", str(root)]) == 0
    assert capsys.readouterr().out.strip() == "3 images checked, 0 errors, 0 warnings"
    write_image(root / "images" / "normal.png", _img())
    write_mask(root / "masks" / "normal.png", np.zeros((32, 40), bool))
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "warning  masks/normal.png: empty mask" in out and "0 errors, 1 warning" in out


def test_nonexistent_path_is_one_error_line(tmp_path, capsys):
    code = main(["data", "check", str(tmp_path / "nowhere")])
    out = capsys.readouterr()
    assert code == 2
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nowhere" in lines[0]
    assert "Traceback" not in out.err


def test_label_map_check_with_classes(tmp_path, capsys):
    root = tmp_path / "lm"
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"0": "sky", "1": "road", "2": "void"}))
    lab = np.zeros((32, 40), np.uint8)
    lab[10:] = 1
    lab[0, 0] = 2
    write_image(root / "images" / "a.png", _img())
    write_mask(root / "masks" / "a.png", lab)
    bad = lab.copy()
    bad[1, 1], bad[2, 2] = 5, 255  # 255 (ignore) is allowed, 5 is not
    write_image(root / "images" / "b.png", _img())
    write_mask(root / "masks" / "b.png", bad)
    code = main(["data", "check", str(root), "--classes", str(classes)])
    out = capsys.readouterr().out
    assert code == 1
    assert "error  masks/b.png: label values 5 not in the class list (ids 0-2, ignore 255)" in out
    assert "masks/a.png" not in out
