"""Automatic mask generation ("segment everything") over any promptable Segmenter.

.. code-block:: python

    from segprompt.everything import segment_everything, label_map
    seg = create_segmenter("sam", checkpoint="sam_vit_b")
    records = segment_everything(seg, image, points_per_side=16)   # SamAutomaticMaskGenerator's records
    labels = label_map(records, image.shape[:2])                     # int32, 0 = background

The rules follow segment-anything's ``SamAutomaticMaskGenerator`` (see :mod:`.generate`).
"""

from segprompt.everything.generate import OUTPUT_MODES, EverythingSettings, segment_everything
from segprompt.everything.labels import label_map

__all__ = ["EverythingSettings", "segment_everything", "label_map", "OUTPUT_MODES"]
