"""The TuneVLSeg report (what `segprompt bench tunevlseg` and its `report` sub-command write):
Dice-vs-depth plots (one title, legend outside every axes, the zero-shot reference as a dashed
line, bands over seeds), tied best values all bold, learning rates as 2e-04, no literal None,
"1 epoch", what the demo models are and the sweep's training settings."""

from __future__ import annotations

import re
from dataclasses import asdict

import matplotlib

matplotlib.use("Agg")

import pytest

from segprompt.engine.runfolder import RunFolder
from tunevlseg.report import aggregate, best_values, depth_figure, format_lr, format_value, latex_table, method_table, write_report
from tunevlseg.sweep import SweepConfig


def _cell(method, depth, dice, seed=0, vlsm="clipseg-tiny", dataset="derm", val=None, ms=12.5):
    return {"kind": "cell", "cell": f"{vlsm}_{method}_d{depth}_{dataset}_s{seed}", "vlsm": vlsm, "method": method, "depth": depth,
            "dataset": dataset, "seed": seed, "dice_mean": dice, "dice_std": 0.05, "iou_mean": dice * 0.8, "iou_std": 0.04,
            "val_dice_best": dice if val is None else val, "val_dice_zeroshot": 0.2, "n_test": 3, "train_images": 6, "val_images": 2,
            "test_is_val": False, "trainable_params": 0 if method == "zeroshot" else 128 * depth, "ms_per_step": None if method == "zeroshot" else ms,
            "split": "test", "epochs_run": 1}


def _grid(seeds=(0,)):
    cells = []
    for s in seeds:
        off = 0.01 * s
        cells += [_cell("zeroshot", 0, 0.30 + off, s), _cell("full", 0, 0.55 + off, s)]
        cells += [_cell("coop", d, 0.40 + 0.02 * d + off, s) for d in (1, 2, 3)]
        cells += [_cell("maple", d, 0.42 + 0.03 * d + off, s) for d in (1, 2, 3)]
    return cells


def test_format_lr_and_missing_values():
    assert format_lr(2e-4) == "2e-04" and format_lr(1.5e-4) == "1.5e-04" and format_lr(1e-2) == "1e-02" and format_lr(0.00012345) == "1.2e-04"
    assert format_lr(None) == "\u2013" and format_lr(float("nan")) == "\u2013"
    assert format_value(None) == "\u2013" and format_value(float("nan")) == "\u2013" and format_value(0.51234) == "0.512"


def test_tied_best_values_are_all_bold():
    # coop and maple tie at the 3 decimals shown (0.5121 vs 0.5124); zeroshot is below
    cells = [_cell("zeroshot", 0, 0.30), _cell("coop", 1, 0.5121), _cell("maple", 1, 0.5124)]
    agg = aggregate(cells)
    rows, _, chosen = method_table(agg)
    assert best_values(chosen) == {("clipseg-tiny", "coop", "derm"), ("clipseg-tiny", "maple", "derm")}
    md = {r["method"]: r["derm"] for r in rows}
    assert md["coop"].startswith("**0.512**") and md["maple"].startswith("**0.512**") and "**" not in md["zeroshot"]
    tex = latex_table(agg)
    assert tex.count(r"\textbf{0.512}") == 2 and tex.count(r"\textbf{") == 2
    # a single best is the only bold one; a group of one method has none
    rows, _, chosen = method_table(aggregate([_cell("zeroshot", 0, 0.30), _cell("coop", 1, 0.52), _cell("maple", 1, 0.5124)]))
    assert [r["method"] for r in rows if "**" in r["derm"]] == ["coop"]
    assert best_values(method_table(aggregate([_cell("coop", 1, 0.5)]))[2]) == set()


