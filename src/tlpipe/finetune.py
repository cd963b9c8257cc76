"""finetune: backbone[freeze:] + the trained head, trained on images -> models/model.keras.

The model is ``pixels -> augmentation -> the backbone's own preprocessing ->
backbone -> head``, with the head's trained weights loaded, so fine-tuning
starts from a trained head, never from a random one. It trains
``finetune.runs`` runs from that same start, each with its own order of the
train images, and averages their weights (a model soup: one run on a small
data set is a noisy draw, their average a steadier model). The starting point
is a candidate too: unless the fine-tuned model beats it on val
(scoring.beats: a clearly lower loss, accuracy not evidently lower), the
shipped model is the head on the frozen backbone (``shipped: head`` in
reports/finetune.json).

Speed: when augmentation is off, the frozen part of the backbone computes the
same thing for an image every epoch; the extract stage stored those outputs
in data/prefix (from the forward pass it makes anyway), so only the trainable
top runs here (``frozen_prefix_cached``). The trainable layers are the very
same layer objects as in the full model, so the saved model holds what was
trained. With augmentation on, images are decoded once into memory when they
fit, else streamed from the files every epoch.

What ships is then chosen on val once more: with ``finetune.tta`` auto, the
model averaged over the image and its mirror image when that beats the plain one
(by the same rule), and a temperature fitted on val in either case. Where it
trains (one device, several replicas, several machines) is
tlpipe.distributed's business; on several machines only the chief writes.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tlpipe import (atomic, backbones, distributed, fit_checkpoint, freeze, headline, images, multilabel, paths, resume,
                    training)
from tlpipe.artifacts import label_indices, load_prefix, read_classes, read_prefix_meta, read_split, sources
from tlpipe.errors import TlpipeError
from tlpipe.fit_checkpoint import SoupCheckpoint
from tlpipe.layers import Mirror, Temperature, as_float32, augmentation, load_model, mirror_averaged, on_pixels
from tlpipe.params import FinetuneParams
from tlpipe.scoring import (MARGIN_SE, beats, expected_calibration_error, fit_temperature, gain_in_standard_errors,
                            image_losses, temperature_scaled, val_figures)
from tlpipe.training import (Inputs, LiveLogger, callbacks, compile_model, learning_rate, optimizer, seed_everything,
                             steps)


@dataclass(frozen=True)
class BackboneChoice:
    """Which backbone, at what size, with which weights, frozen where, seeded
    how: the params keys this stage reads besides ``finetune.*``."""

    backbone: str
    image_size: int
    weights: str
    freeze: str
    seed: int
    pooling: str = "avg"


def mixed_precision_on(setting: bool | None) -> bool:
    import tensorflow as tf

    if setting is None:  # auto
        return bool(tf.config.list_physical_devices("GPU"))
    return setting


def assemble(choice: BackboneChoice, tuning: FinetuneParams, backbone: keras.Model, plan: freeze.Plan,
             head: keras.Model):
    """The classifier on pixels: augmentation, preprocessing, the (frozen as
    ``plan`` says) backbone and the trained head."""
    head.trainable = not plan.trains_nothing
    spec = backbones.get(choice.backbone)
    pixels, features = on_pixels(spec, choice.image_size, backbone, augmentation(tuning.augment, choice.seed))
    return keras.Model(pixels, head(features), name=f"{choice.backbone}_classifier")


def trainable_count(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _top_model(model: keras.Model, backbone: keras.Model, plan: freeze.Plan) -> keras.Model:
    """Frozen-prefix outputs -> class probabilities, through the very layers of
    ``model`` (training it trains ``model``)."""
    prefix_input = keras.Input(tuple(plan.boundary.shape[1:]), name="frozen_prefix")
    top = freeze.layers_above(backbone, plan)
    return keras.Model(prefix_input, model.get_layer("head")(top(prefix_input, training=False)))


def _stored_prefix(choice: BackboneChoice, tuning: FinetuneParams, plan: freeze.Plan, fingerprint: str) -> bool:
    """Whether data/prefix holds this run's frozen-prefix outputs."""
    if tuning.augment.any or not plan.has_prefix:
        return False  # random augmentation runs before the prefix: outputs differ every epoch
    meta = read_prefix_meta()
    if not meta["cached"]:
        print(f"finetune: no stored frozen prefix ({meta['reason']})")
        return False
    wanted = {"backbone": choice.backbone, "image_size": choice.image_size, "weights_sha256": fingerprint,
              "freeze": plan.word}
    stale = {k: meta.get(k) for k, v in wanted.items() if meta.get(k) != v}
    if stale:
        raise TlpipeError(
            f"{paths.PREFIX} was computed for {stale}, not for this run's {({k: wanted[k] for k in stale})}; "
            "run `dvc repro` (it reruns extract first)."
        )
    return True


