"""Run directories: where a run writes (``RunPaths``), the refusal to replace what a user made
(``check_outputs``), resuming state (``resume_state``, ``resume_modes``, ``check_resume_settings``),
one writer per directory (``DirLock``), atomic writes and their temporary files, args.json facts.

The checks take the run's ``training.config.TrainConfig`` and run before TensorFlow starts: every
output path is checked (it can be created and written), and nothing a run would write exists yet
unless ``--resume`` (the run's own files) or ``--overwrite`` was given.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import re
import socket
import sys
import tempfile
import zipfile
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


#: temporary files of the atomic writes: ``.NAME.tmpPID.keras`` (models) and ``.NAME.tmpPID.XXXX``
#: (everything else); the PID says whose they are (``remove_stale_temp_files``)
TEMP_FILE = re.compile(r"^\..+\.tmp(\d+)(\.keras|\.[A-Za-z0-9_]+)$")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp{os.getpid()}.", suffix="")
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


_SCALARS = (bool, int, float, str, type(None))


def _rows_as_leaves(o, leaves: list, tag: str):
    """``o`` with every non-empty list of scalars (a vector, a matrix row) replaced by the marker
    string ``tag + index`` whose compact JSON is ``leaves[index]``; NumPy values as ``_jsonable``
    gives them."""
    if isinstance(o, dict):
        return {k: _rows_as_leaves(v, leaves, tag) for k, v in o.items()}
    if isinstance(o, (np.ndarray, np.generic)):
        o = _jsonable(o)
    if isinstance(o, (list, tuple)):
        if o and all(isinstance(x, _SCALARS + (np.generic,)) for x in o):
            leaves.append(json.dumps(o, default=_jsonable))  # C encoder: no indent
            return f"{tag}{len(leaves) - 1}"
        return [_rows_as_leaves(x, leaves, tag) for x in o]
    return o


def json_text(obj) -> str:
    """``obj`` as indented JSON (2 spaces, sorted keys) with each list of numbers on one line: a
    K x K matrix reads as K rows, and a 1000-class result is written in a fraction of the time
    json's pure-Python indenting encoder takes for its 10^6 numbers one per line."""
    leaves: list[str] = []
    tag = f"\x00rows-{os.urandom(8).hex()}-"  # no string of the document is a marker by chance
    text = json.dumps(_rows_as_leaves(obj, leaves, tag), indent=2, sort_keys=True,
                      default=_jsonable)
    if not leaves:
        return text + "\n"
    marker = re.escape(json.dumps(tag))[:-1]  # the tag as json writes it, without its closing quote
    return re.sub(marker + r'(\d+)"', lambda m: leaves[int(m.group(1))], text) + "\n"


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, json_text(obj).encode())


def atomic_write_npz(path: str | os.PathLike, arrays: dict) -> None:
    """``np.savez_compressed`` of ``arrays`` into ``path``, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


#: the member of ``last.keras`` that holds its training state (epoch, best score, ...): the state
#: is committed with the weights and optimiser by the one rename (docs/DESIGN.md §6)
STATE_MEMBER = "train_state.json"


def atomic_save_model(model, path: str | os.PathLike, state: dict | None = None) -> None:
    """model.save to a temporary .keras file beside `path` (with ``state`` stored in it as
    ``STATE_MEMBER``), then rename over it: the file and its state appear together or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    try:
        model.save(tmp)
        if state is not None:
            with zipfile.ZipFile(tmp, "a") as zf:
                zf.writestr(STATE_MEMBER, json.dumps(state, default=_jsonable))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the atomic writes' temporary files (``TEMP_FILE``) left in ``directory`` by a
    process that is gone (killed during a save); a live process's are kept. Returns the removed."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for f in d.iterdir():
        m = TEMP_FILE.match(f.name)
        if m and f.is_file() and not pid_alive(int(m.group(1))):
            f.unlink(missing_ok=True)
            removed.append(f)
    if removed:
        log.info("removed %d temporary file(s) of killed saves in %s", len(removed), d)
    return removed


def is_nonempty_dir(path: str | os.PathLike) -> bool:
    """A directory holding anything but a lock file (``LOCK_NAME``)."""
    p = Path(path)
    return p.is_dir() and any(q.name != LOCK_NAME for q in p.iterdir())


