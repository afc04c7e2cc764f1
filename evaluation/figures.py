"""Regenerate the figures the repository shows (figures/, the README and docs/).

    python -m evaluation.figures --overwrite                      # the two diagrams only (no run needed)
    python -m evaluation.figures --run runs/demo-... --overwrite  # + curves, matrices, PR curve, maps

The diagrams (network, CorrFusion module; docs/DESIGN.md §2, §2.1) are drawn by the project with
matplotlib boxes and arrows. With ``--run`` the run's ``history.csv`` gives the training curves and
its evaluation result directory (``results/eval/tst``, else ``results/tst``, else the first result
directory under ``results/`` holding ``results.json`` and ``predictions.npz``; or ``--result DIR``)
gives the confusion matrices, the transition matrices, the PR curve and the change maps.
Every input is read and checked before the first figure is drawn; a PNG of the same name already in
``--out`` (figures/ holds the committed ones) is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import zipfile
from pathlib import Path

import numpy as np
from matplotlib.colors import is_color_like

from data.shards import ShardError, defined_mask, list_shards, load_arrays, scale_factor
from evaluation import plots
from evaluation.diagrams import draw_corrfusion, draw_network
from evaluation.evaluate import figure_names, write_figures
from model.config import ModelConfig
from utils.cli import HelpFormatter, UsageError, configure_logging, run_main
from utils.rundir import RunDirError, check_can_create_dir, run_args

log = logging.getLogger("corrfusion.figures")

DIAGRAMS = ("network.png", "corrfusion_module.png")
RUN_FIGURES = (
    "training_curves.png",
    "confusion_t1.png",
    "confusion_t2.png",
    "transitions.png",
    "pr_curve.png",
    "class_maps.png",
    "change_map.png",
    "change_map_threshold.png",
)


# ------------------------------------------------------------------------------------- run figures
def find_result_dir(run: Path) -> Path | None:
    """The run's evaluation result directory holding results.json and predictions.npz."""
    for cand in (
        run / "results" / "eval" / "tst",
        run / "results" / "tst",
        run / "results" / "eval",
    ):
        if (cand / "results.json").is_file() and (cand / "predictions.npz").is_file():
            return cand
    found = sorted(
        p.parent
        for p in run.glob("results/**/predictions.npz")
        if (p.parent / "results.json").is_file()
    )
    return found[0] if found else None


#: results.json metrics and predictions.npz arrays that write_figures draws from
_METRIC_KEYS = (
    "class_names",
    "OA_t1",
    "OA_t2",
    "confusion_t1",
    "confusion_t2",
    "transition_true",
    "transition_pred",
    "threshold",
    "change_recall",
    "change_precision",
)
_PRED_KEYS = ("changed_true", "p_change")
_MAP_KEYS = (
    "row",
    "col",
    "label_t1",
    "label_t2",
    "pred_t1",
    "pred_t2",
    "changed_pred",
    "changed_pred_threshold",
)


def load_result_dir(result_dir) -> tuple[dict, dict]:
    """(metrics, predictions) from a directory written by evaluation.evaluate.write_outputs.

    Raises UsageError (one line naming the file) when results.json or predictions.npz is missing,
    unreadable, or lacks what the figures are drawn from.
    """


    result_dir = Path(result_dir)
    if not (result_dir / "predictions.npz").exists():
        splits = sorted(d.name for d in result_dir.iterdir() if d.is_dir()
                        and (d / "results.json").is_file() and (d / "predictions.npz").is_file())
        if splits:  # eval.py's top-level result directory: one sub-directory per split
            raise UsageError(
                f"{result_dir}: holds the results of {len(splits)} split(s) "
                f"({', '.join(splits)}), one per sub-directory; pass one, e.g. "
                f"--result {result_dir / splits[-1]}")
    path = result_dir / "results.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: missing; expected eval.py's results.json") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    metrics = doc.get("metrics", doc) if isinstance(doc, dict) else None
    missing = (
        [k for k in _METRIC_KEYS if k not in metrics] if isinstance(metrics, dict) else ["metrics"]
    )
    if missing:
        raise UsageError(f"{path}: {', '.join(missing)}: missing; expected eval.py's results.json")
    path = result_dir / "predictions.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            preds = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UsageError(f"{path}: missing; expected eval.py's predictions.npz") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    missing = [k for k in (*_PRED_KEYS, *(_MAP_KEYS if "row" in preds else ())) if k not in preds]
    if missing:
        raise UsageError(
            f"{path}: {', '.join(missing)}: missing; expected eval.py's predictions.npz"
        )
    preds["class_names"] = [str(c) for c in preds.get("class_names", metrics["class_names"])]
    return metrics, preds


