"""Checkpoints: finding, reading and checking CorrFusionNet ``.keras`` files (docs/DESIGN.md §6).

Everything but ``load_checkpoint`` reads the archive's ``config.json`` with the standard library, so
the checks run before TensorFlow starts; every failure is a one-line ``UsageError`` naming the file
and what was expected (exit status 2 through ``utils.cli.run_main``). train_cnn.py (resume),
eval.py, compare.py and predict.py load checkpoints through this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import urllib.parse
import zipfile
from pathlib import Path

import model as cfn  # the package: Keras loads on the first cfn.load_model, not here
from data.split_summary import check_class_count, input_size
from utils.cli import UsageError, quiet_native_stderr
from utils.devices import resolve_jit

BEST = Path("checkpoints") / "best.keras"
EXPECTED = "expected a CorrFusionNet checkpoint (train_cnn.py's checkpoints/best.keras)"


def is_url(text) -> bool:
    """``-m`` names a checkpoint to download (http or https)."""
    return str(text).lower().startswith(("http://", "https://"))


def url_stem(url: str) -> str:
    """The checkpoint's name in a URL (``.../cf_vgg16.keras`` -> ``cf_vgg16``)."""
    return Path(urllib.parse.urlparse(url).path).stem


def check_download(url: str, sha256: str | None) -> None:
    """A URL of a ``.keras`` file and a SHA-256 of 64 hex digits (or none), before anything."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name.endswith(".keras"):
        raise UsageError(f"{url}: -m: expected the URL of a .keras file")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise UsageError(f"--sha256 {sha256}: expected 64 hexadecimal digits")


def download_checkpoint(url: str, sha256: str | None = None) -> Path:
    """A checkpoint at an http(s) URL, downloaded once into Keras' cache (``keras.utils.get_file``:
    ``$KERAS_HOME`` or ~/.keras, ``corrfusion_checkpoints/``) and checked against ``sha256`` when
    given (a cached copy that does not match is downloaded again). A failed download (no network,
    a 404) or a wrong hash is one UsageError line; nothing is kept of it."""

    check_download(url, sha256)
    name = Path(urllib.parse.urlparse(url).path).name
    # one cache folder per URL: two URLs of the same file name are two checkpoints
    subdir = str(Path("corrfusion_checkpoints") / hashlib.sha256(url.encode()).hexdigest()[:16])
    with quiet_native_stderr():
        import keras  # deferred: Keras loads on first use
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    home.mkdir(parents=True, exist_ok=True)  # else Keras falls back to /tmp/.keras
    cache = home / subdir / name
    if not cache.is_file():
        logging.getLogger("corrfusion").info("downloading %s", url)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Keras' progress bar
            path = keras.utils.get_file(fname=name, origin=url, file_hash=sha256,
                                        hash_algorithm="sha256" if sha256 else "auto",
                                        cache_subdir=subdir, cache_dir=str(home))
    except Exception as e:  # noqa: BLE001 - HTTP errors, no network, a wrong hash: one line
        text = " ".join(str(e).split())
        if "hash does not match" in text or "corrupted" in text:
            cache.unlink(missing_ok=True)  # not the checkpoint asked for: not kept
            raise UsageError(f"{url}: downloaded file's SHA-256 differs from --sha256 {sha256}; "
                             "expected the checkpoint the hash names") from None
        raise UsageError(f"{url}: download failed ({type(e).__name__}: {text[:200]})") from None
    return Path(path)


def resolve_checkpoint(path) -> tuple[Path, Path | None]:
    """A ``.keras`` file, or a run directory (its ``checkpoints/best.keras``).

    Returns ``(checkpoint, run_root)``: run_root is the run directory when the checkpoint sits in
    the standard ``RUN/checkpoints/`` layout, else None.
    """
    p = Path(path)
    check_not_tf1(p)
    if p.is_dir():
        ckpt = p / BEST
        if not ckpt.is_file():
            runs = sorted(d.name for d in p.iterdir() if (d / BEST).is_file())
            hint = f"; it holds runs {', '.join(runs)}: pass one of them" if runs else ""
            raise UsageError(f"{p}: run directory has no {BEST}{hint}")
        return ckpt, p
    if not p.exists():
        raise UsageError(f"{p}: no such checkpoint file or run directory")
    if p.suffix != ".keras":
        raise UsageError(f"{p}: checkpoint: expected a .keras file or a run directory")
    root = p.parent.parent if p.parent.name == "checkpoints" else None
    return p, root


TF1_SUFFIXES = (".meta", ".index")


def check_not_tf1(p: Path) -> None:
    """Refuse a TensorFlow 1 checkpoint (the original code's ``model.ckpt.meta/.index/.data-*``,
    or a directory holding one) with one line saying what it is."""
    if p.is_dir():
        found = sorted(q.name for q in p.glob("*.ckpt*.index")) or sorted(p.glob("*.meta"))
        if not found or (p / BEST).is_file():
            return
    elif not ((p.is_file() and (p.suffix in TF1_SUFFIXES or ".data-" in p.name))
              or Path(f"{p}.index").is_file()):  # the checkpoint prefix, e.g. model/model.ckpt
        return
    raise UsageError(
        f"{p}: a TensorFlow 1 checkpoint (model.ckpt.meta/.index/.data-*, as the original "
        "CorrFusionNet code saved); it holds a TF1 graph that Keras 3 cannot load: train a model "
        "with train_cnn.py and pass its run directory or .keras file")


def read_checkpoint_config(path) -> dict:
    """The model config stored in a .keras archive (``config.json``), read without TensorFlow."""
    try:
        with zipfile.ZipFile(path) as zf:
            raw = zf.read("config.json") if "config.json" in zf.namelist() else None
    except (zipfile.BadZipFile, OSError) as e:
        raise UsageError(f"{path}: not a Keras .keras archive ({type(e).__name__}: {e})") from None
    if raw is None:
        raise UsageError(f"{path}: config.json: missing; expected a Keras 3 .keras archive")
    try:
        config = json.loads(raw)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UsageError(
            f"{path}: config.json: unreadable ({e}); expected a Keras 3 .keras archive"
        ) from None
    if not isinstance(config, dict):
        raise UsageError(
            f"{path}: config.json: not a JSON object; expected a Keras 3 .keras archive"
        )
    return config


def check_two_date_model(config: dict, path) -> None:
    """Refuse, from config.json alone, a Keras model that cannot be a two-date classifier: a
    Sequential model (one input), or a functional one without prob_t1 / prob_t2 outputs."""
    kind = config.get("class_name")
    inner = config.get("config")
    outputs = inner.get("output_layers") if isinstance(inner, dict) else None
    two_date = isinstance(outputs, dict) and {"prob_t1", "prob_t2"} <= set(outputs)
    if kind == "Sequential" or (kind == "Functional" and not two_date):
        raise UsageError(f"{path}: config.json: a Keras {kind} model without the two-date outputs "
                         f"prob_t1, prob_t2; {EXPECTED}")


def model_fields(config: dict) -> dict:
    """The ``ModelConfig`` fields of a CorrFusionNet config.json (``{}`` for other models)."""
    c = config.get("config", {}) if isinstance(config, dict) else {}
    if isinstance(c, dict) and isinstance(c.get("config"), dict):
        return c["config"]  # CorrFusionNet.get_config: {"name", "trainable", "config": {...}}
    return c if isinstance(c, dict) else {}  # checkpoints written before the ModelConfig


def config_signature(config: dict) -> tuple[tuple | None, int | None]:
    """(input (H, W, C), K) from a CorrFusionNet config.json; None where the config does not say."""
    c = model_fields(config)
    size, channels, classes = c.get("image_size"), c.get("channels"), c.get("num_classes")
    shape = (int(size[0]), int(size[1]), int(channels)) if size and channels else None
    return shape, (int(classes) if classes else None)


def checkpoint_signature(path, config: dict) -> tuple[tuple, int]:
    """(input (H, W, C), K) of a CorrFusionNet checkpoint's config.json; UsageError if it does
    not say."""
    try:
        signature = config_signature(config)
    except (AttributeError, TypeError, ValueError, IndexError):
        signature = (None, None)
    if None in signature:
        raise UsageError(f"{path}: config.json: no image_size/channels/num_classes; expected a "
                         "CorrFusionNet checkpoint written by train_cnn.py")
    return signature


def is_compiled(config: dict) -> bool:
    """Whether the archive was saved with its optimiser (train_cnn.py's last.keras)."""
    compiled = config.get("compile_config")
    return isinstance(compiled, dict) and bool(compiled.get("optimizer"))


def load_checkpoint(path, require_optimizer=False):
    """Load a ``.keras`` checkpoint (``model.load_model``, ``safe_mode=True``).

    Every failure to read becomes one ``UsageError`` line naming the file; with
    ``require_optimizer`` a checkpoint saved without its optimiser is refused too (``--resume``).
    TensorFlow/Keras start here.
    """
    try:
        net = cfn.load_model(path)
    except Exception as e:  # noqa: BLE001 - any failure to read means "not a usable checkpoint"
        if "safe_mode" in str(e) or "arbitrary code execution" in str(e):
            what = "a `Lambda` layer" if "Lambda" in str(e) else "Python code"
            raise UsageError(f"{path}: refused: it holds {what} (Python code that loading would "
                             "run; unsafe, Keras safe_mode); expected a CorrFusionNet checkpoint, "
                             "which holds none") from None
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"{path}: not a readable Keras checkpoint ({type(e).__name__}: {first})"
        ) from None
    if require_optimizer and (not getattr(net, "compiled", False)
                              or getattr(net, "optimizer", None) is None):
        raise UsageError(f"{path}: saved without an optimiser (not compiled); expected the "
                         "last.keras train_cnn.py writes")
    if getattr(net, "compiled", False):
        # a checkpoint compiled with jit_compile=False (train_cnn.py's default before issue 25)
        # would predict op by op on JAX; callers with a --jit flag set it again after this
        net.jit_compile = net.jit_compile or resolve_jit(None)
    return net


