"""SAM finetuning against its references: MedSAM's box jitter, splits by source image with the
numbers from test, the PointPrompt / micro-sam / MedSAM presets, and their losses.

Each reference rule is re-implemented here, short and independent of pointprompt.finetune (or
taken from MONAI, the library the references call), and compared with the code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointprompt.finetune import FinetuneConfig, FrameSample, SamTrainStep, _box_prompt, _load_model, evaluate, finetune_sam
from segprompt.data.registry import load_dataset
from segprompt.data.sample import Sample, SegmentationDataset
from segprompt.errors import ConfigError
from segprompt.models import create_segmenter
from segprompt.models.resize import LongestSide

from test_finetune import tiny_ckpt  # noqa: F401 - the shared tiny SAM checkpoint fixture


# -- references, re-implemented ------------------------------------------------------------------
def medsam_reference_box(mask: np.ndarray, draw, bbox_shift: int) -> list[float]:
    """bowang-lab/MedSAM train_one_gpu.py, NpyDataset.__getitem__ (images and masks at 1024):
        x_min, x_max = min(x), max(x); y_min, y_max = min(y), max(y); H, W = gt2D.shape
        x_min = max(0, x_min - random.randint(0, bbox_shift)); x_max = min(W, x_max + randint(...))
        y_min = max(0, y_min - randint(...));                  y_max = min(H, y_max + randint(...))
    ``draw(n)`` stands for random.randint(0, n) (inclusive)."""
    ys, xs = np.nonzero(mask)
    H, W = mask.shape
    x_min, x_max, y_min, y_max = xs.min(), xs.max(), ys.min(), ys.max()
    x_min = max(0, x_min - draw(bbox_shift))
    x_max = min(W, x_max + draw(bbox_shift))
    y_min = max(0, y_min - draw(bbox_shift))
    y_max = min(H, y_max + draw(bbox_shift))
    return [x_min, y_min, x_max, y_max]


def old_symmetric_box(mask: np.ndarray, rng: np.random.Generator, jitter: float, scale: float) -> np.ndarray:
    """The rule before MedSAM's (kept as box_jitter_mode="symmetric")."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    j = rng.uniform(-jitter, jitter, 4) * scale
    box = np.array([xs.min() + j[0], ys.min() + j[1], xs.max() + 1 + j[2], ys.max() + 1 + j[3]])
    box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
    box[2], box[3] = max(box[2], box[0] + 1), max(box[3], box[1] + 1)
    return box


def microsam_reference_box(mask: np.ndarray, rng: np.random.Generator, f: float) -> list[int]:
    """micro-sam training/util.py ConvertToSamInputs._distort_boxes on a regionprops box (y0, x0, y1, x1)."""
    ys, xs = np.nonzero(mask)
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    ly, lx = y1 - y0, x1 - x0
    y0 = int(round(max(0, y0 - rng.uniform(0, f) * ly)))
    y1 = int(round(min(mask.shape[0], y1 + rng.uniform(0, f) * ly)))
    x0 = int(round(max(0, x0 - rng.uniform(0, f) * lx)))
    x1 = int(round(min(mask.shape[1], x1 + rng.uniform(0, f) * lx)))
    return [x0, y0, x1, y1]


def _frame(mask: np.ndarray, target: int) -> FrameSample:
    """A training sample whose model-frame mask is ``mask``, for a model of input side ``target``."""
    image = np.zeros((*mask.shape, 3), np.uint8)
    return FrameSample("x", 0, image, mask, np.zeros((4, 4), np.float32), LongestSide(target, mask.shape), Sample("x", image, mask))


