import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from phases import fetch
from phases.config.options import dataset_option
from phases.config.validation import ConfigError
from phases.training.data import (
    DATASETS,
    GENERATED_DATASETS,
    USER_DATASETS,
    DataFormatError,
    DataNotFoundError,
    dataset_info,
    load_image_splits,
    locate_files,
    transfer_partner,
)
from phases.training.data import splits as data_splits
from phases.training.data.formats import read_idx
from phases.training.data.prototypes import draw_samples
from tests.conftest import CONFIG_DIR, DATASET_FOLDERS, write_dataset, write_idx, write_mnist_like

FASHION = OmegaConf.create({"name": "fashion_mnist", "image_size": 32, "mean": [0.281], "std": [0.352],
                            "train_size": None, "test_size": None, "download": False, "resize": "spline"})


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip_plain_and_gzipped(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / name, array)), array)


def test_truncated_idx_file_names_the_file_and_the_problem(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte: .* truncated or corrupt"):
        read_idx(path)


def test_truncated_gzip_is_a_format_error_not_a_crash(tmp_path):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(1000, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataFormatError, match="train-labels-idx1-ubyte.gz"):
        read_idx(path)


def test_a_file_that_is_not_idx_is_rejected(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(path)


def test_loads_generated_files_as_normalised_32x32_tensors(paths_without_system_copy):
    splits = load_image_splits(FASHION, paths_without_system_copy, seed=0, device=torch.device("cpu"))
    assert splits.train_images.shape == (256, 1, 32, 32) and splits.test_images.shape == (128, 1, 32, 32)
    assert splits.train_images.dtype == torch.float32 and splits.train_labels.dtype == torch.int64
    assert sorted(splits.train_labels.unique().tolist()) == list(range(10))
    raw = read_idx(Path(paths_without_system_copy.data_dir) / "FashionMNIST/raw/t10k-images-idx3-ubyte.gz")
    # Normalisation is (pixel/255 - mean) / std; upsampling keeps the image mean nearly unchanged.
    expected_mean = (raw.mean() / 255 - 0.281) / 0.352
    assert splits.test_images.mean().item() == pytest.approx(expected_mean, abs=0.02)


@pytest.mark.parametrize("resize", ["spline", "bilinear"])
def test_the_resize_is_the_published_scripts_spline_zoom_or_bilinear(paths_without_system_copy, resize):
    """dataset.resize=spline (the default) equals the script's scipy.ndimage.zoom(image, 32/28) (order 3,
    on pixels in [0, 1], before normalising) to float rounding; bilinear is torchvision's antialiased one."""
    from scipy import ndimage
    from torchvision.transforms.v2 import functional as image_functional

    dataset = OmegaConf.merge(FASHION, {"resize": resize})
    splits = load_image_splits(dataset, paths_without_system_copy, seed=0, device=torch.device("cpu"))
    raw = read_idx(Path(paths_without_system_copy.data_dir) / "FashionMNIST/raw/t10k-images-idx3-ubyte.gz")
    pixels = raw[:8].astype(np.float64) / 255
    if resize == "spline":
        expected = np.stack([ndimage.zoom(image, 32 / 28, order=3) for image in pixels])
    else:
        expected = image_functional.resize(torch.from_numpy(pixels).unsqueeze(1), [32, 32], antialias=True)[:, 0]
    resized = splits.test_images[:8, 0].double() * 0.352 + 0.281
    assert np.abs(resized.numpy() - np.asarray(expected)).max() < 1e-5


def test_plain_idx_files_are_read_too(tmp_path):
    write_mnist_like(tmp_path / "FashionMNIST" / "raw", train=20, test=10, gzipped=False)
    paths = OmegaConf.create({"data_dir": str(tmp_path), "system_data_dir": None})
    assert len(load_image_splits(FASHION, paths, 0, torch.device("cpu")).test_labels) == 10


def test_seeded_subsets_are_deterministic_and_differ_across_seeds(paths_without_system_copy):
    cfg = OmegaConf.merge(FASHION, {"train_size": 50, "test_size": 20})
    first = load_image_splits(cfg, paths_without_system_copy, 3, torch.device("cpu"))
    again = load_image_splits(cfg, paths_without_system_copy, 3, torch.device("cpu"))
    other = load_image_splits(cfg, paths_without_system_copy, 4, torch.device("cpu"))
    assert first.train_images.shape[0] == 50 and first.test_images.shape[0] == 20
    assert torch.equal(first.train_images, again.train_images)
    assert not torch.equal(first.train_images, other.train_images)


def test_missing_data_names_files_folders_and_how_to_get_them(tmp_path, monkeypatch):
    def no_download(*_):
        raise AssertionError("download attempted with dataset.download=false")

    monkeypatch.setattr(data_splits, "fetch_dataset", no_download)
    paths = OmegaConf.create({"data_dir": str(tmp_path / "empty"), "system_data_dir": str(tmp_path / "system")})
    with pytest.raises(DataNotFoundError) as raised:
        load_image_splits(FASHION, paths, 0, torch.device("cpu"))
    message = str(raised.value)
    for expected in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                     str(tmp_path / "empty" / "FashionMNIST" / "raw"),
                     str(tmp_path / "system" / "fashion-mnist"), "python -m phases.fetch dataset=fashion_mnist",
                     "apt-get install dataset-fashion-mnist", "dataset.download=auto"):
        assert expected in message


@pytest.mark.parametrize("download", ["auto", True, "true"])
def test_a_missing_dataset_is_fetched_unless_download_is_false(tmp_path, monkeypatch, download):
    calls = []

    def fake_fetch(name, paths):
        calls.append(name)
        write_mnist_like(tmp_path / "FashionMNIST" / "raw", train=20, test=10)
        return locate_files(name, paths)

    monkeypatch.setattr(data_splits, "fetch_dataset", fake_fetch)
    paths = OmegaConf.create({"data_dir": str(tmp_path), "system_data_dir": None})
    splits = load_image_splits(OmegaConf.merge(FASHION, {"download": download}), paths, 0, torch.device("cpu"))
    assert calls == ["fashion_mnist"] and len(splits.train_labels) == 20


def test_labels_out_of_range_are_rejected(tmp_path):
    folder = write_mnist_like(tmp_path / "FashionMNIST" / "raw", train=20, test=10)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(10, 12, dtype=np.uint8))
    paths = OmegaConf.create({"data_dir": str(tmp_path), "system_data_dir": None})
    with pytest.raises(DataFormatError, match="t10k-labels-idx1-ubyte.gz: labels span 12..12, expected 0..9"):
        load_image_splits(FASHION, paths, 0, torch.device("cpu"))


