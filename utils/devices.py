"""Device selection before TensorFlow starts, and the distribution strategy once it has.

`select_devices` must run before the first TensorFlow/Keras import (it sets CUDA_VISIBLE_DEVICES);
`cluster_from_env` reads TF_CONFIG (multi-worker training) without TensorFlow; `setup_backend`
and `make_strategy` run after, and `make_strategy` before anything initialises TensorFlow's
runtime (no tensor, no tf.data pipeline yet): MultiWorkerMirroredStrategy configures the
collective ops, which TensorFlow accepts at start-up only. On the JAX backend the TensorFlow-only
parts (memory growth, tf.distribute) are skipped with a log line saying so; TF_CONFIG there is a
usage error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass

from utils.cli import UsageError, quiet_native_stderr

log = logging.getLogger(__name__)


def select_devices(gpu: str | None) -> None:
    """Restrict the visible GPUs: None keeps the environment, 'cpu' hides all GPUs, '0,1' selects."""
    if gpu is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1" if gpu == "cpu" else gpu


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker cluster (TF_CONFIG)."""

    task_type: str
    task_index: int
    num_workers: int  # chief + workers: the processes that train together

    @property
    def is_chief(self) -> bool:
        """The one process that writes the run directory: the "chief" task, or worker 0 when
        the cluster has no chief (TensorFlow's convention)."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self.has_chief)

    has_chief: bool = False


def cluster_from_env(backend: str | None = None) -> Cluster | None:
    """The multi-worker cluster TF_CONFIG describes, None without TF_CONFIG (read without
    TensorFlow). A TF_CONFIG that is not a cluster with this task in it, or one on a backend other
    than TensorFlow, is a UsageError (one line, exit status 2)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    backend = backend or configured_backend()
    if backend != "tensorflow":
        raise UsageError(f"TF_CONFIG: multi-worker training needs the TensorFlow backend, this is "
                         f"{backend} (unset TF_CONFIG or KERAS_BACKEND)")
    try:
        cfg = json.loads(raw)
        cluster, task = cfg["cluster"], cfg["task"]
        task_type, index = str(task["type"]), int(task["index"])
        sizes = {t: len(cluster.get(t, [])) for t in ("chief", "worker")}
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"TF_CONFIG: {type(e).__name__}: {e}; expected JSON "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                         '"index": i}}') from None
    if task_type not in sizes or not 0 <= index < sizes[task_type]:
        raise UsageError(f"TF_CONFIG: task {task_type} {index} is not in the cluster "
                         f"({sizes['chief']} chief, {sizes['worker']} worker(s))")
    return Cluster(task_type, index, sizes["chief"] + sizes["worker"], sizes["chief"] > 0)


