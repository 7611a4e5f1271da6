"""UniversalModel: backbone pyramid + pixel decoder + visual sampler + text encoder + decoder.

.. code-block:: python

    model = UniversalModel(UniversalConfig(backbone="sam-tiny", words=("disc", "star")))
    feats = model.encode_images(pixels)                  # (B, 3, S, S) float 0..255, padded
    outs = model.decode(feats, prompt_tensors)           # one DecoderOutput per layer
    logits = model.class_logits(outs[-1].class_embed, model.embed_texts(["disc", "star"]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segprompt.universal.config import UniversalConfig
from segprompt.universal.decoder import DecoderOutput, UniversalDecoder
from segprompt.universal.pixel_decoder import DetailStem, PixelDecoder
from segprompt.universal.prompting import PromptTensors
from segprompt.universal.sampler import KIND_INDEX, VisualSampler
from segprompt.universal.text import TextEncoder, build_text_encoder

__all__ = ["UniversalModel", "ImageFeatures"]


@dataclass
class ImageFeatures:
    """``mask_features`` (B, mask_dim, h4, w4) and ``scales`` (3 maps (B, D, h, w), coarse to fine)."""

    mask_features: torch.Tensor
    scales: list[torch.Tensor]

    def rows(self, index: int) -> "ImageFeatures":
        """Image ``index`` alone, as a batch of one."""
        return ImageFeatures(self.mask_features[index : index + 1].float(), [s[index : index + 1].float() for s in self.scales])

    def __len__(self) -> int:
        return int(self.mask_features.shape[0])


class UniversalModel(nn.Module):
    """The sum of the parts (see :mod:`segprompt.universal`). ``pyramid`` / ``text``: prebuilt
    modules (tests, finetuning); by default both are built from ``cfg``."""

    def __init__(self, cfg: UniversalConfig, pyramid: nn.Module | None = None, text: TextEncoder | None = None) -> None:
        super().__init__()
        if pyramid is None:
            from segprompt.backbones.pyramid import create_pyramid

            pyramid = create_pyramid(cfg.backbone, **cfg.backbone_kwargs)
        self.cfg = cfg
        self.pyramid = pyramid
        self.pixel_decoder = PixelDecoder(pyramid.channels, cfg.hidden_dim, cfg.mask_dim, len(pyramid.strides), cfg.encoder_layers, cfg.num_heads)
        self.detail = DetailStem(cfg.detail_dim, cfg.mask_dim) if cfg.detail_dim else None
        self.sampler = VisualSampler(cfg.hidden_dim)
        self.text = text if text is not None else build_text_encoder(cfg.text, cfg.words, cfg.embed_dim, **cfg.text_kwargs)
        self.text_proj = nn.Linear(self.text.token_dim, cfg.hidden_dim)
        self.text_type = nn.Parameter(torch.zeros(cfg.hidden_dim))
        self.decoder = UniversalDecoder(cfg, self.text.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.no_object = nn.Parameter(torch.randn(self.text.embed_dim) * 0.02)

    @property
    def img_size(self) -> int:
        return int(self.pyramid.img_size)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # -- images ----------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None) -> ImageFeatures:
        """(B, 3, S, S) float RGB 0..255, resized longest side and zero-padded -> features.
        ``sizes``: the (h, w) of each image's content before padding (the padding is then zero
        after normalisation, segment-anything's convention)."""
        levels = self.pyramid(pixels, sizes) if sizes is not None else self.pyramid(pixels)
        detail = self.detail(self.pyramid.normalise(pixels, sizes)) if self.detail is not None else None
        mask_features, scales = self.pixel_decoder(levels, detail)
        return ImageFeatures(mask_features, scales)

    # -- texts -----------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(K, E) L2-normalised class embeddings of ``texts`` (a vocabulary of class names)."""
        return F.normalize(self.text(list(texts)).pooled, dim=-1)

    def class_logits(self, class_embed: torch.Tensor, text_embed: torch.Tensor, no_object: bool = True) -> torch.Tensor:
        """(..., Q, E) query embeddings x (K, E) text embeddings -> (..., Q, K [+1]) scaled cosine logits;
        with ``no_object`` the last column is the learned no-object embedding's."""
        if no_object:
            text_embed = torch.cat((text_embed, F.normalize(self.no_object, dim=-1)[None]), 0)
        return self.logit_scale.exp().clamp(max=100) * class_embed @ text_embed.t()

    # -- prompts ---------------------------------------------------------------
    def prompt_tokens(self, feats: ImageFeatures, prompts: PromptTensors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens of R rows: visual (sampled on the row's image), reference (sampled on the
        reference image's features, ``prompts.ref_image``), text. Returns content, position
        (R, T, D) and valid (R, T)."""
        dev = feats.mask_features.device
        positioned = prompts.kinds != KIND_INDEX["reference"]
        content, pos = self.sampler(feats.scales, prompts.row_image, prompts.coords, prompts.kinds, prompts.polarity, positioned)
        parts = [(content, pos, prompts.valid)]
        if prompts.ref_coords is not None and prompts.ref_coords.shape[1]:
            has_ref = prompts.ref_image >= 0
            kinds = torch.full(prompts.ref_coords.shape[:2], KIND_INDEX["reference"], dtype=torch.int64, device=dev)
            rc, rp = self.sampler(feats.scales, prompts.ref_image.clamp(min=0), prompts.ref_coords, kinds, torch.ones_like(kinds), torch.zeros_like(kinds, dtype=torch.bool))
            parts.append((rc, rp, prompts.ref_valid & has_ref[:, None]))
        with_text = [i for i, t in enumerate(prompts.texts) if t]
        if with_text:
            tf = self.text([prompts.texts[i] for i in with_text])
            r, d = len(prompts), self.cfg.hidden_dim
            tok = torch.zeros((r, tf.tokens.shape[1], d), device=dev, dtype=content.dtype)
            valid = torch.zeros((r, tf.tokens.shape[1]), dtype=torch.bool, device=dev)
            idx = torch.tensor(with_text, device=dev)
            tok[idx] = (self.text_proj(tf.tokens.to(dev)) + self.text_type).to(tok.dtype)
            valid[idx] = tf.valid.to(dev)
            parts.append((tok, torch.zeros_like(tok), valid))
        return tuple(torch.cat(x, 1) for x in zip(*parts))  # type: ignore[return-value]

    def decode(self, feats: ImageFeatures, prompts: PromptTensors | None = None) -> list[DecoderOutput]:
        """Decode R rows (one per prompt set; with ``prompts=None`` one unprompted row per image)."""
        dev = feats.mask_features.device
        if prompts is None:  # generic: object queries only (no prompt rows)
            d = self.cfg.hidden_dim
            empty = torch.zeros((0, 0, d), device=dev, dtype=feats.mask_features.dtype)
            rows = torch.zeros(0, dtype=torch.int64, device=dev)
            return self.decoder(feats.scales, feats.mask_features, rows, empty, empty, torch.zeros((0, 0), dtype=torch.bool, device=dev))
        tokens, token_pos, valid = self.prompt_tokens(feats, prompts)
        return self.decoder(feats.scales, feats.mask_features, prompts.row_image, tokens, token_pos, valid, prompts.memory, prompts.has_memory, prompts.box_region)

    def forward(self, pixels: torch.Tensor, prompts: PromptTensors | None = None) -> list[DecoderOutput]:
        return self.decode(self.encode_images(pixels), prompts)

    def extra_repr(self) -> str:
        return f"config={self.cfg.to_dict()}"
