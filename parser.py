"""Command-line definitions shared by train_cnn.py, eval.py and compare.py.

Only the standard library (and ``model.config``, ``training.optimizers``: standard library only) is
imported here, so `-h` and argument errors are answered before NumPy or TensorFlow start. The
backbone and method choices are the keys of ``model.config.BACKBONES`` / ``METHODS``, the optimiser
and class-weight choices those of ``training.optimizers.OPTIMIZERS`` / ``CLASS_WEIGHTS``, and the
model options' defaults are ``ModelConfig``'s: one source each. Every ``dest`` is a field of
``training.config.TrainConfig`` / ``evaluation.config.EvalConfig`` or ``ModelConfig``
(``utils.cli.from_namespace`` copies them by name). The original CorrFusionNet flags keep their
short and long names; the boolean
ones accept true/false/1/0/yes/no (the original's ``type=bool`` turned ``-tb False`` into True).
"""

from __future__ import annotations

import argparse

from model.config import (
    BACKBONES,
    BN_MODES,
    COMPARATORS,
    CORR_NORMS,
    DECOV_INITS,
    DECOV_PENALTIES,
    DIST_EPSILONS,
    FUSION_BNS,
    FUSION_DISTANCES,
    FUSION_INITS,
    FUSION_VIEWS,
    INPUT_NORMS,
    METHODS,
    POOLINGS,
    RESNET_INITS,
    ModelConfig,
)
from training.optimizers import CLASS_WEIGHTS, OPTIMIZERS
from training.presets import PRESETS
from utils.cli import HelpFormatter

BACKBONE_NAMES = tuple(BACKBONES)
METHOD_NAMES = tuple(METHODS)


_TRUE = {"true", "t", "1", "yes", "y", "on"}
_FALSE = {"false", "f", "0", "no", "n", "off"}


def str2bool(value: str) -> bool:
    """Parse a boolean flag value; argparse turns the ValueError into a usage error (exit 2)."""
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false/1/0/yes/no, got {value!r}")


def _number(value: str, cast, ok, expected: str):
    """Parse with `cast`, check with `ok`; argparse turns the error into a usage error (exit 2)."""
    try:
        v = cast(value)
    except ValueError:
        v = None
    if v is None or v != v or not ok(v):  # v != v: NaN
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
    return v


def positive_int(value: str) -> int:
    return _number(value, int, lambda v: v > 0, "a positive integer")


def non_negative_int(value: str) -> int:
    return _number(value, int, lambda v: v >= 0, "an integer >= 0")


def non_negative_float(value: str) -> float:
    return _number(value, float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def weights_source(value: str) -> str | None:
    """``--weights``: ``none``/``random`` → None (random initialisation), else ``imagenet`` or a path."""
    return None if value.strip().lower() in ("none", "random", "") else value


def probability(value: str) -> float:
    return _number(value, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def image_size(value: str) -> tuple[int, int]:
    """`64` or `64,64` or `64x48` -> (height, width)."""
    parts = value.lower().replace("x", ",").split(",")
    try:
        dims = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected SIZE or HEIGHT,WIDTH (e.g. 200 or 200,200), got {value!r}"
        ) from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected SIZE or HEIGHT,WIDTH with positive integers, got {value!r}"
        )
    return dims[0], dims[1]


def float_list(value: str) -> list[float]:
    try:
        vals = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None
    if not vals or any(not 0 < v < float("inf") for v in vals):  # NaN and inf fail too
        raise argparse.ArgumentTypeError(
            f"expected comma-separated finite positive numbers, got {value!r}")
    return vals


def int_list(value: str) -> list[int]:
    try:
        vals = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {value!r}"
        ) from None
    if any(v <= 0 for v in vals) or vals != sorted(set(vals)):
        raise argparse.ArgumentTypeError(
            f"expected strictly increasing positive integers, got {value!r}"
        )
    return vals


