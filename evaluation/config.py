"""The frozen evaluation configuration built from parsed arguments (standard library only):
``EvalConfig`` is what ``evaluation.evaluate.evaluate_checkpoint`` runs, made from eval.py's
``argparse.Namespace`` by ``utils.cli.from_namespace``."""

from __future__ import annotations

from dataclasses import dataclass

from utils.cli import from_namespace


@dataclass(frozen=True)
class EvalConfig:
    """Everything ``eval.py`` was asked to do."""

    model: str
    data_dir: str | None
    trn_dir: str | None
    val_dir: str | None
    tst_dir: str | None
    batch_size: int
    image_size: tuple | None
    threshold: float
    result_path: str | None
    overwrite: bool
    gpu: str | None
    mixed_precision: bool
    jit: bool | None  # None: utils.devices.resolve_jit's backend default
    verbose: bool
    sha256: str | None = None  # with a URL as model: the download's expected SHA-256

    @classmethod
    def from_args(cls, args) -> EvalConfig:
        return from_namespace(cls, args)
