"""ROC-AUC of the PNEUMONIA column, the metric training monitors."""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="pneumoscan")
class PneumoniaAUC(keras.metrics.AUC):
    # keras' AUC on a 2-column softmax would pool both columns; score column 1 alone.
    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true[:, 1], y_pred[:, 1], sample_weight=sample_weight)
