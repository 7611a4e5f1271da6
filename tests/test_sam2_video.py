"""sam2's native volume propagation (segprompt/volumes/sam2_video.py) against the sam2 package's
own ``SAM2VideoPredictor`` run the official way, on a tiny random SAM 2.1 and a 12-slice
synthetic volume.

How the official side gets the same pixels: ``init_state(video_path=folder)`` only reads
``<z>.jpg`` files, and a JPEG would change the pixels (lossy). The frames are therefore written
*losslessly* as PNG data under the names ``<z>.jpg``: the package's unmodified
``load_video_frames_from_jpg_images`` lists them by name, PIL opens them by content, and
``_load_img_as_tensor`` resizes and normalises them as it does any frame. Nothing of the
package is patched. Both predictors are built by the package's ``build_sam2_video_predictor``
with ``add_all_frames_to_correct_as_cond=true`` (our setting, so corrections survive the next
propagation) and ``fill_hole_area`` 0 (the package skips hole filling on a CPU anyway, with a
warning per frame).

One case needs a word: objects prompted on different slices. There the package's float32 path
fails by itself (memories stored in bfloat16 meet float32 weights when a slice's memory holds no
object pointer: "mat1 and mat2 must have the same dtype", sam2 issues #308 / #577; asserted
below). That case is compared twice: under CPU bfloat16 autocast, the package's own way of
running (no change to it), and in float32 with the package given the same memory cast that
segprompt applies (:func:`match_memory_dtype`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from segprompt.data.synthetic import synthetic_volume
from segprompt.errors import Cancelled, ConfigError, PromptError
from segprompt.models.sam2 import Sam2Segmenter
from segprompt.models.sam2_build import _hydra_ready, tiny_arch, tiny_sam2
from segprompt.prompts import Box
from segprompt.volumes import VolumePrompts, VolumePropagator, segment_volume, volume_support
from segprompt.volumes.sam2_video import _memory_to_weight_dtype, new_inference_state, plan_runs, prepare_frames

SIZE = 128  # tiny model input side
DEPTH = 12


@pytest.fixture(scope="module")
def seg() -> Sam2Segmenter:
    return Sam2Segmenter(model=tiny_sam2(0, image_size=SIZE), arch=tiny_arch(SIZE))


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_volume(seed=3, depth=DEPTH, size=64, n_objects=2)


@pytest.fixture(scope="module")
def official(seg: Sam2Segmenter) -> torch.nn.Module:
    _hydra_ready()
    from sam2.build_sam import build_sam2_video_predictor

    overrides = list(seg.arch.overrides) + ["++model.add_all_frames_to_correct_as_cond=true"]
    pred = build_sam2_video_predictor(seg.arch.config, None, device="cpu", hydra_overrides_extra=overrides, apply_postprocessing=True)
    pred.load_state_dict(seg.model.state_dict())
    pred.fill_hole_area = 0
    return pred.eval()


@pytest.fixture(scope="module")
def frames_dir(volume, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("frames")
    for z, sl in enumerate(volume[0]):
        Image.fromarray(sl).save(folder / f"{z:05d}.jpg", format="PNG")  # lossless, read by content
    return str(folder)


def centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def run_official(pred, folder: str, steps: list[tuple[list[tuple], str]], autocast: bool = False) -> tuple[dict, dict]:
    """The package's own session: for each step, its prompts ``(kind, z, obj_id, args)`` then
    propagate_in_video as the notebook does ("both": forward, then reverse=True, default starts;
    "forward": default start; "backward": reverse=True from the last prompted slice).
    Returns masks {obj: bool (Z, H, W)} and scores {obj: (Z,) sigmoid(object_score_logits)}
    of the last step (later yields of a slice overwrite earlier ones)."""
    if autocast:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run_official(pred, folder, steps)
    state = pred.init_state(video_path=folder)
    prompted: list[int] = []
    for prompts, direction in steps:
        for kind, z, obj, args in prompts:
            prompted.append(z)
            if kind == "mask":
                pred.add_new_mask(state, frame_idx=z, obj_id=obj, mask=args["mask"])
            else:
                pred.add_new_points_or_box(state, frame_idx=z, obj_id=obj, **args)
        if direction == "both":
            runs = [dict(), dict(reverse=True)]
        elif direction == "forward":
            runs = [dict()]
        else:
            runs = [dict(start_frame_idx=max(prompted), reverse=True)]
        masks: dict[int, np.ndarray] = {}
        for kw in runs:
            for z, ids, logits in pred.propagate_in_video(state, **kw):
                for i, o in enumerate(ids):
                    masks.setdefault(o, np.zeros((DEPTH, 64, 64), bool))[z] = (logits[i, 0] > 0).numpy()
    scores = {}
    for o, idx in state["obj_id_to_idx"].items():
        outs = state["output_dict_per_obj"][idx]
        sc = np.full(DEPTH, np.nan, np.float32)
        for z in range(DEPTH):
            out = outs["cond_frame_outputs"].get(z) or outs["non_cond_frame_outputs"].get(z)
            if out is not None:
                sc[z] = torch.sigmoid(out["object_score_logits"].float()).item()
        scores[o] = sc
    return masks, scores


def ours(seg, vol, steps):
    state = seg.init_volume(vol)
    result = None
    for prompts, direction in steps:
        vp = VolumePrompts()
        for kind, z, obj, args in prompts:
            if kind == "mask":
                vp = vp.add(z, obj, mask=args["mask"])
            else:
                vp = vp.add(z, obj, points=args.get("points"), labels=args.get("labels"), box=args.get("box"))
        result = seg.propagate(state, vp, direction=direction)
    return result, state


def agreement(result, masks, scores) -> tuple[float, float]:
    """(fraction of equal pixels over all objects and slices, max |score difference|)."""
    assert set(result.masks) == set(masks)
    eq = np.mean([np.mean(result.masks[o] == masks[o]) for o in masks])
    diffs = [0.0]
    for i, o in enumerate(result.obj_ids):
        mine = result.scores[i]
        have = ~np.isnan(mine)
        assert have.any()
        diffs.append(float(np.max(np.abs(mine[have] - scores[o][have]))))
    return float(eq), max(diffs)


def test_frames_and_state_match_init_state(seg, volume, official, frames_dir):
    """Our in-memory frames equal the package's loaded frames exactly; same state keys."""
    theirs = official.init_state(video_path=frames_dir)
    frames = prepare_frames(volume[0], SIZE)
    assert frames.shape == (DEPTH, 3, SIZE, SIZE) and frames.dtype == torch.float32
    assert torch.equal(frames, theirs["images"])
    mine = new_inference_state(frames, (64, 64), torch.device("cpu"))
    assert set(mine) == set(theirs)
    assert (mine["video_height"], mine["video_width"], mine["num_frames"]) == (64, 64, DEPTH)