@st.composite
def masks(draw):
    side = draw(st.sampled_from([256, 1024]))
    h = draw(st.integers(8, 60)) if side == 256 else draw(st.integers(8, 120))
    w = draw(st.integers(8, 60)) if side == 256 else draw(st.integers(8, 120))
    y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    y1, x1 = draw(st.integers(y0, h - 1)), draw(st.integers(x0, w - 1))
    mask = np.zeros((h, w), bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    extra = draw(st.lists(st.tuples(st.integers(0, h - 1), st.integers(0, w - 1)), max_size=5))
    for r, c in extra:
        mask[r, c] = True
    return mask, side


# -- item 12: box jitter only enlarges the box, as MedSAM's does ----------------------------------
def test_box_jitter_default_is_medsams_rule():
    assert FinetuneConfig().box_jitter_mode == "medsam" and FinetuneConfig().box_jitter == 20.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks(), st.integers(0, 40), st.integers(0, 2**31 - 1))
def test_jittered_box_contains_the_truth_and_stays_in_the_image(mask_side, shift, seed):
    mask, side = mask_side
    fs = _frame(mask, side)
    box = _box_prompt(fs, np.random.default_rng(seed), shift).box  # the default mode
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    assert box[0] <= xs.min() and box[1] <= ys.min() and box[2] >= xs.max() and box[3] >= ys.max()
    assert 0 <= box[0] and 0 <= box[1] and box[2] <= w and box[3] <= h
    assert np.all(box[:2] >= [xs.min(), ys.min()] - np.float64(shift) * side / 1024)  # moved by at most the shift
    assert np.all(box[2:] <= [xs.max(), ys.max()] + np.float64(shift) * side / 1024)


@settings(max_examples=100, deadline=None)
@given(masks(), st.integers(0, 40), st.integers(0, 2**31 - 1))
def test_medsam_box_matches_a_reimplementation_with_the_same_draws(mask_side, shift, seed):
    mask, side = mask_side
    fs = _frame(mask, side)
    got = _box_prompt(fs, np.random.default_rng(seed), shift, "medsam").box
    ref_rng = np.random.default_rng(seed)
    scale = side / 1024  # MedSAM's shift is in pixels of its 1024 x 1024 frame; sam-tiny's frame is 256

    def draw(n):  # random.randint(0, n), in this frame's pixels
        return scale * int(ref_rng.integers(0, n + 1))

    np.testing.assert_allclose(got, medsam_reference_box(mask, draw, shift))


@settings(max_examples=60, deadline=None)
@given(masks(), st.floats(0, 0.5), st.integers(0, 2**31 - 1))
def test_other_box_modes_match_their_rules(mask_side, factor, seed):
    mask, side = mask_side
    fs = _frame(mask, side)
    got = _box_prompt(fs, np.random.default_rng(seed), factor, "microsam").box
    np.testing.assert_array_equal(got, microsam_reference_box(mask, np.random.default_rng(seed), factor))
    # the previous behaviour stays available by name, unchanged (jitter in original-image pixels)
    old = old_symmetric_box(mask, np.random.default_rng(seed), 20.0, fs.transform.input_size[1] / fs.transform.original_size[1])
    np.testing.assert_array_equal(_box_prompt(fs, np.random.default_rng(seed), 20.0, "symmetric").box, old)


def test_box_jitter_cli_options_and_checks():

    assert FinetuneConfig(box_jitter_mode="symmetric", box_jitter=7.5).box_jitter == 7.5
    with pytest.raises(ConfigError, match="whole pixels"):
        FinetuneConfig(box_jitter=2.5)  # MedSAM's bbox_shift is an integer
    with pytest.raises(ConfigError, match="--box-jitter-mode"):
        FinetuneConfig(box_jitter_mode="shrink")


# -- item 13: splits by source image; reported numbers from test -------------------------------------
class MultiStructure(SegmentationDataset):
    """Synthetic images with two structures each (the lesion's left and right halves), as a
    COCO-style reader yields them: one sample per structure, ``meta["image_id"]`` the image."""

    name = "multi-structure"

    def __init__(self, n_images: int = 8, size: int = 64) -> None:
        super().__init__()
        for s in load_dataset("synthetic-lesions", n=n_images, seed=0, size=size):
            cols = np.nonzero(s.mask)[1]
            mid = int(np.median(cols))
            grid = np.arange(s.mask.shape[1])[None, :]
            for k, part in enumerate((s.mask & (grid <= mid), s.mask & (grid > mid))):
                if part.any():
                    self.records.append({"id": f"{s.id}_s{k}", "image_id": s.id, "image": s.image, "mask": part})

    def load(self, r) -> Sample:
        return Sample(id=r["id"], image=r["image"], mask=r["mask"], meta={"image_id": r["image_id"]})


