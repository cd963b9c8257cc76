"""train_head: a classifier head trained on cached features, in seconds.

The head is a small Keras model from a pooled feature vector to class
probabilities (softmax over all classes, binary included, so every consumer
reads probabilities the same way). The finetune stage puts it on top of the
backbone with its trained weights; evaluate runs it on cached test features.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from tlpipe import atomic, extract, paths
from tlpipe.params import HeadParams, Params
from tlpipe.training import best_epoch, callbacks, optimizer, seed_everything


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


def compile_model(model: keras.Model, opt, label_smoothing: float) -> None:
    model.compile(
        optimizer=opt,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def run(p: Params) -> dict:
    seed_everything(p.seed)
    hp = p.head
    meta = extract.read_meta()
    n_classes = len(meta["classes"])
    x_train, y_train = extract.load("train")
    x_val, y_val = extract.load("val")
    model = build(x_train.shape[1], n_classes, hp)
    compile_model(model, optimizer(hp.optimizer, hp.learning_rate), hp.label_smoothing)
    start = time.perf_counter()
    with atomic.atomic_dir(paths.HEAD_LOGS) as log_dir:
        history = model.fit(
            x_train,
            keras.utils.to_categorical(y_train, n_classes),
            validation_data=(x_val, keras.utils.to_categorical(y_val, n_classes)),
            epochs=hp.epochs,
            batch_size=hp.batch_size,
            class_weight=class_weights(y_train, n_classes, hp.class_weight),
            callbacks=callbacks(hp.patience, "constant", log_dir),
            verbose=2,
        )
    seconds = time.perf_counter() - start
    best = best_epoch(history.history)
    metrics = {
        "val_accuracy": round(float(history.history["val_accuracy"][best]), 4),
        "val_loss": round(float(history.history["val_loss"][best]), 4),
        "best_epoch": best + 1,
        "epochs_run": len(history.history["val_loss"]),
        "train_seconds": round(seconds, 2),
    }
    atomic.save_keras(paths.HEAD_MODEL, model)
    atomic.write_json(paths.HEAD_METRICS, metrics)
    print(f"train_head: val accuracy {metrics['val_accuracy']:.4f} (epoch {best + 1})")
    return metrics