def _window(artist, renderer):
    return artist.get_window_extent(renderer)


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_dice_vs_depth_has_one_title_a_legend_outside_the_axes_and_the_zero_shot_line(seeds):
    cells = _grid(seeds) + [dict(c, vlsm="openclip-tiny", cell=c["cell"].replace("clipseg", "openclip")) for c in _grid(seeds)]
    agg = aggregate(cells)
    fig = depth_figure(agg, "derm")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and len(fig.legends) == 1
    legend = _window(fig.legends[0], renderer)
    for ax in axes:
        assert not legend.overlaps(_window(ax, renderer)), "the legend covers an axes"
    # one title for the figure; panel titles name the VLSM only
    assert fig._suptitle is not None and fig._suptitle.get_text().startswith("derm: test Dice vs prompt depth")
    assert not legend.overlaps(_window(fig._suptitle, renderer))
    assert [ax.get_title().split(" (")[0] for ax in axes] == ["clipseg-tiny", "openclip-tiny"]
    assert all("derm" not in ax.get_title() and "Dice" not in ax.get_title() for ax in axes)
    zeroshot = sum(c["dice_mean"] for c in cells if c["method"] == "zeroshot" and c["vlsm"] == "clipseg-tiny") / len(seeds)
    for ax in axes:
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert set(lines) == {"coop", "maple", "zeroshot", "full"}
        zs = lines["zeroshot"]
        assert zs.get_linestyle() == "--" and list(zs.get_ydata()) == pytest.approx([zeroshot, zeroshot])
        assert lines["full"].get_linestyle() == ":"
        assert list(lines["coop"].get_xdata()) == [1, 2, 3]
        bands = [c for c in ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
        assert len(bands) == (2 if len(seeds) > 1 else 0)  # ± 1 std over seeds, only with several seeds
        assert ("n=3" in ax.get_title()) == (len(seeds) > 1)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["coop", "maple", "zeroshot", "full"]
    assert ("std over n seeds" in fig._suptitle.get_text()) == (len(seeds) > 1)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_report_says_what_the_models_are_with_the_settings_and_no_none(tmp_path):
    out = tmp_path / "run"
    (tmp_path / "derm").mkdir()
    cfg = SweepConfig(vlsms=["clipseg-tiny", "openclip-tiny"], methods=["zeroshot", "coop"], depths=[1, 2, 3], datasets=[str(tmp_path / "derm")], seeds=[0],
                      train={"epochs": 1, "batch_size": 4, "lr": 2e-4, "weight_decay": 1e-2, "max_train_samples": 6})
    run = RunFolder(out, {"suite": "tunevlseg-sweep", **asdict(cfg)})
    cells = [c for c in _grid() if c["method"] in ("zeroshot", "coop")]
    cells += [dict(c, vlsm="openclip-tiny", cell=c["cell"].replace("clipseg", "openclip")) for c in cells]
    run.results.extend(cells)
    run.finish(new_rows=len(cells))
    paths = write_report(out)
    report = paths["report"].read_text()
    assert "None" not in report and "nan" not in report and "0.0000" not in report
    assert "1 epoch at most" in report and "1 epochs" not in report
    assert "| learning rate " in report and "2e-04" in report and "| weight decay " in report and "1e-02" in report
    assert "| batch size " in report and "| 4 " in report and "the first 6 of each train split" in report
    models = report.split("## Models")[1].split("##")[0]
    assert "`clipseg-tiny`: a tiny CLIPSeg" in models and "`openclip-tiny`: a tiny open_clip" in models
    assert models.count("**random weights**") == 2 and "not a real CLIPSeg" in models and "not a real open_clip model" in models
    assert "| derm    | 6     | 2   | 3    | 0" in report  # set sizes: train, val, test, unreadable
    assert "The run took" in report and "Nothing skipped." in report and "errors.jsonl" not in report.split("## Skipped")[1]
    # CSV: missing values are empty fields, not None / nan
    summary = paths["summary"].read_text()
    assert "None" not in summary and "nan" not in summary
    zs_row = next(line for line in summary.splitlines() if ",zeroshot," in line)
    assert zs_row.endswith(",0,")  # trainable params 0, ms_per_step empty
    assert re.search(r"\| clipseg-tiny +\| coop +\| \*\*0\.460\*\* ± 0\.050 \(d3\)", report)


def test_report_names_the_training_recipe_and_a_folder_from_before_recipes_reads_as_segprompt(tmp_path):
    (tmp_path / "derm").mkdir()
    cfg = SweepConfig(methods=["zeroshot", "coop"], datasets=[str(tmp_path / "derm")], train={"epochs": 30, "batch_size": 4})
    out = tmp_path / "tvs"
    run = RunFolder(out, {"suite": "tunevlseg-sweep", **asdict(cfg)})
    run.results.extend(c for c in _grid() if c["method"] in ("zeroshot", "coop"))
    report = write_report(out)["report"].read_text()
    assert "| recipe " in report and "tvs (TuneVLSeg's protocol)" in report
    assert "30 epochs at most (early stop after 10 epochs without a better validation loss, not before epoch 10)" in report
    assert "schedule plateau on the validation loss (factor 0.2, patience 5)" in report and "| weight decay " in report
    assert "the best val Dice after training (epoch 0 excluded)" in report and "Dice smoothing 1e-05" in report
    # a sweep folder written before recipes: its train settings as the command line gave them then
    legacy = {"suite": "tunevlseg-sweep", **{k: v for k, v in asdict(cfg).items() if k != "learner_kwargs"},
              "train": {"epochs": 20, "batch_size": 32, "lr": 2e-4, "weight_decay": 1e-2, "n_ctx": 4, "early_stop": 10, "precision": "fp32",
                        "device": "cpu", "max_train_samples": None, "max_eval_samples": None, "prompt": "p0"}}
    old = tmp_path / "old"
    run = RunFolder(old, legacy)
    run.results.extend(c for c in _grid() if c["method"] in ("zeroshot", "coop"))
    report = write_report(old)["report"].read_text()
    assert "| recipe " in report and "segprompt" in report and "TuneVLSeg's protocol" not in report
    assert "20 epochs at most (early stop after 10 epochs without a better val Dice)" in report and "1e-02" in report
