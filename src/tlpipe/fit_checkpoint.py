"""Fine-tuning's checkpoint: what the soup saves at every epoch end (and, on
SIGTERM, at the next batch boundary), and how a rerun continues from it.

A checkpoint holds everything the rest of the fit depends on, so a resumed
run trains exactly what an uninterrupted one would: the trainable weights
(and the random generators' states of augmentation and dropout), the
optimizer's variables (its step count is the learning-rate schedule's
position), the schedule's plateau scale, the state of early stopping and of
the plateau reduction, the epoch and batch reached (each epoch's data order
is drawn from the seed, the run and the epoch alone: training.EpochOrders),
the finished runs' final weights and figures, and DVCLive's log so far. It
lives in ``.tlpipe/resume/finetune`` (tlpipe.resume: keyed by the stage's
inputs, verified file by file) and goes when the stage completes.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from tlpipe import atomic, resume
from tlpipe.training import FitResult, LearningRate, kept_epoch

STAGE = "finetune"


@dataclass
class Progress:
    """Where the soup stands: runs before ``run`` are finished; ``run`` has
    trained ``epoch`` epochs and ``batch`` batches of the next."""

    run: int = 0
    epoch: int = 0
    batch: int = 0
    stopped: bool = False  # early stopping ended the run
    history: dict = field(default_factory=dict)  # the run's figures per epoch so far
    seconds: float = 0.0  # the run's fit time so far
    finished: list = field(default_factory=list)  # each finished run's history, seconds, kept epoch
    callbacks: list = field(default_factory=list)  # early stopping's and the plateau reduction's state

    def steps_logged(self) -> int:
        """Epochs DVCLive has logged: every finished run's, and this run's so far."""
        return sum(len(r["history"].get("val_loss", [])) for r in self.finished) + len(self.history.get("val_loss", []))


def _stateful(callbacks: list) -> list:
    return [c for c in callbacks if isinstance(c, (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau))]


def _callback_state(callback) -> tuple[dict, list[np.ndarray] | None]:
    """What early stopping and the plateau reduction remember between epochs."""
    if isinstance(callback, keras.callbacks.EarlyStopping):
        scalars = {k: getattr(callback, k) for k in ("wait", "best", "best_epoch", "stopped_epoch")}
        return scalars, callback.best_weights
    if isinstance(callback, keras.callbacks.ReduceLROnPlateau):
        return {k: getattr(callback, k) for k in ("wait", "best", "cooldown_counter")}, None
    return {}, None


def _as_float(value):
    return None if value is None else float(value)


class SoupCheckpoint:
    """The checkpoint of one finetune run: loaded if a usable one exists
    (``progress`` then says where to continue), saved by ``callback``.

    Several machines (``from_chief``: tlpipe.distributed.from_chief): the
    chief alone writes, at every epoch end (SIGTERM stops a worker at once:
    its peers must stop at the same batch, and nothing tells them), and its
    checkpoint is the one every worker resumes from: the chief sends it to
    the others, which hold it in a temporary folder (their disks need not
    hold one, nor the same)."""

    def __init__(self, model: keras.Model, rate: LearningRate, key: str, preemption: resume.Preemption,
                 from_chief=None, chief: bool = True):
        self.model, self.rate, self.key, self.preemption = model, rate, key, preemption
        self.where = resume.folder(STAGE)
        self.progress, self.finals, self.resumed = Progress(), [], False
        self.pending = False  # a loaded state not yet put back into the model
        self._saved: dict[str, np.ndarray] = {}
        self.callbacks: list = []  # the fit's stateful callbacks, whose state is saved
        self.writes, self.pauses = chief, from_chief is None
        self.seconds = 0.0  # spent saving, within the fit's time
        usable = chief and resume.usable(STAGE, self.where, key)
        if from_chief is not None:
            usable = self._receive(from_chief(_packed(self.where) if usable else b""), chief)
        if usable:
            self._load()

    def _receive(self, packed: bytes, chief: bool) -> bool:
        """The chief's checkpoint, sent to this worker: into a temporary folder on the others."""
        if not packed or chief:
            return bool(packed)
        self.where = Path(tempfile.mkdtemp(prefix="tlpipe-chiefs-checkpoint-"))
        with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
            tar.extractall(self.where, filter="data")
        return True

    # -- what is saved
    def _variables(self) -> list:
        """What training changes: the trainable weights, and the random
        generators' states (augmentation, dropout)."""
        seeds = [v for v in self.model.non_trainable_variables if "seed_generator_state" in v.path]
        return [*self.model.trainable_variables, *seeds]

    def _load(self) -> None:
        self.progress = Progress(**resume.state(self.where))
        with np.load(self.where / "arrays.npz") as arrays:
            self._saved = {name: arrays[name] for name in arrays.files}
        self.finals = [[self._saved[f"final_{r}_{i}"] for i in range(len(self.model.trainable_variables))]
                       for r in range(self.progress.run)]
        self.resumed = self.pending = True

    def describe(self, runs: int) -> str:
        done = self.progress
        where = f"epoch {done.epoch + 1}" + (f", batch {done.batch + 1}" if done.batch else "")
        return f"resuming run {done.run + 1} of {runs} at {where} (checkpoint in {self.where})"

    def reload(self) -> None:
        """The checkpoint just saved at the end of an epoch that began mid-way
        (SIGTERM): the rest of the run resumes from it as from any epoch end."""
        self._load()

    def resumes(self, run: int) -> bool:
        return self.pending and run == self.progress.run

    def restore(self, callbacks: list, epochs: int) -> tuple[int, int]:
        """Put the checkpoint's state back into the model, its optimizer and
        ``callbacks`` (after their own reset at the fit's start; a callback
        that does it joins them) -> (first epoch to run, batches of it already
        trained); a run that early stopping ended runs none."""
        self.pending = False
        for i, variable in enumerate(self._variables()):
            variable.assign(self._saved[f"variable_{i}"])
        for i, variable in enumerate(self.model.optimizer.variables):
            variable.assign(self._saved[f"optimizer_{i}"])
        self.rate.scale.assign(float(self._saved["rate_scale"]))
        callbacks.append(_Restored(self.progress.callbacks, self._saved, _stateful(callbacks)))
        done = self.progress
        return (epochs, 0) if done.stopped else (done.epoch, done.batch)

    def save(self, log_dir: Path) -> None:
        if not self.writes:
            return
        began = time.perf_counter()
        arrays = {f"variable_{i}": v.numpy() for i, v in enumerate(self._variables())}
        arrays.update({f"optimizer_{i}": v.numpy() for i, v in enumerate(self.model.optimizer.variables)})
        arrays["rate_scale"] = np.asarray(float(keras.ops.convert_to_numpy(self.rate.scale)))
        arrays.update({f"final_{r}_{i}": w for r, weights in enumerate(self.finals) for i, w in enumerate(weights)})
        self.progress.callbacks = []
        for j, callback in enumerate(self.callbacks):
            scalars, best_weights = _callback_state(callback)
            self.progress.callbacks.append({k: _as_float(v) if k == "best" else int(v) for k, v in scalars.items()})
            for i, w in enumerate(best_weights or []):
                arrays[f"best_{j}_{i}"] = w
        with atomic.atomic_dir(self.where) as tmp:
            np.savez(tmp / "arrays.npz", **arrays)
            shutil.copytree(log_dir, tmp / "dvclive")
            resume.seal(tmp, self.key, **asdict(self.progress))
        self.seconds += time.perf_counter() - began

    def callback(self, run: int, callbacks: list, log_dir: Path, skip: int, steps: int) -> keras.callbacks.Callback:
        """The fit's last callback: saves at every epoch end and stops on SIGTERM
        (``steps``: batches in an epoch)."""
        return _Saving(self, run, callbacks, Path(log_dir), skip, steps)

    def restore_log(self, log_dir: Path) -> None:
        """DVCLive's log as it was at the checkpoint, into the stage's log folder."""
        shutil.copytree(self.where / "dvclive", log_dir, dirs_exist_ok=True)

    def run_finished(self, result: FitResult) -> None:
        self.finals.append([v.numpy() for v in self.model.trainable_variables])
        self.progress.finished.append({"history": result.history, "seconds": result.seconds, "kept": result.kept})
        self.progress.run += 1
        self.progress.epoch = self.progress.batch = 0
        self.progress.stopped, self.progress.history, self.progress.seconds = False, {}, 0.0

    def finished_results(self) -> list[FitResult]:
        return [FitResult(r["history"], r["seconds"], r["kept"]) for r in self.progress.finished]

    def done(self) -> None:
        if self.writes:
            resume.finished(self.where)
        else:
            shutil.rmtree(self.where, ignore_errors=True)


