"""Peak memory of one training epoch: the streaming loader against the seed's whole-shard float32 load.

    python -m benchmarks.memory --pairs 5000 --size 200 --batch 32 --train_steps 3

Each configuration runs in its own child process; the parent reads the child's peak resident set
(``ru_maxrss`` from ``os.wait4``) and the child reports its own ``VmHWM`` as a cross-check.

Configurations (same model, small backbone, same batch size, same number of train steps):

* ``model``: the floor -- model built and trained ``--train_steps`` steps on one random batch held
  in memory, no data set at all.
* ``stream-1``: train_cnn.py's ``load_data`` over a training split of ONE shard of ``--pairs`` pairs;
  the whole epoch is streamed (every batch read from the shard, gathered, cast and scaled by the
  tf.data pipeline); the first ``--train_steps`` batches also go through ``model.train_on_batch``.
* ``stream-4``: the same over FOUR such shards (4 x ``--pairs`` pairs, like the Wuhan trn split's
  4 files): the peak should not grow. The shards are uncompressed (``write_shard``'s default),
  so the loader reads each batch's pairs with ``os.preadv`` and holds no shard at all.
* ``whole-1`` / ``whole-4``: the same loader forced to decode each shard whole
  (``data.loader.load_shard(per_batch=False)``, what it did for every shard before per-batch reads
  and still does for compressed shards): the baseline of that change, in the same run.
* ``seed-1``: the original's ``utils.LoadNpy``: ``np.load`` of the one shard, each date
  ``image.astype(np.float32) / np.max(image) - 0.5``, then batches sliced from those float arrays
  (shuffled), the first ``--train_steps`` trained on.

* ``rows-1`` / ``rows-4``: the prototype that led to the loader's per-batch reads: each batch's
  pairs read from the (uncompressed) npz members with ``os.pread`` at their byte offsets, in a
  per-shard shuffled order, then cast and scaled in NumPy. Kept as a reference for the loader's
  figures; not used by train_cnn.py.

Training every batch at 200x200 on 2 CPU cores would take tens of minutes per configuration; the
train steps only add the model's activation memory, which is the same in every configuration and
is measured by ``model``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    ROOT,
    ensure_repo_on_path,
    load_average,
    versions,
    vm_hwm_mib,
    vm_rss_mib,
    write_json,
    write_random_split,
)

log = logging.getLogger("benchmarks.memory")
TARGET = 0.33
MODES = ("model", "stream-1", "stream-4", "whole-1", "whole-4", "seed-1", "rows-1", "rows-4")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--pairs", type=int, default=5000, help="pairs per shard")
    g.add_argument("--size", type=int, default=200, help="image height = width")
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--train_steps", type=int, default=3, help="batches that also go through a train step")
    g.add_argument("--hidden", type=int, default=1024)
    g.add_argument("--classes", type=int, default=14)
    g.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    r = p.add_argument_group("run")
    r.add_argument("--data", default=None,
                   help="data root to reuse (one/ four/ val/); generated there and kept if missing")
    r.add_argument("--tmp", default=None, help="parent directory of the temporary data (not the repo)")
    r.add_argument("--keep", action="store_true", help="keep the generated shards")
    r.add_argument("--json", default=None, help="write the figures as JSON here")
    # child side
    r.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    r.add_argument("--trn", default=None, help=argparse.SUPPRESS)
    r.add_argument("--val", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------- parent side
def make_data(root: Path, a) -> None:
    t = time.perf_counter()
    write_random_split(root / "one" / "trn", [a.pairs], a.size, a.classes, seed=1)
    if any(m.endswith("-4") for m in a.modes):
        write_random_split(root / "four" / "trn", [a.pairs] * 4, a.size, a.classes, seed=1,
                           reuse_images=True)
    write_random_split(root / "val", [a.batch], a.size, a.classes, seed=2)
    log.info("shards written in %.1f s under %s", time.perf_counter() - t, root)


def run_child(mode: str, trn: Path | None, val: Path, a) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", mode, "--val", str(val),
           "--size", str(a.size), "--batch", str(a.batch), "--train_steps", str(a.train_steps),
           "--hidden", str(a.hidden), "--classes", str(a.classes)]
    if trn is not None:
        cmd += ["--trn", str(trn)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fo, stderr=fe, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps the child and returns ITS rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    maxrss = usage.ru_maxrss / 1024  # KiB on Linux
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"child {mode} failed:\n{err[-3000:]}")
    res = json.loads(lines[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} exited {proc.returncode}:\n{err[-3000:]}")
    res["ru_maxrss_mib"] = maxrss
    res["peak_mib"] = maxrss  # the figure reported: the child's ru_maxrss read by the parent
    res["wall_s"] = wall
    return res


def run_parent(a) -> dict:
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    tmp = Path(a.data) if a.data else Path(tempfile.mkdtemp(prefix="cfn_bench_mem_", dir=a.tmp))
    try:
        if not a.data or not (tmp / "val").is_dir():
            make_data(tmp, a)
        results = {}
        for mode in a.modes:
            trn = None if mode == "model" else tmp / ("four" if mode.endswith("-4") else "one") / "trn"
            res = run_child(mode, trn, tmp / "val", a)
            results[mode] = res
            log.info("%s: peak %.0f MiB (VmHWM %.0f MiB), %d pairs streamed, %.1f s", mode,
                     res["peak_mib"], res["vm_hwm_mib"], res["pairs_seen"], res["wall_s"])
    finally:
        if not (a.keep or a.data):
            shutil.rmtree(tmp, ignore_errors=True)
        elif not a.data:
            log.info("kept %s", tmp)
    shard_mib = a.pairs * a.size * a.size * 3 * 2 / 2**20
    out = {"benchmark": "memory", "config": {k: getattr(a, k) for k in (
        "pairs", "size", "batch", "train_steps", "hidden", "classes")},
        "shard_images_mib": shard_mib, "seed_float32_mib": 4 * shard_mib,
        "versions": versions(), "load_average_end": load_average(), "target": TARGET,
        "results": results}
    peak = {m: r["peak_mib"] for m, r in results.items()}
    # (key, numerator, denominator, against the target?)
    for key, num, den, judged in (("ratio_stream1_vs_seed1", "stream-1", "seed-1", True),
                                  ("ratio_whole1_vs_seed1", "whole-1", "seed-1", True),
                                  ("ratio_stream1_vs_whole1", "stream-1", "whole-1", False),
                                  ("ratio_rows1_vs_seed1", "rows-1", "seed-1", True),
                                  ("ratio_stream4_vs_stream1", "stream-4", "stream-1", False)):
        if num in peak and den in peak:
            r = peak[num] / peak[den]
            out[key] = {"value": r, "pass": r <= TARGET} if judged else r
    if "stream-1" in peak and "seed-1" in peak and "model" in peak:
        out["data_part_mib"] = {m: v - peak["model"] for m, v in peak.items()}
    return out


# ------------------------------------------------------------------------------------ child side
def child_model(a, steps_per_epoch: int):
    from benchmarks.common import train_config
    from training.fit import build_or_resume

    targs = train_config(["-trn", a.trn or a.val, "-val", a.val, "--backbone", "small",
                          "-b", str(a.batch), "--hidden", str(a.hidden)])
    data = types.SimpleNamespace(num_classes=a.classes, image_size=(a.size, a.size), channels=3,
                                 steps_per_epoch=steps_per_epoch,
                                 input_stats=None)  # memory only: the layer's unit statistics do
    net, _ = build_or_resume(targs, data, None, seed=0)
    return targs, net


def seed_batches(trn_dir, batch):
    """The original's LoadNpy (utils.py) on each shard, then shuffled batches of the float arrays."""
    import numpy as np

    from data.shards import list_shards

    x1s, x2s, y1s, y2s = [], [], [], []
    for f in list_shards(trn_dir):
        npy = np.load(f)
        image_t1 = npy["image_t1"]
        image_t1 = image_t1.astype(np.float32) / np.max(image_t1) - 0.5
        image_t2 = npy["image_t2"]
        image_t2 = image_t2.astype(np.float32) / np.max(image_t2) - 0.5
        x1s.append(image_t1)
        x2s.append(image_t2)
        y1s.append(npy["label_t1"] - 1)
        y2s.append(npy["label_t2"] - 1)
        del image_t1, image_t2
    x1 = x1s[0] if len(x1s) == 1 else np.concatenate(x1s)
    x2 = x2s[0] if len(x2s) == 1 else np.concatenate(x2s)
    y1, y2 = np.concatenate(y1s).astype(np.int32), np.concatenate(y2s).astype(np.int32)
    del x1s, x2s
    perm = np.random.default_rng(0).permutation(len(y1))
    for i in range(0, len(perm), batch):
        idx = perm[i:i + batch]
        yield (x1[idx], x2[idx]), (y1[idx], y2[idx])


