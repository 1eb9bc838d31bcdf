"""The package as a user installs it: a wheel built from the checkout, installed into a fresh virtual
environment (its dependencies taken from the test environment's site-packages, not downloaded), run
from another folder through its console scripts, with no checkout in sight."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPOSITORY, write_mnist_like

pytestmark = pytest.mark.slow
SOURCES = ("pyproject.toml", "README.md", "conf", "phases", "hydra_plugins")


def run(command: list, **options) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **options)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv holding only the wheel (and a path to the test's site-packages)."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"  # a copy: building in the checkout would leave build/ and egg-info there
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPOSITORY / name).is_dir() else shutil.copy2
        copy(REPOSITORY / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                  if (REPOSITORY / name).is_dir() else {}))
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
         str(root / "dist"), str(source)])
    (wheel,) = (root / "dist").glob("learning_phases-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)])
    # The dependencies: a plain path line, so this site-packages' own .pth files (the editable install
    # of the checkout among them) are not processed and `phases` can only come from the wheel.
    site_packages = Path(run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path("
                              "'purelib'))"]).stdout.strip())
    (site_packages / "test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv / "bin"


def test_the_wheel_carries_the_configs_and_runs_from_another_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PHASES_DATA_DIR": str(tmp_path / "data"),
                   "PYTHONPATH": ""}
    where = run([str(installed / "python"), "-c", "import phases, phases.config.options as options; "
                 "print(phases.__file__); print(options.CONFIG_DIR)"], cwd=elsewhere, env=environment).stdout.split()
    assert all(str(installed.parent) in path and str(REPOSITORY) not in path for path in where), where

    composed = run([str(installed / "phases-run"), "--cfg", "job"], cwd=elsewhere, env=environment).stdout
    assert "name: fashion_mnist" in composed and "name: vgg8" in composed

    write_mnist_like(tmp_path / "data" / "FashionMNIST" / "raw")
    outputs = tmp_path / "outputs"
    run([str(installed / "phases-run"), "schedule.max_steps=2", "dataset.download=false", "progress=false",
         f"paths.outputs={outputs}", "paths.system_data_dir=null"], cwd=elsewhere, env=environment)
    (folder,) = (outputs / "runs").iterdir()
    assert json.loads((folder / "run.json").read_text())["status"] == "done"

    status = run([str(installed / "phases-status"), "--outputs", str(outputs)], cwd=elsewhere, env=environment)
    assert folder.name in status.stdout and "done" in status.stdout
    for script in ("phases-sweep", "phases-figures", "phases-fetch"):
        assert "usage" in run([str(installed / script), "--help"], cwd=elsewhere, env=environment).stdout.lower()
