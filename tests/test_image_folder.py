"""dataset=image_folder: the user's own images, in torchvision's ImageFolder layout, generated here as PNG files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import phases.training.execute as execute_module
from phases import fetch
from phases.config.compose import compose
from phases.config.options import dataset_option
from phases.config.validation import ConfigError, validate
from phases.multirun import SweepCallback
from phases.store.folder_fingerprint import IMAGE_EXTENSIONS
from phases.store.identity import run_id
from phases.training.data import (
    DataFormatError,
    DataNotFoundError,
    DatasetInfo,
    complement_classes,
    dataset_info,
    image_pixels,
    load_image_splits,
)
from phases.training.data.splits import resize_images
from phases.training.schedule import evaluation_steps
from tests.conftest import REPOSITORY

PATHS = OmegaConf.create({"data_dir": "unused"})  # an image folder is dataset.root, never paths.data_dir
CPU = torch.device("cpu")
CACHE = image_pixels.STATISTICS_FILE


def write_image(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    """uint8 (H, W) as grayscale L, (H, W, 3) as RGB, (H, W, 4) as RGBA; `mode` converts (e.g. to P)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], channels: int = 3, size: int = 8, first_value: int = 0) -> Path:
    """`counts` images per class folder (e.g. {"train/cat": 4}), each of one grey level of its own
    (first_value, +1, ...), so a loaded pixel tells which file it came from."""
    value = first_value
    for folder, count in counts.items():
        for index in range(count):
            shape = (size, size) if channels == 1 else (size, size, 3)
            write_image(root / folder / f"{index:03d}.png", np.full(shape, value, dtype=np.uint8))
            value += 1
    return root


def two_folders(root: Path, classes=("cat", "dog", "owl"), train: int = 4, test: int = 2, **options) -> Path:
    counts = {f"train/{name}": train for name in classes} | {f"test/{name}": test for name in classes}
    return make_folder(root, counts, **options)


def folder_config(root: Path, **changes):
    return OmegaConf.merge(dataset_option("image_folder"), {"root": str(root)}, changes)


def load(root: Path, seed: int = 0, **changes):
    return load_image_splits(folder_config(root, **changes), PATHS, seed, CPU)


def grey_levels(images: torch.Tensor) -> list[int]:
    """The grey level of each loaded constant image, with the identity normalisation (mean 0, std 1)."""
    return [round(value * 255) for value in images.mean(dim=(1, 2, 3)).tolist()]


IDENTITY = {"mean": [0.0], "std": [1.0], "channels": 1, "image_size": 8}


def test_two_folders_are_the_split_and_sorted_class_names_the_labels(tmp_path):
    root = two_folders(tmp_path / "pets", classes=("owl", "cat", "dog"), channels=1)  # written out of order
    splits = load(root, **IDENTITY)
    assert splits.info == DatasetInfo(channels=1, classes=3, image_size=8) and splits.source == str(root.resolve())
    assert splits.train_images.shape == (12, 1, 8, 8) and splits.test_images.shape == (6, 1, 8, 8)
    assert splits.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # cat, dog, owl
    # Written as train/owl 0..3, train/cat 4..7, train/dog 8..11, test/owl 12..13, test/cat 14..15, test/dog 16..17.
    assert grey_levels(splits.train_images) == [4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3]
    assert grey_levels(splits.test_images) == [14, 15, 16, 17, 12, 13]


def test_one_folder_is_split_per_class_by_test_fraction_the_same_for_every_seed(tmp_path):
    root = make_folder(tmp_path / "pets", {"cat": 8, "dog": 10, "owl": 3}, channels=1)
    first = load(root, seed=0, test_fraction=0.25, **IDENTITY)
    test_levels = grey_levels(first.test_images)
    # round(0.25 x n) per class, at least one per split: 2 of 8 cats, 3 (2.5 rounded up) of 10 dogs, 1 of 3 owls.
    assert first.test_labels.tolist() == [0, 0, 1, 1, 1, 2]
    assert sorted(test_levels + grey_levels(first.train_images)) == list(range(21))  # each image in one split
    assert grey_levels(load(root, seed=7, test_fraction=0.25, **IDENTITY).test_images) == test_levels
    # A new cat moves at most one other cat across (still 2 of 9 to test), and no image of another class.
    write_image(root / "cat" / "new.png", np.full((8, 8), 200, dtype=np.uint8))
    after = grey_levels(load(root, test_fraction=0.25, **IDENTITY).test_images)
    assert len(set(test_levels) - set(after)) <= 1 and [level for level in after if 8 <= level <= 20] == test_levels[2:]


