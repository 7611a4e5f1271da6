"""The ``segprompt`` command line.

Sub-commands are mounted lazily: ``segprompt --help`` imports none of them, and each is
imported only when run, so the CLI starts fast and the core never imports ``pointprompt``,
``tunevlseg`` or ``viewers`` except here, on demand.

Errors: a :class:`SegpromptError` prints one line ``error: ...`` and exits 2; any other
exception prints one line too and asks for ``--debug``, which shows the traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from segprompt.errors import SegpromptError

# command name -> ("module:attribute", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("segprompt.commands.demo:demo", "Run the point-prompt benchmark on the embedded defaults (no download)."),
    "data": ("segprompt.commands.data:data", "Inspect and check datasets."),
    "weights": ("segprompt.commands.weights:weights", "List, fetch and locate model checkpoints."),
    "segment": ("segprompt.commands.segment:segment", "Segment one image from point or box prompts."),
    "segment-volume": ("segprompt.commands.segment_volume:segment_volume", "Segment a TIFF / NIfTI volume: prompt a slice, propagate through the stack."),
    "bench": ("segprompt.commands.bench:bench", "Benchmarks (pointprompt, ...)."),
    "finetune": ("pointprompt.finetune_cli:finetune", "Finetune SAM with automated, iterative or box prompts."),
    "napari": ("segprompt.commands.napari:napari", "Open napari with the promptable-segmentation widget docked."),
    "distill": ("segprompt.commands.distill:distill", "Distil a SAM checkpoint into a small fast student."),
    "train": ("segprompt.commands.train:train", "Train models: the universal decoder (resumable run folders)."),
    "runs": ("segprompt.commands.runs:runs", "Run folders: units done / to do per shard, and merge the shards' rows into the report."),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported only when invoked or asked for help."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name][0].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][1]) for name in sorted(self.lazy)]
        rows += [(n, c.get_short_help_str()) for n, c in sorted(self.commands.items()) if n not in self.lazy]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only (no progress lines).")
@click.option("-v", "--verbose", is_flag=True, hidden=True, help="Kept for old scripts: progress lines are on by default.")
@click.version_option(package_name="segprompt")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, verbose: bool) -> None:
    """segprompt: a workbench for promptable segmentation."""
    from segprompt.logs import setup_cli_logging

    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    setup_cli_logging("debug" if debug else "quiet" if quiet else "info")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = cli.main(args=args, prog_name="segprompt", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    except SegpromptError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into one line
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        return 2
    # standalone_mode=False: ctx.exit(code) comes back as the return value
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
