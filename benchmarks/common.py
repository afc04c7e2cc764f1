"""Helpers shared by the benchmark scripts: random §4 shards, robust statistics, environment facts.

Only NumPy and the standard library at import time, so the scripts can set ``KERAS_BACKEND`` and
logging before Keras starts.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def ensure_repo_on_path() -> None:
    """Make ``import data, model, train_cnn, eval`` work when a script runs as a file."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def train_config(argv):
    """train_cnn.py's ``TrainConfig`` for a command line, its splits resolved (no training)."""
    from parser import check_train_args, train_parser
    from training.config import TrainConfig
    from training.fit import resolve_splits

    parser = train_parser()
    return resolve_splits(TrainConfig.from_args(check_train_args(parser, parser.parse_args(argv), argv)))


def write_random_split(split_dir, pairs_per_shard, size, classes=4, seed=0, channels=3,
                       change_rate=0.05, reuse_images=False):
    """A split directory of uint8 §4 shards with random images (fast; content is irrelevant here).

    Args:
        split_dir: directory to create (must not hold .npz files yet).
        pairs_per_shard: list of pair counts, one shard each.
        size: image height = width.
        reuse_images: write the same image arrays into every shard (saves generation time when
            only the file sizes matter, as in the memory benchmark).
    """
    ensure_repo_on_path()
    from data.shards import write_shard

    split_dir = pathlib.Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"class{k + 1}" for k in range(classes)]
    cached = None
    row0 = 0
    for i, n in enumerate(pairs_per_shard):
        if reuse_images and cached is not None and cached[0].shape[0] == n:
            x1, x2 = cached
        else:
            x1 = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
            x2 = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
            cached = (x1, x2)
        y1 = rng.integers(1, classes + 1, n).astype(np.int32)
        y2 = np.where(rng.random(n) < change_rate, rng.integers(1, classes + 1, n), y1)
        idx = np.arange(row0, row0 + n)
        row0 += n
        write_shard(split_dir / f"shard_{i:03d}.npz", x1, x2, y1, y2.astype(np.int32),
                    row=idx // 100, col=idx % 100, class_names=names)
    return split_dir


def median_spread(values) -> dict:
    """Median, min, max and the relative half-range ((max-min)/2/median) of a list of numbers."""
    vals = [float(v) for v in values]
    med = statistics.median(vals)
    return {"median": med, "min": min(vals), "max": max(vals), "n": len(vals),
            "rel_half_range": (max(vals) - min(vals)) / 2 / med if med else float("nan"),
            "values": vals}


def versions() -> dict:
    """Versions of the pieces that matter for the figures (imports only what is already loaded)."""
    out = {"python": platform.python_version(), "numpy": np.__version__,
           "machine": platform.machine(), "cpus": os.cpu_count(),
           "cpu_model": _cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for mod in ("keras", "tensorflow", "jax", "torch"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    if "keras" in sys.modules:
        out["keras_backend"] = sys.modules["keras"].backend.backend()
    return out


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def vm_hwm_mib() -> float | None:
    """This process's peak resident set (VmHWM) in MiB, from /proc/self/status (Linux)."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def vm_rss_mib() -> float | None:
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def write_json(path, obj) -> None:
    if path is None:
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
