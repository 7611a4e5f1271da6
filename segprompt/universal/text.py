"""Text encoders for the universal decoder: texts -> pooled embeddings and token features.

* :class:`TowerTextEncoder` wraps a :class:`segprompt.backbones.TextTower` (open_clip models,
  BiomedCLIP, transformers CLIP): the pooled, projected embedding is the class embedding; the
  last block's token features are the grounding tokens.
* :class:`VocabularyTextEncoder` is a closed vocabulary of words with learned vectors, in plain
  PyTorch: what the bundled ``universal-tiny`` uses, so that it needs no download and no
  vision-language package. A text is the words of the vocabulary it contains (``"the star"``
  -> ``star``); a text with none of them is refused with the list of known words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from segprompt.errors import PromptError

__all__ = ["TextFeatures", "TextEncoder", "VocabularyTextEncoder", "TowerTextEncoder", "build_text_encoder"]


@dataclass
class TextFeatures:
    """``pooled`` (N, E) class embeddings; ``tokens`` (N, L, W) token features; ``valid`` (N, L) bool."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    valid: torch.Tensor


class TextEncoder(nn.Module):
    """Interface: ``embed_dim`` (E, pooled width), ``token_dim`` (W), ``forward(texts) -> TextFeatures``."""

    embed_dim: int
    token_dim: int

    def forward(self, texts: Sequence[str]) -> TextFeatures:  # pragma: no cover - interface
        raise NotImplementedError


class VocabularyTextEncoder(TextEncoder):
    """A learned vector per word of ``words``; the pooled embedding is the mean of a text's words."""

    def __init__(self, words: Sequence[str], dim: int) -> None:
        super().__init__()
        self.words = tuple(dict.fromkeys(w for text in words for w in re.findall(r"[a-z0-9\-]+", text.lower())))
        if not self.words:
            raise PromptError("a vocabulary text encoder needs at least one word")
        self.index = {w: i for i, w in enumerate(self.words)}
        self.embedding = nn.Embedding(len(self.words), dim)
        nn.init.normal_(self.embedding.weight, std=1.0)
        self.embed_dim = self.token_dim = dim

    def add_words(self, words: Sequence[str]) -> list[str]:
        """Learn new words too (finetuning on a dataset with other class names): each new word gets
        a fresh random vector; known words keep theirs. Returns the words added."""
        split = [w for text in words for w in re.findall(r"[a-z0-9\-]+", text.lower())]
        new = list(dict.fromkeys(w for w in split if w not in self.index))
        if new:
            old = self.embedding.weight.data
            grown = torch.randn((len(new), old.shape[1]), device=old.device, dtype=old.dtype)
            self.embedding = nn.Embedding.from_pretrained(torch.cat((old, grown)), freeze=False)
            self.words = self.words + tuple(new)
            self.index = {w: i for i, w in enumerate(self.words)}
        return new

    def word_ids(self, text: str) -> list[int]:
        ids = [self.index[w] for w in re.findall(r"[a-z0-9\-]+", text.lower()) if w in self.index]
        if not ids:
            raise PromptError(f"text prompt {text!r} has no word this model knows; it knows: {', '.join(self.words)}")
        return ids

    def forward(self, texts: Sequence[str]) -> TextFeatures:
        ids = [self.word_ids(t) for t in texts]
        length = max((len(i) for i in ids), default=1)
        dev = self.embedding.weight.device
        padded = torch.zeros((len(ids), length), dtype=torch.int64, device=dev)
        valid = torch.zeros((len(ids), length), dtype=torch.bool, device=dev)
        for r, row in enumerate(ids):
            padded[r, : len(row)] = torch.tensor(row, device=dev)
            valid[r, : len(row)] = True
        tokens = self.embedding(padded) * valid[..., None]
        pooled = tokens.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        return TextFeatures(pooled=pooled, tokens=tokens, valid=valid)


class TowerTextEncoder(TextEncoder):
    """A :class:`~segprompt.backbones.TextTower`: pooled = ``tower.encode`` (the model's projected
    text embedding), tokens = the last block's output (observed through the tower's hooks).
    Frozen unless ``trainable``."""

    def __init__(self, tower: Any, model: nn.Module, embed_dim: int, trainable: bool = False) -> None:
        super().__init__()
        self.tower = tower
        self.model = model  # registered so that .to(device) and checkpoints carry it
        self.embed_dim, self.token_dim = int(embed_dim), int(tower.width)
        self.trainable = trainable
        if not trainable:
            for p in model.parameters():
                p.requires_grad_(False)

    def forward(self, texts: Sequence[str]) -> TextFeatures:
        tokens = self.tower.tokenize(list(texts)).to(self.tower.embedding.weight.device)
        layer = self.tower.num_layers
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()), self.tower.observe([layer]) as seen:
            pooled = self.tower.encode(tokens)
        feats = seen[layer]
        if tokens.attention_mask is not None:
            valid = tokens.attention_mask.bool()
        else:
            valid = tokens.input_ids != 0
            valid[:, 0] = True
        return TextFeatures(pooled=pooled.float(), tokens=feats.float(), valid=valid[:, : feats.shape[1]])


def build_text_encoder(kind: str, words: Sequence[str], dim: int, **kwargs: Any) -> TextEncoder:
    """``vocabulary`` (``words``, ``dim``); ``open_clip`` (``model=`` an open_clip CLIP model or
    ``model_name=`` / ``pretrained=``); ``hf_clip`` (``model=`` a transformers CLIPModel)."""
    from segprompt.errors import ConfigError

    if kind == "vocabulary":
        return VocabularyTextEncoder(words, dim)
    if kind in ("open_clip", "hf_clip"):
        from segprompt.backbones import adapt

        model = kwargs.get("model")
        if model is None and kind == "open_clip":
            try:
                import open_clip
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ConfigError("the open_clip text encoder needs open_clip: pip install 'segprompt[vlm]'") from exc
            model = open_clip.create_model(kwargs["model_name"], pretrained=kwargs.get("pretrained"))
        if model is None:
            raise ConfigError(f"text encoder {kind!r} needs model=<a {kind} model>")
        adapter = adapt(model, kwargs.get("tokenizer"))
        tower = adapter.text
        if tower is None:
            raise ConfigError(f"{type(model).__name__} has no text tower")
        with torch.no_grad():
            width = int(tower.encode(tower.tokenize(["a"])).shape[-1])
        return TowerTextEncoder(tower, model, embed_dim=width, trainable=bool(kwargs.get("trainable", False)))
    raise ConfigError(f"unknown text encoder {kind!r}; use vocabulary, open_clip or hf_clip")
