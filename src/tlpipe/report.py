"""PNG pictures a person opens directly: confusion heatmap, top-mistakes gallery,
per-class F1 bars. Rendered with matplotlib's file-only Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from tlpipe import images, paths  # noqa: E402


def confusion_png(path: Path, y_true, y_pred, classes: list[str]) -> None:
    """Counts and row-normalised percentages, class names on both axes."""
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    rows = cm.sum(axis=1, keepdims=True)
    pct = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    side = max(4.0, 0.7 * k + 2)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    ax.imshow(pct, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Fine-tuned model, test split\naccuracy {np.trace(cm) / max(cm.sum(), 1):.1%}")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{cm[i, j]}\n{pct[i, j]:.0%}", ha="center", va="center",
                        fontsize=8, color="white" if pct[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mistakes_png(path: Path, rows, y_true, probs, classes: list[str], count: int) -> None:
    """The most confident mistakes: image, true class, predicted class, probability."""
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:count]
    cols = 4
    n_rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(n_rows, cols, figsize=(cols * 3, n_rows * 3.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if len(wrong) == 0:
        axes[0, 0].text(0, 0.5, "No mistakes on the test split.", fontsize=14)
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(_thumbnail(paths.RAW / rows[i].path))
        ax.set_title(
            f"true: {classes[y_true[i]]}\npred: {classes[y_pred[i]]} ({probs[i, y_pred[i]]:.0%})",
            fontsize=9,
        )
    fig.suptitle("Most confident mistakes (fine-tuned model, test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _thumbnail(path: Path, side: int = 240) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(images.read_rgb(path))
    img.thumbnail((side, side))
    return np.asarray(img)


def per_class_f1_png(path: Path, results: dict, classes: list[str]) -> None:
    k = len(classes)
    x = np.arange(k)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * k + 3), 4))
    for offset, name in ((-0.2, "head"), (0.2, "finetuned")):
        f1 = [results[name]["per_class"][c]["f1"] for c in classes]
        ax.bar(x + offset, f1, width=0.4, label=f"{name} (macro {results[name]['f1_macro']:.3f})")
    ax.set_xticks(x, classes, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1 (test)")
    ax.set_title("Per-class F1: head alone vs fine-tuned")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pairs_png(path: Path, pairs: list[tuple], threshold: float) -> None:
    """The closest near-duplicate pairs side by side, with their splits and labels."""
    n = max(1, len(pairs))
    fig, axes = plt.subplots(n, 2, figsize=(6, 3.1 * n), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not pairs:
        axes[0, 0].text(0, 0.5, f"No pair of images with similarity >= {threshold}.", fontsize=12)
    for (a, b, split_a, split_b, label_a, label_b, sim, _, found_by), (left, right) in zip(pairs, axes):
        for ax, file, split, label in ((left, a, split_a, label_a), (right, b, split_b, label_b)):
            ax.imshow(_thumbnail(paths.RAW / file))
            ax.set_title(f"{split} / {label}\n{Path(file).name}", fontsize=8,
                         color="red" if (split_a != split_b or label_a != label_b) else "black")
        left.text(1.05, -0.08, f"similarity {sim:.3f} ({found_by})", transform=left.transAxes, ha="center",
                  fontsize=9)
    fig.suptitle("Closest near-duplicate pairs (red: across splits or classes)")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def label_issues_png(path: Path, issues: list[tuple]) -> None:
    """The images whose given label looks least likely: given -> suggested."""
    cols = 4
    n_rows = max(1, int(np.ceil(len(issues) / cols)))
    fig, axes = plt.subplots(n_rows, cols, figsize=(cols * 3, n_rows * 3.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not issues:
        axes[0, 0].text(0, 0.5, "No likely label error found.", fontsize=14)
    for ax, (file, split, given, suggested, score) in zip(axes.ravel(), issues):
        ax.imshow(_thumbnail(paths.RAW / file))
        ax.set_title(f"{file}\n{split}: labelled {given}\nlooks like {suggested} (quality {score:.2f})", fontsize=8)
    fig.suptitle("Likely label errors (out-of-fold, confident learning), most suspicious first")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def reliability_png(path: Path, y_true, before, after, temperature: float) -> None:
    """Reliability diagram: accuracy against confidence, before and after the
    temperature fitted on val; a calibrated model sits on the diagonal."""
    from tlpipe.scoring import expected_calibration_error, reliability

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, probs, style in (("uncalibrated", before, "o-"), (f"temperature {temperature:g}", after, "s-")):
        points = reliability(y_true, probs)
        ax.plot([c for c, _, _ in points], [a for _, a, _ in points], style,
                label=f"{name} (ECE {expected_calibration_error(y_true, probs):.3f})")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("Reliability of the shipped model (test split)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def label_confusion_png(path: Path, y_true, decided, classes: list[str], thresholds) -> None:
    """Multi-label: each label's 2 x 2 counts (actual yes/no by decided yes/no) at its threshold, in a grid."""
    k = len(classes)
    cols = min(4, k)
    n_rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(cols * 2.8, n_rows * 2.8), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, (ax, name) in enumerate(zip(axes.ravel(), classes)):
        cm = confusion_matrix(y_true[:, j], decided[:, j].astype(int), labels=[1, 0])
        ax.axis("on")
        ax.imshow(cm / max(cm.sum(), 1), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks([0, 1], ["yes", "no"])
        ax.set_yticks([0, 1], ["yes", "no"])
        ax.set_xlabel("decided", fontsize=8)
        ax.set_ylabel("actual", fontsize=8)
        ax.set_title(f"{name} (from {thresholds[j]:.2f})", fontsize=9)
        for a in range(2):
            for b in range(2):
                ax.text(b, a, str(cm[a, b]), ha="center", va="center", fontsize=10,
                        color="white" if cm[a, b] > cm.sum() / 2 else "black")
    fig.suptitle("Per-label decisions (shipped model, test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_label_pr_png(path: Path, y_true, probs, classes: list[str]) -> None:
    """Each label's (or class's, one against the rest) precision-recall curve
    on test, its average precision in the legend; ``y_true``: multi-hot rows."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = plt.subplots(figsize=(6, 5))
    for j, name in enumerate(classes):
        if y_true[:, j].any():
            precision, recall, _ = precision_recall_curve(y_true[:, j], probs[:, j])
            ax.step(recall, precision, where="post",
                    label=f"{name} (AP {average_precision_score(y_true[:, j], probs[:, j]):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.05)
    ax.set_title("Precision-recall per class or label (shipped model, test)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def largest_losses_png(path: Path, rows, losses, actual: list[str], decided: list[str], count: int) -> None:
    """Multi-label: the test images with the largest loss, their label sets given and decided."""
    order = np.argsort(-np.asarray(losses), kind="stable")[:count]
    cols = 4
    n_rows = max(1, int(np.ceil(len(order) / cols)))
    fig, axes = plt.subplots(n_rows, cols, figsize=(cols * 3, n_rows * 3.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order):
        ax.imshow(_thumbnail(paths.RAW / rows[i].path))
        ax.set_title(f"true: {actual[i] or '(none)'}\ndecided: {decided[i] or '(none)'}\nloss {losses[i]:.2f}",
                     fontsize=8)
    fig.suptitle("Largest per-image losses (shipped model, test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
