"""training: the learning-rate policy, which epoch a fit keeps, and batches
read from rows left on disk, seeded and reshuffled."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tlpipe.artifacts import StoredRows
from tlpipe.training import (STEPS_PER_EXECUTION, Inputs, LiveLogger, PlateauReduction, StartingPoint, callbacks,
                             compile_model, disk_batches, EpochOrders, fit, learning_rate, optimizer, soup)


def on_disk(tmp_path, rows=37):
    x = np.arange(rows * 6, dtype=np.float16).reshape(rows, 3, 2)
    path = tmp_path / "prefix.npy"
    np.save(path, x)
    return StoredRows(path), np.eye(4, dtype=np.float32)[np.arange(rows) % 4]


def epoch(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


def test_in_order_without_a_seed(tmp_path):
    x, y = on_disk(tmp_path)
    batches = list(disk_batches(x, y, 8))
    assert [len(b[0]) for b in batches] == [8, 8, 8, 8, 5]
    got_x, got_y = epoch(batches)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


def test_without_labels_it_streams_the_rows_alone(tmp_path):
    x, _ = on_disk(tmp_path)
    batches = list(disk_batches(x, None, 8))
    assert all(not isinstance(b, tuple) for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in batches]), x)


def epoch_of(orders, dataset, number):
    orders.on_epoch_begin(number)  # as fit calls it, before it iterates the epoch
    return epoch(dataset)


def test_epoch_orders_keep_rows_with_their_labels_and_draw_a_new_order_each_epoch(tmp_path):
    x, y = on_disk(tmp_path)
    orders = EpochOrders(len(x), 8, seed=3, run=0)
    dataset = disk_batches(x, y, 8, orders)
    first, second = epoch_of(orders, dataset, 0), epoch_of(orders, dataset, 1)
    for got_x, got_y in (first, second):
        row = got_x[:, 0, 0].astype(int) // 6  # which row each sample is
        assert sorted(row) == list(range(len(x)))  # every row once per epoch
        np.testing.assert_array_equal(got_y, y[row])  # labels travel with their rows
    assert not np.array_equal(first[0], second[0])  # a new order each epoch
    again = EpochOrders(len(x), 8, seed=3, run=0)
    np.testing.assert_array_equal(epoch_of(again, disk_batches(x, y, 8, again), 1)[0], second[0])  # epoch 1 alone
    other_run = EpochOrders(len(x), 8, seed=3, run=1)
    assert not np.array_equal(epoch_of(other_run, disk_batches(x, y, 8, other_run), 0)[0], first[0])


def test_the_rest_of_an_interrupted_epoch_is_its_order_past_the_batches_trained(tmp_path):
    x, y = on_disk(tmp_path)
    whole = EpochOrders(len(x), 8, seed=3, run=0)
    rest = EpochOrders(len(x), 8, seed=3, run=0, skip=2)
    np.testing.assert_array_equal(epoch_of(rest, disk_batches(x, y, 8, rest), 1)[0],
                                  epoch_of(whole, disk_batches(x, y, 8, whole), 1)[0][16:])


def rates(rate, steps):
    return np.array([float(rate(step)) for step in range(steps)], dtype=np.float32)


def test_the_default_cosine_is_keras_cosine_decay_bit_for_bit():
    rate = learning_rate(1e-4, "cosine", epochs=5, steps_per_epoch=7, warmup_epochs=0)
    keras_cosine = keras.optimizers.schedules.CosineDecay(1e-4, 35)
    np.testing.assert_array_equal(rates(rate, 40), rates(keras_cosine, 40))


def test_cosine_warmup_is_keras_cosine_decay_with_its_warmup():
    rate = learning_rate(1e-3, "cosine", epochs=4, steps_per_epoch=5, warmup_epochs=1)
    keras_cosine = keras.optimizers.schedules.CosineDecay(1e-4, 15, warmup_target=1e-3, warmup_steps=5)
    np.testing.assert_allclose(rates(rate, 22), rates(keras_cosine, 22), rtol=1e-6)


@pytest.mark.parametrize("schedule", ["constant", "plateau"])
def test_warmup_rises_linearly_from_a_tenth_then_holds(schedule):
    got = rates(learning_rate(1e-3, schedule, epochs=3, steps_per_epoch=4, warmup_epochs=1), 12)
    np.testing.assert_allclose(got[:5], [1e-4, 3.25e-4, 5.5e-4, 7.75e-4, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(got[5:], 1e-3, rtol=1e-6)


def test_the_schedule_rebuilds_from_its_config():
    rate = learning_rate(1e-3, "cosine", epochs=4, steps_per_epoch=5, warmup_epochs=1)
    again = type(rate).from_config(rate.get_config())
    np.testing.assert_array_equal(rates(again, 22), rates(rate, 22))


def test_no_warmup_constant_is_the_base_rate():
    np.testing.assert_array_equal(rates(learning_rate(5e-3, "constant", 2, 3, 0), 6), np.float32(5e-3))


def test_plateau_lowers_the_schedule_through_keras_reduce_lr_on_plateau(tmp_path):
    rate = learning_rate(1e-3, "plateau", epochs=10, steps_per_epoch=2, warmup_epochs=0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer("adam", rate), loss="mse")
    reduction = [c for c in callbacks(2, LiveLogger(tmp_path), rate) if isinstance(c, PlateauReduction)]
    assert len(reduction) == 1 and reduction[0].patience == 1
    reduction[0].set_model(model)
    reduction[0].on_train_begin()
    for epoch, val_loss in enumerate([1.0, 0.5, 0.5, 0.5]):  # no gain after epoch 2: two reductions
        reduction[0].on_epoch_end(epoch, {"val_loss": val_loss})
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 1e-3 * 0.3 * 0.3, rtol=1e-6)
    cosine = learning_rate(1e-3, "cosine", 1, 1, 0)
    assert not any(isinstance(c, PlateauReduction) for c in callbacks(2, LiveLogger(tmp_path), cosine))


class WeightsPerEpoch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append([np.array(w) for w in self.model.get_weights()])


@pytest.mark.parametrize("patience", [0, 2])
def test_fit_keeps_the_last_epoch_without_patience_and_the_best_with_it(tmp_path, patience):
    """patience 0: every epoch runs and the model ends on its last weights (val
    chose nothing); patience N: early stopping restores the lowest val loss."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 2, 64)
    x_val, labels_val = rng.normal(size=(32, 4)).astype("float32"), rng.integers(0, 2, 32)  # noise: val loss wanders
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    compile_model(model, keras.optimizers.SGD(0.5), label_smoothing=0.0)
    onehot = lambda y: np.eye(2, dtype="float32")[y]  # noqa: E731
    seen = WeightsPerEpoch()
    result = fit(model, Inputs(x, onehot(labels), 16), Inputs(x_val, onehot(labels_val)), 6,
                 callbacks(patience, LiveLogger(tmp_path / "logs")) + [seen])
    losses = result.history["val_loss"]
    expected = int(np.argmin(losses)) if patience else len(losses) - 1
    assert result.kept == expected and result.metrics()["kept_epoch"] == expected + 1
    for got, want in zip(model.get_weights(), seen.seen[expected]):
        np.testing.assert_array_equal(got, want)
    if patience:
        assert any(isinstance(c, keras.callbacks.EarlyStopping)
                   for c in callbacks(patience, LiveLogger(tmp_path / "x")))
    else:
        assert np.argmin(losses) != len(losses) - 1  # the last epoch is not the best: the test tells them apart
        assert len(losses) == 6 and not any(isinstance(c, keras.callbacks.EarlyStopping)
                                            for c in callbacks(0, LiveLogger(tmp_path / "x")))