def old_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The split of the code before test splits (per sample, validation only)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=3, max_size=30), st.floats(0.05, 0.5), st.floats(0.0, 0.5), st.integers(0, 1000))
def test_split_never_puts_one_image_in_two_splits(structures, val_fraction, test_fraction, seed):
    from pointprompt.finetune import split_by_image

    keys = [f"img{i}" for i, k in enumerate(structures) for _ in range(k)]
    train, val, test = split_by_image(keys, val_fraction, seed, test_fraction)
    assert sorted(train + val + test) == list(range(len(keys)))
    images = [{keys[i] for i in part} for part in (train, val, test)]
    assert not (images[0] & images[1]) and not (images[0] & images[2]) and not (images[1] & images[2])
    assert images[0] and images[1] and (bool(images[2]) == (test_fraction > 0))
    assert (train, val, test) == split_by_image(keys, val_fraction, seed, test_fraction)  # deterministic
    if test_fraction == 0 and len(set(keys)) == len(keys):  # one structure per image, no test: the old split
        assert (train, val) == old_split(len(keys), val_fraction, seed)


def test_load_split_groups_structures_by_image_and_holds_out_test():
    from pointprompt.finetune import load_split

    ds = MultiStructure(n_images=10)
    cfg = FinetuneConfig(dataset="synthetic-lesions", test_fraction=0.2, val_fraction=0.25)
    samples, train, val, test = load_split(cfg, ds)
    image_of = [s.meta["image_id"] for s in samples]
    parts = [{image_of[i] for i in idx} for idx in (train, val, test)]
    assert len(samples) == len(ds) > 10  # several structures per image
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert [len(p) for p in parts] == [6, 2, 2]  # 10 images: 2 for test, then round(0.25 x 8) = 2 for validation
    # a sample without meta["image_id"] is its own source image
    plain = [Sample(id=f"p{i}", image=np.zeros((4, 4, 3), np.uint8)) for i in range(5)]
    from pointprompt.finetune import image_key

    assert [image_key(s) for s in plain] == [f"p{i}" for i in range(5)]


def test_summary_numbers_come_from_the_test_split(tiny_ckpt, tmp_path):
    ds = MultiStructure(n_images=6, size=48)
    cfg = FinetuneConfig(dataset="synthetic-lesions", model=None, checkpoint=tiny_ckpt, train=["mask_decoder"], prompts="random",
                         epochs=2, batch_size=8, lr=1e-3, early_stop=0, test_fraction=0.25, val_fraction=0.25)
    result = finetune_sam(cfg, tmp_path / "ft", dataset=ds, progress=False)
    from pointprompt.finetune import load_split

    samples, train, val, test = load_split(cfg, ds)
    assert (result["train_images"], result["val_images"], result["test_images"]) == (len(train), len(val), len(test))
    rows = [json.loads(line) for line in (tmp_path / "ft" / "results.jsonl").read_text().splitlines()]
    tests = {r["model"]: r for r in rows if r["kind"] == "test"}
    assert result["test"]["best"] == {k: tests["best"][k] for k in ("iou", "dice", "n")} and result["test"]["best"]["n"] == len(test)
    # the reported test numbers are those of the checkpoint chosen on validation, on the test images
    epochs = [r for r in rows if r["kind"] == "epoch" and r["epoch"] > 0]
    chosen = max(epochs, key=lambda r: r["val_dice"])  # first best on ties, as the loop's monitor
    assert result["best_epoch"] == chosen["epoch"] == tests["best"]["epoch"]
    best = create_segmenter("sam", checkpoint=str(tmp_path / "ft" / "sam_best.pth"))
    again = evaluate(best, [samples[i] for i in test], cfg)
    assert again == result["test"]["best"]
    before = evaluate(_load_model(cfg), [samples[i] for i in test], cfg)
    assert before == result["test"]["before"]
    report = (tmp_path / "ft" / "report.md").read_text()
    assert f"{result['test']['best']['iou']:.4f}" in report and "split by source image" in report


