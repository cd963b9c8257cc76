"""Reading what the stages hand each other: split rows, the class list, cached
features and frozen-prefix outputs.

The split stage writes ``data/split`` and the extract stage ``data/features``;
every later stage (and the ``tlpipe`` CLI) reads them through this module, so
no stage imports another stage's code, and editing how a stage *computes* its
output reruns only that stage and what consumes the output.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlpipe import paths

SPLITS = paths.SPLITS
SPLIT_COLUMNS = ("path", "label", "decoder")


@dataclass(frozen=True)
class Row:
    """One image of a split."""

    path: str  # relative to data/raw, POSIX separators
    label: str  # class name
    decoder: str  # "tf" or "pil", see tlpipe.images


def csv_text(header, rows) -> str:
    """A CSV file's text, as every stage writes them (header row, Unix newlines)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def read_split(name: str, folder: Path = paths.SPLIT) -> list[Row]:
    with open(paths.split_csv(name, folder), newline="") as f:
        return [Row(r["path"], r["label"], r["decoder"]) for r in csv.DictReader(f)]


def read_classes(folder: Path = paths.SPLIT) -> list[str]:
    return json.loads(paths.classes_file(folder).read_text())


def sources(rows: list[Row]) -> tuple[list[Path], list[str]]:
    """The image files of ``rows`` and their decoders, as tlpipe.images takes them."""
    return [paths.RAW / r.path for r in rows], [r.decoder for r in rows]


def label_indices(rows: list[Row], classes: list[str]) -> np.ndarray:
    """Each row's class as an index into ``classes``."""
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[r.label] for r in rows], dtype=np.int32)


def load_features(split: str, folder: Path = paths.FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Cached features (as float32) and labels of one split."""
    x = np.load(paths.features_file(split, folder)).astype(np.float32)
    y = np.load(paths.labels_file(split, folder))
    return x, y


def read_features_meta(folder: Path = paths.FEATURES) -> dict:
    return json.loads(paths.features_meta(folder).read_text())


def read_prefix_meta(folder: Path = paths.PREFIX) -> dict:
    return json.loads(paths.prefix_meta(folder).read_text())


def load_prefix(split: str, folder: Path = paths.PREFIX) -> np.ndarray:
    """The frozen prefix's outputs for one split (float16, split CSV order),
    memory-mapped: rows are read from disk as they are indexed."""
    return np.load(paths.prefix_file(split, folder), mmap_mode="r")
