"""Issue 24, item 2, measured before it is built: do cached augmented views
(the mirror image, a centre crop) of the pooled features help a linear head?

    python bench/views.py [REPO]   (REPO: after `dvc repro train_head`; default: a fresh one on params.yaml)

Pushes the mirror image, a centre crop (85 % of the side, resized back) and
the crop's mirror image of every split image through the same frozen
backbone as extract (one forward pass per view), then fits bench/probe.py's
linear probe (C chosen on val accuracy, ties val loss) with the views in
train, at evaluation (probabilities averaged over the views), or both.
Prints val accuracy and loss at the chosen C, the lowest val loss over C,
and test accuracy for the record (never used to choose).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from _common import repo_from_argv
from probe import C_GRID

VIEWS = ("orig", "mirror", "crop", "crop_mirror")
CROP_SIDE = 0.85


def view_features(repo, backbone: str, image_size: int) -> dict:
    """{(view, split): features}: extract's own for the original, a forward pass per other view."""
    import keras
    import yaml

    from tlpipe import backbones, extract, images
    from tlpipe.artifacts import read_split, sources

    weights = yaml.safe_load((repo / "params.yaml").read_text())["weights"]
    pooled, _, _, _ = extract.feature_model(backbones.get(backbone), image_size, weights, "all")

    def through(view):
        pixels = keras.Input((image_size, image_size, 3))
        x = pixels
        if "crop" in view:
            side = int(image_size * CROP_SIDE)
            x = keras.layers.Resizing(image_size, image_size, antialias=True)(keras.layers.CenterCrop(side, side)(x))
        if "mirror" in view:
            x = keras.ops.flip(x, axis=2)  # the width axis
        return keras.Model(pixels, pooled(x))

    out = {}
    for view in VIEWS:
        model = None if view == "orig" else through(view)
        for split in ("train", "val", "test"):
            if model is None:
                out[view, split] = np.load(repo / "data" / "features" / f"{split}.npy").astype(np.float64)
                continue
            batches = images.predict(model, *sources(read_split(split)), image_size, 64, f"{view} {split}")
            out[view, split] = np.concatenate(list(batches)).astype(np.float64)
    return out


def fit(features: dict, labels: dict, train_views, eval_views) -> str:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    x_train = np.concatenate([features[v, "train"] for v in train_views])
    y_train = np.concatenate([labels["train"]] * len(train_views))
    scaler = StandardScaler().fit(x_train)

    def probs(model, split):
        return np.mean([model.predict_proba(scaler.transform(features[v, split])) for v in eval_views], axis=0)

    best, lowest = None, np.inf
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x_train), y_train)
        val = probs(model, "val")
        loss = log_loss(labels["val"], val, labels=model.classes_)
        lowest = min(lowest, loss)
        key = (float(np.mean(val.argmax(1) == labels["val"])), -loss)
        if best is None or key > best[0]:
            best = (key, c, float(np.mean(probs(model, "test").argmax(1) == labels["test"])))
    (accuracy, neg_loss), c, test = best
    return (f"train {'+'.join(train_views):28s} eval {'+'.join(eval_views):28s} C={c:<7.3g} "
            f"val {accuracy:.4f} / {-neg_loss:.4f} (lowest over C {lowest:.4f})  test {test:.4f}")


def main() -> None:
    import yaml

    repo = repo_from_argv("views", "train_head").resolve()
    os.chdir(repo)  # the split's paths are relative to the repository
    sys.path.insert(0, str(repo / "src"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    features = view_features(repo, params["backbone"], params["image_size"])
    labels = {s: np.load(repo / "data" / "features" / f"{s}_labels.npy") for s in ("train", "val", "test")}
    plain, mirrored = ["orig"], ["orig", "mirror"]
    for train_views, eval_views in ((plain, plain), (plain, mirrored), (mirrored, plain), (mirrored, mirrored),
                                    (list(VIEWS), plain), (list(VIEWS), list(VIEWS))):
        print(fit(features, labels, train_views, eval_views), flush=True)


if __name__ == "__main__":
    main()
