"""``segprompt bench sot``: rows, resume, references, summary over seeds, both merges, oracle, CLI, report."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from segprompt.sot.bench import SotBenchConfig, default_method_factory, run_sot
from segprompt.sot.methods import SotMethod

WORDS = ("disc", "star", "ring", "square", "triangle", "cross", "crescent", "leaf")
SMALL = dict(dataset_kwargs={"synthetic-objects": {"size": 64}}, synthetic_train=10, synthetic_eval=4, size="original")


@pytest.fixture(scope="module")
def universal_file(tmp_path_factory):
    """A tiny random universal model (the words of synthetic-objects) saved as a universal file."""
    from segprompt.universal.checkpoint import save_universal
    from segprompt.universal.config import UniversalConfig
    from segprompt.universal.model import UniversalModel

    torch.manual_seed(0)
    cfg = UniversalConfig(
        backbone="sam-tiny", backbone_kwargs={"out_channels": 32}, words=WORDS, hidden_dim=32, mask_dim=32,
        embed_dim=16, num_queries=4, dec_layers=3, dim_feedforward=64,
    )  # fmt: skip
    return save_universal(UniversalModel(cfg), tmp_path_factory.mktemp("universal") / "u.safetensors")


@pytest.fixture
def tiny(universal_file, monkeypatch):
    monkeypatch.setattr("segprompt.models.universal.universal_tiny_path", lambda: universal_file)
    return universal_file


def _rows(out, name="results.jsonl"):
    return [json.loads(line) for line in (out / name).read_text().splitlines() if line.strip()]


def _spy_factory(cfg, calls):
    """The default methods, with every maps / prepare call counted."""
    make = default_method_factory(cfg)

    def build(name):
        m = make(name)
        maps, prepare = m.maps, m.prepare
        m.maps = lambda image, prompts: calls.append(("maps", name)) or maps(image, prompts)
        m.prepare = lambda prompts: calls.append(("prepare", name)) or prepare(prompts)
        calls.append(("build", name))
        return m

    return build


def _miou(conf, has_background):
    """SoT's mIoU, re-implemented: IoU over classes with ground truth, the first such class (background) left out."""
    m = np.asarray(conf, float)
    tp, gt, pr = np.diag(m), m.sum(1), m.sum(0)
    present = np.flatnonzero(gt > 0)
    ious = [tp[c] / (gt[c] + pr[c] - tp[c]) for c in present]
    return float(np.mean(ious[1:] if has_background else ious))


