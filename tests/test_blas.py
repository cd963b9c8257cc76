"""BLAS on one thread around L-BFGS-B, every core for the wrapped loss, and
the threads BLAS had once it ends."""

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

from tlpipe.blas import BlasThreads


def blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in ThreadpoolController().info() if lib["user_api"] == "blas"}


@pytest.fixture
def two_threads():
    if not blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can see")
    with threadpool_limits(limits=2, user_api="blas"):
        yield


def test_one_thread_inside_every_core_in_the_wrapped_function_and_as_before_after(two_threads):
    seen = {}
    with BlasThreads() as threads:
        seen["inside"] = blas_threads()
        seen["wrapped"] = threads.every_core(blas_threads)()
        seen["after the wrapped call"] = blas_threads()
    assert seen == {"inside": {1}, "wrapped": {2}, "after the wrapped call": {1}}
    assert blas_threads() == {2}


def test_the_limit_is_lifted_when_the_fit_fails(two_threads):
    with pytest.raises(ValueError), BlasThreads():
        raise ValueError("a failing fit")
    assert blas_threads() == {2}


def test_the_head_solves_the_same_problem_on_any_number_of_threads():
    """L-BFGS-B's steps in another order of sums: the same minimiser, to its tolerance."""
    from tlpipe.train_head import fit_linear_jointly

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    x = rng.standard_normal((300, 40)).astype(np.float32)
    x[np.arange(300), labels] += 2.0
    targets, weights = np.eye(3)[labels], np.ones((2, 300))
    weights[0, ::2] = 0
    on_one = fit_linear_jointly(x, targets, weights, 1e-2)
    with threadpool_limits(limits=1, user_api="blas"):
        everywhere_one = fit_linear_jointly(x, targets, weights, 1e-2)
    np.testing.assert_allclose(on_one, everywhere_one, atol=1e-4)