class _Restored(keras.callbacks.Callback):
    """Early stopping's and the plateau reduction's state, put back after
    their reset at the start of the resumed fit."""

    def __init__(self, states: list[dict], saved: dict, callbacks: list):
        super().__init__()
        self.states, self.saved, self.callbacks = states, saved, callbacks

    def on_train_begin(self, logs=None):
        for j, (callback, state) in enumerate(zip(self.callbacks, self.states)):
            for name, value in state.items():
                setattr(callback, name, value)
            if isinstance(callback, keras.callbacks.EarlyStopping) and f"best_{j}_0" in self.saved:
                count = len([k for k in self.saved if k.startswith(f"best_{j}_")])
                callback.best_weights = [self.saved[f"best_{j}_{i}"] for i in range(count)]


class _Saving(keras.callbacks.Callback):
    def __init__(self, checkpoint: SoupCheckpoint, run: int, callbacks: list, log_dir: Path, skip: int, steps: int):
        super().__init__()
        self.checkpoint, self.run, self.log_dir, self.skip, self.steps = checkpoint, run, log_dir, skip, steps
        checkpoint.callbacks = _stateful(callbacks)
        self.epoch, self.began = 0, time.perf_counter()

    def on_train_begin(self, logs=None):
        self.checkpoint.preemption.armed = self.checkpoint.pauses

    def on_train_end(self, logs=None):
        self.checkpoint.preemption.armed = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.began = epoch, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        progress = self.checkpoint.progress
        trained = self.skip + batch + 1  # Keras names the last step of each call of its compiled step
        if not self.checkpoint.preemption.requested or trained >= self.steps:
            return  # in the epoch's last call: its end is the next save
        progress.epoch, progress.batch = self.epoch, trained
        progress.seconds += time.perf_counter() - self.began
        self.checkpoint.save(self.log_dir)
        self.checkpoint.preemption.stop(
            f"saved run {self.run + 1}, epoch {self.epoch + 1} after batch {trained} in "
            f"{self.checkpoint.where}; `dvc repro` resumes there")

    def on_epoch_end(self, epoch, logs=None):
        progress = self.checkpoint.progress
        for name, value in (logs or {}).items():
            progress.history.setdefault(name, []).append(float(value))
        progress.epoch, progress.batch = epoch + 1, 0
        progress.stopped = bool(self.model.stop_training)
        progress.seconds += time.perf_counter() - self.began
        self.checkpoint.save(self.log_dir)
        if self.checkpoint.preemption.requested:
            self.checkpoint.preemption.stop(f"saved run {self.run + 1} at the end of epoch {epoch + 1} in "
                                            f"{self.checkpoint.where}; `dvc repro` resumes there")


class OneEpoch(keras.callbacks.Callback):
    """Ends a fit after its first epoch (the rest of an interrupted one),
    once the checkpoint has saved it: the epoch lines still count to the
    run's last epoch."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def _packed(folder: Path) -> bytes:
    """A checkpoint folder as one tar archive's bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


@contextlib.contextmanager
def best_weights_kept(callbacks: list):
    """Early stopping, told not to restore its best weights at the end of a
    fit that is not the run's end."""
    stopping = [c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping) and c.restore_best_weights]
    for c in stopping:
        c.restore_best_weights = False
    try:
        yield
    finally:
        for c in stopping:
            c.restore_best_weights = True


def run_result(checkpoint: SoupCheckpoint, callbacks: list) -> FitResult:
    """The current run's figures over all its epochs, before and after any interruption."""
    history = {k: list(v) for k, v in checkpoint.progress.history.items()}
    return FitResult(history, checkpoint.progress.seconds, kept_epoch(history, callbacks))

