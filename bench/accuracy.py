"""Issue 24's targets, measured in one run per data set, on the default params.

    python bench/accuracy.py [--data cats,signs,cephalopods]   (KERAS_HOME=../shared/keras offline)

For each data set, a fresh copy of the pipeline (empty DVC cache): the whole
default `dvc repro`, timed; then, on that run's own split and cached features,
the scikit-learn linear probe (bench/probe.py, C chosen on val); then one
decode + forward pass of every image of the split through the same backbone
with plain Keras and tf.data (what any pipeline must pay at least once).
Prints the shipped model's and the head's val and test accuracy, the probe's,
the ratio of test errors (shipped / probe; target <= 0.8 on the multi-class
sets), and the pipeline's time in such passes (target <= 2.5).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import yaml
from _common import (REPO, SHARED_KERAS, copy_pipeline, markdown_table, publish, require_keras_home, run_timed,
                     stage_costs)
from probe import probe

DATA = {
    "cats": None,  # params.yaml's own source
    "signs": SHARED_KERAS / "datasets" / "sign_language_digits.zip",
    "cephalopods": REPO.parent / "shared" / "data" / "cephalopod_photos.zip",
}


def one_pass_seconds(work: Path, backbone: str, image_size: int) -> tuple[float, int]:
    """Seconds for one decode + forward pass of every split image, plain Keras + tf.data."""
    import keras
    import tensorflow as tf

    files = []
    for split in ("train", "val", "test"):
        with open(work / "data" / "split" / f"{split}.csv", newline="") as f:
            files += [str(work / "data" / "raw" / row["path"]) for row in csv.DictReader(f)]
    alpha = {"mobilenet_0.75": 0.75, "mobilenet_0.25": 0.25}[backbone]
    model = keras.applications.MobileNet(input_shape=(image_size, image_size, 3), alpha=alpha,
                                         include_top=False, pooling="avg", weights="imagenet")

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, (image_size, image_size), antialias=True)
        return keras.applications.mobilenet.preprocess_input(image)

    data = (tf.data.Dataset.from_tensor_slices(files).map(load, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(64).prefetch(tf.data.AUTOTUNE))
    start = time.perf_counter()
    model.predict(data, verbose=0)
    return time.perf_counter() - start, len(files)


ROWS = []


def one_data_set(name: str) -> None:
    work = copy_pipeline(Path(tempfile.mkdtemp(prefix=f"tlpipe-accuracy-{name}-")) / "repo")
    params = yaml.safe_load((work / "params.yaml").read_text())
    if DATA[name] is not None:
        params["data"]["source"] = str(DATA[name])
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro, out = run_timed(["dvc", "repro"], work)
    baseline = probe(work)
    one_pass, n_images = one_pass_seconds(work, params["backbone"], params["image_size"])
    head = json.loads((work / "reports/head.json").read_text())
    ft = json.loads((work / "reports/finetune.json").read_text())
    ev = json.loads((work / "reports/eval.json").read_text())
    shipped_error, probe_error = 1 - ev["finetuned"]["accuracy"], 1 - baseline["test_accuracy"]
    print(f"{name}: {n_images} images ({work}); dvc repro {repro:.1f} s = {repro / one_pass:.2f} passes "
          f"(one decode + forward pass {one_pass:.1f} s)")
    stages = stage_costs(out)
    print("  stages (share of dvc repro): " + ", ".join(f"{stage} {seconds / repro:.0%}"
                                                        for stage, (seconds, _) in stages.items())
          + f"; DVC and the rest {1 - sum(s for s, _ in stages.values()) / repro:.0%}")
    print(f"  probe   (C={baseline['C']:.3g}): val {baseline['val_accuracy']:.4f}  test {baseline['test_accuracy']:.4f}")
    grid = {True: ", reads the grid", False: ", average alone"}.get(head.get("reads_grid"), "")
    print(f"  head    ({head['solver']}, l2={head['l2']:.0e}{grid}, {head.get('fit_seconds', 0):.1f} s):   "
          f"val {head['val_accuracy']:.4f}  test {ev['head']['accuracy']:.4f}  val loss {head['val_loss']:.4f}")
    tuned = (f"fine-tuned val {ft['finetuned_val_accuracy']:.4f} / loss {ft['finetuned_val_loss']:.4f}, gain "
             f"{ft['val_loss_gain_se']:.2f} SE" if "finetuned_val_loss" in ft else "not fine-tuned")
    print(f"  shipped ({ft['shipped']}, tta {ft['tta']}): val {ft['val_accuracy']:.4f}  "
          f"test {ev['finetuned']['accuracy']:.4f}  val loss {ft['val_loss']:.4f}  ({tuned}; fit "
          f"{ft['fit_seconds']:.1f} s, {ft['epochs_run']} epochs)")
    ratio = shipped_error / probe_error if probe_error else float("nan")
    with open(work / "data" / "split" / "val.csv", newline="") as f:
        n_val = sum(1 for _ in csv.DictReader(f))
    val_images = round((ft["val_accuracy"] - ft["head_val_accuracy"]) * n_val)
    print(f"  test error shipped / probe: {ratio:.2f}; shipped against the head on val: loss "
          f"{ft['val_loss']:.4f} / {ft['head_val_loss']:.4f}, {val_images:+d} of {n_val} images right "
          f"(scoring.beats: a clearly lower loss, no more images lost than McNemar's noise)", flush=True)
    shares = ", ".join(f"{stage} {seconds / repro:.0%}" for stage, (seconds, _) in stages.items())
    ROWS.append([name, n_images, f"{repro / one_pass:.2f}", f"{baseline['test_accuracy']:.4f}",
                 f"{ev['head']['accuracy']:.4f}", f"{ev['finetuned']['accuracy']:.4f} ({ft['shipped']})",
                 f"{ratio:.2f}", f"{val_images:+d} of {n_val}", shares])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=",".join(DATA))
    args = ap.parse_args()
    require_keras_home()
    failed = []
    for name in args.data.split(","):
        try:
            one_data_set(name)
        except SystemExit as err:  # one data set's failure is a figure too: the others still run
            print(f"{name}: FAILED ({err})", flush=True)
            failed.append(name)
    if ROWS:
        publish("accuracy", "Accuracy and time: the default run on three data sets", markdown_table(
            ["data set", "images", "dvc repro, in passes", "probe test acc", "head test acc",
             "shipped test acc", "test error shipped / probe", "shipped vs head on val", "stages' share of the run"],
            ROWS) + "\n\nA pass is one decode + forward pass of the data set through the backbone with plain "
            "Keras and tf.data, timed in the same run. The probe: scikit-learn's logistic regression on the same "
            "split and cached features, C chosen on val.")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
