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
from tlpipe.split import label_indices, read_classes, read_split, sources
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


def _frozen_prefix_model(model: keras.Model, backbone: keras.Model, plan: freeze.Plan, p: Params, n_train: int):
    """When the frozen prefix can be computed once: -> (pixels -> prefix outputs,
    prefix outputs -> class probabilities), else None.

    Only when nothing random runs before the prefix (augmentation off) and its
    outputs for the training images fit in memory. The second model reuses the
    full model's trainable layers, so training it trains ``model``.
    """
    if plan.trains_nothing or p.finetune.augment.any or plan.boundary is None:
        return None
    prefix_shape = tuple(plan.boundary.shape[1:])
    if n_train * int(np.prod(prefix_shape)) * 2 >= MEMORY_BUDGET_BYTES:  # float16
        return None
    pixels = keras.Input((p.image_size, p.image_size, 3), name="pixels")
    spec = backbones.get(p.backbone)
    prefix = keras.Model(backbone.input, plan.boundary)
    encoder = keras.Model(pixels, prefix(Preprocess(spec.preprocess)(pixels), training=False))
    prefix_input = keras.Input(prefix_shape, name="frozen_prefix")
    top = keras.Model(plan.boundary, backbone.output)
    head = model.get_layer("head")
    return encoder, keras.Model(prefix_input, head(top(prefix_input, training=False)))


def _data(rows, labels, p: Params, batch_size: int, encoder=None, shuffle=False):
    """What one split feeds to fit/evaluate: ``(x, y)`` arrays in memory when
    they fit (frozen-prefix outputs with ``encoder``, else uint8 pixels), or
    a tf.data stream of (image, label) batches from the files."""
    what = "frozen prefix" if encoder is not None else "decoding"
    desc = f"finetune: {what} ({len(rows)} images)"
    if encoder is not None:
        batches = images.predict(encoder, *sources(rows), p.image_size, batch_size, desc)
        return np.concatenate([b.astype(np.float16) for b in batches]), labels
    if len(rows) * p.image_size**2 * 3 < MEMORY_BUDGET_BYTES:
        return images.decode_all(*sources(rows), p.image_size, batch_size, desc), labels
    seed = p.seed if shuffle else None
    return images.dataset(*sources(rows), p.image_size, batch_size, labels=labels, shuffle_seed=seed)


def _fit_args(data, batch_size: int) -> dict:
    """Keras fit/evaluate arguments for in-memory (x, y) or a tf.data stream."""
    if isinstance(data, tuple):
        return {"x": data[0], "y": data[1], "batch_size": batch_size}
    return {"x": data}


def run(p: Params) -> dict:
    seed_everything(p.seed)
    fp = p.finetune
    if mixed_precision_on(fp.mixed_precision):
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = choose_strategy()
    replicas = strategy.num_replicas_in_sync
    batch_size = fp.batch_size * replicas  # per-replica batch stays as configured
    classes = read_classes()
    train_rows, val_rows = read_split("train"), read_split("val")
    y_train = keras.utils.to_categorical(label_indices(train_rows, classes), len(classes))
    y_val = keras.utils.to_categorical(label_indices(val_rows, classes), len(classes))

    with strategy.scope():
        model, backbone, plan = assemble(p, load_model(paths.HEAD_MODEL))
        trains = not plan.trains_nothing and fp.epochs > 0
        cached = _frozen_prefix_model(model, backbone, plan, p, len(train_rows)) if trains else None
        encoder, fit_model = cached if cached else (None, model)
        steps_per_epoch = steps(len(train_rows), batch_size)
        lr = learning_rate(fp.learning_rate, fp.schedule, fp.epochs, steps_per_epoch, fp.warmup_epochs)
        compile_model(fit_model, optimizer(fp.optimizer, lr), fp.label_smoothing)
        fit_model.jit_compile = fp.xla

    start = time.perf_counter()
    val_data = _data(val_rows, y_val, p, batch_size, encoder)
    with atomic.atomic_dir(paths.FINETUNE_LOGS) as log_dir:
        if trains:
            train_data = _data(train_rows, y_train, p, batch_size, encoder, shuffle=True)
            history = fit_model.fit(
                **_fit_args(train_data, batch_size),
                shuffle=isinstance(train_data, tuple),  # a stream comes shuffled by images.dataset
                validation_data=val_data,
                epochs=fp.epochs,
                callbacks=callbacks(
                    fp.patience, fp.schedule, log_dir, (fp.learning_rate, fp.warmup_epochs * steps_per_epoch)
                ),
                verbose=2,
            ).history
            best = best_epoch(history)
            val_loss, val_accuracy = history["val_loss"][best], history["val_accuracy"][best]
            epochs_run = len(history["val_loss"])
        else:
            # Nothing to train (freeze: all, or epochs: 0): score what was assembled.
            val_loss, val_accuracy = fit_model.evaluate(**_fit_args(val_data, batch_size), verbose=0)
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
        "frozen_prefix_cached": encoder is not None,
        "replicas": replicas,
        "mixed_precision": keras.mixed_precision.global_policy().name == "mixed_float16",
    }
    atomic.write_json(paths.FINETUNE_METRICS, metrics)
    print(
        f"finetune: val accuracy {metrics['val_accuracy']:.4f}, "
        f"{metrics['trainable_params']:,} trainable params (freeze {plan.word})"
    )
    return metrics
