"""The universal decoder's matcher and losses against short independent re-implementations of the
Mask2Former / detectron2 rules (numpy loops, brute force over permutations, monai's Dice)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segprompt.universal.losses import (
    LossWeights,
    MatchWeights,
    hungarian_match,
    mask_losses,
    pairwise_mask_costs,
    point_sample,
    prompt_losses,
    set_criterion,
    text_class_logits,
    uncertain_point_coords,
)


# ---------------------------------------------------------------- independent references
def bilinear_ref(img: np.ndarray, x: float, y: float) -> float:
    """grid_sample(align_corners=False, padding zeros) at (x, y) in [0, 1]: pixel centres at (j + .5) / W."""
    h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    val = 0.0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            r, c = y0 + dy, x0 + dx
            if 0 <= r < h and 0 <= c < w:
                val += wy * wx * float(img[r, c])
    return val


def sample_ref(maps: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """maps (N, H, W), coords (N, P, 2) -> (N, P) by the loop above."""
    return np.array([[bilinear_ref(m, x, y) for x, y in pts] for m, pts in zip(maps, coords)])


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def bce_ref(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (labels * softplus(-logits) + (1 - labels) * softplus(logits)).mean(-1)


def dice_ref(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-logits))
    return 1 - (2 * (p * labels).sum(-1) + 1) / (p.sum(-1) + labels.sum(-1) + 1)


def draws(seed: int, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Replays the generator: the successive torch.rand draws the functions document."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(s, generator=g).double().numpy() for s in shapes]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- point sampling
def test_point_sample_matches_bilinear_loop():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7)
    coords = torch.rand(2, 9, 2)
    coords[0, 0] = torch.tensor([0.0, 0.0])  # corner: half the neighbours are outside (zeros)
    coords[1, 1] = torch.tensor([1.0, 0.5])
    out = point_sample(x, coords)
    assert out.shape == (2, 3, 9) and out.dtype == torch.float32
    for n in range(2):
        for c in range(3):
            ref = [bilinear_ref(x[n, c].numpy(), float(px), float(py)) for px, py in coords[n]]
            np.testing.assert_allclose(out[n, c].numpy(), ref, atol=1e-5)


def test_point_sample_is_float32_under_autocast():
    x = torch.randn(1, 1, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert point_sample(x, torch.rand(1, 5, 2)).dtype == torch.float32


def test_uncertain_points_without_oversampling_are_the_first_draw():
    logits = torch.randn(2, 1, 6, 6)
    coords = uncertain_point_coords(logits, 20, oversample=1.0, importance=1.0, generator=gen(3))
    (cand,) = draws(3, (2, 20, 2))
    for n in range(2):  # same points, in uncertainty order
        got = sorted(map(tuple, coords[n].double().numpy().round(6)))
        assert got == sorted(map(tuple, cand[n].round(6)))


@pytest.mark.parametrize("importance", [1.0, 0.5, 0.0])
def test_uncertain_points_pick_the_most_uncertain_candidates(importance):
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 6, 8) * 3
    p, over = 40, 4.0
    coords = uncertain_point_coords(logits, p, oversample=over, importance=importance, generator=gen(7))
    k = int(importance * p)
    cand, rand = draws(7, (2, int(p * over), 2), (2, p - k, 2))
    unc = -np.abs(sample_ref(logits[:, 0].numpy(), cand))
    for n in range(2):
        best = cand[n][np.argsort(-unc[n])[:k]]
        np.testing.assert_allclose(coords[n, :k].numpy(), best, atol=1e-6)
        np.testing.assert_allclose(coords[n, k:].numpy(), rand[n], atol=1e-6)


def test_uncertain_points_concentrate_on_the_boundary():
    # logit = 10 (x - 0.5) along the columns: the uncertain band is the middle column band
    w = 32
    xs = (torch.arange(w) + 0.5) / w
    logits = (10 * (xs - 0.5)).expand(1, 1, 16, w).contiguous()
    coords = uncertain_point_coords(logits, 200, oversample=5.0, importance=1.0, generator=gen(0))
    assert (coords[0, :, 0] - 0.5).abs().max() < 0.2  # the top 20 % of 1000 uniform x: |x - .5| < ~0.1


# ---------------------------------------------------------------- mask losses and costs
def test_mask_losses_match_an_independent_reimplementation():
    torch.manual_seed(2)
    pred = torch.randn(3, 6, 6) * 2
    tgt = (torch.rand(3, 10, 12) > 0.5).float()  # another resolution
    p, over, imp = 50, 3.0, 0.75
    bce, dice = mask_losses(pred, tgt, num_points=p, oversample=over, importance=imp, generator=gen(5))
    k = int(imp * p)
    cand, rand = draws(5, (3, int(p * over), 2), (3, p - k, 2))
    unc = -np.abs(sample_ref(pred.numpy(), cand))
    coords = np.stack([np.concatenate([cand[n][np.argsort(-unc[n])[:k]], rand[n]]) for n in range(3)])
    logits, labels = sample_ref(pred.numpy(), coords), sample_ref(tgt.numpy(), coords)
    np.testing.assert_allclose(bce.detach().numpy(), bce_ref(logits, labels), atol=1e-5)
    np.testing.assert_allclose(dice.detach().numpy(), dice_ref(logits, labels), atol=1e-5)


def test_mask_dice_agrees_with_monai():
    monai_losses = pytest.importorskip("monai.losses")
    torch.manual_seed(3)
    pred, tgt = torch.randn(4, 8, 8), (torch.rand(4, 8, 8) > 0.4).float()
    g = gen(9)
    coords = uncertain_point_coords(pred[:, None], 300, 3.0, 0.75, generator=gen(9))
    _, dice = mask_losses(pred, tgt, 300, generator=g)
    logits = point_sample(pred[:, None], coords)
    labels = point_sample(tgt[:, None], coords)
    ref = monai_losses.DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, reduction="none")(logits, labels)
    np.testing.assert_allclose(dice.numpy(), ref.flatten().numpy(), atol=1e-5)


def test_uniform_mask_losses_approach_the_dense_integral():
    # importance 0: uniform points, so the means estimate the integral of the bilinear fields
    torch.manual_seed(4)
    pred, tgt = torch.randn(2, 4, 4) * 2, (torch.rand(2, 4, 4) > 0.5).float()
    bce, dice = mask_losses(pred, tgt, 200_000, oversample=1.0, importance=0.0, generator=gen(1))
    fine = 64  # a regular fine grid of sample positions, evaluated by the loop
    centres = (np.arange(fine) + 0.5) / fine
    grid = np.array([(x, y) for y in centres for x in centres])[None].repeat(2, 0)
    logits, labels = sample_ref(pred.numpy(), grid), sample_ref(tgt.numpy(), grid)
    np.testing.assert_allclose(bce.numpy(), bce_ref(logits, labels), atol=0.01)
    np.testing.assert_allclose(dice.numpy(), dice_ref(logits, labels), atol=0.01)


def test_pairwise_costs_match_an_independent_reimplementation():
    torch.manual_seed(5)
    pred, tgt = torch.randn(4, 5, 5), (torch.rand(3, 9, 7) > 0.5).float()
    bce, dice = pairwise_mask_costs(pred, tgt, num_points=60, generator=gen(11))
    (pts,) = draws(11, (1, 60, 2))
    lp = sample_ref(pred.numpy(), pts.repeat(4, 0))
    lt = sample_ref(tgt.numpy(), pts.repeat(3, 0))
    for q in range(4):
        for m in range(3):
            assert bce[q, m].item() == pytest.approx(bce_ref(lp[q], lt[m]), abs=1e-5)
            assert dice[q, m].item() == pytest.approx(dice_ref(lp[q], lt[m]), abs=1e-5)


# ---------------------------------------------------------------- text classes
def test_text_class_logits_are_scaled_cosines_with_a_no_object_column():
    torch.manual_seed(6)
    q, t = torch.randn(2, 5, 8), torch.randn(3, 8)
    out = text_class_logits(q, t, torch.tensor(7.0))
    qn = q.numpy() / np.linalg.norm(q.numpy(), axis=-1, keepdims=True)
    tn = t.numpy() / np.linalg.norm(t.numpy(), axis=-1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), 7.0 * qn @ tn.T, atol=1e-5)
    scalar = text_class_logits(q, t, 7.0, no_object_logit=torch.tensor(-1.5))
    assert scalar.shape == (2, 5, 4) and torch.all(scalar[..., 3] == -1.5)
    per_query = torch.randn(2, 5)
    assert torch.equal(text_class_logits(q, t, 7.0, no_object_logit=per_query)[..., 3], per_query)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert text_class_logits(q.bfloat16(), t.bfloat16(), 7.0).dtype == torch.float32


# ---------------------------------------------------------------- Hungarian matching
def cost_ref(cls_logits, pred, tgt_cls, tgt, weights, seed, num_points):
    (pts,) = draws(seed, (1, num_points, 2))
    lp = sample_ref(pred.numpy(), pts.repeat(len(pred), 0))
    lt = sample_ref(tgt.numpy(), pts.repeat(len(tgt), 0))
    z = cls_logits.double().numpy()
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    c = np.zeros((len(pred), len(tgt)))
    for q in range(len(pred)):
        for m in range(len(tgt)):
            c[q, m] = (-weights.cls * prob[q, tgt_cls[m]] + weights.mask * bce_ref(lp[q], lt[m])
                       + weights.dice * dice_ref(lp[q], lt[m]))
    return c


def brute_force_min(c: np.ndarray) -> float:
    q, m = c.shape
    if q >= m:
        return min(sum(c[p[j], j] for j in range(m)) for p in itertools.permutations(range(q), m))
    return min(sum(c[i, p[i]] for i in range(q)) for p in itertools.permutations(range(m), q))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(q=st.integers(1, 5), m=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_hungarian_matches_brute_force(q, m, seed):
    torch.manual_seed(seed)
    k = 4
    cls_logits, pred = torch.randn(q, k + 1), torch.randn(q, 6, 6) * 2
    tgt_cls, tgt = torch.randint(0, k, (m,)), (torch.rand(m, 8, 8) > 0.5).float()
    w = MatchWeights()
    qi, ti = hungarian_match(cls_logits, pred, tgt_cls, tgt, w, num_points=32, generator=gen(seed))
    assert qi.dtype == ti.dtype == torch.int64 and len(qi) == len(ti) == min(q, m)
    assert len(set(qi.tolist())) == len(qi) and len(set(ti.tolist())) == len(ti)
    assert qi.tolist() == sorted(qi.tolist())
    c = cost_ref(cls_logits, pred, tgt_cls.numpy(), tgt, w, seed, 32)
    assert c[qi.numpy(), ti.numpy()].sum() == pytest.approx(brute_force_min(c), abs=1e-4)


def test_permuting_targets_permutes_the_assignment():
    torch.manual_seed(8)
    cls_logits, pred = torch.randn(6, 4), torch.randn(6, 8, 8) * 2
    tgt_cls, tgt = torch.randint(0, 3, (4,)), (torch.rand(4, 8, 8) > 0.5).float()
    qi, ti = hungarian_match(cls_logits, pred, tgt_cls, tgt, num_points=128, generator=gen(2))
    perm = torch.tensor([2, 0, 3, 1])
    qp, tp = hungarian_match(cls_logits, pred, tgt_cls[perm], tgt[perm], num_points=128, generator=gen(2))
    assert set(zip(qi.tolist(), ti.tolist())) == set(zip(qp.tolist(), perm[tp].tolist()))


def test_hungarian_with_no_targets_is_empty():
    qi, ti = hungarian_match(torch.randn(5, 3), torch.randn(5, 4, 4), torch.zeros(0, dtype=torch.int64),
                             torch.zeros(0, 4, 4))
    assert qi.shape == ti.shape == (0,) and qi.dtype == torch.int64


# ---------------------------------------------------------------- set criterion
def disc(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()


def test_set_criterion_learns_a_toy_prediction():
    torch.manual_seed(0)
    b, q, k = 2, 5, 3
    targets = [
        {"classes": torch.tensor([0, 2]), "masks": torch.stack([disc(32, 32, 8, 8, 6), disc(32, 32, 22, 20, 8)])},
        {"classes": torch.tensor([1]), "masks": disc(32, 32, 16, 16, 10)[None]},
    ]
    cls_p = torch.nn.Parameter(torch.zeros(b, q, k + 1))
    mask_p = torch.nn.Parameter(torch.randn(b, q, 16, 16) * 0.1)
    opt = torch.optim.Adam([cls_p, mask_p], lr=0.3)
    g = gen(0)
    history = []
    for _ in range(30):
        layers = [{"class_logits": cls_p * 0.5, "masks": mask_p * 0.5}, {"class_logits": cls_p, "masks": mask_p}]
        losses = set_criterion(layers, targets, num_points=256, generator=g)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append(losses["loss"].item())
    assert history[-1] < 0.3 * history[0]
    for i, t in enumerate(targets):  # matched queries name their target's class, the others no-object
        qi, ti = hungarian_match(cls_p[i], mask_p[i], t["classes"], t["masks"], num_points=256, generator=g)
        labels = torch.full((q,), k)
        labels[qi] = t["classes"][ti]
        assert torch.equal(cls_p[i].argmax(-1), labels)
    assert {"loss_cls", "loss_mask", "loss_dice", "loss_cls_0", "loss_mask_0", "loss_dice_0"} <= set(losses)
    w = LossWeights()
    expected = sum(w.cls * losses[f"loss_cls{s}"] + w.mask * losses[f"loss_mask{s}"] + w.dice * losses[f"loss_dice{s}"]
                   for s in ("", "_0"))
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_set_criterion_weights_the_no_object_class():
    # one target; query 0 is clearly its match, queries 1 and 2 are no-object (class K = 2)
    tgt = disc(16, 16, 8, 8, 5)
    cls_logits = torch.tensor([[[4.0, 0.0, 0.0], [0.3, -0.2, 0.1], [1.0, 0.5, -1.0]]])
    masks = torch.stack([(tgt * 20 - 10), -torch.ones(16, 16) * 5, torch.randn(16, 16)])[None]
    targets = [{"classes": torch.tensor([0]), "masks": tgt[None]}]
    lp = torch.log_softmax(cls_logits[0].double(), -1)
    ce = [-lp[0, 0], -lp[1, 2], -lp[2, 2]]
    for eos in (0.1, 1.0):
        out = set_criterion([{"class_logits": cls_logits, "masks": masks}], targets,
                            LossWeights(no_object=eos), num_points=128, generator=gen(0))
        expected = (ce[0] + eos * (ce[1] + ce[2])) / (1 + 2 * eos)
        assert out["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_set_criterion_normalises_masks_by_the_target_count():
    torch.manual_seed(1)
    masks = torch.randn(1, 4, 8, 8)
    tgt = {"classes": torch.tensor([0]), "masks": disc(16, 16, 8, 8, 5)[None]}
    one = set_criterion([{"class_logits": torch.zeros(1, 4, 3), "masks": masks}], [tgt], num_points=20_000,
                        generator=gen(0))
    two = set_criterion([{"class_logits": torch.zeros(2, 4, 3), "masks": masks.repeat(2, 1, 1, 1)}], [tgt, tgt],
                        num_points=20_000, generator=gen(0))
    assert two["loss_mask"].item() == pytest.approx(one["loss_mask"].item(), rel=0.02)
    assert two["loss_dice"].item() == pytest.approx(one["loss_dice"].item(), rel=0.02)
    # an image without targets adds nothing and does not dilute the mean (the count is of masks, not images)
    empty = {"classes": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16)}
    with_empty = set_criterion([{"class_logits": torch.zeros(2, 4, 3), "masks": masks.repeat(2, 1, 1, 1)}],
                               [tgt, empty], num_points=20_000, generator=gen(0))
    assert with_empty["loss_mask"].item() == pytest.approx(one["loss_mask"].item(), rel=0.02)
    assert with_empty["loss_dice"].item() == pytest.approx(one["loss_dice"].item(), rel=0.02)


def test_set_criterion_without_targets():
    cls_p = torch.nn.Parameter(torch.randn(2, 3, 4))
    mask_p = torch.nn.Parameter(torch.randn(2, 3, 8, 8))
    empty = {"classes": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}
    out = set_criterion([{"class_logits": cls_p, "masks": mask_p}], [empty, empty], num_points=64)
    assert out["loss_mask"].item() == 0.0 and out["loss_dice"].item() == 0.0
    assert math.isfinite(out["loss"].item())
    out["loss"].backward()
    assert mask_p.grad is not None and cls_p.grad is not None
    # all no-object: the class loss pushes towards the last class
    assert (cls_p.grad[..., -1] < 0).all()


def test_set_criterion_mixed_target_sizes_and_autocast():
    layers = [{"class_logits": torch.randn(2, 4, 3).bfloat16(), "masks": torch.randn(2, 4, 8, 8).bfloat16()}]
    targets = [{"classes": torch.tensor([1]), "masks": disc(16, 16, 8, 8, 4)[None].bool()},
               {"classes": torch.tensor([0, 1]), "masks": torch.stack([disc(20, 12, 5, 5, 3), disc(20, 12, 12, 6, 4)])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = set_criterion(layers, targets, num_points=64, generator=gen(0))
    assert all(v.dtype == torch.float32 and math.isfinite(v.item()) for v in out.values())


# ---------------------------------------------------------------- prompt losses
def test_prompt_losses_train_only_the_best_candidate():
    torch.manual_seed(0)
    targets = torch.stack([disc(16, 16, 8, 8, 5), disc(16, 16, 5, 10, 4)])
    logits = torch.randn(2, 3, 16, 16)
    best = [1, 2]
    for n, c in enumerate(best):
        logits[n, c] = targets[n] * 16 - 8  # close to the target
    logits = torch.nn.Parameter(logits)
    scores = torch.nn.Parameter(torch.full((2, 3), 0.5))
    out = prompt_losses(logits, scores, targets, LossWeights(), num_points=200, generator=gen(0))
    out["loss"].backward()
    for n in range(2):
        for c in range(3):
            has_grad = logits.grad[n, c].abs().sum().item() > 0
            assert has_grad == (c == best[n])
    # IoU target: each candidate's own mask (same resolution: no upsampling) against the target
    pred = logits.detach() > 0
    t = targets[:, None] > 0.5
    iou = (pred & t).sum((-2, -1)).float() / (pred | t).sum((-2, -1)).float()
    assert out["loss_iou"].item() == pytest.approx(((0.5 - iou) ** 2).mean().item(), rel=1e-5)
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def test_prompt_losses_upsample_for_the_iou_and_handle_edge_cases():
    logits = torch.full((1, 2, 4, 4), -5.0)
    logits[0, 0, :2] = 5.0  # the top half once upsampled (bilinear: the sign flips between rows 7 and 8)
    target = torch.zeros(1, 16, 16)
    target[0, :8] = 1
    out = prompt_losses(logits, torch.tensor([[1.0, 0.0]]), target, LossWeights(), num_points=64)
    assert out["loss_iou"].item() == pytest.approx(0.0, abs=1e-6)  # IoU 1 and 0, predicted exactly
    none = prompt_losses(logits, None, target, LossWeights(), num_points=64)
    assert none["loss_iou"].item() == 0.0
    empty = prompt_losses(torch.zeros(0, 3, 4, 4, requires_grad=True), torch.zeros(0, 3), torch.zeros(0, 16, 16),
                          LossWeights(), num_points=64)
    assert all(v.item() == 0.0 for v in empty.values())
    empty["loss"].backward()
