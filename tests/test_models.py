import math

import pytest
import torch
from omegaconf import OmegaConf

from phases.config.options import CONFIG_DIR, load_option
from phases.config.validation import ConfigError
from phases.training.data import DatasetInfo
from phases.training.external_models import EXTERNAL_ARCHS
from phases.training.features import collect_activations
from phases.training.models import MODELS, build_model

GRAYSCALE = DatasetInfo(channels=1, classes=10, image_size=32)


def vgg8(width: float = 1.0):
    return build_model(OmegaConf.create({"name": "vgg8", "width": width}), GRAYSCALE)


@pytest.mark.parametrize("width, channels", [(1.0, (32, 64, 128, 256, 512)), (0.25, (8, 16, 32, 64, 128))])
def test_vgg8_probe_points_have_the_declared_shapes(width, channels):
    model = vgg8(width).eval()
    images = torch.randn(3, 1, 32, 32)
    activations = collect_activations(model, images, list(model.probe_points), batch_size=2)
    sizes = (16, 8, 4, 2)
    for index in range(4):
        assert activations[f"block{index + 1}"].shape == (3, channels[index] * sizes[index] ** 2)
    assert activations["block5"].shape == (3, channels[4])  # the penultimate features, flattened 1x1 map
    assert torch.allclose(activations["logits"], model(images))


def test_vgg8_is_the_published_network():
    model = vgg8()
    convolutions = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in convolutions] == [32, 64, 128, 256, 512]
    assert all(conv.stride == (2, 2) and conv.kernel_size == (3, 3) and conv.bias is None for conv in convolutions)
    assert sum(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules()) == 5
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert [(linear.in_features, linear.out_features) for linear in linears] == [(512, 10)]


# The published script's VGG-11/13/16 (paper.md): channels after the input and stride-2 flags, per layer.
STRIDED = {
    "vgg11": ([32, 64, 128, 128, 256, 256, 512, 512], [1, 1, 0, 1, 0, 1, 0, 1]),
    "vgg13": ([32, 32, 64, 128, 128, 256, 256, 512, 512, 512], [1, 0, 1, 0, 1, 0, 1, 0, 0, 1]),
    "vgg16": ([32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512], [0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1]),
}


@pytest.mark.parametrize("name", sorted(STRIDED))
def test_vgg11_13_16_are_the_published_strided_networks(name):
    model = build_model(OmegaConf.create({"name": name, "width": 1.0}), GRAYSCALE)
    convolutions = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
    channels, downs = STRIDED[name]
    assert [conv.out_channels for conv in convolutions] == channels
    assert [conv.stride == (2, 2) for conv in convolutions] == [bool(down) for down in downs]
    assert all(conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is None for conv in convolutions)
    assert not any(isinstance(module, torch.nn.MaxPool2d) for module in model.modules())
    assert sum(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules()) == len(channels)
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert [(linear.in_features, linear.out_features) for linear in linears] == [(512, 10)]
    assert model.probe_shapes((1, 32, 32))[model.penultimate] == (512,)  # the 1x1x512 map, flattened


@pytest.mark.parametrize("name", ["vgg11_bn", "vgg13_bn", "vgg16_bn"])
def test_the_standard_vggs_keep_torchvisions_names(name):
    model = build_model(OmegaConf.create({"name": name, "width": 1.0}), GRAYSCALE)
    assert sum(isinstance(module, torch.nn.MaxPool2d) for module in model.modules()) == 5
    assert {conv.stride for conv in model.modules() if isinstance(conv, torch.nn.Conv2d)} == {(1, 1)}


VGG_STANDARD = {"block1": (64, 16, 16), "block2": (128, 8, 8), "block3": (256, 4, 4), "block4": (512, 2, 2),
                "block5": (512,)}
RESNET = {"stem": (64, 32, 32), "block1": (64, 32, 32), "block2": (128, 16, 16), "block3": (256, 8, 8),
          "block4": (512, 4, 4), "pooled": (512,)}
