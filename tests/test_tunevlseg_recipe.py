"""The training recipe of `segprompt bench tunevlseg`: ``tvs`` (TuneVLSeg's protocol) by default,
``segprompt`` (the earlier one) by name; the DiceCE loss against monai's as TuneVLSeg configures it;
early stopping, the plateau schedule and the best checkpoint re-derived from the epoch rows; old
run folders; the YAML presets of configs/tunevlseg/.

The TuneVLSeg values below are written out from naamiinepal/tunevlseg, not taken from our code:
configs/experiment/coop/clipseg.yaml (trainer min_epochs 10, max_epochs 100, weight_decay 0.0,
lr 2e-4), configs/model/*/clipseg.yaml (monai.losses.DiceCELoss(sigmoid=True, lambda_dice=1,
lambda_ce=0.2); ReduceLROnPlateau mode min, factor 0.2, patience 5, monitored on val_loss by
src/models/image_text_mask_module.py), configs/callbacks/default.yaml (EarlyStopping on val_loss,
patience 10; the template's min_delta 0; ModelCheckpoint on val_dice, mode max) and
configs/hparams_search/*_optuna.yaml (lr 1e-5..5e-3 log, weight decay 1e-5..1e-2 log, depth
range(1, 12), minimise val_loss).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from segprompt.data.synthetic import SyntheticLesions
from segprompt.data.tunevlseg_format import write_tunevlseg_split
from segprompt.engine.runfolder import JsonlLog
from segprompt.errors import ConfigError

monai_losses = pytest.importorskip("monai.losses")

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tunevlseg"

#: TuneVLSeg's protocol, as read from its configs (see the module doc)
TVS = {"epochs": 100, "min_epochs": 10, "lr": 2e-4, "weight_decay": 0.0, "schedule": "plateau", "plateau_factor": 0.2, "plateau_patience": 5,
       "monitor": "val_loss", "early_stop": 10, "min_delta": 0.0, "best_by": "val_dice", "baseline_counts": False, "lambda_dice": 1.0,
       "lambda_ce": 0.2, "dice_smooth": 1e-5}
#: the recipe this project ran before (TrainConfig's defaults until then; FitConfig's min_epochs / min_delta 0)
SEGPROMPT = {"epochs": 20, "min_epochs": 0, "lr": 2e-4, "weight_decay": 1e-2, "schedule": "plateau", "plateau_factor": 0.2, "plateau_patience": 5,
             "monitor": "val_dice", "early_stop": 10, "min_delta": 0.0, "best_by": "val_dice", "baseline_counts": True, "dice_smooth": 1.0}


def _tvs_dice_ce() -> torch.nn.Module:
    """The loss exactly as TuneVLSeg's configs/model/coop/clipseg.yaml builds it (monai's defaults otherwise)."""
    return monai_losses.DiceCELoss(sigmoid=True, lambda_dice=1, lambda_ce=0.2)


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe") / "derm"
    write_tunevlseg_split(SyntheticLesions(n=16, seed=5, size=48, style="dermoscopy"), root, splits={"train": 0.5, "val": 0.25, "test": 0.25},
                          prompts=["lesion"])
    return root


# -- the loss --------------------------------------------------------------------------------------


def test_dice_ce_equals_monai_dice_ce_loss_as_tuneVLSeg_configures_it():
    from segprompt.engine.losses import dice_ce_loss as engine_dice_ce
    from tunevlseg.train import dice_ce_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 16, 16, generator=g) * 3
    ordinary = (torch.rand(4, 1, 16, 16, generator=g) > 0.6).float()
    empty = torch.zeros(4, 1, 16, 16)
    mixed = ordinary.clone()
    mixed[1:3] = 0  # two empty masks in the batch (BUSI's normal images)
    near_empty_pred = torch.full((4, 1, 16, 16), -8.0)  # an almost empty prediction for the empty targets
    monai = _tvs_dice_ce()
    for lg, tgt in ((logits, ordinary), (logits, empty), (logits, mixed), (near_empty_pred, empty), (near_empty_pred, mixed)):
        want = monai(lg, tgt)
        assert torch.allclose(dice_ce_loss(lg, tgt), want, atol=1e-6), (dice_ce_loss(lg, tgt), want)
        assert torch.allclose(dice_ce_loss(lg, tgt, torch.ones_like(tgt)), want, atol=1e-6)  # an all-ones valid mask changes nothing
        assert torch.allclose(engine_dice_ce(lg, tgt, 1.0, 0.2), want, atol=1e-6)
    # the smoothing matters on empty targets: monai's 1e-5 charges a Dice loss close to 1 for a
    # prediction that is only almost empty; the segprompt recipe's smoothing 1 does not
    assert float(dice_ce_loss(near_empty_pred, empty)) > 0.9
    assert float(dice_ce_loss(near_empty_pred, empty, smooth=1.0)) < 0.1
    # gradients flow like monai's
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    dice_ce_loss(a, mixed).backward()
    monai(b, mixed).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7)


# -- the recipes ------------------------------------------------------------------------------------


def test_tvs_is_the_default_recipe_with_tuneVLSeg_numbers_and_segprompt_is_the_old_one():
    from tunevlseg.train import TrainConfig, fit_config

    cfg = TrainConfig(dataset="x")
    assert cfg.recipe == "tvs"
    assert {k: getattr(cfg, k) for k in TVS} == TVS
    fc = fit_config(cfg)
    assert (fc.monitor, fc.monitor_mode, fc.patience, fc.min_epochs, fc.min_delta) == ("val_loss", "min", 10, 10, 0.0)
    assert (fc.best_key, fc.best_direction, fc.baseline_counts, fc.schedule) == ("val_dice", "max", False, "plateau")
    assert (fc.plateau_factor, fc.plateau_patience, fc.epochs, fc.lr) == (0.2, 5, 100, 2e-4)

    old = TrainConfig(dataset="x", recipe="segprompt")
    assert {k: getattr(old, k) for k in SEGPROMPT} == SEGPROMPT
    fo = fit_config(old)
    assert (fo.monitor, fo.monitor_mode, fo.best_key, fo.best_direction, fo.baseline_counts, fo.patience) == ("val_dice", "max", "val_dice", "max", True, 10)

    # explicit values win over the recipe's; the others stay the recipe's
    mine = TrainConfig(dataset="x", early_stop=3, weight_decay=0.05, monitor="val_dice")
    assert (mine.early_stop, mine.weight_decay, mine.monitor, mine.min_epochs, mine.dice_smooth) == (3, 0.05, "val_dice", 10, 1e-5)
    assert fit_config(mine).monitor_mode == "max"
    with pytest.raises(ConfigError, match="--recipe must be one of tvs, segprompt"):
        TrainConfig(dataset="x", recipe="lightning")
    with pytest.raises(ConfigError, match="monitor"):
        TrainConfig(dataset="x", monitor="val_iou")


def _lightning_early_stop(losses: list[float], patience: int, min_epochs: int, min_delta: float, epochs: int) -> int:
    """The epoch after which Lightning's EarlyStopping(mode="min") with Trainer(min_epochs) ends a
    fit, from the validation losses of epochs 1, 2, ... (re-implemented here)."""
    best, wait = math.inf, 0
    for e, loss in enumerate(losses, start=1):
        if loss < best - min_delta:
            best, wait = loss, 0
        else:
            wait += 1
        if patience and wait >= patience and e >= min_epochs:
            return e
    return epochs


def _plateau_lrs(losses: list[float], lr: float, factor: float, patience: int) -> list[float]:
    """torch's ReduceLROnPlateau(mode="min", threshold=1e-4 relative, cooldown 0) stepped once per
    epoch on ``losses`` (re-implemented): the learning rate of epochs 1, 2, ..."""
    out, best, bad = [], math.inf, 0
    for loss in losses:
        out.append(lr)
        if loss < best * (1 - 1e-4):
            best, bad = loss, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = lr * factor, 0
    return out


def test_tvs_stops_and_steps_the_plateau_on_the_validation_loss_and_keeps_the_best_dice(lesions, tmp_path):
    from tunevlseg.data import VLSegDataset, collate, load_benchmark_split
    from tunevlseg.train import TrainConfig, build_model, train_and_evaluate
    from segprompt.engine.training import seed_everything

    cfg = TrainConfig(vlsm="openclip-tiny", method="vpt-shallow", dataset=str(lesions), epochs=6, batch_size=4, lr=0.1, early_stop=2, min_epochs=3,
                      plateau_patience=1, max_train_samples=8, max_eval_samples=4)
    out = tmp_path / "run"
    s = train_and_evaluate(cfg, out)
    rows = [r for r in JsonlLog(out / "results.jsonl") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in rows] == list(range(len(rows))) and all(math.isfinite(r["val_loss"]) for r in rows)
    losses = [r["val_loss"] for r in rows[1:]]
    stop = _lightning_early_stop(losses, patience=2, min_epochs=3, min_delta=0.0, epochs=6)
    assert s["epochs_run"] == stop and s["stopped_early"] == (stop < 6)
    assert [r["lr"] for r in rows[1:]] == pytest.approx(_plateau_lrs(losses, 0.1, 0.2, 1)[: len(losses)])
    dices = [r["val_dice"] for r in rows[1:]]
    best = 1 + dices.index(max(dices))  # ModelCheckpoint(val_dice, max): the first best trained epoch
    assert s["best_epoch"] == best and s["val_dice_best"] == pytest.approx(max(dices))
    assert s["recipe"] == "tvs" and s["val_loss_last"] == pytest.approx(losses[-1]) and s["val_loss_min"] == pytest.approx(min(losses))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["recipe"] == "tvs" and saved["monitor"] == "val_loss" and saved["dice_smooth"] == 1e-5 and saved["min_epochs"] == 3

    # epoch 0's val_loss is monai's DiceCE of the untrained model on the validation split, at the
    # model's input size, averaged over items (Lightning's val_loss, batches weighted by size)
    seed_everything(cfg.seed)
    vlsm, learner = build_model(cfg)
    val = VLSegDataset(load_benchmark_split(cfg.dataset, "val"), vlsm.image_size, train=False, prompt=cfg.prompt, seed=cfg.seed)
    assert len(val) == 4  # all of them (max_eval_samples 4)
    loss, monai = 0.0, _tvs_dice_ce()
    vlsm.eval()
    learner.eval()
    with torch.no_grad():
        for i in range(len(val)):
            batch = collate([val[i]])
            logits = vlsm(vlsm.preprocess(batch["image"]), batch["text"], learner=learner)
            loss += float(monai(logits, batch["mask"])) / len(val)
    assert rows[0]["val_loss"] == pytest.approx(loss, abs=1e-5)


# -- run folders from before recipes ---------------------------------------------------------------


#: TrainConfig fields that did not exist before recipes
NEW_FIELDS = ("recipe", "monitor", "min_delta", "min_epochs", "best_by", "baseline_counts", "dice_smooth")


def _make_legacy(folder: Path) -> None:
    """Rewrite config.yaml as it was written before recipes: a cell's without the new fields, a
    sweep's ``train`` as the command line gave it then (no schedule / plateau fields either)."""
    path = folder / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    sweep = cfg.get("suite") == "tunevlseg-sweep"
    target = cfg["train"] if sweep else cfg
    for k in NEW_FIELDS + (("schedule", "plateau_factor", "plateau_patience") if sweep else ()):
        target.pop(k, None)
    if sweep:
        cfg.pop("learner_kwargs", None)  # the sweep's per-method map is new too
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _strip(row):
    return {k: v for k, v in row.items() if k not in ("seconds", "ms_per_step", "train_seconds", "out")}


