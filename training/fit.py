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

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

import model as cfn
from data.split_summary import (
    read_labels,
)
from data.splits import resolve_split_dirs
from data.synthetic import demo_data_dir, ensure_demo_data
from evaluation.evaluate import evaluate_split, write_outputs
from evaluation.metrics import format_table, mean_std
from model.checkpoints import (
    load_checkpoint,
)
from model.config import INPUT_SCALING
from training import multiworker
from training.config import TrainConfig
from training.multiworker import uses_custom_loop, wait_for_workers, writes_results
from training.optimizers import build_optimizer, class_weights
from training.run_data import (
    Data,
    check_data,
    check_memory,
    check_model_inputs,
    input_statistics,
    load_data,
    resumed_input_norm,
)
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


def train(config: TrainConfig, checked_splits=()) -> int:
    """Train ``config.runs`` runs and evaluate each; 0, or 1 when a run diverged.

    checked_splits: split directories the caller has read through with ``inspect_split`` already
    (compare.py, once for all its runs): their headers and labels are checked, their image data
    is not read again. Bad input raises ``UsageError`` (or a subclass) before anything is written.
    Under TF_CONFIG this process is one worker; train_cnn.py first hands its command line to a
    supervised child (``training.multiworker.supervise_join``), which then calls this.
    """
    select_devices(config.gpu)  # before TensorFlow starts
    cluster = cluster_from_env()  # TF_CONFIG: multi-worker training (training.multiworker)
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


