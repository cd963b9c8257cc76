"""`tlpipe predict` against extract, images per second on the same images,
both in this one process (TensorFlow's start-up counted in neither).

Run after `dvc repro` (it needs models/model.keras and data/split):

    KERAS_HOME=$PWD/../shared/keras python bench/predict_throughput.py [--images 2000]

extract: the stage's own model (pooled features and the frozen prefix) over
the train images, as `extract` streams them. predict: `tlpipe predict` on the
same files, writing its CSV, through the shipped model (and, when the model
averages over the mirror image, its second forward pass) with the unfamiliar
score. A third line times the shipped model alone, without the CLI around it,
so the gap can be told apart: the model's own work or predict's.

This machine's speed changes by up to 1.6x from one half minute to the next,
so the three are measured in turn, ``--repeats`` times (default 3), and each
line gives the median rate and the median of the per-round ratios to extract.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import REPO, require_keras_home


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    require_keras_home()
    import os

    os.chdir(REPO)
    from tlpipe import backbones, cli, extract, images, params
    from tlpipe.artifacts import read_split, sources
    from tlpipe.layers import Mirror, load_model

    p = params.load()
    rows = read_split("train")[: args.images]
    n = len(rows)
    warm = rows[: args.batch_size]

    _, both, _, plan = extract.feature_model(backbones.get(p.backbone), p.image_size, p.weights, p.freeze)
    model = load_model(Path("models/model.keras"))
    mirrored = any(isinstance(layer, Mirror) for layer in model.layers)
    files = [str(f) for f in sources(rows)[0]]

    def through(network, desc):
        def run():
            for _ in images.predict(network, *sources(rows), p.image_size, args.batch_size, desc):
                pass
        list(images.predict(network, *sources(warm), p.image_size, args.batch_size))  # traced before timing
        return run

    def predict_cli(out):
        def run():
            rc = cli.main(["predict", "--out", str(out), "--batch-size", str(args.batch_size), *files])
            written = sum(1 for _ in out.open()) - 1
            if rc or written != n:
                raise SystemExit(f"tlpipe predict failed (rc {rc}, {written} of {n} rows)")
        cli.main(["predict", "--out", str(out), "--batch-size", str(args.batch_size), *files[: args.batch_size]])
        return run

    with tempfile.TemporaryDirectory() as tmp:
        runs = {"extract": through(both, "extract's model"), "model": through(model, "shipped model"),
                "predict": predict_cli(Path(tmp) / "predictions.csv")}
        rates = {name: [] for name in runs}
        for _ in range(args.repeats):  # in turn: a slow spell of the machine hits all three alike
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                rates[name].append(n / (time.perf_counter() - start))

    def line(name):
        ratios = [r / e for r, e in zip(rates[name], rates["extract"])]
        return (f"{statistics.median(rates[name]):7.1f} img/s  {statistics.median(ratios):.2f}  "
                f"(ratio min {min(ratios):.2f}, max {max(ratios):.2f})")

    print(f"\n{n} train images, batch {args.batch_size}, {p.backbone} at {p.image_size} px, "
          f"shipped model {'with' if mirrored else 'without'} the mirror average, {args.repeats} rounds, medians")
    print(f"extract's model (features + '{plan.word}' prefix): {line('extract')}")
    print(f"shipped model alone:                    {line('model')}")
    print(f"tlpipe predict (CSV, unfamiliar score): {line('predict')}")
    if mirrored:
        per_pass = statistics.median(2 * r / e for r, e in zip(rates["predict"], rates["extract"]))
        print(f"tlpipe predict per forward pass (two per image): {per_pass:.2f} of extract's")

if __name__ == "__main__":
    main()
