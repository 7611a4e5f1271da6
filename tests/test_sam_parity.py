"""The ``sam`` segmenter against segment-anything's own SamPredictor, on the same weights.

A tiny random SAM (same classes, small sizes) is saved in segment-anything's key layout and
loaded through ``create_segmenter("sam", checkpoint=...)``; the reference predictor gets the
same module. Masks must agree on >= 99.9% of pixels and scores to 1e-4, for every prompt
kind, in single- and multimask mode, with many prompt sets decoded in one call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.build_sam import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l

from segprompt.data.synthetic import SyntheticLesions
from segprompt.errors import PromptError, WeightsError
from segprompt.models import create_segmenter
from segprompt.models.sam_arch import OFFICIAL_ARCHS, SamArch, load_sam, save_sam, tiny_arch
from segprompt.prompts import Box, MaskPrompt, Points, PromptSet


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter non-trivial random values (zero-initialised ones included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))
            elif "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        pe = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        pe.copy_(torch.randn(pe.shape, generator=g))
        # random decoders give logits near a constant; widen them so masks have real edges
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(40.0)
            mlp.layers[-1].bias.zero_()
    return model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    arch = tiny_arch(encoder_depth=3, encoder_global_attn_indexes=(2,), decoder_num_heads=8, prompt_embed_dim=64, decoder_mlp_dim=128, iou_head_hidden_dim=64)
    torch.manual_seed(0)
    model = _randomise(arch.build(), seed=8)  # seed chosen so that nearly every reference mask is non-trivial
    path = tmp_path_factory.mktemp("ckpt") / "tiny_sam.pth"
    torch.save(model.state_dict(), path)  # plain state dict, as the official files are
    return path, arch


@pytest.fixture(scope="module")
def image():
    # not square and not a multiple of the patch size: exercises resize + padding
    rng_sample = SyntheticLesions(n=1, seed=3, size=(190, 300), style="endoscopy")[0]
    return rng_sample.image, rng_sample.mask


def _reference(tiny_checkpoint, image):
    path, arch = tiny_checkpoint
    ref_model = arch.build()
    ref_model.load_state_dict(torch.load(path, weights_only=True))
    predictor = SamPredictor(ref_model)
    predictor.set_image(image)
    return predictor


def _prompt_sets(mask: np.ndarray) -> list[tuple[PromptSet, dict]]:
    """Our prompt sets paired with the equivalent SamPredictor.predict keyword arguments."""
    ys, xs = np.nonzero(mask)
    cx, cy = float(xs.mean()), float(ys.mean())
    h, w = mask.shape
    one = np.array([[cx, cy]], np.float32)
    three = np.array([[cx, cy], [cx + 5.5, cy - 3.25], [5.0, h - 6.0]], np.float32)
    lab3 = np.array([1, 1, 0])
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    other_one = np.array([[w - 20.0, 15.0]], np.float32)
    return [
        (PromptSet(points=Points(one, [1])), dict(point_coords=one, point_labels=np.array([1]))),
        (PromptSet(points=Points(other_one, [0])), dict(point_coords=other_one, point_labels=np.array([0]))),
        (PromptSet(points=Points(three, lab3)), dict(point_coords=three, point_labels=lab3)),
        (PromptSet(box=Box(box)), dict(box=box)),
        (PromptSet(points=Points(one, [1]), box=Box(box)), dict(point_coords=one, point_labels=np.array([1]), box=box)),
    ]


def _agree(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float((ours == theirs).mean())


@pytest.mark.parametrize("multimask", [False, True])
def test_masks_and_scores_match_sampredictor(tiny_checkpoint, image, multimask):
    img, gt = image
    seg = create_segmenter("sam", checkpoint=tiny_checkpoint[0], multimask="all" if multimask else "single")
    predictor = _reference(tiny_checkpoint, img)
    pairs = _prompt_sets(gt)
    state = seg.encode(img)
    # every set in one call: same-structure sets share a batch, others get their own
    pred = seg.segment(state, [p for p, _ in pairs])
    assert pred.masks.shape == (len(pairs), 3 if multimask else 1, *img.shape[:2])
    assert pred.masks.dtype == bool
    nontrivial = 0
    for i, (_, kwargs) in enumerate(pairs):
        masks, scores, logits = predictor.predict(multimask_output=multimask, **kwargs)
        assert masks.shape == pred.masks[i].shape
        nontrivial += int(any(0.01 < m.mean() < 0.99 for m in masks))
        assert _agree(pred.masks[i], masks) >= 0.999, f"prompt set {i}"
        np.testing.assert_allclose(pred.scores[i], scores, atol=1e-4)
        np.testing.assert_allclose(pred.logits[i], logits, atol=1e-3)
    assert nontrivial >= len(pairs) - 1, "reference masks are mostly trivial: the test would prove little"


def test_mask_feedback_matches_sampredictor(tiny_checkpoint, image):
    img, gt = image
    seg = create_segmenter("sam", checkpoint=tiny_checkpoint[0], multimask="best")
    predictor = _reference(tiny_checkpoint, img)
    ys, xs = np.nonzero(gt)
    pt = np.array([[xs.mean(), ys.mean()]], np.float32)
    state = seg.encode(img)
    first = seg.segment(state, PromptSet(points=Points(pt, [1])))
    # SAM's recipe: feed the chosen low-res logits back with the next click
    prev = first.logits[0, 0]
    pts2 = np.concatenate([pt, [[xs.min() + 2.0, ys.min() + 2.0]]]).astype(np.float32)
    second = seg.segment(state, PromptSet(points=Points(pts2, [1, 1]), mask=MaskPrompt(prev, kind="logits")), multimask="single")
    masks, scores, _ = predictor.predict(point_coords=pts2, point_labels=np.array([1, 1]), mask_input=prev[None], multimask_output=False)
    assert _agree(second.masks[0], masks) >= 0.999
    np.testing.assert_allclose(second.scores[0], scores, atol=1e-4)


def test_many_sets_one_call_equal_one_by_one(tiny_checkpoint, image):
    img, gt = image
    seg = create_segmenter("sam", checkpoint=tiny_checkpoint[0], multimask="all", max_batch=4)
    rng = np.random.default_rng(0)
    h, w = gt.shape
    sets = [PromptSet(points=Points(rng.uniform([0, 0], [w - 1, h - 1], size=(2, 2)), rng.integers(0, 2, 2))) for _ in range(10)]
    state = seg.encode(img)
    together = seg.segment(state, sets)
    for i, s in enumerate(sets):
        alone = seg.segment(state, s)
        assert np.array_equal(together.masks[i], alone.masks[0])
        np.testing.assert_allclose(together.scores[i], alone.scores[0], atol=1e-5)


def test_policies(tiny_checkpoint, image):
    img, gt = image
    seg = create_segmenter("sam", checkpoint=tiny_checkpoint[0])
    state = seg.encode(img)
    ys, xs = np.nonzero(gt)
    s = PromptSet(points=Points([[xs.mean(), ys.mean()]], [1]))
    full = seg.segment(state, s, multimask="all")
    best = seg.segment(state, s, multimask="best")
    first = seg.segment(state, s, multimask="first")
    oracle = seg.segment(state, s, multimask="oracle", targets=gt)
    assert best.chosen[0] == int(np.argmax(full.scores[0]))
    assert np.array_equal(best.masks[0, 0], full.masks[0, full.scores[0].argmax()])
    assert first.chosen[0] == 0 and np.array_equal(first.masks[0, 0], full.masks[0, 0])
    ious = [(m & gt).sum() / max((m | gt).sum(), 1) for m in full.masks[0]]
    assert oracle.chosen[0] == int(np.argmax(ious))
    with pytest.raises(PromptError, match="oracle"):
        seg.segment(state, s, multimask="oracle")


@pytest.mark.parametrize("name,builder", [("vit_b", build_sam_vit_b), ("vit_l", build_sam_vit_l), ("vit_h", build_sam_vit_h)])
def test_official_architectures_read_from_state_dict(name, builder):
    with torch.device("meta"):  # shapes only, no memory
        model = builder()
    arch = SamArch.from_state_dict(model.state_dict())
    assert arch == OFFICIAL_ARCHS[name]
    assert arch.name == name


def test_tiny_architecture_round_trip(tmp_path):
    arch = tiny_arch(img_size=128, encoder_depth=4, encoder_global_attn_indexes=(1, 3), window_size=4, decoder_num_heads=4)
    model = arch.build()
    # .safetensors keeps the head count that the weights cannot show
    path = save_sam(model, tmp_path / "m.safetensors", arch)
    loaded, read = load_sam(path)
    assert read == arch
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    # a .pth written by us loads in segment-anything's own registry loader for official sizes
    # (shapes-only check for vit_b would need 375 MB; the key layout is what matters)
    pth = save_sam(model, tmp_path / "m.pth", arch)
    sd = torch.load(pth, weights_only=True)
    assert set(sd) == set(model.state_dict())
    # ... and the head counts the weights cannot show travel beside it, so a .pth loads as the same model
    assert load_sam(pth)[1] == arch and load_sam(pth)[1].decoder_num_heads == 4


def test_a_pth_without_its_record_warns_that_decoder_heads_are_assumed(tmp_path, caplog):
    arch = tiny_arch(decoder_num_heads=4)
    model = arch.build().eval()
    pth = save_sam(model, tmp_path / "m.pth", arch)
    image = torch.rand(1, 3, arch.img_size, arch.img_size)

    def masks(m: torch.nn.Module) -> torch.Tensor:
        emb = m.image_encoder(image)
        sparse, dense = m.prompt_encoder(points=(torch.tensor([[[40.0, 50.0]]]), torch.tensor([[1]])), boxes=None, masks=None)
        return m.mask_decoder(emb, m.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)[0]

    with torch.no_grad():
        assert torch.allclose(masks(load_sam(pth)[0]), masks(model), atol=1e-5)
        (tmp_path / "m.pth.arch.json").unlink()  # e.g. a .pth copied without its record
        with caplog.at_level("WARNING", logger="segprompt.models.sam_arch"):
            loaded, read = load_sam(pth)
        assert read.decoder_num_heads == 8 and "head count is assumed" in caplog.text
        assert not torch.allclose(masks(loaded), masks(model), atol=1e-5)  # why the warning matters
        assert load_sam(pth, {"decoder_num_heads": 4})[1] == arch


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        create_segmenter("sam", checkpoint=junk)
    other = tmp_path / "other.pth"
    torch.save({"some.weight": torch.zeros(2)}, other)
    with pytest.raises(WeightsError, match="not a segment-anything SAM state dict"):
        create_segmenter("sam", checkpoint=other)
    with pytest.raises(WeightsError):
        create_segmenter("sam", checkpoint=tmp_path / "missing.pth")


def test_prompt_errors(tiny_checkpoint, image):
    img, _ = image
    seg = create_segmenter("sam", checkpoint=tiny_checkpoint[0])
    state = seg.encode(img)
    with pytest.raises(PromptError, match="outside the image"):
        seg.segment(state, PromptSet(points=Points([[img.shape[1] + 5, 3]], [1])))
    with pytest.raises(PromptError, match="does not accept text"):
        seg.segment(state, PromptSet(text="polyp"))
    with pytest.raises(PromptError, match="must be 64x64"):
        seg.segment(state, PromptSet(mask=MaskPrompt(np.zeros((32, 32), np.float32), kind="logits")))


def test_official_registry_loader_reads_our_pth(tmp_path):
    """A vit_b-layout file we write loads in segment_anything.sam_model_registry (on meta-free CPU)."""
    pytest.importorskip("segment_anything")
    torch.manual_seed(0)
    model = OFFICIAL_ARCHS["vit_b"].build()
    path = save_sam(model, tmp_path / "vitb.pth")
    loaded = sam_model_registry["vit_b"](checkpoint=str(path))
    a = dict(model.named_parameters())["mask_decoder.iou_token.weight"]
    b = dict(loaded.named_parameters())["mask_decoder.iou_token.weight"]
    assert torch.equal(a, b)


def test_auto_policy_is_best_for_a_lone_point_and_single_otherwise(tiny_checkpoint, image):
    img, gt = image
    seg = create_segmenter("sam", checkpoint=tiny_checkpoint[0])
    assert seg.multimask == "auto"
    state = seg.encode(img)
    ys, xs = np.nonzero(gt)
    lone = PromptSet(points=Points([[xs.mean(), ys.mean()]], [1]))
    two = PromptSet(points=Points([[xs.mean(), ys.mean()], [5, 5]], [1, 0]))
    boxed = PromptSet(points=Points([[xs.mean(), ys.mean()]], [1]), box=Box([xs.min(), ys.min(), xs.max(), ys.max()]))
    auto = seg.segment(state, [two, lone, boxed])
    best = seg.segment(state, lone, multimask="best")
    single = seg.segment(state, [two, boxed], multimask="single")
    assert auto.masks.shape[1] == 1 and auto.chosen.tolist() == [-1, best.chosen[0], -1]
    assert np.array_equal(auto.masks[1], best.masks[0]) and np.array_equal(auto.masks[[0, 2]], single.masks)
    np.testing.assert_allclose(auto.scores[[0, 2]], single.scores)
