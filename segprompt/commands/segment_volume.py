"""``segprompt segment-volume``: prompt one slice of a TIFF / NIfTI stack, propagate, write labels.

.. code-block:: console

    segprompt segment-volume stack.tif --model sam-tiny --slice 6 --point 30,20 --out labels.tif
    segprompt segment-volume ct.nii.gz --model grabcut --slice 40 --box 100,80,160,150 \\
        --normalisation window --window -160,240 --out labels.nii.gz
    segprompt segment-volume stack.tif --prompt-file prompts.json --out labels.tif   # several objects

The model's own propagation is used where it has one (``--method auto``), else the slice-by-slice
fallback (:mod:`segprompt.volumes.fallback`). The labels keep the input's voxel spacing (and a
NIfTI input's affine).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from segprompt.commands.segment import _numbers
from segprompt.errors import ConfigError, PromptError
from segprompt.models.base import MULTIMASK_POLICIES, multimask_help

DIRECTIONS = ("both", "forward", "backward")
METHODS = ("auto", "native", "fallback")
PROJECTIONS = ("box+point", "box", "point", "box+mask", "point+mask", "box+point+mask")  # fallback.PROJECTIONS


def _prompts(volume_shape: tuple[int, ...], slice_: int | None, obj: int, points: tuple[str, ...], box: str | None, prompts_file: Path | None) -> Any:
    """The :class:`VolumePrompts` of the command line (checked against the stack)."""
    from segprompt.data.io import read_json
    from segprompt.prompts import Box, Points
    from segprompt.volumes.api import VolumePrompts

    vp = VolumePrompts()
    if prompts_file is not None:
        records = read_json(prompts_file, "volume prompts file")
        if not isinstance(records, list):
            raise PromptError(f"{prompts_file}: expected a JSON list of {{\"z\": ..., \"object\": ..., \"points\": ..., \"box\": ...}}")
        vp = VolumePrompts.from_records(records)
    if points or box:
        rows = []
        for p in points:
            v = _numbers(p, (2, 3), "--point")
            rows.append(v if len(v) == 3 else [*v, 1.0])
        z = volume_shape[0] // 2 if slice_ is None else slice_
        vp = vp.add(z, obj, points=Points.from_list(rows) if rows else None, box=Box(_numbers(box, (4,), "--box")) if box else None)
    elif slice_ is not None and prompts_file is None:
        raise PromptError(f"--slice {slice_} needs a --point or a --box on that slice")
    if not len(vp):
        raise PromptError("give at least one --point or a --box (on --slice Z), or --prompt-file FILE")
    return vp.check(volume_shape)


@click.command("segment-volume")
@click.argument("volume", type=click.Path(path_type=Path))
@click.option("--model", default="sam-tiny", show_default=True, help="Segmenter name (sam-tiny, sam, sam2, classical, grabcut, ...).")
@click.option("--checkpoint", default=None, help="Checkpoint for --model sam / sam2 (file or registry name).")
@click.option("--slice", "slice_", type=int, default=None, help="Slice index z (0-based) of the --point / --box prompts. Default: the middle slice.")
@click.option("--point", "points", multiple=True, help="x,y or x,y,label in the slice's pixels (label 1 positive, 0 negative); repeat.")
@click.option("--box", default=None, help="x0,y0,x1,y1 in the slice's pixels.")
@click.option("--object", "obj", type=int, default=1, show_default=True, help="Object id of the --point / --box prompts (its value in the labels).")
@click.option("--prompt-file", "prompts_file", type=click.Path(path_type=Path), default=None, help='JSON list of slice prompts, for several objects and corrections: [{"z": 6, "object": 1, "points": [[x, y, 1]], "box": [x0, y0, x1, y1]}, ...].')
@click.option("--direction", type=click.Choice(DIRECTIONS), default="both", show_default=True, help="Propagate toward higher z (forward), lower z (backward) or both.")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True, help="auto: the model's own propagation where it has one, else the fallback; native; fallback: slice by slice, each slice prompted from its neighbour's mask.")
@click.option("--projection", type=click.Choice(PROJECTIONS), default="box+point", show_default=True, help="Fallback: what a slice's mask passes to the next slice (its box, its centre point, the mask).")
@click.option("--box-margin", type=float, default=0.1, show_default=True, help="Fallback: grow the projected box by this fraction of its size on each side.")
@click.option("--min-area", type=int, default=8, show_default=True, help="Fallback: a mask below this many pixels ends the object's propagation.")
@click.option("--min-iou", type=float, default=0.0, show_default=True, help="Fallback: a mask with a lower IoU against its neighbour ends the propagation (0: off).")
@click.option("--normalisation", type=click.Choice(("percentile", "minmax", "window")), default="percentile", show_default=True, help="Intensity conversion of non-8-bit volumes, one window for the whole stack.")
@click.option("--window", default=None, help="low,high intensity window for --normalisation window (e.g. a CT window -160,240).")
@click.option("--multimask", type=click.Choice(MULTIMASK_POLICIES), default=None, help="Default: the model's. " + multimask_help(tuple(p for p in MULTIMASK_POLICIES if p not in ("all", "oracle"))))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Label volume to write: .tif / .tiff (uint16, or int32 above 65535 ids) or .nii / .nii.gz; keeps the voxel spacing.")
@click.option("--device", default="cpu", show_default=True)
def segment_volume(
    volume: Path,
    model: str,
    checkpoint: str | None,
    slice_: int | None,
    points: tuple[str, ...],
    box: str | None,
    obj: int,
    prompts_file: Path | None,
    direction: str,
    method: str,
    projection: str,
    box_margin: float,
    min_area: int,
    min_iou: float,
    normalisation: str,
    window: str | None,
    multimask: str | None,
    out: Path,
    device: str,
) -> None:
    """Segment a volume (TIFF stack, NIfTI, .npy) from prompts on a slice, propagated through the stack.

    Points and boxes are (x, y) = (column, row) pixels of slice --slice.
    """
    from segprompt.devices import check_device
    from segprompt.models import create_segmenter
    from segprompt.volumes.api import volume_propagator, volume_support
    from segprompt.volumes.io import LABEL_SUFFIXES, read_volume, write_labels

    if multimask in ("all", "oracle"):
        raise ConfigError(f"--multimask {multimask} does not give one mask per slice; use auto, single, first or best")
    if not out.name.lower().endswith(LABEL_SUFFIXES):
        raise ConfigError(f"--out {out}: labels are written as {', '.join(LABEL_SUFFIXES)}")
    if window is not None and normalisation != "window":
        raise ConfigError("--window applies with --normalisation window")
    win = tuple(_numbers(window, (2,), "--window")) if window else None
    if normalisation == "window" and win is None:
        raise ConfigError("--normalisation window needs --window low,high")
    check_device(device)
    vol = read_volume(volume, normalisation=normalisation, window=win)  # type: ignore[arg-type]
    prompts = _prompts(vol.data.shape, slice_, obj, points, box, prompts_file)
    kwargs: dict[str, Any] = {"device": device}
    if checkpoint:
        kwargs["checkpoint"] = checkpoint
    if multimask:
        kwargs["multimask"] = multimask
    seg = create_segmenter(model, **kwargs)
    fallback = {"projection": projection, "box_margin": box_margin, "min_area": min_area, "min_iou": min_iou}
    if method == "fallback" or (method == "auto" and volume_support(seg) == "fallback"):
        prop = volume_propagator(seg, "fallback", **fallback)
    else:
        prop = volume_propagator(seg, "native")
    result = _run(prop, vol, prompts, direction)
    write_labels(out, result.labels, like=vol)
    click.echo(_summary(out, result, vol, model, projection, direction))


def _run(prop: Any, vol: Any, prompts: Any, direction: str) -> Any:
    from dataclasses import replace

    from tqdm.auto import tqdm

    start = time.perf_counter()
    with tqdm(desc="propagate", total=None, unit="slice", leave=False, delay=2.0) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        state = prop.init_volume(vol)
        result = prop.propagate(state, prompts, direction=direction, progress=progress)
    return replace(result, seconds=time.perf_counter() - start)


def _summary(out: Path, result: Any, vol: Any, model: str, projection: str, direction: str) -> str:
    depth = vol.shape[0]
    lines = []
    for o in result.obj_ids:
        zs = result.slices_labelled(o)
        voxels = int((result.labels == o).sum())
        where = f"slices {zs[0]}..{zs[-1]} ({len(zs)} of {depth})" if zs else f"no slice (of {depth})"
        prompted = ", ".join(str(z) for z in result.prompted[o])
        lines.append(f"  object {o}: {where}, {voxels} voxels; prompted on slice{'s' if len(result.prompted[o]) != 1 else ''} {prompted}")
    how = f"the slice-by-slice fallback ({projection})" if result.method == "fallback" else f"its own propagation ({result.method})"
    spacing = "unknown" if vol.spacing is None else "(z, y, x) = (" + ", ".join(f"{v:g}" for v in vol.spacing) + ")" + (f" {vol.unit}" if vol.unit else "")
    head = (
        f"{out}: {len(result.slices_labelled())} of {depth} slices labelled, {len(result.obj_ids)} object{'s' if len(result.obj_ids) != 1 else ''}; "
        f"{model} with {how}, direction {direction}, in {result.seconds:.2f} s; voxel spacing {spacing}"
    )
    return "\n".join([head, *lines])
