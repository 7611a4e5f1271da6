"""``segprompt segment``: one image, a few prompts, a mask file."""

from __future__ import annotations

from pathlib import Path

import click

from segprompt.errors import PromptError


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
@click.option("--multimask", default=None, help="single, first, best or oracle (default: the model's).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Mask PNG to write (0/255).")
@click.option("--overlay", type=click.Path(path_type=Path), default=None, help="Also write the image with the mask and prompts drawn.")
@click.option("--device", default="cpu", show_default=True)
def segment(image: Path, model: str, checkpoint: str | None, points: tuple[str, ...], box: str | None, multimask: str | None, out: Path, overlay: Path | None, device: str) -> None:
    """Segment IMAGE from point and/or box prompts; (x, y) = (column, row) pixels."""
    import numpy as np

    from segprompt.data.io import read_image, write_image, write_mask
    from segprompt.models import create_segmenter
    from segprompt.prompts import Box, Points, PromptSet

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
    kwargs = {"device": device}
    if checkpoint:
        kwargs["checkpoint"] = checkpoint
    seg = create_segmenter(model, **kwargs)
    pred = seg.predict(img, PromptSet(points=pts, box=bx), **({"multimask": multimask} if multimask else {}))
    mask = pred.masks[0, 0]
    write_mask(out, mask)
    score = float(pred.scores[0, 0])
    click.echo(f"{out}: {int(mask.sum())} foreground pixels ({mask.mean():.1%}); predicted quality {score:.3f}")
    if overlay:
        import cv2

        vis = img.copy()
        vis[mask] = (0.5 * vis[mask] + 0.5 * np.array([0, 120, 255])).astype(np.uint8)
        if pts is not None:
            for (x, y), l in zip(pts.coords, pts.labels):
                cv2.circle(vis, (int(round(x)), int(round(y))), 4, (0, 255, 0) if l else (255, 0, 0), -1)
        if bx is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in bx.xyxy)
            cv2.rectangle(vis, (x0, y0), (x1, y1), (255, 255, 0), 2)
        write_image(overlay, vis)
        click.echo(f"overlay: {overlay}")
