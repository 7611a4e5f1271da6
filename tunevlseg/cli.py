"""``segprompt bench tunevlseg``: the prompt-tuning grid and its report from the command line.

Option names follow the rest of the CLI: ``--dataset`` and ``--seed`` repeat (comma-separated
lists are accepted too), ``--limit N`` uses only the first N items of each split, ``--device``
is checked before any work. Old spellings still work without being shown in ``--help``:
``--datasets`` (deprecated), ``--seeds``, ``--model`` (= ``--vlsm``), ``--method``, ``--depth``.

``--recipe tvs|segprompt`` picks the training recipe (:data:`tunevlseg.train.RECIPES`; ``tvs``,
TuneVLSeg's protocol, by default); ``--epochs``, ``--lr``, ``--weight-decay``, ``--early-stop`` and
``--train-kwargs`` override its values. ``--config FILE`` (repeatable; configs/tunevlseg/ has
presets) reads SweepConfig fields from YAML the way ``segprompt bench pointprompt --config``
does: options given on the command line override the files, later files override earlier ones
(mappings such as ``train`` and ``learner_kwargs`` merge key by key). A rerun on an existing
``--out`` without ``--recipe`` keeps the folder's recipe (``segprompt`` for folders written
before recipes existed), so the same command resumes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from segprompt.errors import ConfigError, DataError, SegpromptError

log = logging.getLogger(__name__)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _ints(values: tuple[str, ...] | list[str], what: str) -> list[int]:
    try:
        return [int(v) for v in _split(tuple(values))]
    except ValueError:
        raise ConfigError(f"--{what}: expected integers (repeat the option or separate with commas), got {','.join(values)!r}") from None


def _json(text: str | None, what: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--{what}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--{what}: expected a JSON object")
    return value


def _roots(items: tuple[str, ...]) -> dict[str, str]:
    roots: dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ConfigError(f"--root {item}: expected NAME=FOLDER (a TuneVLSeg dataset name and its folder), e.g. --root kvasir=/data/kvasir_polyp")
        if name.strip() in roots:
            raise ConfigError(f"--root {name.strip()} is given twice")
        roots[name.strip()] = folder.strip()
    return roots


def sweep_config_from_options(
    vlsms: tuple[str, ...] = (),
    methods: tuple[str, ...] = (),
    depths: tuple[str, ...] = (),
    datasets: tuple[str, ...] = (),
    seeds: tuple[str, ...] = (),
    vlsm_kwargs: str | None = None,
    roots: tuple[str, ...] = (),
    train: dict | None = None,
    preset: dict | None = None,
):  # noqa: ANN201 - SweepConfig (imported lazily)
    """The :class:`~tunevlseg.sweep.SweepConfig` the command line builds: each grid option given
    wins over the ``preset`` (merged --config files), which wins over the defaults."""
    from tunevlseg.sweep import SweepConfig

    preset = dict(preset or {})
    kwargs = _json(vlsm_kwargs, "vlsm-kwargs")
    return SweepConfig(
        vlsms=_split(vlsms) or list(preset.get("vlsms") or ["clipseg-tiny"]),
        methods=_split(methods) or list(preset.get("methods") or ["all"]),
        depths=_ints(depths, "depths") or list(preset.get("depths") or [1, 3, 6, 9, 12]),
        datasets=_split(datasets) or list(preset.get("datasets") or []),
        seeds=_ints(seeds, "seed") or list(preset.get("seeds") or [0]),
        vlsm_kwargs=kwargs if vlsm_kwargs else dict(preset.get("vlsm_kwargs") or {}),
        learner_kwargs=dict(preset.get("learner_kwargs") or {}),
        dataset_roots={**dict(preset.get("dataset_roots") or {}), **_roots(roots)},
        train=dict(train if train is not None else preset.get("train") or {}),
    )


#: the fields a --config file may set (SweepConfig's); ``suite`` (a run folder's config.yaml) is ignored
PRESET_KEYS = ("vlsms", "methods", "depths", "datasets", "seeds", "vlsm_kwargs", "learner_kwargs", "dataset_roots", "train")


def load_presets(paths: tuple[Path, ...] | list[Path]) -> dict:
    """The --config files merged in order: later files win; mappings (``train``, ``vlsm_kwargs``,
    ``learner_kwargs`` and the mappings inside them, ``dataset_roots``) merge key by key, lists
    are replaced. A run folder's config.yaml can be passed as is."""
    from segprompt.engine.config_files import read_config_file

    merged: dict = {}
    for path in paths:
        data = read_config_file(path, PRESET_KEYS, label="--config ")
        for key, value in data.items():
            merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def folder_recipe(out: Path | None) -> str | None:
    """The training recipe of an existing sweep folder (``segprompt`` for one written before
    recipes existed), None for a new folder; a rerun without --recipe keeps it."""
    import yaml

    from tunevlseg.train import LEGACY_RECIPE

    path = Path(out) / "config.yaml" if out is not None else None
    if path is None or not path.is_file():
        return None
    try:
        stored = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None  # RunFolder reports the broken file
    train = stored.get("train") if isinstance(stored, dict) and stored.get("suite") == "tunevlseg-sweep" else None
    if not isinstance(train, dict):
        return None
    recipe = train.get("recipe", LEGACY_RECIPE)
    if recipe != "tvs":
        log.info("%s: training recipe %s (the run folder's; pass --recipe to choose another)", out, recipe)
    return recipe


