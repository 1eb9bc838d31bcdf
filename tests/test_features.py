import math
import re

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


def generated_splits(train: int, test: int):
    """Random images and cycling labels in a dataset's split form, for Evaluator tests."""
    from phases.training.data import ImageSplits

    generator = torch.Generator().manual_seed(0)
    return ImageSplits(torch.randn(train, 1, 32, 32, generator=generator), torch.arange(train) % 10,
                       torch.randn(test, 1, 32, 32, generator=generator), torch.arange(test) % 10,
                       DatasetInfo(1, 10, 32), source="generated")


def probe_settings(**changes):
    """The probe settings an Evaluator reads, at test sizes; `changes` override them."""
    return OmegaConf.create({"layers": ["block3", "block5"], "train_size": 400, "test_size": 100,
                             "min_images_per_feature": 0, "classifier_train_size": 400, "batch_size": 64,
                             "spatial_pool": None, "bn_mode": "precise_eval", "calibration_size": 400, "enabled": [],
                             "max_activation_gb": 8.0,
                             "sample_loss": {"quantiles": [0.5], "worst_fractions": [0.1]}, **changes})


@pytest.mark.parametrize("bn_mode", ["precise_eval", "eval", "train"])
def test_extraction_leaves_the_training_state_untouched(bn_mode):
    model = trained_a_little()
    before = buffers(model)
    with frozen(model, bn_mode, torch.randn(64, 1, 32, 32)):
        collect_activations(model, torch.randn(40, 1, 32, 32), ["block3", "logits"], batch_size=16)
    assert model.training
    after = buffers(model)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_precise_eval_uses_the_statistics_of_the_calibration_images():
    model = trained_a_little()
    images = torch.randn(256, 1, 32, 32) * 2 + 1
    with frozen(model, "precise_eval", images):
        precise = collect_activations(model, images, ["block5"], batch_size=256)["block5"]
    with frozen(model, "train", images):
        batch_statistics = collect_activations(model, images, ["block5"], batch_size=256)["block5"]
    with frozen(model, "eval", images):
        stale = collect_activations(model, images, ["block5"], batch_size=256)["block5"]
    # One calibration batch = the extraction batch: the same normalisation, the variance kept biased as the
    # batch normalised itself (up to float rounding).
    assert torch.allclose(precise, batch_statistics, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(stale, batch_statistics, rtol=0.02, atol=0.02)


def test_eval_modes_do_not_depend_on_batch_composition():
    model = trained_a_little()
    images = torch.randn(64, 1, 32, 32)
    with frozen(model, "precise_eval", images):
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


def test_each_point_keeps_only_the_rows_its_probes_read():
    model = trained_a_little().eval()
    images = torch.randn(7, 1, 32, 32)
    whole = collect_activations(model, images, ["block1", "block5"], batch_size=3)
    kept = collect_activations(model, images, ["block1", "block5"], batch_size=3, counts={"block1": 5, "block5": 2})
    assert kept["block1"].shape[0] == 5 and kept["block5"].shape[0] == 2
    assert torch.allclose(kept["block1"], whole["block1"][:5]) and torch.allclose(kept["block5"], whole["block5"][:2])


class ShapeRecorder:
    """A probe that records the training and test images it is given per point."""

    name, dataset = "recorder", "own"

    def __init__(self):
        self.seen, self.images, self.features = {}, {}, {}

    def fit_and_score(self, train, test):
        self.seen[train.point] = (train.features.shape, len(train.images), len(train.labels), test.features.shape)
        self.images[train.point] = train.images
        self.features[train.point] = train.features
        return []


def test_wide_points_are_probed_on_images_in_proportion_to_their_features():
    from phases.training.evaluation import Evaluator

    model = trained_a_little()  # width 0.25: block1 is 8 x 16 x 16 = 2048 features, block5 128
    splits = generated_splits(1200, 300)
    probe_cfg = probe_settings(layers=["block1", "block5"], train_size=100, test_size=50, min_images_per_feature=0.25,
                               classifier_train_size=10, calibration_size=50)
    recorder = ShapeRecorder()
    Evaluator(model, {"own": splits}, [recorder], probe_cfg, seed=0, training_batch_size=32)()
    # block1: 0.25 x 2048 = 512 images; block5: max(train_size 100, 0.25 x 128 = 32).
    assert recorder.seen == {"block1": ((512, 2048), 512, 512, (50, 2048)), "block5": ((100, 128), 100, 100, (50, 128))}
    narrow_images = recorder.images["block5"]
    assert torch.equal(recorder.images["block1"][:100], narrow_images)  # the narrow point's images come first
    # A point asking for the whole split changes neither which images the others get nor their order.
    whole = ShapeRecorder()
    Evaluator(model, {"own": splits}, [whole], OmegaConf.merge(probe_cfg, {"min_images_per_feature": 1}), seed=0,
              training_batch_size=32)()
    # block5 now gets max(100, 1 x 128) = 128 images: the first 100 of them are the same.
    assert whole.seen["block1"][1] == 1200 and torch.equal(whole.images["block5"][:100], narrow_images)


def test_the_divergence_check_finds_any_nan_or_infinity_in_the_activations():
    from phases.training.evaluation import all_finite

    activations = torch.randn(300, 70)
    assert all_finite(activations) and all_finite(torch.empty(0, 70))
    for bad in (float("nan"), float("inf"), float("-inf")):
        spoiled = activations.clone()
        spoiled[123, 45] = bad
        assert not all_finite(spoiled), bad


def test_an_evaluation_does_not_depend_on_probe_batch_size():
    """probe.batch_size is outside the run id (speed only), so it must not change a number: PreciseBN's
    calibration batches, whose size its statistics depend on, do not follow it."""
    from phases.training.evaluation import Evaluator
    from phases.training.probes.reconstruction import ClosedFormReconstruction

    splits = generated_splits(600, 200)
    rows = {}
    for batch_size in (64, 500):
        evaluator = Evaluator(trained_a_little(), {"own": splits}, [ClosedFormReconstruction(1e-3)],
                              probe_settings(batch_size=batch_size), seed=0, training_batch_size=32)
        rows[batch_size] = [row["value"] for row in evaluator()]
    assert rows[64] == pytest.approx(rows[500], rel=1e-4)


def test_no_image_goes_through_the_network_twice_in_an_evaluation():
    """precise_eval's calibration images are the first probe training images, and the pass that extracts
    them sets BatchNorm's statistics: the network sees each image of the evaluation sets once, and their
    activations equal those of a separate calibration pass followed by an extraction in eval mode."""
    from phases.training.evaluation import Evaluator

    model = trained_a_little()
    recorder = ShapeRecorder()
    evaluator = Evaluator(model, {"own": generated_splits(600, 200)}, [recorder],
                          probe_settings(classifier_train_size=500, calibration_size=300), seed=0,
                          training_batch_size=32)
    passed = []
    hook = model.register_forward_pre_hook(lambda _module, inputs: passed.append(len(inputs[0])))
    evaluator()
    hook.remove()
    assert passed[0] == 300 and sum(passed) == 500 + 200  # the classifier's 500 training images, the test split
    train = evaluator.sets["own"]["train"]
    with frozen(model, "precise_eval", train.images[:300]):
        separate = collect_activations(model, train.images[:400], ["block3", "block5"], batch_size=64)
    for point in ("block3", "block5"):
        assert torch.allclose(recorder.features[point], separate[point], rtol=1e-4, atol=1e-5)


def test_the_calibration_batch_is_counted_before_training_and_refused_past_the_memory_limit():
    """PreciseBN's one batch holds every layer's activations for all its images at once: estimated from one
    image's largest layer, scaled by the batch, and refused (naming probe.calibration_size and how many
    images fit) when it and the probed activations exceed probe.max_activation_gb."""
    from phases.config.validation import ConfigError
    from phases.training.evaluation import check_calibration_memory

    model = build_model(OmegaConf.create({"name": "vgg8", "width": 0.25}), DatasetInfo(1, 10, 32))
    splits = generated_splits(400, 100)
    needed = check_calibration_memory(model, splits, probe_settings())
    block1 = math.prod(model.probe_shapes((1, 32, 32))["block1"])
    assert needed >= 400 * block1 * 4 / 1e9  # at least the first block's output for every image
    assert check_calibration_memory(model, splits, probe_settings(calibration_size=200)) == pytest.approx(needed / 2)
    assert check_calibration_memory(model, splits, probe_settings(bn_mode="eval")) == 0.0  # no calibration pass
    with pytest.raises(ConfigError, match=r"probe.calibration_size=400 is invalid: PreciseBN passes its 400 "
                                          r"calibration images as one batch.*at most (\d+) images fit") as refusal:
        check_calibration_memory(model, splits, probe_settings(max_activation_gb=0.005), probe_gb=0.001)
    fitting = int(re.search(r"at most (\d+) images fit", str(refusal.value)).group(1))
    assert 0 < fitting < 400
    assert check_calibration_memory(model, splits, probe_settings(max_activation_gb=0.005, calibration_size=fitting),
                                    probe_gb=0.001) <= 0.004