def test_a_run_folder_from_before_recipes_resumes_with_segprompt_and_says_so_otherwise(lesions, tmp_path):
    from tunevlseg.train import TrainConfig, train_and_evaluate

    base = dict(vlsm="openclip-tiny", method="coop", dataset=str(lesions), epochs=2, batch_size=4, lr=5e-3, max_train_samples=8,
                max_eval_samples=4, recipe="segprompt")
    full = train_and_evaluate(TrainConfig(**base), tmp_path / "full")
    assert train_and_evaluate(TrainConfig(**base, max_steps=3), tmp_path / "old")["kind"] == "interrupted"
    _make_legacy(tmp_path / "old")
    legacy = {k: v for k, v in base.items() if k != "recipe"}
    with pytest.raises(ConfigError, match=r"made before training recipes existed.*--recipe segprompt"):
        train_and_evaluate(TrainConfig(**legacy), tmp_path / "old")  # the default is now tvs
    resumed = train_and_evaluate(TrainConfig(**base), tmp_path / "old")
    assert _strip(resumed) == _strip(full)
    assert yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())["recipe"] == "segprompt"


def test_cli_rerun_on_a_sweep_folder_from_before_recipes_resumes_and_a_new_folder_records_the_recipe(lesions, tmp_path, capsys):
    from segprompt.cli import main

    out = tmp_path / "sweep"
    args = ["bench", "tunevlseg", "--vlsm", "clipseg-tiny", "--methods", "vpt-shallow", "--dataset", str(lesions), "--epochs", "1",
            "--batch-size", "4", "--limit", "2", "--out", str(out)]
    assert main([*args, "--recipe", "segprompt"]) == 0
    capsys.readouterr()
    _make_legacy(out)
    (cell,) = (out / "cells").iterdir()
    _make_legacy(cell)
    assert main([*args, "--recipe", "tvs"]) == 2  # the new default in an old folder: refused, saying what to do
    err = capsys.readouterr().err
    assert "made before training recipes existed" in err and "Rerun with --recipe segprompt" in err and "train.monitor" in err
    assert main(args) == 0  # the same command as before recipes existed: the folder's recipe, nothing reruns
    text = "".join(capsys.readouterr())
    assert "0 run now, 1 already finished" in text and "recipe segprompt" in text
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["recipe"] == "segprompt" and saved["monitor"] == "val_dice" and saved["weight_decay"] == 0.01

    new = tmp_path / "new"
    assert main([*args[:-1], str(new)]) == 0
    capsys.readouterr()
    saved = yaml.safe_load((new / "config.yaml").read_text())["train"]
    assert {k: saved[k] for k in ("recipe", "monitor", "early_stop", "min_epochs", "weight_decay", "dice_smooth")} == {
        "recipe": "tvs", "monitor": "val_loss", "early_stop": 10, "min_epochs": 10, "weight_decay": 0.0, "dice_smooth": 1e-5}
    assert saved["epochs"] == 1  # the explicit option wins over the recipe's 100
    (row,) = [r for r in JsonlLog(new / "results.jsonl") if r.get("kind") == "cell"]
    assert row["recipe"] == "tvs"
    assert "tvs (TuneVLSeg's protocol)" in (new / "report.md").read_text()


