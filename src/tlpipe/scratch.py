"""scratch (opt-in, ``scratch.enabled``): a small CNN trained from scratch on the
same splits and image size -> reports/scratch.json, metrics/scratch.json, dvclive/scratch/.

The baseline that shows what transfer learning is worth: the classic conv-pool
stack with a dense head, scored on the test split with the same arithmetic as
the evaluate stage, so ``dvc metrics show`` puts ``scratch.json:test.accuracy``
next to ``eval.json:finetuned.accuracy``. When disabled, the stage only records
that (``{"enabled": false}``) in a second.
"""

from __future__ import annotations

from tlpipe import atomic, headline, paths
from tlpipe.params import ScratchParams


def build(image_size: int, n_classes: int, seed: int, multi_label: bool = False):
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
    probs = keras.layers.Dense(n_classes, activation="sigmoid" if multi_label else "softmax", dtype="float32",
                               name="head_probs")(x)
    return keras.Model(pixels, probs, name="scratch_cnn")


def run(sp: ScratchParams, *, image_size: int, seed: int, top_k: int) -> dict:
    """images -> reports/scratch.json, metrics/scratch.json; reads ``scratch.*``, ``image_size``, ``seed``, ``evaluate.top_k``."""
    if not sp.enabled:
        with atomic.atomic_dir(paths.SCRATCH_LOGS) as log_dir:
            (log_dir / "metrics.json").write_text("{}\n")
            for split in ("train", "val"):  # empty curves: `dvc plots show` loads cleanly
                curve = log_dir / "plots" / "metrics" / split / "accuracy.tsv"
                curve.parent.mkdir(parents=True)
                curve.write_text("step\taccuracy\n")
        headline.write("scratch", {"enabled": False})
        print("scratch: disabled (set scratch.enabled: true for the from-scratch baseline)")
        return {"enabled": False}

    # Imported here: the disabled stage finishes without starting TensorFlow.
    import keras
    import numpy as np

    from tlpipe import images
    from tlpipe.artifacts import SPLITS, label_indices, read_classes, read_split, sources
    from tlpipe.multilabel import scores as label_set_scores
    from tlpipe.scoring import scores
    from tlpipe.training import Inputs, LiveLogger, callbacks, compile_model, fit, optimizer, seed_everything

    seed_everything(seed)
    classes = read_classes()
    onehot = lambda y: y.astype("float32") if y.ndim == 2 else keras.utils.to_categorical(y, len(classes))  # noqa: E731
    data = {}
    for split in SPLITS:
        rows = read_split(split)
        x = images.decode_all(*sources(rows), image_size, sp.batch_size, desc=f"scratch: decoding {split}")
        data[split] = (x, label_indices(rows, classes))
    multi = data["train"][1].ndim == 2  # multi-label: sigmoid outputs, scored at even odds
    model = build(image_size, len(classes), seed, multi)
    compile_model(model, optimizer("adam", sp.learning_rate), 0.0)
    with atomic.atomic_dir(paths.SCRATCH_LOGS) as log_dir:
        result = fit(
            model,
            Inputs(data["train"][0], onehot(data["train"][1]), sp.batch_size),
            Inputs(data["val"][0], onehot(data["val"][1])),
            sp.epochs,
            callbacks(sp.patience, LiveLogger(log_dir)),
        )
    probs = model.predict(data["test"][0], batch_size=sp.batch_size, verbose=0).astype(np.float64)
    test = (label_set_scores(data["test"][1], probs, classes, [0.5] * len(classes)) if multi
            else scores(data["test"][1], probs, classes, top_k))
    metrics = {"enabled": True, **result.metrics(), "test": test}
    headline.write("scratch", metrics)
    figure = f"mAP {test['average_precision_macro']:.4f}" if multi else f"accuracy {test['accuracy']:.4f}"
    print(f"scratch: test {figure} (from scratch, no pretrained weights)")
    return metrics