def _val_inputs(rows, labels, image_size: int, batch_size: int, on_prefix: bool) -> Inputs:
    """What val feeds to evaluate, in order: stored frozen-prefix outputs read
    from disk batch by batch, or decoded images held in memory when they fit,
    or a tf.data stream of (image, label) batches from the files."""
    if on_prefix:
        return Inputs(training.disk_batches(load_prefix("val"), labels, batch_size))
    if _fits_in_memory(rows, image_size):
        desc = f"finetune: decoding val ({len(rows)} images)"
        return Inputs(images.decode_all(*sources(rows), image_size, batch_size, desc), labels, batch_size)
    return Inputs(images.dataset(*sources(rows), image_size, batch_size, labels=labels))


def _train_inputs(rows, labels, image_size: int, batch_size: int, seed: int, on_prefix: bool):
    """(run, skip) -> what the train split feeds to fit in fine-tuning
    run ``run``, in an order of its own in every epoch (training.EpochOrders:
    drawn from the seed, the run and the epoch, so a resumed run continues in
    the orders it began with): the stored prefix, or images decoded into
    memory once for every run when they fit, read batch by batch; else a
    stream of image files. ``skip``: the batches of an epoch SIGTERM
    interrupted that were trained before it."""
    orders = lambda run, skip: training.EpochOrders(len(rows), batch_size, seed, run, skip)  # noqa: E731
    if on_prefix:
        prefix = load_prefix("train")
        return lambda run, skip=0: _ordered(training.disk_batches, prefix, labels, batch_size, orders(run, skip))
    if _fits_in_memory(rows, image_size):
        decoded = images.decode_all(*sources(rows), image_size, batch_size,
                                    f"finetune: decoding train ({len(rows)} images)")
        return lambda run, skip=0: _ordered(training.disk_batches, decoded, labels, batch_size, orders(run, skip))
    return lambda run, skip=0: _ordered(
        lambda *_, orders: images.dataset(*sources(rows), image_size, batch_size, labels=labels, orders=orders),
        None, labels, batch_size, orders(run, skip))


def _ordered(make_batches, x, labels, batch_size: int, orders: training.EpochOrders) -> Inputs:
    return Inputs(make_batches(x, labels, batch_size, orders=orders), orders=orders)


def _fits_in_memory(rows, image_size: int) -> bool:
    return len(rows) * image_size**2 * 3 < training.MEMORY_BUDGET_BYTES


def _mirror_probs(trainer, built: Built, val_rows, y_val: np.ndarray, image_size: int, batch_size: int) -> np.ndarray:
    """The classifier's val probabilities on the mirror images: their stored
    prefix through the trained top when extract stored one (as the plain val
    probabilities were scored), else the images through the whole model."""
    if built.on_prefix and paths.prefix_file(paths.mirrored("val")).is_file():
        stored = Inputs(training.disk_batches(load_prefix(paths.mirrored("val")), y_val, batch_size))
        return trainer.predict(stored).astype(np.float64)
    pixels = keras.Input(built.model.input_shape[1:], name="pixels")
    mirrored = keras.Model(pixels, built.model(Mirror()(pixels)))
    batches = images.predict(mirrored, *sources(val_rows), image_size, batch_size, "finetune: val, mirrored")
    return np.concatenate(list(batches)).astype(np.float64)


