"""Any torchvision or timm model, or the user's own nn.Module class, probed like the built-in archs.

    python -m phases.run arch=torchvision arch.model=resnet18
    python -m phases.run arch=timm arch.model=resnet18                  (pip install timm)
    python -m phases.run arch=custom arch.target=my_package.MyNet arch.kwargs={width:8}
    python -m phases.points arch=torchvision arch.model=resnet18        (its points, shapes and depths)

The network (phases.training.library_models) is wrapped in an ExternalNetwork, so probe points are module
paths of the network as its `named_modules()` names them. Before anything is trained it runs on a zero
batch in training and in eval mode: an image too small for it fails naming dataset.image_size, an output
that is not (batch, classes) logits naming the key that chose the network.

Points: `penultimate` (the input of the final Linear, when the network's last Linear gives the classes)
and `logits` (the network's output), besides arch.probe_points or, when it is null, the defaults:
- timm: the modules its feature_info lists (its stages, as timm's features_only returns them);
- torchvision and custom: the trunk's feature blocks. The trunk is the network's top-level children in
  order, up to the classifier; a child holding the classifier, or more than three quarters of the conv
  and linear layers outside the top-level child that holds it (VGG's `features`, ViT's `encoder`, not
  ResNet-101's longest stage), is replaced by its children, recursively. A trunk
  module with a conv or linear layer starts a block, which takes in the modules without any that follow
  (BatchNorm, activation, max-pool, dropout) up to a global pooling or flatten. The point is named by the
  block's first module and reads its last (resnet18: conv1, the stem after its BatchNorm, ReLU and
  max-pool; layer1 ... layer4). Modules an eval forward pass never calls with a tensor output (an
  auxiliary head) give no point.
"""

from __future__ import annotations

import difflib

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from phases.config import schema
from phases.config.validation import ConfigError, require
from phases.training.data import DatasetInfo
from phases.training.library_models import custom_network, timm_network, torchvision_network
from phases.training.probe_points import INPUT_TAP, WEIGHTED_LAYERS, ProbePoints

NETWORK = "network"  # the wrapped network's attribute: its module paths are prefixed with `network.`
RESERVED_POINTS = ("penultimate", "logits")
GLOBAL_ENDS = (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Flatten)
# Schema -> (the option's name, the key that chooses the network, an example of it, the builder).
EXTERNAL_ARCHS = {
    schema.TorchvisionArchConfig: ("torchvision", "model", "resnet18", torchvision_network),
    schema.TimmArchConfig: ("timm", "model", "resnet18", timm_network),
    schema.CustomArchConfig: ("custom", "target", "my_package.MyNet", custom_network),
}


