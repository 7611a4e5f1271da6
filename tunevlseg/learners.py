"""Prompt learners: ``create_learner(name, vlsm, **settings)``.

A learner is an ``nn.Module`` holding only its own parameters. Per forward it produces a
:class:`~tunevlseg.prompt_set.PromptSet` (``prompts()``; ``condition(prompts, image_features)`` for
image-conditioned learners) that the VLSM attaches through the backbone adapters for that one
forward; nothing is cached between calls. Every prompt tensor has one row per depth with the
single definition of depth of :mod:`segprompt.backbones.towers`: row r enters block r + 1, so
depth 1 = prompts at the input only and depth d = also replaced after blocks 1..d-1.

=================  =======  ==========================================================================
name               towers   parameters (d = depth, n = n_ctx, Dt / Dv = text / vision width)
=================  =======  ==========================================================================
coop               text     ``ctx`` (d, n, Dt); row 0 from the token embeddings of "a photo of a"
cocoop             text     ``ctx`` (d, n, Dt) + a meta-net E -> hidden -> Dt whose output (from the
                            L2-normalised image feature) is added to every context vector
                            (``meta_net="tvs"``: TuneVLSeg's, one for all depths; ``"cocoop"``: the
                            original CoCoOp's, one per depth)
vpt-shallow        vision   ``ctx`` (1, n, Dv) (depth is 1 by definition)
vpt-deep           vision   ``ctx`` (d, n, Dv) (default d = all vision layers)
maple              both     ``ctx`` (d, n, Dt) as CoOp; vision prompts = per-depth MLP(ctx[r])
                            (Dt -> 64 -> Dv, ReLU, LayerNorm; ``hidden=None, norm=False``: MaPLe's
                            single Linear)
shared-separate    both     ``ctx`` (d, n, Ds) shared; per depth a Linear into Dt and one into Dv
                            (``norm=True``: + LayerNorm)
shared-attention   both     ``ctx`` (d, n, Dt + Dv); per depth a transformer encoder layer
                            (``attention="tvs"``: each vector attends to itself, as TuneVLSeg;
                            ``"mix"``: over the n vectors), split into the text part (Dt) and the
                            vision part (Dv)
zeroshot           -        none: the frozen VLSM
full               -        none of its own: ``vlsm.set_trainable("all")``; its
                            ``trainable_parameters()`` are the VLSM's
=================  =======  ==========================================================================

Common settings: ``n_ctx`` (4), ``depth`` (1; validated against the layers of every tower the
learner prompts, ConfigError outside 1..L), ``init`` (text learners: ``"random"``, the default
of CoOp / CoCoOp as TuneVLSeg's configs (``context_initializer: null``); ``"auto"`` = "a photo of a"
when it is exactly ``n_ctx`` tokens, else random, the default of MaPLe as TuneVLSeg's config; or a
string, which must be ``n_ctx`` tokens), ``std`` (0.02, the N(0, std) of random rows), ``seed`` (0: initialisation is
reproducible and leaves the global RNG alone), ``decoder_layer`` (TuneVLSeg's extra trainable
CLIPSeg decoder layer, :class:`~tunevlseg.models.TVSDecoderLayer`; default None = on for VPT,
MaPLe and Shared-* on a CLIPSeg VLSM as in TuneVLSeg's configs, off for CoOp / CoCoOp and on VLSMs
without a CLIPSeg decoder; True there raises ConfigError) and, for learners with visual prompts,
``vision_prompt_position`` (``"pre-norm"``, default: before the vision pre-LayerNorm as TuneVLSeg
and MaPLe; ``"post-norm"``: after it). Defaults of the projections follow TuneVLSeg's CLIPSeg
configs and code (see each class). Checkpoints: ``state_dict()`` holds the decoder layer as
``decoder_layer.*``; ``load_state_dict`` of a checkpoint saved with other settings raises a
ConfigError naming the setting to change.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from segprompt.backbones import VISION_PROMPT_POSITIONS, check_depth
from segprompt.errors import ConfigError
from segprompt.registry import Registry
from tunevlseg.prompt_set import PromptSet, seeded

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
    """Base class. Subclasses set ``uses_text`` / ``uses_vision`` and implement ``_rows()``.

    Learners that prompt the vision tower take ``vision_prompt_position`` (``"pre-norm"``,
    default: row 0 enters before the vision tower's pre-LayerNorm as in TuneVLSeg and MaPLe;
    ``"post-norm"``: after it, this project's placement before the TuneVLSeg audit) and
    ``decoder_layer`` (TuneVLSeg's extra trainable CLIPSeg decoder layer,
    :class:`~tunevlseg.models.TVSDecoderLayer`, owned by the learner: ``decoder_layer.*`` in its
    ``state_dict()``; None = on where TuneVLSeg's configs have it, i.e. VPT / MaPLe / Shared-* on
    a CLIPSeg VLSM, off on a VLSM without a CLIPSeg decoder; True on such a VLSM: ConfigError).
    """

    name: ClassVar[str] = ""
    uses_text: ClassVar[bool] = False
    uses_vision: ClassVar[bool] = False
    image_conditioned: ClassVar[bool] = False
    #: TuneVLSeg's configs use the extra decoder layer for this method (``use_new_last_layer``)
    tvs_decoder_layer: ClassVar[bool] = False

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int = 1,
        seed: int = 0,
        decoder_layer: bool | None = None,
        vision_prompt_position: str = "pre-norm",
    ) -> None:
        super().__init__()
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ConfigError(f"{self.name}: n_ctx must be a positive integer, got {n_ctx!r}")
        if vision_prompt_position not in VISION_PROMPT_POSITIONS:
            raise ConfigError(
                f"{self.name}: vision_prompt_position must be one of {VISION_PROMPT_POSITIONS}, "
                f"got {vision_prompt_position!r}"
            )
        self.n_ctx = n_ctx
        self.depth = self._check_depth(vlsm, depth)
        self.seed = seed
        self.text_width = vlsm.text_width if self.uses_text else 0
        self.vision_width = vlsm.vision_width if self.uses_vision else 0
        self.vision_prompt_position = vision_prompt_position
        if decoder_layer is None:
            decoder_layer = self.tvs_decoder_layer and vlsm.supports_decoder_layer
        if not isinstance(decoder_layer, bool):
            raise ConfigError(f"{self.name}: decoder_layer must be True, False or None, got {decoder_layer!r}")
        self.decoder_layer: nn.Module | None = None
        if decoder_layer:
            with seeded(seed + 2):
                self.decoder_layer = vlsm.extra_decoder_layer()  # ConfigError without a CLIPSeg decoder

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

    def _rows(self) -> PromptSet:
        """Subclasses: the text / vision prompt rows of this forward."""
        return PromptSet()

    def prompts(self) -> PromptSet:
        """The prompts of this forward (recomputed from the parameters at every call): the rows,
        where vision row 0 enters, and the extra decoder layer."""
        return dataclasses.replace(
            self._rows(), vision_position=self.vision_prompt_position, decoder=self.decoder_layer
        )

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
        out: dict[str, Any] = {"learner": self.name, "n_ctx": self.n_ctx, "depth": self.depth}
        if self.uses_vision:
            out["vision_prompt_position"] = self.vision_prompt_position
        if self.uses_text or self.uses_vision:
            out["decoder_layer"] = self.decoder_layer is not None
        return out

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict`` with a ConfigError that says what to change when a
        checkpoint does not match this learner's settings (e.g. one saved before the extra
        decoder layer or the TuneVLSeg-faithful projections existed)."""
        if strict:
            keys = set(state_dict)
            own = set(self.state_dict())
            missing, unexpected = sorted(own - keys), sorted(keys - own)
            if missing or unexpected:
                hints = []
                if any(k.startswith("decoder_layer.") for k in missing):
                    hints.append("the checkpoint has no extra decoder layer: create the learner with decoder_layer=False")
                if any(k.startswith("decoder_layer.") for k in unexpected):
                    hints.append("the checkpoint has an extra decoder layer: create the learner with decoder_layer=True")
                if not hints:
                    hints.append(
                        "it was saved with other settings or by an earlier version (before the TuneVLSeg-faithful "
                        "projections: shared-separate norm=True, cocoop meta_net='cocoop' hidden=32); "
                        "recreate the learner with the settings it was trained with"
                    )
                raise ConfigError(
                    f"checkpoint does not fit learner {self.name!r}: missing {missing[:6]}, unexpected "
                    f"{unexpected[:6]}; " + "; ".join(hints)
                )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

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
    """A projection as TuneVLSeg's ``BaseProjectorLearner.get_mlp_projection``: with ``hidden``,
    Linear(in, hidden) (Kaiming-normal weight for ReLU) -> ReLU -> Linear(hidden, out; no bias
    when a LayerNorm follows) [-> LayerNorm(out)]; without, a plain Linear(in, out) [->
    LayerNorm(out): our option, TuneVLSeg adds no norm without a hidden layer]."""
    if not hidden:
        linear = nn.Linear(in_dim, out_dim)
        return nn.Sequential(linear, nn.LayerNorm(out_dim)) if norm else linear
    first = nn.Linear(in_dim, hidden)
    nn.init.kaiming_normal_(first.weight, nonlinearity="relu")
    layers: list[nn.Module] = [first, nn.ReLU(), nn.Linear(hidden, out_dim, bias=not norm)]
    if norm:
        layers.append(nn.LayerNorm(out_dim))
    return nn.Sequential(*layers)


def _copies(module: nn.Module, depth: int) -> nn.ModuleList:
    """``depth`` independent copies of one initialised module (TuneVLSeg's per-depth layers with
    ``use_unified_projection: false``: ``copy.deepcopy(single_layer)``, so every depth starts equal)."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(depth))


@register_learner("coop")
class CoOp(PromptLearner):
    """Context optimisation: learned text context vectors at every depth."""

    name = "coop"
    uses_text = True

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int = 1,
        init: str | None = "random",
        std: float = 0.02,
        seed: int = 0,
        decoder_layer: bool | None = None,
    ) -> None:
        super().__init__(vlsm, n_ctx, depth, seed, decoder_layer)
        with seeded(seed):
            self.ctx = nn.Parameter(self._context(vlsm, depth, self.text_width, init, std))
        self.init = init

    def _rows(self) -> PromptSet:
        return PromptSet(text=self.ctx)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "init": self.init}


@register_learner("cocoop")
class CoCoOp(CoOp):
    """Conditional CoOp: a meta-net maps the L2-normalised image feature to a bias added to the
    context vectors of a depth, giving per-sample text prompts.

    ``meta_net="tvs"`` (default): TuneVLSeg's (``cocoop_context_learner.py`` on
    ``BaseProjectorLearner``, ``configs/model/cocoop/clipseg.yaml``): ONE meta-net shared by every
    depth (their default ``use_unified_projection``), Linear(E, ``hidden`` = 32; Kaiming-normal)
    -> ReLU -> Linear(32, Dt, no bias) [-> LayerNorm(Dt, no bias) with ``norm=True``; their
    config has none]; image features L2-normalised (``norm_image_features: true``).
    ``meta_net="cocoop"``: the original CoCoOp (Zhou et al. 2022, ``trainers/cocoop.py``):
    Linear(E, ``hidden`` = E // 16) -> ReLU -> Linear(-> Dt), PyTorch's default initialisation,
    one per depth (``hidden=32`` is this project's behaviour before the TuneVLSeg audit). The
    module list is ``meta_nets`` in both cases (one entry for "tvs").
    """

    name = "cocoop"
    image_conditioned = True

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int = 1,
        init: str | None = "random",
        std: float = 0.02,
        hidden: int | None = None,
        meta_net: str = "tvs",
        norm: bool = False,
        seed: int = 0,
        decoder_layer: bool | None = None,
    ) -> None:
        super().__init__(vlsm, n_ctx, depth, init, std, seed, decoder_layer)
        if meta_net not in ("tvs", "cocoop"):
            raise ConfigError(f"cocoop: meta_net must be 'tvs' or 'cocoop', got {meta_net!r}")
        if norm and meta_net != "tvs":
            raise ConfigError("cocoop: norm=True is an option of meta_net='tvs' only")
        e = vlsm.feature_dim
        with seeded(seed + 1):
            if meta_net == "tvs":
                self.hidden = hidden or 32
                net = _mlp(e, self.text_width, self.hidden, norm)
                # TuneVLSeg passes use_final_bias=False: no bias on the last Linear nor the LayerNorm
                net[2] = nn.Linear(self.hidden, self.text_width, bias=False)
                if norm:
                    net[3] = nn.LayerNorm(self.text_width, bias=False)
                self.meta_nets = nn.ModuleList([net])
            else:
                self.hidden = hidden or max(1, e // 16)
                self.meta_nets = nn.ModuleList(
                    nn.Sequential(nn.Linear(e, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.text_width))
                    for _ in range(depth)
                )
        self.meta_net, self.norm = meta_net, norm

    def condition(self, prompts: PromptSet, image_features: torch.Tensor) -> PromptSet:
        f = F.normalize(image_features.to(self.ctx.dtype), dim=-1)
        if self.meta_net == "tvs":
            bias = self.meta_nets[0](f).unsqueeze(1).expand(-1, self.depth, -1)  # (B, d, Dt)
        else:
            bias = torch.stack([net(f) for net in self.meta_nets], dim=1)  # (B, d, Dt)
        return dataclasses.replace(prompts, text=self.ctx.unsqueeze(0) + bias.unsqueeze(2))

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "meta_net": self.meta_net, "hidden": self.hidden, "norm": self.norm}


@register_learner("vpt-deep", "vpt")
class VPTDeep(PromptLearner):
    """Visual prompt tuning: ``n_ctx`` tokens appended after the patch tokens (before the
    vision pre-LayerNorm, as TuneVLSeg's ``vpt_clipseg.py``), replaced after blocks 1..d-1.
    ``depth=None`` means every vision layer (the VPT paper's "deep")."""

    name = "vpt-deep"
    uses_vision = True
    tvs_decoder_layer = True

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int | None = None,
        std: float = 0.02,
        seed: int = 0,
        decoder_layer: bool | None = None,
        vision_prompt_position: str = "pre-norm",
    ) -> None:
        depth = vlsm.num_vision_layers if depth is None else depth
        super().__init__(vlsm, n_ctx, depth, seed, decoder_layer, vision_prompt_position)
        with seeded(seed):
            self.ctx = nn.Parameter(self._context(vlsm, self.depth, self.vision_width, None, std))

    def _rows(self) -> PromptSet:
        return PromptSet(vision=self.ctx)


@register_learner("vpt-shallow")
class VPTShallow(VPTDeep):
    """VPT with prompts at the input only (depth 1)."""

    name = "vpt-shallow"

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int = 1,
        std: float = 0.02,
        seed: int = 0,
        decoder_layer: bool | None = None,
        vision_prompt_position: str = "pre-norm",
    ) -> None:
        if depth != 1:
            raise ConfigError(f"vpt-shallow has depth 1 by definition (got depth={depth}); use vpt-deep")
        super().__init__(vlsm, n_ctx, 1, std, seed, decoder_layer, vision_prompt_position)


@register_learner("maple")
class MaPLe(CoOp):
    """Multi-modal prompt learning: text context vectors per depth (as CoOp); the vision
    prompts of depth r are a per-depth projection of the text context of depth r.

    Default (TuneVLSeg, ``maple_context_learner.py`` + ``configs/model/maple_clipseg.yaml``:
    ``intermediate_dim: 64``, ``use_proj_norm: true``, ``use_unified_projection: false``):
    Linear(Dt, 64; Kaiming-normal) -> ReLU -> Linear(64, Dv, no bias) -> LayerNorm(Dv), one per
    depth. ``hidden=None, norm=False`` is the MaPLe paper's projection (``trainers/maple.py``:
    one ``nn.Linear(ctx_dim, 768)`` per depth).
    """

    name = "maple"
    uses_vision = True
    tvs_decoder_layer = True

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
        decoder_layer: bool | None = None,
        vision_prompt_position: str = "pre-norm",
    ) -> None:
        PromptLearner.__init__(self, vlsm, n_ctx, depth, seed, decoder_layer, vision_prompt_position)
        with seeded(seed):
            self.ctx = nn.Parameter(self._context(vlsm, depth, self.text_width, init, std))
        self.init = init
        with seeded(seed + 1):
            self.proj = nn.ModuleList(_mlp(self.text_width, self.vision_width, hidden, norm) for _ in range(depth))
        self.hidden, self.norm = hidden, norm

    def _rows(self) -> PromptSet:
        vision = torch.stack([proj(self.ctx[r]) for r, proj in enumerate(self.proj)])
        return PromptSet(text=self.ctx, vision=vision)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "hidden": self.hidden, "norm": self.norm}


