"""audit: what is wrong with the data, from the cached features, in seconds ->
plots/audit/, metrics/audit.json.

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

Nothing here feeds a choice: the report is for people to look at.
"""

from __future__ import annotations

import csv

import numpy as np

from tlpipe import atomic, paths
from tlpipe.artifacts import SPLITS, Row, csv_text, load_features, read_classes, read_split
from tlpipe.similarity import block_rows, normalised
from tlpipe.params import AuditParams

# A backbone that cannot tell images apart (random weights) makes every pair
# "near": list at most this many, the closest first.
MAX_PAIRS = 10_000


def near_duplicates(x: np.ndarray, threshold: float, block: int | None = None) -> tuple[list[tuple[int, int, float]], int]:
    """(the MAX_PAIRS closest pairs (i, j, cosine similarity), i < j, at or above
    ``threshold``, closest first; how many pairs are at or above it in all).

    A block of rows against all rows at a time (``block`` rows; default:
    similarity.BLOCK_SIMILARITIES in all). Near pairs are counted in place;
    only those that can still be among the MAX_PAIRS closest leave a block
    as indices (at most MAX_PAIRS of a block's, ties aside), so memory stays
    a block's however many images and pairs there are (a backbone that cannot
    tell images apart makes every pair near)."""
    x = normalised(x)
    block = block or block_rows(len(x))
    kept_i, kept_j, kept_s = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    total = 0
    for start in range(0, len(x), block):
        sims = x[start : start + block] @ x.T
        near = sims >= threshold
        near &= np.arange(len(x))[None, :] > np.arange(start, start + len(sims))[:, None]  # each pair once, i < j
        count = int(np.count_nonzero(near))
        total += count
        if count > MAX_PAIRS:  # only the closest can matter: raise the bar to the block's MAX_PAIRS-th
            values = sims[near]
            near &= sims >= np.partition(values, count - MAX_PAIRS)[count - MAX_PAIRS]
            del values
        rows, cols = np.nonzero(near)
        values = sims[rows, cols]
        kept_i, kept_j = np.concatenate([kept_i, rows + start]), np.concatenate([kept_j, cols])
        kept_s = np.concatenate([kept_s, values])
        if len(kept_s) > MAX_PAIRS:
            closest = np.argpartition(-kept_s, MAX_PAIRS - 1)[:MAX_PAIRS]
            kept_i, kept_j, kept_s = kept_i[closest], kept_j[closest], kept_s[closest]
    order = np.lexsort((kept_j, kept_i, -kept_s))  # closest first, then by index
    return [(int(kept_i[k]), int(kept_j[k]), float(kept_s[k])) for k in order], total


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
    unit = x_train / np.maximum(np.linalg.norm(x_train, axis=1, keepdims=True), 1e-12)
    copies = copies / np.maximum(np.linalg.norm(copies, axis=1, keepdims=True), 1e-12)
    copy_sims = (unit[copies_of] * copies).sum(axis=1)
    sample = unit[np.unique(copies_of)]
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
    """Each image's class probabilities from a classifier that never saw it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(y, minlength=n_classes).min())
    splitter = StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)
    probs = np.zeros((len(y), n_classes))
    for fit_idx, held_idx in splitter.split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        model.fit(x[fit_idx], y[fit_idx])
        probs[np.ix_(held_idx, model.classes_)] = model.predict_proba(x[held_idx])
    return probs


def label_issues(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of likely label errors, most suspicious first; every image's
    label quality in [0, 1], low = likely wrong), by cleanlab."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    return np.asarray(ranked, dtype=int), get_label_quality_scores(y, probs, method="self_confidence")




def _exact_duplicates(split_of: dict[str, str], label_of: dict[str, str]) -> list[tuple]:
    """The same-bytes files the split stage rejected, as pairs with the file kept."""
    rows = []
    with open(paths.REJECTED, newline="") as f:
        for r in csv.DictReader(f):
            reason = r["reason"]
            if reason.startswith("duplicate of "):
                kept = reason[len("duplicate of "):].rsplit(" (same bytes)", 1)[0]
                rows.append((kept, r["path"], split_of.get(kept, "rejected"), "rejected",
                             _label_from_path(kept, label_of), _label_from_path(r["path"], label_of), 1.0))
            elif reason.startswith("label conflict: "):
                others = reason.rsplit("(", 1)[-1].rstrip(")").split(", ")
                rows += [(r["path"], other, "rejected", "rejected", _label_from_path(r["path"], label_of),
                          _label_from_path(other, label_of), 1.0) for other in others if other > r["path"]]
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


def _every_split():
    """Rows, split names, cached features and labels of train, val and test, in that order."""
    rows: list[Row] = []
    splits: list[str] = []
    feats, labels = [], []
    for split in SPLITS:
        x, y = load_features(split)
        split_rows = read_split(split)
        rows += split_rows
        splits += [split] * len(split_rows)
        feats.append(x)
        labels.append(y)
    return rows, splits, np.concatenate(feats), np.concatenate(labels)


def _similarity_threshold(audit: AuditParams):
    """audit.near_duplicate_similarity, or one fitted on extract's near-copies
    of train images -> (threshold, calibration figures or None)."""
    if audit.near_duplicate_similarity is not None:
        return audit.near_duplicate_similarity, None
    copies = np.load(paths.copies_file()).astype(np.float32) if paths.copies_file().is_file() else np.zeros((0, 0))
    if len(copies):
        return calibrated_similarity(load_features("train")[0], copies, np.load(paths.copies_of_file()))
    print(f"audit: no near-copies to calibrate on (no train images); near-duplicates from similarity "
          f"{FALLBACK_SIMILARITY}")
    return FALLBACK_SIMILARITY, None


def _write_plots(audit: AuditParams, exact, pair_rows, issue_rows, threshold) -> None:
    from tlpipe import report

    with atomic.atomic_dir(paths.AUDIT_PLOTS) as tmp:
        header = ("path_a", "path_b", "split_a", "split_b", "label_a", "label_b", "similarity")
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
          f"pairs (similarity >= {threshold}): {duplicates['cross_split']} across splits, "
          f"{duplicates['cross_label']} across classes")
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


def run(audit: AuditParams, *, seed: int) -> dict:
    """data/features + data/split -> plots/audit, metrics/audit.json; reads ``audit.*`` and ``seed``."""
    classes = read_classes()
    rows, splits, x, y = _every_split()
    split_of = {r.path: s for r, s in zip(rows, splits)}
    label_of = {r.path: r.label for r in rows}

    threshold, calibration = _similarity_threshold(audit)
    pairs, near_in_all = near_duplicates(x, threshold)
    pair_rows = [(rows[i].path, rows[j].path, splits[i], splits[j], rows[i].label, rows[j].label, round(s, 5))
                 for i, j, s in pairs]
    exact = _exact_duplicates(split_of, label_of)

    probs = out_of_fold_probabilities(x, y, len(classes), audit.folds, seed)
    flagged, quality = label_issues(y, probs)
    issue_rows = [(rows[i].path, splits[i], classes[y[i]], classes[int(probs[i].argmax())], round(float(quality[i]), 5))
                  for i in flagged]

    _write_plots(audit, exact, pair_rows, issue_rows, threshold)
    metrics = {
        "duplicates": {
            "exact": len(exact),
            "near": near_in_all,  # plots/audit/duplicates.csv lists the closest MAX_PAIRS of them
            "cross_split": sum(a != b for _, _, a, b, *_ in pair_rows),
            "cross_label": sum(a != b for *_, a, b, _ in pair_rows),
        },
        "near_duplicate_similarity": threshold,
        **({"near_duplicate_calibration": calibration} if calibration else {}),
        "label_issues": len(issue_rows),
        "images": len(rows),
    }
    atomic.write_json(paths.AUDIT_METRICS, metrics)
    _print_summary(metrics, issue_rows)
    return metrics