def test_real_fashion_mnist_system_copy(real_fashion_mnist, tmp_path):
    paths = OmegaConf.create({"data_dir": str(tmp_path), "system_data_dir": str(real_fashion_mnist.parent)})
    splits = load_image_splits(FASHION, paths, 0, torch.device("cpu"))
    assert splits.train_images.shape == (60000, 1, 32, 32) and splits.test_images.shape == (10000, 1, 32, 32)
    assert torch.bincount(splits.train_labels).tolist() == [6000] * 10
    # The published normalisation constants bring the training pixels to about zero mean, unit std.
    assert abs(splits.train_images.mean().item()) < 0.05
    assert splits.train_images.std().item() == pytest.approx(1.0, abs=0.05)
    assert gzip.open(real_fashion_mnist / "train-images-idx3-ubyte.gz").read(4) == bytes([0, 0, 8, 3])


def dataset_config(name: str, **changes):
    return OmegaConf.merge(dataset_option(name), {"download": False, "train_size": None, "test_size": None}, changes)


def test_every_registered_dataset_has_a_config():
    registered = [*DATASETS, *GENERATED_DATASETS, *USER_DATASETS]
    assert sorted(registered) == sorted(path.stem for path in (CONFIG_DIR / "dataset").glob("*.yaml"))


