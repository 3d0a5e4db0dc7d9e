"""MONAI readers and dictionary transforms of this project."""

from transforms.compose import ComposeWithoutMeta
from transforms.fused import BatchAugmentation, FusedAugmentation
from transforms.intensity import INTENSITY_OPTIONS, ScaleIntensityByRecordd, intensity_option, scale_by_bounds
from transforms.mask import LesionMaskd, lesion_mask
from transforms.reader import TiffReader, TiffReadError

__all__ = [
    "INTENSITY_OPTIONS",
    "ComposeWithoutMeta",
    "BatchAugmentation",
    "FusedAugmentation",
    "LesionMaskd",
    "ScaleIntensityByRecordd",
    "TiffReadError",
    "TiffReader",
    "intensity_option",
    "lesion_mask",
    "scale_by_bounds",
]
