"""The two diagrams the repository shows (figures/network.png, figures/corrfusion_module.png; docs/DESIGN.md
§2, §2.1), drawn with matplotlib boxes and arrows: :func:`draw_network`, :func:`draw_corrfusion`
(``python -m evaluation.figures`` draws them)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from evaluation import plots

_C = {
    "input": "#f0f0f0",
    "backbone": "#c6dbef",
    "fc": "#9ecae1",
    "fusion": "#fdd0a2",
    "head": "#c7e9c0",
    "loss": "#fcbba1",
    "metric": "#dadaeb",
    "op": "#ffffff",
}


# ----------------------------------------------------------------------------------------- drawing
def _box(
    ax, x, y, w, h, text, color, fontsize=9, style="round,pad=0.02,rounding_size=0.08", ls="-"
):
    """A labelled box centred at (x, y); returns its anchor points."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle=style,
            facecolor=color,
            edgecolor="#333333",
            linewidth=1.0,
            linestyle=ls,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
    return {
        "l": (x - w / 2, y),
        "r": (x + w / 2, y),
        "t": (x, y + h / 2),
        "b": (x, y - h / 2),
        "c": (x, y),
    }


def _arrow(ax, p, q, color="#333333", ls="-", text=None, rad=0.0, fontsize=8, lw=1.1):
    ax.add_patch(
        FancyArrowPatch(
            p,
            q,
            arrowstyle="-|>",
            mutation_scale=11,
            color=color,
            linestyle=ls,
            linewidth=lw,
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=1,
            shrinkB=1,
        )
    )
    if text:
        ax.text(
            (p[0] + q[0]) / 2,
            (p[1] + q[1]) / 2 + 0.12,
            text,
            ha="center",
            va="bottom",
            fontsize=fontsize,
            color=color,
        )


