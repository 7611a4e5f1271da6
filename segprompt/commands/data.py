"""``segprompt data``: list the dataset registry, describe a dataset, check a dataset folder."""

from __future__ import annotations

import textwrap

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
        click.echo(f"  folder:    ${ENV_VAR}/{spec.folder_names[0] if spec.folder_names else spec.name} (or root=...)")
    click.echo("layouts (tried in order):")
    for line in spec.layout.splitlines():
        click.echo(textwrap.fill(line, width=100, initial_indent="  ", subsequent_indent="     "))
    click.echo("citation:")
    click.echo(wrap(spec.citation))
    if spec.notes:
        click.echo("notes:")
        click.echo(wrap(spec.notes))
