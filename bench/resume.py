"""What an interruption costs: extract and finetune killed, then `dvc repro`.

    python bench/resume.py           (KERAS_HOME=../shared/keras offline)

On a fresh copy of the pipeline with the default params (cats vs dogs):

1. extract uninterrupted; then `dvc repro -f extract` killed (SIGKILL to the
   whole process group) at 70 % of the uninterrupted stage's time (DVC's
   own start included), and `dvc repro`:
   the rerun's extract stage time against the uninterrupted one's, and
   whether data/features and data/prefix are the same bytes.
2. finetune uninterrupted (its fit time, from reports/finetune.json); then
   killed at 70 % of that fit time into its fit, and `dvc repro`: the total
   fit time (before the kill, and the rerun's fit beyond what its checkpoint
   had saved) against the uninterrupted fit; the same for SIGTERM at 50 %
   (and the seconds from the signal to the exit); whether each resumed
   model is byte-identical to the uninterrupted one.

Targets (issue: long runs survive interruptions): finetune total fit
<= 1.4x uninterrupted, byte-identical; SIGTERM exit within 10 s; extract's
rerun <= 0.45x a full extract, byte-identical.

The interrupted stages ran before on the same inputs, so every rerun here
is `dvc repro -f -s --no-run-cache STAGE` (that stage alone) (else DVC would find the earlier
run's outputs in place, or in its run-cache, and run nothing, as it never
can after a first run, or an experiment's, was interrupted).
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _common import copy_pipeline, require_keras_home, run_timed, stage_costs, tool_env

require_keras_home()
work = copy_pipeline(Path(tempfile.mkdtemp(prefix="tlpipe-resume-")) / "repo")
PROGRESS = work / ".tlpipe/resume/extract/progress.json"
CHECKPOINT = work / ".tlpipe/resume/finetune/manifest.json"


def digest(*folders: str) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted((work / folder).rglob("*")):
            if path.is_file():
                h.update(path.relative_to(work).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def interrupted(stage: str, when, sig=signal.SIGKILL) -> tuple[float, float, str]:
    """`dvc repro -f STAGE`, ``sig`` to its process group once ``when(seconds
    since the stage's first epoch line, or since start)`` -> (seconds of fit
    before the signal, seconds from the signal to the exit, stderr)."""
    proc = subprocess.Popen(["dvc", "repro", "-f", "-s", "--no-run-cache", stage], cwd=work, env=tool_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    began = {"fit": None}

    def watch():
        for line in proc.stdout:
            if began["fit"] is None and re.match(r"Epoch \d+/", line):
                began["fit"] = time.perf_counter()

    threading.Thread(target=watch, daemon=True).start()
    start = time.perf_counter()
    while proc.poll() is None and not when(began["fit"], start):
        time.sleep(0.05)
    signalled = time.perf_counter()
    os.killpg(proc.pid, sig)
    err = proc.stderr.read()
    proc.wait()
    return signalled - (began["fit"] or start), time.perf_counter() - signalled, err


_, out = run_timed(["dvc", "repro", "train_head"], work)
extract_full = stage_costs(out)["extract"][0]
features = digest("data/features", "data/prefix")
rows = sum(len((work / f"data/split/{s}.csv").read_text().splitlines()) - 1 for s in ("train", "val", "test"))


def extract_at(share: float):
    """Once ``share`` of the full extract's time has passed in the interrupted one."""
    return lambda _, start: time.perf_counter() - start >= share * extract_full


interrupted("extract", extract_at(0.7))
done = json.loads(PROGRESS.read_text())["rows"]
_, out = run_timed(["dvc", "repro", "-f", "-s", "--no-run-cache", "extract"], work)
extract_rerun = stage_costs(out)["extract"][0]
extract_line = next((line for line in out.splitlines() if "resuming" in line or "ignoring" in line), "(no line)")
extract_same = digest("data/features", "data/prefix") == features

_, out = run_timed(["dvc", "repro", "finetune"], work)
fit_full = json.loads((work / "reports/finetune.json").read_text())["fit_seconds"]
model = hashlib.sha256((work / "models/model.keras").read_bytes()).hexdigest()


def after(share: float):
    return lambda fit_began, _: fit_began is not None and time.perf_counter() - fit_began >= share * fit_full


def resumed_fit(before_kill: float) -> tuple[float, bool, str]:
    """(total fit seconds, byte-identical model, the resuming line) of `dvc repro` after an interruption."""
    saved = json.loads(CHECKPOINT.read_text())["state"]
    checkpointed = sum(r["seconds"] for r in saved["finished"]) + saved["seconds"]
    _, out = run_timed(["dvc", "repro", "-f", "-s", "--no-run-cache", "finetune"], work)
    fit_after = json.loads((work / "reports/finetune.json").read_text())["fit_seconds"] - checkpointed
    line = next((line for line in out.splitlines() if "resuming" in line), "(no resuming line)")
    same = hashlib.sha256((work / "models/model.keras").read_bytes()).hexdigest() == model
    return before_kill + fit_after, same, line


killed_at, _, _ = interrupted("finetune", after(0.7))
kill_total, kill_same, kill_line = resumed_fit(killed_at)
termed_at, term_exit, term_err = interrupted("finetune", after(0.5), signal.SIGTERM)
term_total, term_same, term_line = resumed_fit(termed_at)
term_lines = [line for line in term_err.splitlines() if line.startswith("finetune:")]

print(f"extract: {rows} images; killed at 70 % of its time, {sum(done.values())} rows written ({done})")
print(f"  rerun's extract stage {extract_rerun:.1f} s = {extract_rerun / extract_full:.2f}x the full extract "
      f"({extract_full:.1f} s; target <= 0.45x); data/features and data/prefix byte-identical: {extract_same}")
print(f"    {extract_line}")
print(f"finetune: uninterrupted fit {fit_full:.1f} s")
print(f"  SIGKILL at {killed_at / fit_full:.0%} of the fit: total fit {kill_total:.1f} s = "
      f"{kill_total / fit_full:.2f}x (target <= 1.4x); model byte-identical: {kill_same}")
print(f"    {kill_line}")
print(f"  SIGTERM at {termed_at / fit_full:.0%}: exit after {term_exit:.1f} s (target <= 10 s); total fit "
      f"{term_total:.1f} s = {term_total / fit_full:.2f}x; model byte-identical: {term_same}")
print(f"    {term_lines[-1] if term_lines else '(no line)'}")
print(f"    {term_line}")
