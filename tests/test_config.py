import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from phases.config.compose import compose
from phases.config.options import CONFIG_DIR
from phases.config.validation import ConfigError, validate
from phases.training.data import dataset_info
from phases.training.evaluation import check_enabled
from phases.training.models import build_model
from phases.training.probes import build_probes
from tests.conftest import REPOSITORY
from tests.test_image_folder import two_folders

GROUPS = ("dataset", "arch", "optimizer", "probe", "schedule")


def composed(*overrides: str):
    return compose(overrides)


def probe_points(cfg) -> list[str]:
    return build_model(cfg.arch, dataset_info(cfg.dataset)).selectable_points()


def test_defaults_are_the_papers_protocol():
    cfg = composed()
    assert (cfg.dataset.name, cfg.arch.name) == ("fashion_mnist", "vgg8")
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.002, 0.9, 0.0)
    assert (cfg.schedule.batch_size, cfg.schedule.max_steps) == (128, 2048)
    assert (list(cfg.dataset.mean), list(cfg.dataset.std), cfg.dataset.image_size) == ([0.281], [0.352], 32)
    validate(cfg, probe_points(cfg))


@pytest.mark.parametrize(
    "group, option",
    [(group, path.stem) for group in GROUPS for path in sorted((CONFIG_DIR / group).glob("*.yaml"))],
)
def test_every_config_option_composes_and_validates(group, option, tmp_path):
    # dataset.root has no default: image_folder gets a small folder in its layout.
    root = [f"dataset.root={two_folders(tmp_path)}"] if option == "image_folder" else []
    # arch=torchvision, timm and custom need their network named (more in tests/test_external_models.py).
    network = {"torchvision": ["arch.model=resnet18"], "timm": ["arch.model=resnet18"],
               "custom": ["arch.target=tests.custom_models.TinyNet"]}.get(option, []) if group == "arch" else []
    if (group, option) == ("arch", "timm"):
        pytest.importorskip("timm")  # an optional library (pip install timm)
    cfg = composed(f"{group}={option}", *root, *network)
    validate(cfg, probe_points(cfg))


@pytest.mark.parametrize("override", ["optimizer.lr=abc", "schedule.max_steps=1.5", "probe.train_size=many"])
def test_wrong_types_fail_at_compose_time(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        composed(override)


def test_misspelt_keys_fail_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="learning_rate"):
        composed("optimizer.learning_rate=0.1")


@pytest.mark.parametrize("override, allowed", [
    ("probe.bn_mode=batch", "precise_eval, eval, train"),
    ("probe.reconstruction.solver=adam", "closed_form, sgd"),
    ("probe.linear.solver=newton", "lbfgs, sgd"),
    ("probe.transfer.classifier.solver=newton", "lbfgs, sgd"),
    ("probe.transfer.tasks=[colour]", "dominance, colour_dominance, quadrant_dominance, dataset_switch"),
])
def test_closed_choices_fail_at_compose_time_listing_the_allowed_values(override, allowed):
    with pytest.raises(ConfigCompositionException) as raised:
        composed(override)
    assert override.split("=")[0] in str(raised.value) and allowed in str(raised.value.__cause__)


def test_atypical_kind_is_a_closed_choice():
    with pytest.raises(ConfigCompositionException) as raised:
        composed("dataset=prototypes", "dataset.atypical_kind=nearby")
    assert "other_prototype, random_direction" in str(raised.value.__cause__)


def test_unknown_arch_option_lists_the_known_ones_and_no_schema():
    with pytest.raises(ConfigCompositionException, match="vgg8") as raised:
        composed("arch=nope")
    options = str(raised.value).split("Available options in 'arch':")[1].split("Config search path")[0].split()
    assert options == ["custom", "linear", "mlp", "resnet10", "resnet18", "timm", "torchvision", "vgg11", "vgg11_bn",
                       "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg8"]


@pytest.mark.parametrize("override", ["arch=arch_schema", "dataset=dataset_schema", "probe=probe_schema",
                                      "hydra/launcher=local_launcher_schema"])
def test_a_schema_cannot_be_selected_as_an_option(override):
    with pytest.raises(ConfigCompositionException):
        compose([override], hydra_config=True)


