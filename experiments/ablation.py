"""Which defaults make CorrFusion fuse? One difference at a time, from this project's setting and
from the original's, on real-like synthetic data, clean and with date 2 degraded.

    python experiments/ablation.py                        # the README's run (small, CPU; ~2 h serially here)
    python experiments/ablation.py --report_only          # rebuild results and table from OUT/runs
    python experiments/ablation.py --backbone vgg16 --size 64 --pairs 2000 --epochs 30 \\
        --out runs/ablation_vgg16                         # for a GPU (not run here)

Data (``data.synthetic.generate``, made once per level under OUT/data/): ``--pairs`` pairs of
``--size`` px, ``--classes`` classes, ``--change_rate`` changed, stored like real imagery:
``--dtype`` (uint16) filling only ``--value_range`` (0–10,000 of 65,535, Sentinel-2 style) with a
radiometric shift between the dates (``--date_shift``: date 2's intensities gain·x + offset).
``--levels``: degradation strengths s of date 2 (``fusion_degradation.degradation``: haze s,
clouds s/2, noise 0.04 s).

Variants (``VARIANTS``): a base setting and the options changed from it. ``project/base`` pins the
project's defaults as they were before this experiment chose new ones (per-band input
standardisation, the paper's Euclidean distance, batch BN in the backbone and the module, average
pooling, Glorot-normal, identity/off-diagonal decorrelation);
every other ``project/...`` variant changes one of them. ``original/base`` is ``--preset original``
(with ``--backbone``, the epochs, batch size and optimiser of this script) and its variants change
one option back to the project's. ``CHOSEN`` names the variant that holds the defaults this
experiment chose.
Every run gets ``--train_args`` (Adam 1e-3, as fusion_degradation.py: the original's SGD 1e-3
needs ~100 epochs; the ``optimizer`` variants use SGD 1e-3 with Nesterov momentum instead).
Each base (and each input-normalisation variant) runs ``corrfusion`` and ``baseline``; the other
variants ``corrfusion``. One variant changes two things: ``project/fusion_distance=rms+fusion_bn=frozen``
(the RMS distance with the module's BN frozen, a candidate for the defaults).

Each (variant, level) is one ``compare.py`` work directory OUT/runs/VARIANT/sS (run in this
process, ``--runs`` = ``--seeds``), so re-running the command continues: finished directories are
skipped, unfinished ones resume. Outputs in OUT: results.csv (one row per run: OA_t1, OA_t2, change
F1, mean w of the unchanged and changed test pairs, ROC-AUC of w for unchanged (positive) against
changed pairs), results.json (the same, the summary and the arguments), table.md (mean ± std
over the seeds, ddof = 1) and differences.md (each variant's corrfusion minus its base's corrfusion,
paired by seed: mean ± std of the differences), defaults.md (docs/experiments.md "Choosing the defaults":
each default against its alternative, alternative − default per seed). OUT/data and OUT/runs are large and not meant for version control.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "experiments"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import fusion_degradation as fd  # noqa: E402  (the degradation, the level names, fusion_means)

log = logging.getLogger("ablation")

#: the project's model defaults before this experiment chose new ones (with issue 23's per-band
#: input standardisation), pinned so that the base does not move with the defaults
PROJECT = {"input_norm": "bands", "fusion_distance": "euclidean", "fusion_bn": "batch", "bn": "batch",
           "pooling": "avg", "fusion_init": "glorot_normal", "decov_init": "identity",
           "decov_penalty": "offdiag", "fusion_views": "paper", "tied_start": "false",
           "change_margin": "0", "view_variance": "0"}
#: the defaults chosen from this experiment (docs/experiments.md "Choosing the defaults"): the base with the RMS
#: distance and per-pair standardised views (its baseline is project/base's: the baseline has no
#: CorrFusion module)
CHOSEN = "project/fusion_distance=rms+fusion_views=pair+view_variance=1"
#: the defaults chosen before (2026-12-04 to 12-06): the same module without the variance term;
#: the options measured against it keep it as their reference
PREVIOUS = "project/fusion_distance=rms+fusion_views=pair"
#: the levels every variant runs at (the defaults table says "not run" where one is missing); other
#: levels (--levels 0.4) are extra checks of a few variants
MAIN_LEVELS = (0.0, 0.8)
SGD = {"optimizer": "sgd", "lr": "1e-3", "momentum": "0.9", "nesterov": True}

#: name -> (base: "project" | "original", options changed from the base)
VARIANTS = {
    "project/base": ("project", {}),
    "project/fusion_distance=rms": ("project", {"fusion_distance": "rms"}),
    "project/fusion_bn=frozen": ("project", {"fusion_bn": "frozen"}),
    "project/fusion_distance=rms+fusion_bn=frozen": ("project", {"fusion_distance": "rms",
                                                                 "fusion_bn": "frozen"}),
    "project/fusion_distance=rms+tied_start": ("project", {"fusion_distance": "rms",
                                                           "tied_start": "true"}),
    "project/fusion_distance=rms+fusion_views=batch+tied_start": (
        "project", {"fusion_distance": "rms", "fusion_views": "batch", "tied_start": "true"}),
    "project/fusion_distance=rms+fusion_views=pair": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair"}),
    "project/fusion_distance=rms+fusion_views=pair+tied_start": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "tied_start": "true"}),
    "project/fusion_distance=rms+fusion_views=pair+tied_start+lambda2=0": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "tied_start": "true",
                    "lambda2": 0.0}),
    "project/fusion_distance=rms+fusion_views=pair+tied_start+change_margin=1.4": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "tied_start": "true",
                    "change_margin": 1.4}),
    "project/fusion_distance=rms+fusion_views=pair+change_margin=1.4+corr_norm=unchanged": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "change_margin": 1.4,
                    "corr_norm": "unchanged"}),
    "project/fusion_distance=rms+fusion_views=pair+view_variance=1": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "view_variance": 1.0}),
    "project/fusion_distance=rms+fusion_views=pair+view_variance=0.3": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "view_variance": 0.3}),
    "project/fusion_distance=rms+fusion_views=pair+view_variance=3": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "view_variance": 3.0}),
    "project/fusion_distance=rms+fusion_views=pair+view_variance=1+change_margin=1.4": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "view_variance": 1.0,
                    "change_margin": 1.4}),
    "project/fusion_distance=rms+fusion_views=pair+view_variance=1+change_margin=1.4+corr_norm=unchanged": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "view_variance": 1.0,
                    "change_margin": 1.4, "corr_norm": "unchanged"}),
    "project/fusion_distance=rms+fusion_views=pair+view_variance=1+tied_start": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "view_variance": 1.0,
                    "tied_start": "true"}),
    "project/bn=frozen": ("project", {"bn": "frozen"}),
    "project/input_norm=dtype": ("project", {"input_norm": "dtype"}),
    "project/input_norm=bands_per_date": ("project", {"input_norm": "bands_per_date"}),
    "project/fusion_distance=rms+fusion_views=pair+input_norm=bands_per_date": (
        "project", {"fusion_distance": "rms", "fusion_views": "pair", "input_norm": "bands_per_date"}),
    "project/pooling=flatten": ("project", {"pooling": "flatten"}),
    "project/fusion_init=glorot_uniform": ("project", {"fusion_init": "glorot_uniform"}),
    "project/decov=original": ("project", {"decov_init": "orthogonal", "decov_penalty": "original"}),
    "project/optimizer=sgd": ("project", SGD),
    "original/base": ("original", {}),
    "original/input_norm=bands": ("original", {"input_norm": "bands"}),
    "original/fusion_bn=batch": ("original", {"fusion_bn": "batch"}),
    "original/bn=batch": ("original", {"bn": "batch"}),
    "original/fusion_distance=rms": ("original", {"fusion_distance": "rms"}),
    "original/pooling=avg": ("original", {"pooling": "avg"}),
    "original/optimizer=sgd": ("original", SGD),
}
#: variants that also run the baseline (the bases, and the input normalisation, which the
#: baseline needs as much as corrfusion)
WITH_BASELINE = ("project/input_norm=dtype", "project/input_norm=bands_per_date",
                 "original/input_norm=bands")
BASE_OPTIONS = {"project": PROJECT, "original": {"preset": "original"}}
METRICS = ("OA_t1", "OA_t2", "change_f1")
FUSION = ("w_unchanged", "w_changed", "w_auc")
COLUMNS = METRICS + FUSION


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "experiments" / "ablation"),
                   help="experiment folder (data, runs, results)")
    d = p.add_argument_group("data")
    d.add_argument("--levels", type=fd.floats, default=list(MAIN_LEVELS),
                   help="degradation strengths of date 2")
    d.add_argument("--pairs", type=int, default=480)
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--classes", type=int, default=6)
    d.add_argument("--change_rate", type=float, default=0.1)
    d.add_argument("--data_seed", type=int, default=0)
    d.add_argument("--dtype", choices=("uint8", "uint16"), default="uint16")
    d.add_argument("--value_range", default="0,10000", help="stored values of intensity 0 and 1")
    d.add_argument("--date_shift", default="0.7,0.05", help="date 2 = gain·x + offset")
    r = p.add_argument_group("runs")
    r.add_argument("--variants", type=fd.names(tuple(VARIANTS)), default=list(VARIANTS),
                   help="variants to run, in this order")
    r.add_argument("--seeds", type=int, default=3, help="runs per method (seeds 0..N-1)")
    r.add_argument("--backbone", default="small")
    r.add_argument("--epochs", type=int, default=6)
    r.add_argument("--batch_size", type=int, default=16)
    r.add_argument("--train_args", default="--optimizer adam --lr 1e-3 -tb false",
                   help="more train_cnn.py options for every run (one string; a variant's own "
                        "options come after it and win)")
    r.add_argument("--report_only", action="store_true",
                   help="only collect the finished runs into the results and table")
    return p.parse_args(argv)


def pair_of_numbers(text: str) -> tuple[float, float]:
    parts = [float(v) for v in text.split(",")]
    return (parts[0], parts[1] if len(parts) > 1 else 0.0)


# ------------------------------------------------------------------------------------------ steps
def ensure_data(args, s: float) -> Path:
    """The shards of strength s, generated once (a temp dir, then a rename)."""
    from data import synthetic

    target = Path(args.out) / "data" / fd.level_name(s)
    if (target / "tst").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gen-"))
    lo, hi = (int(v) for v in pair_of_numbers(args.value_range))
    radiometry = {"dtype": args.dtype, "value_range": (lo, hi),
                  "date_shift": pair_of_numbers(args.date_shift)}
    try:
        synthetic.generate(tmp / "d", args.pairs, args.size, args.classes, args.change_rate,
                           args.data_seed, degradation=fd.degradation(s, "t2"), radiometry=radiometry)
        (tmp / "d").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("data of s=%g: %s", s, target)
    return target


def options(variant: str) -> list[str]:
    """train_cnn.py options of a variant: its base's, then its own changes."""
    base, changes = VARIANTS[variant]
    merged = {**BASE_OPTIONS[base], **changes}
    out = []
    for key, value in merged.items():
        if value is True:
            out.append(f"--{key}")
        else:
            out += [f"--{key}", str(value)]
    return out


