"""The whole pipeline from an empty DVC cache, and what a params change costs.

    python bench/pipeline.py           (KERAS_HOME=../shared/keras offline)

Copies the pipeline into a fresh git+DVC repo (empty cache, nothing fetched),
times `dvc repro` on the default params, then what users iterate with:
`dvc exp run -S key=value` for one key of each kind, and a return to a freeze
value seen before. Prints wall times, their share of the full run, test
accuracy, and for fine-tuning where its time went (prefix_seconds: loading or
computing frozen-prefix outputs; fit_seconds: Keras fit alone; the stage's
process wall time, start-up included).
"""

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from _common import copy_pipeline, require_keras_home, tool_env

require_keras_home()
work = copy_pipeline(Path(tempfile.mkdtemp(prefix="tlpipe-bench-")) / "repo")


def run(*cmd: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=tool_env(), capture_output=True, text=True)
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(cmd)} failed")
    return time.perf_counter() - start, proc.stdout


def stages_ran(out: str) -> str:
    return " ".join(re.findall(r"Running stage '(\w+)'", out)) or "(none)"


def finetune_costs(out: str) -> str:
    ft = json.loads((work / "reports/finetune.json").read_text())
    done = re.search(r"finetune: done in ([0-9.]+)s", out)
    if not done:
        return ""
    wall = float(done.group(1))
    return (f"finetune stage {wall:.1f} s = fit {ft['fit_seconds']:.1f} s + prefix {ft['prefix_seconds']:.1f} s "
            f"+ other {wall - ft['fit_seconds'] - ft['prefix_seconds']:.1f} s "
            f"(wall - fit = {wall - ft['fit_seconds']:.1f} s; shipped {ft['shipped']})")


full, out = run("dvc", "repro")
run("git", "add", "-A")
run("git", "-c", "user.name=bench", "-c", "user.email=bench@tlpipe.invalid", "commit", "-qm", "first run")
ev = json.loads((work / "reports/eval.json").read_text())
ft = json.loads((work / "reports/finetune.json").read_text())
print(f"full dvc repro (empty cache): {full:6.1f} s   stages: {stages_ran(out)}")
print(f"  test accuracy: shipped ({ft['shipped']}) {ev['finetuned']['accuracy']:.4f}, head only {ev['head']['accuracy']:.4f}")
print(f"  {finetune_costs(out)}")
for line in out.splitlines():
    if re.match(r"\w+: done in", line):
        print(f"    {line}")

base = yaml.safe_load((work / "params.yaml").read_text())
lr = base["finetune"]["learning_rate"]
other_freeze = "block4" if base["freeze"] != "block4" else "block5"
# (setting, reset to the committed defaults afterwards)
changes = [
    (f"finetune.learning_rate={lr / 2}", True),
    (f"finetune.learning_rate={lr * 2}", True),
    ("head.dropout=0.3", True),
    (f"freeze={other_freeze}", False),  # then back to a freeze value seen before:
    (f"freeze={base['freeze']}", True),
    ("evaluate.gallery=8", True),
]
for setting, reset in changes:
    seconds, out = run("dvc", "exp", "run", "-S", setting)
    print(f"exp run -S {setting:32s} {seconds:6.1f} s ({seconds / full:5.1%} of the full run)  "
          f"stages: {stages_ran(out)}")
    costs = finetune_costs(out)
    if costs:
        print(f"    {costs}")
    if reset:
        run("git", "checkout", "--", "params.yaml")  # back to the committed defaults
        run("dvc", "checkout", "-q")
