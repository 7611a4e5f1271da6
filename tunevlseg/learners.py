"""Prompt learners: ``create_learner(name, vlsm, **settings)``.

A learner is an ``nn.Module`` holding only its own parameters. Per forward it produces a
:class:`~tunevlseg.models.PromptSet` (``prompts()``; ``condition(prompts, image_features)`` for
image-conditioned learners) that the VLSM attaches through the backbone adapters for that one
forward; nothing is cached between calls. Every prompt tensor has one row per depth with the
single definition of depth of :mod:`segprompt.backbones.towers`: row r enters block r + 1, so
depth 1 = prompts at the input only and depth d = also replaced after blocks 1..d-1.

=================  =======  ==========================================================================
name               towers   parameters (d = depth, n = n_ctx, Dt / Dv = text / vision width)
=================  =======  ==========================================================================
coop               text     ``ctx`` (d, n, Dt); row 0 from the token embeddings of "a photo of a"
cocoop             text     ``ctx`` (d, n, Dt) + per depth a meta-net E -> hidden -> Dt whose output
                            (from the L2-normalised image feature) is added to every context vector
vpt-shallow        vision   ``ctx`` (1, n, Dv) (depth is 1 by definition)
vpt-deep           vision   ``ctx`` (d, n, Dv) (default d = all vision layers)
maple              both     ``ctx`` (d, n, Dt) as CoOp; vision prompts = per-depth MLP(ctx[r])
                            (Dt -> hidden -> Dv, ReLU, LayerNorm)
shared-separate    both     ``ctx`` (d, n, Ds) shared; per depth a linear (+LayerNorm) into Dt and Dv
shared-attention   both     ``ctx`` (d, n, Dt + Dv); per depth a transformer encoder layer over the n
                            vectors, output split into the text part (Dt) and the vision part (Dv)
zeroshot           -        none: the frozen VLSM
full               -        none of its own: ``vlsm.set_trainable("all")``; its
                            ``trainable_parameters()`` are the VLSM's
=================  =======  ==========================================================================

Common settings: ``n_ctx`` (4), ``depth`` (1; validated against the layers of every tower the
learner prompts, ConfigError outside 1..L), ``init`` (text learners: ``"auto"`` = "a photo of a"
when it is exactly ``n_ctx`` tokens, else random; a string, which must be ``n_ctx`` tokens; or
``"random"``), ``std`` (0.02, the N(0, std) of random rows), ``seed`` (0: initialisation is
reproducible and leaves the global RNG alone). Defaults of the projections follow TuneVLSeg's
CLIPSeg configs (per-depth projections; MaPLe MLP hidden 64 with LayerNorm; shared dim 64;
shared-attention layers with 16 heads, FFN 1536, dropout 0.25, pre-norm; CoCoOp hidden 32).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from segprompt.backbones import check_depth
from segprompt.errors import ConfigError
from segprompt.registry import Registry
from tunevlseg.models import PromptSet, _seeded

if TYPE_CHECKING:
    from tunevlseg.models import VLSM

__all__ = [
    "PromptLearner",
    "CoOp",
    "CoCoOp",
    "VPTShallow",
    "VPTDeep",
    "MaPLe",
    "SharedSeparate",
    "SharedAttention",
    "ZeroShot",
    "FullFinetune",
    "create_learner",
    "register_learner",
    "list_learners",
    "LEARNERS",
    "DEFAULT_INIT",
]

DEFAULT_INIT = "a photo of a"

LEARNERS: Registry[type["PromptLearner"]] = Registry("learner")


def register_learner(name: str, *aliases: str) -> Callable[[type["PromptLearner"]], type["PromptLearner"]]:
    return LEARNERS.register(name, *aliases)


class PromptLearner(nn.Module):
    """Base class. Subclasses set ``uses_text`` / ``uses_vision`` and implement ``prompts()``."""

    name: ClassVar[str] = ""
    uses_text: ClassVar[bool] = False
    uses_vision: ClassVar[bool] = False
    image_conditioned: ClassVar[bool] = False

    def __init__(self, vlsm: "VLSM", n_ctx: int = 4, depth: int = 1, seed: int = 0) -> None:
        super().__init__()
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ConfigError(f"{self.name}: n_ctx must be a positive integer, got {n_ctx!r}")
        self.n_ctx = n_ctx
        self.depth = self._check_depth(vlsm, depth)
        self.seed = seed
        self.text_width = vlsm.text_width if self.uses_text else 0
        self.vision_width = vlsm.vision_width if self.uses_vision else 0

    def _check_depth(self, vlsm: "VLSM", depth: int) -> int:
        if self.uses_text:
            check_depth(depth, vlsm.num_text_layers, f"text tower of {vlsm.name} ({self.name})")
        if self.uses_vision:
            check_depth(depth, vlsm.num_vision_layers, f"vision tower of {vlsm.name} ({self.name})")
        if not (self.uses_text or self.uses_vision):
            check_depth(depth, 1, f"{self.name} learner (no prompts)")
        return depth

    # -- the interface -------------------------------------------------------------------------

    @property
    def n_text_ctx(self) -> int:
        """Placeholder slots the texts need (``vlsm.tokenize(texts, n_ctx=learner.n_text_ctx)``)."""
        return self.n_ctx if self.uses_text else 0

    def prompts(self) -> PromptSet:
        """The prompt rows of this forward (recomputed from the parameters at every call)."""
        return PromptSet()

    def condition(self, prompts: PromptSet, image_features: torch.Tensor) -> PromptSet:
        """Image-conditioned learners turn ``prompts`` into per-sample prompts here."""
        return prompts

    def forward(self, image_features: torch.Tensor | None = None) -> PromptSet:
        prompts = self.prompts()
        if self.image_conditioned:
            if image_features is None:
                raise ConfigError(f"learner {self.name!r} is image-conditioned: pass image_features")
            prompts = self.condition(prompts, image_features)
        return prompts

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates for this learner (add ``vlsm.trainable_parameters()``)."""
        return [p for p in self.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def settings(self) -> dict[str, Any]:
        """Name and settings, for result rows."""
        return {"learner": self.name, "n_ctx": self.n_ctx, "depth": self.depth}

    @contextlib.contextmanager
    def attach(self, vlsm: "VLSM", image_features: torch.Tensor | None = None) -> Iterator["VLSM"]:
        """Attach this learner's prompts to ``vlsm``'s library model for the calls inside the
        block (e.g. ``vlsm.model(...)``); ``vlsm(images, texts, learner=...)`` does this itself."""
        with vlsm.prompted(self(image_features)):
            yield vlsm

    # -- helpers for subclasses ----------------------------------------------------------------

    def _context(self, vlsm: "VLSM", rows: int, width: int, init: str | None, std: float) -> torch.Tensor:
        """(rows, n_ctx, width) context vectors: row 0 from ``init`` token embeddings when given
        (text towers only), every other entry N(0, std)."""
        ctx = torch.randn(rows, self.n_ctx, width) * std
        text = self._resolve_init(vlsm, init)
        if text is not None:
            emb = vlsm.text_tower.token_embeddings(text)
            ctx[0] = emb.to(ctx.dtype).cpu()
        return ctx

    def _resolve_init(self, vlsm: "VLSM", init: str | None) -> str | None:
        if init is None or init == "random":
            return None
        if not self.uses_text:
            raise ConfigError(f"{self.name}: init={init!r} needs a text tower; use init='random'")
        ids = vlsm.text_tower.tokenizer.embedding_ids(DEFAULT_INIT if init == "auto" else init)
        if init == "auto":
            return DEFAULT_INIT if len(ids) == self.n_ctx else None
        if len(ids) != self.n_ctx:
            raise ConfigError(
                f"{self.name}: init text {init!r} is {len(ids)} tokens but n_ctx={self.n_ctx}; "
                f"set n_ctx={len(ids)}, or init='random'"
            )
        return init


def _mlp(in_dim: int, out_dim: int, hidden: int | None, norm: bool) -> nn.Module:
    layers: list[nn.Module] = []
    if hidden:
        layers += [nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)]
    else:
        layers.append(nn.Linear(in_dim, out_dim))
    if norm:
        layers.append(nn.LayerNorm(out_dim))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