def test_unknown_dataset_lists_the_read_and_the_generated_ones():
    known = "cifar10, cifar100, fashion_mnist, image_folder, mnist, prototypes"
    with pytest.raises(ConfigError, match=f"known datasets: {known}"):
        dataset_info(OmegaConf.create({"name": "imagenet", "mean": [0.5]}))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_loader_reads_generated_official_files(tmp_path, name):
    write_dataset(tmp_path, name, train=30, test=20)
    cfg = dataset_config(name)
    info = dataset_info(cfg)
    splits = load_image_splits(cfg, OmegaConf.create({"data_dir": str(tmp_path), "system_data_dir": None}), 0,
                               torch.device("cpu"))
    assert splits.train_images.shape == (30, info.channels, 32, 32)
    assert splits.test_images.shape == (20, info.channels, 32, 32)
    assert splits.train_labels.tolist() == [index % info.classes for index in range(30)]
    assert splits.source == str(tmp_path / DATASET_FOLDERS[name])


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_loader_rejects_a_truncated_file_naming_it(tmp_path, name):
    folder = write_dataset(tmp_path, name, train=30, test=20)
    victim = sorted(path for path in folder.iterdir() if "t10k-images" in path.name or "test" in path.name)[0]
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])
    with pytest.raises(DataFormatError, match=str(victim)):
        load_image_splits(dataset_config(name), OmegaConf.create({"data_dir": str(tmp_path), "system_data_dir": None}),
                          0, torch.device("cpu"))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_missing_dataset_is_never_downloaded_with_download_false(tmp_path, monkeypatch, name):
    monkeypatch.setattr(data_splits, "fetch_dataset",
                        lambda *_: pytest.fail("download attempted with dataset.download=false"))
    with pytest.raises(DataNotFoundError, match=f"python -m phases.fetch dataset={name} .*{DATASET_FOLDERS[name]}"):
        load_image_splits(dataset_config(name), OmegaConf.create({"data_dir": str(tmp_path), "system_data_dir": None}),
                          0, torch.device("cpu"))


def test_cifar_reader_refuses_pickles_that_would_run_code(tmp_path):
    folder = write_dataset(tmp_path, "cifar100", train=10, test=10)

    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    import pickle

    (folder / "test").write_bytes(pickle.dumps({b"data": Payload(), b"fine_labels": []}, protocol=2))
    with pytest.raises(DataFormatError, match=r"unexpected object (__builtin__|builtins)\.print"):
        load_image_splits(dataset_config("cifar100"), OmegaConf.create({"data_dir": str(tmp_path),
                          "system_data_dir": None}), 0, torch.device("cpu"))


def test_cifar_channels_are_normalised_separately(tmp_path):
    write_dataset(tmp_path, "cifar10", train=30, test=20)
    splits = load_image_splits(dataset_config("cifar10", mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]),
                               OmegaConf.create({"data_dir": str(tmp_path), "system_data_dir": None}), 0,
                               torch.device("cpu"))
    red, green = splits.train_images[:, 0], splits.train_images[:, 1]
    assert torch.allclose(red.max(), green.max() / 2, atol=1 / 255)  # the generator halves the red channel


def test_transfer_partners_pair_the_datasets_the_paper_transfers_between():
    pairs = {"fashion_mnist": "mnist", "mnist": "fashion_mnist", "cifar10": "cifar100", "cifar100": "cifar10"}
    assert {name: transfer_partner(name) for name in pairs} == pairs
    assert all(transfer_partner(transfer_partner(name)) == name for name in DATASETS)


def test_a_dataset_without_a_partner_cannot_switch():
    with pytest.raises(ConfigError, match="datasets with a partner: .*fashion_mnist -> mnist") as raised:
        transfer_partner("prototypes")
    assert raised.value.key == "probe.transfer.tasks" and "dataset_switch" in str(raised.value)


def test_an_unknown_atypical_kind_fails_before_drawing():
    with pytest.raises(ValueError, match="'mislabelled'; expected one of other_prototype, random_direction"):
        draw_samples(torch.zeros(2, 1, 8, 8), 10, 1.0, 0.1, "mislabelled", torch.Generator())


def test_fetch_uses_the_files_already_in_the_data_folder(data_dir, monkeypatch, capsys):
    monkeypatch.setattr(fetch, "fetch_dataset", lambda *_: pytest.fail("download attempted with the files present"))
    assert fetch.main([f"paths.data_dir={data_dir}", "paths.system_data_dir=null"]) == 0
    assert f"fashion_mnist: using {data_dir / 'FashionMNIST' / 'raw'}" in capsys.readouterr().out
