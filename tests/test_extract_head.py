"""Cached features equal a direct forward pass; a head learns separable classes."""

import keras
import numpy as np
import tensorflow as tf

from tlpipe import backbones, extract, head, images, params, paths
from tlpipe import split as split_module
from tlpipe.layers import Preprocess

from conftest import make_class_folders, tiny_params


def test_extracted_features_equal_model_predict(in_tmp_cwd, raw_params):
    make_class_folders(paths.RAW, per_class=8)
    p = params.parse(tiny_params(raw_params, paths.RAW))
    split_module.run(p.split, p.seed)
    meta = extract.run(p)
    assert meta["feature_dim"] == 256 and meta["images"] == {"train": 8, "val": 4, "test": 4}
    assert np.load(paths.features_file("train")).dtype == np.float16
    rows = split_module.read_split("val")
    pixels = np.stack([
        tf.image.resize(images.read_rgb(paths.RAW / r.path), (32, 32), antialias=True).numpy()
        for r in rows
    ])
    keras.backend.clear_session()
    spec = backbones.get("mobilenet_0.25")
    cached, labels = extract.load("val")
    assert labels.tolist() == [["blue", "red"].index(r.label) for r in rows]
    # The stage seeded its random init; rebuild the same way to compare.
    from tlpipe.training import seed_everything

    seed_everything(p.seed)
    model, backbone = extract.feature_model(spec, 32, "none")
    assert backbones.weights_fingerprint(backbone) == meta["weights_sha256"]
    direct = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(cached, direct, rtol=2e-3, atol=2e-3)


def test_head_learns_separable_classes(in_tmp_cwd, raw_params):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 16))
    y = np.repeat(np.arange(3), 60)
    x = (centres[y] + rng.normal(0, 0.3, (180, 16))).astype("float32")
    p = params.parse(tiny_params(raw_params, "unused"))
    hp = p.head.__class__(**{**p.head.__dict__, "hidden": (8,), "epochs": 30, "batch_size": 16})
    model = head.build(16, 3, hp)
    head.compile_model(model, keras.optimizers.Adam(0.01), 0.0)
    model.fit(x, keras.utils.to_categorical(y, 3), epochs=30, batch_size=16, verbose=0)
    acc = (model.predict(x, verbose=0).argmax(axis=1) == y).mean()
    assert acc > 0.95


def test_class_weights_balance_skewed_classes():
    labels = np.array([0] * 90 + [1] * 10)
    weights = head.class_weights(labels, 2, "auto")
    assert weights[1] / weights[0] == 9.0
    assert head.class_weights(labels, 2, "none") is None


def test_preprocess_layer_round_trips_through_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, Preprocess("caffe")(inputs))
    model.save(tmp_path / "m.keras")
    from tlpipe.layers import load_model

    again = load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).uniform(0, 255, (1, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0))
