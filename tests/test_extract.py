"""Cached features equal a direct forward pass; the Preprocess layer round-trips."""

import keras
import numpy as np
import tensorflow as tf

from tlpipe import artifacts, backbones, extract, images, params, paths
from tlpipe.layers import Preprocess

from conftest import SHARED_KERAS, make_class_folders, needs_shared, run_stage_code, tiny_params


def test_extracted_features_equal_model_predict(in_tmp_cwd, raw_params):
    make_class_folders(paths.RAW, per_class=8)
    p = params.parse(tiny_params(raw_params, paths.RAW))
    meta = run_stage_code(p, "split", "extract")
    assert meta["feature_dim"] == 5 * 256 and meta["images"] == {"train": 8, "val": 4, "test": 4}  # pooling: grid
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
    model, _, backbone, _ = extract.feature_model(spec, 32, "none", p.freeze, p.pooling)
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


@needs_shared  # real weights: a random backbone's pooled features are zeros
def test_grid_pooled_features_begin_with_the_global_average(in_tmp_cwd, raw_params):
    """pooling: grid stores the average (the columns avg pooling stores) and then the four quadrants'."""
    make_class_folders(paths.RAW, per_class=8)
    weights = str(SHARED_KERAS / "models" / "mobilenet_2_5_224_tf_no_top.h5")
    p = params.parse(tiny_params(raw_params, paths.RAW, image_size=64, weights=weights, pooling="grid"))  # 2 x 2 maps
    meta = run_stage_code(p, "split", "extract")
    assert meta["pooling"] == "grid" and meta["feature_dim"] == 5 * 256 and meta["average_columns"] == 256
    grid, _ = artifacts.load_features("val")
    quadrants = grid[:, 256:].reshape(len(grid), 4, 256)
    np.testing.assert_allclose(grid[:, :256], quadrants.mean(axis=1), rtol=2e-3, atol=2e-3)
    assert np.abs(grid).max() > 0.1
    assert not np.allclose(quadrants[:, 0], quadrants[:, 3], atol=1e-3)  # where a feature fires is kept
