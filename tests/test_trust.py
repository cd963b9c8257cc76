"""The trust stage on a small model trained by the pipeline's own code
(synthetic images, random-weight backbone): prediction sets calibrated on
val, and an unfamiliar score that flags a class the model never saw."""

import json

import numpy as np
import pytest

from tlpipe import artifacts, confidence, params, paths

from conftest import (SHARED_KERAS, COLOURS, draw_image, make_class_folders, needs_shared, run_stage_code, tiny_params,
                      working_dir)


def pipeline_until_evaluate(root, trust_quantile=0.99, **top):
    import yaml

    from conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["trust"]["unfamiliar_quantile"] = trust_quantile  # 10 val images promise at most 0.909
    with working_dir(root):
        make_class_folders(paths.RAW, per_class=20)  # 10 val images: enough for coverage 0.9
        p = params.parse(tiny_params(raw, paths.RAW, **top))
        run_stage_code(p, "split", "extract", "train_head", "finetune")
        trust = run_stage_code(p, "trust")
        results = run_stage_code(p, "evaluate")
    return root, p, trust, results


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    return pipeline_until_evaluate(tmp_path_factory.mktemp("trust"))


@pytest.fixture(scope="module")
def calibrated_imagenet(tmp_path_factory):
    """Real ImageNet weights: a random backbone's pooled features are mostly
    zeros, alike for every image, and tell nothing apart."""
    weights = SHARED_KERAS / "models" / "mobilenet_2_5_224_tf_no_top.h5"
    root = tmp_path_factory.mktemp("trust-imagenet")
    return pipeline_until_evaluate(root, image_size=224, weights=str(weights), trust_quantile=0.9)


def test_trust_is_calibrated_on_val_and_stored_beside_the_model(calibrated):
    root, p, trust, _ = calibrated
    assert confidence.load(root / paths.TRUST) == trust
    assert trust.coverage == p.trust.coverage and trust.val_images == 10 and 0 <= trust.threshold < 1
    bank = confidence.load_bank(root / paths.TRUST)
    n_train = len(artifacts.read_split("train", root / paths.SPLIT))
    assert bank.shape[0] == n_train
    assert trust.unfamiliar_threshold == 2.0  # 10 val images cannot promise 1 % false alarms: none flagged


def test_evaluate_reports_sets_and_unfamiliar_rate_on_test(calibrated):
    root, _, trust, results = calibrated
    on_disk = json.loads((root / paths.EVAL_REPORT).read_text())
    assert on_disk["conformal"] == results["conformal"]
    cf = results["conformal"]
    assert cf["target_coverage"] == trust.coverage and 0 <= cf["coverage"] <= 1 and cf["mean_set_size"] >= 1
    assert set(cf["per_class_coverage"]) == {"red", "blue"}
    assert 0 <= results["unfamiliar"]["test_rate"] <= 1
    rows = (root / paths.PLOTS / "predictions.csv").read_text().splitlines()
    assert rows[0].endswith("prediction_set,unfamiliar")
    assert (root / paths.PLOTS / "conformal" / "per_class.csv").read_text().startswith("class,coverage")


@needs_shared
def test_a_class_never_seen_is_mostly_unfamiliar_and_the_models_own_test_images_are_not(calibrated_imagenet,
                                                                                         tmp_path):
    from tlpipe.layers import load_model

    root, _, trust, _ = calibrated_imagenet
    for i in range(20):
        draw_image(COLOURS["green"], seed=777_000 + i).save(tmp_path / f"green_{i}.jpg")
    with working_dir(root):
        shipped = load_model(paths.MODEL)
        bank = confidence.load_bank(paths.TRUST)
        green = [artifacts.Row(str(f.resolve()), "green", "tf") for f in sorted(tmp_path.glob("*.jpg"))]
        _, unseen = confidence.probabilities_and_features(shipped, green, 8, "")
        _, own = confidence.probabilities_and_features(shipped, artifacts.read_split("test"), 8, "")
    flagged_unseen = np.mean(confidence.unfamiliar_scores(unseen, bank, trust.neighbours) > trust.unfamiliar_threshold)
    flagged_own = np.mean(confidence.unfamiliar_scores(own, bank, trust.neighbours) > trust.unfamiliar_threshold)
    assert flagged_unseen >= 0.8, flagged_unseen
    assert flagged_own <= 0.2, flagged_own


