"""arch=torchvision, arch=timm and arch=custom (issue 15): other people's networks, probed like the built-ins."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from phases.config.compose import compose
from phases.config.validation import ConfigError
from phases.store.identity import run_id
from phases.training import execute as execute_module
from phases.training import external_models
from phases.training.data import dataset_info
from phases.training.features import collect_activations
from phases.training.library_models import adapt_first_conv
from phases.training.models import build_model
from tests.conftest import REPOSITORY, write_mnist_like
from tests.test_hostile_sweeps import run_sweep, write_sweep_file

TINY_NET = "arch.target=tests.custom_models.TinyNet"
# Default points at 32x32 on one channel (Fashion-MNIST): the stem after its max-pool, the four stages.
RESNET18 = {"conv1": (64, 8, 8), "layer1": (64, 8, 8), "layer2": (128, 4, 4), "layer3": (256, 2, 2),
            "layer4": (512, 1, 1), "penultimate": (512,), "logits": (10,)}
# mobilenet_v3_small's `features` children; its classifier's hidden Linear (1024-d) is read as penultimate.
MOBILENET_V3_SMALL = {"features.0": (16, 16, 16), "features.1": (16, 8, 8), "features.2": (24, 4, 4),
                      **{f"features.{index}": (24, 4, 4) for index in (3,)},
                      **{f"features.{index}": (40, 2, 2) for index in (4, 5, 6)},
                      **{f"features.{index}": (48, 2, 2) for index in (7, 8)},
                      **{f"features.{index}": (96, 1, 1) for index in (9, 10, 11)},
                      "features.12": (576, 1, 1), "penultimate": (1024,), "logits": (10,)}
TORCHVISION_POINTS = {"resnet18": RESNET18, "mobilenet_v3_small": MOBILENET_V3_SMALL}


def built(*overrides: str):
    cfg = compose(list(overrides))
    info = dataset_info(cfg.dataset)
    return build_model(cfg.arch, info), info


@pytest.mark.parametrize("name", sorted(TORCHVISION_POINTS))
def test_torchvision_models_at_32px_on_one_channel_expose_their_stages(name):
    model, info = built("arch=torchvision", f"arch.model={name}")
    expected = TORCHVISION_POINTS[name]
    assert model.probe_shapes((1, 32, 32)) == expected
    assert list(model.probe_points) == list(expected) and model.penultimate == "penultimate"
    first_conv = next(module for module in model.modules() if isinstance(module, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    images, labels = torch.randn(4, 1, 32, 32), torch.arange(4)
    torch.nn.functional.cross_entropy(model(images), labels).backward()  # it trains
    assert all(parameter.grad is not None for parameter in model.parameters())
    activations = collect_activations(model.eval(), images, list(model.probe_points), batch_size=3)
    assert torch.allclose(activations["logits"], model(images))
    classifier = model.network.fc if name == "resnet18" else model.network.classifier[3]
    assert torch.allclose(classifier(activations["penultimate"]), activations["logits"], atol=1e-5)
    depths = list(model.probe_depths().values())
    assert depths == sorted(depths) and depths[-1] == 1.0 and all(0 < depth <= 1 for depth in depths)
    assert model.selectable_points().count("penultimate") == 1


def test_a_one_channel_stem_is_the_rgb_network_fed_the_grey_image_on_all_three_inputs():
    rgb = torchvision.models.get_model("resnet18", weights=None, num_classes=10).eval()
    grey = copy.deepcopy(rgb)
    adapt_first_conv(grey, channels=1)
    images = torch.randn(2, 1, 32, 32)
    assert grey.conv1.in_channels == 1 and grey.conv1.stride == rgb.conv1.stride
    assert torch.allclose(grey(images), rgb(images.repeat(1, 3, 1, 1)), atol=1e-5)


def test_building_leaves_batchnorm_statistics_and_the_random_stream_as_they_were(monkeypatch):
    """The build's check runs the network in training mode: its BatchNorm updates and dropout draws must not
    change the network or the random numbers the run's training then uses."""
    draws = []
    for check in (True, False):
        if not check:
            monkeypatch.setattr(external_models, "check_forward", lambda *arguments: None)
        torch.manual_seed(0)
        model, _ = built("arch=torchvision", "arch.model=mobilenet_v3_small")  # dropout in its classifier
        draws.append(torch.rand(3))
        norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
        assert all(int(norm.num_batches_tracked) == 0 and bool((norm.running_var == 1).all()) for norm in norms)
        assert model.training
    assert torch.equal(*draws)


