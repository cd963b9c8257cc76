"""The head: an exact logistic regression (scikit-learn's answer), its L2
strength chosen on val by the one-standard-error rule; Keras for hidden layers;
class weights balance skewed classes."""

import json
import shutil

import keras
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from tlpipe import artifacts, params, paths, train_head
from tlpipe.errors import TlpipeError
from tlpipe.layers import load_model
from tlpipe.training import compile_model

from conftest import tiny_params


def blobs(n_per_class=60, classes=3, dim=16, spread=0.9, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    x = (centres[y] + rng.normal(0, spread, (len(y), dim))).astype("float32")
    return x, y


def train_linear(hp, x, y, x_val, y_val, n_classes, log_dir, **kwargs):
    """The stage's call: train's features then val's in one float32 array."""
    x_all = np.concatenate([x, x_val]).astype("float32")
    return train_head.train_linear(hp, x_all, np.concatenate([y, y_val]), len(y), n_classes, log_dir, **kwargs)


def head_params(raw_params, **changes):
    p = params.parse(tiny_params(raw_params, "unused")).head
    return p.__class__(**{**p.__dict__, **changes})


def test_head_with_hidden_layers_learns_separable_classes(in_tmp_cwd, raw_params):
    x, y = blobs(spread=0.3)
    hp = head_params(raw_params, solver="keras", hidden=(8,), epochs=30, batch_size=16)
    model = train_head.build(16, 3, hp)
    compile_model(model, keras.optimizers.Adam(0.01), 0.0)
    model.fit(x, keras.utils.to_categorical(y, 3), epochs=30, batch_size=16, verbose=0)
    acc = (model.predict(x, verbose=0).argmax(axis=1) == y).mean()
    assert acc > 0.95


def test_linear_head_is_scikit_learns_logistic_regression(tmp_path, raw_params):
    """Same objective (C = 1 / (2 n l2) on standardised features), same answer;
    the Keras head on raw features gives the standardised solution's probabilities."""
    x, y = blobs()
    x_val, y_val = blobs(n_per_class=20, seed=1)
    l2 = 0.01
    hp = head_params(raw_params, solver="lbfgs", l2=l2, class_weight="none")
    model, metrics = train_linear(hp, x, y, x_val, y_val, 3, tmp_path / "logs")
    scaler = StandardScaler().fit(x)
    probe = LogisticRegression(C=1 / (2 * len(y) * l2), max_iter=5000, tol=1e-10).fit(scaler.transform(x), y)
    expected = probe.predict_proba(scaler.transform(x_val))
    np.testing.assert_allclose(model.predict(x_val, verbose=0), expected, atol=2e-3)
    assert metrics["solver"] == "lbfgs" and metrics["l2"] == l2 and metrics["l2_chosen_by"] == "params"


def test_auto_l2_is_cross_validated_and_reported(tmp_path, raw_params):
    x, y = blobs(n_per_class=15, dim=64, spread=2.0)  # few images, many features: needs regularising
    x_val, y_val = blobs(n_per_class=40, dim=64, spread=2.0, seed=1)
    model, metrics = train_linear(head_params(raw_params, solver="lbfgs", l2=None), x, y, x_val, y_val, 3,
                                             tmp_path / "logs")
    assert metrics["l2_chosen_by"] == "5-fold cross-validation over train + val"
    tried = {float(k): v for k, v in metrics["l2_cv_loss"].items()}
    assert metrics["l2"] in train_head.L2_GRID and len(tried) >= 3
    assert tried[min(tried)] > min(tried.values())  # the weakest strength overfits: not chosen
    assert metrics["l2"] > min(tried)
    val_probs = model.predict(x_val, verbose=0)
    assert metrics["val_loss"] == pytest.approx(np.mean(-np.log(val_probs[np.arange(len(y_val)), y_val])), abs=1e-4)
    # one DVCLive step per strength tried: in-fold ("train") and out-of-fold ("val") figures
    steps = (tmp_path / "logs" / "plots" / "metrics" / "val" / "loss.tsv").read_text().splitlines()
    assert len(steps) == 1 + len(tried)


def test_fitting_on_row_space_coordinates_is_exact_with_fewer_images_than_features():
    x, y = blobs(n_per_class=10, dim=80)  # 30 images, 80 features
    targets, weights = np.eye(3)[y], np.ones(len(y))
    weights[:5] = 0  # a held-out fold's rows: the span of every row still holds the optimum
    z, basis = train_head.row_space(x)
    assert z.shape == (30, 30) and basis.shape == (80, 30)
    direct = train_head.fit_linear(x, targets, weights, 0.01)
    rotated = train_head.unrotated(train_head.fit_linear(z, targets, weights, 0.01), basis)
    np.testing.assert_allclose(train_head.linear_probs(x, rotated), train_head.linear_probs(x, direct), atol=1e-3)
    assert train_head.row_space(x[:, :20])[1] is None  # more images than features: fitted as they are


def test_the_head_fitted_from_disk_block_by_block_is_the_head_fitted_in_memory(tmp_path, raw_params, monkeypatch):
    """Train + val on disk (float16, as extract stores them) are standardised into a scratch
    file and read a few rows at a time at every step: the same choices and, to float32
    rounding, the same head as from one array in memory."""
    x, y = blobs(n_per_class=40, dim=12, spread=1.5)
    x_val, y_val = blobs(n_per_class=15, dim=12, spread=1.5, seed=1)
    x, x_val = x.astype(np.float16), x_val.astype(np.float16)
    np.save(tmp_path / "train.npy", x)
    np.save(tmp_path / "val.npy", x_val)
    hp = head_params(raw_params, solver="lbfgs", l2=None)
    labels = np.concatenate([y, y_val])
    in_memory, memory_metrics = train_linear(hp, x, y, x_val, y_val, 3, tmp_path / "a", average_columns=4)
    monkeypatch.setattr(artifacts, "FEATURE_BLOCK_BYTES", 7 * 12 * 4)  # 7 rows a block
    rows = artifacts.FeatureRows(files=[tmp_path / "train.npy", tmp_path / "val.npy"])
    (tmp_path / "scratch").mkdir()
    on_disk, disk_metrics = train_head.train_linear(hp, rows, labels, len(y), 3, tmp_path / "b",
                                                    average_columns=4, scratch=tmp_path / "scratch")
    assert (disk_metrics["l2"], disk_metrics["reads_grid"]) == (memory_metrics["l2"], memory_metrics["reads_grid"])
    assert disk_metrics["l2_cv_loss"] == pytest.approx(memory_metrics["l2_cv_loss"], abs=2e-4)
    both = np.concatenate([x, x_val]).astype(np.float32)
    np.testing.assert_allclose(on_disk.predict(both, verbose=0), in_memory.predict(both, verbose=0), atol=2e-3)
    np.testing.assert_array_equal(np.load(tmp_path / "train.npy"), x)  # the stored features are untouched


@pytest.mark.parametrize("signal_in_grid", [False, True])
def test_the_grid_columns_are_read_only_on_a_clear_cross_validated_gain(tmp_path, raw_params, signal_in_grid):
    """Features laid out as grid pooling writes them: ``average`` columns, then more. The head reads the
    extra columns only when they carry what the average lacks; otherwise their weights are 0."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 60)
    centres = rng.normal(0, 1, (3, 8))
    weak, strong = centres[y] + rng.normal(0, 3.0, (180, 8)), centres[y] + rng.normal(0, 0.4, (180, 8))
    noise = rng.normal(0, 1, (180, 32))
    average = weak if signal_in_grid else strong
    extra = np.concatenate([strong, noise[:, 8:]], 1) if signal_in_grid else noise
    x = np.concatenate([average, extra], 1).astype("float32")
    train, val = np.arange(180) % 4 != 0, np.arange(180) % 4 == 0
    model, metrics = train_linear(head_params(raw_params, solver="lbfgs", l2=None), x[train], y[train],
                                             x[val], y[val], 3, tmp_path / "logs", average_columns=8)
    assert metrics["reads_grid"] is signal_in_grid
    assert (metrics["grid_cv_gain_se"] > 1) is signal_in_grid
    kernel = model.get_layer("head_probs").get_weights()[0]
    assert bool(np.any(kernel[8:] != 0)) is signal_in_grid


def test_one_standard_error_rule_prefers_the_stronger_of_two_equal_strengths():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.5, 200)
    losses = {
        1.0: 1.0 + noise,  # clearly worse
        0.1: 0.5 + noise + rng.normal(0, 0.3, 200),  # as good as the best, within noise
        0.01: 0.49 + noise,  # the best mean, by a hair
    }
    assert train_head.choose_l2(losses) == 0.1
    losses[0.1] = losses[0.1] + 0.2  # now clearly worse than the best
    assert train_head.choose_l2(losses) == 0.01


def test_class_weights_balance_skewed_classes():
    labels = np.array([0] * 90 + [1] * 10)
    weights = train_head.class_weights(labels, 2, "auto")
    assert weights[1] / weights[0] == 9.0
    assert train_head.class_weights(labels, 2, "none") is None


def test_balanced_weights_move_the_boundary_toward_the_large_class(tmp_path, raw_params):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-0.5, 1, (180, 2)), rng.normal(0.5, 1, (20, 2))]).astype("float32")
    y = np.array([0] * 180 + [1] * 20)
    recall = {}
    for mode in ("none", "auto"):
        model, _ = train_linear(head_params(raw_params, solver="lbfgs", l2=1e-4, class_weight=mode), x, y, x, y, 2,
                                           tmp_path / mode)
        recall[mode] = np.mean(model.predict(x[y == 1], verbose=0).argmax(1) == 1)
    assert recall["auto"] > recall["none"] + 0.2


def test_the_exact_head_carries_no_dropout_into_fine_tuning(raw_params):
    names = lambda hp: {layer.name for layer in train_head.build(16, 3, hp).layers}  # noqa: E731
    assert "head_dropout" in names(head_params(raw_params, solver="keras"))
    assert "head_dropout" not in names(head_params(raw_params, solver="lbfgs"))


@pytest.mark.parametrize("per_class", [3, 40])  # fewer images than columns: in memory; more: on disk
def test_the_stage_reads_features_as_extract_stores_them_and_leaves_no_scratch(in_tmp_cwd, raw_params, per_class):
    paths.FEATURES.mkdir(parents=True)
    for split, seed in (("train", 0), ("val", 1)):
        x, y = blobs(n_per_class=per_class, dim=20, seed=seed)
        np.save(paths.features_file(split), x.astype(np.float16))
        np.save(paths.labels_file(split), y.astype(np.int32))
    meta = {"classes": ["a", "b", "c"], "images": {"train": 3 * per_class, "val": 3 * per_class},
            "average_columns": 4}
    paths.features_meta().write_text(json.dumps(meta))
    rows, labels = train_head.train_and_val_rows()
    assert (rows.array is None) is (per_class == 40) and len(labels) == 6 * per_class
    metrics = train_head.run(head_params(raw_params, solver="lbfgs", l2=None), seed=0)
    assert metrics["l2_chosen_by"].startswith("5-fold") and paths.HEAD_MODEL.is_file()
    assert sorted(p.name for p in paths.MODELS.iterdir()) == ["head.keras"]  # the scratch file is gone
    x_val, y_val = artifacts.load_features("val")
    probs = load_model(paths.HEAD_MODEL).predict(x_val, verbose=0)
    assert metrics["val_accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y_val), abs=1e-4)


@pytest.mark.parametrize("l2", [None, 0.001])
def test_the_keras_head_on_grid_features_without_l2_says_it_overfits(in_tmp_cwd, raw_params, capsys, l2):
    paths.FEATURES.mkdir(parents=True)
    for split, seed in (("train", 0), ("val", 1)):
        x, y = blobs(n_per_class=10, dim=20, seed=seed)
        np.save(paths.features_file(split), x.astype(np.float16))
        np.save(paths.labels_file(split), y.astype(np.int32))
    meta = {"classes": ["a", "b", "c"], "images": {"train": 30, "val": 30}, "pooling": "grid", "average_columns": 4}
    paths.features_meta().write_text(json.dumps(meta))
    train_head.run(head_params(raw_params, solver="keras", l2=l2, epochs=2), seed=0)
    assert ("note: the keras head with no L2 overfits grid features" in capsys.readouterr().out) is (l2 is None)


def test_a_disk_too_full_for_the_scratch_file_is_a_clear_error_and_writes_nothing(tmp_path, raw_params, monkeypatch):
    x, y = blobs(n_per_class=40, dim=12)
    np.save(tmp_path / "train.npy", x.astype(np.float16))
    (tmp_path / "scratch").mkdir()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    rows = artifacts.FeatureRows(files=[tmp_path / "train.npy"])
    with pytest.raises(TlpipeError, match=r"120 images \(scratch space beside models/head\.keras\) need 6 kB in "
                                          r".*scratch, and 1 kB are free there; free 5 kB or more \(with pooling: grid"):
        train_head.train_linear(head_params(raw_params, solver="lbfgs", l2=0.01), rows, y, 100, 3, tmp_path / "logs",
                                scratch=tmp_path / "scratch")
    assert list((tmp_path / "scratch").iterdir()) == []


# ---------------------------------------------------------------- multi-label: one logistic regression per label


def label_blobs(n=180, labels=3, dim=16, seed=0):
    """Multi-hot labels, each a linear function of the features plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, dim)).astype("float32")
    directions = rng.normal(0, 1, (dim, labels))
    y = (x @ directions + rng.normal(0, 1.5, (n, labels)) > 0.5).astype(np.uint8)
    return x, y