# -- presets ----------------------------------------------------------------------------------------


def test_every_preset_under_configs_tunevlseg_parses_and_validates():
    from tunevlseg.cli import load_presets, sweep_config_from_options
    from tunevlseg.train import RECIPES, TrainConfig

    files = sorted(CONFIGS.rglob("*.yaml"))
    assert {p.parent.name for p in files} >= {"methods", "models", "datasets", "recipes"}
    for path in files:
        preset = load_presets([path])
        if not preset.get("datasets"):
            preset["datasets"] = ["kvasir"]
        cfg = sweep_config_from_options(preset=preset)  # validates the grid, every learner kwarg and the training settings
        train = dict(cfg.train)
        TrainConfig(vlsm=cfg.vlsms[0], method=cfg.methods[0], dataset=cfg.datasets[0], **train)
        assert train["recipe"] in RECIPES, path
    # the recipe presets spell out the recipes
    for name in ("tvs", "segprompt"):
        train = load_presets([CONFIGS / "recipes" / f"{name}.yaml"])["train"]
        assert {k: train[k] for k in RECIPES[name]} == RECIPES[name]
    assert {k: load_presets([CONFIGS / "recipes" / "tvs.yaml"])["train"][k] for k in TVS} == TVS
    # every medical set of the registry has a dataset preset; the method presets cover TuneVLSeg's eight settings
    from tunevlseg.data import BENCHMARKS

    medical = {k for k, v in BENCHMARKS.items() if v.domain == "medical"}
    assert medical == {p.stem for p in (CONFIGS / "datasets").glob("*.yaml")} - {"medical"}
    assert set(load_presets([CONFIGS / "datasets" / "medical.yaml"])["datasets"]) == medical
    tvs = load_presets([CONFIGS / "methods" / "tvs.yaml"])
    assert set(tvs["methods"]) == {"zeroshot", "coop", "cocoop", "vpt-shallow", "vpt-deep", "maple", "shared-separate", "shared-attention"}
    # TuneVLSeg's extra decoder layer comes from the learners' default (on for VPT / MaPLe / Shared-* on CLIPSeg),
    # so the same presets also run on open_clip VLSMs, which have no CLIPSeg decoder
    from tunevlseg.learners import create_learner
    from tunevlseg.models import create_vlsm

    assert not any("decoder_layer" in kw for kw in tvs["learner_kwargs"].values())
    clipseg, openclip = create_vlsm("clipseg-tiny"), create_vlsm("openclip-tiny")
    with_layer = {m for m, kw in tvs["learner_kwargs"].items() if create_learner(m, clipseg, **kw).decoder_layer is not None}
    assert with_layer == {"vpt-shallow", "vpt-deep", "maple", "shared-separate", "shared-attention"}
    assert all(create_learner(m, openclip, **kw).decoder_layer is None for m, kw in tvs["learner_kwargs"].items())
    bio = load_presets([CONFIGS / "models" / "biomedclip.yaml"])
    assert bio["vlsms"] == ["openclip"] and bio["vlsm_kwargs"]["openclip"]["model"] == "biomedclip"
    # combined: later files win, mappings merge
    merged = load_presets([CONFIGS / "recipes" / "tvs.yaml", CONFIGS / "datasets" / "kvasir.yaml", CONFIGS / "methods" / "maple.yaml"])
    assert merged["train"]["recipe"] == "tvs" and merged["train"]["prompt"] == "p1" and merged["datasets"] == ["kvasir"]
    assert merged["methods"] == ["maple"] and merged["learner_kwargs"]["maple"]["hidden"] == 64


