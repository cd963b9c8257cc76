"""Cached features equal a direct forward pass; the Preprocess layer round-trips; an
interrupted extract's rows are kept only for the same inputs and intact files."""

import keras
import numpy as np
import pytest
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


# ----------------------------------------------------------------- resuming


def progress_files(folder, layout, rows):
    """The arrays an interrupted extract left for ``rows`` (split -> rows written)."""
    from tlpipe.artifacts import RowWriter

    for split, done in rows.items():
        n = layout["images"][split]
        RowWriter(paths.features_file(split, folder / "features"), n, (layout["feature_dim"],))
        RowWriter(paths.prefix_file(split, folder / "prefix"), n, tuple(layout["prefix_shape"]))
        if split in extract.MIRRORED_SPLITS:
            RowWriter(paths.prefix_file(paths.mirrored(split), folder / "prefix"), n, tuple(layout["prefix_shape"]))


LAYOUT = {"feature_dim": 4, "prefix_shape": [2, 2, 3], "batch_size": 2, "images": {"train": 6, "val": 4, "test": 4}}


def interrupted_progress(folder, rows):
    progress = extract.Progress(folder, "key", LAYOUT)
    progress_files(folder, LAYOUT, rows)
    for split, done in rows.items():
        progress.record(split, done)


def test_an_interrupted_extracts_rows_are_kept_for_the_same_inputs(tmp_path):
    interrupted_progress(tmp_path, {"train": 6, "val": 2})
    again = extract.Progress(tmp_path, "key", LAYOUT)
    assert (again.done("train"), again.done("val"), again.done("test")) == (6, 2, 0)


@pytest.mark.parametrize("change, words", [
    (lambda folder: ("other", LAYOUT), "other params, data or code"),
    (lambda folder: ("key", {**LAYOUT, "batch_size": 4}), "another layout of the outputs"),
    (lambda folder: (paths.features_file("train", folder / "features").write_bytes(b"\x93NUMPY"), ("key", LAYOUT))[1],
     "train.npy is truncated"),
    (lambda folder: (paths.prefix_file("val_mirror", folder / "prefix").unlink(), ("key", LAYOUT))[1],
     "val_mirror.npy is missing"),
])
def test_rows_of_other_inputs_or_a_damaged_file_are_dropped_with_one_line(tmp_path, capsys, change, words):
    interrupted_progress(tmp_path, {"train": 6, "val": 2})
    key, layout = change(tmp_path)
    capsys.readouterr()
    again = extract.Progress(tmp_path, key, layout)
    out = capsys.readouterr().out
    assert words in out and out.startswith("extract: ignoring the checkpoint") and out.count("\n") == 1
    assert again.done("train") == 0 and again.done("val") == 0
