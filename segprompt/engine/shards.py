"""Shards: a run split into work units, each unit owned by exactly one of N shards.

A *unit* is the smallest piece of a run that is computed at once (a (dataset, model, image)
of the point benchmark, a cell of a grid) and is named by a stable string key. A unit belongs
to shard :func:`shard_of` ``(key, N)``, a stable hash of the key (SHA-256, not Python's
``hash()``, which changes between processes), so every process, machine and rerun agrees on it
without talking to the others. Shards are numbered 1..N, as on the command line (``--shard 2/3``).

Each shard appends to its own files in the run folder (``results.shard-2-of-3.jsonl``,
``errors.shard-2-of-3.jsonl``, ``invocations.shard-2-of-3.jsonl``); no two processes ever append
to one file. :class:`~segprompt.engine.runfolder.RunFolder` reads the rows of *all* of them
(the unsharded ``results.jsonl`` first, then the shard files), so a rerun, sharded or not, skips
every unit that any shard finished, and the summary is built from every row:

.. code-block:: python

    from segprompt.engine.shards import Shard, pick
    run = RunFolder(out, config, shard=Shard.parse("2/3"))   # appends to results.shard-2-of-3.jsonl
    done = {unit_of(r) for r in run.results}                  # rows of every shard
    for unit in pick(units, key=unit_key, shard=run.shard):   # this shard's units only
        ...
    rows = canonical(run.results.rows(), identity=row_id, order=row_order)  # same order as unsharded

:func:`canonical` drops duplicate rows (two shard counts over one folder) and sorts the rows so
that a summary computed from them does not depend on which shard wrote which row or when.

``segprompt runs status`` / ``runs merge`` find a run's units through :data:`SUITES`: a suite
registers (by import path, so the core imports no suite package) a ``progress(config, run)``
function returning :class:`UnitProgress` and a ``merge(run_dir)`` function rebuilding the
summary and report from the rows present.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from segprompt.errors import ConfigError
from segprompt.registry import Registry

__all__ = [
    "shard_of", "Shard", "pick", "canonical", "log_files", "shard_files",
    "UnitProgress", "SuiteSpec", "SUITES", "register_suite", "suite_of", "RunStatus", "ShardStatus", "run_status",
    "format_status", "merge_run",
]

T = TypeVar("T")

#: ``<name>.shard-<k>-of-<n>.jsonl``
SHARD_FILE = re.compile(r"^(?P<name>.+)\.shard-(?P<k>\d+)-of-(?P<n>\d+)\.jsonl$")


def shard_of(key: str, n_shards: int) -> int:
    """The shard (1..``n_shards``) that owns the unit named ``key``: the first 8 bytes of the
    key's SHA-256 (UTF-8) as a big-endian integer, modulo ``n_shards``, plus 1. The same on every
    machine, Python version and process."""
    if n_shards < 1:
        raise ConfigError(f"the number of shards must be >= 1, got {n_shards}")
    digest = hashlib.sha256(str(key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % int(n_shards) + 1


@dataclass(frozen=True, order=True)
class Shard:
    """Shard ``k`` of ``n`` (1 <= k <= n)."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and isinstance(self.n, int)) or self.n < 1 or not 1 <= self.k <= self.n:
            raise ConfigError(f"a shard is K/N with 1 <= K <= N, got {self.k}/{self.n}")

    @classmethod
    def parse(cls, text: str | Shard) -> Shard:
        """``"2/3"`` -> Shard(2, 3)."""
        if isinstance(text, Shard):
            return text
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ConfigError(f"--shard takes K/N (shard K of N, 1-based, e.g. 2/3), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def all(cls, n: int) -> list[Shard]:
        return [cls(k, n) for k in range(1, n + 1)]

    @property
    def label(self) -> str:
        return f"{self.k}/{self.n}"

    def owns(self, key: str) -> bool:
        return shard_of(key, self.n) == self.k

    def file_name(self, name: str) -> str:
        """``results`` -> ``results.shard-2-of-3.jsonl``."""
        return f"{name}.shard-{self.k}-of-{self.n}.jsonl"

    def __str__(self) -> str:
        return self.label


def pick(units: Iterable[T], key: Callable[[T], str] = str, shard: Shard | None = None) -> list[T]:
    """The units owned by ``shard`` (all of them when ``shard`` is None), in their given order."""
    units = list(units)
    return units if shard is None else [u for u in units if shard.owns(key(u))]


def shard_files(folder: str | Path, name: str) -> dict[Shard, Path]:
    """The shard files ``<name>.shard-K-of-N.jsonl`` in ``folder``, by shard, sorted by (N, K)."""
    folder = Path(folder)
    found: dict[Shard, Path] = {}
    if folder.is_dir():
        for p in folder.glob(f"{glob_escape(name)}.shard-*-of-*.jsonl"):
            m = SHARD_FILE.match(p.name)
            if m and m.group("name") == name:
                try:
                    found[Shard(int(m.group("k")), int(m.group("n")))] = p
                except ConfigError:
                    continue  # results.shard-4-of-3.jsonl: not ours
    return {s: found[s] for s in sorted(found, key=lambda s: (s.n, s.k))}


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def log_files(folder: str | Path, name: str) -> list[Path]:
    """Every existing file of the log ``name`` in ``folder``: ``<name>.jsonl`` first, then the
    shard files sorted by (N, K). The order in which :class:`RunFolder` reads rows."""
    folder = Path(folder)
    plain = folder / f"{name}.jsonl"
    return ([plain] if plain.exists() else []) + list(shard_files(folder, name).values())


def canonical(
    rows: Iterable[Mapping[str, Any]], identity: Callable[[Mapping[str, Any]], Any], order: Callable[[Mapping[str, Any]], Any] | None = None
) -> list[dict[str, Any]]:
    """``rows`` without duplicates (the first row of each ``identity`` is kept) and sorted by
    ``order`` (default: ``identity``). Build summaries from this, not from file order: an
    unsharded run and any sharded run of the same config then give the same list."""
    seen: set[Any] = set()
    out: list[dict[str, Any]] = []
    for r in rows:
        ident = identity(r)
        if ident in seen:
            continue
        seen.add(ident)
        out.append(dict(r))
    out.sort(key=order or identity)
    return out


# -- suites: how `runs status` and `runs merge` read a run folder ------------------------------


@dataclass
class UnitProgress:
    """Where a run stands, unit by unit. ``units``: every unit key of the run (its config);
    ``done``: the units whose rows are complete; ``failed``: units skipped with an error
    (errors.jsonl), not retried by a rerun. A unit in neither is still to do."""

    units: list[str]
    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)

    @property
    def todo(self) -> list[str]:
        return [u for u in self.units if u not in self.done and u not in self.failed]


