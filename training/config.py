"""The frozen training configuration built from parsed arguments (standard library only).

``TrainConfig`` is what ``training.fit.train`` runs (``evaluation.config.EvalConfig`` is eval.py's);
it is made from an ``argparse.Namespace`` by ``utils.cli.from_namespace``, which copies every
field whose name is an argument's ``dest``. The network's hyperparameters live in ``model.config.ModelConfig`` inside ``TrainConfig.model``. So a new option is
one field here (or in ``ModelConfig``) and one ``add_argument`` line in ``parser.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from model.config import ModelConfig
from utils.cli import from_namespace


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``train_cnn.py`` was asked to do; ``model`` holds the network's config.

    No defaults: they are ``parser.py``'s (and ``ModelConfig``'s), so a field without its
    ``add_argument`` line is an error when the config is made, not a silent default."""

    model: ModelConfig
    # data
    data_dir: str | None
    trn_dir: str | None
    val_dir: str | None
    tst_dir: str | None
    batch_size: int
    demo: bool
    # optimisation
    epochs: int
    optimizer: str
    lr: tuple
    lr_boundaries: tuple
    momentum: float
    nesterov: bool
    preset: str | None
    seed: int
    runs: int
    eval_trn: bool
    eval_tst: bool  # the test split's figures after every epoch (never used for selection)
    class_weight: str  # none | balanced: ModelConfig.ce_weights from the trn histograms
    # output
    workdir: str | None
    log_path: str | None
    model_path: str | None
    tb_path: str | None
    result_path: str | None
    use_tfboard: bool
    tb_images: int  # every K epochs: validation figures in TensorBoard (0: never)
    save_model: bool
    save_log: bool
    resume: bool
    overwrite: bool
    # devices
    gpu: str | None
    mixed_precision: bool
    jit: bool | None  # None: utils.devices.resolve_jit's backend default
    join_timeout: float  # multi-worker: seconds to wait for the other workers (0: forever)
    verbose: bool  # debug log and TensorFlow's start-up lines (utils.cli.configure_logging)

    @classmethod
    def from_args(cls, args) -> TrainConfig:
        return from_namespace(cls, args, model=from_namespace(ModelConfig, args))

    def __getattr__(self, name):
        """The model's fields the command line sets (``config.method``, ``config.image_size``,
        ...) read through ``model``; the config's own fields (``seed``) come first."""
        if name == "model" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes``; ``ModelConfig`` field names go into ``model``."""
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        model = {k: changes.pop(k) for k in list(changes) if k in names and k != "seed"}
        if model:
            changes["model"] = self.model.replace(**model)
        return dataclasses.replace(self, **changes)

    def to_args(self) -> dict:
        """The flat ``{dest: value}`` of the command line, as ``args.json``'s ``"args"`` holds it."""
        out = self.model.to_dict()
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                    if f.name != "model"})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
