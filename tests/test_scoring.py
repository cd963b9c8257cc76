"""scoring: the one rule that replaces a model on val, robust to single images."""

import numpy as np

from tlpipe import scoring
from tlpipe.scoring import MARGIN_SE, beats, clearly_lower, gain_in_standard_errors, log_loss, scores


def probs_for(y, right_prob):
    """Two-class probabilities giving the true class ``right_prob`` (per image)."""
    p = np.empty((len(y), 2))
    p[np.arange(len(y)), y] = right_prob
    p[np.arange(len(y)), 1 - y] = 1 - np.asarray(right_prob)
    return p


def test_a_gain_carried_by_one_image_is_not_clearly_lower():
    old = np.full(100, 0.10)
    one_image = old.copy()
    one_image[0] = 0.0  # a big gain on one image, nothing elsewhere
    assert not clearly_lower(one_image, old)
    assert abs(gain_in_standard_errors(one_image, old) - 1.0) < 1e-9  # exactly one standard error, however large
    assert not clearly_lower(np.where(np.arange(100) == 0, -50.0, old), old)
    assert clearly_lower(old - 0.01, old)  # a small gain on every image is one


def test_two_images_that_agree_are_a_gain_and_the_margin_is_above_one_image():
    old = np.full(40, 0.30)  # a small val set: 40 images
    two_images = old.copy()
    two_images[:2] = 0.05
    assert MARGIN_SE >= 1.0  # a one-image gain never passes
    assert gain_in_standard_errors(two_images, old) > MARGIN_SE and clearly_lower(two_images, old)
    mixed = old.copy()
    mixed[:2], mixed[2] = 0.05, 0.80  # two images better, one worse by as much: not clear
    assert not clearly_lower(mixed, old)


def test_gain_in_standard_errors_signs_and_degenerate_cases():
    old = np.full(10, 0.5)
    assert gain_in_standard_errors(old + 0.1, old) == -np.inf  # the same loss added everywhere: clearly worse
    assert gain_in_standard_errors(old, old) == 0.0
    assert gain_in_standard_errors(old[:1] - 0.4, old[:1]) == 0.0  # one image: no evidence


def test_beats_needs_a_clear_loss_gain_and_no_clear_accuracy_loss():
    y = np.array([0, 1] * 50)
    old = probs_for(y, np.full(100, 0.7))
    better = probs_for(y, np.full(100, 0.8))
    assert beats(y, better, old) and not beats(y, old, better)
    one_wrong = better.copy()
    one_wrong[0] = [0.45, 0.55]  # the better model now misses one image: noise, still better
    assert beats(y, one_wrong, old)
    three_wrong = better.copy()
    three_wrong[:3] = three_wrong[:3, ::-1] * 0 + [[0.45, 0.55], [0.55, 0.45], [0.45, 0.55]]
    assert not beats(y, three_wrong, old)  # three images lost, none won: clearly less accurate


def test_eval_log_loss_is_the_same_arithmetic_as_the_choices():
    y = np.array([0, 1, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert scores(y, p, ["a", "b"])["log_loss"] == round(log_loss(y, p), 4)


def test_multi_label_figures_read_multi_hot_targets():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (400, 3))
    y = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.uint8)
    sharp = 1 / (1 + np.exp(-2.5 * logits))  # over-confident: a temperature near 2.5 fixes it
    t = scoring.fit_temperature(sharp, y)
    assert t > 1.5
    calibrated = scoring.temperature_scaled(sharp, t, multi_label=True)
    assert scoring.log_loss(y, calibrated) < scoring.log_loss(y, sharp)
    assert scoring.expected_calibration_error(y, calibrated) < scoring.expected_calibration_error(y, sharp)
    loss, accuracy = scoring.val_figures(y, calibrated)
    assert accuracy == round(float(np.mean((calibrated >= 0.5) == (y > 0))), 4)
    exact = scoring.correct(y, calibrated)
    assert exact.shape == (400,) and exact.mean() <= accuracy