class ExternalNetwork(ProbePoints, nn.Module):
    """A library's or the user's network (child `network`) with probe points: `points` maps a point's name
    to a module path of the network; `classifier` is the final Linear's path, whose input is `penultimate`."""

    def __init__(self, network: nn.Module, points: dict[str, str], classifier: str | None):
        super().__init__()
        self.network = network
        probe_points = {name: f"{NETWORK}.{path}" for name, path in points.items()}
        if classifier is not None:
            probe_points["penultimate"] = f"{NETWORK}.{classifier}{INPUT_TAP}"
        probe_points["logits"] = NETWORK
        self.declare_points(probe_points, "penultimate" if classifier is not None else None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


def is_external(arch: DictConfig) -> bool:
    return OmegaConf.get_type(arch) in EXTERNAL_ARCHS


def build_external(arch: DictConfig, info: DatasetInfo, download: bool) -> ExternalNetwork:
    """The network arch=torchvision, timm or custom names, checked on a zero batch, with its probe points."""
    option, key, example, builder = EXTERNAL_ARCHS[OmegaConf.get_type(arch)]
    check_arch(arch, option, key, example)
    network, library_points = builder(arch, info, download)
    check_forward(network, info, arch, key)
    classifier = final_linear(network, info.classes)
    if arch.probe_points is not None:
        points = chosen_points(arch, network)
        silent = sorted(set(points.values()) - set(activations(network, list(points.values()), info)))
        require(not silent, "arch.probe_points", OmegaConf.to_container(arch.probe_points),
                f"modules a forward pass calls with a tensor output; {', '.join(silent)} is not")
    else:
        points = ({path: path for path in library_points} if library_points is not None
                  else trunk_points(network, classifier))
        # A point is left out where the forward never computes it, and where it repeats the penultimate
        # features or the logits, shape included (VGG's last hidden layer, read through its dropout); a 1x1
        # map equal to the pooled features stays, so the points do not change with the image size.
        ends = ["", *([f"{classifier}{INPUT_TAP}"] if classifier is not None else [])]
        measured = activations(network, [*points.values(), *ends], info)
        points = {name: path for name, path in points.items() if path in measured
                  and not any(torch.equal(measured[path], measured[end]) for end in ends if end in measured)}
    return ExternalNetwork(network, points, classifier)


def check_arch(arch: DictConfig, option: str, key: str, example: str) -> None:
    """The key that chooses the network is set, the name is the one derived from it, the width is 1."""
    require(isinstance(arch[key], str) and arch[key] != "", f"arch.{key}", arch[key],
            f"required: arch={option} chooses its network with arch.{key}, e.g. arch.{key}={example} (arch.name is "
            "derived from it)")
    derived = OmegaConf.structured(OmegaConf.get_type(arch))
    derived[key] = arch[key]
    require(arch.name == derived.name, "arch.name", arch.name,
            f"{derived.name}, derived from arch.{key} for run ids and the metrics' arch column: choose the network "
            f"with arch.{key}")
    require(arch.width == 1, "arch.width", arch.width,
            f"1: arch={option} builds the network's own sizes (change them through arch.kwargs)")


def check_forward(network: nn.Module, info: DatasetInfo, arch: DictConfig, key: str) -> None:
    """One zero batch in training mode, then in eval mode; the network's buffers (BatchNorm's running
    statistics) and the random state are left as they were, so the run trains the network as built."""
    images = torch.zeros(2, info.channels, info.image_size, info.image_size)
    saved = {name: buffer.clone() for name, buffer in network.named_buffers()}
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for mode in ("training", "eval"):
                network.train(mode == "training")
                check_logits(network, images, mode, info, arch, key)
    finally:
        for name, buffer in network.named_buffers():
            buffer.copy_(saved[name])
        network.train()


def check_logits(network: nn.Module, images: torch.Tensor, mode: str, info: DatasetInfo, arch: DictConfig,
                 key: str) -> None:
    try:
        output = network(images)
    except (RuntimeError, AssertionError, ValueError) as error:  # torch._assert raises AssertionError
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError("dataset.image_size", info.image_size,
                          f"a size {arch.name} accepts: on a zero batch of shape {tuple(images.shape)} in {mode} "
                          f"mode it fails ({first_line}); if the images are too small for it, raise "
                          "dataset.image_size (the README lists what common models need)") from error
    if isinstance(output, torch.Tensor) and tuple(output.shape) == (len(images), info.classes):
        return
    returned = (f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor)
                else f"a {type(output).__name__} (a model with auxiliary outputs, like googlenet, takes "
                "arch.kwargs={aux_logits:false})")
    raise ConfigError(f"arch.{key}", arch[key], f"a network whose output is the logits, a tensor of shape (batch, "
                      f"classes) = ({len(images)}, {info.classes}); in {mode} mode it returns {returned}")


