"""Training: ``train(TrainConfig)``, what train_cnn.py and compare.py run (docs/DESIGN.md §2.3, §5).

Reads like a table of contents: splits -> output checks -> data checks -> memory estimate ->
lock -> loaders -> per run (model -> fit -> evaluate the best checkpoint) -> summary. Everything
that can be checked without TensorFlow is checked before it starts and before anything is written:
every output path (``utils.rundir``: writable, and nothing a user made is replaced without --resume
or --overwrite), every split, the activation memory of a batch, and with --resume each run's state,
checkpoints and settings against the data and the command line (``model.checkpoints``). Then every
output directory is locked for the whole training (one writer per directory) and TensorFlow starts
in ``setup_backend`` (its native start-up lines hidden unless --verbose),
after the devices are chosen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import model as cfn
from data.shards import ShardError
from data.split_summary import (
    check_class_count,
    check_class_names,
    input_size,
    inspect_split,
    read_labels,
    require_labels,
)
from data.splits import resolve_split_dirs
from data.stats import band_statistics
from data.synthetic import demo_data_dir, ensure_demo_data
from evaluation.evaluate import evaluate_split, write_outputs
from evaluation.metrics import format_table, mean_std
from model.checkpoints import (
    check_compatible,
    checkpoint_signature,
    is_compiled,
    load_checkpoint,
    model_fields,
    read_checkpoint_config,
)
from model.config import BACKBONES, INPUT_SCALING, LEGACY_INPUT_NORM, STAT_NORMS
from training import multiworker
from training.config import TrainConfig
from training.multiworker import uses_custom_loop, wait_for_workers, writes_results
from training.optimizers import build_optimizer, class_weights
from utils.cli import UsageError, disk_full, is_disk_full, progress_verbose
from utils.devices import (
    cluster_from_env,
    make_strategy,
    resolve_jit,
    select_devices,
    setup_backend,
)
from utils.rundir import (
    RunPaths,
    atomic_write_bytes,
    atomic_write_json,
    check_outputs,
    check_resume_settings,
    lock_dirs,
    make_run_dirs,
    output_roots,
    remove_stale_temp_files,
    resume_state,
    run_paths,
    summary_dir,
    versions,
)

log = logging.getLogger("corrfusion.train")


class TrainingDiverged(RuntimeError):
    """A non-finite loss stopped the run (the message names the epoch and step)."""


def train(config: TrainConfig, checked_splits=(), supervise_join: bool = False) -> int:
    """Train ``config.runs`` runs and evaluate each; 0, or 1 when a run diverged.

    checked_splits: split directories the caller has read through with ``inspect_split`` already
    (compare.py, once for all its runs): their headers and labels are checked, their image data
    is not read again. Bad input raises ``UsageError`` (or a subclass) before anything is written.
    supervise_join: with TF_CONFIG, run this process's command line again as a child that does
    the training, bounded by --join_timeout and ended on SIGTERM/SIGINT while it waits for the
    other workers (``training.multiworker.supervise``; SystemExit with the child's status); for a
    command whose whole work is this call (train_cnn.py).
    """
    select_devices(config.gpu)  # before TensorFlow starts
    cluster = cluster_from_env()  # TF_CONFIG: multi-worker training (training.multiworker)
    if cluster is not None and supervise_join:
        if not multiworker.supervised():  # the training in a child process: the join it waits in cannot
            # be bounded or interrupted from inside (--join_timeout, SIGTERM/SIGINT); the
            # child's exit status is this command's
            raise SystemExit(multiworker.supervise(cluster, config.join_timeout))
    try:
        if cluster is not None and not cluster.is_chief:
            with multiworker.temporary_workdir(config) as worker_config:  # only the chief writes the run dir
                return _train(worker_config, checked_splits, cluster)
        return _train(config, checked_splits, cluster)
    except OSError as e:  # a full disk while writing: one line, and how to go on
        if not is_disk_full(e):
            raise
        raise disk_full(e, "free space, then run the same command with --resume to continue "
                           "after the last finished epoch") from None


def _train(config: TrainConfig, checked_splits, cluster) -> int:
    config = resolve_splits(config)
    modes = check_outputs(config)  # nothing a user made is replaced; every output dir can be made
    if config.demo:
        ensure_demo_data()
    plan = check_data(config, checked_splits)  # NumPy only: a data error is one line
    if cluster is not None:
        multiworker.check_batches(config, plan.summaries, cluster.num_workers)
    check_model_inputs(config, plan, modes)
    config = resumed_input_norm(config, modes)
    check_memory(config, plan)
    config = config.replace(ce_weights=class_weights(config.class_weight, plan))
    plan = input_statistics(config, plan, modes)  # a constant band: one line, nothing written
    if cluster is not None:  # the workers join before anything is written
        device_info = setup_backend(config.mixed_precision)
        strategy = make_strategy(device_info, join=wait_for_workers)
    with lock_dirs(output_roots(config)):  # one writer per directory, until the end
        modes = check_outputs(config)  # again: another process may have written meanwhile
        if cluster is None:
            device_info = setup_backend(config.mixed_precision)  # TensorFlow starts (quietly)
            strategy = make_strategy(device_info, join=wait_for_workers)  # before load_data
        data = load_data(config, plan)
        try:
            results = [finished_run_results(config, k) if mode == "done" else
                       train_one_run(config.replace(resume=mode == "resume"), data, k, strategy,
                                     device_info)
                       for k, mode in enumerate(modes)]
        except TrainingDiverged as e:
            log.error("%s", e)
            return 1
        summarize_runs(config, results)
    return 0


def resolve_splits(config: TrainConfig) -> TrainConfig:
    """The config with its trn/val/tst directories (``--data_dir``, or the demo's cached data)."""
    data_dir = str(demo_data_dir()) if config.demo else config.data_dir
    given = {"trn": config.trn_dir, "val": config.val_dir, "tst": config.tst_dir}
    dirs = resolve_split_dirs(data_dir, given)
    if dirs["trn"] is None or dirs["val"] is None:
        raise UsageError("need a training and a validation split: give --data_dir or -trn and -val")
    return config.replace(data_dir=data_dir, **{f"{s}_dir": d for s, d in dirs.items()})


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
    #: data.stats.BandStatistics of trn (--input_norm bands*, set by ``input_statistics``), or None
    input_stats: object = field(default=None, kw_only=True)


@dataclass
class Data(DataPlan):
    """The checked splits with their streaming loaders (load_data)."""

    trn: object
    val: object
    tst: object | None
    steps_per_epoch: int


def check_data(config, checked_splits=()) -> DataPlan:
    """Validate every split (docs/DESIGN.md §4), the class count and the image shapes.

    checked_splits: split directories the caller has read through with ``inspect_split`` already
    (compare.py, once for all its runs): their headers and labels are checked, their image data
    is not read again.
    """
    splits = {s: d for s, d in (("trn", config.trn_dir), ("val", config.val_dir), ("tst", config.tst_dir))
              if d}
    summaries = {}
    for split, split_dir in splits.items():
        summaries[split] = inspect_split(split_dir, check_values=split_dir not in checked_splits)
        require_labels(summaries[split], split, "training")
        if summaries[split].n_pairs == 0:
            raise ShardError(f"{split_dir}: label_t1/label_t2: no usable pairs; expected at least "
                             "one pair with labels > 0 on both dates")
    check_class_names(summaries)  # the same classes under the same names in every split
    k_data = max(s.num_classes for s in summaries.values())
    num_classes = config.num_classes or k_data
    if config.num_classes:
        check_class_count(num_classes, f"-n/--num_classes {num_classes}")
    else:
        worst = max(summaries.items(), key=lambda kv: kv[1].num_classes)
        check_class_count(num_classes, f"{splits[worst[0]]}: class_names/labels")
    if num_classes < k_data:
        worst = max(summaries.items(), key=lambda kv: kv[1].num_classes)
        raise UsageError(f"{splits[worst[0]]}: labels go up to {k_data} but -n/--num_classes is "
                         f"{num_classes}")
    trn_shape = tuple(summaries["trn"].image_shape)
    for split, summary in summaries.items():
        shape = tuple(summary.image_shape)
        if shape[-1] != trn_shape[-1] or (config.image_size is None and shape != trn_shape):
            hint = "" if shape[-1] != trn_shape[-1] else "; pass --image_size to resize"
            raise UsageError(f"{splits[split]}: image shape {shape} differs from the training "
                             f"split's {trn_shape}{hint}")
    names = summaries["trn"].class_names
    return DataPlan(splits, summaries, num_classes, input_size(summaries["trn"], config.image_size),
                    trn_shape[-1], list(names) if names is not None else None)


def input_statistics(config, plan: DataPlan, modes) -> DataPlan:
    """``plan`` with ``input_stats``: the trn split's band statistics (``data.stats``, one
    streaming pass, NumPy only) when ``--input_norm`` needs them and a run starts from scratch;
    a resumed run keeps those in its checkpoint. Logs one line per band."""

    mode = config.model.input_norm
    if mode not in STAT_NORMS or "fresh" not in modes:
        return plan
    stats = band_statistics(plan.splits["trn"], "trn", plan.summaries["trn"])
    log.info("--input_norm %s: statistics of the training split (%d + %d data pixels, %d + %d "
             "nodata pixels left out):", mode, *stats.count, *stats.nodata)
    for line in stats.lines(mode):
        log.info("  %s", line)
    return dataclasses.replace(plan, input_stats=stats)


def resumed_input_norm(config, modes):
    """With --resume of runs saved before ``input_norm`` existed (their checkpoints have no such
    field; their inputs were dtype-scaled): the config takes the runs' ``dtype``, said in one
    log line, so that the loaders feed them what they were trained on. Runs saved since then
    carry it in args.json, and a different one is refused by ``check_resume_settings``."""

    if config.model.input_norm == LEGACY_INPUT_NORM:
        return config
    legacy = [k for k, mode in enumerate(modes) if mode != "fresh" and "input_norm" not in
              model_fields(read_checkpoint_config(run_paths(config, k).last))]
    if legacy:
        log.warning("run(s) %s saved before input normalisation was a model option: resuming "
                    "with their dtype scaling (--input_norm %s)",
                    ", ".join(str(k) for k in legacy), LEGACY_INPUT_NORM)
        return config.replace(input_norm=LEGACY_INPUT_NORM)
    return config


def check_model_inputs(config, plan: DataPlan, modes=None) -> None:
    """With --resume every begun run's settings (args.json), last checkpoint and state against the
    command line and the data; the --weights file when a run starts from scratch."""
    modes = modes or ["fresh"] * config.runs
    adopt = not config.num_classes
    for k, mode in enumerate(modes):
        if mode != "fresh":
            paths = run_paths(config, k)
            check_resumable(config, plan, paths, adopt)  # first: names the checkpoint and data
            check_resume_settings(config, paths)
            adopt = False
    if ("fresh" in modes and config.model.weights not in (None, "imagenet")
            and not Path(config.model.weights).is_file()):
        raise UsageError(f"{config.model.weights}: --weights: no such file; expected none, imagenet or a "
                         "weights file")


def check_resumable(config, plan: DataPlan, paths: RunPaths, adopt: bool) -> None:
    """The run's state readable; last.keras (and best.keras) CorrFusionNet archives for this
    data's class count and input size, last.keras with its optimiser; read without TensorFlow.
    adopt: see ``check_checkpoint_fits``."""
    resume_state(paths)
    saved = read_checkpoint_config(paths.last)
    check_checkpoint_fits(config, plan, paths.last, saved, adopt=adopt)
    if not is_compiled(saved):
        raise UsageError(f"{paths.last}: saved without an optimiser (not compiled); expected the "
                         "last.keras train_cnn.py writes")
    if paths.best.is_file():
        check_checkpoint_fits(config, plan, paths.best, read_checkpoint_config(paths.best))


def check_checkpoint_fits(config, plan: DataPlan, ckpt: Path, saved: dict, adopt=False) -> None:
    """The checkpoint's input (H, W, C) and class count K fit every split (``model.checkpoints.check_compatible``).
    adopt: a K above the data's largest label becomes the run's class count (trained with -n K)."""
    signature = checkpoint_signature(ckpt, saved)
    for split, summary in plan.summaries.items():
        check_compatible(signature, summary, plan.image_size, plan.splits[split],
                         f"checkpoint {ckpt}")
    if signature[1] != plan.num_classes:
        if not adopt:
            raise UsageError(f"{ckpt}: a checkpoint for {signature[1]} classes; expected "
                             f"{plan.num_classes} (-n/--num_classes, or the other checkpoints')")
        plan.num_classes = signature[1]


def available_memory() -> int | None:
    """Bytes of memory this process may use: the machine's physical memory, or the cgroup's
    limit when lower (containers); None when unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        total = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(limit_file).read_text().strip())
        except (OSError, ValueError):  # absent, or "max"
            continue
        total = limit if total is None else min(total, limit)
    return total


def activation_bytes(config, plan: DataPlan) -> int:
    """A lower bound of the memory a training batch's backbone activations take: batch × 2 dates
    × H × W × the backbone's values per pixel (``model.config.BackboneInfo``) × bytes per value
    (2 with --mixed_precision, else 4). The gradients and the rest of the network come on top."""

    per_pixel = BACKBONES[config.backbone].activations_per_pixel
    h, w = plan.image_size
    return int(config.batch_size * 2 * h * w * per_pixel * (2 if config.mixed_precision else 4))


def check_memory(config, plan: DataPlan) -> None:
    """Refuse an image size (and batch) whose activations alone cannot fit in memory: a one-line
    error with the estimate, before TensorFlow starts and before anything is written, instead of
    the allocator's crash (a segmentation fault at --image_size 4000)."""
    need, have = activation_bytes(config, plan), available_memory()
    if have is not None and need > have:
        h, w = plan.image_size
        flag = (f"--image_size {h},{w}" if config.image_size is not None
                else f"-b/--batch_size {config.batch_size}")  # the flag the user gave
        size = "" if config.image_size is not None else f" of {h}x{w} (the shards' size)"
        raise UsageError(f"{flag}: a training batch of {config.batch_size} pairs{size} "
                         f"needs at least {need / 2**30:.1f} GiB for the {config.backbone} "
                         f"backbone's activations, more than the {have / 2**30:.1f} GiB of memory "
                         "here; use a smaller --image_size or -b/--batch_size")


def load_data(config, plan: DataPlan) -> Data:
    """The streaming loaders of the checked splits."""
    from data.loader import make_dataset, steps_per_epoch  # Keras: the loader is the backend's

    for s in plan.summaries.values():
        log.info("%s", s.format())

    def loader(split, training):
        ds, _ = make_dataset(plan.splits[split], config.batch_size, training=training,
                             seed=config.seed, image_size=plan.image_size,
                             num_classes=plan.num_classes, raw_integers=True,
                             scaling=INPUT_SCALING[config.model.input_norm])  # the model normalises
        return ds

    return Data(**vars(plan), trn=loader("trn", True), val=loader("val", False),
                tst=loader("tst", False) if config.tst_dir else None,
                steps_per_epoch=steps_per_epoch(plan.summaries["trn"], config.batch_size, False))


# ------------------------------------------------------------------------------------------- model
def build_or_resume(config, data: Data, paths: RunPaths, seed: int):
    """A fresh compiled model, or the last checkpoint (weights, optimiser, running covariances)."""
    from model.backbones import WeightsError  # deferred: model.backbones imports Keras

    if config.resume:
        state = dict(resume_state(paths))
        net = load_checkpoint(paths.last, require_optimizer=True)
        net.jit_compile = resolve_jit(config.jit)
        check_iterations(net, state, data.steps_per_epoch, paths.last)
        log.info("resuming %s after epoch %d", paths.last, state["epoch"])
        return net, state
    try:
        net = cfn.build_model(config.model.replace(
            num_classes=data.num_classes, image_size=data.image_size, channels=data.channels,
            seed=seed))
    except WeightsError as e:
        raise UsageError(f"{e.path}: --weights: {e.reason}") from None
    except ValueError as e:
        raise UsageError(f"--backbone {config.backbone}: {e}") from None
    if data.input_stats is not None:
        net.set_input_statistics(*data.input_stats.for_mode(config.model.input_norm))
    net.compile(optimizer=build_optimizer(config, data.steps_per_epoch),
                jit_compile=resolve_jit(config.jit))
    return net, {"epoch": 0, "best_score": -math.inf, "best_epoch": None}


def check_iterations(net, state: dict, steps_per_epoch: int, path: Path) -> None:
    """The optimiser's step count is the state's epoch times the steps per epoch; a checkpoint of
    an older version whose last_state.json lags it (a kill between the two writes) resumes after
    the epoch the optimiser says, so the schedule does not shift."""
    iterations = int(np.asarray(net.optimizer.iterations))
    expected = state["epoch"] * steps_per_epoch
    if steps_per_epoch and iterations != expected:
        if iterations % steps_per_epoch:  # not whole epochs: trust the state, say so
            log.warning("%s: the optimiser made %d steps, expected %d (epoch %d of %d steps): "
                        "resuming after epoch %d", path, iterations, expected, state["epoch"],
                        steps_per_epoch, state["epoch"])
            return
        log.warning("%s: the optimiser made %d steps (epoch %d), the state says epoch %d: "
                    "resuming after epoch %d", path, iterations, iterations // steps_per_epoch,
                    state["epoch"], iterations // steps_per_epoch)
        state["epoch"] = iterations // steps_per_epoch


# --------------------------------------------------------------------------------------- callbacks
def make_callbacks(config, data: Data, paths: RunPaths, state: dict, run_info: dict,
                   multi_worker: bool = False):
    from data.loader import make_dataset  # deferred: data.loader imports Keras
    from training.callbacks import (
        Checkpoints,
        EpochLog,
        EpochSummary,
        FiniteLossGuard,
        FusionHistograms,
        SplitEvaluation,
    )
    from training.tensorboard import (  # deferred: training.tensorboard imports Keras
        TensorBoardLogger,
        tb_hparams,
        truncate_event_files,
    )

    guard = FiniteLossGuard()
    extra = {"tst": data.tst} if data.tst is not None and config.eval_tst else {}
    if config.eval_trn:
        extra["trn"], _ = make_dataset(config.trn_dir, config.batch_size, training=False,
                                       image_size=data.image_size, num_classes=data.num_classes,
                                       raw_integers=True,
                                       scaling=INPUT_SCALING[config.model.input_norm])
    # the epoch's log rows before its checkpoint: a kill in between leaves rows past the
    # checkpoint's epoch, which a resume drops (EpochLog, truncate_event_files), never a gap
    cbs = [guard, SplitEvaluation(extra, guard), EpochSummary()]
    if config.save_log:
        cbs.append(EpochLog(paths.log_dir / "log.txt", paths.log_dir / "history.csv",
                            append=config.resume, keep_epochs=int(state["epoch"])))
    if config.use_tfboard:
        if config.resume:
            truncate_event_files(paths.tb_dir, int(state["epoch"]))
        if multi_worker and config.tb_images:
            log.info("multi-worker: TensorBoard's validation figures (confusion, transitions, "
                     "PR curve) are not drawn (they need model.predict, which Keras does not "
                     "run under MultiWorkerMirroredStrategy); scalars and hparams are written")
        tb = TensorBoardLogger.create(paths.tb_dir,
                                      figures=None if multi_worker else validation_figures(config, data),
                                      hparams=tb_hparams(config, run_info["seed"]))
        if tb is not None:
            cbs.append(tb)
        fusion = FusionHistograms.create(paths.tb_dir, data.val, config.method,
                                         writer=tb.writer("val") if tb is not None else None)
        if fusion is not None:
            cbs.append(fusion)
    if config.save_model:
        cbs.append(Checkpoints(paths.best, paths.last, paths.state, guard, state, run_info))
    return cbs, guard


def validation_figures(config, data: Data):
    """What TensorBoard's validation figures are drawn from (None with ``--tb_images 0``)."""
    from training.tensorboard import (
        ValidationFigures,  # deferred: training.tensorboard imports Keras
    )

    if not config.tb_images:
        return None
    labels = read_labels(config.val_dir, num_classes=data.num_classes)
    names = data.class_names or [f"class {k + 1}" for k in range(data.num_classes)]
    return ValidationFigures(data.val, labels["label_t1"], labels["label_t2"], list(names),
                             config.tb_images)


# -------------------------------------------------------------------------------------------- runs
def train_one_run(config, data: Data, k: int, strategy, device_info: dict) -> dict:
    import keras  # deferred: Keras loads on first use

    paths = run_paths(config, k)
    seed = config.seed + k
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        net, state = build_or_resume(config, data, paths, seed)
    run_info = {"run": k, "seed": seed}
    make_run_dirs(config, paths)
    for d in (paths.ckpt_dir, paths.result_dir / "tst", paths.log_dir):
        remove_stale_temp_files(d)
    if config.resume and config.save_model:
        from training.callbacks import restore_best  # deferred: training.callbacks imports Keras

        restore_best(paths.best, paths.last, state)  # a kill between last.keras and best.keras
    if not config.resume:  # a new run: not the event files of the one it replaces
        from training.tensorboard import (
            remove_event_files,  # deferred: training.tensorboard imports Keras
        )

        remove_event_files(paths.tb_dir)
    atomic_write_json(paths.root / "args.json", {
        "args": config.to_args(), "run": k, "seed": seed, "devices": device_info, "versions": versions(),
        "data": {s: v.to_dict() for s, v in data.summaries.items()},
        "num_classes": data.num_classes, "class_names": data.class_names,
        "image_size": list(data.image_size), "command": sys.argv,
        "input_norm": {"mode": net.config.input_norm, **(net.input_statistics() or {})}})

    callbacks, guard = make_callbacks(config, data, paths, state, run_info,
                                      multi_worker=uses_custom_loop(strategy))
    initial_epoch = int(state["epoch"])
    if initial_epoch >= config.epochs:
        log.info("run %d already trained for %d epochs", k, initial_epoch)
    else:
        set_loader_epoch(data, initial_epoch)
        fit(net, config, data, callbacks, guard, strategy, initial_epoch)
    if guard.failure:
        raise TrainingDiverged(guard.failure)
    if not writes_results(strategy):  # a multi-worker non-chief: the chief evaluates
        return {}
    return evaluate_run(config, data, paths, net)


def fit(net, config, data: Data, callbacks, guard, strategy, initial_epoch: int) -> None:
    """``model.fit``, or under MultiWorkerMirroredStrategy (TF_CONFIG) the loop of
    ``training.multiworker``, which Keras' fit does not run under."""

    if multiworker.uses_custom_loop(strategy):
        multiworker.fit(net, config, data, callbacks, guard, strategy, initial_epoch)
        return
    from training.callbacks import per_step_waits  # deferred: training.callbacks imports Keras

    waits = per_step_waits(callbacks)
    if waits:
        log.warning("callback(s) %s read every step's logs: fit waits for each step (not "
                    "async_safe)", ", ".join(waits))
    net.fit(data.trn, validation_data=data.val, epochs=config.epochs,
            initial_epoch=initial_epoch, callbacks=callbacks, shuffle=False,
            verbose=progress_verbose())


def finished_run_results(config, k: int) -> dict:
    """--resume of a run that trained every epoch and was evaluated: its test metrics, read back."""
    paths = run_paths(config, k)
    log.info("run %d: trained %d epochs and evaluated already: skipped", k, config.epochs)
    if not config.tst_dir:
        return {}
    path = paths.result_dir / "tst" / "results.json"
    try:
        return json.loads(path.read_text())["metrics"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: unreadable ({type(e).__name__}); expected the results.json "
                         "train_cnn.py writes") from None


def set_loader_epoch(data: Data, epoch: int) -> None:
    """Resume with the shuffle order the uninterrupted run would have used at this epoch."""
    setter = getattr(data.trn, "set_epoch", None)
    if setter is not None:
        setter(epoch)


def evaluate_run(config, data: Data, paths: RunPaths, net) -> dict:
    """The best checkpoint (or the final weights when checkpoints are off) on the test split."""
    if data.tst is None:
        log.info("no test split given: skipping the final evaluation")
        return {}

    best = load_checkpoint(paths.best) if config.save_model and paths.best.is_file() else net
    metrics, preds = evaluate_split(best, config.tst_dir, batch_size=config.batch_size,
                                    threshold=0.5, class_names=data.class_names,
                                    image_size=data.image_size,
                                    check_values=False)  # check_data read it in full
    write_outputs(paths.result_dir / "tst", metrics, preds, data.class_names, overwrite=True,
                  geo=data.summaries["tst"].geo)
    log.info("test metrics of %s:\n%s", paths.best if best is not net else "the final weights",
             format_table(metrics))
    return metrics


SUMMARY_KEYS = ("OA_t1", "OA_t2", "OA_bi", "OA_tr", "kappa_t1", "kappa_t2", "change_precision",
                "change_recall", "change_f1", "change_kappa")


def summarize_runs(config, results: list[dict]) -> dict:
    """Mean ± std (sample standard deviation, ddof = 1) of each run's test metrics, written as
    JSON and CSV into the result path."""
    results = [r for r in results if r]
    if len(results) < 2:
        return {}
    summary = {}
    for key in SUMMARY_KEYS:
        vals = [float(r[key]) for r in results if r.get(key) is not None]
        if len(vals) > 1:
            mean, std = mean_std(vals)
            summary[key] = {"mean": mean, "std": std, "runs": vals}
    out = summary_dir(config)
    rows = ["metric,mean,std," + ",".join(f"run{k}" for k in range(len(results)))]
    rows += [f"{k},{v['mean']:.6f},{v['std']:.6f}," + ",".join(f"{x:.6f}" for x in v["runs"])
             for k, v in summary.items()]
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "summary.csv", ("\n".join(rows) + "\n").encode())
    lines = [f"{k:>18s}  {v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary.items()]
    log.info("test metrics over %d run(s):\n%s", len(results), "\n".join(lines))
    return summary