def test_many_steps_per_call_train_the_same_weights_as_one(tmp_path):
    """STEPS_PER_EXECUTION batches in one call of the compiled step: the same
    fit, batch for batch, on stored rows read from disk (37 rows: a short last
    batch and a last call with fewer steps)."""
    x, y = on_disk(tmp_path)
    trained = []
    for steps_per_call in (1, STEPS_PER_EXECUTION):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3, 2)), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(4, activation="softmax")])
        compile_model(model, keras.optimizers.Adam(0.01), 0.0, steps_per_execution=steps_per_call)
        assert model.steps_per_execution == steps_per_call
        orders = EpochOrders(len(x), 2, seed=1, run=0)
        result = fit(model, Inputs(disk_batches(x, y, 2, orders), orders=orders), Inputs(disk_batches(x, y, 2)), 3,
                     callbacks(0, LiveLogger(tmp_path / f"logs{steps_per_call}")))
        trained.append((model.get_weights(), result.history["val_loss"],
                        model.predict(np.load(tmp_path / "prefix.npy"), batch_size=2)))
    assert STEPS_PER_EXECUTION > 1 and len(x) // 2 > STEPS_PER_EXECUTION  # more than one call per epoch
    for one, many in zip(trained[0][0], trained[1][0]):
        np.testing.assert_array_equal(one, many)
    assert trained[0][1] == trained[1][1]
    np.testing.assert_array_equal(trained[0][2], trained[1][2])


