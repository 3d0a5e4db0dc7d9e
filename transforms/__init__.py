"""MONAI readers and dictionary transforms of this project."""

from transforms.compose import ComposeWithoutMeta
from transforms.crop import CROP_OPTIONS, HeadCropd, HeadUncropd, crop_option, uncrop
from transforms.fused import BatchAugmentation, FusedAugmentation
from transforms.intensity import INTENSITY_OPTIONS, ScaleIntensityByRecordd, intensity_option, scale_by_bounds
from transforms.mask import LesionMaskd, lesion_mask
from transforms.reader import TiffReader, TiffReadError

__all__ = [
    "CROP_OPTIONS",
    "INTENSITY_OPTIONS",
    "ComposeWithoutMeta",
    "BatchAugmentation",
    "FusedAugmentation",
    "HeadCropd",
    "HeadUncropd",
    "LesionMaskd",
    "ScaleIntensityByRecordd",
    "TiffReadError",
    "TiffReader",
    "crop_option",
    "intensity_option",
    "lesion_mask",
    "scale_by_bounds",
    "uncrop",
]
