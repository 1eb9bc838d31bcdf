import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from phases.training.data import load_image_splits
from phases.training.features import collect_activations, frozen
from phases.training.models import build_model
from phases.training.output_metrics import SampleLoss
from phases.training.probes import (
    ClosedFormReconstruction,
    ConvolutionalReconstruction,
    GradientReconstruction,
    LBFGSClassifier,
    ProbeData,
    SGDClassifier,
    TransferProbe,
    fit_ridge,
)
from phases.training.probes.base import symmetric_gram
from phases.training.probes.reconstruction import RIDGE_GRID, gcv_ridge
from phases.training.probes.transfer import colour_dominance_labels, quadrant_dominance_labels


def random_problem(images: int, features: int, outputs: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(images, features, generator=generator) * 3 + 1
    weight = torch.randn(features, outputs, generator=generator)
    bias = torch.randn(outputs, generator=generator)
    return inputs, weight, bias


def test_closed_form_decoder_recovers_a_known_linear_map():
    inputs, weight, bias = random_problem(images=400, features=30, outputs=50)
    fitted_weight, fitted_bias, _ = fit_ridge(inputs, inputs @ weight + bias, ridge=1e-8)
    assert torch.allclose(fitted_weight, weight, atol=1e-3)
    assert torch.allclose(fitted_bias, bias, atol=1e-3)


@pytest.mark.parametrize("columns", [1, 3, 7, 64])
def test_blockwise_gram_equals_the_full_product(columns):
    matrix = torch.randn(50, columns, generator=torch.Generator().manual_seed(columns))
    assert torch.allclose(symmetric_gram(matrix), matrix.T @ matrix, atol=1e-4)
    assert torch.allclose(symmetric_gram(matrix.T), matrix @ matrix.T, atol=1e-4)  # the dual's, from a view


def test_dual_form_equals_primal_form_when_features_outnumber_images():
    inputs, weight, _ = random_problem(images=40, features=120, outputs=7)
    targets = inputs @ weight + 0.1 * torch.randn(40, 7)
    dual_weight, dual_bias, _ = fit_ridge(inputs, targets, ridge=1e-2)  # 120 features > 40 images: dual
    centred = (inputs - inputs.mean(0)).double()
    penalty = 1e-2 * centred.square().sum() / 120
    primal = torch.linalg.solve(centred.T @ centred + penalty * torch.eye(120, dtype=torch.float64),
                                centred.T @ (targets - targets.mean(0)).double())
    assert torch.allclose(dual_weight.double(), primal, atol=1e-4)
    assert torch.allclose(dual_bias, targets.mean(0) - inputs.mean(0) @ dual_weight, atol=1e-4)


def test_closed_form_matches_a_gradient_trained_decoder():
    inputs, weight, bias = random_problem(images=300, features=20, outputs=16, seed=1)
    targets = torch.tanh(inputs @ weight / 10) + bias  # not exactly linear: the optimum has residuals
    ridge = 1e-2
    fitted_weight, fitted_bias, _ = fit_ridge(inputs, targets, ridge)
    centred = inputs - inputs.mean(0)
    penalty = ridge * centred.square().sum() / inputs.shape[1]
    trained_weight = torch.zeros(20, 16, dtype=torch.float64, requires_grad=True)
    trained_bias = torch.zeros(16, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([trained_weight, trained_bias], max_iter=500, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-12, tolerance_change=1e-14)

    def objective():
        optimizer.zero_grad()
        residual = inputs.double() @ trained_weight + trained_bias - targets.double()
        loss = residual.square().sum() + penalty * trained_weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    assert torch.allclose(fitted_weight.double(), trained_weight.detach(), atol=1e-3)
    assert torch.allclose(fitted_bias.double(), trained_bias.detach(), atol=1e-3)


@pytest.mark.parametrize("images, features", [(200, 30), (40, 120)], ids=["primal", "dual"])
def test_training_error_without_prediction_equals_the_predicted_one(images, features):
    inputs, weight, _ = random_problem(images=images, features=features, outputs=9, seed=3)
    targets = torch.tanh(inputs @ weight / 20)
    solution = fit_ridge(inputs, targets, ridge=1e-2)
    predicted = (inputs @ solution.weight + solution.bias - targets).double().square().sum().item()
    assert solution.train_squared_error == pytest.approx(predicted, rel=1e-4)


def test_ridge_survives_constant_features():
    inputs = torch.zeros(50, 8)
    targets = torch.randn(50, 4)
    weight, bias, _ = fit_ridge(inputs, targets, ridge=1e-3)
    assert torch.all(weight == 0) and torch.allclose(bias, targets.mean(0))


def brute_force_gcv(inputs: torch.Tensor, targets: torch.Tensor, ridge: float) -> float:
    """GCV from the explicit hat matrix of the centred problem: RSS / (n - 1 - trace(H))^2."""
    centred = (inputs - inputs.mean(0)).double()
    centred_targets = (targets - targets.mean(0)).double()
    gram = centred.T @ centred
    penalty = ridge * gram.trace() / inputs.shape[1]
    hat = centred @ torch.linalg.solve(gram + penalty * torch.eye(len(gram), dtype=torch.float64), centred.T)
    residual = (centred_targets - hat @ centred_targets).square().sum()
    return (residual / (len(inputs) - 1 - hat.trace()).square()).item()


@pytest.mark.parametrize("images, features", [(120, 20), (40, 90)])  # primal, and dual (more features than images)
def test_gcv_chooses_the_penalty_the_explicit_hat_matrix_does(images, features):
    inputs, weight, _ = random_problem(images=images, features=features, outputs=6, seed=4)
    targets = inputs @ weight / features**0.5 + 2 * torch.randn(images, 6, generator=torch.Generator().manual_seed(5))
    grid = torch.logspace(-6, 2, 17, dtype=torch.float64)
    scores = [brute_force_gcv(inputs, targets, ridge.item()) for ridge in grid]
    assert gcv_ridge(inputs, targets, grid) == pytest.approx(grid[int(np.argmin(scores))].item())


def test_gcv_penalises_noise_and_spares_a_clean_linear_map():
    inputs, weight, bias = random_problem(images=300, features=40, outputs=8)
    assert gcv_ridge(inputs, inputs @ weight + bias) <= 1e-6  # nothing to shrink: the least penalty wins
    noise = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    assert gcv_ridge(inputs, noise) >= 1.0  # features unrelated to the targets: shrink everything


def test_a_gcv_penalty_is_chosen_once_per_point_recorded_and_restored():
    inputs, weight, _ = random_problem(images=300, features=20, outputs=4, seed=2)
    images = (inputs @ weight + torch.randn(300, 4, generator=torch.Generator().manual_seed(3))).reshape(300, 1, 2, 2)

    def data(features, point):
        return ProbeData(features, images, torch.zeros(300, dtype=torch.long), (20,), point=point)

    decoder = ClosedFormReconstruction(ridge="gcv")
    first = metrics(decoder.fit_and_score(data(inputs, "block1"), data(inputs, "block1")))
    expected = gcv_ridge(inputs, images.flatten(1))
    assert first[("ridge", "train")] == expected and expected in RIDGE_GRID.tolist()
    # Later steps keep the point's penalty even where GCV would now choose another one.
    noise = torch.randn(300, 20, generator=torch.Generator().manual_seed(9))
    assert metrics(decoder.fit_and_score(data(noise, "block1"), data(noise, "block1")))[("ridge", "train")] == expected
    assert metrics(decoder.fit_and_score(data(noise, "block2"), data(noise, "block2")))[("ridge", "train")] != expected
    resumed = ClosedFormReconstruction(ridge="gcv")
    resumed.restore([{"step": step, "layer": "block1", "probe": "reconstruction", "metric": "ridge", "value": value}
                     for step, value in ((8, 0.5), (0, expected), (4, 0.25))])
    assert resumed.chosen == {"block1": expected}  # the first evaluation's
    fixed = ClosedFormReconstruction(ridge=1e-3)
    assert metrics(fixed.fit_and_score(data(noise, "block1"), data(noise, "block1")))[("ridge", "train")] == 1e-3


def blobs(images: int, seed: int, separation: float = 8.0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(images) % 3
    centres = torch.eye(3, 10) * separation
    return centres[labels] + torch.randn(images, 10, generator=generator), labels


def as_probe_data(features, labels):
    return ProbeData(features=features, images=torch.zeros(len(labels), 1, 2, 2), labels=labels,
                     feature_shape=tuple(features.shape[1:]))


CLASSIFIERS = {"lbfgs": lambda: LBFGSClassifier(l2=1e-3, max_iterations=30),
               "lbfgs_preconditioned": lambda: LBFGSClassifier(l2=1e-3, preconditioned=True),
               "sgd": lambda: SGDClassifier(epochs=20, lr=0.01, momentum=0.9, lr_drop_epoch=10, batch_size=128, seed=0)}


def metrics(measurements):
    return {(m.metric, m.split): m.value for m in measurements}


@pytest.mark.parametrize("solver", sorted(CLASSIFIERS))
def test_linear_probe_separates_separable_data(solver):
    (train_x, train_y), (test_x, test_y) = blobs(300, 0), blobs(300, 1)
    result = metrics(CLASSIFIERS[solver]().fit_and_score(
        as_probe_data(train_x, train_y), as_probe_data(test_x, test_y)))
    assert result[("accuracy", "train")] == 1.0 and result[("accuracy", "test")] == 1.0
    assert result[("cross_entropy", "test")] < 0.1


@pytest.mark.parametrize("solver", sorted(CLASSIFIERS))
def test_linear_probe_is_at_chance_on_shuffled_labels(solver):
    # The same separable data, but training labels shuffled: nothing links features to labels.
    (train_x, train_y), (test_x, test_y) = blobs(3000, 0, separation=2.0), blobs(3000, 1, separation=2.0)
    shuffled = train_y[torch.randperm(3000, generator=torch.Generator().manual_seed(2))]
    honest = metrics(CLASSIFIERS[solver]().fit_and_score(
        as_probe_data(train_x, train_y), as_probe_data(test_x, test_y)))
    result = metrics(CLASSIFIERS[solver]().fit_and_score(
        as_probe_data(train_x, shuffled), as_probe_data(test_x, test_y)))
    assert honest[("accuracy", "test")] > 0.5
    assert abs(result[("accuracy", "test")] - 1 / 3) < 0.05


@pytest.fixture(scope="module")
def real_block_activations(real_fashion_mnist, tmp_path_factory):
    """block3 (128x4x4) and block5 (512) of a randomly initialised VGG-8 on 3000/1000 real Fashion-MNIST images."""
    dataset = OmegaConf.create({"name": "fashion_mnist", "image_size": 32, "mean": [0.281], "std": [0.352],
                                "train_size": 3000, "test_size": 1000, "download": False, "resize": "spline"})
    paths = OmegaConf.create({"data_dir": str(tmp_path_factory.mktemp("data")),
                              "system_data_dir": str(real_fashion_mnist.parent)})
    splits = load_image_splits(dataset, paths, seed=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "vgg8", "width": 1.0}), splits.info).eval()
    shapes = model.probe_shapes((1, 32, 32))
    data = {}
    # The default extraction (precise_eval): at initialisation plain eval mode gives tiny activations.
    with frozen(model, "precise_eval", splits.train_images):
        for split, images, labels in (("train", splits.train_images, splits.train_labels),
                                      ("test", splits.test_images, splits.test_labels)):
            features = collect_activations(model, images, ["block3", "block5"], batch_size=500)
            data[split] = {layer: ProbeData(features[layer], images, labels, shapes[layer]) for layer in features}
    return data


def penalised_loss(classifier: LBFGSClassifier, data: ProbeData, predict) -> float:
    """The objective L-BFGS minimises, at the fitted solution: mean cross-entropy + l2 ||W||^2, W the weight
    on the standardised features (read back from the predictions on unit vectors around the mean)."""
    mean, scale = data.features.mean(0), data.features.std(0).clamp_min(1e-6)
    origin = predict(mean[None])
    weight = predict(mean + torch.diag(scale)) - origin  # row i: the logits' change for +1 standard deviation
    return (F.cross_entropy(predict(data.features), data.labels) + classifier.l2 * weight.square().sum()).item()


OPTIMA: dict = {}  # layer -> (penalised loss, predict) of the reference solve, shared by the tests below


def classifier_optimum(activations: dict, layer: str):
    """The reference: a plain L-BFGS solve (l2 1e-2) run to 500 iterations, far past any default."""
    if layer not in OPTIMA:
        train = activations["train"][layer]
        reference = LBFGSClassifier(l2=1e-2, max_iterations=500)
        predict = reference.fit(train.features, train.labels, 10)
        OPTIMA[layer] = penalised_loss(reference, train, predict), predict
    return OPTIMA[layer]


@pytest.mark.parametrize("layer", ["block3", "block5"])
@pytest.mark.parametrize("preconditioned", [False, True], ids=["plain", "preconditioned"])
def test_the_default_classifier_ends_within_its_tolerance_of_the_optimum(real_block_activations, layer,
                                                                         preconditioned):
    """Each solve at its default iterations (30 plain, 15 preconditioned) within 2% of the optimum's penalised
    loss and 0.5 points of its test accuracy: the optimum is a plain solve run to 500 iterations."""
    train, test = real_block_activations["train"][layer], real_block_activations["test"][layer]
    classes = 10
    optimum, optimum_predict = classifier_optimum(real_block_activations, layer)
    classifier = LBFGSClassifier(l2=1e-2, preconditioned=preconditioned)
    predict = classifier.fit(train.features, train.labels, classes, train.centred_gram)
    assert -1e-4 < penalised_loss(classifier, train, predict) - optimum < 0.02 * optimum

    def accuracy(function):
        return (function(test.features).argmax(1) == test.labels).float().mean().item()

    assert abs(accuracy(predict) - accuracy(optimum_predict)) <= 0.005


@pytest.mark.parametrize("preconditioned", [False, True], ids=["plain", "preconditioned"])
def test_padding_the_weight_with_zero_columns_leaves_the_fit_unchanged(real_block_activations, monkeypatch,
                                                                        preconditioned):
    """The products run at MINIMUM_PRODUCT_COLUMNS columns for speed; the logits are those of the
    unpadded weight, up to float32 rounding."""
    from phases.training.probes import classification

    train, test = real_block_activations["train"]["block3"], real_block_activations["test"]["block3"]
    logits = {}
    for columns in (classification.MINIMUM_PRODUCT_COLUMNS, 0):
        monkeypatch.setattr(classification, "MINIMUM_PRODUCT_COLUMNS", columns)
        classifier = LBFGSClassifier(l2=1e-2, preconditioned=preconditioned)
        logits[columns] = classifier.fit(train.features, train.labels, 10, train.centred_gram)(test.features)
    padded, plain = logits.values()
    assert padded.shape == plain.shape == (len(test.labels), 10)
    torch.testing.assert_close(padded, plain, rtol=1e-3, atol=1e-3)


def test_preconditioning_brings_the_solve_closer_to_the_optimum_at_equal_iterations(real_block_activations):
    train = real_block_activations["train"]["block3"]
    optimum, _ = classifier_optimum(real_block_activations, "block3")
    gaps = {}
    for preconditioned in (False, True):
        classifier = LBFGSClassifier(l2=1e-2, max_iterations=10, preconditioned=preconditioned)
        gaps[preconditioned] = penalised_loss(classifier, train, classifier.fit(train.features, train.labels, 10,
                                                                                train.centred_gram)) - optimum
    assert gaps[True] < gaps[False] / 5  # measured: 0.0074 against 0.121


def test_a_points_gram_is_computed_once_for_the_decoder_and_the_classifier(real_block_activations, monkeypatch):
    from phases.training.probes import base

    train, test = real_block_activations["train"]["block5"], real_block_activations["test"]["block5"]
    train = ProbeData(train.features, train.images, train.labels, train.feature_shape, point="block5")
    products = []
    real_gram = base.symmetric_gram
    monkeypatch.setattr(base, "symmetric_gram", lambda matrix, *rest: products.append(matrix.shape) or
                        real_gram(matrix, *rest))
    ClosedFormReconstruction(ridge="gcv").fit_and_score(train, test)
    LBFGSClassifier(l2=1e-2, preconditioned=True).fit_and_score(train, test)
    assert products == [train.features.shape]
    # The decoder's solution is the one it finds without the shared Gram.
    alone = fit_ridge(train.features, train.images.flatten(1), 1e-3)
    shared = fit_ridge(train.features, train.images.flatten(1), 1e-3, train.centred_gram())
    assert torch.equal(alone.weight, shared.weight)


def test_without_a_cholesky_factor_or_with_more_features_than_images_the_classifier_solves_plainly():
    train_x, train_y = blobs(40, 0)
    wide = torch.cat([train_x, torch.randn(40, 100)], 1)  # 110 features > 40 images: no inverse correlation
    classifier = LBFGSClassifier(l2=0.0, preconditioned=True)
    assert (classifier.fit(wide, train_y, 3)(wide).argmax(1) == train_y).all()
    collinear = torch.cat([train_x, train_x], 1)  # l2 = 0 and duplicated columns: a singular system
    assert classifier.preconditioner_root(symmetric_gram(collinear - collinear.mean(0)).double(),
                                          collinear.std(0), 40, 3) is None
    assert (classifier.fit(collinear, train_y, 3)(collinear).argmax(1) == train_y).all()


DECODERS = {
    "closed_form": lambda: ClosedFormReconstruction(ridge=1e-3),
    "sgd": lambda: GradientReconstruction(epochs=5, lr=3e-4, weight_decay=1e-5, batch_size=128, seed=0),
    "conv": lambda: ConvolutionalReconstruction(epochs=2, lr=3e-4, weight_decay=1e-5, batch_size=128, seed=0),
}


@pytest.mark.slow  # trains the convolutional decoder on real activations: not in `make test-fast`
@pytest.mark.parametrize("layer", ["block3", "block5"])
@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_every_decoder_beats_the_mean_image_on_real_data(real_block_activations, decoder, layer):
    train, test = real_block_activations["train"][layer], real_block_activations["test"][layer]
    result = metrics(DECODERS[decoder]().fit_and_score(train, test))
    mean_image_mse = F.mse_loss(train.images.mean(0).expand_as(test.images), test.images).item()
    assert result[("mse", "test")] < 0.8 * mean_image_mse


def test_closed_form_is_no_worse_than_the_published_adam_recipe(real_block_activations):
    train, test = real_block_activations["train"]["block5"], real_block_activations["test"]["block5"]
    exact = metrics(ClosedFormReconstruction(ridge=1e-3).fit_and_score(train, test))
    recipe = metrics(GradientReconstruction(epochs=20, lr=3e-4, weight_decay=1e-5, batch_size=128,
                                            seed=0).fit_and_score(train, test))
    assert exact[("mse", "train")] <= recipe[("mse", "train")]
    assert exact[("mse", "test")] <= recipe[("mse", "test")] * 1.02


def test_colour_dominance_labels_on_hand_built_images():
    images = torch.zeros(3, 3, 4, 4)
    images[0, 0] = 1.0  # red
    images[1, 1] = 2.0  # green
    images[2, 2] = 0.5  # blue, with the others negative
    images[2, :2] = -1.0
    assert colour_dominance_labels(images).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="quadrant_dominance"):
        colour_dominance_labels(torch.zeros(1, 1, 4, 4))


