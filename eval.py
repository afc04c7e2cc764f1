"""Evaluate a CorrFusionNet checkpoint: the paper's metrics, change metrics, figures, predictions.

    python eval.py -m runs/demo/checkpoints/best.keras -tst DATA/tst
    python eval.py -m runs/demo                      # the run's best checkpoint and its test split
    python eval.py -m RUN --data_dir DATA -rpath out/ --threshold 0.3

Reads like a table of contents: parse -> checkpoint -> splits -> predict + metrics -> write.
Everything is checked and computed before the first file is written, so bad input (a checkpoint for
another class count or image size, a file that is not a Keras model, a run directory without a best
checkpoint, shards that break DESIGN.md §4) leaves one line on stderr, exit status 2 and no output.

``evaluate_split`` and ``write_outputs`` are the one code path for train_cnn.py's end-of-run test
evaluation and compare.py as well.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import warnings
from pathlib import Path

from parser import eval_parser
from utils.cli import UsageError, configure_logging, run_main
from utils.devices import select_devices

log = logging.getLogger("corrfusion.eval")

SPLITS = ("trn", "val", "tst")
BEST = Path("checkpoints") / "best.keras"


# --------------------------------------------------------------------------------------- arguments
def parse_args(argv=None):
    return eval_parser().parse_args(argv)


def resolve_checkpoint(path) -> tuple[Path, Path | None]:
    """`-m`: a .keras file, or a run directory (its checkpoints/best.keras).

    Returns (checkpoint, run_root) where run_root is the run directory when the checkpoint sits in
    the standard RUN/checkpoints/ layout (else None).
    """
    p = Path(path)
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


def run_args(run_root: Path | None) -> dict:
    """The training run's resolved arguments (args.json), {} when there is none."""
    if run_root is None or not (run_root / "args.json").is_file():
        return {}
    try:
        return json.loads((run_root / "args.json").read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable, ignored", run_root / "args.json")
        return {}


def resolve_splits(args, saved: dict) -> dict[str, str]:
    """Splits to evaluate: -trn/-val/-tst as given; --data_dir adds its val/ and tst/; with neither,
    the run's own validation and test splits from args.json."""
    splits = {s: getattr(args, f"{s}_dir") for s in SPLITS if getattr(args, f"{s}_dir")}
    if args.data_dir:
        base = Path(args.data_dir)
        if not base.is_dir():
            raise UsageError(f"{base}: --data_dir: no such directory")
        for s in ("val", "tst"):
            if s not in splits and (base / s).is_dir():
                splits[s] = str(base / s)
        if not splits:
            raise UsageError(f"{base}: --data_dir: expected val/ or tst/ split directories")
    if not splits:
        trained = saved.get("args", {})
        splits = {s: trained[f"{s}_dir"] for s in ("val", "tst") if trained.get(f"{s}_dir")}
        if splits:
            log.info("no split given: evaluating the run's own %s", ", ".join(splits))
    if not splits:
        raise UsageError("no data to evaluate: give -tst/-val DIR or --data_dir DIR")
    return {s: splits[s] for s in SPLITS if s in splits}


def default_result_dir(ckpt: Path, run_root: Path | None) -> Path:
    if run_root is not None:
        return run_root / "results" / ("eval" if ckpt.name == "best.keras" else f"eval_{ckpt.stem}")
    return ckpt.with_name(f"{ckpt.stem}_eval")


# ------------------------------------------------------------------------------------------- model
def read_checkpoint_config(path) -> dict:
    """The model config stored in a .keras archive (config.json), read without TensorFlow.

    Raises UsageError when the file is not a zip archive with a config.json (not a Keras 3 file).
    """
    import zipfile

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
        raise UsageError(
            f"{path}: config.json: a Keras {kind} model without the two-date outputs prob_t1, "
            "prob_t2; expected a CorrFusionNet checkpoint (train_cnn.py's checkpoints/best.keras)"
        )


def config_signature(config: dict) -> tuple[tuple | None, int | None]:
    """(input (H, W, C), K) from a CorrFusionNet config.json; None where the config does not say."""
    c = config.get("config", {}) if isinstance(config, dict) else {}
    size, channels, classes = c.get("image_size"), c.get("channels"), c.get("num_classes")
    shape = (int(size[0]), int(size[1]), int(channels)) if size and channels else None
    return shape, (int(classes) if classes else None)


def load_checkpoint(path):
    """model.load_model with every failure turned into a one-line UsageError."""
    import model as cfn

    try:
        return cfn.load_model(path)
    except Exception as e:  # noqa: BLE001 - any failure to read means "not a usable checkpoint"
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"{path}: not a readable Keras checkpoint ({type(e).__name__}: {first})"
        ) from None


