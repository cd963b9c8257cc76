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
from dataclasses import dataclass

import keras
import numpy as np

from tlpipe import atomic, backbones, freeze, images, paths
from tlpipe.artifacts import label_indices, read_classes, read_split, sources
from tlpipe.layers import augmentation, load_model, on_pixels
from tlpipe.params import FinetuneParams
from tlpipe.training import Inputs, callbacks, compile_model, fit, learning_rate, optimizer, seed_everything, steps

# Decoded images (or frozen-prefix outputs) are held in memory when they fit
# in this much; otherwise every epoch streams from the image files.
MEMORY_BUDGET_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Setup:
    """The params keys this stage reads, besides ``finetune.*``."""

    backbone: str
    image_size: int
    weights: str
    freeze: str
    seed: int


def choose_strategy():
    """One device, all local GPUs, or several machines (TF_CONFIG)."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def mixed_precision_on(setting: bool | None) -> bool:
    import tensorflow as tf

    if setting is None:  # auto
        return bool(tf.config.list_physical_devices("GPU"))
    return setting


def assemble(s: Setup, fp: FinetuneParams, head: keras.Model):
    """-> (full model, backbone, freeze plan), freezing applied."""
    spec = backbones.get(s.backbone)
    backbone = spec.build(s.image_size, s.weights, pooling="avg")
    plan = freeze.plan(backbone, spec, s.freeze)
    freeze.apply(backbone, plan)
    head.trainable = not plan.trains_nothing
    pixels, features = on_pixels(spec, s.image_size, backbone, augmentation(fp.augment, s.seed))
    model = keras.Model(pixels, head(features), name=f"{s.backbone}_classifier")
    return model, backbone, plan


def trainable_count(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _frozen_prefix_model(model, backbone, plan: freeze.Plan, s: Setup, fp: FinetuneParams, n_train: int):
    """When the frozen prefix can be computed once: -> (pixels -> prefix outputs,
    prefix outputs -> class probabilities), else None.

    Only when nothing random runs before the prefix (augmentation off) and its
    outputs for the training images fit in memory. The second model reuses the
    full model's trainable layers, so training it trains ``model``.
    """
    if plan.trains_nothing or fp.augment.any or plan.boundary is None:
        return None
    prefix_shape = tuple(plan.boundary.shape[1:])
    if n_train * int(np.prod(prefix_shape)) * 2 >= MEMORY_BUDGET_BYTES:  # float16
        return None
    prefix = keras.Model(backbone.input, plan.boundary)
    pixels, prefix_out = on_pixels(backbones.get(s.backbone), s.image_size, prefix, preprocess_name=None)
    encoder = keras.Model(pixels, prefix_out)
    prefix_input = keras.Input(prefix_shape, name="frozen_prefix")
    top = keras.Model(plan.boundary, backbone.output)
    head = model.get_layer("head")
    return encoder, keras.Model(prefix_input, head(top(prefix_input, training=False)))


def _inputs(rows, labels, image_size: int, batch_size: int, seed: int, encoder=None, shuffle=False) -> Inputs:
    """What one split feeds to fit/evaluate: arrays in memory when they fit
    (frozen-prefix outputs with ``encoder``, else uint8 pixels), or a tf.data
    stream of (image, label) batches from the files."""
    what = "frozen prefix" if encoder is not None else "decoding"
    desc = f"finetune: {what} ({len(rows)} images)"
    if encoder is not None:
        batches = images.predict(encoder, *sources(rows), image_size, batch_size, desc)
        return Inputs(np.concatenate([b.astype(np.float16) for b in batches]), labels, batch_size)
    if len(rows) * image_size**2 * 3 < MEMORY_BUDGET_BYTES:
        return Inputs(images.decode_all(*sources(rows), image_size, batch_size, desc), labels, batch_size)
    stream = images.dataset(
        *sources(rows), image_size, batch_size, labels=labels, shuffle_seed=seed if shuffle else None
    )
    return Inputs(stream)


def run(fp: FinetuneParams, s: Setup) -> dict:
    """images + models/head.keras -> models/model.keras; reads ``finetune.*`` and ``Setup``."""
    seed_everything(s.seed)
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
        model, backbone, plan = assemble(s, fp, load_model(paths.HEAD_MODEL))
        trains = not plan.trains_nothing and fp.epochs > 0
        cached = _frozen_prefix_model(model, backbone, plan, s, fp, len(train_rows)) if trains else None
        encoder, fit_model = cached if cached else (None, model)
        steps_per_epoch = steps(len(train_rows), batch_size)
        lr = learning_rate(fp.learning_rate, fp.schedule, fp.epochs, steps_per_epoch, fp.warmup_epochs)
        compile_model(fit_model, optimizer(fp.optimizer, lr), fp.label_smoothing)
        fit_model.jit_compile = fp.xla

    start = time.perf_counter()
    val = _inputs(val_rows, y_val, s.image_size, batch_size, s.seed, encoder)
    if trains:
        train = _inputs(train_rows, y_train, s.image_size, batch_size, s.seed, encoder, shuffle=True)
    data_seconds = time.perf_counter() - start
    with atomic.atomic_dir(paths.FINETUNE_LOGS) as log_dir:
        if trains:
            warmup = (fp.learning_rate, fp.warmup_epochs * steps_per_epoch)
            result = fit(fit_model, train, val, fp.epochs, callbacks(fp.patience, fp.schedule, log_dir, warmup))
            metrics = result.metrics()
        else:
            # Nothing to train (freeze: all, or epochs: 0): score what was assembled.
            val_loss, val_accuracy = fit_model.evaluate(**val.fit_kwargs(), verbose=0)
            metrics = {"val_accuracy": round(float(val_accuracy), 4), "val_loss": round(float(val_loss), 4),
                       "best_epoch": 0, "epochs_run": 0, "fit_seconds": 0.0}
            log_dir.joinpath("metrics.json").write_text("{}\n")

    atomic.save_keras(paths.MODEL, model)
    metrics.update({
        # Time spent computing the frozen prefix's outputs (0 when it is not cached).
        "prefix_seconds": round(data_seconds, 2) if encoder is not None else 0.0,
        "trainable_params": trainable_count(model),
        "freeze": plan.word,
        "frozen_prefix_cached": encoder is not None,
        "replicas": replicas,
        "mixed_precision": keras.mixed_precision.global_policy().name == "mixed_float16",
    })
    atomic.write_json(paths.FINETUNE_METRICS, metrics)
    print(
        f"finetune: val accuracy {metrics['val_accuracy']:.4f}, "
        f"{metrics['trainable_params']:,} trainable params (freeze {plan.word})"
    )
    return metrics
