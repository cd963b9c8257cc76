"""tlpipe.resume: a checkpoint is keyed by everything its stage depends on,
verified file by file, and a bad one is removed with one line."""

import os
import signal
import subprocess
import sys
import textwrap

import yaml

from tlpipe import resume

DVC_YAML = {"stages": {"finetune": {"cmd": "python x.py", "deps": ["code.py", "data", "${data.corrections}"],
                                    "params": ["finetune", "seed"]}}}


def pipeline(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"seed": 1, "finetune": {"epochs": 4}, "head": {"l2": 0.1}, "data": {"corrections": "fixes.csv"}}))
    (tmp_path / "code.py").write_text("print(1)\n")
    (tmp_path / "data" / "deep").mkdir(parents=True)
    (tmp_path / "data" / "deep" / "rows.npy").write_bytes(b"x" * 1000)
    (tmp_path / "fixes.csv").write_text("file_name,label\n")


def edit_params(tmp_path, **changes):
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))


def test_the_key_follows_the_stages_params_and_dependencies_and_nothing_else(in_tmp_cwd):
    pipeline(in_tmp_cwd)
    key = resume.stage_key("finetune")
    assert resume.stage_key("finetune") == key  # the same inputs, the same key
    edit_params(in_tmp_cwd, head__l2=0.5)  # a key the stage does not read
    assert resume.stage_key("finetune") == key
    edit_params(in_tmp_cwd, finetune__epochs=5)
    assert resume.stage_key("finetune") != key
    edit_params(in_tmp_cwd, finetune__epochs=4)
    assert resume.stage_key("finetune") == key
    for changed in ("code.py", "data/deep/rows.npy", "fixes.csv"):  # code, a file deep in a folder, an interpolated dep
        before = (in_tmp_cwd / changed).read_bytes()
        (in_tmp_cwd / changed).write_bytes(before + b"!")
        assert resume.stage_key("finetune") != key, changed
        (in_tmp_cwd / changed).write_bytes(before)
    assert resume.stage_key("finetune") == key


def test_a_large_dependency_is_keyed_by_samples_that_see_a_change_anywhere_sampled(in_tmp_cwd, monkeypatch):
    pipeline(in_tmp_cwd)
    monkeypatch.setattr(resume, "WHOLE_FILE_BYTES", 100)
    monkeypatch.setattr(resume, "SAMPLE_BYTES", 10)
    key = resume.stage_key("finetune")
    rows = in_tmp_cwd / "data" / "deep" / "rows.npy"
    rows.write_bytes(b"x" * 999 + b"y")  # the last block is sampled
    assert resume.stage_key("finetune") != key
    rows.write_bytes(b"x" * 1001)  # so is the size
    assert resume.stage_key("finetune") != key


def test_no_key_outside_a_pipeline(in_tmp_cwd):
    assert resume.stage_key("finetune") is None
    pipeline(in_tmp_cwd)
    assert resume.stage_key("extract") is None  # a stage dvc.yaml does not declare


def test_a_sealed_checkpoint_is_usable_and_any_damage_removes_it_with_one_line(in_tmp_cwd, capsys):
    where = in_tmp_cwd / "checkpoint"

    def sealed(key="k"):
        where.mkdir(exist_ok=True)
        (where / "arrays.npz").write_bytes(b"0123456789")
        (where / "logs").mkdir(exist_ok=True)
        (where / "logs" / "metrics.json").write_text("{}")
        resume.seal(where, key, run=1, epoch=2)

    sealed()
    assert resume.usable("finetune", where, "k") and resume.state(where) == {"run": 1, "epoch": 2}
    damages = {
        "other params, data or code": lambda: resume.seal(where, "other"),
        "truncated (4 of 10 bytes)": lambda: (where / "arrays.npz").write_bytes(b"0123"),
        "changed since it was written": lambda: (where / "arrays.npz").write_bytes(b"0123456780"),
        "logs/metrics.json is missing": lambda: (where / "logs" / "metrics.json").unlink(),
        "never completed": lambda: (where / resume.MANIFEST).unlink(),
    }
    for words, damage in damages.items():
        sealed()
        damage()
        capsys.readouterr()
        assert not resume.usable("finetune", where, "k")
        out = capsys.readouterr().out
        assert words in out and out.count("\n") == 1 and out.startswith("finetune: ignoring the checkpoint")
        assert not where.exists()


def test_finished_removes_the_checkpoint_and_the_empty_resume_folders(in_tmp_cwd):
    where = in_tmp_cwd / ".tlpipe" / "resume" / "finetune"
    where.mkdir(parents=True)
    (where / "x").write_text("1")
    resume.finished(where)
    assert not (in_tmp_cwd / ".tlpipe").exists()


PREEMPTED = """
import sys, time
sys.path.insert(0, {src!r})
from tlpipe import resume
with resume.Preemption("finetune") as preemption:
    print("ready", flush=True)
    time.sleep(30)
"""


def test_sigterm_outside_a_fit_stops_at_once_with_status_143_and_one_line(tmp_path):
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PREEMPTED.format(src=src))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == resume.PREEMPTED == 143
    assert err.strip().splitlines() == [
        "finetune: stopped by SIGTERM: nothing half-written was kept; `dvc repro` resumes from the last checkpoint."]
