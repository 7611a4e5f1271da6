"""``maskclip``: MaskCLIP, dense open-vocabulary labels from an open_clip ViT (text prompts only).

MaskCLIP (Zhou, Loy & Dai, "Extract Free Dense Labels from CLIP", ECCV 2022) behind the Segmenter
interface, on any open_clip ViT (``VisionTransformer`` with ``ResidualAttentionBlock`` blocks):

.. code-block:: python

    seg = create_segmenter("maskclip")                       # openclip-vit-b-16-openai weights
    state = seg.encode(image)                                # (H, W, 3) uint8 RGB; prompt-independent
    probs = seg.probability_maps(state, ["cat", "dog", "grass"])   # (3, H, W) float32, sums to <= 1
    pred = seg.segment(state, [PromptSet(text=Text("cat")), PromptSet(text=Text("dog"))])
    pred.masks                                               # (2, 1, H, W) bool: where each class wins

What it computes, following the reference implementation (chongzhou96/MaskCLIP; files read from
its stored copy volgachen/MaskCLIP):

1. **value path** (``mmseg/models/backbones/vit.py``, ``TransformerEncoderLayer.forward`` with
   ``return_qkv=True`` and ``VisionTransformer.forward``; config ``configs/_base_/models/
   maskclip_vit16.py``: ``return_qkv=True``, ``final_norm=True``): in the LAST residual block each
   token's attention output is replaced by its value path, ``v = out_proj(W_v ln_1(x) + b_v)``;
   the block's residual and MLP are KEPT (``v += x; v = ffn(norm2(v), identity=v)``, here
   ``x + ls_1(v)`` then ``+ ls_2(mlp(ln_2(.)))``), then the final norm (``ln_post``) applies to
   it. Here a forward pre-hook and forward hook on the last block replace the patch tokens of
   the block's output by that path (the CLS token keeps the ordinary attention, so the pooled
   image embedding is unchanged); nothing of open_clip's forward is copied.
2. **dense features** (``mmseg/models/decode_heads/maskclip_head.py``, ``MaskClipHead`` with
   ``vit=True``: ``proj`` is CLIP's visual projection as a 1x1 conv without bias; ``cls_seg``):
   ``ln_post(v) @ visual.proj`` for every patch, (B, E, h, w), L2-normalised over E.
3. **text embeddings** (``tools/maskclip_utils/prompt_engineering.py``, ``zeroshot_classifier``):
   each class name in every template, ``encode_text``, each row L2-normalised, averaged over the
   templates, normalised again. ``templates="maskclip"`` (default) is that file's 85 templates:
   CLIP's 80 ImageNet templates (taken from ``open_clip.zero_shot_metadata``) plus its five scene
   templates (``"there is a {} in the scene."`` ...); ``"imagenet"`` the 80 alone; ``"single"``
   ``"a photo of a {}."`` (the file's ``--no-prompt-eng``); or a list of ``"{}"`` strings.
4. **scores**: cosine of each cell with each class embedding (``cls_seg``), bilinearly upsampled
   to the input (``encoder_decoder.py``, ``encode_decode`` / ``whole_inference``) and to the image,
   softmax over the classes, argmax (``simple_test``). Here the cosine is multiplied by
   ``logit_scale`` (default: the model's own, 100 for CLIP) before the softmax so the maps are
   usable probabilities; the reference softmaxes the raw cosines (temperature 1, nearly uniform).
   The argmax, i.e. the segmentation, is the same.
5. **background**: the reference's default configs have none (VOC "w/o background", 20 classes;
   ``text_categories == num_classes``). ``background=("sky", "ground", ...)`` enables its other rule
   (``refine_output``: ``text_categories > num_classes``): the extra names' scores, max-pooled, form
   one background channel that competes in the softmax; :meth:`probability_maps` returns the
   prompted classes only (their probabilities then sum to less than 1).
6. optional refinements from ``MaskClipHead.refine_output``, off by default as in the head:
   ``prompt_denoising=t`` (classes whose confidence ``softmax(100 cos)`` stays below ``t`` at every
   cell are removed, ``pd_thresh``) and ``key_smoothing=t`` (cells whose top confidence is below
   ``t`` take the key-affinity-weighted average of all cells' confidences, ``ks_thresh``; the keys
   are ``out_proj(W_k ln_1(x) + b_k)`` as the reference's ``q, k, v`` split, normalised with
   ``F.normalize(k, p=2)``'s default ``dim=1``, i.e. over positions, as the reference does).

Inference geometry (``inference=``): ``"resize"`` (default) resizes the image to the model's square
input (224 for ViT-B/16: a 14x14 grid) without interpolating position embeddings;
``"slide"`` resizes the image so its short side is ``slide_short_side`` (default 448) and runs the
model on crops of its input size with ``slide_stride`` (default 2/3 of the crop), averaging the
upsampled scores where crops overlap (``slide_inference``). The reference resizes the short side to
512 / 520 and feeds the whole image ("whole", position embeddings resized bicubically) or slides
512 crops; both are differences on purpose (open_clip's fixed position embeddings).

Prompts: ``text`` only, one :class:`~segprompt.prompts.Text` per prompt set. In :meth:`segment`
the prompt sets of one call are the classes that compete (MaskCLIP's argmax): a set's mask is
where its class wins. A call with a single set and no ``background`` names competes against the
generic prompt ``"background"`` (our rule; the reference always has many classes), so a lone
class still gives a mask rather than the whole image.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segprompt.backbones.hooks import HookBag, first_tensor, hidden_from_call, replace_first_tensor
from segprompt.errors import ConfigError, PromptError, WeightsError
from segprompt.models.base import ImageState, MultimaskPolicy, Prediction, Segmenter
from segprompt.prompts import PromptSet, as_prompt_sets

log = logging.getLogger(__name__)

__all__ = [
    "MaskClipSegmenter",
    "MASKCLIP_SCENE_TEMPLATES",
    "dense_features",
    "maskclip_value_path",
    "template_set",
    "text_embeddings",
]

#: the five scene templates MaskCLIP's prompt_engineering.py appends to CLIP's 80 ImageNet ones
MASKCLIP_SCENE_TEMPLATES: tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)
INFERENCE_MODES = ("resize", "slide")
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_REMOVED = -1e4  # prompt denoising's "-100" on the cosine scale, for scaled logits


def template_set(templates: str | Sequence[str]) -> tuple[str, ...]:
    """``"maskclip"`` (85), ``"imagenet"`` (80), ``"single"`` (1), or explicit ``"{}"`` strings."""
    if isinstance(templates, str):
        if templates == "single":
            return ("a photo of a {}.",)
        if templates in ("maskclip", "imagenet"):
            from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

            imagenet = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
            return imagenet + (MASKCLIP_SCENE_TEMPLATES if templates == "maskclip" else ())
        raise ConfigError(f"unknown template set {templates!r}; use maskclip, imagenet, single or a list of '{{}}' strings")
    out = tuple(str(t) for t in templates)
    if not out or not all("{}" in t for t in out):
        raise ConfigError("templates must be a non-empty list of strings with a '{}' for the class name")
    return out


@torch.no_grad()
def text_embeddings(model: nn.Module, tokenizer: Any, names: Sequence[str], templates: Sequence[str], batch: int = 256) -> torch.Tensor:
    """(K, E) MaskCLIP class embeddings: per name, ``encode_text`` of every template, each row
    L2-normalised, mean over templates, normalised again (prompt_engineering.py). The K x T
    texts go through the text tower ``batch`` at a time (``ceil(K * T / batch)`` calls)."""
    from segprompt.backbones.openclip import openclip_text_tower

    tower = openclip_text_tower(model, tokenizer)
    texts = [t.format(n) for n in names for t in templates]
    feats = torch.cat([tower.encode(tower.tokenize(texts[i : i + batch])).float() for i in range(0, len(texts), batch)])
    feats = F.normalize(feats, dim=-1).reshape(len(names), len(templates), -1).mean(dim=1)
    return F.normalize(feats, dim=-1)


# ------------------------------------------------------------------------ the value path ------
def _check_block(block: nn.Module) -> None:
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or not all(hasattr(block, a) for a in ("ln_1", "ln_2", "mlp")):
        raise ConfigError(
            f"MaskCLIP's value path needs open_clip ResidualAttentionBlock blocks (ln_1, attn as "
            f"nn.MultiheadAttention, ln_2, mlp); the last block is a {type(block).__name__}"
        )
    if attn.in_proj_weight is None:
        raise ConfigError("MaskCLIP's value path needs a packed attn.in_proj_weight (q, k, v of one width)")


def _projected(block: nn.Module, y: torch.Tensor, which: int) -> torch.Tensor:
    """``out_proj(W_which y + b_which)`` for which = 1 (key) or 2 (value), (B, N, D)."""
    attn = block.attn
    d = attn.embed_dim
    w = attn.in_proj_weight[which * d : (which + 1) * d]
    b = None if attn.in_proj_bias is None else attn.in_proj_bias[which * d : (which + 1) * d]
    return attn.out_proj(F.linear(y, w, b))


def _value_path(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference's ``v`` of the last block for (B, N, D) input ``x``: residual and MLP kept."""
    v = x + block.ls_1(_projected(block, block.ln_1(x), 2))
    return v + block.ls_2(block.mlp(block.ln_2(v)))


