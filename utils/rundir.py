"""Run directories: args.json, atomic writes, checkpoint paths, refusal to overwrite a user's run."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path


class RunDirError(ValueError):
    """A run or result directory that may not be written (one-line message naming the path)."""


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("numpy", "keras", "tensorflow", "jax", "sklearn"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_save_model(model, path: str | os.PathLike) -> None:
    """model.save to a temporary .keras file beside `path`, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_nonempty_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and any(p.iterdir())


def check_can_create_dir(path: str | os.PathLike) -> None:
    """Refuse a directory path that cannot be created: it, or its nearest existing parent, is a file."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                where = "" if q == p else f" (its parent {q} is a file)"
                raise RunDirError(f"{p}: exists and is not a directory{where}" if q == p
                                  else f"{p}: cannot create the directory{where}")
            return


def check_writable_dir(path: str | os.PathLike, overwrite: bool, what: str = "directory") -> None:
    """Refuse an existing non-empty directory unless overwrite; refuse a path that is a file or
    lies under one."""
    p = Path(path)
    check_can_create_dir(p)
    if is_nonempty_dir(p) and not overwrite:
        raise RunDirError(f"{p}: {what} exists and is not empty; pass --overwrite to replace it")