def model_signature(net) -> tuple[tuple | None, int | None]:
    """(input (H, W, C), number of classes K) of a two-input model; None where it cannot be read."""
    shape = k = None
    # CorrFusionNet (model.network) carries its constructor arguments
    size, channels, classes = (
        getattr(net, a, None) for a in ("image_size", "channels", "num_classes")
    )
    if size is not None and channels is not None and classes is not None:
        return (int(size[0]), int(size[1]), int(channels)), int(classes)
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
        data_shape = (*(image_size or summary.image_shape[:2]), summary.image_shape[-1])
        if tuple(data_shape) != tuple(shape):
            hint = "; pass --image_size H,W to resize" if data_shape[-1] == shape[-1] else ""
            raise UsageError(
                f"{where}: image_t1/image_t2: images of {data_shape[0]}x{data_shape[1]}x{data_shape[2]}; "
                f"expected {shape[0]}x{shape[1]}x{shape[2]}, the input of {what}{hint}"
            )
    return k if k is not None else summary.num_classes


# ---------------------------------------------------------------------------------------- evaluate
def evaluate_split(net, split_dir, batch_size=32, threshold=0.5, class_names=None, image_size=None,
                   check_values=True):
    """Predict one split in its fixed order and compute every metric of DESIGN.md §3.

    Args:
        net: a model returning a dict with ``prob_t1``, ``prob_t2`` (and optionally
            ``fusion_weight``, ``dist``) for ``(x1, x2)``.
        split_dir: directory of §4 shards.
        batch_size: prediction batch size.
        threshold: p_change threshold of the second change rule.
        class_names: names of the K classes; default the shards' names, else "class 1".."class K".
        image_size: (H, W) to resize the images to, as in training; default the shards' size.
        check_values: read the image data through before predicting (float values, CRC-32 of
            compressed members: ``data.shards.inspect_split``). False when the caller has checked
            the split in full already (eval.py's ``check_before_loading``, train_cnn.py's
            ``check_data``); the shards' headers and labels are checked either way.

    Returns:
        ``(metrics, predictions)``: ``utils.metrics.compute_metrics`` dict (plus ``split_dir``) and a
        dict of arrays: ``label_t1``, ``label_t2``, ``pred_t1``, ``pred_t2`` (0-based int32),
        ``prob_t1``, ``prob_t2`` (N, K float32), ``p_change`` (N,), ``changed_true``,
        ``changed_pred``, ``changed_pred_threshold`` (bool), ``fusion_weight`` / ``dist`` when the
        model gives them, ``row`` / ``col`` when the shards carry them, ``class_names``.

    Raises:
        UsageError: checkpoint and data do not fit (class count, image size).
        data.shards.ShardError: the shards break the format.
    """
    import numpy as np

    from data.loader import make_dataset
    from data.shards import inspect_split, read_labels
    from utils.metrics import compute_metrics

    summary = inspect_split(split_dir, check_values=check_values)
    k = check_compatible(model_signature(net), summary, image_size, split_dir)
    names = list(class_names or summary.class_names or [f"class {i + 1}" for i in range(k)])
    if len(names) != k:
        raise UsageError(f"{split_dir}: class_names: {len(names)} names; expected {k}")
    dataset, summary = make_dataset(
        split_dir, batch_size, training=False, image_size=image_size, num_classes=k,
        raw_integers=True,  # CorrFusionNet scales uint8/uint16 batches in the graph
    )
    labels = read_labels(split_dir, num_classes=k)
    log.info("%s: predicting %d pairs", split_dir, summary.n_pairs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = net.predict(dataset, verbose=0)
    if not isinstance(out, dict) or "prob_t1" not in out or "prob_t2" not in out:
        # Keras' warnings about the input structure only repeat this error at length
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise UsageError(
            f"{split_dir}: model output: expected a dict with prob_t1, prob_t2; got {got}"
        )
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    p1 = np.asarray(out["prob_t1"], dtype=np.float32)
    p2 = np.asarray(out["prob_t2"], dtype=np.float32)
    n = labels["label_t1"].shape[0]
    if p1.shape != (n, k) or p2.shape != (n, k):
        raise UsageError(
            f"{split_dir}: model output prob_t1/prob_t2: shape {p1.shape}; expected ({n}, {k}) "
            "(pairs, classes of the data)"
        )
    metrics = compute_metrics(labels["label_t1"], labels["label_t2"], p1, p2, threshold, names)
    metrics["split_dir"] = str(split_dir)
    extra = {key: np.asarray(out[key], dtype=np.float32).reshape(n)
             for key in ("fusion_weight", "dist") if key in out}
    if labels.get("row") is not None:
        extra["row"], extra["col"] = labels["row"], labels["col"]
    preds = make_predictions(labels["label_t1"], labels["label_t2"], p1, p2, threshold, names,
                             extra)
    if "fusion_weight" in preds:
        w, c = preds["fusion_weight"], preds["changed_true"]
        metrics["fusion_weight_mean"] = {
            "unchanged": float(w[~c].mean()) if (~c).any() else None,
            "changed": float(w[c].mean()) if c.any() else None,
        }
    return metrics, preds


def make_predictions(label_t1, label_t2, p1, p2, threshold, class_names, extra=None,
                     p_change=None) -> dict:
    """The per-pair arrays every output file is written from (see ``evaluate_split``).

    ``p_change`` defaults to 1 − Σ_k p1_k p2_k; a method with its own change probability (BoVW +
    KSFA's fused one) passes it. ``extra`` arrays (row/col, fusion weight, ...) are added as they are.
    """
    import numpy as np

    from utils.metrics import change_probability

    p1 = np.asarray(p1, dtype=np.float32)
    p2 = np.asarray(p2, dtype=np.float32)
    preds = {
        "label_t1": np.asarray(label_t1).astype(np.int32),
        "label_t2": np.asarray(label_t2).astype(np.int32),
        "pred_t1": p1.argmax(axis=1).astype(np.int32),
        "pred_t2": p2.argmax(axis=1).astype(np.int32),
        "prob_t1": p1,
        "prob_t2": p2,
        "p_change": np.asarray(change_probability(p1, p2) if p_change is None else p_change,
                               dtype=np.float32),
    }
    preds["changed_true"] = preds["label_t1"] != preds["label_t2"]
    preds["changed_pred"] = preds["pred_t1"] != preds["pred_t2"]
    preds["changed_pred_threshold"] = preds["p_change"] >= threshold
    preds.update(extra or {})
    preds["class_names"] = list(class_names)
    return preds


# ------------------------------------------------------------------------------------------ output
PREDICTION_FILES = ("predictions.npz", "predictions.mat", "predictions.csv")
FIGURE_FILES = ("confusion_t1.png", "confusion_t2.png", "transitions.png", "pr_curve.png")
MAP_FILES = ("class_maps.png", "change_map.png", "change_map_threshold.png")


def _predictions_csv(preds) -> str:
    import numpy as np

    n, k = preds["prob_t1"].shape
    cols = ["index"]
    cols += [c for c in ("row", "col") if c in preds]
    cols += [
        "label_t1",
        "label_t2",
        "pred_t1",
        "pred_t2",
        "changed_true",
        "changed_pred",
        "changed_pred_threshold",
        "p_change",
    ]
    cols += [c for c in ("fusion_weight", "dist") if c in preds]
    header = cols + [f"prob_t1_{i}" for i in range(k)] + [f"prob_t2_{i}" for i in range(k)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    data = {c: (np.arange(n) if c == "index" else preds[c]) for c in cols}
    for i in range(n):
        row = []
        for c in cols:
            v = data[c][i]
            if isinstance(v, np.bool_ | bool):
                row.append(int(v))
            elif isinstance(v, np.floating):
                row.append(f"{float(v):.6g}")
            else:
                row.append(int(v))
        row += [f"{float(v):.6g}" for v in preds["prob_t1"][i]]
        row += [f"{float(v):.6g}" for v in preds["prob_t2"][i]]
        w.writerow(row)
    return buf.getvalue()


def _array_dict(preds) -> dict:
    import numpy as np

    out = {k: np.asarray(v) for k, v in preds.items() if k != "class_names"}
    out["class_names"] = np.asarray(preds["class_names"], dtype=str)
    return out


def map_problem(metrics, preds) -> str | None:
    """Why the tiles' row/col cannot be drawn as maps (a grid far too large: row/col that are map
    coordinates rather than tile grid indices), else None. Prefixed with the split directory."""
    from utils import plots

    if "row" not in preds:
        return None
    problem = plots.grid_problem(preds["row"], preds["col"])
    if problem is None:
        return None
    return f"{metrics.get('split_dir') or 'predictions'}: {problem}"


def figure_names(metrics, preds) -> list[str]:
    """Names of the PNGs ``write_figures`` writes for these results."""
    maps = "row" in preds and map_problem(metrics, preds) is None
    return [*FIGURE_FILES, *(MAP_FILES if maps else ())]


def write_figures(out_dir, metrics, preds) -> list[Path]:
    """The PNGs of one split: confusion matrices, transitions, PR curve, and maps when row/col exist.

    Row/col spanning a grid of more than ``utils.plots.MAX_GRID_CELLS`` cells (map coordinates
    rather than tile grid indices) skip the maps with a warning; everything else is written.
    """
    from utils import plots

    out_dir = Path(out_dir)
    names = metrics["class_names"]
    split = Path(metrics.get("split_dir", "")).name
    tag = f" [{split}]" if split else ""
    paths = [
        plots.plot_confusion_matrix(
            metrics["confusion_t1"],
            names,
            out_dir / "confusion_t1.png",
            title=f"t1{tag}: OA {metrics['OA_t1']:.3f}",
        ),
        plots.plot_confusion_matrix(
            metrics["confusion_t2"],
            names,
            out_dir / "confusion_t2.png",
            title=f"t2{tag}: OA {metrics['OA_t2']:.3f}",
        ),
        plots.plot_transition_matrices(
            metrics["transition_true"],
            metrics["transition_pred"],
            names,
            out_dir / "transitions.png",
            title=f"From → to transitions{tag}",
        ),
        plots.plot_pr_curve(
            preds["changed_true"],
            preds["p_change"],
            out_dir / "pr_curve.png",
            threshold=metrics["threshold"],
            argmax_point=(metrics["change_recall"], metrics["change_precision"]),
            title=f"Change detection{tag}",
        ),
    ]
    problem = map_problem(metrics, preds)
    if problem:
        log.warning("%s; class and change maps skipped", problem)
    elif "row" in preds:
        paths.append(
            plots.plot_class_maps(
                preds["row"],
                preds["col"],
                preds["label_t1"],
                preds["label_t2"],
                preds["pred_t1"],
                preds["pred_t2"],
                names,
                out_dir / "class_maps.png",
                title=f"Scene classes{tag}",
            )
        )
        paths.append(
            plots.plot_change_map(
                preds["row"],
                preds["col"],
                preds["changed_true"],
                preds["changed_pred"],
                out_dir / "change_map.png",
                title=f"Changes, argmax t1 ≠ argmax t2{tag}",
            )
        )
        paths.append(
            plots.plot_change_map(
                preds["row"],
                preds["col"],
                preds["changed_true"],
                preds["changed_pred_threshold"],
                out_dir / "change_map_threshold.png",
                title=f"Changes, p_change ≥ {metrics['threshold']:g}{tag}",
            )
        )
    return paths


def write_outputs(out_dir, metrics, preds, class_names=None, overwrite=False, info=None) -> Path:
    """Write one split's results into out_dir.

    Files: ``results.json`` ({"info", "metrics"}), ``metrics.txt`` (the table), ``per_class.csv``,
    ``predictions.npz`` / ``.mat`` / ``.csv``, the PNGs of ``write_figures``.

    Args:
        out_dir: result directory (created); an existing non-empty one needs ``overwrite``.
        metrics, preds: from ``evaluate_split``.
        class_names: unused beyond a consistency check (the names travel in metrics); kept so
            callers can pass what they have.
        overwrite: replace files in an existing non-empty directory.
        info: extra JSON-able facts for results.json (checkpoint, split directory, ...).
    """
    import numpy as np
    import scipy.io

    from utils.metrics import format_table, per_class_csv
    from utils.rundir import atomic_write_bytes, atomic_write_json, check_writable_dir

    out_dir = Path(out_dir)
    check_writable_dir(out_dir, overwrite, "result directory")
    if class_names is not None and list(class_names) != list(metrics["class_names"]):
        log.warning(
            "class names given (%s) differ from the metrics' (%s); using the metrics'",
            class_names,
            metrics["class_names"],
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", {"info": info or {}, "metrics": metrics})
    atomic_write_bytes(
        out_dir / "metrics.txt", (format_table(metrics, per_class=True) + "\n").encode()
    )
    atomic_write_bytes(out_dir / "per_class.csv", per_class_csv(metrics).encode())
    arrays = _array_dict(preds)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(out_dir / "predictions.npz", buf.getvalue())
    buf = io.BytesIO()
    scipy.io.savemat(
        buf,
        {k: (v.astype(np.uint8) if v.dtype == bool else v) for k, v in arrays.items()},
        do_compression=True,
        oned_as="column",
    )
    atomic_write_bytes(out_dir / "predictions.mat", buf.getvalue())
    atomic_write_bytes(out_dir / "predictions.csv", _predictions_csv(preds).encode())
    write_figures(out_dir, metrics, preds)
    log.info("results written to %s", out_dir)
    return out_dir


def write_summary(out_dir, results: dict, info: dict) -> None:
    """The eval run's top level: results.json {"info", "splits": {split: metrics}}, metrics.txt,
    per_class.csv with a split column."""
    from utils.metrics import format_table, per_class_csv
    from utils.rundir import atomic_write_bytes, atomic_write_json

    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "results.json", {"info": info, "splits": results})
    atomic_write_bytes(out_dir / "metrics.txt", (format_table(results) + "\n").encode())
    atomic_write_bytes(out_dir / "per_class.csv", per_class_csv(results).encode())


def format_table(metrics, per_class=False) -> str:
    """utils.metrics.format_table, re-exported for train_cnn.py and compare.py."""
    from utils.metrics import format_table as _format

    return _format(metrics, per_class=per_class)


# -------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging()
    select_devices(args.gpu)
    ckpt, run_root = resolve_checkpoint(args.model)
    saved = run_args(run_root)
    splits = resolve_splits(args, saved)
    out_dir = Path(args.result_path) if args.result_path else default_result_dir(ckpt, run_root)
    image_size = args.image_size or _saved_image_size(saved)
    check_before_loading(ckpt, splits, image_size, out_dir, args.overwrite)

    from utils.devices import setup_backend

    device_info = setup_backend(args.mixed_precision)
    net = load_checkpoint(ckpt)
    if args.jit:
        net.jit_compile = True
    results, preds = {}, {}
    for split, split_dir in splits.items():  # everything computed before anything is written
        results[split], preds[split] = evaluate_split(
            net, split_dir, args.batch_size, args.threshold, saved.get("class_names"), image_size,
            check_values=False,  # check_before_loading read every split in full
        )
    info = {
        "checkpoint": str(ckpt),
        "splits": splits,
        "threshold": args.threshold,
        "batch_size": args.batch_size,
        "image_size": list(image_size) if image_size else None,
        "devices": device_info,
        "command": sys.argv,
    }
    for split in splits:
        write_outputs(
            out_dir / split,
            results[split],
            preds[split],
            overwrite=True,
            info={**info, "split": split, "split_dir": splits[split]},
        )
    write_summary(out_dir, results, info)
    sys.stdout.write(f"{ckpt}\n{format_table(results)}\n")
    log.info("results: %s", out_dir)
    return 0


def _saved_image_size(saved: dict):
    size = saved.get("args", {}).get("image_size")
    return tuple(size) if size else None


def check_before_loading(ckpt, splits, image_size, out_dir, overwrite) -> None:
    """Cheap checks before TensorFlow starts: the result directory, the archive, every split's format
    and its fit with the checkpoint's class count and input size (read from config.json)."""
    from data.shards import inspect_split
    from utils.rundir import check_writable_dir

    check_writable_dir(out_dir, overwrite, "result directory")
    config = read_checkpoint_config(ckpt)
    check_two_date_model(config, ckpt)
    signature = config_signature(config)
    for split_dir in splits.values():
        check_compatible(
            signature, inspect_split(split_dir), image_size, split_dir, f"checkpoint {ckpt}"
        )


if __name__ == "__main__":
    sys.exit(run_main(main))
