"""Input pipeline + loop overhead: train_cnn.py's full training path against the bare train step,
and eval.py's evaluate_split against bare ``model.predict``, side by side in one process.

    python -m benchmarks.throughput --backbone small --size 64 --batch 32 --steps 16 --reps 5
    python -m benchmarks.throughput --backbone vgg16 --size 200 --batch 4 --steps 3 --reps 3

What is timed, per repetition (the two sides alternate order from one repetition to the next):

* full training: ``model.fit(data.trn, validation_data=data.val, callbacks=make_callbacks(...))``
  for one epoch, with the loader, model and callbacks built by train_cnn.py's own functions
  (``load_data``, ``build_or_resume``, ``make_callbacks``: loss guard, test-split evaluation,
  checkpoints, log/CSV, TensorBoard). The *training part* of the epoch (from ``on_epoch_begin``
  to the last ``on_train_batch_end``: shard reads, batching, scaling, train steps, per-batch
  callbacks) gives the pairs/s; the epoch-end work (validation, test evaluation, checkpoint
  writes, TensorBoard) is reported separately in seconds, since it does not scale with the
  training split.
* bare training: the same batches, already scaled and in memory as tensors, through the same
  compiled train function, two ways: ``model.fit`` on the in-memory tensors (no callbacks; timed
  like the full path) and a ``model.train_on_batch`` loop. The ratio is taken against the faster
  of the two in each repetition.
* full evaluation: ``evaluation.evaluate.evaluate_split`` (shard checks, loader, predict, labels, every metric).
* bare evaluation: ``model.predict`` on the split's images already scaled in memory (NumPy).
* loader alone: iterating the training dataset without a model (the pipeline's own ceiling),
  with per-batch reads (uncompressed shards, the default) and with each shard decoded whole
  (``load_shard(per_batch=False)``: compressed shards, and every shard before per-batch reads).

Data: random uint8 §4 shards written to a temporary directory (removed afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    ensure_repo_on_path,
    load_average,
    median_spread,
    versions,
    write_json,
    write_random_split,
)

log = logging.getLogger("benchmarks.throughput")
TARGET = 0.95


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--backbone", default="small", help="train_cnn.py --backbone")
    g.add_argument("--size", type=int, default=64, help="image height = width")
    g.add_argument("--batch", type=int, default=32, help="batch size")
    g.add_argument("--steps", type=int, default=16, help="training steps per epoch (trn = steps*batch pairs)")
    g.add_argument("--eval_steps", type=int, default=None, help="batches in the test split (default 3 x --steps)")
    g.add_argument("--shards", type=int, default=2, help="shards the training split is cut into")
    g.add_argument("--hidden", type=int, default=1024, help="FC width d")
    g.add_argument("--classes", type=int, default=4)
    r = p.add_argument_group("measurement")
    r.add_argument("--reps", type=int, default=5, help="interleaved repetitions (medians reported)")
    r.add_argument("--no_eval", action="store_true", help="skip the evaluate_split vs predict part")
    r.add_argument("--ab_autotune", action="store_true",
                   help="also time evaluate_split with the loader's tf.data settings before the "
                        "fix of RESULTS.md 1c (AUTOTUNE parallelism/prefetch, autotuning on) in "
                        "the same repetitions (baseline of that fix)")
    r.add_argument("--profile", default=None, help="write a cProfile summary of one full epoch here")
    r.add_argument("--json", default=None, help="write the figures as JSON here")
    r.add_argument("--tmp", default=None, help="parent directory of the temporary data")
    r.add_argument("--keep", action="store_true", help="keep the temporary data and run dir")
    return p.parse_args(argv)


def make_data(root: Path, a) -> Path:
    trn = [a.steps * a.batch // a.shards] * a.shards
    trn[-1] += a.steps * a.batch - sum(trn)
    ev = a.eval_steps or 3 * a.steps
    write_random_split(root / "trn", trn, a.size, a.classes, seed=1)
    write_random_split(root / "val", [a.batch], a.size, a.classes, seed=2)
    write_random_split(root / "tst", [ev * a.batch], a.size, a.classes, seed=3)
    return root


def build_training(a, data_dir: Path, workdir: Path):
    """train_cnn.py's own steps: arguments, loaders, model, callbacks."""
    import keras

    from benchmarks.common import train_config
    from training import fit as training
    from training.run_data import check_data, load_data
    from utils.devices import make_strategy, setup_backend
    from utils.rundir import run_paths

    targs = train_config([
        "--data_dir", str(data_dir), "--backbone", a.backbone, "-b", str(a.batch),
        "--hidden", str(a.hidden), "-e", "1", "--workdir", str(workdir), "--overwrite"])
    data = load_data(targs, check_data(targs))
    info = setup_backend(targs.mixed_precision)
    strategy = make_strategy(info)
    paths = run_paths(targs, 0)
    keras.utils.set_random_seed(targs.seed)
    with strategy.scope():
        net, state = training.build_or_resume(targs, data, paths, targs.seed)
    paths.root.mkdir(parents=True, exist_ok=True)

    def callbacks():
        # fresh per fit call: the TensorBoard writers are closed at the end of each fit
        return training.make_callbacks(targs, data, paths, state, {"run": 0, "seed": 0})

    return targs, data, net, callbacks


