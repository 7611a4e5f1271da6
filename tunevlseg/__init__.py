"""tunevlseg: prompt tuning of vision-language segmentation models (TuneVLSeg, done cleanly).

Model side (this package): VLSM wrappers (:mod:`tunevlseg.models`: ``create_vlsm``) and prompt
learners (:mod:`tunevlseg.learners`: ``create_learner``), built on the hook-based backbone
adapters of :mod:`segprompt.backbones`. Light to import: torch, transformers and open_clip load
on first use.

>>> from tunevlseg import create_vlsm, create_learner         # doctest: +SKIP
>>> vlsm = create_vlsm("clipseg-tiny")
>>> learner = create_learner("maple", vlsm, n_ctx=4, depth=2)
>>> logits = vlsm(vlsm.preprocess(images), texts, learner=learner)   # (B, 1, H, W)
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "create_vlsm": "tunevlseg.models",
    "list_vlsms": "tunevlseg.models",
    "register_vlsm": "tunevlseg.models",
    "VLSM": "tunevlseg.models",
    "PromptSet": "tunevlseg.prompt_set",
    "tiny_clipseg": "tunevlseg.models",
    "tiny_openclip_vlsm": "tunevlseg.models",
    "create_learner": "tunevlseg.learners",
    "list_learners": "tunevlseg.learners",
    "register_learner": "tunevlseg.learners",
    "PromptLearner": "tunevlseg.learners",
    "trainable_named_parameters": "tunevlseg.learners",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tunevlseg' has no attribute {name!r}")
