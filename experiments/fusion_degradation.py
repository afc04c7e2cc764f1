"""Does fusion help? A controlled experiment: the second date degraded with a growing strength.

    python experiments/fusion_degradation.py                       # the run of docs/experiments.md (small, CPU)
    python experiments/fusion_degradation.py --backbone vgg16 --out runs/fusion_vgg16 --epochs 30

For each degradation strength s in ``--levels``, ``data.synthetic`` makes the same clean pairs
(``--pairs``, ``--size``, ``--classes``, ``--change_rate``, ``--data_seed``) and degrades date 2
of every pair with haze s, cloud cover s/2 and extra noise 0.04·s (``--degrade`` picks the date;
the clean scenes are the same at every strength, only the degradation differs). Date 1 is the
control: its accuracy should not move with s. The mechanism of CorrFusion predicts that, for an
unchanged pair, the degraded date's prediction borrows the clean date's features, so OA_t2 should
fall less with s for corrfusion than for the baseline.

Then ``compare.py`` runs every method of ``--methods`` ``--seeds`` times on every level, in two
settings: ``project`` (this project's model defaults) and ``original`` (``--preset original``,
except the backbone, which ``--backbone`` overrides, and the epochs and batch size); both get
``--train_args`` (default: Adam 1e-3, hidden 256, as the demo: the original's SGD 1e-3 needs about
100 epochs, out of a CPU budget; pass ``--train_args ""`` to keep each setting's own optimiser).

Resumable: the data of a level are generated once (OUT/data/), and each compare.py work directory
(OUT/runs/SETTING/sS/) continues where it stopped; seeds are added one at a time over all settings
and levels, so an interrupted experiment has balanced partial results. Outputs in OUT: results.csv
(one row per run), results.json (the same, plus the settings), table.md (mean ± std over seeds),
fusion_degradation.png (OA_t1, OA_t2 and change F1 against s, mean ± std, one line per method, one
row of panels per setting). OUT/data and OUT/runs are large and not meant for version control.

This is an accuracy experiment, not a speed or memory measurement, so it lives in experiments/
rather than benchmarks/ (whose scripts feed benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("fusion_degradation")

SETTINGS = {"project": [], "original": ["--preset", "original"]}
METRICS = (("OA_t1", "OA_t1"), ("OA_t2", "OA_t2"), ("change_f1", "change F1"))


def degradation(s: float, date: str) -> dict:
    """Strength s -> ``data.synthetic.generate``'s degradation: haze s, cloud cover s/2, noise 0.04 s."""
    return {"date": date, "haze": s, "cloud_cover": s / 2, "noise": 0.04 * s, "blur": 0.0}


def floats(value: str) -> list[float]:
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None
    if not out or any(not 0 <= v <= 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected strengths in [0, 1], got {value!r}")
    return out


def names(choices):
    def parse(value: str) -> list[str]:
        out = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in out if v not in choices]
        if not out or bad:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}, got {value!r}")
        return out
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "experiments" / "fusion_degradation"),
                   help="experiment folder (data, runs, results, figure)")
    d = p.add_argument_group("data")
    d.add_argument("--levels", type=floats, default=[0.0, 0.8],
                   help="degradation strengths s in [0, 1]")
    d.add_argument("--degrade", choices=("t1", "t2", "both", "either"), default="t2")
    d.add_argument("--pairs", type=int, default=800)
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--classes", type=int, default=6)
    d.add_argument("--change_rate", type=float, default=0.05)
    d.add_argument("--data_seed", type=int, default=0)
    r = p.add_argument_group("runs")
    r.add_argument("--methods", type=names(("baseline", "corrfusion", "sdcca", "dcca")),
                   default=["baseline", "corrfusion", "sdcca", "dcca"])
    r.add_argument("--settings", type=names(tuple(SETTINGS)), default=list(SETTINGS))
    r.add_argument("--seeds", type=int, default=3, help="runs per method (seeds 0..N-1)")
    r.add_argument("--backbone", default="small")
    r.add_argument("--epochs", type=int, default=5)
    r.add_argument("--batch_size", type=int, default=16)
    r.add_argument("--train_args", default="--hidden 256 --optimizer adam --lr 1e-3 -tb false",
                   help="more train_cnn.py options for every run (one string)")
    r.add_argument("--report_only", action="store_true",
                   help="only collect the finished runs into the results, table and figure")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ steps