def _canvas(width, height, xlim, ylim):
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def draw_network(path, hidden=1024, reduction=2, pooling="avg", **save) -> Path:
    """The two-branch network of docs/DESIGN.md §2 with the CorrFusion module between FC features
    and heads; ``hidden`` (d), ``reduction`` (r) and ``pooling`` as the run used them."""
    fig, ax = _canvas(15, 5.2, (-0.3, 21.3), (-0.9, 6.6))
    ys = {"t1": 4.6, "t2": 1.4}
    out = {}
    for date, y in ys.items():
        i = "1" if date == "t1" else "2"
        a = _box(ax, 0.8, y, 1.4, 0.9, f"x{i}\nimage {date}\nH×W×C", _C["input"])
        b = _box(
            ax,
            3.2,
            y,
            2.2,
            0.9,
            "backbone\n(VGG16 / … / small)\ninclude_top=False",
            _C["backbone"],
            8,
        )
        g = _box(ax, 5.3, y, 1.1, 0.9, "GAP" if pooling == "avg" else "flatten", _C["fc"])
        f1 = _box(ax, 7.1, y, 1.6, 0.9, f"FC {hidden}\nReLU, L2", _C["fc"])
        f2 = _box(ax, 9.1, y, 1.6, 0.9, f"FC {hidden}\nReLU, L2", _C["fc"])
        for p, q in ((a, b), (b, g), (g, f1), (f1, f2)):
            _arrow(ax, p["r"], q["l"])
        out[date] = f2
    ax.annotate(
        "",
        xy=(3.2, ys["t2"] + 0.5),
        xytext=(3.2, ys["t1"] - 0.5),
        arrowprops={"arrowstyle": "<->", "ls": "--", "color": "#666666"},
    )
    ax.text(
        3.35, 3.0, "shared weights\n(siamese, default)", fontsize=8, color="#555555", va="center"
    )
    cf = _box(
        ax,
        12.2,
        3.0,
        2.2,
        4.0,
        f"CorrFusion (r = {reduction})\n\nsqueeze → BN\n→ excite\n\nw = 1 − tanh(dist)\n\nX_φ = X + w⊙Y_re\nY_φ = Y + w⊙X_re",
        _C["fusion"],
        9,
    )
    _arrow(ax, out["t1"]["r"], (cf["l"][0], ys["t1"]), text="X")
    _arrow(ax, out["t2"]["r"], (cf["l"][0], ys["t2"]), text="Y")
    heads = {}
    for date, y in ys.items():
        h = _box(ax, 15.4, y, 1.9, 0.9, f"head {date}\nX·W (no bias)\nsoftmax", _C["head"], 8)
        _arrow(ax, (cf["r"][0], y), h["l"], text="X_φ" if date == "t1" else "Y_φ")
        p = _box(
            ax, 17.6, y, 1.2, 0.8, f"p{'1' if date == 't1' else '2'}\n(K classes)", _C["input"], 8
        )
        _arrow(ax, h["r"], p["l"])
        heads[date] = p
    pc = _box(
        ax, 19.9, 3.0, 2.2, 1.3, "p_change =\n1 − Σ_k p1_k·p2_k\n(change score)", _C["metric"], 8
    )
    _arrow(ax, heads["t1"]["r"], pc["t"], rad=-0.3)
    _arrow(ax, heads["t2"]["r"], pc["b"], rad=0.3)
    loss = _box(ax, 15.4, 6.05, 5.6, 0.7, "loss = CE_t1 + CE_t2 + L_corr + L_decov + L2",
                _C["loss"], 9)
    _arrow(ax, heads["t1"]["t"], (heads["t1"]["t"][0], loss["b"][1]), color="#a50f15", ls="--",
           text=None)
    lb = _box(
        ax,
        12.2,
        -0.45,
        4.8,
        0.6,
        "L_corr (unchanged pairs), L_decov (SDL); cancorr logged",
        _C["loss"],
        8,
    )
    _arrow(ax, cf["b"], lb["t"], color="#a50f15", ls="--")
    _arrow(ax, lb["r"], (loss["b"][0] + 2.6, loss["b"][1]), color="#a50f15", ls="--", rad=0.35)
    ax.text(
        0.0,
        6.3,
        f"CorrFusionNet (docs/DESIGN.md §2; d = {hidden}, r = {reduction}): scene class per date "
        "+ change",
        fontsize=11,
        weight="bold",
        va="center",
    )
    return plots._save(fig, path, **save)


