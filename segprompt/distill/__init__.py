"""MobileSAM-style distillation of a SAM checkpoint into a small, fast student.

.. code-block:: python

    from segprompt.distill import DistillConfig, run_distill
    from segprompt.commands.distill import finetune_decoder   # stage 2 (pointprompt's SAM finetuning)

    cfg = DistillConfig(teacher="sam_vit_b", student="vit_t-like", dataset="kvasir", epochs=8, device="cuda", precision="bf16")
    summary = run_distill(cfg, "runs/distill_kvasir", decoder_stage=finetune_decoder)
    summary["student_checkpoint"]     # runs/distill_kvasir/student.pth: create_segmenter("sam", checkpoint=...)
    summary["before"], summary["after"]   # held-out embedding MSE / cosine before and after stage 1

Stage 1 (:mod:`~segprompt.distill.encoder`) trains the student's image encoder to reproduce the
frozen teacher's image embedding (MSE), MobileSAM's decoupled distillation; stage 2 finetunes
the student's mask decoder with prompts through ``segprompt finetune sam``'s engine. Students
(:mod:`~segprompt.distill.students`): ``vit_t-like`` (a small ViT at the teacher's size, the
teacher's prompt encoder and mask decoder copied) and ``sam-tiny`` (the bundled demo model's
architecture). Modules: :mod:`~segprompt.distill.config`, :mod:`~segprompt.distill.data` (images,
split, teacher embeddings), :mod:`~segprompt.distill.report`, :mod:`~segprompt.distill.run`
(the run folder). See docs/distill.md.
"""

from segprompt.distill.config import DistillConfig
from segprompt.distill.run import run_distill

__all__ = ["DistillConfig", "run_distill"]
