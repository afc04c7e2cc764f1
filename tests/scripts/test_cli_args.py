"""The scripts' command lines without training: flags, usage errors, one config from the parsed
arguments, parser choices from the model's tables, compare.py's reserved flags from parser.py."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

import compare
import parser as cli
import train_cnn
from evaluation.config import EvalConfig
from model.config import BACKBONES, METHODS, ModelConfig
from training.config import TrainConfig


@pytest.mark.parametrize("value,expected", [("False", False), ("0", False), ("no", False),
                                            ("true", True), ("1", True), ("YES", True)])
def test_boolean_flags_parse_like_a_user_means(value, expected):
    args = train_cnn.parse_args(["--data_dir", "d", "-tb", value, "-sm", value, "-log", value])
    assert args.use_tfboard is expected and args.save_model is expected
    assert args.save_log is expected


@pytest.mark.parametrize("value,expected", [("none", None), ("None", None), ("random", None),
                                            ("imagenet", "imagenet"), ("w/vgg.weights.h5", "w/vgg.weights.h5")])
def test_weights_none_means_random_initialisation(value, expected):
    args = train_cnn.parse_args(["--data_dir", "d", "--weights", value])
    assert args.weights == expected
    assert train_cnn.parse_args(["--data_dir", "d"]).weights is None


def test_bad_flag_values_are_usage_errors(capsys):
    for argv in (["--data_dir", "d", "-tb", "maybe"], ["--data_dir", "d", "-b", "0"],
                 ["--data_dir", "d", "--lr", "1e-3,1e-4"], ["--data_dir", "d", "-g", "gpu0"],
                 ["--data_dir", "d", "--lambda1", "-1"], ["--data_dir", "d", "--image_size", "0"],
                 ["--data_dir", "d", "--lr_boundaries", "60,30"], ["--resume", "--overwrite"],
                 ["--data_dir", "d", "--fusion_bn", "frozen"],
                 ["--data_dir", "d", "--change_margin", "-0.5"],
                 ["--data_dir", "d", "--view_variance", "-1"],
                 ["--data_dir", "d", "--fusion_views", "layer"], ["-e", "5"]):
        with pytest.raises(SystemExit) as exc:
            train_cnn.parse_args(argv)
        assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--methods", "corrfusion,svm"], ["--", "--method", "dcca"],
                                   ["--", "-e", "zero"]])
def test_bad_options_are_usage_errors(extra, tmp_path):
    with pytest.raises(SystemExit) as exc:
        compare.parse_args(["--data_dir", str(tmp_path), *extra])
    assert exc.value.code == 2


def test_fusion_options_reach_the_model_config():
    args = train_cnn.parse_args(["--data_dir", "d", "--fusion_views", "batch", "--fusion_bn", "frozen",
                                 "--tied_start", "true", "--change_margin", "1.4",
                                 "--view_variance", "0.5"])
    m = TrainConfig.from_args(args).model
    assert (m.fusion_views, m.fusion_bn, m.tied_start, m.change_margin) == ("batch", "frozen", True, 1.4)
    assert m.view_variance == 0.5
    d = TrainConfig.from_args(train_cnn.parse_args(["--data_dir", "d"])).model
    assert (d.fusion_views, d.fusion_distance, d.tied_start, d.change_margin) == ("pair", "rms", False, 0.0)
    o = TrainConfig.from_args(train_cnn.parse_args(["--data_dir", "d", "--preset", "original"])).model
    assert (o.fusion_views, o.fusion_distance, o.tied_start, o.change_margin, o.view_variance) == (
        "paper", "euclidean", False, 0.0, 0.0)  # the paper's module under the preset


def test_the_config_holds_every_parsed_argument():
    args = train_cnn.parse_args(["--data_dir", "d", "--hidden", "64", "--lr", "0.1", "-e", "3",
                                 "--image_size", "32", "-n", "5", "--method", "dcca"])
    config = TrainConfig.from_args(args)
    assert config.model.hidden == 64 and config.model.method == "dcca"
    assert config.model.image_size == (32, 32) and config.num_classes == 5
    assert config.lr == (0.1,) and config.epochs == 3 and config.data_dir == "d"
    flat = config.to_args()
    # args.json's "args": every parsed argument as it was (JSON has lists, not tuples)
    assert json.loads(json.dumps(vars(args))) == {k: flat[k] for k in vars(args)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 4
    moved = config.replace(method="baseline", seed=9, workdir="w")
    assert moved.model.method == "baseline" and moved.seed == 9 and moved.model.seed == config.seed


def test_every_config_field_is_an_argument():
    dests = {a.dest for a in cli.train_parser()._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} - {"model"} <= dests
    dests = {a.dest for a in cli.eval_parser()._actions}
    assert {f.name for f in dataclasses.fields(EvalConfig)} <= dests


def test_parser_choices_and_defaults_come_from_the_model_tables():
    actions = {a.dest: a for a in cli.train_parser()._actions}
    assert tuple(actions["backbone"].choices) == tuple(BACKBONES)
    assert tuple(actions["method"].choices) == tuple(METHODS)
    for name in ("hidden", "reduction", "lambda1", "lambda2", "corr_norm", "method"):
        assert actions[name].default == getattr(ModelConfig, name), name
    assert set(compare.ALL_METHODS) >= set(METHODS)


def test_compare_reserves_every_spelling_of_its_own_options():
    reserved = cli.option_strings(cli.train_parser(), compare.RESERVED)
    assert {"-trn", "--trn_dir", "--method", "--seed", "--demo", "--resume"} <= reserved
    assert "-e" not in reserved


def test_the_original_preset_and_explicit_flags_over_it():
    args = train_cnn.parse_args(["--data_dir", "d", "--preset", "original"])
    config = TrainConfig.from_args(args)
    m = config.model
    assert (m.backbone, m.shared, m.bn, m.pooling) == ("resnet50", False, "frozen", "flatten")
    assert (m.decov_init, m.decov_penalty, m.fusion_init, m.l2) == ("orthogonal", "original",
                                                                     "glorot_uniform", 1e-4)
    assert (m.fusion_bn, m.fusion_distance) == ("frozen", "euclidean")  # the paper's formula
    assert (config.optimizer, config.lr, config.lr_boundaries, config.momentum, config.nesterov) == (
        "sgd", (1e-3,), (), 0.9, True)
    assert config.preset == "original" and config.to_args()["preset"] == "original"
    # explicit flags win, in any spelling argparse accepts (abbreviations, --flag=value)
    args = train_cnn.parse_args(["--data_dir", "d", "--preset", "original", "--backbone", "small",
                                 "--hid", "64", "--pooling=avg", "--no-nesterov", "--shared"])
    c = TrainConfig.from_args(args)
    assert (c.model.backbone, c.model.hidden, c.model.pooling, c.nesterov, c.model.shared) == (
        "small", 64, "avg", False, True)
    assert c.model.bn == "frozen" and c.lr == (1e-3,)
    # the preset's values stay under --demo (which only fills what neither set)
    demo = TrainConfig.from_args(train_cnn.parse_args(["--demo", "--preset", "original", "-e", "1"]))
    assert demo.optimizer == "sgd" and demo.model.backbone == "resnet50" and demo.epochs == 1


def test_the_original_preset_sets_every_row_that_has_a_flag():
    """issue 22: --preset original also starts ResNet-50 as keras_applications did, builds the
    original's comparators, adds eps per feature in the distance, evaluates trn (and tst) every
    epoch and trains one run (611d99b calls main once; the 3-run loop came with c39f2a2). Asserted
    on the parsed config and on what args.json records (``to_args``), without training."""
    config = TrainConfig.from_args(train_cnn.parse_args(["--data_dir", "d", "--preset", "original"]))
    m = config.model
    assert (m.resnet_init, m.comparators, m.dist_epsilon) == ("keras_applications", "original",
                                                              "per_feature")
    assert (config.eval_trn, config.eval_tst, config.runs) == (True, True, 1)
    assert m.input_norm == "shard_max"  # the original's LoadNpy: each shard / its maximum
    saved = json.loads(json.dumps(config.to_args()))
    assert {k: saved[k] for k in ("resnet_init", "comparators", "dist_epsilon", "eval_trn", "runs")} == {
        "resnet_init": "keras_applications", "comparators": "original", "dist_epsilon": "per_feature",
        "eval_trn": True, "runs": 1}
    # every preset entry is an option of train_cnn.py, recorded under its own name
    dests = {a.dest for a in cli.train_parser()._actions}
    assert set(cli.PRESETS["original"]) <= dests and set(cli.PRESETS["original"]) <= set(saved)
    # the project's defaults without the preset; explicit flags win over it
    c = TrainConfig.from_args(train_cnn.parse_args(["--data_dir", "d"]))
    assert (c.model.resnet_init, c.model.comparators, c.model.dist_epsilon, c.eval_trn, c.runs) == (
        "keras", "project", "once", False, 1)
    c = TrainConfig.from_args(train_cnn.parse_args(
        ["--data_dir", "d", "--preset", "original", "--runs", "3", "--eval_trn", "false",
         "--comparators", "project", "--resnet_init=keras", "--dist_eps", "once"]))
    assert (c.runs, c.eval_trn, c.model.comparators, c.model.resnet_init, c.model.dist_epsilon) == (
        3, False, "project", "keras", "once")
    # the help says what the original ran
    assert "trained one" in " ".join(cli.train_parser().format_help().split())


def test_the_defaults_follow_the_original_optimiser():
    """DESIGN §2.3 / issue 11: constant 1e-3, SGD with Nesterov momentum 0.9; the piecewise
    schedule is an option."""
    c = TrainConfig.from_args(train_cnn.parse_args(["--data_dir", "d"]))
    assert (c.optimizer, c.lr, c.lr_boundaries, c.momentum, c.nesterov) == ("sgd", (1e-3,), (), 0.9, True)
    assert c.preset is None and c.model.l2 == 1e-4 and c.model.bn == "batch" and c.model.shared
    c = TrainConfig.from_args(train_cnn.parse_args(
        ["--data_dir", "d", "--lr", "5e-3,1e-3,1e-4,1e-5", "--lr_boundaries", "30,60,90"]))
    assert c.lr == (5e-3, 1e-3, 1e-4, 1e-5) and c.lr_boundaries == (30, 60, 90)


def test_compare_takes_the_backbone_of_a_forwarded_preset(tmp_path):
    args = compare.parse_args(["--data_dir", str(tmp_path), "--", "--preset", "original"])
    assert args.backbone == "resnet50" and args.train.model.bn == "frozen"
    args = compare.parse_args(["--data_dir", str(tmp_path), "--backbone", "small", "--",
                               "--preset", "original"])
    assert args.backbone == "small" and args.train.model.backbone == "small"
    assert compare.parse_args(["--data_dir", str(tmp_path)]).backbone == "vgg16"


def test_eval_takes_the_original_model_dir_flag():
    for flag in ("-m", "--model", "--model_dir"):
        args = cli.eval_parser().parse_args([flag, "run", "-val", "v", "-tst", "t"])
        assert args.model == "run" and (args.val_dir, args.tst_dir) == ("v", "t")


@pytest.mark.parametrize("forward", [["--method", "dcca"], ["--meth", "dcca"], ["--seed=3"],
                                     ["-trn", "x"], ["--resum"]])
def test_compare_refuses_its_own_options_in_any_spelling(forward, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        compare.parse_args(["--data_dir", str(tmp_path), "--", *forward])
    assert exc.value.code == 2 and "set by compare.py itself" in capsys.readouterr().err


def _help(build) -> str:
    return build().format_help()


def _line(text: str, flag: str) -> str:
    """An option's entry in a help text, its wrapped lines joined."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("  " + flag)]
    assert len(starts) == 1, (flag, starts)
    out = [lines[starts[0]].strip()]
    for ln in lines[starts[0] + 1:]:
        if not ln.startswith(" " * 10):  # the next option or group
            break
        out.append(ln.strip())
    return " ".join(out)


