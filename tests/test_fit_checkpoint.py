"""Interrupted runs resume, in real git+DVC repos: finetune killed (SIGKILL)
or preempted (SIGTERM) and extract killed, then `dvc repro`, give the bytes
an uninterrupted run gives; a checkpoint of other params or data, or a
truncated one, is ignored with one line."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from tlpipe import fit_checkpoint, resume
from conftest import COLOURS, REPO, draw_image, make_class_folders, new_dvc_repo, tiny_params, tool_env

heavy = pytest.mark.heavy  # each such test interrupts a pipeline in a fresh repo

CHECKPOINT = ".tlpipe/resume/finetune/manifest.json"
EXTRACT_PROGRESS = ".tlpipe/resume/extract/progress.json"


@pytest.fixture(scope="module")
def params_(tmp_path_factory):
    # 160 images per class: 20 batches a train epoch, more than one call of
    # the compiled step (16), so SIGTERM lands inside an epoch
    source = make_class_folders(tmp_path_factory.mktemp("src") / "images", per_class=160)
    p = tiny_params(yaml.safe_load((REPO / "params.yaml").read_text()), source, backbone="resnet50", freeze="block5")
    p["finetune"].update({"runs": 2, "epochs": 3})
    p["export"]["formats"] = []
    return p


def digests(root, *folders):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((root / folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, params_):
    repo = new_dvc_repo(tmp_path_factory.mktemp("ref") / "repo", params_)
    repo.dvc("repro", "finetune")
    return digests(repo.root, "data/features", "data/prefix", "models")


def fresh(tmp_path, params_):
    repo = new_dvc_repo(tmp_path / "repo", params_)
    return repo


def interrupt_repro(root, ready, sig=signal.SIGKILL, timeout=600):
    """`dvc repro finetune`, and ``sig`` to its whole process group (as a
    preemption reaches every process) once ``ready()``; -> (return code,
    seconds from the signal to the exit, stdout, stderr)."""
    proc = subprocess.Popen(["dvc", "repro", "finetune"], cwd=root, env=tool_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        try:
            if ready():
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the interruption\n{proc.communicate()[1][-3000:]}"
    signalled = time.time()
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, time.time() - signalled, out, err


def checkpoint_at(root, run, epoch):
    state = json.loads((root / CHECKPOINT).read_text())["state"]
    return (state["run"], state["epoch"]) >= (run, epoch)


@heavy
def test_finetune_killed_in_its_second_run_resumes_there_and_ships_the_same_bytes(tmp_path, params_, reference):
    repo = fresh(tmp_path, params_)
    code, _, _, _ = interrupt_repro(repo.root, lambda: checkpoint_at(repo.root, 1, 1))
    assert code != 0 and (repo.root / CHECKPOINT).is_file()
    out = repo.dvc("repro", "finetune").stdout
    assert "finetune: resuming run 2 of 2 at epoch 2" in out
    assert out.count("Epoch ") == 2  # run 2's epochs 2 and 3 alone
    assert digests(repo.root, "data/features", "data/prefix", "models") == reference
    assert not (repo.root / ".tlpipe").exists()
    steps = (repo.root / "dvclive/finetune/plots/metrics/val/loss.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in steps[1:]] == [str(i) for i in range(6)]  # every epoch logged once


@heavy
def test_sigterm_saves_at_the_next_batch_and_exits_143_and_the_rerun_resumes_there(tmp_path, params_, reference):
    repo = fresh(tmp_path, params_)
    code, seconds, _, err = interrupt_repro(repo.root, lambda: checkpoint_at(repo.root, 0, 1), signal.SIGTERM)
    assert seconds < 10
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("finetune:")]
    assert len(lines) == 1 and lines[0].startswith("finetune: stopped by SIGTERM: saved run 1, epoch 2 after batch 16")
    state = json.loads((repo.root / CHECKPOINT).read_text())["state"]
    assert (state["run"], state["epoch"], state["batch"]) == (0, 1, 16)
    out = repo.dvc("repro", "finetune").stdout
    assert "finetune: resuming run 1 of 2 at epoch 2, batch 17" in out
    assert digests(repo.root, "models") == {k: v for k, v in reference.items() if k.startswith("models")}
    assert not (repo.root / ".tlpipe").exists()


def damage_params(repo):
    params = repo.params()
    params["finetune"]["learning_rate"] = 0.0002
    repo.write_params(params)


def damage_data(repo):
    source = repo.params()["data"]["source"]
    copy = repo.root.parent / "other_images"
    shutil.copytree(source, copy)
    draw_image(COLOURS["red"], seed=999_999).save(next((copy / "red").glob("*.jpg")))
    params = repo.params()
    params["data"]["source"] = str(copy)
    repo.write_params(params)


def damage_file(repo):
    arrays = repo.root / ".tlpipe/resume/finetune/arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:1000])


@heavy
@pytest.mark.parametrize("damage, words", [(damage_params, "other params, data or code"),
                                           (damage_data, "other params, data or code"),
                                           (damage_file, "arrays.npz is truncated")])
def test_a_checkpoint_of_other_params_or_data_or_a_truncated_one_is_ignored_with_one_line(
        tmp_path, params_, damage, words):
    repo = fresh(tmp_path, params_)
    interrupt_repro(repo.root, lambda: checkpoint_at(repo.root, 0, 2))
    damage(repo)
    out = repo.dvc("repro", "finetune").stdout
    ignored = [line for line in out.splitlines() if "ignoring the checkpoint" in line]
    assert len(ignored) == 1 and words in ignored[0], out[-3000:]
    assert "resuming" not in out and out.count("Epoch ") == 6  # trained afresh
    assert not (repo.root / ".tlpipe").exists()


@heavy
def test_extract_killed_keeps_its_rows_and_the_rerun_writes_the_same_bytes(tmp_path, params_, reference):
    repo = fresh(tmp_path, params_)

    def rows_done():
        return json.loads((repo.root / EXTRACT_PROGRESS).read_text())["rows"].get("val", 0) > 0

    interrupt_repro(repo.root, rows_done)
    kept = json.loads((repo.root / EXTRACT_PROGRESS).read_text())["rows"]
    train = len((repo.root / "data/split/train.csv").read_text().splitlines()) - 1
    assert kept["train"] == train
    out = repo.dvc("repro", "extract").stdout
    assert f"extract: resuming with the rows written before an interruption (train {train}, val" in out
    assert "extract: train:" not in out  # train's rows were all kept
    assert digests(repo.root, "data/features", "data/prefix") == {
        k: v for k, v in reference.items() if k.startswith("data/")}
    assert not (repo.root / ".tlpipe").exists()


class Preemption(resume.Preemption):
    def __init__(self):
        super().__init__("finetune")
        self.requested, self.stopped = True, []

    def stop(self, what):
        self.stopped.append(what)


class Checkpoint:
    """What _Saving asks of a SoupCheckpoint, with a SIGTERM pending."""

    def __init__(self):
        self.progress, self.preemption, self.where, self.saved = fit_checkpoint.Progress(), Preemption(), "here", []
        self.callbacks = []

    def save(self, log_dir):
        self.saved.append((self.progress.epoch, self.progress.batch))


def test_sigterm_in_an_epochs_last_call_saves_at_the_epochs_end(tmp_path):
    """Keras names the last step of each call of its compiled step (16
    batches), so in an epoch's last call the "batch" can pass the epoch's
    count: the stop then waits for the epoch's end, validation and callbacks
    done, and the checkpoint names the next epoch."""
    checkpoint = Checkpoint()
    saving = fit_checkpoint._Saving(checkpoint, 0, [], tmp_path, skip=0, steps=63)
    saving.set_model(type("Model", (), {"stop_training": False})())
    saving.on_epoch_begin(1)
    saving.on_train_batch_end(63)  # steps 48..63 of an epoch of 63 batches (0..62)
    assert checkpoint.saved == [] and checkpoint.preemption.stopped == []
    saving.on_epoch_end(1, {"loss": 0.5, "val_loss": 0.4})
    assert checkpoint.saved == [(2, 0)]
    assert checkpoint.preemption.stopped == ["saved run 1 at the end of epoch 2 in here; `dvc repro` resumes there"]


def test_sigterm_mid_epoch_saves_the_batches_trained(tmp_path):
    checkpoint = Checkpoint()
    saving = fit_checkpoint._Saving(checkpoint, 1, [], tmp_path, skip=16, steps=63)  # a resumed epoch
    saving.on_epoch_begin(2)
    saving.on_train_batch_end(15)
    assert checkpoint.saved == [(2, 32)] and "epoch 3 after batch 32" in checkpoint.preemption.stopped[0]
