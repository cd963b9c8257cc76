"""Multi-label arithmetic: the stratified split of label sets, thresholds chosen
on val, the test figures (against scikit-learn) and the delimiter check."""

import io
import json
import random

import numpy as np
import pytest
from sklearn import metrics as skm

from tlpipe import multilabel
from tlpipe.errors import TlpipeError

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def label_sets(n=300, seed=0):
    rng = random.Random(seed)
    names = ["common", "medium", "rare", "scarce"]
    weights = [0.7, 0.4, 0.1, 0.04]
    return [(f"img_{i:03d}.jpg", tuple(sorted(n for n, w in zip(names, weights) if rng.random() < w)))
            for i in range(n)]


def test_stratify_spreads_every_label_as_the_fractions_say():
    items = label_sets()
    drawn = multilabel.stratify(items, FRACTIONS, "42:all")
    assert sorted(k for keys in drawn.values() for k in keys) == sorted(k for k, _ in items)  # each image once
    of = dict(items)
    for name in ("common", "medium", "rare", "scarce"):
        total = sum(name in labels for _, labels in items)
        for split, share in FRACTIONS.items():
            got = sum(name in of[k] for k in drawn[split])
            assert abs(got - share * total) <= 1.0 + 1e-9, (name, split, got, share * total)
    for split, share in FRACTIONS.items():
        assert abs(len(drawn[split]) - share * len(items)) <= 2, split


def test_stratify_is_deterministic_and_seeded():
    items = label_sets()
    assert multilabel.stratify(items, FRACTIONS, "42:all") == multilabel.stratify(list(reversed(items)), FRACTIONS,
                                                                                  "42:all")
    assert multilabel.stratify(items, FRACTIONS, "43:all") != multilabel.stratify(items, FRACTIONS, "42:all")


def test_images_without_labels_fill_the_subsets_that_lack_images():
    items = [(f"none_{i}", ()) for i in range(10)]
    drawn = multilabel.stratify(items, {"a": 0.5, "b": 0.5}, "s")
    assert len(drawn["a"]) == len(drawn["b"]) == 5


def test_best_f1_matches_a_search_over_every_threshold():
    rng = np.random.default_rng(1)
    truth = (rng.random(80) < 0.4).astype(int)
    probs = np.clip(0.5 + (truth - 0.5) * 0.3 + rng.normal(0, 0.25, 80), 0, 1)
    searched = max(skm.f1_score(truth, probs >= t) for t in np.unique(probs))
    assert multilabel.best_f1(truth, probs) == pytest.approx(searched)


def test_thresholds_are_half_the_best_val_f1_and_0_5_for_labels_with_few_val_positives():
    rng = np.random.default_rng(2)
    y = np.zeros((60, 2), np.uint8)
    y[:30, 0] = 1
    y[:2, 1] = 1  # two val positives: too few to choose on
    probs = np.clip(y * 0.6 + 0.2 + rng.normal(0, 0.1, y.shape), 0, 1)
    thresholds, how = multilabel.choose_thresholds(y, probs, ["a", "b"])
    assert thresholds[0] == pytest.approx(multilabel.best_f1(y[:, 0], probs[:, 0]) / 2, abs=1e-6)
    assert thresholds[1] == 0.5
    assert "fewer than 5" in how["b"] and "half the best val F1" in how["a"]


def test_scores_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    y = (rng.random((50, 3)) < 0.4).astype(int)
    probs = np.clip(y * 0.5 + 0.25 + rng.normal(0, 0.2, y.shape), 0.01, 0.99)
    thresholds = [0.4, 0.5, 0.6]
    out = multilabel.scores(y, probs, ["a", "b", "c"], thresholds)
    decided = (probs >= np.array(thresholds)).astype(int)
    assert out["average_precision_macro"] == round(skm.average_precision_score(y, probs, average="macro"), 4)
    assert out["f1_macro"] == round(skm.f1_score(y, decided, average="macro"), 4)
    assert out["f1_micro"] == round(skm.f1_score(y, decided, average="micro"), 4)
    assert out["subset_accuracy"] == round(skm.accuracy_score(y, decided), 4)
    assert out["hamming_loss"] == round(skm.hamming_loss(y, decided), 4)
    assert out["per_class"]["c"]["threshold"] == 0.6 and out["per_class"]["a"]["support"] == int(y[:, 0].sum())


def test_image_losses_are_keras_binary_cross_entropy():
    import keras

    rng = np.random.default_rng(4)
    y = (rng.random((6, 3)) < 0.5).astype(np.float32)
    probs = rng.uniform(0.05, 0.95, (6, 3)).astype(np.float32)
    keras_losses = keras.losses.BinaryCrossentropy(reduction=None)(y, probs).numpy()
    np.testing.assert_allclose(multilabel.image_losses(y, probs), keras_losses, rtol=1e-5)


def test_a_label_joined_by_another_delimiter_is_named():
    sets = {"a.jpg": ("octopus",), "b.jpg": ("squid",), "c.jpg": ("octopus;squid",)}
    with pytest.raises(TlpipeError, match=r"'octopus;squid'.*joined by ';'.*data.label_delimiter: ';'"):
        multilabel.check_delimiter(sets, " ", "labels.csv")
    multilabel.check_delimiter({"a.jpg": ("sea urchin",), "b.jpg": ("octopus",)}, ";", "labels.csv")  # no clash


