"""BLAS's threads around SciPy's L-BFGS-B: the exact head (train_head) and
the audit's out-of-fold logistic regressions (scikit-learn's lbfgs).

SciPy >= 1.15 runs L-BFGS-B's own bookkeeping (small products on its history
of steps) through BLAS. On several threads those cost more than they give,
and the threads' waits slow the loss's products beside them: on two cores
the head's fit took 2.0-4.5x and the audit's 2.5x their time on one BLAS
thread (docs/pipeline.md, "The exact head"). Inside ``BlasThreads`` BLAS runs on one
thread; a function wrapped by ``every_core`` (a loss made of large products)
gets back the threads BLAS had.
"""

from __future__ import annotations


class BlasThreads:
    """``with BlasThreads() as threads:`` every BLAS library on one thread,
    as before once it ends; ``threads.every_core(f)`` runs ``f`` on the
    threads BLAS had when it began."""

    def __enter__(self) -> BlasThreads:
        from threadpoolctl import ThreadpoolController

        self._controller = ThreadpoolController()
        self._threads = max([lib["num_threads"] for lib in self._controller.info() if lib["user_api"] == "blas"],
                            default=1)
        self._one = self._controller.limit(limits=1, user_api="blas")
        return self

    def every_core(self, function):
        def on_every_core(*args, **kwargs):
            with self._controller.limit(limits=self._threads, user_api="blas"):
                return function(*args, **kwargs)

        return on_every_core

    def __exit__(self, *exc) -> None:
        self._one.restore_original_limits()