def draw_corrfusion(path, hidden=1024, reduction=2, lambda1=0.1, lambda2=1e-4, **save) -> Path:
    """The CorrFusion module of docs/DESIGN.md §2.1: squeeze, BN, excite, distance, fusion weight,
    cross fusion; with the run's d (``hidden``), r, λ1 and λ2."""
    squeezed = max(1, hidden // reduction)
    fig, ax = _canvas(15, 5.8, (-0.3, 22.3), (-0.9, 7.4))
    ys = {"X": 5.2, "Y": 0.8}
    nodes = {}
    for v, y in ys.items():
        i = "1" if v == "X" else "2"
        x = _box(ax, 0.8, y, 1.4, 0.9, f"{v}\nn×{hidden}", _C["fc"])
        sq = _box(ax, 3.3, y, 2.4, 0.9, f"squeeze\nReLU({v}·A{i} + a{i})\nn×{squeezed}",
                  _C["fusion"], 8)
        bn = _box(ax, 6.0, y, 1.8, 0.9, f"BN{i}\n{v}_bn", _C["fusion"], 9)
        ex = _box(ax, 8.8, y, 2.4, 0.9, f"excite\nReLU({v}_bn·B{i} + b{i})\nn×{hidden}",
                  _C["fusion"], 8)
        _arrow(ax, x["r"], sq["l"])
        _arrow(ax, sq["r"], bn["l"])
        _arrow(ax, bn["r"], ex["l"])
        nodes[v] = {"in": x, "bn": bn, "ex": ex}
    dist = _box(ax, 6.0, 3.0, 3.0, 1.0, "dist_i =\nsqrt(Σ_j (X_bn − Y_bn)²_ij + ε)", _C["op"], 8)
    _arrow(ax, nodes["X"]["bn"]["b"], dist["t"])
    _arrow(ax, nodes["Y"]["bn"]["t"], dist["b"])
    w = _box(ax, 10.2, 3.0, 2.4, 1.0, "w_i = 1 − tanh(dist_i)\n(≈1 similar, →0 not)", _C["op"], 8)
    _arrow(ax, dist["r"], w["l"])
    xphi = _box(ax, 17.0, ys["X"], 2.6, 0.9, "X_φ = X + w ⊙ Y_re", _C["head"], 9)
    yphi = _box(ax, 17.0, ys["Y"], 2.6, 0.9, "Y_φ = Y + w ⊙ X_re", _C["head"], 9)
    # cross fusion: each date receives the other date's excitation
    _arrow(ax, nodes["Y"]["ex"]["r"], xphi["l"], color="#b35806", rad=0.1)
    _arrow(ax, nodes["X"]["ex"]["r"], yphi["l"], color="#b35806", rad=-0.1)
    ax.text(10.6, ys["X"] + 0.05, "X_re", color="#b35806", fontsize=9)
    ax.text(10.6, ys["Y"] - 0.35, "Y_re", color="#b35806", fontsize=9)
    _arrow(ax, w["t"], xphi["b"], color="#542788")
    _arrow(ax, w["b"], yphi["t"], color="#542788")
    ax.text(11.6, 3.75, "w", color="#542788", fontsize=9)
    # identity (residual) paths drawn above / below the branches
    for v, phi, dy in (("X", xphi, 1.05), ("Y", yphi, -1.05)):
        start = nodes[v]["in"]["t" if dy > 0 else "b"]
        corner_y = ys[v] + dy
        ax.plot(
            [start[0], start[0], phi["c"][0]],
            [start[1], corner_y, corner_y],
            color="#777777",
            lw=1.0,
            ls="--",
        )
        _arrow(ax, (phi["c"][0], corner_y), phi["t" if dy > 0 else "b"], color="#777777", ls="--")
        ax.text(
            8.8,
            corner_y + (0.12 if dy > 0 else -0.35),
            f"identity {v}",
            fontsize=8,
            color="#777777",
            ha="center",
        )
    lc = _box(
        ax,
        1.7,
        3.0,
        2.8,
        1.5,
        f"L_corr =\nλ1 Σ_i dist_i·u_i / n\nu_i = 1 if unchanged\n(λ1 = {lambda1:g})",
        _C["loss"],
        8,
    )
    _arrow(ax, dist["l"], lc["r"])
    decov = _box(
        ax,
        20.7,
        3.0,
        2.6,
        1.9,
        f"L_decov (SDL, λ2={lambda2:g})\nrunning covariance\nof X_bn, Y_bn (ρ=0.9)\n\n"
        "cancorr of X_bn, Y_bn\n(metric)",
        _C["loss"],
        8,
    )
    # X_bn and Y_bn feed the decorrelation loss and the cancorr metric
    _arrow(ax, (nodes["X"]["bn"]["t"][0] + 0.5, nodes["X"]["bn"]["t"][1]), decov["t"],
           color="#a50f15", ls="--", rad=-0.25)
    _arrow(ax, (nodes["Y"]["bn"]["b"][0] + 0.5, nodes["Y"]["bn"]["b"][1]), decov["b"],
           color="#a50f15", ls="--", rad=0.25)
    ax.text(
        -0.2,
        7.05,
        f"CorrFusion module (docs/DESIGN.md §2.1; d = {hidden}, r = {reduction})",
        fontsize=11,
        weight="bold",
        va="center",
    )
    return plots._save(fig, path, **save)