def level_name(s: float) -> str:
    return f"s{s:g}"


def ensure_data(args, s: float) -> Path:
    """The shards of strength s, generated once (atomically: a temp dir, then a rename)."""
    from data import synthetic

    target = Path(args.out) / "data" / level_name(s)
    if (target / "tst").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gen-"))
    try:
        synthetic.generate(tmp / "d", args.pairs, args.size, args.classes, args.change_rate,
                           args.data_seed, degradation=degradation(s, args.degrade))
        (tmp / "d").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("data of s=%g: %s", s, target)
    return target


def workdir(args, setting: str, s: float) -> Path:
    return Path(args.out) / "runs" / setting / level_name(s)


def compare_argv(args, setting: str, data_dir, s: float, runs: int) -> list[str]:
    """compare.py's arguments for one setting and level (an explicit --backbone wins over the
    preset's)."""
    forward = ["-e", str(args.epochs), "-b", str(args.batch_size), *SETTINGS[setting],
               *shlex.split(args.train_args)]
    return ["--data_dir", str(data_dir), "--methods", ",".join(args.methods),
            "--backbone", args.backbone, "--runs", str(runs),
            "--workdir", str(workdir(args, setting, s)), "--", *forward]


def run_compare(args, setting: str, s: float, runs: int) -> None:
    cmd = [sys.executable, str(ROOT / "compare.py"),
           *compare_argv(args, setting, ensure_data(args, s), s, runs)]
    log.info("%s s=%g seeds<%d: %s", setting, s, runs, shlex.join(cmd[1:]))
    t0 = time.time()
    with open(workdir(args, setting, s).parent / f"compare_{level_name(s)}.log", "a") as fh:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    log.info("%s s=%g: exit %d after %.0f s", setting, s, rc, time.time() - t0)
    if rc == 2:
        raise SystemExit(f"error: compare.py refused the command (see {fh.name})")


def collect(args) -> list[dict]:
    rows = []
    for setting in args.settings:
        for s in args.levels:
            for method in args.methods:
                for k in range(args.seeds):
                    f = workdir(args, setting, s) / method / str(k) / "results" / "tst" / "results.json"
                    if not f.is_file():
                        continue
                    m = json.loads(f.read_text())["metrics"]
                    rows.append({"setting": setting, "strength": s, "method": method, "seed": k,
                                 **{key: m.get(key) for key, _ in METRICS},
                                 **fusion_means(f.parent / "predictions.npz")})
    return rows


FUSION = ("w_unchanged", "w_changed", "dist_unchanged", "dist_changed")


def fusion_means(npz: Path) -> dict:
    """Mean fusion weight w and dist of the unchanged and the changed test pairs (corrfusion)."""
    import numpy as np

    out = dict.fromkeys(FUSION)
    if not npz.is_file():
        return out
    with np.load(npz) as z:
        if "fusion_weight" not in z.files:
            return out
        changed = z["changed_true"].astype(bool)
        for key, name in (("fusion_weight", "w"), ("dist", "dist")):
            for group, mask in (("unchanged", ~changed), ("changed", changed)):
                out[f"{name}_{group}"] = float(z[key][mask].mean()) if mask.any() else None
    return out


def summarize(rows: list[dict]) -> list[dict]:

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["setting"], r["strength"], r["method"]), []).append(r)
    out = []
    for (setting, s, method), rs in groups.items():
        row = {"setting": setting, "strength": s, "method": method, "runs": len(rs)}
        row.update(mean_std_row(rs, [k for k, _ in METRICS] + list(FUSION)))
        out.append(row)
    return out


def mean_std_row(runs: list[dict], keys) -> dict:
    """``{KEY_mean, KEY_std}`` of each key over the runs (None values left out; the sample std,
    ``evaluation.metrics.mean_std``): one row of a results summary (also experiments/ablation.py's)."""
    from evaluation.metrics import mean_std

    row = {}
    for key in keys:
        row[key + "_mean"], row[key + "_std"] = mean_std(r[key] for r in runs if r[key] is not None)
    return row


