"""Student architectures for SAM distillation: a registry of names -> :class:`StudentSpec`.

Every student is a segment-anything ``Sam`` (so it saves in the official key layout and loads
with ``create_segmenter("sam", checkpoint=...)``) plus a ``projection`` that maps its image
embedding onto the teacher's channels for the loss:

* ``vit_t-like``: MobileSAM's recipe with segment-anything's own ``ImageEncoderViT`` in place of
  TinyViT (ChaoningZhang/MobileSAM ``mobile_sam/build_sam.py: build_sam_vit_t`` keeps SAM's
  1024-pixel input, 16-pixel patches, 256-channel embedding and SAM's prompt encoder and mask
  decoder at the official sizes, and swaps only the image encoder). Here the student keeps the
  TEACHER's ``img_size``, ``patch_size`` and ``prompt_embed_dim``, so its embedding grid equals
  the teacher's exactly; the teacher's prompt encoder and mask decoder are copied in unchanged;
  the encoder is small (default width 192, depth 6, 3 heads, windowed blocks with global
  attention in blocks 2 and 5, about 4 M parameters at 1024 px, near TinyViT-5M's size). The
  projection is the identity.
* ``sam-tiny``: the architecture of the bundled demo model (``sam_tiny_record()["arch"]``: 256 px,
  width 128, 4 blocks, 128-channel embedding). Its grid (16) and channels (128) differ from a
  real SAM's (64, 256): the teacher's embedding is average-pooled to the student's grid and a
  learned 1x1 convolution maps the student's 128 channels to the teacher's for the loss; that
  projection exists only for distillation and is discarded afterwards (it is in the training
  checkpoints, never in ``student.pth``). The teacher's prompt encoder and mask decoder do not
  fit a 128-channel embedding, so they are NOT copied: the student's prompt encoder and mask
  decoder start from the bundled sam-tiny weights (stage 2 then adapts the decoder to the
  distilled encoder).

A new student is one :class:`StudentSpec` added to :data:`STUDENTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from segprompt.errors import ConfigError, WeightsError
from segprompt.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

    from segprompt.models.sam_arch import SamArch

INIT_RANDOM = "random"
INIT_BUNDLED = "bundled"


@dataclass
class BuiltStudent:
    """A student ready for stage 1.

    Attributes:
        model: a segment-anything ``Sam`` (the student; only its ``image_encoder`` is trained).
        arch: its :class:`SamArch` (what :func:`save_sam` records beside the weights).
        projection: maps the student's embedding (B, C_s, g, g) to the teacher's channels
            (B, C_t, g, g); ``nn.Identity`` when C_s == C_t.
        decoder_from: where the prompt encoder and mask decoder came from (for the report).
    """

    model: "nn.Module"
    arch: "SamArch"
    projection: "nn.Module"
    decoder_from: str


@dataclass(frozen=True)
class StudentSpec:
    """One student architecture.

    Attributes:
        name: the canonical name (``--student``).
        build: ``build(teacher, teacher_arch, init, options) -> BuiltStudent``; ``teacher`` is
            the teacher's ``Sam`` (eval, frozen).
        default_init: ``init`` when none is given.
        inits: the non-path ``init`` values this student accepts.
        default_decoder_epochs: stage 2 epochs when none are given.
        options: the ``student_options`` keys this student accepts.
        summary: one line for ``--help`` and the docs.
    """

    name: str
    build: Callable[..., BuiltStudent]
    default_init: str
    inits: tuple[str, ...]
    default_decoder_epochs: int
    options: tuple[str, ...]
    summary: str

    def check_init(self, init: str | None) -> str:
        """The resolved ``init``: the default for None, a known word, or a checkpoint path (kept
        as given; it is read when the student is built)."""
        if init is None:
            return self.default_init
        init = str(init)
        if init in (INIT_RANDOM, INIT_BUNDLED) and init not in self.inits:
            raise ConfigError(f"--init {init} is not available for the {self.name} student; use {' or '.join(self.inits)}, or a checkpoint file")
        return init

    def check_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(self.options) if self.options else "none (its architecture is fixed)"
            raise ConfigError(f"student options {unknown} are not known to the {self.name} student; it takes: {allowed}")


def _copy_prompt_parts(student: "nn.Module", source: "nn.Module") -> None:
    """Load ``source``'s prompt encoder and mask decoder into ``student`` (strict: same sizes)."""
    student.prompt_encoder.load_state_dict(source.prompt_encoder.state_dict(), strict=True)
    student.mask_decoder.load_state_dict(source.mask_decoder.state_dict(), strict=True)


def load_encoder_init(student: "nn.Module", init: str, name: str) -> None:
    """Load the ``image_encoder.*`` tensors of checkpoint ``init`` into ``student`` (strict);
    WeightsError naming the file when they do not fit."""
    from segprompt.models.sam_arch import read_checkpoint
    from segprompt.weights import find_weights

    path = find_weights(init)
    sd, _ = read_checkpoint(path)
    prefix = "image_encoder."
    enc = {k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(prefix)}
    if not enc:
        raise WeightsError(f"{path}: --init checkpoint holds no image_encoder.* tensors")
    try:
        student.image_encoder.load_state_dict(enc, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).splitlines()[:2])
        raise WeightsError(f"{path}: its image encoder does not fit the {name} student ({first})") from exc