def _cases(lab):
    c1 = centre(lab[6] == 1)
    bg = (2.5, 2.5)
    box1 = Box.from_mask(lab[6] == 1).xyxy.astype(np.float32)
    box2 = Box.from_mask(lab[7] == 2).xyxy.astype(np.float32)
    pts = dict(points=np.array([c1, bg], np.float32), labels=np.array([1, 0], np.int32))
    return {
        "points-both": [([("pts", 6, 1, pts)], "both")],
        "box-forward": [([("box", 6, 1, dict(box=box1))], "forward")],
        "mask-backward": [([("mask", 5, 1, dict(mask=lab[5] == 1))], "backward")],
        "two-objects": [([("pts", 6, 1, pts), ("box", 6, 2, dict(box=Box.from_mask(lab[6] == 2).xyxy.astype(np.float32)))], "both")],
        "objects-apart": [([("pts", 4, 1, dict(points=np.array([centre(lab[4] == 1)], np.float32), labels=np.array([1], np.int32))), ("box", 7, 2, dict(box=box2))], "both")],
        "correction": [
            ([("pts", 6, 1, pts)], "both"),
            ([("pts", 9, 1, dict(points=np.array([centre(lab[9] == 1), (60.5, 60.5)], np.float32), labels=np.array([0, 1], np.int32)))], "both"),
        ],
    }


