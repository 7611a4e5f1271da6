"""Run folders: resolved config, append-only results, skipped inputs, atomic files.

::

    runs/<suite>/<name>/
      config.yaml     the resolved configuration (a rerun must match it to resume)
      results.jsonl   one row per evaluated unit, flushed and fsynced row by row
      errors.jsonl    inputs that were skipped, with the reason
      summary.csv, report.md, *.png   written at the end by the suite

A killed run loses at most the row in flight: on reopening, a torn last line is cut off and
the finished rows are kept; the suite skips the units whose rows are present.
"""

from __future__ import annotations

import json
import logging
import os
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

    def record_error(self, item: str, error: BaseException | str, **extra: Any) -> None:
        message = str(error)
        log.warning("skipped %s: %s", item, message)
        self.errors.append({"item": item, "error": message, "type": type(error).__name__ if isinstance(error, BaseException) else "skip", **extra})

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path / name, text)
