"""Checks on an input image: refusals (errors) and doubts (warnings).

Refusals are raised as :class:`ImageReadError` from the image *header*, before any pixel is
decoded, so a decompression bomb (a small file that claims a huge image) never allocates
its pixels. Warnings do not stop a prediction: they flag an image that is unlikely to be a
frontal chest X-ray, where the model's probability means little.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import ImageReadError

# Refusals. A chest X-ray is at most ~4300 x 4300 px (17 inch detector at 0.1 mm), about 18.5
# megapixels, so 50 megapixels leaves room for odd scanners and still refuses a bomb.
MAX_PIXELS = 50_000_000
MIN_SIDE = 32  # smaller than this, no lung detail survives (PneumoniaMNIST's 28 px comes as arrays)

# Warnings. Bounds measured on the Kermany images (train, val and test): their mean
# saturation is 0.0, their intensity std at least 25 of 255, their aspect ratio at most 1.74.
MAX_SATURATION = 0.10  # mean chroma (max - min channel) / 255 over the image
MIN_STD = 8.0  # intensity standard deviation on the 0..255 grayscale image
MAX_ASPECT = 2.0  # long side / short side


def check_dimensions(path, width: int, height: int) -> None:
    """Refuse an image that is too large to decode safely or too small to read."""
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            path, f"image too large: {width}x{height} pixels is over the {MAX_PIXELS // 1_000_000} megapixel limit"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(path, f"image too small: {width}x{height} pixels, at least {MIN_SIDE}x{MIN_SIDE} needed")


def colour_saturation(image: Image.Image) -> float:
    """Mean chroma, 0 (gray) .. 1 (pure colours), of an upright PIL image of any mode."""
    if image.mode in ("1", "L", "LA", "I", "F") or image.mode.startswith("I;"):
        return 0.0
    # A thumbnail is enough for a mean and keeps a 20-megapixel photo cheap.
    small = image.copy()
    small.thumbnail((256, 256))
    rgb = np.asarray(small.convert("RGB"), dtype=np.int16)
    return float((rgb.max(axis=-1) - rgb.min(axis=-1)).mean() / 255.0)


def image_warnings(gray: np.ndarray, saturation: float, width: int, height: int) -> list[str]:
    """Reasons to doubt that an image is a frontal chest X-ray (empty list: none)."""
    warnings = []
    if saturation > MAX_SATURATION:
        warnings.append(f"colourful image (mean saturation {saturation:.2f} > {MAX_SATURATION}): X-rays are grayscale")
    std = float(gray.std())
    if std < MIN_STD:
        warnings.append(f"nearly constant image (intensity std {std:.1f} < {MIN_STD} of 255)")
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        warnings.append(f"extreme aspect ratio {aspect:.1f}:1 ({width}x{height}): a chest X-ray is near square")
    return warnings
