"""What one training step costs the host on Keras 3 / JAX: ``fit`` against ``train_on_batch``
against the bare jitted step, and where ``train_on_batch``'s per-call cost goes (issue 25).

    python -m benchmarks.step_overhead --json benchmarks/results/step_overhead_cpu.json
    python -m benchmarks.step_overhead --backbone vgg16 --size 32 --batch 2 --steps 5   # host parts of VGG16

The model is ``model.build_model`` as train_cnn.py builds it (SGD, Nesterov momentum), by default
the small backbone at a tiny size so that the device work is small and what is measured is the
host's: Python, dispatch, copies of the state. Seconds per step, median of ``--reps`` windows of
``--steps`` steps after a warm-up (compilation excluded):

* ``jit_step``: Keras' own compiled train function (``make_train_function``: ``jax.jit`` of
  ``train_step`` with the state donated), the state threaded from call to call in Python, nothing
  read back until the window ends: the floor any loop can reach;
* ``jit_step_sync``: the same, waiting for each step's loss (what a per-step read of the logs costs);
* ``fit``: ``model.fit`` on uint8 NumPy arrays (train_cnn.py's path, with a NumPy instead of a
  tf.data loader), per step; ``fit_nojit``: the same compiled with ``jit_compile=False``, which on
  JAX runs every operation one by one (train_cnn.py's ``--jit false``);
* ``train_on_batch``: ``model.train_on_batch`` on batches already on the device.

and, with the model built, the host parts ``train_on_batch`` repeats on every call (median over
``--parts_calls`` calls, each on its own): ``reset_metrics`` (every metric variable assigned a new
zero array), ``get_state`` (the state gathered into lists), ``state_sync`` (every trainable,
non-trainable, optimizer and metric variable assigned back: ``jax_state_sync``), ``symbolic_build``
(the build check) and ``pythonify_logs`` (every logged value read back to a Python float: a wait for
the step).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

from benchmarks import common

log = logging.getLogger("benchmarks.step_overhead")
MODES = ("jit_step", "jit_step_sync", "fit", "fit_nojit", "train_on_batch")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="small")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--steps", type=int, default=50, help="steps per timed window")
    p.add_argument("--reps", type=int, default=5, help="timed windows (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--parts_calls", type=int, default=50, help="calls per host part")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def build(a, jit=True):
    import keras

    import model as cfn

    keras.utils.set_random_seed(0)
    net = cfn.build_model(num_classes=a.classes, image_size=(a.size, a.size), backbone=a.backbone,
                          hidden=a.hidden, seed=0)
    net.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9, nesterov=True),
                jit_compile=jit)
    return net


def batches(a, n):
    import numpy as np

    rng = np.random.default_rng(0)
    x1 = rng.integers(0, 256, (n * a.batch, a.size, a.size, 3), dtype=np.uint8)
    x2 = rng.integers(0, 256, (n * a.batch, a.size, a.size, 3), dtype=np.uint8)
    y1 = rng.integers(0, a.classes, n * a.batch).astype(np.int32)
    y2 = y1.copy()
    return (x1, x2), (y1, y2)


def windows(step, sync, a) -> list[float]:
    for _ in range(a.warmup):
        step()
    sync()
    out = []
    for _ in range(a.reps):
        t = time.perf_counter()
        for _ in range(a.steps):
            step()
        sync()
        out.append((time.perf_counter() - t) / a.steps)
    return out


def summary(secs) -> dict:
    return {"s_per_step": statistics.median(secs), "min": min(secs), "max": max(secs),
            "windows": len(secs)}


def measure(a) -> dict:
    import jax
    import numpy as np

    (x1, x2), (y1, y2) = batches(a, 4)
    dev = [((jax.device_put(x1[i * a.batch:(i + 1) * a.batch]),
             jax.device_put(x2[i * a.batch:(i + 1) * a.batch])),
            (jax.device_put(y1[i * a.batch:(i + 1) * a.batch]),
             jax.device_put(y2[i * a.batch:(i + 1) * a.batch]))) for i in range(4)]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    res: dict = {"config": {k: getattr(a, k) for k in ("backbone", "size", "batch", "hidden",
                                                        "steps", "reps", "warmup")}}
    net = build(a)
    net.train_on_batch(*dev[0])  # builds and compiles the train function
    res["variables"] = {"trainable": len(net.trainable_variables),
                        "non_trainable": len(net.non_trainable_variables),
                        "optimizer": len(net.optimizer.variables),
                        "metrics": len(net.metrics_variables)}
    it = {"i": 0}

    def nxt():
        it["i"] += 1
        return dev[it["i"] % 4]

    def wait():
        jax.block_until_ready([v.value for v in net.trainable_variables[:1]])

    if "train_on_batch" in modes:
        res["train_on_batch"] = summary(windows(lambda: net.train_on_batch(*nxt()), wait, a))
    for name, sync_each in (("jit_step", False), ("jit_step_sync", True)):
        if name not in modes:
            continue
        net.make_train_function()
        holder = {"state": net._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                              optimizer_variables=True, metrics_variables=True,
                                              purge_model_variables=True),
                  "logs": None}

        def step(sync_each=sync_each, holder=holder):
            logs, holder["state"] = net.train_function(holder["state"], iter([nxt()]))
            holder["logs"] = logs
            if sync_each:
                float(logs["loss"])

        res[name] = summary(windows(step, lambda holder=holder: jax.block_until_ready(holder["state"]), a))
        tv, ntv, ov, mv = holder["state"]
        net._jax_state = {"trainable_variables": tv, "non_trainable_variables": ntv,
                          "optimizer_variables": ov, "metrics_variables": mv}
        net._jax_state_synced = False
        net.jax_state_sync()
    n = a.steps * a.batch
    xs = tuple(np.resize(x, (n, *x.shape[1:])) for x in (x1, x2))
    ys = tuple(np.resize(y, n) for y in (y1, y2))
    for name, jit in (("fit", True), ("fit_nojit", False)):
        if name not in modes:
            continue
        m = net if jit else build(a, jit=False)
        m.fit(xs, ys, batch_size=a.batch, epochs=1, verbose=0, shuffle=False)  # compile / warm
        secs = []
        for _ in range(a.reps):
            t = time.perf_counter()
            m.fit(xs, ys, batch_size=a.batch, epochs=1, verbose=0, shuffle=False)
            jax.block_until_ready([v.value for v in m.trainable_variables[:1]])
            secs.append((time.perf_counter() - t) / a.steps)
        res[name] = summary(secs)
    res["host_parts_s"] = host_parts(net, dev[0], a.parts_calls)
    base = res.get("jit_step", {}).get("s_per_step")
    if base:
        res["relative_to_jit_step"] = {m: res[m]["s_per_step"] / base for m in MODES
                                       if m in res and m != "jit_step"}
    return res


def host_parts(net, batch, calls, settle=True) -> dict:
    """Median seconds of each host part that ``train_on_batch`` repeats on every call (``settle``:
    one ``train_on_batch`` first, which builds and compiles; else the model must be built and its
    variables hold the state)."""
    import jax
    from keras.src.backend.jax.trainer import _distribute_data
    from keras.src.utils.python_utils import pythonify_logs

    if settle:
        net.train_on_batch(*batch)
    x, y = batch

    def timeit(fn):
        out = []
        for _ in range(calls):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    def get_state():
        return net._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                  optimizer_variables=True, metrics_variables=True,
                                  purge_model_variables=False)

    def state_sync():
        tv, ntv, ov, mv = get_state()
        net._jax_state = {"trainable_variables": tv, "non_trainable_variables": ntv,
                          "optimizer_variables": ov, "metrics_variables": mv}
        net._jax_state_synced = False
        net.jax_state_sync()

    ready = {k: jax.numpy.zeros(()) for k in ("loss", *[m.name for m in net.metrics])}
    parts = {
        "reset_metrics": timeit(net.reset_metrics),
        "get_state": timeit(get_state),
        "state_sync": timeit(state_sync),
        "symbolic_build": timeit(lambda: net._symbolic_build(data_batch=_distribute_data((x, y, None)))),
        "pythonify_logs_ready": timeit(lambda: pythonify_logs(ready)),
    }
    parts["sum"] = sum(parts.values())
    return parts


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    a = parse_args(argv)
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != "jax":
        log.error("error: Keras was imported with another backend; run this as its own process")
        return 2
    common.ensure_repo_on_path()
    import keras  # noqa: F401 - with KERAS_BACKEND=jax

    res = measure(a)
    res["versions"] = common.versions()
    res["load_average"] = common.load_average()
    common.write_json(a.json, res)
    for m in MODES:
        if m in res:
            rel = res.get("relative_to_jit_step", {}).get(m)
            sys.stdout.write(f"{m:16s} {res[m]['s_per_step'] * 1e3:8.3f} ms/step"
                             + (f"  ({rel:.2f}x jit_step)" if rel else "") + "\n")
    sys.stdout.write("train_on_batch host parts per call (ms): " + json.dumps(
        {k: round(v * 1e3, 3) for k, v in res["host_parts_s"].items()}) + "\n")
    sys.stdout.write(f"variables: {res['variables']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
