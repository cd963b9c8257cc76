"""Evaluation arithmetic against numbers worked out by hand, plot files, PNGs."""

import csv
import math

import numpy as np
import pytest
from PIL import Image

from tlpipe import evaluate, report, scoring


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.2, 0.8, 0.4])
    s = scoring.scores(y, np.stack([1 - p1, p1], axis=1), ["cat", "dog"])
    # predictions 0 1 0 1 0: 3 of 5 right; cat P=R=2/3, dog P=R=1/2
    assert s["accuracy"] == 0.6
    assert s["balanced_accuracy"] == round((2 / 3 + 1 / 2) / 2, 4)
    assert s["f1_macro"] == round((2 / 3 + 1 / 2) / 2, 4)
    assert s["f1_weighted"] == 0.6
    assert s["precision_macro"] == round((2 / 3 + 1 / 2) / 2, 4)
    # 5 of the 6 (positive, negative) pairs are ranked right
    assert s["roc_auc"] == round(5 / 6, 4)
    by_hand = -(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.8) + math.log(0.4)) / 5
    assert s["log_loss"] == round(by_hand, 4)
    assert s["per_class"]["cat"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "support": 3}
    assert s["per_class"]["dog"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert "top_5_accuracy" not in s


def one_hotish(pred, k, hit=0.8):
    probs = np.full((len(pred), k), (1 - hit) / (k - 1))
    probs[np.arange(len(pred)), pred] = hit
    return probs


def test_three_class_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    s = scoring.scores(y, one_hotish(pred, 3), ["a", "b", "c"])
    assert s["accuracy"] == round(4 / 6, 4)
    # a: P 1/2 R 1/2 F 1/2; b: P 2/3 R 1 F 0.8; c: P 1 R 1/2 F 2/3
    assert s["per_class"]["b"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2}
    assert s["f1_macro"] == round((0.5 + 0.8 + 2 / 3) / 3, 4)
    assert s["recall_macro"] == round((0.5 + 1 + 0.5) / 3, 4)
    assert s["log_loss"] == round(-(4 * math.log(0.8) + 2 * math.log(0.1)) / 6, 4)
    assert evaluate.most_confused(y, pred, ["a", "b", "c"]) == [("a", "b", 1), ("c", "a", 1)]


def test_top_k_accuracy_with_many_classes():
    k = 7
    y = np.arange(k)
    probs = np.tile(np.linspace(1, 0.1, k), (k, 1))  # class 0 always first, then 1, 2...
    s = scoring.scores(y, probs / probs.sum(1, keepdims=True), [str(i) for i in range(k)], top_k=3)
    assert s["top_3_accuracy"] == round(3 / 7, 4)
    assert s["accuracy"] == round(1 / 7, 4)


def test_curves_binary_and_multiclass():
    y = np.array([0, 0, 1, 1])
    roc, pr = evaluate.curves(y, np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]]))
    assert roc[0] == (0.0, 0.0) and roc[-1] == (1.0, 1.0)
    assert all(0 <= r <= 1 and 0 <= p <= 1 for r, p in pr)
    roc3, _ = evaluate.curves(np.array([0, 1, 2]), np.eye(3))
    assert (0.0, 1.0) in roc3  # a perfect classifier reaches the corner


def test_confusion_csv_round_trips(tmp_path):
    y, pred, classes = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]), ["a", "b", "c"]
    from tlpipe.artifacts import csv_text

    text = csv_text(("actual", "predicted"), [(classes[a], classes[b]) for a, b in zip(y, pred)])
    (tmp_path / "c.csv").write_text(text)
    with open(tmp_path / "c.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["actual"], r["predicted"]) for r in rows] == [("a", "a"), ("b", "c"), ("c", "c"), ("c", "b")]


def test_pngs_are_written_with_the_expected_size(tmp_path, monkeypatch):
    from tlpipe import paths
    from tlpipe.artifacts import Row

    from conftest import COLOURS, draw_image

    monkeypatch.setattr(paths, "RAW", tmp_path / "raw")
    (tmp_path / "raw").mkdir()
    rows = []
    for i, name in enumerate(["red", "blue", "red", "blue"]):
        draw_image(COLOURS[name], i).save(tmp_path / "raw" / f"{i}.png")
        rows.append(Row(f"{i}.png", name, "tf"))
    y = np.array([0, 1, 0, 1])
    probs = one_hotish(np.array([0, 0, 1, 1]), 2, hit=0.9)
    report.confusion_png(tmp_path / "cm.png", y, probs.argmax(1), ["red", "blue"])
    report.mistakes_png(tmp_path / "m.png", rows, y, probs, ["red", "blue"], 16)
    results = {n: scoring.scores(y, probs, ["red", "blue"]) for n in ("head", "finetuned")}
    report.per_class_f1_png(tmp_path / "f1.png", results, ["red", "blue"])
    expected = {"cm.png": (400, 360), "m.png": (864, 237), "f1.png": (500, 400)}
    for name, size in expected.items():
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG"
            assert img.size == size, name
        assert (tmp_path / name).stat().st_size > 2000


def test_expected_calibration_error_by_hand():
    # four images at confidence 0.9 (3 right), two at 0.6 (both right)
    y = np.array([0, 0, 0, 1, 0, 1])
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4], [0.4, 0.6]])
    # bin 0.9: |0.9 - 0.75| * 4/6 ; bin 0.6: |0.6 - 1.0| * 2/6
    assert scoring.expected_calibration_error(y, probs) == pytest.approx(0.15 * 4 / 6 + 0.4 * 2 / 6)


def test_fitted_temperature_undoes_overconfidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (4000, 3))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in true_p])
    overconfident = scoring.temperature_scaled(true_p, 1 / 2.5)  # logits x 2.5
    t = scoring.fit_temperature(overconfident, y)
    assert t == pytest.approx(2.5, rel=0.1)
    calibrated = scoring.temperature_scaled(overconfident, t)
    assert scoring.expected_calibration_error(y, calibrated) < scoring.expected_calibration_error(y, overconfident) / 3
    assert (calibrated.argmax(1) == overconfident.argmax(1)).all()  # decisions unchanged


def test_temperature_layer_matches_the_numpy_scaling(tmp_path):
    import keras

    from tlpipe.layers import Temperature, load_model, temperature_of

    x = keras.Input((3,))
    model = keras.Model(x, Temperature(1.7, name="temperature")(keras.layers.Softmax()(x)))
    model.save(tmp_path / "t.keras")
    again = load_model(tmp_path / "t.keras")
    assert temperature_of(again) == 1.7
    logits = np.random.default_rng(1).normal(size=(5, 3)).astype("float32")
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(again.predict(logits, verbose=0), scoring.temperature_scaled(p, 1.7), atol=1e-5)