def test_pretrained_weights_come_from_torchs_hub_cache_with_a_new_head_and_a_summed_stem(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    planted = torchvision.models.get_model("resnet18", weights=None).state_dict()  # stands in for ImageNet's
    (tmp_path / "checkpoints").mkdir()
    torch.save(planted, tmp_path / "checkpoints" / Path(weights.url).name)
    model, _ = built("arch=torchvision", "arch.model=resnet18", "arch.weights=DEFAULT", "dataset.download=false")
    assert torch.equal(model.network.layer1[0].conv1.weight, planted["layer1.0.conv1.weight"])
    assert torch.allclose(model.network.conv1.weight, planted["conv1.weight"].sum(dim=1, keepdim=True))
    assert (model.network.fc.in_features, model.network.fc.out_features) == (512, 10)


def test_the_state_dict_restores_a_wrapped_network_as_a_resumed_run_needs(tmp_path):
    torch.manual_seed(1)
    trained, _ = built("arch=custom", TINY_NET)
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    torch.manual_seed(2)
    fresh, _ = built("arch=custom", TINY_NET)
    fresh.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    images = torch.randn(3, 1, 32, 32)
    assert torch.equal(fresh.eval()(images), trained.eval()(images))


def test_timm_models_expose_their_feature_info_stages():
    pytest.importorskip("timm")
    model, _ = built("arch=timm", "arch.model=resnet18")
    assert model.probe_shapes((1, 32, 32)) == {"act1": (64, 16, 16), "layer1": (64, 8, 8), "layer2": (128, 4, 4),
                                               "layer3": (256, 2, 2), "layer4": (512, 1, 1), "penultimate": (512,),
                                               "logits": (10,)}


def test_without_timm_arch_timm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets where it is not installed
    with pytest.raises(ConfigError, match="arch='timm' is invalid: an installed library: pip install timm"):
        built("arch=timm", "arch.model=resnet18")


def test_a_custom_class_gets_the_datasets_classes_and_channels_and_its_kwargs():
    model, _ = built("arch=custom", TINY_NET, "arch.kwargs={width:8}", "dataset=cifar10")
    assert model.probe_shapes((3, 32, 32)) == {"conv1": (8, 16, 16), "conv2": (16, 8, 8), "penultimate": (16,),
                                               "logits": (10,)}
    assert model.probe_points["conv1"] == "network.relu1"  # the conv block read after its BatchNorm and ReLU


@pytest.mark.parametrize("points, expected", [
    ("[conv2,fc]", {"conv2": "network.conv2", "fc": "network.fc"}),
    ("{stem:relu1,pooled:'fc:input'}", {"stem": "network.relu1", "pooled": "network.fc:input"}),
])
def test_arch_probe_points_name_module_paths(points, expected):
    model, _ = built("arch=custom", TINY_NET, f"arch.probe_points={points}")
    assert model.probe_points == {**expected, "penultimate": "network.fc:input", "logits": "network"}


def test_names_and_run_ids_say_which_library_built_the_network():
    torchvision_id = run_id(compose(["arch=torchvision", "arch.model=resnet18"]))
    assert torchvision_id.startswith("fashion_mnist-torchvision_resnet18-")
    assert run_id(compose(["arch=timm", "arch.model=resnet18"])).startswith("fashion_mnist-timm_resnet18-")
    custom = compose(["arch=custom", TINY_NET])
    assert custom.arch.name == "custom_tests.custom_models.TinyNet"
    assert torchvision_id != run_id(compose(["arch=resnet18"]))


BAD_INPUTS = [
    (["arch=torchvision", "arch.model=resnet81"], "arch.model='resnet81' is invalid: a classification model of "
     "torchvision.models; did you mean resnet18"),
    (["arch=torchvision"], "arch.model=None is invalid: required: arch=torchvision chooses its network with "
     "arch.model"),
    (["arch=torchvision", "arch.model=resnet18", "arch.name=resnet18"], "arch.name='resnet18' is invalid: "
     "torchvision_resnet18, derived from arch.model"),
    (["arch=torchvision", "arch.model=resnet18", "arch.width=0.5"], "arch.width=0.5 is invalid: 1"),
    (["arch=torchvision", "arch.model=resnet18", "arch.weights=IMAGENET"], "arch.weights='IMAGENET' is invalid: null "
     "(random init) or a weights name of resnet18: IMAGENET1K_V1, DEFAULT"),
    (["arch=torchvision", "arch.model=resnet18", "arch.weights=DEFAULT", "dataset.download=false"],
     "arch.weights='DEFAULT' is invalid: weights in torch's hub cache, or dataset.download=auto"),
    (["arch=torchvision", "arch.model=resnet18", "arch.probe_points=[layer5]"], "arch.probe_points='layer5' is "
     "invalid: a module path of torchvision_resnet18; did you mean layer4"),
    (["arch=torchvision", "arch.model=resnet18", "arch.probe_points={logits:fc}"],
     "arch.probe_points='logits' is invalid"),
    (["arch=torchvision", "arch.model=resnet18", "probe.layers=[block5]"], "probe.layers='block5' is invalid: arch "
     "torchvision_resnet18 declares the probe points conv1, layer1"),
    (["arch=torchvision", "arch.model=vit_b_16"], "dataset.image_size=32 is invalid: a size torchvision_vit_b_16 "
     "accepts: on a zero batch of shape (2, 1, 32, 32) in training mode it fails (Wrong image height!"),
    (["arch=custom", "arch.target=tests.no_such_module.TinyNet"], "arch.target='tests.no_such_module.TinyNet' is "
     "invalid: an importable module.Class: No module named 'tests.no_such_module'"),
    (["arch=custom", "arch.target=tests.custom_models.TinyNett"], "arch.target='tests.custom_models.TinyNett' is "
     "invalid: an nn.Module class of tests.custom_models; did you mean TinyNet"),
    (["arch=custom", "arch.target=tests.custom_models.SevenOutputs"], "arch.target='tests.custom_models.SevenOutputs' "
     "is invalid: a network whose output is the logits, a tensor of shape (batch, classes) = (2, 10); in training "
     "mode it returns a tensor of shape (2, 7)"),
    (["arch=custom", "arch.target=tests.custom_models.NeedsLargeImages", "dataset.image_size=8"],
     "dataset.image_size=8 is invalid: a size custom_tests.custom_models.NeedsLargeImages accepts"),
    (["arch=custom", TINY_NET, "arch.kwargs={num_classes:3}"], "arch.kwargs.num_classes=3 is invalid: left out"),
    (["arch=custom", TINY_NET, "arch.kwargs={depth:3}"], "arch.kwargs={'depth': 3} is invalid: keyword arguments "
     "TinyNet accepts (it got num_classes, in_channels from the dataset)"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[" ".join(case[0]) for case in BAD_INPUTS])
def test_bad_input_fails_naming_the_key_before_any_run_folder(data_dir, tmp_path, monkeypatch, overrides, message):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # an empty cache: no weights anywhere
    outputs = tmp_path / "outputs"
    cfg = compose([*overrides, f"paths.data_dir={data_dir}", f"paths.outputs={outputs}", "paths.system_data_dir=null"])
    with pytest.raises(ConfigError) as raised:
        execute_module.execute(cfg)
    assert message in str(raised.value)
    assert not outputs.exists() or not any(outputs.iterdir())
    assert not (tmp_path / "hub").exists()  # nothing fetched


def test_a_sweep_file_may_not_name_a_class_to_import(tmp_path, monkeypatch, capsys):
    override = "arch.target=tests.custom_models.TinyNet"
    path = write_sweep_file(tmp_path, "custom", {"overrides": ["arch=custom", override]})
    code, _, error, started = run_sweep(monkeypatch, capsys, str(path), "--", f"paths.outputs={tmp_path}")
    assert code == 2 and not started
    assert f"`{override}` is refused: it names code to import" in error


def test_the_points_front_door_lists_points_shapes_and_features(capsys):
    from phases.points import main

    assert main(["arch=custom", TINY_NET]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "custom_tests.custom_models.TinyNet on fashion_mnist (1x32x32 images)"
    assert lines[1].split() == ["point", "module", "shape", "features", "depth"]
    assert [line.split()[:4] for line in lines[2:]] == [["conv1", "relu1", "4x16x16", "1024"],
                                                        ["conv2", "relu2", "8x8x8", "512"],
                                                        ["penultimate", "fc:input", "8", "8"],
                                                        ["logits", "(output)", "10", "10"]]


# A run small enough for a CPU: 4 steps, probes on 64 images, every probe point.
QUICK = ["schedule.max_steps=4", "schedule.batch_size=32", "probe.train_size=64", "probe.test_size=48",
         "probe.classifier_train_size=100", "probe.batch_size=50", "probe.calibration_size=50", "probe.layers=null",
         "progress=false", "paths.system_data_dir=null"]
END_TO_END = {
    "torchvision_resnet18": (["arch=torchvision", "arch.model=resnet18"], list(RESNET18)),
    "torchvision_mobilenet_v3_small": (["arch=torchvision", "arch.model=mobilenet_v3_small"],
                                       list(MOBILENET_V3_SMALL)),
    "custom_tests.custom_models.TinyNet": (["arch=custom", TINY_NET, "arch.kwargs={width:8}"],
                                           ["conv1", "conv2", "penultimate", "logits"]),
    "timm_resnet18": (["arch=timm", "arch.model=resnet18"], ["act1", "layer1", "layer2", "layer3", "layer4",
                                                             "penultimate", "logits"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(END_TO_END))
def test_a_run_probes_every_point_of_an_external_network(arch, tmp_path):
    if arch.startswith("timm_"):
        pytest.importorskip("timm")
    overrides, points = END_TO_END[arch]
    write_mnist_like(tmp_path / "data" / "FashionMNIST" / "raw")
    environment = {**os.environ, "PHASES_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "phases.run", *QUICK, *overrides, f"paths.outputs={tmp_path}"],
                            cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith(f"fashion_mnist-{arch}-sgd-s0-")
    assert json.loads((folder / "run.json").read_text())["status"] == "done"
    metrics = pq.read_table(folder / "metrics.parquet").to_pandas()
    assert set(metrics["arch"]) == {arch} and sorted(set(metrics["step"])) == [0, 1, 2, 4]
    reconstruction = metrics[metrics["probe"] == "reconstruction"]
    assert sorted(set(reconstruction["layer"])) == sorted(points)
    assert OmegaConf.load(folder / "config.yaml").arch.name == arch
