"""Intensity mapping shared by the PNG/JPEG and DICOM readers."""
from __future__ import annotations

import numpy as np


def scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` linearly onto 0..255, clipped (``high < low`` flips, as a negative slope does)."""
    if high == low:
        return np.zeros(np.shape(values), dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) / (high - low) * 255.0
    return np.round(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """The image's own min..max onto 0..255 (a constant image becomes black)."""
    values = np.asarray(values, dtype=np.float64)
    return scale_to_uint8(values, float(values.min()), float(values.max()))