def vit_t_like_arch(teacher_arch: "SamArch", options: Mapping[str, Any]) -> "SamArch":
    """The vit_t-like student's :class:`SamArch`: the teacher's with a small image encoder."""
    width = int(options.get("embed_dim", 192))
    depth = int(options.get("depth", 6))
    default_global = tuple(sorted({max(0, depth // 2 - 1), depth - 1}))
    return replace(
        teacher_arch,
        encoder_embed_dim=width,
        encoder_depth=depth,
        encoder_num_heads=int(options.get("num_heads", max(1, width // 64))),
        encoder_global_attn_indexes=tuple(int(i) for i in options.get("global_attn_indexes", default_global)),
        window_size=int(options.get("window_size", teacher_arch.window_size or 14)),
        encoder_mlp_ratio=float(options.get("mlp_ratio", 4.0)),
        use_rel_pos=True,
        qkv_bias=True,
    )


def build_vit_t_like(teacher: "nn.Module", teacher_arch: "SamArch", init: str, options: Mapping[str, Any]) -> BuiltStudent:
    """A small ``ImageEncoderViT`` at the teacher's input size and embedding width, with the
    teacher's prompt encoder and mask decoder copied in (MobileSAM's decoupled distillation)."""
    import torch.nn as nn

    arch = vit_t_like_arch(teacher_arch, options)
    model = arch.build()
    _copy_prompt_parts(model, teacher)
    if init != INIT_RANDOM:
        load_encoder_init(model, init, "vit_t-like")
    return BuiltStudent(model, arch, nn.Identity(), "the teacher (copied unchanged)")


def build_sam_tiny(teacher: "nn.Module", teacher_arch: "SamArch", init: str, options: Mapping[str, Any]) -> BuiltStudent:
    """The bundled demo model's architecture; prompt encoder and mask decoder from the bundled
    weights; a 1x1 projection to the teacher's channels (used for the loss only)."""
    import torch.nn as nn

    from segprompt.models.sam_arch import SamArch, load_sam
    from segprompt.models.sam_tiny import sam_tiny_path, sam_tiny_record

    arch = SamArch.from_json(sam_tiny_record()["arch"])
    bundled, _ = load_sam(sam_tiny_path(), {"decoder_num_heads": arch.decoder_num_heads, "encoder_num_heads": arch.encoder_num_heads})
    model = arch.build()
    if init == INIT_BUNDLED:
        model.load_state_dict(bundled.state_dict(), strict=True)
    else:
        _copy_prompt_parts(model, bundled)
        if init != INIT_RANDOM:
            load_encoder_init(model, init, "sam-tiny")
    if arch.prompt_embed_dim == teacher_arch.prompt_embed_dim:
        projection: nn.Module = nn.Identity()
    else:
        projection = nn.Conv2d(arch.prompt_embed_dim, teacher_arch.prompt_embed_dim, kernel_size=1)
    return BuiltStudent(model, arch, projection, f"the bundled sam-tiny ({Path(sam_tiny_path()).name})")


#: name -> student; ``STUDENTS.get("vit_t-like")`` (``_`` and ``-`` are the same, case ignored)
STUDENTS: Registry[StudentSpec] = Registry("student")
STUDENTS.add(
    "vit_t-like",
    StudentSpec(
        name="vit_t-like", build=build_vit_t_like, default_init=INIT_RANDOM, inits=(INIT_RANDOM,), default_decoder_epochs=0,
        options=("embed_dim", "depth", "num_heads", "global_attn_indexes", "window_size", "mlp_ratio"),
        summary="a small ViT at the teacher's input size and width; the teacher's prompt encoder and mask decoder copied (MobileSAM)",
    ),
    "vit-t", "mobilesam",
)
STUDENTS.add(
    "sam-tiny",
    StudentSpec(
        name="sam-tiny", build=build_sam_tiny, default_init=INIT_BUNDLED, inits=(INIT_RANDOM, INIT_BUNDLED), default_decoder_epochs=5, options=(),
        summary="the bundled demo model's architecture (256 px, 128 channels): pooled teacher grid, 1x1 projection for the loss, bundled decoder",
    ),
)


def build_student(name: str, teacher: "nn.Module", teacher_arch: "SamArch", init: str, options: Mapping[str, Any] | None = None) -> BuiltStudent:
    """Build the student ``name`` for ``teacher`` (see :data:`STUDENTS`)."""
    spec = STUDENTS.get(name)
    return spec.build(teacher, teacher_arch, spec.check_init(init), dict(options or {}))


__all__ = ["BuiltStudent", "StudentSpec", "STUDENTS", "build_student", "load_encoder_init", "vit_t_like_arch", "INIT_RANDOM", "INIT_BUNDLED"]