def test_too_few_val_images_for_the_coverage_put_every_class_in_every_set(calibrated, capsys):
    import dataclasses

    root, p, _, _ = calibrated
    strict = p.with_overrides(trust=dataclasses.replace(p.trust, coverage=0.95))  # needs 19 val images
    with working_dir(root):
        trust = run_stage_code(strict, "trust")
    assert trust.threshold == 1.0
    out = capsys.readouterr().out
    assert "10 val images are too few for coverage 0.95 (it needs at least 19)" in out
    assert "10 val images are too few to flag unfamiliar images at quantile 0.99 (it needs at least 99)" in out
    assert "lower trust.unfamiliar_quantile (at most 0.909 here)" in out


@needs_shared
def test_the_train_bank_from_the_stored_prefix_is_the_shipped_models_features(calibrated_imagenet, monkeypatch):
    from tlpipe import trust
    from tlpipe.layers import load_model

    root = calibrated_imagenet[0]
    with working_dir(root):
        assert artifacts.read_prefix_meta()["cached"]
        model, rows = load_model(paths.MODEL), artifacts.read_split("train")
        from_prefix = trust.train_features(model, rows, 16)
        from_images = confidence.features(model, rows, 16, "")
        assert from_prefix.shape == from_images.shape
        # the same features up to the prefix's float16 storage
        assert np.abs(from_images).sum(axis=1).min() > 0  # real features, not a random backbone's zeros
        cosine = np.sum(confidence.normalised(from_prefix) * confidence.normalised(from_images), axis=1)
        assert cosine.min() > 0.999
        monkeypatch.setattr(artifacts, "read_prefix_meta", lambda: {"cached": False})  # no stored prefix: the images
        np.testing.assert_array_equal(trust.train_features(model, rows, 16), from_images)


@needs_shared
@pytest.mark.parametrize("split", ["val", "test"])
@pytest.mark.parametrize("mirror_average", [False, True])
def test_a_split_from_the_stored_prefix_is_what_the_shipped_model_gives_on_the_images(calibrated_imagenet, monkeypatch,
                                                                                      capsys, split, mirror_average):
    """What trust (val) and evaluate (test) score: with or without mirror-image
    TTA (its mirror half from the mirror images' stored prefix, val's, or
    from the mirror images, test's), and the images again when no prefix is
    stored."""
    import keras

    from tlpipe.layers import Temperature, load_model, mirror_averaged

    root = calibrated_imagenet[0]
    with working_dir(root):
        model, rows = load_model(paths.MODEL), artifacts.read_split(split)
        if mirror_average:  # the shipped model as finetune saves it with TTA on
            classifier = mirror_averaged(keras.Model(model.input, model.get_layer("temperature").input))
            model = keras.Model(classifier.input, Temperature(0.7, name="temperature")(classifier.output))
        # val's mirror images' prefix is stored (finetune chooses the mirror average on it), test's is not
        assert paths.prefix_file(paths.mirrored(split)).is_file() == (split == "val")
        probs, features = confidence.split_probabilities_and_features(model, split, rows, 8, "stage")
        printed = capsys.readouterr()
        assert f"stage: {split} from data/prefix" in printed.out
        # the progress bar of the mirror images read (on stderr)
        assert (f"stage: {split}'s mirror images" in printed.err) == (mirror_average and split == "test")
        from_images = confidence.probabilities_and_features(model, rows, 8, "")
        assert probs.shape == from_images[0].shape and features.shape == from_images[1].shape
        # the same up to the prefix's float16 storage
        np.testing.assert_allclose(probs, from_images[0], atol=2e-3)
        assert np.array_equal(probs.argmax(1), from_images[0].argmax(1))
        cosine = np.sum(confidence.normalised(features) * confidence.normalised(from_images[1]), axis=1)
        assert cosine.min() > 0.999
        monkeypatch.setattr(artifacts, "read_prefix_meta", lambda: {"cached": False})  # no stored prefix: the images
        for got, want in zip(confidence.split_probabilities_and_features(model, split, rows, 8, "stage"),
                             from_images):
            np.testing.assert_array_equal(got, want)


@needs_shared
def test_a_prefix_of_another_split_is_refused_by_name(calibrated_imagenet, monkeypatch):
    from tlpipe.errors import TlpipeError
    from tlpipe.layers import load_model

    root = calibrated_imagenet[0]
    with working_dir(root):
        model, rows = load_model(paths.MODEL), artifacts.read_split("test")
        with pytest.raises(TlpipeError, match=r"data/prefix holds \d+ test rows, data/split/test.csv 3; run `dvc repro`"):
            confidence.split_probabilities_and_features(model, "test", rows[:3], 8, "evaluate")