def read_run(run, result_dir=None) -> dict:
    """Everything the run figures are drawn from, read and checked before anything is drawn.

    Returns {"history": dict or None, "result_dir": Path or None, "metrics", "preds"}.
    """
    run = Path(run)
    out = {"history": None, "result_dir": None, "metrics": None, "preds": None}
    history = run / "history.csv"
    if history.is_file():
        try:
            out["history"] = plots.read_history(history)
        except (OSError, ValueError, csv.Error) as e:
            raise UsageError(f"{history}: unreadable ({type(e).__name__}: {e})") from None
    else:
        log.warning("%s: no history.csv, no training curves", run)
    result_dir = Path(result_dir) if result_dir else find_result_dir(run)
    if result_dir is None:
        log.warning("%s: no evaluation result directory (results.json + predictions.npz)", run)
        return out
    out["result_dir"] = result_dir
    out["metrics"], out["preds"] = load_result_dir(result_dir)
    return out


def run_figure_names(data: dict) -> list[str]:
    """Names of the PNGs draw_run writes from read_run's data."""
    names = ["training_curves.png"] if data["history"] is not None else []
    if data["result_dir"] is not None:
        names += figure_names(data["metrics"], data["preds"])
    return names


def date2_mosaic(metrics, preds, cell=16) -> np.ndarray:
    """The date-2 tiles of the evaluated split (``results.json``'s ``split_dir``) on their row/col
    grid (``evaluation.plots.tile_mosaic``), in the order of the predictions; UsageError when the
    shards are not there or do not match the predictions."""

    split_dir = metrics.get("split_dir")
    if not split_dir or not Path(split_dir).is_dir():
        raise UsageError(f"{split_dir or 'results.json'}: --overlay: the evaluated split's shards "
                         "are needed for the date-2 image; expected the directory results.json "
                         "names (split_dir)")
    if "row" not in preds:
        raise UsageError(f"{split_dir}: --overlay: the predictions have no row/col; expected "
                         "shards with a tile grid")
    tiles = []
    try:
        for path in list_shards(split_dir):
            a = load_arrays(path, ("image_t2", "label_t1", "label_t2"))
            img = a["image_t2"][defined_mask(a["label_t1"], a["label_t2"])]
            step = max(1, img.shape[1] // cell)
            small = img[:, ::step, ::step][:, :cell, :cell]
            tiles.append(small.astype(np.float32) * np.float32(scale_factor(small.dtype)))
    except ShardError as e:
        raise UsageError(f"--overlay: {e}") from None
    tiles = np.concatenate(tiles) if tiles else np.zeros((0, cell, cell, 3), np.float32)
    if len(tiles) != len(preds["row"]):
        raise UsageError(f"{split_dir}: --overlay: {len(tiles)} labelled pairs in the shards, "
                         f"{len(preds['row'])} in the predictions; expected the evaluated split")
    return plots.tile_mosaic(preds["row"], preds["col"], tiles, cell)


def draw_run(run, out, data, colors=None, background=None, **save) -> list[Path]:
    """Training curves and evaluation figures of a run into out/, from read_run's ``data``
    (``colors``: {class name: colour}; ``save``: dpi and formats)."""
    run, out = Path(run), Path(out)
    written = []
    if data["history"] is not None:
        written.append(
            plots.plot_history(
                data["history"], out / "training_curves.png", title=f"Training curves ({run.name})",
                **save,
            )
        )
    if data["result_dir"] is None:
        return written

    written += write_figures(out, data["metrics"], data["preds"], colors=colors,
                             background=background, **save)
    if "row" not in data["preds"]:
        log.warning("%s: predictions have no row/col, no change maps", data["result_dir"])
    return written


# -------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.figures",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    src = p.add_argument_group("sources")
    src.add_argument(
        "--run",
        default=None,
        help="run directory with history.csv and an evaluation result directory "
        "(omit: diagrams only)",
    )
    src.add_argument(
        "--result",
        default=None,
        help="evaluation result directory (results.json + predictions.npz); default: found in RUN",
    )
    out = p.add_argument_group("output")
    out.add_argument("--out", default="figures", help="directory the figures are written to")
    out.add_argument("--format", dest="formats", type=formats_list, default="png",
                     help="comma-separated file formats of every figure, from "
                          f"{','.join(FORMATS)} (pdf and svg are vector)")
    out.add_argument("--dpi", type=positive_int, default=300, help="resolution of PNGs")
    out.add_argument("--colors", type=color_map, default="",
                     help="class colours, NAME=COLOUR,... (e.g. water=#1f78b4,urban=grey); "
                          "other classes: by their names (water blue, forest green, ...), else "
                          "a fixed palette by class id")
    out.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=False,
                     help="draw the change maps over the date-2 tiles (read from the evaluated "
                          "split's shards)")
    net = p.add_argument_group("diagrams")
    net.add_argument("--hidden", type=positive_int, default=None,
                     help=f"d drawn in the diagrams (default: RUN's args.json, else "
                          f"{ModelConfig.hidden})")
    net.add_argument("--reduction", type=positive_int, default=None,
                     help=f"r drawn in the diagrams (default: RUN's args.json, else "
                          f"{ModelConfig.reduction})")
    out.add_argument(
        "--diagrams",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw the network and CorrFusion diagrams (--no-diagrams: skip them)",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace PNGs of the same names already in OUT (without it they are refused)",
    )
    return p


