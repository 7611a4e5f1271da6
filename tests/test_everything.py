"""``segment_everything`` against segment-anything's ``SamAutomaticMaskGenerator`` on the same weights.

The bundled sam-tiny weights are saved as a plain ``.pth`` in segment-anything's key layout,
loaded once into segment-anything's own classes (the reference generator) and once through
``create_segmenter("sam", checkpoint=...)``. Thresholds are relaxed so that several masks
survive on a small synthetic image. The mask helpers are checked against
``segment_anything.utils.amg`` one by one; label_map, NMS ties, empty and 16-bit images,
progress and cancel against hand-built expectations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils import amg

from segprompt.data.synthetic import SyntheticLesions
from segprompt.errors import Cancelled, ConfigError
from segprompt.everything import EverythingSettings, label_map, segment_everything
from segprompt.everything import masks as M
from segprompt.models import create_segmenter
from segprompt.models.base import ImageState, Prediction, Segmenter
from segprompt.models.sam_arch import load_sam
from segprompt.models.sam_tiny import sam_tiny_path

RELAXED = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.01)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(our sam segmenter, segment-anything's Sam) holding the same weights."""
    model, arch = load_sam(sam_tiny_path())
    path = tmp_path_factory.mktemp("ckpt") / "tiny_sam.pth"
    torch.save(model.state_dict(), path)  # plain state dict: the head count is not in it
    ref = arch.build()
    ref.load_state_dict(torch.load(path, weights_only=True))
    ours = create_segmenter("sam", checkpoint=path, arch_overrides={"decoder_num_heads": arch.decoder_num_heads})
    return ours, ref.eval()


@pytest.fixture(scope="module")
def image():
    return SyntheticLesions(n=1, seed=3, size=(80, 112), style="ultrasound")[0].image


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _assert_same_records(ours: list[dict], ref: list[dict]) -> None:
    assert len(ours) == len(ref)
    for r in ref:
        ious = [_iou(r["segmentation"], o["segmentation"]) for o in ours]
        j = int(np.argmax(ious))
        assert ious[j] >= 0.99
        o = ours[j]
        assert o["bbox"] == [int(v) for v in r["bbox"]]
        assert o["crop_box"] == [int(v) for v in r["crop_box"]]
        assert abs(o["area"] - r["area"]) <= max(1, 0.01 * r["area"])
        np.testing.assert_allclose(o["point_coords"], r["point_coords"], atol=1e-6)
        assert o["predicted_iou"] == pytest.approx(r["predicted_iou"], abs=1e-4)
        assert o["stability_score"] == pytest.approx(r["stability_score"], abs=1e-3)


CROPS = dict(crop_n_layers=1, crop_n_points_downscale_factor=2)  # 6 x 6 points on the image, 3 x 3 per crop


@pytest.mark.parametrize(
    "extra",
    [
        dict(output_mode="uncompressed_rle"),
        CROPS,
        dict(min_mask_region_area=40),
        dict(CROPS, min_mask_region_area=40),
        dict(pred_iou_thresh=0.5),  # drops about two thirds of the candidates (ours before upscaling them)
    ],
    ids=["whole-rle", "crops", "whole-min-area", "crops-min-area", "pred-iou"],
)
def test_same_masks_as_sam_automatic_mask_generator(models, image, extra):
    ours_model, ref_model = models
    cfg = {**RELAXED, **extra}
    ref = SamAutomaticMaskGenerator(ref_model, **cfg).generate(image)
    ours = segment_everything(ours_model, image, **cfg)
    assert len(ref) >= 2  # the comparison means something
    if cfg.get("output_mode") == "uncompressed_rle":
        assert sorted(r["segmentation"]["counts"] for r in ours) == sorted(r["segmentation"]["counts"] for r in ref)
        ours = [dict(r, segmentation=M.rle_to_mask(r["segmentation"])) for r in ours]
        ref = [dict(r, segmentation=amg.rle_to_mask(r["segmentation"])) for r in ref]
    if cfg.get("crop_n_layers"):
        assert any(r["crop_box"] != [0, 0, 112, 80] for r in ref)  # masks from the crops survive
    _assert_same_records(ours, ref)


