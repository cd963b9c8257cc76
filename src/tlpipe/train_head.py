"""train_head: a classifier head trained on cached features, in seconds.

The head is a small Keras model from a pooled feature vector to class
probabilities (softmax over all classes, binary included, so every consumer
reads probabilities the same way). The finetune stage puts it on top of the
backbone with its trained weights; evaluate runs it on cached test features.

Two solvers (``head.solver``). ``lbfgs`` (the default): a linear head is a
multinomial logistic regression, a convex problem with one answer, solved
exactly (L-BFGS, as the linear-probe protocols of CLIP and scikit-learn do).
Its one knob, the L2 strength (``head.l2: auto``), is chosen by
cross-validation over train + val, the strongest whose out-of-fold loss is
within one standard error of the best; on grid-pooled features the same
cross-validation decides whether the head reads the quadrants' columns. The
head is then fitted on train alone. ``keras``: Adam with dropout and early
stopping on val loss (and hidden layers, if asked for); docs/pipeline.md
("The exact head") says why lbfgs is the default: the keras head was worse
out of fold than the tuned linear probe on two data sets and overfits grid
features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from tlpipe import atomic, headline, paths
from tlpipe.artifacts import (FeatureRows, RowWriter, load_features, load_labels, load_stacked_features,
                              read_features_meta)
from tlpipe.blas import BlasThreads
from tlpipe.params import HeadParams
from tlpipe.scoring import accuracy, clearly_lower, gain_in_standard_errors, image_losses, standard_error, val_figures
from tlpipe.training import Inputs, LiveLogger, callbacks, compile_model, fit, optimizer, seed_everything

# head.l2: auto tries these strengths of the penalty l2 * sum(kernel**2) on
# the mean loss over standardised features, strongest first, half a decade apart.
L2_GRID = tuple(float(v) for v in np.logspace(0, -6, 13))
# head.l2: auto is chosen on this many folds of train + val.
FOLDS = 5
# Fitting folds together keeps (rows x folds x classes) float64 arrays, several at
# once; beyond this many elements (32 MB each) fewer folds are fitted together.
JOINT_ELEMENTS = 4_000_000
# Standardisation divides a feature by at least this share of the features' RMS spread.
FLOOR = 0.1


def build(input_dim: int, n_classes: int, head_params: HeadParams, l2: float = 0.0,
          multi_label: bool = False) -> keras.Model:
    reg = keras.regularizers.L2(l2) if l2 else None
    features = keras.Input((input_dim,), name="features")
    x = features
    for i, width in enumerate(head_params.hidden, start=1):
        if head_params.dropout:
            x = keras.layers.Dropout(head_params.dropout, name=f"head_dropout_{i}")(x)
        x = keras.layers.Dense(width, kernel_regularizer=reg, name=f"head_dense_{i}")(x)
        if head_params.batchnorm:
            x = keras.layers.BatchNormalization(name=f"head_bn_{i}")(x)
        x = keras.layers.Activation("relu", name=f"head_relu_{i}")(x)
    # the exact head is regularised by its L2 alone, as it was fitted
    if head_params.dropout and head_params.solver == "keras":
        x = keras.layers.Dropout(head_params.dropout, name="head_dropout")(x)
    # float32 output even under mixed precision: softmax in float16 loses the tails.
    # Multi-label: each label's own probability (a sigmoid), not a share of one.
    probs = keras.layers.Dense(
        n_classes, activation="sigmoid" if multi_label else "softmax", kernel_regularizer=reg, dtype="float32",
        name="head_probs"
    )(x)
    return keras.Model(features, probs, name="head")


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """'auto': weight each class by n / (k * count), as scikit-learn's 'balanced'
    (multi-label: label_weights, per (image, label) instead)."""
    if mode == "none" or labels.ndim == 2:
        return None
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = len(labels) / (n_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def label_weights(labels: np.ndarray, n_train: int, mode: str) -> np.ndarray | None:
    """Multi-label, 'auto': each label a balanced binary problem (scikit-learn's
    'balanced' on its yes and no, by train's counts), so a rare label's few
    positives weigh as much as its many negatives: -> (images x labels) weights."""
    if mode == "none" or labels.ndim != 2:
        return None
    train = labels[:n_train].astype(np.float64)
    positives = np.maximum(train.sum(axis=0), 1)
    negatives = np.maximum(n_train - train.sum(axis=0), 1)
    return np.where(labels > 0, n_train / (2 * positives), n_train / (2 * negatives))


def soft_targets(labels: np.ndarray, n_classes: int, label_smoothing: float) -> np.ndarray:
    """One-hot targets, smoothed as Keras' CategoricalCrossentropy smooths them
    (multi-label: the multi-hot rows, as BinaryCrossentropy smooths them)."""
    if labels.ndim == 2:
        return labels * (1.0 - label_smoothing) + label_smoothing / 2
    onehot = np.eye(n_classes)[labels]
    return onehot * (1.0 - label_smoothing) + label_smoothing / n_classes


# ----------------------------------------------------------------- the linear head


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * logits))  # no overflow warning for large negative logits


def fit_linear(x: FeatureRows | np.ndarray, targets: np.ndarray, weights: np.ndarray, l2: float,
               start: np.ndarray | None = None, label_weights: np.ndarray | None = None,
               multi_label: bool = False) -> np.ndarray:
    """The exact minimiser of the weighted mean cross-entropy of softmax(x W + b)
    plus ``l2 * sum(W**2)``: (d + 1, k) parameters, the bias in the last row.
    ``start``: a solution for a nearby ``l2`` (warm start along the grid).
    ``multi_label``: of sigmoid(x W + b), one logistic regression per label
    (their binary cross-entropies summed), ``label_weights`` per (image, label)."""
    return fit_linear_jointly(x, targets, weights[None], l2, None if start is None else start[None],
                              label_weights, multi_label)[0]


def fit_linear_jointly(x: FeatureRows | np.ndarray, targets: np.ndarray, weights: np.ndarray, l2: float,
                       start: np.ndarray | None = None, label_weights: np.ndarray | None = None,
                       multi_label: bool = False) -> np.ndarray:
    """``fit_linear`` for several row weightings at once (``weights``: one row
    per problem, the folds of a cross-validation) -> (problems, d + 1, k). The
    problems are independent, so minimising their sum solves each; every step
    reads ``x`` once for all of them, a block of rows at a time, in float32
    products (four times faster than float64, exact enough for the
    tolerance), the rest in float64."""
    from scipy.optimize import minimize

    x = as_rows(x)
    (n, d), k, problems = x.shape, targets.shape[1], len(weights)
    # each problem's mean loss over its weighted rows: (n, problems, 1)
    w = (weights / weights.mean(axis=1, keepdims=True)).T[:, :, None] / n
    if label_weights is not None:
        w = w * label_weights[:, None, :]
    targets = targets[:, None, :]

    def loss_and_grad(flat):
        theta = flat.reshape(problems, d + 1, k)
        kernel, bias = theta[:, :-1], theta[:, -1]
        side_by_side = kernel.transpose(1, 0, 2).reshape(d, problems * k).astype(np.float32)
        loss, kernel_grad, bias_grad = l2 * np.sum(kernel**2), np.zeros((d, problems * k)), 0.0
        for first, block in x.blocks():
            rows = slice(first, first + len(block))
            logits = (block @ side_by_side).astype(np.float64).reshape(len(block), problems, k) + bias
            if multi_label:  # -[t log s(z) + (1 - t) log s(-z)] = softplus(z) - t z
                loss += np.sum(w[rows] * (np.logaddexp(0, logits) - targets[rows] * logits))
                residual = (sigmoid(logits) - targets[rows]) * w[rows]
            else:
                logits -= logits.max(axis=2, keepdims=True)
                log_probs = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
                loss -= np.sum(w[rows] * targets[rows] * log_probs)
                residual = (np.exp(log_probs) - targets[rows]) * w[rows]
            kernel_grad += block.T @ residual.reshape(len(block), problems * k).astype(np.float32)
            bias_grad = bias_grad + residual.sum(axis=0)
        kernel_grad = kernel_grad.reshape(d, problems, k).transpose(1, 0, 2)
        grad = np.concatenate([kernel_grad + 2 * l2 * kernel, bias_grad[:, None]], axis=1)
        return loss, grad.ravel()

    theta0 = np.zeros(problems * (d + 1) * k) if start is None else start.ravel()
    with BlasThreads() as threads:  # L-BFGS-B's bookkeeping on one thread, the loss's products on every core
        result = minimize(threads.every_core(loss_and_grad), theta0, jac=True, method="L-BFGS-B",
                          options={"maxiter": 1000, "gtol": 1e-5, "ftol": 1e-8})
    return result.x.reshape(problems, d + 1, k)


def linear_probs(x: FeatureRows | np.ndarray, theta: np.ndarray, multi_label: bool = False) -> np.ndarray:
    # float32 products: the features are not copied to float64
    kernel = theta[:-1].astype(np.float32)
    logits = np.concatenate([(block @ kernel).astype(np.float64) for _, block in as_rows(x).blocks()]) + theta[-1]
    return sigmoid(logits) if multi_label else softmax(logits)


def as_rows(x: FeatureRows | np.ndarray) -> FeatureRows:
    return x if isinstance(x, FeatureRows) else FeatureRows(x)  # an array: as float32, in memory


def choose_l2(losses: dict[float, np.ndarray]) -> float:
    """The one-standard-error rule over per-image losses: the strongest
    ``l2`` whose mean loss is within one paired standard error of the best."""
    best = min(losses, key=lambda l2: losses[l2].mean())
    return max(l2 for l2, loss in losses.items()
               if (loss - losses[best]).mean() <= standard_error(loss - losses[best]))


def path_has_turned(losses: list[float]) -> bool:
    """Whether the loss has risen at the last two strengths tried: past its
    minimum, weaker regularisation only overfits (and converges slowest)."""
    best = min(losses)
    return len(losses) >= 3 and losses[-1] > best and losses[-2] > best


def column_mean_and_spread(x: FeatureRows, n_rows: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and standard deviation over the first ``n_rows``
    rows, in float64, ``block`` rows at a time (NumPy's own std makes a
    float64 copy of the whole array)."""

    def leading_blocks():
        for first, rows in x.blocks():
            rows = rows[: max(0, n_rows - first)]
            yield from (rows[i : i + block] for i in range(0, len(rows), block))

    count = max(n_rows, 1)
    mean = sum((part.sum(axis=0, dtype=np.float64) for part in leading_blocks()), np.zeros(x.shape[1])) / count
    squares = sum((((part - mean) ** 2).sum(axis=0) for part in leading_blocks()), np.zeros(x.shape[1]))
    return mean, np.sqrt(squares / count)


def fold_masks(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """FOLDS held-out masks over ``labels``' rows, stratified by class where
    every class has an image in each fold."""
    from sklearn.model_selection import KFold, StratifiedKFold

    folds = min(FOLDS, len(labels))  # a handful of images: as many folds as images
    stratified = labels.ndim == 1 and np.bincount(labels).min() >= folds
    splitter = (StratifiedKFold if stratified else KFold)(folds, shuffle=True, random_state=seed)
    masks = []
    for _, held in splitter.split(labels, labels):
        mask = np.zeros(len(labels), bool)
        mask[held] = True
        masks.append(mask)
    return masks


@dataclass
class L2Path:
    """One set of feature columns (on its row-space coordinates ``z``) along
    the L2 grid: each strength's out-of-fold losses over train + val, and its
    solutions on the folds (their average warm-starts the fit on train)."""

    columns: int
    z: FeatureRows
    basis: np.ndarray | None
    cv_losses: dict = field(default_factory=dict)
    fold_fits: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)  # DVCLive's figures per strength

    def chosen(self) -> float:
        return choose_l2(self.cv_losses)


def row_space(x: FeatureRows | np.ndarray) -> tuple[FeatureRows, np.ndarray | None]:
    """(``x``'s coordinates in the span of its rows, that span's basis, d x r),
    or (``x``, None) when it has no fewer rows than columns (or is on disk).
    An L2-penalised linear model's optimum on any of the rows lies in their
    span, so fitting on the coordinates is exact, with n x n products instead
    of n x d: ten times fewer on 400 images of 3,840 features."""
    x = as_rows(x)
    if len(x) >= x.shape[1] or x.array is None:
        return x, None
    basis, r = np.linalg.qr(x.array.T)  # x = r.T @ basis.T, basis orthonormal
    return FeatureRows(np.ascontiguousarray(r.T)), basis


def l2_path(x, labels, targets, weights, grid, folds, label_weights=None) -> L2Path:
    """``x`` fitted on each fold's other rows along ``grid`` (strongest first,
    each solution warm-starting the next), until the out-of-fold loss has
    turned. A held-out row weighs 0 rather than being copied out: no second
    copy of the features. Multi-label labels (multi-hot rows): sigmoid fits."""
    multi = labels.ndim == 2
    path = L2Path(x.shape[1], *row_space(x))
    held_out, theta = np.array(folds), None
    at_once = max(1, JOINT_ELEMENTS // (len(labels) * targets.shape[1]))  # folds fitted together
    for l2 in grid:
        theta = np.concatenate([
            fit_linear_jointly(path.z, targets, weights * ~held_out[i : i + at_once], l2,
                               None if theta is None else theta[i : i + at_once], label_weights, multi)
            for i in range(0, len(folds), at_once)])
        out_of_fold, held_probs, fitted = np.empty(len(labels)), np.empty(targets.shape), []
        for i, held in enumerate(folds):
            probs = linear_probs(path.z, theta[i], multi)
            out_of_fold[held] = image_losses(labels[held], probs[held])
            held_probs[held] = probs[held]
            fitted.append((image_losses(labels[~held], probs[~held]).mean(), accuracy(labels[~held], probs[~held])))
        path.cv_losses[l2], path.fold_fits[l2] = out_of_fold, theta
        path.steps.append({"loss": float(np.mean([f[0] for f in fitted])),
                           "accuracy": float(np.mean([f[1] for f in fitted])),
                           "val_loss": float(out_of_fold.mean()), "val_accuracy": accuracy(labels, held_probs)})
        if path_has_turned([v.mean() for v in path.cv_losses.values()]):
            break
    return path


def unrotated(theta: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """Parameters on row-space coordinates -> on the features themselves."""
    return theta if basis is None else np.vstack([basis @ theta[:-1], theta[-1:]])


def choose_columns(paths: list[L2Path]) -> L2Path:
    """The average-pooled columns alone, unless every column (the grid's too)
    gives clearly lower out-of-fold losses, each at its chosen strength."""
    if len(paths) == 1:
        return paths[0]
    average, every = paths
    if clearly_lower(every.cv_losses[every.chosen()], average.cv_losses[average.chosen()]):
        return every
    return average


def train_linear(head_params: HeadParams, x: FeatureRows | np.ndarray, labels: np.ndarray, n_train: int,
                 n_classes: int, log_dir, average_columns: int | None = None, seed: int = 0,
                 scratch: Path | None = None) -> tuple:
    """(model, metrics): the linear head. With ``head.l2: auto`` its L2
    strength is chosen by cross-validation over train + val (the
    one-standard-error rule on FOLDS folds' out-of-fold losses: every image
    judges, not val's alone), and on grid-pooled features whether it reads the
    grid's columns besides the first ``average_columns`` (only on a clear
    cross-validated gain). The chosen fit is on train alone, so val still
    judges it against fine-tuning. Solved on standardised features (well
    conditioned: L-BFGS converges in a hundred steps), then folded back into
    one Dense layer on the raw features. DVCLive logs one step per strength
    tried. ``x``: train's features, then val's: an array (float32,
    standardised in place: the one array of the features' size), or rows on
    disk, standardised into a file in ``scratch`` and read a block at a time
    at every step (memory flat however many images)."""
    x, mean, scale = standardise(as_rows(x), n_train, scratch)
    multi = labels.ndim == 2
    targets = soft_targets(labels, n_classes, head_params.label_smoothing)
    weights = row_weights(labels, n_train, n_classes, head_params.class_weight)
    per_label = label_weights(labels, n_train, head_params.class_weight)
    in_train = np.arange(len(labels)) < n_train
    began = time.perf_counter()
    paths = []
    if head_params.l2 is None:  # auto: cross-validated
        folds = fold_masks(labels, seed)
        paths = [l2_path(x.first(c), labels, targets, weights, L2_GRID, folds, per_label)
                 for c in column_sets(x, average_columns)]
        path = choose_columns(paths)
        l2 = path.chosen()
        start = np.mean(path.fold_fits[l2], axis=0)  # the folds' solutions, averaged: close to train's
    else:
        path, l2, start = L2Path(x.shape[1], *row_space(x)), head_params.l2, None
    fitted = fit_linear(path.z, targets, weights * in_train, l2, start, per_label, multi)
    probs = linear_probs(path.z, fitted, multi)  # on the coordinates: no copy of the features' rows
    log_steps(log_dir, path.steps or [fit_figures(labels, probs, in_train)])
    model = dense_head(unrotated(fitted, path.basis), mean, scale, n_classes, head_params, multi)
    val_loss, val_accuracy = val_figures(labels[~in_train], probs[~in_train])
    metrics = {
        "val_accuracy": val_accuracy,
        "val_loss": val_loss,
        "solver": "lbfgs",
        "l2": l2,
        "l2_chosen_by": f"{FOLDS}-fold cross-validation over train + val" if paths else "params",
        "l2_cv_loss": {f"{v:.0e}": round(float(loss.mean()), 4) for v, loss in path.cv_losses.items()},
        "fit_seconds": round(time.perf_counter() - began, 2),
    }
    if len(paths) == 2:
        average, every = paths
        metrics["reads_grid"] = path is every
        metrics["grid_cv_gain_se"] = round(gain_in_standard_errors(every.cv_losses[every.chosen()],
                                                                   average.cv_losses[average.chosen()]), 2)
    return model, metrics


def standardise(x: FeatureRows, n_train: int, scratch: Path | None) -> tuple[FeatureRows, np.ndarray, np.ndarray]:
    """Per-feature standardisation on train's statistics (the linear-probe
    protocol) -> (the rows standardised, mean, scale): in place in memory, or
    written once as float32 to a file in ``scratch`` (read back at every step
    of the fit, it costs a read, not a conversion). The scale is floored at a
    tenth of the typical spread: a feature that hardly varies is not blown up
    into a huge weight, which fine-tuning (it moves such features) would turn
    into huge logits."""
    mean, spread = column_mean_and_spread(x, n_train)
    scale = np.maximum(spread, FLOOR * np.sqrt(np.mean(spread**2))) + 1e-12
    mean32, scale32 = mean.astype(np.float32), scale.astype(np.float32)
    if x.array is not None:
        x.array -= mean32
        x.array /= scale32
        return x, mean, scale
    atomic.require_space(scratch, len(x) * x.shape[1] * 4,
                         f"train_head: the standardised features of {len(x)} images (scratch space beside "
                         f"{paths.HEAD_MODEL})", " (with pooling: grid; pooling: avg needs a fifth of it)")
    writer = RowWriter(Path(scratch) / "standardised.npy", len(x), (x.shape[1],), np.float32)
    for first, rows in x.blocks():
        rows -= mean32
        rows /= scale32
        writer[first : first + len(rows)] = rows
    return FeatureRows(files=[writer.path]), mean, scale


def row_weights(labels: np.ndarray, n_train: int, n_classes: int, mode: str) -> np.ndarray:
    """Each row's class weight (``class_weights`` by train's counts; val's rows too, for the folds)."""
    weights_of = class_weights(labels[:n_train], n_classes, mode)  # multi-label: label_weights instead
    return np.ones(len(labels)) if weights_of is None else np.array([weights_of[c] for c in labels])


def column_sets(x: np.ndarray, average_columns: int | None) -> list[int]:
    """The columns each cross-validated path reads: the average's alone, then
    all of them (grid pooling); or all of them."""
    if average_columns and average_columns < x.shape[1]:
        return [average_columns, x.shape[1]]
    return [x.shape[1]]


def fit_figures(labels: np.ndarray, probs: np.ndarray, fitted_rows: np.ndarray) -> dict:
    """Loss and accuracy on the rows fitted ("train") and the others ("val")."""
    figures = {}
    for prefix, rows in (("", fitted_rows), ("val_", ~fitted_rows)):
        figures[f"{prefix}loss"] = float(np.mean(image_losses(labels[rows], probs[rows])))
        figures[f"{prefix}accuracy"] = accuracy(labels[rows], probs[rows])
    return figures


def log_steps(log_dir, steps: list[dict]) -> None:
    """One DVCLive step per strength tried."""
    live = LiveLogger(log_dir)
    live.on_train_begin()
    for step, figures in enumerate(steps):
        live.on_epoch_end(step, figures)
    live.on_train_end()


def dense_head(theta: np.ndarray, mean: np.ndarray, scale: np.ndarray, n_classes: int,
               head_params: HeadParams, multi_label: bool = False) -> keras.Model:
    """The fit on the first rows of ``theta``'s columns (on standardised
    features) folded into the head's one Dense layer on the raw features; the
    columns it does not read weigh 0."""
    full = np.zeros((len(mean) + 1, n_classes))
    full[: len(theta) - 1], full[-1] = theta[:-1], theta[-1]
    kernel = full[:-1] / scale[:, None]  # softmax((x - mean) / scale @ W + b) on raw x
    bias = full[-1] - mean @ kernel
    # Saved without a penalty: fine-tuning from it is regularised by early stopping on
    # val and the head-or-fine-tuned choice (a penalty kept here made it worse on val).
    model = build(len(mean), n_classes, head_params, multi_label=multi_label)
    model.get_layer("head_probs").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def train_keras(head_params: HeadParams, x_train, y_train, x_val, y_val, n_classes: int, log_dir) -> tuple:
    """(model, metrics): the head trained by Keras (Adam, dropout) with early stopping on val loss."""
    l2 = head_params.l2 or 0.0  # auto: dropout and early stopping regularise it
    multi = y_train.ndim == 2
    model = build(x_train.shape[1], n_classes, head_params, l2, multi)
    compile_model(model, optimizer(head_params.optimizer, head_params.learning_rate), head_params.label_smoothing)
    onehot = lambda y: y.astype(np.float32) if multi else keras.utils.to_categorical(y, n_classes)  # noqa: E731
    result = fit(
        model,
        Inputs(x_train, onehot(y_train), head_params.batch_size),
        Inputs(x_val, onehot(y_val)),
        head_params.epochs,
        callbacks(head_params.patience, LiveLogger(log_dir)),
        class_weight=class_weights(y_train, n_classes, head_params.class_weight),
    )
    return model, {**result.metrics(), "solver": "keras", "l2": l2, "l2_chosen_by": "params"}


def train_and_val_rows() -> tuple[FeatureRows, np.ndarray]:
    """Train's features, then val's, and their labels: in memory when they
    are fewer than their columns (the fit then runs on their row space, at
    most columns x columns numbers), else left on disk to be read a block at
    a time."""
    splits = ("train", "val")
    rows = FeatureRows(files=[paths.features_file(split) for split in splits])
    if len(rows) < rows.shape[1]:
        x, labels = load_stacked_features(splits)
        return FeatureRows(x), labels
    return rows, load_labels(splits)


def run(head: HeadParams, *, seed: int) -> dict:
    """data/features -> models/head.keras; reads ``head.*`` and ``seed``."""
    seed_everything(seed)
    meta = read_features_meta()
    n_classes = len(meta["classes"])
    with atomic.atomic_dir(paths.HEAD_LOGS) as log_dir:
        if head.solver == "lbfgs":
            x, labels = train_and_val_rows()
            with atomic.scratch_beside(paths.HEAD_MODEL) as scratch:
                model, metrics = train_linear(head, x, labels, meta["images"]["train"], n_classes, log_dir,
                                              meta.get("average_columns"), seed, scratch)
        else:
            if meta.get("pooling") == "grid" and not head.l2:
                print("train_head: note: the keras head with no L2 overfits grid features on small data sets "
                      "(docs/pipeline.md, \"The exact head\"); set head.l2 (dvc exp run -S head.l2=0.001) or pooling: avg")
            (x_train, y_train), (x_val, y_val) = load_features("train"), load_features("val")
            model, metrics = train_keras(head, x_train, y_train, x_val, y_val, n_classes, log_dir)
    atomic.save_keras(paths.HEAD_MODEL, model)
    headline.write("head", metrics)
    grid = {True: ", grid columns read", False: ", average columns alone"}.get(metrics.get("reads_grid"), "")
    print(f"train_head: {metrics['solver']}, l2 {metrics['l2']:g} (by {metrics['l2_chosen_by']}){grid}: "
          f"val accuracy {metrics['val_accuracy']:.4f}, val loss {metrics['val_loss']:.4f}")
    return metrics
