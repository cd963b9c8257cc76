"""tlpipe's own Keras layers and model views, on real (small) Keras models."""

import numpy as np
import pytest

from tlpipe import layers


def small_classifier(n_classes=3, size=16):
    import keras

    pixels = keras.Input((size, size, 3), name="pixels")
    x = layers.Preprocess("tf", name="preprocess")(pixels)
    backbone_in = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, name="conv")(backbone_in))
    backbone = keras.Model(backbone_in, pooled, name="backbone")
    head_in = keras.Input((8,))
    head = keras.Model(head_in, keras.layers.Dense(n_classes, activation="softmax")(head_in), name="head")
    return keras.Model(pixels, head(backbone(x)), name="classifier"), backbone


@pytest.mark.parametrize("mirror", [False, True])
def test_with_features_gives_the_models_probabilities_and_its_heads_input(mirror):
    import keras

    keras.utils.set_random_seed(0)
    model, backbone = small_classifier()
    classifier = layers.mirror_averaged(model) if mirror else model
    shipped = keras.Model(classifier.input, layers.Temperature(0.7, name="temperature")(classifier.output))
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    probs, features = layers.with_features(shipped).predict_on_batch(x)
    assert np.allclose(probs, shipped.predict_on_batch(x), atol=1e-6)
    expected = backbone.predict_on_batch(x / 127.5 - 1.0)  # the plain image's, mirror or not
    assert np.allclose(features, expected, atol=1e-5)
    # the features alone (trust's bank): the same numbers, without the mirror image's pass
    only = layers.features_of(shipped)
    np.testing.assert_array_equal(only.predict_on_batch(x), features)
    assert not any(isinstance(layer, layers.Mirror) for layer in only.layers)


def test_the_mirror_half_is_the_classifier_on_the_mirror_image():
    import keras

    keras.utils.set_random_seed(0)
    model, _ = small_classifier()
    averaged_model = layers.mirror_averaged(model)
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    half = layers.on_mirror_images(averaged_model).predict_on_batch(x)
    np.testing.assert_allclose(half, model.predict_on_batch(x[:, :, ::-1]), atol=1e-6)
    assert not np.allclose(half, model.predict_on_batch(x), atol=1e-3)  # the mirror image's, not the image's
    # (plain half + mirror half) / 2 is what the mirror-averaged model gives
    averaged = (model.predict_on_batch(x) + half) / 2
    np.testing.assert_allclose(averaged_model.predict_on_batch(x), averaged, atol=1e-6)
    with pytest.raises(ValueError, match="does not average over the mirror image"):
        layers.on_mirror_images(model)


def test_with_features_refuses_a_model_without_a_head():
    import keras

    pixels = keras.Input((4,))
    with pytest.raises(ValueError, match="no layer named 'head'"):
        layers.with_features(keras.Model(pixels, keras.layers.Dense(2)(pixels)))


def test_mirror_flips_left_to_right():
    x = np.arange(2 * 3 * 3).reshape(1, 2, 3, 3).astype("float32")
    assert np.array_equal(np.asarray(layers.Mirror()(x)), x[:, :, ::-1, :])


@pytest.mark.parametrize("side", [1, 3, 6, 7])
def test_grid_pooling_is_the_average_then_the_four_quadrants(side):
    maps = np.random.default_rng(side).normal(size=(2, side, side, 4)).astype("float32")
    out = np.asarray(layers.GridPooling()(maps))
    half, upper = side // 2, (side + 1) // 2  # an odd side's middle row and column belong to both halves
    quadrants = [maps[:, rows, cols].mean((1, 2)) for rows in (slice(0, upper), slice(half, side))
                 for cols in (slice(0, upper), slice(half, side))]
    np.testing.assert_allclose(out, np.concatenate([maps.mean((1, 2)), *quadrants], axis=1), rtol=1e-5, atol=1e-6)
    # the mirror image's grid: the same average, left and right quadrants swapped
    mirrored = np.asarray(layers.GridPooling()(maps[:, :, ::-1]))
    swapped = np.concatenate([out[:, :4], out[:, 8:12], out[:, 4:8], out[:, 16:20], out[:, 12:16]], axis=1)
    np.testing.assert_allclose(mirrored, swapped, rtol=1e-5, atol=1e-6)


def test_a_grid_pooled_backbone_round_trips_through_a_keras_file_in_safe_mode(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    maps_in = keras.Input((7, 7, 3))
    backbone = layers.grid_pooled(keras.Model(maps_in, keras.layers.Conv2D(8, 3, padding="same")(maps_in), name="net"))
    assert backbone.name == "net" and backbone.output.shape == (None, 40)
    backbone.save(tmp_path / "net.keras")
    again = layers.load_model(tmp_path / "net.keras")  # safe_mode is Keras' default
    x = np.random.default_rng(0).normal(size=(2, 7, 7, 3)).astype("float32")
    np.testing.assert_allclose(again.predict_on_batch(x), backbone.predict_on_batch(x), atol=1e-6)


def test_a_multi_label_temperature_scales_each_logit_and_keeps_its_thresholds(tmp_path):
    import keras

    probs = np.array([[0.9, 0.2, 0.5]], dtype="float32")
    scaled = np.asarray(layers.Temperature(2.0, [0.4, 0.5, 0.6])(probs))
    logits = np.log(probs) - np.log1p(-probs)
    np.testing.assert_allclose(scaled, 1 / (1 + np.exp(-logits / 2.0)), rtol=1e-5)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, layers.Temperature(2.0, [0.4, 0.5, 0.6], name="temperature")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = layers.load_model(tmp_path / "m.keras")
    assert layers.thresholds_of(loaded) == [0.4, 0.5, 0.6] and layers.temperature_of(loaded) == 2.0
    single = layers.Temperature(2.0)
    assert layers.thresholds_of(keras.Model(inputs, single(inputs))) is None
    assert "thresholds" not in single.get_config()  # single-label models' files are as before