# ---------------------------------------------------------------- every stage, through DVC


def read_rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.heavy  # a whole multi-label `dvc repro`, then predict and an experiment (make test-heavy)
def test_a_labels_column_runs_every_stage_through_dvc(tmp_path, dvc_repo_factory, raw_params):
    """A multi-label CSV through `dvc repro` as a user runs it: thresholds
    chosen on val travel in the model and beside every export, evaluate
    reports the multi-label figures, audit flags (image, label) pairs,
    `tlpipe predict` gives label sets, and `dvc exp run -S` works as usual."""
    import csv
    import subprocess
    import sys

    from conftest import tiny_params, tool_env
    from test_split import label_set_source

    source = tmp_path / "mosaics"
    # 64 images: train 32, val 16, test 16, whole batches for two replicas (a last batch that two replicas
    # split unevenly fails in Keras' fit under MirroredStrategy, for one label per image too)
    sets = [("red",), ("blue",), ("red", "blue"), ("green",), ("green", "red"), ()] * 10 + [("red",), ("blue",)] * 2
    label_set_source(source, sets, delimiter=";")
    repo = dvc_repo_factory(tiny_params(raw_params, source))
    out = repo.dvc("exp", "run", "-S", "data.labels=labels.csv", "-S", "data.label_delimiter=';'").stdout
    assert "split: 3 labels (multi-label)" in out and "no prediction sets for a multi-label model" in out

    finetune = json.loads((repo.root / "reports/finetune.json").read_text())
    assert set(finetune["thresholds"]) == {"blue", "green", "red"}
    metrics = json.loads((repo.root / "metrics/eval.json").read_text())
    assert {"average_precision_macro", "f1_macro", "f1_micro", "subset_accuracy", "log_loss"} <= set(metrics)
    assert "accuracy" not in metrics and "coverage" not in metrics
    report = json.loads((repo.root / "reports/eval.json").read_text())
    assert report["finetuned"]["per_class"]["red"]["threshold"] == round(finetune["thresholds"]["red"], 4)
    exported = json.loads((repo.root / "models/export/thresholds.json").read_text())
    assert exported == {"delimiter": ";", "thresholds": finetune["thresholds"]}
    export = json.loads((repo.root / "reports/export.json").read_text())
    assert {"average_precision_macro", "agreement"} <= set(export["onnx"]) and export["onnx"]["agreement"] >= 0.95
    with open(repo.root / "plots/audit/label_issues.csv", newline="") as f:
        assert list(next(csv.reader(f))) == ["file_name", "split", "given", "suggested", "score"]
    for name in ("confusion.png", "per_label_pr.png", "mistakes.png", "predictions.csv"):
        assert (repo.root / "plots/evaluate" / name).is_file(), name

    files = [str(repo.root / "data/raw" / r) for r in ("images/002.jpg", "images/005.jpg")]
    for model in ("models/model.keras", "models/export/model_onnx.onnx"):
        jsonl = subprocess.run([sys.executable, "-m", "tlpipe", "predict", *files, "--format", "jsonl", "--model", model],
                               cwd=repo.root, env=tool_env(), capture_output=True, text=True, check=True).stdout
        rows = [json.loads(line) for line in jsonl.splitlines()]
        assert all(isinstance(r["predicted"], list) and set(r["probabilities"]) == {"blue", "green", "red"}
                   for r in rows), rows
        assert all(r["predicted"] == [c for c, v in r["probabilities"].items() if v >= finetune["thresholds"][c]]
                   for r in rows)
        text = subprocess.run([sys.executable, "-m", "tlpipe", "predict", *files, "--model", model], cwd=repo.root,
                              env=tool_env(), capture_output=True, text=True, check=True).stdout
        table = list(csv.DictReader(io.StringIO(text)))
        assert [r["predicted"] for r in table] == [";".join(r["predicted"]) for r in rows]

    # two replicas of half the batch: the binary cross-entropy summed over replicas, the same head scored alike
    assert [len(read_rows(repo.root / f"data/split/{s}.csv")) for s in ("train", "val", "test")] == [32, 16, 16]
    halved = repo.params()
    halved["finetune"]["batch_size"] = 4
    repo.write_params(halved)
    proc = subprocess.run([sys.executable, "stages/finetune.py"], cwd=repo.root, capture_output=True, text=True,
                          env={**tool_env(), "TLPIPE_REPLICAS": "2"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((repo.root / "reports/finetune.json").read_text())
    assert two["replicas"] == 2 and two["head_val_loss"] == pytest.approx(finetune["head_val_loss"], abs=1e-4)
    assert set(two["thresholds"]) == {"blue", "green", "red"}

    repo.write_params({**halved, "finetune": {**halved["finetune"], "batch_size": 8}})
    repo.commit("trained")
    result = repo.dvc("exp", "run", "-S", "freeze=all", "-S", "scratch.enabled=true", "-S", "scratch.epochs=1")
    assert "Running stage 'finetune'" in result.stdout
    assert json.loads((repo.root / "reports/finetune.json").read_text())["shipped"] == "head"
    assert "average_precision_macro" in json.loads((repo.root / "metrics/scratch.json").read_text())
