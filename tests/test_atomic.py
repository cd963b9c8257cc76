"""Atomic writes, and saved models whose bytes are a function of their content."""

import hashlib
import subprocess
import sys

import numpy as np

from tlpipe import atomic

from conftest import REPO, tool_env

# A head shared by two models, as finetune does (the full classifier and the
# model over frozen-prefix outputs): Keras then writes a shared_object_id.
SAVE_SHARED_HEAD = """
import sys
sys.path.insert(0, {src!r})
import keras
from tlpipe import atomic
keras.utils.set_random_seed(0)
x = keras.Input((4,))
head = keras.Model(x, keras.layers.Dense(3, activation="softmax", name="probs")(x), name="head")
pixels, prefix = keras.Input((8,)), keras.Input((4,))
full = keras.Model(pixels, head(keras.layers.Dense(4, name="top")(pixels)))
keras.Model(prefix, head(prefix))
atomic.save_keras(sys.argv[1], full)
"""


def test_same_model_same_bytes_across_processes(tmp_path):
    """Keras writes Python object ids as shared_object_id; save_keras numbers
    them, so a rerun on the same inputs gives the same file and DVC reruns
    nothing downstream."""
    digests = []
    for name in ("a.keras", "b.keras"):
        code = SAVE_SHARED_HEAD.format(src=str(REPO / "src"))
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True, env=tool_env())
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    import zipfile

    config = zipfile.ZipFile(tmp_path / "a.keras").read("config.json").decode()
    assert '"shared_object_id": 1' in config
    from tlpipe.layers import load_model

    model = load_model(tmp_path / "a.keras")
    x = np.random.default_rng(0).normal(size=(2, 8)).astype("float32")
    assert model.predict(x, verbose=0).shape == (2, 3)


def test_renumbering_keeps_equal_ids_equal():
    config = {"a": {"shared_object_id": 9911}, "b": [{"shared_object_id": 77}, {"shared_object_id": 9911}]}
    assert atomic._renumber_shared_objects(config) == {
        "a": {"shared_object_id": 1}, "b": [{"shared_object_id": 2}, {"shared_object_id": 1}]
    }


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"good": 1})
    try:
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    except RuntimeError:
        pass
    assert target.read_text() == '{\n  "good": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_scratch_beside_is_removed_after_use_and_after_a_killed_run(tmp_path):
    target = tmp_path / "head.keras"
    with atomic.scratch_beside(target) as scratch:
        assert scratch.parent == tmp_path and scratch.is_dir()
        (scratch / "rows.npy").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []
    killed = tmp_path / ".head.keras.abc123.tmp"  # what a run killed inside the block leaves
    killed.mkdir()
    (killed / "rows.npy").write_bytes(b"x")
    atomic.write_text(target, "model")
    assert [p.name for p in tmp_path.iterdir()] == ["head.keras"]
