"""Images: a 2D UNet, image folders and torchvision data sets, PNG grids and image metrics.

Registered as the modality ``image`` through the entry-point group ``multidiff.modalities``.
"""

from .adapter import ImageDataConfig, ImageModality, ImageModelConfig

__all__ = ["ImageDataConfig", "ImageModality", "ImageModelConfig"]