def test_help_texts_say_each_default_once_and_readably():
    import predict
    from evaluation import figures

    train = _help(cli.train_parser)
    assert "(default: 0)" in _line(train, "--seed")
    assert _line(train, "-b BATCH_SIZE").count("32") == 1
    shared = _line(train, "--shared, --no-shared")
    assert shared.count("default") == 1 and "(default: True)" in shared
    lr = _line(train, "--lr LR")
    assert "(default: 1e-3)" in lr and "[" not in lr
    assert "default" not in _line(train, "--lr_boundaries")
    assert "(default: True)" in _line(train, "--eval_tst, --no-eval_tst")
    assert _line(train, "-v, --verbose")
    for text in (train, _help(cli.eval_parser), _help(compare.compare_parser),
                 _help(predict.build_parser), _help(figures.build_parser)):
        assert not re.search(r"\(([^()]+)\)\s+\(default: \1\)", text)  # "(32) (default: 32)"
        assert "default: []" not in text and "default: None" not in text
    diagrams = _line(_help(figures.build_parser), "--diagrams, --no-diagrams")
    assert "(default: True)" in diagrams


def test_shared_and_lr_parse_as_before():
    args = train_cnn.parse_args(["--data_dir", "d"])
    assert args.shared is True and args.lr == [1e-3] and args.lr_boundaries == []
    assert train_cnn.parse_args(["--data_dir", "d", "--no-shared"]).shared is False
    args = train_cnn.parse_args(["--data_dir", "d", "--lr", "5e-3,1e-3", "--lr_boundaries", "3"])
    assert args.lr == [5e-3, 1e-3] and args.lr_boundaries == [3]
