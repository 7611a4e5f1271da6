"""``segprompt train universal``: train or finetune a universal model on the engine's loop.

::

    RUN_DIR/
      config.yaml          the resolved configuration (rerun = resume; another config = ConfigError)
      results.jsonl        one row per epoch (epoch 0: before training)
      errors.jsonl         samples that could not be read or have nothing to learn from
      invocations.jsonl    one row per run of the command (start, seconds)
      checkpoints/         last.pt (exact resume), best.pt, universal_config.json (makes them loadable)
      universal.safetensors   the best weights with their config: create_segmenter("universal", checkpoint=...)
      summary.json         before / best validation metrics, vocabulary, steps

Training runs in one process (CPU or one GPU); DDP is not wired for this suite yet.

One training step (batch of scenes, :mod:`segprompt.universal.train_data`):

1. the images are encoded once; ``rows_per_image`` prompt sets per image are simulated;
2. one decoder call gives, for every row, the object queries and the prompt queries;
3. **generic loss**: the object queries of one row per image (they never see prompts, so any
   row gives the same) are Hungarian-matched to the image's instances: class CE through text
   similarity (no-object weight 0.1), BCE + Dice on importance-sampled points, every layer
   (deep supervision) -- :func:`~segprompt.universal.losses.set_criterion`;
4. **prompt loss**: of the P candidates of each row the best learns (BCE + Dice), the IoU head
   learns every candidate's IoU, on the middle and the last layer (``prompt_supervision="all"``:
   every layer, SEEM's deep supervision; the default halves the backward pass on a CPU); the
   class embedding of the candidate the IoU head ranks first (the one ``classify`` reads) learns
   its class (grounding);
5. **second round** (``second_round`` of the rows with visual prompts): the first round's best
   mask gives 1..``correction_clicks`` correction clicks (centres of the largest error regions,
   :func:`~segprompt.universal.train_data.correction_clicks`) and, in ``memory_share`` of them,
   becomes the memory prompt; that round's outputs get the prompt loss too. With
   ``extra_rounds`` > 0, 0..``extra_rounds`` rounds run before it without gradients, each
   adding clicks from the last round's mask (RITM's iterative training), so the graded round
   sees the many-click sets of a long correction session;
6. ``sibling_negatives``: a share of the click rows also gets negative clicks inside another
   instance of the target's class (or one touching it).

``val_kinds`` picks the validation measures whose mean selects the best epoch (``click``,
``text``, ``ref``, ``click5``: the IoU after 5 clicks, the point benchmark's corrections).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segprompt.errors import ConfigError

log = logging.getLogger("segprompt.universal")

__all__ = ["UniversalTrainConfig", "UniversalStep", "build_model", "param_groups"]

#: architecture fields ``grow`` may add to an ``init`` model, and the state-dict prefix of the
#: part each adds (the part starts at zero: the grown model computes what the init model did)
GROWABLE: dict[str, str] = {"detail_dim": "detail.", "prompt_to_pixel": "decoder.pixel_prompt.", "box_map": "decoder.pixel_prompt.box_map."}

#: fields that may change between a run and its resume (they do not change the result)
VOLATILE = ("progress", "max_steps", "device", "export")


@dataclass
class UniversalTrainConfig:
    """Everything a training run needs (the YAML of ``--config`` holds these fields)."""

    model: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    grow: dict[str, Any] = field(default_factory=dict)
    dataset: str = "synthetic-objects"
    dataset_kwargs: dict[str, Any] = field(default_factory=lambda: {"n": 2000, "seed": 0})
    val_dataset: str | None = None
    val_kwargs: dict[str, Any] = field(default_factory=lambda: {"n": 48, "seed": 999})
    val_fraction: float = 0.0
    limit: int | None = None
    add_words: bool = True
    epochs: int = 10
    batch_size: int = 8
    lr: float = 3e-4
    backbone_lr: float = 3e-5
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup_steps: int = 50
    precision: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    rows_per_image: int = 4
    second_round: float = 0.3
    correction_clicks: int = 1
    memory_share: float = 1.0
    extra_rounds: int = 0
    sibling_negatives: float = 0.0
    val_kinds: tuple[str, ...] = ("click", "text", "ref")
    num_points: int = 2048
    prompt_supervision: str = "middle+last"
    patience: int = 0
    checkpoint_every: int | None = 200
    max_steps: int | None = None
    progress: bool = True
    export: str | None = None

    def __post_init__(self) -> None:
        if self.grow and not self.init:
            raise ConfigError("grow adds parts to an init model; give init too")
        unknown = sorted(set(self.grow) - set(GROWABLE))
        if unknown:
            raise ConfigError(f"grow: {', '.join(unknown)} cannot be grown; growable: {', '.join(GROWABLE)}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction is a share in [0, 1), got {self.val_fraction}")
        if self.rows_per_image < 1:
            raise ConfigError(f"rows_per_image must be >= 1, got {self.rows_per_image}")
        if self.prompt_supervision not in ("all", "middle+last"):
            raise ConfigError(f"prompt_supervision is 'all' or 'middle+last', got {self.prompt_supervision!r}")
        if not 0 <= self.second_round <= 1:
            raise ConfigError(f"second_round is a probability in [0, 1], got {self.second_round}")
        if not 0 <= self.sibling_negatives <= 1:
            raise ConfigError(f"sibling_negatives is a probability in [0, 1], got {self.sibling_negatives}")
        if self.extra_rounds < 0:
            raise ConfigError(f"extra_rounds must be >= 0, got {self.extra_rounds}")
        from segprompt.universal.evaluate import VAL_KINDS

        object.__setattr__(self, "val_kinds", tuple(self.val_kinds))
        bad = sorted(set(self.val_kinds) - set(VAL_KINDS))
        if bad or not self.val_kinds:
            raise ConfigError(f"val_kinds: unknown {', '.join(bad) or '(none given)'}; use some of {', '.join(VAL_KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UniversalTrainConfig":
        from segprompt.universal.config import from_fields

        return from_fields(cls, data, "train universal")


def build_model(cfg: UniversalTrainConfig, words: Sequence[str]) -> Any:
    """A new model from ``cfg.model`` (its vocabulary = ``words`` when none is given), or the
    ``cfg.init`` checkpoint (finetuning; a vocabulary model learns the new ``words`` too)."""
    from segprompt.universal.checkpoint import load_universal
    from segprompt.universal.config import UniversalConfig
    from segprompt.universal.model import UniversalModel

    if cfg.init:
        path = cfg.init
        if path == "universal-tiny":
            from segprompt.models.universal import universal_tiny_path

            path = str(universal_tiny_path())
        model = load_universal(path)
        if cfg.grow:
            model = grown(model, cfg.grow)
        if cfg.add_words and hasattr(model.text, "add_words"):
            added = model.text.add_words(words)
            model.cfg.words = tuple(dict.fromkeys((*model.cfg.words, *words)))  # class names; rebuilt, they split into the same word order
            if added:
                log.info("the vocabulary learns %d new word(s): %s", len(added), ", ".join(added))
        return model.train()
    mcfg = dict(cfg.model)
    if mcfg.get("text", "vocabulary") == "vocabulary" and not mcfg.get("words"):
        mcfg["words"] = list(words)
    return UniversalModel(UniversalConfig.from_dict(mcfg)).train()


def grown(model: Any, grow: Mapping[str, Any]) -> Any:
    """``model`` rebuilt with the ``grow`` fields of its config changed (:data:`GROWABLE`), its
    tensors copied; the new parts keep their initialisation (zero output: the same function)."""
    from dataclasses import replace

    from segprompt.universal.model import UniversalModel

    old = model.cfg
    for name, value in grow.items():
        if getattr(old, name):
            raise ConfigError(f"grow: the init model already has {name}={getattr(old, name)}")
    bigger = UniversalModel(replace(old, **dict(grow)), pyramid=model.pyramid, text=model.text)
    missing, unexpected = bigger.load_state_dict(model.state_dict(), strict=False)
    new = tuple(GROWABLE[name] for name in grow)
    if unexpected or any(not k.startswith(new) for k in missing):
        raise ConfigError(f"grow: the grown model does not hold the init model's tensors (missing {missing[:4]}, unexpected {unexpected[:4]})")
    log.info("grown: %s (%d new tensors, initialised so that the output is unchanged)", ", ".join(f"{k}={v}" for k, v in grow.items()), len(missing))
    return bigger


def param_groups(model: Any, cfg: UniversalTrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the backbone trunk's trainable tensors at ``backbone_lr``, the rest at ``lr``;
    no weight decay on norms, biases and embeddings."""
    trunk = {id(p) for p in model.pyramid.trunk.parameters()} if hasattr(model.pyramid, "trunk") else set()
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and id(p) not in embeddings
        groups.setdefault((id(p) in trunk, decay), []).append(p)
    return [
        {"params": ps, "lr": cfg.backbone_lr if is_trunk else cfg.lr, "weight_decay": cfg.weight_decay if decay else 0.0}
        for (is_trunk, decay), ps in groups.items()
    ]