def _mirror_choice(plain: np.ndarray, mirrored: np.ndarray, y_val: np.ndarray, tta: bool | None):
    """Whether the shipped model averages over the image and its mirror image
    (``finetune.tta``; auto: when the average beats the plain model on val,
    see scoring.beats), and the val probabilities of the model that ships.
    ``plain`` and ``mirrored``: val probabilities on the images and on their
    mirror images (_mirror_probs)."""
    averaged = (plain + mirrored) / 2
    use = tta if tta is not None else beats(y_val, averaged, plain)
    (loss_without, acc_without), (loss_with, acc_with) = val_figures(y_val, plain), val_figures(y_val, averaged)
    report = {"val_loss_without_tta": loss_without, "val_accuracy_without_tta": acc_without,
              "val_loss_with_tta": loss_with, "val_accuracy_with_tta": acc_with}
    print(f"finetune: mirror-image test-time augmentation {'on' if use else 'off'} (val loss {loss_without:.4f} "
          f"without, {loss_with:.4f} with)")
    return use, averaged if use else plain, report


def _save_shipped(model, val_probs: np.ndarray, mirrored_probs: np.ndarray | None, y_val: np.ndarray,
                  tta: bool | None, classes: list[str]) -> dict:
    """models/model.keras: ``model`` (mirror-averaged if ``tta`` says so, see
    _mirror_choice) with a temperature fitted on val, and (multi-label) each
    label's decision threshold chosen on val (multilabel.choose_thresholds).
    ``val_probs``: the model's val probabilities; ``mirrored_probs``: on the
    mirror images (None with ``tta`` false). Returns what
    reports/finetune.json reports of it."""
    use_tta, report = False, {}
    if tta is not False:
        use_tta, val_probs, report = _mirror_choice(val_probs, mirrored_probs, y_val, tta)
    # Calibration: one temperature fitted on val (never test), stored in the
    # shipped model, so that its probabilities (evaluate, tlpipe predict) mean
    # what they say; its decisions do not change.
    temperature = fit_temperature(val_probs, y_val)
    multi = y_val.ndim == 2
    calibrated = temperature_scaled(val_probs, temperature, multi)
    thresholds, chosen_by = multilabel.choose_thresholds(y_val, calibrated, classes) if multi else (None, {})
    classifier = mirror_averaged(model) if use_tta else model
    shipped = keras.Model(classifier.input,
                          Temperature(temperature, thresholds, name="temperature")(classifier.output), name=model.name)
    mixed = keras.mixed_precision.global_policy().name == "mixed_float16"
    atomic.save_keras(paths.MODEL, as_float32(shipped) if mixed else shipped)
    return {
        "tta": use_tta,
        **report,
        "temperature": temperature,
        "val_ece": round(expected_calibration_error(y_val, val_probs), 4),
        "val_ece_calibrated": round(expected_calibration_error(y_val, calibrated), 4),
        **({"thresholds": dict(zip(classes, thresholds)), "thresholds_chosen_by": chosen_by} if multi else {}),
        "mixed_precision": mixed,  # trained so; the shipped model is float32
    }


