"""training: the learning-rate policy, and batches read from a memory-mapped
array on disk, seeded and reshuffled."""

import keras
import numpy as np
import pytest

from tlpipe.training import PlateauReduction, callbacks, disk_batches, learning_rate, optimizer


def on_disk(tmp_path, rows=37):
    x = np.arange(rows * 6, dtype=np.float16).reshape(rows, 3, 2)
    path = tmp_path / "prefix.npy"
    np.save(path, x)
    return np.load(path, mmap_mode="r"), np.eye(4, dtype=np.float32)[np.arange(rows) % 4]


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


def test_seeded_shuffle_keeps_rows_with_their_labels_and_reshuffles_each_epoch(tmp_path):
    x, y = on_disk(tmp_path)
    dataset = disk_batches(x, y, 8, shuffle_seed=3)
    first, second = epoch(dataset), epoch(dataset)
    for got_x, got_y in (first, second):
        row = got_x[:, 0, 0].astype(int) // 6  # which row each sample is
        assert sorted(row) == list(range(len(x)))  # every row once per epoch
        np.testing.assert_array_equal(got_y, y[row])  # labels travel with their rows
    assert not np.array_equal(first[0], second[0])  # a new order each epoch
    again = disk_batches(x, y, 8, shuffle_seed=3)
    np.testing.assert_array_equal(epoch(again)[0], first[0])  # the same orders on a rerun


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
    reduction = [c for c in callbacks(2, tmp_path, rate) if isinstance(c, PlateauReduction)]
    assert len(reduction) == 1 and reduction[0].patience == 1
    reduction[0].set_model(model)
    reduction[0].on_train_begin()
    for epoch, val_loss in enumerate([1.0, 0.5, 0.5, 0.5]):  # no gain after epoch 2: two reductions
        reduction[0].on_epoch_end(epoch, {"val_loss": val_loss})
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 1e-3 * 0.3 * 0.3, rtol=1e-6)
    assert not any(isinstance(c, PlateauReduction) for c in callbacks(2, tmp_path, learning_rate(1e-3, "cosine", 1, 1, 0)))
