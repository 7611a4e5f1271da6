"""Run folders: resolved config, append-only results, skipped inputs, atomic files.

::

    runs/<suite>/<name>/
      config.yaml     the resolved configuration (a rerun must match it to resume)
      results.jsonl   one row per evaluated unit, flushed and fsynced row by row
      errors.jsonl    inputs that were skipped, with the reason
      invocations.jsonl  one row per finished invocation: start time, seconds, new rows
      summary.csv, report.md, *.png   written at the end by the suite

A killed run loses at most the row in flight: on reopening, a torn last line is cut off and
the finished rows are kept; the suite skips the units whose rows are present.

Sharded runs (:mod:`segprompt.engine.shards`): ``RunFolder(out, config, shard=Shard(2, 3))``
appends to ``results.shard-2-of-3.jsonl``, ``errors.shard-2-of-3.jsonl`` and
``invocations.shard-2-of-3.jsonl``; reading ``run.results`` / ``run.errors`` yields the rows of
every file of the folder (``results.jsonl`` first, then each shard's), so every process sees
the units any shard finished. The config key ``launch`` (launcher, workers, SLURM settings) is
always volatile: how a run is spread over processes does not change its rows.

Every suite behaves the same on a rerun (the same command on the same folder):

.. code-block:: python

    run = RunFolder(out, config)              # reopens; a different config is a ConfigError
    run.announce(done=36, todo=108, unit="rows")   # "resuming runs/demo: 36 rows already done, 108 to do"
    ...                                        # the work, appending rows
    run.finish(new_rows=108)                   # records this invocation's time
    run.timing_text()                          # "first run 59.9 s; this invocation 0.3 s (...)"
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from segprompt.errors import ConfigError
from segprompt.fileio import atomic_write_text

log = logging.getLogger(__name__)


class JsonlLog:
    """An append-only JSON-lines file; each row is flushed and fsynced when written."""

    def __init__(self, path: str | Path, repair: bool = True) -> None:
        self.path = Path(path)
        if repair:
            self._repair()

    def _repair(self) -> None:
        """Cut a torn last line (a run killed mid-write) so appends start on a clean line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path, len(data) - cut)
        with open(self.path, "r+b") as f:
            f.truncate(cut)

    def append(self, row: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, default=_json_default) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.append(row)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from read_jsonl(self.path)

    def rows(self) -> list[dict[str, Any]]:
        return list(self)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines file another process may be appending to: a last line without
    its newline that does not parse (a row in flight, or torn by a kill) is left out silently;
    an unreadable line inside the file is skipped with a warning."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if raw.endswith(b"\n"):
                    log.warning("%s:%d: unreadable row skipped", path, n)
                else:
                    log.debug("%s:%d: a row still being written (or torn); left out", path, n)
                continue
            yield row


class ShardedLog(JsonlLog):
    """The log ``<name>`` of a run folder as one process sees it: appends go to this process's
    own file (``<name>.jsonl``, or ``<name>.shard-K-of-N.jsonl`` for a shard); iteration reads
    every file of the log in the folder (:func:`segprompt.engine.shards.log_files`: the
    unsharded file first, then the shard files sorted by (N, K)). Without shard files it is
    exactly a :class:`JsonlLog` of ``<name>.jsonl``."""

    def __init__(self, folder: str | Path, name: str, shard: Any = None, repair: bool = True) -> None:
        self.folder = Path(folder)
        self.name = name
        self.shard = shard
        super().__init__(self.folder / (shard.file_name(name) if shard is not None else f"{name}.jsonl"), repair=repair)

    def files(self) -> list[Path]:
        """The files read, in reading order."""
        from segprompt.engine.shards import log_files

        files = log_files(self.folder, self.name)
        return files if self.path in files or not self.path.exists() else [*files, self.path]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for path in self.files():
            yield from read_jsonl(path)

    def own_rows(self) -> list[dict[str, Any]]:
        """The rows of this process's own file only."""
        return list(read_jsonl(self.path))


def timing_text(run_dir: str | Path) -> str:
    """The timing sentence of a run folder from its invocations.jsonl ("" when there is none):
    the first invocation's time next to the latest one's, and the total."""
    rows = JsonlLog(Path(run_dir) / "invocations.jsonl", repair=False).rows()
    if not rows:
        return _shards_timing_text(Path(run_dir))
    this = rows[-1]
    if len(rows) == 1:
        return f"The run took {_secs(this['seconds'])}."
    first = rows[0]
    total = sum(float(r.get("seconds") or 0) for r in rows)
    computed = sum(float(r.get("seconds") or 0) for r in rows if r.get("new_rows"))
    new = this.get("new_rows")
    what = "nothing new computed" if not new else f"{new} new row" + ("" if new == 1 else "s")
    return (
        f"First invocation ({first['started']}): {_secs(first['seconds'])}; this invocation ({this['started']}, "
        f"a resume): {_secs(this['seconds'])}, {what}; {len(rows)} invocations, {_secs(total)} in all "
        f"({_secs(computed)} in invocations that computed rows)."
    )


def _shards_timing_text(run_dir: Path) -> str:
    """The timing sentence of a run made only of shards run by hand (``--shard K/N``), or ""."""
    from segprompt.engine.shards import shard_files

    per_shard = {s: list(read_jsonl(p)) for s, p in shard_files(run_dir, "invocations").items()}
    rows = [r for rs in per_shard.values() for r in rs]
    if not rows:
        return ""
    total = sum(float(r.get("seconds") or 0) for r in rows)
    longest = max(sum(float(r.get("seconds") or 0) for r in rs) for rs in per_shard.values())
    return (f"Run as {len(per_shard)} shard{'' if len(per_shard) == 1 else 's'} ({len(rows)} invocation{'' if len(rows) == 1 else 's'}): "
            f"{_secs(total)} in all, the longest shard {_secs(longest)}.")