@dataclass(frozen=True)
class SuiteSpec:
    """How a suite's run folder is read. Both are ``"module:function"`` import paths (or callables):

    * ``progress(config: dict, run: RunFolder) -> UnitProgress``;
    * ``merge(run_dir: Path) -> dict``: rebuild summary.csv and report.md from the rows present
      (returns the suite's summary).
    """

    progress: str | Callable[..., UnitProgress]
    merge: str | Callable[..., dict[str, Any]]
    unit: str = "units"  # what a unit is, in messages ("(model, image) pairs")

    def call(self, what: str, *args: Any) -> Any:
        fn = getattr(self, what)
        if isinstance(fn, str):
            module, attr = fn.split(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn(*args)


#: suite name (the ``suite`` key of a run's config.yaml) -> SuiteSpec
SUITES: Registry[SuiteSpec] = Registry("suite")
SUITES.add("pointprompt", SuiteSpec("pointprompt.bench:suite_progress", "pointprompt.bench:merge_run_folder", unit="(model, image) pairs"))
SUITES.add("finetune-matrix", SuiteSpec("pointprompt.finetune_matrix:suite_progress", "pointprompt.finetune_matrix:merge_run_folder", unit="matrix rows (one model each)"))
SUITES.add("sot", SuiteSpec("segprompt.sot.bench:suite_progress", "segprompt.sot.bench:merge_run_folder", unit="(dataset, shots, seed, image) units"))
SUITES.add("everything", SuiteSpec("segprompt.everything_bench.bench:suite_progress", "segprompt.everything_bench.bench:merge_run_folder", unit="(model, image) pairs"))
SUITES.add("pointprompt-volumes", SuiteSpec("pointprompt.bench_volume:suite_progress", "pointprompt.bench_volume:merge_run_folder", unit="(volume, model, prompt) units"))


def register_suite(name: str, progress: str | Callable[..., UnitProgress], merge: str | Callable[..., dict[str, Any]], unit: str = "units") -> SuiteSpec:
    """Register how ``segprompt runs status/merge`` read the run folders of suite ``name``."""
    spec = SuiteSpec(progress, merge, unit)
    SUITES.add(name, spec)
    return spec


def _read_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a mapping")
    return data


def suite_of(run_dir: str | Path) -> tuple[str, SuiteSpec, dict[str, Any]]:
    """(suite name, its SuiteSpec, the run's config) of a run folder."""
    config = _read_config(Path(run_dir))
    name = config.get("suite")
    if not name:
        raise ConfigError(f"{run_dir}/config.yaml names no suite")
    try:
        spec = SUITES.get(str(name))
    except ConfigError:
        raise ConfigError(f"{run_dir}: suite {name!r} has no sharding support yet (runs status/merge know: {', '.join(SUITES.names())})") from None
    return str(name), spec, config


@dataclass
class ShardStatus:
    shard: Shard | None  # None: the whole run (one shard)
    units: int
    done: int
    failed: int
    rows_file: int  # rows in this shard's own results file
    errors_file: int

    @property
    def todo(self) -> int:
        return self.units - self.done - self.failed


@dataclass
class RunStatus:
    run_dir: Path
    suite: str
    unit: str
    n_shards: int
    shards: list[ShardStatus]
    units: int
    done: int
    failed: int
    errors: int  # rows in every errors file
    other_files: dict[str, int]  # rows per results file not of these N shards (unsharded, other N)

    @property
    def todo(self) -> int:
        return self.units - self.done - self.failed

    @property
    def complete(self) -> bool:
        return self.todo == 0


def _count_rows(path: Path | None) -> int:
    from segprompt.engine.runfolder import read_jsonl

    return 0 if path is None or not path.exists() else sum(1 for _ in read_jsonl(path))


def run_status(run_dir: str | Path, n_shards: int | None = None) -> RunStatus:
    """Units done / to do / failed of a run folder, per shard of ``n_shards`` (default: the N of
    its shard files, else the ``launch.workers`` of its config, else 1)."""
    from segprompt.engine.runfolder import RunFolder

    run_dir = Path(run_dir)
    name, spec, config = suite_of(run_dir)
    run = RunFolder.load(run_dir)
    progress: UnitProgress = spec.call("progress", config, run)
    files = shard_files(run_dir, "results")
    if n_shards is None:
        ns = sorted({s.n for s in files})
        n_shards = ns[-1] if ns else int((config.get("launch") or {}).get("workers") or 1)
    n_shards = max(1, int(n_shards))
    errors = sum(1 for _ in run.errors)
    shards: list[ShardStatus] = []
    for s in Shard.all(n_shards):
        owned = [u for u in progress.units if s.owns(u)]
        shards.append(ShardStatus(
            shard=s if n_shards > 1 else None, units=len(owned), done=sum(u in progress.done for u in owned),
            failed=sum(u in progress.failed and u not in progress.done for u in owned),
            rows_file=_count_rows(files.get(s) if n_shards > 1 else run_dir / "results.jsonl"),
            errors_file=_count_rows(run_dir / (s.file_name("errors") if n_shards > 1 else "errors.jsonl")),
        ))
    mine = {run_dir / s.file_name("results") for s in Shard.all(n_shards)} if n_shards > 1 else {run_dir / "results.jsonl"}
    other = {p.name: _count_rows(p) for p in log_files(run_dir, "results") if p not in mine}
    done = sum(u in progress.done for u in progress.units)
    failed = sum(u in progress.failed and u not in progress.done for u in progress.units)
    return RunStatus(run_dir, name, spec.unit, n_shards, shards, len(progress.units), done, failed, errors, other)


def format_status(st: RunStatus) -> str:
    """The status as a small text table and one closing line."""
    from segprompt.engine.report import text_table

    rows = [
        {"shard": s.shard.label if s.shard else "all", "units": s.units, "done": s.done, "to do": s.todo, "failed": s.failed,
         "rows (own file)": s.rows_file, "errors (own file)": s.errors_file}
        for s in st.shards
    ]
    lines = [f"{st.run_dir}: suite {st.suite}, {st.units} {st.unit} in {st.n_shards} shard{'' if st.n_shards == 1 else 's'}", "",
             text_table(rows, list(rows[0])), ""]
    if st.other_files:
        lines += ["other results files (read too): " + ", ".join(f"{k} ({v} rows)" for k, v in st.other_files.items()), ""]
    state = "complete" if st.complete else f"{st.todo} to do"
    lines.append(f"{st.done} done, {st.failed} failed, {state}; {st.errors} error row{'' if st.errors == 1 else 's'} in all "
                 "(errors*.jsonl)" + ("" if st.complete else "; rerun the same command (or its missing shards) to finish, "
                                      "`segprompt runs merge` writes the report from what is there"))
    return "\n".join(lines)


def merge_run(run_dir: str | Path) -> dict[str, Any]:
    """Rebuild the summary and report of a run folder from every shard's rows present."""
    _, spec, _ = suite_of(run_dir)
    return spec.call("merge", Path(run_dir))
