"""The option sets a flag applies at once: ``--preset NAME`` and ``--demo`` (one home; parser.py and
train_cnn.py read them). Plain data, no imports: ``-h`` stays fast."""

__all__ = ["DEMO_TRAIN", "PRESETS"]

#: ``--preset NAME`` -> {dest: value}, applied to every option not given on the command line.
#: ``original``: what the original code that trained CorrFusion ran (rulixiang/CorrFusionNet at
#: 611d99b / 7a4fe70 / fd37a24; docs/differences.md), with the original's
#: comparators (NaiveResNet, SoftDCCANet at 1c33068) for ``baseline`` / ``sdcca``: one entry per
#: row of that table that has a flag.
PRESETS = {
    "original": {
        "backbone": "resnet50", "shared": False, "pooling": "flatten", "bn": "frozen",
        "l2": 1e-4, "decov_init": "orthogonal", "decov_penalty": "original",
        "fusion_init": "glorot_uniform", "input_norm": "shard_max", "hidden": 1024, "reduction": 2,
        "lambda1": 0.1, "fusion_distance": "euclidean", "fusion_bn": "frozen",
        "change_margin": 0.0, "view_variance": 0.0, "fusion_views": "paper", "tied_start": False,
        "lambda2": 1e-4, "corr_norm": "batch", "optimizer": "sgd", "lr": [1e-3],
        "lr_boundaries": [], "momentum": 0.9, "nesterov": True, "batch_size": 32, "epochs": 100,
        "resnet_init": "keras_applications", "comparators": "original",
        "dist_epsilon": "per_feature", "eval_trn": True, "eval_tst": True, "runs": 1,
    },
}

#: ``--demo``: the demo trains from scratch in a couple of minutes on 2 CPU cores: Adam converges far
#: faster than the paper's SGD schedule there (pass --optimizer sgd --lr ... to see the original's);
#: --lr stays parser.py's default (constant 1e-3)
DEMO_TRAIN = {"backbone": "small", "method": "corrfusion", "epochs": 12, "batch_size": 32,
              "hidden": 256, "optimizer": "adam"}