def test_grayscale_folders_load_one_channel_and_any_colour_image_makes_three(tmp_path):
    root = two_folders(tmp_path / "grey", channels=1)
    assert dataset_info(folder_config(root)).channels == 1
    write_image(root / "train" / "cat" / "palette.png", np.zeros((8, 8, 3), dtype=np.uint8), mode="P")
    write_image(root / "test" / "dog" / "alpha.png", np.zeros((8, 8, 4), dtype=np.uint8))  # RGBA
    assert dataset_info(folder_config(root)).channels == 3
    splits = load(root)
    assert splits.train_images.shape == (13, 3, 32, 32) and splits.test_images.shape == (7, 3, 32, 32)
    # Given, the count converts every image: colour ones to luma, grayscale ones repeated.
    assert load(root, channels=1).train_images.shape == (13, 1, 32, 32)


@pytest.mark.parametrize("resize", ["spline", "bilinear"])
def test_images_of_different_sizes_are_each_resized_by_the_configured_method(tmp_path, resize):
    rng = np.random.default_rng(0)
    shapes = {"train/cat/a.png": (20, 24, 3), "train/cat/b.png": (40, 40, 3), "train/dog/c.png": (32, 32, 3),
              "train/dog/d.png": (20, 24, 3), "test/cat/e.png": (9, 50, 3), "test/dog/f.png": (64, 16, 3)}
    pixels = {name: rng.integers(0, 256, shape, dtype=np.uint8) for name, shape in shapes.items()}
    for name, array in pixels.items():
        write_image(tmp_path / name, array)
    dataset = folder_config(tmp_path, resize=resize, mean=[0.0] * 3, std=[1.0] * 3)
    splits = load_image_splits(dataset, PATHS, 0, CPU)
    assert splits.train_images.shape == (4, 3, 32, 32) and splits.test_images.shape == (2, 3, 32, 32)
    for position, name in enumerate(["train/cat/a.png", "train/cat/b.png", "train/dog/c.png", "train/dog/d.png"]):
        alone = resize_images(pixels[name][None], dataset)[0]
        assert torch.allclose(splits.train_images[position], alone, atol=1e-6), name
    assert torch.allclose(splits.test_images[1], resize_images(pixels["test/dog/f.png"][None], dataset)[0], atol=1e-6)


