"""Volumes: prompt slices of a (Z, H, W[, 3]) stack and propagate through it (:mod:`.api`), the
slice-by-slice fallback for every Segmenter (:mod:`.fallback`), and TIFF / NIfTI reading and
label writing with the voxel spacing (:mod:`.io`).
"""

from segprompt.volumes.api import (
    DIRECTIONS,
    METHODS,
    SlicePrompt,
    Volume,
    VolumePrompts,
    VolumePropagator,
    VolumeResult,
    VolumeState,
    as_volume,
    register_volume_propagator,
    segment_volume,
    volume_propagator,
    volume_support,
)

__all__ = [
    "DIRECTIONS",
    "METHODS",
    "SlicePrompt",
    "Volume",
    "VolumePrompts",
    "VolumePropagator",
    "VolumeResult",
    "VolumeState",
    "as_volume",
    "register_volume_propagator",
    "segment_volume",
    "volume_propagator",
    "volume_support",
]
