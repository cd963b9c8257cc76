"""scratch (opt-in, ``scratch.enabled``): a small CNN trained from scratch on the
same splits and image size -> metrics/scratch.json, dvclive/scratch/.

The baseline that shows what transfer learning is worth: the classic conv-pool
stack with a dense head, scored on the test split with the same arithmetic as
the evaluate stage, so ``dvc metrics show`` puts ``scratch.json:test.accuracy``
next to ``eval.json:finetuned.accuracy``. When disabled, the stage only records
that (``{"enabled": false}``) in a second.
"""

from __future__ import annotations

import time

from tlpipe import atomic, paths
from tlpipe.params import Params


def build(image_size: int, n_classes: int, seed: int):
    import keras

    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.RandomFlip("horizontal", seed=seed)(pixels)
    x = keras.layers.Rescaling(1 / 255)(x)
    for width in (32, 64, 128):
        x = keras.layers.Conv2D(width, 3, activation="relu", padding="same")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    probs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(pixels, probs, name="scratch_cnn")


def run(p: Params) -> dict:
    sp = p.scratch
    if not sp.enabled:
        with atomic.atomic_dir(paths.SCRATCH_LOGS) as log_dir:
            (log_dir / "metrics.json").write_text("{}\n")
            for split in ("train", "val"):  # empty curves: `dvc plots show` loads cleanly
                curve = log_dir / "plots" / "metrics" / split / "accuracy.tsv"
                curve.parent.mkdir(parents=True)
                curve.write_text("step\taccuracy\n")
        atomic.write_json(paths.SCRATCH_METRICS, {"enabled": False})
        print("scratch: disabled (set scratch.enabled: true for the from-scratch baseline)")
        return {"enabled": False}

    # Imported here: the disabled stage finishes without starting TensorFlow.
    import keras
    import numpy as np

    from tlpipe import images
    from tlpipe.evaluate import scores
    from tlpipe.head import compile_model
    from tlpipe.split import label_indices, read_classes, read_split, sources
    from tlpipe.training import best_epoch, callbacks, optimizer, seed_everything

    seed_everything(p.seed)
    classes = read_classes()
    data = {}
    for split in ("train", "val", "test"):
        rows = read_split(split)
        x = images.decode_all(*sources(rows), p.image_size, sp.batch_size, desc=f"scratch: decoding {split}")
        data[split] = (x, label_indices(rows, classes))
    model = build(p.image_size, len(classes), p.seed)
    compile_model(model, optimizer("adam", sp.learning_rate), 0.0)
    onehot = lambda y: keras.utils.to_categorical(y, len(classes))  # noqa: E731
    start = time.perf_counter()
    with atomic.atomic_dir(paths.SCRATCH_LOGS) as log_dir:
        history = model.fit(
            data["train"][0], onehot(data["train"][1]),
            validation_data=(data["val"][0], onehot(data["val"][1])),
            epochs=sp.epochs, batch_size=sp.batch_size, verbose=2,
            callbacks=callbacks(sp.patience, "constant", log_dir),
        ).history
    best = best_epoch(history)
    probs = model.predict(data["test"][0], batch_size=sp.batch_size, verbose=0).astype(np.float64)
    metrics = {
        "enabled": True,
        "val_accuracy": round(float(history["val_accuracy"][best]), 4),
        "epochs_run": len(history["val_loss"]),
        "train_seconds": round(time.perf_counter() - start, 2),
        "test": scores(data["test"][1], probs, classes, p.evaluate.top_k),
    }
    atomic.write_json(paths.SCRATCH_METRICS, metrics)
    print(f"scratch: test accuracy {metrics['test']['accuracy']:.4f} (from scratch, no pretrained weights)")
    return metrics
