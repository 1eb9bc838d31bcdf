"""Architectures by name, each declaring the probe points whose activations the probes read.

A probe point is a name (`block1`, ..., `logits`) bound to the submodule whose output is that
activation, so probes never depend on slicing `children()` with per-architecture offsets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from omegaconf import DictConfig
from torch import nn
from torchvision.ops import Conv2dNormActivation

from phases.config import ConfigError
from phases.data import DatasetInfo


class ProbedNetwork(nn.Sequential):
    """A sequential classifier whose `probe_points` map a point's name to the submodule producing it."""

    def __init__(self, layers: OrderedDict[str, nn.Module], probe_points: dict[str, str]):
        super().__init__(layers)
        for module_name in probe_points.values():
            self.get_submodule(module_name)  # fails at construction, not at the first evaluation
        self.probe_points = dict(probe_points)


ModelBuilder = Callable[[DictConfig, DatasetInfo], ProbedNetwork]
MODELS: dict[str, ModelBuilder] = {}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def add(builder: ModelBuilder) -> ModelBuilder:
        MODELS[name] = builder
        return builder

    return add


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


@register("vgg8")
def vgg8(arch: DictConfig, info: DatasetInfo) -> ProbedNetwork:
    """The published script's VGG-8: five Conv3x3 stride-2 (no bias) + BatchNorm + ReLU blocks with
    32, 64, 128, 256, 512 channels take 32x32 to 1x1; then flatten and one Linear to the classes."""
    if info.image_size != 32:
        raise ConfigError("dataset.image_size", info.image_size, "32 for vgg8 (five stride-2 blocks reach 1x1)")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = info.channels
    for index, channels in enumerate((32, 64, 128, 256, 512), start=1):
        out_channels = scaled(channels, arch.width)
        layers[f"block{index}"] = Conv2dNormActivation(
            in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False,
            norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU,
        )
        in_channels = out_channels
    layers["flatten"] = nn.Flatten()
    layers["classifier"] = nn.Linear(in_channels, info.classes)
    probe_points = {f"block{index}": f"block{index}" for index in range(1, 5)}
    probe_points["block5"] = "flatten"  # the 512-d penultimate features (block5's 1x1 map, flattened)
    probe_points["logits"] = "classifier"
    return ProbedNetwork(layers, probe_points)


def build_model(arch: DictConfig, info: DatasetInfo) -> ProbedNetwork:
    if arch.name not in MODELS:
        raise ConfigError("arch.name", arch.name, f"known architectures: {', '.join(sorted(MODELS))}")
    return MODELS[arch.name](arch, info)