def test_a_learner_keyword_the_method_does_not_take_is_refused_before_any_work():
    from tunevlseg.sweep import SweepConfig

    with pytest.raises(ConfigError, match="learner_kwargs: coop does not take nhead"):
        SweepConfig(datasets=["kvasir"], methods=["coop"], learner_kwargs={"coop": {"nhead": 4}})
    with pytest.raises(ConfigError, match="depth, seed and n_ctx come from the grid"):
        SweepConfig(datasets=["kvasir"], methods=["coop"], learner_kwargs={"coop": {"depth": 4}})
    with pytest.raises(ConfigError, match="learner_kwargs: unknown learner"):
        SweepConfig(datasets=["kvasir"], learner_kwargs={"coopp": {}})


def test_optuna_spaces_are_tuneVLSeg_s_for_tvs_and_the_old_ones_for_segprompt():
    from tunevlseg.sweep import OPTUNA_SPACES

    tvs = OPTUNA_SPACES["tvs"]
    assert tvs["lr"] == (1e-5, 5e-3) and tvs["weight_decay"] == (1e-5, 1e-2) and tvs["max_depth"] == 12
    assert tvs["direction"] == "minimize" and tvs["objective"] == "val_loss_last"
    assert tvs["sampler"] == {"multivariate": True, "n_startup_trials": 10}
    old = OPTUNA_SPACES["segprompt"]
    assert old["lr"] == (1e-5, 1e-2) and old["weight_decay"] == (1e-6, 1e-1) and old["direction"] == "maximize" and old["objective"] == "val_dice_best"
