"""Multi-worker training from TF_CONFIG (docs/DESIGN.md §2.4): its own training loop.

Keras 3's ``model.fit`` does not run under ``tf.distribute.MultiWorkerMirroredStrategy``
(keras-team/keras issue 20585: ``ValueError: Attempt to convert a value (PerReplica:{...})``), so
under that strategy ``training.fit`` calls :func:`fit` here instead. What it keeps identical to a
one-process ``model.fit`` run with the same global batch ``-b``:

* **Batches.** Every worker walks the one-process batch order (same seed, same shuffle) and
  reads only its slice of each batch (``data.loader.batch_plan(part=(worker, workers))``), so the
  workers' slices of step s together are the one-process batch s.
* **Loss.** Each replica computes the model's own loss (``CorrFusionNet.compute_loss``: cross-
  entropies, the method's losses, ``model.losses``) on its slice and weighs it by its share of
  the global batch (``tf.nn.compute_average_loss`` with the global batch size); the Keras optimiser
  sums the replicas' gradients. Per-pair means (cross-entropy, correlation loss) add up to the
  global batch mean; terms of the whole batch are made equal on every replica by synchronising
  them: batch normalisation (``synchronized=True``: the moments of the global batch) and the
  soft decorrelation's batch covariance and the views' variance term (``model.losses.replica_sum``).
* **Metrics.** The model's metric trackers are updated on each replica and summed across them
  (Keras metric variables are sync-on-read, aggregation "sum"): each epoch figure is the mean over
  the same pairs as in one process.

Not identical (computed per replica on its slice, then averaged): class-weighted cross-entropies
(``--class_weight``), ``--corr_norm unchanged``, the DCCA loss and the ``cancorr`` metric.

The callbacks' duties run here on every worker in the same order (their reads of synchronised
variables are collective operations): the epoch's validation (and test, full-trn) figures by a
distributed evaluation, the learning rate, then ``training.callbacks``' checkpoints, epoch log and
TensorBoard, driven by hand. Only the chief writes the run directory; the other workers run with a
temporary one (:func:`temporary_workdir`), removed at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model.config import INPUT_SCALING
from utils.cli import JoinTimeout, Terminated, UsageError, quiet_native_stderr, signals_handled
from utils.devices import cluster_from_env, select_devices
from utils.rundir import run_paths

log = logging.getLogger("corrfusion.train")


def uses_custom_loop(strategy) -> bool:
    """Whether training under ``strategy`` must use :func:`fit` instead of ``model.fit``."""
    tf = sys.modules.get("tensorflow")  # never imported here: the JAX backend needs none
    return tf is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def writes_results(strategy) -> bool:
    """False on a multi-worker non-chief: the chief alone evaluates the best checkpoint on tst."""
    return not uses_custom_loop(strategy) or strategy.extended.should_checkpoint


# ------------------------------------------------------------------------------ before TensorFlow
@contextlib.contextmanager
def temporary_workdir(config):
    """A non-chief worker's config: every output under a new temporary directory, removed on
    exit (only the chief writes the run directory). With ``--resume`` the run's files it reads
    (last/best checkpoints, state, logs) are copied there from the chief's run directory, which
    must then be readable from this worker (a shared file system)."""
    tmp = Path(tempfile.mkdtemp(prefix="corrfusion-worker-"))
    try:
        worker = config.replace(workdir=str(tmp / "run"), log_path=None, model_path=None,
                                tb_path=None, result_path=None)
        if config.resume:
            for k in range(config.runs):
                src, dst = run_paths(config, k), run_paths(worker, k)
                for a, b in ((src.last, dst.last), (src.state, dst.state), (src.best, dst.best),
                             (src.log_dir / "log.txt", dst.log_dir / "log.txt"),
                             (src.log_dir / "history.csv", dst.log_dir / "history.csv"),
                             (src.root / "args.json", dst.root / "args.json"),  # resume checks
                             (src.result_dir / "tst" / "results.json",  # same run modes
                              dst.result_dir / "tst" / "results.json")):
                    if a.is_file():
                        b.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(a, b)
        log.info("multi-worker: this worker writes to %s (removed at the end); the chief writes "
                 "the run directory", tmp)
        yield worker
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_batches(config, summaries: dict, workers: int) -> None:
    """Every batch must give every worker at least one pair: refuse a split whose last batch
    holds fewer pairs than there are workers (a worker's empty slice has no mean loss)."""
    for summary in summaries.values():
        last = summary.n_pairs % config.batch_size
        if 0 < last < workers:
            raise UsageError(f"{summary.split_dir}: its last batch of -b {config.batch_size} holds "
                             f"{last} pair(s), fewer than the {workers} workers; choose another "
                             "-b/--batch_size")


# ----------------------------------------------------------------------------------------- loop
def synchronize_batch_statistics(net) -> int:
    """Batch normalisation and the soft decorrelation's covariance over the global batch on every
    replica (runtime switches, not saved: checkpoints stay the same). Returns how many layers."""
    import keras  # deferred: Keras loads on first use

    from model.losses import SoftDecorrelation  # deferred: model.losses imports Keras

    net.synchronized = True  # the views' variance term (model.losses.view_variance_loss)
    n = 0
    for layer in net._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization | SoftDecorrelation):
            layer.synchronized = True
            n += 1
    return n


