"""``segprompt segment --everything``: every object of an image, or of a folder of images, as an
integer label image, without prompts.

Follows segment-anything's ``scripts/amg.py`` (its setting flags and defaults; an unreadable image
of a folder is skipped; a table of the masks' scores beside the output, as its ``metadata.csv``)
through :func:`segprompt.everything.segment_everything` over any ``--model``, but writes one label
image per input (:func:`segprompt.everything.label_map`: 0 = background, 1..K largest first) instead
of amg's folder of one PNG per mask, and a folder is a resumable run folder
(:class:`segprompt.engine.runfolder.RunFolder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segprompt.errors import ConfigError, DataError


def run_everything(image: Path, model: str, checkpoint: str | None, out: Path, overlay: Path | None, device: str, amg: dict[str, Any]) -> None:
    """What ``segment IMAGE --everything`` does: IMAGE a file -> the label image ``out`` (.png), its
    instance table ``out`` with .csv, and the overlay; IMAGE a folder -> :func:`everything_folder`.
    ``amg``: the :class:`segprompt.everything.EverythingSettings` fields given on the command line."""
    import numpy as np

    from segprompt.devices import check_device
    from segprompt.everything import EverythingSettings

    check_device(device)
    settings = EverythingSettings(**amg)

    def make_segmenter() -> Any:
        from segprompt.models import create_segmenter

        kwargs: dict[str, Any] = {"device": device}
        if checkpoint:
            kwargs["checkpoint"] = checkpoint
        return create_segmenter(model, **kwargs)

    if image.is_dir():
        everything_folder(image, out, make_segmenter, settings, overlay=overlay, config={"model": model, "checkpoint": checkpoint, "device": device})
        return
    from segprompt.data.io import read_image, write_image

    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: --everything writes a PNG label image; give a .png path (or a folder IMAGE for a run folder)")
    img = read_image(image)
    seg = make_segmenter()
    labels, records, seconds = everything_labels(seg, img, settings, progress_desc=image.name)
    bits = write_label_image(out, labels)
    n = int(labels.max(initial=0))
    click.echo(
        f"{out}: {n} instance{'' if n == 1 else 's'} ({len(records)} masks found), {bits}-bit PNG label image "
        f"(0 = background, 1..{n} largest first); {np.count_nonzero(labels) / labels.size:.1%} of pixels labelled; {seconds:.1f} s"
    )
    meta = write_instance_metadata(out.with_suffix(".csv"), records, labels)
    if meta is not None:
        click.echo(f"instances: {meta} (one row per id: area, bbox, input point, predicted IoU, stability score, crop box)")
    if overlay:
        write_image(overlay, draw_label_overlay(img, labels))
        click.echo(f"overlay: {overlay}")


def everything_labels(seg: Any, image: Any, settings: Any, progress_desc: str = "everything") -> tuple[Any, list[dict[str, Any]], float]:
    """Run :func:`segprompt.everything.segment_everything` on ``image`` (a bar on stderr after 2 s);
    returns (int32 HxW label map from :func:`segprompt.everything.label_map`, records, seconds)."""
    import time

    from tqdm.auto import tqdm

    from segprompt.everything import label_map, segment_everything

    t0 = time.perf_counter()
    with tqdm(desc=progress_desc, total=None, unit="point", leave=False, delay=2.0) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        records = segment_everything(seg, image, settings, progress=progress)
    labels = label_map(records, tuple(image.shape[:2]))
    return labels, records, time.perf_counter() - t0


def write_label_image(path: str | Path, labels: Any) -> int:
    """Write an int label image as PNG: 8-bit when its ids fit (<= 255), else 16-bit; returns 8 or 16.

    Written atomically (a temporary file renamed over ``path``). More than 65535 instances do not
    fit a PNG: DataError.
    """
    import numpy as np
    from PIL import Image

    from segprompt.fileio import atomic_path

    arr = np.asarray(labels)
    top = int(arr.max(initial=0))
    if arr.ndim != 2 or int(arr.min(initial=0)) < 0:
        raise DataError(f"{path}: a label image must be 2-D with ids >= 0")
    if top > 65535:
        raise DataError(f"{path}: {top} instances do not fit a 16-bit PNG; raise --pred-iou-thresh or --min-mask-region-area")
    bits = 8 if top <= 255 else 16
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(arr.astype(np.uint8 if bits == 8 else np.uint16)).save(tmp, format="PNG")
    return bits


METADATA_COLUMNS = (
    "id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "point_input_x", "point_input_y",
    "predicted_iou", "stability_score", "crop_box_x0", "crop_box_y0", "crop_box_w", "crop_box_h", "visible_pixels",
)  # fmt: skip


def instance_metadata(records: list[dict[str, Any]], labels: Any) -> list[dict[str, Any]] | None:
    """One row per id of ``labels`` with the record it came from, in amg.py's ``metadata.csv``
    columns (``id`` = the label id instead of amg's mask file number) plus ``visible_pixels`` (the
    pixels that hold the id once smaller masks are painted over it).

    label_map numbers the non-empty masks by decreasing area, ties in record order; that pairing is
    checked against ``labels`` (each id's pixels lie in its record's mask, no id is missing or
    extra) and None is returned when it does not hold. Binary-mask records only (else None).
    """
    import numpy as np

    masks = []
    for r in records:
        m = r.get("segmentation")
        if not isinstance(m, np.ndarray):
            return None
        masks.append(m.astype(bool, copy=False))
    order = sorted((i for i, m in enumerate(masks) if m.any()), key=lambda i: -int(masks[i].sum()))
    n = int(np.max(labels, initial=0))
    if n != len(order):
        return None
    rows = []
    for k, i in enumerate(order, start=1):
        own = labels == k
        if np.any(own & ~masks[i]):
            return None
        r = records[i]
        (px, py), bbox, crop = r["point_coords"][0], r["bbox"], r["crop_box"]
        rows.append(
            dict(zip(METADATA_COLUMNS, (k, int(r["area"]), *bbox, px, py, float(r["predicted_iou"]), float(r["stability_score"]), *crop, int(own.sum()))))
        )
    return rows


def write_instance_metadata(path: Path, records: list[dict[str, Any]], labels: Any) -> Path | None:
    """Write :func:`instance_metadata` as CSV at ``path`` (atomically); None when it cannot be paired."""
    import csv
    import io
    import logging

    from segprompt.fileio import atomic_write_text

    rows = instance_metadata(records, labels)
    if rows is None:
        logging.getLogger(__name__).warning("%s: the label ids could not be paired with the masks; no instance table written", path)
        return None
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METADATA_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def everything_folder(folder: Path, out: Path, make_segmenter: Any, settings: Any, *, overlay: Path | None = None, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """``segment FOLDER --everything --out OUT``: one label image ``OUT/<stem>.png`` per image of
    FOLDER, in a run folder (README "Every run folder behaves the same").

    A rerun on the same OUT resumes: images with a row in ``results.jsonl`` are not recomputed,
    and an image skipped as unreadable (``errors.jsonl``) is retried only if its file changed
    (size or modification time). The model is loaded only when there is something to compute.
    Returns {"done", "new", "skipped", "total"} counts.
    """
    import dataclasses

    import numpy as np
    from tqdm.auto import tqdm

    from segprompt.data.io import list_images, read_image, write_image
    from segprompt.engine.runfolder import RunFolder

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    if out.resolve() == folder.resolve() or (overlay is not None and Path(overlay).resolve() == folder.resolve()):
        raise ConfigError(f"--out / --overlay must not be the input folder {folder}: the label images would be read as inputs on a rerun")
    images = list_images(folder)
    if not images:
        raise DataError(f"{folder}: no image files (png, jpg, tif, ...) in it")
    amg = {k: v for k, v in dataclasses.asdict(settings).items() if k != "point_grids"}
    if settings.point_grids is not None:
        amg["point_grids"] = [np.asarray(g).tolist() for g in settings.point_grids]
    cfg = {"suite": "segment-everything", "input": str(folder.resolve()), **(config or {}), **amg}
    run = RunFolder(out, cfg, volatile=("device", "points_per_batch"))
    done = {str(r.get("image")) for r in run.results}
    failed = {str(e.get("item")): e for e in run.errors}

    def unchanged(p: Path, err: dict[str, Any]) -> bool:
        st = p.stat()
        return err.get("size") == st.st_size and err.get("mtime_ns") == st.st_mtime_ns

    stems: dict[str, str] = {}
    todo: list[Path] = []
    skipped = 0
    for p in images:
        first = stems.setdefault(p.stem, p.name)
        if first != p.name:
            run.record_error_once(p.name, f"same name stem as {first}: its label image {p.stem}.png is taken", file=str(p))
            skipped += 1
        elif p.name in done:
            continue
        elif p.name in failed and unchanged(p, failed[p.name]):
            skipped += 1
        else:
            todo.append(p)
    run.announce(done=len(done), todo=len(todo), unit="images")
    if skipped and done:
        click.echo(f"{skipped} image{'s' if skipped != 1 else ''} skipped earlier (see {out / 'errors.jsonl'}): not retried while unchanged", err=True)
    seg = make_segmenter() if todo else None
    new = 0
    for p in tqdm(todo, desc="segment everything", unit="image", leave=False, delay=2.0):
        try:
            img = read_image(p)
        except DataError as exc:
            st = p.stat()
            run.record_error_once(p.name, exc, file=str(p), size=st.st_size, mtime_ns=st.st_mtime_ns)
            skipped += 1
            continue
        labels, records, seconds = everything_labels(seg, img, settings, progress_desc=p.name)
        bits = write_label_image(out / f"{p.stem}.png", labels)
        meta = write_instance_metadata(out / f"{p.stem}.csv", records, labels)
        if overlay is not None:
            write_image(Path(overlay) / f"{p.stem}.png", draw_label_overlay(img, labels))
        n = int(labels.max(initial=0))
        run.results.append(
            {"image": p.name, "labels": f"{p.stem}.png", "metadata": None if meta is None else meta.name, "instances": n, "masks": len(records), "bits": bits, "height": int(img.shape[0]), "width": int(img.shape[1]), "seconds": round(seconds, 3)}
        )
        new += 1
    run.finish(new_rows=new)
    rows = run.results.rows()
    n_err = len({str(e.get("item")) for e in run.errors})
    report = [
        "# segment everything",
        "",
        f"Input: {folder}; model: {(config or {}).get('model', '?')}; settings: {', '.join(f'{k}={v}' for k, v in amg.items() if k != 'point_grids')}.",
        "",
        "| image | label image | instances | bits | seconds |",
        "|---|---|---:|---:|---:|",
        *(f"| {r['image']} | {r['labels']} | {r['instances']} | {r['bits']} | {r['seconds']} |" for r in rows),
        "",
        f"Skipped inputs: {n_err} (errors.jsonl).",
        "",
        run.timing_text(),
        "",
    ]
    run.write_text("report.md", "\n".join(report))
    click.echo(f"{out}: {len(rows)} label images ({new} new this run), {n_err} skipped input{'s' if n_err != 1 else ''} (errors.jsonl). {run.timing_text()}")
    return {"done": len(rows), "new": new, "skipped": n_err, "total": len(images)}


def draw_label_overlay(image, labels):  # noqa: ANN001, ANN201
    """(H, W, 3) uint8: ``image`` with each instance of ``labels`` (0 = background) tinted in its
    own colour (a fixed palette, the same for the same id) and outlined."""
    import numpy as np

    vis = image.copy()
    n = int(labels.max(initial=0))
    if n == 0:
        return vis
    rng = np.random.default_rng(0)
    palette = np.concatenate([np.zeros((1, 3)), rng.integers(40, 256, size=(n, 3))]).astype(np.float32)
    fg = labels > 0
    vis[fg] = (0.5 * vis[fg] + 0.5 * palette[labels[fg]]).astype(np.uint8)
    edges = np.zeros(labels.shape, bool)
    step = labels[:-1] != labels[1:]
    edges[:-1] |= step
    edges[1:] |= step
    step = labels[:, :-1] != labels[:, 1:]
    edges[:, :-1] |= step
    edges[:, 1:] |= step
    vis[edges] = 255
    return vis


__all__ = ["METADATA_COLUMNS", "draw_label_overlay", "everything_folder", "everything_labels", "instance_metadata", "run_everything", "write_instance_metadata", "write_label_image"]