@register_learner("coop")
class CoOp(PromptLearner):
    """Context optimisation: learned text context vectors at every depth."""

    name = "coop"
    uses_text = True

    def __init__(
        self, vlsm: "VLSM", n_ctx: int = 4, depth: int = 1, init: str | None = "auto", std: float = 0.02, seed: int = 0
    ) -> None:
        super().__init__(vlsm, n_ctx, depth, seed)
        with _seeded(seed):
            self.ctx = nn.Parameter(self._context(vlsm, depth, self.text_width, init, std))
        self.init = init

    def prompts(self) -> PromptSet:
        return PromptSet(text=self.ctx)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "init": self.init}


@register_learner("cocoop")
class CoCoOp(CoOp):
    """Conditional CoOp: per depth, a meta-net maps the (L2-normalised) image feature to a bias
    added to that depth's context vectors, giving per-sample text prompts."""

    name = "cocoop"
    image_conditioned = True

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int = 1,
        init: str | None = "auto",
        std: float = 0.02,
        hidden: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(vlsm, n_ctx, depth, init, std, seed)
        with _seeded(seed + 1):
            self.meta_nets = nn.ModuleList(_mlp(vlsm.feature_dim, self.text_width, hidden, False) for _ in range(depth))

    def condition(self, prompts: PromptSet, image_features: torch.Tensor) -> PromptSet:
        f = F.normalize(image_features.to(self.ctx.dtype), dim=-1)
        bias = torch.stack([net(f) for net in self.meta_nets], dim=1)  # (B, d, Dt)
        return PromptSet(text=self.ctx.unsqueeze(0) + bias.unsqueeze(2), vision=prompts.vision)


