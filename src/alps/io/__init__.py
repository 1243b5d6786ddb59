"""Input and output of images: finding inputs, reading them as RGB uint8."""

from alps.io.images import (
    IMAGE_SUFFIXES,
    MIN_SIDE,
    ImageFile,
    ImageReadError,
    LoadedImage,
    find_images,
    load_image,
    read_image,
    stretch_to_uint8,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "MIN_SIDE",
    "ImageFile",
    "ImageReadError",
    "LoadedImage",
    "find_images",
    "load_image",
    "read_image",
    "stretch_to_uint8",
]
