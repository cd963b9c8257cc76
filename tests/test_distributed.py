"""Several replicas and mixed precision, exercised on the CPU: TensorFlow splits
the CPU into logical devices, and MirroredStrategy runs on them the very code
path of several GPUs. Each run is the finetune stage's own script in a fresh
process (devices are configured once per process), in a repo trained by
`dvc repro`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, make_class_folders, new_dvc_repo, set_dotted, tiny_params, tool_env


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    source = make_class_folders(root / "images", per_class=8)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # resnet50: random init whose fine-tuning moves weights; no early stop
    params = tiny_params(raw, source, backbone="resnet50", freeze="block5")
    params["finetune"].update({"epochs": 2, "patience": 0, "schedule": "constant"})
    repo = new_dvc_repo(root / "repo", params)
    repo.dvc("repro")
    return repo


def finetune(repo, env=None, **changes):
    """Run stages/finetune.py with params changed; return metrics/finetune.json."""
    params = repo.params()
    original = yaml.safe_dump(params, sort_keys=False)
    for dotted, value in changes.items():
        set_dotted(params, dotted, value)
    repo.write_params(params)
    try:
        proc = subprocess.run([sys.executable, "stages/finetune.py"], cwd=repo.root, capture_output=True,
                              text=True, env={**tool_env(), **(env or {})}, timeout=600)
    finally:
        (repo.root / "params.yaml").write_text(original)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((repo.root / "metrics/finetune.json").read_text())


def test_two_replicas_match_one_at_the_same_global_batch(trained):
    one = finetune(trained, **{"finetune.batch_size": 8})
    two = finetune(trained, {"TLPIPE_REPLICAS": "2"}, **{"finetune.batch_size": 4})
    assert one["replicas"] == 1 and two["replicas"] == 2
    assert two["global_batch_size"] == 2 * 4 == one["global_batch_size"]
    assert one["frozen_prefix_cached"] and two["frozen_prefix_cached"]  # in-memory stored prefix
    assert one["epochs_run"] == two["epochs_run"] == 2
    # Same global batch, same data order: only the order of float sums differs.
    assert two["head_val_loss"] == pytest.approx(one["head_val_loss"], abs=1e-4)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=0.05, abs=1e-3)


def test_two_replicas_stream_images_from_files(trained):
    """Augmentation on and no memory to hold images: tf.data streams the files,
    and the strategy splits each global batch between the replicas."""
    metrics = finetune(trained, {"TLPIPE_REPLICAS": "2", "TLPIPE_MEMORY_BUDGET": "0"},
                       **{"finetune.augment.flip": True, "finetune.batch_size": 4})
    assert metrics["replicas"] == 2 and metrics["global_batch_size"] == 8
    assert metrics["frozen_prefix_cached"] is False and metrics["epochs_run"] == 2
    assert np.isfinite(metrics["val_loss"])


def test_bad_replica_count_is_one_line(trained):
    proc = subprocess.run([sys.executable, "stages/finetune.py"], cwd=trained.root, capture_output=True,
                          text=True, env={**tool_env(), "TLPIPE_REPLICAS": "two"}, timeout=300)
    assert proc.returncode == 2 and "TLPIPE_REPLICAS must be a whole number of replicas >= 1. Got 'two'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mixed_precision_trains_on_cpu_and_every_consumer_reads_the_model(trained, tmp_path):
    metrics = finetune(trained, **{"finetune.mixed_precision": True})
    assert metrics["mixed_precision"] is True and np.isfinite(metrics["val_loss"])
    from tlpipe.layers import load_model

    model = load_model(trained.root / "models/model.keras")
    assert model.output.dtype == "float32"  # softmax and temperature in float32
    env = tool_env()
    subprocess.run([sys.executable, "stages/evaluate.py"], cwd=trained.root, env=env, check=True,
                   capture_output=True)
    ev = json.loads((trained.root / "metrics/eval.json").read_text())
    assert 0 <= ev["finetuned"]["accuracy"] <= 1
    image = next((trained.root / "data/raw/red").glob("*.jpg"))
    predicted = subprocess.run([sys.executable, "-m", "tlpipe", "predict", str(image)], cwd=trained.root, env=env,
                               capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert predicted.stdout.splitlines()[1].split(",")[1] in ("red", "blue")
    exported = subprocess.run([sys.executable, "-m", "tlpipe", "export", "--format", "tflite", "--out",
                               str(tmp_path / "m.tflite")], cwd=trained.root, env=env, capture_output=True, text=True)
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]


def test_several_machines_are_refused_in_one_line_before_any_work(trained):
    """Keras 3's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585):
    two workers on 127.0.0.1 each stop at once with one line, and nothing is written."""
    import time

    before = (trained.root / "models/model.keras").read_bytes()
    cluster = {"worker": ["127.0.0.1:29871", "127.0.0.1:29872"]}
    start = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "stages/finetune.py"], cwd=trained.root, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**tool_env(), "TF_CONFIG": json.dumps({"cluster": cluster,
                                                                      "task": {"type": "worker", "index": i}})})
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert time.monotonic() - start < 120
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 2 and "Traceback" not in err
        assert "finetune: error: TF_CONFIG is set, but training across several machines" in err
    assert (trained.root / "models/model.keras").read_bytes() == before
