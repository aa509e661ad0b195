"""Image data: file reading with explicit conversions, DataModules, the Kodak download helper."""

from compressml.data.datamodules import (
    SAMPLE_IMAGES,
    ImageDataModule,
    ImageDataset,
    ImageFolderDataModule,
    ImageItem,
    KodakDataModule,
    SampleImagesDataModule,
    fit_crop,
)
from compressml.data.images import list_images, load_image, save_image

__all__ = [
    "SAMPLE_IMAGES",
    "ImageDataModule",
    "ImageDataset",
    "ImageFolderDataModule",
    "ImageItem",
    "KodakDataModule",
    "SampleImagesDataModule",
    "fit_crop",
    "list_images",
    "load_image",
    "save_image",
]
