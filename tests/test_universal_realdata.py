"""universal-tiny on real data: finetuning on CamVid teaches it the street classes by name.

../shared/data/camvid has 40 images and no split: the first 25 (sorted ids) train, the next 5
pick the best epoch, the last 10 are the test split.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.realdata

needs_data = pytest.mark.skipif(not os.environ.get("SEGPROMPT_DATA_ROOT"), reason="SEGPROMPT_DATA_ROOT not set")


@needs_data
def test_finetuning_on_camvid_raises_text_miou_on_its_test_images(tmp_path):
    from segprompt.data.registry import load_dataset
    from segprompt.models.universal import UniversalSegmenter
    from segprompt.universal.checkpoint import load_universal
    from segprompt.universal.evaluate import text_miou
    from segprompt.universal.run import dataset_vocabulary, scenes_of, train_universal
    from segprompt.universal.train import UniversalTrainConfig, build_model

    ds = load_dataset("camvid")
    order = np.argsort(ds.ids)
    train, val, test = ds.subset(order[:25].tolist()), ds.subset(order[25:30].tolist()), ds.subset(order[30:40].tolist())
    test_scenes = scenes_of(test, range(len(test)))
    cfg = UniversalTrainConfig(
        init="universal-tiny", dataset="camvid", epochs=10, batch_size=5, lr=1e-3, warmup_steps=0, rows_per_image=4,
        progress=False, checkpoint_every=None, num_points=1024, second_round=0.0,
    )
    torch.manual_seed(0)
    own = build_model(cfg, dataset_vocabulary(train))  # universal-tiny, the street words added (not yet learnt)
    before = text_miou(UniversalSegmenter(model=own), test_scenes)
    summary = train_universal(cfg, tmp_path / "camvid", dataset=train, val=val)
    tuned = load_universal(summary["weights"])
    after = text_miou(UniversalSegmenter(model=tuned), test_scenes)
    print(f"camvid text mIoU: universal-tiny {before['miou']:.3f} -> finetuned {after['miou']:.3f}", after["per_class"])
    # measured on this CPU (50 steps, about 90 s): see docs/universal.md for the numbers of the bundled model
    assert after["miou"] > before["miou"] + 0.05, (before, after)
