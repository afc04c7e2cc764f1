"""Train CorrFusionNet on bi-temporal npz shards.

    python train_cnn.py --data_dir DATA --backbone vgg16 --method corrfusion -g 0
    python train_cnn.py --demo

Reads like a table of contents: parse -> checks -> data -> per run (model -> fit -> evaluate best)
-> summary. Everything that can be checked without TensorFlow is checked before it starts and before
anything is written: every output path (nothing a user made is replaced without --resume or
--overwrite), every split, and with --resume each run's last_state.json and checkpoints against
the data. TensorFlow is imported only after that and after the devices are chosen.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from parser import train_parser
from utils.cli import UsageError, configure_logging, run_main
from utils.devices import select_devices

log = logging.getLogger("corrfusion.train")

DEMO = {"pairs": 1200, "size": 48, "classes": 6, "change_rate": 0.05, "seed": 0}
# The demo trains from scratch in a couple of minutes on 2 CPU cores: Adam converges far faster than
# the paper's SGD schedule there (pass --optimizer sgd --lr ... to see the original's).
DEMO_TRAIN = {"backbone": "small", "method": "corrfusion", "epochs": 12, "batch_size": 32,
              "hidden": 256, "optimizer": "adam", "lr": [1e-3], "lr_boundaries": []}


# --------------------------------------------------------------------------------------- arguments
def parse_args(argv=None):
    parser = train_parser()
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    if len(args.lr) != len(args.lr_boundaries) + 1 and len(args.lr) != 1:
        parser.error(f"--lr has {len(args.lr)} values; it needs one more than --lr_boundaries "
                     f"({len(args.lr_boundaries)}) or a single value")
    if args.demo:
        apply_demo_defaults(args, argv or sys.argv[1:])
    elif not (args.data_dir or args.trn_dir):
        parser.error("give --data_dir (holding trn/ val/ tst/) or -trn/-val/-tst, or use --demo")
    return args


def apply_demo_defaults(args, argv) -> None:
    """--demo: small backbone, few epochs, cached demo data; flags given explicitly still win."""
    given = {a.split("=")[0] for a in argv if a.startswith("-")}
    flags = {"backbone": ["--backbone"], "method": ["--method"], "epochs": ["-e", "--epoches", "--epochs"],
             "batch_size": ["-b", "--batch_size"], "hidden": ["--hidden"], "lr": ["--lr"],
             "lr_boundaries": ["--lr_boundaries"], "optimizer": ["--optimizer"]}
    for key, value in DEMO_TRAIN.items():
        if not given.intersection(flags[key]):
            setattr(args, key, value)
    if args.workdir is None:
        args.workdir = str(Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"))


def demo_data_dir() -> Path:
    import os

    base = Path(os.environ.get("CORRFUSION_CACHE", Path.home() / ".cache" / "corrfusionnet"))
    tag = "demo-{pairs}p-{size}px-{classes}c-s{seed}".format(**DEMO)
    return base / tag


def ensure_demo_data() -> Path:
    """Generate the demo shards once into the cache directory (atomically: temp dir, then rename)."""
    import shutil
    import tempfile

    from data.synthetic import generate

    target = demo_data_dir()
    if (target / "tst").is_dir():
        log.info("demo data: %s (cached)", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".demo-"))
    try:
        generate(tmp / "data", **DEMO)
        (tmp / "data").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("demo data generated: %s", target)
    return target


# ------------------------------------------------------------------------------------------- paths
@dataclass
class RunPaths:
    root: Path
    log_dir: Path
    ckpt_dir: Path
    tb_dir: Path
    result_dir: Path

    @property
    def best(self) -> Path:
        return self.ckpt_dir / "best.keras"

    @property
    def last(self) -> Path:
        return self.ckpt_dir / "last.keras"

    @property
    def state(self) -> Path:
        return self.ckpt_dir / "last_state.json"


def resolve_splits(args) -> None:
    if args.demo:
        args.data_dir = str(demo_data_dir())
    base = Path(args.data_dir) if args.data_dir else None
    for split in ("trn", "val", "tst"):
        attr = f"{split}_dir"
        if getattr(args, attr) is None and base is not None:
            setattr(args, attr, str(base / split))
    if args.trn_dir is None or args.val_dir is None:
        raise UsageError("need a training and a validation split: give --data_dir or -trn and -val")


def workdir_of(args) -> Path:
    return Path(args.workdir or Path("runs") / f"{args.method}_{args.backbone}")


def run_paths(args, k: int) -> RunPaths:
    """Run k's directories: the -lpath/-mpath/-tbpath/-rpath overrides get a k/ sub-directory
    when several runs are made; otherwise everything lives in WORKDIR (or WORKDIR/k)."""
    sub = Path(str(k)) if args.runs > 1 else Path()
    root = workdir_of(args) / sub

    def pick(flag, default):
        return Path(flag) / sub if flag else root / default

    return RunPaths(root, pick(args.log_path, ""), pick(args.model_path, "checkpoints"),
                    pick(args.tb_path, "tb"), pick(args.result_path, "results"))


def summary_dir(args) -> Path | None:
    """Where --runs N > 1 writes summary.json/.csv (None when nothing is summarised)."""
    if args.runs < 2 or not args.tst_dir:
        return None
    return Path(args.result_path or workdir_of(args) / "results")


SUMMARY_FILES = ("summary.json", "summary.csv")


@dataclass
class RunOutputs:
    """What one run writes: files it replaces, directories it fills, directories it creates."""

    files: list
    filled: list
    created: list


def run_outputs(args, paths: RunPaths) -> RunOutputs:
    """Every output of one run, given -sm/-log/-tb and whether there is a test split."""
    out = RunOutputs([paths.root / "args.json"], [], [paths.root])
    if args.save_model:
        out.files += [paths.best, paths.last, paths.state]
        out.created.append(paths.ckpt_dir)
    if args.save_log:
        out.files += [paths.log_dir / "log.txt", paths.log_dir / "history.csv"]
        out.created.append(paths.log_dir)
    if args.use_tfboard:
        out.filled += [paths.tb_dir / s for s in ("trn", "val", "tst") if s != "tst" or args.tst_dir]
    if args.tst_dir:
        out.filled.append(paths.result_dir / "tst")
    out.created += out.filled
    return out


def check_outputs(args) -> None:
    """Before any work: every output directory can be created, and nothing a run would write
    exists already, unless --resume (the run's own files) or --overwrite."""
    for k in range(args.runs):
        check_run_dir(args, run_paths(args, k))
    out = summary_dir(args)
    if out is not None:
        files = [out / name for name in SUMMARY_FILES]
        check_output_paths(files, [out])
        check_not_replaced(args, files, out, "summary directory")


def check_run_dir(args, paths: RunPaths) -> None:
    """Never train over a user's checkpoints, logs, arguments or results unless --resume or
    --overwrite; refuse output paths that are files or lie under one."""
    out = run_outputs(args, paths)
    check_output_paths(out.files, out.created)
    if args.resume:
        for f in (paths.last, paths.state):
            if not f.is_file():
                raise UsageError(f"{f}: no last checkpoint to resume from")
    elif not args.overwrite and args.save_model and any(paths.ckpt_dir.glob("*.keras")):
        raise UsageError(f"{paths.ckpt_dir}: run directory already holds checkpoints; "
                         "pass --resume to continue or --overwrite to start again")
    check_not_replaced(args, out.files + out.filled, paths.result_dir if args.tst_dir else None,
                       "result directory")


def check_output_paths(files, dirs) -> None:
    """Output directories that can be created; output files that are files where they exist."""
    from utils.rundir import RunDirError, check_can_create_dir

    for d in dirs:
        check_can_create_dir(d)
    for f in files:
        if (f.exists() or f.is_symlink()) and not f.is_file():
            raise RunDirError(f"{f}: exists and is not a file")


def check_not_replaced(args, outputs, result_dir, what) -> None:
    """Without --resume/--overwrite: no output exists yet and the result directory is empty."""
    from utils.rundir import check_writable_dir

    if args.resume or args.overwrite:
        return
    for p in outputs:
        if p.exists() or p.is_symlink():
            raise UsageError(f"{p}: exists and a run would replace it; pass --resume to continue "
                             "the run that wrote it or --overwrite to start again")
    if result_dir is not None:
        check_writable_dir(result_dir, False, what)


# -------------------------------------------------------------------------------------------- data
@dataclass
class DataPlan:
    """The checked splits (NumPy only, before TensorFlow starts): what loaders and model are built for."""

    splits: dict
    summaries: dict
    num_classes: int
    image_size: tuple
    channels: int
    class_names: list | None


@dataclass
class Data(DataPlan):
    """The checked splits with their streaming loaders (load_data)."""

    trn: object
    val: object
    tst: object | None
    steps_per_epoch: int


def check_data(args, checked_splits=()) -> DataPlan:
    """Validate every split (DESIGN.md §4), the class count and the image shapes.

    checked_splits: split directories the caller has read through with ``inspect_split`` already
    (compare.py, once for all its runs): their headers and labels are checked, their image data
    is not read again.
    """
    from data.shards import ShardError, inspect_split

    splits = {s: d for s, d in (("trn", args.trn_dir), ("val", args.val_dir), ("tst", args.tst_dir))
              if d}
    summaries = {}
    for split, split_dir in splits.items():
        summaries[split] = inspect_split(split_dir, check_values=split_dir not in checked_splits)
        if summaries[split].n_pairs == 0:
            raise ShardError(f"{split_dir}: label_t1/label_t2: no usable pairs; expected at least "
                             "one pair with labels > 0 on both dates")
    k_data = max(s.num_classes for s in summaries.values())
    num_classes = args.num_classes or k_data
    if num_classes < k_data:
        worst = max(summaries.items(), key=lambda kv: kv[1].num_classes)
        raise UsageError(f"{splits[worst[0]]}: labels go up to {k_data} but -n/--num_classes is "
                         f"{num_classes}")
    trn_shape = tuple(summaries["trn"].image_shape)
    for split, summary in summaries.items():
        shape = tuple(summary.image_shape)
        if shape[-1] != trn_shape[-1] or (args.image_size is None and shape != trn_shape):
            hint = "" if shape[-1] != trn_shape[-1] else "; pass --image_size to resize"
            raise UsageError(f"{splits[split]}: image shape {shape} differs from the training "
                             f"split's {trn_shape}{hint}")
    names = summaries["trn"].class_names
    return DataPlan(splits, summaries, num_classes, tuple(args.image_size or trn_shape[:2]),
                    trn_shape[-1], list(names) if names is not None else None)


def check_model_inputs(args, plan: DataPlan) -> None:
    """The --weights file, or with --resume every run's last checkpoint and state against the data."""
    if args.resume:
        for k in range(args.runs):
            check_resumable(args, plan, run_paths(args, k), k)
    elif args.weights not in (None, "imagenet") and not Path(args.weights).is_file():
        raise UsageError(f"{args.weights}: --weights: no such file; expected none, imagenet or a "
                         "weights file")


def check_resumable(args, plan: DataPlan, paths: RunPaths, k: int) -> None:
    """last_state.json readable; last.keras (and best.keras) CorrFusionNet archives for this data's
    class count and input size, last.keras with its optimiser; read without TensorFlow."""
    from eval import read_checkpoint_config

    read_state(paths.state)
    config = read_checkpoint_config(paths.last)
    check_checkpoint_fits(args, plan, paths.last, config, adopt=not args.num_classes and k == 0)
    compiled = config.get("compile_config")
    if not (isinstance(compiled, dict) and compiled.get("optimizer")):
        raise UsageError(f"{paths.last}: saved without an optimiser (not compiled); expected the "
                         "last.keras train_cnn.py writes")
    if paths.best.is_file():
        check_checkpoint_fits(args, plan, paths.best, read_checkpoint_config(paths.best))


def check_checkpoint_fits(args, plan: DataPlan, ckpt: Path, config: dict, adopt=False) -> None:
    """The checkpoint's input (H, W, C) and class count K fit every split (eval.py's checks).
    adopt: a K above the data's largest label becomes the run's class count (trained with -n K)."""
    from eval import check_compatible, config_signature

    try:
        signature = config_signature(config)
    except (AttributeError, TypeError, ValueError, IndexError):
        signature = (None, None)
    if None in signature:
        raise UsageError(f"{ckpt}: config.json: no image_size/channels/num_classes; expected a "
                         "CorrFusionNet checkpoint written by train_cnn.py")
    for split, summary in plan.summaries.items():
        check_compatible(signature, summary, args.image_size, plan.splits[split],
                         f"checkpoint {ckpt}")
    if signature[1] != plan.num_classes:
        if not adopt:
            raise UsageError(f"{ckpt}: a checkpoint for {signature[1]} classes; expected "
                             f"{plan.num_classes} (-n/--num_classes, or the other checkpoints')")
        plan.num_classes = signature[1]


def read_state(path) -> dict:
    """A run's last_state.json: {"epoch": whole number, "best_score": number or null, ...}."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"{path}: unreadable ({type(e).__name__}: {first}); expected the "
                         "last_state.json train_cnn.py writes") from None
    if not isinstance(state, dict):
        raise UsageError(f"{path}: not a JSON object; expected the last_state.json train_cnn.py "
                         "writes")
    epoch, best = state.get("epoch"), state.get("best_score")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UsageError(f"{path}: epoch: {epoch!r}; expected a whole number >= 0")
    if best is not None and (isinstance(best, bool) or not isinstance(best, int | float)):
        raise UsageError(f"{path}: best_score: {best!r}; expected a number or null")
    return state


def load_data(args, plan: DataPlan) -> Data:
    """The streaming loaders of the checked splits (TensorFlow starts here)."""
    from data.loader import make_dataset, steps_per_epoch

    for s in plan.summaries.values():
        log.info("%s", s.format())

    def loader(split, training):
        ds, _ = make_dataset(plan.splits[split], args.batch_size, training=training,
                             seed=args.seed, image_size=args.image_size,
                             num_classes=plan.num_classes,
                             raw_integers=True)  # the model scales uint8/uint16 on the device
        return ds

    return Data(**vars(plan), trn=loader("trn", True), val=loader("val", False),
                tst=loader("tst", False) if args.tst_dir else None,
                steps_per_epoch=steps_per_epoch(plan.summaries["trn"], args.batch_size, False))


# ------------------------------------------------------------------------------------------- model
def build_optimizer(args, steps_per_epoch: int):
    import keras

    if len(args.lr) == 1:
        lr = args.lr[0]
    else:
        boundaries = [b * steps_per_epoch for b in args.lr_boundaries]
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, list(args.lr))
    if args.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=args.momentum, nesterov=True)
    if args.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    return keras.optimizers.AdamW(learning_rate=lr)


def build_or_resume(args, data: Data, paths: RunPaths, seed: int):
    """A fresh compiled model, or the last checkpoint (weights, optimiser, running covariances)."""
    import model as cfn
    from model.backbones import WeightsError

    if args.resume:
        from eval import load_checkpoint

        state = read_state(paths.state)
        net = load_checkpoint(paths.last)
        if not getattr(net, "compiled", False) or getattr(net, "optimizer", None) is None:
            raise UsageError(f"{paths.last}: saved without an optimiser (not compiled); expected "
                             "the last.keras train_cnn.py writes")
        net.jit_compile = args.jit
        log.info("resuming %s after epoch %d", paths.last, state["epoch"])
        return net, state
    try:
        net = cfn.build_model(
            num_classes=data.num_classes, image_size=data.image_size, channels=data.channels,
            backbone=args.backbone, method=args.method, shared=args.shared, weights=args.weights,
            hidden=args.hidden, reduction=args.reduction, lambda1=args.lambda1,
            lambda2=args.lambda2, corr_norm=args.corr_norm, seed=seed)
    except WeightsError as e:
        raise UsageError(f"{e.path}: --weights: {e.reason}") from None
    except ValueError as e:
        raise UsageError(f"--backbone {args.backbone}: {e}") from None
    net.compile(optimizer=build_optimizer(args, data.steps_per_epoch), jit_compile=args.jit)
    return net, {"epoch": 0, "best_score": -math.inf, "best_epoch": None}


# --------------------------------------------------------------------------------------- callbacks
def make_callbacks(args, data: Data, paths: RunPaths, state: dict, run_info: dict):
    from utils.callbacks import (
        Checkpoints,
        EpochLog,
        FiniteLossGuard,
        SplitEvaluation,
        TensorBoardLogger,
    )

    guard = FiniteLossGuard()
    extra = {"tst": data.tst} if data.tst is not None else {}
    if args.eval_trn:
        from data.loader import make_dataset

        extra["trn"], _ = make_dataset(args.trn_dir, args.batch_size, training=False,
                                       image_size=args.image_size, num_classes=data.num_classes,
                                       raw_integers=True)
    cbs = [guard, SplitEvaluation(extra, guard)]
    if args.save_model:
        cbs.append(Checkpoints(paths.best, paths.last, paths.state, guard, state, run_info))
    if args.save_log:
        cbs.append(EpochLog(paths.log_dir / "log.txt", paths.log_dir / "history.csv",
                            append=args.resume))
    if args.use_tfboard:
        tb = TensorBoardLogger.create(paths.tb_dir, sample=data.val)
        if tb is not None:
            cbs.append(tb)
    return cbs, guard


# -------------------------------------------------------------------------------------------- runs
def train_one_run(args, data: Data, k: int, strategy, device_info: dict) -> dict:
    import keras

    from utils.rundir import atomic_write_json, versions

    paths = run_paths(args, k)
    seed = args.seed + k
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        net, state = build_or_resume(args, data, paths, seed)
    run_info = {"run": k, "seed": seed}
    make_run_dirs(args, paths)
    atomic_write_json(paths.root / "args.json", {
        "args": vars(args), "run": k, "seed": seed, "devices": device_info, "versions": versions(),
        "data": {s: v.to_dict() for s, v in data.summaries.items()},
        "num_classes": data.num_classes, "class_names": data.class_names,
        "image_size": list(data.image_size), "command": sys.argv})
    callbacks, guard = make_callbacks(args, data, paths, state, run_info)
    initial_epoch = int(state["epoch"])
    if initial_epoch >= args.epochs:
        log.info("run %d already trained for %d epochs", k, initial_epoch)
    else:
        set_loader_epoch(data, initial_epoch)
        net.fit(data.trn, validation_data=data.val, epochs=args.epochs,
                initial_epoch=initial_epoch, callbacks=callbacks, shuffle=False, verbose=2)
    if guard.failure:
        raise TrainingDiverged(guard.failure)
    return evaluate_run(args, data, paths, net)


def make_run_dirs(args, paths: RunPaths) -> None:
    """The run directory and, before anything is written into it, checkpoints/ (compare.py takes a
    run directory with checkpoints/ but no last checkpoint for its own, started run)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    if args.save_model:
        paths.ckpt_dir.mkdir(parents=True, exist_ok=True)


def set_loader_epoch(data: Data, epoch: int) -> None:
    """Resume with the shuffle order the uninterrupted run would have used at this epoch."""
    setter = getattr(data.trn, "set_epoch", None)
    if setter is not None:
        setter(epoch)


class TrainingDiverged(RuntimeError):
    pass


def evaluate_run(args, data: Data, paths: RunPaths, net) -> dict:
    """The best checkpoint (or the final weights when checkpoints are off) on the test split."""
    if data.tst is None:
        log.info("no test split given: skipping the final evaluation")
        return {}
    from eval import evaluate_split, format_table, load_checkpoint, write_outputs

    best = load_checkpoint(paths.best) if args.save_model and paths.best.is_file() else net
    metrics, preds = evaluate_split(best, args.tst_dir, batch_size=args.batch_size,
                                    threshold=0.5, class_names=data.class_names,
                                    image_size=args.image_size,
                                    check_values=False)  # check_data read it in full
    write_outputs(paths.result_dir / "tst", metrics, preds, data.class_names, overwrite=True)
    log.info("test metrics of %s:\n%s", paths.best if best is not net else "the final weights",
             format_table(metrics))
    return metrics


SUMMARY_KEYS = ("OA_t1", "OA_t2", "OA_bi", "OA_tr", "kappa_t1", "kappa_t2", "change_precision",
                "change_recall", "change_f1", "change_kappa")


def summarize_runs(args, results: list[dict]) -> dict:
    """Mean ± std of each run's test metrics, written as JSON and CSV into the result path."""
    import numpy as np

    from utils.rundir import atomic_write_bytes, atomic_write_json

    results = [r for r in results if r]
    if len(results) < 2:
        return {}
    summary = {}
    for key in SUMMARY_KEYS:
        vals = [float(r[key]) for r in results if r.get(key) is not None]
        if vals:
            summary[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)),
                            "runs": vals}
    out = summary_dir(args)
    rows = ["metric,mean,std," + ",".join(f"run{k}" for k in range(len(results)))]
    rows += [f"{k},{v['mean']:.6f},{v['std']:.6f}," + ",".join(f"{x:.6f}" for x in v["runs"])
             for k, v in summary.items()]
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "summary.csv", ("\n".join(rows) + "\n").encode())
    lines = [f"{k:>18s}  {v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary.items()]
    log.info("test metrics over %d run(s):\n%s", len(results), "\n".join(lines))
    return summary


# -------------------------------------------------------------------------------------------- main
def main(argv=None, checked_splits=()) -> int:
    """checked_splits: see ``check_data`` (compare.py's runs of splits it has checked)."""
    args = parse_args(argv)
    configure_logging()
    select_devices(args.gpu)
    resolve_splits(args)
    check_outputs(args)  # nothing a user made is replaced; every output directory can be made
    if args.demo:
        ensure_demo_data()
    # NumPy only: a data error is one line, before TensorFlow starts
    plan = check_data(args, checked_splits)
    check_model_inputs(args, plan)
    data = load_data(args, plan)
    from utils.devices import make_strategy, setup_backend

    device_info = setup_backend(args.mixed_precision)
    strategy = make_strategy(device_info)
    try:
        results = [train_one_run(args, data, k, strategy, device_info)
                   for k in range(args.runs)]
    except TrainingDiverged as e:
        log.error("%s", e)
        return 1
    summarize_runs(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