def npz_member_array(path, key):
    """(byte offset, shape, dtype) of an uncompressed npz member's array data."""
    import struct
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: {key}: compressed member; row reads need an uncompressed shard")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = reader(f)
        if fortran:
            raise ValueError(f"{path}: {key}: Fortran-ordered array")
        return f.tell(), shape, dtype


def row_batches(trn_dir, batch, seed=0):
    """Batches read pair by pair with os.pread: nothing but the batch is held in memory."""
    import numpy as np

    from data.shards import list_shards, scale_factor

    rng = np.random.default_rng(seed)
    files = list_shards(trn_dir)
    for fi in rng.permutation(len(files)):
        path = files[fi]
        with np.load(path) as z:
            y1, y2 = z["label_t1"].astype(np.int32) - 1, z["label_t2"].astype(np.int32) - 1
        layout = {k: npz_member_array(path, k) for k in ("image_t1", "image_t2")}
        fd = os.open(path, os.O_RDONLY)
        try:
            order = rng.permutation(len(y1))
            for i in range(0, len(order), batch):
                idx = np.sort(order[i:i + batch])
                xs = []
                for key in ("image_t1", "image_t2"):
                    off, shape, dtype = layout[key]
                    row = int(np.prod(shape[1:])) * dtype.itemsize
                    buf = bytearray(row * len(idx))
                    for j, k in enumerate(idx):
                        buf[j * row:(j + 1) * row] = os.pread(fd, row, off + int(k) * row)
                    x = np.frombuffer(buf, dtype).reshape(len(idx), *shape[1:])
                    xs.append(x.astype(np.float32) * np.float32(scale_factor(dtype)) - np.float32(0.5))
                yield tuple(xs), (y1[idx], y2[idx])
        finally:
            os.close(fd)


