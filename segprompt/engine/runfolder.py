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

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
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
        if not self.path.exists():
            return
        with open(self.path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d: unreadable row skipped", self.path, n)

    def rows(self) -> list[dict[str, Any]]:
        return list(self)


def timing_text(run_dir: str | Path) -> str:
    """The timing sentence of a run folder from its invocations.jsonl ("" when there is none):
    the first invocation's time next to the latest one's, and the total."""
    rows = JsonlLog(Path(run_dir) / "invocations.jsonl").rows()
    if not rows:
        return ""
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


class RunFolder:
    """A run's folder. ``RunFolder(out, config)`` creates it or reopens it to resume.

    Reopening checks that the stored config equals ``config`` on every key not listed in
    ``volatile`` (keys that do not change results, e.g. ``workers``); a different config in
    the same folder raises ConfigError rather than mixing two runs' rows.
    """

    def __init__(self, path: str | Path, config: Mapping[str, Any], volatile: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.config = json.loads(json.dumps(dict(config), default=_json_default))
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_path = self.path / "config.yaml"
        volatile = set(volatile)
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
        self.results = JsonlLog(self.path / "results.jsonl")
        self.errors = JsonlLog(self.path / "errors.jsonl")
        self.invocations = JsonlLog(self.path / "invocations.jsonl")
        self._error_keys: set[tuple[str, str]] | None = None
        self._t0 = time.time()
        self._started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.elapsed: float | None = None

    # -- one behaviour for every rerun ------------------------------------------------------
    def announce(self, done: int, todo: int, unit: str = "rows") -> str:
        """Say (log at INFO, and return) where this invocation starts.

        ``done``: units already in the folder; ``todo``: units this invocation will compute.
        A fresh folder says "starting"; a rerun says "resuming ... N already done, M to do", or
        that everything is done and only the report is rewritten.
        """
        if not self.resumed and done == 0:
            msg = f"{self.path}: new run, {todo} {unit} to do"
        elif todo == 0:
            msg = f"{self.path}: already finished ({done} {unit} done); nothing to recompute, rewriting the report"
        else:
            msg = f"resuming {self.path}: {done} {unit} already done, {todo} to do"
        log.info(msg)
        return msg

    def finish(self, new_rows: int | None = None) -> float:
        """Record this invocation (start time, seconds, new rows) in invocations.jsonl; returns its seconds."""
        self.elapsed = time.time() - self._t0
        self.invocations.append({"started": self._started, "seconds": round(self.elapsed, 2), "new_rows": new_rows})
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
