"""Run every benchmark in turn (`make bench`); each prints its figures last.

Offline on this project's machines: KERAS_HOME=$PWD/../shared/keras make bench
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# Every benchmark that makes its own data; trust_bank.py and probe.py read a
# repository after `dvc repro` (accuracy.py runs the probe on each of its own).
SCRIPTS = ("accuracy.py", "prefix_stream.py", "export.py", "trust.py", "predict_throughput.py", "startup.py",
           "extract_limit.py", "pipeline.py", "scaling.py", "near_duplicates.py", "classic.py", "finetune_grid.py",
           "views.py", "view_finetune.py")
for script in SCRIPTS:
    print(f"==> python bench/{script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
