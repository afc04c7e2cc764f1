"""What a CorrFusionNet is made of, without Keras: the backbone and method tables and the frozen
``ModelConfig`` (docs/DESIGN.md §2, §6).

This module imports only the standard library, so that ``parser.py`` can offer the tables' names as
``--backbone``/``--method`` choices and answer ``-h`` before TensorFlow starts. ``model.backbones``
and ``model.network`` build their Keras tables from these: a backbone or method exists in one
place, here, and the command line, the network and the checks follow.

Adding a hyperparameter of the network: one field of ``ModelConfig`` (with its default and the
check in ``ModelConfig.check``), one ``add_argument`` line in ``parser.py`` with the same ``dest``;
``utils.cli.from_namespace`` carries the parsed value into the config, ``CorrFusionNet`` reads it
from ``self.config``, and ``get_config`` / ``.keras`` files carry it with the rest.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneInfo:
    """One backbone: its ``keras.applications`` class name (None: the project's small CNN), the
    smallest legal input side, the ImageNet input mapping mode of its pretrained weights, and the
    values its layers output per input pixel of one image (summed over every layer, counted on a
    96 x 96 input, 160 for InceptionV3): what a forward pass keeps for the backward one, the
    basis of ``training.fit.check_memory``'s estimate."""

    application: str | None
    model_name: str
    min_size: int
    mapping: str
    activations_per_pixel: float = 0.0


#: name -> backbone (``model.backbones.BACKBONES`` adds the builders)
BACKBONES = {
    "vgg16": BackboneInfo("VGG16", "vgg16", 32, "caffe", 303),
    "vgg19": BackboneInfo("VGG19", "vgg19", 32, "caffe", 329),
    "resnet50": BackboneInfo("ResNet50", "resnet50", 32, "caffe", 740),
    "inceptionv3": BackboneInfo("InceptionV3", "inception_v3", 75, "tf", 305),
    "densenet121": BackboneInfo("DenseNet121", "densenet121", 32, "torch", 996),
    "small": BackboneInfo(None, "small_cnn", 8, "none", 183),
}


@dataclass(frozen=True)
class MethodInfo:
    """One row of the methods table (docs/DESIGN.md §2.2): whether the heads read the fused
    features, the named loss terms the method adds (logged under these names), whether it has two
    batch-normalised views (the ``cancorr`` metric)."""

    fused_heads: bool
    losses: tuple[str, ...]
    has_views: bool


#: name -> method (``model.network.METHODS`` adds the forward steps and losses)
METHODS = {
    "corrfusion": MethodInfo(True, ("corr_loss", "decov_loss"), True),
    "baseline": MethodInfo(False, (), False),
    "dcca": MethodInfo(False, ("dcca_loss",), True),
    "sdcca": MethodInfo(False, ("corr_loss", "decov_loss"), True),
}

CORR_NORMS = ("batch", "unchanged")
#: ``bn``: batch statistics in training (this project), or ``frozen``: every BatchNormalization
#: (backbone, CorrFusion, the BN views) always in inference mode with its moving mean 0 and
#: variance 1, i.e. a trainable per-feature affine map γ·x/√(1 + ε) + β: what the original's TF1
#: graph ran (``training`` left at False, update ops never run)
BN_MODES = ("batch", "frozen")
#: ``pooling`` of the backbone's last feature map: global average (this project) or flatten (original)
POOLINGS = ("avg", "flatten")
#: ``decov_init``: the running covariances start as the identity (this project), as a random
#: orthogonal matrix (the original CorrFusion's ``tf.orthogonal_initializer()``) or at zeros (the
#: original SoftDCCANet's ``tf.zeros_like``)
DECOV_INITS = ("identity", "orthogonal", "zeros")
#: ``decov_penalty``: Σ_{j≠k}|C_jk| (this project) or the original's Σ|C| − Σ diag(C); the two
#: agree while the diagonal is non-negative (identity start), not from an orthogonal start
DECOV_PENALTIES = ("offdiag", "original")
#: ``fusion_init``: initialiser of CorrFusion's squeeze/excite kernels (the original left
#: ``tf.layers.dense``'s Glorot-uniform default there)
FUSION_INITS = ("glorot_normal", "glorot_uniform")
#: ``fusion_distance``: the distance CorrFusion's weight w = 1 − tanh(dist) reads: ``euclidean``
#: √(Σ_j ΔX_bn² + ε), the paper's; ``rms`` the same ÷ √(d/r), the root-mean-square difference per
#: feature, whose scale does not grow with the width d/r. The correlation loss sums the Euclidean
#: distance in both cases (with ``rms``: λ1·√(d/r)·dist), so λ1 keeps the paper's meaning
#: (docs/experiments.md "Choosing the defaults")
FUSION_DISTANCES = ("euclidean", "rms")
#: ``fusion_bn``: the BatchNormalization inside the CorrFusion module, independent of ``bn`` (the
#: backbone's and the views'): ``batch`` statistics in training, or ``frozen`` (inference mode for
#: ever, moving mean 0 / variance 1: a trainable affine map, the original's TF1 graph)
FUSION_BNS = ("batch", "frozen")
#: ``fusion_views``: the two views CorrFusion's distance reads (``model.corrfusion.CorrFusion``)
FUSION_VIEWS = {
    "paper": "ReLU(squeeze), then BN with a trainable scale and offset (the paper's)",
    "batch": "linear squeeze, then BN without scale/offset: unit variance over the batch",
    "pair": "linear squeeze, then each view standardised over its own features (LayerNorm "
            "without scale/offset): dist = sqrt(2 (1 - r)) with rms, r the pair's correlation; "
            "no batch statistics, the same in training and at inference",
}

#: ``input_norm``: how the model normalises its input images (``model.normalization``,
#: docs/DESIGN.md §2). The statistics of ``bands``/``bands_per_date`` are computed by
#: ``data.stats`` over the training split and stored in the model (its checkpoint).
INPUT_NORMS = {
    "bands": "per-band mean/std of the training split, pooled over both dates (default)",
    "bands_per_date": "per-band mean/std of the training split, separately for t1 and t2",
    "dtype": "integers / dtype max, floats as [0, 1]; then - 0.5 (the scaling before input_norm existed)",
    "shard_max": "each date of each shard / the largest value in that shard's array, - 0.5 "
                 "(the original code's LoadNpy)",
}
#: input_norm -> what the loader does before the model (``data.loader.SCALINGS``): raw values for
#: the model to standardise, the §2 dtype scaling, or the per-shard maximum scaling
INPUT_SCALING = {"bands": "raw", "bands_per_date": "raw", "dtype": "dtype", "shard_max": "shard_max"}
#: the ``input_norm`` modes whose statistics come from the training split
STAT_NORMS = ("bands", "bands_per_date")
#: what a checkpoint saved before ``input_norm`` existed was fed: dtype scaling
LEGACY_INPUT_NORM = "dtype"

#: ``resnet_init``: how the ``resnet50`` backbone starts. ``keras``: Keras 3's ResNet50 (Glorot-uniform
#: conv kernels, BN ε = 1.001e-5). ``keras_applications``: what the original's TF 1.11
#: ``tf.keras.applications.ResNet50`` built from keras_applications' ``resnet50.py`` (1.0.6; the same in
#: 1.0.4–1.0.8): He-normal conv kernels (truncated normal, fan-in, scale 2) and BN with Keras' default
#: ε = 1e-3. The other backbones ignore it.
RESNET_INITS = ("keras", "keras_applications")
#: ``comparators``: what ``baseline`` and ``sdcca`` are. ``project``: two Dense layers per date, heads on
#: them, and (sdcca) the correlation loss on unchanged pairs with λ1, λ2 and ``decov_init``/``penalty``.
#: ``original``: the original's NaiveResNet / SoftDCCANet (commit 1c33068): a third Dense(hidden, ReLU)
#: layer per date with L2 and a BN after it, the heads reading the BN views, Glorot-uniform Dense and
#: head kernels (``xavier_initializer``); sdcca adds ``Soft_DCCA_loss`` on the BN views of all pairs
#: with the constants of ``ORIGINAL_SOFT_DCCA`` (λ1, λ2, ``decov_init``, ``decov_penalty`` then apply
#: to corrfusion only). ``corrfusion`` and ``dcca`` are the same under both.
COMPARATORS = ("project", "original")
#: the original SoftDCCANet's ``Soft_DCCA_loss(eta1=1e-2, eta2=1e-3)``: its running covariances start
#: at zeros (``tf.zeros_like``) and its penalty is Σ|C| − Σ diag(C)
ORIGINAL_SOFT_DCCA = {"lambda1": 1e-2, "lambda2": 1e-3, "decov_init": "zeros",
                      "decov_penalty": "original"}
#: ``dist_epsilon``: where CorrFusion's ε enters the distance. ``once``: √(Σ_j Δ_j² + ε) (this project);
#: ``per_feature``: the original's ``sqrt(reduce_sum(square(Δ) + eps))`` = √(Σ_j (Δ_j² + ε)), i.e.
#: √(Σ_j Δ_j² + (d/r)·ε) over the d/r view features
DIST_EPSILONS = ("once", "per_feature")

#: the ModelConfig fields with a fixed set of values (parser.py offers them as choices)
CHOICES = {"input_norm": tuple(INPUT_NORMS), "corr_norm": CORR_NORMS, "bn": BN_MODES, "pooling": POOLINGS,
           "decov_init": DECOV_INITS, "decov_penalty": DECOV_PENALTIES, "fusion_init": FUSION_INITS,
           "fusion_distance": FUSION_DISTANCES, "fusion_bn": FUSION_BNS,
           "fusion_views": tuple(FUSION_VIEWS),
           "resnet_init": RESNET_INITS, "comparators": COMPARATORS, "dist_epsilon": DIST_EPSILONS}


@dataclass(frozen=True)
class ModelConfig:
    """Every constructor argument of ``CorrFusionNet``; ``get_config`` stores it, ``from_config``
    reads it back.

    Attributes:
        num_classes: scene classes K (None until the data say; ``check`` requires it).
        image_size: (H, W) of the inputs (None: the data's size; ``check`` requires it).
        channels: bands C.
        backbone: key of ``BACKBONES``.
        method: key of ``METHODS``.
        shared: one backbone for both dates (siamese) or one per date.
        weights: backbone weights at construction: None (random), ``"imagenet"`` or a file path;
            a model restored from a file gets its weights from the file.
        hidden: units d of the two per-date Dense layers.
        reduction: CorrFusion reduction ratio r.
        lambda1: weight of the correlation loss on unchanged pairs (corrfusion, sdcca).
        lambda2: weight of the soft decorrelation loss (corrfusion, sdcca).
        rho: running covariance factor ρ.
        corr_norm: ``"batch"`` (÷ n, the original) or ``"unchanged"`` (÷ Σu).
        l2: L2 factor on the per-date Dense kernels in the original's convention
            (``tf.contrib.layers.l2_regularizer``): the loss is l2·Σw²/2, i.e. Keras'
            ``L2(l2 / 2)``.
        bn: ``BN_MODES``: batch statistics in training, or frozen (the original's TF1 graph).
        pooling: ``POOLINGS``: global average pooling or flatten of the backbone's feature map.
        decov_init: ``DECOV_INITS``: start of the soft-decorrelation running covariances.
        decov_penalty: ``DECOV_PENALTIES``: the soft-decorrelation penalty's form.
        fusion_init: ``FUSION_INITS``: initialiser of CorrFusion's squeeze/excite kernels.
        fusion_distance: ``FUSION_DISTANCES``: the distance w = 1 − tanh(dist) reads.
        fusion_bn: ``FUSION_BNS``: the CorrFusion module's own BN mode (independent of ``bn``).
        fusion_views: ``FUSION_VIEWS``: the views CorrFusion's distance reads.
        tied_start: date 2's per-date layers (the Dense layers fc1/fc2, the head, CorrFusion's
            squeeze/excite) start as copies of date 1's, separate weights that then train apart;
            with a shared backbone the two dates' features of an unchanged pair then agree from
            the first step. False: independent draws (the original's).
        change_margin: corrfusion's correlation loss also penalises changed pairs whose distance
            is below this margin, λ1·max(0, margin − dist) (``model.losses.correlation_loss``), so
            that w is small where the class changed; 0 is the paper's loss (unchanged pairs only).
            In the units of ``fusion_distance``.
        view_variance: corrfusion: weight γ of a variance term on the two views over the batch
            (``model.losses.view_variance_loss``, VICReg's), added to the correlation loss, so that
            the views cannot collapse to one pattern shared by every pair; 0 (the paper's): none.
            Default 1 (docs/experiments.md "Choosing the defaults"); checkpoints from before it
            load with 0, the loss they were trained with.
        resnet_init: ``RESNET_INITS``: Keras 3's ResNet50 start or keras_applications' (He-normal
            kernels, BN ε = 1e-3); only the ``resnet50`` backbone reads it.
        comparators: ``COMPARATORS``: this project's ``baseline``/``sdcca`` or the original's
            NaiveResNet / SoftDCCANet.
        dist_epsilon: ``DIST_EPSILONS``: CorrFusion's ε once under the square root, or per view
            feature as the original.
        ce_weights: per-date class weights of the two cross-entropies, ``((w_1..w_K) of t1,
            (w_1..w_K) of t2)``, or None (plain means). In training CE_t is the weighted mean
            Σ_i w_{y_i}·CE_i / Σ_i w_{y_i} with date t's weights; evaluation (``training`` False:
            val/tst, ``evaluate``) logs the plain means, comparable across runs with and without
            weights. Set by ``train_cnn.py --class_weight balanced`` from the trn split's class
            histograms (``training.optimizers.balanced_class_weights``); kept in ``.keras`` files, so
            ``--resume`` continues with them.
        seed: seed of the head/fusion initialisers and of the small CNN.
        input_mapping: map [-0.5, 0.5] to the pretrained network's input range; None → when
            ``weights`` is given and the backbone has a mapping.
        input_norm: ``INPUT_NORMS``: the input normalisation (``model.normalization``). A config
            without this field (a checkpoint saved before it existed) means ``dtype``.
    """

    num_classes: int | None = None
    image_size: tuple[int, int] | None = (64, 64)
    channels: int = 3
    backbone: str = "small"
    method: str = "corrfusion"
    shared: bool = True
    weights: str | None = None
    hidden: int = 1024
    reduction: int = 2
    lambda1: float = 0.1
    lambda2: float = 1e-4
    rho: float = 0.9
    corr_norm: str = "batch"
    l2: float = 1e-4
    bn: str = "batch"
    pooling: str = "avg"
    decov_init: str = "identity"
    decov_penalty: str = "offdiag"
    fusion_init: str = "glorot_normal"
    fusion_distance: str = "rms"
    fusion_bn: str = "batch"
    fusion_views: str = "pair"
    tied_start: bool = False
    change_margin: float = 0.0
    view_variance: float = 1.0
    resnet_init: str = "keras"
    comparators: str = "project"
    dist_epsilon: str = "once"
    ce_weights: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    seed: int | None = None
    input_mapping: bool | None = None
    input_norm: str = "bands"

    def __post_init__(self):
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        if self.weights is not None:
            object.__setattr__(self, "weights", str(self.weights))
        if self.ce_weights is not None:  # lists from JSON (args.json, .keras config) -> tuples
            object.__setattr__(self, "ce_weights",
                               tuple(tuple(float(v) for v in w) for w in self.ce_weights))

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["image_size"] is not None:
            out["image_size"] = list(out["image_size"])
        return out

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; expected some of {sorted(names)}.")
        return cls(**values)

    def check(self) -> ModelConfig:
        """Raise ValueError naming the offending value; returns self (with input_mapping set)."""
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {sorted(METHODS)}.")
        if self.backbone not in BACKBONES:
            raise ValueError(f"Unknown backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}.")
        if self.num_classes is None or int(self.num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2; received num_classes={self.num_classes!r}.")
        if self.image_size is None or len(self.image_size) != 2:
            raise ValueError(f"image_size must be (H, W); received image_size={self.image_size!r}.")
        if int(self.hidden) < 1 or int(self.hidden) % int(self.reduction):
            raise ValueError(
                f"hidden must be a positive multiple of reduction; received hidden={self.hidden!r}, "
                f"reduction={self.reduction!r}."
            )
        for key, choices in CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(
                    f"{key} must be one of {choices}; received {key}={getattr(self, key)!r}."
                )
        if self.fusion_views == "pair" and self.fusion_bn == "frozen":
            raise ValueError(
                "fusion_bn='frozen' has no effect with fusion_views='pair' (its views are "
                "standardised per pair, without BatchNormalization); use fusion_views='paper' or "
                "'batch' with it."
            )
        for key in ("lambda1", "lambda2", "l2", "change_margin", "view_variance"):
            if float(getattr(self, key)) < 0:
                raise ValueError(f"{key} must be >= 0; received {key}={getattr(self, key)!r}.")
        if self.ce_weights is not None:
            k = int(self.num_classes)
            ok = len(self.ce_weights) == 2 and all(
                len(w) == k and all(math.isfinite(v) and v >= 0 for v in w) and sum(w) > 0
                for w in self.ce_weights)
            if not ok:
                raise ValueError(
                    f"ce_weights must be two sequences of {k} finite non-negative floats (t1, t2), "
                    f"each with a positive sum; received ce_weights={self.ce_weights!r}."
                )
        if self.input_mapping is None:
            mapping = self.weights is not None and BACKBONES[self.backbone].mapping != "none"
            return self.replace(input_mapping=mapping)
        return self
