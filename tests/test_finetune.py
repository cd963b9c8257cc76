"""Assembling and running the fine-tune model, on several backbones with random
weights at small sizes: the trained head lands in the model, one step changes
exactly the trainable weights, the stage runs each path (freezing itself:
tests/test_freeze.py)."""

import json

import keras
import numpy as np
import pytest

from tlpipe import backbones, freeze, params, train_head
from tlpipe.errors import TlpipeError
from tlpipe.finetune import assemble
from tlpipe.training import compile_model

from conftest import finetune_setup, run_stage_code, tiny_params


def build(raw_params, name, size, word, n_classes=3):
    keras.backend.clear_session()
    p = params.parse(tiny_params(raw_params, "unused", backbone=name, image_size=size, freeze=word))
    dim = backbones.get(name).build(size, "none").output.shape[-1]
    trained_head = train_head.build(dim, n_classes, p.head)
    # Stand-in for trained weights: recognisable values (random, since equal
    # weights would cancel every gradient into the backbone).
    rng = np.random.default_rng(123)
    for w in trained_head.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    spec = backbones.get(name)
    backbone, plan = freeze.frozen_backbone(spec, size, "none", p.freeze)
    model = assemble(finetune_setup(p), p.finetune, backbone, plan, trained_head)
    return p, model, backbone, plan


def head_reference(raw_params, name, size, n_classes=3):
    """The values build() put into the head, rebuilt independently."""
    rng = np.random.default_rng(123)
    p = params.parse(tiny_params(raw_params, "unused", backbone=name, image_size=size))
    dim = backbones.get(name).build(size, "none").output.shape[-1]
    reference = train_head.build(dim, n_classes, p.head)
    return [rng.normal(0, 0.5, w.shape).astype("float32") for w in reference.weights]


def weights_by_layer(layers):
    return {l.name: [keras.ops.convert_to_numpy(w) for w in l.weights] for l in layers}


def test_the_head_trains_past_a_block5_boundary_and_nothing_with_freeze_all(raw_params):
    _, model, _, _ = build(raw_params, "mobilenet_0.25", 32, "block5")
    assert model.get_layer("head").trainable
    _, model, _, plan = build(raw_params, "mobilenet_0.25", 32, "all")
    assert plan.trains_nothing and model.trainable_weights == []


# Random-init MobileNets and EfficientNets shrink activations to ~1e-10 (BN at
# its initial statistics, no residual path), so their gradients cannot move
# float32 weights; VGG16 and ResNet50 pass real gradients at random init.
@pytest.mark.parametrize("name, size", [("vgg16", 32), ("resnet50", 32)])
def test_one_step_changes_trainable_weights_only(raw_params, name, size):
    p, model, backbone, _ = build(raw_params, name, size, "block4")
    compile_model(model, keras.optimizers.SGD(0.5), 0.0)
    frozen = [l for l in backbone.layers if not l.trainable and l.weights]
    trainable = [l for l in backbone.layers if l.trainable and l.trainable_weights]
    before_frozen, before_trainable = weights_by_layer(frozen), weights_by_layer(trainable)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical([0, 1, 2, 0], 3)
    model.train_on_batch(x, y)
    for name_, arrays in weights_by_layer(frozen).items():
        for a, b in zip(arrays, before_frozen[name_]):
            np.testing.assert_array_equal(a, b, err_msg=f"frozen {name_} changed")
    changed = [
        n for n, arrays in weights_by_layer(trainable).items()
        if any(not np.array_equal(a, b) for a, b in zip(arrays, before_trainable[n]))
    ]
    assert changed, "no trainable backbone weight moved"


def test_trained_head_weights_are_in_the_assembled_model(raw_params):
    _, model, _, _ = build(raw_params, "mobilenet_0.25", 32, "block5")
    expected = head_reference(raw_params, "mobilenet_0.25", 32)
    for w, e in zip(model.get_layer("head").weights, expected):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), e)