def test_coco_rle_output_decodes_to_the_binary_masks():
    from pycocotools import mask as mask_utils

    labels = np.zeros((40, 60), np.int32)
    labels[2:18, 3:30] = 1
    labels[22:38, 35:58] = 2
    binary = segment_everything(_RegionSegmenter(), _label_image(labels), points_per_side=4)
    coco = segment_everything(_RegionSegmenter(), _label_image(labels), EverythingSettings(points_per_side=4, output_mode="coco_rle"))
    assert len(binary) == len(coco) == 2
    for c, b in zip(coco, binary):
        assert isinstance(c["segmentation"]["counts"], str)
        decoded = mask_utils.decode({"size": c["segmentation"]["size"], "counts": c["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), b["segmentation"])
        np.testing.assert_array_equal(label_map([c], (40, 60)) > 0, b["segmentation"])


# -- helpers against segment_anything.utils.amg --------------------------------------
@pytest.mark.parametrize("n,layers,down", [(32, 0, 1), (8, 2, 2), (5, 1, 1)])
def test_grids_and_crops_match_amg(n, layers, down):
    ours, ref = M.layer_point_grids(n, layers, down), amg.build_all_layer_point_grids(n, layers, down)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-12)
    for size in [(80, 112), (1024, 768), (37, 41)]:
        assert M.crop_boxes(size, layers, 512 / 1500) == amg.generate_crop_boxes(size, layers, 512 / 1500)


def test_mask_helpers_match_amg():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 20, 30, generator=g) * 3
    logits[0] = -5.0  # empty at both cuts: NaN
    np.testing.assert_allclose(M.stability_score(logits, 0.0, 1.0), amg.calculate_stability_score(logits, 0.0, 1.0), equal_nan=True)
    masks = logits > 0.5
    masks[1] = False
    masks[2] = False
    masks[2, 7, 3] = True
    torch.testing.assert_close(M.mask_boxes(masks), amg.batched_mask_to_box(masks).long())
    assert M.masks_to_rle(masks) == amg.mask_to_rle_pytorch(masks)
    for rle in amg.mask_to_rle_pytorch(masks):
        np.testing.assert_array_equal(M.rle_to_mask(rle), amg.rle_to_mask(rle))
        assert M.rle_area(rle) == amg.area_from_rle(rle)
    boxes = torch.tensor([[0, 0, 10, 10], [25, 25, 40, 40], [5, 30, 39, 50], [100, 100, 130, 150]])
    crop, whole = [20, 20, 60, 80], [0, 0, 200, 150]
    torch.testing.assert_close(M.near_crop_edge(boxes, crop, whole), amg.is_box_near_crop_edge(boxes, crop, whole))
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = rng.random((24, 24)) > 0.55
        for mode in ("holes", "islands"):
            got, changed = M.remove_small_regions(mask, 6, mode)
            want, want_changed = amg.remove_small_regions(mask, 6, mode)
            assert changed == want_changed
            np.testing.assert_array_equal(got, want)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """Independent greedy NMS: highest score first, earlier index first on ties."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            x0, y0 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            x1, y1 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
            area = lambda k: (boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1])  # noqa: E731
            if inter / (area(i) + area(j) - inter) > thresh:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_nms_ties_are_deterministic():
    same = torch.tensor([[2, 2, 10, 10], [2, 2, 10, 10]])
    assert M.nms(same, torch.tensor([0.5, 0.5]), 0.7).tolist() == [0]
    assert M.nms(same.flip(0), torch.tensor([0.5, 0.5]), 0.7).tolist() == [0]
    rng = np.random.default_rng(2)
    xy = rng.integers(0, 50, (300, 2))
    boxes = np.concatenate([xy, xy + rng.integers(1, 30, (300, 2))], 1).astype(np.float64)
    scores = rng.integers(0, 3, 300).astype(np.float64)  # many ties
    got = M.nms(torch.as_tensor(boxes), torch.as_tensor(scores), 0.5).tolist()
    assert got == _greedy_nms(boxes, scores, 0.5)


# -- other segmenters, images, progress --------------------------------------------
class _RegionSegmenter(Segmenter):
    """A stand-in model: the mask of a point is the region of the image's red value under it
    (nothing on 0); no quality estimate unless ``score`` is given."""

    name = "regions"
    accepts = frozenset({"points"})

    def __init__(self, score: float = float("nan")) -> None:
        super().__init__()
        self.score = score

    def _encode(self, image):
        return ImageState(image.shape[:2], image.shape[:2], image=image)

    def _segment(self, state, prompts, multimask_output, select=None):
        labels = state.image[..., 0]
        masks = np.zeros((len(prompts), 1, *labels.shape), bool)
        for i, s in enumerate(prompts):
            x, y = (int(v) for v in s.points.coords[0])
            if labels[y, x]:
                masks[i, 0] = labels == labels[y, x]
        return Prediction(masks=masks, scores=np.full((len(prompts), 1), self.score, np.float32))


def _label_image(labels: np.ndarray) -> np.ndarray:
    return np.repeat(labels.astype(np.uint8)[..., None], 3, axis=2)


def test_any_point_segmenter_gives_one_record_per_region():
    labels = np.zeros((40, 60), np.int32)
    labels[2:18, 3:30] = 1
    labels[22:38, 35:58] = 2
    labels[28:33, 12:18] = 3  # no grid point falls in it
    out = segment_everything(_RegionSegmenter(), _label_image(labels), points_per_side=4)
    got = sorted((r["area"], tuple(r["bbox"])) for r in out)
    assert got == [(16 * 23, (35, 22, 22, 15)), (16 * 27, (3, 2, 26, 15))]
    for r in out:
        assert r["stability_score"] == 1.0


@pytest.mark.parametrize("relaxed", [False, True])
def test_empty_image_gives_no_masks(relaxed):
    seg = _RegionSegmenter(score=1.0)
    cfg = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0) if relaxed else {}
    assert segment_everything(seg, np.zeros((48, 64, 3), np.uint8), points_per_side=4, **cfg) == []


def test_all_zero_image_through_sam(models):
    out = segment_everything(models[0], np.zeros((64, 64, 3), np.uint8), points_per_side=8)  # default thresholds
    assert out == []
    np.testing.assert_array_equal(label_map(out, (64, 64)), np.zeros((64, 64), np.int32))


def test_uint16_grey_image_is_converted(models):
    from segprompt.data import to_rgb_uint8

    rng = np.random.default_rng(0)
    grey = (rng.random((64, 80)) * 4000).astype(np.uint16)
    grey[10:40, 20:60] += 30000
    got = segment_everything(models[0], grey, **RELAXED)
    want = segment_everything(models[0], to_rgb_uint8(grey), **RELAXED)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert a["segmentation"].shape == (64, 80)


def test_progress_counts_and_cancel():
    labels = np.zeros((40, 60), np.int32)
    labels[5:30, 5:40] = 1
    seg, image = _RegionSegmenter(), _label_image(labels)
    calls: list[tuple[int, int]] = []
    segment_everything(seg, image, points_per_side=4, points_per_batch=5, crop_n_layers=1,
                       progress=lambda d, t: calls.append((d, t)))
    total = 16 * 5  # the whole image and 4 crops, 16 points each
    assert [t for _, t in calls] == [total] * len(calls)
    assert [d for d, _ in calls] == sorted(set(d for d, _ in calls))
    assert calls[-1][0] == total and len(calls) == 5 * 4  # 4 batches (5+5+5+1) per crop

    seen: list[int] = []
    with pytest.raises(Cancelled):
        segment_everything(seg, image, points_per_side=4, points_per_batch=5,
                           progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 2)
    assert seen == [5, 10]


def test_bad_settings_are_config_errors():
    seg = _RegionSegmenter()
    with pytest.raises(ConfigError):
        segment_everything(seg, np.zeros((8, 8, 3), np.uint8), points_per_sid=4)
    with pytest.raises(ConfigError):
        segment_everything(seg, np.zeros((8, 8, 3), np.uint8), output_mode="png")
    with pytest.raises(ConfigError):
        EverythingSettings(points_per_side=None).check()


# -- label_map ---------------------------------------------------------------------
def _rec(mask: np.ndarray, rle: bool = False) -> dict:
    seg = amg.mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0] if rle else mask
    return {"segmentation": seg, "area": int(mask.sum())}


def test_label_map_paints_largest_first():
    big = np.zeros((6, 8), bool)
    big[0:5, 0:6] = True  # 30 px
    small = np.zeros((6, 8), bool)
    small[1:3, 1:3] = True  # 4 px, on top of big
    side = np.zeros((6, 8), bool)
    side[2:6, 6:8] = True  # 8 px, given as RLE
    tiny = np.zeros((6, 8), bool)
    tiny[5, 0] = True  # 1 px
    records = [_rec(small), _rec(tiny), _rec(big), _rec(side, rle=True)]
    want = np.array(
        [
            [1, 1, 1, 1, 1, 1, 0, 0],
            [1, 3, 3, 1, 1, 1, 0, 0],
            [1, 3, 3, 1, 1, 1, 2, 2],
            [1, 1, 1, 1, 1, 1, 2, 2],
            [1, 1, 1, 1, 1, 1, 2, 2],
            [4, 0, 0, 0, 0, 0, 2, 2],
        ],
        np.int32,
    )
    got = label_map(records)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
    want_min = np.where(want == 4, 0, want)
    np.testing.assert_array_equal(label_map(records, (6, 8), min_area=2), want_min)
    np.testing.assert_array_equal(label_map([], (3, 4)), np.zeros((3, 4), np.int32))
    with pytest.raises(ConfigError):
        label_map([])
