"""How much does a degraded date 2 still tell? Supervised upper bounds for the ablation's data.

    python experiments/change_information.py                 # the run of docs/experiments.md (CPU, ~15 min)
    python experiments/change_information.py --report_only   # rebuild table.md from results.csv

CorrFusion's fusion weight w should be large for unchanged and small for changed pairs. When date 2
is degraded that needs information in date 2 about the pair being changed. This script measures how
much there is, with models trained *for* it on the labels the ablation's methods never see as such:

* ``change``: a change detector trained directly on the change labels (label_t1 ≠ label_t2), the
  two dates stacked into six channels (early fusion, what a supervised change detector of registered
  pairs does), the small backbone, global average pooling and one logit; class-balanced loss.
  Its test ROC-AUC is what any change signal could reach from these pairs, trained this way.
* ``siamese``: a change detector built as CorrFusion's w is: one backbone (shared) applied to each
  date, global average pooling, and a logit from the two pooled features' element-wise
  |difference| (one Dense layer), trained directly on the change labels, class-balanced. Its
  ROC-AUC bounds what a comparison of the two dates' pooled features, such as w, reaches here.
* ``t2``: a date-2 scene classifier (the same network on date 2 alone); its OA_t2 is what date 2
  carries about its class.
* ``pixels``: no training: the Pearson correlation of the two dates' grey values per pair (high for
  an unchanged pair whose date 2 still shows date 1's structure), its ROC-AUC.

The data are ``experiments/ablation.py``'s (the same generator, radiometry, degradation and
split: ``--pairs 480`` gives its 336 / 48 / 96 pairs), and once more with many more pairs
(``--large``), so that a bound that stays low is not a matter of too few examples. Inputs are
standardised per band and date with the training split's statistics. Seeds differ in the networks'
initialisation and the order of the batches; the data are the same.

Outputs in ``--out``: results.csv (one row per pairs, level, seed) and table.md (mean ± std).
Resumable: rows already in results.csv are skipped.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "experiments"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import fusion_degradation as fd  # noqa: E402  (the degradation of a level)

log = logging.getLogger("change_information")

FIELDS = ("pairs", "strength", "seed", "change_auc", "siamese_auc", "t2_oa", "pixel_auc", "changed_test",
          "test_pairs", "finished")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "experiments" / "change_information"))
    p.add_argument("--levels", type=fd.floats, default=[0.0, 0.4, 0.8])
    p.add_argument("--pairs", type=int, default=480, help="the ablation's data set size")
    p.add_argument("--large", type=int, default=2000, help="a larger data set (0: none)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--report_only", action="store_true")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ data
def pairs_of(n: int, s: float):
    """The ablation's pairs (experiments/ablation.py's defaults) of strength s, split as it is."""
    from data import splits, synthetic

    radiometry = {"dtype": "uint16", "value_range": (0, 10000), "date_shift": (0.7, 0.05)}
    data = synthetic.make_pairs(n, 32, 6, 0.1, 0, **radiometry)
    data = synthetic.degrade_pairs(data, 0, **fd.degradation(s, "t2"), value_range=(0, 10000))
    parts = splits.split_indices(n, splits.DEFAULT_FRACTIONS, 0)
    return {name: {k: v[idx] for k, v in data.items()} for name, idx in parts.items()}


def standardise(trn, other):
    """Per band and date, with the training split's mean and std."""
    out = {}
    for key in ("image_t1", "image_t2"):
        x = trn[key].astype(np.float64)
        mean, std = x.mean((0, 1, 2)), x.std((0, 1, 2))
        out[key] = ((other[key].astype(np.float64) - mean) / std).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------- models
def network(channels: int, outputs: int, seed: int):
    import keras

    from model.backbones import build_backbone

    inputs = keras.Input((32, 32, channels))
    x = build_backbone("small", (32, 32), channels=channels, seed=seed)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(outputs, kernel_initializer=keras.initializers.GlorotNormal(seed))(x)
    model = keras.Model(inputs, out)
    loss = (keras.losses.BinaryCrossentropy(from_logits=True) if outputs == 1 else
            keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.compile(keras.optimizers.Adam(1e-3), loss)
    return model


def siamese(seed: int):
    import keras

    from model.backbones import build_backbone

    backbone = build_backbone("small", (32, 32), channels=3, seed=seed)
    pool = keras.layers.GlobalAveragePooling2D()
    a, b = keras.Input((32, 32, 3)), keras.Input((32, 32, 3))
    diff = keras.layers.Lambda(lambda t: keras.ops.abs(t[0] - t[1]))([pool(backbone(a)),
                                                                     pool(backbone(b))])
    out = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotNormal(seed))(diff)
    model = keras.Model([a, b], out)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def fit_predict(x_trn, y_trn, x_tst, outputs, seed, args, class_weight=None, build=None):
    import keras

    keras.utils.set_random_seed(seed)
    model = build(seed) if build else network(x_trn.shape[-1], outputs, seed)
    model.fit(x_trn, y_trn, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
              class_weight=class_weight)
    return model.predict(x_tst, batch_size=256, verbose=0)


