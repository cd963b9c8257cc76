"""training: batches read from a memory-mapped array on disk, seeded and reshuffled."""

import numpy as np

from tlpipe.training import disk_batches


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
