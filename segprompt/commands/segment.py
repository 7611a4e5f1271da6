"""``segprompt segment``: one image, a few prompts, a mask file; or, with ``--everything``, every
object of an image (or of a folder of images) as an integer label image
(:mod:`segprompt.commands.segment_everything`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segprompt.commands.everything_options import settings_options
from segprompt.commands.inference_options import inference_options, model_wrappers
from segprompt.errors import ConfigError, PromptError
from segprompt.models.base import MULTIMASK_POLICIES, multimask_help


def _numbers(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise PromptError(f"{what} {text!r}: expected comma-separated numbers") from None
    if len(vals) not in n:
        raise PromptError(f"{what} {text!r}: expected {' or '.join(map(str, n))} numbers")
    return vals


@click.command("segment")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--model", default="sam-tiny", show_default=True, help="Segmenter name (sam-tiny, sam, classical, grabcut, random-walker).")
@click.option("--checkpoint", default=None, help="Checkpoint for --model sam (file or registry name).")
@click.option("--point", "points", multiple=True, help="x,y or x,y,label (label 1 positive, 0 negative); repeat.")
@click.option("--box", default=None, help="x0,y0,x1,y1 in pixels.")
@click.option("--multimask", type=click.Choice(MULTIMASK_POLICIES), default=None, help="Default: the model's. " + multimask_help() + " With all, --out gets the best-scoring candidate and OUT_0, OUT_1, OUT_2 each candidate.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Mask PNG to write (0/255); with --everything the label image PNG, or for a folder IMAGE the run folder.")
@click.option("--overlay", type=click.Path(path_type=Path), default=None, help="Also write the image with the mask and prompts drawn (--everything: the instances; for a folder IMAGE a folder of overlays).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--everything", is_flag=True, help="Segment every object without prompts (segment-anything's automatic mask generator over --model): --out gets an integer label image (0 = background, 1..K = instances, largest first), 8-bit PNG up to 255 instances, else 16-bit. IMAGE may be a folder: then --out is a resumable run folder with one label image per input.")
@settings_options(help_prefix="--everything: ")
@inference_options
def segment(
    image: Path,
    model: str,
    checkpoint: str | None,
    points: tuple[str, ...],
    box: str | None,
    multimask: str | None,
    out: Path,
    overlay: Path | None,
    device: str,
    everything: bool,
    settings: dict[str, Any],
    wrappers: dict[str, Any],
) -> None:
    """Segment IMAGE from point and/or box prompts; (x, y) = (column, row) pixels.

    With --everything, segment every object of IMAGE (a file or a folder of images) without prompts.
    """
    import numpy as np

    amg = settings  # segment-anything automatic-mask-generator settings given on the command line
    if everything:
        if points or box or multimask or wrappers:
            raise ConfigError("--everything segments without prompts: leave out --point, --box, --multimask, --zoom-in, --brs and --cascade")
        from segprompt.commands.segment_everything import run_everything

        run_everything(image, model, checkpoint, out, overlay, device, amg)
        return
    if amg:
        flags = ", ".join("--" + k.replace("_", "-") for k in amg)
        raise ConfigError(f"{flags} only apply with --everything")
    if image.is_dir():
        raise ConfigError(f"{image} is a folder: segmenting a folder needs --everything")

    from segprompt.data.io import read_image, write_image, write_mask
    from segprompt.models import create_segmenter
    from segprompt.devices import check_device
    from segprompt.prompts import Box, Points, PromptSet

    check_device(device)
    img = read_image(image)
    size = img.shape[:2]
    rows = []
    for p in points:
        v = _numbers(p, (2, 3), "--point")
        rows.append(v if len(v) == 3 else [*v, 1.0])
    pts = Points.from_list(rows, image_size=size) if rows else None
    bx = Box(_numbers(box, (4,), "--box"), image_size=size) if box else None
    if pts is None and bx is None:
        raise PromptError("give at least one --point or a --box")
    if wrappers and not model_wrappers(model, wrappers):
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in wrappers)}: for the learned models (sam-tiny, sam, universal-tiny, ...), not {model}")
    kwargs = {"device": device, **model_wrappers(model, wrappers)}
    if checkpoint:
        kwargs["checkpoint"] = checkpoint
    seg = create_segmenter(model, **kwargs)
    pred = seg.predict(img, PromptSet(points=pts, box=bx), **({"multimask": multimask} if multimask else {}))
    mask = pred.best[0]
    write_mask(out, mask)
    if pred.masks.shape[1] > 1:
        for k in range(pred.masks.shape[1]):
            cand = out.with_name(f"{out.stem}_{k}{out.suffix}")
            write_mask(cand, pred.masks[0, k])
            click.echo(f"{cand}: candidate {k}, predicted quality {_quality(float(pred.scores[0, k]))}")
    score = float(np.nan_to_num(pred.scores[0], nan=-np.inf).max()) if np.isfinite(pred.scores[0]).any() else float("nan")
    click.echo(f"{out}: {int(mask.sum())} foreground pixels ({mask.mean():.1%}); predicted quality {_quality(score, model)}")
    if overlay:
        write_image(overlay, draw_overlay(img, mask, pts, bx))
        click.echo(f"overlay: {overlay}")


def _quality(score: float, model: str = "") -> str:
    if score != score:  # NaN: the model has no quality estimate
        return f"none ({model} has no quality estimate)" if model else "none"
    return f"{score:.3f}"


def draw_overlay(image, mask, points=None, box=None):  # noqa: ANN001, ANN201
    """(H, W, 3) uint8: ``image`` with ``mask`` tinted and outlined and the prompts drawn.

    Points are discs of radius ~1 % of the image diagonal (at least 5 px) with a white rim,
    green for positive and red for negative, so they stay visible on large images; the box is
    yellow. Coordinates are (x, y) pixels.
    """
    import cv2
    import numpy as np

    vis = image.copy()
    vis[mask] = (0.55 * vis[mask] + 0.45 * np.array([0, 120, 255])).astype(np.uint8)
    diag = float(np.hypot(*image.shape[:2]))
    thick = max(1, int(round(diag / 400)))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(vis, contours, -1, (0, 120, 255), thick)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box.xyxy)
        cv2.rectangle(vis, (x0, y0), (x1, y1), (255, 255, 0), max(2, thick))
    if points is not None:
        r = max(5, int(round(0.01 * diag)))
        for (x, y), lab in zip(points.coords, points.labels):
            c = (int(round(x)), int(round(y)))
            cv2.circle(vis, c, r + max(1, r // 4), (255, 255, 255), -1, lineType=cv2.LINE_AA)
            cv2.circle(vis, c, r, (0, 200, 0) if lab else (230, 0, 0), -1, lineType=cv2.LINE_AA)
    return vis