def test_matrix_cells_are_test_numbers(tiny_ckpt, tmp_path):
    from pointprompt.finetune import load_split
    from pointprompt.finetune_matrix import run_matrix

    base = dict(dataset="synthetic-lesions", dataset_kwargs={"n": 8, "seed": 0, "size": 48}, model=None, checkpoint=tiny_ckpt, epochs=1, batch_size=8, lr=1e-3)
    run_matrix(["random", "centre"], tmp_path / "m", base=base, n_positive=2, n_negative=1, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "m" / "results.jsonl").read_text().splitlines()]
    cfg = FinetuneConfig(**base, train=["prompt_encoder"], prompts="centre", n_positive=2, n_negative=1, eval_strategy="centre", eval_positive=2, eval_negative=1)
    samples, _, val, test = load_split(cfg)
    assert all(r["split"] == "test" and r["n"] == len(test) == 2 for r in rows)
    seg = create_segmenter("sam", checkpoint=str(tmp_path / "m" / "train_random" / "sam_best.pth"))
    cell = next(r for r in rows if (r["train"], r["test"]) == ("random", "centre"))
    assert evaluate(seg, [samples[i] for i in test], cfg)["iou"] == cell["iou"]
    assert "2 held-out test images (split by source image" in (tmp_path / "m" / "report.md").read_text()


