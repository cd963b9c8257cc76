"""TensorFlow's start-up log out of what a person reads, unless asked for."""

import subprocess
import sys

import pytest

from tlpipe import quiet

from conftest import REPO, tool_env

# What TensorFlow 2.21 prints on a CPU machine as it starts (absl's format).
START_UP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796663655.179600    2736 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.
I0000 00:00:1796663655.181825    2736 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796663655.218321    2736 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796663658.250478    2736 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
W1207 17:20:01.123456    2736 op_level_cost_estimator.cc:699] Error in PredictCost() for the op: Softmax
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
"""


def test_every_start_up_line_is_recognised_and_nothing_else():
    kept = "extract train:  13%|█▎  | 256/1999\nfinetune: error: lost a peer worker\n"
    fatal = "F0000 00:00:1796663655.1    2736 gpu_device.cc:1] Check failed: device\n"
    assert quiet.without_tensorflow_log(START_UP + kept + fatal) == kept + fatal
    assert all(quiet.is_tensorflow_log(line) for line in START_UP.splitlines())


SCRIPT = """
import sys
sys.path.insert(0, "stages")
import _src
print("before", file=sys.stderr, flush=True)
import keras, tensorflow as tf
tf.config.list_physical_devices()
print(tf.reduce_sum(tf.constant([1.0, 2.0], tf.float16)).numpy(), flush=True)
print("after", file=sys.stderr, flush=True)
"""


def start(**env: str) -> subprocess.CompletedProcess:
    """A tlpipe process (a stage's start: stages/_src.py) that imports and runs TensorFlow."""
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env={**tool_env(), **env}, text=True,
                          capture_output=True, timeout=300)


def test_a_tlpipe_process_prints_its_own_lines_and_none_of_tensorflows():
    proc = start()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["before", "after"] and proc.stdout.strip() == "3.0"


@pytest.mark.parametrize("env", [{"TF_CPP_MIN_LOG_LEVEL": "0"}, {"TLPIPE_VERBOSE": "1"}])
def test_a_user_who_asks_for_tensorflows_log_gets_it(env):
    proc = start(**env)
    assert proc.returncode == 0, proc.stderr
    assert any(quiet.is_tensorflow_log(line) for line in proc.stderr.splitlines()), proc.stderr
    assert "before" in proc.stderr and "after" in proc.stderr


def test_an_error_tensorflow_raises_still_surfaces():
    failing = SCRIPT.replace("tf.config.list_physical_devices()", "tf.reshape(tf.zeros(4), (3,))")
    proc = subprocess.run([sys.executable, "-c", failing], cwd=REPO, env=tool_env(), text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 1 and "InvalidArgumentError" in proc.stderr
    assert not any(quiet.is_tensorflow_log(line) for line in proc.stderr.splitlines())


def test_a_child_process_decides_afresh_but_keeps_the_users_choice(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv("TLPIPE_QUIET_TF_LOG", raising=False)
    monkeypatch.delenv("TLPIPE_VERBOSE", raising=False)
    assert quiet.wanted()
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # the user's own
    assert not quiet.wanted() and quiet.user_environment({"TF_CPP_MIN_LOG_LEVEL": "1"}) == {"TF_CPP_MIN_LOG_LEVEL": "1"}
    ours = {"TF_CPP_MIN_LOG_LEVEL": quiet.QUIET_LEVEL, "TLPIPE_QUIET_TF_LOG": "1"}
    assert quiet.user_environment(ours) == {}
