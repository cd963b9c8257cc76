"""What stages hand each other on disk: split CSVs that survive any file name,
classes, features and the prefix, whose rows stay on disk until read."""

import json
from pathlib import Path

import numpy as np
import pytest

from tlpipe import artifacts, paths
from tlpipe.artifacts import Row


def test_split_csv_round_trips_names_with_commas_quotes_and_unicode(tmp_path):
    rows = [Row('cats/a, "b".jpg', "cats", "tf"), Row("chiens/été.png", "chiens", "pil")]
    text = artifacts.csv_text(artifacts.SPLIT_COLUMNS, [(r.path, r.label, r.decoder) for r in rows])
    assert text.startswith("path,label,decoder\n") and "\r" not in text
    paths.split_csv("train", tmp_path).write_text(text)
    assert artifacts.read_split("train", tmp_path) == rows


def test_label_indices_follow_the_classes_order(tmp_path):
    paths.classes_file(tmp_path).write_text(json.dumps(["b", "a"]))
    classes = artifacts.read_classes(tmp_path)
    rows = [Row("x", "a", "tf"), Row("y", "b", "tf")]
    assert artifacts.label_indices(rows, classes).tolist() == [1, 0]
    files, decoders = artifacts.sources(rows)
    assert files == [paths.RAW / "x", paths.RAW / "y"] and decoders == ["tf", "tf"]


def test_features_load_as_float32_and_the_prefix_stays_on_disk(tmp_path):
    np.save(paths.features_file("val", tmp_path), np.ones((3, 4), np.float16))
    np.save(paths.labels_file("val", tmp_path), np.array([0, 1, 0]))
    x, y = artifacts.load_features("val", tmp_path)
    assert x.dtype == np.float32 and x.shape == (3, 4) and y.tolist() == [0, 1, 0]
    stored = np.arange(5 * 12, dtype=np.float16).reshape(5, 2, 2, 3)
    np.save(paths.prefix_file("train", tmp_path), stored)
    prefix = artifacts.load_prefix("train", tmp_path)
    assert isinstance(prefix, artifacts.StoredRows) and prefix.shape == (5, 2, 2, 3) and len(prefix) == 5
    np.testing.assert_array_equal(np.asarray(prefix), stored)


def test_splits_stack_in_order_and_columns_are_cut_block_by_block(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "FEATURE_BLOCK_BYTES", 2 * 6 * 4)  # two rows a block: they divide no split
    rng = np.random.default_rng(0)
    train, val = rng.normal(size=(5, 6)).astype(np.float16), rng.normal(size=(3, 6)).astype(np.float16)
    for split, x, y in (("train", train, [0, 1, 0, 1, 1]), ("val", val, [1, 0, 0])):
        np.save(paths.features_file(split, tmp_path), x)
        np.save(paths.labels_file(split, tmp_path), np.array(y))
    x, y = artifacts.load_stacked_features(("train", "val"), tmp_path)
    assert x.dtype == np.float32 and y.tolist() == [0, 1, 0, 1, 1, 1, 0, 0]
    np.testing.assert_array_equal(x, np.concatenate([train, val]).astype(np.float32))
    first, _ = artifacts.load_features("val", tmp_path, dtype=None, columns=2)
    assert first.dtype == np.float16
    np.testing.assert_array_equal(first, val[:, :2])


@pytest.mark.parametrize("rows", [[3], [0, 1, 2], [4, 0, 2, 3], [1, 2, 4], []])
def test_stored_rows_read_the_rows_asked_for_in_their_order(tmp_path, rows):
    stored = np.random.default_rng(0).normal(size=(5, 7, 3)).astype(np.float16)
    np.save(tmp_path / "a.npy", stored)
    got = artifacts.StoredRows(tmp_path / "a.npy")[np.array(rows, dtype=int)]
    assert got.dtype == np.float16 and got.shape == (len(rows), 7, 3)
    np.testing.assert_array_equal(got, stored[rows])