# -- item 14: the presets --------------------------------------------------------------------------
REFERENCE = {
    # olivesgatech/PointPrompt "finetuning SAM/train.py": Adam(model.prompt_encoder.parameters(), lr=1e-3,
    # weight_decay=0); image_encoder and mask_decoder requires_grad False; multimask_output=False;
    # monai DiceCELoss(sigmoid=True, squared_pred=True); batch_size=1; num_epochs=50; break when
    # nimprove > 4; model saved when the validation loss improves; --train_ratio 0.8; one precomputed
    # prompt set per image (<i>_green.npy / <i>_red.npy).
    "pointprompt-study": dict(train=["prompt_encoder"], train_multimask="single", loss="dice+bce", dice="squared", iou_weight=0.0, lr=1e-3,
                              weight_decay=0.0, batch_size=1, epochs=50, early_stop=5, val_fraction=0.2, select_on="val_loss",
                              resample_prompts=False, schedule="constant", grad_clip=0.0, eval_multimask="single"),
    # micro-sam training/training.py train_sam(lr=1e-5, n_sub_iteration=8, mask_prob=0.5, early_stopping=10,
    # n_epochs=100, freeze=None, optimizer_class=AdamW, ReduceLROnPlateau(factor=0.9, patience=3),
    # box_distortion_factor=0.025); sam_trainer.py: Dice (min over multimask) + MSE of the IoU head.
    "microsam": dict(train=["all"], prompts="iterative", iterations=8, mask_feedback=0.5, loss="dice", dice="squared", iou_weight=1.0, lr=1e-5,
                     weight_decay=0.01, schedule="plateau", plateau_factor=0.9, plateau_patience=3, early_stop=10, epochs=100,
                     box_jitter_mode="microsam", box_jitter=0.025, grad_clip=0.0),
    # bowang-lab/MedSAM train_one_gpu.py: AdamW(image_encoder + mask_decoder params, lr=1e-4, weight_decay=0.01),
    # prompt encoder frozen, bbox_shift=20, multimask_output=False, DiceLoss(squared_pred) + BCEWithLogitsLoss,
    # batch_size=2, num_epochs=1000.
    "medsam": dict(train=["image_encoder", "mask_decoder"], prompts="box-jitter", box_jitter_mode="medsam", box_jitter=20.0, lr=1e-4,
                   weight_decay=0.01, loss="dice+bce", dice="squared", iou_weight=0.0, batch_size=2, epochs=1000, early_stop=0,
                   train_multimask="single", schedule="constant", grad_clip=0.0),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_presets_resolve_to_the_reference_values(name, tiny_ckpt):
    from pointprompt.finetune import _optimizer_params, _prepare_model, fit_config

    cfg = FinetuneConfig.from_preset(name, model=None, checkpoint=tiny_ckpt)
    assert cfg.preset == name
    assert {k: getattr(cfg, k) for k in REFERENCE[name]} == REFERENCE[name]
    fc = fit_config(cfg)
    assert fc.grad_clip is None and fc.patience == cfg.early_stop and fc.lr == cfg.lr
    assert (fc.monitor, fc.monitor_mode) == (("val_loss", "min") if name == "pointprompt-study" else ("val_dice", "max"))
    # weight decay on every trained tensor (torch's AdamW(params) as the references); 0 = Adam
    seg = _load_model(cfg)
    _prepare_model(seg, cfg)
    groups = _optimizer_params(seg, cfg)
    trained = {id(p) for p in seg.model.parameters() if p.requires_grad}
    assert len(groups) == 1 and groups[0]["weight_decay"] == cfg.weight_decay and {id(p) for p in groups[0]["params"]} == trained
    frozen = {n.split(".")[0] for n, p in seg.model.named_parameters() if not p.requires_grad}
    assert frozen == {"pointprompt-study": {"image_encoder", "mask_decoder"}, "microsam": set(), "medsam": {"prompt_encoder"}}[name]


def test_study_budget_and_overrides():
    cfg = FinetuneConfig.from_preset("pointprompt-study", dataset="kvasir", prompts="kmedoids")
    assert (cfg.n_positive, cfg.n_negative) == (14, 2)  # point_sampling/main.py point_nums['Polyp']
    assert (cfg.eval_strategy, cfg.eval_positive, cfg.eval_negative) == ("kmedoids", 14, 2)  # tested with its own strategy
    cfg = FinetuneConfig.from_preset("pointprompt-study", dataset="synthetic-lesions")
    assert (cfg.n_positive, cfg.n_negative) == (1, 1)  # no study budget: the study's 1 + 1
    cfg = FinetuneConfig.from_preset("pointprompt-study", dataset="kvasir", n_positive=3, lr=5e-4)
    assert (cfg.n_positive, cfg.n_negative, cfg.budget, cfg.lr) == (3, 1, None, 5e-4)  # explicit values win


def test_cli_preset_with_explicit_overrides_records_resolved_config(tmp_path, capsys):
    import yaml

    from segprompt.cli import main

    out = tmp_path / "ft"
    args = ["finetune", "sam", "--preset", "pointprompt-study", "--model", "sam-tiny", "--dataset", "synthetic-lesions", "--limit", "6",
            "--epochs", "1", "--lr", "5e-3", "--prompts", "centre", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "test IoU" in printed and "chosen on val_loss" in printed
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["preset"], cfg["epochs"], cfg["lr"], cfg["prompts"]) == ("pointprompt-study", 1, 5e-3, "centre")  # explicit options win
    assert (cfg["batch_size"], cfg["train"], cfg["select_on"], cfg["iou_weight"]) == (1, ["prompt_encoder"], "val_loss", 0.0)  # not the CLI defaults
    assert (cfg["n_positive"], cfg["n_negative"], cfg["eval_strategy"]) == (1, 1, "centre")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["val_loss"] > 0 for r in rows if r["kind"] == "epoch")
    assert main(["finetune", "sam", "--preset", "pointprompt", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset 'pointprompt'; known: pointprompt-study, microsam, medsam" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["microsam", "medsam"])
def test_each_preset_trains_one_tiny_epoch(name, tiny_ckpt, tmp_path):
    cfg = FinetuneConfig.from_preset(name, dataset="synthetic-lesions", dataset_kwargs={"n": 6, "seed": 0, "size": 64}, model=None,
                                     checkpoint=tiny_ckpt, epochs=1, iterations=3)
    before = {k: v.clone() for k, v in _load_model(cfg).model.state_dict().items()}
    result = finetune_sam(cfg, tmp_path / name, progress=False)
    assert result["epochs_run"] == 1 and result["test"]["best"]["n"] == 1
    after = create_segmenter("sam", checkpoint=str(tmp_path / name / "sam_last.pth")).model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == ({"image_encoder", "prompt_encoder", "mask_decoder"} if name == "microsam" else {"image_encoder", "mask_decoder"})


# -- the losses and the iterative scheme -------------------------------------------------------------
def test_pointprompt_and_medsam_losses_match_monai():
    monai = pytest.importorskip("monai")
    from pointprompt.finetune import training_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 32, 32, generator=g) * 3
    target = (torch.rand(3, 32, 32, generator=g) > 0.6).float()
    iou = torch.rand(3, 1, generator=g)
    ours, _ = training_loss(logits, iou, target, loss="dice+bce", dice="squared", iou_weight=0.0)
    # PointPrompt: DiceCELoss(sigmoid=True, squared_pred=True, reduction='mean') (MONAI >= 1.3: BCE for one channel)
    pp = monai.losses.DiceCELoss(sigmoid=True, squared_pred=True, reduction="mean")(logits, target[:, None])
    # MedSAM: DiceLoss(sigmoid=True, squared_pred=True, reduction='mean') + BCEWithLogitsLoss(reduction='mean')
    med = monai.losses.DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")(logits, target[:, None]) + torch.nn.BCEWithLogitsLoss()(logits, target[:, None])
    assert torch.allclose(ours, pp, atol=1e-6) and torch.allclose(ours, med, atol=1e-6)


def test_microsam_loss_is_min_dice_over_outputs_plus_iou_mse():
    from pointprompt.finetune import training_loss

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 24, 24, generator=g) * 2
    target = (torch.rand(2, 24, 24, generator=g) > 0.5).float()
    iou_pred = torch.rand(2, 3, generator=g)
    ours, _ = training_loss(logits, iou_pred, target, loss="dice", dice="squared", iou_weight=1.0)
    # micro-sam sam_trainer.py _compute_loss with torch_em's DiceLoss (1 - 2 I / clamp(P^2 + T^2, 1e-7))
    p = torch.sigmoid(logits)
    t = target[:, None].expand_as(p)
    dice = 1 - 2 * (p * t).sum((-2, -1)) / ((p * p).sum((-2, -1)) + (t * t).sum((-2, -1))).clamp(min=1e-7)
    mask_loss = dice.min(dim=1).values.mean()
    pred = p > 0.5
    true_iou = (pred & t.bool()).sum((-2, -1)) / ((pred | t.bool()).sum((-2, -1)) + 1e-7)
    ref = mask_loss + torch.nn.functional.mse_loss(iou_pred, true_iou)
    assert torch.allclose(ours, ref, atol=1e-4)


