"""compare.py's table: rows methods, columns the paper's figures as mean ± std over runs (the
sample standard deviation, ddof = 1: ``evaluation.metrics.mean_std``).

``summarize`` the runs' test metrics, then ``markdown_table``, ``csv_table`` and ``bar_chart``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from evaluation.metrics import mean_std

#: the table's columns: (key in results.json metrics, header)
COLUMNS = (("OA_t1", "OA_t1"), ("OA_t2", "OA_t2"), ("OA_bi", "OA_bi"), ("OA_tr", "OA_tr"),
           ("change_f1", "change F1"))


def summarize(results: dict) -> list[dict]:
    rows = []
    for method, runs in results.items():
        row = {"method": method, "runs": len(runs)}
        for key, _ in COLUMNS:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(
                r[key] for r in runs if r.get(key) is not None)
        rows.append(row)
    return rows


def _cell(mean, std) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def markdown_table(rows: list[dict]) -> str:
    """Rows methods; columns OA_t1, OA_t2, OA_bi, OA_tr, change F1 in % as mean ± std."""
    head = "| method | runs | " + " | ".join(h for _, h in COLUMNS) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(COLUMNS)]
    for r in rows:
        cells = [_cell(r[f"{k}_mean"], r[f"{k}_std"]) for k, _ in COLUMNS]
        lines.append(f"| {r['method']} | {r['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict]) -> str:
    cols = ["method", "runs"] + [f"{k}_{s}" for k, _ in COLUMNS for s in ("mean", "std")]
    out = [",".join(cols)]
    for r in rows:
        out.append(",".join("" if r[c] is None else (f"{r[c]:.6f}" if isinstance(r[c], float)
                                                       else str(r[c])) for c in cols))
    return "\n".join(out) + "\n"


def bar_chart(rows: list[dict], path: Path) -> None:
    """Grouped bars: one group per metric, one bar per method, error bars = std over runs."""
    fig = Figure(figsize=(3.6 + 1.6 * len(COLUMNS), 4.2), dpi=120)
    ax = fig.add_subplot()
    width = 0.8 / max(len(rows), 1)
    colors = sns.color_palette("colorblind", len(rows))
    x = np.arange(len(COLUMNS))
    for i, (r, color) in enumerate(zip(rows, colors, strict=True)):
        means = [100 * (r[f"{k}_mean"] or 0.0) for k, _ in COLUMNS]
        stds = [100 * (r[f"{k}_std"] or 0.0) for k, _ in COLUMNS]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=f"{r['method']} (n={r['runs']})", color=color)
    ax.set_xticks(x, [h for _, h in COLUMNS])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Method comparison (mean ± std over runs)")
    fig.tight_layout()
    fig.savefig(path)
