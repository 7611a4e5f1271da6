"""``segprompt segment-volume``: a TIFF / NIfTI stack, prompts on one slice, labels with the spacing.

The labels the command writes are compared with the library call on the same volume and prompts
(:func:`segprompt.volumes.segment_volume`), and with the synthetic ground truth.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from segprompt.cli import main
from segprompt.data.synthetic import synthetic_volume
from segprompt.metrics import dice
from segprompt.prompts import Box
from segprompt.volumes import VolumePrompts, segment_volume
from segprompt.volumes.fallback import centre_point
from segprompt.volumes.io import read_volume


def _tiff(tmp_path, seed=0):  # noqa: ANN001, ANN202
    """A 16-bit grey synthetic stack with anisotropic spacing, and its labels."""
    import tifffile

    vol, lab = synthetic_volume(seed, depth=12, size=64, n_objects=2)
    grey = (vol.astype(np.float32) @ np.array([0.5, 0.3, 0.2], np.float32) * 180 + 1000).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, grey, imagej=True, resolution=(1 / 0.4, 1 / 0.4), metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    return path, lab


def _prompt(lab, z, obj):  # noqa: ANN001, ANN202
    m = lab[z] == obj
    (x, y), box = centre_point(m), Box.from_mask(m).xyxy
    return (x, y), box


def test_segment_volume_tiff(tmp_path, capsys) -> None:  # noqa: ANN001
    import tifffile

    from segprompt.models import create_segmenter

    path, lab = _tiff(tmp_path)
    (x, y), box = _prompt(lab, 6, 1)
    out = tmp_path / "labels.tif"
    rc = main(["segment-volume", str(path), "--model", "sam-tiny", "--slice", "6", "--point", f"{x},{y}", "--box", ",".join(f"{v:g}" for v in box), "--out", str(out)])
    text = capsys.readouterr()
    assert rc == 0, text.err
    with tifffile.TiffFile(out) as t:
        written = t.asarray()
        assert t.imagej_metadata["spacing"] == pytest.approx(2.0) and t.imagej_metadata["unit"] == "um"
        xr = t.pages[0].tags["XResolution"].value
        assert xr[1] / xr[0] == pytest.approx(0.4, rel=1e-4)
    # the same as the library on the same volume and prompts
    lib = segment_volume(create_segmenter("sam-tiny"), read_volume(path), VolumePrompts().add(6, 1, points=[(x, y)], box=box))
    np.testing.assert_array_equal(written, lib.labels)
    d = dice(written == 1, lab == 1)
    print(f"sam-tiny on the grey 16-bit stack: 3-D Dice {d:.3f}")
    assert d > 0.8, d
    assert "12 of 12 slices labelled" in text.out or " of 12 slices labelled" in text.out
    assert "sam-tiny with the slice-by-slice fallback (box+point), direction both, in " in text.out
    assert "voxel spacing (z, y, x) = (2, 0.4, 0.4) um" in text.out
    assert "object 1: slices " in text.out and "prompted on slice 6" in text.out


def test_segment_volume_nifti_two_objects_forward(tmp_path, capsys) -> None:  # noqa: ANN001
    import nibabel as nib

    vol, lab = synthetic_volume(1, depth=10, size=48, n_objects=2)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = (10, -5, 3)
    grey = (vol.astype(np.float32) @ np.array([0.5, 0.3, 0.2], np.float32) * 4 - 300).astype(np.int16)  # "HU"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(grey.transpose(2, 1, 0)), affine), tmp_path / "vol.nii.gz")
    prompts = []
    for o in (1, 2):
        (x, y), box = _prompt(lab, 4, o)
        prompts.append({"z": 4, "object": o, "points": [[x, y, 1]], "box": [float(v) for v in box]})
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "labels.nii.gz"
    rc = main(["segment-volume", str(tmp_path / "vol.nii.gz"), "--model", "grabcut", "--prompt-file", str(tmp_path / "prompts.json"), "--direction", "forward", "--out", str(out)])
    text = capsys.readouterr()
    assert rc == 0, text.err
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    written = np.asanyarray(back.dataobj).transpose(2, 1, 0)
    assert not written[:4].any()  # forward only: nothing below the prompted slice
    dices = [dice(written[4:] == o, lab[4:] == o) for o in (1, 2)]
    print("grabcut forward, NIfTI: 3-D Dice per object", np.round(dices, 3).tolist())
    assert min(dices) > 0.8
    assert "2 objects" in text.out and "object 2: slices 4.." in text.out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--slice", "12", "--point", "10,10"], "error: slice z=12 (object 1) is outside the stack of 12 slices (0..11)"),
        (["--slice", "3", "--point", "70,10"], "error: slice z=3, object 1: point 0 at (x=70, y=10) lies outside the slice of width 64 and height 64"),
        (["--slice", "3"], "error: --slice 3 needs a --point or a --box on that slice"),
        (["--point", "10,10", "--out-png"], "error: --out"),
    ],
)
def test_bad_prompts_give_one_line(tmp_path, capsys, args, message) -> None:  # noqa: ANN001
    path, _ = _tiff(tmp_path)
    out = ["--out", str(tmp_path / "l.tif")]
    if "--out-png" in args:
        args, out = [a for a in args if a != "--out-png"], ["--out", str(tmp_path / "l.png")]
    rc = main(["segment-volume", str(path), "--model", "grabcut", *args, *out])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(message) and err.count("\n") == 1, err


def test_a_2d_file_is_not_a_volume(tmp_path, capsys) -> None:  # noqa: ANN001
    import tifffile

    tifffile.imwrite(tmp_path / "one.tif", np.zeros((32, 40), np.uint16))
    rc = main(["segment-volume", str(tmp_path / "one.tif"), "--point", "3,3", "--out", str(tmp_path / "l.tif")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'one.tif'}: a 2-D image of shape (32, 40) is not a volume")