def check_can_create_dir(path: str | os.PathLike) -> None:
    """Refuse a directory path that cannot be created or written: it, or its nearest existing
    parent, is a file, or is a directory where this process cannot create a file (read-only
    mount, permissions, /proc, /sys): tried with a temporary file that is removed at once."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                where = "" if q == p else f" (its parent {q} is a file)"
                raise RunDirError(f"{p}: exists and is not a directory{where}" if q == p
                                  else f"{p}: cannot create the directory{where}")
            check_can_write_in(q, p)
            return


def check_can_write_in(directory: Path, target: Path) -> None:
    """Create and remove a temporary file in ``directory``; refuse ``target`` if that fails."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".write-test.tmp{os.getpid()}.")
    except OSError as e:
        where = "" if directory == target else f" (in {directory})"
        raise RunDirError(f"{target}: cannot write{where}: {e.strerror or type(e).__name__}; "
                          "expected a writable directory") from None
    os.close(fd)
    os.unlink(tmp)


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


def check_outputs(config) -> list[str]:
    """Before any work: every output directory can be created and written, and nothing a run
    would write exists already, unless --resume (the run's own files) or --overwrite. Returns
    each run's ``resume_modes``."""
    for k in range(config.runs):
        check_run_dir(config, run_paths(config, k))
    out = summary_dir(config)
    if out is not None:
        files = [out / name for name in SUMMARY_FILES]
        check_output_paths(files, [out])
        check_not_replaced(config, files, out, "summary directory")
    return resume_modes(config)


def check_run_dir(config, paths: RunPaths) -> None:
    """Never train over a user's checkpoints, logs, arguments or results unless --resume or
    --overwrite; refuse output paths that are files or lie under one."""
    out = run_outputs(config, paths)
    check_output_paths(out.files, out.created)
    if not config.resume and not config.overwrite and config.save_model and any(paths.ckpt_dir.glob("*.keras")):
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
    return check_state(path, state)


def check_state(path, state) -> dict:
    """A training state: a JSON object with a whole ``epoch`` >= 0 and a numeric or null
    ``best_score``; one-line UsageError naming ``path`` otherwise."""
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


# ---------------------------------------------------------------------------------------- resume
def read_embedded_state(path) -> dict | None:
    """The training state stored in a .keras file (``STATE_MEMBER``), None when it has none
    (written before the state moved into the checkpoint)."""
    try:
        with zipfile.ZipFile(path) as zf:
            if STATE_MEMBER not in zf.namelist():
                return None
            raw = zf.read(STATE_MEMBER)
    except (zipfile.BadZipFile, OSError) as e:
        raise UsageError(f"{path}: not a Keras .keras archive ({type(e).__name__}: {e})") from None
    return check_state(f"{path}: {STATE_MEMBER}", _loads(raw, f"{path}: {STATE_MEMBER}"))


def _loads(raw, where):
    try:
        return json.loads(raw)
    except ValueError as e:
        raise UsageError(f"{where}: unreadable ({type(e).__name__}: {e}); expected the state "
                         "train_cnn.py writes") from None


def resume_state(paths: RunPaths) -> dict:
    """The state a resumed run continues from: the one committed inside ``last.keras`` (the same
    rename wrote weights, optimiser and state), else — checkpoints of older versions —
    ``last_state.json``. A ``last_state.json`` that is there is read and checked either way."""
    file_state = read_state(paths.state) if paths.state.is_file() else None
    embedded = read_embedded_state(paths.last)
    if embedded is None:
        return file_state if file_state is not None else read_state(paths.state)
    if file_state is not None and file_state.get("epoch") != embedded["epoch"]:
        log.warning("%s says epoch %s, %s holds epoch %d (interrupted between the two writes): "
                    "resuming after epoch %d", paths.state, file_state.get("epoch"), paths.last,
                    embedded["epoch"], embedded["epoch"])
    return embedded


