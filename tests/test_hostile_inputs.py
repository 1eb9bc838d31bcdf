"""Hostile and careless input, as a colleague's sweep file or a typo would give it: nothing from an
override or a file runs code, and every input is checked or refused before data is read."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from phases.config.compose import compose
from phases.config.validation import ConfigError, validate
from phases.training.features import batch_bounds
from phases.training.optimizers import build_optimizer
from tests.test_run import run_phases

pytestmark = pytest.mark.slow  # each case runs the front door in a fresh interpreter: not in `make test-fast`


class TouchOnLoad:
    """A pickle payload: unpickling it creates `marker`, as a real exploit would run a shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def planted(tmp_path):
    """evil.pt: a pickle that creates marker.txt when loaded; victim.txt: a file an attack would empty."""
    marker = tmp_path / "marker.txt"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(TouchOnLoad(marker)))
    (tmp_path / "victim.txt").write_text("precious")
    return tmp_path


@pytest.mark.parametrize("payload", [
    "+optimizer.x={{_target_:torch.load,f:{folder}/evil.pt,weights_only:false}}",
    "+optimizer.x={{_target_:pandas.read_pickle,filepath_or_buffer:{folder}/evil.pt}}",
    "+optimizer.x={{_target_:builtins.open,_args_:[{folder}/victim.txt,w]}}",
    "+schedule.x={{_target_:torch.load,f:{folder}/evil.pt,weights_only:false}}",
    "optimizer._target_=torch.load",
])
def test_no_override_runs_code(planted, data_dir, payload):
    result = run_phases(payload.format(folder=planted), data_dir=data_dir, outputs=planted / "outputs")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "is invalid" in result.stderr
    assert not (planted / "marker.txt").exists() and (planted / "victim.txt").read_text() == "precious"
    assert not (planted / "outputs" / "runs").exists()


def test_the_optimizer_is_built_from_its_schema_only():
    parameters = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = build_optimizer(compose(["optimizer=adam", "optimizer.lr=0.01"]).optimizer, parameters)
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 0.01
    tampered = compose()
    tampered.optimizer._target_ = "torch.optim.Adam"  # an SGD option may not build another class
    with pytest.raises(ConfigError, match="optimizer._target_='torch.optim.Adam' is invalid: torch.optim.SGD"):
        build_optimizer(tampered.optimizer, parameters)


@pytest.mark.parametrize("override, message", [
    ("+schedule.max_step=4", "schedule.max_step=4 is invalid: not a setting of ScheduleConfig; did you mean "
                             "schedule.max_steps?"),
    ("+arch.widht=0.5", "arch.widht=0.5 is invalid: not a setting of ArchConfig; did you mean arch.width?"),
    ("+optimizer.foo=1", "optimizer.foo=1 is invalid: not a setting of SGDConfig"),
    ("+probe.linear.max_iteration=5", "probe.linear.max_iteration=5 is invalid: not a setting of "
                                      "LinearProbeConfig; did you mean probe.linear.max_iterations?"),
])
def test_added_keys_that_are_no_setting_fail_naming_the_closest_one(override, message):
    with pytest.raises(ConfigError) as raised:
        compose([override])
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize("override, message", [
    ("+schedule.max_step=4", "did you mean schedule.max_steps?"),
    ("arch=mlp arch.hidden_sizes=[]", "arch.hidden_sizes=[] is invalid: a non-empty list of positive layer sizes"),
    ("probe.calibration_size=1", "probe.calibration_size=1 is invalid: an integer >= 2 (images)"),
    ("seed=-1", "seed=-1 is invalid: an integer in [0, 2**32)"),
    ("schedule.batch_size=1", "schedule.batch_size=1 is invalid: at least 2 images: arch vgg8 normalises"),
    ("dataset.train_size=1000", "dataset.train_size=1000 is invalid: at most the 256 images of fashion_mnist's "
                                "train split, or null for all"),
    ("dataset.test_size=129", "dataset.test_size=129 is invalid: at most the 128 images"),
])
def test_inputs_that_crashed_later_fail_before_any_run_folder(data_dir, tmp_path, override, message):
    result = run_phases(*override.split(), data_dir=data_dir, outputs=tmp_path / "outputs")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs" / "runs").exists()


def test_an_outputs_path_that_is_a_file_fails_before_the_data_loads(data_dir, tmp_path):
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("a file where the outputs folder should be")
    result = run_phases(data_dir=data_dir, outputs=not_a_folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"paths.outputs='{not_a_folder}' is invalid: a folder this user can write" in result.stderr


def test_validation_runs_before_anything_is_built_from_the_config():
    cfg = compose(["arch=mlp", "arch.hidden_sizes=[]"])
    with pytest.raises(ConfigError, match="arch.hidden_sizes"):
        validate(cfg)  # without probe points: nothing built yet


def test_no_batch_of_one_image_reaches_batch_statistics():
    assert batch_bounds(257, 256) == [(0, 257)]
    assert batch_bounds(258, 256) == [(0, 256), (256, 258)]
    assert batch_bounds(1, 256) == [(0, 1)]
    assert batch_bounds(2000, 256)[-1] == (1792, 2000)  # the default calibration: unchanged


def test_a_calibration_set_ending_in_one_image_runs(data_dir, tmp_path):
    """Calibration of 51 images in batches of 50 left a batch of one, and BatchNorm failed at step 0."""
    result = run_phases("probe.calibration_size=51", "schedule.max_steps=1", data_dir=data_dir,
                        outputs=tmp_path / "outputs")
    assert result.returncode == 0, result.stderr


def test_a_sweep_override_that_is_no_setting_fails_in_the_dry_run(tmp_path):
    sweep = tmp_path / "typo.yaml"
    sweep.write_text("description: a typo\noverrides: [+schedule.max_step=4]\n")
    result = subprocess.run([sys.executable, "-m", "phases.sweep", str(sweep), "--dry-run"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "did you mean schedule.max_steps?" in result.stderr + result.stdout