def run_child_mode(a) -> dict:
    ensure_repo_on_path()
    import numpy as np

    t0 = time.perf_counter()
    rss_start = vm_rss_mib()
    steps = 0
    pairs = 0
    if a.child == "model":
        _, net = child_model(a, 1)
        rng = np.random.default_rng(0)
        x = tuple((rng.random((a.batch, a.size, a.size, 3), dtype=np.float32) - 0.5)
                  for _ in range(2))
        y = tuple(rng.integers(0, a.classes, a.batch).astype(np.int32) for _ in range(2))
        for _ in range(a.train_steps):
            net.train_on_batch(x, y)
            steps += 1
        batches = iter(())
    elif a.child.startswith(("stream", "whole")):
        import functools

        from data import loader
        from training.fit import check_data, load_data

        targs, net = child_model(a, 1)
        if a.child.startswith("whole"):  # the loader as it was for every shard: decode it whole
            loader.load_shard = functools.partial(loader.load_shard, per_batch=False)
        data = load_data(targs, check_data(targs))
        batches = iter(data.trn)
    elif a.child.startswith("rows"):
        targs, net = child_model(a, 1)
        batches = row_batches(a.trn, a.batch)
    else:
        targs, net = child_model(a, 1)
        batches = seed_batches(a.trn, a.batch)
    for x, y in batches:
        if steps < a.train_steps:
            net.train_on_batch(x, y)
            steps += 1
        pairs += int(x[0].shape[0])
    return {"mode": a.child, "pairs_seen": pairs, "train_steps": steps,
            "vm_hwm_mib": vm_hwm_mib(), "peak_mib": vm_hwm_mib(), "rss_start_mib": rss_start,
            "child_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    a = parse_args(argv)
    if a.child:
        res = run_child_mode(a)
        sys.stdout.write(json.dumps(res) + "\n")
        return 0
    out = run_parent(a)
    write_json(a.json, out)
    rows = [f"{m:9s} peak {r['peak_mib']:8.0f} MiB  streamed {r['pairs_seen']:6d} pairs  "
            f"{r['wall_s']:6.1f} s" for m, r in out["results"].items()]
    if "ratio_stream1_vs_seed1" in out:
        v = out["ratio_stream1_vs_seed1"]
        rows.append(f"stream-1 / seed-1 = {v['value']:.3f} (target <= {TARGET}: "
                    f"{'PASS' if v['pass'] else 'FAIL'})")
    if "ratio_whole1_vs_seed1" in out:
        v = out["ratio_whole1_vs_seed1"]
        rows.append(f"whole-1 / seed-1 = {v['value']:.3f} (loader decoding whole shards)")
    if "ratio_stream1_vs_whole1" in out:
        rows.append(f"stream-1 / whole-1 = {out['ratio_stream1_vs_whole1']:.3f}")
    if "ratio_rows1_vs_seed1" in out:
        v = out["ratio_rows1_vs_seed1"]
        rows.append(f"rows-1 / seed-1 = {v['value']:.3f} (prototype row reader)")
    if "ratio_stream4_vs_stream1" in out:
        rows.append(f"stream-4 / stream-1 = {out['ratio_stream4_vs_stream1']:.3f}")
    sys.stdout.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