@pytest.mark.parametrize("case", ["points-both", "box-forward", "mask-backward", "two-objects", "correction"])
def test_parity_with_video_predictor(seg, volume, official, frames_dir, case):
    vol, lab = volume
    steps = _cases(lab)[case]
    theirs_masks, theirs_scores = run_official(official, frames_dir, steps)
    result, _ = ours(seg, vol, steps)
    check_parity(case, result, theirs_masks, theirs_scores)


def check_parity(case, result, theirs_masks, theirs_scores) -> None:
    eq, dscore = agreement(result, theirs_masks, theirs_scores)
    print(f"{case}: pixels agree {eq:.6f}, max score diff {dscore:.2e}")
    assert eq >= 0.999
    assert dscore <= 1e-4
    # the comparison is not vacuous: objects tracked, masks neither empty nor full
    for o in result.obj_ids:
        areas = result.masks[o].sum(axis=(1, 2))
        assert (areas > 0).sum() >= 5 and (areas < 64 * 64).all()


def test_parity_objects_apart(seg, volume, official, frames_dir):
    """Objects first prompted on different slices (module docstring)."""
    vol, lab = volume
    steps = _cases(lab)["objects-apart"]
    with pytest.raises(RuntimeError, match="same dtype"):
        run_official(official, frames_dir, steps)  # the package alone, float32 (sam2 #308)
    handle = official.memory_attention.register_forward_pre_hook(_memory_to_weight_dtype, with_kwargs=True)
    try:
        theirs = run_official(official, frames_dir, steps)
    finally:
        handle.remove()
    check_parity("objects-apart fp32", ours(seg, vol, steps)[0], *theirs)
    bf16 = Sam2Segmenter(model=seg.model, arch=seg.arch, precision="bf16")
    check_parity("objects-apart bf16 autocast", ours(bf16, vol, steps)[0], *run_official(official, frames_dir, steps, autocast=True))


def test_directions_cover_the_right_slices(seg, volume):
    vol, lab = volume
    p = VolumePrompts().add(6, points=[centre(lab[6] == 1)])
    for direction, expect in (("forward", range(6, 12)), ("backward", range(0, 7)), ("both", range(0, 12))):
        res = seg.propagate(seg.init_volume(vol), p, direction=direction)
        assert tuple(np.flatnonzero(~np.isnan(res.scores[0]))) == tuple(expect), direction
        assert res.method == "sam2" and res.prompted == {1: (6,)}
    # an object's own first prompted slice bounds a forward propagation
    p2 = p.add(8, 2, box=Box.from_mask(lab[8] == 2))
    res = seg.propagate(seg.init_volume(vol), p2, direction="forward")
    assert np.isnan(res.scores[1][:8]).all() and not res.masks[2][:8].any() and not np.isnan(res.scores[1][8:]).any()


def test_plan_runs():
    assert plan_runs((6,), 12, "both") == plan_runs([6], 12, "both")
    assert [(r.start, r.reverse) for r in plan_runs((4, 7), 12, "both")] == [(4, False), (4, True)]
    assert [(r.start, r.reverse) for r in plan_runs((0, 7), 12, "both")] == [(0, False)]
    assert [(r.start, r.reverse) for r in plan_runs((4, 7), 12, "backward")] == [(7, True)]
    assert [list(r.frames(12)) for r in plan_runs((4, 7), 12, "both")] == [list(range(4, 12)), [4, 3, 2, 1, 0]]
    assert [list(r.frames(12)) for r in plan_runs((0,), 12, "backward")] == [[0]]
    with pytest.raises(PromptError):
        plan_runs((), 12)
    with pytest.raises(ConfigError):
        plan_runs((1,), 12, "sideways")