@register_learner("shared-separate")
class SharedSeparate(PromptLearner):
    """Shared vectors (d, n, Ds) with per-depth projections into the text and the vision widths.

    Default (TuneVLSeg, ``shared_separate_learner.py`` + ``configs/model/shared_separate_clipseg.yaml``:
    ``intermediate_dim: null``, so ``get_mlp_projection`` returns a plain ``nn.Linear`` whatever
    ``use_proj_norm`` says): Linear(Ds, Dt) and Linear(Ds, Dv) per depth, every depth a copy of
    one initialised layer (their ``copy.deepcopy``). ``norm=True`` adds a LayerNorm after each
    (this project's behaviour before the TuneVLSeg audit).
    """

    name = "shared-separate"
    uses_text = True
    uses_vision = True
    tvs_decoder_layer = True

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int = 1,
        shared_dim: int = 64,
        norm: bool = False,
        std: float = 0.02,
        seed: int = 0,
        decoder_layer: bool | None = None,
        vision_prompt_position: str = "pre-norm",
    ) -> None:
        super().__init__(vlsm, n_ctx, depth, seed, decoder_layer, vision_prompt_position)
        with seeded(seed):
            self.ctx = nn.Parameter(torch.randn(depth, n_ctx, shared_dim) * std)
            self.to_text = _copies(_mlp(shared_dim, self.text_width, None, norm), depth)
            self.to_vision = _copies(_mlp(shared_dim, self.vision_width, None, norm), depth)
        self.shared_dim, self.norm = shared_dim, norm

    def _rows(self) -> PromptSet:
        text = torch.stack([proj(self.ctx[r]) for r, proj in enumerate(self.to_text)])
        vision = torch.stack([proj(self.ctx[r]) for r, proj in enumerate(self.to_vision)])
        return PromptSet(text=text, vision=vision)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "shared_dim": self.shared_dim, "norm": self.norm}