@click.group("tunevlseg", invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--vlsm", "vlsms", multiple=True, help="VLSM name; repeat or comma-separate for several: clipseg, openclip, clipseg-tiny, openclip-tiny "
              "(the -tiny ones are random-weight demo models for tests). [default: clipseg-tiny]")
@click.option("--model", "models_alias", multiple=True, hidden=True, help="Alias of --vlsm.")
@click.option("--vlsm-kwargs", default=None, help='JSON object: VLSM name -> create_vlsm kwargs, e.g. \'{"clipseg": {"weights": "clipseg-rd64-refined"}}\'.')
@click.option("--methods", multiple=True, help="Prompt learners, comma-separated or repeated, or 'all': zeroshot, coop, cocoop, vpt-shallow, "
              "vpt-deep, maple, shared-separate, shared-attention, full. [default: all]")
@click.option("--method", "methods_alias", multiple=True, hidden=True, help="Alias of --methods.")
@click.option("--depths", multiple=True, help="Prompt depths (1 = input only), comma-separated or repeated; methods without depth run once. [default: 1,3,6,9,12]")
@click.option("--depth", "depths_alias", multiple=True, hidden=True, help="Alias of --depths.")
@click.option("--dataset", "datasets", multiple=True, help="TuneVLSeg dataset name (kvasir, busi, ..., pascal-voc, cityscapes) or a folder; "
              "repeat (or comma-separate) for several. Required (here or in a --config file).")
@click.option("--datasets", "datasets_alias", multiple=True, hidden=True, help="Deprecated spelling of --dataset.")
@click.option("--root", "roots", multiple=True, help="NAME=FOLDER: the folder of a named --dataset (default: $SEGPROMPT_DATA_ROOT/<folder>); repeat.")
@click.option("--seed", "seeds", multiple=True, help="Seed; repeat (or comma-separate) for several. [default: 0]")
@click.option("--seeds", "seeds_alias", multiple=True, hidden=True, help="Alias of --seed.")
@click.option("--recipe", type=click.Choice(["tvs", "segprompt"]), default=None,
              help="Training recipe. tvs (default): TuneVLSeg's protocol: DiceCE as monai's, AdamW lr 2e-4, weight decay 0, plateau "
              "(0.2, patience 5) and early stopping (patience 10, not before epoch 10, at most 100 epochs) on the validation loss, the "
              "checkpoint of the best validation Dice. segprompt: plateau and early stopping on validation Dice, weight decay 1e-2, at most "
              "20 epochs. Options below override the recipe's values. A rerun on an existing --out keeps that folder's recipe.")
@click.option("--config", "config_files", multiple=True, type=click.Path(path_type=Path),
              help="YAML of SweepConfig fields (presets in configs/tunevlseg/: methods, models, datasets); repeat to combine, later files "
              "win. Options given on the command line override them.")
