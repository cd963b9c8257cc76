"""audit: what is wrong with the data, from the cached features, in seconds ->
plots/audit/, reports/audit.json, metrics/audit.json.

* **Duplicates and leaks.** Exact copies (same bytes) were already taken out by
  the split stage (``rejected.csv``); they are listed again here beside the
  near-duplicates: pairs of images whose cached backbone features have a cosine
  similarity of at least ``audit.near_duplicate_similarity`` (resized,
  re-encoded, re-cropped copies). ``auto`` fits that threshold to the backbone
  and the data: extract makes such copies of a sample of train images, and the
  threshold is what finds 95 % of them (calibrated_similarity). A pair across splits means the test (or val)
  score is optimistic; a pair across classes means a label is wrong or the
  classes overlap.
* **Likely label errors.** Out-of-fold predicted probabilities (``audit.folds``
  folds, a linear softmax classifier on the same features: the head's family)
  for every image of every split, ranked by cleanlab's confident learning: the
  images whose given label the model finds least likely come first.
  Multi-label: one logistic regression per label, and cleanlab's multi-label
  confident learning flags each suspicious (image, label) on its own.

Nothing here feeds a choice: the report is for people to look at.
"""

from __future__ import annotations

import csv
from typing import NamedTuple

import numpy as np

from tlpipe import atomic, headline, paths
from tlpipe.artifacts import (SPLITS, Row, csv_text, load_features, read_classes, read_features_meta, read_split,
                              read_task)
from tlpipe.blas import BlasThreads
from tlpipe.similarity import TILE_ROWS, normalised
from tlpipe.params import AuditParams

# A backbone that cannot tell images apart (random weights) makes every pair
# "near": list at most this many, the closest first.
MAX_PAIRS = 10_000


class NearPairs(NamedTuple):
    pairs: list[tuple[int, int, float]]  # the MAX_PAIRS closest (i, j, cosine similarity), i < j, closest first
    total: int  # how many pairs are near in all
    across: dict[str, int]  # per grouping: how many of all the near pairs straddle two groups


def near_duplicates(x: np.ndarray, threshold: float, block: int | None = None,
                    groups: dict[str, np.ndarray] | None = None) -> NearPairs:
    """The pairs of rows of ``x`` whose cosine similarity is at or above
    ``threshold``: the MAX_PAIRS closest listed, all of them counted, and per
    array of ``groups`` (one code per row: its split, its label) how many of
    them straddle two codes, counted over every near pair, not only the listed.

    Square tiles of ``block`` rows against ``block`` rows (default:
    similarity.TILE_ROWS), each side normalised as it is read, the tiles below
    the diagonal skipped. Near pairs are counted in place; only those that can
    still be among the MAX_PAIRS closest leave a tile as indices, so memory
    stays a tile's however many images and pairs there are (a backbone that
    cannot tell images apart makes every pair near)."""
    block = block or TILE_ROWS
    groups = groups or {}
    closest, across = _ClosestPairs(), dict.fromkeys(groups, 0)
    for start in range(0, len(x), block):
        rows = normalised(x[start : start + block])
        for col in range(start, len(x), block):
            cols = rows if col == start else normalised(x[col : col + block])
            sims = rows @ cols.T
            near = sims >= threshold
            if col == start:
                near = np.triu(near, k=1)  # each pair once, i < j
            if not closest.add(sims, near, start, col):
                continue  # no near pair here: the usual tile
            for name, codes in groups.items():
                straddles = codes[start : start + block, None] != codes[None, col : col + block]
                across[name] += int(np.count_nonzero(near & straddles))
    return NearPairs(closest.pairs(), closest.total, across)


