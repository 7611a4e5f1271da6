"""``segprompt weights``: list, fetch and locate model checkpoints.

Exit status: 0 on success; ``weights path NAME`` exits 1 when the weights are not on disk
(it still prints where they belong, so ``ckpt=$(segprompt weights path sam_vit_b)`` works in
scripts); any error (unknown name, failed download, checksum mismatch) prints one line
``error: ...`` and exits 2.
"""

from __future__ import annotations

import click

from segprompt import weights as W


@click.group("weights")
def weights() -> None:
    """List, fetch and locate model checkpoints.

    Checkpoints live in $SEGPROMPT_HOME/checkpoints (default: the user cache folder).
    Offline, put a file at the path `segprompt weights path NAME` prints.
    """


@weights.command("list")
def list_cmd() -> None:
    """Table of the known checkpoints and whether each is on disk."""
    header = ("name", "family", "architecture", "size", "present", "path")
    rows = [
        (
            entry.name,
            entry.family,
            entry.architecture,
            W.human_size(entry.size_bytes),
            "yes" if W.is_present(entry.name) else "no",
            str(W.weights_path(entry.name)),
        )
        for entry in W.list_weights()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        click.echo("  ".join(cells).rstrip())
    click.echo(f"\ncheckpoint folder: {W.checkpoints_dir()}  (set SEGPROMPT_HOME to move it)")


@weights.command("fetch")
@click.argument("name")
@click.option("--force", is_flag=True, help="Download again even if a verified copy is present.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--timeout",
    type=float,
    default=W.DEFAULT_TIMEOUT,
    show_default=True,
    help="Network timeout in seconds (connect, and between received blocks).",
)
def fetch_cmd(name: str, force: bool, no_progress: bool, timeout: float) -> None:
    """Download checkpoint NAME, verify its SHA-256, and print its path."""
    path = W.fetch(name, force=force, progress=not no_progress, timeout=timeout)
    click.echo(str(path))


@weights.command("path")
@click.argument("name")
@click.pass_context
def path_cmd(ctx: click.Context, name: str) -> None:
    """Print where checkpoint NAME belongs; exit 0 if it is there, 1 if not.

    No hashing happens here; use `segprompt weights fetch NAME` to download and verify.
    """
    path = W.weights_path(name)
    click.echo(str(path))
    if not W.is_present(name):
        entry = W.get_entry(name)
        click.echo(f"not present; run `segprompt weights fetch {entry.name}`", err=True)
        ctx.exit(1)
