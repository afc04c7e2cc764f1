"""What the canonical-correlation metric costs per training step: the n x n Gram-space formula of
``model.cca.canonical_correlation`` against forming T with two d x d eigen-decompositions (the
formula it replaced, ``eigh_formula`` below), on the active Keras backend.

    python -m benchmarks.cancorr_cost --json benchmarks/results/cancorr_cost_tf.json
    KERAS_BACKEND=jax python -m benchmarks.cancorr_cost --json benchmarks/results/cancorr_cost_jax.json

Two measurements, medians over ``--reps`` alternating repetitions:

* **the metric alone**, compiled (``tf.function`` / ``jax.jit``), for the (batch, view width) pairs
  of ``--shapes``: 512 = hidden/reduction (corrfusion's views), 1024 = hidden (dcca/sdcca);
* **the training step** of the small model (``train_on_batch``, 64 px, batch 32 by default) for
  ``--methods`` with either formula as the model's ``cancorr`` metric (the step is compiled once per
  formula; the metric runs in every step of ``fit``).

The values of both formulas are reported too (they agree to float32 round-off; the Gram form is the
closer one to a float64 reference when n < d, where the exact value is sqrt(n - 1)).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ensure_repo_on_path, load_average, median_spread, versions, write_json

log = logging.getLogger("benchmarks.cancorr_cost")


def eigh_formula(h1, h2, r=1e-4, eps=1e-12):
    """The replaced metric: T = S11^-1/2 S12 S22^-1/2 from two d x d eigen-decompositions."""
    from keras import ops

    from model.cca import finite_views

    def inverse_sqrt(s):
        e, v = ops.eigh(s)
        keep = ops.greater(e, eps)
        inv = ops.where(keep, ops.reciprocal(ops.sqrt(ops.where(keep, e, ops.ones_like(e)))), 0.0)
        return ops.matmul(v * inv[None, :], ops.transpose(v))

    h1, h2, ok = finite_views(ops.cast(h1, "float32"), ops.cast(h2, "float32"))
    nm1 = ops.maximum(ops.cast(ops.shape(h1)[0], "float32") - 1.0, 1.0)
    h1c = h1 - ops.mean(h1, axis=0, keepdims=True)
    h2c = h2 - ops.mean(h2, axis=0, keepdims=True)

    def cov(a, b):
        return ops.matmul(ops.transpose(a), b) / nm1

    k11 = inverse_sqrt(cov(h1c, h1c) + r * ops.eye(h1.shape[-1], dtype="float32"))
    k22 = inverse_sqrt(cov(h2c, h2c) + r * ops.eye(h2.shape[-1], dtype="float32"))
    t = ops.matmul(ops.matmul(k11, cov(h1c, h2c)), k22)
    return ops.where(ok, ops.sqrt(ops.sum(ops.square(t)) + eps), float("nan"))


def compiled(fn):
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    return fn


def time_calls(fn, args, calls) -> float:
    """Seconds per call (the result is fetched to the host at the end, so queued work is counted)."""
    from keras import ops

    t = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    float(ops.convert_to_numpy(out))
    return (time.perf_counter() - t) / calls


def metric_alone(shapes, reps, calls) -> dict:
    import numpy as np
    from keras import ops

    from model.cca import canonical_correlation

    fns = {"gram": compiled(canonical_correlation), "eigh": compiled(eigh_formula)}
    rng = np.random.default_rng(0)
    out = {}
    for n, d in shapes:
        h = [ops.convert_to_tensor(rng.normal(size=(n, d)).astype("float32")) for _ in range(2)]
        row = {"values": {k: float(ops.convert_to_numpy(f(*h))) for k, f in fns.items()}}
        ms = {k: [] for k in fns}
        for rep in range(reps):
            for k in (list(fns) if rep % 2 == 0 else list(fns)[::-1]):
                ms[k].append(1e3 * time_calls(fns[k], h, calls))
        row["ms"] = {k: median_spread(v) for k, v in ms.items()}
        row["speedup"] = row["ms"]["eigh"]["median"] / row["ms"]["gram"]["median"]
        out[f"n{n}_d{d}"] = row
        log.info("metric n=%d d=%d: gram %.3f ms, eigh %.3f ms (x%.0f); values %s", n, d,
                 row["ms"]["gram"]["median"], row["ms"]["eigh"]["median"], row["speedup"],
                 row["values"])
    return out


def train_steps(methods, size, batch, hidden, reps, steps) -> dict:
    import keras
    import numpy as np

    import model as cfn
    from model import network

    rng = np.random.default_rng(0)
    x = tuple(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8) for _ in range(2))
    y1 = rng.integers(0, 6, batch).astype(np.int32)
    y = (y1, np.where(rng.random(batch) < 0.1, (y1 + 1) % 6, y1).astype(np.int32))
    formulas = {"gram": network.canonical_correlation, "eigh": eigh_formula}
    out = {}
    for method in methods:
        nets = {}
        for name, fn in formulas.items():  # one model per formula: each traces its own step
            network.canonical_correlation = fn
            try:
                net = cfn.build_model(6, image_size=(size, size), backbone="small", method=method,
                                      hidden=hidden, seed=0)
                net.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9, nesterov=True))
                net.train_on_batch(x, y)  # compile (the metric is traced in now)
                nets[name] = net
            finally:
                network.canonical_correlation = formulas["gram"]
        secs = {k: [] for k in nets}
        for rep in range(reps):
            for k in (list(nets) if rep % 2 == 0 else list(nets)[::-1]):
                t = time.perf_counter()
                for _ in range(steps):
                    nets[k].train_on_batch(x, y)
                secs[k].append((time.perf_counter() - t) / steps)
        row = {k: median_spread([batch / s for s in v]) for k, v in secs.items()}
        out[method] = {"pairs_per_s": row,
                       "speedup": row["gram"]["median"] / row["eigh"]["median"]}
        log.info("%s step, %d px batch %d: gram %.1f pairs/s, eigh %.1f pairs/s (x%.2f)", method,
                 size, batch, row["gram"]["median"], row["eigh"]["median"], out[method]["speedup"])
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shapes", default="32x512,64x512,32x1024",
                   help="comma-separated NxD (batch x view width) for the metric alone")
    p.add_argument("--calls", type=int, default=5, help="metric calls per timed repetition")
    p.add_argument("--methods", default="corrfusion,sdcca", help="small-model steps to time ('' = none)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--steps", type=int, default=4, help="train steps per timed repetition")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    a = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ensure_repo_on_path()
    import keras

    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes.split(",") if s]
    methods = [m for m in a.methods.split(",") if m]
    res = {"benchmark": "cancorr_cost", "backend": keras.backend.backend(), "config": vars(a),
           "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "metric": metric_alone(shapes, a.reps, a.calls),
           "train_step": train_steps(methods, a.size, a.batch, a.hidden, a.reps, a.steps),
           "load_average_end": load_average()}
    if a.json:
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