def model_signature(net) -> tuple[tuple | None, int | None]:
    """(input (H, W, C), number of classes K) of a two-input model; None where it cannot be read."""
    config = getattr(net, "config", None)
    if all(getattr(config, a, None) is not None for a in ("image_size", "channels", "num_classes")):
        return (*config.image_size, config.channels), config.num_classes  # CorrFusionNet
    shape = k = None
    try:
        shape = tuple(net.inputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    try:
        out = net.output
        if isinstance(out, dict) and "prob_t1" in out:
            k = int(out["prob_t1"].shape[-1])
    except (AttributeError, TypeError, ValueError):
        pass
    return shape, k


def check_compatible(signature, summary, image_size, where, what="the checkpoint") -> int:
    """Raise UsageError when a model's (input shape, K) does not fit a split; returns K."""
    shape, k = signature
    if k is not None:
        if summary.class_names is not None and len(summary.class_names) != k:
            raise UsageError(
                f"{where}: class_names: {len(summary.class_names)} classes; expected {k}, the number "
                f"of classes of {what}"
            )
        if summary.num_classes > k:
            raise UsageError(
                f"{where}: label_t1/label_t2: labels go up to {summary.num_classes}; expected at most "
                f"{k}, the number of classes of {what}"
            )
    if shape is not None and None not in shape:
        data_shape = (*input_size(summary, image_size), summary.image_shape[-1])
        if tuple(data_shape) != tuple(shape):
            hint = "; pass --image_size H,W to resize" if data_shape[-1] == shape[-1] else ""
            raise UsageError(
                f"{where}: image_t1/image_t2: images of {data_shape[0]}x{data_shape[1]}x{data_shape[2]}; "
                f"expected {shape[0]}x{shape[1]}x{shape[2]}, the input of {what}{hint}"
            )
    return k if k is not None else summary.num_classes


def check_checkpoint(path, splits: dict, summaries: dict, image_size=None) -> tuple[tuple, int]:
    """Before loading: ``path`` is a two-date CorrFusionNet archive whose input and class count fit
    every split (``{name: dir}`` with their ``SplitSummary``s). Returns its signature."""
    config = read_checkpoint_config(path)
    check_two_date_model(config, path)
    signature = config_signature(config)
    if signature[1] is not None:
        check_class_count(signature[1], f"checkpoint {path}")
    for name, split_dir in splits.items():
        check_compatible(signature, summaries[name], image_size, split_dir, f"checkpoint {path}")
    return signature
