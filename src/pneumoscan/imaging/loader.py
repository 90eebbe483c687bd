"""The one image loader: training, evaluation, ``predict``, ``explain``, the web app and the
report all turn an image into the model's pixels with :func:`load_image`.

An image (a file path, the bytes of a file, a PIL image or a numpy array; JPEG, PNG at 8 or
16 bits in any mode, or DICOM) becomes a ``uint8`` array of shape (size, size): upright
(EXIF orientation), grayscale, resized to a square *without* keeping the aspect ratio. The
Kermany 224 px copies were made exactly that way (squashed, no crop), so squashing a
native-resolution X-ray at inference time matches what the model saw in training. Intensity
scaling (x / 255) lives inside the model, so an exported model carries it and no caller can
forget it. :data:`PREPROCESSING` says all of this in words, and the exported contract
(``preprocessing.json``) quotes it.

Every refusal is an :class:`ImageReadError` naming the image and the problem; the warnings of
:mod:`pneumoscan.imaging.guards` (an image unlikely to be a frontal chest X-ray) come with
the pixels.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageReadError
from .dicom import is_dicom, read_dicom
from .guards import check_dimensions, colour_saturation, image_warnings
from .intensity import scale_to_uint8, stretch_to_uint8

__all__ = ["IMAGE_EXTENSIONS", "PREPROCESS_VERSION", "PREPROCESSING", "ImageReadError", "ImageSource",
           "LoadedImage", "load_image", "read_grayscale", "resize_square", "source_name"]

ImageSource = Union[str, Path, bytes, bytearray, np.ndarray, Image.Image]

# Bump when the output of preprocessing changes: it is part of the decoded-image cache key.
# 2: 16-bit PNGs are scaled by their bit depth (was: their own min..max), DICOM is read, and
#    images under 32x32 px are refused. 8-bit JPEG and PNG output is unchanged.
PREPROCESS_VERSION = 2
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".dcm")

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# Under this maximum a 16-bit image holds raw 10-12-bit detector values instead of samples
# scaled to the full 16-bit range as the PNG standard asks (PNG spec 12.5, sBIT).
_RAW_DETECTOR_MAX = 4096

# What load_image does, in words: written into every export's preprocessing.json, so the
# contract cannot drift from the code (a test checks each statement against the loader).
PREPROCESSING = {
    "orientation": "EXIF orientation applied",
    "alpha": "transparent pixels become black",
    "color": ("grayscale, 8-bit: RGB is converted with ITU-R 601-2 luma (PIL 'L'); 16-bit images are scaled "
              f"by their bit depth (0..65535 -> 0..255, 65535 = white), except when every value is under "
              f"{_RAW_DETECTOR_MAX} (raw detector values), then stretched to the image's own min..max; "
              "32-bit integer and float images are stretched to their own min..max"),
    "dicom": ("Modality LUT (RescaleSlope/Intercept), then the VOI LUT or Window Center/Width "
              "(else the image's own min..max), MONOCHROME1 inverted"),
    "resize": "squash to image_size x image_size without keeping the aspect ratio, bilinear (PIL)",
}


@dataclass
class LoadedImage:
    """A model-ready image plus the reasons to doubt it is a frontal chest X-ray."""

    array: np.ndarray  # (size, size) uint8: what the model is fed
    warnings: list[str] = field(default_factory=list)
    source_size: tuple[int, int] = (0, 0)  # (width, height) of the upright image before resizing


def source_name(source: ImageSource, name: str | None = None) -> str:
    """How errors and tables name an image: its path, else ``name``, else its kind."""
    if name:
        return str(name)
    if isinstance(source, (str, Path)):
        return str(source)
    return {bytes: "<bytes>", bytearray: "<bytes>", np.ndarray: "<array>"}.get(type(source), "<PIL image>")


def load_image(source: ImageSource, size: int, name: str | None = None) -> LoadedImage:
    """Any image -> (size, size) uint8 pixels, with the warnings of :mod:`.guards`.

    ``source``: a path, the bytes of an image file, a PIL image, or a numpy array (2-D
    grayscale of any integer or float type, or (H, W, 3|4) uint8 colour). ``name`` is how
    errors name an in-memory image. Raises :class:`ImageReadError` when the image cannot be used.
    """
    upright = _upright(source, source_name(source, name))
    saturation = colour_saturation(upright)  # before grayscale conversion throws colour away
    array = resize_square(_gray(upright), size)
    width, height = upright.size
    return LoadedImage(array, image_warnings(array, saturation, width, height), (width, height))


def read_grayscale(source: ImageSource, name: str | None = None) -> np.ndarray:
    """The upright 2-D uint8 grayscale pixels at the image's own resolution (no resize, no warnings)."""
    return _gray(_upright(source, source_name(source, name)))


def _upright(source: ImageSource, name: str) -> Image.Image:
    return _flatten_alpha(ImageOps.exif_transpose(_decode(source, name)))


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 grayscale array to (size, size) uint8 (also used for MedMNIST arrays)."""
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {gray.shape}")
    if gray.shape == (size, size):
        return np.ascontiguousarray(gray, dtype=np.uint8)
    resized = Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _decode(source: ImageSource, name: str) -> Image.Image:
    """A fully decoded PIL image, or ImageReadError. Sizes are checked before decoding."""
    if isinstance(source, Image.Image):
        check_dimensions(name, *source.size)
        source.load()
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, name)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageReadError(name, "empty file")
        data = bytes(source)
        if _has_dicom_marker(data):
            return read_dicom(io.BytesIO(data), name)
        return _open_pillow(io.BytesIO(data), name)
    if not isinstance(source, (str, Path)):
        raise ImageReadError(name, f"cannot read a {type(source).__name__}: pass a path, bytes, a PIL image "
                                   "or a numpy array")
    path = Path(source)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file")
    if is_dicom(path):
        return read_dicom(path, name)
    return _open_pillow(path, name)


def _has_dicom_marker(data: bytes) -> bool:
    return data[128:132] == b"DICM"


def _open_pillow(file, name: str) -> Image.Image:
    try:
        with Image.open(file) as image:
            check_dimensions(name, *image.size)  # from the header: nothing decoded yet
            image.load()
            return image.copy()
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(name, "not a readable image (JPEG, PNG or DICOM expected)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(name, f"cannot decode image ({exc})") from None
    except Exception as exc:  # a malformed file can make a decoder raise anything; never stop a batch
        raise ImageReadError(name, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    arr = np.asarray(array)
    colour = arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8
    if arr.ndim != 2 and not colour:
        raise ImageReadError(name, f"array of shape {arr.shape} and type {arr.dtype} is not an image: expected "
                                   "(H, W) grayscale or (H, W, 3|4) uint8 colour")
    if arr.size and not np.isfinite(arr).all():
        raise ImageReadError(name, "array holds NaN or infinite values")
    check_dimensions(name, arr.shape[1], arr.shape[0])
    if colour:
        return Image.fromarray(np.ascontiguousarray(arr), "RGBA" if arr.shape[2] == 4 else "RGB")
    if arr.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(arr), "L")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # any byte order: Pillow infers I;16 from native uint16
        return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint16))
    if arr.dtype == bool:
        return Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8) * 255), "L")
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), "F")  # other types: own min..max


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