FORMATS = ("png", "pdf", "svg")


def formats_list(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip().lower().lstrip(".") for v in value.split(",")
                                if v.strip()))
    bad = [n for n in names if n not in FORMATS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected formats from {','.join(FORMATS)}, got {value!r}")
    return names


def positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        v = 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return v


def color_map(value: str) -> dict:
    """``NAME=COLOUR,...`` -> {name: colour}; a colour matplotlib does not know is a usage error."""

    out = {}
    for item in (v for v in value.split(",") if v.strip()):
        name, sep, color = item.partition("=")
        if not sep or not name.strip() or not is_color_like(color.strip()):
            raise argparse.ArgumentTypeError(
                f"expected NAME=COLOUR pairs (a matplotlib colour: #1f78b4, tab:blue, grey), "
                f"got {item!r}")
        out[name.strip()] = color.strip()
    return out


def diagram_settings(args) -> dict:
    """d, r, pooling, λ1, λ2 of the diagrams: the flags, else the run's args.json, else the
    defaults (``model.config.ModelConfig``)."""

    saved = run_args(Path(args.run)).get("args", {}) if args.run else {}
    out = {}
    for key in ("hidden", "reduction", "pooling", "lambda1", "lambda2"):
        given = getattr(args, key, None)
        out[key] = given if given is not None else saved.get(key, getattr(ModelConfig, key))
    return out


def main(argv=None) -> int:

    args = build_parser().parse_args(argv)
    configure_logging()
    if args.run and not Path(args.run).is_dir():
        raise UsageError(f"{args.run}: --run: no such run directory")
    if args.result and not Path(args.result).is_dir():
        raise UsageError(
            f"{args.result}: --result: expected a directory with results.json and predictions.npz"
        )
    # every input read and checked, and the output checked, before the first figure is drawn
    source = args.run or args.result
    data = read_run(source, args.result) if source else None
    background = None
    if args.overlay:
        if not data or data["result_dir"] is None:
            raise UsageError("--overlay: needs --run or --result with an evaluation result")
        background = date2_mosaic(data["metrics"], data["preds"])
    out = Path(args.out)
    check_can_create_dir(out)
    pngs = [*(DIAGRAMS if args.diagrams else ()), *(run_figure_names(data) if data else ())]
    names = [str(Path(n).with_suffix("." + fmt)) for n in pngs for fmt in args.formats]
    existing = [n for n in names if (out / n).exists() or (out / n).is_symlink()]
    odd = [n for n in existing if not (out / n).is_file()]
    if odd:
        raise RunDirError(
            f"{out / odd[0]}: exists and is not a file; move it or choose another --out"
        )
    if existing and not args.overwrite:
        shown = ", ".join(existing[:3]) + (
            f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        )
        verb = "exists" if len(existing) == 1 else "exist"
        raise RunDirError(f"{out}: {shown} already {verb}; pass --overwrite to replace")
    save = {"dpi": args.dpi, "formats": args.formats}
    written = []
    if args.diagrams:
        d = diagram_settings(args)
        written += [
            draw_network(out / DIAGRAMS[0], d["hidden"], d["reduction"], d["pooling"], **save),
            draw_corrfusion(out / DIAGRAMS[1], d["hidden"], d["reduction"], d["lambda1"],
                            d["lambda2"], **save),
        ]
    if data:
        written += draw_run(source, out, data, colors=args.colors, background=background, **save)
    for p in written:
        log.info("wrote %s%s", p, f" (and as {', '.join(args.formats[1:])})" if len(args.formats) > 1 else "")
    return 0


if __name__ == "__main__":

    sys.exit(run_main(main))
