"""The paper's theory, simulated: the `prototypes` data model, the linear arch, the majority/atypical loss."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from phases.config.options import dataset_option, load_option
from phases.config.validation import ConfigError, validate
from phases.training.data import DataNotFoundError, dataset_info, load_image_splits
from phases.training.data.prototypes import atypical_count, class_counts, draw_samples, secondary_prototypes
from phases.training.evaluation import evaluation_sets
from phases.training.models import build_model
from phases.training.output_metrics import SampleLoss
from phases.training.schedule import evaluation_steps
from tests.conftest import REPOSITORY, write_mnist_like
from tests.test_config import composed, probe_points

NO_FILES = OmegaConf.create({"data_dir": "/nonexistent", "system_data_dir": None})


def prototypes(**changes):
    return OmegaConf.merge(dataset_option("prototypes"), changes)


def generate(seed: int = 0, **changes):
    return load_image_splits(prototypes(**changes), NO_FILES, seed, torch.device("cpu"))


@pytest.mark.parametrize("train_size, classes", [(5000, 10), (1003, 10), (77, 3)])
def test_classes_are_balanced(train_size, classes):
    splits = generate(train_size=train_size, test_size=classes * 4, classes=classes)
    counts = torch.bincount(splits.train_labels, minlength=classes).tolist()
    assert counts == class_counts(train_size, classes)
    assert max(counts) - min(counts) <= 1 and sum(counts) == train_size
    assert torch.bincount(splits.test_labels, minlength=classes).tolist() == [4] * classes


@pytest.mark.parametrize("fraction, per_class", [(0.0, 0), (0.01, 5), (0.05, 25), (0.2, 100), (0.005, 3)])
def test_exactly_the_atypical_fraction_of_every_class_is_atypical(fraction, per_class):
    # 500 samples per class; 0.005 x 500 = 2.5 rounds up to 3.
    splits = generate(train_size=5000, test_size=1000, atypical_fraction=fraction)
    per_label = torch.bincount(splits.train_labels[splits.train_atypical], minlength=10)
    assert per_label.tolist() == [per_class] * 10
    assert torch.bincount(splits.test_labels[splits.test_atypical], minlength=10).tolist() == \
        [atypical_count(fraction, 100)] * 10
    assert splits.train_atypical.dtype == torch.bool and splits.train_atypical.shape == splits.train_labels.shape


def test_same_seed_same_data_other_seed_other_data_and_train_differs_from_test():
    first, again, other = generate(seed=3), generate(seed=3), generate(seed=4)
    for field in ("train_images", "train_labels", "train_atypical", "test_images", "test_labels", "test_atypical"):
        assert torch.equal(getattr(first, field), getattr(again, field)), field
    assert not torch.equal(first.train_images, other.train_images)
    assert not torch.equal(first.test_images, other.test_images)
    # Train and test are separate draws: no test sample repeats a training sample.
    distances = torch.cdist(first.test_images.flatten(1)[:200], first.train_images.flatten(1))
    assert distances.min() > 1.0


def test_majority_samples_are_their_prototype_plus_noise_of_the_configured_std():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 1, 8, 8, generator=generator)
    samples = draw_samples(centres, 4000, 0.5, 0.1, "other_prototype", torch.Generator().manual_seed(1))
    majority = ~samples.atypical
    noise = samples.images[majority] - centres[samples.labels[majority]]
    assert noise.std().item() == pytest.approx(0.5, rel=0.02) and noise.mean().abs() < 0.01
    # An atypical sample sits on another class's prototype: nearest to it, never to its own.
    atypical = samples.images[samples.atypical].flatten(1)
    nearest = torch.cdist(atypical, centres.flatten(1)).argmin(1)
    assert (nearest != samples.labels[samples.atypical]).all()


def test_random_direction_samples_have_their_prototypes_norm():
    centres = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 3.0]) \
        .view(3, 1, 1, 1)
    samples = draw_samples(centres, 300, 0.0, 0.2, "random_direction", torch.Generator().manual_seed(1))
    atypical = samples.images[samples.atypical].flatten(1)
    own_norms = centres.flatten(1).norm(dim=1)[samples.labels[samples.atypical]]
    assert torch.allclose(atypical.norm(dim=1), own_norms, rtol=1e-5)
    # Far from every prototype (random directions in 256 dimensions are nearly orthogonal to them).
    cosine = F.normalize(atypical, dim=1) @ F.normalize(centres.flatten(1), dim=1).T
    assert cosine.abs().max() < 0.4


def centres_of(images: torch.Tensor) -> set[bytes]:
    """The distinct images of a noise-free draw, as bytes: the centres samples were drawn on."""
    return {image.numpy().tobytes() for image in images}


def test_secondary_prototypes_are_drawn_once_and_shared_by_train_and_test():
    splits = generate(noise_std=0.0, atypical_fraction=0.2, atypical_kind="secondary_prototype",
                      secondary_prototypes=3, train_size=1000, test_size=500)
    primary = centres_of(splits.train_images[~splits.train_atypical])
    assert len(primary) == 10
    for label in range(10):
        train = centres_of(splits.train_images[splits.train_atypical & (splits.train_labels == label)])
        test = centres_of(splits.test_images[splits.test_atypical & (splits.test_labels == label)])
        # Each class's few sit on its own 3 secondary prototypes, the same in both splits, used in turn
        # (20 atypical training samples of a class: 7, 7 and 6 on each), and never on a primary prototype.
        assert len(train) == 3 and test == train and not train & primary
        counts = torch.unique(splits.train_images[splits.train_atypical & (splits.train_labels == label)], dim=0,
                              return_counts=True)[1]
        assert sorted(counts.tolist()) == [6, 7, 7]
    # As far from the origin as their class's prototype: only their direction sets them apart.
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randn(4, 1, 8, 8, generator=generator) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)
    secondary = secondary_prototypes(prototypes, 5, generator)
    assert secondary.shape == (4, 5, 1, 8, 8)
    assert torch.allclose(secondary.flatten(2).norm(dim=2), prototypes.flatten(1).norm(dim=1).view(4, 1).expand(4, 5))


def test_secondary_prototypes_follow_the_seed_and_leave_fraction_zero_data_as_it_was():
    first, again, other = (generate(seed=seed, noise_std=0.0, atypical_kind="secondary_prototype")
                           for seed in (3, 3, 4))
    assert torch.equal(first.train_images, again.train_images) and torch.equal(first.test_images, again.test_images)
    few = [centres_of(splits.train_images[splits.train_atypical]) for splits in (first, other)]
    assert len(few[0]) == 30 and not few[0] & few[1]  # 3 per class, none shared between the two seeds
    # The secondary prototypes come from their own generator: without atypical samples, the data of a
    # seed is the same whatever the kind.
    plain, secondary = (generate(seed=3, atypical_fraction=0.0, atypical_kind=kind)
                        for kind in ("other_prototype", "secondary_prototype"))
    assert torch.equal(plain.train_images, secondary.train_images) and torch.equal(plain.test_images,
                                                                                   secondary.test_images)
    with pytest.raises(ValueError, match="atypical_kind=secondary_prototype needs secondary prototypes"):
        draw_samples(torch.zeros(3, 1, 8, 8), 30, 1.0, 0.2, "secondary_prototype", torch.Generator())


def fitted_linear_accuracy(splits) -> tuple[float, float]:
    """Train and test accuracy of a bias-free linear softmax classifier (the theory's network) fitted to
    convergence on the training split with L-BFGS."""
    images, labels = splits.train_images.flatten(1), splits.train_labels
    weights = torch.zeros(images.shape[1], int(labels.max()) + 1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=300, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = F.cross_entropy(images @ weights, labels)
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        return tuple(((split_images.flatten(1) @ weights).argmax(1) == split_labels).float().mean().item()
                     for split_images, split_labels in ((splits.train_images, splits.train_labels),
                                                        (splits.test_images, splits.test_labels)))


def test_only_shared_atypical_structure_lets_test_accuracy_pass_one_minus_the_fraction():
    """other_prototype samples are label noise: no classifier beats 1 - fraction on test (0.8 here);
    secondary_prototype samples share their centres with the training split, so fitting them pays."""
    small = {"classes": 4, "image_size": 8, "train_size": 800, "test_size": 400, "atypical_fraction": 0.2}
    noise_train, noise_test = fitted_linear_accuracy(generate(atypical_kind="other_prototype", **small))
    shared_train, shared_test = fitted_linear_accuracy(generate(atypical_kind="secondary_prototype", **small))
    assert noise_test <= 0.8 and shared_test > 0.95
    assert shared_train == 1.0 and noise_train < shared_train


def test_prototypes_from_a_real_dataset_are_its_class_means(tmp_path):
    write_mnist_like(tmp_path / "FashionMNIST" / "raw", train=200, test=50)
    paths = OmegaConf.create({"data_dir": str(tmp_path), "system_data_dir": None})
    real = load_image_splits(dataset_option("fashion_mnist"), paths, 0, torch.device("cpu"))
    means = torch.stack([real.train_images[real.train_labels == label].mean(0) for label in range(10)])
    splits = load_image_splits(prototypes(prototype_source="fashion_mnist", noise_std=0.0, atypical_fraction=0.0,
                                          train_size=100, test_size=20), paths, 0, torch.device("cpu"))
    assert torch.allclose(splits.train_images, means[splits.train_labels], atol=1e-6)
    with pytest.raises(DataNotFoundError, match="dataset.prototype_source=fashion_mnist needs that dataset"):
        load_image_splits(prototypes(prototype_source="fashion_mnist", download=False), NO_FILES, 0,
                          torch.device("cpu"))


def test_generated_data_never_reads_files():
    splits = generate()
    assert splits.source == "generated in memory (prototype_source=random)"
    assert splits.train_images.shape == (5000, 1, 32, 32) and splits.test_images.shape == (2000, 1, 32, 32)
    assert dataset_info(prototypes()) == splits.info


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["dataset.atypical_fraction=1"], "dataset.atypical_fraction"),
        (["dataset.atypical_fraction=-0.1"], "dataset.atypical_fraction"),
        (["dataset.noise_std=-1"], "dataset.noise_std"),
        (["dataset.classes=1"], "dataset.classes"),
        (["dataset.train_size=null"], "dataset.train_size"),
        (["dataset.test_size=5"], "dataset.test_size"),
        (["arch=linear", "arch.init_scale=-1"], "arch.init_scale"),
        (["dataset.atypical_kind=secondary_prototype", "dataset.secondary_prototypes=0"],
         "dataset.secondary_prototypes"),
    ],
)
def test_out_of_range_theory_settings_name_the_key(overrides, key):
    cfg = composed("dataset=prototypes", *overrides)
    with pytest.raises(ConfigError) as raised:
        validate(cfg, probe_points(cfg))
    assert raised.value.key == key and str(raised.value).startswith(f"{key}=")


@pytest.mark.parametrize(
    "changes, key, allowed",
    [
        ({"prototype_source": "imagenet"}, "dataset.prototype_source", "random, or a real dataset"),
        ({"prototype_source": "cifar10"}, "dataset.channels", "3, the channels of cifar10"),
        ({"prototype_source": "mnist", "classes": 11}, "dataset.classes", "at most the 10 classes of mnist"),
        ({"mean": [0.5]}, "dataset.mean", "[0.0]: prototypes are drawn in normalised units"),
        ({"channels": 3}, "dataset.mean", "[0.0, 0.0, 0.0]"),
    ],
)
def test_the_prototypes_shape_is_checked_before_anything_is_drawn(changes, key, allowed):
    with pytest.raises(ConfigError) as raised:
        dataset_info(prototypes(**changes))
    assert raised.value.key == key and allowed in str(raised.value)


def linear(init_scale: float = 1.0, seed: int = 0):
    torch.manual_seed(seed)
    arch = OmegaConf.merge(load_option("arch", "linear"), {"init_scale": init_scale})
    return build_model(arch, dataset_info(prototypes()))


def test_linear_has_no_bias_and_declares_logits_and_softmax():
    model = linear()
    (layer,) = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert layer.bias is None and (layer.in_features, layer.out_features) == (1024, 10)
    assert list(model.probe_points) == ["logits", "softmax"]
    assert model.selectable_points() == ["logits", "softmax", "penultimate"]


def test_the_output_stays_the_logits_and_the_softmax_point_is_their_softmax():
    from phases.training.features import collect_activations

    model = linear().eval()
    images = torch.randn(5, 1, 32, 32)
    activations = collect_activations(model, images, ["logits", "softmax"], batch_size=2)
    logits = images.flatten(1) @ model.get_submodule("classifier").weight.T
    assert torch.allclose(model(images), logits, atol=1e-5)
    assert torch.allclose(activations["logits"], logits, atol=1e-5)
    assert torch.allclose(activations["softmax"], logits.softmax(1), atol=1e-6)


def test_init_scale_multiplies_the_default_initial_weights():
    default = linear(1.0).get_submodule("classifier").weight
    assert torch.allclose(linear(0.1).get_submodule("classifier").weight, 0.1 * default)
    assert torch.allclose(linear(10).get_submodule("classifier").weight, 10 * default)
    assert (linear(0).get_submodule("classifier").weight == 0).all()
    bound = 1 / 1024**0.5  # PyTorch's default: uniform in +-1/sqrt(fan_in)
    assert default.abs().max() <= bound and default.abs().max() > 0.9 * bound


def test_init_scale_enters_the_run_id():
    from phases.store.identity import run_id

    first, second = composed("arch=linear"), composed("arch=linear", "arch.init_scale=0.1")
    assert run_id(first) != run_id(second) and run_id(first).startswith("fashion_mnist-linear-sgd-s0-")
    assert run_id(composed("dataset=prototypes", "arch=linear", "dataset.atypical_fraction=0.2")) != \
        run_id(composed("dataset=prototypes", "arch=linear"))


def test_sample_loss_splits_majority_and_atypical_as_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(300, 4, generator=generator) * 3, torch.randint(0, 4, (300,), generator=generator)
    atypical = torch.rand(300, generator=generator) < 0.1
    sample_loss = SampleLoss([0.5], [0.1])
    measured = sample_loss.measure(logits, labels, "train", atypical) + sample_loss.measure(logits, labels, "test",
                                                                                            atypical)
    result = {(m.metric, m.split): m.value for m in measured}
    losses = -logits.double().log_softmax(1)[torch.arange(300), labels]
    assert result[("loss_mean_majority", "train")] == pytest.approx(losses[~atypical].mean().item(), rel=1e-6)
    assert result[("loss_mean_atypical", "test")] == pytest.approx(losses[atypical].mean().item(), rel=1e-6)
    # No flag (a real dataset): no split metrics; a split without atypical samples: only the majority's.
    plain = sample_loss.measure(logits, labels, "train")
    assert not any(m.metric.startswith("loss_mean") for m in plain)
    no_atypical = SampleLoss([0.5], [0.1]).measure(logits, labels, "train", torch.zeros(300, dtype=torch.bool))
    assert {"loss_mean_majority"} == {m.metric for m in no_atypical if m.metric.startswith("loss_mean")}


def test_evaluation_sets_carry_the_atypical_flag_of_the_same_samples():
    splits = generate(atypical_fraction=0.2)
    probe = OmegaConf.create({"train_size": 1000, "test_size": 500, "classifier_train_size": 3000,
                              "min_images_per_feature": 4})
    sets = evaluation_sets(splits, probe, seed=0, point_features={"hidden": 100})
    for split, images, flags in (("train", splits.train_images, splits.train_atypical),
                                 ("test", splits.test_images, splits.test_atypical)):
        chosen = sets[split]
        # Find each evaluation image among the split's images: its flag must come along.
        index = torch.cdist(chosen.images.flatten(1)[:50], images.flatten(1)).argmin(1)
        assert torch.equal(chosen.atypical[:50], flags[index])


@pytest.mark.slow
def test_a_theory_run_end_to_end_writes_the_majority_and_atypical_losses(tmp_path):
    outputs = tmp_path / "outputs"
    result = subprocess.run(
        [sys.executable, "-m", "phases.run", "dataset=prototypes", "arch=linear", "dataset.train_size=400",
         "dataset.test_size=200", "dataset.atypical_fraction=0.1", "arch.init_scale=0.5", "schedule.max_steps=8",
         "schedule.batch_size=32", "probe.layers=[logits,softmax]", "probe.train_size=300", "probe.test_size=200",
         "progress=false", "paths.data_dir=/nonexistent", "paths.system_data_dir=null", f"paths.outputs={outputs}"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (folder,) = (outputs / "runs").iterdir()
    assert folder.name.startswith("prototypes-linear-sgd-s0-")
    assert json.loads((folder / "run.json").read_text())["data_source"].startswith("generated in memory")
    config = OmegaConf.load(folder / "config.yaml")
    assert (config.dataset.atypical_fraction, config.arch.init_scale) == (0.1, 0.5)
    frame = pq.read_table(folder / "metrics.parquet").to_pandas()
    assert sorted(frame["step"].unique()) == evaluation_steps(8)
    assert set(frame.query("probe == 'reconstruction'")["layer"]) == {"logits", "softmax"}
    split_losses = frame.query("probe == 'sample_loss' and metric.str.startswith('loss_mean')")
    # Every step, both splits, both groups: one row each.
    assert len(split_losses) == len(evaluation_steps(8)) * 2 * 2
    assert set(split_losses["metric"]) == {"loss_mean_majority", "loss_mean_atypical"}
    assert split_losses["value"].gt(0).all()
