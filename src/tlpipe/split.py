"""split: data/raw/ -> data/split/{train,val,test}.csv, classes.json, rejected.csv,
images.sha256 (see image_hashes).

Rules (also in the README):

* Without split folders, each class is split by ``split.val_fraction`` and
  ``split.test_fraction``; the rest is train.
* With split folders (``train/``, ``validation/`` or ``val/``, ``test/``),
  what the source calls train stays train. A missing test split is carved from
  the validation folder (``split.test_from_val`` of it, per class); a missing
  validation split is carved from train (``split.val_fraction``).
* Or, with ``data.labels``, a CSV inside the source names each image's class
  (``file_name``, ``label``) and, optionally, its predefined split
  (``split``); unlisted images are ignored and counted (read_labels).
* Every file under a class folder belongs to that class, at any depth. Hidden
  files and folders are skipped silently; anything else that is not a
  decodable image goes to rejected.csv with the reason.
* ``data.corrections`` (a reviewed CSV: ``file_name``, ``label``; the label
  ``exclude`` drops the image) applies after the split is drawn, so corrected
  images keep their split and nothing else moves (read_corrections).
* Each class gets at least one image in every split, or the stage stops.
* Label hygiene: files with the same bytes are one image. Copies within a
  class keep the first path (the others are rejected as duplicates, so a copy
  can never sit in train and test at once); the same bytes under two classes
  are a label conflict and every copy is rejected. Class folders whose names
  differ only in case (``Cat/``, ``cat/``) stop the stage.
* Every JPEG/PNG that training decodes with TensorFlow is decoded here with
  TensorFlow too, so a file with corrupt data is rejected here, by name.

Shuffles are seeded by ``seed`` and the class name, so adding a class does
not reshuffle the others.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tlpipe import atomic, headline, multilabel, paths
from tlpipe.artifacts import MULTI_LABEL_COLUMNS, SPLIT_COLUMNS, SPLITS, Row, Task, csv_text, parse_labels, task_json
from tlpipe.errors import TlpipeError
from tlpipe.images import IMAGE_SUFFIXES, inspect, is_hidden, undecodable_by_tensorflow
from tlpipe.params import SplitParams

CANONICAL = paths.RAW_SPLIT_FOLDERS


@dataclass
class SplitResult:
    classes: list[str]
    rows: dict[str, list[Row]]
    rejected: list[tuple[str, str]]
    duplicates: int = 0  # copies dropped (same bytes, same class)
    label_conflicts: int = 0  # files rejected (same bytes, several classes)
    corrected: int = 0  # images whose class data.corrections changed
    excluded: int = 0  # images data.corrections dropped


@dataclass(frozen=True)
class Checked:
    """What split knows of one file after reading it."""

    ok: bool
    reason: str = ""
    decoder: str = ""
    sha256: str = ""
    perceptual_hash: int | None = None


def _files_under(folder: Path, raw: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                found.append(Path(dirpath, name).relative_to(raw))
    return found


def scan(raw: Path) -> tuple[dict[str, dict[str, list[Path]]], list[tuple[str, str]]]:
    """-> {source split or "": {class: [files]}}, plus stray files to reject."""
    if not raw.is_dir():
        raise TlpipeError(f"{raw} does not exist; run the fetch stage first (dvc repro fetch).")
    top = sorted(p for p in raw.iterdir() if not is_hidden(p.relative_to(raw)))
    dirs = [p for p in top if p.is_dir()]
    stray = [(p.relative_to(raw).as_posix(), "not inside a class folder") for p in top if p.is_file()]
    predefined = [d for d in dirs if d.name.lower() in CANONICAL]
    if predefined and len(predefined) != len(dirs):
        others = sorted(d.name for d in dirs if d not in predefined)
        raise TlpipeError(
            f"{raw} mixes split folders ({', '.join(d.name for d in predefined)}) with other "
            f"folders ({', '.join(others)}). Use either class folders only, or split folders "
            "(train/, validation/ or val/, test/) that each hold class folders."
        )
    groups = {d.name: d for d in predefined} if predefined else {"": raw}
    found: dict[str, dict[str, list[Path]]] = {}
    for group, folder in groups.items():
        key = CANONICAL[group.lower()] if group else ""
        if key in found:
            raise TlpipeError(f"{raw} has both 'validation/' and 'val/'; keep one of them.")
        classes = {}
        for entry in sorted(folder.iterdir()):
            rel = entry.relative_to(raw)
            if is_hidden(rel):
                continue
            if entry.is_dir():
                classes[entry.name] = _files_under(entry, raw)
            elif group:
                stray.append((rel.as_posix(), "not inside a class folder"))
        found[key] = classes
    return found, stray


# data.labels: the CSV's columns (Hugging Face's metadata.csv names) and the
# values its optional split column may take.
LABEL_COLUMNS = ("file_name", "label")
LABEL_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def read_labels(raw: Path, name: str) -> tuple[dict[str, dict[str, list[Path]]], list[tuple[str, str]], int]:
    """data.labels: a CSV inside the source (``file_name`` relative to its root,
    ``label``, optional ``split``) -> the same {source split or "": {class:
    [files]}} as scan, the rows to reject, and how many images it does not list."""
    csv_path = raw / name
    if not csv_path.is_file():
        raise TlpipeError(f"data.labels names {name!r}, which is not in the source ({csv_path} does not exist); "
                          "it must be the path of a CSV inside data.source, e.g. labels.csv.")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in LABEL_COLUMNS if c not in columns]
        if missing:
            raise TlpipeError(f"{name} must have a header row with the columns file_name and label (one class per "
                              "image) or file_name and labels (multi-label), and optionally split; its header is "
                              f"{', '.join(columns) or '(empty)'}.")
        rows = list(reader)

    def label_of(row, where):
        label = (row["label"] or "").strip()
        if not label:
            raise TlpipeError(f"{where} needs both a file_name and a label; it has {row['file_name']!r}, "
                              f"{row['label']!r}.")
        return label

    kept, rejected, unlisted = _listing(raw, name, rows, "split" in columns, label_of)
    found: dict[str, dict[str, list[Path]]] = {}
    for file_name, (group, label) in kept.items():
        found.setdefault(group, {}).setdefault(label, []).append(Path(file_name))
    return found, rejected, unlisted


def _listing(raw: Path, name: str, rows: list[dict], has_split: bool, label_of):
    """data.labels' rows -> ({file: (source split or "", its label)} of the
    files listed consistently and present, (file, reason) for the rest, how
    many images of the source it does not list). ``label_of(row, where)``:
    the row's label (a class, or a set of label names), checked."""
    listed: dict[str, tuple] = {}  # file -> (group, label, row number)
    conflicting = set()
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        file_name = (row["file_name"] or "").strip().removeprefix("./")
        where = f"{name} row {number}"
        if not file_name:
            raise TlpipeError(f"{where} needs a file_name; it has {row['file_name']!r}.")
        if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
            raise TlpipeError(f"{where}: file_name {file_name!r} must be relative to the source's root, "
                              "inside it (no leading / and no ..).")
        group = ""
        if has_split:
            value = (row["split"] or "").strip().lower()
            if value not in LABEL_SPLITS:
                raise TlpipeError(f"{where}: split {row['split']!r} must be one of train, validation, test.")
            group = LABEL_SPLITS[value]
        label = label_of(row, where)
        if file_name in listed and listed[file_name][:2] != (group, label):
            conflicting.add(file_name)
        listed.setdefault(file_name, (group, label, number))
    kept, rejected = {}, []
    for file_name, (group, label, number) in sorted(listed.items()):
        if file_name in conflicting:
            rejected.append((file_name, f"listed in {name} more than once, with different labels or splits"))
        elif not (raw / file_name).is_file():
            rejected.append((file_name, f"listed in {name} (row {number}) but not in the source"))
        else:
            kept[file_name] = (group, label)
    images = [f for f in _files_under(raw, raw) if f.suffix.lower() in IMAGE_SUFFIXES and f.as_posix() != name]
    return kept, rejected, sum(f.as_posix() not in listed for f in images)


