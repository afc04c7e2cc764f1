"""Run directories: where a run writes (``RunPaths``), the refusal to replace what a user made
(``check_outputs``), resuming state (``read_state``), atomic writes, args.json facts.

The checks take the run's ``utils.config.TrainConfig`` and run before TensorFlow starts: every
output path is checked, and nothing a run would write exists yet unless ``--resume`` (the run's own
files) or ``--overwrite`` was given.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.cli import UsageError

log = logging.getLogger("corrfusion.rundir")


class RunDirError(UsageError):
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


def _jsonable(o):
    """NumPy scalars and arrays as numbers and lists; anything else (paths, ...) as its str."""
    for method in ("item", "tolist"):
        if hasattr(o, method) and callable(getattr(o, method)):
            return getattr(o, "tolist" if getattr(o, "ndim", 0) else method)()
    return str(o)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"
    atomic_write_bytes(path, text.encode())


def atomic_write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """``np.savez_compressed`` of ``arrays`` into ``path``, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


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


# ------------------------------------------------------------------------------------- run paths
@dataclass
class RunPaths:
    root: Path
    log_dir: Path
    ckpt_dir: Path
    tb_dir: Path
    result_dir: Path

    @property
    def best(self) -> Path:
        return self.ckpt_dir / "best.keras"

    @property
    def last(self) -> Path:
        return self.ckpt_dir / "last.keras"

    @property
    def state(self) -> Path:
        return self.ckpt_dir / "last_state.json"


def workdir_of(config) -> Path:
    return Path(config.workdir or Path("runs") / f"{config.method}_{config.backbone}")


def run_paths(config, k: int) -> RunPaths:
    """Run k's directories: the -lpath/-mpath/-tbpath/-rpath overrides get a k/ sub-directory
    when several runs are made; otherwise everything lives in WORKDIR (or WORKDIR/k)."""
    sub = Path(str(k)) if config.runs > 1 else Path()
    root = workdir_of(config) / sub

    def pick(flag, default):
        return Path(flag) / sub if flag else root / default

    return RunPaths(root, pick(config.log_path, ""), pick(config.model_path, "checkpoints"),
                    pick(config.tb_path, "tb"), pick(config.result_path, "results"))


def summary_dir(config) -> Path | None:
    """Where --runs N > 1 writes summary.json/.csv (None when nothing is summarised)."""
    if config.runs < 2 or not config.tst_dir:
        return None
    return Path(config.result_path or workdir_of(config) / "results")


SUMMARY_FILES = ("summary.json", "summary.csv")


@dataclass
class RunOutputs:
    """What one run writes: files it replaces, directories it fills, directories it creates."""

    files: list
    filled: list
    created: list


def run_outputs(config, paths: RunPaths) -> RunOutputs:
    """Every output of one run, given -sm/-log/-tb and whether there is a test split."""
    out = RunOutputs([paths.root / "args.json"], [], [paths.root])
    if config.save_model:
        out.files += [paths.best, paths.last, paths.state]
        out.created.append(paths.ckpt_dir)
    if config.save_log:
        out.files += [paths.log_dir / "log.txt", paths.log_dir / "history.csv"]
        out.created.append(paths.log_dir)
    if config.use_tfboard:
        out.filled += [paths.tb_dir / s for s in ("trn", "val", "tst") if s != "tst" or config.tst_dir]
    if config.tst_dir:
        out.filled.append(paths.result_dir / "tst")
    out.created += out.filled
    return out


def check_outputs(config) -> None:
    """Before any work: every output directory can be created, and nothing a run would write
    exists already, unless --resume (the run's own files) or --overwrite."""
    for k in range(config.runs):
        check_run_dir(config, run_paths(config, k))
    out = summary_dir(config)
    if out is not None:
        files = [out / name for name in SUMMARY_FILES]
        check_output_paths(files, [out])
        check_not_replaced(config, files, out, "summary directory")


def check_run_dir(config, paths: RunPaths) -> None:
    """Never train over a user's checkpoints, logs, arguments or results unless --resume or
    --overwrite; refuse output paths that are files or lie under one."""
    out = run_outputs(config, paths)
    check_output_paths(out.files, out.created)
    if config.resume:
        for f in (paths.last, paths.state):
            if not f.is_file():
                raise UsageError(f"{f}: no last checkpoint to resume from")
    elif not config.overwrite and config.save_model and any(paths.ckpt_dir.glob("*.keras")):
        raise UsageError(f"{paths.ckpt_dir}: run directory already holds checkpoints; "
                         "pass --resume to continue or --overwrite to start again")
    check_not_replaced(config, out.files + out.filled, paths.result_dir if config.tst_dir else None,
                       "result directory")


def check_output_paths(files, dirs) -> None:
    """Output directories that can be created; output files that are files where they exist."""
    for d in dirs:
        check_can_create_dir(d)
    for f in files:
        if (f.exists() or f.is_symlink()) and not f.is_file():
            raise RunDirError(f"{f}: exists and is not a file")


def check_not_replaced(config, outputs, result_dir, what) -> None:
    """Without --resume/--overwrite: no output exists yet and the result directory is empty."""
    if config.resume or config.overwrite:
        return
    for p in outputs:
        if p.exists() or p.is_symlink():
            raise UsageError(f"{p}: exists and a run would replace it; pass --resume to continue "
                             "the run that wrote it or --overwrite to start again")
    if result_dir is not None:
        check_writable_dir(result_dir, False, what)


def read_state(path) -> dict:
    """A run's last_state.json: {"epoch": whole number, "best_score": number or null, ...}."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"{path}: unreadable ({type(e).__name__}: {first}); expected the "
                         "last_state.json train_cnn.py writes") from None
    if not isinstance(state, dict):
        raise UsageError(f"{path}: not a JSON object; expected the last_state.json train_cnn.py "
                         "writes")
    epoch, best = state.get("epoch"), state.get("best_score")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UsageError(f"{path}: epoch: {epoch!r}; expected a whole number >= 0")
    if best is not None and (isinstance(best, bool) or not isinstance(best, int | float)):
        raise UsageError(f"{path}: best_score: {best!r}; expected a number or null")
    return state


def make_run_dirs(config, paths: RunPaths) -> None:
    """The run directory and, before anything is written into it, checkpoints/ (compare.py takes a
    run directory with checkpoints/ but no last checkpoint for its own, started run)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    if config.save_model:
        paths.ckpt_dir.mkdir(parents=True, exist_ok=True)


def run_args(run_root: Path | None) -> dict:
    """The training run's resolved arguments (args.json), {} when there is none."""
    if run_root is None or not (run_root / "args.json").is_file():
        return {}
    try:
        return json.loads((run_root / "args.json").read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable, ignored", run_root / "args.json")
        return {}
