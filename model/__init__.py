"""CorrFusionNet model package (docs/DESIGN.md §2): backbones, CorrFusion, CCA/DCCA, losses, network.

The Keras parts are imported on first use, so that the NumPy/scikit-learn modules (`model.bovw`,
`model.ksfa`, used by `python -m evaluation.baselines`) start without loading TensorFlow.
"""

import importlib

_LAZY = {
    "BACKBONES": "model.backbones",
    "METHODS": "model.network",
    "CorrFusionNet": "model.network",
    "build_model": "model.network",
    "load_model": "model.network",
    "ModelConfig": "model.config",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
