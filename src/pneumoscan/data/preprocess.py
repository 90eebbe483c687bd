"""The one preprocessing function, shared by training, evaluation and prediction.

An image becomes a ``uint8`` array of shape (size, size): grayscale, resized to a square
*without* keeping the aspect ratio. The Kermany 224 px copies were made exactly that way
(squashed, no crop), so squashing a native-resolution X-ray at inference time matches
what the model saw in training. Intensity scaling (x / 255) lives inside the model, so
an exported model carries it and no caller can forget it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Bump when the output of preprocess() changes: it is part of the decoded-image cache key.
PREPROCESS_VERSION = 1
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


class ImageReadError(ValueError):
    """An input image cannot be used; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def to_grayscale(image: Image.Image) -> np.ndarray:
    """A 2-D uint8 array from any PIL mode (8/16-bit, RGB(A), palette), EXIF rotation applied."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: stretch their own range to 0..255.
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return np.round(scaled).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def preprocess_array(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 grayscale array to (size, size) uint8."""
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {gray.shape}")
    if gray.shape == (size, size):
        return np.ascontiguousarray(gray, dtype=np.uint8)
    resized = Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, or raise ImageReadError naming the problem."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (JPEG or PNG expected)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"cannot decode image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large ({exc})") from None


def load_preprocessed(path: str | Path, size: int) -> np.ndarray:
    """File -> (size, size) uint8: the exact input every model of pneumoscan sees."""
    return preprocess_array(to_grayscale(read_image(path)), size)
