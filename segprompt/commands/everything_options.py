"""The command-line options of segment-anything's automatic mask generator settings, one
definition shared by ``segprompt segment --everything`` and ``segprompt bench everything``.

Each option maps to the :class:`segprompt.everything.EverythingSettings` field of the same name
(``--points-per-side`` -> ``points_per_side``) and defaults to None (= the field's default,
segment-anything's). :func:`settings_options` adds them all to a click command and hands the
command one ``settings`` keyword: the given ones only, ``{field: value}``. This module imports
click alone, so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

__all__ = ["SETTING_OPTIONS", "SETTING_FIELDS", "settings_options"]

#: (field, click type, help) in the order of ``--help``; the defaults quoted are EverythingSettings'
SETTING_OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("points_per_side", click.IntRange(min=1), "Grid points per image side [default: 32, segment-anything's]."),
    ("points_per_batch", click.IntRange(min=1), "Points decoded together (memory, not results) [default: 64]."),
    ("pred_iou_thresh", float, "Drop masks whose predicted IoU is below this [default: 0.88]."),
    ("stability_score_thresh", float, "Drop masks whose stability score is below this [default: 0.95]."),
    ("min_mask_region_area", click.IntRange(min=0), "Remove disconnected regions and holes smaller than this many pixels (0 = off) [default: 0]."),
    ("crop_n_layers", click.IntRange(min=0), "Also run on crops, this many layers of them (0 = whole image only) [default: 0]."),
    ("stability_score_offset", float, "How far the stability score moves the mask threshold [default: 1.0]."),
    ("box_nms_thresh", float, "Box IoU above which a duplicate mask is dropped [default: 0.7]."),
    ("crop_nms_thresh", float, "The same across crops [default: 0.7]."),
    ("crop_overlap_ratio", float, "How much crops overlap [default: 512/1500]."),
    ("crop_n_points_downscale_factor", click.IntRange(min=1), "Points per side divided by this in each crop layer [default: 1]."),
)
SETTING_FIELDS: tuple[str, ...] = tuple(name for name, _, _ in SETTING_OPTIONS)


def settings_options(help_prefix: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator (place it directly above the function): adds every setting option and passes
    ``settings={field: value}`` (options not given are left out) instead of one keyword each."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in SETTING_FIELDS}
            return func(*args, settings={k: v for k, v in given.items() if v is not None}, **kwargs)

        for name, kind, text in reversed(SETTING_OPTIONS):
            wrapper = click.option("--" + name.replace("_", "-"), name, type=kind, default=None, help=help_prefix + text)(wrapper)
        return wrapper

    return decorate
