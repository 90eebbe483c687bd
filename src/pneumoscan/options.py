"""Every list of choices, defined once: the config, the command line, the library and the
report all read them from here."""
from __future__ import annotations

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # index = label; PNEUMONIA is the positive class

SOURCES = ("auto", "kermany", "medmnist", "csv", "folders")  # folders: NORMAL/ and PNEUMONIA/
# Splits of a run (column ``split`` of splits.csv), in the order they are shown.
SPLITS = ("train", "val", "test", "kaggle_val")
REPORTED_SPLITS = ("val", "test", "kaggle_val")  # evaluated and reported; train is fitted on

CLASS_WEIGHTS = ("balanced", "none")
# model.normalize: auto (image for pneumoscan's own CNNs, the backbone's own scaling for
# keras.applications), scale (x / 255) or image (per-image standardization).
NORMALIZATIONS = ("auto", "scale", "image")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_MODES = ("auto", "on", "off")
STRATEGIES = ("auto", "one", "mirrored", "multiworker")

ENGINES = ("keras", "onnx", "onnx-int8")
QUANTIZATIONS = ("int8",)  # export --format onnx --quantize
# The web app's micro-batching (deploy.batching): most images per model call, how long the
# first image waits for company, and how many images may wait before requests get 503.
SERVE_MAX_BATCH, SERVE_MAX_WAIT_MS, SERVE_MAX_QUEUE = 16, 4.0, 128
EXPORT_FORMATS = ("onnx", "savedmodel", "tflite")

# Threshold rules: "sensitivity:<0..1>", "fixed:<0..1>", "youden", "balanced_accuracy".
THRESHOLD_RULES_WITH_VALUE = ("sensitivity", "fixed")
THRESHOLD_RULES_PLAIN = ("youden", "balanced_accuracy")
THRESHOLD_RULE_HELP = "sensitivity:<0..1>, fixed:<0..1>, youden or balanced_accuracy"


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """``"sensitivity:0.95"`` -> ``("sensitivity", 0.95)``; ``"youden"`` -> ``("youden", None)``.

    Raises ValueError naming the rule when it is not one of :data:`THRESHOLD_RULE_HELP`.
    """
    name, sep, arg = str(rule).partition(":")
    if name in THRESHOLD_RULES_PLAIN and not sep:
        return name, None
    if name not in THRESHOLD_RULES_WITH_VALUE:
        raise ValueError(f"unknown threshold rule {rule!r}; use one of {THRESHOLD_RULE_HELP}")
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"threshold rule {rule!r} needs a number after ':'") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold rule {rule!r}: value must be within [0, 1]")
    return name, value