def label_columns(raw: Path, name: str) -> list[str]:
    """The header of data.labels' CSV (to tell one label per image from label sets)."""
    csv_path = raw / name
    if not csv_path.is_file():
        return []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def read_label_sets(raw: Path, name: str, delimiter: str) -> tuple[dict[str, tuple[str, tuple[str, ...]]],
                                                                   list[tuple[str, str]], int]:
    """data.labels with a ``labels`` column (multi-label): -> ({file: (source
    split or "", label names)}, the rows to reject, how many images it does
    not list). An empty cell is an image that shows none of the labels."""
    with open(raw / name, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "label" in columns:
            raise TlpipeError(f"{name} has both a label and a labels column: keep label (one class per image) or "
                              "labels (the label names of each image, multi-label).")
        if "file_name" not in columns:
            raise TlpipeError(f"{name} must have a header row with the columns file_name and labels (and optionally "
                              f"split); its header is {', '.join(columns)}.")
        rows = list(reader)

    def label_of(row, where):
        labels = parse_labels(row["labels"], delimiter)
        if EXCLUDE in labels:
            raise TlpipeError(f"{where}: {EXCLUDE!r} cannot be a label name (data.corrections uses it to drop an image).")
        return labels

    found, rejected, unlisted = _listing(raw, name, rows, "split" in columns, label_of)
    multilabel.check_delimiter({f: labels for f, (_, labels) in found.items()}, delimiter, name)
    return found, rejected, unlisted


# data.corrections: a reviewed CSV (file_name, label) in the repo; this label drops the image.
EXCLUDE = "exclude"


def read_corrections(path: Path, found, delimiter: str | None = None) -> dict[str, str | None]:
    """data.corrections -> {file_name: corrected class, or None to exclude it}.

    ``file_name`` is as in data/split/*.csv and plots/audit/label_issues.csv
    (relative to data/raw); other columns are ignored, so rows copied from the
    audit keep their notes. Multi-label (``delimiter`` given; ``found``:
    {file: (split, label names)}): the label cell is the image's whole
    corrected label set, its names joined by ``delimiter``."""
    if not path.is_file():
        raise TlpipeError(f"data.corrections names {str(path)!r}, which does not exist: it must be a CSV in the "
                          f"repository with the header file_name,label ({paths.CORRECTIONS} with only that "
                          "header means no corrections).")
    if delimiter is not None:
        known = set(found)
        class_names = sorted({name for _, labels in found.values() for name in labels})
    else:
        known = {rel.as_posix() for classes in found.values() for files in classes.values() for rel in files}
        class_names = sorted({label for classes in found.values() for label in classes})
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if any(c not in columns for c in LABEL_COLUMNS):
            raise TlpipeError(f"{path} must have a header row with the columns file_name and label; its header "
                              f"is {', '.join(columns) or '(empty)'}.")
        rows = list(reader)
    corrections: dict[str, str | None] = {}
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        file_name = (row["file_name"] or "").strip().removeprefix("./")
        label = (row["label"] or "").strip()
        where = f"{path} row {number}"
        if file_name not in known:
            raise TlpipeError(f"{where}: file_name {file_name!r} is not an image of the source; use the names "
                              "in data/split/*.csv or plots/audit/label_issues.csv (relative to data/raw).")
        if delimiter is not None and label != EXCLUDE:
            unknown = [n for n in parse_labels(label, delimiter) if n not in class_names]
            if unknown:
                raise TlpipeError(f"{where}: label {unknown[0]!r} must be a label ({', '.join(class_names)}); the "
                                  f"cell holds the image's label names joined by {delimiter!r}, or {EXCLUDE!r} to "
                                  "drop the image.")
            label = delimiter.join(parse_labels(label, delimiter))
        elif label != EXCLUDE and label not in class_names:
            raise TlpipeError(f"{where}: label {label!r} must be a class ({', '.join(class_names)}) or "
                              f"{EXCLUDE!r} to drop the image.")
        value = None if label == EXCLUDE else label
        if corrections.get(file_name, value) != value:
            raise TlpipeError(f"{where}: {file_name!r} is corrected twice, to {corrections[file_name] or EXCLUDE!r} "
                              f"and to {label!r}; keep one row.")
        corrections[file_name] = value
    return corrections


def _take(n: int, fraction: float, what: str, label: str, total_needed: int) -> int:
    k = max(1, round(n * fraction))
    if n - k < 1 or n < total_needed:
        raise TlpipeError(
            f"Class '{label}' has {n} valid images, too few to give {what} at least one image "
            f"and keep the rest (fraction {fraction}). Add images or remove the class."
        )
    return k


def same_bytes(found, checked: dict[str, Checked], corrections=None) -> tuple[dict[str, str], int, int]:
    """Files to reject for carrying the same bytes as another (by their corrected
    labels; an excluded file takes no part): -> ({path: reason}, duplicates
    dropped, label conflicts)."""
    corrections = corrections or {}
    label_of = {rel.as_posix(): corrections.get(rel.as_posix(), label)
                for classes in found.values() for label, fs in classes.items() for rel in fs}
    label_of = {path: label for path, label in label_of.items() if label is not None}

    def conflict(p, copies):
        labels, others = sorted({label_of[q] for q in copies}), ", ".join(q for q in copies if q != p)
        return f"label conflict: the same bytes are in classes {', '.join(labels)} ({others})"

    return copies_by_bytes(label_of, checked, conflict)


def copies_by_bytes(label_of: dict, checked: dict[str, Checked], conflict) -> tuple[dict[str, str], int, int]:
    """Files with the same bytes: the same label (or label set) keeps the first
    path, the others are duplicates; other labels reject every copy, with the
    reason ``conflict(path, copies)`` words. -> ({path: reason}, duplicates
    dropped, label conflicts)."""
    by_hash: dict[str, list[str]] = {}
    for path in sorted(label_of):
        if checked[path].ok:
            by_hash.setdefault(checked[path].sha256, []).append(path)
    reasons, duplicates, conflicts = {}, 0, 0
    for copies in by_hash.values():
        if len(copies) < 2:
            continue
        if len({label_of[p] for p in copies}) > 1:
            for p in copies:
                reasons[p] = conflict(p, copies)
            conflicts += len(copies)
        else:
            for p in copies[1:]:
                reasons[p] = f"duplicate of {copies[0]} (same bytes)"
            duplicates += len(copies) - 1
    return reasons, duplicates, conflicts


def _check_class_names(found) -> None:
    names = sorted({label for classes in found.values() for label in classes})
    by_folded: dict[str, list[str]] = {}
    for name in names:
        by_folded.setdefault(name.casefold(), []).append(name)
    for variants in by_folded.values():
        if len(variants) > 1:
            raise TlpipeError(
                f"Class folders {', '.join(repr(v) for v in variants)} in {paths.RAW} differ only in case: "
                "one class or several? Rename or merge them so that each class has one folder name."
            )


def assign(found, checked: dict[str, Checked], params: SplitParams, seed: int, corrections=None) -> SplitResult:
    """Pure split logic over scanned files and what reading them found: label
    hygiene, then each class drawn into train/val/test, then corrections.

    ``corrections`` ({path: class, or None to exclude}) apply after the split
    is drawn: a corrected image stays in its split and no other image moves,
    so a metrics diff shows the corrections, not a reshuffle."""
    corrections = corrections or {}
    _check_class_names(found)
    same, duplicates, conflicts = same_bytes(found, checked, corrections)
    pools, rejected = _pools(found, checked, same)
    class_names = _check_classes(found, pools)
    out: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for label in class_names:
        for name, rows in _draw(label, pools, found, params, seed).items():
            out[name] += rows
    out, corrected, excluded = _apply_corrections(out, corrections, class_names)
    for name in SPLITS:
        out[name].sort(key=lambda r: r.path)
    return SplitResult(class_names, out, sorted(rejected), duplicates, conflicts, corrected, excluded)


def assign_sets(found: dict[str, tuple[str, tuple[str, ...]]], checked: dict[str, Checked], params: SplitParams,
                seed: int, delimiter: str, corrections=None) -> SplitResult:
    """``assign`` for label sets (multi-label): the same hygiene (same bytes,
    same label set: one image; different sets: a label conflict), then the
    source's own split where it has one and the rest carved by iterative
    stratification (multilabel.stratify), then corrections. Every label
    needs an image in every split, or the stage stops naming it."""
    corrections = corrections or {}
    label_of = {f: parse_labels(corrections[f], delimiter) if corrections.get(f) else labels
                for f, (_, labels) in found.items() if not (f in corrections and corrections[f] is None)}
    def conflict(p, copies):
        others = ", ".join(f"{q} ({' '.join(label_of[q]) or 'no label'})" for q in copies if q != p)
        return f"label conflict: the same bytes have other labels in {others}"

    same, duplicates, conflicts = copies_by_bytes(label_of, checked, conflict)
    pools: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    rejected = []
    for f, (group, labels) in sorted(found.items()):
        if not checked[f].ok or f in same:
            rejected.append((f, checked[f].reason or same[f]))
        else:
            pools.setdefault(group, []).append((f, labels))
    drawn = _draw_sets(pools, params, seed)
    class_names = sorted({name for _, labels in found.values() for name in labels})
    if len(class_names) < 2:
        raise TlpipeError(f"Found {len(class_names)} label name(s) ({', '.join(class_names) or 'none'}) in the "
                          "labels column; a multi-label classifier needs at least two.")
    out, corrected, excluded = {}, 0, 0
    for name in SPLITS:
        out[name] = []
        for f, labels in drawn[name]:
            if f in corrections:
                if corrections[f] is None:
                    excluded += 1
                    continue
                fixed = parse_labels(corrections[f], delimiter)
                corrected += fixed != labels
                labels = fixed
            out[name].append(Row(f, delimiter.join(labels), checked[f].decoder, labels))
        out[name].sort(key=lambda r: r.path)
    _check_every_label_everywhere(out, class_names, bool(corrections))
    return SplitResult(class_names, out, sorted(rejected), duplicates, conflicts, corrected, excluded)


def _draw_sets(pools, params: SplitParams, seed: int) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """train/val/test of label sets: the source's own split where it has one,
    what it lacks carved as _draw does for classes, stratified over the labels."""
    def carve(items, share: float, what: str):
        keys = multilabel.stratify(items, {"taken": share, "kept": 1 - share}, f"{seed}:{what}")
        taken = set(keys["taken"])
        return [i for i in items if i[0] in taken], [i for i in items if i[0] not in taken]

    if "" in pools:
        items = pools[""]
        fractions = {"train": 1 - params.val_fraction - params.test_fraction, "val": params.val_fraction,
                     "test": params.test_fraction}
        keys = multilabel.stratify(items, fractions, f"{seed}:all")
        by_key = dict(items)
        return {name: [(k, by_key[k]) for k in keys[name]] for name in SPLITS}
    train, val, test = pools.get("train", []), pools.get("val", []), pools.get("test", [])
    if "test" not in pools and val:
        test, val = carve(val, params.test_from_val, "test")
    elif "test" not in pools:
        test, train = carve(train, params.test_fraction, "test")
    if "val" not in pools:
        val, train = carve(train, params.val_fraction, "val")
    return {"train": train, "val": val, "test": test}


def _check_every_label_everywhere(out: dict[str, list[Row]], class_names: list[str], corrected: bool) -> None:
    counts = {name: Counter(label for r in out[name] for label in r.labels) for name in SPLITS}
    for label in class_names:
        missing = [name for name in SPLITS if not counts[name][label]]
        if missing:
            have = ", ".join(f"{name} {counts[name][label]}" for name in SPLITS)
            after = " after data.corrections" if corrected else ""
            raise TlpipeError(
                f"Label '{label}' has no image in the {' and '.join(missing)} split{'s' * (len(missing) > 1)}"
                f"{after} ({have}): every label needs images in every split (train to learn it, val to choose "
                "its threshold, test to score it). Add images of it, or drop the label from the labels column.")


def _pools(found, checked: dict[str, Checked], same: dict[str, str]):
    """The valid, non-duplicate images as {source split or "": {class: rows}},
    and (path, reason) for the rest."""
    pools: dict[str, dict[str, list[Row]]] = {}
    rejected = []
    for group, classes in found.items():
        for label, files in classes.items():
            for rel in files:
                c = checked[rel.as_posix()]
                if c.ok and rel.as_posix() not in same:
                    pools.setdefault(group, {}).setdefault(label, []).append(Row(rel.as_posix(), label, c.decoder))
                else:
                    rejected.append((rel.as_posix(), c.reason or same[rel.as_posix()]))
    return pools, rejected


def _check_classes(found, pools) -> list[str]:
    """The class names, once every class has a valid image and there are two."""
    class_names = sorted({label for classes in found.values() for label in classes})
    for label in class_names:
        if not any(label in pool for pool in pools.values()):
            raise TlpipeError(
                f"Class folder '{label}' has no valid image (see {paths.REJECTED} after a rerun, or "
                "the files' formats). Add images or remove the folder."
            )
    if len(class_names) < 2:
        raise TlpipeError(
            f"Found a single class ({', '.join(class_names) or 'none'}); a classifier needs at least "
            "two class folders, each holding that class's images."
        )
    return class_names


def _draw(label: str, pools, found, params: SplitParams, seed: int) -> dict[str, list[Row]]:
    """One class's train/val/test: the source's own split where it has one,
    the rest carved by the fractions from a shuffle seeded by seed and class."""

    def shuffled(rows: list[Row], what: str) -> list[Row]:
        rows = sorted(rows, key=lambda r: r.path)
        random.Random(f"{seed}:{what}:{label}").shuffle(rows)
        return rows

    if "" in pools or "" in found:  # no split folders: all three carved from one pool
        rows = shuffled(pools.get("", {}).get(label, []), "all")
        n = len(rows)
        n_test = _take(n, params.test_fraction, "the test split", label, 3)
        n_val = _take(n - n_test, params.val_fraction / (1 - params.test_fraction), "the val split", label, 2)
        return {"train": rows[n_test + n_val :], "val": rows[n_test : n_test + n_val], "test": rows[:n_test]}
    train = pools.get("train", {}).get(label, [])
    val = pools.get("val", {}).get(label, [])
    test = pools.get("test", {}).get(label, [])
    if "test" not in found and "val" in found:
        val = shuffled(val, "val")
        k = _take(len(val), params.test_from_val, "the test split (from validation/)", label, 2)
        test, val = val[:k], val[k:]
    elif "test" not in found:
        train = shuffled(train, "test")
        k = _take(len(train), params.test_fraction, "the test split (from train/)", label, 3)
        test, train = train[:k], train[k:]
    if "val" not in found:
        train = shuffled(train, "val")
        k = _take(len(train), params.val_fraction, "the val split (from train/)", label, 2)
        val, train = train[:k], train[k:]
    drawn = {"train": train, "val": val, "test": test}
    for name, rows in drawn.items():
        if not rows:
            raise TlpipeError(
                f"Class '{label}' has no valid image in the {name} split of {paths.RAW}. "
                "Every class needs images in every split."
            )
    return drawn


def _apply_corrections(out: dict[str, list[Row]], corrections, class_names) -> tuple[dict[str, list[Row]], int, int]:
    corrected = excluded = 0
    if not corrections:
        return out, 0, 0
    fixed: dict[str, list[Row]] = {}
    for name, rows in out.items():
        fixed[name] = []
        for row in rows:
            if row.path not in corrections:
                fixed[name].append(row)
            elif corrections[row.path] is None:
                excluded += 1
            else:
                corrected += corrections[row.path] != row.label
                fixed[name].append(Row(row.path, corrections[row.path], row.decoder))
        for label in class_names:
            if not any(r.label == label for r in fixed[name]):
                raise TlpipeError(f"After data.corrections, class '{label}' has no image in the {name} split. "
                                  "Every class needs images in every split: correct fewer of its images, or "
                                  "exclude the class's folder from the source.")
    return fixed, corrected, excluded


def inspect_all(raw: Path, files: list[Path]) -> dict[str, Checked]:
    """Decode every file as training will (Pillow, then TensorFlow's decoder for
    the files it will decode) and hash its bytes."""
    from tqdm import tqdm

    def one(rel: Path):
        result = inspect(raw / rel)
        digest = hashlib.sha256((raw / rel).read_bytes()).hexdigest() if result.ok else ""
        return rel.as_posix(), Checked(result.ok, result.reason, result.decoder, digest, result.perceptual_hash)

    workers = min(8, (os.cpu_count() or 1) * 2)  # Pillow releases the GIL while decoding
    with ThreadPoolExecutor(workers) as pool:
        results = list(
            tqdm(pool.map(one, files), total=len(files), desc="split: decoding", unit="img", mininterval=1)
        )
    checked = dict(results)
    tf_files = [path for path, c in checked.items() if c.ok and c.decoder == "tf"]
    for path, message in undecodable_by_tensorflow([raw / p for p in tf_files]).items():
        checked[Path(path).relative_to(raw).as_posix()] = Checked(False, f"cannot decode with TensorFlow: {message}")
    return checked


def image_hashes(rows: dict[str, list[Row]], checked: dict[str, Checked]) -> str:
    """data/split/images.sha256: every image of the splits and the SHA-256 of
    its bytes, in sha256sum's format (``cd data/raw && sha256sum -c``): an image
    whose bytes change changes data/split, so the stages after split rerun."""

    def line(path: str) -> str:
        if not any(c in path for c in "\\\n\r"):
            return f"{checked[path].sha256}  {path}\n"
        # sha256sum's escaped form: a leading backslash, then \\, \n and \r in the name
        escaped = path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{checked[path].sha256}  {escaped}\n"

    return "".join(line(path) for path in sorted(r.path for split in rows.values() for r in split))


def perceptual_hashes(rows: dict[str, list[Row]], checked: dict[str, Checked]) -> str:
    """data/split/perceptual_hashes.csv: every image of the splits (that had
    one) and its perceptual hash, 16 hex digits."""
    listed = sorted(r.path for split in rows.values() for r in split)
    return csv_text(("path", "perceptual_hash"), [(p, f"{checked[p].perceptual_hash:016x}") for p in listed
                                                  if checked[p].perceptual_hash is not None])


def _rejected_at_fetch(raw: Path) -> list[tuple[str, str]]:
    """What fetch could not copy from a folder source (dangling links)."""
    listed = raw / paths.FETCH_REJECTED.name
    if not listed.is_file():
        return []
    with open(listed, newline="") as f:
        return [(r["path"], r["reason"]) for r in csv.DictReader(f)]


def run(params: SplitParams, seed: int, raw: Path = paths.RAW, labels: str | None = None,
        corrections: Path | None = None, delimiter: str = " ") -> SplitResult:
    """data/raw -> data/split (+ reports/data.json, metrics/data.json); reads ``split.*``, ``seed``,
    ``data.labels`` (None: the class is the folder; a CSV with a ``labels``
    column: multi-label), ``data.label_delimiter`` and ``data.corrections``
    (None: no corrections)."""
    unlisted = None
    task = Task()
    if labels is not None and "labels" in label_columns(raw, labels):
        task = Task(multi_label=True, delimiter=delimiter)
        sets, stray, unlisted = read_label_sets(raw, labels, delimiter)
        fixes = read_corrections(Path(corrections), sets, delimiter) if corrections is not None else {}
        checked = inspect_all(raw, [Path(f) for f in sets])
        result = assign_sets(sets, checked, params, seed, delimiter, fixes)
    else:
        if labels is None:
            found, stray = scan(raw)
        else:
            found, stray, unlisted = read_labels(raw, labels)
        fixes = read_corrections(Path(corrections), found) if corrections is not None else {}
        files = [f for classes in found.values() for fs in classes.values() for f in fs]
        checked = inspect_all(raw, files)
        result = assign(found, checked, params, seed, fixes)
    result.rejected = sorted(result.rejected + stray + _rejected_at_fetch(raw))
    with atomic.atomic_dir(paths.SPLIT) as tmp:
        for name in SPLITS:
            rows = [(r.path, r.label, r.decoder) for r in result.rows[name]]
            columns = MULTI_LABEL_COLUMNS if task.multi_label else SPLIT_COLUMNS
            paths.split_csv(name, tmp).write_text(csv_text(columns, rows))
        if task.multi_label:  # its absence means one label per image: single-label splits stay as they were
            paths.task_file(tmp).write_text(task_json(task))
        paths.classes_file(tmp).write_text(json.dumps(result.classes, indent=2) + "\n")
        paths.rejected_file(tmp).write_text(csv_text(("path", "reason"), result.rejected))
        paths.image_hashes_file(tmp).write_text(image_hashes(result.rows, checked))
        paths.perceptual_hashes_file(tmp).write_text(perceptual_hashes(result.rows, checked))
    counts = {
        name: dict(sorted(Counter(label for r in result.rows[name] for label in (r.labels if task.multi_label
                                                                                  else (r.label,))).items()))
        for name in SPLITS
    }
    headline.write(
        "data",
        {
            "classes": len(result.classes),
            **({"multi_label": True,
                "without_labels": {n: sum(not r.labels for r in result.rows[n]) for n in SPLITS}}
               if task.multi_label else {}),
            "images": {name: len(result.rows[name]) for name in SPLITS},
            "per_class": counts,
            "rejected": len(result.rejected),
            "duplicates": result.duplicates,
            "label_conflicts": result.label_conflicts,
            "corrected": result.corrected,
            "excluded": result.excluded,
            **({"unlisted": unlisted} if unlisted is not None else {}),
        },
    )
    summary = ", ".join(f"{name} {len(result.rows[name])}" for name in SPLITS)
    kind = "labels (multi-label)" if task.multi_label else "classes"
    print(f"split: {len(result.classes)} {kind}; {summary}; rejected {len(result.rejected)} "
          f"({result.duplicates} duplicates, {result.label_conflicts} in label conflicts; see {paths.REJECTED})")
    if fixes:
        print(f"split: {corrections}: {result.corrected} images relabelled, {result.excluded} excluded")
    if unlisted:
        print(f"split: {unlisted} images in the source are not listed in {labels}: ignored")
    for path, reason in result.rejected[:10]:
        print(f"split: rejected {path}: {reason}")
    return result