def methods(variant: str) -> list[str]:
    if variant.endswith("/base") or variant in WITH_BASELINE:
        return ["corrfusion", "baseline"]
    return ["corrfusion"]


def workdir(args, variant: str, s: float) -> Path:
    return Path(args.out) / "runs" / variant.replace("/", "__") / fd.level_name(s)


def compare_argv(args, variant: str, data_dir, s: float) -> list[str]:
    """compare.py's arguments for one variant and level (an explicit --backbone wins over the
    preset's)."""
    forward = ["-e", str(args.epochs), "-b", str(args.batch_size), *shlex.split(args.train_args),
               *options(variant)]
    return ["--data_dir", str(data_dir), "--methods", ",".join(methods(variant)),
            "--backbone", args.backbone, "--runs", str(args.seeds),
            "--workdir", str(workdir(args, variant, s)), "--", *forward]


def result_file(args, variant, s, method, k) -> Path:
    return workdir(args, variant, s) / method / str(k) / "results" / "tst" / "results.json"


def finished(args, variant: str, s: float) -> bool:
    return all(result_file(args, variant, s, m, k).is_file()
               for m in methods(variant) for k in range(args.seeds))


def run_variant(args, variant: str, s: float) -> None:
    import compare

    if finished(args, variant, s):
        return
    argv = compare_argv(args, variant, ensure_data(args, s), s)
    log.info("%s s=%g: compare.py %s", variant, s, shlex.join(argv))
    t0 = time.time()
    rc = compare.main(argv)
    log.info("%s s=%g: exit %d after %.0f s", variant, s, rc, time.time() - t0)


