"""The schema of the `probe` group: which probes run, on which points and images, and each probe's
solver settings (phases/training/probes, phases/training/evaluation.py). Part of the run's schema
(phases.config.schema), kept apart as the largest node; the same rules hold: every setting's type,
default and explaining comment, written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class BatchNormMode(str, Enum):
    """How BatchNorm normalises while activations are extracted (phases/training/features.py)."""

    precise_eval = "precise_eval"  # eval mode, statistics recomputed on probe images at the current weights
    eval = "eval"  # eval mode with the running statistics as training left them
    train = "train"  # batch statistics in batches of schedule.batch_size: the published script's quirk



class ReconstructionSolver(str, Enum):
    closed_form = "closed_form"  # the exact ridge optimum of the affine decoder
    sgd = "sgd"  # the published recipe: Adam on the per-pixel MSE


class ClassifierSolver(str, Enum):
    lbfgs = "lbfgs"  # full-batch multinomial logistic regression on the cached activations
    sgd = "sgd"  # the published recipe: SGD with momentum and a step decay


class TransferTask(str, Enum):
    dominance = "dominance"  # colour_dominance for RGB datasets, quadrant_dominance for grayscale ones
    colour_dominance = "colour_dominance"  # which of R, G, B has the largest sum (RGB only; the paper's)
    quadrant_dominance = "quadrant_dominance"  # which image quadrant has the largest sum (any image)
    dataset_switch = "dataset_switch"  # the paired dataset's own labels (fashion_mnist <-> mnist, cifar10 <-> cifar100)
    class_switch = "class_switch"  # dataset_switch inside one dataset: its classes outside dataset.class_subset


@dataclass
class AdamRecipeConfig:
    """The published script's decoder training: Adam on the per-pixel MSE (reconstruction_conv uses it as is)."""

    epochs: int = 20
    lr: float = 3.0e-4
    weight_decay: float = 1.0e-5
    batch_size: int = 128


@dataclass
class ReconstructionProbeConfig(AdamRecipeConfig):
    solver: ReconstructionSolver = ReconstructionSolver.closed_form  # sgd: the Adam recipe above
    # closed_form: ridge penalty relative to the features' scale, lambda = ridge * trace(X^T X) / features,
    # so the same setting means the same regularisation at step 0 and after activations grew 100-fold.
    # gcv: chosen per probe point by generalised cross-validation on its training images at the run's
    # first evaluation (the initial network), then kept for the whole run, so the penalty cannot move
    # from step to step and bend the curve; recorded as metric `ridge`. Or a number: that penalty.
    # Any, not float | str: structured configs take no unions; phases.config.validation checks it.
    ridge: Any = "gcv"


@dataclass
class SGDRecipeConfig:
    """The published script's classifier training: SGD with momentum, lr x0.1 after lr_drop_epoch."""

    epochs: int = 20
    lr: float = 0.01
    momentum: float = 0.9
    lr_drop_epoch: int = 10
    batch_size: int = 128


@dataclass
class LinearProbeConfig(SGDRecipeConfig):
    solver: ClassifierSolver = ClassifierSolver.lbfgs  # sgd: the SGD recipe above
    # lbfgs: penalty on the squared weights (standardised features), added to the mean loss; 1e-2
    # matches the SGD recipe's test accuracy (make bench).
    l2: float = 1.0e-2
    # lbfgs: iterations on the full probe training set; null = 15 when preconditioned, else 30 (either
    # ends within 2% of the optimum's loss and 0.5 points of its test accuracy).
    max_iterations: int | None = None
    # lbfgs: solve in the metric of the features' correlation (the point's Gram, shared with the ridge
    # decoder), which needs half the iterations.
    preconditioned: bool = True


@dataclass
class TransferProbeConfig:
    tasks: list[TransferTask] = field(default_factory=lambda: [TransferTask.dominance])
    validation_fraction: float = 0.2  # of the transfer training images, held out and reported as split "val"
    classifier: LinearProbeConfig = field(default_factory=LinearProbeConfig)


@dataclass
class SampleLossConfig:
    quantiles: list[float] = field(default_factory=lambda: [0.5, 0.9, 0.99])  # of the per-sample loss
    worst_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])  # share of loss they carry


