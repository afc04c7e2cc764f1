"""CorrFusionNet model package (DESIGN.md §2): backbones, CorrFusion, CCA/DCCA, losses, network."""

from model.backbones import BACKBONES
from model.network import METHODS, CorrFusionNet, build_model, load_model

__all__ = ["BACKBONES", "METHODS", "CorrFusionNet", "build_model", "load_model"]
