"""Shared by the training stages (train_head, finetune, scratch): seeding,
compiling, optimizers, schedules, DVCLive logging, and one ``fit`` that
returns the figures of the epoch whose weights the model keeps."""

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


# Batches Keras runs in one call of its compiled step (fit, evaluate, predict).
# One call per batch costs ~8 ms of Python: on a small trainable top fed the
# stored prefix that was most of the fit; 16 per call train the same weights to
# the byte in less time (bench/scaling.py times the fit). Callbacks here act
# per epoch, so they see nothing of it.
STEPS_PER_EXECUTION = 16


def compile_model(model: keras.Model, opt, label_smoothing: float,
                  steps_per_execution: int = STEPS_PER_EXECUTION) -> None:
    """Every tlpipe classifier ends in a softmax over all classes (categorical
    cross-entropy on one-hot labels) or, multi-label, a sigmoid per label
    (binary cross-entropy on multi-hot labels); accuracy is the readable metric. Call
    inside the strategy's scope: with several replicas one step runs per call
    (Keras' multi-step loop fails under MirroredStrategy)."""
    import tensorflow as tf

    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        steps_per_execution = 1
    model.compile(
        optimizer=opt,
        loss=loss_for(model, label_smoothing),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy") if sigmoid_outputs(model)
                 else keras.metrics.CategoricalAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution,
    )


def sigmoid_outputs(model) -> bool:
    """Whether ``model`` (a head, or a classifier ending in one) gives each
    label its own probability (multi-label) rather than a softmax over classes."""
    for layer in reversed(model.layers):
        if layer.name == "head_probs":
            return layer.get_config()["activation"] == "sigmoid"
        if isinstance(layer, keras.Model) and layer.name == "head":
            return sigmoid_outputs(layer)
    return False