def test_rows_references_and_resume_without_recomputing(tiny, tmp_path):
    """One row per (dataset, method, shots, seed, image) with reference ids that are never an
    evaluated or validation image; a rerun recomputes nothing; a cut run recomputes only its
    missing rows and ends with the same summary."""
    cfg = SotBenchConfig(methods=["universal-text", "universal-reference"], shots=[1], seeds=[0, 1], limit=2, **SMALL)
    out = tmp_path / "run"
    calls: list = []
    summary = run_sot(cfg, out, method_factory=_spy_factory(cfg, calls), progress=False)
    rows = _rows(out)
    names = ["universal-text", "universal-reference", "oracle:universal-text+universal-reference"]
    keys = sorted((r["method"], r["seed"], r["image"]) for r in rows)
    assert keys == sorted((m, s, i) for m in names for s in (0, 1) for i in ("objects_2024_00000", "objects_2024_00001"))
    cal = _rows(out, "calibration.jsonl")
    assert sorted((c["method"], c["seed"]) for c in cal) == sorted((m, s) for m in names[:2] for s in (0, 1))
    val_ids = {i for c in cal for i in c["val_ids"]}
    assert val_ids == {"objects_0_00008", "objects_0_00009"}  # the last 20 % of the 10 training scenes
    evaluated = {r["image"] for r in rows}
    for r in rows:
        assert len(r["confusion_sot"]) == len(r["confusion_cal"]) == 9 and r["forward_passes"] >= 2 and r["seconds"] > 0
        drawn = [i for ids in r["reference_ids"].values() for i in ids]
        assert not set(drawn) & (evaluated | val_ids | {r["image"]})
        if r["modality"] != "text":
            assert drawn and all(len(ids) == 1 for ids in r["reference_ids"].values())
    # rerun: nothing built, nothing computed, the same rows
    before = (out / "results.jsonl").read_text()
    calls2: list = []
    again = run_sot(cfg, out, method_factory=_spy_factory(cfg, calls2), progress=False)
    assert calls2 == [] and (out / "results.jsonl").read_text() == before
    assert [r["new_rows"] for r in _rows(out, "invocations.jsonl")] == [12, 0]
    # a run killed after 9 rows: only the missing images are recomputed, calibrations are reused
    lines = before.splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:9]) + lines[9][:20])  # a torn last line too
    calls3: list = []
    resumed = run_sot(cfg, out, method_factory=_spy_factory(cfg, calls3), progress=False)
    # rows go out image by image (text, reference, oracle): the 3 rows of seed 1's second image are missing
    assert {(r["seed"], r["image"]) for r in map(json.loads, lines[9:])} == {(1, "objects_2024_00001")}
    assert sorted(c for c in calls3 if c[0] != "build") == [
        ("maps", "universal-reference"), ("maps", "universal-text"), ("prepare", "universal-reference"), ("prepare", "universal-text"),
    ]  # fmt: skip
    assert len(_rows(out)) == 12 and len(_rows(out, "calibration.jsonl")) == 4 and not (out / "errors.jsonl").exists()
    strip = lambda t: [{k: v for k, v in r.items() if k not in ("s_per_image", "prepare_s", "passes_per_image")} for r in t]  # noqa: E731
    assert strip(resumed["table"]) == strip(summary["table"]) == strip(again["table"])


class _Fake(SotMethod):
    """Maps from the ground truth: 0.9 on the pixels of the classes it knows, 0.1 elsewhere,
    and at least 0.3 everywhere for class ``fuzzy`` (above SoT's 0.2 only)."""

    def __init__(self, name, modality, knows, truth, fuzzy=None):
        super().__init__(None)
        self.name, self.modality, self.knows, self.truth, self.fuzzy = name, modality, set(knows), truth, fuzzy

    def _maps(self, image, prompts, cost):
        labels = self.truth[image.tobytes()]
        out = np.full((len(prompts), *labels.shape), 0.1, np.float32)
        for k, p in enumerate(prompts):
            c = WORDS.index(p.name) + 1
            if p.name in self.knows:
                out[k][labels == c] = 0.9
            if p.name == self.fuzzy:
                out[k] = np.maximum(out[k], 0.3)
        cost.encoder_passes += 1
        return out, {}


@pytest.fixture(scope="module")
def truth():
    from segprompt.data import load_dataset

    table = {}
    for seed, n in ((0, 10), (2024, 4)):
        for s in load_dataset("synthetic-objects", n=n, seed=seed, size=64):
            table[s.image.tobytes()] = s.mask
    return table