class _Steps:
    """The replica functions and their distributed ``tf.function`` steps for one model."""

    def __init__(self, net, strategy, spec):
        import tensorflow as tf  # deferred: TensorFlow loads on first use

        self.tf, self.net, self.strategy = tf, net, strategy
        self.loss_tracker = next(m for m in net.metrics if m.name == "loss")  # Keras' own
        self.train_step = self._compiled(self._train_replica, spec)
        self.eval_step = self._compiled(self._eval_replica, spec)

    def _compiled(self, fn, spec):
        """One trace for every batch size (the partial last batch, each evaluated split)."""
        return self.tf.function(self._distributed(fn), input_signature=[spec])

    def _distributed(self, fn):
        def step(batch):
            per_replica = self.strategy.run(fn, args=(batch,))
            return self.strategy.reduce(self.tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return step

    def _sizes(self, y):
        tf = self.tf
        n = tf.shape(y[0])[0]
        total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, n)
        return n, total

    def _train_replica(self, batch):
        tf, net = self.tf, self.net
        x, y = batch
        n, total = self._sizes(y)
        with tf.GradientTape() as tape:
            y_pred = net(x, training=True)
            loss = net.compute_loss(x, y, y_pred, training=True)
            # this replica's share of the global batch mean: n / total of its slice's mean
            share = tf.nn.compute_average_loss(tf.fill([n], loss), global_batch_size=total)
            scaled = net.optimizer.scale_loss(share)
        self.loss_tracker.update_state(loss, sample_weight=n)
        grads = tape.gradient(scaled, net.trainable_weights)
        net.optimizer.apply_gradients(zip(grads, net.trainable_weights, strict=True))  # summed
        net.compute_metrics(x, y, y_pred)
        return share

    def _eval_replica(self, batch):
        tf, net = self.tf, self.net
        x, y = batch
        n, total = self._sizes(y)
        y_pred = net(x, training=False)
        loss = net.compute_loss(x, y, y_pred, training=False)
        self.loss_tracker.update_state(loss, sample_weight=n)
        net.compute_metrics(x, y, y_pred)
        return tf.nn.compute_average_loss(tf.fill([n], loss), global_batch_size=total)


def _results(net) -> dict:
    return {k: float(v) for k, v in net.get_metrics_result().items()}


