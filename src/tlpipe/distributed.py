"""Where fine-tuning runs, and how it trains there: one device, several
replicas on one machine, or several machines.

``choose_strategy`` picks the ``tf.distribute`` strategy; ``trainer`` hands
back what fits a model under it and predicts with it:

- one machine (one device, ``TLPIPE_REPLICAS=N`` or all its GPUs): Keras'
  own ``fit`` and ``predict`` (``KerasTrainer``);
- several machines (``TF_CONFIG`` set): Keras 3's ``fit`` and ``evaluate``
  fail under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585: its
  symbolic build and its metric reduction call collectives that break in
  eager mode), so ``WorkerLoop`` trains with a loop of its own that drives
  the very same Keras callbacks (early stopping with best-weights restore,
  the learning-rate plateau reduction, DVCLive) and the same optimizer, whose
  learning-rate schedule (warmup included) follows its step count.

``WorkerLoop`` splits every global batch between all replicas of all workers,
in order, so a run on N workers sees the same batches as a run on one (the
tests compare them); every figure it reports (train and val loss and
accuracy) is summed across workers, so every worker takes the same
early-stopping decision (and, holding the same weights, predicts the same val
probabilities for the head-or-fine-tuned choice), and none waits forever for
a peer that stopped.
"""

from __future__ import annotations

import json
import os
import sys
import time

import keras
import numpy as np

from tlpipe.errors import TlpipeError
from tlpipe.training import FitResult, Inputs, fit, kept_epoch, loss_for, sigmoid_outputs

REPLICAS_ENV = "TLPIPE_REPLICAS"
# Seconds a worker waits for its peers: to join the cluster at start, and at
# every collective step (a peer that died or hangs). Generous by default: the
# slowest machine may still be decoding images when the others are ready.
PEER_TIMEOUT_ENV = "TLPIPE_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 300
# Seconds TensorFlow's coordination service lets a task go without a heartbeat
# before it declares the cluster's tasks crashed (its own default: 10 s). A
# machine busy on every core (one epoch took 62 s instead of 12 under load)
# misses some, and a run that then succeeded printed "The tasks have crashed".
# A peer that really dies is still found by its closed connections, or by the
# collective timeout (TLPIPE_PEER_TIMEOUT).
HEARTBEAT_TIMEOUT_ENV = "TLPIPE_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_TIMEOUT = 60


def _positive_int(name: str, unit: str, default: int | None) -> int | None:
    """An environment variable holding a whole number >= 1, or ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise TlpipeError(f"{name} must be a whole number of {unit} >= 1. Got {raw!r} instead.")
    return int(raw)


def _cluster() -> dict | None:
    """TF_CONFIG, parsed and checked; None when it is not set."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        workers = {job: list(addresses) for job, addresses in config["cluster"].items()}
        task_type, task_index = config["task"]["type"], int(config["task"]["index"])
        workers[task_type][task_index]
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise TlpipeError(
            f"TF_CONFIG must be JSON like {{\"cluster\": {{\"worker\": [\"host1:port\", \"host2:port\"]}}, "
            f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}} with the task among the cluster's. "
            f"Got {raw!r} instead ({type(err).__name__}: {err})."
        ) from None
    unknown = sorted(set(workers) - {"chief", "worker"})
    if unknown:
        raise TlpipeError(f"TF_CONFIG's cluster may name the jobs 'chief' and 'worker'. Got {unknown} instead.")
    return {"cluster": workers, "type": task_type, "index": task_index}


def is_chief() -> bool:
    """Whether this process writes the results: always on one machine; in a
    cluster, the 'chief' task, or worker 0 when there is none."""
    cluster = _cluster()
    if cluster is None:
        return True
    if "chief" in cluster["cluster"]:
        return cluster["type"] == "chief"
    return cluster["index"] == 0


def worker_count() -> int:
    """Machines training together: the tasks of TF_CONFIG's cluster, else 1."""
    cluster = _cluster()
    return 1 if cluster is None else sum(len(a) for a in cluster["cluster"].values())


def describe_task() -> str:
    cluster = _cluster()
    if cluster is None:
        return "this machine"
    return f"{cluster['type']} {cluster['index']} of {worker_count()} tasks"


