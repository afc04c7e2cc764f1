"""Why the fusion weight w collapses: the module's distance measured on a trained checkpoint.

    python experiments/fusion_diagnosis.py CHECKPOINT SPLIT_DIR [--out result.json]
    python experiments/fusion_diagnosis.py --module        # the untrained module at d = 1024, r = 2

For a corrfusion checkpoint and a split (e.g. DATA/tst), the two views the distance reads
(X_bn, Y_bn: m = d/r features each) are computed for every pair, and for the unchanged and the
changed pairs the script reports: the mean dist and w, the per-feature correlation ρ_j between the
two dates (over the pairs of the group), the per-feature variances, and the distance that
``√(Σ_j Var x_j + Var y_j − 2 Cov_j + (μx_j − μy_j)²)`` predicts (the root of E[dist²]) beside the
issue's shorthand ``√(2·m·(1 − ρ̄))`` (unit variances). ``--module`` does the same on the CorrFusion
layer alone, with batch-statistics BN, for two inputs X, Y = X + noise of a chosen correlation.

The numbers feed docs/experiments.md "Choosing the defaults" and docs/DESIGN.md §2.5.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("fusion_diagnosis")


def view_statistics(vx, vy, dist, w) -> dict:
    """Mean dist/w, mean per-feature correlation, variances and the predicted distance of one group."""
    import numpy as np

    vx, vy = np.asarray(vx, np.float64), np.asarray(vy, np.float64)
    m = vx.shape[1]
    cx, cy = vx - vx.mean(0), vy - vy.mean(0)
    var_x, var_y = (cx ** 2).mean(0), (cy ** 2).mean(0)
    cov = (cx * cy).mean(0)
    live = (var_x > 1e-12) & (var_y > 1e-12)
    rho = cov[live] / np.sqrt(var_x[live] * var_y[live])
    mean_sq = (vx.mean(0) - vy.mean(0)) ** 2
    expected_sq = var_x + var_y - 2 * cov + mean_sq
    rho_bar = float(rho.mean()) if rho.size else float("nan")
    return {
        "pairs": int(len(vx)), "features": int(m), "live_features": int(live.sum()),
        "dist_mean": float(np.mean(dist)), "w_mean": float(np.mean(w)),
        "rms_dist_mean": float(np.mean(dist) / np.sqrt(m)),
        "rho_mean": rho_bar, "rho_median": float(np.median(rho)) if rho.size else float("nan"),
        "var_x_mean": float(var_x.mean()), "var_y_mean": float(var_y.mean()),
        "dist_predicted": float(np.sqrt(expected_sq.sum())),
        "dist_sq_from_means": float(mean_sq.sum()),
        "dist_unit_variance": float(np.sqrt(2 * m * (1 - rho_bar))),
    }


def checkpoint_statistics(checkpoint, split_dir, batch_size=32, training=False) -> dict:
    """The views of every pair of ``split_dir``; ``training=True``: BN with the statistics of each
    batch of ``batch_size`` (what the losses saw in training) instead of the moving averages."""
    import numpy as np

    from data.loader import make_dataset
    from model.network import load_model

    net = load_model(checkpoint, compile=False)
    ds, _ = make_dataset(split_dir, batch_size, training=False, raw_integers=True)
    parts = {k: [] for k in ("view_t1", "view_t2", "dist", "fusion_weight", "y1", "y2")}
    for (x1, x2), (y1, y2) in ds:
        out = net((x1, x2), training=training)
        for k in ("view_t1", "view_t2", "dist", "fusion_weight"):
            parts[k].append(np.asarray(out[k]))
        parts["y1"].append(np.asarray(y1))
        parts["y2"].append(np.asarray(y2))
    z = {k: np.concatenate(v) for k, v in parts.items()}
    changed = z["y1"] != z["y2"]
    out = {"checkpoint": str(checkpoint), "split": str(split_dir), "training_mode": training,
           "config": {k: net.config.to_dict().get(k) for k in
                      ("hidden", "reduction", "bn", "fusion_bn", "fusion_distance", "input_norm")}}
    for group, mask in (("unchanged", ~changed), ("changed", changed)):
        if mask.sum() > 2:
            out[group] = view_statistics(z["view_t1"][mask], z["view_t2"][mask], z["dist"][mask],
                                         z["fusion_weight"][mask])
    return out


def module_statistics(rho=0.97, n=32, d=1024, reduction=2, seed=0) -> dict:
    """The untrained CorrFusion layer (batch-statistics BN, training mode) on X and Y = ρ·X +
    √(1 − ρ²)·noise: how far w is from 1 for inputs that agree to a correlation ρ."""
    import numpy as np

    from model.corrfusion import CorrFusion

    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(size=(n, d))).astype("float32")
    y = (rho * x + np.sqrt(1 - rho ** 2) * np.abs(rng.normal(size=(n, d)))).astype("float32")
    layer = CorrFusion(reduction=reduction, lambda2=0.0, return_views=True,
                       kernel_initializer=__import__("keras").initializers.GlorotNormal(seed))
    _, _, dist, vx, vy = layer([x, y], training=True)
    dist = np.asarray(dist)
    return {"input_rho": rho, **view_statistics(np.asarray(vx), np.asarray(vy), dist, 1 - np.tanh(dist))}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("split_dir", nargs="?")
    p.add_argument("--module", action="store_true", help="the untrained module instead")
    p.add_argument("--training_mode", action="store_true",
                   help="BN with each batch's statistics (as in training) instead of moving averages")
    p.add_argument("--out", help="write the statistics as JSON here")
    args = p.parse_args(argv)
    if args.module:
        result = {"module": [module_statistics(r) for r in (0.9, 0.97, 0.99, 0.999)]}
    elif args.checkpoint and args.split_dir:
        result = checkpoint_statistics(args.checkpoint, args.split_dir,
                                       training=args.training_mode)
    else:
        p.error("give CHECKPOINT SPLIT_DIR, or --module")
    text = json.dumps(result, indent=1)
    log.info("%s", text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
