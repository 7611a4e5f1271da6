"""Vision-language segmentation models (VLSMs) with one interface, for prompt tuning.

.. code-block:: python

    vlsm = create_vlsm("clipseg", weights="clipseg-rd64-refined")   # or tiny_clipseg() in tests
    x = vlsm.preprocess(images)                  # (B,3,H,W) normalised at the model's input size
    logits = vlsm(x, ["a pink polyp"] * B, learner=learner)          # (B, 1, H, W)

Every VLSM has

* ``forward(images, texts, learner=None) -> (B, 1, H, W)`` logits at the input size; ``images``
  (B, 3, H, W) float, already normalised (:meth:`VLSM.preprocess`); ``texts`` a list of B strings
  (one prompt per image; a single string is repeated), or :class:`~segprompt.backbones.Tokens`
  from :meth:`VLSM.tokenize` (with ``n_ctx`` = the learner's ``n_text_ctx``), or a LongTensor of ids;
* ``text_features`` / ``image_features``: the pooled, projected CLIP features, with or without a
  learner;
* ``adapter``: the :mod:`segprompt.backbones` adapter (``adapter.text``, ``adapter.vision``) the
  learners attach through;
* ``trainable_parameters()``: what an optimizer should update besides the learner's own
  parameters (nothing for CLIPSeg; the decoder of the open_clip VLSM; everything after
  ``set_trainable("all")``, which the ``full`` learner does).

Models
------
``clipseg``   transformers ``CLIPSegForImageSegmentation`` (from a local folder, a registered
              weights name such as ``clipseg-rd64-refined``, or a hub id already in the local
              cache; missing files raise :class:`~segprompt.errors.WeightsError` naming the folder
              to put them in). Frozen, decoder included: prompt learning never changes CLIPSeg.
``openclip``  frozen open_clip towers (any model name or BiomedCLIP) plus :class:`FiLMDecoder`, a
              light decoder (~0.3M parameters for ViT-B/16) that reads three evenly spaced vision
              layers and is FiLM-conditioned on the text embedding. **The decoder is always
              trainable** (it starts random: there is no pretrained dense head for open_clip
              models), so on this VLSM the ``zeroshot`` learner means "decoder only".
Tiny random models for tests: :func:`tiny_clipseg`, :func:`tiny_openclip_vlsm`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segprompt.backbones import ModelAdapter, Tokens, adapt, evenly_spaced_layers
from segprompt.errors import ConfigError, WeightsError
from segprompt.registry import Registry
from tunevlseg.prompt_set import PromptSet, seeded

if TYPE_CHECKING:
    from tunevlseg.learners import PromptLearner

log = logging.getLogger(__name__)

__all__ = [
    "PromptSet",
    "VLSM",
    "CLIPSegVLSM",
    "OpenCLIPVLSM",
    "FiLMDecoder",
    "TVSDecoderLayer",
    "create_vlsm",
    "register_vlsm",
    "list_vlsms",
    "tiny_clipseg",
    "tiny_openclip_vlsm",
    "CLIP_MEAN",
    "CLIP_STD",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TextInput = Sequence[str] | str | Tokens | torch.Tensor


class TVSDecoderLayer(nn.Module):
    """TuneVLSeg's extra trainable decoder layer for CLIPSeg (``use_new_last_layer: true`` in
    their VPT / MaPLe / Shared-* configs; ``base_clipseg.py``: ``additive_decoder_layer`` and
    ``residual_ratio``): the (B, C, h, w) grid that CLIPSeg's transposed convolution reads (C =
    ``reduce_dim``) is upsampled bilinearly by the patch size and mapped to one channel by a
    ``kernel_size`` convolution ("same" padding, replicate mode); the logits become
    ``(1 - r) * transposed_conv(x) + r * layer(x)`` with a learnable ratio ``r`` starting at
    ``residual_ratio``. Parameters: ``layer.1.weight`` (1, C, k, k), ``layer.1.bias`` (1,),
    ``residual_ratio`` (scalar); PyTorch's default convolution initialisation, as TuneVLSeg.
    """

    def __init__(self, channels: int, patch_size: int, kernel_size: int = 5, residual_ratio: float = 0.5) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Upsample(scale_factor=float(patch_size), mode="bilinear"),
            nn.Conv2d(channels, 1, kernel_size=kernel_size, padding="same", padding_mode="replicate"),
        )
        self.residual_ratio = nn.Parameter(torch.tensor(float(residual_ratio)))

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """features (B, C, h, w), logits (B, 1, H, W) of the transposed convolution -> (B, 1, H, W)."""
        extra = self.layer(features.to(self.layer[1].weight.dtype)).to(logits.dtype)
        if extra.shape[-2:] != logits.shape[-2:]:
            raise ConfigError(
                f"the extra decoder layer gives {tuple(extra.shape[-2:])} logits but the decoder "
                f"{tuple(logits.shape[-2:])}: it needs a transposed convolution that upsamples by the patch size"
            )
        r = self.residual_ratio.to(logits.dtype)
        return (1 - r) * logits + r * extra


class VLSM(nn.Module):
    """Common part of the VLSM wrappers; subclasses implement ``_vision`` and ``_decode``."""

    name: str = ""

    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        image_size: tuple[int, int],
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        self.model = model
        self.adapter = adapter
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._scope = "none"
        self.model.requires_grad_(False)
        self.model.eval()

    # -- towers ----------------------------------------------------------------------------

    @property
    def text_tower(self):  # noqa: ANN201 - TextTower
        return self.adapter.text

    @property
    def vision_tower(self):  # noqa: ANN201 - VisionTower
        return self.adapter.vision

    @property
    def text_width(self) -> int:
        return self.adapter.text.width  # type: ignore[union-attr]

    @property
    def vision_width(self) -> int:
        return self.adapter.vision.width  # type: ignore[union-attr]

    @property
    def num_text_layers(self) -> int:
        return self.adapter.text.num_layers  # type: ignore[union-attr]

    @property
    def num_vision_layers(self) -> int:
        return self.adapter.vision.num_layers  # type: ignore[union-attr]

    @property
    def feature_dim(self) -> int:
        """Dimension of ``text_features`` / ``image_features`` (the shared CLIP space)."""
        raise NotImplementedError

    # -- preprocessing -----------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str] | str, n_ctx: int = 0) -> Tokens:
        """Tokenise ``texts``; ``n_ctx > 0`` puts that many context placeholders in front."""
        return self.adapter.text.tokenize(texts, n_ctx=n_ctx)  # type: ignore[union-attr]

    def preprocess(self, images: Any, interpolation: str = "bilinear") -> torch.Tensor:
        """Images -> (B, 3, H, W) float, resized to ``image_size`` and normalised.

        Accepts an HxWx3 uint8 RGB array, a list of them (sizes may differ), or a (B, 3, H, W)
        / (3, H, W) float tensor with values in [0, 1].
        """
        device = self.mean.device
        if isinstance(images, np.ndarray) or (
            isinstance(images, (list, tuple)) and images and isinstance(images[0], np.ndarray)
        ):
            arrays = [images] if isinstance(images, np.ndarray) else list(images)
            batch = [self._resize(self._from_uint8(a).to(device), interpolation) for a in arrays]
            x = torch.cat(batch, 0)
        elif isinstance(images, torch.Tensor):
            x = images.to(device=device, dtype=torch.float32)
            if x.ndim == 3:
                x = x.unsqueeze(0)
            if x.ndim != 4 or x.shape[1] != 3:
                raise ConfigError(f"expected (B, 3, H, W) images, got shape {tuple(images.shape)}")
            x = self._resize(x, interpolation)
        else:
            raise ConfigError(f"cannot preprocess images of type {type(images).__name__}")
        return (x - self.mean) / self.std

    @staticmethod
    def _from_uint8(array: np.ndarray) -> torch.Tensor:
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ConfigError(
                f"expected an HxWx3 uint8 RGB image, got {array.dtype} {array.shape}; convert with "
                "segprompt.data.io.to_rgb_uint8 first"
            )
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0).float() / 255.0

    def _resize(self, x: torch.Tensor, interpolation: str) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.image_size:
            return x
        antialias = interpolation in ("bilinear", "bicubic")
        return F.interpolate(x, size=self.image_size, mode=interpolation, align_corners=False, antialias=antialias)

    # -- trainability ------------------------------------------------------------------------

    def set_trainable(self, scope: str = "all") -> None:
        """Which library weights train: ``"none"`` (prompt tuning), ``"decoder"`` or ``"all"``
        (full finetuning). The open_clip VLSM's own decoder trains in every scope."""
        if scope not in ("none", "decoder", "all"):
            raise ConfigError(f"trainable scope must be 'none', 'decoder' or 'all', got {scope!r}")
        self.model.requires_grad_(scope == "all")
        if scope == "decoder":
            self._library_decoder().requires_grad_(True)
        self._scope = scope
        self.train(self.training)

    @property
    def trainable_scope(self) -> str:
        return self._scope

    def _library_decoder(self) -> nn.Module:
        raise ConfigError(f"{type(self).__name__} has no library decoder")

    def train(self, mode: bool = True) -> "VLSM":
        """Frozen library parts stay in eval mode (no dropout, fixed norms) whatever ``mode``."""
        super().train(mode)
        if self._scope != "all":
            self.model.eval()
            if self._scope == "decoder":
                self._library_decoder().train(mode)
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of this VLSM's weights that train (``requires_grad``)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights only (for checkpoints next to the learner's state_dict)."""
        names = {n for n, _ in self.trainable_parameters()}
        return {k: v for k, v in self.state_dict().items() if k in names}

    # -- the forward -------------------------------------------------------------------------

    def _tokens(self, texts: TextInput, n_ctx: int, batch: int | None) -> Tokens:
        if isinstance(texts, Tokens):
            tokens = texts
            if n_ctx and tokens.n_ctx not in (0, n_ctx):
                raise ConfigError(f"tokens hold {tokens.n_ctx} context slots but the learner has {n_ctx}")
        elif isinstance(texts, torch.Tensor):
            if texts.dtype not in (torch.long, torch.int):
                raise ConfigError("token tensors must hold integer ids")
            tokens = Tokens(texts, None, n_ctx)
        else:
            texts = [texts] if isinstance(texts, str) else list(texts)
            if batch is not None and len(texts) == 1 and batch > 1:
                texts = texts * batch
            tokens = self.tokenize(texts, n_ctx=n_ctx)
        if batch is not None and len(tokens) != batch:
            raise ConfigError(f"{len(tokens)} texts for {batch} images: give one text per image (or one for all)")
        return tokens.to(self.mean.device)

    def _grad(self, prompts: torch.Tensor | None, tower_params: Iterator[nn.Parameter]) -> bool:
        """Whether a tower's forward needs autograd: prompts to train, or trainable weights."""
        if not torch.is_grad_enabled():
            return False
        return prompts is not None or any(p.requires_grad for p in tower_params)

    def _prompts(self, learner: "PromptLearner | None") -> PromptSet:
        if learner is None:
            return PromptSet()
        return learner.prompts()

    def _vision(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run the vision tower: (decoder inputs, pooled image features)."""
        raise NotImplementedError

    def _decode(
        self, levels: list[torch.Tensor], text: torch.Tensor, size: tuple[int, int], prompts: PromptSet
    ) -> torch.Tensor:
        """Logits from the vision levels and text features; ``prompts``: the forward's prompt set
        (its visual prompt count and extra decoder layer)."""
        raise NotImplementedError

    @property
    def supports_decoder_layer(self) -> bool:
        """Whether :meth:`extra_decoder_layer` can make TuneVLSeg's extra decoder layer."""
        return False

    def extra_decoder_layer(self, kernel_size: int = 5, residual_ratio: float = 0.5) -> nn.Module:
        """A new :class:`TVSDecoderLayer` for this VLSM's decoder (ConfigError where there is none)."""
        raise ConfigError(
            f"{type(self).__name__} has no CLIPSeg decoder for TuneVLSeg's extra decoder layer "
            "(decoder_layer=True): its own decoder already trains; use decoder_layer=False"
        )

    def _vision_params(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def _text_params(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def encode_vision(
        self, images: torch.Tensor, prompts: PromptSet
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Vision tower with ``prompts.vision`` attached: (decoder inputs, image features)."""
        with torch.set_grad_enabled(self._grad(prompts.vision, self._vision_params())):
            with self.adapter.vision.prompted(  # type: ignore[union-attr]
                prompts.vision, position=prompts.vision_position
            ):
                return self._vision(images)

    def encode_text(self, tokens: Tokens, prompts: PromptSet) -> torch.Tensor:
        """Text tower with ``prompts.text`` attached: (B, E) text features."""
        with torch.set_grad_enabled(self._grad(prompts.text, self._text_params())):
            with self.adapter.text.prompted(prompts.text):  # type: ignore[union-attr]
                return self.adapter.text.encode(tokens)  # type: ignore[union-attr]

    def forward(
        self, images: torch.Tensor, texts: TextInput, learner: "PromptLearner | None" = None
    ) -> torch.Tensor:
        """(B, 1, H, W) logits for normalised ``images`` and one text per image."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"expected (B, 3, H, W) images, got shape {tuple(images.shape)}")
        prompts = self._prompts(learner)
        tokens = self._tokens(texts, prompts.n_text_ctx, images.shape[0])
        levels, image_features = self.encode_vision(images, prompts)
        if learner is not None and learner.image_conditioned:
            prompts = learner.condition(prompts, image_features)
        text = self.encode_text(tokens, prompts)
        return self._decode(levels, text, (int(images.shape[-2]), int(images.shape[-1])), prompts)

    def text_features(
        self,
        texts: TextInput,
        learner: "PromptLearner | None" = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, E) text features, prompted by ``learner``; an image-conditioned learner (CoCoOp)
        needs the ``image_features`` of the images the texts go with."""
        prompts = self._prompts(learner)
        if learner is not None and learner.image_conditioned:
            if image_features is None:
                raise ConfigError(f"learner {learner.name!r} is image-conditioned: pass image_features")
            prompts = learner.condition(prompts, image_features)
        batch = None if image_features is None else int(image_features.shape[0])
        return self.encode_text(self._tokens(texts, prompts.n_text_ctx, batch), prompts)

    def image_features(self, images: torch.Tensor, learner: "PromptLearner | None" = None) -> torch.Tensor:
        """(B, E) pooled, projected image features (with the learner's visual prompts)."""
        return self.encode_vision(images, self._prompts(learner))[1]

    @contextlib.contextmanager
    def prompted(self, prompts: PromptSet) -> Iterator["VLSM"]:
        """Attach ``prompts`` to the library model for calls made inside the block (e.g.
        ``vlsm.model(...)`` directly); :meth:`forward` does this itself."""
        with self.adapter.prompted(
            text=prompts.text, vision=prompts.vision, vision_position=prompts.vision_position, decoder=prompts.decoder
        ):
            yield self


# ---------------------------------------------------------------------------------------------
# CLIPSeg
# ---------------------------------------------------------------------------------------------


class CLIPSegVLSM(VLSM):
    """transformers' ``CLIPSegForImageSegmentation``, frozen.

    The forward composes the library's modules (``clip.vision_model``, ``clip.text_model``, the
    projections, ``decoder``) exactly as ``CLIPSegForImageSegmentation.forward`` does, but with
    autograd enabled where prompts train (the library runs CLIP under ``torch.no_grad``). The
    decoder reads blocks ``adapter.decoder_layers`` (``extract_layers`` + 1) as TuneVLSeg hands
    them, visual prompt tokens included (see :class:`~segprompt.backbones.CLIPSegAdapter`): rows
    r <= max(decoder_layers) can change the logits, deeper rows cannot (CLIPSeg rd64: depth up to
    11 matters). ``extra_decoder_layer()`` makes TuneVLSeg's trainable extra decoder layer,
    which a learner owns (``decoder_layer=True``).
    """

    name = "clipseg"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        image_size: int | tuple[int, int] | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        adapter = adapt(model, tokenizer)
        if image_size is None:
            image_size = model.config.vision_config.image_size
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        super().__init__(model, adapter, size, mean, std)  # type: ignore[arg-type]
        self.decoder_layers = list(adapter.decoder_layers)  # type: ignore[attr-defined]

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def _library_decoder(self) -> nn.Module:
        return self.model.decoder

    def _vision_params(self) -> Iterator[nn.Parameter]:
        return self.model.clip.vision_model.parameters()

    def _text_params(self) -> Iterator[nn.Parameter]:
        return self.model.clip.text_model.parameters()

    @property
    def supports_decoder_layer(self) -> bool:
        return True

    def extra_decoder_layer(self, kernel_size: int = 5, residual_ratio: float = 0.5) -> nn.Module:
        patch = self.model.config.vision_config.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        return TVSDecoderLayer(int(self.model.config.reduce_dim), int(patch), kernel_size, residual_ratio)

    def _vision(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The decoder's activations as TuneVLSeg hands them (prompt tokens kept, slots of blocks
        j < depth holding row j; see :class:`~segprompt.backbones.CLIPSegAdapter`)."""
        vision = self.adapter.vision
        with vision.observe(self.decoder_layers, prompts="next") as found:  # type: ignore[union-attr]
            features = vision.encode(images)  # type: ignore[union-attr]
        return [found[layer] for layer in self.decoder_layers], features

    def _decode(
        self, levels: list[torch.Tensor], text: torch.Tensor, size: tuple[int, int], prompts: PromptSet
    ) -> torch.Tensor:
        with self.adapter.decoder_hooks(prompts.n_vision_ctx, prompts.decoder):  # type: ignore[attr-defined]
            logits = self.model.decoder(levels, text).logits
        if logits.ndim == 2:  # older transformers squeezed a batch of one
            logits = logits.unsqueeze(0)
        logits = logits.unsqueeze(1)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    @classmethod
    def from_pretrained(cls, weights: str | os.PathLike = "clipseg-rd64-refined", **kwargs: Any) -> "CLIPSegVLSM":
        """Load from a local folder, a registered weights name, or a hub id in the local cache.

        Nothing is downloaded: a missing checkpoint raises WeightsError naming the folder to
        put the files in (``segprompt weights fetch NAME`` fetches registered ones).
        """
        from transformers import CLIPSegForImageSegmentation

        folder = _clipseg_folder(weights)
        try:
            model = CLIPSegForImageSegmentation.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"cannot load CLIPSeg weights from {folder}: {exc}") from exc
        tokenizer = kwargs.pop("tokenizer", None)
        if tokenizer is None:
            tokenizer = _folder_tokenizer(folder)
        proc = _read_preprocessor(folder)
        kwargs.setdefault("mean", proc.get("image_mean", CLIP_MEAN))
        kwargs.setdefault("std", proc.get("image_std", CLIP_STD))
        if "size" in proc and "image_size" not in kwargs:
            size = proc["size"]
            if isinstance(size, dict):
                size = (size["height"], size["width"]) if "height" in size else size.get("shortest_edge", 352)
            kwargs["image_size"] = size
        return cls(model, tokenizer=tokenizer, **kwargs)


def _clipseg_folder(weights: str | os.PathLike) -> Path:
    from segprompt.weights import WEIGHTS, checkpoints_dir, find_weights, list_weights

    text = os.fspath(weights)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WeightsError(
                f"{path} has no config.json: put the files of a CLIPSeg checkpoint there (e.g. "
                f"git clone https://huggingface.co/CIDAS/clipseg-rd64-refined {path})"
            )
        return path
    if text in WEIGHTS:
        return find_weights(text)
    for entry in list_weights():
        if entry.family == "clipseg" and entry.repo_id == text:
            return find_weights(entry.name)
    if "/" in text and not path.exists():  # an unregistered hub id: only the local HF cache
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means: not in the cache
            target = checkpoints_dir() / text.replace("/", "--")
            raise WeightsError(
                f"CLIPSeg weights {text!r} are not on this machine: put the repository files in "
                f"{target} (git clone https://huggingface.co/{text} {target}) and pass that folder"
            ) from None
    raise WeightsError(f"CLIPSeg weights {text!r} not found: no such folder and not a registered name")


def _folder_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in ``folder``, or None (then the identical CLIP BPE vocabulary that
    ships with open_clip is used)."""
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        log.info("no tokenizer files in %s; using the CLIP BPE vocabulary of open_clip", folder)
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - fall back to the identical CLIP BPE vocabulary
        log.warning("cannot load the tokenizer in %s (%s); using the CLIP BPE vocabulary of open_clip", folder, exc)
        return None
    if len(tokenizer) < 1000:
        log.warning("the tokenizer in %s has only %d tokens; using the CLIP BPE vocabulary", folder, len(tokenizer))
        return None
    return tokenizer


def _read_preprocessor(folder: Path) -> dict[str, Any]:
    path = folder / "preprocessor_config.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def tiny_clip_tower_configs(width: int, layers: int, image_size: int, patch_size: int) -> dict[str, dict]:
    """``text_config`` / ``vision_config`` of a tiny CLIP-style model (CLIP's BPE vocabulary, 4 heads)."""
    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4)
    return {
        "text_config": dict(vocab_size=49408, max_position_embeddings=77, **tower),
        "vision_config": dict(image_size=image_size, patch_size=patch_size, **tower),
    }


def tiny_clipseg(
    seed: int = 0,
    image_size: int = 64,
    patch_size: int = 16,
    width: int = 32,
    layers: int = 4,
    extract_layers: Sequence[int] = (0, 1, 2),
) -> CLIPSegVLSM:
    """A tiny random CLIPSeg (CLIP BPE vocabulary, ``layers`` blocks per tower) for tests and
    demos. Not a trained model: its masks are noise until prompts or weights are trained."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    config = CLIPSegConfig(
        **tiny_clip_tower_configs(width, layers, image_size, patch_size),
        projection_dim=width,
        extract_layers=list(extract_layers),
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        use_complex_transposed_convolution=False,
    )
    with seeded(seed):
        model = CLIPSegForImageSegmentation(config)
    return CLIPSegVLSM(model)


# ---------------------------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------------------------


class FiLMDecoder(nn.Module):
    """A light dense decoder over several ViT layers, FiLM-conditioned on a text embedding.

    Each level (B, D, h, w) is layer-normed and projected to ``dim`` channels; the sum is
    modulated by the text (``x * (1 + gamma(t)) + beta(t)``, t the L2-normalised text feature),
    refined by two residual 3x3 conv blocks, upsampled x4, convolved to ``dim // 2`` channels,
    mapped to one logit channel and resized to the input. The FiLM layer has PyTorch's default
    (random) initialisation, so that the text, and hence text prompts, matter from the first step
    (a zero-initialised FiLM would give text prompt learners zero gradients at the start).
    """

    def __init__(self, vision_width: int, text_dim: int, num_levels: int = 3, dim: int = 64) -> None:
        super().__init__()
        if dim % 8:
            raise ConfigError(f"decoder dim must be a multiple of 8, got {dim}")
        self.norms = nn.ModuleList(nn.LayerNorm(vision_width) for _ in range(num_levels))
        self.reduces = nn.ModuleList(nn.Linear(vision_width, dim) for _ in range(num_levels))
        self.film = nn.Linear(text_dim, 2 * dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(8, dim), nn.GELU()) for _ in range(2)
        )
        self.up = nn.Conv2d(dim, dim // 2, 3, padding=1)
        self.head = nn.Conv2d(dim // 2, 1, 1)

    def forward(self, levels: Sequence[torch.Tensor], text: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if len(levels) != len(self.reduces):
            raise ConfigError(f"decoder expects {len(self.reduces)} levels, got {len(levels)}")
        x = None
        for level, norm, reduce in zip(levels, self.norms, self.reduces):
            y = reduce(norm(level.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
            x = y if x is None else x + y
        assert x is not None
        t = F.normalize(text.to(x.dtype), dim=-1)
        gamma, beta = self.film(t).chunk(2, dim=-1)
        x = x * (1 + gamma[..., None, None]) + beta[..., None, None]
        for block in self.blocks:
            x = x + block(x)
        x = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
        x = self.head(F.gelu(self.up(x)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class OpenCLIPVLSM(VLSM):
    """Frozen open_clip towers + a trainable :class:`FiLMDecoder` reading ``layers`` (1-based
    vision blocks; default three evenly spaced, e.g. 4, 8, 12 for ViT-B)."""

    name = "openclip"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        layers: Sequence[int] | None = None,
        decoder_dim: int = 64,
        image_size: int | tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        adapter = adapt(model, tokenizer)
        vision = adapter.vision
        assert vision is not None
        cfg = _openclip_preprocess_cfg(model)
        if image_size is None:
            image_size = cfg.get("size", vision.image_size)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        super().__init__(
            model,
            adapter,
            size,  # type: ignore[arg-type]
            mean if mean is not None else cfg.get("mean", CLIP_MEAN),
            std if std is not None else cfg.get("std", CLIP_STD),
        )
        self.layers = list(layers) if layers is not None else evenly_spaced_layers(vision.num_layers, 3)
        for layer in self.layers:
            if not 1 <= layer <= vision.num_layers:
                raise ConfigError(f"decoder layer {layer} is not in 1..{vision.num_layers}")
        with seeded(seed):
            self.decoder = FiLMDecoder(vision.width, self.feature_dim, len(self.layers), decoder_dim)

    @property
    def feature_dim(self) -> int:
        dim = getattr(self.model.visual, "output_dim", None) or getattr(
            getattr(self.model, "text", None), "output_dim", None
        )
        if not dim:
            with torch.no_grad():
                h, w = self.image_size
                dim = self.model.encode_image(torch.zeros(1, 3, h, w, device=self.mean.device)).shape[-1]
        return int(dim)

    def _library_decoder(self) -> nn.Module:
        return self.decoder

    def _vision_params(self) -> Iterator[nn.Parameter]:
        return self.model.visual.parameters()

    def _text_params(self) -> Iterator[nn.Parameter]:
        visual = set(id(p) for p in self.model.visual.parameters())
        return (p for p in self.model.parameters() if id(p) not in visual)

    def _vision(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        vision = self.adapter.vision
        assert vision is not None
        h, w = int(images.shape[-2]), int(images.shape[-1])
        with vision.observe(self.layers) as found:
            features = vision.encode(images)
        return [vision.patch_tokens(found[layer], h, w) for layer in self.layers], features

    def _decode(
        self, levels: list[torch.Tensor], text: torch.Tensor, size: tuple[int, int], prompts: PromptSet
    ) -> torch.Tensor:
        if prompts.decoder is not None:
            self.extra_decoder_layer()  # raises: no CLIPSeg decoder here
        return self.decoder(levels, text, size)

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        pretrained: str | None = None,
        allow_random: bool = False,
        allow_download: bool = False,
        **kwargs: Any,
    ) -> "OpenCLIPVLSM":
        """An open_clip model by name and weights; nothing is downloaded unless asked.

        model_name: a segprompt weights name (``"biomedclip"``, ``"openclip-vit-b-16-openai"``)
        or the hub id of one (``"microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"``),
        resolved with :func:`segprompt.weights.find_weights` (WeightsError naming the folder or
        file when missing); ``"local-dir:<folder>"``; ``"hf-hub:<id>"`` (from the local Hugging
        Face cache); or an open_clip architecture (``"ViT-B-16"``) with ``pretrained`` a local
        file. ``pretrained`` as an open_clip tag (``"openai"``) needs ``allow_download=True``
        (open_clip then fetches it into its cache). ``allow_random=True`` with
        ``pretrained=None`` builds random towers (tests, debugging).
        """
        import open_clip

        from segprompt.weights import WEIGHTS, checkpoints_dir, find_weights, get_entry, list_weights

        name, tag = model_name, pretrained
        hub_id = model_name[len("hf-hub:") :] if model_name.startswith("hf-hub:") else model_name
        for entry in list_weights():  # a registered hub id resolves to its local folder
            if entry.family == "open_clip" and entry.repo_id and entry.repo_id == hub_id:
                model_name = entry.name
                break
        if model_name in WEIGHTS:
            entry = get_entry(model_name)
            if entry.family != "open_clip":
                raise ConfigError(f"weights {model_name!r} are a {entry.family} checkpoint, not an open_clip model")
            path = find_weights(model_name)  # WeightsError with the folder / file when missing
            if entry.source == "hf-hub":
                name, tag = f"local-dir:{path}", None
            else:
                name, tag = str(entry.model), str(path)
        elif model_name.startswith("hf-hub:") and not allow_download:
            try:
                from huggingface_hub import snapshot_download

                name = f"local-dir:{snapshot_download(hub_id, local_files_only=True)}"
            except Exception:  # noqa: BLE001 - not in the local cache
                target = checkpoints_dir() / hub_id.replace("/", "--")
                raise WeightsError(
                    f"open_clip model {model_name!r} is not on this machine: put the repository files in "
                    f"{target} (git clone https://huggingface.co/{hub_id} {target}) and pass "
                    f"'local-dir:{target}', or pass allow_download=True"
                ) from None
        elif tag is None and not allow_random and not model_name.startswith(("local-dir:", "hf-hub:")):
            raise WeightsError(
                f"no weights given for open_clip model {model_name!r}: pass pretrained=<file> (or a "
                "registered weights name), or allow_random=True for random towers"
            )
        elif tag is not None and not os.path.isfile(tag) and not allow_download:
            raise WeightsError(
                f"pretrained={tag!r} is not a file: open_clip would download the {tag!r} weights of "
                f"{model_name!r}. Pass the local file, or allow_download=True"
            )
        try:
            model = open_clip.create_model(name, pretrained=tag)
            tokenizer = open_clip.get_tokenizer(name)
        except WeightsError:
            raise
        except Exception as exc:  # noqa: BLE001 - network / missing file errors of open_clip and HF
            raise WeightsError(
                f"cannot create open_clip model {name!r} (pretrained={tag!r}) offline: {exc}. Put the "
                "weights on this machine (`segprompt weights fetch biomedclip` for BiomedCLIP; its "
                "PubMedBERT config and tokenizer must also be in the Hugging Face cache) and pass "
                "'local-dir:<folder>' or a file"
            ) from exc
        return cls(model, tokenizer, **kwargs)


def _openclip_preprocess_cfg(model: nn.Module) -> dict[str, Any]:
    try:
        from open_clip import get_model_preprocess_cfg

        return dict(get_model_preprocess_cfg(model))
    except Exception:  # noqa: BLE001 - older open_clip / unusual models
        return {}


def tiny_openclip_model(  # noqa: ANN201 - (open_clip CLIP, SimpleTokenizer)
    seed: int = 0, image_size: int = 32, patch_size: int = 8, width: int = 32, layers: int = 4
):
    """A tiny random open_clip ``CLIP`` (CLIP BPE vocabulary) and its tokenizer."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    with seeded(seed):
        model = CLIP(
            embed_dim=width,
            vision_cfg=dict(layers=layers, width=width, head_width=8, patch_size=patch_size, image_size=image_size),
            text_cfg=dict(context_length=77, vocab_size=49408, width=width, heads=4, layers=layers),
        )
    return model, SimpleTokenizer(context_length=77)


def tiny_openclip_vlsm(
    seed: int = 0, image_size: int = 32, patch_size: int = 8, width: int = 32, layers: int = 4
) -> OpenCLIPVLSM:
    """A tiny random open_clip VLSM for tests and demos (not a trained model)."""
    model, tokenizer = tiny_openclip_model(seed, image_size, patch_size, width, layers)
    return OpenCLIPVLSM(model, tokenizer, decoder_dim=16, seed=seed)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

VLSMS: Registry[Callable[..., VLSM]] = Registry("vlsm")


def register_vlsm(name: str, *aliases: str) -> Callable[[Callable[..., VLSM]], Callable[..., VLSM]]:
    return VLSMS.register(name, *aliases)


@register_vlsm("clipseg")
def _create_clipseg(weights: str | os.PathLike = "clipseg-rd64-refined", **kwargs: Any) -> VLSM:
    return CLIPSegVLSM.from_pretrained(weights, **kwargs)


@register_vlsm("openclip", "open-clip")
def _create_openclip(model: str = "biomedclip", pretrained: str | None = None, **kwargs: Any) -> VLSM:
    return OpenCLIPVLSM.from_pretrained(model, pretrained=pretrained, **kwargs)


VLSMS.add("clipseg-tiny", tiny_clipseg)
VLSMS.add("openclip-tiny", tiny_openclip_vlsm)


def create_vlsm(name: str, device: str | torch.device = "cpu", **kwargs: Any) -> VLSM:
    """``create_vlsm("clipseg", weights=...)``, ``create_vlsm("openclip", model="biomedclip")``,
    ``create_vlsm("clipseg-tiny")``, ``create_vlsm("openclip-tiny")``; placed on ``device``."""
    return VLSMS.get(name)(**kwargs).to(device)


def list_vlsms() -> list[str]:
    return VLSMS.names()