def stopwatch_callback():
    import keras

    class Stopwatch(keras.callbacks.Callback):
        """Times the training part of an epoch and the epoch-end work (must be the last callback)."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            self.t_last, self.c_last = self.t0, self.c0
            self.batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.t_last, self.c_last = time.perf_counter(), time.process_time()
            self.batches += 1

        def on_epoch_end(self, epoch, logs=None):
            self.t_end = time.perf_counter()

    return Stopwatch()


def in_memory_batches(dataset):
    """The dataset's batches materialised as eager tensors (already scaled)."""
    return [(tuple(x), tuple(y)) for x, y in dataset]


@contextlib.contextmanager
def autotuned_loader():
    """data.loader's tf.data settings as they were before the fix of RESULTS.md 1c."""
    import tensorflow as tf

    from data import loader

    saved = loader.MAP_PARALLELISM, loader.PREFETCH_BATCHES, loader._tf_options
    loader.MAP_PARALLELISM = loader.PREFETCH_BATCHES = tf.data.AUTOTUNE
    loader._tf_options = lambda tf: tf.data.Options()
    try:
        yield
    finally:
        loader.MAP_PARALLELISM, loader.PREFETCH_BATCHES, loader._tf_options = saved


def load_split_arrays(split_dir):
    """Every usable pair of a split, scaled, in memory (NumPy float32) -- the bare predict's input."""
    import numpy as np

    from data.shards import defined_mask, list_shards, load_arrays, scale_images

    x1, x2 = [], []
    for f in list_shards(split_dir):
        d = load_arrays(f, ("image_t1", "image_t2", "label_t1", "label_t2"))
        ok = defined_mask(d["label_t1"], d["label_t2"])
        x1.append(scale_images(d["image_t1"][ok]))
        x2.append(scale_images(d["image_t2"][ok]))
    return np.concatenate(x1), np.concatenate(x2)


