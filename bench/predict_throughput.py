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
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import REPO, require_keras_home


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
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
    list(images.predict(both, *sources(warm), p.image_size, args.batch_size))
    start = time.perf_counter()
    for _ in images.predict(both, *sources(rows), p.image_size, args.batch_size, "extract's model"):
        pass
    extract_rate = n / (time.perf_counter() - start)

    model = load_model(Path("models/model.keras"))
    mirrored = any(isinstance(layer, Mirror) for layer in model.layers)
    list(images.predict(model, *sources(warm), p.image_size, args.batch_size))
    start = time.perf_counter()
    for _ in images.predict(model, *sources(rows), p.image_size, args.batch_size, "shipped model"):
        pass
    model_rate = n / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "predictions.csv"
        files = [str(f) for f in sources(rows)[0]]
        cli.main(["predict", "--out", str(out), "--batch-size", str(args.batch_size), *files[: args.batch_size]])
        start = time.perf_counter()
        rc = cli.main(["predict", "--out", str(out), "--batch-size", str(args.batch_size), *files])
        predict_rate = n / (time.perf_counter() - start)
        written = sum(1 for _ in out.open()) - 1
    if rc or written != n:
        raise SystemExit(f"tlpipe predict failed (rc {rc}, {written} of {n} rows)")

    print(f"\n{n} train images, batch {args.batch_size}, {p.backbone} at {p.image_size} px, "
          f"shipped model {'with' if mirrored else 'without'} the mirror average")
    print(f"extract's model (features + '{plan.word}' prefix): {extract_rate:7.1f} img/s  1.00")
    print(f"shipped model alone:                    {model_rate:7.1f} img/s  {model_rate / extract_rate:.2f}")
    print(f"tlpipe predict (CSV, unfamiliar score): {predict_rate:7.1f} img/s  {predict_rate / extract_rate:.2f}")
    if mirrored:
        print(f"tlpipe predict per forward pass (two per image): {2 * predict_rate / extract_rate:.2f} of extract's")


if __name__ == "__main__":
    main()