def test_progress_once_per_slice_and_cancel(seg, volume):
    vol, lab = volume
    p = VolumePrompts().add(6, points=[centre(lab[6] == 1)])
    calls: list[tuple[int, int]] = []
    seg.propagate(seg.init_volume(vol), p, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, DEPTH + 1) for i in range(1, DEPTH + 2)]  # slices 6..11, then 6..0
    calls.clear()
    seg.propagate(seg.init_volume(vol), p, direction="forward", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 6) for i in range(1, 7)]

    polls = {"n": 0}

    def cancel() -> bool:
        polls["n"] += 1
        return polls["n"] > 4  # the prompt, then 3 slices

    state = seg.init_volume(vol)
    with pytest.raises(Cancelled, match="3 of 13"):
        seg.propagate(state, p, cancel=cancel)
    part = state.result()
    assert (~np.isnan(part.scores[0])).sum() == 3 and part.masks[1][6:9].any() and not part.masks[1][9:].any()
    # the state stays usable: propagating again finishes the stack
    full = seg.propagate(state)
    assert (~np.isnan(full.scores[0])).all()


def test_correction_changes_result_from_its_slice(seg, volume):
    vol, lab = volume
    state = seg.init_volume(vol)
    first = seg.propagate(state, VolumePrompts().add(6, points=[centre(lab[6] == 1)]))
    before = {z: first.masks[1][z].copy() for z in range(DEPTH)}
    second = seg.propagate(state, VolumePrompts().add(9, points=[centre(lab[9] == 1), (60.5, 60.5)], labels=[0, 1]))
    changed = [z for z in range(DEPTH) if not np.array_equal(before[z], second.masks[1][z])]
    assert 9 in changed and any(z > 9 for z in changed)
    assert np.array_equal(second.masks[1][6], before[6])  # the first prompted slice keeps its mask
    assert second.prompted == {1: (6, 9)} and len(state.prompts) == 2


def test_keep_features_encodes_each_slice_once(seg, volume):
    vol, lab = volume
    keep = Sam2Segmenter(model=seg.model, arch=seg.arch, video_settings={"keep_features": True})
    pred = keep.volume_propagator().predictor
    calls = {"n": 0}
    orig = pred.forward_image

    def counting(x):
        calls["n"] += 1
        return orig(x)

    pred.forward_image = counting
    state = keep.init_volume(vol)
    a = keep.propagate(state, VolumePrompts().add(6, points=[centre(lab[6] == 1)]))
    keep.propagate(state, VolumePrompts().add(9, points=[centre(lab[9] == 1)]))
    assert calls["n"] == DEPTH and len(state.slices) == DEPTH
    b = seg.propagate(seg.init_volume(vol), VolumePrompts().add(6, points=[centre(lab[6] == 1)]))
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.scores, b.scores, equal_nan=True)


def test_protocol_and_errors(seg, volume):
    vol, lab = volume
    assert isinstance(seg, VolumePropagator) and volume_support(seg) == "native"
    res = segment_volume(seg, vol, VolumePrompts().add(6, points=[centre(lab[6] == 1)]))
    assert res.method == "sam2" and res.labels.shape == (DEPTH, 64, 64) and math.isfinite(res.seconds)
    state = seg.init_volume(vol[..., 0])  # grey (Z, H, W) works too
    with pytest.raises(PromptError, match="either a mask or points"):
        seg.propagate(state, VolumePrompts().add(6, points=[(3, 3)], mask=lab[6] == 1))
    with pytest.raises(PromptError, match="outside the stack"):
        seg.propagate(state, VolumePrompts().add(12, points=[(3, 3)]))
    with pytest.raises(PromptError, match="at least one prompt"):
        seg.propagate(seg.init_volume(vol))
    from segprompt.volumes.api import VolumeState, as_volume

    with pytest.raises(ConfigError, match="not by sam2"):
        seg.propagate(VolumeState(volume=as_volume(vol)), VolumePrompts().add(6, points=[(3, 3)]))
    with pytest.raises(ConfigError, match="unknown sam2 video setting"):
        Sam2Segmenter(model=seg.model, arch=seg.arch, video_settings={"offload": True})
