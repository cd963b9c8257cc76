"""finetune: backbone[freeze:] + the trained head, trained on images -> models/model.keras.

The model is ``pixels -> augmentation -> the backbone's own preprocessing ->
backbone -> head``, with the head's trained weights loaded, so fine-tuning
starts from a trained head, never from a random one.

Speed-up: when augmentation is off, the frozen part of the backbone computes
the same thing for an image every epoch. Its outputs are then computed once
and only the trainable top runs each epoch (``frozen_prefix_cached`` in
metrics/finetune.json). The trainable layers are the very same layer objects
as in the full model, so the saved model holds what was trained.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np

from tlpipe import atomic, backbones, freeze, images, paths
from tlpipe.head import compile_model
from tlpipe.layers import Preprocess, augmentation, load_model
from tlpipe.params import Params
from tlpipe.split import read_classes, read_split
from tlpipe.training import (
    best_epoch,
    callbacks,
    learning_rate,
    optimizer,
    seed_everything,
    steps,
)

# Decoded images (or frozen-prefix outputs) are held in memory when they fit
# in this much; otherwise every epoch streams from the image files.
MEMORY_BUDGET_BYTES = 2 * 1024**3


def choose_strategy():
    """One device, all local GPUs, or several machines (TF_CONFIG)."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def mixed_precision_on(setting: str) -> bool:
    import tensorflow as tf

    if setting == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return setting == "on"


def assemble(p: Params, head: keras.Model):
    """-> (full model, backbone, freeze plan), freezing applied."""
    spec = backbones.get(p.backbone)
    backbone = spec.build(p.image_size, p.weights, pooling="avg")
    plan = freeze.plan(backbone, spec, p.freeze)
    freeze.apply(backbone, plan)
    head.trainable = not plan.trains_nothing
    pixels = keras.Input((p.image_size, p.image_size, 3), name="pixels")
    x = pixels
    for layer in augmentation(p.finetune.augment, p.seed):
        x = layer(x)
    x = Preprocess(spec.preprocess, name="preprocess")(x)
    # training=False: layers that behave differently in training (dropout in
    # some backbones) keep inference behaviour, as in the frozen-feature phase.
    x = backbone(x, training=False)
    model = keras.Model(pixels, head(x), name=f"{p.backbone}_classifier")
    return model, backbone, plan


