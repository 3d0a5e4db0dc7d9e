"""MONAI readers and dictionary transforms of this project."""

from transforms.compose import ComposeWithoutMeta
from transforms.fused import BatchAugmentation, FusedAugmentation
from transforms.mask import LesionMaskd, lesion_mask
from transforms.reader import TiffReader, TiffReadError

__all__ = [
    "ComposeWithoutMeta",
    "BatchAugmentation",
    "FusedAugmentation",
    "LesionMaskd",
    "TiffReadError",
    "TiffReader",
    "lesion_mask",
]
