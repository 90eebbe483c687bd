"""Reading an image and preparing its pixels: the one loader (JPEG, PNG, DICOM, bytes, PIL
images, arrays), intensity mapping, refusals and warnings, and training augmentation."""
from .loader import IMAGE_EXTENSIONS, PREPROCESSING, ImageReadError, LoadedImage, load_image, resize_square

__all__ = ["IMAGE_EXTENSIONS", "PREPROCESSING", "ImageReadError", "LoadedImage", "load_image", "resize_square"]
