"""train_head: a classifier head trained on cached features, in seconds.

The head is a small Keras model from a pooled feature vector to class
probabilities (softmax over all classes, binary included, so every consumer
reads probabilities the same way). The finetune stage puts it on top of the
backbone with its trained weights; evaluate runs it on cached test features.

Two solvers (``head.solver``). ``keras`` (the default): Adam with dropout and
early stopping on val loss. ``lbfgs``: a linear head is a multinomial
logistic regression, a convex problem with one answer, solved exactly (L-BFGS
on the whole train split, as the linear-probe protocols of CLIP and
scikit-learn do), its one knob, the L2 strength, chosen on val (``head.l2:
auto``): the strongest regularisation whose val loss is within one standard
error of the best (the one-standard-error rule), so that the choice never
hinges on one val image. It matches the tuned linear probe as a head, but
fine-tuning earns less from it than from the keras head (bench/RESULTS.md,
section 9), hence the default.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from tlpipe import atomic, paths
from tlpipe.artifacts import load_features, read_features_meta
from tlpipe.params import HeadParams
from tlpipe.scoring import image_losses, standard_error
from tlpipe.training import Inputs, LiveLogger, callbacks, compile_model, fit, optimizer, seed_everything

# head.l2: auto tries these strengths of the penalty l2 * sum(kernel**2) on
# the mean loss over standardised features, strongest first, half a decade apart.
L2_GRID = tuple(float(v) for v in np.logspace(0, -6, 13))
# Standardisation divides a feature by at least this share of the features' RMS spread.
FLOOR = 0.1


def build(input_dim: int, n_classes: int, head_params: HeadParams, l2: float = 0.0) -> keras.Model:
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
    probs = keras.layers.Dense(
        n_classes, activation="softmax", kernel_regularizer=reg, dtype="float32", name="head_probs"
    )(x)
    return keras.Model(features, probs, name="head")


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """'auto': weight each class by n / (k * count), as scikit-learn's 'balanced'."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = len(labels) / (n_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def soft_targets(labels: np.ndarray, n_classes: int, label_smoothing: float) -> np.ndarray:
    """One-hot targets, smoothed as Keras' CategoricalCrossentropy smooths them."""
    onehot = np.eye(n_classes)[labels]
    return onehot * (1.0 - label_smoothing) + label_smoothing / n_classes


# ----------------------------------------------------------------- the linear head


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_linear(x: np.ndarray, targets: np.ndarray, weights: np.ndarray, l2: float,
               start: np.ndarray | None = None) -> np.ndarray:
    """The exact minimiser of the weighted mean cross-entropy of softmax(x W + b)
    plus ``l2 * sum(W**2)``: (d + 1, k) parameters, the bias in the last row.
    ``start``: a solution for a nearby ``l2`` (warm start along the grid)."""
    from scipy.optimize import minimize

    n, d = x.shape
    k = targets.shape[1]
    w = weights / weights.mean()

    def loss_and_grad(theta):
        kernel, bias = theta[: d * k].reshape(d, k), theta[d * k:]
        logits = x @ kernel + bias
        logits -= logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -np.sum(w * np.sum(targets * log_probs, axis=1)) / n + l2 * np.sum(kernel**2)
        residual = (np.exp(log_probs) - targets) * (w / n)[:, None]
        grad = np.concatenate([(x.T @ residual + 2 * l2 * kernel).ravel(), residual.sum(axis=0)])
        return loss, grad

    theta0 = np.zeros(d * k + k) if start is None else start.ravel()
    result = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B",
                      options={"maxiter": 1000, "gtol": 1e-5, "ftol": 1e-8})
    return result.x.reshape(d + 1, k)


