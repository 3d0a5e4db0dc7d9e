"""MONAI readers and dictionary transforms of this project."""

from transforms.mask import LesionMaskd, lesion_mask
from transforms.reader import TiffReader, TiffReadError

__all__ = ["LesionMaskd", "TiffReadError", "TiffReader", "lesion_mask"]
