"""Put this checkout's src/ first on sys.path, so that the code DVC hashes as a
stage dependency is the code that runs (installed or not); keep TensorFlow's
C++ start-up chatter from hiding the progress lines people need to see."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
