"""The PointPrompt study's protocol on human prompt data (olivesgatech/PointPrompt
``feature_extraction/gather_statistics.py`` and ``point_sampling/main.py``), on trajectories read
by :mod:`pointprompt.human_data` or on the rows of a benchmark run that replayed them.

* :func:`best_step_table`: per annotator and image, the best step (``sorts[0]``), its round, the
  round's length and the step's place in it, as ``gather_statistics.py``'s general-level stats.
* :func:`human_protocol` on a benchmark run's rows (human steps replayed next to automated
  strategies): best step and round per annotator; human vs automated at each annotator's best
  step (automated with its full budget, the study's comparison, and at the human's point count);
  the replayed IoU next to the recorded one. :func:`human_protocol_section` renders it as a
  report section, :func:`write_human_protocol` as CSV tables; the point benchmark's report
  (``pointprompt bench --human``) includes both.

>>> proto = human_protocol(run_rows)                       # doctest: +SKIP
>>> write_human_protocol(run_dir, proto)                   # human_*.csv  # doctest: +SKIP
>>> print(human_protocol_section(proto))                   # Markdown  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from segprompt.errors import DataError

from pointprompt.trajectory import Trajectory


HUMAN = "human"
BEST_BY = ("recorded", "replayed")

BEST_STEP_COLUMNS = [
    "dataset", "model", "image", "annotator", "n_steps", "n_rounds", "best_step", "best_round", "best_round_length", "best_step_in_round",
    "best_n_points", "best_n_inclusion", "best_n_exclusion", "recorded_iou", "replayed_iou", "best_by",
]
ANNOTATOR_COLUMNS = [
    "dataset", "model", "annotator", "images", "best_step", "best_step_in_round", "best_in_round_two", "best_round_length", "n_rounds",
    "best_n_inclusion", "best_n_exclusion", "recorded_iou", "replayed_iou",
]
COMPARISON_COLUMNS = [
    "dataset", "model", "strategy", "images", "trajectories", "human_iou", "iou_full", "points_full", "gain_full_pct",
    "iou_matched", "points_matched", "gain_matched_pct",
]
REPLAY_COLUMNS = [
    "dataset", "model", "steps", "trajectories", "recorded_iou", "replayed_iou", "mean_abs_diff", "max_abs_diff", "within_0.05", "pearson_r",
    "best_recorded_iou", "best_replayed_iou",
]
REPLAY_STEP_COLUMNS = ["dataset", "model", "image", "annotator", "step", "round", "n_points", "recorded_iou", "replayed_iou", "diff"]


def natural_key(name: str) -> list[Any]:
    """Sort key putting "st2" before "st10" and image "9" before "10" (the human-data reader orders its folders by it)."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def _mean(values: Iterable[Any]) -> float:
    """Mean of the finite values (NaN when there is none)."""
    v = np.array([_num(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _first_argmax(values: Sequence[float]) -> int:
    v = np.array([_num(x) for x in values], dtype=np.float64)
    return int(np.nanargmax(v)) if np.isfinite(v).any() else 0


def best_step_index(trajectory: Trajectory) -> int | None:
    """0-based index of a human trajectory's best step as the study takes it: the first entry of
    its ranking (the published ``sorts/<i>_sort.npy``, ``np.argsort(-score)``) when it has one,
    else the highest recorded IoU (the earliest on ties); None when nothing tells."""
    if trajectory.ranking:
        return int(trajectory.ranking[0])
    return trajectory.best_index()


def best_step_table(trajectories: Iterable[Trajectory]) -> list[dict[str, Any]]:
    """One row per human trajectory: its best step and round, as the study's general-level stats
    (``feature_extraction/gather_statistics.py``: "Best round", "Best round length", "Best
    timestamp", "Number of rounds", "Best # points").

    Columns :data:`BEST_STEP_COLUMNS` (``model`` from ``meta["model"]``, ``replayed_iou`` empty:
    the recorded data hold no replay). ``best_step`` is 1-based over the whole trajectory,
    ``best_step_in_round`` 1-based within its round (the study's 0-based "Best timestamp" + 1).
    """
    from pointprompt.features import round_stats

    out = []
    for t in trajectories:
        k = best_step_index(t)
        if k is None:
            continue
        rs = round_stats([s.round for s in t.steps], k)
        step = t.steps[k]
        out.append(
            {
                "dataset": t.dataset, "model": t.meta.get("model"), "image": t.image_id, "annotator": t.annotator, "n_steps": len(t.steps),
                **{c: rs[c] for c in ("n_rounds", "best_round", "best_round_length", "best_step_in_round")},
                "best_step": k + 1, "best_n_points": len(step.points), "best_n_inclusion": step.points.n_positive,
                "best_n_exclusion": step.points.n_negative, "recorded_iou": step.iou, "replayed_iou": None,
                "best_by": "ranking" if t.ranking else "recorded",
            }
        )
    return out


def _human_units(rows: Sequence[Mapping[str, Any]], best_by: str) -> list[dict[str, Any]]:
    """Per (dataset, model, image, annotator) trajectory of replayed human rows: the best step and its numbers."""
    from pointprompt.features import round_stats

    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("strategy") == HUMAN:
            groups.setdefault((r.get("dataset"), r.get("model"), str(r["image"]), r.get("annotator") or ""), []).append(r)
    units = []
    for (ds, model, image, annot), steps in groups.items():
        steps = sorted(steps, key=lambda r: int(r["step"]))
        recorded = [r.get("recorded_iou") for r in steps]
        by = best_by if best_by == "replayed" or all(v is not None for v in recorded) else "replayed"
        k = _first_argmax(recorded if by == "recorded" else [r.get("iou") for r in steps])
        rs = round_stats([r.get("round") for r in steps], k)
        b = steps[k]
        units.append(
            {
                "dataset": ds, "model": model, "image": image, "annotator": annot, "n_steps": len(steps),
                **{c: rs[c] for c in ("n_rounds", "best_round", "best_round_length", "best_step_in_round")},
                "best_step": int(b["step"]), "best_n_points": int(b.get("n_points", len(b.get("points") or []))),
                "best_n_inclusion": b.get("n_positive"), "best_n_exclusion": b.get("n_negative"),
                "recorded_iou": b.get("recorded_iou"), "replayed_iou": _num(b.get("iou")), "best_by": by,
            }
        )
    return units


def _automated(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, Any, Any], dict[str, list[tuple[int, int, float]]]]:
    """(dataset, model, strategy) -> image -> [(step, n_points, iou), ...] by step, automated rows only."""
    out: dict[tuple[Any, Any, Any], dict[str, list[tuple[int, int, float]]]] = {}
    for r in rows:
        if r.get("strategy") in (None, HUMAN):
            continue
        n = int(r.get("n_points", len(r.get("points") or [])))
        out.setdefault((r.get("dataset"), r.get("model"), r["strategy"]), {}).setdefault(str(r["image"]), []).append((int(r["step"]), n, _num(r.get("iou"))))
    for by_image in out.values():
        for v in by_image.values():
            v.sort()
    return out


def matched_step(steps: Sequence[tuple[int, int, float]], n_points: int) -> tuple[int, int, float]:
    """The automated step compared with a human prompt of ``n_points`` points: the last step with the
    most points not above ``n_points`` (the first step when every step has more)."""
    below = [s for s in steps if s[1] <= n_points]
    if not below:
        return steps[0]
    top = max(s[1] for s in below)
    return [s for s in below if s[1] == top][-1]


def _gain(human: float, auto: float) -> float:
    return 100.0 * (human / auto - 1.0) if auto > 0 and math.isfinite(human) and math.isfinite(auto) else float("nan")


def _comparison(units: Sequence[Mapping[str, Any]], auto: Mapping[tuple[Any, Any, Any], Mapping[str, Sequence[tuple[int, int, float]]]]) -> list[dict[str, Any]]:
    out = []
    pairs = sorted({(u["dataset"], u["model"]) for u in units}, key=str)
    for ds, model in pairs:
        mine = [u for u in units if (u["dataset"], u["model"]) == (ds, model)]
        out.append(
            {
                "dataset": ds, "model": model, "strategy": HUMAN, "images": len({u["image"] for u in mine}), "trajectories": len(mine),
                "human_iou": _mean(u["replayed_iou"] for u in mine), "points_full": _mean(u["best_n_points"] for u in mine),
            }
        )
        for (ads, amodel, strategy), by_image in auto.items():
            if (ads, amodel) != (ds, model):
                continue
            common = [u for u in mine if u["image"] in by_image]
            if not common:
                continue
            images = sorted({u["image"] for u in common})
            full = [by_image[i][-1] for i in images]
            matched = [matched_step(by_image[u["image"]], u["best_n_points"]) for u in common]
            human = _mean(u["replayed_iou"] for u in common)
            iou_full, iou_matched = _mean(s[2] for s in full), _mean(s[2] for s in matched)
            out.append(
                {
                    "dataset": ds, "model": model, "strategy": strategy, "images": len(images), "trajectories": len(common), "human_iou": human,
                    "iou_full": iou_full, "points_full": _mean(s[1] for s in full), "gain_full_pct": _gain(human, iou_full),
                    "iou_matched": iou_matched, "points_matched": _mean(s[1] for s in matched), "gain_matched_pct": _gain(human, iou_matched),
                }
            )
    return out


def _replay(rows: Sequence[Mapping[str, Any]], units: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per (dataset, model) summary, per step rows) of replayed vs recorded IoU."""
    steps = [
        {
            "dataset": r.get("dataset"), "model": r.get("model"), "image": str(r["image"]), "annotator": r.get("annotator") or "", "step": int(r["step"]),
            "round": r.get("round"), "n_points": r.get("n_points"), "recorded_iou": r.get("recorded_iou"), "replayed_iou": _num(r.get("iou")),
        }
        for r in rows
        if r.get("strategy") == HUMAN
    ]
    steps.sort(key=lambda r: (str(r["dataset"]), str(r["model"]), natural_key(r["image"]), natural_key(r["annotator"]), r["step"]))
    for r in steps:
        r["diff"] = r["replayed_iou"] - _num(r["recorded_iou"])
    summary = []
    for ds, model in sorted({(r["dataset"], r["model"]) for r in steps}, key=str):
        mine = [r for r in steps if (r["dataset"], r["model"]) == (ds, model)]
        both = [r for r in mine if math.isfinite(r["diff"])]
        diff = np.array([r["diff"] for r in both])
        rec, rep = np.array([_num(r["recorded_iou"]) for r in both]), np.array([r["replayed_iou"] for r in both])
        corr = float(np.corrcoef(rec, rep)[0, 1]) if len(both) >= 2 and rec.std() > 0 and rep.std() > 0 else float("nan")
        best = [u for u in units if (u["dataset"], u["model"]) == (ds, model)]
        summary.append(
            {
                "dataset": ds, "model": model, "steps": len(mine), "trajectories": len({(r["image"], r["annotator"]) for r in mine}),
                "recorded_iou": _mean(rec), "replayed_iou": _mean(r["replayed_iou"] for r in mine),
                "mean_abs_diff": float(np.abs(diff).mean()) if len(diff) else float("nan"),
                "max_abs_diff": float(np.abs(diff).max()) if len(diff) else float("nan"),
                # 1e-9: |0.45 - 0.5| is 0.05000000000000002 in floats
                "within_0.05": float((np.abs(diff) <= 0.05 + 1e-9).mean()) if len(diff) else float("nan"), "pearson_r": corr,
                "best_recorded_iou": _mean(u["recorded_iou"] for u in best), "best_replayed_iou": _mean(u["replayed_iou"] for u in best),
            }
        )
    return summary, steps


def _annotators(units: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(u["dataset"], u["model"], u["annotator"]) for u in units}, key=lambda k: (str(k[0]), str(k[1]), natural_key(k[2])))
    for ds, model, annot in keys:
        mine = [u for u in units if (u["dataset"], u["model"], u["annotator"]) == (ds, model, annot)]
        out.append(
            {
                "dataset": ds, "model": model, "annotator": annot, "images": len(mine),
                **{c: _mean(u[c] for u in mine) for c in ("best_step", "best_step_in_round", "best_round_length", "n_rounds", "best_n_inclusion", "best_n_exclusion", "recorded_iou", "replayed_iou")},
                "best_in_round_two": _mean(u["best_round"] for u in mine),
            }
        )
    return out


def human_protocol(rows: Iterable[Mapping[str, Any]], best_by: str = "recorded") -> dict[str, Any]:
    """The study's human-data protocol on benchmark results rows (``results.jsonl`` of a run with
    recorded human prompts replayed: rows with ``strategy == "human"``, ``annotator``, ``round``,
    ``recorded_iou`` and the replayed ``iou``; automated rows of the same images).

    * **best step per annotator**: on each image, each annotator's best step is the one with the
      highest recorded IoU (``best_by="recorded"``, the study's ``sorts[0]``; the earliest on ties;
      trajectories without recorded IoUs fall back to the replayed IoU) or the highest replayed
      IoU (``best_by="replayed"``); with its round, the round's length and its place in the round
      (``best_step_table`` does the same on :class:`Trajectory` objects);
    * **human vs automated**: the human prompt is the annotator's best step, scored by the replayed
      IoU; each automated strategy is scored on the same images (a) with its full point budget
      (its last step: the study ran each strategy once with the per-dataset budget taken from the
      humans' best steps, ``point_sampling/main.py``) and (b) at the annotator's best-step point
      count (:func:`matched_step`); ``gain_*_pct`` = 100 (human / automated - 1), the study's
      "humans score X % higher";
    * **replay**: the replayed IoU next to the recorded one, per step and summarised.

    Returns ``{"best_by", "best_steps" (per trajectory, :data:`BEST_STEP_COLUMNS`), "annotators"
    (:data:`ANNOTATOR_COLUMNS`), "comparison" (:data:`COMPARISON_COLUMNS`), "replay"
    (:data:`REPLAY_COLUMNS`), "replay_steps" (:data:`REPLAY_STEP_COLUMNS`)}``; empty lists
    without human rows.
    """
    if best_by not in BEST_BY:
        raise DataError(f"best_by must be one of {BEST_BY}, got {best_by!r}")
    rows = list(rows)
    units = _human_units(rows, best_by)
    units.sort(key=lambda u: (str(u["dataset"]), str(u["model"]), natural_key(u["annotator"]), natural_key(u["image"])))
    replay, replay_steps = _replay(rows, units)
    return {
        "best_by": best_by,
        "best_steps": units,
        "annotators": _annotators(units),
        "comparison": _comparison(units, _automated(rows)),
        "replay": replay,
        "replay_steps": replay_steps,
    }


HUMAN_PROTOCOL_FILES = {
    "best_steps": ("human_best_steps.csv", BEST_STEP_COLUMNS),
    "annotators": ("human_annotators.csv", ANNOTATOR_COLUMNS),
    "comparison": ("human_vs_automated.csv", COMPARISON_COLUMNS),
    "replay_steps": ("human_replay.csv", REPLAY_STEP_COLUMNS),
}


def write_human_protocol(out_dir: str | Path, protocol: Mapping[str, Any]) -> list[Path]:
    """Write the tables of :func:`human_protocol` as CSV files into ``out_dir``
    (:data:`HUMAN_PROTOCOL_FILES`); nothing without human rows. Returns the paths written."""
    from segprompt.engine.report import write_csv

    if not protocol.get("best_steps"):
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [write_csv(out / name, protocol[key], columns) for key, (name, columns) in HUMAN_PROTOCOL_FILES.items()]


def human_protocol_section(protocol: Mapping[str, Any]) -> str:
    """The report section (Markdown) of :func:`human_protocol`; an empty string without human rows."""
    from segprompt.engine.report import markdown_table

    if not protocol.get("best_steps"):
        return ""
    by = "highest recorded IoU (the study's ranking)" if protocol["best_by"] == "recorded" else "highest replayed IoU"
    cmp_cols = COMPARISON_COLUMNS[2:] if len({(r["dataset"], r["model"]) for r in protocol["comparison"]}) == 1 else COMPARISON_COLUMNS
    lines = [
        "## Human prompts: the study's protocol",
        "",
        f"Each annotator's best step on an image is the step with the {by}; the earliest on ties. "
        "Steps are 1-based; `best_step_in_round` counts within the best step's round (the study's \"Best timestamp\" + 1); "
        "`best_in_round_two` is the share of images whose best step is in the second round. "
        "Files: human_best_steps.csv (one row per annotator and image), human_annotators.csv, human_vs_automated.csv, human_replay.csv.",
        "",
        "### Best step per annotator",
        "",
        markdown_table(protocol["annotators"], ANNOTATOR_COLUMNS),
        "",
        "### Human vs automated at each annotator's best step",
        "",
        "`human_iou`: mean replayed IoU of the annotators' best steps on the images the strategy also ran on. "
        "`iou_full`: the strategy's mean IoU with its full point budget (its last step; the study's comparison); "
        "`iou_matched`: its IoU on the same image at the annotator's best-step point count (the last step with at most "
        "that many points). `gain_*_pct` = 100 (human / automated - 1).",
        "",
        markdown_table(protocol["comparison"], cmp_cols),
        "",
        "### Replayed vs recorded IoU",
        "",
        "The recorded IoU is what the annotator saw (SAM vit_h, first multimask output, in the study); the replayed IoU is "
        "this run's model on the same points. `within_0.05`: share of steps whose two IoUs differ by at most 0.05. "
        "Per step: human_replay.csv.",
        "",
        markdown_table(protocol["replay"], REPLAY_COLUMNS),
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "HUMAN",
    "BEST_BY",
    "BEST_STEP_COLUMNS",
    "ANNOTATOR_COLUMNS",
    "COMPARISON_COLUMNS",
    "REPLAY_COLUMNS",
    "REPLAY_STEP_COLUMNS",
    "HUMAN_PROTOCOL_FILES",
    "best_step_index",
    "best_step_table",
    "matched_step",
    "human_protocol",
    "human_protocol_section",
    "write_human_protocol",
]