def test_both_merges_summary_over_seeds_and_oracle(truth, tmp_path):
    """Rows hold the confusion of SoT's merge and of the calibrated merge (checked against a
    re-implementation of both rules); the summary's mean / std / worst over 2 seeds are those of
    the pooled per-seed mIoU; the oracle takes per class the method that was better on validation."""
    from segprompt.data import load_dataset
    from segprompt.sot.methods import ClassPrompt, Cost

    text_knows, visual_knows = WORDS[:4], WORDS[4:]
    methods = {
        "universal-text": lambda: _Fake("universal-text", "text", text_knows, truth, fuzzy="leaf"),
        "universal-reference": lambda: _Fake("universal-reference", "visual", visual_knows, truth),
    }
    cfg = SotBenchConfig(methods=list(methods), shots=[1], seeds=[0, 1], calibration={"fit": "both"}, **SMALL)
    out = tmp_path / "run"
    summary = run_sot(cfg, out, method_factory=lambda name: methods[name](), progress=False)
    rows, cal = _rows(out), {(c["method"], c["seed"]): c for c in _rows(out, "calibration.jsonl")}
    assert len(rows) == 3 * 2 * 4
    # both merges, recomputed here from the fake's maps
    evaluated = {s.id: s for s in load_dataset("synthetic-objects", n=4, seed=2024, size=64)}
    prompts = [ClassPrompt(w) for w in WORDS]
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    for r in rows:
        if r["modality"] == "oracle":
            continue
        sample = evaluated[r["image"]]
        maps = methods[r["method"]]()._maps(sample.image, prompts, Cost())[0]
        fixed = np.argmax(np.concatenate([np.zeros((1, *maps.shape[1:])), np.where(maps > 0.2, maps, 0)]), 0)
        c = cal[(r["method"], r["seed"])]
        t, thr = c["temperature"][0], c["threshold"][0]
        calibrated = np.argmax(np.concatenate([np.zeros((1, *maps.shape[1:])), (logit(maps.astype(np.float64)) - logit(thr)) / t]), 0)
        assert r["confusion_sot"] == _conf(fixed, sample.mask), r["method"]
        assert r["confusion_cal"] == _conf(calibrated, sample.mask), r["method"]
    # the calibration was fitted on the right labels: for the fuzzy text method (0.3 everywhere for
    # "leaf") the threshold moves above 0.3, the NLL drops and the calibrated merge fixes the background
    c0 = cal[("universal-text", 0)]
    assert c0["nll_after"] < c0["nll_before"] and 0.3 < c0["threshold"][0] < 0.9
    # (background, painted "leaf" by SoT's merge, is background again: mIoU leaves it out, its IoU shows it)
    bg = next(p for p in summary["per_class"] if p["method"] == "universal-text" and p["class"] == "background")
    assert bg["iou_sot"] < 0.2 and bg["iou_cal"] > 0.7
    # summary: pooled per seed, then mean / std (ddof 1) / worst over the 2 seeds
    for t in summary["table"]:
        for merge in ("sot", "cal"):
            per_seed = []
            for seed in (0, 1):
                rs = [r for r in rows if r["method"] == t["method"] and r["seed"] == seed]
                per_seed.append(_miou(sum(np.asarray(r[f"confusion_{merge}"]) for r in rs), True))
            assert t[f"miou_{merge}"] == pytest.approx(np.mean(per_seed))
            assert t[f"miou_{merge}_std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
            assert t[f"miou_{merge}_worst"] == pytest.approx(min(per_seed))
        assert t["seeds"] == 2 and t["images"] == 4
    # oracle: text where it knows the class, visual elsewhere -> every class right
    oracle = [r for r in rows if r["modality"] == "oracle"]
    assert oracle and all(set(r["visual_classes_sot"]) <= set(visual_knows) for r in oracle)
    by = {t["method"]: t for t in summary["table"]}
    assert by["oracle:universal-text+universal-reference"]["miou_sot"] > max(by["universal-text"]["miou_sot"], by["universal-reference"]["miou_sot"])
    gain = [g for g in summary["oracle"] if g["merge"] == "sot"][0]
    assert gain["gain"] > 0 and gain["seeds"] == 2
    # the bound: per class the better method's IoU on the evaluated images, mean over the
    # non-background classes with ground truth, per seed, then averaged over seeds
    def per_class_iou(method, seed):
        m = np.asarray(sum(np.asarray(r["confusion_sot"]) for r in rows if r["method"] == method and r["seed"] == seed), float)
        tp, gt, pr = np.diag(m), m.sum(1), m.sum(0)
        return np.where(gt > 0, tp / np.maximum(gt + pr - tp, 1), np.nan)

    bounds = [np.nanmean(np.fmax(per_class_iou("universal-text", s), per_class_iou("universal-reference", s))[1:]) for s in (0, 1)]
    assert gain["bound"] == pytest.approx(np.mean(bounds))
    assert gain["bound"] >= gain["best_of_pair"] and gain["bound_gain"] == pytest.approx(gain["bound"] - gain["best_of_pair"])
    report = (out / "report.md").read_text()
    assert "SoT merge (fixed 0.2)" in report and "calibrated merge" in report and "## Oracle" in report


def test_miou_calibration_fixes_what_the_fixed_threshold_paints(truth, tmp_path):
    """The default calibration, {"fit": "miou"}: the threshold is the validation-mIoU optimum (0.35 for a text
    method that is 0.3 off the leaves and 0.9 on them: the grid value nearest 0.2 that sends the rest
    of the image to background)."""
    method = lambda: _Fake("universal-text", "text", WORDS, truth, fuzzy="leaf")  # noqa: E731
    cfg = SotBenchConfig(methods=["universal-text"], shots=[1], seeds=[0], **SMALL)  # miou is the default
    summary = run_sot(cfg, tmp_path / "run", method_factory=lambda name: method(), progress=False)
    (c,) = _rows(tmp_path / "run", "calibration.jsonl")
    # (the maps are float32: 0.3 is a hair above 0.3, so the grid's 0.35 is the first to separate)
    assert c["fit"] == "threshold-miou" and c["threshold"] == [pytest.approx(0.35)] and c["temperature"] == [1.0]
    (t,) = summary["table"]
    assert t["miou_cal"] > t["miou_sot"] + 0.05
    assert "maximises the validation mIoU" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(Exception, match="calibration fit must be one of"):
        SotBenchConfig(calibration={"fit": "f1"})


def _conf(pred, target, n=9):
    return np.bincount(target.ravel() * n + pred.ravel(), minlength=n * n).reshape(n, n).tolist()


def test_cli_end_to_end_with_report_and_plot(tiny, tmp_path):
    """`segprompt bench sot` on synthetic-objects with the three methods, tiny sizes: rows, report.md
    with the variance plot, and a rerun that computes nothing."""
    from click.testing import CliRunner

    from segprompt.cli import cli

    config = tmp_path / "small.yaml"
    config.write_text("dataset_kwargs: {synthetic-objects: {size: 64}}\nsynthetic_train: 10\nsynthetic_eval: 2\n")
    out = tmp_path / "run"
    args = [
        "bench", "sot", "--dataset", "synthetic-objects", "--methods", "universal-text,universal-reference,persam",
        "--shots", "1", "--seed", "0,1", "--limit", "2", "--size", "64", "--config", str(config), "--out", str(out),
        "--calibration", "nll",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert len(rows) == 2 * 2 * 5  # images x seeds x (3 methods + 2 oracles)
    assert {c["fit"] for c in _rows(out, "calibration.jsonl")} == {"both"}
    assert {r["method"] for r in rows} >= {"persam", "oracle:universal-text+persam"}
    report = (out / "report.md").read_text()
    assert "![mIoU per seed](variance.png)" in report and (out / "variance.png").stat().st_size > 1000
    assert "| persam" in report and "## Cost" in report and "Not built yet" not in report
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("dataset,method,modality,shots,seeds") and len(summary) == 6
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "nothing new computed" in again.output and len(_rows(out)) == len(rows)


def test_methods_follow_their_rules(tiny):
    """universal-text: the mask of the best candidate is the map above 0.5; universal-reference:
    k references give the mean of the k one-reference maps ("first" keeps the first); persam: its
    ShowOrTell map clipped to [0, 1]; the cost counts the passes."""
    from segprompt.data import load_dataset
    from segprompt.prompts import PromptSet, Reference, Text
    from segprompt.sot.methods import ClassPrompt, create_method

    scenes = load_dataset("synthetic-objects", n=4, seed=0, size=64)
    target = scenes[0].image
    ref = [(scenes[i].image, scenes[i].mask == c) for i, c in ((1, 2), (2, 1))]
    text = create_method("universal-text")
    out = text.maps(target, [ClassPrompt("disc"), ClassPrompt("star"), ClassPrompt("unknownword")])
    seg = text.segmenter
    want = seg.segment(seg.encode(target), [PromptSet(text=Text("disc")), PromptSet(text=Text("star"))], multimask="single").masks[:, 0]
    assert out.maps.shape == (3, 64, 64) and out.maps.dtype == np.float32
    assert np.mean((out.maps[:2] > 0.5) == want) > 0.999 and not out.maps[2].any() and list(out.failed) == [2]
    assert (out.cost.encoder_passes, out.cost.decoder_calls) == (1, 1)
    visual = create_method("universal-reference", segmenter=seg)
    both = visual.maps(target, [ClassPrompt("x", tuple(ref))])
    one = [visual.maps(target, [ClassPrompt("x", (r,))]).maps[0] for r in ref]
    np.testing.assert_allclose(both.maps[0], (one[0] + one[1]) / 2, atol=1e-6)
    assert both.cost.encoder_passes == 3 and both.cost.forward_passes == 4
    first = create_method("universal-reference", segmenter=seg, reference_mode="first").maps(target, [ClassPrompt("x", tuple(ref))])
    np.testing.assert_allclose(first.maps[0], one[0], atol=1e-6)
    persam = create_method("persam")
    assert persam.prepare([ClassPrompt("x", tuple(ref))]).encoder_passes == 2
    got = persam.maps(target, [ClassPrompt("x", tuple(ref))])
    p = persam.segmenter
    direct = p.probability(p.encode(target), [Reference(i, m) for i, m in ref], kind="sot")
    np.testing.assert_allclose(got.maps[0], np.clip(direct, 0, 1))
    assert (got.cost.encoder_passes, got.cost.decoder_calls) == (1, 3)  # references cached by prepare; 3 decoder passes


def test_config_errors_are_clear():
    from segprompt.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown SoT method 'clipsek'"):
        SotBenchConfig(methods=["clipsek"])
    with pytest.raises(ConfigError, match="segmenters.*mapping"):
        SotBenchConfig(methods=["clipseg"], segmenters={"clipseg": "clipseg-tiny"})
    with pytest.raises(ConfigError, match="size"):
        SotBenchConfig(size="big")


@pytest.mark.realdata
@pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT is not set (the real sample data)")
def test_camvid_parts_never_draw_an_evaluated_image(tmp_path):
    """CamVid has no split: the first 30 sorted images are the pool (24 references, 6 validation),
    the last 10 evaluated; reference ids never include an evaluated or validation image."""
    from segprompt.data import load_dataset
    from segprompt.sot.bench import _references, build_parts

    cfg = SotBenchConfig(datasets=["camvid"], methods=["persam"], shots=[5], seeds=[0], size=64)
    parts = build_parts(cfg, "camvid")
    ids = sorted(load_dataset("camvid").ids)
    assert [parts.test.ids[p] for p in parts.test_pos] == ids[30:]
    assert [parts.val.ids[p] for p in parts.val_pos] == ids[24:30]
    assert not parts.has_background and len(parts.labels) == 11 and parts.prompted == list(range(11))
    refs, ref_ids, failed = _references(parts, 5, 0, cfg.size)
    drawn = {i for v in ref_ids.values() for i in v}
    assert drawn and drawn <= set(ids[:24])
    assert all(img.shape == (64, 64, 3) and m.shape == (64, 64) for v in refs.values() for img, m in v)
    assert set(failed) | set(ref_ids) == set(range(11))


def test_voc_layout_uses_official_splits_and_prompts_background_as_sot(tmp_path):
    """A registered dataset with train / val lists (a fake VOC folder): references and validation from
    train, evaluation on val; SoT's VOC prompts background as a class (no threshold, in the mean);
    the minimum area is VOC's 10 %."""
    from PIL import Image

    from segprompt.sot.bench import build_parts

    base = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    ids = [f"2007_{i:06d}" for i in range(10)]
    for i, vid in enumerate(ids):
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{vid}.jpg")
        lab = np.zeros((16, 24), np.uint8)
        lab[:, 8:16] = 8 if i % 2 else 12  # cat or dog, a third of the image
        lab[0, 0] = 1 if i == 3 else 0  # an aeroplane of 1 pixel: below VOC's 10 %, never a reference
        Image.fromarray(lab, mode="L").save(base / "SegmentationClass" / f"{vid}.png")
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:8]) + "\n")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[8:]) + "\n")
    cfg = SotBenchConfig(datasets=["pascal_voc"], dataset_kwargs={"pascal_voc": {"root": str(tmp_path)}}, methods=["universal-reference"], shots=[1], seeds=[0])
    parts = build_parts(cfg, "pascal_voc")
    assert parts.min_area == pytest.approx(0.10) and not parts.has_background and parts.labels[0] == "background"
    assert parts.prompted == list(range(21))  # background is prompted too
    assert [parts.test.ids[p] for p in parts.test_pos] == ids[8:]
    assert {parts.val.ids[p] for p in parts.val_pos} <= set(ids[:8]) and parts.exclude == {parts.val.ids[p] for p in parts.val_pos}
    from segprompt.sot.bench import _references

    refs, ref_ids, failed = _references(parts, 1, 0, "original")
    drawn = {i for v in ref_ids.values() for i in v}
    assert drawn and drawn.isdisjoint(parts.exclude) and drawn <= set(ids[:8])
    assert 1 in failed and 8 in refs and 12 in refs  # the 1-pixel aeroplane fails the area rule


