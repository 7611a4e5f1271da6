"""``clipseg``: CLIPSeg (Lüddecke & Ecker, CVPR 2022) behind the Segmenter interface, prompted by
text or by a visual reference, on the tunevlseg VLSM (so a tuned prompt learner enters too).

.. code-block:: python

    seg = create_segmenter("clipseg")                # weights "clipseg-rd64-refined"; or learner_checkpoint=RUN
    state = seg.encode(image)                        # (H, W, 3) uint8 RGB: CLIP's vision pass, kept
    pred = seg.segment(state, [PromptSet(text="polyp"), PromptSet(reference=Reference(ref_img, ref_mask))])
    pred.masks     # (N, 1, H, W) bool: sigmoid(logits) > 0.5 at the image size; pred.scores NaN
    pred.logits    # (N, 1, S, S) float32 at CLIPSeg's input size (S = 352 for the real weights)
    seg.probability(state, "polyp")                  # (H, W) float32 in [0, 1]
    seg.probability(state, [Reference(i1, m1), Reference(i2, m2)])   # k-shot

transformers' ``CLIPSegForImageSegmentation`` (in :class:`tunevlseg.models.CLIPSegVLSM`), its forward
split where the prompt enters. ``encode``: the VLSM's preprocess (resize to S x S, the checkpoint's
normalisation) and one vision pass; the state keeps the decoder's activations and the pooled image
feature, so any number of prompts decodes without another vision pass (not cached on disk:
``cache_signature`` is None, the activations are several MB). The **condition** of a prompt set is
a text's CLIP text embedding (``input_ids`` path) or the CLIP image embedding of a reference's
*visual prompt* (``conditional_pixel_values`` path); ``segment`` decodes all N in one batched call
(chunks of ``max_rows``) and resizes the logits bilinearly to (H, W).

Visual prompt engineering (``visual_prompt=``), after timojl/clipseg ``evaluation_utils.py``
(``img_preprocess``, ``crop_mask``, ``object_crop``, ``pad_to_square``) and ``datasets/utils.py``
(``blend_image_segmentation``), in the model's normalised pixel space:

* ``"crop-blur-darken"`` (default): the repository's ``crop_blur_highlight352``, the rule its
  one-shot models were trained with (experiments/pascal_1shot.yaml, ``text_and_crop_blur_highlight352``)
  and the best row of the paper's visual prompt engineering table ("crop & background blur &
  intensity 10%", Visual_Feature_Engineering.ipynb): background = 0.1 x Gaussian blur (15 x 15,
  sigma 3, mirrored border), object kept; crop to the mask's box widened by 10 % of its extent per
  side; zero-pad to a centred square; nearest resize to S x S;
* ``"blur-darken"``: the same without the crop (``blur3_highlight01``);
* ``"mask-out"``: background 0 in normalised space, i.e. the mean colour (``overlay``);
* ``"none"``: the reference image as it is, mask ignored (``image_only``).

k references: the condition is the **mean of the k conditional embeddings** (unnormalised, as the
decoder's FiLM reads them); our rule, CLIPSeg has one visual prompt per query.

``learner_checkpoint=`` (a tunevlseg run's ``checkpoints/best.pt``, ``last.pt`` or run folder):
the learner is rebuilt as tunevlseg/train.py ``build_model`` builds it and loaded; text prompts go
through it, and its vision prompts (VPT, MaPLe, Shared-*) enter every vision pass, the reference
images' included. ShowOrTell has no CLIPSeg wrapper; :meth:`ClipSegSegmenter.probability` (sigmoid
of the logits resized to the image) is the map its merging rule takes.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from segprompt.errors import ConfigError, PromptError, WeightsError
from segprompt.models.base import ImageState, MultimaskPolicy, Prediction, Segmenter
from segprompt.prompts import PromptSet, Reference, Text

__all__ = ["ClipSegSegmenter", "VisualPromptRule", "VISUAL_PROMPTS", "create_clipseg_tiny", "visual_prompt", "read_learner_checkpoint"]

DEFAULT_WEIGHTS = "clipseg-rd64-refined"
#: one prompt: a text, or the k references of one object
Condition = Union[str, Text, Reference, Sequence[Reference], PromptSet]


# ----------------------------------------------------------------------- visual prompts -----
@dataclass(frozen=True)
class VisualPromptRule:
    """How a reference (image, mask) becomes CLIPSeg's conditional image.

    blur: sigma of the background's Gaussian blur (15 x 15 kernel), 0 = none.
    background: factor on the (blurred) background, in normalised pixel space (1 = unchanged).
    crop_context: None = no crop; else crop to the mask's box widened by this share of its extent.
    """

    blur: float = 0.0
    background: float = 1.0
    crop_context: float | None = None


VISUAL_PROMPTS: dict[str, VisualPromptRule] = {
    "crop-blur-darken": VisualPromptRule(blur=3.0, background=0.1, crop_context=0.1),
    "blur-darken": VisualPromptRule(blur=3.0, background=0.1),
    "mask-out": VisualPromptRule(background=0.0),
    "none": VisualPromptRule(),
}


def gaussian_blur(x: torch.Tensor, sigma: float, ksize: int = 15) -> torch.Tensor:
    """(B, C, H, W) blurred by a separable ``ksize`` Gaussian, mirrored border without repeating
    the edge (OpenCV's default ``BORDER_REFLECT_101``, what ``cv2.GaussianBlur`` does)."""
    r = ksize // 2
    k = torch.exp(-0.5 * (torch.arange(ksize, dtype=torch.float64) - r) ** 2 / sigma**2)
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, ksize).expand(c, 1, 1, ksize), groups=c)
    return F.conv2d(x, k.view(1, 1, ksize, 1).expand(c, 1, ksize, 1), groups=c)


