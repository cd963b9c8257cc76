"""run_stage: a stage's error is one line and exit code 2, success says how long
it took, and a bad params.yaml stops every stage before it works."""

import contextlib
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, tool_env

SCRIPT = """
import sys
sys.path.insert(0, {src!r})
from tlpipe.errors import TlpipeError
from tlpipe.stage import run_stage

def body(p):
    if p.seed == 7:
        raise TlpipeError("seven is not allowed here")
    if p.seed == 8:  # a library thread that winds down slowly, as TensorFlow's do
        import threading, time
        threading.Thread(target=time.sleep, args=(60,)).start()
    print("seed", p.seed)

run_stage("demo", body)
"""


def run(tmp_path, seed):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["seed"] = seed
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    script = tmp_path / "demo.py"
    script.write_text(SCRIPT.format(src=str(REPO / "src")))
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=tool_env(), capture_output=True,
                          text=True, timeout=120)


def test_success_prints_the_body_and_its_time(tmp_path):
    proc = run(tmp_path, 3)
    assert proc.returncode == 0, proc.stderr
    assert "seed 3" in proc.stdout and "demo: done in " in proc.stdout
    assert 10 < peak_mb(proc.stdout) < 500, proc.stdout  # Python, yaml and tlpipe.params: no TensorFlow


def test_a_stage_ends_when_its_work_is_done_not_when_library_threads_wind_down(tmp_path):
    import time

    start = time.perf_counter()
    proc = run(tmp_path, 8)  # the thread sleeps 60 s; run's timeout is 120 s
    assert proc.returncode == 0, proc.stderr
    assert "seed 8" in proc.stdout and "demo: done in " in proc.stdout
    assert time.perf_counter() - start < 30


def peak_mb(stdout: str) -> float:
    found = re.search(r"peak memory ([0-9,]+) MB", stdout)
    assert found, stdout
    return float(found.group(1).replace(",", ""))


def test_the_peak_memory_is_the_stages_own_not_its_parents(tmp_path):
    """A stage started by a large process (DVC, a test runner) reports its own
    peak: getrusage's would carry the parent's over across fork and exec."""
    run(tmp_path, 3)  # writes demo.py and params.yaml
    parent = ("import subprocess, sys; held = bytearray(600_000_000); "
              f"sys.exit(subprocess.run([sys.executable, {str(tmp_path / 'demo.py')!r}]).returncode)")
    proc = subprocess.run([sys.executable, "-c", parent], cwd=tmp_path, env=tool_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert peak_mb(proc.stdout) < 500, proc.stdout


def test_an_error_is_one_line_and_exit_code_2(tmp_path):
    proc = run(tmp_path, 7)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "demo: error: seven is not allowed here"


def test_a_bad_params_value_stops_the_stage_naming_the_key(tmp_path):
    proc = run(tmp_path, -1)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "demo: error: params.yaml: The 'seed' parameter must be an int in the range [0, 2147483647]" in proc.stderr


@contextlib.contextmanager
def tiny_disk(folder, kilobytes: int):
    """A real file system of ``kilobytes`` at ``folder`` (tmpfs; root only)."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()[:100]})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def stage_script(root, name):
    return subprocess.run([sys.executable, f"stages/{name}.py"], cwd=root, capture_output=True, text=True,
                          env=tool_env(), timeout=600)


def test_a_full_disk_is_one_line_naming_the_path_and_the_way_out(tmp_path, raw_params):
    """extract estimates what it writes and stops before writing; train_head's
    model save meets a real ENOSPC. Neither is a traceback, and a rerun after
    freeing space passes."""
    import shutil

    from conftest import make_class_folders, tiny_params

    root = tmp_path / "repo"
    for folder in ("stages", "src"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with tiny_disk(root / "data", 2048):
        make_class_folders(root / "data" / "raw", per_class=8)
        (root / "data" / "corrections.csv").write_text("file_name,label\n")
        (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(raw_params, "data/raw")))
        assert stage_script(root, "split").returncode == 0
        filler = root / "data" / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(root / "data").free - 4096))
        proc = stage_script(root, "extract")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        (line,) = [l for l in proc.stderr.splitlines() if l.strip()]
        assert line.startswith("extract: error: extract: the pooled features of 16 images need ") and "free" in line
        assert not (root / "data" / "features").exists()
        filler.unlink()  # space freed: the rerun passes
        assert stage_script(root, "extract").returncode == 0
        with tiny_disk(root / "models", 4):
            proc = stage_script(root, "train_head")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [l for l in proc.stderr.splitlines() if l.strip()]
    assert line.startswith("train_head: error: the disk is full: writing ") and "dvc repro" in line, line
