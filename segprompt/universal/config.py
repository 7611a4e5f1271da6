"""The sizes of a universal model: one dataclass, saved inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from segprompt.errors import ConfigError

__all__ = ["UniversalConfig", "PROMPT_KINDS_TOKENS", "from_fields"]

#: token kinds of the visual sampler (one learned embedding each)
PROMPT_KINDS_TOKENS: tuple[str, ...] = ("point", "box", "scribble", "mask", "reference")


@dataclass
class UniversalConfig:
    """Decoder sizes and the backbone to build it on.

    SEEM's values (ANCHORS.md section 5) are hidden 512, 9 layers over 3 scales, 101 object
    queries, 512 sampled points; the bundled ``universal-tiny`` uses a few percent of that.

    Attributes:
        backbone: name for :func:`segprompt.backbones.pyramid.create_pyramid` (``sam``,
            ``sam-tiny``, ``open_clip``, ``timm``); ``backbone_kwargs`` go with it (not the
            checkpoint path, which is a run argument).
        text: text encoder kind: ``vocabulary`` (closed vocabulary ``words``, plain PyTorch) or
            ``open_clip`` / ``hf_clip`` (the text towers of :mod:`segprompt.backbones`).
        hidden_dim: width of queries, tokens and the pixel decoder's scales.
        mask_dim: width of the stride-4 mask features.
        embed_dim: width of the joint visual-semantic space (the text encoder's output width).
        num_queries: learnable object queries (generic mode).
        num_prompt_queries: outputs per prompt set (candidate masks, SAM's multimask).
        num_memory: memory tokens carrying the previous round's mask.
        dec_layers: decoder layers, cycling over the 3 scales coarse to fine.
        tokens_per_prompt: at most this many tokens sampled inside one region prompt.
        detail_dim: width of the :class:`~segprompt.universal.pixel_decoder.DetailStem` that adds
            the image's own stride-4 detail to the mask features (0: none, the first
            universal-tiny; a plain ViT alone sees only its stride-16 patches).
        prompt_to_pixel: each prompt row's mask features attend to its prompt tokens and take
            in its previous-round mask (:class:`~segprompt.universal.pixel_prompt.
            PixelPromptAttention`, SAM's token-to-image step), so that a click can change the
            mask near it; object queries keep the shared features. False: the first universal-tiny.
        box_map: with ``prompt_to_pixel``, a box also enters those features as a region (two 3x3
            convolutions of the share of each cell inside it), as a dense prompt.
    """

    backbone: str = "sam-tiny"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    text: str = "vocabulary"
    words: tuple[str, ...] = ()
    text_kwargs: dict[str, Any] = field(default_factory=dict)
    hidden_dim: int = 128
    mask_dim: int = 128
    embed_dim: int = 128
    num_queries: int = 16
    num_prompt_queries: int = 3
    num_memory: int = 2
    dec_layers: int = 6
    num_heads: int = 4
    dim_feedforward: int = 512
    encoder_layers: int = 1
    tokens_per_prompt: int = 16
    dropout: float = 0.0
    detail_dim: int = 0
    prompt_to_pixel: bool = False
    box_map: bool = False

    def __post_init__(self) -> None:
        self.words = tuple(self.words)
        for name in ("hidden_dim", "mask_dim", "embed_dim", "num_queries", "num_prompt_queries", "dec_layers", "num_heads", "tokens_per_prompt"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"universal config: {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"universal config: hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_memory < 0 or self.encoder_layers < 0 or self.detail_dim < 0:
            raise ConfigError("universal config: num_memory, encoder_layers and detail_dim must be >= 0")
        if self.box_map and not self.prompt_to_pixel:
            raise ConfigError("universal config: box_map is a part of prompt_to_pixel; set both")
        if self.text == "vocabulary" and not self.words:
            raise ConfigError("universal config: a vocabulary text encoder needs words=(...)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["words"] = list(self.words)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UniversalConfig":
        return from_fields(cls, data, "universal config")


def from_fields(cls: Any, data: Mapping[str, Any], what: str) -> Any:
    """``cls(**data)`` for a dataclass, a ConfigError naming the unknown keys (``what``: whose)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{what}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**dict(data))
