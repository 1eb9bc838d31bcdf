import pytest
import torch
from omegaconf import OmegaConf

from phases.config import ConfigError
from phases.data import DatasetInfo
from phases.features import collect_activations
from phases.models import MODELS, build_model

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


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_arch_trains_one_step(name):
    model = build_model(OmegaConf.create({"name": name, "width": 0.25}), GRAYSCALE)
    images, labels = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
    assert "logits" in model.probe_points


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(ConfigError, match="arch.name='nope' is invalid: known architectures: vgg8"):
        build_model(OmegaConf.create({"name": "nope", "width": 1.0}), GRAYSCALE)