def linear_probs(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return softmax(x @ theta[:-1] + theta[-1])


def choose_l2(losses: dict[float, np.ndarray]) -> float:
    """The one-standard-error rule over per-image val losses: the strongest
    ``l2`` whose mean loss is within one paired standard error of the best."""
    best = min(losses, key=lambda l2: losses[l2].mean())
    return max(l2 for l2, loss in losses.items()
               if (loss - losses[best]).mean() <= standard_error(loss - losses[best]))


def path_has_turned(val_losses: list[float]) -> bool:
    """Whether the val loss has risen at the last two strengths tried: past
    its minimum, weaker regularisation only overfits (and converges slowest)."""
    best = min(val_losses)
    return len(val_losses) >= 3 and val_losses[-1] > best and val_losses[-2] > best


def train_linear(head_params: HeadParams, x_train, y_train, x_val, y_val, n_classes: int, log_dir) -> tuple:
    """(model, metrics): the linear head, its L2 strength chosen on val when
    ``head.l2`` is auto. Solved on standardised features (well conditioned:
    L-BFGS converges in a hundred steps), then folded back into one Dense
    layer on the raw features. DVCLive logs one step per strength tried."""
    mean, spread = x_train.mean(axis=0, dtype=np.float64), x_train.std(axis=0, dtype=np.float64)
    # Per-feature standardisation (the linear-probe protocol), floored at a
    # tenth of the typical spread: a feature that hardly varies is not blown up
    # into a huge weight, which fine-tuning (it moves such features) would turn
    # into huge logits.
    scale = np.maximum(spread, FLOOR * np.sqrt(np.mean(spread**2))) + 1e-12
    standard = lambda x: (x.astype(np.float64) - mean) / scale  # noqa: E731
    x_fit, x_check = standard(x_train), standard(x_val)
    targets = soft_targets(y_train, n_classes, head_params.label_smoothing)
    weights_of = class_weights(y_train, n_classes, head_params.class_weight)
    weights = np.ones(len(y_train)) if weights_of is None else np.array([weights_of[c] for c in y_train])
    grid = L2_GRID if head_params.l2 is None else (head_params.l2,)
    theta, solutions, val_losses = None, {}, {}
    began = time.perf_counter()
    live = LiveLogger(log_dir)
    live.on_train_begin()
    for l2 in grid:  # strongest first: each solution warm-starts the next
        theta = solutions[l2] = fit_linear(x_fit, targets, weights, l2, theta)
        train_probs, val_probs = linear_probs(x_fit, theta), linear_probs(x_check, theta)
        val_losses[l2] = image_losses(y_val, val_probs)
        live.on_epoch_end(len(solutions) - 1, {
            "loss": float(np.mean(image_losses(y_train, train_probs))),
            "accuracy": float(np.mean(train_probs.argmax(1) == y_train)),
            "val_loss": float(val_losses[l2].mean()),
            "val_accuracy": float(np.mean(val_probs.argmax(1) == y_val)),
        })
        if path_has_turned([v.mean() for v in val_losses.values()]):
            break
    live.on_train_end()
    chosen = choose_l2(val_losses)
    theta = solutions[chosen]
    kernel = theta[:-1] / scale[:, None]  # softmax((x - mean) / scale @ W + b) on raw x
    bias = theta[-1] - mean @ kernel
    # Saved without a penalty: fine-tuning from it is regularised by early stopping on
    # val and the head-or-fine-tuned choice (a penalty kept here made it worse on val).
    model = build(x_train.shape[1], n_classes, head_params)
    model.get_layer("head_probs").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    val_probs = linear_probs(x_check, theta)
    metrics = {
        "val_accuracy": round(float(np.mean(val_probs.argmax(1) == y_val)), 4),
        "val_loss": round(float(val_losses[chosen].mean()), 4),
        "solver": "lbfgs",
        "l2": chosen,
        "l2_chosen_on_val": len(grid) > 1,
        "l2_val_loss": {f"{l2:.0e}": round(float(loss.mean()), 4) for l2, loss in val_losses.items()},
        "fit_seconds": round(time.perf_counter() - began, 2),
    }
    return model, metrics


def train_keras(head_params: HeadParams, x_train, y_train, x_val, y_val, n_classes: int, log_dir) -> tuple:
    """(model, metrics): the head trained by Keras (Adam, dropout) with early stopping on val loss."""
    l2 = head_params.l2 or 0.0  # auto: dropout and early stopping regularise it
    model = build(x_train.shape[1], n_classes, head_params, l2)
    compile_model(model, optimizer(head_params.optimizer, head_params.learning_rate), head_params.label_smoothing)
    onehot = lambda y: keras.utils.to_categorical(y, n_classes)  # noqa: E731
    result = fit(
        model,
        Inputs(x_train, onehot(y_train), head_params.batch_size),
        Inputs(x_val, onehot(y_val)),
        head_params.epochs,
        callbacks(head_params.patience, LiveLogger(log_dir)),
        class_weight=class_weights(y_train, n_classes, head_params.class_weight),
    )
    return model, {**result.metrics(), "solver": "keras", "l2": l2, "l2_chosen_on_val": False}


def run(head: HeadParams, *, seed: int) -> dict:
    """data/features -> models/head.keras; reads ``head.*`` and ``seed``."""
    seed_everything(seed)
    n_classes = len(read_features_meta()["classes"])
    x_train, y_train = load_features("train")
    x_val, y_val = load_features("val")
    train = train_linear if head.solver == "lbfgs" else train_keras
    with atomic.atomic_dir(paths.HEAD_LOGS) as log_dir:
        model, metrics = train(head, x_train, y_train, x_val, y_val, n_classes, log_dir)
    atomic.save_keras(paths.HEAD_MODEL, model)
    atomic.write_json(paths.HEAD_METRICS, metrics)
    print(f"train_head: {metrics['solver']}, l2 {metrics['l2']:g}"
          f"{' (chosen on val)' if metrics['l2_chosen_on_val'] else ''}: val accuracy {metrics['val_accuracy']:.4f}, "
          f"val loss {metrics['val_loss']:.4f}")
    return metrics
