"""Tower adapters: the transformer blocks of a text or vision tower, and prompt injection.

One definition of prompt depth for every backbone
-------------------------------------------------
A tower has ``L`` transformer blocks, numbered 1..L. A prompt tensor has one row per depth,
``prompts[r]`` for r = 0..d-1 (d = depth, 1 <= d <= L), each row ``n`` vectors of the tower's
width. Row r is the prompt **that enters block r + 1**:

* row 0 is put in at the input (text: it replaces the token embeddings of the ``n`` placeholder
  slots before position embeddings are added; vision: it is appended after the CLS and patch
  tokens, **before** the tower's pre-norm (transformers' ``pre_layrnorm``, open_clip's ``ln_pre``,
  timm's ``norm_pre``), as TuneVLSeg (``vpt_clipseg.py`` / ``base_multimodal_clipseg.py``:
  "concat before the layernorm") and MaPLe (``clip/model.py``, ``VisionTransformer_MaPLe``) do;
  ``position="post-norm"`` appends it after the pre-norm instead, at block 1's input);
* row r >= 1 replaces the prompt slots of block r's output, i.e. the input of block r + 1.

So with depth d = 1 prompts exist at the input only, and a change to row r (the "layer r + 1
prompt") changes nothing that blocks 1..r compute, and changes block r + 1 and everything
after it. This is TuneVLSeg's semantics for CLIPSeg (their loop replaces after layer ``idx`` with
row ``idx`` for ``idx < depth``, 1-based), without their CRIS off-by-one.

Everything is done with hooks registered for one ``with`` block (:meth:`Tower.prompted`):

* a forward hook on the token embedding (text row 0), or a forward pre-hook on the pre-norm
  module (vision row 0: append; block 1 when the tower has no such module or with
  ``position="post-norm"``);
* forward pre-hooks on blocks 2..d that overwrite the prompt slots of their input (rows 1..d-1);
  because they act on the next block's *input*, observers of a block's output (transformers'
  ``output_hidden_states``, :meth:`Tower.observe`) see what the block computed. In transformers'
  terms: ``hidden_states[0]`` (the embedding output) already holds row 0, ``hidden_states[j]``
  (j >= 1) is block j's output before row j is written into its slots; a change to row r leaves
  ``hidden_states[1..r]`` (and ``[0]`` if r >= 1) bit-identical. ``observe(..., prompts="next")``
  gives instead what block j + 1 receives (slots already holding row j), which is what
  TuneVLSeg's CLIPSeg loop stores as ``hidden_states[j]`` and hands to the decoder;
* vision only: a hook where the stack ends (``exit``) that drops the prompt tokens again, so
  pooling, final norms and anything reading ``last_hidden_state`` see CLS + patch tokens only.

No library forward code is copied; leaving the block removes every hook.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from segprompt.backbones.hooks import (
    HookBag,
    first_tensor,
    hidden_from_call,
    replace_first_tensor,
    replace_hidden_in_call,
)
from segprompt.backbones.tokenizers import PromptTokenizer, Tokens
from segprompt.errors import ConfigError

__all__ = ["Tower", "TextTower", "VisionTower", "check_depth", "evenly_spaced_layers", "VISION_PROMPT_POSITIONS"]

#: where vision row 0 is appended: before the tower's pre-norm (TuneVLSeg, MaPLe) or after it
VISION_PROMPT_POSITIONS = ("pre-norm", "post-norm")

#: what :meth:`Tower.observe` records of an active prompted block's tokens
OBSERVE_MODES = ("strip", "keep", "next")


def check_depth(depth: int, num_layers: int, what: str = "tower") -> int:
    """Validate a prompt depth against a tower of ``num_layers`` blocks (ConfigError if not 1..L)."""
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ConfigError(f"prompt depth must be an integer, got {depth!r}")
    if not 1 <= depth <= num_layers:
        raise ConfigError(
            f"prompt depth {depth} is out of range for the {what} with {num_layers} layers: use "
            f"1..{num_layers} (1 = prompts at the input only, d = prompts replaced after layers 1..d-1)"
        )
    return depth


def evenly_spaced_layers(num_layers: int, count: int = 3) -> list[int]:
    """``count`` block numbers (1-based) spread over ``num_layers``, the last one included:
    12 layers -> [4, 8, 12]; 4 layers -> [2, 3, 4]; 2 layers -> [1, 2]."""
    if count < 1:
        raise ConfigError(f"need at least one layer, got count={count}")
    count = min(count, num_layers)
    return sorted({math.ceil(num_layers * (i + 1) / count) for i in range(count)})


class Tower:
    """A sequence of transformer blocks with a width; subclasses add the prompt injection."""

    modality: str = ""

    def __init__(
        self,
        name: str,
        blocks: Sequence[nn.Module],
        width: int,
        batch_first: bool = True,
        checkpointing: Callable[[], bool] | None = None,
    ) -> None:
        if len(blocks) == 0:
            raise ConfigError(f"{name}: the tower has no transformer blocks")
        self.name = name
        self.blocks = list(blocks)
        self.width = int(width)
        self.batch_first = batch_first
        self._checkpointing = checkpointing
        self._active = False
        self._n_prompt = 0

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def check_depth(self, depth: int) -> int:
        return check_depth(depth, self.num_layers, f"{self.modality} tower {self.name}")

    @property
    def active_prompt_tokens(self) -> int:
        """Prompt tokens in the sequence while a :meth:`prompted` block is active (else 0)."""
        return self._n_prompt

    # -- layout helpers: hooks work in (B, N, D) whatever the library's layout -------------

    def _to_nld(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.batch_first else x.transpose(0, 1)

    def _from_nld(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.batch_first else x.transpose(0, 1)

    def _check_prompts(self, prompts: torch.Tensor) -> tuple[int, int]:
        if prompts.ndim not in (3, 4):
            raise ConfigError(
                f"{self.name}: prompts must be (depth, n, {self.width}) or (batch, depth, n, {self.width}), "
                f"got shape {tuple(prompts.shape)}"
            )
        depth, n, width = prompts.shape[-3:]
        if width != self.width:
            raise ConfigError(f"{self.name}: prompt width {width} does not match the tower width {self.width}")
        if n < 1:
            raise ConfigError(f"{self.name}: prompts need at least one token")
        self.check_depth(int(depth))
        return int(depth), int(n)

    @staticmethod
    def _row(prompts: torch.Tensor, r: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        """Row ``r`` as (B, n, D) in ``like``'s dtype and device."""
        row = prompts[:, r] if prompts.ndim == 4 else prompts[r].unsqueeze(0)
        if row.shape[0] not in (1, batch):
            raise ConfigError(f"per-sample prompts for {row.shape[0]} samples, but the batch has {batch}")
        return row.to(device=like.device, dtype=like.dtype).expand(batch, -1, -1)

    def _guard(self) -> None:
        if self._active:
            raise RuntimeError(f"{self.name}: prompts are already attached (nested prompted() blocks)")
        if self._checkpointing is not None and self._checkpointing():
            raise ConfigError(
                f"{self.name}: gradient checkpointing is on; it re-runs the blocks during backward, "
                "after the prompt hooks are removed, which would give wrong gradients. Turn it off "
                "for prompt tuning"
            )

    @contextlib.contextmanager
    def observe(self, layers: Sequence[int], prompts: str = "strip") -> Iterator[dict[int, torch.Tensor]]:
        """Record the output (B, N, D) of blocks ``layers`` (1-based) during forwards inside the
        block; the dict is filled as the model runs. ``prompts`` says what to do with the prompt
        tokens of an active :meth:`prompted` block: ``"strip"`` drops them (vision: the trailing
        tokens), ``"keep"`` records the block output as computed, ``"next"`` records what block
        j + 1 receives (vision: the slots of block j < depth already hold row j; see the module
        docstring)."""
        if prompts not in OBSERVE_MODES:
            raise ConfigError(f"observe(prompts=...) must be one of {OBSERVE_MODES}, got {prompts!r}")
        found: dict[int, torch.Tensor] = {}
        for layer in layers:
            if not 1 <= layer <= self.num_layers:
                raise ConfigError(f"{self.name}: layer {layer} is not in 1..{self.num_layers}")
        bag = HookBag()

        def make(layer: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                x = self._to_nld(first_tensor(output))
                if prompts == "strip":
                    x = self._strip(x)
                elif prompts == "next":
                    x = self.next_input(x, layer)
                found[layer] = x

            return hook

        try:
            for layer in sorted(set(layers)):
                bag.post(self.blocks[layer - 1], make(layer))
            yield found
        finally:
            bag.remove()

    def next_input(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Block ``layer``'s output (B, N, D) as block ``layer + 1`` receives it while prompts are
        attached (the tower's own layout is batch-first here). Base towers: unchanged."""
        return x

    def _strip(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TextTower(Tower):
    """A text tower: token embedding, blocks, a tokenizer, and an ``encode`` function.

    encode:   ``encode(tokens) -> (B, E)`` text features as the library computes them (EOS / CLS
              pooling and projection), run through the library's own modules.
    """

    modality = "text"

    def __init__(
        self,
        name: str,
        embedding: nn.Module,
        blocks: Sequence[nn.Module],
        width: int,
        tokenizer: PromptTokenizer,
        encode: Callable[[Tokens], torch.Tensor],
        batch_first: bool = True,
        deep_supported: bool = True,
        checkpointing: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(name, blocks, width, batch_first, checkpointing)
        self.embedding = embedding
        self.tokenizer = tokenizer
        self._encode = encode
        self.deep_supported = deep_supported

    def tokenize(self, texts: Sequence[str] | str, n_ctx: int = 0) -> Tokens:
        return self.tokenizer(texts, n_ctx=n_ctx)

    def encode(self, tokens: Tokens) -> torch.Tensor:
        return self._encode(tokens)

    @torch.no_grad()
    def token_embeddings(self, text: str) -> torch.Tensor:
        """(n, D) token embeddings of ``text`` without special tokens (for context init)."""
        ids = torch.tensor(self.tokenizer.embedding_ids(text), dtype=torch.long)
        weight = self.embedding.weight
        return weight[ids.to(weight.device)].detach().clone()

    @contextlib.contextmanager
    def prompted(self, prompts: torch.Tensor | None) -> Iterator[None]:
        """Replace the ``n`` placeholder slots by ``prompts`` rows (see the module docstring).

        prompts: (d, n, D), or (B, d, n, D) for per-sample prompts (CoCoOp); None does nothing.
        The texts must be tokenised with ``tokenize(texts, n_ctx=n)``; other tokens raise
        ConfigError at the forward.
        """
        if prompts is None:
            yield
            return
        self._guard()
        depth, n = self._check_prompts(prompts)
        if depth > 1 and not self.deep_supported:
            raise ConfigError(f"{self.name}: deep text prompts (depth > 1) are not supported for this tower")
        start = self.tokenizer.slot_start
        placeholder = self.tokenizer.placeholder_id
        bag = HookBag()

        def put(x: torch.Tensor, r: int) -> torch.Tensor:
            row = self._row(prompts, r, x.shape[0], x)
            return torch.cat([x[:, :start], row, x[:, start + n :]], dim=1)

        def on_embedding(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            ids = args[0] if args else None
            if isinstance(ids, torch.Tensor) and ids.dtype in (torch.long, torch.int):
                if ids.shape[1] < start + n or not bool((ids[:, start : start + n] == placeholder).all()):
                    raise ConfigError(
                        f"{self.name}: the input ids do not hold {n} placeholder tokens after position "
                        f"{start}; tokenise the texts with tokenize(texts, n_ctx={n}) when a text prompt "
                        "learner is attached"
                    )
            return put(output, 0)

        def make_pre(r: int) -> Callable[..., tuple[tuple, dict]]:
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                x = self._to_nld(hidden_from_call(args, kwargs))
                return replace_hidden_in_call(args, kwargs, self._from_nld(put(x, r)))

            return hook

        try:
            self._active, self._n_prompt = True, n
            bag.post(self.embedding, on_embedding)
            for r in range(1, depth):
                bag.pre(self.blocks[r], make_pre(r))
            yield
        finally:
            bag.remove()
            self._active, self._n_prompt = False, 0


class VisionTower(Tower):
    """A ViT vision tower: blocks, where the token stack ends, and an ``encode`` function.

    exit:             (module, "output" | "input"): where to drop the prompt tokens again (a
                      forward hook on the module's output, or a pre-hook on its input); the
                      tensor there is batch-first (B, N, D).
    entry:            the pre-norm module applied to the embedded (B, N, D) sequence before
                      block 1 (``pre_layrnorm`` / ``ln_pre`` / ``norm_pre``, an ``nn.Identity``
                      counts), whose *input* receives row 0 at ``position="pre-norm"``; None when
                      nothing sits between the embeddings and block 1 (then both positions are
                      block 1's input).
    num_prefix_tokens: CLS (and register) tokens before the patch tokens.
    patch_size:       (ph, pw) of the patch embedding, for :meth:`grid`.
    encode:           ``encode(images) -> (B, E)`` pooled, projected image features.
    """

    modality = "vision"

    def __init__(
        self,
        name: str,
        blocks: Sequence[nn.Module],
        width: int,
        exit: tuple[nn.Module, str],
        encode: Callable[[torch.Tensor], torch.Tensor],
        patch_size: tuple[int, int],
        image_size: tuple[int, int],
        num_prefix_tokens: int = 1,
        batch_first: bool = True,
        checkpointing: Callable[[], bool] | None = None,
        entry: nn.Module | None = None,
    ) -> None:
        super().__init__(name, blocks, width, batch_first, checkpointing)
        if exit[1] not in ("output", "input"):
            raise ConfigError(f"exit hook kind must be 'output' or 'input', got {exit[1]!r}")
        self.exit = exit
        self.entry = entry
        self._encode = encode
        self.patch_size = patch_size
        self.image_size = image_size
        self.num_prefix_tokens = num_prefix_tokens
        self._prompts: torch.Tensor | None = None
        self._depth = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._encode(images)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, cols) for an input of ``height`` x ``width`` pixels."""
        return height // self.patch_size[0], width // self.patch_size[1]

    def _strip(self, x: torch.Tensor) -> torch.Tensor:
        n = self._n_prompt
        return x[:, : x.shape[1] - n] if n else x

    def _put(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """(B, N, D) with its trailing ``n`` tokens replaced by row ``r``."""
        assert self._prompts is not None
        return torch.cat([x[:, : x.shape[1] - self._n_prompt], self._row(self._prompts, r, x.shape[0], x)], dim=1)

    def next_input(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Block ``layer``'s output (B, N + n, D) with its prompt slots holding row ``layer`` when
        ``layer < depth`` (what block ``layer + 1`` receives, and what TuneVLSeg's CLIPSeg loop
        stores as ``hidden_states[layer]``: ``mutate_image_hidden_states`` after block ``idx``);
        unchanged otherwise or when no prompts are attached."""
        if self._prompts is None or not 1 <= layer < self._depth:
            return x
        return self._put(x, layer)

    def patch_tokens(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, N, D) block output (prompts already stripped) -> (B, D, rows, cols) patch grid."""
        rows, cols = self.grid(height, width)
        tokens = x[:, self.num_prefix_tokens :]
        if tokens.shape[1] != rows * cols:
            raise ConfigError(
                f"{self.name}: {tokens.shape[1]} patch tokens do not make a {rows}x{cols} grid "
                f"for a {height}x{width} input"
            )
        return tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], rows, cols)

    @contextlib.contextmanager
    def prompted(self, prompts: torch.Tensor | None, position: str = "pre-norm") -> Iterator[None]:
        """Append ``n`` prompt tokens after the patch tokens at the input (``position``:
        ``"pre-norm"``, before the pre-norm module, TuneVLSeg's and MaPLe's placement; or
        ``"post-norm"``, at block 1's input), overwrite them at the inputs of blocks 2..d, and
        drop them where the stack ends.

        prompts: (d, n, D) or (B, d, n, D); None does nothing.
        """
        if position not in VISION_PROMPT_POSITIONS:
            raise ConfigError(f"vision prompt position must be one of {VISION_PROMPT_POSITIONS}, got {position!r}")
        if prompts is None:
            yield
            return
        self._guard()
        depth, n = self._check_prompts(prompts)
        bag = HookBag()

        def append(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, self._row(prompts, 0, x.shape[0], x)], dim=1)

        # the pre-norm module takes the batch-first embedding sequence in every supported library
        def before_norm(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return replace_hidden_in_call(args, kwargs, append(hidden_from_call(args, kwargs)))

        def first(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x = self._to_nld(hidden_from_call(args, kwargs))
            return replace_hidden_in_call(args, kwargs, self._from_nld(append(x)))

        def make_pre(r: int) -> Callable[..., tuple[tuple, dict]]:
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                x = self._to_nld(hidden_from_call(args, kwargs))
                return replace_hidden_in_call(args, kwargs, self._from_nld(self._put(x, r)))

            return hook

        # the exit module works batch-first in every supported library (open_clip's Transformer
        # returns (B, N, D) even when its blocks run sequence-first)
        def strip_output(module: nn.Module, args: tuple, output: Any) -> Any:
            x = first_tensor(output)
            return replace_first_tensor(output, x[:, : x.shape[1] - n])

        def strip_input(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x = hidden_from_call(args, kwargs)
            return replace_hidden_in_call(args, kwargs, x[:, : x.shape[1] - n])

        try:
            self._active, self._n_prompt = True, n
            self._prompts, self._depth = prompts, depth
            if position == "pre-norm" and self.entry is not None:
                bag.pre(self.entry, before_norm)
            else:
                bag.pre(self.blocks[0], first)
            for r in range(1, depth):
                bag.pre(self.blocks[r], make_pre(r))
            module, kind = self.exit
            if kind == "output":
                bag.post(module, strip_output)
            else:
                bag.pre(module, strip_input)
            yield
        finally:
            bag.remove()
            self._active, self._n_prompt = False, 0
            self._prompts, self._depth = None, 0
