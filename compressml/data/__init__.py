"""Image data: file reading with explicit conversions, DataModules, the Kodak download helper.

The DataModules (Lightning) load on first use, so the codec, which reads images only, starts
without Lightning."""

from compressml.data.images import list_images, load_image, save_image

_DATAMODULES = (
    "SAMPLE_IMAGES",
    "ImageDataModule",
    "ImageDataset",
    "ImageFolderDataModule",
    "ImageItem",
    "KodakDataModule",
    "SampleImagesDataModule",
    "fit_crop",
)

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


def __getattr__(name: str):
    if name in _DATAMODULES:
        from compressml.data import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module 'compressml.data' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