def auc(changed, score) -> float:
    """ROC-AUC of ``score`` for changed (positive) against unchanged pairs; NaN with one kind only."""
    from sklearn.metrics import roc_auc_score

    changed = np.asarray(changed, bool)
    return float(roc_auc_score(changed, score)) if 0 < changed.sum() < changed.size else float("nan")


def pixel_auc(tst, changed):
    a = tst["image_t1"].astype(np.float64).mean(-1).reshape(len(changed), -1)
    b = tst["image_t2"].astype(np.float64).mean(-1).reshape(len(changed), -1)
    a = (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-9)
    b = (b - b.mean(1, keepdims=True)) / (b.std(1, keepdims=True) + 1e-9)
    return auc(changed, -(a * b).mean(1))  # a low correlation says changed


def run_one(n: int, s: float, seed: int, args) -> dict:
    split = pairs_of(n, s)
    trn, tst = split["trn"], split["tst"]
    xt, xs = standardise(trn, trn), standardise(trn, tst)
    changed_trn = trn["label_t1"] != trn["label_t2"]
    changed_tst = tst["label_t1"] != tst["label_t2"]
    pos = changed_trn.mean()
    weight = {0: 0.5 / (1 - pos), 1: 0.5 / pos}
    logit = fit_predict(np.concatenate([xt["image_t1"], xt["image_t2"]], -1),
                        changed_trn.astype(np.float32), np.concatenate([xs["image_t1"],
                                                                        xs["image_t2"]], -1),
                        1, seed, args, class_weight=weight)
    pair_logit = fit_predict([xt["image_t1"], xt["image_t2"]], changed_trn.astype(np.float32),
                             [xs["image_t1"], xs["image_t2"]], 1, seed, args, class_weight=weight,
                             build=siamese)
    scores = fit_predict(xt["image_t2"], trn["label_t2"] - 1, xs["image_t2"], 6, seed, args)
    return {"pairs": n, "strength": s, "seed": seed,
            "change_auc": auc(changed_tst, logit[:, 0]),
            "siamese_auc": auc(changed_tst, pair_logit[:, 0]),
            "t2_oa": float(np.mean(scores.argmax(-1) == tst["label_t2"] - 1)),
            "pixel_auc": pixel_auc(tst, changed_tst), "changed_test": int(changed_tst.sum()),
            "test_pairs": len(changed_tst), "finished": time.strftime("%Y-%m-%d %H:%M")}


# -------------------------------------------------------------------------------------- results
def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def table(rows: list[dict]) -> str:
    lines = ["| pairs (trn / tst, changed in tst) | s | seeds | change detector: ROC-AUC | "
             "siamese on pooled features: ROC-AUC | "
             "date-2 classifier: OA_t2 (%) | grey-value correlation: ROC-AUC |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    keys = sorted({(int(r["pairs"]), float(r["strength"])) for r in rows})
    for n, s in keys:
        group = [r for r in rows if int(r["pairs"]) == n and float(r["strength"]) == s]

        def cell(key, scale=1.0, digits=2, group=group):
            v = np.array([float(r[key]) for r in group]) * scale
            return (f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1
                    else f"{v.mean():.{digits}f}")

        tst = int(group[0]["test_pairs"])
        lines.append(f"| {n} ({int(round(n * 0.7))} / {tst}, {group[0]['changed_test']}) | {s:g} | "
                     f"{len(group)} | {cell('change_auc')} | {cell('siamese_auc')} | {cell('t2_oa', 100, 1)} | "
                     f"{cell('pixel_auc')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.csv"
    if not args.report_only:
        done = {(int(r["pairs"]), float(r["strength"]), int(r["seed"])) for r in read_rows(path)}
        for n in [args.pairs] + ([args.large] if args.large else []):
            for s in args.levels:
                for seed in range(args.seeds):
                    if (n, s, seed) in done:
                        continue
                    row = run_one(n, s, seed, args)
                    append_row(path, row)
                    log.info("pairs %d s=%g seed %d: change AUC %.3f, siamese %.3f, OA_t2 %.3f, "
                             "pixel AUC %.3f", n, s, seed, row["change_auc"], row["siamese_auc"],
                             row["t2_oa"], row["pixel_auc"])
    (out / "table.md").write_text(table(read_rows(path)))
    log.info("table: %s", out / "table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