def test_normalisation_is_the_training_splits_own_computed_once_and_cached(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    for name in ("train/cat/0.png", "train/cat/1.png", "train/dog/0.png", "test/cat/0.png", "test/dog/0.png"):
        write_image(tmp_path / name, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    training = np.stack([np.asarray(Image.open(tmp_path / "train" / name)) for name in
                         ("cat/0.png", "cat/1.png", "dog/0.png")]).astype(np.float64) / 255
    splits = load(tmp_path, image_size=16)  # no resize: the statistics are the files' own
    expected_mean, expected_std = training.mean(axis=(0, 1, 2)), training.std(axis=(0, 1, 2))
    assert torch.allclose(splits.train_images.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(splits.train_images.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5)
    (entry,) = OmegaConf.load(tmp_path / CACHE).values()
    assert np.allclose(list(entry["mean"]), expected_mean) and np.allclose(list(entry["std"]), expected_std)

    computed = []
    original = image_pixels.statistics
    monkeypatch.setattr(image_pixels, "statistics", lambda chunks: computed.append(1) or original(chunks))
    assert torch.equal(load(tmp_path, image_size=16).test_images, splits.test_images) and computed == []  # cached
    load(tmp_path, image_size=16, train_size=2)  # a subset is normalised by the whole split's statistics
    assert computed == []
    load(tmp_path, image_size=20)  # another size: other pixels, another entry
    assert computed == [1] and len(OmegaConf.load(tmp_path / CACHE)) == 2
    write_image(tmp_path / "train" / "dog" / "1.png", np.zeros((16, 16, 3), dtype=np.uint8))  # the files changed
    load(tmp_path, image_size=16)
    assert computed == [1, 1] and len(OmegaConf.load(tmp_path / CACHE)) == 3


def test_a_root_this_user_cannot_write_is_normalised_without_cache_said_once(tmp_path, monkeypatch, capsys):
    root = two_folders(tmp_path / "pets")
    monkeypatch.setattr(image_pixels, "writable_folder_problem", lambda folder: f"Permission denied: {folder}")
    first, second = load(root), load(root)
    assert torch.equal(first.train_images, second.train_images) and not (root / CACHE).exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "not cached" in line]
    assert len(warnings) == 1 and f"dataset.root={root}" in warnings[0] and "Permission denied" in warnings[0]


def test_class_subset_and_sizes_act_as_for_the_real_datasets(tmp_path):
    # train/cat 0..5, train/dog 6..11, train/owl 12..17, test/cat 18..20, test/dog 21..23, test/owl 24..26
    root = two_folders(tmp_path / "pets", train=6, test=3, channels=1)
    subset = load(root, class_subset=[2, 0], **IDENTITY)
    assert subset.info.classes == 2 and dataset_info(folder_config(root, class_subset=[2, 0])).classes == 2
    assert subset.train_labels.tolist() == [1] * 6 + [0] * 6  # file order (cat, then owl), owl relabelled 0
    assert grey_levels(subset.test_images) == [18, 19, 20, 24, 25, 26]
    drawn = load(root, seed=3, class_subset=[2, 0], train_size=5, **IDENTITY)
    assert len(drawn.train_labels) == 5 and set(grey_levels(drawn.train_images)) <= {*range(6), *range(12, 18)}
    assert torch.equal(load(root, seed=3, class_subset=[2, 0], train_size=5, **IDENTITY).train_images,
                       drawn.train_images)
    with pytest.raises(ConfigError, match=r"dataset.train_size=13 is invalid: at most the 12 images .* \[2, 0\]"):
        load(root, class_subset=[2, 0], train_size=13)
    with pytest.raises(ConfigError, match=r"dataset.class_subset=\[0, 3\] is invalid: .*\[3\] outside the range"):
        dataset_info(folder_config(root, class_subset=[0, 3]))


def broken(kind: str, root: Path) -> dict:
    """A folder with one problem, and the settings that meet it."""
    if kind == "file_root":
        root.write_text("not a folder")
    elif kind == "empty_root":
        root.mkdir()
    elif kind == "loose_images":
        make_folder(root.parent, {root.name: 3})
    elif kind == "empty_class":
        two_folders(root)
        (root / "test" / "emu").mkdir()
        (root / "train" / "emu").mkdir()
        (root / "train" / "emu" / "notes.txt").write_text("no image")
    elif kind == "other_classes":
        make_folder(root, {"train/cat": 2, "train/dog": 2, "test/cat": 1, "test/emu": 1})
    elif kind == "no_test_folder":
        make_folder(root, {"train/cat": 2, "train/dog": 2})
    elif kind in ("fraction_with_folders", "one_class"):
        two_folders(root, classes=("cat",) if kind == "one_class" else ("cat", "dog"))
        return {"test_fraction": 0.2} if kind == "fraction_with_folders" else {}
    elif kind in ("no_fraction", "one_image_class"):
        make_folder(root, {"cat": 4, "dog": 1 if kind == "one_image_class" else 4})
        return {"test_fraction": 0.2} if kind == "one_image_class" else {}
    elif kind in ("corrupt_header", "corrupt_pixels"):
        two_folders(root)
        victim = root / "train" / "dog" / "001.png"
        victim.write_bytes(b"not a png at all" if kind == "corrupt_header" else victim.read_bytes()[:-30])
        # corrupt_header: met by the channel count's header scan; with channels given, when pixels are decoded.
        return {"channels": 3} if kind == "corrupt_pixels" else {}
    elif kind == "sixteen_bit":
        two_folders(root)
        Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(root / "train" / "dog" / "001.png")
    elif kind == "too_large":
        two_folders(root)
        (root / "train" / "dog" / "001.png").write_bytes(b"corrupt, never decoded")
        return {"max_memory_gb": 1e-6}  # 18 images x 3 x 32 x 32 x 4 bytes = 0.22 MB
    elif kind == "wrong_mean":
        two_folders(root, channels=1)
        return {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    return {}


@pytest.mark.parametrize(("kind", "error", "expected"), [
    ("missing_root", DataNotFoundError, ["dataset.root=", "does not exist", "never downloaded"]),
    ("file_root", DataNotFoundError, ["dataset.root=", "is a file, not a folder"]),
    ("empty_root", DataNotFoundError, ["dataset.root=", "no class folder", "holds no folder", "train/<class>/*"]),
    ("loose_images", DataNotFoundError, ["no class folder", "its 3 images lie directly in it"]),
    ("empty_class", DataNotFoundError, ["dataset.root=", "class folders without an image", "train/emu"]),
    ("other_classes", DataFormatError, ["same class folders", "only in train/: ['dog']", "only in test/: ['emu']"]),
    ("no_test_folder", DataFormatError, ["dataset.root=", "holds train/ but no test/"]),
    ("fraction_with_folders", ConfigError, ["dataset.test_fraction=0.2 is invalid: null", "train/ and test/"]),
    ("no_fraction", ConfigError, ["dataset.test_fraction=None is invalid", "e.g. dataset.test_fraction=0.2"]),
    ("one_image_class", DataFormatError, ["dog: 1 image", "dataset.test_fraction"]),
    ("one_class", DataFormatError, ["dataset.root=", "one class folder (cat)", "at least 2"]),
    ("corrupt_header", DataFormatError, ["train/dog/001.png: cannot be read as an image"]),
    ("corrupt_pixels", DataFormatError, ["train/dog/001.png: cannot be read as an image", "truncated"]),
    ("sixteen_bit", DataFormatError, ["train/dog/001.png: I;16 pixels", "8 bits per channel"]),
    # Before the headers are read (its corrupt image is never met), so at least the one-channel size.
    ("too_large", ConfigError, ["dataset.max_memory_gb=1e-06 is invalid: at least 7.37e-05 GB",
                                "12 training and 6 test images x 1 channel(s) x 32x32", "dataset.train_size"]),
    ("wrong_mean", ConfigError, ["dataset.mean=[0.5, 0.5, 0.5] is invalid: 1 value(s), one per channel"]),
])
def test_a_bad_folder_fails_naming_the_key_or_file_before_any_run_folder(tmp_path, kind, error, expected):
    root = tmp_path / "images"
    settings = broken(kind, root)
    overrides = [f"dataset.{key}={value}" for key, value in settings.items()]
    cfg = compose(["dataset=image_folder", f"dataset.root={root}", f"paths.outputs={tmp_path / 'outputs'}",
                   "arch.width=0.25", "progress=false", *overrides])
    with pytest.raises(error) as raised:
        execute_module.execute(cfg)
    assert all(part in str(raised.value) for part in expected), str(raised.value)
    assert not (tmp_path / "outputs").exists()
    assert not (root.is_dir() and (root / CACHE).exists())


@pytest.mark.parametrize(("override", "key"), [
    ("dataset.test_fraction=1", "dataset.test_fraction"), ("dataset.test_fraction=0", "dataset.test_fraction"),
    ("dataset.channels=2", "dataset.channels"), ("dataset.max_memory_gb=0", "dataset.max_memory_gb"),
    ("dataset.mean=[0.5]", "dataset.std"), ("dataset.std=[0.5]", "dataset.mean"), ("dataset.root=", "dataset.root"),
])
def test_out_of_range_settings_name_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError) as raised:
        validate(compose(["dataset=image_folder", f"dataset.root={tmp_path}", override]))
    assert raised.value.key == key


def test_a_missing_root_setting_names_the_key_and_the_layouts():
    with pytest.raises(ConfigError, match=r"dataset.root='\?\?\?' is invalid: required: the folder of your images"):
        compose(["dataset=image_folder"])


def test_the_run_id_hashes_what_the_folder_holds_not_where_it_is(tmp_path, monkeypatch):
    def identity(root, *overrides):
        return run_id(compose(["dataset=image_folder", f"dataset.root={root}", *overrides]))

    first = two_folders(tmp_path / "first")
    other = two_folders(tmp_path / "other")  # the same names, sizes and pixels, written apart
    original = identity(first)
    assert original.startswith("image_folder-vgg8-sgd-s0-")
    assert identity(first, "dataset.max_memory_gb=1") == original  # where the limit lies, not what is computed
    monkeypatch.chdir(tmp_path)
    assert identity("first") == original  # the same folder, relative
    moved = tmp_path / "moved" / "pets"
    moved.parent.mkdir()
    shutil.move(first, moved)
    assert identity(moved) == original
    assert identity(other) != original
    write_image(moved / "test" / "cat" / "extra.png", np.zeros((8, 8, 3), dtype=np.uint8))
    assert identity(moved) != original


def test_the_image_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert IMAGE_EXTENSIONS == IMG_EXTENSIONS


def test_fetch_reads_an_image_folder_and_never_fetches_it(tmp_path, capsys):
    root = two_folders(tmp_path / "pets")
    assert fetch.main(["dataset=image_folder", f"dataset.root={root}"]) == 0
    assert capsys.readouterr().out.strip() == f"image_folder: 3 classes, read from {root.resolve()} (never fetched)"
    assert fetch.main(["dataset=image_folder", f"dataset.root={tmp_path / 'missing'}"]) == 2
    message = capsys.readouterr().err
    assert f"dataset.root={tmp_path / 'missing'}" in message and "does not exist" in message
    assert "phases.fetch" not in message and "download" not in message.replace("never downloaded", "")


def test_a_sweep_over_a_missing_image_folder_stops_before_dispatch(tmp_path, capsys):
    task = ["dataset=image_folder", f"dataset.root={tmp_path / 'missing'}", "seed=0,1",
            f"paths.outputs={tmp_path / 'outputs'}"]
    with pytest.raises(SystemExit) as stopped:
        SweepCallback().on_multirun_start(OmegaConf.create({"hydra": {"overrides": {"task": task}}}))
    message = capsys.readouterr().err
    assert stopped.value.code == 2 and "does not exist" in message and "no job was started" in message
    assert "phases.fetch" not in message and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_run_on_an_image_folder_writes_its_metrics(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("test", 20)):
        for label, name in enumerate(("circle", "square", "stripe")):
            for index in range(count):
                pixels = rng.integers(0, 60, (28 + index % 3, 30, 3), dtype=np.uint8)
                pixels[4 + 6 * label: 10 + 6 * label, :, label] = 230  # a band whose colour and height tell the class
                write_image(tmp_path / "shapes" / split / name / f"{index}.png", pixels)
    outputs = tmp_path / "outputs"
    result = subprocess.run(
        [sys.executable, "-m", "phases.run", "dataset=image_folder", f"dataset.root={tmp_path / 'shapes'}",
         "arch.width=0.25", "schedule.max_steps=4", "schedule.batch_size=32", "probe.train_size=60",
         "probe.test_size=48", "probe.classifier_train_size=60", "probe.batch_size=50", "probe.calibration_size=50",
         "progress=false", f"paths.outputs={outputs}"],
        cwd=REPOSITORY, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (folder,) = (outputs / "runs").iterdir()
    assert folder.name.startswith("image_folder-vgg8-sgd-s0-")
    metrics = pq.read_table(folder / "metrics.parquet").to_pandas()
    assert set(metrics["dataset"]) == {"image_folder"} and sorted(set(metrics["step"])) == evaluation_steps(4)
    accuracy = metrics.query("probe == 'classifier' and metric == 'accuracy' and split == 'test'")
    assert len(accuracy) == len(evaluation_steps(4)) and accuracy["value"].between(0, 1).all()
    assert OmegaConf.load(folder / "config.yaml").dataset.root == str(tmp_path / "shapes")
    assert (tmp_path / "shapes" / CACHE).is_file()


def test_class_switch_probes_the_class_folders_outside_the_subset(tmp_path):
    root = two_folders(tmp_path / "pets", classes=("ant", "bee", "cat", "dog", "emu"), train=2, test=1)
    assert complement_classes(folder_config(root, class_subset=[3, 0])) == [1, 2, 4]
    with pytest.raises(ConfigError, match=r"this leaves \[4\]"):
        complement_classes(folder_config(root, class_subset=[0, 1, 2, 3]))