def test_quadrant_dominance_labels_on_hand_built_images():
    images = torch.full((4, 1, 4, 4), -1.0)
    images[0, :, :2, :2] = 1.0  # top-left
    images[1, :, :2, 2:] = 1.0  # top-right
    images[2, :, 2:, :2] = 1.0  # bottom-left
    images[3, :, 2:, 2:] = 1.0  # bottom-right
    assert quadrant_dominance_labels(images).tolist() == [0, 1, 2, 3]


def test_transfer_probe_learns_the_task_and_holds_out_a_validation_split():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1000, 1, 8, 8, generator=generator)
    # Features that carry the quadrant sums linearly: the task is linearly decodable from them.
    features = torch.stack([images[:, 0, rows, columns].sum(dim=(1, 2)) for rows in (slice(0, 4), slice(4, 8))
                            for columns in (slice(0, 4), slice(4, 8))], dim=1)
    train = ProbeData(features[:800], images[:800], torch.zeros(800, dtype=torch.long), (4,))
    test = ProbeData(features[800:], images[800:], torch.zeros(200, dtype=torch.long), (4,))
    probe = TransferProbe("quadrant_dominance", LBFGSClassifier(l2=1e-4, max_iterations=100), 0.25, seed=0)
    result = metrics(probe.fit_and_score(train, test))
    assert probe.name == "transfer_quadrant_dominance"
    assert {split for _, split in result} == {"train", "val", "test"}
    assert result[("accuracy", "val")] > 0.9 and result[("accuracy", "test")] > 0.9


def test_sample_loss_matches_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(1000, 5, generator=generator) * 3, torch.randint(0, 5, (1000,), generator=generator)
    sample_loss = SampleLoss([0.5, 0.9, 0.99], [0.01, 0.1])
    result = metrics(sample_loss.measure(logits, labels, "train") + sample_loss.measure(logits, labels, "test"))
    losses = np.array([-np.log(np.exp(row) [label] / np.exp(row).sum()) for row, label in
                       zip(logits.double().numpy(), labels.numpy(), strict=True)])
    for name, quantile in (("loss_p50", 0.5), ("loss_p90", 0.9), ("loss_p99", 0.99)):
        assert result[(name, "train")] == pytest.approx(np.quantile(losses, quantile), rel=1e-5)
    worst = np.sort(losses)[::-1]
    assert result[("loss_share_worst_1pct", "train")] == pytest.approx(worst[:10].sum() / losses.sum(), rel=1e-5)
    assert result[("loss_share_worst_10pct", "test")] == pytest.approx(worst[:100].sum() / losses.sum(), rel=1e-5)
