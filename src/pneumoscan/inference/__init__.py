"""Using a trained run on new images: the predictor (paths, bytes, PIL images, arrays),
the Keras and ONNX engines, streaming batch prediction to files, and Grad-CAM explanations."""
from .predictor import COLUMNS, Predictor, load

__all__ = ["COLUMNS", "Predictor", "load"]