def gpu_spec(value: str) -> str:
    """`-g 0`, `-g 0,1`, `-g cpu` (or `-1`)."""
    v = value.strip().lower()
    if v in ("cpu", "-1", "none", ""):
        return "cpu"
    ids = v.split(",")
    if not all(i.strip().isdigit() for i in ids):
        raise argparse.ArgumentTypeError(f"expected GPU ids like 0 or 0,1, or 'cpu'; got {value!r}")
    return ",".join(str(int(i)) for i in ids)


def _add_device_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("-g", "--gpu", type=gpu_spec, default=None,
                       help="GPU ids to use (0 or 0,1) or 'cpu'; default: what CUDA_VISIBLE_DEVICES allows")
    group.add_argument("--mixed_precision", type=str2bool, nargs="?", const=True, default=False,
                       help="mixed precision: float16 on GPUs that want it, bfloat16 elsewhere "
                            "(CCA math stays float32)")
    group.add_argument("--jit", type=str2bool, nargs="?", const=True, default=None,
                       help="XLA-compile the train/predict steps; default: on with JAX (which "
                            "otherwise runs every operation on its own), off with TensorFlow "
                            "(tf.function graphs)")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="debug log, and TensorFlow's start-up lines (CUDA, CPU instructions)")


def _add_data_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--data_dir", default=None,
                       help="directory holding trn/ val/ tst/ split directories of .npz shards")
    group.add_argument("-trn", "--trn_dir", default=None, help="training split (default DATA_DIR/trn)")
    group.add_argument("-val", "--val_dir", default=None, help="validation split (default DATA_DIR/val)")
    group.add_argument("-tst", "--tst_dir", default=None, help="test split (default DATA_DIR/tst)")
    group.add_argument("-b", "--batch_size", type=positive_int, default=32, help="pairs per batch")
    group.add_argument("--image_size", type=image_size, default=None,
                       help="resize images to SIZE or H,W (default: the shards' size)")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_cnn.py",
        description="Train CorrFusionNet (or a baseline/DCCA/soft-DCCA variant) on bi-temporal npz shards.",
        formatter_class=HelpFormatter,
    )
    data = p.add_argument_group("data")
    _add_data_args(data)
    data.add_argument("-n", "--num_classes", type=positive_int, default=None,
                      help="number of scene classes K (labels 1..K; the Wuhan data has 14); "
                           "default: from the shards' class_names or largest label; checked against the data")
    data.add_argument("--demo", action="store_true",
                      help="generate the demo data once (cached), train the small model a few epochs, "
                           "evaluate and print the metrics")

    model = p.add_argument_group("model")
    model.add_argument("--backbone", choices=BACKBONE_NAMES, default="vgg16", help="convolutional backbone")
    model.add_argument("--method", choices=METHOD_NAMES, default=ModelConfig.method, help="fusion method")
    model.add_argument("--shared", action=argparse.BooleanOptionalAction, default=True,
                       help="one backbone for both dates (siamese); --no-shared: one per date")
    model.add_argument("--weights", type=weights_source, default=None,
                       help="backbone weights: none (random, default), imagenet, or a weights file path")
    model.add_argument("--input_norm", choices=tuple(INPUT_NORMS), default=ModelConfig.input_norm,
                       help="input normalisation, part of the model (saved in its checkpoints): "
                            + "; ".join(f"{k}: {v}" for k, v in INPUT_NORMS.items()))
    model.add_argument("--hidden", type=positive_int, default=ModelConfig.hidden, help="width of the FC layers (d)")
    model.add_argument("--reduction", type=positive_int, default=ModelConfig.reduction, help="CorrFusion reduction ratio r")
    model.add_argument("--lambda1", type=non_negative_float, default=ModelConfig.lambda1, help="weight of the correlation loss")
    model.add_argument("--lambda2", type=non_negative_float, default=ModelConfig.lambda2, help="weight of the decorrelation loss")
    model.add_argument("--corr_norm", choices=CORR_NORMS, default=ModelConfig.corr_norm,
                       help="divide the correlation loss by the batch size (original) or by the "
                            "number of unchanged pairs")
    model.add_argument("--l2", type=non_negative_float, default=ModelConfig.l2,
                       help="L2 factor of the per-date Dense kernels, in the original's convention: "
                            "the loss is l2 * sum(w^2) / 2 (tf.contrib.layers.l2_regularizer), "
                            "i.e. keras.regularizers.L2(l2 / 2)")
    model.add_argument("--bn", choices=BN_MODES, default=ModelConfig.bn,
                       help="batch: BatchNormalization with batch statistics in training; frozen: "
                            "every BN (backbone, CorrFusion, views) always in inference mode with "
                            "moving mean 0 / variance 1, a trainable affine map (the original's TF1 graph)")
    model.add_argument("--pooling", choices=POOLINGS, default=ModelConfig.pooling,
                       help="pooling of the backbone's last feature map (avg: global average; "
                            "flatten: the original's)")
    model.add_argument("--decov_init", choices=DECOV_INITS, default=ModelConfig.decov_init,
                       help="start of the soft-decorrelation running covariances (the original: orthogonal)")
    model.add_argument("--decov_penalty", choices=DECOV_PENALTIES, default=ModelConfig.decov_penalty,
                       help="offdiag: sum_{j!=k} |C_jk|; original: sum |C| - sum diag(C)")
    model.add_argument("--fusion_init", choices=FUSION_INITS, default=ModelConfig.fusion_init,
                       help="initialiser of CorrFusion's squeeze/excite kernels (the original: glorot_uniform)")
    model.add_argument("--fusion_distance", choices=FUSION_DISTANCES, default=ModelConfig.fusion_distance,
                       help="the distance CorrFusion's w = 1 - tanh(dist) reads: euclidean (the paper's) "
                            "or rms (the same divided by sqrt(d/r), independent of the width)")
    model.add_argument("--fusion_bn", choices=FUSION_BNS, default=ModelConfig.fusion_bn,
                       help="BN inside the CorrFusion module, independent of --bn: batch statistics "
                            "in training, or frozen (moving mean 0 / variance 1, the original's)")
    model.add_argument("--fusion_views", choices=tuple(FUSION_VIEWS), default=ModelConfig.fusion_views,
                       help="the views CorrFusion's distance reads: paper (ReLU squeeze, BN with "
                            "scale/offset); batch (linear squeeze, BN without scale/offset); pair "
                            "(linear squeeze, each view standardised over its own features: with "
                            "rms, dist = sqrt(2(1 - r)), r the pair's correlation, the same in "
                            "training and at inference)")
    model.add_argument("--tied_start", type=str2bool, default=ModelConfig.tied_start,
                       help="date 2's per-date layers (Dense fc1/fc2, head, CorrFusion's squeeze/"
                            "excite) start as copies of date 1's and then train apart, so that with "
                            "the shared backbone the two dates of an unchanged pair agree from the "
                            "first step (false: independent draws, the original's)")
    model.add_argument("--change_margin", type=non_negative_float, default=ModelConfig.change_margin,
                       help="corrfusion: also penalise changed pairs whose distance is below this "
                            "margin, lambda1 * max(0, margin - dist), so that the fusion weight is "
                            "small where the class changed (0: the paper's loss, unchanged pairs only; "
                            "in the units of --fusion_distance)")
    model.add_argument("--view_variance", type=non_negative_float, default=ModelConfig.view_variance,
                       help="corrfusion: weight of a variance term on the two views over the batch "
                            "(VICReg's: mean of max(0, 1 - std) per view feature, added to the "
                            "correlation loss), so that the views cannot collapse to one pattern "
                            "shared by every pair (0: none, the paper's; the default 1 was chosen by "
                            "experiments/ablation.py)")
    model.add_argument("--resnet_init", choices=RESNET_INITS, default=ModelConfig.resnet_init,
                       help="start of the resnet50 backbone: keras (Keras 3's: Glorot-uniform kernels, "
                            "BN eps 1.001e-5) or keras_applications (the original's TF 1.11: "
                            "He-normal kernels, BN eps 1e-3); other backbones ignore it")
    model.add_argument("--comparators", choices=COMPARATORS, default=ModelConfig.comparators,
                       help="what baseline and sdcca are: project (two Dense layers, heads on them; "
                            "sdcca on unchanged pairs with --lambda1/--lambda2) or original (the "
                            "original's NaiveResNet / SoftDCCANet: three Dense layers and BN, heads on "
                            "the BN views; sdcca on all pairs with its own 1e-2 / 1e-3 and a zero "
                            "covariance start)")
    model.add_argument("--dist_epsilon", choices=DIST_EPSILONS, default=ModelConfig.dist_epsilon,
                       help="CorrFusion's distance: once = sqrt(sum d^2 + eps); per_feature = "
                            "sqrt(sum (d^2 + eps)), the original's")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("-e", "--epoches", "--epochs", dest="epochs", type=positive_int, default=100,
                     help="number of epochs")
    opt.add_argument("--preset", choices=tuple(PRESETS), default=None,
                     help="original: every setting of the original CorrFusion training code at once "
                          "(ResNet50 per date, flatten, frozen BN, constant 1e-3 Nesterov SGD, ...); "
                          "options given explicitly override it")
    opt.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd",
                     help="sgd = SGD with momentum (Nesterov unless --no-nesterov), as the original")
    opt.add_argument("--lr", type=float_list, default="1e-3",  # a string: argparse applies type
                     help="learning rate: one value = constant (the original: 1e-3), several = a "
                          "piecewise-constant schedule with --lr_boundaries, e.g. 5e-3,1e-3,1e-4,1e-5 "
                          "(the schedule the original's HEAD only wrote to TensorBoard)")
    opt.add_argument("--lr_boundaries", type=int_list, default="",
                     help="epochs at which the learning rate steps to the next value, e.g. 30,60,90")
    opt.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    opt.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                     help="Nesterov momentum for sgd (the original's)")
    opt.add_argument("--seed", type=int, default=0, help="seed of run 0 (run k uses seed + k)")
    opt.add_argument("--runs", type=positive_int, default=1,
                     help="independent runs, each in WORKDIR/k/ (the original's CorrFusion code "
                          "trained one; the 3-run loop came later with its DCCA baseline)")
    opt.add_argument("--class_weight", choices=tuple(CLASS_WEIGHTS), default="none",
                     help="balanced: weight each date's cross-entropy by n / (K * count_k) of the "
                          "trn split's class histogram at that date (classes absent from trn: 0); "
                          "in training only, val/tst losses stay plain means")
    opt.add_argument("--eval_trn", type=str2bool, nargs="?", const=True, default=False,
                     help="also evaluate the whole training split after each epoch (slow; the original did)")
    opt.add_argument("--eval_tst", action=argparse.BooleanOptionalAction, default=True,
                     help="evaluate the test split after each epoch for the logs and TensorBoard, "
                          "as the original did; the best checkpoint is chosen on val only")

    out = p.add_argument_group("output")
    out.add_argument("--workdir", default=None,
                     help="run directory; the four paths below default inside it "
                          "(default runs/METHOD_BACKBONE)")
    out.add_argument("-lpath", "--log_path", default=None, help="directory of log.txt and history.csv")
    out.add_argument("-mpath", "--model_path", default=None, help="checkpoint directory")
    out.add_argument("-tbpath", "--tb_path", default=None, help="TensorBoard directory")
    out.add_argument("-rpath", "--result_path", default=None, help="evaluation results directory")
    out.add_argument("-tb", "--use_tfboard", type=str2bool, default=True, help="write TensorBoard logs")
    out.add_argument("--tb_images", type=non_negative_int, default=1, metavar="K",
                     help="every K epochs: the validation confusion matrices, transition matrices, "
                          "PR curve of p_change and change F1 in TensorBoard (one extra pass over "
                          "val; 0: never)")
    out.add_argument("-sm", "--save_model", type=str2bool, default=True, help="write checkpoints")
    out.add_argument("-log", "--save_log", type=str2bool, default=True, help="write log.txt and history.csv")
    out.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    out.add_argument("--overwrite", action="store_true",
                     help="replace the files of an existing run (checkpoints, args.json, logs, TensorBoard, results)")

    dev = p.add_argument_group("devices")
    _add_device_args(dev)
    dev.add_argument("--join_timeout", type=non_negative_float, default=600.0, metavar="SECONDS",
                     help="multi-worker (TF_CONFIG): give up when the other workers have not all "
                          "joined within SECONDS (exit status 75, nothing written; 0: wait forever)")
    return p