def fit_targets(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """What Keras fits to: one-hot rows of class indices; multi-hot rows as they are (float32)."""
    return labels.astype(np.float32) if labels.ndim == 2 else keras.utils.to_categorical(labels, n_classes)


def _devices(tuning: FinetuneParams, seed: int):
    """(strategy, global batch size): where training runs, seeded, with mixed
    precision when asked for (auto: with a GPU)."""
    strategy = distributed.choose_strategy()  # first: it may configure devices
    seed_everything(seed)
    if mixed_precision_on(tuning.mixed_precision):
        keras.mixed_precision.set_global_policy("mixed_float16")
    return strategy, tuning.batch_size * strategy.num_replicas_in_sync  # the per-replica batch stays as configured


@dataclass
class Built:
    """What the build phase made: the classifier on pixels, what trains (its top
    alone when the stored prefix feeds it), and how."""

    model: keras.Model
    fit_model: keras.Model
    plan: freeze.Plan
    trains: bool
    on_prefix: bool
    rate: training.LearningRate
    start: training.StartingPoint  # what every fine-tuning run starts from, and the head to fall back on
    steps: int  # batches in an epoch


def _build(choice: BackboneChoice, tuning: FinetuneParams, n_train: int, batch_size: int) -> Built:
    """The classifier with the trained head on the frozen backbone, and the
    model that trains (its top alone on a stored prefix), compiled. Call inside
    the strategy's scope."""
    spec = backbones.get(choice.backbone)
    # first: the same random init as extract's
    backbone, plan = freeze.frozen_backbone(spec, choice.image_size, choice.weights, choice.freeze, choice.pooling)
    model = assemble(choice, tuning, backbone, plan, load_model(paths.HEAD_MODEL))
    trains = not plan.trains_nothing and tuning.epochs > 0
    on_prefix = trains and _stored_prefix(choice, tuning, plan, backbones.weights_fingerprint(backbone))
    fit_model = _top_model(model, backbone, plan) if on_prefix else model
    epoch_steps = steps(n_train, batch_size)
    rate = learning_rate(tuning.learning_rate, tuning.schedule, tuning.epochs, epoch_steps, tuning.warmup_epochs)
    compile_model(fit_model, optimizer(tuning.optimizer, rate), tuning.label_smoothing)
    fit_model.jit_compile = tuning.xla
    return Built(model, fit_model, plan, trains, on_prefix, rate, training.StartingPoint(fit_model, rate), epoch_steps)


def _soup_of_runs(trainer, built: Built, train_for_run, val: Inputs, tuning: FinetuneParams, log_dir: Path,
                  checkpoint: SoupCheckpoint | None) -> dict:
    """``finetune.runs`` runs of ``finetune.epochs`` each, every one from the
    trained head and the pretrained weights with its own data order; the
    model ends holding their averaged weights (training.soup). One run: that
    run. With a ``checkpoint`` (tlpipe.fit_checkpoint), every epoch end is
    saved, and a checkpoint of an interrupted run is where this one
    continues: finished runs are not trained again. -> their figures for
    reports/finetune.json."""
    first = checkpoint.progress.run if checkpoint and checkpoint.resumed else 0
    if checkpoint and checkpoint.resumed:
        print(f"finetune: {checkpoint.describe(tuning.runs)}", flush=True)
        checkpoint.restore_log(log_dir)
    resume_step = checkpoint.progress.steps_logged() if checkpoint and checkpoint.resumed else None
    # every run on one step count: dvclive/finetune
    logger = LiveLogger(log_dir, fits=tuning.runs - first, resume_step=resume_step)
    finals = checkpoint.finals if checkpoint else []
    results = checkpoint.finished_results() if checkpoint else []
    for run in range(first, tuning.runs):
        built.start.restore()
        if tuning.runs > 1:
            print(f"finetune: run {run + 1} of {tuning.runs} (its own data order)", flush=True)
        results.append(_one_run(trainer, built, train_for_run, val, tuning, log_dir, checkpoint, logger, run))
        if not checkpoint:
            finals.append([v.numpy() for v in built.fit_model.trainable_variables])
    finals = checkpoint.finals if checkpoint else finals  # a reloaded checkpoint holds a new list
    for variable, value in zip(built.fit_model.trainable_variables, training.soup(finals)):
        variable.assign(value)
    return {"runs": tuning.runs, "epochs_run": sum(len(r.history["val_loss"]) for r in results),
            "fit_seconds": round(sum(r.seconds for r in results), 2),
            # saving checkpoints at epoch ends (in fit_seconds; this process's share after a resume)
            "checkpoint_seconds": round(checkpoint.seconds, 2) if checkpoint else 0.0,
            "run_val_losses": [round(r.val_loss, 4) for r in results],
            "kept_epochs": [r.kept + 1 for r in results]}


def _one_run(trainer, built: Built, train_for_run, val: Inputs, tuning: FinetuneParams, log_dir: Path,
             checkpoint: SoupCheckpoint | None, logger: LiveLogger, run: int) -> training.FitResult:
    """One run of the soup, from its start or from the checkpoint of its
    interruption. An epoch SIGTERM interrupted is fitted to its end alone
    first (its batch count differs from a whole epoch's); the checkpoint
    saved at that end is then resumed like any other."""
    while True:
        fit_callbacks = callbacks(tuning.patience, logger, built.rate)
        first_epoch, skip = 0, 0
        if checkpoint and checkpoint.resumes(run):
            first_epoch, skip = checkpoint.restore(fit_callbacks, tuning.epochs)
        if checkpoint:
            fit_callbacks.append(checkpoint.callback(run, fit_callbacks, log_dir, skip, built.steps))
        if not skip:
            result = trainer.fit(train_for_run(run), val, tuning.epochs, fit_callbacks, first_epoch)
            if not checkpoint:
                return result
            result = fit_checkpoint.run_result(checkpoint, fit_callbacks)  # every epoch, interrupted or not
            checkpoint.run_finished(result)
            return result
        logger.fits_left += 1  # one more fit on the log
        with fit_checkpoint.best_weights_kept(fit_callbacks):  # the run is not over at this fit's end
            trainer.fit(train_for_run(run, skip), val, tuning.epochs, [*fit_callbacks, fit_checkpoint.OneEpoch()],
                        first_epoch)
        checkpoint.reload()


def _fit_or_keep_head(trainer, built: Built, train_for_run, val: Inputs, y_val: np.ndarray, tuning: FinetuneParams,
                      log_dir: Path, checkpoint: SoupCheckpoint | None) -> tuple[str, np.ndarray, dict]:
    """Fine-tune from the head (_soup_of_runs); keep the result only if it
    beats the head on val (scoring.beats). -> (shipped: "finetuned" or "head",
    its val probabilities, its figures for reports/finetune.json, which report
    the fine-tuned model's val figures and its val-loss gain in standard
    errors either way)."""
    head_probs = trainer.predict(val).astype(np.float64)
    loss, accuracy = val_figures(y_val, head_probs)
    figures = {"val_accuracy": accuracy, "val_loss": loss, "runs": 0, "epochs_run": 0, "fit_seconds": 0.0,
               "head_val_accuracy": accuracy, "head_val_loss": loss}
    if train_for_run is None:  # nothing to train: freeze all, or epochs 0
        log_dir.joinpath("metrics.json").write_text("{}\n")
        return "head", head_probs, figures
    figures.update(_soup_of_runs(trainer, built, train_for_run, val, tuning, log_dir, checkpoint))
    tuned_probs = trainer.predict(val).astype(np.float64)
    tuned_loss, tuned_accuracy = val_figures(y_val, tuned_probs)
    gain = gain_in_standard_errors(image_losses(y_val, tuned_probs), image_losses(y_val, head_probs))
    figures.update(finetuned_val_loss=tuned_loss, finetuned_val_accuracy=tuned_accuracy, val_loss_gain_se=round(gain, 2))
    if beats(y_val, tuned_probs, head_probs):
        figures.update(val_accuracy=tuned_accuracy, val_loss=tuned_loss)
        return "finetuned", tuned_probs, figures
    built.start.restore()  # back to the head on the frozen backbone
    print(f"finetune: the fine-tuned model (val loss {tuned_loss:.4f}, accuracy {tuned_accuracy:.4f}) did not beat "
          f"the trained head (loss {loss:.4f}, accuracy {accuracy:.4f}) by more than noise (gain {gain:.2f} standard "
          f"errors, {MARGIN_SE:g} needed, or accuracy evidently lower): shipping the head on the frozen backbone")
    return "head", head_probs, figures


def _metrics(figures: dict, shipped: str, shipping: dict, built: Built, data_seconds: float, strategy,
             batch_size: int) -> dict:
    """reports/finetune.json (its headline: tlpipe.headline): the fit's figures, what shipped and how it trained."""
    return {
        **figures,
        "shipped": shipped,
        **shipping,
        # Time spent loading stored frozen-prefix outputs, or decoding images into memory.
        "prefix_seconds": round(data_seconds, 2) if built.on_prefix else 0.0,
        "data_seconds": round(data_seconds, 2),
        "trainable_params": trainable_count(built.model),
        "freeze": built.plan.word,
        "frozen_prefix_cached": built.on_prefix,
        "prefix_bytes_per_image": read_prefix_meta()["bytes_per_image"] if built.on_prefix else 0,
        "replicas": strategy.num_replicas_in_sync,
        "workers": distributed.worker_count(),
        "global_batch_size": batch_size,
    }


def run(tuning: FinetuneParams, choice: BackboneChoice) -> dict:
    """images (or data/prefix) + models/head.keras -> models/model.keras; reads
    ``finetune.*`` and ``BackboneChoice``. On several machines every worker trains and
    the chief alone writes (see tlpipe.distributed). On one machine an
    interrupted run (kill, crash, SIGTERM) resumes from its checkpoint
    (tlpipe.fit_checkpoint)."""
    with resume.Preemption("finetune") as preemption:
        return _run(tuning, choice, preemption)


def _run(tuning: FinetuneParams, choice: BackboneChoice, preemption: resume.Preemption) -> dict:
    strategy, batch_size = _devices(tuning, choice.seed)
    chief = distributed.is_chief()
    classes = read_classes()
    train_rows, val_rows = read_split("train"), read_split("val")
    y_train, y_val_idx = label_indices(train_rows, classes), label_indices(val_rows, classes)
    y_train, y_val = fit_targets(y_train, len(classes)), fit_targets(y_val_idx, len(classes))

    with strategy.scope():
        built = _build(choice, tuning, len(train_rows), batch_size)
    trainer = distributed.trainer(strategy, built.fit_model, tuning.label_smoothing, batch_size, choice.seed)
    key = resume.stage_key("finetune") if built.trains else None
    checkpoint = None
    if key:
        several = distributed.worker_count() > 1
        checkpoint = SoupCheckpoint(built.fit_model, built.rate, key, preemption, chief=chief,
                                    from_chief=(lambda data: distributed.from_chief(strategy, data)) if several else None)

    start = time.perf_counter()  # data: stored prefix outputs, or images
    val_batch = distributed.val_batch(len(val_rows), batch_size, strategy.num_replicas_in_sync)
    val = _val_inputs(val_rows, y_val, choice.image_size, val_batch, built.on_prefix)
    train_for_run = (_train_inputs(train_rows, y_train, choice.image_size, batch_size, choice.seed, built.on_prefix)
                     if built.trains else None)
    data_seconds = time.perf_counter() - start

    # Other workers of a cluster log to a scratch folder: the chief's logs are the run's.
    with (atomic.atomic_dir(paths.FINETUNE_LOGS) if chief else tempfile.TemporaryDirectory()) as log_dir:
        shipped, val_probs, figures = _fit_or_keep_head(trainer, built, train_for_run, val, y_val_idx, tuning,
                                                        Path(log_dir), checkpoint)
    if not chief:
        if checkpoint:
            checkpoint.done()
        print(f"finetune: {distributed.describe_task()} done; the chief writes {paths.MODEL} and "
              f"{paths.FINETUNE_REPORT}, this worker writes nothing")
        return figures

    mirrored_probs = (None if tuning.tta is False
                      else _mirror_probs(trainer, built, val_rows, y_val, choice.image_size, val_batch))
    shipping = _save_shipped(built.model, val_probs, mirrored_probs, y_val_idx, tuning.tta, classes)
    metrics = _metrics(figures, shipped, shipping, built, data_seconds, strategy, batch_size)
    headline.write("finetune", metrics)
    if checkpoint:
        checkpoint.done()
    mirrored = " with mirror-image TTA" if shipping["tta"] else ""
    print(
        f"finetune: shipped the {shipped} model{mirrored}: val accuracy {metrics['val_accuracy']:.4f}, "
        f"val loss {metrics['val_loss']:.4f} (freeze {built.plan.word})"
    )
    return metrics