def _iterative_step(ckpt, **cfg):
    """(a SamTrainStep of the tiny checkpoint in the iterative mode with ``cfg``, one 64-px lesion frame)."""
    from pointprompt.finetune import to_frame

    config = FinetuneConfig(model=None, checkpoint=ckpt, prompts="iterative", **cfg)
    seg = _load_model(config)
    s = load_dataset("synthetic-lesions", n=1, seed=0, size=64)[0]
    return SamTrainStep(seg.model, config, None), to_frame(s, 0, seg.arch.img_size, seg.arch.lowres_size)


def test_iterative_mode_counts_forward_passes_as_microsam(tiny_ckpt, monkeypatch):
    """micro-sam's _compute_iterative_loss: ``for i in range(num_subiter)`` forward passes, the
    first included; multimask only on the first; no mask prompt on the first; the loss is the mean."""
    step, fs = _iterative_step(tiny_ckpt, iterations=8)
    calls, original = [], SamTrainStep._decode

    def spy(self, emb, p, mask_input):
        calls.append((p.multimask, mask_input is not None, len(p.coords)))
        return original(self, emb, p, mask_input)

    losses = iter(range(100))
    monkeypatch.setattr(SamTrainStep, "_decode", spy)
    monkeypatch.setattr(SamTrainStep, "_loss", lambda self, logits, iou, target: (logits.sum() * 0 + float(next(losses)), {"mask": 0.0}))
    for key in range(6):  # both starts (point and box) occur
        calls.clear()
        losses = iter(range(100))
        loss, _ = step([fs], key)
        assert len(calls) == 8
        assert not calls[0][1] and not any(c[0] for c in calls[1:])
        assert float(loss.detach()) == pytest.approx(np.mean(range(8)))
        assert [c[2] for c in calls] == [calls[0][2] + 2 * i for i in range(8)]  # one positive + one negative per correction