def run(a) -> dict:
    ensure_repo_on_path()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tmp = Path(tempfile.mkdtemp(prefix="cfn_bench_tp_", dir=a.tmp))
    try:
        return _run(a, tmp)
    finally:
        if a.keep:
            log.info("kept %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(a, tmp: Path) -> dict:
    t = time.perf_counter()
    data_dir = make_data(tmp / "data", a)
    log.info("data written in %.1f s: %s", time.perf_counter() - t, data_dir)
    targs, data, net, make_callbacks = build_training(a, data_dir, tmp / "run")
    from evaluation.evaluate import evaluate_split

    watch = stopwatch_callback()

    def full_train():
        callbacks, guard = make_callbacks()
        net.fit(data.trn, validation_data=data.val, epochs=1, callbacks=[*callbacks, watch],
                shuffle=False, verbose=0)
        if guard.failure:
            raise RuntimeError(guard.failure)
        n = watch.batches * a.batch
        return (n / (watch.t_last - watch.t0), n / (watch.c_last - watch.c0),
                watch.t_end - watch.t_last)

    batches = in_memory_batches(data.trn)
    n_train = sum(int(x[0].shape[0]) for x, _ in batches)
    import keras

    cat = keras.ops.concatenate
    x_mem = tuple(cat([x[i] for x, _ in batches]) for i in range(2))
    y_mem = tuple(cat([y[i] for _, y in batches]) for i in range(2))

    def bare_fit():
        net.fit(x_mem, y_mem, batch_size=a.batch, epochs=1, shuffle=False, verbose=0,
                callbacks=[watch])
        n = watch.batches * a.batch
        return n / (watch.t_last - watch.t0), n / (watch.c_last - watch.c0)

    def timed(fn, n):
        """(pairs per wall second, pairs per CPU second of this process, all threads)."""
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)

    def bare_train():
        def loop():
            for x, y in batches:
                net.train_on_batch(x, y)
        return timed(loop, n_train)

    def loader_only():
        return timed(lambda: sum(1 for _ in data.trn), n_train)

    def loader_only_whole():
        """The loader decoding each shard whole (as before per-batch reads; compressed shards)."""
        import functools

        from data import loader

        saved = loader.load_shard
        loader.load_shard = functools.partial(saved, per_batch=False)
        try:
            return loader_only()
        finally:
            loader.load_shard = saved

    tst_dir = data_dir / "tst"
    x1, x2 = load_split_arrays(tst_dir)
    n_eval = len(x1)

    def full_eval():
        return timed(lambda: evaluate_split(net, tst_dir, batch_size=a.batch), n_eval)

    def bare_eval():
        return timed(lambda: net.predict((x1, x2), batch_size=a.batch, verbose=0), n_eval)

    def full_eval_autotune():
        with autotuned_loader():
            return full_eval()

    log.info("warm-up (tracing, first epoch)")
    full_train()
    bare_fit()
    bare_train()
    if not a.no_eval:
        full_eval()
        bare_eval()

    if a.profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        full_train()
        if not a.no_eval:
            full_eval()
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(40)
        Path(a.profile).write_text(buf.getvalue())
        log.info("profile written to %s", a.profile)

    rows = {}
    for rep in range(a.reps):
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        res = {}
        for side in order:
            if side == 0:
                res["full_train"], res["full_train_cpu"], res["epoch_end_s"] = full_train()
            else:
                res["bare_fit"], res["bare_fit_cpu"] = bare_fit()
                res["bare_train"], res["bare_train_cpu"] = bare_train()
        res["loader"], res["loader_cpu"] = loader_only()
        res["loader_whole"], res["loader_whole_cpu"] = loader_only_whole()
        if not a.no_eval:
            for side in order:
                if side == 0:
                    res["full_eval"], res["full_eval_cpu"] = full_eval()
                else:
                    res["bare_eval"], res["bare_eval_cpu"] = bare_eval()
            if a.ab_autotune:
                res["full_eval_autotune"], res["full_eval_autotune_cpu"] = full_eval_autotune()
        for sfx in ("", "_cpu"):
            ft = res["full_train" + sfx]
            res["train_ratio_vs_fit" + sfx] = ft / res["bare_fit" + sfx]
            res["train_ratio_vs_train_on_batch" + sfx] = ft / res["bare_train" + sfx]
            # against the faster of the two bare loops of this repetition (the stricter reference)
            res["train_ratio" + sfx] = ft / max(res["bare_fit" + sfx], res["bare_train" + sfx])
            if not a.no_eval:
                res["eval_ratio" + sfx] = res["full_eval" + sfx] / res["bare_eval" + sfx]
            if a.ab_autotune:
                res["eval_ratio_autotune" + sfx] = (res["full_eval_autotune" + sfx]
                                                    / res["bare_eval" + sfx])
        for k, v in res.items():
            rows.setdefault(k, []).append(v)
        log.info("rep %d: %s", rep + 1, {k: round(v, 3) for k, v in res.items()})

    out = {
        "benchmark": "throughput",
        "config": {k: getattr(a, k) for k in ("backbone", "size", "batch", "steps", "shards",
                                              "hidden", "classes", "reps", "eval_steps")},
        "pairs_train": n_train, "pairs_eval": n_eval,
        "versions": versions(), "load_average_end": load_average(),
        "target": TARGET,
        "pairs_per_s": {k: median_spread(v) for k, v in rows.items() if v and k != "epoch_end_s"
                        and "ratio" not in k},
        "ratios": {k: median_spread(v) for k, v in rows.items() if v and "ratio" in k},
        "epoch_end_s": median_spread(rows["epoch_end_s"]),
    }
    for k, v in out["ratios"].items():
        if k in ("train_ratio", "eval_ratio", "train_ratio_cpu", "eval_ratio_cpu"):
            v["pass"] = v["median"] >= TARGET
    return out


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    a = parse_args(argv)
    out = run(a)
    write_json(a.json, out)
    r = out["ratios"]
    lines = [f"{a.backbone} {a.size}px batch {a.batch}: "
             f"train full/bare = {r['train_ratio']['median']:.3f} "
             f"(min {r['train_ratio']['min']:.3f}, max {r['train_ratio']['max']:.3f}); "
             f"bare fit {out['pairs_per_s']['bare_fit']['median']:.1f} / train_on_batch "
             f"{out['pairs_per_s']['bare_train']['median']:.1f} pairs/s, "
             f"loader alone {out['pairs_per_s']['loader']['median']:.0f} pairs/s "
             f"(decoding whole shards {out['pairs_per_s']['loader_whole']['median']:.0f}), "
             f"epoch end {out['epoch_end_s']['median']:.2f} s"]
    lines.append(f"  per CPU-second: train full/bare = {r['train_ratio_cpu']['median']:.3f} "
                 f"(min {r['train_ratio_cpu']['min']:.3f}, max {r['train_ratio_cpu']['max']:.3f})")
    if "eval_ratio" in r:
        lines.append(f"eval evaluate_split/predict = {r['eval_ratio']['median']:.3f} "
                     f"(min {r['eval_ratio']['min']:.3f}, max {r['eval_ratio']['max']:.3f}); "
                     f"bare {out['pairs_per_s']['bare_eval']['median']:.1f} pairs/s")
        lines.append(f"  per CPU-second: eval = {r['eval_ratio_cpu']['median']:.3f} "
                     f"(min {r['eval_ratio_cpu']['min']:.3f}, max {r['eval_ratio_cpu']['max']:.3f})")
    if "eval_ratio_autotune" in r:
        lines.append(f"  before the 1c fix (tf.data autotuning on): eval = "
                     f"{r['eval_ratio_autotune']['median']:.3f} "
                     f"(min {r['eval_ratio_autotune']['min']:.3f}, "
                     f"max {r['eval_ratio_autotune']['max']:.3f})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
