"""Tokenizers that know where CoOp-style context slots sit.

A text prompt learner does not insert tokens into a sequence (which would shift positions, the
causal mask and the EOS pooling index). Instead the text is tokenised from a template with
``n_ctx`` placeholder words in front of it, e.g. ``"X X X X a pink polyp"``; the placeholder
token embeddings are then replaced by learned vectors through a hook on the token embedding
(:meth:`segprompt.backbones.TextTower.prompted`). Positions, masks and the EOS index are those of
an ordinary tokenisation, so the library's own forward stays correct.

:class:`PromptTokenizer` is the common interface; implementations wrap the CLIP BPE vocabulary
that ships with open_clip (:class:`CLIPBPETokenizer`, works offline), any open_clip tokenizer
(:class:`OpenCLIPTokenizer`), and any transformers tokenizer (:class:`HFTokenizer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Sequence

import torch

from segprompt.errors import ConfigError

__all__ = ["Tokens", "PromptTokenizer", "CLIPBPETokenizer", "OpenCLIPTokenizer", "HFTokenizer", "PLACEHOLDER"]

#: the placeholder word put in front of a text, one per context slot; a single token in the
#: CLIP BPE vocabulary ("x</w>") and in BERT word-piece vocabularies ("x")
PLACEHOLDER = "X"


@dataclass
class Tokens:
    """A tokenised batch.

    input_ids:       (B, L) token ids, with the tokenizer's special tokens.
    attention_mask:  (B, L) 1 for real tokens, 0 for padding, or None where the text tower
                     computes its own mask (open_clip towers).
    n_ctx:           how many placeholder slots follow the start token (0: a plain tokenisation).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None
    n_ctx: int = 0

    def to(self, device: torch.device | str) -> "Tokens":
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return Tokens(self.input_ids.to(device), mask, self.n_ctx)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class PromptTokenizer:
    """Interface: ``tok(texts, n_ctx=0) -> Tokens`` plus what the prompt hooks need."""

    placeholder: str = PLACEHOLDER
    context_length: int = 77

    def batch(self, texts: Sequence[str]) -> Tokens:  # pragma: no cover - interface
        """Tokenise ``texts`` as they are (special tokens added, padded)."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:  # pragma: no cover - interface
        """Token ids of ``text`` without special tokens."""
        raise NotImplementedError

    def __call__(self, texts: Sequence[str] | str, n_ctx: int = 0) -> Tokens:
        """Tokenise; with ``n_ctx > 0`` each text gets ``n_ctx`` placeholder words in front, and
        the result is checked to hold them at ``slot_start .. slot_start + n_ctx - 1``."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ConfigError("cannot tokenise an empty list of texts")
        if n_ctx < 0:
            raise ConfigError(f"n_ctx must be >= 0, got {n_ctx}")
        if n_ctx:
            prefix = " ".join([self.placeholder] * n_ctx)
            texts = [f"{prefix} {t}".rstrip() for t in texts]
        tokens = self.batch(texts)
        tokens.n_ctx = n_ctx
        if n_ctx:
            self.check_slots(tokens.input_ids, n_ctx)
        return tokens

    @cached_property
    def placeholder_id(self) -> int:
        ids = self.encode(self.placeholder)
        if len(ids) != 1:
            raise ConfigError(
                f"the placeholder {self.placeholder!r} is {len(ids)} tokens for this tokenizer; "
                "set a placeholder word that is a single token"
            )
        return ids[0]

    @cached_property
    def slot_start(self) -> int:
        """Index of the first context slot (1 after a BOS / [CLS] token, 0 without one)."""
        ids = self.batch([f"{self.placeholder} {self.placeholder} dog"]).input_ids[0].tolist()
        try:
            start = ids.index(self.placeholder_id)
        except ValueError:  # pragma: no cover - would mean a broken tokenizer
            raise ConfigError("the tokenizer drops the placeholder word; cannot place context slots") from None
        if ids[start + 1] != self.placeholder_id:
            raise ConfigError("placeholder words do not tokenise one token each; cannot place context slots")
        return start

    def check_slots(self, input_ids: torch.Tensor, n_ctx: int) -> None:
        """Raise ConfigError unless every row holds ``n_ctx`` placeholders at the slots."""
        start = self.slot_start
        if input_ids.shape[1] < start + n_ctx:
            raise ConfigError(f"token sequences of length {input_ids.shape[1]} cannot hold {n_ctx} context slots")
        slots = input_ids[:, start : start + n_ctx]
        if not bool((slots == self.placeholder_id).all()):
            raise ConfigError(
                f"the text tokens do not hold {n_ctx} placeholder tokens ({self.placeholder!r}, id "
                f"{self.placeholder_id}) at positions {start}..{start + n_ctx - 1}: tokenise the texts "
                f"with the model's tokenize(texts, n_ctx={n_ctx}) when a text prompt learner is used"
            )

    def embedding_ids(self, text: str) -> list[int]:
        """Ids of ``text`` (no special tokens) for initialising context vectors."""
        return self.encode(text)


