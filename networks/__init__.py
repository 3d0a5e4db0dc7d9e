"""The U-Net of the tutorial (Keydana 2020) for LGG FLAIR-abnormality segmentation."""

from networks.unet import UNet

__all__ = ["UNet"]
