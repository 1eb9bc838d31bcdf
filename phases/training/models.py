"""Architectures by name, each declaring the probe points whose activations the probes read.

A probe point is a name (`block1`, ..., `logits`) bound to the submodule whose output is that
activation, so probes never depend on slicing `children()` with per-architecture offsets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1
from torchvision.ops import Conv2dNormActivation

from phases.config.validation import ConfigError
from phases.training.data import DatasetInfo
from phases.training.external_models import build_external, is_external
from phases.training.probe_points import ProbePoints


class ProbedNetwork(ProbePoints, nn.Sequential):
    """A sequential classifier whose `probe_points` map a point's name to the submodule producing it.

    Every network declares `logits` (the classifier's output), which the evaluation reads, and, when
    it has one, its `penultimate` point: the features the final Linear reads. The points' logic (shapes,
    depths, `probe.layers`) is phases.training.probe_points's, shared with the library and user models.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], probe_points: dict[str, str], penultimate: str | None):
        super().__init__(layers)
        self.declare_points(probe_points, penultimate)


ModelBuilder = Callable[[DictConfig, DatasetInfo], ProbedNetwork]
MODELS: dict[str, ModelBuilder] = {}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def add(builder: ModelBuilder) -> ModelBuilder:
        MODELS[name] = builder
        return builder

    return add


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


# The published script's strided VGGs: Conv3x3 (no bias) + BatchNorm + ReLU layers, no max-pool, stride 2
# where `down` is 1; five strides take 32x32 to 1x1. Channels are after the input, per conv layer.
STRIDED_VGGS = {
    "vgg8": ((32, 64, 128, 256, 512), (1, 1, 1, 1, 1)),
    "vgg11": ((32, 64, 128, 128, 256, 256, 512, 512), (1, 1, 0, 1, 0, 1, 0, 1)),
    "vgg13": ((32, 32, 64, 128, 128, 256, 256, 512, 512, 512), (1, 0, 1, 0, 1, 0, 1, 0, 0, 1)),
    "vgg16": ((32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512),
              (0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1)),
}


def _strided_vgg(name: str, arch: DictConfig, info: DatasetInfo) -> ProbedNetwork:
    """The script's VGG-8/11/13/16: one probe point per conv layer (`block1`...), the last one's 1x1 map
    flattened into the 512-d penultimate features; then one Linear to the classes."""
    if info.image_size != 32:
        raise ConfigError("dataset.image_size", info.image_size, f"32 for {name} (five stride-2 layers reach 1x1)")
    channels, downs = STRIDED_VGGS[name]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = info.channels
    for index, (width, down) in enumerate(zip(channels, downs, strict=True), start=1):
        out_channels = scaled(width, arch.width)
        layers[f"block{index}"] = Conv2dNormActivation(
            in_channels, out_channels, kernel_size=3, stride=2 if down else 1, padding=1, bias=False,
            norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU,
        )
        in_channels = out_channels
    layers["flatten"] = nn.Flatten()
    layers["classifier"] = nn.Linear(in_channels, info.classes)
    last = f"block{len(channels)}"
    probe_points = {f"block{index}": f"block{index}" for index in range(1, len(channels))}
    probe_points[last] = "flatten"  # the 512-d penultimate features (the last layer's 1x1 map, flattened)
    probe_points["logits"] = "classifier"
    return ProbedNetwork(layers, probe_points, penultimate=last)


for _name in STRIDED_VGGS:
    register(_name)(lambda arch, info, _name=_name: _strided_vgg(_name, arch, info))


