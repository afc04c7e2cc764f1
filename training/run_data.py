"""The data of a training run (docs/DESIGN.md §2.3): the checked splits (:class:`DataPlan`: class
count, the resolved input size, channels, class names), the trn split's input statistics, the checks
a resumed run's checkpoints and the activation memory must pass, and the streaming loaders
(:class:`Data`). Everything but ``load_data`` runs without TensorFlow, before anything is written."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from data.shards import ShardError
from data.split_summary import (
    check_class_count,
    check_class_names,
    input_size,
    inspect_split,
    require_labels,
)
from data.stats import band_statistics
from model.checkpoints import (
    check_compatible,
    checkpoint_signature,
    is_compiled,
    model_fields,
    read_checkpoint_config,
)
from model.config import BACKBONES, INPUT_SCALING, LEGACY_INPUT_NORM, STAT_NORMS
from utils.cli import UsageError
from utils.rundir import (
    RunPaths,
    check_resume_settings,
    resume_state,
    run_paths,
)

log = logging.getLogger("corrfusion.train")


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