REPLICAS_FIT = """
import keras, numpy as np
from tlpipe import distributed
from tlpipe.training import compile_model
strategy = distributed.choose_strategy()
with strategy.scope():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    compile_model(model, keras.optimizers.Adam(0.01), 0.0)
x = np.arange(120, dtype="float32").reshape(40, 3) / 120
history = model.fit(x, np.eye(2)[np.arange(40) % 2], batch_size=4, epochs=1, verbose=0)
print(strategy.num_replicas_in_sync, model.steps_per_execution, np.isfinite(history.history["loss"][0]))
"""


@pytest.mark.parametrize("replicas, steps_per_call", [("1", str(STEPS_PER_EXECUTION)), ("2", "1")])
def test_several_replicas_run_one_step_per_call(tmp_path, replicas, steps_per_call):
    """Keras' multi-step loop fails under MirroredStrategy: with two replicas
    (carved out of the CPU, the code path of two GPUs) compile_model asks for
    one step per call; one replica named outright (OneDeviceStrategy) keeps
    STEPS_PER_EXECUTION. Either way the fit runs."""
    env = {**os.environ, "TLPIPE_REPLICAS": replicas, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", REPLICAS_FIT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [replicas, steps_per_call, "True"]


def test_a_starting_point_puts_back_weights_optimizer_state_and_the_plateau_scale():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    rate = learning_rate(1e-2, "plateau", epochs=2, steps_per_epoch=2, warmup_epochs=0)
    compile_model(model, optimizer("adam", rate), label_smoothing=0.0)
    start = StartingPoint(model, rate)
    before = [np.array(w) for w in model.get_weights()]
    x, y = np.ones((4, 3), "float32"), np.eye(2, dtype="float32")[[0, 1, 0, 1]]
    model.fit(x, y, epochs=2, verbose=0)
    rate.scale.assign(0.3)  # as a plateau reduction would
    assert int(model.optimizer.iterations) > 0
    start.restore()
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    assert int(model.optimizer.iterations) == 0 and float(rate.scale) == 1.0
    assert all(not np.any(v.numpy()) for v in model.optimizer.variables if "momentum" in v.path or "velocity" in v.path)


def test_soup_is_the_average_of_the_runs_weights_in_their_dtype():
    runs = [[np.array([1.0, 2.0], "float32"), np.array([[0.0]], "float32")],
            [np.array([3.0, 2.0], "float32"), np.array([[1.0]], "float32")]]
    averaged = soup(runs)
    np.testing.assert_array_equal(averaged[0], [2.0, 2.0])
    np.testing.assert_array_equal(averaged[1], [[0.5]])
    assert averaged[0].dtype == np.float32
    same = np.array([0.1, 1 / 3], "float32")
    np.testing.assert_array_equal(soup([[same], [same], [same]])[0], same)  # identical runs: the very same weights