@dataclass
class EffectiveRankConfig:
    """No settings: the participation ratio and entropy rank of the activations' covariance eigenvalues on
    the train and test probe images, exact (phases/training/probes/representation.py)."""


@dataclass
class CKAConfig:
    # Linear CKA reads a seeded subset of at most this many of each point's probe training images (the
    # same at every step) and keeps their activations until the next evaluation for cka_previous: memory
    # of max_images x features x 4 bytes per point (2000 x 16384 features: 131 MB); cost ~ max_images^2.
    max_images: int = 2000


@dataclass
class ClassCollapseConfig:
    """No settings: trace(Sigma_W) / trace(Sigma_B) on the train probe images and the nearest-class-mean
    accuracy on the train and test ones, exact (phases/training/probes/representation.py)."""


@dataclass
class ProbeConfig:
    # Probe points to measure; null = every point the arch declares; `penultimate` names the input of
    # the final Linear in any arch (block5 in the VGGs, pooled in the ResNets). Probing every point is
    # several times slower on a CPU.
    layers: list[str] | None = field(default_factory=lambda: ["penultimate", "logits"])
    train_size: int | None = 5000  # images the probes are fitted on (a seeded subset of the training split); null = all
    # A point with d features is fitted on max(train_size, min_images_per_feature x d) training images (at
    # most the split): a least-squares estimate from n images is inflated by about d / (n - d), 1/3 at 4 x d,
    # and past n = d the penalty, not the representation, sets the RL. 0 = train_size for every point.
    min_images_per_feature: float = 4.0
    test_size: int | None = 5000  # images the probes are scored on (a seeded subset of the test split); null = all
    # Training images the classifier's own train accuracy is measured on; its test accuracy always
    # uses the whole (possibly dataset.test_size-reduced) test split.
    classifier_train_size: int = 5000
    batch_size: int = 256  # images per forward pass when collecting activations (speed only; fits CPU caches)
    # precise_eval: the probe training images BatchNorm statistics are recomputed on, in one batch (the pass that
    # extracts them): lower it for large images if that batch does not fit in memory (a run whose batch would pass
    # max_activation_gb is refused before training, saying how many images fit).
    calibration_size: int = 2000
    # Average-pool feature maps larger than this side (e.g. 4 -> at most C x 4 x 4) before probing;
    # null = probe the maps as they are. Pooling changes what is measured: only set it deliberately.
    spatial_pool: int | None = None
    # The probed layers' activations of one evaluation step (probe train + test images, float32) may
    # use at most this much memory; a larger configuration fails before training, saying what to change.
    max_activation_gb: float = 8.0
    bn_mode: BatchNormMode = BatchNormMode.precise_eval
    # What runs at each evaluation, each configured in the node of its name below: layer probes
    # (phases.training.probes: reconstruction, reconstruction_recipe, reconstruction_conv, linear, linear_recipe,
    # transfer; a `_recipe` probe is the published recipe, fitted beside its fast probe on the same activations;
    # effective_rank, cka, class_collapse: measures of the activations that fit nothing, to read beside the RL)
    # and measurements of the classifier's output (phases.training.output_metrics: sample_loss).
    enabled: list[str] = field(default_factory=lambda: ["reconstruction", "linear", "sample_loss"])
    reconstruction: ReconstructionProbeConfig = field(default_factory=ReconstructionProbeConfig)
    reconstruction_recipe: AdamRecipeConfig = field(default_factory=AdamRecipeConfig)
    reconstruction_conv: AdamRecipeConfig = field(default_factory=AdamRecipeConfig)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    linear_recipe: SGDRecipeConfig = field(default_factory=SGDRecipeConfig)
    transfer: TransferProbeConfig = field(default_factory=TransferProbeConfig)
    sample_loss: SampleLossConfig = field(default_factory=SampleLossConfig)
    effective_rank: EffectiveRankConfig = field(default_factory=EffectiveRankConfig)
    cka: CKAConfig = field(default_factory=CKAConfig)
    class_collapse: ClassCollapseConfig = field(default_factory=ClassCollapseConfig)
