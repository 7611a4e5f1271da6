"""``--config FILE``: a YAML file of a command's config fields, read once for every command.

:func:`read_config_file` reads and checks one file (a run folder's ``config.yaml`` works as is:
the keys in ``drop`` it adds are left out); :func:`apply_command_line` lays the options given on
the command line over it. The errors are one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from segprompt.errors import ConfigError

__all__ = ["read_config_file", "apply_command_line"]


def read_config_file(path: str | Path, known: Iterable[str], *, drop: Iterable[str] = ("suite",), label: str = "") -> dict[str, Any]:
    """The mapping in YAML file ``path``, without the keys in ``drop``; ConfigError (naming
    ``label`` + the file) when it is missing, not YAML, not a mapping or has a field outside ``known``."""
    import yaml

    path = Path(path)
    name = f"{label}{path}"
    known = sorted(known)
    if not path.is_file():
        raise ConfigError(f"{name}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping of fields ({', '.join(known)})")
    for key in drop:
        data.pop(key, None)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{name}: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return data


def apply_command_line(
    ctx: Any, data: Mapping[str, Any], given: Mapping[str, Any], option_fields: Mapping[str, Iterable[str]], merge: Iterable[str] = ()
) -> dict[str, Any]:
    """``data`` (from a config file) with the command's values ``given`` laid over it: a field
    takes the command's value when an option that sets it (``option_fields``: option name ->
    fields) was given on the command line, or when the file does not set it; the fields in
    ``merge`` are mappings merged key by key, the command's keys winning. ``ctx``: the click context."""
    import click

    explicit = {
        f for opt, fields in option_fields.items() if ctx.get_parameter_source(opt) == click.core.ParameterSource.COMMANDLINE for f in fields
    }
    merged = dict(data)
    for key, value in given.items():
        if key in merge and key in data:
            merged[key] = {**(data[key] or {}), **value}
        elif key in explicit or key not in data:
            merged[key] = value
    return merged


def config_from_record(cls: type, record: Mapping[str, Any]) -> Any:
    """The ``cls`` dataclass from a run folder's config record (config.yaml), ignoring the keys that
    are not its fields (``suite``, ``launch``, resolved settings, ...)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})
