"""Launchers: run a function over many payloads (grid cells, shards) here or on a SLURM cluster.

One place for every suite (the TuneVLSeg sweep's cells, the benchmarks' shards):

* ``local``: in this process (``workers=1``), or ``workers`` processes of this machine
  (:class:`concurrent.futures.ProcessPoolExecutor`, spawn; torch threads = cores / workers);
* ``submitit``: a SLURM job array through ``submitit.AutoExecutor`` (partition, time, GPUs, CPUs,
  memory, account, QOS, array parallelism); jobs are requeued on timeout or preemption
  (each job is a resumable run, so a requeued job continues where it stopped);
* ``submitit-local``: ``submitit.LocalExecutor``, the same job path (pickled job, own process,
  logs under ``<run>/submitit/``) on this machine; this is how the cluster path is tested.

.. code-block:: python

    from segprompt.engine.launchers import LaunchConfig, run_shards
    launch = LaunchConfig("submitit", workers=8, slurm={"slurm_partition": "gpu", "slurm_time": "04:00:00", "slurm_gpus": 1})
    outcomes = run_shards(functools.partial(run_my_suite, cfg, out), launch.shards(), launch, folder=out)
    # each job calls run_my_suite(cfg, out, shard=Shard(k, 8)); then merge the rows of all shards

SLURM settings have one name per meaning, on the command line (:func:`launch_options`: ``--slurm-time``)
and in YAML config files (``slurm_time``): see :data:`SLURM_KEYS`. Anchor: the submitit
executors (facebookincubator/submitit, ``submitit/auto/auto.py``, ``submitit/local/local.py``;
``helpers.Checkpointable`` for the requeue) and the sweep this module grew out of
(``tunevlseg/sweep.py``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from segprompt.engine.shards import Shard
from segprompt.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "LAUNCHERS", "SLURM_KEYS", "LaunchConfig", "ShardOutcome", "submitit_executor", "submitit_params", "run_jobs", "run_shards",
    "launch_options", "launch_from_options", "split_launch_keys", "echo_bench_end",
]

LAUNCHERS = ("local", "submitit", "submitit-local")

#: config / YAML key -> (submitit parameter, command-line option, help). Time in minutes (or
#: ``[D-]HH:MM[:SS]``), memory in GB (or ``32G``).
SLURM_KEYS: dict[str, tuple[str, str, str]] = {
    "slurm_partition": ("slurm_partition", "--slurm-partition", "SLURM partition."),
    "slurm_time": ("timeout_min", "--slurm-time", "Time limit per job: minutes, or [D-]HH:MM[:SS] (default 60 min)."),
    "slurm_gpus": ("gpus_per_node", "--slurm-gpus", "GPUs per job."),
    "slurm_cpus": ("cpus_per_task", "--slurm-cpus", "CPU cores per job."),
    "slurm_mem": ("mem_gb", "--slurm-mem", "Memory per job in GB (or 32G)."),
    "slurm_account": ("slurm_account", "--slurm-account", "SLURM account to charge."),
    "slurm_qos": ("slurm_qos", "--slurm-qos", "SLURM quality of service."),
    "slurm_parallel": ("slurm_array_parallelism", "--slurm-parallel", "At most N jobs of the array at once."),
}
#: keys of a YAML config file that configure the launch (not the suite)
LAUNCH_FILE_KEYS = ("launcher", "workers", *SLURM_KEYS)


def _minutes(value: Any) -> int:
    """``90`` / ``"90"`` / ``"01:30:00"`` / ``"1-00:00"`` -> minutes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?", text)
    if not m:
        raise ConfigError(f"--slurm-time {value!r}: give minutes or [D-]HH:MM[:SS]")
    days, hours, mins, secs = (int(g or 0) for g in m.groups())
    return days * 1440 + hours * 60 + mins + (1 if secs else 0)


