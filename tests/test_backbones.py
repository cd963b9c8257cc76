"""The backbone registry: every entry builds, its stages resolve to real layers,
and the in-graph preprocessing equals each application's own preprocess_input."""

import warnings

import numpy as np
import pytest

from tlpipe import backbones, freeze
from tlpipe.errors import TlpipeError


def entries():
    # All of them, the heaviest included: building them at their minimum size
    # takes about a minute in all on 2 cores.
    for name in backbones.names():
        yield pytest.param(name, id=name)


@pytest.mark.parametrize("name", entries())
def test_entry_builds_and_stages_resolve(name):
    import keras

    spec = backbones.get(name)
    keras.backend.clear_session()
    model = spec.build(spec.min_size, "none")
    assert model.output.shape[-1] > 0
    frozen_sets = []
    for stage in range(1, 6):
        boundary = freeze.stage_boundary(model, spec, stage)
        frozen_sets.append(freeze.upstream_layers(boundary))
    # Each stage starts deeper than the one before: frozen sets strictly grow,
    # and stage 5 still leaves layers with weights to train.
    for shallower, deeper in zip(frozen_sets, frozen_sets[1:]):
        assert shallower < deeper, f"{name}: stages out of order"
    trainable = [l for l in model.layers if l.name not in frozen_sets[-1] and l.weights]
    assert trainable, f"{name}: block5 leaves nothing to train"


def test_width_multiplier_names():
    assert backbones.get("mobilenet_0.25").kwargs == {"alpha": 0.25}
    assert backbones.get("mobilenet").kwargs == {"alpha": 1.0}
    assert backbones.get("mobilenet_v2_1.4").kwargs == {"alpha": 1.4}
    assert backbones.get("mobilenet_v2_0.35").kwargs == {"alpha": 0.35}


def test_unknown_backbone_suggests_a_close_name():
    with pytest.raises(TlpipeError, match="Did you mean 'mobilenet_v2'"):
        backbones.get("mobilenetv2")


OWN_PREPROCESS = {
    "caffe": "vgg16",
    "tf": "mobilenet_v2",
    "torch": "densenet",
}


@pytest.mark.parametrize("mode, module", sorted(OWN_PREPROCESS.items()))
def test_in_graph_preprocessing_equals_the_applications_own(mode, module):
    import keras

    from tlpipe.layers import Preprocess

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(pixels.copy())
    got = keras.ops.convert_to_numpy(Preprocess(mode)(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_every_entry_has_a_known_preprocessing_mode():
    for spec in backbones.REGISTRY.values():
        assert spec.preprocess in backbones.PREPROCESS_MODES
        assert len(spec.stages) == 5
        assert spec.min_size <= spec.default_size


@pytest.mark.parametrize(
    "name, file, first_conv",
    [
        ("mobilenet_0.25", "mobilenet_2_5_224_tf_no_top.h5", "conv1"),
        ("mobilenet_0.75", "mobilenet_7_5_224_tf_no_top.h5", "conv1"),
        ("mobilenet_v2_0.35", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5", "Conv1"),
    ],
)
def test_imagenet_weights_load_offline_from_the_shared_cache(monkeypatch, name, file, first_conv):
    from conftest import SHARED_KERAS

    if not (SHARED_KERAS / "models" / file).is_file():
        pytest.skip("needs the pre-seeded Keras cache in ../shared/keras")
    from keras.src.backend import config

    monkeypatch.setattr(config, "keras_home", lambda: str(SHARED_KERAS))
    monkeypatch.setattr(config, "_KERAS_DIR", str(SHARED_KERAS))
    model = backbones.get(name).build(224, "imagenet")
    conv = model.get_layer(first_conv).get_weights()[0]
    assert np.abs(conv).std() > 0.05  # trained filters, not a fresh init


def test_local_weights_file(tmp_path):
    spec = backbones.get("mobilenet_0.25")
    source = spec.build(32, "none")
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    loaded = spec.build(32, str(path))
    assert len(loaded.get_weights()) == len(source.get_weights())
    for got, saved in zip(loaded.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(got, saved)
    with pytest.raises(TlpipeError, match="'weights' parameter must be 'imagenet', 'none' or the path"):
        spec.build(32, str(tmp_path / "missing.h5"))
    # Keras warns of every layer it cannot match before it gives up on the file.
    with (pytest.raises(TlpipeError, match=r"The 'weights' parameter must be a weights file of backbone 'vgg16'"),
          warnings.catch_warnings()):
        warnings.filterwarnings("ignore", message="Skipping nested container")
        backbones.get("vgg16").build(32, str(path))  # mobilenet's weights


def test_weights_as_keras_applications_take_them(tmp_path):
    assert backbones.keras_weights_arg("imagenet") == "imagenet"
    assert backbones.keras_weights_arg("none") is None
    (tmp_path / "w.weights.h5").write_bytes(b"")
    assert backbones.keras_weights_arg(str(tmp_path / "w.weights.h5")) == str(tmp_path / "w.weights.h5")
    with pytest.raises(TlpipeError, match=r"params.yaml: The 'weights' parameter must be 'imagenet', 'none' or the path .* Got 'nope.h5'"):
        backbones.keras_weights_arg("nope.h5")
