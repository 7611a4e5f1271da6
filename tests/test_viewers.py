"""The napari plugin's logic without Qt: coordinates, prompts from layers, embeddings (LRU, disk
cache, progress, cancel), decoding, recording, model discovery, the manifest and the CLI command."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from segprompt.data.io import to_rgb_uint8
from segprompt.errors import DataError, PromptError
from segprompt.models import create_segmenter
from segprompt.models.sam_arch import save_sam, tiny_arch
from segprompt.prompts import Points, PromptSet
from viewers.coords import clip_xy, rc_to_xy, slice_of, xy_to_rc
from viewers.session import (
    EmbeddingLRU,
    EncodeCancelled,
    ImageSource,
    SegmentationSession,
    ShapeItem,
    build_prompt_set,
    candidate_policy,
    commit_mask,
    encode_with_progress,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(0)
    return create_segmenter("sam", model=tiny_arch().build())


def _image(h=64, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# coordinates: napari (row, col) <-> segprompt (x, y), in one place


def test_rc_xy_round_trip_and_order():
    rc = np.array([[10.0, 20.0], [3.5, 7.25]])  # (row, col)
    xy = rc_to_xy(rc)
    assert xy.dtype == np.float32
    np.testing.assert_array_equal(xy, [[20.0, 10.0], [7.25, 3.5]])  # (x = col, y = row)
    np.testing.assert_array_equal(xy_to_rc(xy), rc)
    zrc = xy_to_rc(xy, z=4)
    np.testing.assert_array_equal(zrc, [[4, 10, 20], [4, 3.5, 7.25]])
    np.testing.assert_array_equal(rc_to_xy(zrc), xy)  # the slice axis is dropped
    np.testing.assert_array_equal(slice_of(zrc, 3), [4, 4])
    np.testing.assert_array_equal(slice_of(rc, 2), [0, 0])
    assert rc_to_xy(np.zeros((0, 2))).shape == (0, 2)
    np.testing.assert_array_equal(clip_xy([[-1, 5], [90, 70]], (64, 80)), [[0, 5], [80, 64]])


def test_build_prompt_set_from_layer_data():
    size = (64, 80)
    # a 3-D layer: two points on slice 2 (click order kept), one on slice 1
    pts = np.array([[2, 10, 20], [1, 5, 5], [2, 30, 40]], float)
    rect = xy_to_rc([[5, 6], [50, 6], [50, 40], [5, 40]], z=2)
    path = xy_to_rc([[1, 1], [10, 10], [20, 5]], z=2)
    poly = xy_to_rc([[30, 30], [60, 30], [60, 60], [30, 60]], z=2)
    other = xy_to_rc([[0, 0], [8, 0], [8, 8], [0, 8]], z=1)
    shapes = [ShapeItem("rectangle", rect), ShapeItem("path", path, 0), ShapeItem("polygon", poly, 1), ShapeItem("rectangle", other)]
    ps, notes = build_prompt_set(image_size=size, ndim=3, z=2, points=pts, point_labels=[1, 1, 0], shapes=shapes)
    np.testing.assert_array_equal(ps.points.coords, [[20, 10], [40, 30]])
    np.testing.assert_array_equal(ps.points.labels, [1, 0])
    np.testing.assert_array_equal(ps.box.xyxy, [5, 6, 50, 40])
    assert len(ps.scribbles) == 1 and ps.scribbles[0].label == 0
    np.testing.assert_array_equal(ps.scribbles[0].coords, [[1, 1], [10, 10], [20, 5]])
    m = ps.mask.data
    assert m.shape == size and m[45, 45] and not m[10, 10]  # (row 45, col 45) inside the polygon
    assert notes == []
    # a model that takes points only: the others are dropped and named
    ps2, notes2 = build_prompt_set(image_size=size, ndim=3, z=2, points=pts, point_labels=[1, 1, 0], shapes=shapes, accepts={"points"})
    assert ps2.kinds == {"points"}
    assert any("box" in n for n in notes2) and any("scribble" in n for n in notes2)
    # nothing on slice 0
    assert build_prompt_set(image_size=size, ndim=3, z=0, points=pts, point_labels=[1, 1, 0], shapes=shapes)[0].is_empty()


def test_image_source_any_dtype_and_stacks():
    rng = np.random.default_rng(0)
    u16 = rng.integers(0, 4000, (40, 50), dtype=np.uint16)
    src = ImageSource(u16, name="ct")
    out = src.rgb_slice()
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, to_rgb_uint8(u16))
    f = rng.normal(size=(40, 50)).astype(np.float32)
    np.testing.assert_array_equal(ImageSource(f).rgb_slice(), to_rgb_uint8(f))
    win = ImageSource(u16, normalisation="window", window=(0, 1000)).rgb_slice()
    np.testing.assert_array_equal(win, to_rgb_uint8(u16, "window", (0, 1000)))
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    s = ImageSource(rgb, rgb=True)
    assert s.ndim == 2 and s.size == (40, 50)
    np.testing.assert_array_equal(s.rgb_slice(), rgb)
    stack = rng.integers(0, 60000, (5, 40, 50), dtype=np.uint16)
    st = ImageSource(stack, name="vol")
    assert (st.ndim, st.n_slices, st.size) == (3, 5, (40, 50))
    np.testing.assert_array_equal(st.rgb_slice(3), to_rgb_uint8(stack[3]))
    assert st.image_id(3) == "vol_z0003" and s.image_id() == "image"
    rgb_stack = ImageSource(rng.integers(0, 255, (3, 40, 50, 3), dtype=np.uint8), rgb=True)
    assert rgb_stack.ndim == 3 and rgb_stack.rgb_slice(1).shape == (40, 50, 3)
    with pytest.raises(DataError, match="2-D images and 3-D stacks"):
        ImageSource(np.zeros((2, 3, 40, 50)))
    with pytest.raises(DataError, match="outside the stack"):
        st.rgb_slice(5)


def test_lru_evicts_least_recently_used():
    lru = EmbeddingLRU(2)
    lru.put("a", "A")
    lru.put("b", "B")
    assert lru.get("a") == "A"  # a is now the most recent
    lru.put("c", "C")
    assert "b" not in lru and "a" in lru and "c" in lru and len(lru) == 2
    assert lru.get("b") is None and (lru.hits, lru.misses) == (1, 1)


def test_encode_progress_per_block_and_cancel(tiny_sam):
    img = _image()
    seen = []
    state = encode_with_progress(tiny_sam, img, lambda d, t: seen.append((d, t)))
    n = len(tiny_sam.model.image_encoder.blocks) + 1
    assert seen[0] == (0, n) and seen[-1] == (n, n) and len(seen) >= n
    torch.testing.assert_close(state.features["embeddings"], tiny_sam.encode(img).features["embeddings"])
    # cancel during the first block: stops before the second, hooks removed afterwards
    cancel = threading.Event()

    def progress(done, total):
        if done == 1:
            cancel.set()

    with pytest.raises(EncodeCancelled):
        encode_with_progress(tiny_sam, img, progress, cancel)
    assert all(not b._forward_pre_hooks for b in tiny_sam.model.image_encoder.blocks)
    # a model without transformer blocks still reports start and end
    classical = create_segmenter("classical")
    seen2 = []
    encode_with_progress(classical, img, lambda d, t: seen2.append((d, t)))
    assert seen2 == [(0, 1), (1, 1)]


def test_session_caches_slices_and_decodes_without_reencoding(tiny_sam):
    stack = np.random.default_rng(1).integers(0, 1000, (4, 48, 56), dtype=np.uint16)
    sess = SegmentationSession(tiny_sam, model_label="tiny", lru_size=2)
    sess.set_source(ImageSource(stack, name="vol"))
    calls = []
    orig = tiny_sam._encode
    tiny_sam._encode = lambda im: (calls.append(1), orig(im))[1]
    try:
        sess.encode(1)
        sess.encode(1)
        assert len(calls) == 1
        ps = PromptSet(points=Points.positive((20, 30)))
        prev = sess.decode(ps, 1)
        assert len(calls) == 1  # decode never encodes
        ref = tiny_sam.segment(tiny_sam.encode(to_rgb_uint8(stack[1])), ps, multimask="all")
        calls.clear()
        np.testing.assert_array_equal(prev.masks, ref.masks[0])
        assert prev.chosen == int(np.argmax(ref.scores[0]))
        sess.encode(2)
        sess.encode(3)  # capacity 2: slice 1 is evicted
        assert not sess.has_state(1) and sess.has_state(3)
        with pytest.raises(PromptError, match="no embedding"):
            sess.decode(ps, 0)
    finally:
        tiny_sam._encode = orig


def test_disk_cache_behind_the_lru(tmp_path):
    from viewers.models import ModelChoice

    torch.manual_seed(0)
    ckpt = save_sam(tiny_arch().build(), tmp_path / "mine.safetensors")
    seg = ModelChoice("mine", checkpoint=ckpt).load(cache=tmp_path / "emb")
    sess = SegmentationSession(seg)
    sess.set_source(ImageSource(_image(), rgb=True))
    sess.encode(0)
    assert len(list((tmp_path / "emb").glob("*/*.safetensors"))) == 1
    sess2 = SegmentationSession(ModelChoice("mine", checkpoint=ckpt).load(cache=tmp_path / "emb"))
    sess2.set_source(ImageSource(_image(), rgb=True))
    sess2.encode(0)
    assert sess2.segmenter.cache.stats.hits == 1


def test_candidate_policy(tiny_sam):
    one = PromptSet(points=Points.positive((5, 5)))
    two = PromptSet(points=Points.positive((5, 5), (9, 9)))
    assert candidate_policy(tiny_sam, one) == "all" and candidate_policy(tiny_sam, two) == "single"
    assert candidate_policy(tiny_sam, two, "all") == "all" and candidate_policy(tiny_sam, one, "single") == "single"
    assert candidate_policy(create_segmenter("classical"), one, "all") == "single"


def test_auto_keeps_the_single_head_of_a_model_whose_own_policy_it_is():
    """sam-tiny's own policy is its single-mask head (its IoU head ranks real images' candidates
    badly), so napari's ``auto`` shows that mask for one click; ``all`` still lists the three."""
    one = PromptSet(points=Points.positive((5, 5)))
    tiny = create_segmenter("sam-tiny")
    assert tiny.multimask == "single"
    assert candidate_policy(tiny, one) == "single" and candidate_policy(tiny, one, "all") == "all"
    assert candidate_policy(create_segmenter("sam-tiny", zoom_in=True), one) == "single"  # through a wrapper
    assert candidate_policy(create_segmenter("sam-tiny", multimask="auto"), one) == "all"


