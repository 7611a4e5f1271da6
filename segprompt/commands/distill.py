"""``segprompt distill sam``: distil a SAM checkpoint into a small student (MobileSAM-style).

Stage 1 trains the student's image encoder to reproduce the teacher's image embedding; stage 2
(``--decoder-epochs N``) finetunes the student's mask decoder with prompts through ``segprompt
finetune sam``'s engine (:func:`finetune_decoder`). Rerunning the command on the same ``--out``
folder resumes it; a finished run does nothing but rewrite its report. See docs/distill.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import click


def finetune_decoder(student: Path, out: Path, cfg: Any, dataset: Any, progress: bool = True) -> Mapping[str, Any]:
    """Stage 2 of a distillation (a :data:`segprompt.distill.run.DecoderStage`): pointprompt's
    ``finetune_sam`` on the distilled student, mask decoder trained, ``mixed`` prompts (a point
    strategy, jittered boxes or iterative corrections per sample), its default splits and loss;
    ``cfg.decoder_epochs`` epochs at ``cfg.decoder_lr``. No second training loop: the run is a
    normal finetuning run folder in ``out`` (resumable, with its own report)."""
    from pointprompt.finetune import FinetuneConfig, finetune_sam

    ft = FinetuneConfig(
        dataset=cfg.dataset, dataset_kwargs=dict(cfg.dataset_kwargs), limit=cfg.limit, model=None, checkpoint=str(student),
        train=["mask_decoder"], prompts="mixed", epochs=cfg.decoder_epochs, batch_size=cfg.decoder_batch_size or cfg.batch_size,
        lr=cfg.decoder_lr, precision=cfg.precision, device=cfg.device, seed=cfg.seed, max_steps=cfg.max_steps,
    )
    return finetune_sam(ft, out, dataset=dataset, progress=progress)


@click.group("distill", context_settings={"help_option_names": ["-h", "--help"]})
def distill() -> None:
    """Distil a SAM checkpoint into a small, fast student."""


@distill.command("sam")
@click.option("--teacher", required=True, help="The SAM to distil: a checkpoint file (.pth / .safetensors) or a weights name (sam_vit_b).")
@click.option("--student", default="vit_t-like", show_default=True, help="vit_t-like (small ViT, the teacher's decoder copied) or sam-tiny (the bundled demo model's architecture).")
@click.option("--init", default=None, help="Student image encoder start: random, bundled (sam-tiny) or a SAM checkpoint. [default: vit_t-like random, sam-tiny bundled]")
@click.option("--student-width", type=int, default=None, help="vit_t-like: encoder width. [default: 192]")
@click.option("--student-depth", type=int, default=None, help="vit_t-like: encoder blocks. [default: 6]")
@click.option("--dataset", required=True, help="Registry name (see `segprompt data list`) or a dataset folder.")
@click.option("--root", type=str, default=None, help="Folder of a registry-named dataset (default: $SEGPROMPT_DATA_ROOT/<folder>).")
@click.option("--limit", type=int, default=None, help="Use only the first N images.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Share of the images held out to measure the embedding MSE.")
@click.option("--epochs", type=int, default=8, show_default=True, help="Stage 1 epochs (MobileSAM: 8).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Stage 1 AdamW learning rate (cosine schedule).")
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--grad-clip", type=float, default=0.0, show_default=True, help="Max gradient norm (0: none).")
@click.option("--decoder-epochs", type=int, default=None, help="Stage 2 epochs; 0 skips it. [default: vit_t-like 0, sam-tiny 5]")
@click.option("--decoder-lr", type=float, default=1e-4, show_default=True)
@click.option("--decoder-batch-size", type=int, default=None, help="Stage 2 batch size. [default: --batch-size]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="Autocast on CUDA.")
@click.option("--max-steps", type=int, default=None, help="Stop each stage after N optimizer steps (rerun to continue).")
@click.option("--checkpoint-every", type=int, default=0, show_default=True, help="Also checkpoint every N optimizer steps (0: per epoch).")
@click.option("--speed-images", type=int, default=3, show_default=True, help="Timed encoder passes per model for the report (0: none).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (rerun the same command to resume).")
def sam(teacher: str, student: str, init: str | None, student_width: int | None, student_depth: int | None, dataset: str, root: str | None, limit: int | None,
        val_fraction: float, epochs: int, batch_size: int, lr: float, weight_decay: float, grad_clip: float, decoder_epochs: int | None, decoder_lr: float,
        decoder_batch_size: int | None, seed: int, device: str, precision: str, max_steps: int | None, checkpoint_every: int, speed_images: int, out: Path) -> None:
    """Distil --teacher into a small --student: encoder distillation (MSE of the image embedding,
    MobileSAM's decoupled distillation), then optional mask-decoder finetuning with prompts.
    Writes OUT/student.pth (segment-anything layout) and OUT/report.md."""
    from segprompt.distill import DistillConfig, run_distill

    options = {k: v for k, v in (("embed_dim", student_width), ("depth", student_depth)) if v is not None}
    cfg = DistillConfig(
        teacher=teacher, student=student, init=init, student_options=options, dataset=dataset, dataset_kwargs={"root": root} if root else {},
        limit=limit, val_fraction=val_fraction, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
        decoder_epochs=decoder_epochs, decoder_lr=decoder_lr, decoder_batch_size=decoder_batch_size, seed=seed, device=device, precision=precision,
        max_steps=max_steps, checkpoint_every=checkpoint_every, speed_images=speed_images,
    )
    click.echo(f"segprompt distill sam: {cfg.teacher} -> {cfg.student} student on {cfg.dataset} -> {out}")
    result = run_distill(cfg, out, decoder_stage=finetune_decoder)
    if result.get("interrupted"):
        click.echo(f"stopped in stage {1 if result['stage'] == 'encoder' else 2} after {result['stopped_at_step']} optimizer steps (--max-steps); rerun to continue")
        return
    b, a = result["before"], result["after"]
    click.echo(f"held-out embedding MSE {b['val_mse']:.5f} -> {a['val_mse']:.5f}, cosine {b['val_cosine']:.4f} -> {a['val_cosine']:.4f}")
    click.echo(f"student: {result['student_checkpoint']}")
    click.echo(f"report: {out / 'report.md'}")
