"""Run every benchmark in turn (`make bench`); each prints its figures last,
and each one's figures land on docs/benchmarks.md with its command, machine,
commit and date (accuracy.py writes a table of its own; the others' printed
figures are shown as they printed them).

Offline on this project's machines: KERAS_HOME=$PWD/../shared/keras make bench
(or `python bench/run_all.py export.py` for some of them).
"""

import subprocess
import sys
from pathlib import Path

from _common import publish

HERE = Path(__file__).parent
# Every benchmark that makes its own data; trust_bank.py and probe.py read a
# repository after `dvc repro` (accuracy.py runs the probe on each of its own).
SCRIPTS = ("accuracy.py", "prefix_stream.py", "export.py", "resume.py", "trust.py", "predict_throughput.py", "startup.py",
           "extract_limit.py", "pipeline.py", "scaling.py", "near_duplicates.py", "classic.py", "finetune_grid.py",
           "views.py", "view_finetune.py", "multilabel.py")
PUBLISH_THEIR_OWN = {"accuracy.py", "multilabel.py"}
FIGURE_LINES = 60  # the end of what a benchmark prints: its figures

# `python bench/run_all.py export.py trust.py`: those alone
chosen = [s for s in SCRIPTS if s in sys.argv[1:]] or SCRIPTS
unknown = sorted(set(sys.argv[1:]) - set(SCRIPTS))
if unknown:
    raise SystemExit(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(SCRIPTS)}")
for script in chosen:
    print(f"==> python bench/{script}", flush=True)
    proc = subprocess.Popen([sys.executable, str(HERE / script)], stdout=subprocess.PIPE, text=True)
    printed = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        printed.append(line.rstrip("\n"))
    if proc.wait() != 0:
        raise SystemExit(f"bench/{script} failed (exit status {proc.returncode})")
    if script not in PUBLISH_THEIR_OWN:
        figures = "\n".join(line for line in printed[-FIGURE_LINES:] if not line.startswith("wrote the "))
        publish(Path(script).stem, f"bench/{script}", f"```text\n{figures}\n```", f"python bench/{script}")
