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
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlpipe import paths

SPLITS = paths.SPLITS
SPLIT_COLUMNS = ("path", "label", "decoder")
# A multi-label run's split CSVs: each image's label names joined by its task's delimiter.
MULTI_LABEL_COLUMNS = ("path", "labels", "decoder")


@dataclass(frozen=True)
class Row:
    """One image of a split."""

    path: str  # relative to data/raw, POSIX separators
    label: str  # class name (multi-label: the label names, joined by the task's delimiter)
    decoder: str  # "tf" or "pil", see tlpipe.images
    labels: tuple[str, ...] | None = None  # multi-label: the label names (none: an image of none of them)


@dataclass(frozen=True)
class Task:
    """One label per image, or (``multi_label``) a set of labels, written joined by ``delimiter``."""

    multi_label: bool = False
    delimiter: str = " "


def read_task(folder: Path = paths.SPLIT) -> Task:
    file = paths.task_file(folder)
    return Task(**json.loads(file.read_text())) if file.is_file() else Task()


def task_json(task: Task) -> str:
    return json.dumps({"multi_label": task.multi_label, "delimiter": task.delimiter}, indent=2) + "\n"


def csv_text(header, rows) -> str:
    """A CSV file's text, as every stage writes them (header row, Unix newlines)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def read_split(name: str, folder: Path = paths.SPLIT) -> list[Row]:
    task = read_task(folder)
    with open(paths.split_csv(name, folder), newline="") as f:
        if not task.multi_label:
            return [Row(r["path"], r["label"], r["decoder"]) for r in csv.DictReader(f)]
        return [Row(r["path"], r["labels"], r["decoder"], parse_labels(r["labels"], task.delimiter))
                for r in csv.DictReader(f)]


def parse_labels(cell: str | None, delimiter: str) -> tuple[str, ...]:
    """A ``labels`` cell -> its label names, sorted, each once (an empty cell: none)."""
    return tuple(sorted({name.strip() for name in (cell or "").split(delimiter) if name.strip()}))


def multi_hot(label_sets, classes: list[str]) -> np.ndarray:
    """Label sets -> multi-hot rows (images x labels, uint8)."""
    index = {name: i for i, name in enumerate(classes)}
    out = np.zeros((len(label_sets), len(classes)), np.uint8)
    for row, labels in enumerate(label_sets):
        out[row, [index[name] for name in labels]] = 1
    return out


def read_classes(folder: Path = paths.SPLIT) -> list[str]:
    return json.loads(paths.classes_file(folder).read_text())


def sources(rows: list[Row]) -> tuple[list[Path], list[str]]:
    """The image files of ``rows`` and their decoders, as tlpipe.images takes them."""
    return [paths.RAW / r.path for r in rows], [r.decoder for r in rows]


def label_indices(rows: list[Row], classes: list[str]) -> np.ndarray:
    """Each row's class as an index into ``classes``; multi-label rows: their
    label sets as multi-hot rows (images x labels, uint8)."""
    if rows and rows[0].labels is not None:
        return multi_hot([r.labels for r in rows], classes)
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[r.label] for r in rows], dtype=np.int32)


def load_features(split: str, folder: Path = paths.FEATURES, dtype=np.float32,
                  columns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cached features (as ``dtype``; None: as stored, float16) and labels of
    one split; ``columns``: the first so many alone (the global average's of
    grid-pooled features)."""
    return load_stacked_features((split,), folder, dtype, columns)