def configured_backend() -> str:
    """Keras' backend, without importing Keras (and TensorFlow) when it is not loaded yet: the
    ``KERAS_BACKEND`` variable, else the "backend" of ``keras.json`` in ``KERAS_HOME`` (or
    ``~/.keras``, ``/tmp/.keras`` where the home is not writable), else tensorflow: Keras 3's own
    order (keras/src/backend/config.py). A multi-worker supervisor (``training.multiworker``)
    only needs to know the backend: its worker child imports TensorFlow, it need not."""
    if "keras" in sys.modules:
        return backend_name()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(os.path.expanduser(home), "keras.json")) as fh:
            return str(json.load(fh).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def backend_name() -> str:
    """Keras' backend; importing Keras imports TensorFlow, whose start-up lines are hidden here
    as in ``start_backend`` (unless --verbose)."""

    with quiet_native_stderr():
        import keras  # deferred: Keras loads on first use

    return keras.backend.backend()


def resolve_jit(jit: bool | None, backend: str | None = None) -> bool:
    """``--jit`` as ``model.compile(jit_compile=...)`` takes it: as given, else on for JAX and off
    for TensorFlow. Keras' JAX trainer jit-compiles the train/test/predict steps only with
    ``jit_compile=True``; with False it runs every operation of the step on its own (70-130x
    slower per step than the jitted step for the small model on a CPU, benchmarks/RESULTS.md §4).
    TensorFlow without XLA still runs tf.function graphs, its own default."""
    if jit is not None:
        return bool(jit)
    return (backend or backend_name()) == "jax"


def start_backend():
    """Import Keras (and TensorFlow) and let it find its devices with its native start-up lines
    hidden unless --verbose (``utils.cli.quiet_native_stderr``); returns the keras module."""

    with quiet_native_stderr():
        import keras  # deferred: Keras loads on first use

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf  # deferred: TensorFlow loads on first use

            tf.config.list_physical_devices("GPU")
    return keras


def setup_backend(mixed_precision: bool = False) -> dict:
    """Memory growth on every GPU, the mixed-precision policy; returns a description for args.json."""
    keras = start_backend()

    info: dict = {"backend": keras.backend.backend()}
    gpus: list = []
    if info["backend"] == "tensorflow":
        import tensorflow as tf  # deferred: TensorFlow loads on first use

        gpus = tf.config.list_physical_devices("GPU")
        for g in gpus:
            with contextlib.suppress(RuntimeError):  # already initialised
                tf.config.experimental.set_memory_growth(g, True)
        info["gpus"] = [g.name for g in gpus]
    elif info["backend"] == "jax":
        import jax  # deferred: JAX loads on first use

        info["gpus"] = [str(d) for d in jax.devices() if d.platform == "gpu"]
        gpus = info["gpus"]
    else:
        info["gpus"] = []
    warn_missing_gpus(info["gpus"], info["backend"])
    if mixed_precision:
        policy = "mixed_float16" if gpus and _wants_float16(gpus) else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
        info["precision"] = policy
    else:
        keras.mixed_precision.set_global_policy("float32")
        info["precision"] = "float32"
    return info


def warn_missing_gpus(gpus, backend: str) -> None:
    """Say so when ``-g`` (CUDA_VISIBLE_DEVICES) asked for more GPUs than the backend sees: the
    backends fall back to the CPU silently (issue 15 item 10)."""
    wanted = [i.strip() for i in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
              if i.strip() and i.strip() != "-1"]
    if len(gpus) < len(wanted):
        log.warning("GPU %s requested (-g / CUDA_VISIBLE_DEVICES) but %s sees %s: running on %s",
                    ",".join(wanted), backend, f"{len(gpus)} GPU(s)" if gpus else "no GPU",
                    ", ".join(map(str, gpus)) if gpus else "the CPU")


def _wants_float16(gpus) -> bool:
    """float16 only on GPUs without fast bfloat16 (compute capability < 8.0)."""
    try:
        import tensorflow as tf  # deferred: TensorFlow loads on first use

        cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        return bool(cc) and tuple(cc) < (8, 0)
    except Exception:  # noqa: BLE001 - unknown device: bfloat16 is the safe choice
        return False


def make_strategy(info: dict, join=None):
    """A strategy to build the model under (`with strategy.scope():`).

    ``join(create, cluster)`` makes the multi-worker strategy (``create()`` waits until every
    worker of TF_CONFIG has connected); training passes ``training.multiworker.wait_for_workers``
    (its log lines and the supervisor's protocol); without it, ``create()`` is called as it is.

    MultiWorkerMirrored when TF_CONFIG is set (call this before anything initialises TensorFlow's
    runtime, see the module docstring; one device per worker), Mirrored for several GPUs, else
    the default one.
    """
    if info["backend"] != "tensorflow":
        cluster_from_env(info["backend"])  # TF_CONFIG on another backend: a usage error
        if len(info.get("gpus", [])) > 1:
            log.warning("tf.distribute strategies need the TensorFlow backend; running on one "
                        "device with %s", info["backend"])
        info["strategy"] = "none"
        return NoStrategy()
    import tensorflow as tf  # deferred: TensorFlow loads on first use

    cluster = cluster_from_env(info["backend"])
    if cluster is not None:
        join = join or (lambda create, _cluster: create())
        try:
            strategy = join(tf.distribute.MultiWorkerMirroredStrategy, cluster)
        except RuntimeError as e:  # the runtime was started before: a bug of the caller's order
            raise RuntimeError(f"{e}: make_strategy must run before TensorFlow's runtime starts "
                               "(before any tensor or tf.data pipeline)") from e
        if strategy.num_replicas_in_sync != cluster.num_workers:
            raise UsageError(f"TF_CONFIG: {strategy.num_replicas_in_sync} devices in "
                             f"{cluster.num_workers} workers; multi-worker training takes one "
                             "device per worker (-g with one GPU id, or -g cpu)")
        info["strategy"] = (f"MultiWorkerMirroredStrategy ({cluster.task_type} "
                            f"{cluster.task_index} of {cluster.num_workers} workers)")
    elif len(info.get("gpus", [])) > 1:
        strategy = tf.distribute.MirroredStrategy()
        info["strategy"] = f"MirroredStrategy ({strategy.num_replicas_in_sync} replicas)"
    else:
        strategy = tf.distribute.get_strategy()
        info["strategy"] = "default (" + ("GPU:0" if info.get("gpus") else "CPU") + ")"
    log.info("devices: %s; strategy: %s; precision: %s",
             ", ".join(info.get("gpus") or ["CPU"]), info["strategy"], info["precision"])
    return strategy


class NoStrategy:
    """Stand-in for tf.distribute on other backends: `with strategy.scope():` does nothing."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()
