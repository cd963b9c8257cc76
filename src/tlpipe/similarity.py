"""Cosine similarity between feature rows, computed a block at a time: the
audit's near-duplicate search and the trust stage's unfamiliar-input score
both compare every row of one set with every row of another, which grows
with the square of the data set unless the rows come in bounded blocks."""

from __future__ import annotations

import math

import numpy as np

# Similarities computed at once: a block of query rows against every bank row,
# sized so that a block's memory stays the same whatever the number of images.
BLOCK_SIMILARITIES = 2**22
# Rows on each side of a square tile of BLOCK_SIMILARITIES similarities, for a
# set compared with itself: neither side grows with the data set.
TILE_ROWS = math.isqrt(BLOCK_SIMILARITIES)


def block_rows(bank_rows: int) -> int:
    """Query rows per block against a bank of ``bank_rows`` rows."""
    return max(1, BLOCK_SIMILARITIES // max(bank_rows, 1))


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so a product is a cosine similarity."""
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