def test_multi_label_head_is_one_scikit_learn_logistic_regression_per_label(tmp_path, raw_params):
    """Sigmoid outputs; each label's column is scikit-learn's binary logistic
    regression at the same strength (the labels' losses are summed, so each
    is solved on its own)."""
    x, y = label_blobs()
    x_val, y_val = label_blobs(n=60, seed=1)
    l2 = 0.01
    hp = head_params(raw_params, solver="lbfgs", l2=l2, class_weight="none")
    model, metrics = train_linear(hp, x, y, x_val, y_val, 3, tmp_path / "logs")
    assert model.get_layer("head_probs").get_config()["activation"] == "sigmoid"
    scaler = StandardScaler().fit(x)
    probs = model.predict(x_val, verbose=0)
    for j in range(3):
        probe = LogisticRegression(C=1 / (2 * len(y) * l2), max_iter=5000, tol=1e-10).fit(scaler.transform(x), y[:, j])
        np.testing.assert_allclose(probs[:, j], probe.predict_proba(scaler.transform(x_val))[:, 1], atol=2e-3)
    assert 0.5 < metrics["val_accuracy"] <= 1 and metrics["val_loss"] > 0


def test_multi_label_auto_weights_balance_each_label_s_yes_and_no(tmp_path, raw_params):
    x, y = label_blobs()
    weights = train_head.label_weights(y, len(y), "auto")
    for j in range(3):  # per label, its yes and its no weigh the same in all
        assert weights[y[:, j] == 1, j].sum() == pytest.approx(weights[y[:, j] == 0, j].sum())
    assert train_head.label_weights(y, len(y), "none") is None
    x_val, y_val = label_blobs(n=60, seed=1)
    model, metrics = train_linear(head_params(raw_params, solver="lbfgs", l2=None), x, y, x_val, y_val, 3,
                                  tmp_path / "logs", seed=0)
    assert metrics["l2_chosen_by"].startswith("5-fold") and model.output_shape == (None, 3)
