"""One behaviour for every command: bad items skipped, one-line errors, resume messages, logging
through the progress bar, option names, and plots whose legends cover no data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from segprompt.cli import main
from segprompt.data.synthetic import SyntheticLesions, write_folder
from segprompt.errors import ConfigError


@pytest.fixture()
def folder_one_mask_missing(tmp_path):
    root = write_folder(SyntheticLesions(n=4, seed=3, size=(48, 48)), tmp_path / "lesions", image_suffix=".png")
    victim = sorted((root / "masks").iterdir())[1]
    victim.unlink()
    return root, victim.stem


# ------------------------------------------------------------------------------ bad items skipped


def test_benchmark_skips_an_image_without_mask_and_goes_on(folder_one_mask_missing, tmp_path, capsys):
    root, stem = folder_one_mask_missing
    out = tmp_path / "run"
    rc = main(["bench", "pointprompt", "--dataset", str(root), "--model", "grabcut", "--strategies", "centre", "--positive", "1", "--negative", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    errors = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["item"] == stem and "no mask" in errors[0]["error"] and errors[0]["type"] == "DataError"
    assert str(root / "images" / stem) in errors[0]["error"]
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert sorted({r["image"] for r in rows}) == sorted(p.stem for p in (root / "masks").iterdir())
    assert "1 of 4 images have no mask" in err
    assert "Skipped inputs: 1 (see errors.jsonl)" in (out / "report.md").read_text()


def test_convert_skips_an_image_without_mask(folder_one_mask_missing, tmp_path, capsys):
    root, stem = folder_one_mask_missing
    out = tmp_path / "tvs"
    rc = main(["data", "convert-tunevlseg", str(root), str(out), "--text", "lesion", "--splits", "0.34,0.33,0.33"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    entries = [e for split in ("train", "val", "test") for e in json.loads((out / "anns" / f"{split}.json").read_text())]
    assert len(entries) == 3 and stem not in {Path(e["mask_name"]).stem for e in entries}
    errors = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["item"] for e in errors] == [stem]
    assert "3 of 4 samples" in printed.out and "1 skipped" in printed.out


# ------------------------------------------------------------------------------ one-line errors


def test_cuda_without_cuda_is_one_line(monkeypatch, capsys, tmp_path):
    import torch

    from segprompt.devices import check_device
    from segprompt.models import create_segmenter

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"--device cuda: CUDA is not available .*use --device cpu"):
        create_segmenter("sam-tiny", device="cuda")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        check_device("gpu")
    assert check_device("cpu") == "cpu"
    for argv in (
        ["segment", str(tmp_path / "x.png"), "--point", "1,1", "--out", str(tmp_path / "m.png"), "--device", "cuda"],
        ["bench", "pointprompt", "--device", "cuda:1", "--out", str(tmp_path / "r")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --device cuda") and "CUDA is not available" in err
        assert not (tmp_path / "r").exists()  # refused before any work


def test_cuda_index_beyond_the_gpus(monkeypatch):
    import torch

    from segprompt.devices import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="has 2 GPU"):
        check_device("cuda:2")


@pytest.mark.parametrize(
    "env, platform, ok",
    [
        ({}, "linux", False),
        ({"DISPLAY": ""}, "linux", False),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux", True),
        ({"DISPLAY": "host:10.0"}, "linux", True),  # ssh -X: a remote display, not checked
        ({}, "darwin", True),
        ({}, "win32", True),
    ],
)
def test_napari_display_check(env, platform, ok, tmp_path):
    from segprompt.commands.napari import display_problem

    problem = display_problem(env, platform, x11_socket_dir=str(tmp_path))
    assert (problem is None) == ok
    if not ok:
        assert "needs a display" in problem and "xvfb-run -a segprompt napari" in problem and "\n" not in problem


def test_napari_display_number_without_server(tmp_path):
    from segprompt.commands.napari import display_problem

    assert "DISPLAY=:7 names no running X server" in display_problem({"DISPLAY": ":7"}, "linux", x11_socket_dir=str(tmp_path))
    (tmp_path / "X7").touch()
    assert display_problem({"DISPLAY": ":7.0"}, "linux", x11_socket_dir=str(tmp_path)) is None


def test_napari_without_display_exits_2_in_one_line(monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert main(["napari"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: segprompt napari needs a display")


# ------------------------------------------------------------------------------ logging and progress


def test_cli_logging_is_info_through_the_progress_bar(capsys):
    """Progress lines (INFO) show by default, warnings say 'warning:', both via tqdm.write."""
    from tqdm import tqdm

    from segprompt.logs import setup_cli_logging

    setup_cli_logging("info")
    log = logging.getLogger("pointprompt.some_module")
    written: list[str] = []
    original = tqdm.write
    try:
        tqdm.write = classmethod(lambda cls, s, file=None, end="\n", nolock=False: written.append(s))  # type: ignore[method-assign]
        log.info("epoch 1: loss 0.5")
        log.warning("skipped x: no mask")
        logging.getLogger("some.library").info("library chatter")
    finally:
        tqdm.write = original  # type: ignore[method-assign]
    assert written == ["epoch 1: loss 0.5", "warning: skipped x: no mask"]
    setup_cli_logging("quiet")
    assert not logging.getLogger("pointprompt").isEnabledFor(logging.INFO)
    setup_cli_logging("info")
    assert sum(type(h).__name__ == "TqdmHandler" for h in logging.getLogger().handlers) == 1


# ------------------------------------------------------------------------------ option names


def test_strategies_all_selects_every_registered_strategy(tmp_path):
    from pointprompt.strategies import STRATEGIES

    assert STRATEGIES.expand(["all"]) == STRATEGIES.names()
    assert STRATEGIES.expand(["centre", "all"])[0] == "centre" and len(STRATEGIES.expand(["centre", "all"])) == len(STRATEGIES.names())
    assert STRATEGIES.expand(["center", "centre"]) == ["center"]  # an alias and its target are one strategy
    with pytest.raises(ConfigError, match="unknown point strategy 'nope'"):
        STRATEGIES.expand(["nope"])


def test_multimask_values_are_listed_the_same_everywhere():
    from click.testing import CliRunner

    from segprompt.cli import cli
    from segprompt.models.base import MULTIMASK_POLICIES, SINGLE_MASK_POLICIES

    runner = CliRunner()
    seg = runner.invoke(cli, ["segment", "--help"], terminal_width=400).output
    bench = runner.invoke(cli, ["bench", "pointprompt", "--help"], terminal_width=400).output
    assert all(p in seg for p in MULTIMASK_POLICIES)  # segment accepts all, auto included
    assert "[single|all|first|best|oracle|auto]" in seg
    assert "[single|first|best|oracle|auto|model]" in bench  # one mask per prompt set: no 'all'; model: each model's own
    assert "model: each model's own policy" in bench
    assert set(SINGLE_MASK_POLICIES) == set(MULTIMASK_POLICIES) - {"all"}


# ------------------------------------------------------------------------------ plots


def _bbox_overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(0.0, w) * max(0.0, h)


def test_line_plot_legend_covers_no_axes_and_panels_make_a_grid(tmp_path):
    from segprompt.engine.report import Series, line_figure, line_plot

    panels = {
        f"model on /very/long/path/to/dataset_{i}": {s: Series([1, 2, 3], [0.5, 0.6, 0.7], [0.05] * 3, 12) for s in ("centre", "random", "kmedoids", "max-distance")}
        for i in range(7)
    }
    fig = line_figure(panels, "points placed", "mean IoU", "IoU by points placed", references={"model on /very/long/path/to/dataset_0": {"zero-shot": 0.4}}, spread_label="± 1 std")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 7 and len(fig.axes) == 9  # a 3 x 3 grid, two empty cells hidden
    assert all(_bbox_overlap(box, ax.get_window_extent(renderer)) == 0 for ax in axes)
    assert [t.get_text() for t in legend.get_texts()] == ["centre", "random", "kmedoids", "max-distance", "zero-shot"]
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "model on dataset_0 (n=12)" and all("/" not in t for t in titles)
    assert fig._suptitle.get_text() == "IoU by points placed (bands: ± 1 std)"
    # the figure is no strip: at most 3 panels wide
    w, h = fig.get_size_inches()
    assert w < 13 and h > 6
    path = line_plot(panels, tmp_path / "p.png", "points placed", "mean IoU", "IoU")
    from PIL import Image

    width, _ = Image.open(path).size
    assert width < 1600


def test_tables_show_missing_values_as_a_dash_not_none():
    from segprompt.engine.report import csv_text, markdown_table, text_table

    rows = [{"a": None, "b": float("nan"), "c": 0.5}]
    for text in (markdown_table(rows, ["a", "b", "c"]), text_table(rows, ["a", "b", "c"])):
        assert "None" not in text and "nan" not in text and "\u2013" in text and "0.500" in text
    assert csv_text(rows, ["a", "b", "c"]).splitlines()[1] == ",,0.5000"


def test_python_warnings_are_one_line():
    from segprompt.logs import CliFormatter

    record = logging.LogRecord("py.warnings", logging.WARNING, "x", 1, "/a/b/tunevlseg/data.py:88: UserWarning: 3 split counts differ\n  warnings.warn(msg)\n", None, None)
    assert CliFormatter().format(record) == "warning: 3 split counts differ (UserWarning from data)"


def test_one_panel_legend_clear_of_a_long_title():
    from segprompt.engine.report import Series, line_figure

    fig = line_figure({"clipseg-tiny": {"coop": Series([1, 3, 6], [0.2, 0.3, 0.4]), "maple": Series([1, 3, 6], [0.25, 0.35, 0.3])}}, "prompt depth", "test Dice",
                      "kvasir_tunevlseg_converted: test Dice vs prompt depth", references={"clipseg-tiny": {"zeroshot": 0.1}}, spread_label="± 1 std over 3 seeds")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    title = fig._suptitle.get_window_extent(renderer)
    axes = fig.axes[0].get_window_extent(renderer)
    assert _bbox_overlap(legend, title) == 0 and _bbox_overlap(legend, axes) == 0


# ------------------------------------------------------------------------------ one name, one meaning


def _commands():
    import click

    from segprompt.cli import cli

    ctx = click.Context(cli)
    out = {}

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), path + [name])
        if path:
            out[" ".join(path)] = cmd

    walk(cli, [])
    return out


def test_option_names_mean_one_thing_across_commands():
    """Every visible single-valued option name has one type everywhere; the plural spellings are hidden aliases;
    run-writing commands take --out; device options default to the CPU."""
    import click

    seen: dict[str, tuple[str, str]] = {}
    visible: dict[str, set[str]] = {}
    for path, cmd in _commands().items():
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.hidden:
                continue
            for name in p.opts:
                if not name.startswith("--"):
                    continue
                visible.setdefault(name, set()).add(path)
                if p.multiple:  # repeatable (comma lists allowed): values are parsed by the command
                    continue
                kind = type(p.type).__name__ if not isinstance(p.type, click.types.FuncParamType) else "func"
                if name in seen:
                    assert seen[name][1] == kind, f"{name}: {kind} in '{path}' but {seen[name][1]} in '{seen[name][0]}'"
                else:
                    seen[name] = (path, kind)
                if name == "--device":
                    assert p.default in ("cpu", None), (path, p.default)
    for plural in ("--datasets", "--seeds", "--models"):
        assert plural not in visible, f"{plural} is visible in {visible.get(plural)}; the documented name is the singular"
    for name in ("--dataset", "--seed", "--limit", "--root", "--device", "--out"):
        assert len(visible[name]) >= 3, (name, visible[name])
    assert visible["--splits"] == {"data convert-tunevlseg"}  # fractions there; CV folds are --folds
    for path in ("bench pointprompt", "bench tunevlseg", "finetune sam", "finetune matrix", "demo"):
        assert path in visible["--out"]


def test_repeated_and_comma_separated_datasets_parse_the_same(tmp_path):
    import yaml

    a, b = tmp_path / "a", tmp_path / "b"
    for out, argv in ((a, ["--dataset", "synthetic-lesions", "--dataset", "synthetic-scenes"]), (b, ["--dataset", "synthetic-lesions,synthetic-scenes"])):
        assert main(["bench", "pointprompt", *argv, "--model", "grabcut", "--strategies", "centre", "--limit", "0", "--out", str(out)]) == 0
    assert yaml.safe_load((a / "config.yaml").read_text()) == yaml.safe_load((b / "config.yaml").read_text())
    assert yaml.safe_load((a / "config.yaml").read_text())["datasets"] == ["synthetic-lesions", "synthetic-scenes"]


def test_count_axes_tick_at_the_values():
    """A lone prompt depth gets one integer tick (no '0.9450.960...' run of float ticks)."""
    from segprompt.engine.report import Series, line_figure

    fig = line_figure({"clipseg-tiny": {"coop": Series([1], [0.22])}, "other": {"coop": Series([1, 3, 6, 9, 12], [0.2, 0.3, 0.4, 0.4, 0.5])},
                       "steps": {"a": Series(list(range(1, 32)), [0.5] * 31)}}, "prompt depth", "test Dice")
    fig.canvas.draw()
    def visible(ax):
        lo, hi = ax.get_xlim()
        return [t.get_text() for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= v <= hi]

    ticks = [visible(ax) for ax in fig.axes[:3]]
    assert ticks[0] == ["1"] and ticks[1] == ["1", "3", "6", "9", "12"]
    assert 3 <= len(ticks[2]) <= 10 and all(t.isdigit() for t in ticks[2])
