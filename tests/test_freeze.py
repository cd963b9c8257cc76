"""The freeze vocabulary on built backbones (random weights, small sizes):
blockN trains exactly the layers past the stage boundary, BatchNormalization
never trains, auto is the registry's default, a layer name starts training
there, and a bad word is one clear line."""

import keras
import pytest

from tlpipe import backbones, freeze, params
from tlpipe.errors import TlpipeError

from conftest import tiny_params

CASES = [
    ("mobilenet_0.25", 32),
    ("vgg16", 32),
    ("resnet50", 32),
    ("efficientnet_b0", 32),
    ("mobilenet_v3_small", 32),
]


def frozen(raw_params, name, size, word):
    """params.yaml's check of the word, then the backbone built and frozen as every stage does."""
    keras.backend.clear_session()
    p = params.parse(tiny_params(raw_params, "unused", backbone=name, image_size=size, freeze=word))
    return freeze.frozen_backbone(backbones.get(name), size, "none", p.freeze)


@pytest.mark.parametrize("name, size", CASES)
def test_block5_trains_exactly_the_layers_past_the_boundary(raw_params, name, size):
    backbone, _ = frozen(raw_params, name, size, "block5")
    boundary = freeze.stage_boundary(backbone, backbones.get(name), 5)
    upstream = freeze.upstream_layers(boundary)
    for layer in backbone.layers:
        expected = layer.name not in upstream and not isinstance(layer, keras.layers.BatchNormalization)
        assert layer.trainable == expected, layer.name
    assert any(l.trainable and l.weights for l in backbone.layers)


@pytest.mark.parametrize("name, size", CASES)
def test_batchnorm_never_trainable_even_with_everything_unfrozen(raw_params, name, size):
    backbone, _ = frozen(raw_params, name, size, "none")
    bns = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    if name == "vgg16":
        assert not bns
    else:
        assert bns and not any(l.trainable for l in bns)
    assert all(l.trainable for l in backbone.layers if not isinstance(l, keras.layers.BatchNormalization))


def test_freeze_all_trains_nothing(raw_params):
    backbone, plan = frozen(raw_params, "mobilenet_0.25", 32, "all")
    assert plan.trains_nothing and backbone.trainable_weights == []


def test_the_layers_above_the_boundary_finish_what_the_prefix_started(raw_params):
    import numpy as np

    backbone, plan = frozen(raw_params, "mobilenet_0.25", 32, "block5")
    images = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype("float32")
    prefix = keras.Model(backbone.input, plan.boundary).predict(images, verbose=0)
    above = freeze.layers_above(backbone, plan)
    assert above.input.shape[1:] == plan.boundary.shape[1:]
    np.testing.assert_allclose(above.predict(prefix, verbose=0), backbone.predict(images, verbose=0), atol=1e-5)
    assert {w.path for w in above.trainable_weights} == {w.path for w in backbone.trainable_weights}


def test_freeze_auto_uses_the_registry_default(raw_params):
    _, plan = frozen(raw_params, "mobilenet_0.25", 32, "auto")
    assert plan.word == backbones.get("mobilenet_0.25").default_freeze


def test_exact_layer_name(raw_params):
    backbone, _ = frozen(raw_params, "mobilenet_0.25", 32, "conv_dw_13")
    assert not backbone.get_layer("conv_pw_12").trainable
    assert backbone.get_layer("conv_dw_13").trainable


def test_unknown_stage_or_layer_is_a_clear_error(raw_params):
    # blockN out of range: rejected when params are read, before any stage works
    with pytest.raises(TlpipeError, match=r"one of 'block1', .*'block5', or an exact Keras layer name .* Got 'block6'"):
        frozen(raw_params, "mobilenet_0.25", 32, "block6")
    # a layer name is checked on the built backbone, in the same words
    with pytest.raises(TlpipeError, match=r"The 'freeze' parameter must be .* Got 'nope' instead. \(backbone 'mobilenet_0.25' has no such layer"):
        frozen(raw_params, "mobilenet_0.25", 32, "nope")


def test_the_vocabulary_checked_before_any_backbone_is_built():
    spec = backbones.get("mobilenet_0.25")
    assert freeze.stage_number("block4") == 4 and freeze.stage_number("blocks") is None
    for word in ("auto", "all", "none", "block1", "block5", "conv_dw_13", "block_3/expand"):
        assert freeze.spelled_right(word, spec), word
    for word in ("block0", "block6", "two words", ""):
        assert not freeze.spelled_right(word, spec), word
    assert [w for w in ("auto", "block2", "conv_dw_13") if freeze.is_layer_name(w)] == ["conv_dw_13"]


def test_a_layer_name_is_checked_on_the_architecture_in_the_params_stage():
    spec = backbones.get("mobilenet_0.25")
    freeze.check_on_architecture("conv_dw_13", spec, 32)
    freeze.check_on_architecture("block5", spec, 32)  # nothing to build for a stage word
    with pytest.raises(TlpipeError, match=r"Got 'conv_dw_99' instead. \(backbone 'mobilenet_0.25' has no such layer"):
        freeze.check_on_architecture("conv_dw_99", spec, 32)