def _secs(seconds: Any) -> str:
    return f"{float(seconds):.1f} s"


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


#: config keys that never change a run's rows, for every suite (see the module doc)
ALWAYS_VOLATILE = ("launch",)


class RunFolder:
    """A run's folder. ``RunFolder(out, config)`` creates it or reopens it to resume.

    Reopening checks that the stored config equals ``config`` on every key not listed in
    ``volatile`` (keys that do not change results, e.g. ``workers``; ``launch`` always is); a
    different config in the same folder raises ConfigError rather than mixing two runs' rows.
    ``shard`` (a :class:`~segprompt.engine.shards.Shard`): this process appends to that shard's
    files and reads every shard's (see the module doc).
    """

    def __init__(self, path: str | Path, config: Mapping[str, Any], volatile: Iterable[str] = (), shard: Any = None, read_only: bool = False) -> None:
        self.path = Path(path)
        self.shard = shard
        self.read_only = read_only
        self.config = json.loads(json.dumps(dict(config), default=_json_default))
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_path = self.path / "config.yaml"
        volatile = set(volatile) | set(ALWAYS_VOLATILE)
        if cfg_path.exists():
            old = yaml.safe_load(cfg_path.read_text()) or {}
            a = {k: v for k, v in old.items() if k not in volatile}
            b = {k: v for k, v in self.config.items() if k not in volatile}
            if a != b:
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise ConfigError(
                    f"{self.path} holds a run with a different configuration (differs in: {', '.join(diff)}); "
                    "use another --out folder, or delete this one to start over"
                )
            self.resumed = True
        else:
            atomic_write_text(cfg_path, yaml.safe_dump(self.config, sort_keys=False))
            self.resumed = False
        repair = not read_only  # a reader (runs status) never cuts the row another process is writing
        self.results = ShardedLog(self.path, "results", shard, repair=repair)
        self.errors = ShardedLog(self.path, "errors", shard, repair=repair)
        self.invocations = JsonlLog(self.path / (shard.file_name("invocations") if shard is not None else "invocations.jsonl"), repair=repair)
        self._error_keys: set[tuple[str, str]] | None = None
        self._t0 = time.time()
        self._started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.elapsed: float | None = None

    @classmethod
    def load(cls, path: str | Path, read_only: bool = True) -> "RunFolder":
        """Reopen an existing run folder with its own config.yaml (``runs status`` / ``runs merge``);
        ``read_only``: no torn line is cut (another process may be writing it)."""
        cfg_path = Path(path) / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"{path}: not a run folder (no config.yaml)")
        return cls(path, yaml.safe_load(cfg_path.read_text()) or {}, read_only=read_only)

    def log(self, name: str) -> ShardedLog:
        """Another append-only log of the run (``calibration`` -> calibration.jsonl), sharded like results."""
        return ShardedLog(self.path, name, self.shard, repair=not self.read_only)

    # -- one behaviour for every rerun ------------------------------------------------------
    def announce(self, done: int, todo: int, unit: str = "rows") -> str:
        """Say (log at INFO, and return) where this invocation starts.

        ``done``: units already in the folder; ``todo``: units this invocation will compute.
        A fresh folder says "starting"; a rerun says "resuming ... N already done, M to do", or
        that everything is done and only the report is rewritten.
        """
        where = f"{self.path}" if self.shard is None else f"{self.path} shard {self.shard.label}"
        if not self.resumed and done == 0:
            msg = f"{where}: new run, {todo} {unit} to do"
        elif todo == 0:
            msg = (f"{where}: already finished ({done} {unit} done); nothing to recompute, rewriting the report" if self.shard is None
                   else f"{where}: already finished ({done} {unit} done); nothing to recompute")
        else:
            msg = f"resuming {where}: {done} {unit} already done, {todo} to do"
        log.info(msg)
        return msg

    def finish(self, new_rows: int | None = None) -> float:
        """Record this invocation (start time, seconds, new rows) in invocations.jsonl; returns its seconds."""
        self.elapsed = time.time() - self._t0
        row: dict[str, Any] = {"started": self._started, "seconds": round(self.elapsed, 2), "new_rows": new_rows}
        if self.shard is not None:
            row["shard"] = self.shard.label
        self.invocations.append(row)
        return self.elapsed

    def timing_text(self) -> str:
        """One sentence on the run's timing: the first invocation's, this one's and the total."""
        return timing_text(self.path)

    def record_error(self, item: str, error: BaseException | str, **extra: Any) -> None:
        message = str(error)
        log.warning("skipped %s: %s", item, message)
        self.errors.append({"item": item, "error": message, "type": type(error).__name__ if isinstance(error, BaseException) else "skip", **extra})

    def record_error_once(self, item: str, error: BaseException | str, **extra: Any) -> bool:
        """:meth:`record_error` unless this folder already holds the same item with the same error
        (a bad file met again in the next epoch, or by a resumed run: logged at DEBUG only).
        Returns whether a row was written."""
        if self._error_keys is None:
            self._error_keys = {(str(e.get("item")), str(e.get("error"))) for e in self.errors}
        key = (str(item), str(error))
        if key in self._error_keys:
            log.debug("skipped %s again: %s", item, error)
            return False
        self._error_keys.add(key)
        self.record_error(item, error, **extra)
        return True

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path / name, text)