def test_prompts_drawn_once_per_image_for_the_study(tiny_ckpt):
    cfg = FinetuneConfig.from_preset("pointprompt-study", model=None, checkpoint=tiny_ckpt, prompts="random")
    seg = _load_model(cfg)
    step = SamTrainStep(seg.model, cfg, None)
    fs = FrameSample("a", 3, None, None, None, None, None)
    assert step.sample_rng(0, fs).random() == step.sample_rng(7, fs).random()  # the same prompts every epoch
    again = SamTrainStep(seg.model, FinetuneConfig(model=None, checkpoint=tiny_ckpt), None)
    assert again.sample_rng(0, fs).random() != again.sample_rng(7, fs).random()  # default: redrawn per epoch
    from pointprompt.finetune import _strategy_prompt

    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    frame = _frame(mask, 256)
    assert not _strategy_prompt(frame, np.random.default_rng(0), "random", 1, 0, cfg.train_multimask).multimask  # single-mask output
    assert _strategy_prompt(frame, np.random.default_rng(0), "random", 1, 0).multimask


def test_refine_passes_decode_the_same_prompts_with_their_own_logits(tiny_ckpt, monkeypatch):
    """SAM's iterations without new points (``refine_passes``): each lands at a random place after
    the first pass, keeps the previous pass's prompts, takes the single-mask head and is fed the
    previous pass's chosen logits as its mask prompt; every pass is in the mean loss."""
    step, fs = _iterative_step(tiny_ckpt, iterations=3, refine_passes=2, mask_feedback=0.0)
    calls, original = [], SamTrainStep._decode

    def spy(self, emb, p, mask_input):
        logits, iou = original(self, emb, p, mask_input)
        calls.append((p.multimask, None if mask_input is None else mask_input.clone(), p.coords.copy(), logits.detach(), iou.detach()))
        return logits, iou

    monkeypatch.setattr(SamTrainStep, "_decode", spy)
    places = set()
    for key in range(12):
        calls.clear()
        step([fs], key)
        assert len(calls) == 5
        refine = [i for i in range(1, 5) if len(calls[i][2]) == len(calls[i - 1][2])]
        assert len(refine) == 2
        places.update(refine)
        for i in range(1, 5):
            if i in refine:
                prev_logits, prev_iou = calls[i - 1][3], calls[i - 1][4]
                best = int(prev_iou[0].argmax()) if prev_logits.shape[1] > 1 else 0
                assert not calls[i][0] and (calls[i][2] == calls[i - 1][2]).all()
                assert torch.equal(calls[i][1], prev_logits[:, best : best + 1])
            else:  # a correction: two clicks more, no mask (mask_feedback=0)
                assert len(calls[i][2]) == len(calls[i - 1][2]) + 2 and calls[i][1] is None
    assert places == {1, 2, 3, 4}  # after the first pass, anywhere
    with pytest.raises(ConfigError, match="refine_passes"):
        FinetuneConfig(model=None, checkpoint=tiny_ckpt, refine_passes=-1)
