"""Tables and plots for run reports: CSV, Markdown tables, line plots (matplotlib, Agg)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from segprompt.fileio import atomic_path, atomic_write_text


#: how a missing value (None, NaN) is shown in Markdown and terminal tables
MISSING = "\u2013"


def _fmt(value: Any, floatfmt: str, missing: str = "") -> str:
    """A cell: floats with ``floatfmt``, None and NaN as ``missing`` (never a literal ``None``)."""
    if value is None:
        return missing
    if isinstance(value, float):
        return missing if math.isnan(value) else format(value, floatfmt)
    return str(value)


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``3 epochs``, ``0 epochs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_lr(value: Any, missing: str = MISSING) -> str:
    """A learning rate as ``2e-04`` / ``1.5e-04`` (never ``0.0000``; ``0`` at the end of a cosine
    schedule); None or NaN as ``missing``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    value = float(value)
    if value == 0:
        return "0"
    mantissa, exp = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exp}"


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], floatfmt: str = ".4f") -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c), floatfmt) for c in columns])
    return buf.getvalue()


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], floatfmt: str = ".4f") -> Path:
    return atomic_write_text(path, csv_text(rows, columns, floatfmt))


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], floatfmt: str = ".3f", headers: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` restricted to ``columns``."""
    headers = list(headers or columns)
    cells = [[_fmt(r.get(c), floatfmt, MISSING) for c in columns] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out)


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """A plain aligned table for terminals."""
    cells = [[_fmt(r.get(c), floatfmt, MISSING) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


@dataclass
class Series:
    """One line of a :func:`line_plot` panel.

    ``spread``: half-width of a band drawn around ``ys`` (e.g. a std or a 95 % CI half-width);
    ``n``: the number of values behind each point (an int for all, or one per point), shown in
    the legend as ``n=...``.
    """

    xs: Sequence[float]
    ys: Sequence[float]
    spread: Sequence[float] | None = None
    n: int | Sequence[int] | None = None


def curve_panels(
    rows: Iterable[Mapping[str, Any]], panel: Callable[[Mapping[str, Any]], str], line: str, x: str, y: str = "iou", spread: str = "iou_std"
) -> dict[str, dict[str, Series]]:
    """Curve rows -> ``{panel title: {line name: Series}}`` for :func:`line_plot`, in row order.

    ``panel(row)`` names a row's panel; ``row[line]`` its line; ``x``, ``y`` and ``spread`` are the
    row keys of the point, its value and its band's half-width; ``row["n"]`` is its count.
    """
    panels: dict[str, dict[str, Series]] = {}
    for r in rows:
        s = panels.setdefault(panel(r), {}).setdefault(r[line], Series([], [], [], []))
        s.xs.append(r[x])  # type: ignore[attr-defined]
        s.ys.append(r[y])  # type: ignore[attr-defined]
        s.spread.append(r[spread])  # type: ignore[union-attr]
        s.n.append(r["n"])  # type: ignore[union-attr]
    return panels


def short_name(name: str | Path, width: int = 32) -> str:
    """A title-sized name: every path in ``name`` replaced by its last part, cut to ``width``
    characters with an ellipsis (``"sam on /data/sets/kvasir_seg"`` -> ``"sam on kvasir_seg"``)."""
    words = [Path(w.rstrip("/\\")).name or w if ("/" in w or "\\" in w) else w for w in str(name).split(" ")]
    text = " ".join(words)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def panel_grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) of a grid holding ``n`` panels, at most ``max_cols`` wide."""
    cols = max(1, min(n, max_cols))
    return math.ceil(max(n, 1) / cols), cols


def place_legend(fig: Any, axes: Sequence[Any], **kwargs: Any) -> Any:
    """One legend for the whole figure, to the right of the axes, so that it covers no data.

    Collects each labelled artist once (first occurrence) from ``axes``. Returns the legend
    (None when nothing is labelled). Save the figure with ``bbox_inches="tight"`` to keep it.
    """
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    if not handles:
        return None
    # beside the top of the highest axes, right of the rightmost one: clear of data and of a suptitle
    right = max(ax.get_position().x1 for ax in axes)
    top = max(ax.get_position().y1 for ax in axes)
    opts = {"loc": "upper left", "bbox_to_anchor": (right + 0.01, top), "fontsize": 8, "frameon": False, "borderaxespad": 0.0}
    opts.update(kwargs)
    return fig.legend(handles, labels, **opts)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` atomically as PNG (tight box, so an outside legend is kept) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def line_figure(
    panels: Mapping[str, Mapping[str, Series | tuple[Sequence[float], Sequence[float]]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = (0.0, 1.0),
    references: Mapping[str, Mapping[str, float]] | None = None,
    spread_label: str | None = None,
    max_cols: int = 3,
) -> Any:
    """The figure of :func:`line_plot` (not saved): panels in a grid, one legend outside the axes.

    ``panels``: ``{panel title: {series label: Series or (xs, ys)}}``; panel titles are cut with
    :func:`short_name` and end with the series' ``n`` (``n=12``, or a range). ``references``: ``{panel title: {label: y}}`` dashed horizontal lines
    (e.g. a zero-shot score), labelled in the legend. ``spread_label``: what the bands are
    (``"± 1 std"``), added to the title.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(panels) or [""]
    rows, cols = panel_grid(len(names), max_cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols, 3.1 * rows + 0.5), squeeze=False, sharey=True)
    flat = [ax for row in axes for ax in row]
    colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    labels_seen: dict[str, str] = {}
    for ax, panel in zip(flat, names):
        ns: list[int] = []
        all_xs: set[float] = set()
        for label, series in (panels.get(panel) or {}).items():
            if not isinstance(series, Series):
                series = Series(*series)
            colour = labels_seen.setdefault(label, colours[len(labels_seen) % len(colours)])
            if series.n is not None:
                ns += [int(v) for v in (series.n if isinstance(series.n, Sequence) else [series.n])]
            xs, ys = list(series.xs), list(series.ys)
            all_xs.update(float(x) for x in xs)
            ax.plot(xs, ys, marker="o", markersize=3, color=colour, label=label)
            if series.spread is not None:
                sp = [float(v) for v in series.spread]
                ax.fill_between(xs, [y - s for y, s in zip(ys, sp)], [y + s for y, s in zip(ys, sp)], color=colour, alpha=0.15, linewidth=0)
        for j, (label, y) in enumerate((references or {}).get(panel, {}).items()):
            ax.axhline(float(y), color="0.3", linestyle=("--", ":", "-.")[j % 3], linewidth=1.1, label=label)
        n_text = "" if not ns else f" (n={min(ns)})" if min(ns) == max(ns) else f" (n={min(ns)}-{max(ns)})"
        ax.set_title(short_name(panel) + n_text, fontsize=10)
        _integer_ticks(ax, sorted(all_xs), matplotlib.ticker)
        ax.set_xlabel(xlabel)
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    for ax in flat[len(names):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(ylabel)
    full_title = title + (f" (bands: {spread_label})" if spread_label else "")
    if full_title:
        fig.suptitle(full_title)
    fig.tight_layout()
    place_legend(fig, flat[: len(names)])
    return fig


def _integer_ticks(ax: Any, xs: Sequence[float], ticker: Any) -> None:
    """x ticks for counts (points, depths, epochs): the values themselves when they are few
    integers (a lone value gets room on both sides), else at most ~8 integer ticks."""
    if xs and all(float(x).is_integer() for x in xs) and len(xs) <= 12:
        ax.set_xticks([int(x) for x in xs])
        if len(xs) == 1:
            ax.set_xlim(xs[0] - 1, xs[0] + 1)
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def line_plot(
    panels: Mapping[str, Mapping[str, Series | tuple[Sequence[float], Sequence[float]]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    **options: Any,
) -> Path:
    """One subplot per panel (a grid at most ``max_cols`` wide), one line per series, saved as PNG.

    ``options``: ``ylim``, ``references``, ``spread_label``, ``max_cols`` of :func:`line_figure`;
    the legend sits outside the axes.
    """
    return save_figure(line_figure(panels, xlabel, ylabel, title, **options), path)
