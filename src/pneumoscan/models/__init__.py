"""Model registry: ``build_model(name, image_size, ...)``."""
from __future__ import annotations

from functools import partial

import keras

from ..config import ModelConfig
from .auc import PneumoniaAUC
from .layers import PerImageStandardization, resolved_normalization
from ..errors import WeightsError
from .applications import BACKBONES, backbone_model
from .pneumonet import pneumonet
from .seed_cnn import seed_cnn

MODELS = {"seed_cnn": seed_cnn, "pneumonet": pneumonet, "pneumonet_small": partial(pneumonet, depth=(1, 1, 1, 1))}
MODELS.update({name: partial(backbone_model, name) for name in BACKBONES})


def available_models() -> list[str]:
    return sorted(MODELS)


def build_model(cfg: ModelConfig, image_size: int) -> keras.Model:
    if cfg.name not in MODELS:
        raise ValueError(f"unknown model {cfg.name!r}; available: {', '.join(available_models())}")
    return MODELS[cfg.name](image_size=image_size, dropout=cfg.dropout, width=cfg.width, weights=cfg.weights,
                            normalize=cfg.normalize)


def input_normalization(cfg: ModelConfig) -> dict:
    """What the model itself does first to its raw 0..255 input (preprocessing.json says it, so that
    nobody normalizes twice)."""
    if cfg.name in BACKBONES:
        return {"kind": "backbone", "inside_model": True,
                "description": f"keras.applications preprocessing of {cfg.name}, inside the model"}
    if resolved_normalization(cfg.normalize) == "scale":
        return {"kind": "scale", "inside_model": True, "description": "x / 255, inside the model"}
    return {"kind": "image", "inside_model": True,
            "description": "per-image standardization inside the model: (x - mean) / max(std, 1) over each "
                           "image's pixels, so a change of brightness or contrast does not change the input"}


from .predict import load_run_model, model_image_size, predict_probabilities  # noqa: E402

__all__ = ["build_model", "available_models", "input_normalization", "MODELS", "WeightsError", "PneumoniaAUC", "load_run_model",
           "model_image_size", "predict_probabilities"]