def resume_modes(config) -> list[str]:
    """Per run with --resume: "resume" (it has a last checkpoint), "done" (trained all
    ``config.epochs`` and evaluated: nothing to do) or "fresh" (not begun: no last checkpoint,
    started from scratch). Without --resume every run is "fresh". At least one run must have a
    last checkpoint: --resume on a directory nothing was trained in is an error."""
    if not config.resume:
        return ["fresh"] * config.runs
    modes = []
    for k in range(config.runs):
        paths = run_paths(config, k)
        if not paths.last.is_file():
            if paths.state.is_file():
                raise UsageError(f"{paths.last}: no last checkpoint to resume from (but "
                                 f"{paths.state} exists)")
            modes.append("fresh")
            continue
        state = resume_state(paths)
        evaluated = not config.tst_dir or (paths.result_dir / "tst" / "results.json").is_file()
        modes.append("done" if state["epoch"] >= config.epochs and evaluated else "resume")
    if "fresh" in modes and all(m == "fresh" for m in modes):
        raise UsageError(f"{run_paths(config, 0).last}: no last checkpoint to resume from")
    return modes


#: options a --resume may change: the epochs to train to (how a run is extended), where the data
#: and the outputs are, what is logged, and the devices; any other difference (network, method,
#: optimiser, learning rate, batch size, seed, ...) is refused
RESUME_MAY_CHANGE = frozenset({
    "epochs", "resume", "overwrite", "runs", "preset", "demo",
    "data_dir", "trn_dir", "val_dir", "tst_dir",
    "workdir", "log_path", "model_path", "tb_path", "result_path",
    "use_tfboard", "tb_images", "save_model", "save_log", "eval_trn",
    "gpu", "jit", "ce_weights",  # ce_weights: derived from --class_weight and the data
    "verbose", "join_timeout",
})


def check_resume_settings(config, paths: RunPaths) -> None:
    """--resume continues the run args.json describes: a setting given differently is refused in
    one line listing each difference (``RESUME_MAY_CHANGE`` may differ)."""
    saved = run_args(paths.root).get("args")
    if not isinstance(saved, dict):
        log.warning("%s: no readable args.json: the settings cannot be compared", paths.root)
        return
    now = config.to_args()
    diffs = [f"--{k} {_show(now[k])} (run: {_show(saved[k])})" for k in sorted(now)
             if k in saved and k not in RESUME_MAY_CHANGE and _norm(now[k]) != _norm(saved[k])]
    if diffs:
        raise UsageError(f"{paths.root / 'args.json'}: --resume with other settings than the run "
                         f"was trained with: {', '.join(diffs)}; resume with the run's settings "
                         "(only -e/--epochs, paths, logging and devices may change) or start a "
                         "new --workdir")


def _norm(v):
    return [_norm(x) for x in v] if isinstance(v, list | tuple) else v


def _show(v):
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v) or "''"
    return str(v)


# ------------------------------------------------------------------------------------------ lock
#: the lock file of a directory a process writes into (one writer per directory)
LOCK_NAME = ".lock"


class DirLock:
    """One writer per directory: an exclusive ``flock`` on ``DIR/.lock``, held until ``release``
    (or the process ends: the kernel drops the lock of a killed process, so a stale file does not
    block). The file says who holds it ("pid N host H"), for the refusal of a second writer."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.path = self.dir / LOCK_NAME
        self.fd = None
        self.created = False

    def acquire(self) -> DirLock:
        try:
            import fcntl  # deferred: POSIX only (the except below)
        except ImportError:  # not POSIX: no lock, say so
            log.warning("%s: no file locking on this system: one writer per directory is not "
                        "enforced", self.dir)
            return self
        self.created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunDirError(f"{self.dir}: in use by {holder} ({self.path}); one writer per "
                                  "directory: wait for it to end or use another directory") from None
            try:  # the holder may have removed the file between our open and flock: try again
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it (see acquire)
        os.close(self.fd)
        self.fd = None
        if self.created:
            with contextlib.suppress(OSError):  # not empty: keep it
                self.dir.rmdir()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def lock_dirs(dirs):
    """Hold a ``DirLock`` on each distinct directory (sorted: every process takes them in the
    same order), released at the end of the block, also on an error or interruption."""
    with contextlib.ExitStack() as stack:
        for d in sorted({Path(os.path.abspath(d)) for d in dirs}):
            stack.enter_context(DirLock(d))
        yield


def output_roots(config) -> list[Path]:
    """The directories a training writes under: the work directory and each of
    -lpath/-mpath/-tbpath/-rpath given (each one locked for the whole training)."""
    roots = [workdir_of(config)]
    roots += [Path(p) for p in (config.log_path, config.model_path, config.tb_path,
                                config.result_path) if p]
    return roots
