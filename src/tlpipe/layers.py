"""Keras layers that tlpipe models contain. Importing this module registers them,
so ``keras.saving.load_model`` can read tlpipe's ``.keras`` files.

``Preprocess`` puts a backbone's own ``preprocess_input`` inside the model
graph: saved models take plain RGB pixels in 0..255, and training, evaluation,
export and predict cannot disagree about preprocessing.
"""

from __future__ import annotations

import keras
from keras import ops

from tlpipe.backbones import PREPROCESS_MODES

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="tlpipe")
class Preprocess(keras.layers.Layer):
    """Pixels in 0..255 (RGB) -> what the backbone was trained on."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"Preprocess mode must be one of {PREPROCESS_MODES}, got {mode!r}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            return (x / 255.0 - ops.array(_TORCH_MEAN, x.dtype)) / ops.array(_TORCH_STD, x.dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.array(_CAFFE_BGR_MEAN, x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def load_model(path):
    """Load a tlpipe ``.keras`` file (custom layers registered by this import)."""
    return keras.saving.load_model(path)
