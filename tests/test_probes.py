import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from phases.data import load_image_splits
from phases.features import collect_activations
from phases.models import build_model
from phases.probes import ClosedFormReconstruction, LinearClassifier, ProbeData, fit_ridge


def random_problem(images: int, features: int, outputs: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(images, features, generator=generator) * 3 + 1
    weight = torch.randn(features, outputs, generator=generator)
    bias = torch.randn(outputs, generator=generator)
    return inputs, weight, bias


def test_closed_form_decoder_recovers_a_known_linear_map():
    inputs, weight, bias = random_problem(images=400, features=30, outputs=50)
    fitted_weight, fitted_bias = fit_ridge(inputs, inputs @ weight + bias, ridge=1e-8)
    assert torch.allclose(fitted_weight, weight, atol=1e-3)
    assert torch.allclose(fitted_bias, bias, atol=1e-3)


def test_dual_form_equals_primal_form_when_features_outnumber_images():
    inputs, weight, _ = random_problem(images=40, features=120, outputs=7)
    targets = inputs @ weight + 0.1 * torch.randn(40, 7)
    dual_weight, dual_bias = fit_ridge(inputs, targets, ridge=1e-2)  # 120 features > 40 images: dual
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
    fitted_weight, fitted_bias = fit_ridge(inputs, targets, ridge)
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


def test_ridge_survives_constant_features():
    inputs = torch.zeros(50, 8)
    targets = torch.randn(50, 4)
    weight, bias = fit_ridge(inputs, targets, ridge=1e-3)
    assert torch.all(weight == 0) and torch.allclose(bias, targets.mean(0))


def blobs(images: int, seed: int, separation: float = 8.0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(images) % 3
    centres = torch.eye(3, 10) * separation
    return centres[labels] + torch.randn(images, 10, generator=generator), labels


def as_probe_data(features, labels):
    return ProbeData(features=features, images=torch.zeros(len(labels), 1), labels=labels)


def metrics(measurements):
    return {(m.metric, m.split): m.value for m in measurements}


def test_linear_probe_separates_separable_data():
    (train_x, train_y), (test_x, test_y) = blobs(300, 0), blobs(300, 1)
    result = metrics(LinearClassifier(l2=1e-3, max_iterations=30).fit_and_score(
        as_probe_data(train_x, train_y), as_probe_data(test_x, test_y)))
    assert result[("accuracy", "train")] == 1.0 and result[("accuracy", "test")] == 1.0
    assert result[("cross_entropy", "test")] < 0.1


def test_linear_probe_is_at_chance_on_shuffled_labels():
    # The same separable data, but training labels shuffled: nothing links features to labels.
    (train_x, train_y), (test_x, test_y) = blobs(3000, 0, separation=2.0), blobs(3000, 1, separation=2.0)
    shuffled = train_y[torch.randperm(3000, generator=torch.Generator().manual_seed(2))]
    honest = metrics(LinearClassifier(l2=1e-3, max_iterations=30).fit_and_score(
        as_probe_data(train_x, train_y), as_probe_data(test_x, test_y)))
    result = metrics(LinearClassifier(l2=1e-3, max_iterations=30).fit_and_score(
        as_probe_data(train_x, shuffled), as_probe_data(test_x, test_y)))
    assert honest[("accuracy", "test")] > 0.5
    assert abs(result[("accuracy", "test")] - 1 / 3) < 0.05


def test_closed_form_decoder_beats_the_mean_image_on_real_data(real_fashion_mnist, tmp_path):
    dataset = OmegaConf.create({"name": "fashion_mnist", "image_size": 32, "mean": [0.281], "std": [0.352],
                                "train_size": 3000, "test_size": 1000, "download": False})
    paths = OmegaConf.create({"data_dir": str(tmp_path), "system_data_dir": str(real_fashion_mnist.parent)})
    splits = load_image_splits(dataset, paths, seed=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "vgg8", "width": 1.0}), splits.info).eval()
    data = {}
    for split, images, labels in (("train", splits.train_images, splits.train_labels),
                                  ("test", splits.test_images, splits.test_labels)):
        features = collect_activations(model, images, ["block5"], batch_size=500)["block5"]
        data[split] = ProbeData(features, images.flatten(1), labels)
    result = metrics(ClosedFormReconstruction(ridge=1e-3).fit_and_score(data["train"], data["test"]))
    mean_image_mse = F.mse_loss(data["train"].images.mean(0).expand_as(data["test"].images), data["test"].images)
    assert result[("mse", "test")] < 0.5 * mean_image_mse.item()