# Runs beside a worker while it joins its cluster: TensorFlow's join blocks in
# C++ holding the GIL, so no thread of the worker can time it out.
_WATCHDOG = """
import os, signal, sys, time
parent, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(timeout)
if os.getppid() == parent:
    print(message, file=sys.stderr, flush=True)
    os.kill(parent, signal.SIGKILL)
"""


def configure_coordination(cluster: dict, heartbeat_seconds: int) -> None:
    """TensorFlow's coordination service as MultiWorkerMirroredStrategy would
    configure it (the chief, else worker 0, leads; chief and workers take
    part), with a heartbeat timeout a busy machine meets. Before the strategy:
    it configures the service only where nothing has."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2  # where the strategy takes it
    from tensorflow.python.eager import context

    jobs = cluster["cluster"]
    leader = f"/job:{'chief' if 'chief' in jobs else 'worker'}/replica:0/task:0"
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=leader,
        heartbeat_timeout_in_ms=heartbeat_seconds * 1000,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(tasks))
                          for job, tasks in jobs.items() if job in ("chief", "worker")],
    )


def _join_cluster(cluster: dict, timeout: int):
    """MultiWorkerMirroredStrategy, once every task has joined; after
    ``timeout`` seconds without, one line on stderr and the worker is stopped
    (TensorFlow itself would wait forever for a task that never starts)."""
    import subprocess

    import tensorflow as tf

    addresses = ", ".join(a for job in cluster["cluster"].values() for a in job)
    message = (
        f"finetune: error: not every task of TF_CONFIG's cluster ({addresses}) joined within {timeout} s "
        f"({PEER_TIMEOUT_ENV}); nothing was written. Start the finetune stage on every machine of the cluster, "
        "and check that each address is reachable from the others."
    )
    configure_coordination(cluster, _positive_int(HEARTBEAT_TIMEOUT_ENV, "seconds", DEFAULT_HEARTBEAT_TIMEOUT))
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout), message])
    try:
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    finally:
        watchdog.kill()
        watchdog.wait()


def choose_strategy():
    """Several machines when ``TF_CONFIG`` is set; else ``TLPIPE_REPLICAS``
    local replicas, all local GPUs, or the default one-device strategy.

    ``TLPIPE_REPLICAS=N`` runs N replicas on this machine: N GPUs when there are
    that many, else N logical devices carved out of the CPU, which runs the
    very code path of N GPUs (how the tests exercise it without a GPU). Must
    run before TensorFlow initialises its devices.
    """
    import tensorflow as tf

    cluster = _cluster()
    wanted = _positive_int(REPLICAS_ENV, "replicas", None)
    if cluster is not None:
        if wanted is not None:
            raise TlpipeError(f"Set TF_CONFIG (several machines) or {REPLICAS_ENV} (one machine), not both.")
        return _join_cluster(cluster, _positive_int(PEER_TIMEOUT_ENV, "seconds", DEFAULT_PEER_TIMEOUT))
    gpus = tf.config.list_physical_devices("GPU")
    if wanted:
        if len(gpus) >= wanted:
            devices = [d.name for d in tf.config.list_logical_devices("GPU")][:wanted]
        else:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * wanted)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")][:wanted]
        if wanted > 1:
            return tf.distribute.MirroredStrategy(devices)
        return tf.distribute.OneDeviceStrategy(devices[0])
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


# Elements of one all-reduce when the chief's bytes go to every worker (256 MB).
CHUNK_ELEMENTS = 64 * 2**20


def from_chief(strategy, data: bytes) -> bytes:
    """The chief's ``data`` on every worker (what the others pass is not
    used): an all-reduce sum in which every replica but the chief's first
    adds zeros, so it works on whatever transport the strategy's collectives
    use. The bytes travel as int32 words, whose sum with zeros is exact."""
    import tensorflow as tf

    def chiefs(values: np.ndarray) -> np.ndarray:
        def replica():
            first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
            return tf.where(first, tf.constant(values), tf.zeros_like(values))

        return strategy.reduce("SUM", strategy.run(replica), axis=None).numpy()

    length = int(chiefs(np.array([len(data)], np.int64))[0])
    size = -(-length // 4) * 4  # whole words; the others' bytes, cut or padded to it, are zeroed anyway
    words = np.frombuffer(data.ljust(size, b"\0")[:size], np.int32)
    parts = [chiefs(words[i : i + CHUNK_ELEMENTS]) for i in range(0, len(words), CHUNK_ELEMENTS)]
    return np.concatenate(parts).tobytes()[:length] if parts else b""


def is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _reason(err) -> str:
    """The line of a TensorFlow error that says what happened to the peer."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if any(word in line for word in ("unhealthy", "aborted by", "Deadline", "timed out", "Connection")):
            return line[:300]
    return lines[0][:300] if lines else ""


