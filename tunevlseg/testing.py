"""Tiny random models for tests and demos (no downloads).

* :func:`tiny_hf_clip` - a transformers ``CLIPModel`` (CLIP BPE vocabulary);
* :func:`tiny_custom_text_clip` - an open_clip ``CustomTextCLIP`` with a ``TextTransformer``;
* :func:`tiny_biomedclip_like` - an open_clip ``CustomTextCLIP`` laid out like BiomedCLIP: an
  ``HFTextEncoder`` over a tiny random BERT (with a small word-piece vocabulary written to a
  temporary folder) and a ``TimmModel`` over a tiny timm ViT.

None of these are trained models.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from segprompt.backbones import HFTokenizer, PromptTokenizer
from tunevlseg.models import tiny_clip_tower_configs
from tunevlseg.prompt_set import seeded

__all__ = ["tiny_hf_clip", "tiny_custom_text_clip", "tiny_biomedclip_like", "TINY_BERT_WORDS"]

#: the word-piece vocabulary of the tiny BERT of :func:`tiny_biomedclip_like`
TINY_BERT_WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] x a photo of an cat dog pink polyp tumour benign malignant "
    "lesion breast ultrasound image . , in the"
).split()


@lru_cache(maxsize=1)
def _scratch() -> Path:
    """A temporary folder for the tiny vocabulary, removed when the interpreter exits."""
    holder = tempfile.TemporaryDirectory(prefix="segprompt-tiny-bert-")
    _KEEP.append(holder)
    return Path(holder.name)


_KEEP: list[tempfile.TemporaryDirectory] = []


def tiny_hf_clip(
    seed: int = 0, width: int = 32, layers: int = 3, image_size: int = 32, patch_size: int = 8
) -> nn.Module:
    """A tiny random transformers ``CLIPModel``."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        **tiny_clip_tower_configs(width, layers, image_size, patch_size),
        projection_dim=16,
    )
    with seeded(seed):
        return CLIPModel(config).eval()


def tiny_custom_text_clip(
    seed: int = 0, width: int = 32, layers: int = 3, pool_type: str = "avg"
) -> tuple[nn.Module, Any]:
    """A tiny open_clip ``CustomTextCLIP`` (``TextTransformer`` text tower) and its tokenizer."""
    from open_clip.model import CustomTextCLIP
    from open_clip.tokenizer import SimpleTokenizer

    with seeded(seed):
        model = CustomTextCLIP(
            embed_dim=width,
            vision_cfg=dict(layers=layers, width=width, head_width=8, patch_size=8, image_size=32, pool_type=pool_type),
            text_cfg=dict(context_length=77, vocab_size=49408, width=width, heads=4, layers=layers),
        )
    return model.eval(), SimpleTokenizer(context_length=77)


def tiny_biomedclip_like(
    seed: int = 0, width: int = 32, text_layers: int = 3, vision_layers: int = 3, folder: str | Path | None = None
) -> tuple[nn.Module, PromptTokenizer]:
    """A BiomedCLIP-shaped tiny model: open_clip ``CustomTextCLIP`` whose text tower is an
    ``HFTextEncoder`` (BERT, CLS pooling, linear projection) and whose vision tower is a
    ``TimmModel`` over a timm ViT. Returns (model, tokenizer)."""
    import timm
    from open_clip.hf_model import HFTextEncoder
    from open_clip.model import CustomTextCLIP
    from open_clip.timm_model import TimmModel
    from transformers import BertConfig, BertTokenizer

    folder = Path(folder) if folder is not None else _scratch()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(TINY_BERT_WORDS) + "\n")
    tokenizer = HFTokenizer(BertTokenizer(str(vocab)), context_length=32)
    with seeded(seed):
        model = CustomTextCLIP(
            embed_dim=width,
            vision_cfg=dict(layers=1, width=width, head_width=8, patch_size=8, image_size=32),
            text_cfg=dict(context_length=32, vocab_size=len(TINY_BERT_WORDS), width=width, heads=4, layers=1),
        )
        bert = BertConfig(
            vocab_size=len(TINY_BERT_WORDS),
            hidden_size=width,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            intermediate_size=2 * width,
            max_position_embeddings=64,
        )
        model.text = HFTextEncoder(
            "tiny-bert", width, config=bert, pooler_type="cls_last_hidden_state_pooler", proj_type="linear"
        )
        # TimmModel builds its trunk by name only: build it, then give it a tiny trunk and head
        visual = TimmModel("vit_tiny_patch16_224", width, image_size=32, pool="", proj="linear")
        visual.trunk = timm.create_model(
            "vit_tiny_patch16_224",
            img_size=32,
            patch_size=8,
            depth=vision_layers,
            embed_dim=width,
            num_heads=4,
            num_classes=0,
        )
        visual.head = nn.Sequential(nn.Linear(width, width, bias=False))
        model.visual = visual
    return model.eval(), tokenizer
