"""Training the universal decoder: data from every dataset kind, simulated prompts, the loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segprompt.data.sample import Sample
from segprompt.errors import DataError
from segprompt.universal.train_data import PROMPT_MIX, TrainScene, correction_click, scene_from_sample, simulate_prompts

TINY_MODEL = {
    "backbone": "sam-tiny", "backbone_kwargs": {"out_channels": 32}, "hidden_dim": 32, "mask_dim": 32, "embed_dim": 16,
    "num_queries": 6, "dec_layers": 3, "num_heads": 4, "dim_feedforward": 64, "tokens_per_prompt": 8,
}


def _scene(b: int = 0) -> TrainScene:
    masks = np.zeros((3, 48, 48), bool)
    masks[0, 4:20, 4:20] = True
    masks[1, 25:45, 5:25] = True
    masks[2, 10:30, 30:46] = True
    img = np.full((48, 48, 3), 40 + b, np.uint8)
    return TrainScene(f"s{b}", img, masks, np.array([0, 1, 0]), ("disc", "star"))


def test_every_dataset_kind_becomes_a_scene():
    inst = Sample("a", np.zeros((8, 8, 3), np.uint8), meta={"instances": {"masks": np.ones((1, 8, 8), bool), "classes": np.array([2])}}, class_names=("background", "x", "y", "z"))
    s = scene_from_sample(inst)
    assert s.class_names == ("x", "y", "z") and s.classes.tolist() == [2]
    binary = Sample("b", np.zeros((8, 8, 3), np.uint8), mask=np.eye(8, dtype=bool), texts=("polyp",))
    s = scene_from_sample(binary)
    assert s.class_names == ("polyp",) and s.masks.shape == (1, 8, 8) and s.masks[0].sum() == 8
    labels = np.zeros((8, 8), np.int64)
    labels[:4] = 1
    labels[4:, :4] = 2
    labels[7, 7] = 255  # ignore
    lm = Sample("c", np.zeros((8, 8, 3), np.uint8), mask=labels, class_names=("sky", "road", "car"))
    s = scene_from_sample(lm, min_area=1)
    assert s.classes.tolist() == [0, 1, 2] and s.masks.sum() == 63 and not s.masks[:, 7, 7].any()
    with_bg = Sample("e", np.zeros((8, 8, 3), np.uint8), mask=labels, class_names=("background", "road", "car"))
    assert scene_from_sample(with_bg, min_area=1).classes.tolist() == [1, 2]  # background is no class to prompt
    with pytest.raises(DataError, match="text"):
        scene_from_sample(Sample("d", np.zeros((8, 8, 3), np.uint8), mask=np.eye(8, dtype=bool)))


def test_simulated_prompts_target_their_instance_or_their_class():
    rng = np.random.default_rng(0)
    scenes = [_scene(0), _scene(1)]
    sims = simulate_prompts(scenes, 60, rng)
    assert len(sims) == 120
    seen = set()
    for s in sims:
        sc = scenes[s.image]
        kinds = s.prompts.kinds
        seen |= kinds
        if kinds & {"text", "reference"}:
            np.testing.assert_array_equal(s.target, sc.class_region(s.cls))
        else:
            assert any((s.target == m).all() for m in sc.masks[sc.classes == s.cls])
        if s.prompts.points is not None:
            x, y = s.prompts.points.coords[0]
            assert s.target[int(y), int(x)] and s.prompts.points.labels[0] == 1  # the first click is inside
        if "reference" in kinds:
            assert s.reference_image == 1 - s.image  # taken from the other image
            ref = s.prompts.reference
            assert ref.image is scenes[s.reference_image].image
        if s.prompts.text is not None:
            assert s.prompts.text.text == sc.class_names[s.cls]
    assert seen == {"points", "box", "scribble", "mask", "text", "reference"}
    assert set(PROMPT_MIX) >= {"point", "box", "text", "reference"}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_the_correction_click_lies_in_the_larger_error_with_its_sign(seed):
    rng = np.random.default_rng(seed)
    target = rng.random((24, 24)) < 0.3
    pred = rng.random((24, 24)) < 0.3
    out = correction_click(pred, target)
    if (pred == target).all():
        assert out is None
        return
    (x, y), label = out
    r, c = int(y), int(x)
    assert pred[r, c] != target[r, c]
    assert label == int(target[r, c])
    assert correction_click(target, target) is None


def _cfg(tmp_path, **kw):  # noqa: ANN001, ANN003
    from segprompt.universal.train import UniversalTrainConfig

    base = dict(
        model=dict(TINY_MODEL), dataset="synthetic-objects", dataset_kwargs={"n": 16, "seed": 0, "size": 128}, val_kwargs={"n": 4, "seed": 9, "size": 128},
        epochs=2, batch_size=4, lr=1e-3, warmup_steps=0, rows_per_image=2, progress=False, checkpoint_every=1, num_points=256,
    )
    base.update(kw)
    return UniversalTrainConfig(**base)


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from segprompt.universal.run import train_universal

    torch.manual_seed(0)
    straight = train_universal(_cfg(tmp_path, epochs=1), tmp_path / "a")
    torch.manual_seed(0)
    stopped = train_universal(_cfg(tmp_path, epochs=1, max_steps=2), tmp_path / "b")
    assert stopped["interrupted"] and stopped["stopped_at_step"] == 2
    resumed = train_universal(_cfg(tmp_path, epochs=1), tmp_path / "b")
    assert resumed["global_step"] == straight["global_step"] == 4
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    wa, wb = load_file(str(tmp_path / "a" / "universal.safetensors")), load_file(str(tmp_path / "b" / "universal.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = [json.loads(x) for x in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    from segprompt.universal.checkpoint import load_universal

    from_run = load_universal(tmp_path / "b" / "checkpoints" / "best.pt").state_dict()  # a run's best.pt loads too
    assert all(torch.equal(from_run[k].float(), wb[k].float()) for k in wb)


def test_the_command_line_trains_stops_and_resumes(tmp_path):
    import yaml
    from click.testing import CliRunner

    from segprompt.cli import cli

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": TINY_MODEL, "dataset_kwargs": {"n": 8, "size": 128}, "val_kwargs": {"n": 2, "seed": 9, "size": 128}, "num_points": 256, "rows_per_image": 2}))
    args = ["train", "universal", "--config", str(tmp_path / "c.yaml"), "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path / "run")]
    first = CliRunner().invoke(cli, args + ["--max-steps", "1"])
    assert first.exit_code == 0, first.output
    assert "stopped after 1 optimizer steps" in first.output
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "weights:" in second.output and (tmp_path / "run" / "universal.safetensors").is_file()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["hidden_dim"] == 32 and saved["batch_size"] == 4
    from segprompt.cli import main
    from segprompt.errors import ConfigError

    bad = CliRunner().invoke(cli, ["train", "universal", "--config", str(tmp_path / "c.yaml"), "--epochs", "2", "--batch-size", "4", "--out", str(tmp_path / "run")])
    assert isinstance(bad.exception, ConfigError) and "differs in: epochs" in str(bad.exception)
    assert main(["train", "universal", "--config", str(tmp_path / "c.yaml"), "--epochs", "2", "--batch-size", "4", "--out", str(tmp_path / "run")]) == 2


def test_training_learns_clicks_and_words(tmp_path):
    """A learning test: on 48 synthetic scenes (30 steps) the loss falls and the held-out click
    IoU and text IoU rise well above the untrained model's."""
    from segprompt.universal.run import train_universal

    torch.manual_seed(0)
    cfg = _cfg(tmp_path, dataset_kwargs={"n": 48, "seed": 0, "size": 128}, val_kwargs={"n": 6, "seed": 9, "size": 128}, epochs=5, batch_size=8, lr=2e-3, rows_per_image=3, checkpoint_every=None)
    summary = train_universal(cfg, tmp_path / "learn")
    rows = [json.loads(x) for x in (tmp_path / "learn" / "results.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if r["epoch"] > 0]
    assert losses[-1] < 0.8 * losses[0]
    before, best = summary["before"], summary["best"]
    # measured (30 steps, this CPU): click 0.09 -> 0.23-0.27, text 0.09 -> 0.2
    assert best["val_click_iou"] > before["val_click_iou"] + 0.1, (before, best)
    assert best["val_text_iou"] > before["val_text_iou"] + 0.05, (before, best)


def test_several_correction_clicks_go_to_the_largest_errors_first():
    from segprompt.universal.train_data import correction_clicks

    target = np.zeros((40, 40), bool)
    target[5:25, 5:25] = True
    pred = target.copy()
    pred[5:25, 5:10] = False  # missed strip, 100 px
    pred[30:36, 30:36] = True  # extra blob, 36 px
    clicks = correction_clicks(pred, target, 4)
    assert len(clicks) == 2  # two error regions, then nothing left to correct
    (x0, y0), l0 = clicks[0]
    (x1, y1), l1 = clicks[1]
    assert l0 == 1 and 5 <= x0 < 10 and 5 <= y0 < 25
    assert l1 == 0 and 30 <= x1 < 36 and 30 <= y1 < 36


def test_grown_parts_start_as_the_init_model_and_then_learn(tmp_path):
    """``grow: {detail_dim, prompt_to_pixel}`` adds the stride-4 stem and the pixel-prompt
    attention to a trained model: before the first step the grown model gives the init model's
    features exactly and its prompted logits up to rounding (both parts start at zero); the run then trains
    them, resumes, and the exported file reloads with them."""
    from segprompt.universal.checkpoint import load_universal
    from segprompt.errors import ConfigError
    from segprompt.prompts import Points, PromptSet, Text
    from segprompt.universal.prompting import model_input, prompt_tensors
    from segprompt.universal.run import train_universal
    from segprompt.universal.train import build_model

    torch.manual_seed(0)
    train_universal(_cfg(tmp_path, epochs=1), tmp_path / "base")
    init = str(tmp_path / "base" / "universal.safetensors")
    base = load_universal(init)
    grow = {"detail_dim": 16, "prompt_to_pixel": True}
    grown = build_model(_cfg(tmp_path, model={}, init=init, grow=grow), words=())
    assert base.detail is None and grown.detail is not None and grown.cfg.detail_dim == 16
    assert base.decoder.pixel_prompt is None and grown.decoder.pixel_prompt is not None
    image = np.random.default_rng(0).integers(0, 255, (100, 128, 3), dtype=np.uint8)
    pixels, tfs = model_input([image], base.img_size)
    sets = [PromptSet(points=Points([[30.0, 40.0], [60.0, 50.0]], [1, 0])), PromptSet(text=Text(base.cfg.words[0]))]
    pt = prompt_tensors(sets, [tfs[0]] * 2, [0, 0], base.cfg.tokens_per_prompt, 64)
    with torch.no_grad():
        a = base.encode_images(pixels, [tfs[0].input_size])
        b = grown.eval().encode_images(pixels, [tfs[0].input_size])
        assert torch.equal(a.mask_features, b.mask_features)
        torch.testing.assert_close(grown.decode(b, pt)[-1].masks, base.decode(a, pt)[-1].masks, rtol=0, atol=1e-5)  # per-row bmm: rounding only
        grown.detail.proj.weight.fill_(0.1)  # a non-zero stem changes the mask features
        c = grown.encode_images(pixels, [tfs[0].input_size])
        assert not torch.allclose(a.mask_features, c.mask_features)

    torch.manual_seed(0)
    cfg = _cfg(tmp_path, model={}, init=init, grow=grow, epochs=1)
    stopped = train_universal(_cfg(tmp_path, model={}, init=init, grow=grow, epochs=1, max_steps=2), tmp_path / "grown")
    assert stopped["stopped_at_step"] == 2
    train_universal(cfg, tmp_path / "grown")
    assert load_universal(tmp_path / "grown" / "universal.safetensors").cfg.detail_dim == 16  # the best epoch may be epoch 0
    last = torch.load(tmp_path / "grown" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert float(last["detail.proj.weight"].abs().sum()) > 0  # the stem trained
    assert float(last["decoder.pixel_prompt.out.weight"].abs().sum()) > 0  # and the pixel-prompt attention
    with pytest.raises(ConfigError, match="give init"):
        _cfg(tmp_path, grow={"detail_dim": 16})
    with pytest.raises(ConfigError, match="cannot be grown"):
        _cfg(tmp_path, init=init, grow={"hidden_dim": 64})
    boxed = build_model(_cfg(tmp_path, model={}, init=str(tmp_path / "grown" / "universal.safetensors"), grow={"box_map": True}), words=())
    assert boxed.decoder.pixel_prompt.box_map is not None  # a later growth on a grown model
    with pytest.raises(ConfigError, match="already has detail_dim"):
        build_model(_cfg(tmp_path, model={}, init=str(tmp_path / "grown" / "universal.safetensors"), grow={"detail_dim": 16}), words=())


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_sibling_negatives_lie_inside_a_twin_of_the_target_never_inside_it(seed):
    """Instances 0 and 2 of ``_scene`` share a class: a click row on one of them may get negative
    clicks, and those lie inside the other one; instance 1 (no twin, touching nothing) gets none."""
    rng = np.random.default_rng(seed)
    scene = _scene(0)
    sims = simulate_prompts([scene], 40, rng, mix={"point": 1.0}, sibling_negatives=1.0)
    with_negatives = 0
    for s in sims:
        i = next(j for j, m in enumerate(scene.masks) if (m == s.target).all())
        pts = s.prompts.points
        negatives = pts.coords[pts.labels == 0]
        twin = {0: 2, 2: 0}.get(i)
        if twin is None:
            assert len(negatives) == 0
            continue
        assert 1 <= len(negatives) <= 2
        with_negatives += 1
        for x, y in negatives:
            assert scene.masks[twin][int(y), int(x)] and not s.target[int(y), int(x)]
    assert with_negatives > 10
    plain = simulate_prompts([scene], 40, np.random.default_rng(seed), mix={"point": 1.0})
    assert all((s.prompts.points.labels == 1).all() for s in plain)  # off by default


def test_extra_rounds_add_clicks_from_the_last_rounds_mask(tmp_path):
    """``next_round`` adds 1..correction_clicks clicks to each set, at errors of the given
    prediction; ``extra_rounds`` runs such rounds without gradients before the graded one, and a
    training step with them gives a finite loss that reaches the decoder."""
    from segprompt.universal.train import UniversalStep, build_model

    cfg = _cfg(tmp_path, second_round=1.0, extra_rounds=2, correction_clicks=2, sibling_negatives=0.5, memory_share=0.0)
    torch.manual_seed(0)
    model = build_model(cfg, ("disc", "star"))
    step = UniversalStep(model, cfg, ("disc", "star"))
    scenes = [_scene(0), _scene(1)]
    loss, logs = step(scenes, np.random.default_rng(0))
    assert torch.isfinite(loss) and "round2" in logs
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())

    from segprompt.prompts import Points, PromptSet
    from segprompt.universal.prompting import model_input
    from segprompt.universal.train_data import SimulatedPrompt

    _, tfs = model_input([sc.image for sc in scenes], model.img_size)
    target = scenes[0].masks[0]
    sims = [SimulatedPrompt(PromptSet(points=Points.positive((10.5, 10.5))), target, 0, 0, -1)]

    class Out:  # a final layer whose best candidate (0) is empty everywhere
        scores = torch.tensor([[1.0, 0.0, 0.0]])
        masks = torch.full((1, 3, 64, 64), -5.0)

    nxt = step.next_round([(0, sims[0].prompts)], Out(), sims, tfs, np.random.default_rng(1))
    (i, grown), = nxt
    assert i == 0 and 2 <= len(grown.points) <= 3 and grown.mask is None
    for (x, y), label in zip(grown.points.coords[1:], grown.points.labels[1:]):
        assert label == 1 and target[int(y), int(x)]  # the empty prediction missed the target: positive clicks inside it


def test_the_click5_measure_and_val_kinds(tmp_path):
    from segprompt.errors import ConfigError
    from segprompt.models.universal import UniversalSegmenter
    from segprompt.universal.evaluate import evaluate_scenes
    from segprompt.universal.train import build_model

    with pytest.raises(ConfigError, match="val_kinds"):
        _cfg(tmp_path, val_kinds=["click", "clicks"])
    torch.manual_seed(0)
    seg = UniversalSegmenter(model=build_model(_cfg(tmp_path), ("disc", "star")))
    out = evaluate_scenes(seg, [_scene(0)], kinds=("click", "click5"))
    assert set(out) == {"click_iou", "click5_iou"} and 0 <= out["click5_iou"] <= 1
