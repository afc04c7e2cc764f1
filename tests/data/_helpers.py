"""Small hand-made shards for the data tests (written with np.savez, bypassing validation)."""

import numpy as np


def shard_arrays(n=6, size=4, channels=3, dtype=np.uint8, classes=3, start_id=0, seed=0):
    """Arrays of one §4 shard; pixel (0, 0, 0) of image_t1 holds the pair id (for tracking)."""
    rng = np.random.default_rng(seed)
    shape = (n, size, size, channels)
    if np.dtype(dtype).kind == "f":
        x1, x2 = rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)
    else:
        top = np.iinfo(dtype).max
        x1, x2 = rng.integers(0, top, shape, dtype=dtype), rng.integers(0, top, shape, dtype=dtype)
    ids = np.arange(start_id, start_id + n)
    if np.dtype(dtype).kind != "f":
        x1[:, 0, 0, 0] = ids
    y1 = (ids % classes + 1).astype(np.int32)
    y2 = y1.copy()
    y2[::4] = y2[::4] % classes + 1  # some changed pairs
    return {"image_t1": x1, "image_t2": x2, "label_t1": y1, "label_t2": y2,
            "row": ids // 10, "col": ids % 10,
            "class_names": np.array([f"c{k}" for k in range(1, classes + 1)])}


def write_npz(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def make_split(split_dir, sizes=(7, 5, 6), undefined=(), **kwargs):
    """Shards ``shard_000.npz``... with ``sizes`` pairs; pair ids in ``undefined`` get label_t1 0."""
    start = 0
    for i, n in enumerate(sizes):
        arrays = shard_arrays(n=n, start_id=start, seed=i, **kwargs)
        ids = np.arange(start, start + n)
        arrays["label_t1"][np.isin(ids, undefined)] = 0
        write_npz(split_dir / f"shard_{i:03d}.npz", **arrays)
        start += n
    return split_dir
