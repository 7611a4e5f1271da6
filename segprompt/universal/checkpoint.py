"""Universal-model weights: one safetensors file whose metadata holds the config.

``save_universal(model, path)`` writes atomically (temp file + rename); ``load_universal(path)``
rebuilds the model from the metadata's config and loads the tensors strictly. A training
checkpoint of the engine (``checkpoints/best.pt`` / ``last.pt``) is accepted too: its model
state and the config the run saved beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from segprompt.errors import WeightsError
from segprompt.fileio import atomic_path
from segprompt.universal.config import UniversalConfig

__all__ = ["save_universal", "load_universal", "read_universal_config"]

FORMAT = "segprompt-universal/1"


def save_universal(model: torch.nn.Module, path: str | Path, dtype: torch.dtype | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.state_dict()`` (cast to ``dtype`` for floating tensors if given) with its config."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous()
    meta = {"format": FORMAT, "config": json.dumps(_self_contained(model))}
    if extra:
        meta["extra"] = json.dumps(extra)
    with atomic_path(path, suffix=".safetensors", prefix=".tmp-") as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def _self_contained(model: torch.nn.Module) -> dict[str, Any]:
    """The config to rebuild ``model`` from this file alone: a SAM backbone built from a checkpoint
    file is recorded by its architecture (the file holds its weights)."""
    d = model.cfg.to_dict()  # type: ignore[attr-defined]
    arch = getattr(model.pyramid, "arch", None)  # type: ignore[attr-defined]
    if d["backbone"] == "sam" and arch is not None and "arch" not in d["backbone_kwargs"]:
        kwargs = {k: v for k, v in d["backbone_kwargs"].items() if k != "checkpoint"}
        d["backbone_kwargs"] = {**kwargs, "arch": json.loads(arch.to_json())}
    return d


def read_universal_config(path: str | Path) -> UniversalConfig:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"universal checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds
        raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT or "config" not in meta:
        raise WeightsError(f"{path} is not a segprompt universal checkpoint (no '{FORMAT}' config in its metadata)")
    return UniversalConfig.from_dict(json.loads(meta["config"]))


def load_universal(path: str | Path, device: str = "cpu", backbone_weights: bool = False) -> torch.nn.Module:
    """Rebuild and load a universal model. ``backbone_weights``: also load the backbone's own
    pretrained weights first (not needed: the file holds every tensor)."""
    from safetensors.torch import load_file

    from segprompt.universal.model import UniversalModel

    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        return _from_training_checkpoint(path, device)
    cfg = read_universal_config(path)
    model = UniversalModel(_without_backbone_download(cfg, backbone_weights))
    state = load_file(str(path))
    _load_state(model, state, path)
    return model.to(device).eval()


def _without_backbone_download(cfg: UniversalConfig, keep: bool) -> UniversalConfig:
    """The file holds the backbone's tensors: build the backbone with no checkpoint of its own."""
    if keep:
        return cfg
    kwargs = dict(cfg.backbone_kwargs)
    kwargs.pop("pretrained", None)
    if cfg.backbone == "sam" and "arch" in kwargs:
        kwargs.pop("checkpoint", None)
    d = cfg.to_dict()
    d["backbone_kwargs"] = kwargs
    d["text_kwargs"] = {k: v for k, v in cfg.text_kwargs.items() if k != "pretrained"}
    return UniversalConfig.from_dict(d)


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit the universal model its config describes: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def _from_training_checkpoint(path: Path, device: str) -> torch.nn.Module:
    from segprompt.engine.training import load_checkpoint
    from segprompt.universal.model import UniversalModel

    ckpt = load_checkpoint(path)
    beside = path.parent / "universal_config.json"
    if not beside.is_file():
        raise WeightsError(f"{path} is a training checkpoint without {beside.name} beside it (written by `segprompt train universal`); use the run's universal.safetensors")
    cfg_dict = json.loads(beside.read_text())
    model = UniversalModel(_without_backbone_download(UniversalConfig.from_dict(cfg_dict), False))
    _load_state(model, ckpt["model"], path)
    return model.to(device).eval()