@contextlib.contextmanager
def maskclip_value_path(model: nn.Module, keys: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """While active, the last block of ``model.visual`` outputs the value path for its patch tokens
    (the CLS token is untouched). Yields a dict that receives ``"tokens"`` (B, N, D), the
    transformer's batch-first output, and with ``keys=True`` ``"keys"`` (B, N, D)."""
    from segprompt.backbones.openclip import openclip_vision_tower

    tower = openclip_vision_tower(model)
    visual = model.visual
    if getattr(visual, "attn_pool", None) is not None:
        raise ConfigError("MaskCLIP needs a ViT whose pooled output is ln_post + proj; attentional pooling (CoCa) is unsupported")
    block = tower.blocks[-1]
    _check_block(block)
    found: dict[str, torch.Tensor] = {}
    inputs: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs.append(hidden_from_call(args, kwargs))

    def swap(module: nn.Module, args: tuple, output: Any) -> Any:
        x = tower._to_nld(inputs.pop())
        out = tower._to_nld(first_tensor(output))
        v = _value_path(module, x)
        if keys:
            found["keys"] = _projected(module, module.ln_1(x), 1)
        p = tower.num_prefix_tokens
        new = torch.cat([out[:, :p], v[:, p:]], dim=1)
        return replace_first_tensor(output, tower._from_nld(new))

    def store(module: nn.Module, args: tuple, output: Any) -> None:
        found["tokens"] = first_tensor(output)

    with HookBag() as bag:
        bag.pre(block, grab)
        bag.post(block, swap)
        bag.post(tower.exit[0], store)
        yield found


@torch.no_grad()
def dense_features(model: nn.Module, pixels: torch.Tensor, keys: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MaskCLIP dense features of normalised ``pixels`` (B, 3, S, S): (B, E, h, w) L2-normalised
    ``ln_post(v) @ proj``, and with ``keys=True`` the last block's patch keys (B, h*w, D)."""
    visual = model.visual
    with maskclip_value_path(model, keys=keys) as found:
        visual(pixels)
    tokens = found["tokens"][:, 1:]
    feats = visual.ln_post(tokens)
    if visual.proj is not None:
        feats = feats @ visual.proj
    b, n, e = feats.shape
    ph, pw = (visual.patch_size if isinstance(visual.patch_size, (tuple, list)) else (visual.patch_size,) * 2)
    h, w = pixels.shape[-2] // ph, pixels.shape[-1] // pw
    if h * w != n:
        raise ConfigError(f"{n} patch tokens do not make a {h}x{w} grid")
    dense = F.normalize(feats.float(), dim=-1).transpose(1, 2).reshape(b, e, h, w)
    return dense, (found["keys"][:, 1:].float() if keys else None)


# ------------------------------------------------------------------------------ loading -------
def load_openclip(name: str, pretrained: str | None = None, allow_random: bool = False) -> tuple[nn.Module, Any]:
    """(model, tokenizer) without any download: ``name`` a registered open_clip weights name
    (:func:`segprompt.weights.find_weights`: WeightsError naming the file and where to put it), or
    an open_clip architecture with ``pretrained`` a local file (or None with ``allow_random``)."""
    import open_clip

    from segprompt.weights import WEIGHTS, find_weights, get_entry

    arch, tag = name, pretrained
    if name in WEIGHTS:
        entry = get_entry(name)
        if entry.family != "open_clip":
            raise ConfigError(f"weights {name!r} are a {entry.family} checkpoint, not an open_clip model")
        path = find_weights(name)
        arch, tag = (f"local-dir:{path}", None) if entry.source == "hf-hub" else (str(entry.model), str(path))
    elif tag is None and not allow_random:
        raise WeightsError(
            f"no weights for open_clip model {name!r}: pass pretrained=<local file>, a registered name "
            "(`segprompt weights list`), or allow_random=True for random towers"
        )
    elif tag is not None and not os.path.isfile(tag):
        raise WeightsError(f"pretrained={tag!r} is not a file: put the checkpoint on this machine and pass its path")
    try:
        model = open_clip.create_model(arch, pretrained=tag)
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:  # noqa: BLE001 - open_clip / HF errors when something is not local
        raise WeightsError(f"cannot create open_clip model {arch!r} (pretrained={tag!r}) offline: {exc}") from exc
    return model, tokenizer


# ----------------------------------------------------------------------------- geometry -------
@dataclass(frozen=True)
class _Frame:
    """Where the crops lie: ``size`` (h, w) of the resized image, ``boxes`` (y0, x0) of each
    ``crop`` x ``crop`` window in it."""

    size: tuple[int, int]
    crop: int
    boxes: tuple[tuple[int, int], ...]


def _starts(length: int, crop: int, stride: int) -> list[int]:
    n = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, length - crop), 0) for i in range(n)})