# The specification of each architecture's probe points at width 1 on 32x32 inputs (logits: the classes).
PROBE_SHAPES = {
    "vgg8": {"block1": (32, 16, 16), "block2": (64, 8, 8), "block3": (128, 4, 4), "block4": (256, 2, 2),
             "block5": (512,)},
    "vgg11": {"block1": (32, 16, 16), "block2": (64, 8, 8), "block3": (128, 8, 8), "block4": (128, 4, 4),
              "block5": (256, 4, 4), "block6": (256, 2, 2), "block7": (512, 2, 2), "block8": (512,)},
    "vgg13": {"block1": (32, 16, 16), "block2": (32, 16, 16), "block3": (64, 8, 8), "block4": (128, 8, 8),
              "block5": (128, 4, 4), "block6": (256, 4, 4), "block7": (256, 2, 2), "block8": (512, 2, 2),
              "block9": (512, 2, 2), "block10": (512,)},
    "vgg16": {"block1": (32, 32, 32), "block2": (32, 16, 16), "block3": (64, 16, 16), "block4": (64, 8, 8),
              "block5": (128, 8, 8), "block6": (128, 8, 8), "block7": (128, 4, 4), "block8": (256, 4, 4),
              "block9": (256, 4, 4), "block10": (256, 2, 2), "block11": (512, 2, 2), "block12": (512, 2, 2),
              "block13": (512,)},
    "vgg11_bn": VGG_STANDARD, "vgg13_bn": VGG_STANDARD, "vgg16_bn": VGG_STANDARD,
    "resnet10": RESNET, "resnet18": RESNET,
    "mlp": {"hidden1": (512,), "hidden2": (256,)},
    "linear": {},
}
# Points computed from the logits (None: one value per class).
AFTER_LOGITS = {"linear": {"softmax": None}}
DATASET_INFO = {"mnist": DatasetInfo(1, 10, 32), "fashion_mnist": DatasetInfo(1, 10, 32),
                "cifar10": DatasetInfo(3, 10, 32), "cifar100": DatasetInfo(3, 100, 32)}


def arch_config(name: str, **changes):
    return OmegaConf.merge(load_option("arch", name), changes)


def test_every_registered_arch_has_a_config_and_a_specification():
    # arch=torchvision, timm and custom build other people's networks (tests/test_external_models.py).
    external = {option for option, *_ in EXTERNAL_ARCHS.values()}
    built_in = sorted(path.stem for path in (CONFIG_DIR / "arch").glob("*.yaml") if path.stem not in external)
    assert sorted(MODELS) == built_in == sorted(PROBE_SHAPES)


@pytest.mark.parametrize("dataset", sorted(DATASET_INFO))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_arch_on_every_dataset_trains_and_exposes_its_probe_points(name, dataset):
    info = DATASET_INFO[dataset]
    model = build_model(arch_config(name), info)
    images, labels = torch.randn(2, info.channels, 32, 32), torch.tensor([0, info.classes - 1])
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
    expected = {**PROBE_SHAPES[name], "logits": (info.classes,), **AFTER_LOGITS.get(name, {})}
    expected = {point: shape or (info.classes,) for point, shape in expected.items()}
    assert list(model.probe_points) == list(expected)
    activations = collect_activations(model.eval(), images, list(model.probe_points), batch_size=2)
    for point, shape in expected.items():
        assert activations[point].shape == (2, math.prod(shape)), point
    depths = model.probe_depths()
    assert list(depths.values()) == sorted(depths.values()) and depths["logits"] == 1.0
    assert all(0 < depth <= 1 for depth in depths.values())


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"linear"}))
def test_width_scales_every_hidden_layer(name):
    full = build_model(arch_config(name), DATASET_INFO["cifar10"])
    quarter = build_model(arch_config(name, width=0.25), DATASET_INFO["cifar10"])
    images = torch.randn(2, 3, 32, 32)
    points = [point for point in full.probe_points if point != "logits"]
    wide = collect_activations(full.eval(), images, points, batch_size=2)
    narrow = collect_activations(quarter.eval(), images, points, batch_size=2)
    for point in points:
        assert narrow[point].shape[1] * 4 == wide[point].shape[1], point


def test_linear_is_the_theory_network():
    model = build_model(arch_config("linear"), DATASET_INFO["fashion_mnist"])
    (layer,) = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert layer.bias is None and (layer.in_features, layer.out_features) == (1024, 10)
    assert list(model.probe_points) == ["logits", "softmax"]


def test_resnet_is_built_from_torchvision_basic_blocks():
    from torchvision.models.resnet import BasicBlock

    blocks = {name: sum(isinstance(module, BasicBlock) for module in build_model(
        arch_config(name), DATASET_INFO["cifar10"]).modules()) for name in ("resnet10", "resnet18")}
    assert blocks == {"resnet10": 4, "resnet18": 8}
    resnet18 = build_model(arch_config("resnet18"), DATASET_INFO["cifar10"])
    assert sum(parameter.numel() for parameter in resnet18.parameters()) == 11_173_962  # the CIFAR ResNet-18


def test_unknown_arch_lists_the_known_ones():
    known = "linear, mlp, resnet10, resnet18, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg8"
    with pytest.raises(ConfigError, match=f"arch.name='nope' is invalid: known architectures: {known}"):
        build_model(OmegaConf.create({"name": "nope", "width": 1.0}), GRAYSCALE)
