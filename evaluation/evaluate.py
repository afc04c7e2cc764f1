"""Evaluation: predict a split, compute every metric, write the result files (docs/DESIGN.md §3).

The one code path of eval.py (``evaluate_checkpoint``), of train_cnn.py's end-of-run test evaluation
(``training.fit``), of compare.py's CNN and BoVW rows and of ``evaluation.figures`` (``write_figures``):

* ``evaluate_split`` — a model on one split: ``(metrics, predictions)``;
* ``make_predictions`` — the per-pair arrays every output file is written from;
* ``write_outputs`` / ``write_summary`` / ``write_figures`` — one split's files, an eval run's top
  level, the PNGs;
* ``evaluate_checkpoint(EvalConfig)`` — eval.py: checks, then every split, then the files.

Everything is checked and computed before the first file is written, so bad input leaves one line
on stderr, exit status 2 and no output.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.io

from data.split_summary import check_class_names, inspect_split, read_labels, require_labels
from data.splits import SPLITS, resolve_split_dirs
from evaluation import map_files, plots
from evaluation.config import EvalConfig
from evaluation.metrics import change_probability, compute_metrics, format_table, per_class_csv
from model.checkpoints import (
    check_checkpoint,
    check_compatible,
    check_download,
    download_checkpoint,
    is_url,
    load_checkpoint,
    model_signature,
    resolve_checkpoint,
    url_stem,
)
from model.config import INPUT_SCALING, LEGACY_INPUT_NORM
from utils.cli import UsageError, progress_verbose
from utils.devices import backend_name, resolve_jit, select_devices, setup_backend
from utils.rundir import (
    DirLock,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    check_writable_dir,
    remove_stale_temp_files,
    run_args,
)

log = logging.getLogger("corrfusion.eval")


# ---------------------------------------------------------------------------------------- evaluate
def input_scaling(net) -> str:
    """What the loader does before ``net`` (``data.loader.SCALINGS``): from its
    ``config.input_norm`` (a model without one: ``dtype``, how every model used to be fed)."""

    return INPUT_SCALING[getattr(getattr(net, "config", None), "input_norm", LEGACY_INPUT_NORM)]


def evaluate_split(net, split_dir, batch_size=32, threshold=0.5, class_names=None, image_size=None,
                   check_values=True):
    """Predict one split in its fixed order and compute every metric of docs/DESIGN.md §3.

    Args:
        net: a model returning a dict with ``prob_t1``, ``prob_t2`` (and optionally
            ``fusion_weight``, ``dist``) for ``(x1, x2)``.
        split_dir: directory of §4 shards.
        batch_size: prediction batch size.
        threshold: p_change threshold of the second change rule.
        class_names: names of the K classes; default the shards' names, else "class 1".."class K".
        image_size: (H, W) to resize the images to, as in training; default the shards' size.
        check_values: read the image data through before predicting (float values, CRC-32 of
            compressed members: ``data.split_summary.inspect_split``). False when the caller has checked
            the split in full already (``evaluate_checkpoint``'s checks, ``training.run_data.check_data``); the shards' headers and labels are checked either way.

    Returns:
        ``(metrics, predictions)``: ``evaluation.metrics.compute_metrics`` dict (plus ``split_dir``) and a
        dict of arrays: ``label_t1``, ``label_t2``, ``pred_t1``, ``pred_t2`` (0-based int32),
        ``prob_t1``, ``prob_t2`` (N, K float32), ``p_change`` (N,), ``changed_true``,
        ``changed_pred``, ``changed_pred_threshold`` (bool), ``fusion_weight`` / ``dist`` when the
        model gives them, ``row`` / ``col`` when the shards carry them, ``class_names``.

    Raises:
        UsageError: checkpoint and data do not fit (class count, image size).
        data.shards.ShardError: the shards break the format.
    """
    from data.loader import make_dataset  # Keras: the loader is the backend's

    summary = inspect_split(split_dir, check_values=check_values)
    k = check_compatible(model_signature(net), summary, image_size, split_dir)
    names = list(class_names or summary.class_names or [f"class {i + 1}" for i in range(k)])
    if len(names) != k:
        raise UsageError(f"{split_dir}: class_names: {len(names)} names; expected {k}")
    dataset, summary = make_dataset(
        split_dir, batch_size, training=False, image_size=image_size, num_classes=k,
        raw_integers=True,  # CorrFusionNet normalises uint8/uint16 batches in the graph
        scaling=input_scaling(net),
    )
    labels = read_labels(split_dir, num_classes=k)
    skipped = f" ({summary.n_skipped} undefined pairs skipped)" if summary.n_skipped else ""
    log.info("%s: predicting %d pairs%s", split_dir, summary.n_pairs, skipped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = net.predict(dataset, verbose=progress_verbose())  # a bar on a terminal
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
#: w and dist histograms, changed vs unchanged (only for a model with a fusion module: corrfusion)
FUSION_FILE = "fusion_weight.png"


#: predictions.csv's class id columns: the shards' 1-based ids, each followed by its class name
CSV_CLASS_COLUMNS = ("label_t1", "label_t2", "pred_t1", "pred_t2")


def _predictions_csv(preds) -> str:
    """One row per pair. Class ids are the shards' (1..K, 0-based + 1), each with a ``*_name``
    column; ``prob_t1_k`` / ``prob_t2_k`` is the probability of class id k."""
    n, k = preds["prob_t1"].shape
    names = preds.get("class_names")  # a list, or an array read back from predictions.npz
    names = [str(c) for c in names] if names is not None and len(names) == k else [
        f"class {i + 1}" for i in range(k)]
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
    header = []
    for c in cols:
        header += [c, f"{c}_name"] if c in CSV_CLASS_COLUMNS else [c]
    header += [f"prob_t1_{i + 1}" for i in range(k)] + [f"prob_t2_{i + 1}" for i in range(k)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    data = {c: (np.arange(n) if c == "index" else preds[c]) for c in cols}
    for i in range(n):
        row = []
        for c in cols:
            v = data[c][i]
            if c in CSV_CLASS_COLUMNS:
                row += [int(v) + 1, names[int(v)]]
            elif isinstance(v, np.bool_ | bool):
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
    out = {k: np.asarray(v) for k, v in preds.items() if k != "class_names"}
    out["class_names"] = np.asarray(preds["class_names"], dtype=str)
    return out


def map_problem(metrics, preds) -> str | None:
    """Why the tiles' row/col cannot be drawn as maps (a grid far too large: row/col that are map
    coordinates rather than tile grid indices), else None. Prefixed with the split directory."""
    if "row" not in preds:
        return None
    problem = plots.grid_problem(preds["row"], preds["col"])
    if problem is None:
        return None
    return f"{metrics.get('split_dir') or 'predictions'}: {problem}"


def figure_names(metrics, preds) -> list[str]:
    """Names of the PNGs ``write_figures`` writes for these results."""
    maps = "row" in preds and map_problem(metrics, preds) is None
    fusion = (FUSION_FILE,) if "fusion_weight" in preds and "dist" in preds else ()
    return [*FIGURE_FILES, *(MAP_FILES if maps else ()), *fusion]


def write_figures(out_dir, metrics, preds, colors=None, background=None, **save) -> list[Path]:
    """The PNGs of one split: confusion matrices, transitions, PR curve, and maps when row/col exist.

    ``colors``: {class name: colour} for the class maps; ``background``: the date-2 tile mosaic
    drawn under the change maps (``evaluation.plots.tile_mosaic``); ``save``: ``dpi`` and ``formats`` (png,
    pdf, svg) of ``evaluation.plots``. Row/col spanning a grid of more than ``evaluation.plots.MAX_GRID_CELLS`` cells (map coordinates
    rather than tile grid indices) skip the maps with a warning; everything else is written.
    """
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
            **save,
        ),
        plots.plot_confusion_matrix(
            metrics["confusion_t2"],
            names,
            out_dir / "confusion_t2.png",
            title=f"t2{tag}: OA {metrics['OA_t2']:.3f}",
            **save,
        ),
        plots.plot_transition_matrices(
            metrics["transition_true"],
            metrics["transition_pred"],
            names,
            out_dir / "transitions.png",
            title=f"From → to transitions{tag}",
            **save,
        ),
        plots.plot_pr_curve(
            preds["changed_true"],
            preds["p_change"],
            out_dir / "pr_curve.png",
            threshold=metrics["threshold"],
            argmax_point=(metrics["change_recall"], metrics["change_precision"]),
            title=f"Change detection{tag}",
            **save,
        ),
    ]
    if "fusion_weight" in preds and "dist" in preds:
        paths.append(plots.plot_fusion_weights(preds["fusion_weight"], preds["dist"],
                                               preds["changed_true"], out_dir / FUSION_FILE,
                                               title=f"CorrFusion fusion weight{tag}"))
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
                colors=colors,
                **save,
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
                background=background,
                **save,
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
                background=background,
                **save,
            )
        )
    return paths


def geotiff_names(metrics, preds, geo) -> list[str]:
    """The GeoTIFFs (and their legend) ``write_geotiffs`` writes: the shards carry a CRS and a tile
    grid transform, and their row/col can be drawn as maps."""
    if not geo or not geo.get("crs") or geo.get("transform") is None:
        return []
    if "row" not in preds or map_problem(metrics, preds) is not None:
        return []
    return [*map_files.MAP_FILES, "from_to.json"]


def write_geotiffs(out_dir, metrics, preds, geo) -> list[Path]:
    """class_t1.tif, class_t2.tif, p_change.tif, change.tif (argmax t1 ≠ argmax t2), from_to.tif
    and from_to.json of one split, one cell per tile on the shards' grid (``geo``: the split's
    ``SplitSummary.geo``: crs WKT, transform); nothing without a CRS and transform."""
    if not geotiff_names(metrics, preds, geo):
        return []
    return map_files.write_grid_maps(
        out_dir, geo["crs"], geo["transform"], preds["row"], preds["col"], preds["prob_t1"],
        preds["prob_t2"], metrics["class_names"])


def write_outputs(out_dir, metrics, preds, class_names=None, overwrite=False, info=None,
                  geo=None) -> Path:
    """Write one split's results into out_dir.

    Files: ``results.json`` ({"info", "metrics"}), ``metrics.txt`` (the table), ``per_class.csv``,
    ``predictions.npz`` / ``.mat`` / ``.csv``, the PNGs of ``write_figures``, and with ``geo`` (the
    split's georeferencing, ``SplitSummary.geo``) the GeoTIFFs of ``write_geotiffs``.

    Args:
        out_dir: result directory (created); an existing non-empty one needs ``overwrite``.
        metrics, preds: from ``evaluate_split``.
        class_names: unused beyond a consistency check (the names travel in metrics); kept so
            callers can pass what they have.
        overwrite: replace files in an existing non-empty directory.
        info: extra JSON-able facts for results.json (checkpoint, split directory, ...).
        geo: ``{"crs", "transform", ...}`` of georeferenced shards, or None.
    """
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
    atomic_write_npz(out_dir / "predictions.npz", arrays)
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
    write_geotiffs(out_dir, metrics, preds, geo)
    log.info("results written to %s", out_dir)
    return out_dir


def write_summary(out_dir, results: dict, info: dict) -> None:
    """The eval run's top level: results.json {"info", "splits": {split: metrics}}, metrics.txt,
    per_class.csv with a split column."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "results.json", {"info": info, "splits": results})
    atomic_write_bytes(out_dir / "metrics.txt", (format_table(results) + "\n").encode())
    atomic_write_bytes(out_dir / "per_class.csv", per_class_csv(results).encode())




def write_bovw_outputs(out_dir, metrics, preds, info) -> Path:
    """A BoVW baseline's results (``evaluation.baselines.run_bovw``) as the same files as a CNN's."""
    names = metrics.get("class_names") or [f"class {i + 1}" for i in
                                           range(preds["prob_t1"].shape[1])]
    metrics = {**metrics, "class_names": names, "threshold": metrics.get("threshold", 0.5)}
    extra = {key: preds[key] for key in ("row", "col", "intensity") if key in preds}
    full = make_predictions(preds["label_t1"], preds["label_t2"], preds["prob_t1"],
                            preds["prob_t2"], metrics["threshold"], names, extra,
                            p_change=preds["p_change"])
    return write_outputs(out_dir, metrics, full, overwrite=True, info=info)


# -------------------------------------------------------------------------------------------- eval.py
def eval_splits(config: EvalConfig, saved: dict) -> dict[str, str]:
    """Splits to evaluate: -trn/-val/-tst as given; --data_dir adds its val/ and tst/; with neither,
    the run's own validation and test splits from args.json."""
    given = {"trn": config.trn_dir, "val": config.val_dir, "tst": config.tst_dir}
    if config.data_dir and not Path(config.data_dir).is_dir():
        raise UsageError(f"{config.data_dir}: --data_dir: no such directory")
    dirs = resolve_split_dirs(config.data_dir, given, fill=("val", "tst"), optional=("val", "tst"))
    splits = {s: d for s, d in dirs.items() if d}
    if config.data_dir and not splits:
        raise UsageError(f"{config.data_dir}: --data_dir: expected val/ or tst/ split directories")
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


def evaluate_checkpoint(config: EvalConfig, command=None) -> dict:
    """eval.py: evaluate a checkpoint (or a run's best) on its splits and write every file.

    Cheap checks first, before TensorFlow starts (the result directory, the archive, every split's
    format in full and its fit with the checkpoint); then every split is predicted; then written.
    Returns ``{split: metrics}``.
    """
    select_devices(config.gpu)  # before TensorFlow starts
    if is_url(config.model):  # downloaded (once) after the cheap checks; results in ./NAME_eval
        check_download(config.model, config.sha256)
        splits = eval_splits(config, {})
        out_dir = Path(config.result_path or f"{url_stem(config.model)}_eval")
        check_writable_dir(out_dir, config.overwrite, "result directory")
        ckpt, run_root = download_checkpoint(config.model, config.sha256), None
    elif config.sha256:
        raise UsageError(f"--sha256: given with -m {config.model}; it checks a download (-m URL)")
    else:
        ckpt, run_root = resolve_checkpoint(config.model)
    saved = run_args(run_root)
    splits = eval_splits(config, saved)
    out_dir = Path(config.result_path) if config.result_path else (
        Path(f"{url_stem(config.model)}_eval") if is_url(config.model)
        else default_result_dir(ckpt, run_root))
    size = config.image_size or saved.get("args", {}).get("image_size")
    image_size = tuple(size) if size else None
    check_writable_dir(out_dir, config.overwrite, "result directory")
    summaries = {s: inspect_split(d) for s, d in splits.items()}
    for split, summary in summaries.items():
        require_labels(summary, split, "evaluation")
    check_checkpoint(ckpt, splits, summaries, image_size)
    check_class_names(summaries, saved.get("class_names"),
                      f"the class names of {ckpt}'s run (args.json)")
    with DirLock(out_dir):  # one writer per result directory, until everything is written
        check_writable_dir(out_dir, config.overwrite, "result directory")  # again, under the lock
        return predict_and_write(config, ckpt, saved, splits, summaries, image_size, out_dir,
                                 command)


def predict_and_write(config, ckpt, saved, splits, summaries, image_size, out_dir, command):
    """evaluate_checkpoint's second half: predict every split, then write every file."""
    device_info = setup_backend(config.mixed_precision)
    net = load_checkpoint(ckpt)
    if config.jit is not None or backend_name() == "jax":  # else the checkpoint's own setting
        net.jit_compile = resolve_jit(config.jit)
    results, preds = {}, {}
    for split, split_dir in splits.items():  # everything computed before anything is written
        results[split], preds[split] = evaluate_split(
            net, split_dir, config.batch_size, config.threshold, saved.get("class_names"),
            image_size, check_values=False,  # checked in full above
        )
    info = {"checkpoint": str(ckpt), "splits": splits, "threshold": config.threshold,
            "batch_size": config.batch_size, "image_size": list(image_size) if image_size else None,
            "devices": device_info, "command": list(sys.argv if command is None else command)}
    for split in splits:
        remove_stale_temp_files(out_dir / split)  # of an eval.py killed while writing here
        write_outputs(out_dir / split, results[split], preds[split], overwrite=True,
                      info={**info, "split": split, "split_dir": splits[split]},
                      geo=summaries[split].geo)
    write_summary(out_dir, results, info)
    sys.stdout.write(f"{ckpt}\n{format_table(results)}\n")
    log.info("results: %s", out_dir)
    return results