def load_stacked_features(splits, folder: Path = paths.FEATURES, dtype=np.float32,
                          columns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``splits``' features, one after another in one new array, read a block
    of rows at a time (no second copy of any split beside it), and labels."""
    rows = FeatureRows(files=[paths.features_file(split, folder) for split in splits], columns=columns, dtype=dtype)
    x = np.empty(rows.shape, rows.dtype)
    for first, block in rows.blocks():
        x[first : first + len(block)] = block
    return x, load_labels(splits, folder)


def load_labels(splits, folder: Path = paths.FEATURES) -> np.ndarray:
    """``splits``' labels, one after another, as extract stored them beside the features."""
    return np.concatenate([np.load(paths.labels_file(split, folder)) for split in splits])


class FeatureRows:
    """Rows of features, a block at a time: an array held in memory (one
    block, the array itself), or .npy files on disk read one after another
    into one buffer, so that going over them costs the same memory whatever
    their number of rows. ``columns``: the first so many alone; ``dtype``:
    what the blocks hold (None: as stored)."""

    def __init__(self, array: np.ndarray | None = None, files=(), columns: int | None = None, dtype=np.float32):
        self.array = array if array is None or dtype is None else np.asarray(array, dtype)
        self.stored = [StoredRows(Path(f)) for f in files]
        if (array is None) == (not self.stored):
            raise ValueError("FeatureRows: one source, an array or files")
        source = self.array if array is not None else self.stored[0]
        n = len(self.array) if array is not None else sum(len(s) for s in self.stored)
        self.shape = (n, source.shape[1] if columns is None else columns)
        self.dtype = np.dtype(source.dtype if dtype is None else dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def first(self, columns: int) -> FeatureRows:
        """The same rows, their first ``columns`` alone (no copy)."""
        if self.array is not None:
            return FeatureRows(self.array[:, :columns], dtype=self.dtype)
        return FeatureRows(files=[s.path for s in self.stored], columns=columns, dtype=self.dtype)

    def blocks(self):
        """(first row, block of rows): a view into one buffer, valid until the
        next block is read."""
        if self.array is not None:
            yield 0, self.array[:, : self.shape[1]]
            return
        width = self.stored[0].shape[1]
        rows = max(1, FEATURE_BLOCK_BYTES // (self.dtype.itemsize * width))
        buffer, raw = np.empty((rows, width), self.dtype), None
        done = 0
        for part in self.stored:
            if part.dtype != self.dtype and (raw is None or raw.dtype != part.dtype):
                raw = np.empty((rows, width), part.dtype)
            for start in range(0, len(part), rows):
                m = min(rows, len(part) - start)
                if part.dtype == self.dtype:
                    part.read_into(start, buffer[:m])
                else:
                    buffer[:m] = part.read_into(start, raw[:m])
                yield done + start, buffer[:m, : self.shape[1]]
            done += len(part)


# A block of FeatureRows read from disk: large enough for fast products, small beside the features.
FEATURE_BLOCK_BYTES = 16 * 2**20


def read_features_meta(folder: Path = paths.FEATURES) -> dict:
    return json.loads(paths.features_meta(folder).read_text())


def read_prefix_meta(folder: Path = paths.PREFIX) -> dict:
    return json.loads(paths.prefix_meta(folder).read_text())


def load_prefix(split: str, folder: Path = paths.PREFIX) -> StoredRows:
    """The frozen prefix's outputs for one split (float16, split CSV order),
    left on disk: rows are read as they are indexed."""
    return StoredRows(paths.prefix_file(split, folder))


class StoredRows:
    """A C-ordered .npy array on disk whose rows are read when indexed, with
    ``pread`` into a new array. (A memory map reads the same bytes, but every
    page it touches stays mapped into the process and counts in its resident
    memory, so a stage's peak would grow with the data set; read this way, the
    pages stay in the kernel's page cache, shared and reclaimable.)"""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)
            self.offset = f.tell()
        if fortran_order or dtype.hasobject or not shape:
            raise ValueError(f"{path}: rows of a C-ordered numeric array expected, got shape {shape}, dtype {dtype}")
        self.path, self.shape, self.dtype = path, tuple(shape), dtype
        self.row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        """The rows at the integer indices ``rows`` (in that order); runs of
        consecutive rows are read at once, so reading in order is sequential."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"{self.path}: rows {rows.min()}..{rows.max()} asked of {len(self)}")
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        if not rows.size:
            return out
        flat = out.reshape(len(rows), self.row_bytes // self.dtype.itemsize).view(np.uint8)
        starts = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist(), len(rows)]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for first, end in zip(starts[:-1], starts[1:]):
                _read_exactly(fd, memoryview(flat[first:end]).cast("B"), self.offset + int(rows[first]) * self.row_bytes)
        finally:
            os.close(fd)
        return out

    def read_into(self, start: int, out: np.ndarray) -> np.ndarray:
        """Rows ``start`` .. ``start + len(out)`` into ``out`` (C-ordered, of
        this dtype), with no new array: a buffer read again and again."""
        if out.dtype != self.dtype or not out.flags.c_contiguous or out.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path}: a C-ordered {self.dtype} buffer of rows {self.shape[1:]} expected")
        if start < 0 or start + len(out) > len(self):
            raise IndexError(f"{self.path}: rows {start}..{start + len(out) - 1} asked of {len(self)}")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            _read_exactly(fd, memoryview(out.reshape(-1).view(np.uint8)), self.offset + start * self.row_bytes)
        finally:
            os.close(fd)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        everything = self[np.arange(len(self))]
        return everything if dtype is None else everything.astype(dtype)


def npy_header(rows: int, shape: tuple[int, ...], dtype=np.float16) -> bytes:
    """The .npy header of a C-ordered array of ``rows`` rows of ``shape``."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": (rows, *shape)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def npy_bytes(rows: int, shape: tuple[int, ...], dtype=np.float16) -> int:
    """The size of the .npy file of such an array."""
    return len(npy_header(rows, shape, dtype)) + rows * np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))


class RowWriter:
    """A new .npy file of ``rows`` rows of ``shape``, filled slice by slice
    (``writer[start:stop] = values``) with ``pwrite``: the bytes
    ``np.lib.format.open_memmap`` would write, without mapping the file, so
    the written pages do not count in the process's resident memory."""

    def __init__(self, path: Path, rows: int, shape: tuple[int, ...], dtype=np.float16, keep: bool = False):
        """``keep``: a file of this very shape already at ``path`` (an
        interrupted extract's) keeps the rows written so far."""
        self.path, self.dtype = path, np.dtype(dtype)
        self.shape = (rows, *shape)
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        header = npy_header(rows, shape, dtype)
        self.offset = len(header)
        if keep and path.is_file() and path.stat().st_size == npy_bytes(rows, shape, dtype):
            with open(path, "rb") as f:
                if f.read(len(header)) == header:
                    return
        with open(path, "wb") as f:
            f.write(header)
            f.truncate(self.offset + rows * self.row_bytes)  # unwritten rows read as zeros

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, rows: slice, values) -> None:
        start, stop, step = rows.indices(len(self))
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if step != 1 or values.shape != (stop - start, *self.shape[1:]):
            raise ValueError(f"{self.path}: rows {start}..{stop} of shape {self.shape[1:]} expected, got {values.shape}")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            buffer, offset = memoryview(values.reshape(-1).view(np.uint8)), self.offset + start * self.row_bytes
            while buffer.nbytes:
                written = os.pwrite(fd, buffer, offset)
                buffer, offset = buffer[written:], offset + written
        finally:
            os.close(fd)


def _read_exactly(fd: int, buffer: memoryview, offset: int) -> None:
    while buffer.nbytes:
        got = os.preadv(fd, [buffer], offset)
        if got == 0:
            raise EOFError(f"file descriptor {fd}: {buffer.nbytes} bytes short at offset {offset}")
        buffer, offset = buffer[got:], offset + got