@pytest.mark.heavy  # the image path with every augmentation: about a minute (make test-heavy)
def test_finetune_stage_with_every_augmentation_on(in_tmp_cwd, raw_params):
    """The uncached path: augmentation layers run each epoch under op determinism,
    and the saved model is the best epoch with the augmentation inactive at inference."""
    import json

    from tlpipe import paths
    from tlpipe.layers import load_model

    from conftest import make_class_folders

    make_class_folders(paths.RAW, per_class=8)
    raw = tiny_params(raw_params, paths.RAW, backbone="resnet50", freeze="block5")
    raw["finetune"]["augment"] = {
        "flip": True, "rotation": 0.1, "zoom": 0.1, "translation": 0.1, "contrast": 0.2, "crop": 0.5
    }
    raw["finetune"].update({"schedule": "plateau", "warmup_epochs": 1, "optimizer": "adamw"})
    p = params.parse(raw)
    metrics = run_stage_code(p, "split", "extract", "train_head", "finetune")
    assert metrics["frozen_prefix_cached"] is False and metrics["epochs_run"] == 2
    model = load_model(paths.MODEL)
    def names(m):  # at any depth: with mirror-image TTA the classifier is a sub-model
        return {l.name for l in m.layers} | {n for l in m.layers if isinstance(l, keras.Model) for n in names(l)}

    assert {"aug_crop", "aug_flip", "aug_rotation", "aug_zoom", "aug_translation", "aug_contrast"} <= names(model)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
    assert json.loads(paths.FINETUNE_REPORT.read_text())["trainable_params"] > 0


@pytest.mark.heavy  # two streamed runs: about a minute (make test-heavy)
def test_finetune_streams_from_files_when_data_does_not_fit(in_tmp_cwd, raw_params, monkeypatch):
    """Data over the memory budget: no prefix cache, no in-memory decode; images
    stream from the files with a seeded per-epoch shuffle, so reruns agree."""
    import json

    from tlpipe import paths

    from conftest import make_class_folders

    from tlpipe import training

    make_class_folders(paths.RAW, per_class=8)
    raw = tiny_params(raw_params, paths.RAW, backbone="resnet50", freeze="block5")
    raw["extract"]["prefix_max_gb"] = 0  # no disk for the prefix
    p = params.parse(raw)
    monkeypatch.setattr(training, "MEMORY_BUDGET_BYTES", 0)  # nor memory for the decoded images
    run_stage_code(p, "split", "extract", "train_head")
    reason = json.loads(paths.prefix_meta().read_text())["reason"]
    assert "more than 'extract.prefix_max_gb' (0); raise it (dvc exp run -S extract.prefix_max_gb=1)" in reason
    runs = []
    for _ in range(2):
        metrics = run_stage_code(p, "finetune")
        assert metrics["frozen_prefix_cached"] is False and metrics["epochs_run"] == 2
        runs.append({k: v for k, v in metrics.items() if not k.endswith("_seconds")})
    assert runs[0] == runs[1]
    assert json.loads(paths.FINETUNE_REPORT.read_text())["val_loss"] == runs[0]["val_loss"]


@pytest.fixture
def trained_head_repo(in_tmp_cwd, raw_params):
    """split, extract (freeze block5, so data/prefix is stored) and train_head on
    synthetic images with a random-init ResNet50."""
    from tlpipe import paths

    from conftest import make_class_folders

    make_class_folders(paths.RAW, per_class=8)
    p = params.parse(tiny_params(raw_params, paths.RAW, backbone="resnet50", freeze="block5"))
    run_stage_code(p, "split", "extract", "train_head")
    return p


