"""Put this checkout's src/ first on sys.path, so that the code DVC hashes as a
stage dependency is the code that runs (installed or not); keep TensorFlow's
C++ start-up chatter from hiding the progress lines people need to see
(tlpipe.quiet; TLPIPE_VERBOSE=1 shows it)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tlpipe import quiet  # noqa: E402

quiet.install()