def test_recording_and_export_round_trip(tiny_sam, tmp_path):
    from pointprompt.trajectory import load_trajectories

    sess = SegmentationSession(tiny_sam, model_label="tiny")
    sess.info.annotator, sess.info.dataset = "me", "demo"
    sess.set_source(ImageSource(_image(), rgb=True, name="img7"))
    sess.encode(0)
    t0 = 100.0
    pts = Points.positive((10, 12))
    for k, ps in enumerate([PromptSet(points=pts), PromptSet(points=pts + Points(np.array([[40, 30]]), np.array([0])))]):
        sess.record(ps, sess.decode(ps), t0 + 1.5 * k)
    labels = np.zeros((64, 80), np.int32)
    oid = commit_mask(labels, np.ones((64, 80), bool))
    traj = sess.finish(oid)
    assert oid == 1 and traj.meta["object_id"] == 1 and traj.meta["committed"] is True
    assert [s.time_s for s in traj.steps] == [0.0, 1.5]
    assert traj.source == "napari" and traj.image_id == "img7" and traj.annotator == "me" and traj.dataset == "demo"
    assert traj.steps[1].points.to_list() == [[10.0, 12.0, 1], [40.0, 30.0, 0]]
    assert traj.steps[0].iou is None and traj.steps[0].extra["candidates"] == 3
    out = sess.export(tmp_path / "t.jsonl")
    back = load_trajectories(out)
    assert back == [traj]


