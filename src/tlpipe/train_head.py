"""train_head: a classifier head trained on cached features, in seconds.

The head is a small Keras model from a pooled feature vector to class
probabilities (softmax over all classes, binary included, so every consumer
reads probabilities the same way). The finetune stage puts it on top of the
backbone with its trained weights; evaluate runs it on cached test features.
"""

from __future__ import annotations

import keras
import numpy as np

from tlpipe import atomic, paths
from tlpipe.artifacts import load_features, read_features_meta
from tlpipe.params import HeadParams
from tlpipe.training import Inputs, callbacks, compile_model, fit, optimizer, seed_everything


def build(input_dim: int, n_classes: int, hp: HeadParams) -> keras.Model:
    reg = keras.regularizers.L2(hp.l2) if hp.l2 else None
    features = keras.Input((input_dim,), name="features")
    x = features
    for i, width in enumerate(hp.hidden, start=1):
        if hp.dropout:
            x = keras.layers.Dropout(hp.dropout, name=f"head_dropout_{i}")(x)
        x = keras.layers.Dense(width, kernel_regularizer=reg, name=f"head_dense_{i}")(x)
        if hp.batchnorm:
            x = keras.layers.BatchNormalization(name=f"head_bn_{i}")(x)
        x = keras.layers.Activation("relu", name=f"head_relu_{i}")(x)
    if hp.dropout:
        x = keras.layers.Dropout(hp.dropout, name="head_dropout")(x)
    # float32 output even under mixed precision: softmax in float16 loses the tails.
    probs = keras.layers.Dense(
        n_classes, activation="softmax", kernel_regularizer=reg, dtype="float32", name="head_probs"
    )(x)
    return keras.Model(features, probs, name="head")


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """'auto': weight each class by n / (k * count), as scikit-learn's 'balanced'."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = len(labels) / (n_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def run(head: HeadParams, *, seed: int) -> dict:
    """data/features -> models/head.keras; reads ``head.*`` and ``seed``."""
    seed_everything(seed)
    n_classes = len(read_features_meta()["classes"])
    x_train, y_train = load_features("train")
    x_val, y_val = load_features("val")
    onehot = lambda y: keras.utils.to_categorical(y, n_classes)  # noqa: E731
    model = build(x_train.shape[1], n_classes, head)
    compile_model(model, optimizer(head.optimizer, head.learning_rate), head.label_smoothing)
    with atomic.atomic_dir(paths.HEAD_LOGS) as log_dir:
        result = fit(
            model,
            Inputs(x_train, onehot(y_train), head.batch_size),
            Inputs(x_val, onehot(y_val)),
            head.epochs,
            callbacks(head.patience, "constant", log_dir),
            class_weight=class_weights(y_train, n_classes, head.class_weight),
        )
    metrics = result.metrics()
    atomic.save_keras(paths.HEAD_MODEL, model)
    atomic.write_json(paths.HEAD_METRICS, metrics)
    print(f"train_head: val accuracy {metrics['val_accuracy']:.4f} (epoch {metrics['best_epoch']})")
    return metrics
