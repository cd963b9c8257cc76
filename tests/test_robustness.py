"""Interruptions and determinism, in real temporary git+DVC repos.

`kill -9` lands while a stage is writing (its temporary output exists, or
extract's rows in its resume folder); the next `dvc repro` completes, leaves
no temporary or checkpoint behind, and gives metrics identical to an
uninterrupted run: same params and data, same metrics on CPU.
"""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml

from conftest import REPO, make_class_folders, new_dvc_repo, tiny_params, tool_env

pytestmark = pytest.mark.heavy  # `make test-heavy`: each test runs a whole pipeline in a fresh repo


def without_timings(data, parent=""):
    # Timings (*_seconds, export's ms_per_image) differ run to run by nature, and
    # so does the ONNX file's size by a few hundred bytes (tf2onnx's generated
    # names); everything else must be identical.
    if isinstance(data, dict):
        return {k: without_timings(v, k) for k, v in data.items()
                if not (k.endswith("_seconds") or k == "ms_per_image" or (parent == "onnx" and k == "bytes"))}
    return data


def metrics_without_timings(root):
    """metrics/ and reports/, timings aside."""
    return {f"{path.parent.name}/{path.name}": without_timings(json.loads(path.read_text()))
            for folder in ("metrics", "reports") for path in sorted((root / folder).glob("*.json"))}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("src") / "images", per_class=24)


@pytest.fixture(scope="module")
def params_(source):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # resnet50: a random-init backbone whose fine-tuning really moves weights
    return tiny_params(raw, source, backbone="resnet50", freeze="block5")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, params_):
    repo = new_dvc_repo(tmp_path_factory.mktemp("ref") / "repo", params_)
    repo.dvc("repro")
    return metrics_without_timings(repo.root)


def kill_while_writing(root, pattern: str, timeout=300):
    """Start `dvc repro`; SIGKILL its whole process group once ``pattern`` exists."""
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=root, env=tool_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if list(root.glob(pattern)):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return False


@pytest.mark.parametrize(
    "stage, pattern, final",
    [
        # extract writes its rows in its resume folder, moved into place at its end
        ("extract", ".tlpipe/resume/extract/progress.json", "data/features"),
        ("finetune", "dvclive/.finetune.*.tmp", "models/model.keras"),
    ],
)
def test_kill_9_then_repro_completes_with_valid_identical_outputs(
    tmp_path, params_, reference, stage, pattern, final
):
    repo = new_dvc_repo(tmp_path / "repo", params_)
    assert kill_while_writing(repo.root, pattern), f"never saw {stage} writing"
    assert not (repo.root / final).exists(), "a half-written output sits under its final name"
    repo.dvc("repro")
    assert not list(repo.root.glob(pattern)), "a temporary output was left behind"
    assert not (repo.root / ".tlpipe").exists(), "a checkpoint outlived its stage"
    for split in ("train", "val", "test"):
        feats = np.load(repo.root / f"data/features/{split}.npy")
        assert feats.shape[0] == len(np.load(repo.root / f"data/features/{split}_labels.npy"))
        assert np.isfinite(feats).all()
    from tlpipe.layers import load_model

    assert load_model(repo.root / "models/model.keras").count_params() > 0
    assert metrics_without_timings(repo.root) == reference


def test_ctrl_c_ends_the_stage_with_one_line_and_the_rerun_is_clean(tmp_path, params_, reference):
    """A real SIGINT to `dvc repro`'s process group while extract writes, as
    Ctrl-C in a terminal sends it (the child gets SIGINT's default disposition:
    a process started in the background inherits it ignored)."""
    repo = new_dvc_repo(tmp_path / "repo", params_)
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=repo.root, env=tool_env(), start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    progress = repo.root / ".tlpipe/resume/extract/progress.json"  # extract has written rows
    while not progress.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "dvc repro ended before extract wrote anything"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "extract: interrupted (Ctrl-C); nothing half-written was kept" in err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    assert "exited with 130" in err or "interrupted" in err.lower()
    assert not list(repo.root.glob("data/.features.*.tmp")) and not (repo.root / "data/features").exists()
    repo.dvc("repro")
    assert metrics_without_timings(repo.root) == reference
