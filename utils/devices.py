"""Device selection before TensorFlow starts, and the distribution strategy once it has.

`select_devices` must run before the first TensorFlow/Keras import (it sets CUDA_VISIBLE_DEVICES);
`setup_backend` and `make_strategy` run after. On the JAX backend the TensorFlow-only parts
(memory growth, tf.distribute) are skipped with a log line saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

log = logging.getLogger(__name__)


def select_devices(gpu: str | None) -> None:
    """Restrict the visible GPUs: None keeps the environment, 'cpu' hides all GPUs, '0,1' selects."""
    if gpu is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1" if gpu == "cpu" else gpu


def backend_name() -> str:
    import keras

    return keras.backend.backend()


def start_backend():
    """Import Keras (and TensorFlow) and let it find its devices with its native start-up lines
    hidden unless --verbose (``utils.cli.quiet_native_stderr``); returns the keras module."""
    from utils.cli import quiet_native_stderr

    with quiet_native_stderr():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
    return keras


def setup_backend(mixed_precision: bool = False) -> dict:
    """Memory growth on every GPU, the mixed-precision policy; returns a description for args.json."""
    keras = start_backend()

    info: dict = {"backend": keras.backend.backend()}
    gpus: list = []
    if info["backend"] == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        for g in gpus:
            with contextlib.suppress(RuntimeError):  # already initialised
                tf.config.experimental.set_memory_growth(g, True)
        info["gpus"] = [g.name for g in gpus]
    elif info["backend"] == "jax":
        import jax

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
        import tensorflow as tf

        cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        return bool(cc) and tuple(cc) < (8, 0)
    except Exception:  # noqa: BLE001 - unknown device: bfloat16 is the safe choice
        return False


def make_strategy(info: dict):
    """A strategy to build the model under (`with strategy.scope():`).

    MultiWorkerMirrored when TF_CONFIG is set, Mirrored for several GPUs, else the default one.
    """
    if info["backend"] != "tensorflow":
        if os.environ.get("TF_CONFIG") or len(info.get("gpus", [])) > 1:
            log.warning("tf.distribute strategies need the TensorFlow backend; running on one "
                        "device with %s", info["backend"])
        info["strategy"] = "none"
        return NoStrategy()
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        cfg = json.loads(os.environ["TF_CONFIG"])
        info["strategy"] = f"MultiWorkerMirroredStrategy (task {cfg.get('task')})"
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