def test_stored_rows_refuse_rows_past_the_end(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 2), np.float16))
    with pytest.raises(IndexError, match=r"a.npy: rows 0..5 asked of 5"):
        artifacts.StoredRows(tmp_path / "a.npy")[[0, 5]]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_feature_rows_come_in_blocks_across_files_in_order(tmp_path, monkeypatch, dtype):
    """Blocks that divide neither file's rows; the first columns alone; float32 whatever is stored."""
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(7, 6)).astype(dtype), rng.normal(size=(4, 6)).astype(dtype)]
    for name, part in zip("ab", parts):
        np.save(tmp_path / f"{name}.npy", part)
    monkeypatch.setattr(artifacts, "FEATURE_BLOCK_BYTES", 3 * 6 * 4)  # three rows a block
    rows = artifacts.FeatureRows(files=[tmp_path / "a.npy", tmp_path / "b.npy"])
    assert rows.shape == (11, 6) and rows.array is None
    firsts, blocks = zip(*[(first, block.copy()) for first, block in rows.first(2).blocks()])
    assert firsts == (0, 3, 6, 7, 10)  # a's 7 rows, then b's 4
    assert all(b.dtype == np.float32 and b.shape[1] == 2 and len(b) <= 3 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), np.concatenate(parts)[:, :2].astype(np.float32))
    in_memory = artifacts.FeatureRows(np.concatenate(parts).astype(np.float32))
    assert [first for first, _ in in_memory.blocks()] == [0]  # an array is one block: itself


def test_read_into_fills_the_buffer_given_and_refuses_a_wrong_one(tmp_path):
    stored = np.arange(20, dtype=np.float16).reshape(10, 2)
    np.save(tmp_path / "a.npy", stored)
    rows, buffer = artifacts.StoredRows(tmp_path / "a.npy"), np.empty((3, 2), np.float16)
    assert rows.read_into(6, buffer) is buffer
    np.testing.assert_array_equal(buffer, stored[6:9])
    with pytest.raises(IndexError, match=r"a.npy: rows 8..10 asked of 10"):
        rows.read_into(8, buffer)
    with pytest.raises(ValueError, match=r"a.npy: a C-ordered float16 buffer of rows \(2,\) expected"):
        rows.read_into(0, np.empty((3, 2), np.float32))


def resident_bytes() -> int:
    line = next(line for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc (Linux)")
def test_reading_every_stored_row_leaves_resident_memory_flat(tmp_path):
    """A memory map of the same file grows the process by the file's size as
    its pages are touched (checked here too, so the measure can fail)."""
    size = 64 * 2**20
    np.save(tmp_path / "big.npy", np.ones((size // 4096, 2048), np.float16))
    order = np.random.default_rng(0).permutation(size // 4096)

    def growth(array) -> int:
        before = resident_bytes()
        for start in range(0, len(order), 32):
            array[np.sort(order[start:start + 32])].max()  # touches every value (a float16 sum would overflow)
        return resident_bytes() - before

    assert growth(artifacts.StoredRows(tmp_path / "big.npy")) < size / 8
    assert growth(np.load(tmp_path / "big.npy", mmap_mode="r")) > size / 2


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc (Linux)")
def test_writing_every_row_leaves_resident_memory_flat(tmp_path):
    """extract writes the prefix a batch at a time; written through a memory
    map, every page would stay resident (checked here too)."""
    rows, batch = 64 * 2**20 // 4096, np.ones((32, 2048), np.float16)

    def growth(out) -> int:
        before = resident_bytes()
        for start in range(0, rows, 32):
            out[start:start + 32] = batch
        return resident_bytes() - before

    assert growth(artifacts.RowWriter(tmp_path / "written.npy", rows, (2048,))) < 8 * 2**20
    mapped = np.lib.format.open_memmap(tmp_path / "mapped.npy", mode="w+", dtype=np.float16, shape=(rows, 2048))
    assert growth(mapped) > 32 * 2**20


def test_row_writer_writes_the_bytes_a_memory_map_would(tmp_path):
    """extract's outputs stay byte-identical, so DVC sees the same hashes."""
    values = np.random.default_rng(1).normal(size=(7, 3, 2)).astype(np.float16)
    mapped = np.lib.format.open_memmap(tmp_path / "mapped.npy", mode="w+", dtype=np.float16, shape=(7, 3, 2))
    writer = artifacts.RowWriter(tmp_path / "written.npy", 7, (3, 2))
    for start, stop in ((0, 4), (4, 7)):
        mapped[start:stop] = values[start:stop]
        writer[start:stop] = values[start:stop]
    mapped.flush()
    del mapped
    assert (tmp_path / "written.npy").read_bytes() == (tmp_path / "mapped.npy").read_bytes()
    np.testing.assert_array_equal(np.load(tmp_path / "written.npy"), values)


def test_row_writer_refuses_values_of_another_shape(tmp_path):
    writer = artifacts.RowWriter(tmp_path / "w.npy", 4, (3,))
    with pytest.raises(ValueError, match=r"w.npy: rows 0..2 of shape \(3,\) expected, got \(2, 4\)"):
        writer[0:2] = np.zeros((2, 4))