@register_learner("vpt-deep", "vpt")
class VPTDeep(PromptLearner):
    """Visual prompt tuning: ``n_ctx`` tokens appended after the patch tokens, replaced after
    blocks 1..d-1. ``depth=None`` means every vision layer (the VPT paper's "deep")."""

    name = "vpt-deep"
    uses_vision = True

    def __init__(
        self, vlsm: "VLSM", n_ctx: int = 4, depth: int | None = None, std: float = 0.02, seed: int = 0
    ) -> None:
        super().__init__(vlsm, n_ctx, vlsm.num_vision_layers if depth is None else depth, seed)
        with _seeded(seed):
            self.ctx = nn.Parameter(self._context(vlsm, self.depth, self.vision_width, None, std))

    def prompts(self) -> PromptSet:
        return PromptSet(vision=self.ctx)


@register_learner("vpt-shallow")
class VPTShallow(VPTDeep):
    """VPT with prompts at the input only (depth 1)."""

    name = "vpt-shallow"

    def __init__(self, vlsm: "VLSM", n_ctx: int = 4, depth: int = 1, std: float = 0.02, seed: int = 0) -> None:
        if depth != 1:
            raise ConfigError(f"vpt-shallow has depth 1 by definition (got depth={depth}); use vpt-deep")
        super().__init__(vlsm, n_ctx, 1, std, seed)


@register_learner("maple")
class MaPLe(CoOp):
    """Multi-modal prompt learning: text context vectors per depth (as CoOp); the vision
    prompts of depth r are a per-depth MLP of the text context of depth r."""

    name = "maple"
    uses_vision = True

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int = 1,
        init: str | None = "auto",
        std: float = 0.02,
        hidden: int | None = 64,
        norm: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(vlsm, n_ctx, depth, init, std, seed)
        with _seeded(seed + 1):
            self.proj = nn.ModuleList(_mlp(self.text_width, self.vision_width, hidden, norm) for _ in range(depth))

    def prompts(self) -> PromptSet:
        vision = torch.stack([proj(self.ctx[r]) for r, proj in enumerate(self.proj)])
        return PromptSet(text=self.ctx, vision=vision)


@register_learner("shared-separate")
class SharedSeparate(PromptLearner):
    """Shared vectors (d, n, Ds) with per-depth linear projections (+LayerNorm) into the text
    and the vision widths."""

    name = "shared-separate"
    uses_text = True
    uses_vision = True

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int = 1,
        shared_dim: int = 64,
        norm: bool = True,
        std: float = 0.02,
        seed: int = 0,
    ) -> None:
        super().__init__(vlsm, n_ctx, depth, seed)
        with _seeded(seed):
            self.ctx = nn.Parameter(torch.randn(depth, n_ctx, shared_dim) * std)
            self.to_text = nn.ModuleList(_mlp(shared_dim, self.text_width, None, norm) for _ in range(depth))
            self.to_vision = nn.ModuleList(_mlp(shared_dim, self.vision_width, None, norm) for _ in range(depth))
        self.shared_dim = shared_dim

    def prompts(self) -> PromptSet:
        text = torch.stack([proj(self.ctx[r]) for r, proj in enumerate(self.to_text)])
        vision = torch.stack([proj(self.ctx[r]) for r, proj in enumerate(self.to_vision)])
        return PromptSet(text=text, vision=vision)