# Channels of the standard VGG configurations (torchvision's cfgs A, B, D, the `vgg11_bn`... models);
# each inner list is one stage of 3x3 conv + BatchNorm + ReLU layers closed by a 2x2 max-pool:
# 32 -> 16 -> 8 -> 4 -> 2 -> 1.
VGG_STAGES = {
    "vgg11_bn": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13_bn": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16_bn": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


def _vgg(name: str, arch: DictConfig, info: DatasetInfo) -> ProbedNetwork:
    """Standard VGG with BatchNorm for 32x32 inputs: five stages, then one Linear on the 512-d features."""
    if info.image_size != 32:
        raise ConfigError("dataset.image_size", info.image_size, f"32 for {name} (five max-pools reach 1x1)")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = info.channels
    for index, stage in enumerate(VGG_STAGES[name], start=1):
        modules: list[nn.Module] = []
        for channels in stage:
            out_channels = scaled(channels, arch.width)
            modules.append(Conv2dNormActivation(in_channels, out_channels, kernel_size=3, bias=False))
            in_channels = out_channels
        modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        layers[f"block{index}"] = nn.Sequential(*modules)
    layers["flatten"] = nn.Flatten()
    layers["classifier"] = nn.Linear(in_channels, info.classes)
    probe_points = {f"block{index}": f"block{index}" for index in range(1, 5)}
    probe_points["block5"] = "flatten"  # the penultimate features, as in the strided VGGs
    probe_points["logits"] = "classifier"
    return ProbedNetwork(layers, probe_points, penultimate="block5")


for _name in VGG_STAGES:
    register(_name)(lambda arch, info, _name=_name: _vgg(_name, arch, info))


def _resnet(arch: DictConfig, info: DatasetInfo, blocks_per_stage: tuple[int, ...]) -> ProbedNetwork:
    """CIFAR-style ResNet: 3x3 stem at full resolution (no max-pool), torchvision's BasicBlocks in four
    stages of 64, 128, 256, 512 channels (strides 1, 2, 2, 2), global average pool, one Linear."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_planes = scaled(64, arch.width)
    layers["stem"] = Conv2dNormActivation(info.channels, in_planes, kernel_size=3, stride=1, bias=False)
    for index, (planes, blocks, stride) in enumerate(zip((64, 128, 256, 512), blocks_per_stage, (1, 2, 2, 2),
                                                         strict=True), start=1):
        planes = scaled(planes, arch.width)
        stage = []
        for block_index in range(blocks):
            block_stride = stride if block_index == 0 else 1
            downsample = None
            if block_stride != 1 or in_planes != planes:
                downsample = nn.Sequential(conv1x1(in_planes, planes, block_stride), nn.BatchNorm2d(planes))
            stage.append(BasicBlock(in_planes, planes, block_stride, downsample))
            in_planes = planes
        layers[f"block{index}"] = nn.Sequential(*stage)
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["classifier"] = nn.Linear(in_planes, info.classes)
    for module in layers.values():  # torchvision ResNet's initialisation
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    probe_points = {"stem": "stem", **{f"block{index}": f"block{index}" for index in range(1, 5)},
                    "pooled": "flatten", "logits": "classifier"}
    return ProbedNetwork(layers, probe_points, penultimate="pooled")


@register("resnet18")
def resnet18(arch: DictConfig, info: DatasetInfo) -> ProbedNetwork:
    return _resnet(arch, info, (2, 2, 2, 2))


@register("resnet10")
def resnet10(arch: DictConfig, info: DatasetInfo) -> ProbedNetwork:
    return _resnet(arch, info, (1, 1, 1, 1))


@register("mlp")
def mlp(arch: DictConfig, info: DatasetInfo) -> ProbedNetwork:
    """Flatten, then Linear + ReLU per hidden size (scaled by width), then one Linear to the classes."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    features = info.channels * info.image_size**2
    for index, hidden in enumerate(arch.hidden_sizes, start=1):
        hidden = scaled(hidden, arch.width)
        layers[f"hidden{index}"] = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        features = hidden
    layers["classifier"] = nn.Linear(features, info.classes)
    probe_points = {f"hidden{index}": f"hidden{index}" for index in range(1, len(arch.hidden_sizes) + 1)}
    return ProbedNetwork(layers, {**probe_points, "logits": "classifier"}, penultimate=f"hidden{len(probe_points)}")


class SoftmaxTap(nn.Module):
    """Passes the logits through unchanged, so the network's output stays what cross-entropy expects; its
    child `probabilities` computes softmax(logits) on the side only so that a probe point can hook it."""

    def __init__(self):
        super().__init__()
        self.probabilities = nn.Softmax(dim=1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        self.probabilities(logits)
        return logits


@register("linear")
def linear(arch: DictConfig, info: DatasetInfo) -> ProbedNetwork:
    """The network of the paper's theory: flatten, then Linear(pixels, classes) with no bias; PyTorch's
    default initial weights times arch.init_scale. Probe points: the logits and softmax(logits)."""
    classifier = nn.Linear(info.channels * info.image_size**2, info.classes, bias=False)
    with torch.no_grad():
        classifier.weight.mul_(arch.init_scale)
    layers = OrderedDict(flatten=nn.Flatten(), classifier=classifier, output=SoftmaxTap())
    probe_points = {"logits": "classifier", "softmax": "output.probabilities"}
    return ProbedNetwork(layers, probe_points, penultimate=None)  # its input is the image itself


def build_model(arch: DictConfig, info: DatasetInfo, download: bool = False) -> ProbePoints:
    """A built-in arch by name, or a torchvision, timm or custom network (phases.training.external_models):
    an nn.Module with probe points. `download`: whether pretrained weights missing from torch's hub cache
    may be fetched (dataset.download, the run's offline rule)."""
    if is_external(arch):
        return build_external(arch, info, download)
    if arch.name not in MODELS:
        raise ConfigError("arch.name", arch.name, f"known architectures: {', '.join(sorted(MODELS))} (or any "
                          "torchvision, timm or own model: arch=torchvision arch.model=..., arch=timm arch.model=..., "
                          "arch=custom arch.target=...)")
    return MODELS[arch.name](arch, info)
