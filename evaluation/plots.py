"""Evaluation figures (PNG): confusion and transition matrices, PR curve, change maps, training curves.

Every function draws on its own ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), writes
one PNG and returns its path. Class names label the axes. Inputs are the dicts and arrays of
``evaluation.metrics.compute_metrics`` and of ``evaluation.evaluate.evaluate_split`` predictions.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, LogNorm, to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator
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

#: Colours of the change map: true/false positives/negatives (positive = changed), from the
#: Okabe-Ito palette (told apart with every common colour-vision deficiency); the correct-unchanged
#: grey is well darker than the white of "no tile".
CHANGE_COLORS = {
    "TN (unchanged, correct)": "#bdbdbd",
    "TP (change found)": "#0072b2",
    "FP (false alarm)": "#e69f00",
    "FN (change missed)": "#cc79a7",
}
_NO_DATA = "#ffffff"

#: colours of class names that say what they are (the first matching keyword wins; lower case,
#: underscores as spaces); other classes take ``_FALLBACK`` colours by their class id
CLASS_NAME_COLORS = (
    (("water", "river", "lake", "sea", "pond", "reservoir", "ocean"), "#1f78b4"),
    (("forest", "woodland", "tree", "vegetation", "wood"), "#1b7837"),
    (("grass", "meadow", "pasture", "park", "golf"), "#7fbc41"),
    (("farm", "crop", "agri", "cultivat", "field", "paddy"), "#e6c229"),
    (("bare", "soil", "sand", "desert", "barren", "beach"), "#a6761d"),
    (("industr", "factory", "commercial", "storage"), "#6a3d9a"),
    (("dense residential", "residential", "building", "urban", "built", "settlement",
      "house"), "#d6604d"),
    (("road", "parking", "railway", "overpass", "highway", "airport", "runway"), "#525252"),
    (("snow", "ice", "cloud"), "#a6cee3"),
)
_FALLBACK = sns.color_palette("tab20", 20).as_hex()


def class_colors(class_names, overrides=None) -> list[str]:
    """One colour per class: a fixed colour for names that say what they are (water blue, forest
    green, farmland yellow, bare soil brown, ...; ``CLASS_NAME_COLORS``), the tab20 colour of its
    class id otherwise, so a class keeps its colour from figure to figure; ``overrides``
    ({name: colour}) win. Names given the same colour by their keywords stay apart: the second one
    takes its fallback colour."""
    overrides = dict(overrides or {})
    out, used = [], set()
    for i, name in enumerate(class_names):
        if name in overrides:
            color = overrides[name]
        else:
            text = str(name).lower().replace("_", " ")
            color = next((c for words, c in CLASS_NAME_COLORS if any(w in text for w in words)),
                         None)
            if color is None or color in used:
                color = _FALLBACK[i % len(_FALLBACK)]
        used.add(color)
        out.append(color)
    return out


def _save(fig: Figure, path, dpi: int = DPI, formats=("png",)) -> Path:
    """Write the figure to ``path`` (PNG) and next to it in the other ``formats`` (``pdf``,
    ``svg``: vector), or as PNG into a binary file object (TensorBoard's images). Returns the
    path of the first format."""
    if hasattr(path, "write"):
        fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = [path.with_suffix("." + fmt) for fmt in formats]
    # text stays text in SVG/PDF (editable, searchable), TrueType fonts embedded in PDF
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        for p, fmt in zip(paths, formats, strict=True):
            fig.savefig(p, format=fmt, dpi=dpi, bbox_inches="tight", facecolor="white")
    return paths[0]


def _matrix_size(k: int) -> tuple[float, float]:
    side = min(max(4.0, 0.55 * k + 2.5), 16.0)
    return side + 1.5, side


#: up to this many classes a matrix figure names every class on its axes; above, every n-th
#: (a label per class would cost a text measure each: minutes and gigabytes at K = 1000)
MAX_TICK_LABELS = 40
#: up to this many classes each matrix cell shows its count
MAX_ANNOTATED = 20


def _heatmap_figure(figsize, k: int) -> Figure:
    """A figure for seaborn's heat maps of K classes. Seaborn measures every tick label to see
    whether they overlap, and a figure without a canvas makes a new renderer of the whole figure
    for each measure: at K = 1000 that was 23 of the 42 s and most of the 3.9 GiB its results took.
    Above ``MAX_ANNOTATED`` classes the figure gets an Agg canvas, which keeps one renderer; at
    fewer it is slower (measured: ~1.2 against ~0.9 s for both matrices at K = 6; text laid out
    again at the savefig's resolution), so small figures stay as they were."""
    fig = Figure(figsize=figsize, layout="constrained")
    if k > MAX_ANNOTATED:
        FigureCanvasAgg(fig)
    return fig


def _ticks(names):
    """Seaborn's tick labels: every name, or every n-th class (ticks at most ``MAX_TICK_LABELS``)."""
    k = len(names)
    return names if k <= MAX_TICK_LABELS else -(-k // MAX_TICK_LABELS)


def _short(names, width=20):
    """Class names as shown: underscores as spaces, at most ``width`` characters."""
    names = [str(n).replace("_", " ") for n in names]
    return [n if len(n) <= width else n[: width - 1] + "…" for n in names]


def plot_confusion_matrix(cm, class_names, path, title="Confusion matrix", normalize=True,
                          **save) -> Path:
    """Heat map of a K×K confusion matrix, rows = true, columns = predicted.

    With ``normalize`` the colour is the row fraction (recall on the diagonal; rows with no sample
    stay 0, scale [0, 1]) and each cell (K ≤ 20) shows its count and row per cent; without it the
    colour and the annotation are the counts.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    names = _short(class_names)
    if normalize:
        totals = cm.sum(axis=1, keepdims=True)
        data = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
        fmt, vmax = "", 1.0
        annot = np.array([[f"{int(c)}\n{100 * f:.0f}%" if c else "0" for c, f in zip(rc, rf, strict=True)]
                          for rc, rf in zip(cm, data, strict=True)]) if k <= MAX_ANNOTATED else False
    else:
        data, fmt, vmax = cm, ".0f", None
        annot = True
    fig = _heatmap_figure(_matrix_size(k), k)
    ax = fig.subplots()
    sns.heatmap(
        data,
        ax=ax,
        annot=annot if k <= MAX_ANNOTATED else False,
        fmt=fmt,
        cmap="Blues",
        vmin=0.0,
        vmax=vmax,
        square=True,
        xticklabels=_ticks(names),
        yticklabels=_ticks(names),
        cbar_kws={"shrink": 0.8, "label": "share of the true class (row)" if normalize else "pairs"},
        annot_kws={"fontsize": 7 if k > 10 else 8},
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title} (n = {int(cm.sum())}; cells: pairs and row %)" if normalize
                 else f"{title} (n = {int(cm.sum())})")
    ax.tick_params(axis="x", labelrotation=90)
    ax.tick_params(axis="y", labelrotation=0)
    return _save(fig, path, **save)


def plot_transition_matrices(
    true_matrix, pred_matrix, class_names, path, title="From → to transitions", **save
) -> Path:
    """True and predicted from (t1, rows) → to (t2, columns) pair counts side by side, log colour scale."""
    mats = [np.asarray(true_matrix, dtype=np.float64), np.asarray(pred_matrix, dtype=np.float64)]
    k = mats[0].shape[0]
    names = _short(class_names)
    vmax = max(1.0, max(m.max() for m in mats))
    w, h = _matrix_size(k)
    fig = _heatmap_figure((2 * w, h), k)
    axes = fig.subplots(1, 2)
    for ax, m, sub in zip(axes, mats, ("true", "predicted"), strict=True):
        sns.heatmap(
            np.where(m > 0, m, np.nan),
            ax=ax,
            annot=m if k <= MAX_ANNOTATED else False,
            fmt=".0f",
            cmap="viridis",
            norm=LogNorm(vmin=1.0, vmax=vmax),
            square=True,
            xticklabels=_ticks(names),
            yticklabels=_ticks(names),
            cbar_kws={"shrink": 0.8, "label": "pairs (log scale)"},
            annot_kws={"fontsize": 8},
            linewidths=0.3 if k <= MAX_TICK_LABELS else 0,
            linecolor="#dddddd",
        )
        ax.set_facecolor("#f7f7f7")
        cbar = ax.collections[0].colorbar
        if cbar is not None:  # plain pair counts on the log scale, not 6×10^0
            cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            cbar.ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("class at t2 (to)")
        ax.set_ylabel("class at t1 (from)")
        ax.set_title(f"{sub}: {int(m.sum() - np.trace(m))} changed of {int(m.sum())}")
        ax.tick_params(axis="x", labelrotation=90)
        ax.tick_params(axis="y", labelrotation=0)
    fig.suptitle(title)
    return _save(fig, path, **save)


def plot_pr_curve(
    changed_true, p_change, path, threshold=0.5, argmax_point=None, title="Change detection",
    **save
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
    return _save(fig, path, **save)


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


def _map_axes(ax, grid, colors, title, origin):
    """A tile map on the tiles' own row/col indices (integer ticks)."""
    cmap = ListedColormap([_NO_DATA, *colors])
    h, w = grid.shape
    r0, c0 = origin
    ax.imshow(grid + 1, cmap=cmap, vmin=-0.5, vmax=len(colors) + 0.5, interpolation="nearest",
              extent=(c0 - 0.5, c0 + w - 0.5, r0 + h - 0.5, r0 - 0.5))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("tile column", fontsize=8)
    ax.set_ylabel("tile row", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)


def plot_class_maps(
    row, col, y1, y2, pred1, pred2, class_names, path, title="Scene classes", colors=None, **save
) -> Path:
    """Class map per date, true (top) and predicted (bottom), one colour per class with a legend
    (``class_colors``; ``colors``: {class name: colour} overrides)."""
    colors = class_colors(class_names, colors)
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
        Patch(facecolor=colors[i], edgecolor="#666666", label=name)
        for i, name in zip(present, _short([class_names[i] for i in present], 30), strict=True)
    ]
    handles.append(Patch(facecolor=_NO_DATA, edgecolor="#666666", label="no tile"))
    fig.legend(handles=handles, loc="outside right center", fontsize=8, title="class")
    fig.suptitle(title)
    return _save(fig, path, **save)


def plot_change_map(row, col, changed_true, changed_pred, path, title="Change detection",
                    background=None, **save) -> Path:
    """True / false changes per tile (``CHANGE_COLORS``: TN grey, TP blue, FP orange, FN purple),
    with a legend and counts. ``background``: an RGB image in [0, 1] of the tile grid (the date-2
    tiles, ``tile_mosaic``) drawn under the map; correct-unchanged tiles then stay clear and the
    others are tinted."""
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
    if background is not None:
        extent = (origin[1] - 0.5, origin[1] + w - 0.5, origin[0] + h - 0.5, origin[0] - 0.5)
        ax.images[0].remove()
        ax.imshow(np.clip(background, 0, 1), extent=extent, interpolation="nearest")
        rgba = np.zeros((h, w, 4))
        for code_value, c in enumerate(colors):
            if code_value:  # TN stays clear: the image shows through
                rgba[grid == code_value] = to_rgba(c, 0.6)
        ax.imshow(rgba, extent=extent, interpolation="nearest")
        for (r, c), code_value in np.ndenumerate(grid):  # and outlined, to find them
            if code_value > 0:
                ax.add_patch(Rectangle((origin[1] + c - 0.5, origin[0] + r - 0.5), 1, 1,
                                       fill=False, edgecolor=colors[code_value], linewidth=1.5))
    counts = np.bincount(code, minlength=4)
    handles = [
        Patch(facecolor=c, edgecolor="#666666", label=f"{name}: {n}")
        for (name, c), n in zip(CHANGE_COLORS.items(), counts, strict=True)
    ]
    handles.append(Patch(facecolor=_NO_DATA, edgecolor="#666666", label="no tile"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    return _save(fig, path, **save)


def tile_mosaic(row, col, tiles, cell=16) -> np.ndarray:
    """The tiles ((N, H, W, C) in [0, 1]) placed on their (row, col) grid as one RGB image of
    ``cell`` pixels per tile (strided down-sampling; one channel is shown grey, more than three:
    the first three); cells without a tile are white."""
    tiles = np.asarray(tiles, dtype=np.float32)
    if tiles.shape[-1] == 1:
        tiles = np.repeat(tiles, 3, axis=-1)
    tiles = tiles[..., :3]
    step = max(1, tiles.shape[1] // cell)
    small = tiles[:, ::step, ::step][:, :cell, :cell]
    ch, cw = small.shape[1:3]
    grid, (r0, c0) = grid_from_rowcol(row, col, np.arange(len(tiles)))
    out = np.ones((grid.shape[0] * ch, grid.shape[1] * cw, 3), np.float32)
    for (r, c), i in np.ndenumerate(grid):
        if i >= 0:
            out[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = small[i]
    return out


def read_history(path) -> dict[str, np.ndarray]:
    """Columns of a CSVLogger-style history file as float arrays (non-numbers become NaN).

    A row with more or fewer fields than the header (cut by a full disk or a kill, or another row
    appended onto a cut one) is a ValueError naming its line: its values would land in the wrong
    columns."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise ValueError(f"{path}: history: expected a CSV header row, got an empty file")
        rows = list(reader)
    for i, r in enumerate(rows):
        if None in r or any(v is None for v in r.values()):
            n = len(reader.fieldnames) + len(r.get(None, [])) - sum(v is None for v in r.values())
            raise ValueError(f"line {i + 2}: {n} fields, expected "
                             f"{len(reader.fieldnames)} (a cut or merged row)")
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


#: column prefix -> run name (TensorBoard's); ``trn_`` columns are the whole training split of
#: ``--eval_trn`` in inference mode
_SPLIT_PREFIXES = {"val_": "val", "tst_": "tst", "test_": "tst", "trn_": "trn (full)"}

#: readable panel titles of the logged figures; accuracies (``oa_*``) are drawn in per cent
CURVE_TITLES = {
    "loss": "total loss", "ce_t1": "cross-entropy t1", "ce_t2": "cross-entropy t2",
    "corr_loss": "correlation loss", "decov_loss": "decorrelation loss", "dcca_loss": "DCCA loss",
    "l2": "L2 penalty", "oa_t1": "OA t1", "oa_t2": "OA t2", "oa_bi": "OA changed/unchanged",
    "oa_tr": "OA both dates (transition)", "cancorr": "canonical correlation",
    "learning_rate": "learning rate", "lr": "learning rate",
}


def _curve_title(base: str) -> str:
    return CURVE_TITLES.get(base, base.replace("_", " "))


def history_groups(history: dict) -> dict[str, dict[str, np.ndarray]]:
    """{figure: {run: values}} of a history: ``val_oa_t1`` is ``oa_t1`` of run ``val``; every
    column with a number in it is kept (``trn_*``: run ``trn (full)``)."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name, vals in history.items():
        if name == "epoch" or not np.any(np.isfinite(vals)):
            continue
        split, base = "trn", name
        for pre, run in _SPLIT_PREFIXES.items():
            if name.startswith(pre):
                split, base = run, name[len(pre) :]
                break
        groups.setdefault(base, {})[split] = vals
    return groups


def plot_history(history, path, title="Training curves", **save) -> Path:
    """One panel per logged figure, every run in it (trn solid, val dashed, tst dotted, the whole
    training split of ``--eval_trn`` dash-dot) from a history CSV path or dict; one legend.

    Every column is drawn (none dropped); ``epoch`` (or the row index) is the x axis; accuracies
    are in per cent; the learning rate gets a log scale.
    """
    if not isinstance(history, dict):
        history = read_history(history)
    n = max((len(v) for v in history.values()), default=0)
    x = history.get("epoch", np.arange(n, dtype=np.float64))
    if "epoch" in history and np.all(np.isfinite(x)) and x.size and x.min() == 0:
        x = x + 1  # Keras' CSVLogger counts from 0
    groups = history_groups(history)
    # loss first, then accuracies, then the rest in file order
    order = sorted(
        groups, key=lambda b: (b != "loss", not b.startswith("oa"), list(groups).index(b))
    )
    cols = min(4, max(1, len(order)))
    rows = max(1, math.ceil(len(order) / cols))
    fig = Figure(figsize=(3.8 * cols, 2.9 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    styles = {"trn": ("-", "#0072b2"), "val": ("--", "#d55e00"), "tst": (":", "#009e73"),
              "trn (full)": ("-.", "#cc79a7")}
    handles = {}
    for ax, base in zip(axes, order, strict=False):
        pct = base.startswith("oa")
        for split in sorted(
            groups[base], key=lambda s: (list(styles).index(s) if s in styles else 9, s)
        ):
            vals = groups[base][split] * (100.0 if pct else 1.0)
            ls, c = styles.get(split, ("-.", "#666666"))
            (line,) = ax.plot(
                x[: len(vals)], vals, ls=ls, color=c, marker="." if n < 30 else None, label=split
            )
            handles.setdefault(split, line)
        if (
            base in ("lr", "learning_rate")
            and np.nanmin(np.concatenate(list(groups[base].values()))) > 0
        ):
            ax.set_yscale("log")
        ax.set_title(_curve_title(base), fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        if pct:
            ax.set_ylabel("%", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(order) :]:
        ax.set_visible(False)
    if not order:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no numeric columns in the history", ha="center", va="center")
    if handles:
        fig.legend(handles=list(handles.values()), labels=list(handles), loc="outside lower center",
                   ncols=len(handles), fontsize=9)
    fig.suptitle(title)
    return _save(fig, path, **save)