# ------------------------------------------------------------------------------------------ report
def w_auc(npz: Path):
    """ROC-AUC of w for unchanged (positive) against changed test pairs; None without w or a class."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    if not npz.is_file():
        return None
    with np.load(npz) as z:
        if "fusion_weight" not in z.files:
            return None
        unchanged = ~z["changed_true"].astype(bool)
        if unchanged.all() or not unchanged.any():
            return None
        return float(roc_auc_score(unchanged, z["fusion_weight"]))


def collect(args) -> list[dict]:
    """One row per finished run under OUT/runs; a run whose directory is gone (OUT/runs is not
    committed) keeps its row from an earlier OUT/results.csv, with its ``finished`` time (empty:
    before the column existed), so that a partial re-run adds to the record instead of erasing it."""
    import datetime

    rows, seen = [], set()
    for variant in args.variants:
        for s in args.levels:
            for method in methods(variant):
                for k in range(args.seeds):
                    f = result_file(args, variant, s, method, k)
                    if not f.is_file():
                        continue
                    m = json.loads(f.read_text())["metrics"]
                    fusion = fd.fusion_means(f.parent / "predictions.npz")
                    stamp = datetime.datetime.fromtimestamp(f.stat().st_mtime, datetime.timezone.utc)
                    rows.append({"variant": variant, "strength": s, "method": method, "seed": k,
                                 **{key: m.get(key) for key in METRICS},
                                 "w_unchanged": fusion["w_unchanged"],
                                 "w_changed": fusion["w_changed"],
                                 "w_auc": w_auc(f.parent / "predictions.npz"),
                                 "finished": stamp.strftime("%Y-%m-%d %H:%M")})
                    seen.add((variant, s, method, k))
    order = list(VARIANTS)
    return sorted(rows + earlier_rows(args, seen),
                  key=lambda r: (order.index(r["variant"]) if r["variant"] in order else len(order),
                                 r["variant"], r["strength"], r["method"], r["seed"]))


def earlier_rows(args, seen) -> list[dict]:
    """Every row of OUT/results.csv that this run did not collect again: runs whose directory is
    gone, and runs outside this run's selection (another variant, level or seed), so that running
    a few variants adds to the record instead of erasing the others."""
    old = Path(args.out) / "results.csv"
    if not old.is_file():
        return []
    keep = []
    with open(old, newline="") as fh:
        for r in csv.DictReader(fh):
            key = (r["variant"], float(r["strength"]), r["method"], int(r["seed"]))
            if key in seen:
                continue
            row = {"variant": key[0], "strength": key[1], "method": key[2], "seed": key[3],
                   "finished": r.get("finished", "")}
            row.update({c: float(r[c]) if r[c] not in ("", None) else None for c in COLUMNS})
            keep.append(row)
    return keep


def summarize(rows: list[dict]) -> list[dict]:

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["variant"], r["strength"], r["method"]), []).append(r)
    out = []
    for (variant, s, method), rs in groups.items():
        row = {"variant": variant, "strength": s, "method": method, "runs": len(rs)}
        row.update(fd.mean_std_row(rs, COLUMNS))
        out.append(row)
    return out


def table(summary: list[dict]) -> str:
    cell = fd.mean_std_cell
    lines = ["| variant | s | method | runs | OA_t1 (%) | OA_t2 (%) | change F1 (%) | w unchanged "
             "| w changed | AUC of w |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(summary, key=lambda r: (r["strength"], list(VARIANTS).index(r["variant"]),
                                            r["method"] != "corrfusion")):
        lines.append(f"| {r['variant']} | {r['strength']:g} | {r['method']} | {r['runs']} | "
                     + " | ".join([cell(r, k) for k in METRICS]
                                  + [cell(r, k, 1, "{:.3f}") for k in FUSION[:2]]
                                  + [cell(r, "w_auc", 1, "{:.2f}")]) + " |")
    return "\n".join(lines) + "\n"


def paired(rows: list[dict], variant: str, reference: str, s: float) -> dict | None:
    """corrfusion of ``variant`` minus corrfusion of ``reference`` at strength s, paired by seed:
    mean ± std (ddof = 1) of the per-seed differences of every column; None without a pair."""
    import numpy as np

    index = {(r["variant"], r["strength"], r["method"], r["seed"]): r for r in rows}
    pairs = [(r, index.get((reference, s, "corrfusion", r["seed"]))) for r in rows
             if (r["variant"], r["strength"], r["method"]) == (variant, s, "corrfusion")]
    pairs = [(a, b) for a, b in pairs if b is not None]
    if not pairs:
        return None
    row = {"variant": variant, "reference": reference, "strength": s, "runs": len(pairs)}
    for key in COLUMNS:
        d = np.array([a[key] - b[key] for a, b in pairs
                      if a[key] is not None and b[key] is not None], float)
        row[key + "_mean"] = float(d.mean()) if len(d) else None
        row[key + "_std"] = float(d.std(ddof=1)) if len(d) > 1 else None
    return row


def differences(rows: list[dict]) -> list[dict]:
    """Each variant's corrfusion runs minus its base's (``paired``), per level."""
    out = []
    for variant, (base, _) in VARIANTS.items():
        if variant.endswith("/base"):
            continue
        for s in sorted({r["strength"] for r in rows}):
            row = paired(rows, variant, f"{base}/base", s)
            if row is not None:
                out.append(row)
    return out


def difference_table(diffs: list[dict]) -> str:
    def cell(r, key, scale=100, digits=1):
        m, sd = r[key + "_mean"], r[key + "_std"]
        if m is None:
            return "—"
        return f"{scale * m:+.{digits}f}" + ("" if sd is None else f" ± {scale * sd:.{digits}f}")

    lines = ["| variant (corrfusion) − its base, per seed | s | runs | Δ OA_t1 (points) | Δ OA_t2 "
             "(points) | Δ change F1 (points) | Δ w unchanged | Δ w changed | Δ AUC of w |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(diffs, key=lambda r: (r["strength"], list(VARIANTS).index(r["variant"]))):
        lines.append(f"| {r['variant']} | {r['strength']:g} | {r['runs']} | "
                     + " | ".join([cell(r, k) for k in METRICS]
                                  + [cell(r, k, 1, 3) for k in FUSION[:2]]
                                  + [cell(r, "w_auc", 1, 2)]) + " |")
    return "\n".join(lines) + "\n"


#: docs/experiments.md "Choosing the defaults": (option, default, alternative, the variant with the default,
#: the variant with the alternative); defaults.md gives alternative − default per seed
DEFAULT_ROWS = (
    ("--view_variance", "1", "0 (the paper's loss)", CHOSEN, PREVIOUS),
    ("--view_variance", "1", "0.3", CHOSEN, "project/fusion_distance=rms+fusion_views=pair+view_variance=0.3"),
    ("--view_variance", "1", "3", CHOSEN, "project/fusion_distance=rms+fusion_views=pair+view_variance=3"),
    ("--change_margin", "0", "1.4", CHOSEN,
     "project/fusion_distance=rms+fusion_views=pair+view_variance=1+change_margin=1.4"),
    ("--change_margin, --corr_norm", "0, batch", "1.4, unchanged", CHOSEN,
     "project/fusion_distance=rms+fusion_views=pair+view_variance=1+change_margin=1.4+corr_norm=unchanged"),
    ("--tied_start", "false", "true", CHOSEN,
     "project/fusion_distance=rms+fusion_views=pair+view_variance=1+tied_start"),
    # measured before the variance term was chosen, against the module without it (γ = 0)
    ("--fusion_distance, --fusion_views", "rms, pair", "euclidean, paper (the paper's; γ = 0)",
     PREVIOUS, "project/base"),
    ("--fusion_views", "pair", "paper (with rms; γ = 0)", PREVIOUS, "project/fusion_distance=rms"),
    ("--fusion_views", "pair", "batch (with rms, --tied_start; γ = 0)",
     "project/fusion_distance=rms+fusion_views=pair+tied_start",
     "project/fusion_distance=rms+fusion_views=batch+tied_start"),
    ("--tied_start", "false", "true (γ = 0)", PREVIOUS,
     "project/fusion_distance=rms+fusion_views=pair+tied_start"),
    ("--change_margin", "0", "1.4 (with --tied_start; γ = 0)",
     "project/fusion_distance=rms+fusion_views=pair+tied_start",
     "project/fusion_distance=rms+fusion_views=pair+tied_start+change_margin=1.4"),
    ("--change_margin, --corr_norm", "0, batch", "1.4, unchanged (γ = 0)", PREVIOUS,
     "project/fusion_distance=rms+fusion_views=pair+change_margin=1.4+corr_norm=unchanged"),
    ("--lambda2", "1e-4", "0 (with --tied_start; γ = 0)",
     "project/fusion_distance=rms+fusion_views=pair+tied_start",
     "project/fusion_distance=rms+fusion_views=pair+tied_start+lambda2=0"),
    ("--fusion_bn", "batch", "frozen (with rms and paper views; pair views have no BN)",
     "project/fusion_distance=rms", "project/fusion_distance=rms+fusion_bn=frozen"),
    ("--fusion_bn", "batch", "frozen (with euclidean and paper views)", "project/base",
     "project/fusion_bn=frozen"),
    ("--input_norm", "bands", "dtype", "project/base", "project/input_norm=dtype"),
    ("--input_norm", "bands (pooled over the dates)", "bands_per_date", "project/base",
     "project/input_norm=bands_per_date"),
    ("--input_norm", "bands (pooled over the dates)", "bands_per_date (with rms and pair views; γ = 0)",
     PREVIOUS, "project/fusion_distance=rms+fusion_views=pair+input_norm=bands_per_date"),
    ("--bn", "batch", "frozen", "project/base", "project/bn=frozen"),
    ("--pooling", "avg", "flatten", "project/base", "project/pooling=flatten"),
    ("--fusion_init", "glorot_normal", "glorot_uniform", "project/base",
     "project/fusion_init=glorot_uniform"),
    ("--decov_init, --decov_penalty", "identity, offdiag", "orthogonal, original", "project/base",
     "project/decov=original"),
    ("--optimizer", "sgd (Nesterov, 1e-3)", "adam 1e-3", "project/optimizer=sgd", "project/base"),
)


def defaults_table(rows: list[dict]) -> str:
    def cell(r, key, scale=100, digits=1):
        m, sd = r[key + "_mean"], r[key + "_std"]
        if m is None:
            return "—"
        return f"{scale * m:+.{digits}f}" + ("" if sd is None else f" ± {scale * sd:.{digits}f}")

    lines = ["| option | default | alternative | s | runs | Δ OA_t1 (points) | Δ OA_t2 (points) "
             "| Δ change F1 (points) | Δ w unchanged | Δ w changed | Δ AUC of w |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    levels = sorted({r["strength"] for r in rows} | set(MAIN_LEVELS))
    for option, default, alternative, with_default, with_alternative in DEFAULT_ROWS:
        for s in levels:
            r = paired(rows, with_alternative, with_default, s)
            head = f"| `{option}` | {default} | {alternative} | {s:g} |"
            if r is None:
                if s in MAIN_LEVELS:  # other levels are extra checks: only the rows measured there
                    lines.append(head + " 0 | not run | | | | | |")
                continue
            lines.append(head + f" {r['runs']} | "
                         + " | ".join([cell(r, k) for k in METRICS]
                                      + [cell(r, k, 1, 3) for k in FUSION[:2]]
                                      + [cell(r, "w_auc", 1, 2)]) + " |")
    return "\n".join(lines) + "\n"


def report(args) -> None:
    out = Path(args.out)
    rows = collect(args)
    summary = summarize(rows)
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["variant", "strength", "method", "seed", *COLUMNS, "finished"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(json.dumps(
        {"arguments": {k: v for k, v in vars(args).items() if k != "report_only"},
         "options": {v: options(v) for v in dict.fromkeys(r["variant"] for r in rows)
                     if v in VARIANTS},
         "runs": rows, "summary": summary},
        indent=1))
    (out / "table.md").write_text(table(summary))
    (out / "differences.md").write_text(difference_table(differences(rows)))
    (out / "defaults.md").write_text(defaults_table(rows))
    log.info("%d runs: %s", len(rows), out / "table.md")


def main(argv=None) -> int:
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        t0 = time.time()
        for variant in args.variants:
            for s in args.levels:
                run_variant(args, variant, s)
            report(args)
        log.info("all runs done in %.1f min", (time.time() - t0) / 60)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    report(args)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    sys.exit(main())