@register_learner("shared-attention", "shared-attn")
class SharedAttention(PromptLearner):
    """Shared vectors (d, n, Dt + Dv); per depth a transformer encoder layer over the n vectors
    (depths never mix), then the first Dt channels are the text prompt, the rest the vision one."""

    name = "shared-attention"
    uses_text = True
    uses_vision = True

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int = 1,
        nhead: int = 16,
        ffn_dim: int = 1536,
        dropout: float = 0.25,
        std: float = 0.02,
        seed: int = 0,
    ) -> None:
        super().__init__(vlsm, n_ctx, depth, seed)
        width = self.text_width + self.vision_width
        if width % nhead:
            raise ConfigError(f"shared-attention: nhead={nhead} does not divide the width {width} (text + vision)")
        with _seeded(seed):
            self.ctx = nn.Parameter(torch.randn(depth, n_ctx, width) * std)
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(
                    width, nhead, dim_feedforward=ffn_dim, dropout=dropout, batch_first=True, norm_first=True
                )
                for _ in range(depth)
            )

    def prompts(self) -> PromptSet:
        out = torch.cat([layer(self.ctx[r : r + 1]) for r, layer in enumerate(self.layers)], dim=0)
        return PromptSet(text=out[..., : self.text_width], vision=out[..., self.text_width :])


@register_learner("zeroshot", "zero-shot")
class ZeroShot(PromptLearner):
    """The frozen VLSM (on the open_clip VLSM its decoder still trains: "decoder only")."""

    name = "zeroshot"

    def __init__(self, vlsm: "VLSM", n_ctx: int = 4, depth: int = 1, seed: int = 0) -> None:
        super().__init__(vlsm, n_ctx, depth, seed)

    def settings(self) -> dict[str, Any]:
        return {"learner": self.name, "n_ctx": 0, "depth": 0}


@register_learner("full", "full-finetune")
class FullFinetune(PromptLearner):
    """Full finetuning: makes the VLSM's weights trainable (``scope="all"``, or ``"decoder"``
    for the library decoder only) and reports them as its trainable parameters. It holds no
    parameters of its own; checkpoint ``vlsm.trainable_state_dict()``."""

    name = "full"

    def __init__(self, vlsm: "VLSM", n_ctx: int = 4, depth: int = 1, scope: str = "all", seed: int = 0) -> None:
        super().__init__(vlsm, n_ctx, depth, seed)
        vlsm.set_trainable(scope)
        self.scope = scope
        self.__dict__["_vlsm"] = vlsm  # a reference, not a submodule: the learner owns no weights

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self._vlsm.trainable_parameters()]

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"vlsm.{n}", p) for n, p in self._vlsm.trainable_parameters()]

    def settings(self) -> dict[str, Any]:
        return {"learner": self.name, "n_ctx": 0, "depth": 0, "scope": self.scope}


def create_learner(name: str, vlsm: "VLSM", **settings: Any) -> PromptLearner:
    """``create_learner("maple", vlsm, n_ctx=4, depth=3)``; unknown names and settings raise
    ConfigError."""
    cls = LEARNERS.get(name)
    try:
        learner = cls(vlsm, **settings)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ConfigError(f"learner {name!r}: {exc}") from exc
        raise
    return learner.to(vlsm.mean.device)


def list_learners() -> list[str]:
    return LEARNERS.names()


def trainable_named_parameters(vlsm: "VLSM", learner: PromptLearner | None) -> list[tuple[str, nn.Parameter]]:
    """Everything an optimizer should update for ``vlsm`` + ``learner``, each parameter once:
    the learner's parameters (``learner.<name>``) and the VLSM's trainable ones (``vlsm.<name>``:
    the open_clip decoder; all weights under ``full``)."""
    seen: set[int] = set()
    out: list[tuple[str, nn.Parameter]] = []
    pairs: list[tuple[str, nn.Parameter]] = []
    if learner is not None and not isinstance(learner, FullFinetune):
        pairs += [(f"learner.{n}", p) for n, p in learner.named_trainable_parameters()]
    pairs += [(f"vlsm.{n}", p) for n, p in vlsm.trainable_parameters()]
    for name, p in pairs:
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


__all__ += ["trainable_named_parameters"]