def context_box(mask: torch.Tensor, context: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end-exclusive: the box of the (H, W) bool ``mask`` widened by ``context``
    times its width (x) and height (y) on each side, clipped to the image, truncated to ints as
    the reference's ``crop_mask`` does."""
    h, w = mask.shape
    cols, rows = mask.any(0).nonzero()[:, 0], mask.any(1).nonzero()[:, 0]
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    bw, bh = x1 - x0, y1 - y0
    return int(max(0, x0 - context * bw)), int(max(0, y0 - context * bh)), int(min(w, x1 + context * bw)), int(min(h, y1 + context * bh))


def pad_square(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) zero-padded to a square, the image centred (the extra pixel after it)."""
    h, w = x.shape[-2:]
    d = abs(h - w)
    pad = (d // 2, d - d // 2, 0, 0) if h > w else (0, 0, d // 2, d - d // 2)
    return F.pad(x, pad)


def visual_prompt(pixels: torch.Tensor, mask: torch.Tensor, rule: VisualPromptRule) -> torch.Tensor:
    """CLIPSeg's conditional image: ``pixels`` (1, 3, S, S) normalised, ``mask`` (S, S) bool at the
    same size -> (1, 3, S, S): ``pixels * m + background * blur(pixels) * (1 - m)``, then the crop,
    the square padding and the nearest resize back to S x S (module docstring)."""
    m = mask.to(pixels.dtype)[None, None]
    back = gaussian_blur(pixels, rule.blur) if rule.blur > 0 else pixels
    out = pixels * m + rule.background * back * (1 - m)
    if rule.crop_context is None:
        return out
    x0, y0, x1, y1 = context_box(mask, rule.crop_context)
    return F.interpolate(pad_square(out[..., y0:y1, x0:x1]), size=tuple(pixels.shape[-2:]), mode="nearest")


def reference_key(ref: Reference, rule: str) -> str:
    digest = hashlib.sha1(rule.encode())
    for arr in (ref.image, np.packbits(ref.mask)):
        digest.update(str(arr.shape).encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------- learner checkpoints -
def read_learner_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, train config) of a tunevlseg run: ``state`` holds ``learner`` (and ``vlsm``, the
    VLSM's trainable weights), as ``checkpoints/best.pt`` (tunevlseg/train.py ``_Model.trained_state``)
    or ``last.pt`` (``model``) hold them; the config is best.pt's ``config`` or the run's config.yaml."""
    from segprompt.engine.training import load_checkpoint

    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "best.pt"
    if not p.is_file():
        raise WeightsError(f"learner checkpoint {p} not found: pass a tunevlseg run's checkpoints/best.pt (or the run folder)")
    ck = load_checkpoint(p)
    state = ck if "learner" in ck else ck.get("model") if isinstance(ck.get("model"), dict) else None
    if not isinstance(state, dict) or "learner" not in state:
        raise ConfigError(f"{p} holds no prompt learner state ('learner'): not a tunevlseg training checkpoint")
    cfg = ck.get("config")
    if not (isinstance(cfg, dict) and "method" in cfg) and (p.parent.parent / "config.yaml").is_file():
        import yaml

        cfg = yaml.safe_load((p.parent.parent / "config.yaml").read_text())
    if not (isinstance(cfg, dict) and "method" in cfg):
        raise ConfigError(f"{p} has no training config (method, n_ctx, depth): keep the run's config.yaml two folders above it")
    return state, cfg


def build_learner(vlsm: Any, state: dict[str, Any], cfg: dict[str, Any]) -> Any:
    """The learner of a run's ``cfg`` on ``vlsm`` with the checkpoint ``state`` loaded, frozen (the
    settings as tunevlseg/train.py ``build_model``)."""
    from tunevlseg.learners import create_learner
    from tunevlseg.train import NO_DEPTH_METHODS

    method = str(cfg["method"])
    settings = dict(cfg.get("learner_kwargs") or {})
    if method not in NO_DEPTH_METHODS:
        settings.setdefault("n_ctx", int(cfg.get("n_ctx", 4)))
    settings.setdefault("depth", max(1, int(cfg.get("depth", 1))))
    settings.setdefault("seed", int(cfg.get("seed", 0)))
    learner = create_learner(method, vlsm, **settings)
    learner.load_state_dict(state["learner"])
    if state.get("vlsm"):
        vlsm.load_state_dict(state["vlsm"], strict=False)
    return learner.to(vlsm.mean.device).eval().requires_grad_(False)


# ----------------------------------------------------------------------- the segmenter -------
class ClipSegSegmenter(Segmenter):
    """CLIPSeg with text and visual-reference prompts (module docstring).

    Args:
        weights: a registered weights name, a local CLIPSeg folder or a cached hub id
            (``tunevlseg.models.create_vlsm("clipseg", weights=...)``); missing files raise
            WeightsError naming the folder. None: the learner checkpoint's VLSM, else
            ``"clipseg-rd64-refined"``.
        vlsm: a built :class:`tunevlseg.models.CLIPSegVLSM` instead (tests: ``tiny_clipseg()``).
        learner_checkpoint: a tunevlseg run's checkpoint (or run folder); its learner prompts the model.
        visual_prompt: ``"crop-blur-darken"`` (default), ``"blur-darken"``, ``"mask-out"`` or ``"none"``.
        threshold: on the sigmoid, for ``masks`` (0.5).
        max_rows: prompt sets per decoder call.
        embedding_cache: conditional embeddings kept (texts, references; they repeat over images).
        multimask, device, precision: as for every Segmenter (K = 1 always). ``cache`` is accepted
            for the common signature and unused (the state is not cached on disk).
    """

    name = "clipseg"
    accepts = frozenset({"text", "reference"})

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        vlsm: Any = None,
        learner_checkpoint: str | os.PathLike | None = None,
        visual_prompt: str = "crop-blur-darken",
        threshold: float = 0.5,
        max_rows: int = 32,
        embedding_cache: int = 1024,
        multimask: MultimaskPolicy = "single",
        device: str = "cpu",
        precision: str = "fp32",
        cache: Any = None,
    ) -> None:
        from tunevlseg.models import CLIPSegVLSM, create_vlsm

        super().__init__(multimask=multimask, device=device, precision=precision)
        if visual_prompt not in VISUAL_PROMPTS:
            raise ConfigError(f"unknown visual_prompt {visual_prompt!r}; use one of {', '.join(VISUAL_PROMPTS)}")
        if not 0.0 < float(threshold) < 1.0 or int(max_rows) < 1:
            raise ConfigError(f"clipseg: threshold must be in (0, 1) and max_rows >= 1, got {threshold!r}, {max_rows!r}")
        state, cfg = read_learner_checkpoint(learner_checkpoint) if learner_checkpoint is not None else (None, None)
        if vlsm is not None:
            if weights is not None:
                raise ConfigError("clipseg: give weights= or vlsm=, not both")
            vlsm, self.weights = vlsm.to(self.device), "given VLSM"
        elif weights is None and cfg is not None:
            kwargs = dict(cfg.get("vlsm_kwargs") or {})
            vlsm = create_vlsm(str(cfg.get("vlsm", "clipseg")), device=self.device, **kwargs)
            self.weights = str(kwargs.get("weights", DEFAULT_WEIGHTS if cfg.get("vlsm", "clipseg") == "clipseg" else cfg["vlsm"]))
        else:
            self.weights = DEFAULT_WEIGHTS if weights is None else os.fspath(weights)
            vlsm = create_vlsm("clipseg", device=self.device, weights=self.weights)
        if not isinstance(vlsm, CLIPSegVLSM):
            trained = f"; the learner checkpoint was trained on VLSM {cfg.get('vlsm')!r}" if cfg else ""
            raise ConfigError(f"clipseg needs a CLIPSeg VLSM (tunevlseg.models.CLIPSegVLSM), got {type(vlsm).__name__}{trained}")
        self.vlsm = vlsm.eval()
        self.learner = build_learner(vlsm, state, cfg) if state is not None else None
        self.learner_checkpoint = None if learner_checkpoint is None else os.fspath(learner_checkpoint)
        self.method = None if cfg is None else str(cfg["method"])
        with torch.no_grad():
            self.prompt_set = self.learner.prompts() if self.learner is not None else None
        self.visual_prompt = visual_prompt
        self.threshold, self.max_rows = float(threshold), int(max_rows)
        self.embedding_cache = int(embedding_cache)
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()
        #: forward passes since creation (cost accounting): images through CLIP's vision tower,
        #: batched text-tower calls, batched decoder calls
        self.counts: dict[str, int] = {"image_encoder": 0, "text_encoder": 0, "mask_decoder": 0}

    @property
    def input_size(self) -> tuple[int, int]:
        return self.vlsm.image_size

    def _autocast(self) -> Any:
        from segprompt.engine.loop import autocast

        return autocast(self.precision, self.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights": self.weights, "learner_checkpoint": self.learner_checkpoint, "learner": self.method,
                "visual_prompt": self.visual_prompt, "threshold": self.threshold, "input_size": list(self.input_size)}

    # -- image state -------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, image: np.ndarray) -> ImageState:
        from tunevlseg.models import PromptSet as VlsmPrompts

        x = self.vlsm.preprocess(image)
        with self._autocast():
            levels, pooled = self.vlsm.encode_vision(x, self.prompt_set or VlsmPrompts())
        self.counts["image_encoder"] += 1
        features = {f"level_{i}": t for i, t in enumerate(levels)}
        features["image_features"] = pooled
        return ImageState(original_size=tuple(image.shape[:2]), input_size=self.input_size, features=features)

    # -- conditions --------------------------------------------------------------------------
    def _embed(self, keys: list[str], items: dict[str, Any], compute: Any) -> torch.Tensor:
        """(N, E) embeddings of ``keys``: from the LRU where kept, the rest by ``compute(items)``."""
        got = {k: self._embeddings.get(k) for k in dict.fromkeys(keys)}
        todo = [k for k, v in got.items() if v is None]
        for k in got:
            if k not in todo:
                self._embeddings.move_to_end(k)
        if todo:
            fresh = compute([items[k] for k in todo])
            for k, e in zip(todo, fresh):
                got[k] = e
                if self.embedding_cache > 0:
                    self._embeddings[k] = e
            while len(self._embeddings) > max(self.embedding_cache, 0):
                self._embeddings.popitem(last=False)
        return torch.stack([got[k] for k in keys])  # type: ignore[misc]

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str], state: ImageState | None = None) -> torch.Tensor:
        """(N, E) conditions of ``texts``: one batched text-tower call for those not kept yet. An
        image-conditioned learner (CoCoOp) needs the target's ``state``; its embeddings are not kept."""
        texts = [Text(t).text for t in texts]

        def compute(batch: list[str]) -> torch.Tensor:
            self.counts["text_encoder"] += 1
            feats = None if state is None else state.features["image_features"].expand(len(batch), -1)
            with self._autocast():
                return self.vlsm.text_features(batch, self.learner, image_features=feats if conditioned else None).float()

        conditioned = self.learner is not None and self.learner.image_conditioned
        if conditioned:
            if state is None:
                raise PromptError(f"learner {self.method!r} is image-conditioned: text embeddings need the target's state")
            return compute(texts)
        return self._embed(["text:" + t for t in texts], {"text:" + t: t for t in texts}, compute)

    def visual_prompt_pixels(self, reference: Reference) -> torch.Tensor:
        """(1, 3, S, S) normalised conditional image of ``reference`` under ``visual_prompt``: the
        image through the VLSM's preprocess, the mask resized (nearest; an object that vanishes
        at S x S keeps every cell it touches), then :func:`visual_prompt`."""
        pixels = self.vlsm.preprocess(reference.image)
        m = torch.from_numpy(reference.mask).to(pixels.device, torch.float32)[None, None]
        mask = F.interpolate(m, size=self.input_size, mode="nearest")[0, 0] > 0
        if not mask.any():
            mask = F.adaptive_max_pool2d(m, self.input_size)[0, 0] > 0
        return visual_prompt(pixels, mask, VISUAL_PROMPTS[self.visual_prompt])

    @torch.no_grad()
    def reference_embeddings(self, references: Sequence[Reference]) -> torch.Tensor:
        """(k, E): each reference's CLIP image embedding of its visual prompt; those not kept yet go
        through the vision tower in batches of ``max_rows``."""

        def compute(refs: list[Reference]) -> torch.Tensor:
            out = []
            for start in range(0, len(refs), self.max_rows):
                pixels = torch.cat([self.visual_prompt_pixels(r) for r in refs[start : start + self.max_rows]])
                self.counts["image_encoder"] += len(pixels)
                with self._autocast():
                    out.append(self.vlsm.image_features(pixels, self.learner).float())
            return torch.cat(out)

        keys = [reference_key(r, self.visual_prompt) for r in references]
        return self._embed(keys, dict(zip(keys, references)), compute)

    def reference_embedding(self, references: Reference | Sequence[Reference]) -> torch.Tensor:
        """(E,) condition of k references: the mean of their conditional embeddings."""
        return self.reference_embeddings(self._as_condition(references, "the prompt")).mean(dim=0)  # type: ignore[arg-type]

    @staticmethod
    def _as_condition(prompt: Condition, where: str) -> str | list[Reference]:
        """A text, or the list of one object's references."""
        if isinstance(prompt, PromptSet):
            if len(prompt.kinds) != 1 or not prompt.kinds <= {"text", "reference"}:
                raise PromptError(f"clipseg takes one text or one reference per prompt set ({where} has {', '.join(sorted(prompt.kinds)) or 'nothing'})")
            return prompt.text.text if prompt.text is not None else [prompt.reference]  # type: ignore[list-item]
        if isinstance(prompt, (str, Text)):
            return Text(prompt).text if isinstance(prompt, str) else prompt.text
        refs = [prompt] if isinstance(prompt, Reference) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if refs is not None and not refs:
            raise PromptError(f"a visual prompt needs at least one Reference(image, mask) ({where} is empty)")
        if refs is None or not all(isinstance(r, Reference) for r in refs):
            raise PromptError(f"clipseg prompts are a text, a Reference or a list of References ({where} is {type(prompt).__name__})")
        return refs

    def conditions(self, state: ImageState, prompts: Sequence[Condition]) -> torch.Tensor:
        """(N, E) float32 conditions of N prompts: the texts in one text-tower call, the references
        of all prompts in one (batched) vision pass, each prompt's k references averaged."""
        items = [self._as_condition(p, f"prompt {i}") for i, p in enumerate(prompts)]
        texts = [c for c in items if isinstance(c, str)]
        refs = [r for c in items if not isinstance(c, str) for r in c]
        text_rows = iter(self.text_embeddings(texts, state) if texts else [])
        ref_rows = self.reference_embeddings(refs) if refs else None
        rows, at = [], 0
        for c in items:
            if isinstance(c, str):
                rows.append(next(text_rows))
            else:
                rows.append(ref_rows[at : at + len(c)].mean(dim=0))  # type: ignore[index]
                at += len(c)
        return torch.stack(rows).to(self.vlsm.mean.device)

    # -- decoding ----------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, state: ImageState, conditions: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) float32 logits at the input size for (N, E) ``conditions``."""
        from tunevlseg.models import PromptSet as VlsmPrompts

        levels = [state.features[f"level_{i}"] for i in range(sum(k.startswith("level_") for k in state.features))]
        prompts = self.prompt_set or VlsmPrompts()
        out = []
        for start in range(0, len(conditions), self.max_rows):
            cond = conditions[start : start + self.max_rows]
            acts = [a.expand(len(cond), *a.shape[1:]) for a in levels]
            self.counts["mask_decoder"] += 1
            with self._autocast():
                out.append(self.vlsm._decode(acts, cond.to(acts[0].dtype), self.input_size, prompts).float())
        return torch.cat(out)

    def _to_image(self, state: ImageState, logits: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, size=tuple(state.original_size), mode="bilinear", align_corners=False)[:, 0]

    def probabilities(self, state: ImageState, prompts: Sequence[Condition]) -> np.ndarray:
        """(N, H, W) float32: the sigmoid of CLIPSeg's logits for each prompt, resized to the image
        (bilinear on the logits); all prompts in one batched decoder call."""
        if not prompts:
            return np.zeros((0, *state.original_size), np.float32)
        logits = self.decode(state, self.conditions(state, prompts))
        return self._to_image(state, logits).sigmoid().cpu().numpy().astype(np.float32)

    def probability(self, state: ImageState, prompt: Condition) -> np.ndarray:
        """(H, W) float32 in [0, 1] for one text or one object's k references."""
        return self.probabilities(state, [prompt])[0]

    def _segment(self, state: ImageState, prompts: list[PromptSet], multimask_output: bool, select: str | None = None) -> Prediction:
        logits = self.decode(state, self.conditions(state, prompts))
        masks = self._to_image(state, logits).sigmoid() > self.threshold
        n = len(prompts)
        return Prediction(masks=masks[:, None].cpu().numpy(), scores=np.full((n, 1), np.nan, np.float32), logits=logits.cpu().numpy())


def create_clipseg_tiny(seed: int = 0, **kwargs: Any) -> ClipSegSegmenter:
    """``clipseg-tiny``: the segmenter on :func:`tunevlseg.models.tiny_clipseg` (random, 64 px
    input): for tests and CI smoke runs only, its maps are noise."""
    from tunevlseg.models import tiny_clipseg

    return ClipSegSegmenter(vlsm=tiny_clipseg(seed=seed), **kwargs)