def _closest_of_tile(sims: np.ndarray, near: np.ndarray, count: int) -> np.ndarray:
    """Of a tile's ``count`` near pairs, the MAX_PAIRS closest (ties taken in
    index order, as the final list takes them): a tile where every pair is
    equally near (a backbone that cannot tell images apart) keeps MAX_PAIRS
    of them, not millions."""
    values = sims[near]
    bar = np.partition(values, count - MAX_PAIRS)[count - MAX_PAIRS]
    del values
    closer = near & (sims > bar)
    ties = near & (sims == bar)
    ties_wanted = MAX_PAIRS - int(np.count_nonzero(closer))
    ties_to_row = np.cumsum(np.count_nonzero(ties, axis=1))
    last = int(np.searchsorted(ties_to_row, ties_wanted))  # the row where enough ties are in
    if last < len(ties):
        in_last_row = ties_wanted - (int(ties_to_row[last - 1]) if last else 0)
        row_ties = np.flatnonzero(ties[last])
        ties[last, row_ties[in_last_row:]] = False
        ties[last + 1 :] = False
    return closer | ties


class _ClosestPairs:
    """The MAX_PAIRS closest near pairs seen so far, and how many near pairs in all."""

    def __init__(self):
        self.i, self.j, self.s = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        self.total = 0

    def add(self, sims: np.ndarray, near: np.ndarray, row0: int, col0: int) -> int:
        """Count a tile's near pairs and keep those that may be among the closest; -> the count."""
        count = int(np.count_nonzero(near))
        self.total += count
        if count > MAX_PAIRS:
            near = _closest_of_tile(sims, near, count)
        rows, cols = np.nonzero(near)
        self.i, self.j = np.concatenate([self.i, rows + row0]), np.concatenate([self.j, cols + col0])
        self.s = np.concatenate([self.s, sims[rows, cols]])
        if len(self.s) > MAX_PAIRS:
            keep = self._order()[:MAX_PAIRS]
            self.i, self.j, self.s = self.i[keep], self.j[keep], self.s[keep]
        return count

    def _order(self) -> np.ndarray:
        return np.lexsort((self.j, self.i, -self.s))  # closest first, then by index

    def pairs(self) -> list[tuple[int, int, float]]:
        return [(int(self.i[k]), int(self.j[k]), float(self.s[k])) for k in self._order()]


# The share of the calibration copies that the auto threshold must find.
COPY_RECALL = 0.95
# near_duplicate_similarity: auto with no near-copies to calibrate on (no train images).
FALLBACK_SIMILARITY = 0.97


def calibrated_similarity(x_train: np.ndarray, copies: np.ndarray, copies_of: np.ndarray) -> tuple[float, dict]:
    """The near-duplicate threshold that fits this backbone and these images:
    low enough to find COPY_RECALL of the near-copies extract made of a sample
    of train images (resized, re-encoded, cropped), and above all but the
    closest 0.1 % of pairs of distinct images in that sample, so that a
    backbone that cannot tell copies apart does not flood the audit."""
    copy_sims = (normalised(x_train[copies_of]) * normalised(copies)).sum(axis=1)
    sample = normalised(x_train[np.unique(copies_of)])
    distinct = (sample @ sample.T)[np.triu_indices(len(sample), k=1)]
    finds = float(np.quantile(copy_sims, 1 - COPY_RECALL, method="lower"))
    apart = float(np.quantile(distinct, 0.999, method="higher")) if len(distinct) else -1.0
    threshold = round(max(finds, apart), 4)
    return threshold, {
        "copies": len(copy_sims),
        "copy_similarity_min": round(float(copy_sims.min()), 4),
        "copy_similarity_median": round(float(np.median(copy_sims)), 4),
        "copies_found": round(float(np.mean(copy_sims >= threshold)), 4),
        "distinct_pairs_above": int((distinct >= threshold).sum()),
        "distinct_pairs": len(distinct),
    }


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int) -> np.ndarray:
    """Each image's class probabilities from a classifier that never saw it
    (a standardised linear softmax classifier per fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(y, minlength=n_classes).min())
    splitter = StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)
    probs = np.zeros((len(y), n_classes))
    for fit_idx, held_idx in splitter.split(np.zeros((len(y), 1)), y):
        scaler = _standard_scaler(x, fit_idx)
        model = LogisticRegression(max_iter=2000, C=0.1)
        with BlasThreads():  # lbfgs on one BLAS thread: 0.4x the time on two cores
            model.fit(scaler.transform(_float32_rows(x, fit_idx), copy=False), y[fit_idx])
        probs[np.ix_(held_idx, model.classes_)] = model.predict_proba(
            scaler.transform(_float32_rows(x, held_idx), copy=False))
    return probs


# Rows per chunk where a fold's statistics are gathered: a chunk's float64
# copies, not the fold's, are what that costs.
CHUNK_ROWS = 4096


def _standard_scaler(x: np.ndarray, rows: np.ndarray):
    """A StandardScaler fitted to ``x[rows]`` a chunk at a time."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    for start in range(0, len(rows), CHUNK_ROWS):
        scaler.partial_fit(_float32_rows(x, rows[start : start + CHUNK_ROWS]))
    return scaler


