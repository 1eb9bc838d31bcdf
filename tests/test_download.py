"""Data that is there when the jobs start: dataset.download, the verified download, phases.fetch, make_available.

Every download goes to a local mirror of small generated files (tests/mirror.py), never to the internet.
"""

import hashlib
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from phases import fetch
from phases.config.compose import compose
from phases.config.options import dataset_option
from phases.config.validation import ConfigError, download_allowed, validate
from phases.store.identity import run_id
from phases.training.data import DATASETS, DataNotFoundError, fetch_dataset, load_image_splits, locate_files
from tests.conftest import DATASET_FOLDERS
from tests.mirror import serve, write_checksums, write_mirror

CPU = torch.device("cpu")


def mirror_paths(data_dir: Path, url: str, checksums: Path) -> OmegaConf:
    return OmegaConf.create({"data_dir": str(data_dir), "system_data_dir": None, "data_mirror": url,
                             "data_checksums": str(checksums)})


def mirror_overrides(data_dir: Path, url: str, checksums: Path) -> list[str]:
    return [f"paths.data_dir={data_dir}", "paths.system_data_dir=null", f"paths.data_mirror={url}",
            f"paths.data_checksums={checksums}"]


def closed_port_url() -> str:
    """A URL nothing listens on: the port of a socket bound, then closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def leftovers(data_dir: Path) -> list[str]:
    """What a failed fetch left in the data folder, besides its lock files."""
    return sorted(str(path.relative_to(data_dir)) for path in data_dir.rglob("*") if not path.name.endswith(".lock"))


@pytest.mark.parametrize("value, allowed", [("auto", True), ("true", True), ("false", False)])
def test_download_takes_auto_true_and_false_and_keeps_the_run_id(value, allowed):
    cfg = compose([f"dataset.download={value}"])
    validate(cfg)
    assert download_allowed(cfg.dataset.download) is allowed
    assert cfg.dataset.download in (value, value == "true")  # Hydra reads true/false as booleans
    assert run_id(cfg) == run_id(compose())  # tests/test_identity.py pins the default id itself
    assert compose().dataset.download == "auto"


def test_any_other_download_value_names_the_key_and_the_valid_values():
    with pytest.raises(ConfigError, match=r"dataset.download='yes' is invalid: auto .*true .*false"):
        validate(compose(["dataset.download=yes"]))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_missing_dataset_is_fetched_through_the_mirror_and_loads(tmp_path, name):
    checksums = write_mirror(tmp_path / "mirror", [name], train=40, test=20)
    with serve(tmp_path / "mirror") as url:
        splits = load_image_splits(dataset_option(name), mirror_paths(tmp_path / "data", url, checksums), 0, CPU)
    assert len(splits.train_labels) == 40 and len(splits.test_labels) == 20
    assert splits.source == str(tmp_path / "data" / DATASET_FOLDERS[name])
    # torchvision's layout: the downloaded files are kept, next to what they unpack to; no temporary folder.
    kept = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz" if name == "cifar100" \
        else f"{DATASET_FOLDERS[name]}/train-images-idx3-ubyte.gz"
    assert (tmp_path / "data" / kept).is_file()
    assert not [path for path in (tmp_path / "data").iterdir() if path.name.startswith(".fetch-") and path.is_dir()]


def test_fetch_takes_a_comma_list_of_datasets(tmp_path, capsys):
    checksums = write_mirror(tmp_path / "mirror", ["cifar10", "mnist"])
    with serve(tmp_path / "mirror") as url:
        assert fetch.main(["dataset=cifar10,mnist", *mirror_overrides(tmp_path / "data", url, checksums)]) == 0
    output = capsys.readouterr().out
    for name in ("cifar10", "mnist"):
        assert f"{name}: fetched into {tmp_path / 'data' / DATASET_FOLDERS[name]}" in output
        assert locate_files(name, OmegaConf.create({"data_dir": str(tmp_path / "data"), "system_data_dir": None}))


def test_fetch_also_fetches_the_dataset_switch_partner_and_a_prototype_source(tmp_path):
    checksums = write_mirror(tmp_path / "mirror", ["mnist", "fashion_mnist", "cifar10"])
    switching = ["probe.enabled=[linear,transfer]", "probe.transfer.tasks=[dataset_switch]"]
    with serve(tmp_path / "mirror") as url:
        overrides = mirror_overrides(tmp_path / "data", url, checksums)
        assert fetch.main(["dataset=mnist", *switching, *overrides]) == 0
        assert fetch.main(["dataset=prototypes", "dataset.prototype_source=cifar10", "dataset.channels=3",
                           *overrides]) == 0
    assert sorted(path.name for path in (tmp_path / "data").iterdir() if not path.name.startswith(".")) == \
        ["FashionMNIST", "MNIST", "cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_a_wrong_checksum_is_rejected_and_nothing_is_left(tmp_path):
    checksums = write_mirror(tmp_path / "mirror", ["mnist"])
    victim = tmp_path / "mirror" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    expected = next(line.split()[0] for line in checksums.read_text().splitlines() if "t10k-labels" in line)
    victim.write_bytes(b"not the file the checksums list")
    with serve(tmp_path / "mirror") as url, pytest.raises(DataNotFoundError) as raised:
        fetch_dataset("mnist", mirror_paths(tmp_path / "data", url, checksums))
    message = str(raised.value)
    received = hashlib.md5(victim.read_bytes()).hexdigest()
    assert f"{url}/MNIST/raw/t10k-labels-idx1-ubyte.gz: wrong checksum: expected md5 {expected}, got {received}" \
        in message
    assert "python -m phases.fetch dataset=mnist" in message
    assert leftovers(tmp_path / "data") == []  # the three good files went with the temporary folder


def test_an_archive_that_does_not_unpack_is_rejected_and_nothing_is_left(tmp_path):
    write_mirror(tmp_path / "mirror", ["cifar10"])
    (tmp_path / "mirror" / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b garbage, not a gzip stream")
    checksums = write_checksums(tmp_path / "mirror")  # so the md5 check passes and the extraction is what fails
    with serve(tmp_path / "mirror") as url, pytest.raises(DataNotFoundError, match="cifar-10-python.tar.gz: not a "
                                                          "readable archive"):
        fetch_dataset("cifar10", mirror_paths(tmp_path / "data", url, checksums))
    assert leftovers(tmp_path / "data") == []


def test_an_archive_reaching_out_of_its_folder_is_refused_and_nothing_is_written(tmp_path):
    """A re-packaged archive is trusted by its md5 only: a member `../...` must not land beside the data."""
    import io
    import tarfile

    (tmp_path / "mirror").mkdir()
    with tarfile.open(tmp_path / "mirror" / "cifar-10-python.tar.gz", "w:gz") as tar:
        payload = b"written outside the data folder"
        member = tarfile.TarInfo("../../escaped.txt")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    checksums = write_checksums(tmp_path / "mirror")
    with serve(tmp_path / "mirror") as url, pytest.raises(DataNotFoundError, match="not a readable archive"):
        fetch_dataset("cifar10", mirror_paths(tmp_path / "data", url, checksums))
    assert not list(tmp_path.rglob("escaped.txt")) and leftovers(tmp_path / "data") == []


def test_the_mirror_down_names_the_dataset_and_phases_fetch(tmp_path):
    checksums = write_mirror(tmp_path / "mirror", ["cifar100"])
    url = closed_port_url()
    with pytest.raises(DataNotFoundError) as raised:
        load_image_splits(dataset_option("cifar100"), mirror_paths(tmp_path / "data", url, checksums), 0, CPU)
    message = str(raised.value)
    assert "fetching dataset 'cifar100'" in message and f"{url}/cifar-100-python.tar.gz: URLError" in message
    assert "python -m phases.fetch dataset=cifar100" in message
    assert leftovers(tmp_path / "data") == []


def test_fetch_names_the_debian_package_when_the_download_fails(tmp_path, capsys):
    overrides = [f"paths.data_dir={tmp_path / 'empty'}", f"paths.system_data_dir={tmp_path / 'system'}",
                 f"paths.data_mirror={closed_port_url()}"]
    assert fetch.main(overrides) == 2
    error = capsys.readouterr().err
    assert "fashion_mnist: expected in" in error and "Connection refused" in error
    assert "sudo apt-get install dataset-fashion-mnist" in error


def test_download_false_never_touches_the_network_and_names_phases_fetch(tmp_path):
    checksums = write_mirror(tmp_path / "mirror", ["fashion_mnist"])
    requests = []
    offline = OmegaConf.merge(dataset_option("fashion_mnist"), {"download": False})
    with serve(tmp_path / "mirror", requests) as url, pytest.raises(DataNotFoundError) as raised:
        load_image_splits(offline, mirror_paths(tmp_path / "data", url, checksums), 0, CPU)
    assert requests == [] and not (tmp_path / "data").exists()
    message = str(raised.value)
    assert f"python -m phases.fetch dataset=fashion_mnist paths.data_dir={tmp_path / 'data'}" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message


def test_make_available_fetches_each_dataset_once_for_all_the_jobs(tmp_path):
    checksums = write_mirror(tmp_path / "mirror", ["mnist", "fashion_mnist"])
    single, requests = [], []
    with serve(tmp_path / "mirror", single) as url:  # what one fetch of mnist asks the mirror for
        fetch_dataset("mnist", mirror_paths(tmp_path / "once", url, checksums))
    with serve(tmp_path / "mirror", requests) as url:
        overrides = mirror_overrides(tmp_path / "data", url, checksums)
        configs = [compose(["dataset=mnist", f"seed={seed}", *overrides]) for seed in range(3)]
        configs.append(compose(["dataset=prototypes", "dataset.prototype_source=mnist", *overrides]))
        configs.append(compose(["dataset=fashion_mnist", "probe.enabled=[linear,transfer]",
                                "probe.transfer.tasks=[dataset_switch]", *overrides]))  # needs mnist too
        lines = fetch.make_available(configs)
    assert lines == [f"mnist: fetched into {tmp_path / 'data' / 'MNIST' / 'raw'}",
                     f"fashion_mnist: fetched into {tmp_path / 'data' / 'FashionMNIST' / 'raw'}"]
    assert Counter(path for path in requests if path.startswith("/MNIST/")) == Counter(single)
    with serve(tmp_path / "mirror", requests := []) as url:  # a second sweep finds everything
        configs = [compose(["dataset=mnist", *mirror_overrides(tmp_path / "data", url, checksums)])]
        assert fetch.make_available(configs) == [f"mnist: using {tmp_path / 'data' / 'MNIST' / 'raw'}"]
    assert requests == []


def test_make_available_lists_every_missing_dataset_in_one_message(tmp_path):
    data_dir = tmp_path / "data"
    common = [f"paths.data_dir={data_dir}", f"paths.system_data_dir={tmp_path / 'system'}",
              f"paths.data_mirror={closed_port_url()}"]
    configs = [compose(["dataset=mnist", "dataset.download=false", *common]),
               compose(["dataset=mnist", *common]),  # auto, but another job needing mnist says false
               compose(["dataset=cifar10", "dataset.download=false", *common]),
               compose(["dataset=fashion_mnist", *common])]  # may be fetched, but the mirror is down
    with pytest.raises(DataNotFoundError) as raised:
        fetch.make_available(configs)
    message = str(raised.value)
    assert message.startswith("3 datasets the jobs need are missing:")
    assert f"mnist: expected in {data_dir / 'MNIST' / 'raw'}; not fetched: dataset.download=false in 1 of" in message
    assert f"cifar10: expected in {data_dir / 'cifar-10-batches-py'}; not fetched" in message
    assert f"fashion_mnist: expected in {data_dir / 'FashionMNIST' / 'raw'}; fetching it failed" in message
    assert message.count("python -m phases.fetch") == 1
    assert f"python -m phases.fetch dataset=mnist,cifar10,fashion_mnist paths.data_dir={data_dir}" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message


def test_two_concurrent_fetches_of_a_dataset_download_it_once(tmp_path):
    checksums = write_mirror(tmp_path / "mirror", ["fashion_mnist"])
    single, requests = [], []
    with serve(tmp_path / "mirror", single) as url:
        fetch_dataset("fashion_mnist", mirror_paths(tmp_path / "once", url, checksums))
    results = []
    # Each request waits, so the second fetch starts while the first one downloads. flock locks an open file,
    # not a process, so two threads contend for it as two processes would.
    with serve(tmp_path / "mirror", requests, delay=0.05) as url:
        paths = mirror_paths(tmp_path / "data", url, checksums)
        threads = [threading.Thread(target=lambda: results.append(fetch_dataset("fashion_mnist", paths)))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(results) == 2 and results[0] == results[1]
    assert Counter(requests) == Counter(single)


def test_a_malformed_checksums_file_names_the_setting_and_the_line(tmp_path):
    checksums = tmp_path / "checksums.md5"
    checksums.write_text("# md5sum output\nd41d8cd98f00b204e9800998ecf8427e  MNIST/raw/a.gz\nnot an md5 line\n")
    paths = mirror_paths(tmp_path / "data", closed_port_url(), checksums)
    with pytest.raises(ConfigError, match=r"paths.data_checksums=.* line 3 is 'not an md5 line'"):
        fetch_dataset("mnist", paths)


def test_the_real_fashion_mnist_is_found_without_any_download(real_fashion_mnist, tmp_path):
    paths = OmegaConf.create({"data_dir": str(tmp_path / "data"), "system_data_dir": str(real_fashion_mnist.parent),
                              "data_mirror": closed_port_url(), "data_checksums": None})
    assert fetch_dataset("fashion_mnist", paths)["train_images"].parent == real_fashion_mnist
    configs = [compose(["paths.data_dir=" + str(tmp_path / "data"), f"paths.data_mirror={paths.data_mirror}",
                        f"paths.system_data_dir={real_fashion_mnist.parent}"])]
    assert fetch.make_available(configs) == [f"fashion_mnist: using {real_fashion_mnist}"]


@pytest.mark.parametrize("download", ["auto", False])
def test_a_prototypes_dataset_passes_its_download_setting_to_its_prototype_source(tmp_path, download):
    checksums = write_mirror(tmp_path / "mirror", ["mnist"])
    prototypes = OmegaConf.merge(dataset_option("prototypes"), {"prototype_source": "mnist", "download": download,
                                                                "train_size": 20, "test_size": 10})
    requests = []
    with serve(tmp_path / "mirror", requests) as url:
        paths = mirror_paths(tmp_path / "data", url, checksums)
        if download is False:
            with pytest.raises(DataNotFoundError, match="(?s)prototype_source=mnist needs .*fetch dataset=mnist"):
                load_image_splits(prototypes, paths, 0, CPU)
        else:
            assert len(load_image_splits(prototypes, paths, 0, CPU).train_labels) == 20
    assert bool(requests) is (download == "auto")


def test_ctrl_c_during_a_fetch_leaves_nothing_and_a_killed_fetchs_leftovers_are_removed(tmp_path, monkeypatch):
    from torchvision.datasets import utils as torchvision_utils

    checksums = write_mirror(tmp_path / "mirror", ["mnist"])
    stale = tmp_path / "data" / ".fetch-mnist-killed"  # what a SIGKILLed fetch leaves: no cleanup ran
    (stale / "MNIST" / "raw").mkdir(parents=True)
    downloads = []
    real_download = torchvision_utils.download_url

    def interrupted_download(url, root, filename=None, *args):
        downloads.append(url)
        if len(downloads) == 3:
            raise KeyboardInterrupt
        real_download(url, root, filename, *args)

    monkeypatch.setattr(torchvision_utils, "download_url", interrupted_download)
    with serve(tmp_path / "mirror") as url, pytest.raises(KeyboardInterrupt):
        fetch_dataset("mnist", mirror_paths(tmp_path / "data", url, checksums))
    assert len(downloads) == 3 and leftovers(tmp_path / "data") == []


def test_fetch_of_a_generated_dataset_or_an_unknown_one(capsys):
    assert fetch.main(["dataset=prototypes"]) == 0
    assert "prototypes: generated in memory, nothing to fetch" in capsys.readouterr().out
    assert fetch.main(["dataset=imagenet"]) == 2
    assert "imagenet" in capsys.readouterr().err


def test_without_a_checksums_file_the_official_md5s_are_required(tmp_path):
    from torchvision.datasets import CIFAR10

    write_mirror(tmp_path / "mirror", ["cifar10"])
    with serve(tmp_path / "mirror") as url, pytest.raises(DataNotFoundError) as raised:
        fetch_dataset("cifar10", OmegaConf.create({"data_dir": str(tmp_path / "data"), "system_data_dir": None,
                                                   "data_mirror": url, "data_checksums": None}))
    message = str(raised.value)
    assert f"expected md5 {CIFAR10.tgz_md5}, got" in message and "torchvision's official md5" in message
    assert leftovers(tmp_path / "data") == []