def test_every_new_method_runs_in_the_bench_on_tiny_models(tmp_path):
    """clipseg and clipseg-visual on the random tiny CLIPSeg (``--segmenter clipseg=clipseg-tiny``),
    prototype on sam-tiny features, maskclip on a tiny random open_clip: rows for every method, the
    visual ones with reference ids, costs counted, a text method's rows without references."""
    from click.testing import CliRunner

    from segprompt.cli import cli
    from segprompt.models.maskclip import MaskClipSegmenter
    from segprompt.sot.methods import create_method
    from tunevlseg.models import tiny_openclip_model

    model, tok = tiny_openclip_model(seed=0, image_size=32, patch_size=8, width=32, layers=2)
    maskclip = MaskClipSegmenter(model=model.eval(), tokenizer=tok, templates="single")
    cfg = SotBenchConfig(
        methods=["clipseg", "clipseg-visual", "prototype", "maskclip"], segmenters={"clipseg": {"name": "clipseg-tiny"}, "clipseg-visual": {"name": "clipseg-tiny"}},
        shots=[1], seeds=[0], limit=2, oracle=False, **{**SMALL, "synthetic_train": 8},
    )  # fmt: skip
    default = default_method_factory(cfg)
    factory = lambda name: create_method(name, segmenter=maskclip) if name == "maskclip" else default(name)  # noqa: E731
    summary = run_sot(cfg, tmp_path / "run", method_factory=factory, progress=False)
    rows = _rows(tmp_path / "run")
    assert sorted({r["method"] for r in rows}) == sorted(cfg.methods) and len(rows) == 4 * 2
    for r in rows:
        assert (r["modality"] == "visual") == bool(r["reference_ids"]), r["method"]
        assert r["encoder_passes"] >= 1 and r["decoder_calls"] >= (0 if r["method"] == "maskclip" else 1)
    assert {t["method"] for t in summary["table"]} == set(cfg.methods)
    # the CLI's --segmenter reaches the same place
    result = CliRunner().invoke(cli, ["bench", "sot", "--methods", "clipseg", "--segmenter", "clipseg=clipseg-tiny", "--shots", "1", "--seed", "0",
                                      "--limit", "1", "--size", "64", "--no-oracle", "--out", str(tmp_path / "cli")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [r["method"] for r in _rows(tmp_path / "cli")] == ["clipseg"]
    bad = CliRunner().invoke(cli, ["bench", "sot", "--segmenter", "clipseg", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "METHOD=NAME" in bad.output + str(bad.exception)