def test_stored_prefix_is_the_frozen_layers_output(trained_head_repo):
    """extract's data/prefix holds what fine-tuning's frozen layers compute, for
    the same init (its fingerprint matches), and finetune trains from it."""
    from tlpipe import artifacts, images, paths
    from tlpipe.layers import on_pixels
    from tlpipe.training import seed_everything

    p = trained_head_repo
    meta = artifacts.read_prefix_meta()
    assert meta["cached"] and meta["freeze"] == "block5"
    keras.backend.clear_session()
    seed_everything(p.seed)
    spec = backbones.get("resnet50")
    backbone, plan = freeze.frozen_backbone(spec, 32, "none", "block5")
    assert backbones.weights_fingerprint(backbone) == meta["weights_sha256"]
    pixels, out = on_pixels(spec, 32, keras.Model(backbone.input, plan.boundary))
    for split in ("train", "val", "test"):
        rows = artifacts.read_split(split)
        x = np.concatenate([b.numpy() for b in images.dataset(*artifacts.sources(rows), 32, 4)])  # as extract reads
        direct = keras.Model(pixels, out).predict(x, verbose=0)
        stored = artifacts.load_prefix(split)
        assert stored.dtype == np.float16 and stored.shape == direct.shape
        np.testing.assert_allclose(np.asarray(stored, np.float32), direct, rtol=2e-3, atol=2e-3)  # float16 storage
        if split != "val":
            assert not paths.prefix_file(paths.mirrored(split)).exists()
            continue
        # and on the mirror images, for the choice of mirror-image test-time augmentation
        mirrored = artifacts.load_prefix(paths.mirrored(split))
        assert meta["shape"] == list(mirrored.shape[1:]) and len(mirrored) == len(rows)
        flipped = keras.Model(pixels, out).predict(x[:, :, ::-1], verbose=0)
        np.testing.assert_allclose(np.asarray(mirrored, np.float32), flipped, rtol=2e-3, atol=2e-3)
        assert np.abs(flipped - direct).max() > 0.1  # the mirror image's outputs, not the image's again
    metrics = run_stage_code(p, "finetune")
    assert metrics["frozen_prefix_cached"] is True and metrics["epochs_run"] == 2


def test_a_prefix_stored_for_another_freeze_is_refused(trained_head_repo):
    p = trained_head_repo.with_overrides(freeze="block4")
    with pytest.raises(TlpipeError, match=r"data/prefix was computed for \{'freeze': 'block5'\}.*dvc repro"):
        run_stage_code(p, "finetune")


def test_never_ships_a_model_worse_than_the_head_on_val(trained_head_repo):
    """A learning rate that wrecks the model: no epoch beats the starting point,
    so models/model.keras is the trained head on the frozen backbone."""
    import dataclasses

    from tlpipe import paths
    from tlpipe.layers import load_model

    p = trained_head_repo
    wild = dataclasses.replace(p.finetune, optimizer="sgd", learning_rate=9.0, schedule="constant", tta=False)
    metrics = run_stage_code(p.with_overrides(finetune=wild), "finetune")
    assert metrics["shipped"] == "head" and metrics["runs"] == 1 and metrics["epochs_run"] == 2
    assert metrics["val_loss"] == metrics["head_val_loss"] and metrics["val_loss_gain_se"] <= 1.0
    shipped_head = load_model(paths.MODEL).get_layer("head")
    for a, b in zip(shipped_head.get_weights(), load_model(paths.HEAD_MODEL).get_weights()):
        np.testing.assert_array_equal(a, b)
    saved = json.loads(paths.FINETUNE_REPORT.read_text())
    assert saved["shipped"] == "head"


