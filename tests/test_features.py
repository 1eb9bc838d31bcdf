import pytest
import torch
from omegaconf import OmegaConf

from phases.training.data import DatasetInfo
from phases.training.features import collect_activations, frozen
from phases.training.models import build_model


def trained_a_little():
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "vgg8", "width": 0.25}), DatasetInfo(1, 10, 32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):  # running statistics now lag: 3 updates with momentum 0.1 from mean 0 / variance 1
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(16, 1, 32, 32) * 2 + 1), torch.arange(16) % 10).backward()
        optimizer.step()
    return model


def buffers(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("bn_mode", ["precise_eval", "eval", "train"])
def test_extraction_leaves_the_training_state_untouched(bn_mode):
    model = trained_a_little()
    before = buffers(model)
    with frozen(model, bn_mode, torch.randn(64, 1, 32, 32), batch_size=32):
        collect_activations(model, torch.randn(40, 1, 32, 32), ["block3", "logits"], batch_size=16)
    assert model.training
    after = buffers(model)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_precise_eval_uses_the_statistics_of_the_calibration_images():
    model = trained_a_little()
    images = torch.randn(256, 1, 32, 32) * 2 + 1
    with frozen(model, "precise_eval", images, batch_size=256):
        precise = collect_activations(model, images, ["block5"], batch_size=256)["block5"]
    with frozen(model, "train", images, batch_size=256):
        batch_statistics = collect_activations(model, images, ["block5"], batch_size=256)["block5"]
    with frozen(model, "eval", images, batch_size=256):
        stale = collect_activations(model, images, ["block5"], batch_size=256)["block5"]
    # One calibration batch = the extraction batch: the same normalisation up to the unbiased/biased variance.
    assert torch.allclose(precise, batch_statistics, rtol=0.02, atol=0.02)
    assert not torch.allclose(stale, batch_statistics, rtol=0.02, atol=0.02)


def test_eval_modes_do_not_depend_on_batch_composition():
    model = trained_a_little()
    images = torch.randn(64, 1, 32, 32)
    with frozen(model, "precise_eval", images, batch_size=32):
        whole = collect_activations(model, images, ["logits"], batch_size=64)["logits"]
        split = collect_activations(model, images, ["logits"], batch_size=8)["logits"]
    assert torch.allclose(whole, split, atol=1e-5)


def test_spatial_pool_averages_feature_maps_only_when_asked():
    model = trained_a_little().eval()
    images = torch.randn(5, 1, 32, 32)
    plain = collect_activations(model, images, ["block1", "block5"], batch_size=2)
    pooled = collect_activations(model, images, ["block1", "block5"], batch_size=2, spatial_pool=4)
    expected = torch.nn.functional.adaptive_avg_pool2d(plain["block1"].view(5, 8, 16, 16), 4).flatten(1)
    assert pooled["block1"].shape == (5, 8 * 4 * 4) and torch.allclose(pooled["block1"], expected, atol=1e-6)
    assert torch.equal(pooled["block5"], plain["block5"])  # already flat: untouched
