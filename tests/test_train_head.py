"""The head learns separable classes; class weights balance skewed classes."""

import keras
import numpy as np

from tlpipe import params, train_head
from tlpipe.training import compile_model

from conftest import tiny_params


def test_head_learns_separable_classes(in_tmp_cwd, raw_params):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 16))
    y = np.repeat(np.arange(3), 60)
    x = (centres[y] + rng.normal(0, 0.3, (180, 16))).astype("float32")
    p = params.parse(tiny_params(raw_params, "unused"))
    hp = p.head.__class__(**{**p.head.__dict__, "hidden": (8,), "epochs": 30, "batch_size": 16})
    model = train_head.build(16, 3, hp)
    compile_model(model, keras.optimizers.Adam(0.01), 0.0)
    model.fit(x, keras.utils.to_categorical(y, 3), epochs=30, batch_size=16, verbose=0)
    acc = (model.predict(x, verbose=0).argmax(axis=1) == y).mean()
    assert acc > 0.95


def test_class_weights_balance_skewed_classes():
    labels = np.array([0] * 90 + [1] * 10)
    weights = train_head.class_weights(labels, 2, "auto")
    assert weights[1] / weights[0] == 9.0
    assert train_head.class_weights(labels, 2, "none") is None