def fit(net, config, data, callbacks, guard, strategy, initial_epoch: int) -> None:
    """``net.fit`` under MultiWorkerMirroredStrategy: ``config.epochs`` epochs from
    ``initial_epoch`` on this worker's slices of the batches, with the callbacks of
    ``training.fit.make_callbacks`` (their ``SplitEvaluation`` is done here, distributed)."""
    from data.loader import make_dataset  # deferred: data.loader imports Keras
    from training.callbacks import SplitEvaluation, current_learning_rate

    n_sync = synchronize_batch_statistics(net)
    extra = next((cb.splits for cb in callbacks if isinstance(cb, SplitEvaluation)), {})
    callbacks = [cb for cb in callbacks if not isinstance(cb, SplitEvaluation)]
    dirs = {"trn": config.trn_dir, "val": config.val_dir, "tst": config.tst_dir}
    loaders = {}

    def loader(split, training):
        def dataset_fn(ctx):
            part = (ctx.input_pipeline_id, ctx.num_input_pipelines)
            ds, _ = make_dataset(dirs[split], config.batch_size, training=training,
                                 seed=config.seed, image_size=data.image_size,
                                 num_classes=data.num_classes, raw_integers=True, part=part,
                                 scaling=INPUT_SCALING[config.model.input_norm])
            loaders[(split, training)] = ds
            return ds

        return strategy.distribute_datasets_from_function(dataset_fn)

    trn = loader("trn", True)
    loaders[("trn", True)].set_epoch(initial_epoch)
    evals = {"val": loader("val", False)}
    evals.update({name: loader(name, False) for name in extra})
    steps = _Steps(net, strategy, trn.element_spec)
    log.info("multi-worker training: %d replicas, global batch %d, %d synchronised batch-"
             "statistics layer(s)", strategy.num_replicas_in_sync, config.batch_size, n_sync)

    params = {"epochs": config.epochs, "steps": data.steps_per_epoch, "verbose": 0}
    for cb in callbacks:
        cb.set_model(net)
        cb.set_params(params)
        cb.on_train_begin()
    for epoch in range(initial_epoch, config.epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        net.reset_metrics()
        for step, batch in enumerate(trn):
            loss = float(steps.train_step(batch))
            guard.on_train_batch_end(step, {"loss": loss})
            if not math.isfinite(loss):
                break
        logs = _results(net)
        logs["learning_rate"] = current_learning_rate(net.optimizer)
        if not guard.failure:
            for name, ds in evals.items():
                net.reset_metrics()
                for batch in ds:
                    steps.eval_step(batch)
                logs.update({f"{name}_{k}": v for k, v in _results(net).items()})
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if guard.failure:
            break
    for cb in callbacks:
        cb.on_train_end()



# ------------------------------------------------------------------------------------ joining
def wait_for_workers(create, cluster):
    """``create()`` (the strategy's constructor, which waits in TensorFlow's native code until
    every worker of TF_CONFIG has connected), with a "waiting for workers" log line before and
    "all workers joined" after; TensorFlow's start-up lines (coordination service, gRPC server)
    hidden unless --verbose. The native wait holds Python's GIL and TensorFlow catches SIGTERM
    there itself, so it cannot be bounded or interrupted from Python: ``supervise``, the parent
    process, does that (--join_timeout, SIGTERM/SIGINT)."""

    log.info("waiting for workers: %s %d of %d, for the %d other(s) in TF_CONFIG to join",
             cluster.task_type, cluster.task_index, cluster.num_workers, cluster.num_workers - 1)
    _tell_supervisor(_WAITING)
    with quiet_native_stderr():
        strategy = create()
    _tell_supervisor(_JOINED)
    log.info("all %d workers joined", cluster.num_workers)
    return strategy


# ------------------------------------------------------------------------------- supervision
#: set in the supervised child (``supervise``): the write end of the parent's pipe, as a number
SUPERVISED_ENV = "CORRFUSION_SUPERVISED"
#: seconds a supervised child has, after a forwarded SIGTERM/SIGINT, to end on its own once the
#: workers have joined (its own clean-up); before, nothing is written and it is killed at once
GRACE_S = 10.0
_WAITING, _JOINED = b"w", b"j"


def supervised() -> bool:
    """This process is the training child of ``supervise``."""
    return bool(os.environ.get(SUPERVISED_ENV))


def _tell_supervisor(marker: bytes) -> None:
    fd = os.environ.get(SUPERVISED_ENV)
    if fd:
        try:
            os.write(int(fd), marker)
        except (OSError, ValueError):  # no supervisor (a bad or closed fd): nothing to tell
            pass


def supervise_join(config) -> None:
    """train_cnn.py's first step: with TF_CONFIG, this process runs its own command line again as
    the worker child that trains and only supervises it (``supervise``), ending with the child's
    exit status (SystemExit); without TF_CONFIG, or in that child, it returns. The join the child
    waits in cannot be bounded or interrupted from inside (--join_timeout, SIGTERM/SIGINT). Called
    before the training library is imported: the supervisor loads neither TensorFlow nor the
    evaluation's plotting and metrics libraries, which only the child needs."""
    select_devices(config.gpu)  # before TensorFlow starts (in the child, which inherits it)
    cluster = cluster_from_env()
    if cluster is not None and not supervised():
        raise SystemExit(supervise(cluster, config.join_timeout))


def supervise(cluster, join_timeout: float) -> int:
    """Run this command again in a child process (same interpreter, arguments and environment,
    plus ``CORRFUSION_SUPERVISED``) and wait for it; the child's exit status.

    TensorFlow's join (``wait_for_workers``) holds Python's GIL and catches SIGTERM itself, so a
    worker cannot bound or end its own wait; its parent can. The child tells through an inherited
    pipe when it starts waiting and when all workers have joined. Until they have (nothing is
    written before): more than ``join_timeout`` seconds of waiting (0: no limit) kill it and
    raise ``JoinTimeout``; SIGTERM/SIGINT kill it and unwind as ``Terminated``/KeyboardInterrupt
    (``run_main``: 143/130). After: the signal is forwarded, and the child ends as a single-worker
    run does (its own line and status), or is killed after ``GRACE_S`` seconds. The child runs in
    its own process group, so Ctrl-C reaches it once, through here, and dies with this process
    (Linux: even a ``kill -9`` of this one ends it); its output is this one's."""
    # the child's temporary files (a non-chief worker's run directory) in a directory removed
    # when it has ended, however it ended
    with tempfile.TemporaryDirectory(prefix="corrfusion-supervised-") as tmp:
        return _supervise(cluster, join_timeout, {**os.environ, "TMPDIR": tmp})


def _supervise(cluster, join_timeout: float, env: dict) -> int:
    read_fd, write_fd = os.pipe()
    env = {**env, SUPERVISED_ENV: str(write_fd)}
    try:
        child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env,
                                 pass_fds=(write_fd,), process_group=0,
                                 preexec_fn=_die_with_parent)
    finally:
        os.close(write_fd)
    waiting_since, joined, eof = None, False, False
    try:
        # SIGTERM/SIGINT only note themselves while this loop runs: an exception raised at an
        # arbitrary bytecode could land inside Popen.poll with its wait lock held, and the
        # child.wait() of the clean-up would then wait for that lock forever
        with _signals_noted() as noted:
            while child.poll() is None and not noted:
                if not eof and select.select([read_fd], [], [], 0.2)[0]:
                    data = os.read(read_fd, 64)
                    eof = not data
                    if _WAITING in data and waiting_since is None:
                        waiting_since = time.monotonic()
                    joined = joined or _JOINED in data
                elif eof:
                    time.sleep(0.2)
                if (not joined and waiting_since is not None and join_timeout > 0
                        and time.monotonic() - waiting_since > join_timeout):
                    _kill(child)
                    raise JoinTimeout(
                        f"TF_CONFIG: the other {cluster.num_workers - 1} worker(s) did not join "
                        f"{cluster.task_type} {cluster.task_index} within {join_timeout:g} s "
                        "(--join_timeout); nothing was written")
        if not noted:
            return child.returncode
        raise KeyboardInterrupt if noted[0] == signal.SIGINT else Terminated
    except BaseException as e:  # SIGTERM (Terminated), Ctrl-C, or an error of this process
        if not eof and select.select([read_fd], [], [], 0)[0]:  # a "joined" not read yet
            joined = joined or _JOINED in os.read(read_fd, 64)
        if child.poll() is None:
            sig = signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
            if joined:
                child.send_signal(sig)
                try:
                    rc = child.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    _kill(child)
                else:  # it ended on its own: its line has been written, its status is ours
                    raise SystemExit(rc) from None
            else:
                _kill(child)
        raise
    finally:
        os.close(read_fd)


@contextlib.contextmanager
def _signals_noted():
    """While inside (main thread): SIGTERM and SIGINT are appended to the yielded list instead of
    raising; the previous handlers come back on leaving. Elsewhere: an empty list, unchanged."""
    noted: list[int] = []
    with signals_handled((signal.SIGTERM, signal.SIGINT), lambda signum, frame: noted.append(signum)):
        yield noted


def _die_with_parent() -> None:
    """In the child before it starts (Linux): SIGKILL when the supervisor dies, even by
    SIGKILL, so that no orphan waits for its peers forever (elsewhere: nothing)."""
    if not sys.platform.startswith("linux"):
        return

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _kill(child) -> None:
    child.kill()
    child.wait()