def final_linear(network: nn.Module, classes: int) -> str | None:
    """The path of the network's last Linear when it gives the classes: the classifier penultimate reads."""
    linears = [path for path, module in network.named_modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears and network.get_submodule(linears[-1]).out_features == classes else None


def weighted_count(module: nn.Module) -> int:
    return sum(isinstance(layer, WEIGHTED_LAYERS) for layer in module.modules())


def trunk(network: nn.Module, head: nn.Module | None) -> list[tuple[str, nn.Module]]:
    """The network's top-level modules in order up to its classifier `head`, expanded as the docstring says."""
    def holds_head(module: nn.Module) -> bool:
        return head is not None and any(layer is head for layer in module.modules())

    # The layers of the feature extractor: VGG's three Linear layers belong to its classifier.
    total = weighted_count(network) - sum(weighted_count(child) for child in network.children() if holds_head(child))
    pending = list(network.named_children())
    modules = []
    while pending:
        path, module = pending.pop(0)
        if module is head:
            break
        if holds_head(module) or (4 * weighted_count(module) > 3 * total and next(module.children(), None) is not None):
            pending[:0] = [(f"{path}.{name}", child) for name, child in module.named_children()]
        else:
            modules.append((path, module))
    return modules


def trunk_points(network: nn.Module, classifier: str | None) -> dict[str, str]:
    """The trunk's feature blocks: {the block's first module path: its last module path}."""
    head = network.get_submodule(classifier) if classifier is not None else None
    points: dict[str, str] = {}
    block = None  # the name of the block that parameter-free modules extend, if any
    for path, module in trunk(network, head):
        if weighted_count(module):
            block = path
            points[block] = path
        elif block is not None and not isinstance(module, GLOBAL_ENDS):
            points[block] = path
        else:
            block = None
    return points


@torch.no_grad()
def activations(network: nn.Module, paths: list[str], info: DatasetInfo) -> dict[str, torch.Tensor]:
    """The activations at the module `paths` (`:input` taps included; "" = the output) for two seeded
    random images in eval mode, for the paths whose activation is a tensor."""
    measured: dict[str, torch.Tensor] = {}

    def keep(path: str, activation: object) -> None:
        if isinstance(activation, torch.Tensor):
            measured[path] = activation

    handles = []
    for path in paths:
        module = network.get_submodule(path.removesuffix(INPUT_TAP))
        if path.endswith(INPUT_TAP):
            handles.append(module.register_forward_pre_hook(lambda _module, inputs, path=path: keep(path, inputs[0])))
        else:
            handles.append(module.register_forward_hook(lambda _module, _inputs, output, path=path: keep(path, output)))
    generator = torch.Generator().manual_seed(0)  # random, not zero, images: zeros make unlike layers look alike
    images = torch.randn(2, info.channels, info.image_size, info.image_size, generator=generator)
    network.eval()
    try:
        network(images)
    finally:
        network.train()
        for handle in handles:
            handle.remove()
    return measured


def chosen_points(arch: DictConfig, network: nn.Module) -> dict[str, str]:
    """arch.probe_points as {name: module path}, every path a module of the network."""
    given = arch.probe_points
    if isinstance(given, ListConfig):
        points = {str(path): str(path) for path in given}
    elif isinstance(given, DictConfig):
        points = {str(name): str(path) for name, path in given.items()}
    else:
        raise ConfigError("arch.probe_points", given, "a list of module paths, e.g. [layer3,fc], a mapping "
                          "{name: module path}, or null for the model's default points")
    require(len(points) > 0, "arch.probe_points", OmegaConf.to_container(given),
            "at least one module path, or null for the model's default points")
    modules = [path for path, _ in network.named_modules() if path]
    for name, path in points.items():
        require(name not in RESERVED_POINTS, "arch.probe_points", name,
                f"a name other than {' and '.join(RESERVED_POINTS)}, which every external arch declares itself")
        if path.removesuffix(INPUT_TAP) not in modules:
            close = difflib.get_close_matches(path.removesuffix(INPUT_TAP), modules, n=3, cutoff=0.6)
            shallow = [module for module in modules if module.count(".") <= 1]
            raise ConfigError("arch.probe_points", path, f"a module path of {arch.name}"
                              f"{'; did you mean ' + ' or '.join(close) + '?' if close else ''}; its modules include "
                              f"{', '.join(shallow[:60])}{' ...' if len(shallow) > 60 else ''} (any name of "
                              f"named_modules() works; add {INPUT_TAP} to tap a module's input)")
    return points
