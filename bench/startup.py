"""Fixed costs every stage pays before its real work, measured in fresh processes.

    python bench/startup.py [--backbone mobilenet_0.75]   (KERAS_HOME=../shared/keras offline)

Each row is the median wall time of 3 fresh `python -c` processes doing only
that (cumulative: each row includes the ones above it), so the differences
show what each step costs.
"""

import argparse
import statistics
import subprocess
import sys
import time

from _common import REPO, require_keras_home, tool_env

STEPS = [
    ("python start", "pass"),
    ("+ import numpy, yaml, tlpipe.params", "import numpy, yaml; from tlpipe import params"),
    ("+ load and validate params.yaml", "from tlpipe import params; params.load({params!r})"),
    ("+ import tensorflow", "from tlpipe import params; params.load({params!r}); import tensorflow"),
    ("+ import keras", "from tlpipe import params; params.load({params!r}); import tensorflow, keras"),
    ("+ build the backbone (ImageNet weights)",
     "from tlpipe import params, backbones; p = params.load({params!r}); "
     "backbones.get({backbone!r}).build(224, 'imagenet')"),
    ("+ trace and run one batch of 32",
     "from tlpipe import params, backbones; import numpy as np, tensorflow as tf; p = params.load({params!r}); "
     "m = backbones.get({backbone!r}).build(224, 'imagenet'); "
     "f = tf.function(lambda x: m(x, training=False)); f(np.zeros((32, 224, 224, 3), 'float32'))"),
]


def wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'src')!r}); {code}"],
                   check=True, env=tool_env(), capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="mobilenet_0.75")
    args = ap.parse_args()
    require_keras_home()
    print(f"{'step (cumulative)':44s} {'median s':>9s} {'this step s':>12s}")
    previous = 0.0
    for label, code in STEPS:
        seconds = statistics.median(
            wall(code.format(params=str(REPO / "params.yaml"), backbone=args.backbone)) for _ in range(3)
        )
        print(f"{label:44s} {seconds:9.2f} {seconds - previous:12.2f}", flush=True)
        previous = seconds
    dvc = statistics.median(
        _timed(["dvc", "status", "-q"]) for _ in range(3)
    )
    print(f"{'dvc status (DVC start-up and hashing)':44s} {dvc:9.2f}")


def _timed(cmd) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=tool_env(), capture_output=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
