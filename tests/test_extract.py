"""Cached features equal a direct forward pass; the Preprocess layer round-trips."""

import keras
import numpy as np
import tensorflow as tf

from tlpipe import artifacts, backbones, extract, images, params, paths
from tlpipe.layers import Preprocess

from conftest import make_class_folders, run_stage_code, tiny_params


def test_extracted_features_equal_model_predict(in_tmp_cwd, raw_params):
    make_class_folders(paths.RAW, per_class=8)
    p = params.parse(tiny_params(raw_params, paths.RAW))
    meta = run_stage_code(p, "split", "extract")
    assert meta["feature_dim"] == 256 and meta["images"] == {"train": 8, "val": 4, "test": 4}
    assert np.load(paths.features_file("train")).dtype == np.float16
    rows = artifacts.read_split("val")
    pixels = np.stack([
        tf.image.resize(images.read_rgb(paths.RAW / r.path), (32, 32), antialias=True).numpy()
        for r in rows
    ])
    keras.backend.clear_session()
    spec = backbones.get("mobilenet_0.25")
    cached, labels = artifacts.load_features("val")
    assert labels.tolist() == [["blue", "red"].index(r.label) for r in rows]
    # The stage seeded its random init; rebuild the same way to compare.
    from tlpipe.training import seed_everything

    seed_everything(p.seed)
    model, _, backbone, _ = extract.feature_model(spec, 32, "none", p.freeze)
    assert backbones.weights_fingerprint(backbone) == meta["weights_sha256"]
    direct = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(cached, direct, rtol=2e-3, atol=2e-3)


def test_preprocess_layer_round_trips_through_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, Preprocess("caffe")(inputs))
    model.save(tmp_path / "m.keras")
    from tlpipe.layers import load_model

    again = load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).uniform(0, 255, (1, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0))