def test_help_lists_only_real_options():
    result = subprocess.run([sys.executable, "-m", "phases.run", "--help"], cwd=REPOSITORY, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    groups = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert ("arch: custom, linear, mlp, resnet10, resnet18, timm, torchvision, vgg11, vgg11_bn, vgg13, vgg13_bn, "
            "vgg16, vgg16_bn, vgg8") in groups
    assert "schema" not in groups


def test_every_option_file_holds_only_what_its_schema_does_not_say():
    """One home per default: an option's value that equals its schema's default is written twice."""
    from omegaconf import OmegaConf

    from phases.config.options import schema_of

    for path in sorted(CONFIG_DIR.glob("*/*.yaml")):
        option = OmegaConf.load(path)
        defaults = OmegaConf.structured(schema_of(option))
        option.pop("defaults")
        for key, value in OmegaConf.to_container(option).items():
            if key in defaults and not OmegaConf.is_missing(defaults, key) and not isinstance(value, dict):
                assert value != OmegaConf.to_container(defaults)[key], f"{path}: {key} repeats the schema's default"


@pytest.mark.parametrize(
    "override, key",
    [
        ("optimizer.lr=-1", "optimizer.lr"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.momentum=1.5", "optimizer.momentum"),
        ("schedule.batch_size=0", "schedule.batch_size"),
        ("schedule.max_steps=0", "schedule.max_steps"),
        ("arch.width=0", "arch.width"),
        ("probe.train_size=0", "probe.train_size"),
        ("probe.layers=[block9]", "probe.layers"),
        ("probe.reconstruction.ridge=0", "probe.reconstruction.ridge"),
        ("probe.linear.lr=-0.1", "probe.linear.lr"),
        ("dataset.std=[0]", "dataset.std[0]"),
        ("dataset.train_size=0", "dataset.train_size"),
        ("device=tpu", "device"),
    ],
)
def test_out_of_range_values_name_the_key_and_value(override, key):
    cfg = composed(*override.split())
    with pytest.raises(ConfigError) as raised:
        validate(cfg, probe_points(cfg))
    assert raised.value.key == key
    assert str(raised.value).startswith(f"{key}=")


def test_colour_dominance_on_grayscale_images_fails_naming_the_key():
    cfg = composed("probe.enabled=[transfer]", "probe.transfer.tasks=[colour_dominance]")
    with pytest.raises(ConfigError) as raised:
        build_probes(cfg.probe, 0, dataset_info(cfg.dataset))
    assert raised.value.key == "probe.transfer.tasks" and "use quadrant_dominance" in str(raised.value)


def test_unknown_probe_layer_error_lists_the_archs_probe_points():
    cfg = composed("probe.layers=[block5,pooled]")
    with pytest.raises(ConfigError, match="block1, block2, block3, block4, block5, logits, penultimate"):
        validate(cfg, probe_points(cfg))


def test_penultimate_names_each_archs_last_features():
    for arch, point in (("vgg8", "block5"), ("resnet18", "pooled"), ("mlp", "hidden2")):
        cfg = composed(f"arch={arch}", "probe.layers=[penultimate,logits]")
        model = build_model(cfg.arch, dataset_info(cfg.dataset))
        validate(cfg, model.selectable_points())
        assert model.resolve_points(cfg.probe.layers) == [point, "logits"]
    linear = composed("arch=linear")  # no hidden layer: the default [penultimate, logits] probes the logits
    validate(linear, probe_points(linear))
    assert build_model(linear.arch, dataset_info(linear.dataset)).resolve_points(linear.probe.layers) == ["logits"]


def test_enabled_names_come_from_the_probe_and_output_metric_registries():
    check_enabled(["reconstruction", "reconstruction_conv", "linear", "transfer", "sample_loss"])
    with pytest.raises(ConfigError) as raised:
        check_enabled(["reconstruction", "decoder"])
    assert raised.value.key == "probe.enabled"
    assert ("reconstruction, reconstruction_recipe, reconstruction_conv, linear, linear_recipe, transfer, "
            "effective_rank, cka, class_collapse, sample_loss") in str(raised.value)


@pytest.mark.parametrize("launcher, timeout_min", [("local", 4320), ("slurm", 1440)])
def test_launcher_configs_set_a_realistic_timeout(launcher, timeout_min):
    cfg = compose([f"hydra/launcher={launcher}"], hydra_config=True)
    assert cfg.hydra.launcher.timeout_min == timeout_min
    assert cfg.hydra.launcher._target_.endswith("LocalLauncher" if launcher == "local" else "SlurmLauncher")


def test_local_launcher_runs_one_job_per_gpu_and_spreads_jobs_over_the_gpus(monkeypatch):
    import torch

    from hydra_plugins.phases_launcher import LocalLauncher
    from phases.training.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cfg = compose(["hydra/launcher=local"], hydra_config=True)
    assert cfg.hydra.launcher.max_parallel_jobs == 4 and cfg.hydra.launcher.gpus_per_node == 4
    assert [resolve_device("auto", job).index for job in range(6)] == [0, 1, 2, 3, 0, 1]
    assert resolve_device("cpu", 3) == torch.device("cpu")

    # The launcher hands the plugin the jobs in chunks of max_parallel_jobs, numbered on.
    launched = []
    plugin_launcher = LocalLauncher.__mro__[1]
    monkeypatch.setattr(plugin_launcher, "launch",
                        lambda self, jobs, first: launched.append((list(jobs), first)) or [f"ran {first}"])
    launcher = LocalLauncher(max_parallel_jobs=2, submitit_folder="unused")
    assert launcher.launch([["seed=0"], ["seed=1"], ["seed=2"]], initial_job_idx=10) == ["ran 10", "ran 12"]
    assert launched == [([["seed=0"], ["seed=1"]], 10), ([["seed=2"]], 12)]
    with pytest.raises(ValueError, match="max_parallel_jobs=0"):
        LocalLauncher(max_parallel_jobs=0, submitit_folder="unused")


def test_runs_per_device_puts_that_many_runs_on_each_gpu_or_each_group_of_cores(monkeypatch):
    import os

    import torch

    from hydra_plugins.phases_launcher import LocalLauncher
    from phases.config.launcher import CPU_CORES_PER_LOCAL_JOB
    from phases.training.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cfg = compose(["hydra/launcher=local", "hydra.launcher.runs_per_device=2"], hydra_config=True)
    assert cfg.hydra.launcher.max_parallel_jobs == 8
    # One chunk of 8 consecutive jobs: each GPU gets two of them.
    assert sorted(resolve_device("auto", job).index for job in range(8)) == [0, 0, 1, 1, 2, 2, 3, 3]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cfg = compose(["hydra/launcher=local", "hydra.launcher.runs_per_device=3"], hydra_config=True)
    assert cfg.hydra.launcher.max_parallel_jobs == 3 * max(1, os.cpu_count() // CPU_CORES_PER_LOCAL_JOB)
    with pytest.raises(ValueError, match="runs_per_device=0"):
        LocalLauncher(max_parallel_jobs=1, runs_per_device=0, submitit_folder="unused")


def test_a_run_group_runs_each_call_in_its_own_process_and_requeues_as_one(monkeypatch, caplog):
    """hydra/launcher=slurm with runs_per_device=k: map_array gets the runs k to a job (a RunGroup), and the
    plugin still sees one result per run, in order; the group's processes share the job's cores."""
    import os

    import submitit

    from hydra_plugins.phases_launcher import SlurmLauncher, jobs_handed_back

    def report(run: str) -> tuple[str, int, str]:
        if run == "killed":
            os._exit(9)
        return run, os.getpid(), os.environ["OMP_NUM_THREADS"]

    class FinishedJob:  # a submitit job run here, at once
        def __init__(self, function, argument):
            self.result = function(argument)

        def results(self):
            return [self.result]

    submitted = []

    def map_array(executor, function, *iterables):
        submitted.append((function, iterables))
        return [FinishedJob(function, *arguments) for arguments in zip(*iterables, strict=True)]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    monkeypatch.setenv("OMP_NUM_THREADS", "unset below")  # so that the group's setdefault is undone afterwards
    monkeypatch.delenv("OMP_NUM_THREADS")
    with jobs_handed_back(wait=True, runs_per_job=2):
        jobs = submitit.AutoExecutor.map_array(None, report, ["a", "b", "c", "killed"])
    ((group, (calls,)),) = submitted
    # By name: Hydra's plugin scan may load the plugin's modules a second time, as other class objects.
    assert type(group).__name__ == "RunGroup" and calls == [[("a",), ("b",)], [("c",), ("killed",)]]
    assert all(type(job).__name__ == "HandedBackJob" for job in jobs)
    *results, killed = [job.results()[0] for job in jobs]
    # A run whose process died is reported like a job that died; its group's other run is unaffected.
    assert type(killed).__name__ == "JobReturn" and "ended with exit code 9" in caplog.text
    assert [run for run, _, _ in results] == ["a", "b", "c"]
    assert len({pid for _, pid, _ in results}) == 3 and os.getpid() not in {pid for _, pid, _ in results}
    assert results[0][2] == str(max(1, len(os.sched_getaffinity(0)) // 2))  # the job's cores split in two
    requeued = group.checkpoint(calls[0])
    assert requeued.function is group and requeued.args == (calls[0],)
    with pytest.raises(ValueError, match="runs_per_device=0"):
        SlurmLauncher(runs_per_device=0, submitit_folder="unused")
