"""tlpipe against the classic transfer-learning recipe, same data, backbone, size.

    python bench/classic.py            (KERAS_HOME=../shared/keras offline)

The classic recipe (the TF tutorial / the seeds' notebooks): the frozen base
sits inside the model and every epoch pushes every training image through it
(with flip + rotation augmentation) to train the head; then the top third of
the base is unfrozen and trained at a 10x lower learning rate. It is scored on
tlpipe's own test split. tlpipe is run with `dvc repro` from an empty cache.
Prints wall time and test accuracy of both, and the ratios.
"""

import json
import os
import tempfile
import time
from pathlib import Path

from _common import copy_pipeline, require_keras_home, timed

require_keras_home()
HEAD_EPOCHS, FINE_EPOCHS, BATCH = 10, 10, 32


def classic(workdir: Path) -> tuple[float, float]:
    """Run the classic recipe in ``workdir`` (a repo where tlpipe has run)."""
    os.chdir(workdir)
    start = time.perf_counter()
    import keras
    import tensorflow as tf

    from tlpipe import backbones, images, params, paths
    from tlpipe.layers import Preprocess
    from tlpipe.artifacts import read_classes, read_split

    p = params.load()
    keras.utils.set_random_seed(p.seed)
    classes = read_classes()

    def ds(split, shuffle):
        rows = read_split(split)
        y = [classes.index(r.label) for r in rows]
        d = tf.data.Dataset.from_tensor_slices(([str(paths.RAW / r.path) for r in rows], [r.decoder for r in rows], y))
        if shuffle:
            d = d.shuffle(len(rows), seed=p.seed)
        d = d.map(lambda f, dec, y: (images.load_tensor(f, dec, p.image_size), y), num_parallel_calls=tf.data.AUTOTUNE)
        return d.batch(BATCH).prefetch(tf.data.AUTOTUNE)

    train, val, test = ds("train", True), ds("val", False), ds("test", False)
    spec = backbones.get(p.backbone)
    base = spec.build(p.image_size, "imagenet", pooling=None)
    base.trainable = False
    inputs = keras.Input((p.image_size, p.image_size, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.2)(x)
    x = Preprocess(spec.preprocess)(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(keras.optimizers.RMSprop(1e-4), loss, metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=HEAD_EPOCHS, verbose=2)
    base.trainable = True
    for layer in base.layers[: len(base.layers) * 2 // 3]:  # fine-tune the top third
        layer.trainable = False
    model.compile(keras.optimizers.RMSprop(1e-5), loss, metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=HEAD_EPOCHS + FINE_EPOCHS, initial_epoch=HEAD_EPOCHS, verbose=2)
    _, acc = model.evaluate(test, verbose=0)
    return time.perf_counter() - start, float(acc)


work = copy_pipeline(Path(tempfile.mkdtemp(prefix="tlpipe-bench-")) / "repo")
ours_seconds = timed(["dvc", "repro"], work)
ours_acc = json.loads((work / "reports/eval.json").read_text())["finetuned"]["accuracy"]
classic_seconds, classic_acc = classic(work)  # same split, same test images
print(f"classic recipe: {classic_seconds:6.1f} s wall, test accuracy {classic_acc:.4f}")
print(f"tlpipe repro:   {ours_seconds:6.1f} s wall, test accuracy {ours_acc:.4f}")
print(f"speed-up: {classic_seconds / ours_seconds:.2f}x  accuracy difference: {ours_acc - classic_acc:+.4f}")