def _gigabytes(value: Any) -> int:
    """``32`` / ``"32G"`` / ``"32GB"`` / ``"512M"`` -> GB (at least 1)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([GgMmTt]?)[Bb]?\s*", str(value))
    if not m:
        raise ConfigError(f"--slurm-mem {value!r}: give GB (32) or 32G / 500M")
    x = float(m.group(1)) * {"": 1, "g": 1, "m": 1 / 1024, "t": 1024}[m.group(2).lower()]
    return max(1, int(round(x)))


def submitit_params(slurm: Mapping[str, Any]) -> dict[str, Any]:
    """SLURM settings (:data:`SLURM_KEYS` names, or submitit's own names) -> submitit parameters."""
    out: dict[str, Any] = {}
    for key, value in slurm.items():
        if value is None:
            continue
        if key in SLURM_KEYS:
            name = SLURM_KEYS[key][0]
            out[name] = _minutes(value) if key == "slurm_time" else _gigabytes(value) if key == "slurm_mem" else value
        else:
            out[key] = value
    return out


@dataclass
class LaunchConfig:
    """How a run is spread over processes; never changes its rows (config key ``launch``, volatile).

    ``workers``: the number of shards: processes on this machine (``local``) or jobs of the array
    (``submitit`` / ``submitit-local``). ``slurm``: :data:`SLURM_KEYS` settings. ``threads``: torch
    threads per local worker (default: cores / workers). ``executor``: a ready submitit executor
    (tests), used instead of building one.
    """

    launcher: str = "local"
    workers: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    executor: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        try:
            self.workers = int(self.workers)
        except (TypeError, ValueError):
            raise ConfigError(f"--workers takes a number, got {self.workers!r}") from None
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        unknown = sorted(k for k in self.slurm if k not in SLURM_KEYS)
        if unknown:
            raise ConfigError(f"unknown SLURM setting(s) {', '.join(unknown)}; known: {', '.join(SLURM_KEYS)}")
        self.slurm = {k: v for k, v in self.slurm.items() if v is not None}
        submitit_params(self.slurm)  # bad times / memory fail now

    @property
    def parallel(self) -> bool:
        """Whether the run goes to other processes (shards) rather than this one."""
        return self.launcher != "local" or self.workers > 1

    def shards(self) -> list[Shard]:
        return Shard.all(self.workers)

    def record(self) -> dict[str, Any]:
        """What config.yaml keeps under ``launch``."""
        return {"launcher": self.launcher, "workers": self.workers, **({"slurm": dict(self.slurm)} if self.slurm else {})}


def split_launch_keys(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A YAML config's mapping -> (its launch keys, the rest): suites pass the rest to their config."""
    launch = {k: v for k, v in data.items() if k in LAUNCH_FILE_KEYS}
    return launch, {k: v for k, v in data.items() if k not in LAUNCH_FILE_KEYS}


def launch_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Click decorator: ``--launcher``, ``--workers``, ``--threads``, ``--shard K/N`` and the
    :data:`SLURM_KEYS` options; the command receives them as keyword arguments of those names
    (``launcher``, ``workers``, ``threads``, ``shard``, ``slurm_partition``, ...); pass them all to
    :func:`launch_from_options`."""
    import click

    for key, (_, flag, help_text) in reversed(list(SLURM_KEYS.items())):
        kind = int if key in ("slurm_gpus", "slurm_cpus", "slurm_parallel") else str
        fn = click.option(flag, key, type=kind, default=None, help=help_text)(fn)
    fn = click.option("--shard", "shard", default=None, metavar="K/N",
                      help="Run only shard K of N (1-based) into the run folder, e.g. on a machine of your own; "
                           "the last shard to finish writes the report (else `segprompt runs merge`).")(fn)
    fn = click.option("--threads", "threads", type=int, default=None, help="Torch threads per local worker (default: cores / workers).")(fn)
    fn = click.option("--workers", "workers", type=int, default=None,
                      help="Shards: processes on this machine (--launcher local) or jobs of the SLURM array (default 1).")(fn)
    fn = click.option("--launcher", "launcher", type=click.Choice(LAUNCHERS), default=None,
                      help="local (this machine; --workers processes), submitit (a SLURM array) or submitit-local (default local).")(fn)
    return fn


def launch_from_options(options: Mapping[str, Any], file_keys: Mapping[str, Any] | None = None) -> tuple[LaunchConfig, Shard | None]:
    """(LaunchConfig, Shard or None) from :func:`launch_options`' values laid over a YAML
    config's launch keys (``file_keys``, from :func:`split_launch_keys`): an option given wins."""
    data = dict(file_keys or {})
    for key in LAUNCH_FILE_KEYS:
        if options.get(key) is not None:
            data[key] = options[key]
    slurm = {k: data[k] for k in SLURM_KEYS if data.get(k) is not None}
    shard = Shard.parse(options["shard"]) if options.get("shard") else None
    if shard is not None:  # this process runs the one shard; a config file's launcher / workers are for launched runs
        if options.get("launcher") not in (None, "local") or int(options.get("workers") or 1) > 1:
            raise ConfigError("--shard K/N runs one shard in this process; it does not go with --launcher submitit* or --workers > 1")
        return LaunchConfig("local", 1, slurm, options.get("threads")), shard
    return LaunchConfig(str(data.get("launcher") or "local"), int(data.get("workers") or 1), slurm, options.get("threads")), None


def submitit_executor(folder: str | Path, launcher: str, slurm: Mapping[str, Any], name: str = "segprompt") -> Any:
    """A submitit executor writing its pickles and logs under ``folder`` (``%j``: the job id).

    ``slurm``: :data:`SLURM_KEYS` settings, or submitit's own names (``timeout_min``,
    ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``slurm_array_parallelism``, ``cluster``,
    ``name``, ...). ``submitit-local`` uses only the time limit.
    """
    try:
        import submitit
    except ImportError as exc:  # pragma: no cover - submitit is a declared extra
        raise ConfigError("the submitit launchers need submitit: pip install 'segprompt[cluster]'") from exc
    params = submitit_params(slurm)
    timeout = int(params.pop("timeout_min", None) or 60)
    cluster = params.pop("cluster", None)
    name = params.pop("name", None) or name
    if launcher == "submitit-local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=timeout)
        return ex
    if launcher != "submitit":
        raise ConfigError(f"submitit_executor: launcher must be submitit or submitit-local, got {launcher!r}")
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster or "slurm")
    allowed = ("slurm_partition", "gpus_per_node", "cpus_per_task", "mem_gb", "slurm_array_parallelism", "slurm_account", "slurm_qos")
    ex.update_parameters(timeout_min=timeout, name=name, **{k: v for k, v in params.items() if k in allowed})
    return ex


class _Requeueable:
    """A job callable submitit requeues on timeout / preemption (it has ``checkpoint``): the job is
    a resumable run, so calling it again with the same arguments continues where it stopped."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def checkpoint(self, *args: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args)


def _dumps(fn: Callable[..., Any]) -> bytes:
    try:
        import cloudpickle
    except ImportError:  # plain pickle: module-level functions and partials of them
        import pickle

        return pickle.dumps(fn)
    return cloudpickle.dumps(fn)


def _call_pickled(blob: bytes, payload: Any, threads: int | None, log_level: str | None) -> Any:
    """In a worker process: set the torch threads (before torch is imported) and logging, then run."""
    import pickle

    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        if "torch" in __import__("sys").modules:
            import torch

            torch.set_num_threads(int(threads))
    if log_level:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("segprompt").setLevel(log_level)
    return pickle.loads(blob)(payload)


def run_jobs(
    fn: Callable[[Any], Any],
    payloads: Sequence[Any],
    on_done: Callable[[int, Any, BaseException | None], None],
    launcher: str = "local",
    workers: int = 1,
    folder: str | Path | None = None,
    slurm: Mapping[str, Any] | None = None,
    executor: Any = None,
    threads: int | None = None,
    name: str = "segprompt",
    log_level: str | None = "WARNING",
) -> None:
    """Call ``fn(payload)`` for every payload with ``launcher``; ``on_done(index, result, error)``
    is called in this process as each one finishes (a failure is passed on, the others go on).

    ``local`` with ``workers=1`` runs in this process, in order; with more workers, in spawned
    processes (``fn`` travels by cloudpickle, so a closure works). ``submitit`` / ``submitit-local``
    submit one array (``executor`` or :func:`submitit_executor` under ``folder``/submitit) and wait
    for its jobs in order. ``threads``: torch threads per local worker process.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if not payloads:
        return
    if launcher == "local" and workers <= 1:
        for i, payload in enumerate(payloads):
            try:
                result = fn(payload)
            except Exception as exc:  # noqa: BLE001 - a failed job is reported, the others go on
                on_done(i, None, exc)
            else:
                on_done(i, result, None)
        return
    if launcher == "local":
        import multiprocessing

        blob = _dumps(fn)
        with ProcessPoolExecutor(max_workers=min(workers, len(payloads)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_call_pickled, blob, p, threads, log_level): i for i, p in enumerate(payloads)}
            for fut in as_completed(futures):
                exc = fut.exception()
                on_done(futures[fut], None if exc else fut.result(), exc)
        return
    if executor is None:
        if folder is None:
            raise ConfigError("the submitit launchers need a folder for their job files")
        executor = submitit_executor(Path(folder) / "submitit" / "%j", launcher, slurm or {}, name=name)
    jobs = executor.map_array(_Requeueable(fn), list(payloads))
    log.info("submitted %d job%s (%s)", len(jobs), "" if len(jobs) == 1 else "s", ", ".join(str(j.job_id) for j in jobs[:5]))
    for i, job in enumerate(jobs):
        try:
            result = job.result()
        except Exception as exc:  # noqa: BLE001 - a failed job is reported, the others go on
            on_done(i, None, exc)
        else:
            on_done(i, result, None)


@dataclass
class ShardOutcome:
    """One shard's job: what it returned, or the error that stopped it, and its wall time."""

    shard: Shard
    result: Any = None
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def run_shards(
    job: Callable[[Shard], Any],
    shards: Iterable[Shard],
    launch: LaunchConfig,
    folder: str | Path,
    name: str = "segprompt",
) -> list[ShardOutcome]:
    """Run ``job(shard)`` for each shard with ``launch`` (each in its own process unless
    ``launch`` is local with one worker); returns the outcomes in shard order. A shard that
    fails is logged and reported, the others finish; rerunning continues only its units.

    ``job`` must be resumable and write its rows itself (``RunFolder(..., shard=shard)``); the
    caller then builds the summary from the rows of all shards.
    """
    shards = list(shards)
    t0 = time.time()
    outcomes: dict[int, ShardOutcome] = {}

    def done(i: int, result: Any, error: BaseException | None) -> None:
        s = shards[i]
        out = ShardOutcome(s, result, error, round(time.time() - t0, 2))
        outcomes[i] = out
        if error is not None:
            lines = str(error).strip().splitlines()
            log.error("shard %s failed: %s: %s (rerun the same command to resume it)", s.label, type(error).__name__, lines[-1] if lines else "")
        else:
            log.info("shard %s finished (%.1f s)", s.label, out.seconds)

    threads = launch.threads
    if threads is None and launch.launcher == "local" and launch.workers > 1:
        threads = max(1, (os.cpu_count() or 1) // launch.workers)
    run_jobs(job, shards, done, launcher=launch.launcher, workers=launch.workers, folder=folder, slurm=launch.slurm,
             executor=launch.executor, threads=threads, name=name)
    return [outcomes[i] for i in sorted(outcomes)]


def launch_pending_shards(run: Any, units: Sequence[str], todo: Sequence[str], job: Callable[..., Any], launch: LaunchConfig, suite: str, unit: str) -> list[str]:
    """The launching side of a sharded run, the same in every suite: announce what is done and
    left, start the shards of ``launch`` that own a unit of ``todo`` (``job(shard)`` in each, which
    resumes its own files), wait, record the invocation. ``job`` gets absolute paths: a SLURM job
    may start in another folder. Returns the labels of the shards that failed."""
    shards = [s for s in launch.shards() if any(s.owns(u) for u in todo)]
    run.announce(done=len(units) - len(todo), todo=len(todo), unit=unit)
    if shards:
        log.info("%s: %d of %d shards to run (%s launcher): %s", run.path, len(shards), launch.workers, launch.launcher, ", ".join(s.label for s in shards))
    outcomes = run_shards(job, shards, launch, folder=run.path, name=suite)
    run.finish(sum(int((o.result or {}).get("new_rows") or 0) for o in outcomes if o.ok))
    return [o.shard.label for o in outcomes if not o.ok]


def shard_only_message(result: Mapping[str, Any], out: Any, unit: str, new: str = "new rows") -> str | None:
    """For a command that ran one shard (``--shard K/N``) while other shards still have work: the
    line to print instead of a report; ``None`` when ``result`` is a finished run's summary."""
    if "shard" not in result or "todo" not in result:
        return None
    return (f"shard {result['shard']}: {result['new_rows']} {new}; {result['todo']} {unit} left in other shards "
            f"(`segprompt runs status {out}`; the last shard writes the report, or `segprompt runs merge {out}`)")


def echo_bench_end(summary: Mapping[str, Any], out: Any, unit: str, format_summary: Callable[[Mapping[str, Any]], str], files: str) -> None:
    """How a sharded bench command ends: the shard-only line (:func:`shard_only_message`) when other
    shards still have work; else the summary, the run's timing and its files; then exit 2 on failed
    shards (:func:`raise_for_failed_shards`). ``files``: what the run folder holds, for the last line."""
    import click

    from segprompt.engine.runfolder import timing_text

    message = shard_only_message(summary, out, unit)
    if message:  # one shard of several, others still to finish
        click.echo(message)
        return
    click.echo(format_summary(summary))
    click.echo(f"\n{timing_text(out)}\nrun folder: {out}  ({files})")
    raise_for_failed_shards(summary)


def raise_for_failed_shards(result: Mapping[str, Any], what: str = "rows") -> None:
    """After a launched run: fail the command (exit 2) when a shard failed; the report holds the others' ``what``."""
    from segprompt.errors import SegpromptError

    if result.get("failed_shards"):
        raise SegpromptError(f"shard(s) {', '.join(result['failed_shards'])} failed (see the log above); the report holds the others' {what}; "
                             "rerun the same command to resume them")
