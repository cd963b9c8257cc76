"""Shared by the training stages (train_head, finetune, scratch): seeding,
compiling, optimizers, schedules, DVCLive logging, and one ``fit`` that
returns the best epoch's figures."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

# What training holds in memory at most (decoded images, when augmentation
# keeps fine-tuning off the stored prefix); beyond it, every epoch streams from
# the image files. A machine with less memory sets TLPIPE_MEMORY_BUDGET (bytes).
MEMORY_BUDGET_BYTES = int(os.environ.get("TLPIPE_MEMORY_BUDGET", 2 * 1024**3))


def seed_everything(seed: int) -> None:
    """Same params and data -> same metrics on CPU."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def compile_model(model: keras.Model, opt, label_smoothing: float) -> None:
    """Every tlpipe classifier ends in a softmax over all classes: categorical
    cross-entropy on one-hot labels, accuracy as the readable metric."""
    model.compile(
        optimizer=opt,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def optimizer(name: str, learning_rate):
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=1e-4)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    raise ValueError(name)  # params validation makes this unreachable


def learning_rate(base: float, schedule: str, epochs: int, steps_per_epoch: int, warmup_epochs: int):
    """What the optimizer is built with: cosine decay (with its own linear
    warmup) as a schedule; otherwise the float ``base``, which the Warmup and
    ReduceLROnPlateau callbacks can then adjust."""
    if schedule != "cosine":
        return base
    total = max(1, epochs * steps_per_epoch)
    warmup = min(warmup_epochs * steps_per_epoch, total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=base / 10 if warmup else base,
        decay_steps=total - warmup,
        warmup_target=base if warmup else None,
        warmup_steps=warmup,
    )


class Warmup(keras.callbacks.Callback):
    """Linear warmup from base/10 to base over the first steps (for the
    constant and plateau schedules; cosine warms up inside its schedule)."""

    def __init__(self, base: float, steps: int):
        super().__init__()
        self.base, self.steps, self.step = base, steps, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.step <= self.steps:
            self.model.optimizer.learning_rate = self.base * (0.1 + 0.9 * min(1.0, self.step / self.steps))
        self.step += 1


def callbacks(patience: int, schedule: str, log_dir: Path, warmup: tuple[float, int] | None = None) -> list:
    """DVCLive logging, best-epoch restore, early stopping, and the callback
    side of the schedule. ``warmup``: (base learning rate, warmup steps)."""
    # Always end on the best epoch's weights; stop early only when asked to.
    out: list = [
        LiveLogger(log_dir),
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=patience or 1_000_000,
            restore_best_weights=True,
            verbose=1,
        ),
    ]
    if warmup and warmup[1] and schedule != "cosine":
        out.append(Warmup(*warmup))
    if schedule == "plateau":
        out.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.3, patience=max(1, patience // 2), verbose=1
            )
        )
    return out


def best_epoch(history: dict) -> int:
    """Index of the epoch whose weights the model holds after training (the
    EarlyStopping callback restores the lowest val loss)."""
    return int(np.argmin(history["val_loss"]))


@dataclass(frozen=True)
class Inputs:
    """What one split feeds to Keras: arrays ``x``, ``y`` held in memory (fed
    in batches of ``batch_size``, shuffled by Keras), or a tf.data stream of
    (image, label) batches in ``x`` with ``y`` None."""

    x: Any
    y: Any = None
    batch_size: int | None = None

    def fit_kwargs(self) -> dict:
        return {"x": self.x} if self.y is None else {"x": self.x, "y": self.y, "batch_size": self.batch_size}

    def validation(self):
        return self.x if self.y is None else (self.x, self.y)


@dataclass(frozen=True)
class FitResult:
    history: dict
    seconds: float  # Keras fit alone

    @property
    def best(self) -> int:
        return best_epoch(self.history)

    @property
    def val_loss(self) -> float:
        return float(self.history["val_loss"][self.best])

    @property
    def val_accuracy(self) -> float:
        return float(self.history["val_accuracy"][self.best])

    def metrics(self) -> dict:
        """The figures every training stage reports for its best epoch."""
        return {
            "val_accuracy": round(self.val_accuracy, 4),
            "val_loss": round(self.val_loss, 4),
            "best_epoch": self.best + 1,
            "epochs_run": len(self.history["val_loss"]),
            "fit_seconds": round(self.seconds, 2),
        }


def fit(model: keras.Model, train: Inputs, val: Inputs, epochs: int, callbacks: list, **kwargs) -> FitResult:
    """``model.fit`` with per-epoch lines; the model ends on its best epoch (see ``callbacks``)."""
    start = time.perf_counter()
    history = model.fit(
        **train.fit_kwargs(),
        shuffle=train.y is not None,  # Keras shuffles arrays; a stream comes shuffled (images.dataset)
        validation_data=val.validation(),
        epochs=epochs,
        callbacks=callbacks,
        verbose=2,
        **kwargs,
    ).history
    return FitResult(history, time.perf_counter() - start)


class LiveLogger(keras.callbacks.Callback):
    """Per-epoch train/val loss and accuracy to DVCLive, laid out so that one
    plot in dvc.yaml overlays train and val (plots/metrics/{train,val}/*.tsv)."""

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = Path(directory)
        self.live = None

    def on_train_begin(self, logs=None):
        from dvclive import Live

        # dvcyaml=False: our dvc.yaml declares the plots; DVCLive must not edit it.
        self.live = Live(str(self.directory), dvcyaml=False, save_dvc_exp=False, report=None)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key in ("loss", "accuracy"):
            if key in logs:
                self.live.log_metric(f"train/{key}", float(logs[key]))
            if f"val_{key}" in logs:
                self.live.log_metric(f"val/{key}", float(logs[f"val_{key}"]))
        self.live.next_step()

    def on_train_end(self, logs=None):
        if self.live is not None:
            self.live.end()


def disk_batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None):
    """A tf.data stream of (x, y) batches gathered from ``x``, a memory-mapped
    array on disk (the stored frozen prefix): a batch in memory at a time, so
    memory stays flat whatever the array's size. ``shuffle_seed``: a new
    seeded permutation of all rows every epoch, as Keras shuffles arrays;
    None: in order (val, predict)."""
    import tensorflow as tf

    n = len(x)
    y = np.asarray(y, dtype=np.float32)

    def gather(rows):
        rows = np.sort(rows)  # ascending offsets: sequential reads within the file
        return np.asarray(x[rows], dtype=np.float16), y[rows]

    def load(rows):
        xb, yb = tf.numpy_function(gather, [rows], (tf.float16, tf.float32), stateful=False)
        xb.set_shape((None, *x.shape[1:]))
        yb.set_shape((None, *y.shape[1:]))
        return xb, yb

    rows = tf.data.Dataset.range(n)
    if shuffle_seed is not None:
        rows = rows.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True)
    return rows.batch(batch_size).map(load).prefetch(2)


def steps(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))