@click.option("--epochs", type=int, default=None, help="At most this many epochs. [default: the recipe's: tvs 100, segprompt 20]")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=None, help="Learning rate. [default: the recipe's, 2e-4]")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay. [default: the recipe's: tvs 0, segprompt 1e-2]")
@click.option("--n-ctx", type=int, default=4, show_default=True, help="Context tokens per depth.")
@click.option("--prompt", default="p0", show_default=True, help="p<k> (fixed prompt of the split files) or random.")
@click.option("--early-stop", type=int, default=None, help="Epochs without a better monitored value (tvs: validation loss; segprompt: "
              "validation Dice) before stopping; 0 = never. [default: the recipe's, 10]")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps (checked before any work).")
@click.option("--limit", type=int, default=None, help="Use only the first N items of each split (train, val, test), as --limit elsewhere in "
              "segprompt: sets --max-train-samples and --max-eval-samples, which override it. An item is an image (an image x class for label-map sets).")
@click.option("--max-train-samples", type=int, default=None, help="Use only the first N training items.")
@click.option("--max-eval-samples", type=int, default=None, help="Use only the first N validation / test items.")
@click.option("--train-kwargs", default=None, help="JSON object of further TrainConfig fields (lambda_ce, plateau_patience, schedule, monitor, "
              "min_epochs, min_delta, best_by, dice_smooth, ...).")
@click.option("--launcher", type=click.Choice(["local", "submitit", "submitit-local"]), default="local", show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Local processes.")
@click.option("--threads", type=int, default=None, help="Torch threads per cell.")
@click.option("--slurm-partition", default=None, help="SLURM partition.")
@click.option("--slurm-time", "slurm_time", default="240", show_default=True, help="Time limit per job: minutes, or [D-]HH:MM[:SS].")
@click.option("--slurm-gpus", "slurm_gpus", type=int, default=None, help="GPUs per job.")
@click.option("--slurm-cpus", "slurm_cpus", type=int, default=None, help="CPU cores per job.")
@click.option("--slurm-mem", "slurm_mem", default=None, help="Memory per job in GB (or 32G).")
@click.option("--slurm-mem-gb", "mem_gb", type=int, default=None, hidden=True, help="Old name of --slurm-mem (GB).")
@click.option("--slurm-account", "slurm_account", default=None, help="SLURM account to charge.")
@click.option("--slurm-qos", "slurm_qos", default=None, help="SLURM quality of service.")
@click.option("--slurm-parallel", "slurm_parallel", type=int, default=None, help="At most N jobs of the array at once.")
@click.option("--optuna-trials", type=int, default=0, show_default=True, help="Optional Optuna search per (VLSM, method, dataset, seed) over lr, "
              "weight decay and depth, in the recipe's space (tvs: TuneVLSeg's, minimising the validation loss).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (rerun the same command to resume). Required.")
@click.pass_context
def tunevlseg(ctx, vlsms, models_alias, vlsm_kwargs, methods, methods_alias, depths, depths_alias, datasets, datasets_alias, roots, seeds, seeds_alias,
              recipe, config_files, epochs, batch_size, lr, weight_decay, n_ctx, prompt, early_stop, precision, device, limit, max_train_samples,
              max_eval_samples, train_kwargs, launcher, workers, threads, slurm_partition, slurm_time, slurm_gpus, slurm_cpus, slurm_mem, mem_gb,
              slurm_account, slurm_qos, slurm_parallel, optuna_trials, out) -> None:
    """Prompt tuning of VLSMs over methods x depths x datasets x seeds (TuneVLSeg), one run folder.

    Rerunning the same command on the same folder resumes (finished cells are kept).
    `segprompt bench tunevlseg report RUN_DIR` rewrites the tables and plots of a run;
    `segprompt bench tunevlseg datasets` lists the datasets and checks a folder's split counts.
    """
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise click.UsageError("Missing option '--out' (the run folder).")
    if datasets_alias:
        log.warning("--datasets is deprecated; use --dataset (repeat it, or separate names with commas)")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    preset = load_presets(config_files)
    if not _split(datasets + datasets_alias) and not preset.get("datasets"):
        raise click.UsageError("Missing option '--dataset' (a TuneVLSeg dataset name or a folder; repeat for several).")
    given = lambda name: ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE  # noqa: E731
    from segprompt.devices import check_device

    check_device(device if given("device") or "device" not in (preset.get("train") or {}) else preset["train"]["device"])  # before any work
    from tunevlseg.sweep import run_sweep

    # training settings: command line > --config files > the option's default; the recipe's fields
    # only when given (the recipe fills the rest)
    train = dict(preset.get("train") or {})
    options = dict(batch_size=batch_size, n_ctx=n_ctx, precision=precision, device=device, prompt=f"p{prompt}" if prompt.isdigit() else prompt)
    for key, value in options.items():
        if given(key) or key not in train:
            train[key] = value
    for key, value in dict(epochs=epochs, lr=lr, weight_decay=weight_decay, early_stop=early_stop).items():
        if given(key):
            train[key] = value
    for key, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if given(key) or (given("limit") and value is None):
            train[key] = value if value is not None else limit
        elif key not in train:
            train[key] = None
    train.update(_json(train_kwargs, "train-kwargs"))
    if recipe is not None:
        train["recipe"] = recipe
    elif "recipe" not in train:
        train["recipe"] = folder_recipe(out) or "tvs"
    cfg = sweep_config_from_options(
        vlsms + models_alias, methods + methods_alias, depths + depths_alias, datasets + datasets_alias, seeds + seeds_alias, vlsm_kwargs, roots, train,
        preset=preset,
    )
    # the launch options of every suite (segprompt.engine.launchers.SLURM_KEYS); --slurm-mem-gb is the old spelling
    slurm = dict(slurm_partition=slurm_partition, slurm_time=slurm_time, slurm_gpus=slurm_gpus, slurm_cpus=slurm_cpus,
                 slurm_mem=slurm_mem if slurm_mem is not None else mem_gb, slurm_account=slurm_account, slurm_qos=slurm_qos, slurm_parallel=slurm_parallel)
    slurm = {k: v for k, v in slurm.items() if v is not None}
    result = run_sweep(cfg, out, launcher=launcher, workers=workers, threads=threads, slurm=slurm, optuna_trials=optuna_trials)
    already = result["cells"] - result["ran"] - len(result["failed"])
    line = f"{result['cells']} cell{'' if result['cells'] == 1 else 's'}: {result['ran']} run now, {already} already finished, {len(result['failed'])} failed"
    if result["skipped"]:
        line += f"; {len(result['skipped'])} grid point{'' if len(result['skipped']) == 1 else 's'} not run"
    if result["errors"] is not None:
        line += f" (see {result['errors']})"
    click.echo(line)
    if result["report"]:
        click.echo((Path(out) / "table.md").read_text())
        click.echo(f"run folder: {out}  ({', '.join(p.name for p in result['report'].values())})")
    if result["failed"]:
        raise SegpromptError(f"{len(result['failed'])} cell(s) failed: {', '.join(result['failed'][:5])}; see {result['errors']} and rerun to retry")


@tunevlseg.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
def report(run_dir: Path) -> None:
    """Write the method x dataset table (Markdown, LaTeX), Dice-vs-depth plots and parameter counts."""
    from tunevlseg.report import write_report

    paths = write_report(run_dir)
    click.echo(paths["table_md"].read_text())
    click.echo("written: " + ", ".join(p.name for p in paths.values()))


@tunevlseg.command("datasets")
@click.option("--check", "folder", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None, help="A folder to compare with --name's split counts.")
@click.option("--name", default=None, help="The TuneVLSeg dataset the folder should match.")
def datasets(folder: Path | None, name: str | None) -> None:
    """List the TuneVLSeg datasets and their split counts; --check a folder against one.

    With --check, each difference is printed once and the command exits with status 2 when the
    folder does not match (0 when it does).
    """
    from tunevlseg.data import BENCHMARKS, benchmark_info, check_split_counts, split_counts

    if folder is not None:
        if name is None:
            raise click.UsageError("--check needs --name (the dataset it should match)")
        try:
            spec = benchmark_info(name)
        except ConfigError as exc:
            raise ConfigError(f"--name: {exc}") from None
        found = split_counts(folder)
        click.echo(f"{folder}: " + (", ".join(f"{k} {v}" for k, v in found.items()) or "no split files"))
        problems = check_split_counts(spec.name, folder, warn=False)
        if not problems:
            click.echo(f"matches TuneVLSeg's {spec.name} split counts")
            return
        for problem in problems:
            click.echo(problem)
        raise DataError(f"{folder} does not match TuneVLSeg's {spec.name} split counts "
                        f"({len(problems)} difference{'' if len(problems) == 1 else 's'}, listed above)")
    if name is not None:
        raise click.UsageError("--name goes with --check FOLDER")
    for spec in BENCHMARKS.values():
        counts = "/".join("-" if v is None else str(v) for v in spec.counts.values())
        click.echo(f"{spec.name:13s} {spec.domain:8s} {'/'.join(spec.counts):15s} {counts:15s} {spec.title}" + ("" if spec.has_test else "  (no test split)"))