class KerasTrainer:
    """One machine: Keras' own evaluate and fit."""

    def __init__(self, model: keras.Model):
        self.model = model

    def fit(self, train: Inputs, val: Inputs, epochs: int, callbacks: list, initial_epoch: int = 0) -> FitResult:
        return fit(self.model, train, val, epochs, callbacks, initial_epoch)

    def predict(self, data: Inputs) -> np.ndarray:
        return self.model.predict(data.x, batch_size=data.batch_size, verbose=0)


class WorkerLoop:
    """Several machines: evaluate and fit under MultiWorkerMirroredStrategy.

    ``model`` is compiled (its optimizer is used) and was built in the
    strategy's scope; ``global_batch`` is split between all replicas.
    """

    def __init__(self, strategy, model: keras.Model, label_smoothing: float, global_batch: int, seed: int):
        import tensorflow as tf

        self.tf, self.strategy, self.model = tf, strategy, model
        self.global_batch = global_batch
        # Arrays are shuffled from one stream for the trainer's life: the same orders on
        # every worker, and a new order for every run of a soup.
        self.shuffle = np.random.default_rng(seed)
        self._tensors: dict[int, tuple] = {}
        self.multi_label = sigmoid_outputs(model)
        self.loss = loss_for(model, label_smoothing, reduction=None)
        self._train_step = tf.function(self._step_fn(train=True))
        self._eval_step = tf.function(self._step_fn(train=False))

    # -- data: every replica takes its own slice of each global batch, in order
    def _slices(self, ctx, batch):
        """The slices of one global batch that this worker's replicas take, in
        their order. Every slice has exactly the per-replica batch size: past
        the end of a short last batch, rows repeat the batch's first with
        weight 0 (an empty batch breaks some fused kernels, and fixed shapes
        trace once). Each slice carries the global batch's size: the loss
        divides by it."""
        tf = self.tf
        per = ctx.get_per_replica_batch_size(self.global_batch)
        local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local
        n = tf.shape(batch[0])[0]

        def take(r):
            rows = tf.range(per) + (first + tf.cast(r, tf.int32)) * per
            real = rows < n
            rows = tf.where(real, rows, 0)
            return tuple(tf.gather(t, rows) for t in batch) + (tf.cast(real, tf.float32), n)

        return tf.data.Dataset.range(local).map(take)

    def _distributed(self, data: Inputs, order: np.ndarray | None):
        """A distributed dataset over ``data``: arrays in ``order`` (row indices,
        sliced before any row is gathered), or a stream of (image, label)
        global batches, sliced after decoding."""
        tf = self.tf
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        options.deterministic = True
        if data.y is None:
            def per_worker(ctx):
                return data.x.flat_map(lambda x, y: self._slices(ctx, (x, y))).with_options(options)
        else:
            if id(data.x) not in self._tensors:  # copied into TensorFlow once, not every epoch
                self._tensors[id(data.x)] = (tf.constant(data.x), tf.constant(data.y, tf.float32))
            x, y = self._tensors[id(data.x)]
            rows = np.arange(len(data.x)) if order is None else order

            def per_worker(ctx):
                batches = tf.data.Dataset.from_tensor_slices(rows).batch(self.global_batch)
                sliced = batches.flat_map(lambda idx: self._slices(ctx, (idx,)))
                return sliced.map(lambda idx, w, n: (tf.gather(x, idx), tf.gather(y, idx), w, n)).with_options(options)

        return self.strategy.distribute_datasets_from_function(per_worker)

    # -- steps
    def _step_fn(self, train: bool):
        tf, model = self.tf, self.model

        def replica(x, y, weight, n):
            with tf.GradientTape() as tape:
                probs = model(x, training=train)
                per_example = tf.cast(self.loss(y, probs), tf.float32) * weight
                # Summed over all replicas, the gradients are those of the global batch's mean loss.
                loss = tf.reduce_sum(per_example) / tf.cast(n, tf.float32)
                scaled = model.optimizer.scale_loss(loss) if train else loss
            if train:
                grads = tape.gradient(scaled, model.trainable_variables)
                model.optimizer.apply(grads, model.trainable_variables)
            if self.multi_label:  # the share of (image, label) decisions right at even odds, as BinaryAccuracy
                right = tf.reduce_mean(tf.cast((probs >= 0.5) == (y >= 0.5), tf.float32), axis=-1)
            else:
                right = tf.cast(tf.argmax(probs, axis=-1) == tf.argmax(y, axis=-1), tf.float32)
            correct = right * weight
            return tf.reduce_sum(per_example), tf.reduce_sum(correct), tf.reduce_sum(weight)

        def step(batch):
            totals = self.strategy.run(replica, args=batch)
            return [self.strategy.reduce("SUM", t, axis=None) for t in totals]

        return step

    def _run(self, step, dataset, on_batch=None) -> tuple[float, float]:
        """Mean loss and accuracy over ``dataset``, summed across every worker."""
        totals = np.zeros(3)
        try:
            for i, batch in enumerate(dataset):
                if on_batch:
                    on_batch("begin", i)
                totals += [float(t) for t in step(batch)]
                if on_batch:
                    on_batch("end", i)
        except (self.tf.errors.UnavailableError, self.tf.errors.DeadlineExceededError,
                self.tf.errors.AbortedError, self.tf.errors.CancelledError) as err:  # a peer died or hung
            raise TlpipeError(
                f"lost a peer worker during training ({type(err).__name__}: {_reason(err)}). Nothing was "
                "written; start the finetune stage again on every machine of TF_CONFIG's cluster."
            ) from None
        return totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)

    def evaluate(self, data: Inputs) -> tuple[float, float]:
        return self._run(self._eval_step, self._distributed(data, None))

    def fit(self, train: Inputs, val: Inputs, epochs: int, callbacks: list, initial_epoch: int = 0) -> FitResult:
        """Keras fit's contract: the callbacks see every batch and epoch (logs
        ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``), and
        ``model.stop_training`` ends the run."""
        callback_list = keras.callbacks.CallbackList(train.with_callbacks(callbacks), model=self.model, epochs=epochs,
                                                     verbose=2)
        history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        start = time.perf_counter()
        self.model.stop_training = False
        callback_list.on_train_begin()

        def on_batch(when, i):
            (callback_list.on_train_batch_begin if when == "begin" else callback_list.on_train_batch_end)(i)

        for epoch in range(initial_epoch, epochs):
            epoch_start = time.perf_counter()
            callback_list.on_epoch_begin(epoch)
            order = self.shuffle.permutation(len(train.x)) if train.y is not None else None
            loss, accuracy = self._run(self._train_step, self._distributed(train, order), on_batch)
            val_loss, val_accuracy = self.evaluate(val)
            logs = {"loss": loss, "accuracy": accuracy, "val_loss": val_loss, "val_accuracy": val_accuracy}
            print(f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - epoch_start:.0f}s - "
                  + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
            for key, value in logs.items():
                history[key].append(value)
            callback_list.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end()
        return FitResult(history, time.perf_counter() - start, kept_epoch(history, callbacks))

    def predict(self, data: Inputs) -> np.ndarray:
        """Probabilities on this worker alone (every worker holds the same weights)."""
        tf = self.tf
        forward = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        if data.y is None:
            return np.concatenate([forward(x).numpy() for x, _ in data.x])
        return np.concatenate([forward(data.x[i:i + self.global_batch]).numpy()
                               for i in range(0, len(data.x), self.global_batch)])


def val_batch(n: int, global_batch: int, replicas: int) -> int:
    """The batch size val is scored in: the global batch, unless val is
    smaller than it and does not split evenly between the replicas. Keras 3
    under MirroredStrategy fails when a dataset's first batch splits unevenly
    (an AddN of the replicas' inputs), or when a batch leaves a replica no row,
    though a later batch may split unevenly: such a val set is scored in the
    largest batches the replicas split evenly whose last batch, if any, still
    gives every replica a row."""
    if replicas < 2 or n >= global_batch or n % replicas == 0:
        return global_batch
    for size in range(n - n % replicas, 0, -replicas):
        if n % size >= replicas:
            return size
    return global_batch  # no such batches (3 images on 2 replicas): as before


def trainer(strategy, model: keras.Model, label_smoothing: float, global_batch: int, seed: int):
    if is_multi_worker(strategy):
        return WorkerLoop(strategy, model, label_smoothing, global_batch, seed)
    return KerasTrainer(model)
