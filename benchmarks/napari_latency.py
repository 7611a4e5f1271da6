#!/usr/bin/env python
"""Click-to-preview latency of the napari widget on CPU: median and p95 over many clicks.

A click is what napari does on a mouse press in the points layer's add mode: ``Points.add`` of
one point. The latency runs from that call until the widget has drawn the new preview for it
(its ``preview_updated`` signal for the prompt state that includes the click): layer event ->
zero-delay timer (clicks are not debounced; drags and typing are) -> decode in a worker thread
(prompt encoder + mask decoder + upscaling, never the image encoder) -> recording of the step ->
candidates -> preview layer update. The decode time inside the worker is reported too, and the
embedding time of each new image.

Clicks follow an annotator's pattern on synthetic lesion images: a first positive click inside
the lesion, then corrections (positive inside, negative outside), up to ``--per-object`` clicks,
then Clear and the next object. The viewer is a ``napari.components.ViewerModel`` with Qt
offscreen (no drawing: the GPU/OpenGL part of napari is not in these numbers).

    python benchmarks/napari_latency.py                    # sam-tiny, 200 clicks
    python benchmarks/napari_latency.py --clicks 500 --size 512 --threads 2
    python benchmarks/napari_latency.py --model classical  # GrabCut: no embedding, slower decode
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def build_model(name: str):
    """(segmenter, description). sam-tiny falls back to its architecture with random weights
    when the bundled weights are missing (latency does not depend on the weight values)."""
    import torch

    from segprompt.models import create_segmenter

    if name == "sam-tiny":
        try:
            return create_segmenter("sam-tiny", multimask="best"), "sam-tiny (bundled weights; three candidates per click, the widget's all)"
        except Exception as exc:  # noqa: BLE001 - WeightsError while the demo model is being built
            from segprompt.models.sam_arch import SamArch

            # the architecture of scripts/train_sam_tiny.py (ARCH)
            arch = SamArch(
                img_size=256, patch_size=16, encoder_embed_dim=128, encoder_depth=4, encoder_num_heads=4,
                encoder_global_attn_indexes=(1, 3), window_size=8, prompt_embed_dim=128, mask_in_chans=16,
                decoder_depth=2, decoder_mlp_dim=512, decoder_num_heads=4, iou_head_hidden_dim=128,
            )
            torch.manual_seed(0)
            seg = create_segmenter("sam", model=arch.build())
            return seg, f"sam-tiny architecture, random weights ({type(exc).__name__}: bundled weights missing)"
    if name in ("vit_b", "vit_l", "vit_h"):
        from segprompt.models.sam_arch import OFFICIAL_ARCHS

        torch.manual_seed(0)
        return create_segmenter("sam", model=OFFICIAL_ARCHS[name].build()), f"SAM {name}, random weights"
    return create_segmenter(name), name


def stats(values: list[float]) -> str:
    ms = np.asarray(values) * 1000
    return (
        f"median {np.median(ms):7.1f} ms   p95 {np.percentile(ms, 95):7.1f} ms   "
        f"mean {ms.mean():7.1f}   min {ms.min():6.1f}   max {ms.max():7.1f}   (n={len(ms)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam-tiny", help="sam-tiny (default), classical, random-walker, vit_b/l/h (random weights)")
    ap.add_argument("--clicks", type=int, default=200, help="clicks to time")
    ap.add_argument("--per-object", type=int, default=5, help="clicks before Clear and the next object")
    ap.add_argument("--size", type=int, default=256, help="image side (pixels)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--debounce-ms", type=int, default=None, help="the widget's debounce (default: its default)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    if args.threads:
        torch.set_num_threads(args.threads)
    app = QApplication.instance() or QApplication([])
    from napari.components import ViewerModel

    from segprompt.data.synthetic import SyntheticLesions
    from viewers.widget import SegpromptWidget

    seg, desc = build_model(args.model)
    samples = [SyntheticLesions(n=args.images, seed=args.seed, size=args.size, style="mixed")[i] for i in range(args.images)]
    rng = np.random.default_rng(args.seed)
    default_debounce = SegpromptWidget.__init__.__kwdefaults__["debounce_ms"]
    settings = [("widget defaults", args.debounce_ms if args.debounce_ms is not None else default_debounce)]

    print(f"model: {desc}")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(f"images: {args.images} synthetic lesions {args.size}x{args.size}; {args.clicks} clicks, {args.per_object} per object")

    def wait(cond, timeout_s: float = 60.0) -> None:
        loop = QEventLoop()
        poll = QTimer()
        poll.timeout.connect(lambda: cond() and loop.quit())
        poll.start(0)
        guard = QTimer()
        guard.setSingleShot(True)
        guard.timeout.connect(loop.quit)
        guard.start(int(timeout_s * 1000))
        if not cond():
            loop.exec_()
        poll.stop()
        guard.stop()
        if not cond():
            raise TimeoutError("the widget did not answer")

    for label, debounce in settings:
        viewer = ViewerModel()
        for s in samples:
            viewer.add_image(s.image, name=s.id, rgb=True)
        w = SegpromptWidget(viewer, debounce_ms=debounce, auto_embed=False)
        w.set_segmenter(seg, desc)
        latencies: list[float] = []
        decodes: list[float] = []
        encodes: list[float] = []
        k = 0
        while len(latencies) < args.clicks:
            s = samples[k % len(samples)]
            k += 1
            w.set_image_layer(viewer.layers[s.id])
            cached = w.session.has_state(0)
            t0 = time.perf_counter()
            w.compute_embedding()
            wait(lambda: w.session.has_state(0) and not w.encoding)
            if not cached:
                encodes.append(time.perf_counter() - t0)
            gt = s.mask
            inside = np.argwhere(gt)
            outside = np.argwhere(~gt)
            for c in range(min(args.per_object, args.clicks - len(latencies))):
                positive = c == 0 or rng.random() < 0.6
                r, col = (inside if positive else outside)[rng.integers(len(inside if positive else outside))]
                t0 = time.perf_counter()
                w.add_point(float(col) + 0.5, float(r) + 0.5, positive=positive)
                gen = w._generation
                wait(lambda: w._shown_generation >= gen and w.preview is not None)
                latencies.append(time.perf_counter() - t0)
                decodes.append(w.preview.seconds)
            w.clear()
        w.shutdown()
        w.deleteLater()
        print(f"\n[{label}; debounce for drags/typing {debounce} ms, clicks not debounced]")
        print(f"  click -> preview drawn : {stats(latencies)}")
        print(f"  decode in the worker   : {stats(decodes)}")
        print(f"  embedding (new image)  : {stats(encodes)}")
    app.processEvents()


if __name__ == "__main__":
    main()