@register_learner("shared-attention", "shared-attn")
class SharedAttention(PromptLearner):
    """Shared vectors (d, n, Dt + Dv); per depth a transformer encoder layer, then the first Dt
    channels are the text prompt, the rest the vision one (depths never mix).

    Layer as TuneVLSeg's ``configs/model/shared_attn_clipseg.yaml``: ``nn.TransformerEncoderLayer``
    with 16 heads, FFN 1536, dropout 0.25, ``norm_first`` (pre-norm), ReLU; every depth a copy of
    one initialised layer (their ``copy.deepcopy``). ``attention="tvs"`` (default) lays the
    sequence out as TuneVLSeg's ``shared_attn_learner.py`` does: ``context_vectors[index]
    .unsqueeze(0)``, shape (1, n, W), into a layer that is not ``batch_first``, i.e. a sequence of
    length 1 and a batch of n: each context vector attends to itself only (the attention is a
    per-vector linear map). ``attention="mix"`` attends over the n vectors of a depth (this
    project's behaviour before the TuneVLSeg audit).
    """

    name = "shared-attention"
    uses_text = True
    uses_vision = True
    tvs_decoder_layer = True

    def __init__(
        self,
        vlsm: "VLSM",
        n_ctx: int = 4,
        depth: int = 1,
        nhead: int = 16,
        ffn_dim: int = 1536,
        dropout: float = 0.25,
        attention: str = "tvs",
        std: float = 0.02,
        seed: int = 0,
        decoder_layer: bool | None = None,
        vision_prompt_position: str = "pre-norm",
    ) -> None:
        super().__init__(vlsm, n_ctx, depth, seed, decoder_layer, vision_prompt_position)
        if attention not in ("tvs", "mix"):
            raise ConfigError(f"shared-attention: attention must be 'tvs' or 'mix', got {attention!r}")
        width = self.text_width + self.vision_width
        if width % nhead:
            raise ConfigError(f"shared-attention: nhead={nhead} does not divide the width {width} (text + vision)")
        with seeded(seed):
            self.ctx = nn.Parameter(torch.randn(depth, n_ctx, width) * std)
            layer = nn.TransformerEncoderLayer(
                width, nhead, dim_feedforward=ffn_dim, dropout=dropout, batch_first=True, norm_first=True
            )
            self.layers = _copies(layer, depth)
        self.attention = attention

    def _rows(self) -> PromptSet:
        if self.attention == "tvs":  # (n, 1, W): n sequences of one vector each
            out = torch.stack([layer(self.ctx[r].unsqueeze(1)).squeeze(1) for r, layer in enumerate(self.layers)])
        else:  # (1, n, W): one sequence of the n vectors
            out = torch.cat([layer(self.ctx[r : r + 1]) for r, layer in enumerate(self.layers)], dim=0)
        return PromptSet(text=out[..., : self.text_width], vision=out[..., self.text_width :])

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "attention": self.attention}


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