def mean_std_cell(r: dict, key: str, scale=100, fmt="{:.1f}") -> str:
    """``KEY_mean ± KEY_std`` of a summary row as a table cell (× scale; "—" without a value)."""
    m, sd = r[key + "_mean"], r[key + "_std"]
    if m is None:
        return "—"
    return fmt.format(scale * m) + ("" if sd is None else " ± " + fmt.format(scale * sd))


def table(summary: list[dict]) -> str:
    cell = mean_std_cell
    lines = ["| setting | s | method | runs | OA_t1 (%) | OA_t2 (%) | change F1 (%) | w unchanged "
             "| w changed | dist unchanged | dist changed |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        lines.append(f"| {r['setting']} | {r['strength']:g} | {r['method']} | {r['runs']} | "
                     + " | ".join([cell(r, k) for k, _ in METRICS]
                                  + [cell(r, k, 1, "{:.3f}") for k in FUSION[:2]]
                                  + [cell(r, k, 1, "{:.2f}") for k in FUSION[2:]])
                     + " |")
    return "\n".join(lines) + "\n"


def figure(args, summary: list[dict], path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    settings = [s for s in args.settings if any(r["setting"] == s for r in summary)] or args.settings
    fig = Figure(figsize=(12, 3.4 * len(settings)), dpi=110, layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(settings), len(METRICS), sharex=True, squeeze=False))
    for i, setting in enumerate(settings):
        for j, (key, title) in enumerate(METRICS):
            ax = axes[i, j]
            span = (max(args.levels) - min(args.levels)) or 1.0
            for i_m, method in enumerate(args.methods):
                rs = sorted((r for r in summary if r["setting"] == setting and r["method"] == method
                             and r[key + "_mean"] is not None), key=lambda r: r["strength"])
                if not rs:
                    continue
                # a small sideways offset per method, so that equal values stay visible
                x = np.array([r["strength"] for r in rs]) + 0.012 * span * (i_m - 1.5)
                m = 100 * np.array([r[key + "_mean"] for r in rs])
                sd = 100 * np.array([r[key + "_std"] or 0.0 for r in rs])
                (line,) = ax.plot(x, m, marker="osD^v<>"[i_m % 7], ls=("-", "--", "-.", ":")[i_m % 4],
                                  label=method)
                ax.fill_between(x, m - sd, m + sd, color=line.get_color(), alpha=0.15)
            ax.set_title(f"{title} ({setting})")
            ax.set_xlabel(f"degradation strength s of {args.degrade}")
            ax.set_ylabel(f"{title} (%)")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="best", fontsize=8)
    fig.suptitle(f"{args.backbone} backbone, {args.pairs} pairs of {args.size} px, "
                 f"{args.change_rate:.0%} changed; mean ± std over seeds")
    fig.savefig(path)


def report(args) -> None:
    out = Path(args.out)
    rows = collect(args)
    summary = summarize(rows)
    with open(out / "results.csv", "w", newline="") as fh:
        cols = ["setting", "strength", "method", "seed", *[k for k, _ in METRICS], *FUSION]
        writer = csv.DictWriter(fh, cols)
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(json.dumps(
        {"arguments": {k: v for k, v in vars(args).items() if k != "report_only"},
         "runs": rows, "summary": summary}, indent=1))
    (out / "table.md").write_text(table(summary))
    figure(args, summary, out / "fusion_degradation.png")
    log.info("%d runs: %s (results.csv, results.json, table.md)", len(rows),
             out / "fusion_degradation.png")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        t0 = time.time()
        for runs in range(1, args.seeds + 1):  # one seed more over everything, then the next
            for setting in args.settings:
                for s in args.levels:
                    workdir(args, setting, s).parent.mkdir(parents=True, exist_ok=True)
                    run_compare(args, setting, s, runs)
            report(args)
        log.info("all runs done in %.1f min", (time.time() - t0) / 60)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