def loss_for(model: keras.Model, label_smoothing: float, reduction="sum_over_batch_size"):
    """Categorical cross-entropy for a softmax over classes; binary
    cross-entropy (averaged over the labels) for a multi-label model."""
    if sigmoid_outputs(model):
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, reduction=reduction)
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, reduction=reduction)


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


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The one learning-rate policy of fine-tuning: a linear warmup from
    base/10 to ``base`` over ``warmup_steps``, then cosine decay to zero by
    ``total_steps`` (Keras' own CosineDecay) or a constant ``base``, times
    ``scale``, which only ReduceLROnPlateau lowers (see PlateauReduction)."""

    def __init__(self, base: float, schedule: str, total_steps: int, warmup_steps: int = 0):
        self.base, self.schedule, self.total_steps = base, schedule, total_steps
        self.warmup_steps = min(warmup_steps, total_steps - 1)
        self.scale = keras.Variable(1.0, trainable=False, name="learning_rate_scale")
        self.cosine = (keras.optimizers.schedules.CosineDecay(base, total_steps - self.warmup_steps)
                       if schedule == "cosine" else None)

    def after_warmup(self, step):
        return self.cosine(step) if self.cosine else keras.ops.convert_to_tensor(self.base, "float32")

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        if not self.warmup_steps:
            return self.after_warmup(step) * self.scale
        warm = self.base * (0.1 + 0.9 * step / self.warmup_steps)
        past = self.after_warmup(keras.ops.maximum(step - self.warmup_steps, 0.0))
        return keras.ops.where(step < self.warmup_steps, warm, past) * self.scale

    def get_config(self):
        return {"base": self.base, "schedule": self.schedule, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


def learning_rate(base: float, schedule: str, epochs: int, steps_per_epoch: int, warmup_epochs: int) -> LearningRate:
    """``finetune.schedule`` and ``finetune.warmup_epochs`` as the optimizer's schedule."""
    return LearningRate(base, schedule, max(1, epochs * steps_per_epoch), warmup_epochs * steps_per_epoch)


class PlateauReduction(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau on a LearningRate schedule: it lowers the schedule's
    ``scale`` (an optimizer built with a schedule has no settable rate)."""

    def __init__(self, rate: LearningRate, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    # Keras 3.15's one hook for the reduction itself (pinned; tests/test_training.py
    # fails if it moves): the plateau bookkeeping stays Keras' own.
    def _reduce_optimizer_lr(self, optimizer, epoch, name=""):
        old = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        if old <= np.float32(self.min_lr):
            return False
        new = max(old * self.factor, self.min_lr)
        self.rate.scale.assign(self.rate.scale * (new / old))
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
        return True


def callbacks(patience: int, logger: LiveLogger, rate: LearningRate | None = None) -> list:
    """``logger`` (DVCLive); with ``patience``, early stopping on val loss that
    restores the best epoch's weights; with a ``plateau`` LearningRate, its
    reduction on a val-loss plateau.

    ``patience`` 0: every epoch runs and the model keeps its last weights (what
    a schedule that decays to zero is for, as in fastai's one-cycle fit). No
    epoch is then chosen on val, so val stays an unbiased judge of the result.
    """
    out: list = [logger]
    if patience:
        out.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True,
                                                 verbose=1))
    if rate is not None and rate.schedule == "plateau":
        out.append(PlateauReduction(rate, monitor="val_loss", factor=0.3, patience=max(1, patience // 2), verbose=1))
    return out


def kept_epoch(history: dict, callbacks: list) -> int:
    """Index of the epoch whose weights the model holds after training: the
    lowest val loss when early stopping restores it, else the last."""
    restores = any(isinstance(c, keras.callbacks.EarlyStopping) and c.restore_best_weights for c in callbacks)
    return int(np.argmin(history["val_loss"])) if restores else len(history["val_loss"]) - 1


@dataclass(frozen=True)
class Inputs:
    """What one split feeds to Keras: arrays ``x``, ``y`` held in memory (fed
    in batches of ``batch_size``, in order), or a tf.data stream of (image,
    label) batches in ``x`` with ``y`` None, whose order in each epoch
    ``orders`` draws (training)."""

    x: Any
    y: Any = None
    batch_size: int | None = None
    orders: EpochOrders | None = None

    def with_callbacks(self, callbacks: list) -> list:
        """``callbacks``, and the epoch orders that must follow fit's epoch."""
        return [*callbacks, self.orders] if self.orders is not None else list(callbacks)

    def fit_kwargs(self) -> dict:
        return {"x": self.x} if self.y is None else {"x": self.x, "y": self.y, "batch_size": self.batch_size}

    def validation(self):
        return self.x if self.y is None else (self.x, self.y)


@dataclass(frozen=True)
class FitResult:
    history: dict
    seconds: float  # Keras fit alone
    kept: int  # the epoch whose weights the model holds (see kept_epoch)

    @property
    def val_loss(self) -> float:
        return float(self.history["val_loss"][self.kept])

    @property
    def val_accuracy(self) -> float:
        return float(self.history["val_accuracy"][self.kept])

    def metrics(self) -> dict:
        """The figures every training stage reports for the epoch it keeps."""
        return {
            "val_accuracy": round(self.val_accuracy, 4),
            "val_loss": round(self.val_loss, 4),
            "kept_epoch": self.kept + 1,
            "epochs_run": len(self.history["val_loss"]),
            "fit_seconds": round(self.seconds, 2),
        }


def fit(model: keras.Model, train: Inputs, val: Inputs, epochs: int, callbacks: list, initial_epoch: int = 0,
        **kwargs) -> FitResult:
    """``model.fit`` with per-epoch lines; the model ends on the epoch ``callbacks``
    keep (see there). ``initial_epoch``: where a resumed run continues."""
    start = time.perf_counter()
    history = model.fit(
        **train.fit_kwargs(),
        shuffle=train.y is not None,  # Keras shuffles arrays (train_head's keras solver); streams come in their orders
        validation_data=val.validation(),
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=train.with_callbacks(callbacks),
        verbose=2,
        **kwargs,
    ).history
    return FitResult(history, time.perf_counter() - start, kept_epoch(history, callbacks))


class LiveLogger(keras.callbacks.Callback):
    """Per-epoch train/val loss and accuracy to DVCLive, laid out so that one
    plot in dvc.yaml overlays train and val (plots/metrics/{train,val}/*.tsv).
    ``fits``: how many fits it logs, one after the other on one step count
    (the runs of a fine-tuning soup); the log is closed after the last."""

    def __init__(self, directory: Path, fits: int = 1, resume_step: int | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.fits_left = fits
        self.resume_step = resume_step  # a resumed fine-tuning: the steps already in the folder
        self.live = None

    def on_train_begin(self, logs=None):
        from dvclive import Live

        if self.live is None:  # once: a second Live on the folder would wipe the first fit's steps
            # dvcyaml=False: our dvc.yaml declares the plots; DVCLive must not edit it.
            self.live = Live(str(self.directory), dvcyaml=False, save_dvc_exp=False, report=None,
                             resume=self.resume_step is not None)
            if self.resume_step is not None:
                self.live.step = self.resume_step  # DVCLive's own count is one short after a single step

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key in ("loss", "accuracy"):
            if key in logs:
                self.live.log_metric(f"train/{key}", float(logs[key]))
            if f"val_{key}" in logs:
                self.live.log_metric(f"val/{key}", float(logs[f"val_{key}"]))
        self.live.next_step()

    def on_train_end(self, logs=None):
        self.fits_left -= 1
        if self.live is not None and self.fits_left <= 0:
            self.live.end()


class StartingPoint:
    """A compiled model's trainable weights and optimizer state (and a
    LearningRate's plateau scale), taken once and put back before each run,
    so that every run of a soup starts where the first did: from the same
    weights, at step 0 of its schedule, with no optimizer momentum."""

    def __init__(self, model: keras.Model, rate: LearningRate | None = None):
        model.optimizer.build(model.trainable_variables)  # its slots exist before the first step
        self.model, self.rate = model, rate
        self.weights = [v.numpy() for v in model.trainable_variables]
        self.optimizer_state = [v.numpy() for v in model.optimizer.variables]

    def restore(self) -> None:
        for variable, value in zip(self.model.trainable_variables, self.weights):
            variable.assign(value)
        for variable, value in zip(self.model.optimizer.variables, self.optimizer_state):
            variable.assign(value)
        if self.rate is not None:
            self.rate.scale.assign(1.0)


def soup(runs: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The uniform average of several runs' trainable weights (a model soup:
    runs from one starting point stay in one basin, so their average is a
    model, and a less noisy one than any run)."""
    return [np.mean(np.stack(values), axis=0, dtype=np.float64).astype(values[0].dtype) for values in zip(*runs)]


class EpochOrders(keras.callbacks.Callback):
    """The order of the train rows in every epoch of one fine-tuning run: a
    permutation drawn from (seed, run, epoch) alone, so that a resumed run
    sees in each epoch the order an uninterrupted one saw. A callback of the
    fit, it follows fit's epoch. ``skip``: batches of each epoch already
    trained (the rest of an epoch that SIGTERM interrupted, fitted alone)."""

    def __init__(self, rows: int, batch_size: int, seed: int, run: int, skip: int = 0):
        super().__init__()
        self.rows, self.batch_size, self.seed, self.run, self.skip = rows, batch_size, seed, run, skip
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch  # before fit makes the epoch's iterator, which calls batches()

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.run, epoch]).permutation(self.rows)

    def batches(self):
        """The row indices of each batch of the current epoch."""
        order = self.order(self.epoch)
        for start in range(self.skip * self.batch_size, self.rows, self.batch_size):
            yield order[start : start + self.batch_size]

    def dataset(self):
        import tensorflow as tf

        count = steps(self.rows, self.batch_size) - self.skip
        # A known count: with an unknown one, a fit of one step per call counts
        # an extra optimizer step at every epoch's end (the schedule drifts).
        ds = tf.data.Dataset.from_generator(self.batches, output_signature=tf.TensorSpec((None,), tf.int64))
        return ds.apply(tf.data.experimental.assert_cardinality(count))


def disk_batches(x: np.ndarray, y: np.ndarray | None, batch_size: int, orders: EpochOrders | None = None):
    """A tf.data stream of (x, y) batches, or of x batches when ``y`` is None,
    gathered from ``x``, rows left on disk (the stored frozen prefix, as
    ``artifacts.load_prefix`` gives it) or any array: a batch in memory at a
    time, so memory stays flat whatever the array's size. ``orders``: the
    rows of each epoch in the order it draws; None: in order (val, predict)."""
    import tensorflow as tf

    n = len(x)
    y = None if y is None else np.asarray(y, dtype=np.float32)

    def gather(rows):
        rows = np.sort(rows)  # ascending offsets: sequential reads within the file
        xb = np.asarray(x[rows], dtype=np.float16)
        return xb if y is None else (xb, y[rows])

    def load(rows):
        if y is None:
            xb = tf.numpy_function(gather, [rows], tf.float16, stateful=False)
            xb.set_shape((None, *x.shape[1:]))
            return xb
        xb, yb = tf.numpy_function(gather, [rows], (tf.float16, tf.float32), stateful=False)
        xb.set_shape((None, *x.shape[1:]))
        yb.set_shape((None, *y.shape[1:]))
        return xb, yb

    rows = tf.data.Dataset.range(n).batch(batch_size) if orders is None else orders.dataset()
    return rows.map(load).prefetch(2)


def steps(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))
