"""evaluate: the test split only, never used for any choice -> reports/eval.json
(its headline in metrics/eval.json), plots/.

The head alone (on cached test features) and the shipped model are scored
side by side with the same arithmetic (scikit-learn), so ``dvc metrics diff``
reads ``finetuned.accuracy``, ``head.accuracy``, ``finetuned.per_class.cats.f1``...
The shipped model reads the test images' frozen prefix that extract stored,
through its trained layers above it, as finetune and trust scored val (with
the mirror average, its mirror half reads the mirror images); the test
images themselves when no prefix is stored. Export scores every deployed
format, Keras included, on the test images end to end.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn import metrics as skm

from tlpipe import atomic, confidence, headline, images, multilabel, paths
from tlpipe.artifacts import csv_text, label_indices, load_features, read_classes, read_split, read_task, sources
from tlpipe.errors import TlpipeError
from tlpipe.params import EvaluateParams
from tlpipe.scoring import expected_calibration_error, image_losses, reliability, scores, temperature_scaled

MODELS = ("finetuned", "head")


def most_confused(y_true, y_pred, classes: list[str]) -> list[tuple[str, str, int]]:
    """(actual, predicted, count) over the mistakes, most frequent first."""
    pairs = Counter((classes[a], classes[b]) for a, b in zip(y_true, y_pred) if a != b)
    return sorted(((a, b, n) for (a, b), n in pairs.items()), key=lambda t: (-t[2], t[0], t[1]))


def curves(y_true: np.ndarray, probs: np.ndarray) -> tuple[list[tuple], list[tuple]]:
    """ROC (fpr, tpr) and precision-recall (recall, precision) points.

    Binary: the positive class (index 1). Several classes: micro-averaged over
    one-vs-rest, one curve that stays readable for any number of classes.
    """
    k = probs.shape[1]
    if y_true.ndim == 2:  # multi-label: micro-averaged over the labels
        truth, score = y_true.ravel(), probs.ravel()
    elif k == 2:
        truth, score = (y_true == 1).astype(int), probs[:, 1]
    else:
        truth = np.eye(k, dtype=int)[y_true].ravel()
        score = probs.ravel()
    fpr, tpr, _ = skm.roc_curve(truth, score)
    precision, recall, _ = skm.precision_recall_curve(truth, score)
    roc = [(round(float(a), 5), round(float(b), 5)) for a, b in zip(fpr, tpr)]
    pr = [(round(float(a), 5), round(float(b), 5)) for a, b in zip(recall, precision)]
    return roc, pr




def predict_images(model, rows, batch_size: int, desc: str = "") -> np.ndarray:
    """Probabilities of ``model`` on image rows, read exactly as in training."""
    image_size = int(model.input_shape[1])
    batches = images.predict(model, *sources(rows), image_size, batch_size, desc)
    return np.concatenate(list(batches)).astype(np.float64)


def _test_split() -> tuple[list[str], list, np.ndarray, np.ndarray]:
    """(classes, test rows, their label indices, their cached features), checked to agree."""
    classes = read_classes()
    rows = read_split("test")
    y_true = label_indices(rows, classes)
    x_test, y_feat = load_features("test")
    if not np.array_equal(y_feat, y_true):
        raise TlpipeError(
            f"{paths.FEATURES} does not match {paths.split_csv('test')}; run `dvc repro` so "
            "that extract reruns on the current split."
        )
    return classes, rows, y_true, x_test


def _figures(ep: EvaluateParams, classes, rows, y_true, x_test):
    """Both models scored on test, the shipped model's prediction sets, unfamiliar
    inputs and calibration -> (results, probabilities by model, prediction
    sets, unfamiliar flags, the shipped model's probabilities without its
    temperature, each model's per-label thresholds). Multi-label
    (multilabel.scores): the shipped model decides at its thresholds chosen on
    val, the head at even odds, and there are no prediction sets (tlpipe.confidence
    says why): thresholds is None for one label per image, sets None for several."""
    from tlpipe.layers import load_model, temperature_of, thresholds_of

    shipped = load_model(paths.MODEL)
    shipped_probs, test_features = confidence.split_probabilities_and_features(shipped, "test", rows, ep.batch_size,
                                                                               "evaluate")
    probs = {
        "finetuned": shipped_probs,
        "head": load_model(paths.HEAD_MODEL).predict(x_test, verbose=0).astype(np.float64),
    }
    multi = y_true.ndim == 2
    trust = confidence.load(paths.TRUST)
    if trust is None:
        raise TlpipeError(f"No {paths.TRUST / 'trust.json'}; run `dvc repro` so that the trust stage writes it.")
    sets = thresholds = None
    if multi:
        thresholds = {"finetuned": thresholds_of(shipped), "head": [0.5] * len(classes)}
        results = {name: multilabel.scores(y_true, probs[name], classes, thresholds[name]) for name in MODELS}
        results["head"]["thresholds"] = "0.5 for every label (the head's own probabilities, uncalibrated)"
    else:
        results = {name: scores(y_true, probs[name], classes, ep.top_k) for name in MODELS}
        sets = confidence.prediction_sets(shipped_probs, trust.threshold)
        results["conformal"] = confidence.set_figures(sets, y_true, classes, trust.coverage)
    distances = confidence.unfamiliar_scores(test_features, confidence.load_bank(paths.TRUST), trust.neighbours)
    unfamiliar = distances > trust.unfamiliar_threshold
    results["unfamiliar"] = {"threshold": trust.unfamiliar_threshold, "val_quantile": trust.unfamiliar_quantile,
                             "test_rate": round(float(unfamiliar.mean()), 4)}
    # The shipped model's probabilities are calibrated by a temperature fitted on
    # val; undoing it (softmax(T log p), or sigmoid(T logit p)) shows what calibration did on test.
    temperature = temperature_of(shipped)
    uncalibrated = temperature_scaled(shipped_probs, 1.0 / temperature, multi)
    results["calibration"] = {
        "temperature": temperature,
        "ece_before": round(expected_calibration_error(y_true, uncalibrated), 4),
        "ece_after": round(expected_calibration_error(y_true, shipped_probs), 4),
    }
    return results, probs, sets, unfamiliar, uncalibrated, thresholds


def _write_curves(tmp, results, probs, uncalibrated, y_true) -> None:
    """Per model its ROC and PR curves (plots/evaluate/roc, pr), and the
    shipped model's reliability before and after its temperature."""
    from tlpipe import report

    for sub in ("roc", "pr", "reliability"):
        (tmp / sub).mkdir(exist_ok=True)
    for name in MODELS:
        roc, pr = curves(y_true, probs[name])
        (tmp / "roc" / f"{name}.csv").write_text(csv_text(("fpr", "tpr"), roc))
        (tmp / "pr" / f"{name}.csv").write_text(csv_text(("recall", "precision"), pr))
    ft = probs["finetuned"]
    for name, p in (("uncalibrated", uncalibrated), ("calibrated", ft)):
        points = [(round(c, 5), round(a, 5), n) for c, a, n in reliability(y_true, p)]
        (tmp / "reliability" / f"{name}.csv").write_text(csv_text(("confidence", "accuracy", "images"), points))
    report.reliability_png(tmp / "reliability.png", y_true, uncalibrated, ft, results["calibration"]["temperature"])


def _write_plots(tmp, ep: EvaluateParams, results, probs, sets, unfamiliar, uncalibrated, classes, rows, y_true):
    """plots/evaluate/: per model its confusion pairs, ROC and PR curves and most
    confused pairs; reliability, predictions, coverage and the PNG pages.
    -> the most confused pairs by model."""
    from tlpipe import report

    confused = {}
    for name in MODELS:
        y_pred = probs[name].argmax(axis=1)
        (tmp / "confusion").mkdir(exist_ok=True)
        (tmp / "confusion" / f"{name}.csv").write_text(
            csv_text(("actual", "predicted"), [(classes[a], classes[b]) for a, b in zip(y_true, y_pred)])
        )
        confused[name] = most_confused(y_true, y_pred, classes)
        (tmp / f"most_confused_{name}.csv").write_text(csv_text(("actual", "predicted", "count"), confused[name]))
    _write_curves(tmp, results, probs, uncalibrated, y_true)
    ft = probs["finetuned"]
    (tmp / "predictions.csv").write_text(
        csv_text(
            ("path", "actual", "predicted", "probability", "head_predicted", "prediction_set", "unfamiliar"),
            [
                (r.path, r.label, classes[int(ft[i].argmax())], round(float(ft[i].max()), 5),
                 classes[int(probs["head"][i].argmax())], ";".join(c for c, s in zip(classes, sets[i]) if s),
                 bool(unfamiliar[i]))
                for i, r in enumerate(rows)
            ],
        )
    )
    (tmp / "conformal").mkdir()
    (tmp / "conformal" / "per_class.csv").write_text(csv_text(
        ("class", "coverage"),
        [(c, v) for c, v in results["conformal"]["per_class_coverage"].items() if v is not None]))
    report.confusion_png(tmp / "confusion.png", y_true, ft.argmax(axis=1), classes)
    report.mistakes_png(tmp / "mistakes.png", rows, y_true, ft, classes, ep.gallery)
    report.per_class_f1_png(tmp / "per_class_f1.png", results, classes)
    report.per_label_pr_png(tmp / "per_label_pr.png", np.eye(len(classes), dtype=int)[y_true], ft, classes)
    return confused


def _print_summary(results: dict, confused: dict | None) -> None:
    """The evaluate stage's lines; ``confused`` None: a multi-label run."""
    c = results["calibration"]
    print(f"evaluate: calibration (temperature {c['temperature']} fitted on val): test ECE "
          f"{c['ece_before']:.4f} -> {c['ece_after']:.4f}")
    if confused is None:
        print(f"evaluate: unfamiliar: {results['unfamiliar']['test_rate']:.1%} of test images")
        for name in MODELS:
            r = results[name]
            print(f"evaluate: {name:9s} test mAP {r['average_precision_macro']:.4f}  macro F1 {r['f1_macro']:.4f}  "
                  f"micro F1 {r['f1_micro']:.4f}  exact sets {r['subset_accuracy']:.4f}")
        return
    cf, uf = results["conformal"], results["unfamiliar"]
    print(f"evaluate: prediction sets (target coverage {cf['target_coverage']}): test coverage {cf['coverage']:.4f}, "
          f"mean size {cf['mean_set_size']:.2f}, one class {cf['single_class_share']:.1%}; unfamiliar: "
          f"{uf['test_rate']:.1%} of test images")
    for name in MODELS:
        r = results[name]
        print(f"evaluate: {name:9s} test accuracy {r['accuracy']:.4f}  macro F1 {r['f1_macro']:.4f}  "
              f"log loss {r['log_loss']:.4f}")
    for a, b, n in confused["finetuned"][:5]:
        print(f"evaluate: most confused: {n} x {a} predicted as {b}")


def _write_multi_label_plots(tmp, ep: EvaluateParams, results, probs, thresholds, unfamiliar, uncalibrated, classes,
                             rows, y_true) -> None:
    """plots/evaluate/ for a multi-label run: per-label 2 x 2 counts (the
    confusion CSVs, "label: yes/no" on both axes, and a PNG grid), ROC and PR
    curves micro-averaged over labels, per-label PR curves, reliability,
    predictions and the images with the largest losses."""
    from tlpipe import report

    delimiter = read_task().delimiter
    (tmp / "confusion").mkdir(exist_ok=True)
    decided = {name: multilabel.decisions(probs[name], thresholds[name]) for name in MODELS}
    for name in MODELS:
        cells = [(f"{c}: {'yes' if y_true[i, j] else 'no'}", f"{c}: {'yes' if decided[name][i, j] else 'no'}")
                 for i in range(len(rows)) for j, c in enumerate(classes)]
        (tmp / "confusion" / f"{name}.csv").write_text(csv_text(("actual", "predicted"), cells))
    _write_curves(tmp, results, probs, uncalibrated, y_true)
    ft = probs["finetuned"]
    sets = {name: [delimiter.join(c for c, d in zip(classes, decided[name][i]) if d) for i in range(len(rows))]
            for name in MODELS}
    losses = image_losses(y_true, ft)
    (tmp / "predictions.csv").write_text(csv_text(
        ("path", "actual", "predicted", "head_predicted", "loss", *(f"p_{c}" for c in classes), "unfamiliar"),
        [(r.path, r.label, sets["finetuned"][i], sets["head"][i], round(float(losses[i]), 5),
          *(round(float(v), 5) for v in ft[i]), bool(unfamiliar[i])) for i, r in enumerate(rows)]))
    report.label_confusion_png(tmp / "confusion.png", y_true, decided["finetuned"], classes, thresholds["finetuned"])
    report.per_label_pr_png(tmp / "per_label_pr.png", y_true, ft, classes)
    report.largest_losses_png(tmp / "mistakes.png", rows, losses, [r.label for r in rows], sets["finetuned"],
                              ep.gallery)
    report.per_class_f1_png(tmp / "per_class_f1.png", results, classes)


def run(ep: EvaluateParams) -> dict:
    """test split + both models -> reports/eval.json, metrics/eval.json, plots/evaluate/; reads ``evaluate.*``."""
    classes, rows, y_true, x_test = _test_split()
    results, probs, sets, unfamiliar, uncalibrated, thresholds = _figures(ep, classes, rows, y_true, x_test)
    with atomic.atomic_dir(paths.PLOTS) as tmp:
        if thresholds is None:
            confused = _write_plots(tmp, ep, results, probs, sets, unfamiliar, uncalibrated, classes, rows, y_true)
        else:
            confused = None
            _write_multi_label_plots(tmp, ep, results, probs, thresholds, unfamiliar, uncalibrated, classes, rows,
                                     y_true)
    headline.write("eval", results)
    _print_summary(results, confused)
    return results
