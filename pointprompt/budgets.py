"""Per-dataset point budgets (positive, negative), from ``pointprompt/budgets.yaml`` (shipped).

The PointPrompt study gave each automated strategy the average number of inclusion and
exclusion points its human annotators used on that image set (polyp 14 / 2, breast 4 / 1, ...),
or 1 + 1. ``budget_for("kvasir")`` resolves a registry dataset name through the modality map.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from segprompt.errors import ConfigError


def _config_path() -> Path:
    return Path(str(resources.files("pointprompt") / "budgets.yaml"))


@lru_cache(maxsize=1)
def load_budgets() -> dict[str, dict]:
    data = yaml.safe_load(_config_path().read_text())
    return {"budgets": {k: tuple(v) for k, v in data["budgets"].items()}, "datasets": dict(data.get("datasets", {}))}


def budget_for(name: str) -> tuple[int, int]:
    """(n_positive, n_negative) for a study image set (``polyp``) or a dataset name (``kvasir``)."""
    cfg = load_budgets()
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = cfg["datasets"].get(key, key)
    if key not in cfg["budgets"]:
        known = ", ".join(sorted(cfg["budgets"]) + sorted(cfg["datasets"]))
        raise ConfigError(f"no point budget for {name!r}; known: {known}")
    pos, neg = cfg["budgets"][key]
    return int(pos), int(neg)