def given_dests(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The ``dest`` of every option given on the command line ``argv`` (abbreviations and
    ``--flag=value`` included): the parser run again with every default suppressed."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default


def apply_defaults(parser: argparse.ArgumentParser, args, argv, values: dict) -> None:
    """Set ``values`` ({dest: value}) on ``args`` where the option was not given in ``argv``."""
    given = given_dests(parser, argv)
    for dest, value in values.items():
        if dest not in given:
            setattr(args, dest, list(value) if isinstance(value, list) else value)


def check_train_args(parser: argparse.ArgumentParser, args, argv=None) -> argparse.Namespace:
    """The preset (``--preset``; options given in ``argv`` win) and the rules between
    train_cnn.py's options (usage errors, exit 2); returns args."""
    if args.preset:
        apply_defaults(parser, args, argv, PRESETS[args.preset])
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    if len(args.lr) == 1 and args.lr_boundaries:  # not ignored (and recorded) silently
        parser.error(f"--lr_boundaries {','.join(map(str, args.lr_boundaries))}: needs "
                     f"{len(args.lr_boundaries) + 1} --lr values (one per period), --lr has 1; "
                     "give the learning rates, or drop --lr_boundaries for a constant rate")
    if len(args.lr) != len(args.lr_boundaries) + 1 and len(args.lr) != 1:
        parser.error(f"--lr has {len(args.lr)} values; it needs one more than --lr_boundaries "
                     f"({len(args.lr_boundaries)}) or a single value")
    if args.fusion_views == "pair" and args.fusion_bn == "frozen":
        parser.error("--fusion_bn frozen: has no effect with --fusion_views pair (its views are "
                     "standardised per pair, without BatchNormalization); add --fusion_views paper "
                     "or batch")
    return args


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval.py",
        description="Evaluate a CorrFusionNet checkpoint: scene accuracy per date, change detection, "
                    "transition metrics, figures, predictions and change maps.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("-m", "--model", "--model_dir", dest="model", required=True,
                   help="a .keras checkpoint, or a run directory (its checkpoints/best.keras), or "
                        "the http(s) URL of a .keras checkpoint (downloaded once into Keras' "
                        "cache); --model_dir is the original evaluate_model.py's name")
    p.add_argument("--sha256", default=None,
                   help="with -m URL: the checkpoint's SHA-256; the download is refused when it "
                        "differs")
    data = p.add_argument_group("data")
    _add_data_args(data)
    data.add_argument("--threshold", type=probability, default=0.5,
                      help="threshold on p_change = 1 - sum_k p1_k p2_k, reported besides argmax")
    out = p.add_argument_group("output")
    out.add_argument("-rpath", "--result_path", default=None,
                     help="result directory (default RUN/results/eval or next to the checkpoint)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing result directory")
    dev = p.add_argument_group("devices")
    _add_device_args(dev)
    return p


def option_strings(parser: argparse.ArgumentParser, dests) -> set[str]:
    """Every flag (short and long) of the parser's options whose ``dest`` is in ``dests``."""
    return {flag for action in parser._actions if action.dest in set(dests)
            for flag in action.option_strings}
