"""``segprompt runs``: look at a run folder, and rebuild its report from every shard's rows.

.. code-block:: console

    $ segprompt runs status runs/pp          # units done / to do / failed per shard, error rows
    $ segprompt runs merge runs/pp           # summary.csv and report.md from whatever has finished

Both read the run's config.yaml and find its suite in :data:`segprompt.engine.shards.SUITES`.
Neither changes a results file, so both are safe while shards are still running.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group("runs", context_settings={"help_option_names": ["-h", "--help"]})
def runs() -> None:
    """Inspect and merge (sharded) run folders."""


@runs.command("status")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--shards", "n_shards", type=int, default=None, help="Count per shard of N shards (default: the N of the folder's shard files, else its --workers).")
def status(run_dir: Path, n_shards: int | None) -> None:
    """Units done / to do / failed per shard, rows in each shard's file, error rows."""
    from segprompt.engine.shards import format_status, run_status

    click.echo(format_status(run_status(run_dir, n_shards)))


@runs.command("merge")
@click.argument("run_dir", type=click.Path(path_type=Path))
def merge(run_dir: Path) -> None:
    """Rebuild the summary and report from the rows of every shard present (finished or not)."""
    from segprompt.engine.runfolder import RunFolder
    from segprompt.engine.shards import merge_run

    results = RunFolder.load(run_dir).results
    n_rows, n_files = sum(1 for _ in results), len(results.files())
    merge_run(run_dir)
    click.echo(f"{run_dir}: summary and report rebuilt from {n_rows} rows in {n_files} results file{'' if n_files == 1 else 's'} "
               f"(`segprompt runs status {run_dir}` says what is left)")