def test_commit_mask_new_ids_never_erase():
    labels = np.zeros((3, 10, 10), np.int32)
    a = np.zeros((10, 10), bool)
    a[:5] = True
    assert commit_mask(labels, a, z=1) == 1
    b = np.zeros((10, 10), bool)
    b[3:8] = True
    assert commit_mask(labels, b, z=1) == 2
    assert (labels[1, :5] == 1).all() and (labels[1, 5:8] == 2).all() and not labels[0].any()


def test_model_discovery_lists_cache_checkpoints(tmp_path, monkeypatch):
    from viewers.models import discover_models

    monkeypatch.setenv("SEGPROMPT_HOME", str(tmp_path))
    folder = tmp_path / "checkpoints"
    torch.manual_seed(0)
    save_sam(tiny_arch().build(), folder / "my_finetuned.safetensors")
    (folder / ".partial.pth.part").write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    choices = discover_models()
    labels = [c.label for c in choices]
    assert labels[:3] == ["sam-tiny (bundled demo)", "classical (GrabCut)", "random walker"]
    assert "SAM: my_finetuned.safetensors" in labels and len(labels) == 6 and labels[3] == "universal-tiny (bundled demo)" and labels[4] == "sam2 (SAM 2)"
    seg = choices[labels.index("SAM: my_finetuned.safetensors")].load()
    assert seg.name == "sam" and seg.arch.img_size == 256  # architecture read from the file


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_manifest_is_valid_and_its_commands_import():
    npe2 = pytest.importorskip("npe2")
    import importlib

    mf = npe2.PluginManifest.from_file(REPO / "viewers" / "napari.yaml")
    assert mf.name == "segprompt"
    for cmd in mf.contributions.commands:
        module, attr = cmd.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr))
    assert {w.display_name for w in mf.contributions.widgets} == {"Promptable segmentation"}
    keys = {s.key for s in mf.contributions.sample_data}
    assert keys == {"lesion", "ultrasound-stack"}
    # the entry point pyproject declares: [project.entry-points."napari.manifest"] segprompt = "viewers:napari.yaml"
    from importlib import metadata

    ep = metadata.EntryPoint(name="segprompt", value="viewers:napari.yaml", group="napari.manifest")
    assert npe2.PluginManifest._from_entrypoint(ep, metadata.distribution("segprompt")).name == "segprompt"
    installed = [e for e in metadata.entry_points(group="napari.manifest") if e.name == "segprompt"]
    if installed:  # once the package is (re)installed with the entry point
        assert installed[0].value == "viewers:napari.yaml"
        assert npe2.PluginManifest.from_distribution("segprompt").name == "segprompt"


def test_sample_data():
    from viewers.sample_data import synthetic_lesion, synthetic_ultrasound_stack

    (img, meta, kind), (gt, _, gkind) = synthetic_lesion()
    assert kind == "image" and gkind == "labels" and img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert meta["name"] == "lesion_0_00000" and gt.any()
    ((stack, _, _),) = synthetic_ultrasound_stack(n_slices=3, size=64)
    assert stack.shape == (3, 64, 64) and stack.dtype == np.uint16


def test_core_and_cli_help_do_not_import_napari():
    code = (
        "import sys, segprompt, segprompt.models, segprompt.commands.napari as c; "
        "from click.testing import CliRunner; r = CliRunner().invoke(c.napari, ['--help']); "
        "print('RC', r.exit_code, 'HEAVY', [m for m in ('napari', 'qtpy', 'PyQt5', 'viewers') if m in sys.modules]); "
        "print(r.output)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "RC 0 HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "Usage: napari [OPTIONS] [IMAGES]..." in out.stdout and "--checkpoint" in out.stdout
