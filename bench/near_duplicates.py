"""The audit's near-duplicate search at 3k and 30k images, each in its own process.

    python bench/near_duplicates.py [3000 30000]

Features as a backbone that cannot tell images apart gives them (random
weights, or a data set of crops of a few photos): every pair is near, the
worst case for time and memory. Prints, per size, the pairs found, seconds
and the process's peak RSS, with the rows-per-block of before (1,024) beside
the default (a fixed number of similarities per block).
"""

from __future__ import annotations

import subprocess
import sys

from _common import REPO

SIZES = [int(a) for a in sys.argv[1:]] or [3000, 30000]

CHILD = r"""
import sys, time
import numpy as np
sys.path.insert(0, {src!r})
from tlpipe import audit
rng = np.random.default_rng(0)
x = (1 + 0.05 * rng.normal(size=({n}, 256))).astype(np.float32)
start = time.perf_counter()
pairs, total, _ = audit.near_duplicates(x, 0.99, block={block})
seconds = time.perf_counter() - start
peak = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0] / 1024
print(f"{{total}} {{seconds}} {{peak}}")
"""

print(f"{'images':>8} {'block rows':>11} {'near pairs':>14} {'seconds':>8} {'peak RSS MB':>12}")
peaks = {}
for n in SIZES:
    for block in (1024, None):
        code = CHILD.format(src=str(REPO / "src"), n=n, block=block)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        total, seconds, peak = out.split()
        peaks[n, block] = float(peak)
        print(f"{n:8d} {block or 'default':>11} {int(total):14,d} {float(seconds):8.1f} {float(peak):12.0f}", flush=True)
first, last = SIZES[0], SIZES[-1]
for block in (1024, None):
    print(f"peak RSS {last} vs {first}, block {block or 'default'}: {peaks[last, block] / peaks[first, block]:.2f}x")
