"""``segprompt data``: list the dataset registry, describe a dataset, check a dataset folder."""

from __future__ import annotations

import textwrap

from pathlib import Path

import click


@click.group(name="data")
def data() -> None:
    """Inspect and check datasets."""


@data.command(name="check")
@click.argument("path")
@click.option("--classes", "classes", default=None, help="classes.json (id -> name) for label-map masks.")
@click.option("--mask-suffix", default="", show_default=False, help="Mask file = <image stem><suffix>.<ext> (e.g. _segmentation).")
@click.pass_context
def check(ctx: click.Context, path: str, classes: str | None, mask_suffix: str) -> None:
    """Read every image and mask of PATH (a folder or a registered name) and report every problem.

    One line per problem, then a summary. Exit status 1 if any error was found, 0 otherwise
    (warnings alone, such as empty masks, exit 0).
    """
    from segprompt.data.check import check_dataset_counted, format_problem, summarise

    problems, n_images = check_dataset_counted(path, classes=classes, mask_suffix=mask_suffix)
    for p in problems:
        click.echo(format_problem(p))
    click.echo(summarise(problems, n_images))
    ctx.exit(1 if any(p.severity == "error" for p in problems) else 0)


@data.command(name="list")
def list_() -> None:
    """The dataset registry as a table."""
    from segprompt.data.registry import dataset_info, list_datasets

    rows = [("name", "task", "modality", "title", "folder")]
    for name in list_datasets():
        spec = dataset_info(name)
        folder = spec.folder_names[0] if spec.folder_names else ("(generated)" if not spec.needs_root else name)
        rows.append((spec.name, spec.task, spec.modality, spec.title, folder))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            click.echo("  ".join("-" * w for w in widths))


@data.command(name="info")
@click.argument("name")
def info(name: str) -> None:
    """Title, layouts, download address and citation of dataset NAME."""
    from segprompt.data.registry import ENV_VAR, dataset_info

    spec = dataset_info(name)
    wrap = lambda s: textwrap.fill(s, width=100, initial_indent="  ", subsequent_indent="  ")  # noqa: E731
    click.echo(f"{spec.name}: {spec.title}")
    click.echo(f"  modality:  {spec.modality}")
    click.echo(f"  task:      {spec.task}")
    if spec.text:
        click.echo(f"  text:      {spec.text!r} (default text prompt)")
    if spec.aliases:
        click.echo(f"  aliases:   {', '.join(spec.aliases)}")
    click.echo(f"  homepage:  {spec.homepage}")
    click.echo(f"  download:  {spec.download}")
    if spec.needs_root:
        click.echo(f"  folder:    ${ENV_VAR}/{spec.folder_names[0] if spec.folder_names else spec.name} (or --root FOLDER)")
    click.echo("layouts (tried in order):")
    for line in spec.layout.splitlines():
        click.echo(textwrap.fill(line, width=100, initial_indent="  ", subsequent_indent="     "))
    click.echo("citation:")
    click.echo(wrap(spec.citation))
    if spec.notes:
        click.echo("notes:")
        click.echo(wrap(spec.notes))


@data.command(name="convert-tunevlseg")
@click.argument("source")
@click.argument("out")
@click.option("--text", "texts", multiple=True, help="Text prompt(s) p0, p1, ... for every sample (default: the dataset's own texts).")
@click.option("--splits", default="0.8,0.1,0.1", show_default=True, help="train,val,test fractions.")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle seed of the split.")
@click.option("--link", type=click.Choice(["copy", "symlink"]), default="copy", show_default=True, help="How original image files are placed.")
@click.option("--overwrite", is_flag=True, help="Write into an OUT that already has anns/.")
def convert_tunevlseg(source: str, out: str, texts: tuple[str, ...], splits: str, seed: int, link: str, overwrite: bool) -> None:
    """Write SOURCE (a registered name or a folder of images/ + masks/) in TuneVLSeg's split layout.

    OUT gets images/, masks/ (0/255 PNG) and anns/{train,val,test}.json with prompts p0..pN.
    """
    from segprompt.data.registry import load_dataset
    from segprompt.data.tunevlseg_format import write_tunevlseg_split
    from segprompt.errors import ConfigError

    try:
        fractions = [float(v) for v in splits.split(",")]
    except ValueError:
        raise ConfigError(f"--splits {splits!r}: expected three comma-separated fractions") from None
    if len(fractions) != 3:
        raise ConfigError(f"--splits {splits!r}: expected three fractions (train, val, test)")
    ds = load_dataset(source)
    counts = write_tunevlseg_split(ds, out, splits=dict(zip(("train", "val", "test"), fractions)), seed=seed, prompts=list(texts) or None, link=link, overwrite=overwrite)
    written = sum(counts.values())
    note = f"; {len(ds) - written} skipped (see {Path(out) / 'errors.jsonl'})" if written < len(ds) else ""
    click.echo(f"{out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" ({written} of {len(ds)} samples from {source}{note})")
