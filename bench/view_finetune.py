"""Issue 24, item 2, for fine-tuning: does the trained top, fed the stored
prefix of the mirror image beside the image's own, beat the pipeline's
fine-tuning on val?

    python bench/view_finetune.py [REPO]   (REPO: after `dvc repro finetune`; default: a fresh one on params.yaml)

From the pipeline's own starting point (the trained head on the frozen
backbone, the default finetune params), three fits of the trained top on
stored prefix outputs, each from the same weights with a fresh optimizer and
the same cosine schedule over its own steps, the best val-loss epoch kept:

* ``plain``: the data/prefix rows alone (what the finetune stage does);
* ``random view``: each epoch, each train image as itself or its mirror
  image, at random (the same steps as plain: views cost disk, not time);
* ``both views``: every image and its mirror image every epoch (2x the steps).

The mirror images' prefix outputs are computed here (one forward pass of the
frozen layers per split). Prints val loss and accuracy, with and without
averaging over the val image and its mirror, whether each beats the head by
the pipeline's own rule (scoring.beats), the fit's seconds, and test accuracy
for the record (never used to choose).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from _common import repo_from_argv


def main() -> None:
    repo = repo_from_argv("view-finetune", "finetune").resolve()
    os.chdir(repo)
    sys.path.insert(0, str(repo / "src"))
    import keras

    from tlpipe import backbones, freeze, images, paths, params
    from tlpipe.artifacts import label_indices, load_prefix, read_classes, read_split, sources
    from tlpipe.finetune import BackboneChoice, _top_model, assemble
    from tlpipe.layers import Mirror, load_model, on_pixels
    from tlpipe.scoring import beats, val_figures
    from tlpipe.training import compile_model, learning_rate, optimizer, seed_everything, steps

    p = params.load()
    tuning = p.finetune
    choice = BackboneChoice(p.backbone, p.image_size, p.weights, p.freeze, p.seed, p.pooling)
    seed_everything(p.seed)
    spec = backbones.get(p.backbone)
    backbone, plan = freeze.frozen_backbone(spec, p.image_size, p.weights, p.freeze)
    model = assemble(choice, tuning, backbone, plan, load_model(paths.HEAD_MODEL))
    top = _top_model(model, backbone, plan)
    frozen_part = keras.Model(backbone.input, plan.boundary)

    def prefix_of(split: str, mirrored: bool) -> np.ndarray:
        pixels, out = on_pixels(spec, p.image_size, frozen_part, [Mirror()] if mirrored else [])
        encoder = keras.Model(pixels, keras.ops.cast(out, "float16"))
        batches = images.predict(encoder, *sources(read_split(split)), p.image_size, 64, f"{split} prefix"
                                 f"{', mirrored' if mirrored else ''}")
        return np.concatenate(list(batches))

    classes = read_classes()
    y = {s: label_indices(read_split(s), classes) for s in ("train", "val", "test")}
    onehot = {s: np.eye(len(classes), dtype=np.float32)[y[s]] for s in y}
    x = {("train", False): np.asarray(load_prefix("train")), ("val", False): np.asarray(load_prefix("val")),
         ("test", False): prefix_of("test", False)}
    for split in ("train", "val", "test"):
        x[split, True] = prefix_of(split, True)

    def probs(split):
        plain = top.predict(x[split, False], batch_size=64, verbose=0).astype(np.float64)
        mirror = top.predict(x[split, True], batch_size=64, verbose=0).astype(np.float64)
        return plain, (plain + mirror) / 2

    start_weights = top.get_weights()
    head_val, head_val_tta = probs("val")
    print(f"head: val loss {val_figures(y['val'], head_val)[0]:.4f} (with mirror {val_figures(y['val'], head_val_tta)[0]:.4f})")
    rng = np.random.default_rng(p.seed)
    n = len(y["train"])
    for name in ("plain", "random view", "both views"):
        top.set_weights(start_weights)
        per_epoch = 2 * n if name == "both views" else n
        rate = learning_rate(tuning.learning_rate, tuning.schedule, tuning.epochs,
                             steps(per_epoch, tuning.batch_size), tuning.warmup_epochs)
        compile_model(top, optimizer(tuning.optimizer, rate), tuning.label_smoothing)
        best, best_weights, seconds = np.inf, None, 0.0
        for epoch in range(tuning.epochs):
            if name == "plain":
                xe, ye = x["train", False], onehot["train"]
            elif name == "random view":
                flip = rng.random(n) < 0.5
                xe = np.where(flip[:, None, None, None], x["train", True], x["train", False])
                ye = onehot["train"]
            else:
                xe = np.concatenate([x["train", False], x["train", True]])
                ye = np.concatenate([onehot["train"]] * 2)
            start = time.perf_counter()
            top.fit(xe, ye, batch_size=tuning.batch_size, epochs=1, shuffle=True, verbose=0)
            seconds += time.perf_counter() - start
            loss = val_figures(y["val"], top.predict(x["val", False], batch_size=64, verbose=0))[0]
            if loss < best:
                best, best_weights = loss, top.get_weights()
        top.set_weights(best_weights)
        val, val_tta = probs("val")
        test, test_tta = probs("test")
        (loss, acc), (loss_tta, acc_tta) = val_figures(y["val"], val), val_figures(y["val"], val_tta)
        print(f"{name:12s} val {acc:.4f} / {loss:.4f}  with mirror {acc_tta:.4f} / {loss_tta:.4f}  "
              f"beats head: {beats(y['val'], val, head_val)}  fit {seconds:.1f} s  "
              f"test {np.mean(test.argmax(1) == y['test']):.4f} (with mirror {np.mean(test_tta.argmax(1) == y['test']):.4f})",
              flush=True)


if __name__ == "__main__":
    main()
