"""The one image loader, shared by training, evaluation, prediction, explanations and the web app.

An image file (JPEG, PNG at 8 or 16 bits in any mode, or DICOM) becomes a ``uint8`` array of
shape (size, size): upright (EXIF orientation), grayscale, resized to a square *without*
keeping the aspect ratio. The Kermany 224 px copies were made exactly that way (squashed, no
crop), so squashing a native-resolution X-ray at inference time matches what the model saw in
training. Intensity scaling (x / 255) lives inside the model, so an exported model carries it
and no caller can forget it.

``load_preprocessed(path, size)`` gives the array; ``load_checked(path, size)`` also gives the
warnings of :mod:`pneumoscan.data.guards` (an image unlikely to be a frontal chest X-ray).
Every refusal is an :class:`ImageReadError` naming the file and the problem.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .dicom import is_dicom, read_dicom
from .errors import ImageReadError
from .guards import check_dimensions, colour_saturation, image_warnings
from .intensity import scale_to_uint8, stretch_to_uint8

__all__ = [
    "IMAGE_EXTENSIONS", "PREPROCESS_VERSION", "ImageReadError", "LoadedImage", "load_checked",
    "load_preprocessed", "preprocess_array", "read_image", "to_grayscale",
]

# Bump when the output of preprocessing changes: it is part of the decoded-image cache key.
# 2: 16-bit PNGs are scaled by their bit depth (was: their own min..max), DICOM is read, and
#    images under 32x32 px are refused. 8-bit JPEG and PNG output is unchanged.
PREPROCESS_VERSION = 2
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".dcm")

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# Under this maximum a 16-bit image holds raw 10-12-bit detector values instead of samples
# scaled to the full 16-bit range as the PNG standard asks (PNG spec 12.5, sBIT).
_RAW_DETECTOR_MAX = 4096


@dataclass
class LoadedImage:
    """A model-ready image plus the reasons to doubt it is a frontal chest X-ray."""

    array: np.ndarray  # (size, size) uint8, exactly what load_preprocessed returns
    warnings: list[str] = field(default_factory=list)
    source_size: tuple[int, int] = (0, 0)  # (width, height) of the upright image before resizing


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file (JPEG, PNG, DICOM), or raise ImageReadError.

    The pixel count is checked from the header before decoding, and truncated files are
    refused (Pillow's ``LOAD_TRUNCATED_IMAGES`` is left False). A DICOM file comes back as
    an 8-bit ``L`` image with its Modality and VOI LUT (or window) applied.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file")
    if is_dicom(path):
        return read_dicom(path)
    try:
        with Image.open(path) as image:
            check_dimensions(path, *image.size)  # from the header: nothing decoded yet
            image.load()
            return image.copy()
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (JPEG, PNG or DICOM expected)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"cannot decode image ({exc})") from None
    except Exception as exc:  # a malformed file can make a decoder raise anything; never stop a batch
        raise ImageReadError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def to_grayscale(image: Image.Image) -> np.ndarray:
    """A 2-D uint8 array from any PIL mode (8/16-bit, RGB(A), palette), EXIF rotation applied."""
    return _gray(_flatten_alpha(ImageOps.exif_transpose(image)))


def preprocess_array(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 grayscale array to (size, size) uint8."""
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {gray.shape}")
    if gray.shape == (size, size):
        return np.ascontiguousarray(gray, dtype=np.uint8)
    resized = Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def load_preprocessed(path: str | Path, size: int) -> np.ndarray:
    """File -> (size, size) uint8: the exact input every model of pneumoscan sees."""
    return preprocess_array(to_grayscale(read_image(path)), size)


def load_checked(path: str | Path, size: int) -> LoadedImage:
    """``load_preprocessed`` plus warnings: colourful, nearly constant, extreme aspect ratio."""
    upright = _flatten_alpha(ImageOps.exif_transpose(read_image(path)))
    saturation = colour_saturation(upright)  # before grayscale conversion throws colour away
    array = preprocess_array(_gray(upright), size)
    width, height = upright.size
    return LoadedImage(array, image_warnings(array, saturation, width, height), (width, height))


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels become black, as an X-ray's empty background is."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image


def _gray(image: Image.Image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        return _sixteen_bit_to_uint8(np.asarray(image))
    if image.mode == "F":
        return stretch_to_uint8(np.asarray(image, dtype=np.float64))
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _sixteen_bit_to_uint8(arr: np.ndarray) -> np.ndarray:
    """65535 is white, as for 255 at 8 bits, so a 16-bit copy of an 8-bit image reads the same."""
    values = arr.astype(np.float64)
    if values.min() < 0 or values.max() > 65535 or values.max() < _RAW_DETECTOR_MAX:
        return stretch_to_uint8(values)  # 32-bit data, or raw detector values: use the image's own range
    return scale_to_uint8(values, 0.0, 65535.0)

