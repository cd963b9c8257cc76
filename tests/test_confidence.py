"""Prediction sets (split conformal) and the unfamiliar-input score, by hand
and by the guarantee itself on data drawn alike for val and test."""

import numpy as np
import pytest

from tlpipe import confidence
from tlpipe.errors import TlpipeError


def test_threshold_is_the_conformal_rank_of_val_scores():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 0, 1, 0])  # scores 1 - p(true): 0.1, 0.4, 0.3, 0.8
    # n = 4, coverage 0.6: rank ceil(5 * 0.6) = 3 -> the 3rd smallest score, 0.4
    assert confidence.conformal_threshold(probs, y, 0.6) == pytest.approx(0.4)
    # coverage 0.9 needs rank ceil(4.5) = 5 > 4: too few val images, every class in every set
    assert confidence.conformal_threshold(probs, y, 0.9) == 1.0
    assert [confidence.min_val_images(c) for c in (0.8, 0.9, 0.95, 0.99)] == [4, 9, 19, 99]
    nine = np.tile([[0.8, 0.2]], (9, 1))
    assert confidence.conformal_threshold(nine, np.zeros(9, int), 0.9) < 1.0  # exactly enough


def test_unfamiliar_threshold_is_the_conformal_rank_of_val_distances():
    distances = np.arange(1, 21) / 100  # 20 val images: 0.01 .. 0.20
    assert confidence.unfamiliar_threshold(distances, 0.9) == pytest.approx(0.19)  # rank ceil(21 * 0.9) = 19
    assert confidence.unfamiliar_threshold(distances, 0.99) == 2.0  # needs 99 images: nothing is flagged


def test_sets_hold_every_class_above_the_threshold_and_never_are_empty():
    probs = np.array([[0.5, 0.3, 0.2], [0.34, 0.33, 0.33], [0.98, 0.01, 0.01]])
    sets = confidence.prediction_sets(probs, threshold=0.7)  # classes with p >= 0.3
    assert sets.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    strict = confidence.prediction_sets(probs, threshold=0.01)  # p >= 0.99: none, so the top class alone
    assert strict.sum(axis=1).tolist() == [1, 1, 1] and strict[:, 0].all()


def test_coverage_holds_on_data_drawn_alike():
    """The guarantee: over many random val/test draws from one distribution of
    (probabilities, labels), the test sets hold the true class at least
    ``coverage`` of the time on average (a miscalibrated model included)."""
    rng = np.random.default_rng(0)
    k, coverage, reached, sizes = 4, 0.9, [], []
    for _ in range(200):
        logits = rng.normal(0, 1, (300, k)) * 3
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = np.array([rng.choice(k, p=p ** 0.5 / (p ** 0.5).sum()) for p in probs])  # not what probs say
        t = confidence.conformal_threshold(probs[:100], y[:100], coverage)
        sets = confidence.prediction_sets(probs[100:], t)
        reached.append(sets[np.arange(200), y[100:]].mean())
        sizes.append(sets.sum(axis=1).mean())
    assert np.mean(reached) >= coverage - 0.005
    assert np.mean(sizes) < k  # informative: not every class every time


def test_set_figures_report_coverage_size_and_single_class_share():
    sets = np.array([[True, False], [True, True], [False, True], [True, False]])
    y = np.array([0, 1, 0, 1])
    figures = confidence.set_figures(sets, y, ["a", "b"], 0.9)
    assert figures == {"target_coverage": 0.9, "coverage": 0.5, "mean_set_size": 1.25, "single_class_share": 0.75,
                       "per_class_coverage": {"a": 0.5, "b": 0.5}}


def test_unfamiliar_score_is_the_distance_to_the_kth_nearest_train_image():
    bank = confidence.normalised(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    query = np.array([[2.0, 0.0]])  # cosine similarities 1, 0, 0.7071
    assert confidence.unfamiliar_scores(query, bank, k=1)[0] == pytest.approx(0.0, abs=1e-6)
    assert confidence.unfamiliar_scores(query, bank, k=2)[0] == pytest.approx(1 - 0.5**0.5, abs=1e-6)
    assert confidence.unfamiliar_scores(query, bank, k=9)[0] == pytest.approx(1.0, abs=1e-6)  # k capped at the bank
    many = np.random.default_rng(1).normal(size=(5000, 2))  # chunked: same as one product
    whole = 1 - np.sort(confidence.normalised(many) @ bank.T, axis=1)[:, ::-1][:, 1]
    assert np.allclose(confidence.unfamiliar_scores(many, bank, k=2), whole, atol=1e-6)


def test_trust_file_round_trips_and_a_damaged_one_is_named(tmp_path):
    trust = confidence.Trust(coverage=0.9, threshold=0.2, val_images=10, neighbours=5, unfamiliar_quantile=0.99,
                             unfamiliar_threshold=0.3)
    confidence.save(trust, np.ones((3, 4)), tmp_path / "trust")
    assert confidence.load(tmp_path / "trust") == trust
    bank = confidence.load_bank(tmp_path / "trust")
    assert bank.dtype == np.float16 and np.allclose(np.linalg.norm(bank.astype(float), axis=1), 1, atol=1e-3)
    assert confidence.load(tmp_path / "nothing") is None
    (tmp_path / "trust" / "trust.json").write_text('{"coverage": 0.9}')
    with pytest.raises(TlpipeError, match="is not a tlpipe trust file"):
        confidence.load(tmp_path / "trust")
