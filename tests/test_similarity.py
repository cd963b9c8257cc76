"""similarity: unit rows and blocks whose size does not grow with the data."""

import numpy as np

from tlpipe.similarity import BLOCK_SIMILARITIES, block_rows, normalised


def test_a_block_holds_a_fixed_number_of_similarities_whatever_the_bank():
    for bank in (1, 1000, 30_000, 10**7):
        assert block_rows(bank) * bank <= max(BLOCK_SIMILARITIES, bank)
    assert block_rows(0) == BLOCK_SIMILARITIES and block_rows(10**8) == 1


def test_normalised_rows_have_unit_length_and_zero_rows_stay_zero():
    rows = normalised(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float16))
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