def _float32_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` as float32, in one new array (no float16 copy beside it)."""
    out = np.empty((len(rows), x.shape[1]), np.float32)
    for start in range(0, len(rows), CHUNK_ROWS):
        out[start : start + CHUNK_ROWS] = x[rows[start : start + CHUNK_ROWS]]
    return out


def out_of_fold_label_probabilities(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Multi-label ``out_of_fold_probabilities``: each label's probability from
    a standardised logistic regression per label that never saw the image."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    smallest = int(min(y.sum(axis=0).min(), (1 - y).sum(axis=0).min()))
    splitter = KFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)
    probs = np.zeros(y.shape)
    for fit_idx, held_idx in splitter.split(np.zeros((len(y), 1))):
        scaler = _standard_scaler(x, fit_idx)
        fit_x, held_x = (scaler.transform(_float32_rows(x, rows), copy=False) for rows in (fit_idx, held_idx))
        for j in range(y.shape[1]):
            if len(np.unique(y[fit_idx, j])) < 2:  # a fold without a yes (or a no): the label's share
                probs[held_idx, j] = y[fit_idx, j].mean()
                continue
            model = LogisticRegression(max_iter=2000, C=0.1)
            with BlasThreads():
                model.fit(fit_x, y[fit_idx, j])
            probs[held_idx, j] = model.predict_proba(held_x)[:, 1]
    return probs


def label_set_issues(y: np.ndarray, probs: np.ndarray) -> list[tuple[int, int, float]]:
    """Multi-label: likely annotation errors per (image, label), by cleanlab's
    confident learning for multi-label data -> (image, label, label quality),
    most suspicious first."""
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class
    from cleanlab.multilabel_classification.rank import get_label_quality_scores_per_class

    given = [list(np.flatnonzero(row)) for row in y]
    flagged = find_multilabel_issues_per_class(given, probs)
    quality = get_label_quality_scores_per_class(given, probs)
    found = [(int(i), int(j), float(quality[i, j])) for i, j in zip(*np.nonzero(flagged))]
    return sorted(found, key=lambda t: (t[2], t[0], t[1]))


def label_issues(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of likely label errors, most suspicious first; every image's
    label quality in [0, 1], low = likely wrong), by cleanlab."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    return np.asarray(ranked, dtype=int), get_label_quality_scores(y, probs, method="self_confidence")




# Two images whose perceptual hashes (tlpipe.images.perceptual_hash) are at most
# this many bits of 64 apart are near-copies. Measured on 300 cats-vs-dogs
# photos as split hashes them: their half- and quarter-size re-encoded copies
# moved 6 bits at most (99 % within 4), while no two distinct photos of the
# whole set came closer than 10 (imagededup's default, 10, flagged four such
# pairs). A copy cropped by a tenth moves about 10: the features find those.
PERCEPTUAL_DISTANCE = 6


def read_perceptual_hashes(rows: list[Row]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes as uint64, which rows have one) in the order of ``rows``."""
    known = {}
    if paths.perceptual_hashes_file().is_file():
        with open(paths.perceptual_hashes_file(), newline="") as f:
            known = {r["path"]: int(r["perceptual_hash"], 16) for r in csv.DictReader(f)}
    has = np.array([r.path in known for r in rows], dtype=bool)
    return np.array([known.get(r.path, 0) for r in rows], dtype=np.uint64), has


class HashPairs(NamedTuple):
    pairs: list[tuple[int, int, int, float]]  # the MAX_PAIRS closest (i, j, bits apart, similarity), i < j
    total: int  # how many pairs are within the distance in all
    beyond_features: int  # of those, how many the features' threshold misses
    across: dict[str, int]  # per grouping: how many of those straddle two groups


def perceptual_pairs(hashes: np.ndarray, has: np.ndarray, unit: np.ndarray, threshold: float,
                     groups: dict[str, np.ndarray], max_distance: int = PERCEPTUAL_DISTANCE,
                     block: int = 256) -> HashPairs:
    """The pairs of rows whose hashes are at most ``max_distance`` bits apart,
    a block of rows against the rows after it (memory stays a block's): the
    MAX_PAIRS closest listed with their features' cosine similarity (``unit``:
    unit rows), all of them counted, and which the features' ``threshold``
    misses counted too, per grouping across groups."""
    index = np.flatnonzero(has)
    h = hashes[index]
    found = []  # arrays (i, j, bits, similarity) of the closest so far
    total = beyond = 0
    across = {name: 0 for name in groups}
    for start in range(0, len(h), block):
        distance = np.bitwise_count(h[start:start + block, None] ^ h[None, start:])
        i, j = np.nonzero(distance <= max_distance)
        later = j > i
        gi, gj, bits = index[start + i[later]], index[start + j[later]], distance[i[later], j[later]]
        similarity = np.einsum("ij,ij->i", unit[gi], unit[gj])
        missed = similarity < threshold
        total, beyond = total + len(gi), beyond + int(missed.sum())
        for name, g in groups.items():
            across[name] += int((g[gi[missed]] != g[gj[missed]]).sum())
        found.append((gi, gj, bits, similarity))
        if sum(len(f[0]) for f in found) > 2 * MAX_PAIRS:  # keep the closest: bounded however many copies
            found = [_closest(*(np.concatenate(a) for a in zip(*found)))]
    if not found:
        return HashPairs([], 0, 0, across)
    gi, gj, bits, similarity = _closest(*(np.concatenate(a) for a in zip(*found)))
    return HashPairs([(int(a), int(b), int(d), float(s)) for a, b, d, s in zip(gi, gj, bits, similarity)],
                     total, beyond, across)


def _closest(i, j, bits, similarity):
    """The MAX_PAIRS fewest bits apart, ties in row order."""
    order = np.lexsort((j, i, bits))[:MAX_PAIRS]
    return i[order], j[order], bits[order], similarity[order]


def _bits_apart(hashes: np.ndarray, has: np.ndarray, i: int, j: int) -> int | None:
    return int(np.bitwise_count(hashes[i] ^ hashes[j])) if has[i] and has[j] else None


def _exact_duplicates(split_of: dict[str, str], label_of: dict[str, str]) -> list[tuple]:
    """The same-bytes files the split stage rejected, as pairs with the file kept."""
    rows = []
    with open(paths.REJECTED, newline="") as f:
        for r in csv.DictReader(f):
            reason = r["reason"]
            if reason.startswith("duplicate of "):
                kept = reason[len("duplicate of "):].rsplit(" (same bytes)", 1)[0]
                rows.append((kept, r["path"], split_of.get(kept, "rejected"), "rejected",
                             _label_from_path(kept, label_of), _label_from_path(r["path"], label_of), 1.0, 0,
                             "same bytes"))
            elif reason.startswith("label conflict: "):
                others = reason.rsplit("(", 1)[-1].rstrip(")").split(", ")
                rows += [(r["path"], other, "rejected", "rejected", _label_from_path(r["path"], label_of),
                          _label_from_path(other, label_of), 1.0, 0, "same bytes")
                         for other in others if other > r["path"]]
    return rows


def _label_from_path(path: str, label_of: dict[str, str]) -> str:
    """A file's class: from the split rows, or for a rejected file its class
    folder (the folder under any split folder)."""
    if path in label_of:
        return label_of[path]
    parts = path.split("/")
    if parts[0].lower() in paths.RAW_SPLIT_FOLDERS and len(parts) > 2:
        return parts[1]
    return parts[0] if len(parts) > 1 else ""


def _every_split(columns: int | None):
    """Rows, split names, cached features (float16, as stored; the first
    ``columns`` alone) and labels of train, val and test, in that order."""
    rows: list[Row] = []
    splits: list[str] = []
    feats, labels = [], []
    for split in SPLITS:
        x, y = load_features(split, dtype=None, columns=columns)
        split_rows = read_split(split)
        rows += split_rows
        splits += [split] * len(split_rows)
        feats.append(x)
        labels.append(y)
    return rows, splits, np.concatenate(feats), np.concatenate(labels)


def _similarity_threshold(audit: AuditParams, x_train: np.ndarray, columns: int | None):
    """audit.near_duplicate_similarity, or one fitted on extract's near-copies
    of train images (features ``x_train``) -> (threshold, calibration figures or None)."""
    if audit.near_duplicate_similarity is not None:
        return audit.near_duplicate_similarity, None
    copies = (np.load(paths.copies_file())[:, :columns].astype(np.float32) if paths.copies_file().is_file()
              else np.zeros((0, 0)))
    if len(copies):
        return calibrated_similarity(x_train, copies, np.load(paths.copies_of_file()))
    print(f"audit: no near-copies to calibrate on (no train images); near-duplicates from similarity "
          f"{FALLBACK_SIMILARITY}")
    return FALLBACK_SIMILARITY, None


def _near_pairs(near: NearPairs, by_hash: HashPairs, threshold: float, hashes, has) -> list[tuple]:
    """Both methods' listed pairs as (i, j, similarity, bits apart, found by):
    those both found first, then the hash's alone (fewest bits first), then
    the features' alone (most similar first)."""
    listed = {}
    for i, j, s in near.pairs:
        d = _bits_apart(hashes, has, i, j)
        both = d is not None and d <= PERCEPTUAL_DISTANCE
        listed[(i, j)] = (round(s, 5), d, "features and perceptual hash" if both else "features")
    for i, j, d, s in by_hash.pairs:
        listed[(i, j)] = (round(s, 5), d, "features and perceptual hash" if s >= threshold else "perceptual hash")
    rank = {"features and perceptual hash": 0, "perceptual hash": 1, "features": 2}
    order = sorted(listed.items(), key=lambda kv: (rank[kv[1][2]], kv[1][1] if kv[1][2] == "perceptual hash"
                                                   else -kv[1][0], kv[0]))
    return [(i, j, s, "" if d is None else d, how) for (i, j), (s, d, how) in order]


def _write_plots(audit: AuditParams, exact, pair_rows, issue_rows, threshold) -> None:
    from tlpipe import report

    with atomic.atomic_dir(paths.AUDIT_PLOTS) as tmp:
        header = ("path_a", "path_b", "split_a", "split_b", "label_a", "label_b", "similarity", "hash_distance",
                  "found_by")
        (tmp / "duplicates.csv").write_text(csv_text(header, exact + pair_rows))
        # file_name as data.corrections takes it: a reviewed row goes there with its class.
        (tmp / "label_issues.csv").write_text(csv_text(("file_name", "split", "given", "suggested", "score"),
                                                       issue_rows))
        report.pairs_png(tmp / "duplicates.png", pair_rows[: audit.gallery], threshold)
        report.label_issues_png(tmp / "label_issues.png", issue_rows[: audit.gallery])


def _print_summary(metrics: dict, issue_rows) -> None:
    duplicates, threshold = metrics["duplicates"], metrics["near_duplicate_similarity"]
    calibration = metrics.get("near_duplicate_calibration")
    print(f"audit: {duplicates['exact']} exact duplicates (removed by split), {duplicates['near']} near-duplicate "
          f"pairs ({duplicates['near_by_features']} by features at similarity >= {threshold}, "
          f"{duplicates['near_by_perceptual_hash']} by perceptual hash within {metrics['perceptual_hash_distance']} "
          f"bits): {duplicates['cross_split']} across splits, {duplicates['cross_label']} across classes")
    if calibration:
        print(f"audit: similarity {threshold} calibrated on {calibration['copies']} near-copies of train images "
              f"(resized, re-encoded, cropped; {calibration['copies_found']:.0%} found, median similarity "
              f"{calibration['copy_similarity_median']}); {calibration['distinct_pairs_above']} of "
              f"{calibration['distinct_pairs']} pairs of distinct sampled images are above it")
    if duplicates["cross_split"]:
        print(f"audit: WARNING: {duplicates['cross_split']} near-duplicate pairs straddle splits: the val/test "
              f"scores are optimistic. See {paths.AUDIT_PLOTS / 'duplicates.csv'}.")
    print(f"audit: {len(issue_rows)} likely label errors of {metrics['images']} images "
          f"(most suspicious first in {paths.AUDIT_PLOTS / 'label_issues.csv'})")
    for path, split, given, suggested, score in issue_rows[:5]:
        print(f"audit:   {path} ({split}): labelled {given}, looks like {suggested} (label quality {score:.3f})")


def _label_set_issue_rows(rows, splits, x, y, classes, folds: int, seed: int) -> list[tuple]:
    """Multi-label label_issues.csv rows: one per suspicious (image, label),
    the image's label set as given and with that label flipped (the set to
    paste into data.corrections if the photo agrees)."""
    delimiter = read_task().delimiter
    out = []
    for i, j, quality in label_set_issues(y, out_of_fold_label_probabilities(x, y, folds, seed)):
        flipped = y[i].copy()
        flipped[j] = 1 - flipped[j]
        out.append((rows[i].path, splits[i], rows[i].label,
                    delimiter.join(c for c, on in zip(classes, flipped) if on), round(quality, 5)))
    return out


def run(audit: AuditParams, *, seed: int) -> dict:
    """data/features + data/split -> plots/audit, reports/audit.json, metrics/audit.json; reads ``audit.*`` and ``seed``."""
    classes = read_classes()
    # the global average's columns: grid pooling's quadrants add no evidence of a
    # duplicate or a wrong label worth five times the search
    columns = read_features_meta().get("average_columns")
    rows, splits, x, y = _every_split(columns)
    split_of = {r.path: s for r, s in zip(rows, splits)}
    label_of = {r.path: r.label for r in rows}

    threshold, calibration = _similarity_threshold(audit, x[: splits.count("train")], columns)
    split_index = np.unique(splits, return_inverse=True)[1]
    label_code = np.unique(y, axis=0, return_inverse=True)[1].ravel() if y.ndim == 2 else y  # label sets: one code each
    near = near_duplicates(x, threshold, groups={"split": split_index, "label": label_code})
    hashes, has = read_perceptual_hashes(rows)
    by_hash = perceptual_pairs(hashes, has, normalised(x), threshold, {"split": split_index, "label": label_code})
    pair_rows = [(rows[i].path, rows[j].path, splits[i], splits[j], rows[i].label, rows[j].label, s, d, how)
                 for i, j, s, d, how in _near_pairs(near, by_hash, threshold, hashes, has)]
    exact = _exact_duplicates(split_of, label_of)

    if y.ndim == 2:
        issue_rows = _label_set_issue_rows(rows, splits, x, y, classes, audit.folds, seed)
    else:
        probs = out_of_fold_probabilities(x, y, len(classes), audit.folds, seed)
        flagged, quality = label_issues(y, probs)
        issue_rows = [(rows[i].path, splits[i], classes[y[i]], classes[int(probs[i].argmax())],
                       round(float(quality[i]), 5)) for i in flagged]

    _write_plots(audit, exact, pair_rows, issue_rows, threshold)
    metrics = {
        "duplicates": {
            "exact": len(exact),
            # all near pairs, and those across splits or labels; plots/audit/duplicates.csv
            # lists the closest MAX_PAIRS of them
            "near": near.total + by_hash.beyond_features,
            "near_by_features": near.total,
            "near_by_perceptual_hash": by_hash.total,
            "cross_split": near.across["split"] + by_hash.across["split"],
            "cross_label": near.across["label"] + by_hash.across["label"],
        },
        "perceptual_hash_distance": PERCEPTUAL_DISTANCE,
        "near_duplicate_similarity": threshold,
        **({"near_duplicate_calibration": calibration} if calibration else {}),
        "label_issues": len(issue_rows),
        "images": len(rows),
    }
    headline.write("audit", metrics)
    _print_summary(metrics, issue_rows)
    return metrics
