"""Datasets: the Sample type, readers, the dataset registry, synthetic data and transforms.

>>> from segprompt.data import load_dataset
>>> ds = load_dataset("kvasir", root="path/to/Kvasir-SEG")     # doctest: +SKIP
>>> sample = ds[0]; sample.image.shape, sample.mask.dtype        # doctest: +SKIP
"""

from segprompt.data.io import read_binary_mask, read_image, read_mask_array, to_rgb_uint8, write_image, write_mask
from segprompt.data.registry import dataset_info, list_datasets, load_dataset
from segprompt.data.sample import IGNORE_INDEX, Sample, SegmentationDataset
from segprompt.data.synthetic import SyntheticLesions, SyntheticScenes

__all__ = [
    "IGNORE_INDEX",
    "Sample",
    "SegmentationDataset",
    "SyntheticLesions",
    "SyntheticScenes",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "read_binary_mask",
    "read_image",
    "read_mask_array",
    "to_rgb_uint8",
    "write_image",
    "write_mask",
]