def test_two_runs_from_the_head_each_in_its_own_order_and_their_average_ships(trained_head_repo, monkeypatch):
    """finetune.runs 2: both runs start from the trained head (the same
    starting point, optimizer state included), see the train split in
    different orders, log one after the other to dvclive/finetune, and the
    fine-tuned candidate is the average of their final weights."""
    import csv
    import dataclasses

    from tlpipe import paths, training
    from tlpipe.layers import load_model

    real_soup, finals = training.soup, []

    def recording_soup(runs):
        finals.extend(runs)
        return real_soup(runs)

    monkeypatch.setattr(training, "soup", recording_soup)
    # the keras head, which fine-tuning clearly improves on here (the exact head fits these images to val loss 0)
    p = trained_head_repo.with_overrides(head=dataclasses.replace(trained_head_repo.head, solver="keras"))
    run_stage_code(p, "train_head")
    two = dataclasses.replace(p.finetune, runs=2, epochs=2, tta=False, batch_size=4)  # two batches: order matters
    metrics = run_stage_code(p.with_overrides(finetune=two), "finetune")
    assert metrics["runs"] == 2 and metrics["epochs_run"] == 4 and len(metrics["run_val_losses"]) == 2
    assert len(finals) == 2 and any(not np.array_equal(a, b) for a, b in zip(*finals))  # two orders, two models
    with open(paths.FINETUNE_LOGS / "plots/metrics/val/loss.tsv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")] == [0, 1, 2, 3]  # both runs, one count
    assert metrics["shipped"] == "finetuned", metrics  # seeded: this data and init fine-tune clearly better
    shipped = load_model(paths.MODEL).get_layer("head").get_layer("head_probs").kernel.numpy()
    run_kernels = [next(w for w in run if w.shape == shipped.shape) for run in finals]
    np.testing.assert_allclose(shipped, (run_kernels[0] + run_kernels[1]) / 2, atol=1e-6)


def test_ships_the_finetuned_model_when_it_beats_the_head_on_val(trained_head_repo):
    metrics = run_stage_code(trained_head_repo, "finetune")
    if metrics["shipped"] == "finetuned":  # by scoring.beats (tested in test_scoring)
        assert metrics["val_loss"] < metrics["head_val_loss"]
    else:
        assert metrics["val_loss"] == metrics["head_val_loss"]
        assert metrics["val_accuracy"] == metrics["head_val_accuracy"]


@pytest.mark.parametrize("tta", [True, False, None])
def test_mirror_image_tta_is_chosen_on_val_and_ships_inside_the_model(trained_head_repo, tta):
    """finetune.tta: true ships a model that averages over the image and its
    mirror image (then the temperature); false ships the plain one; auto keeps
    the mirror only if it beats the plain model on val (scoring.beats)."""
    import dataclasses

    from tlpipe import artifacts, images, paths
    from tlpipe.layers import load_model, temperature_of
    from tlpipe.scoring import temperature_scaled, val_figures

    p = trained_head_repo
    metrics = run_stage_code(p.with_overrides(finetune=dataclasses.replace(p.finetune, tta=tta)), "finetune")
    shipped = load_model(paths.MODEL)
    mirrored = "mirror" in [layer.name for layer in shipped.layers]
    assert metrics["tta"] is mirrored
    if tta is False:
        assert not mirrored and "val_loss_with_tta" not in metrics
        return
    if tta is None and mirrored:  # clearly lower val loss, so lower
        assert metrics["val_loss_with_tta"] < metrics["val_loss_without_tta"]
    if mirrored:
        rows = artifacts.read_split("val")
        x = np.concatenate([b.numpy() for b in images.dataset(*artifacts.sources(rows), 32, 8)])
        classifier = next(layer for layer in shipped.layers if isinstance(layer, keras.Model))
        plain, flipped = (classifier.predict(v, verbose=0).astype(np.float64) for v in (x, x[:, :, ::-1]))
        expected = temperature_scaled((plain + flipped) / 2, temperature_of(shipped))
        np.testing.assert_allclose(shipped.predict(x, verbose=0), expected, atol=1e-5)
        # the figures the choice was made on (stored prefixes through the trained
        # top) are the shipped classifier's on the images, float16 storage aside
        loss, _ = val_figures(artifacts.label_indices(rows, artifacts.read_classes()), (plain + flipped) / 2)
        assert metrics["val_loss_with_tta"] == pytest.approx(loss, abs=2e-3)
