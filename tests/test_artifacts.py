"""What stages hand each other on disk: split CSVs that survive any file name,
classes, features and the memory-mapped prefix."""

import json

import numpy as np

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


def test_features_load_as_float32_and_the_prefix_memory_mapped(tmp_path):
    np.save(paths.features_file("val", tmp_path), np.ones((3, 4), np.float16))
    np.save(paths.labels_file("val", tmp_path), np.array([0, 1, 0]))
    x, y = artifacts.load_features("val", tmp_path)
    assert x.dtype == np.float32 and x.shape == (3, 4) and y.tolist() == [0, 1, 0]
    np.save(paths.prefix_file("train", tmp_path), np.zeros((5, 2, 2, 3), np.float16))
    prefix = artifacts.load_prefix("train", tmp_path)
    assert isinstance(prefix, np.memmap) and prefix.shape == (5, 2, 2, 3)