def _frame(image_size: tuple[int, int], crop: int, mode: str, short_side: int, stride: int) -> _Frame:
    if mode == "resize":
        return _Frame((crop, crop), crop, ((0, 0),))
    h, w = image_size
    scale = max(short_side, crop) / min(h, w)
    size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
    boxes = tuple((y, x) for y in _starts(size[0], crop, stride) for x in _starts(size[1], crop, stride))
    return _Frame(size, crop, boxes)


# ---------------------------------------------------------------------------- segmenter -------
class MaskClipSegmenter(Segmenter):
    """MaskCLIP on an open_clip ViT (module docstring).

    Args:
        model_name: a registered open_clip weights name (default ``"openclip-vit-b-16-openai"``,
            OpenAI's ViT-B/16 as in the reference) or an open_clip architecture with ``pretrained``.
        pretrained: a local checkpoint file for an architecture name; nothing is downloaded.
        model, tokenizer: a built open_clip model (and its tokenizer; default CLIP's BPE) instead.
        templates: ``"maskclip"`` (default), ``"imagenet"``, ``"single"`` or a list of ``"{}"`` strings.
        background: extra class names max-pooled into one background channel (default none).
        logit_scale: multiplies the cosines before the softmax; None = the model's ``logit_scale.exp()``.
        inference: ``"resize"`` (default) or ``"slide"``; slide_short_side, slide_stride for the latter.
        key_smoothing, prompt_denoising: the reference's ``ks_thresh`` / ``pd_thresh`` (0 = off).
        multimask, device, precision, cache: as for every Segmenter (``bf16`` / ``fp16`` autocast on
            CUDA only; the embedding cache only for a model loaded by registered weights name).
        text_cache: class embeddings kept (they repeat over images); text_batch: texts per
            text-encoder call (K classes x T templates are chunked).
    """

    name = "maskclip"
    accepts = frozenset({"text"})
    has_multimask = False

    def __init__(
        self,
        model_name: str = "openclip-vit-b-16-openai",
        pretrained: str | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Any = None,
        allow_random: bool = False,
        templates: str | Sequence[str] = "maskclip",
        background: Sequence[str] = (),
        logit_scale: float | None = None,
        inference: str = "resize",
        slide_short_side: int = 448,
        slide_stride: int | None = None,
        key_smoothing: float = 0.0,
        prompt_denoising: float = 0.0,
        text_cache: int = 4096,
        text_batch: int = 256,
        multimask: MultimaskPolicy = "single",
        device: str = "cpu",
        precision: str = "fp32",
        cache: Any = None,
    ) -> None:
        super().__init__(multimask=multimask, device=device, precision=precision, cache=cache)
        if inference not in INFERENCE_MODES:
            raise ConfigError(f"unknown inference mode {inference!r}; use one of {', '.join(INFERENCE_MODES)}")
        if model is None:
            model, tokenizer = load_openclip(model_name, pretrained, allow_random)
            self.model_name = model_name
        else:
            if pretrained is not None:
                raise ConfigError("pretrained= goes with model_name=, not with a built model")
            self.model_name = type(model).__name__
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            tokenizer = SimpleTokenizer(context_length=int(getattr(model, "context_length", 77) or 77))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        from segprompt.backbones.openclip import openclip_vision_tower

        tower = openclip_vision_tower(model)  # ConfigError for ResNet towers
        _check_block(tower.blocks[-1])
        if tower.image_size[0] != tower.image_size[1]:
            raise ConfigError(f"MaskCLIP here needs a square model input, got {tower.image_size}")
        self.crop = int(tower.image_size[0])
        self.templates = template_set(templates)
        self.template_name = templates if isinstance(templates, str) else "custom"
        self.background = tuple(str(b) for b in background)
        self.logit_scale = float(model.logit_scale.detach().exp()) if logit_scale is None else float(logit_scale)
        self.inference = inference
        self.slide_short_side = int(slide_short_side)
        self.slide_stride = int(slide_stride) if slide_stride else max(1, round(self.crop * 2 / 3))
        self.key_smoothing = float(key_smoothing)
        self.prompt_denoising = float(prompt_denoising)
        self.text_cache = int(text_cache)
        self.text_batch = max(1, int(text_batch))
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        self.mean = torch.tensor(cfg.get("mean") or getattr(model.visual, "image_mean", None) or _OPENAI_MEAN).view(3, 1, 1)
        self.std = torch.tensor(cfg.get("std") or getattr(model.visual, "image_std", None) or _OPENAI_STD).view(3, 1, 1)
        self._text: dict[str, torch.Tensor] = {}
        #: forward passes since creation: image crops through the image encoder, text-encoder calls
        self.counts: dict[str, int] = {"image_encoder": 0, "text_encoder": 0}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": self.model_name,
            "templates": self.template_name,
            "background": list(self.background),
            "logit_scale": self.logit_scale,
            "inference": self.inference,
            "key_smoothing": self.key_smoothing,
            "prompt_denoising": self.prompt_denoising,
        }

    def _autocast(self) -> Any:
        if self.precision == "fp32" or not self.device.startswith("cuda"):
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    # -- image state -------------------------------------------------------------------------
    def _encode(self, image: np.ndarray) -> ImageState:
        frame = _frame(image.shape[:2], self.crop, self.inference, self.slide_short_side, self.slide_stride)
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=frame.size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        x = (x - self.mean.to(x)) / self.std.to(x)
        crops = torch.cat([x[..., y : y + frame.crop, c : c + frame.crop] for y, c in frame.boxes])
        with self._autocast():
            dense, keys = dense_features(self.model, crops, keys=self.key_smoothing > 0)
        self.counts["image_encoder"] += len(frame.boxes)
        features: dict[str, Any] = {"dense": dense, "boxes": torch.tensor(frame.boxes), "frame": torch.tensor(frame.size)}
        if keys is not None:
            features["keys"] = keys
        return ImageState(tuple(image.shape[:2]), frame.size, features)

    # -- text --------------------------------------------------------------------------------
    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """(K, E) class embeddings (module docstring, step 3); computed once per name."""
        todo = list(dict.fromkeys(n for n in names if n not in self._text))
        if todo:
            with self._autocast():
                emb = text_embeddings(self.model, self.tokenizer, todo, self.templates, self.text_batch)
            self.counts["text_encoder"] += math.ceil(len(todo) * len(self.templates) / self.text_batch)
            for n, e in zip(todo, emb):
                self._text[n] = e
            while len(self._text) > max(self.text_cache, len(names)):
                self._text.pop(next(iter(self._text)))
        return torch.stack([self._text[n] for n in names])

    # -- scores ------------------------------------------------------------------------------
    def _refine(self, logits: torch.Tensor, keys: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """``refine_output`` on (n, C, h, w) grid logits; True when they became confidences."""
        n, c, h, w = logits.shape
        if self.prompt_denoising > 0:
            conf = logits.softmax(dim=1).reshape(n, c, -1).amax(dim=-1)
            logits = logits.masked_fill((conf < self.prompt_denoising)[:, :, None, None], _REMOVED)
        if keys is None or self.key_smoothing <= 0:
            return logits, False
        probs = logits.softmax(dim=1).reshape(n, c, -1).transpose(1, 2)  # (n, hw, C)
        k = F.normalize(keys, p=2, dim=1)
        smoothed = (k @ k.transpose(1, 2)) @ probs
        low = (probs.amax(dim=-1, keepdim=True) < self.key_smoothing).expand_as(probs)
        probs = torch.where(low, smoothed, probs)
        return probs.transpose(1, 2).reshape(n, c, h, w), True

    @torch.no_grad()
    def class_scores(self, state: ImageState, names: Sequence[str]) -> torch.Tensor:
        """(C, H, W) float32 probabilities at the image size over ``names`` (+ one background
        channel last when ``background`` names are set); they sum to 1 per pixel."""
        if not names:
            raise PromptError("maskclip needs at least one class name")
        text = self.text_embeddings(list(names) + list(self.background)).to(self.device)
        dense = state.features["dense"].to(self.device).float()
        logits = self.logit_scale * torch.einsum("nehw,ke->nkhw", dense, text)
        logits, as_probs = self._refine(logits, state.features.get("keys"))
        k = len(names)
        if self.background:
            logits = torch.cat([logits[:, :k], logits[:, k:].amax(dim=1, keepdim=True)], dim=1)
        frame = tuple(int(s) for s in state.features["frame"])
        crop = self.crop
        total = logits.new_zeros((logits.shape[1], *frame))
        count = logits.new_zeros((1, *frame))
        up = F.interpolate(logits, size=(crop, crop), mode="bilinear", align_corners=False)
        for (y, x), part in zip(state.features["boxes"].tolist(), up):
            total[:, y : y + crop, x : x + crop] += part
            count[:, y : y + crop, x : x + crop] += 1
        scores = F.interpolate((total / count)[None], size=state.original_size, mode="bilinear", align_corners=False)[0]
        if as_probs:
            scores = scores.clamp_min(0)
            return (scores / scores.sum(dim=0, keepdim=True).clamp_min(1e-12)).float()
        return scores.softmax(dim=0).float()

    def probability_maps(self, state: ImageState, names: Sequence[str]) -> np.ndarray:
        """(K, H, W) float32 in [0, 1]: each prompted class's softmax probability over ``names``
        (and the background channel, when set), for Show-or-Tell's merging."""
        return self.class_scores(state, names)[: len(names)].cpu().numpy().astype(np.float32)

    # -- Segmenter -----------------------------------------------------------------------------
    def segment(self, state: ImageState, prompts: PromptSet | Sequence[PromptSet], **kwargs: Any) -> Prediction:
        for i, s in enumerate(as_prompt_sets(prompts)):
            if s.text is None or s.kinds != {"text"}:
                raise PromptError(
                    f"maskclip takes exactly one text prompt per prompt set (prompt set {i} has "
                    f"{', '.join(sorted(s.kinds)) or 'nothing'}): PromptSet(text=Text('cat'))"
                )
        return super().segment(state, prompts, **kwargs)

    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        names = [s.text.text for s in prompts]  # type: ignore[union-attr]
        extra = ["background"] if len(names) == 1 and not self.background else []
        probs = self.class_scores(state, names + extra)
        winner = probs.argmax(dim=0)
        n = len(names)
        masks = torch.stack([winner == i for i in range(n)]).cpu().numpy()
        p = probs[:n].cpu().numpy()
        scores = np.array([[float(p[i][masks[i]].mean()) if masks[i].any() else 0.0] for i in range(n)], np.float32)
        return Prediction(masks=masks[:, None], scores=scores, logits=None)

    def cache_signature(self) -> dict[str, Any] | None:
        """Cacheable only for a model loaded by registered name (its weights fix the features)."""
        from segprompt.weights import WEIGHTS

        if self.model_name not in WEIGHTS:
            return None
        return {
            "model": "maskclip",
            "weights": self.model_name,
            "inference": self.inference,
            "crop": self.crop,
            "short_side": self.slide_short_side,
            "stride": self.slide_stride,
            "keys": self.key_smoothing > 0,
            "precision": self.precision,
        }