class UniversalStep:
    """The loss of one batch of scenes (see the module docstring)."""

    def __init__(self, model: Any, cfg: UniversalTrainConfig, vocabulary: Sequence[str]) -> None:
        from segprompt.universal.losses import LossWeights

        self.model, self.cfg = model, cfg
        self.vocabulary = tuple(vocabulary)
        self.weights = LossWeights()

    def targets_in_frame(self, masks: np.ndarray, tf: Any, side: int) -> torch.Tensor:
        """(N, H, W) bool at the original size -> (N, side, side) float 0/1 in the padded model
        frame (``side``: twice the mask features' side; losses sample points there)."""
        if len(masks) == 0:
            return torch.zeros((0, side, side))
        t = torch.from_numpy(masks.astype(np.float32))[:, None]
        h, w = tf.input_size
        t = F.interpolate(t, (h, w), mode="bilinear", align_corners=False) if (h, w) != t.shape[-2:] else t
        t = tf.pad(t)
        if t.shape[-1] != side:
            t = F.interpolate(t, (side, side), mode="area")
        return (t[:, 0] > 0.5).float()

    def __call__(self, scenes: Sequence[Any], rng: np.random.Generator) -> tuple[torch.Tensor | None, dict[str, float]]:
        from segprompt.universal.losses import set_criterion
        from segprompt.universal.prompting import model_input
        from segprompt.universal.train_data import simulate_prompts

        model, cfg = self.model, self.cfg
        dev = model.device
        sims = simulate_prompts(scenes, cfg.rows_per_image, rng, sibling_negatives=cfg.sibling_negatives)
        if not sims:
            return None, {}
        pixels, tfs = model_input([s.image for s in scenes], model.img_size)
        feats = model.encode_images(pixels.to(dev), [tf.input_size for tf in tfs])
        outs, pt = self.decode(feats, [s.prompts for s in sims], [s.image for s in sims], [s.reference_image for s in sims], tfs, rng)
        side = 2 * int(feats.mask_features.shape[-1])
        text_emb = model.embed_texts(self.vocabulary)
        index = {n: i for i, n in enumerate(self.vocabulary)}

        # generic: the object queries of every image with objects (computed once per image)
        first = sorted({s.image for s in sims})
        rows = torch.tensor(first, device=dev)
        targets = [
            {
                "classes": torch.tensor([index[scenes[b].class_names[int(c)]] for c in scenes[b].classes], dtype=torch.int64, device=dev),
                "masks": self.targets_in_frame(scenes[b].masks, tfs[b], side).to(dev),
            }
            for b in first
        ]
        layers = [{"class_logits": model.class_logits(o.object_embed[rows], text_emb), "masks": o.object_masks[rows]} for o in outs]
        generic = set_criterion(layers, targets, self.weights, cfg.num_points)

        # prompted, with deep supervision and grounding
        ptargets = torch.cat([self.targets_in_frame(s.target[None], tfs[s.image], side) for s in sims]).to(dev)
        classes = torch.tensor([index[scenes[s.image].class_names[s.cls]] for s in sims], device=dev)
        prompted, parts = self.prompt_loss(outs, ptargets, classes, text_emb)
        total = generic["loss"] + prompted
        logs = {"generic": float(generic["loss"].detach()), "prompt": float(parts["mask"]), "iou_head": float(parts["iou"]), "ground": float(parts["ground"])}

        # second round: a correction click and the first round's mask as memory
        again = self.second_round(sims, outs[-1], tfs, rng)
        for _ in range(int(rng.integers(0, cfg.extra_rounds + 1)) if again else 0):
            # a user's third, fourth... round: decoded without gradients, its mask gives the next clicks
            idx, sets_k = zip(*again)
            with torch.no_grad():
                outs_k, _ = self.decode(feats, list(sets_k), [sims[i].image for i in idx], [sims[i].reference_image for i in idx], tfs, rng)
            again = self.next_round(again, outs_k[-1], sims, tfs, rng)
        if again:
            idx, sets2 = zip(*again)
            outs2, _ = self.decode(feats, list(sets2), [sims[i].image for i in idx], [sims[i].reference_image for i in idx], tfs, rng)
            l2, parts2 = self.prompt_loss(outs2, ptargets[list(idx)], classes[list(idx)], text_emb)
            total = total + l2
            logs["round2"] = float(parts2["mask"].detach())
        return total, logs

    def decode(self, feats: Any, sets: Sequence[Any], images: Sequence[int], refs: Sequence[int], tfs: Sequence[Any], rng: np.random.Generator) -> tuple[list[Any], Any]:
        from segprompt.universal.prompting import prompt_tensors

        model = self.model
        lowres = int(feats.mask_features.shape[-1])
        pt = prompt_tensors(
            sets, [tfs[b] for b in images], images, model.cfg.tokens_per_prompt, lowres, rng,
            ref_index=list(refs), ref_transforms=[tfs[b] if b >= 0 else None for b in refs],
        ).to(model.device)
        return model.decode(feats, pt), pt

    def prompt_loss(self, outs: Sequence[Any], targets: torch.Tensor, classes: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from segprompt.universal.losses import prompt_losses

        total = torch.zeros((), device=targets.device)
        last: dict[str, torch.Tensor] = {}
        supervised = outs if self.cfg.prompt_supervision == "all" else [outs[len(outs) // 2], outs[-1]]
        for o in supervised:
            parts = prompt_losses(o.masks, o.scores, targets, self.weights, self.cfg.num_points)
            total = total + parts["loss"]
            last = parts
        final = outs[-1]
        best = final.scores.detach().argmax(1)
        emb = final.class_embed[torch.arange(len(best), device=best.device), best]
        ground = F.cross_entropy(self.model.class_logits(emb, text_emb, no_object=False), classes)
        total = total + self.weights.cls * ground
        return total, {"mask": (last["loss_mask"] + last["loss_dice"]).detach(), "iou": last["loss_iou"].detach(), "ground": ground.detach()}

    def second_round(self, sims: Sequence[Any], final: Any, tfs: Sequence[Any], rng: np.random.Generator) -> list[tuple[int, Any]]:
        from segprompt.prompts import MaskPrompt, Points, PromptSet
        from segprompt.universal.train_data import correction_clicks

        chosen = [i for i, s in enumerate(sims) if s.prompts.reference is None and s.prompts.text is None and rng.random() < self.cfg.second_round]
        return self.next_round([(i, sims[i].prompts) for i in chosen], final, sims, tfs, rng, rows=chosen)

    def next_round(
        self, current: Sequence[tuple[int, Any]], final: Any, sims: Sequence[Any], tfs: Sequence[Any], rng: np.random.Generator,
        rows: Sequence[int] | None = None,
    ) -> list[tuple[int, Any]]:
        """``current`` (sim index, prompt set) with 1..``correction_clicks`` correction clicks added
        from ``final``'s best candidate (row ``rows[k]`` of ``final`` for entry k; default k) and,
        in ``memory_share`` of them, that candidate's logits as the memory prompt."""
        from segprompt.prompts import MaskPrompt, Points, PromptSet
        from segprompt.universal.train_data import correction_clicks

        out = []
        for k, (i, p) in enumerate(current):
            r = k if rows is None else rows[k]
            s = sims[i]
            best = int(final.scores[r].detach().argmax())
            low = final.masks[r, best].detach().float().cpu()
            pred = (tfs[s.image].upscale_logits(low[None, None])[0, 0] > 0).numpy()
            clicks = correction_clicks(pred, s.target, int(rng.integers(1, self.cfg.correction_clicks + 1)))
            if not clicks:
                continue
            xy = np.stack([c[0] for c in clicks])
            labels = np.array([c[1] for c in clicks])
            old = p.points
            pts = Points(xy, labels) if old is None else Points(np.concatenate((old.coords, xy)), np.concatenate((old.labels, labels)))
            memory = MaskPrompt(low.numpy(), kind="logits") if rng.random() < self.cfg.memory_share else s.prompts.mask
            out.append((i, PromptSet(points=pts, box=p.box, scribbles=p.scribbles, mask=memory, text=p.text)))
        return out