def trainable_count(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _materialize(rows, p: Params, transform=None, desc="") -> np.ndarray:
    return images.decode_all(
        [paths.RAW / r.path for r in rows], [r.decoder for r in rows], p.image_size,
        p.finetune.batch_size, transform, desc,
    )


def _streamed(rows, labels, p: Params, batch_size: int, shuffle: bool):
    """Images straight from the files each epoch (data too big for memory)."""
    import tensorflow as tf

    files = [str(paths.RAW / r.path) for r in rows]
    ds = tf.data.Dataset.from_tensor_slices((files, [r.decoder for r in rows], labels))
    if shuffle:
        ds = ds.shuffle(len(rows), seed=p.seed, reshuffle_each_iteration=True)
    ds = ds.map(
        lambda f, d, y: (images.load_tensor(f, d, p.image_size), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def run(p: Params) -> dict:
    seed_everything(p.seed)
    fp = p.finetune
    if mixed_precision_on(fp.mixed_precision):
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = choose_strategy()
    replicas = strategy.num_replicas_in_sync
    batch_size = fp.batch_size * replicas  # per-replica batch stays as configured
    classes = read_classes()
    index = {name: i for i, name in enumerate(classes)}
    train_rows, val_rows = read_split("train"), read_split("val")
    y_train = keras.utils.to_categorical([index[r.label] for r in train_rows], len(classes))
    y_val = keras.utils.to_categorical([index[r.label] for r in val_rows], len(classes))

    with strategy.scope():
        model, backbone, plan = assemble(p, load_model(paths.HEAD_MODEL))
        trains = not plan.trains_nothing and fp.epochs > 0
        # The frozen prefix can be cut off when nothing random runs before it.
        prefix_shape = None if plan.boundary is None else tuple(plan.boundary.shape[1:])
        cache_prefix = (
            trains
            and not fp.augment.any
            and prefix_shape is not None
            and len(train_rows) * int(np.prod(prefix_shape)) * 2 < MEMORY_BUDGET_BYTES
        )
        if cache_prefix:
            prefix = keras.Model(backbone.input, plan.boundary)
            top_input = keras.Input(prefix_shape, name="frozen_prefix")
            top = keras.Model(plan.boundary, backbone.output)
            fit_model = keras.Model(top_input, model.get_layer("head")(top(top_input, training=False)))
        else:
            fit_model = model
        steps_per_epoch = steps(len(train_rows), batch_size)
        lr = learning_rate(fp.learning_rate, fp.schedule, fp.epochs, steps_per_epoch, fp.warmup_epochs)
        compile_model(fit_model, optimizer(fp.optimizer, lr), fp.label_smoothing)
        fit_model.jit_compile = fp.xla

    start = time.perf_counter()
    if cache_prefix:
        spec = backbones.get(p.backbone)
        preprocess = Preprocess(spec.preprocess)
        to_prefix = lambda batch: prefix(preprocess(batch), training=False)  # noqa: E731
        x_train = _materialize(train_rows, p, to_prefix, "finetune: frozen prefix (train)")
        x_val = _materialize(val_rows, p, to_prefix, "finetune: frozen prefix (val)")
        train_data, val_data = (x_train, y_train), (x_val, y_val)
    elif len(train_rows) * p.image_size**2 * 3 < MEMORY_BUDGET_BYTES:
        x_train = _materialize(train_rows, p, desc="finetune: decoding train")
        x_val = _materialize(val_rows, p, desc="finetune: decoding val")
        train_data, val_data = (x_train, y_train), (x_val, y_val)
    else:
        train_data = (_streamed(train_rows, y_train, p, batch_size, shuffle=True),)
        val_data = _streamed(val_rows, y_val, p, batch_size, shuffle=False)

    with atomic.atomic_dir(paths.FINETUNE_LOGS) as log_dir:
        if trains:
            kwargs = {"batch_size": batch_size} if len(train_data) == 2 else {}
            history = fit_model.fit(
                *train_data,
                validation_data=val_data,
                epochs=fp.epochs,
                callbacks=callbacks(
                    fp.patience, fp.schedule, log_dir, (fp.learning_rate, fp.warmup_epochs * steps_per_epoch)
                ),
                verbose=2,
                **kwargs,
            ).history
            best = best_epoch(history)
            val_loss, val_accuracy = history["val_loss"][best], history["val_accuracy"][best]
            epochs_run = len(history["val_loss"])
        else:
            # Nothing to train (freeze: all, or epochs: 0): score what was assembled.
            kw = {"batch_size": batch_size} if isinstance(val_data, tuple) else {}
            args = val_data if isinstance(val_data, tuple) else (val_data,)
            val_loss, val_accuracy = fit_model.evaluate(*args, verbose=0, **kw)
            best, epochs_run = -1, 0
            log_dir.joinpath("metrics.json").write_text("{}\n")
    seconds = time.perf_counter() - start

    atomic.save_keras(paths.MODEL, model)
    metrics = {
        "val_accuracy": round(float(val_accuracy), 4),
        "val_loss": round(float(val_loss), 4),
        "best_epoch": best + 1,
        "epochs_run": epochs_run,
        "train_seconds": round(seconds, 2),
        "trainable_params": trainable_count(model),
        "freeze": plan.word,
        "frozen_prefix_cached": bool(cache_prefix),
        "replicas": replicas,
        "mixed_precision": keras.mixed_precision.global_policy().name == "mixed_float16",
    }
    atomic.write_json(paths.FINETUNE_METRICS, metrics)
    print(
        f"finetune: val accuracy {metrics['val_accuracy']:.4f}, "
        f"{metrics['trainable_params']:,} trainable params (freeze {plan.word})"
    )
    return metrics
