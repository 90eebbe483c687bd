"""Shift-stress validation: the validation images under acquisition changes a hospital really
produces, to tell recipes apart where the plain validation split is saturated.

Every change is deterministic (seeded per image) and applied to the images as the model
sees them (grayscale, S x S). The set is built once per validation set and cached on disk,
so every recipe, epoch and threshold is judged on exactly the same images. The official
test split is never used here.

``shift_report`` gives the ROC-AUC on each changed copy, their mean and worst, and the
ROC-AUC of all the copies pooled, which also punishes a model whose scores drift with the
acquisition (a ranking that holds within each copy but not across them).
"""
from __future__ import annotations

import hashlib
import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..paths import atomic_write_npz, cache_dir

SHIFT_VERSION = 1  # bump when a change below changes: part of the cache key


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(x, "L")


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


def _gamma(g: float):
    table = np.round(255.0 * (np.arange(256) / 255.0) ** g).astype(np.uint8)
    return lambda x, rng: table[x]


def _contrast(factor: float):
    def change(x, rng):
        mean = x.mean()
        return np.clip((x.astype(np.float32) - mean) * factor + mean, 0, 255).round().astype(np.uint8)
    return change


def _blur(x, rng):
    return _arr(_pil(x).filter(ImageFilter.GaussianBlur(radius=x.shape[0] / 110)))


def _sharpen(x, rng):
    return _arr(_pil(x).filter(ImageFilter.UnsharpMask(radius=2, percent=160, threshold=2)))


def _noise(x, rng):
    return np.clip(x + rng.normal(0.0, 10.0, x.shape), 0, 255).round().astype(np.uint8)


def _jpeg(x, rng):
    buffer = io.BytesIO()
    _pil(x).save(buffer, format="JPEG", quality=15)
    return _arr(Image.open(buffer).convert("L"))


def zoom(scale: float):
    """scale < 1: a tighter field of view (the lungs fill the frame); > 1: more border around the chest."""
    def change(x, rng):
        size = x.shape[0]
        if scale < 1:
            side = int(round(size * scale))
            start = (size - side) // 2
            crop = x[start:start + side, start:start + side]
            return _arr(_pil(crop).resize((size, size), Image.Resampling.BILINEAR))
        side = int(round(size * scale))
        canvas = np.zeros((side, side), np.uint8)
        start = (side - size) // 2
        canvas[start:start + size, start:start + size] = x
        return _arr(_pil(canvas).resize((size, size), Image.Resampling.BILINEAR))
    return change


def _rotate(x, rng):
    return _arr(_pil(x).rotate(10.0 * rng.choice([-1, 1]), resample=Image.Resampling.BILINEAR, fillcolor=0))


def translate(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The image moved by (-dx, -dy) pixels, black where it uncovers."""
    return _arr(_pil(x).transform(x.shape[::-1], Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=0))


def _translate(x, rng):
    shift = int(round(0.08 * x.shape[0]))
    return translate(x, rng.choice([-shift, shift]), rng.choice([-shift, shift]))


def _collimation(x, rng):
    """Collimator edges: the outer tenth of each side blanked, as a tightly coned film looks."""
    out = x.copy()
    edge = int(round(0.1 * x.shape[0]))
    out[:, :edge] = out[:, -edge:] = 0
    out[:edge, :] = out[-edge:, :] = 0
    return out


def _burned_text(x, rng):
    """A side marker and a line of text burned into the corners, as many departments print."""
    image = _pil(x.copy())
    draw = ImageDraw.Draw(image)
    size = x.shape[0]
    draw.text((size * 0.05, size * 0.04), "R", fill=255, font_size=max(8, size // 10))
    draw.text((size * 0.45, size * 0.90), "PORTABLE AP 12:03", fill=255, font_size=max(6, size // 20))
    return _arr(image)


# gamma 0.6 / 1.6, contrast x0.6 / x1.5, blur sigma S/110, unsharp mask, noise std 10, JPEG quality
# 15, field of view x0.8 / x1.2, rotation 10 degrees, translation 8%, collimation 10% per side.
SHIFTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    # Names are plain words (no dots): they are key paths in metrics.json and the report.
    "gamma_low": _gamma(0.6), "gamma_high": _gamma(1.6),
    "contrast_low": _contrast(0.6), "contrast_high": _contrast(1.5),
    "blur": _blur, "sharpen": _sharpen, "noise": _noise, "jpeg_q15": _jpeg,
    "zoom_in": zoom(0.8), "zoom_out": zoom(1.2), "rotate_10deg": _rotate, "translate_8pct": _translate,
    "collimation": _collimation, "burned_text": _burned_text,
}


def shifted_copies(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """{change: (N, S, S) uint8}: every image under every change, deterministic for a seed."""
    out = {}
    for k, (name, change) in enumerate(SHIFTS.items()):
        rngs = [np.random.default_rng([seed, k, i]) for i in range(len(images))]
        out[name] = np.stack([change(image, rng) for image, rng in zip(images, rngs)]) if len(images) else images
    return out


def cached_shifted_copies(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`shifted_copies`, built once and kept in the cache (keyed by the images themselves)."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:20]
    file = cache_dir() / "shift" / f"{digest}-{images.shape[-1]}-{seed}-v{SHIFT_VERSION}.npz"
    if file.is_file():
        try:
            with np.load(file) as cached:
                if set(cached.files) == set(SHIFTS):
                    return {name: cached[name] for name in SHIFTS}
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt
    copies = shifted_copies(images, seed)
    atomic_write_npz(file, **copies)
    return copies


def shift_report(labels: np.ndarray, probabilities: dict[str, np.ndarray]) -> dict:
    """ROC-AUC per change, their mean and worst, and the pooled ROC-AUC over every copy."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    per = {name: float(roc_auc_score(labels, p)) for name, p in probabilities.items()}
    pooled = float(roc_auc_score(np.tile(labels, len(probabilities)), np.concatenate(list(probabilities.values()))))
    worst = min(per, key=per.get)
    return {"roc_auc": per, "mean_roc_auc": float(np.mean(list(per.values()))), "worst_roc_auc": per[worst],
            "worst_shift": worst, "pooled_roc_auc": pooled, "n": int(len(labels)), "version": SHIFT_VERSION}
