"""Put this checkout's src/ first on sys.path, so that the code DVC hashes as a
stage dependency is the code that runs (installed or not)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