class CLIPBPETokenizer(PromptTokenizer):
    """The CLIP BPE vocabulary (shipped with open_clip, offline) in the transformers layout:
    ``[BOS] tokens [EOS]`` padded with 0 to the longest text, with an attention mask. Ids equal
    those of transformers' ``CLIPTokenizer`` for the OpenAI vocabulary; used by the tiny CLIPSeg
    models and whenever a CLIPSeg folder has no tokenizer files."""

    def __init__(self, context_length: int = 77, pad_to: str = "longest") -> None:
        if pad_to not in ("longest", "max_length"):
            raise ConfigError(f"pad_to must be 'longest' or 'max_length', got {pad_to!r}")
        self._tok = _simple_tokenizer(context_length)
        self.context_length = context_length
        self.pad_to = pad_to
        self.bos_id = int(self._tok.sot_token_id)
        self.eos_id = int(self._tok.eot_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def batch(self, texts: Sequence[str]) -> Tokens:
        rows = []
        for text in texts:
            ids = [self.bos_id] + self.encode(text)[: self.context_length - 2] + [self.eos_id]
            rows.append(ids)
        length = self.context_length if self.pad_to == "max_length" else max(len(r) for r in rows)
        input_ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        return Tokens(input_ids, mask)


@lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int) -> Any:
    """open_clip's BPE tokenizer (loading the vocabulary takes ~0.1 s; it is stateless apart
    from a memo of encoded words, so one instance is shared)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


class OpenCLIPTokenizer(PromptTokenizer):
    """Any open_clip tokenizer (``open_clip.get_tokenizer(name)``): ids padded to the model's
    context length, no attention mask (open_clip text towers build their own)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.context_length = int(getattr(tokenizer, "context_length", 77) or 77)

    def encode(self, text: str) -> list[int]:
        tok = self._tok
        if hasattr(tok, "encode") and hasattr(tok, "sot_token_id"):  # open_clip SimpleTokenizer
            return list(tok.encode(text))
        inner = getattr(tok, "tokenizer", None)  # HFTokenizer / SigLipTokenizer wrap a transformers one
        if inner is not None:
            clean = getattr(tok, "clean_fn", None)
            text = clean(text) if callable(clean) else text
            return list(inner(text, add_special_tokens=False)["input_ids"])
        raise ConfigError(f"cannot encode words with a {type(tok).__name__} tokenizer")

    def batch(self, texts: Sequence[str]) -> Tokens:
        return Tokens(self._tok(list(texts)), None)


class HFTokenizer(PromptTokenizer):
    """A transformers tokenizer (e.g. the ``CLIPTokenizer`` saved in a CLIPSeg folder)."""

    def __init__(self, tokenizer: Any, context_length: int | None = None) -> None:
        self._tok = tokenizer
        max_len = getattr(tokenizer, "model_max_length", None)
        if context_length is None:
            context_length = max_len if isinstance(max_len, int) and 0 < max_len < 100_000 else 77
        self.context_length = int(context_length)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def batch(self, texts: Sequence[str]) -> Tokens:
        out = self._tok(
            list(texts), padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return Tokens(out["input_ids"], out.get("attention_mask"))
