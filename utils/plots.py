"""Evaluation figures (PNG): confusion and transition matrices, PR curve, change maps, training curves.

Every function draws on its own ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), writes
one PNG and returns its path. Class names label the axes. Inputs are the dicts and arrays of
``utils.metrics.compute_metrics`` and of ``utils.evaluation.evaluate_split`` predictions.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import average_precision_score, precision_recall_curve

__all__ = [
    "plot_confusion_matrix",
    "plot_transition_matrices",
    "plot_pr_curve",
    "grid_from_rowcol",
    "grid_problem",
    "MAX_GRID_CELLS",
    "plot_class_maps",
    "plot_change_map",
    "read_history",
    "plot_history",
    "CHANGE_COLORS",
]

DPI = 110

#: Colours of the change map: true/false positives/negatives (positive = changed).
CHANGE_COLORS = {
    "TN (unchanged, correct)": "#e8e8e8",
    "TP (change found)": "#1a9850",
    "FP (false alarm)": "#fdae61",
    "FN (change missed)": "#d73027",
}
_NO_DATA = "#ffffff"


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _matrix_size(k: int) -> tuple[float, float]:
    side = min(max(4.0, 0.55 * k + 2.5), 16.0)
    return side + 1.5, side


def _short(names, width=20):
    return [n if len(n) <= width else n[: width - 1] + "…" for n in map(str, names)]


def plot_confusion_matrix(cm, class_names, path, title="Confusion matrix", normalize=True) -> Path:
    """Heat map of a K×K confusion matrix, rows = true, columns = predicted.

    With ``normalize`` each row is divided by its total (recall on the diagonal; rows with no sample
    stay 0) and the colour scale is [0, 1]; cells are annotated when K ≤ 20.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    names = _short(class_names)
    if normalize:
        totals = cm.sum(axis=1, keepdims=True)
        data = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
        fmt, vmax = ".2f", 1.0
    else:
        data, fmt, vmax = cm, ".0f", None
    fig = Figure(figsize=_matrix_size(k), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(
        data,
        ax=ax,
        annot=k <= 20,
        fmt=fmt,
        cmap="Blues",
        vmin=0.0,
        vmax=vmax,
        square=True,
        xticklabels=names,
        yticklabels=names,
        cbar_kws={"shrink": 0.8, "label": "fraction of true class" if normalize else "pairs"},
        annot_kws={"fontsize": 8},
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title} (n = {int(cm.sum())})")
    ax.tick_params(axis="x", labelrotation=90)
    ax.tick_params(axis="y", labelrotation=0)
    return _save(fig, path)


def plot_transition_matrices(
    true_matrix, pred_matrix, class_names, path, title="From → to transitions"
) -> Path:
    """True and predicted from (t1, rows) → to (t2, columns) pair counts side by side, log colour scale."""
    mats = [np.asarray(true_matrix, dtype=np.float64), np.asarray(pred_matrix, dtype=np.float64)]
    k = mats[0].shape[0]
    names = _short(class_names)
    vmax = max(1.0, max(m.max() for m in mats))
    w, h = _matrix_size(k)
    fig = Figure(figsize=(2 * w, h), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, m, sub in zip(axes, mats, ("true", "predicted"), strict=True):
        sns.heatmap(
            np.where(m > 0, m, np.nan),
            ax=ax,
            annot=m if k <= 20 else False,
            fmt=".0f",
            cmap="viridis",
            norm=LogNorm(vmin=1.0, vmax=vmax),
            square=True,
            xticklabels=names,
            yticklabels=names,
            cbar_kws={"shrink": 0.8, "label": "pairs (log scale)"},
            annot_kws={"fontsize": 8},
            linewidths=0.3,
            linecolor="#dddddd",
        )
        ax.set_facecolor("#f7f7f7")
        ax.set_xlabel("class at t2 (to)")
        ax.set_ylabel("class at t1 (from)")
        ax.set_title(f"{sub}: {int(m.sum() - np.trace(m))} changed of {int(m.sum())}")
        ax.tick_params(axis="x", labelrotation=90)
        ax.tick_params(axis="y", labelrotation=0)
    fig.suptitle(title)
    return _save(fig, path)


def plot_pr_curve(
    changed_true, p_change, path, threshold=0.5, argmax_point=None, title="Change detection"
) -> Path:
    """Precision–recall curve of p_change against the true change (positive = changed).

    Marks the operating point of ``p_change ≥ threshold`` and, when given, ``argmax_point`` =
    (recall, precision) of the argmax rule. With a single true class the curve is undefined and the
    figure says so.
    """
    t = np.asarray(changed_true, dtype=bool)
    s = np.asarray(p_change, dtype=np.float64)
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    if t.all() or not t.any():
        ax.text(
            0.5,
            0.5,
            f"PR curve undefined:\n{'every' if t.all() else 'no'} pair changed (n = {t.size})",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    else:
        precision, recall, _ = precision_recall_curve(t, s)
        ap = average_precision_score(t, s)
        ax.step(recall, precision, where="post", color="#2166ac", label=f"p_change (AP = {ap:.3f})")
        ax.axhline(t.mean(), color="#999999", ls=":", label=f"chance (changed rate {t.mean():.3f})")
        pred = s >= threshold
        tp = int((pred & t).sum())
        p_thr = tp / pred.sum() if pred.any() else 0.0
        ax.plot([tp / t.sum()], [p_thr], "o", color="#d6604d", label=f"p_change ≥ {threshold:g}")
        if argmax_point is not None:
            ax.plot(
                [argmax_point[0]],
                [argmax_point[1]],
                "s",
                color="#1b7837",
                label="argmax t1 ≠ argmax t2",
            )
        ax.legend(loc="lower left", fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (changed)")
    ax.set_ylabel("precision (changed)")
    ax.set_title(f"{title}: precision–recall of p_change")
    ax.grid(alpha=0.3)
    return _save(fig, path)


#: Largest (row, col) grid the tile maps are drawn on (2048 x 2048 cells; a few hundred MB to draw).
MAX_GRID_CELLS = 2048 * 2048


def plot_fusion_weights(fusion_weight, dist, changed, path, title="CorrFusion fusion weight") -> Path:
    """Histograms of the fusion weight w = 1 − tanh(dist) and of dist, unchanged vs changed pairs.

    The module is meant to give w near 1 for unchanged and near 0 for changed pairs; each panel
    says the group means, so a weight near 0 everywhere (no fusion at all) is read off at once.
    """
    w = np.asarray(fusion_weight, dtype=np.float64).ravel()
    d = np.asarray(dist, dtype=np.float64).ravel()
    c = np.asarray(changed, dtype=bool).ravel()
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, values, name, lo_hi in ((axes[0], w, "fusion weight w = 1 − tanh(dist)", (0.0, 1.0)),
                                    (axes[1], d, "dist", None)):
        finite = values[np.isfinite(values)]
        lo, hi = lo_hi or ((finite.min(), finite.max()) if finite.size else (0.0, 1.0))
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        for mask, label, color in ((~c, "unchanged", "#2166ac"), (c, "changed", "#d6604d")):
            if mask.any():
                ax.hist(values[mask], bins=bins, density=True, alpha=0.55, color=color,
                        label=f"{label} (n = {int(mask.sum())}, mean {values[mask].mean():.3g})")
        ax.set_xlabel(name)
        ax.set_ylabel("density")
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def grid_problem(row, col, max_cells=MAX_GRID_CELLS) -> str | None:
    """Why the tiles' (row, col) cannot be drawn as a map, or None when they can.

    The map is the grid spanned by the tiles (max - min + 1 cells per axis); a grid over
    ``max_cells`` is refused, with a hint when it is mostly empty (row/col that are map coordinates,
    e.g. metres, rather than tile grid indices).
    """
    row = np.asarray(row)
    col = np.asarray(col)
    if row.size == 0:
        return None
    r0, r1, c0, c1 = int(row.min()), int(row.max()), int(col.min()), int(col.max())
    h, w = r1 - r0 + 1, c1 - c0 + 1  # Python ints: no overflow
    if h * w <= max_cells:
        return None
    msg = (
        f"row/col: the {row.size} tiles span a {h} x {w} grid (row {r0}..{r1}, col {c0}..{c1}), "
        f"more than {max_cells} cells"
    )
    if h * w > 16 * row.size:
        msg += (
            "; row/col must be tile grid indices (0, 1, 2, ... one step per tile), "
            "not map coordinates such as metres"
        )
    return msg


def grid_from_rowcol(row, col, values, fill=-1, max_cells=MAX_GRID_CELLS):
    """Scatter per-pair values onto the (row, col) grid spanned by the tiles; empty cells = fill.

    Returns (grid, (row0, col0)) with grid[r - row0, c - col0] = value; a later pair at the same
    position overwrites an earlier one. A grid of more than ``max_cells`` cells raises ValueError
    (see ``grid_problem``) instead of allocating it.
    """
    row = np.asarray(row, dtype=np.int64)
    col = np.asarray(col, dtype=np.int64)
    values = np.asarray(values)
    if not (row.shape == col.shape == values.shape[:1]) or row.ndim != 1:
        raise ValueError(
            f"row, col, values: expected equal lengths, got {row.shape}, {col.shape}, {values.shape}"
        )
    problem = grid_problem(row, col, max_cells)
    if problem:
        raise ValueError(problem)
    r0, c0 = int(row.min()), int(col.min())
    grid = np.full((int(row.max()) - r0 + 1, int(col.max()) - c0 + 1), fill, dtype=np.int64)
    grid[row - r0, col - c0] = values
    return grid, (r0, c0)


def _class_colors(k):
    base = sns.color_palette("tab20", 20) if k > 10 else sns.color_palette("tab10", 10)
    return [base[i % len(base)] for i in range(k)]


def _map_axes(ax, grid, colors, title, origin):
    cmap = ListedColormap([_NO_DATA, *colors])
    ax.imshow(grid + 1, cmap=cmap, vmin=0, vmax=len(colors), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"col (from {origin[1]})", fontsize=8)
    ax.set_ylabel(f"row (from {origin[0]})", fontsize=8)
    ax.tick_params(labelsize=7)


def plot_class_maps(
    row, col, y1, y2, pred1, pred2, class_names, path, title="Scene classes"
) -> Path:
    """Class map per date, true (top) and predicted (bottom), one colour per class with a legend."""
    k = len(class_names)
    colors = _class_colors(k)
    panels = [(y1, "true t1"), (y2, "true t2"), (pred1, "predicted t1"), (pred2, "predicted t2")]
    grids = [grid_from_rowcol(row, col, v) for v, _ in panels]
    h, w = grids[0][0].shape
    scale = 4.0 / max(h, w)
    fig = Figure(
        figsize=(2 * max(2.5, w * scale) + 1.5, 2 * max(2.5, h * scale) + 0.8), layout="constrained"
    )
    axes = fig.subplots(2, 2)
    for ax, (grid, origin), (_, sub) in zip(axes.ravel(), grids, panels, strict=True):
        _map_axes(ax, grid, colors, sub, origin)
    present = sorted(set(np.concatenate([np.asarray(v).ravel() for v, _ in panels]).tolist()))
    handles = [
        Patch(facecolor=colors[i], edgecolor="#666666", label=str(class_names[i])) for i in present
    ]
    handles.append(Patch(facecolor=_NO_DATA, edgecolor="#666666", label="no tile"))
    fig.legend(handles=handles, loc="outside right center", fontsize=8, title="class")
    fig.suptitle(title)
    return _save(fig, path)


def plot_change_map(row, col, changed_true, changed_pred, path, title="Change detection") -> Path:
    """True / false changes per tile: TN grey, TP green, FP orange, FN red, with a legend and counts."""
    t = np.asarray(changed_true, dtype=bool)
    p = np.asarray(changed_pred, dtype=bool)
    code = np.where(t, np.where(p, 1, 3), np.where(p, 2, 0))  # 0 TN, 1 TP, 2 FP, 3 FN
    grid, origin = grid_from_rowcol(row, col, code)
    h, w = grid.shape
    scale = 5.0 / max(h, w)
    fig = Figure(
        figsize=(max(3.0, w * scale) + 3.0, max(3.0, h * scale) + 0.6), layout="constrained"
    )
    ax = fig.subplots()
    colors = list(CHANGE_COLORS.values())
    _map_axes(ax, grid, colors, title, origin)
    counts = np.bincount(code, minlength=4)
    handles = [
        Patch(facecolor=c, edgecolor="#666666", label=f"{name}: {n}")
        for (name, c), n in zip(CHANGE_COLORS.items(), counts, strict=True)
    ]
    handles.append(Patch(facecolor=_NO_DATA, edgecolor="#666666", label="no tile"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    return _save(fig, path)


def read_history(path) -> dict[str, np.ndarray]:
    """Columns of a CSVLogger-style history file as float arrays (non-numbers become NaN)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise ValueError(f"{path}: history: expected a CSV header row, got an empty file")
        rows = list(reader)
    out = {}
    for name in reader.fieldnames:
        vals = []
        for r in rows:
            try:
                vals.append(float(r.get(name) or "nan"))
            except ValueError:
                vals.append(math.nan)
        out[name] = np.asarray(vals, dtype=np.float64)
    return out


_SPLIT_PREFIXES = ("val_", "tst_", "test_")


def plot_history(history, path, title="Training curves", max_panels=12) -> Path:
    """One panel per metric (train solid, ``val_``/``tst_`` dashed) from a history CSV path or dict.

    Whatever columns exist are drawn; ``epoch`` (or the row index) is the x axis; the learning rate
    column (``lr``/``learning_rate``) gets its own log-scale panel.
    """
    if not isinstance(history, dict):
        history = read_history(history)
    n = max((len(v) for v in history.values()), default=0)
    x = history.get("epoch", np.arange(n, dtype=np.float64))
    if "epoch" in history and np.all(np.isfinite(x)) and x.size and x.min() == 0:
        x = x + 1  # Keras' CSVLogger counts from 0
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name, vals in history.items():
        if name == "epoch" or not np.any(np.isfinite(vals)):
            continue
        split, base = "train", name
        for pre in _SPLIT_PREFIXES:
            if name.startswith(pre):
                split, base = pre.rstrip("_").replace("test", "tst"), name[len(pre) :]
                break
        groups.setdefault(base, {})[split] = vals
    # loss first, then accuracies, then the rest in file order
    order = sorted(
        groups, key=lambda b: (b != "loss", not b.startswith("oa"), list(groups).index(b))
    )
    order = order[:max_panels]
    cols = min(4, max(1, len(order)))
    rows = max(1, math.ceil(len(order) / cols))
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    styles = {"train": ("-", "#2166ac"), "val": ("--", "#d6604d"), "tst": (":", "#1b7837")}
    for ax, base in zip(axes, order, strict=False):
        for split in sorted(
            groups[base], key=lambda s: (list(styles).index(s) if s in styles else 9, s)
        ):
            vals = groups[base][split]
            ls, c = styles.get(split, ("-.", "#666666"))
            ax.plot(
                x[: len(vals)], vals, ls=ls, color=c, marker="." if n < 30 else None, label=split
            )
        if (
            base in ("lr", "learning_rate")
            and np.nanmin(np.concatenate(list(groups[base].values()))) > 0
        ):
            ax.set_yscale("log")
        ax.set_title(base, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(order) :]:
        ax.set_visible(False)
    if not order:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no numeric columns in the history", ha="center", va="center")
    fig.suptitle(title)
    return _save(fig, path)
