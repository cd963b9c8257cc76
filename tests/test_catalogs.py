"""Catalog sources (keras:NAME, tfds:NAME): what each loader returns becomes
split folders of images that split reads like any archive."""

import gzip
import json
import struct
import urllib.error

import numpy as np
import pytest

from tlpipe import catalogs, fetch, images, params, paths
from tlpipe import split as split_module
from tlpipe.errors import TlpipeError
from tlpipe.params import DataParams, SplitParams

from conftest import REPO, tiny_params

SPLIT = SplitParams(val_fraction=0.25, test_fraction=0.25, test_from_val=0.5)


def loader_arrays(n, shape, classes, seed=0, column=False):
    """Arrays shaped as keras.datasets' load_data() returns them: uint8 images
    (N, H, W[, C]); labels (N,) or, for CIFAR, (N, 1); every class present."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = (np.arange(n) % classes).astype(np.uint8)
    return x, (y.reshape(-1, 1) if column else y)


def test_cifar_shaped_arrays_become_split_folders_of_exact_rgb_pngs(tmp_path):
    train, test = loader_arrays(20, (32, 32, 3), 10, column=True), loader_arrays(10, (32, 32, 3), 10, seed=1,
                                                                                  column=True)
    catalogs.write_arrays({"train": train, "test": test}, catalogs.CIFAR10, tmp_path)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(catalogs.CIFAR10)
    first = tmp_path / "train" / "airplane" / "00000.png"
    np.testing.assert_array_equal(images.read_rgb(first), train[0][0])  # lossless
    assert len(list((tmp_path / "test").rglob("*.png"))) == 10
    assert (tmp_path / "test" / "truck" / "00009.png").is_file()  # label 9 is the 10th name


def test_grey_mnist_shaped_arrays_are_written_as_rgb(tmp_path):
    x, y = loader_arrays(6, (28, 28), 3)
    catalogs.write_arrays({"train": (x, y)}, ("0", "1", "2"), tmp_path)
    from PIL import Image

    with Image.open(tmp_path / "train" / "1" / "00001.png") as img:
        assert img.mode == "RGB" and img.size == (28, 28)
        assert np.array_equal(np.asarray(img)[..., 0], x[1]) and np.array_equal(np.asarray(img)[..., 2], x[1])


def test_labels_outside_the_class_names_are_refused(tmp_path):
    x, y = loader_arrays(4, (8, 8), 4)
    with pytest.raises(TlpipeError, match=r"labels run 0\.\.3, outside its 2 classes"):
        catalogs.write_arrays({"train": (x, y)}, ("a", "b"), tmp_path)


def test_keras_catalog_through_fetch_and_split_keeps_the_catalog_test_split(in_tmp_cwd, monkeypatch):
    """keras:mnist with the download replaced by arrays of load_data()'s shape:
    the catalog's test split stays test, val is carved from train."""
    import keras

    train, test = loader_arrays(40, (28, 28), 10), loader_arrays(20, (28, 28), 10, seed=3)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: (train, test))
    fetch.run(DataParams("keras:mnist", None))
    result = split_module.run(SPLIT, 42, paths.RAW)
    assert result.classes == [str(d) for d in range(10)]
    assert len(result.rows["test"]) == 20 and all(r.path.startswith("test/") for r in result.rows["test"])
    assert len(result.rows["train"]) + len(result.rows["val"]) == 40
    assert all(r.path.startswith("train/") for r in result.rows["val"])


def test_keras_catalog_offline_is_one_line_naming_set_url_and_cache(in_tmp_cwd, monkeypatch, tmp_path):
    """Keras' own get_file with the network gone (urlretrieve refused), an empty cache."""
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(TlpipeError) as err:
        fetch.run(DataParams("keras:cifar10", None))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("keras:cifar10: keras.datasets.cifar10.load_data() could not get "
                              "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    assert f"{tmp_path / 'empty-cache' / 'datasets' / 'cifar-10-batches-py-target_archive'}" in message
    assert not paths.RAW.exists()  # nothing half-written


@pytest.mark.parametrize("source, sha256, labels, message", [
    ("keras:imagenet", None, None, "must be one of keras:cifar10, keras:cifar100, keras:mnist, keras:fashion_mnist"),
    ("tfds:Cats Vs Dogs", None, None, "must be tfds:NAME with a TensorFlow Datasets name"),
    ("keras:mnist", "a" * 64, None, "'data.sha256' parameter must be null for a catalog source"),
    ("tfds:stl10", None, "labels.csv", "'data.labels' parameter must be null for a catalog source"),
])
def test_bad_catalog_params_are_one_line_naming_the_key(raw_params, source, sha256, labels, message):
    raw_params["data"].update({"source": source, "sha256": sha256, "labels": labels})
    with pytest.raises(TlpipeError) as err:
        params.parse(raw_params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cifar100_names_are_the_hundred_fine_labels():
    assert len(catalogs.CIFAR100) == 100 == len(set(catalogs.CIFAR100))
    assert (catalogs.CIFAR100[0], catalogs.CIFAR100[30], catalogs.CIFAR100[99]) == ("apple", "dolphin", "worm")


# ---------------------------------------------------------------- through DVC


def write_idx(path, array, magic):
    """MNIST's idx format, gzipped, as Keras' fashion_mnist loader reads it."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_exp_run_keras_fashion_mnist_from_a_seeded_keras_cache(tmp_path, dvc_repo_factory, raw_params, monkeypatch):
    """`dvc exp run -S data.source=keras:fashion_mnist` as a user types it, with
    KERAS_HOME holding the four files Keras' loader downloads (its only catalog
    without a checksum, so a small one can stand in for the real set)."""
    cache = tmp_path / "keras" / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True)
    for prefix, n, seed in (("train", 40, 0), ("t10k", 20, 1)):
        x, y = loader_arrays(n, (28, 28), 10, seed=seed)
        write_idx(cache / f"{prefix}-images-idx3-ubyte.gz", x, 2051)
        write_idx(cache / f"{prefix}-labels-idx1-ubyte.gz", y, 2049)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    repo = dvc_repo_factory(tiny_params(raw_params, REPO / "missing"))
    result = repo.dvc("exp", "run", "-S", "data.source=keras:fashion_mnist", "split")
    assert "Running stage 'fetch'" in result.stdout
    metrics = json.loads((repo.root / "reports/data.json").read_text())
    assert metrics["classes"] == 10 and metrics["images"]["test"] == 20 and metrics["rejected"] == 0
    assert json.loads((repo.root / "data/split/classes.json").read_text()) == sorted(catalogs.FASHION_MNIST)
    assert (repo.root / "data/raw/test/ankle_boot/00009.png").is_file()


# ---------------------------------------------------------------- TensorFlow Datasets

@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")


@pytest.fixture
def mocked_tfds(tfds, tmp_path):
    """tfds.testing.mock_data over the real builders' features, with split
    metadata (the counts a prepared data set records) written for them."""

    def mock(name, splits, num_examples=6):
        builder = tfds.builder(name)
        info = builder.info
        info.set_splits(tfds.core.SplitDict(
            [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s, n in splits.items()]))
        folder = tmp_path / "tfds-metadata" / name / str(builder.version)
        folder.mkdir(parents=True)
        info.write_to_directory(folder)
        return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_FILES,
                                      data_dir=str(tmp_path / "tfds-metadata"))

    return mock


def test_tfds_stl10_keeps_train_and_test_and_skips_unlabelled(in_tmp_cwd, mocked_tfds, capsys):
    with mocked_tfds("stl10", {"train": 12, "test": 12, "unlabelled": 12}, num_examples=12):
        fetch.run(DataParams("tfds:stl10", None))
    assert sorted(p.name for p in paths.RAW.iterdir()) == ["test", "train"]
    assert "skipping tfds split 'unlabelled'" in capsys.readouterr().out
    stored = sorted(paths.RAW.rglob("*.png"))
    assert len(stored) == 24
    assert images.read_rgb(stored[0]).shape == (96, 96, 3)  # the stored bytes, as the catalog holds them


def test_tfds_grey_images_decode_as_rgb(in_tmp_cwd, mocked_tfds):
    with mocked_tfds("mnist", {"train": 8, "test": 4}, num_examples=8):
        fetch.run(DataParams("tfds:mnist", None))
    assert sorted(p.name for p in (paths.RAW / "test").iterdir()) == [str(d) for d in range(10)]
    first = sorted(paths.RAW.rglob("*.png"))[0]
    assert images.read_rgb(first).shape == (28, 28, 3)


def test_tfds_cats_vs_dogs_has_one_split_which_split_divides(in_tmp_cwd, mocked_tfds):
    with mocked_tfds("cats_vs_dogs", {"train": 40}, num_examples=40):
        fetch.run(DataParams("tfds:cats_vs_dogs", None))
    assert sorted(p.name for p in (paths.RAW / "train").iterdir()) == ["cat", "dog"]
    result = split_module.run(SPLIT, 42, paths.RAW)
    assert result.classes == ["cat", "dog"] and not result.rejected
    assert sum(len(result.rows[s]) for s in ("train", "val", "test")) == 40
    assert all(result.rows[s] for s in ("train", "val", "test"))


def test_tfds_unknown_name_is_one_line_with_close_names(in_tmp_cwd, tfds):
    with pytest.raises(TlpipeError) as err:
        fetch.run(DataParams("tfds:cats_vs_dog", None))
    message = str(err.value)
    assert message.startswith("tfds:cats_vs_dog is not a TensorFlow Datasets name (close: cats_vs_dogs")
    assert "tfds.list_builders()" in message and "\n" not in message


def test_tfds_without_the_extra_names_it(in_tmp_cwd, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails as if not installed
    with pytest.raises(TlpipeError, match=r"needs TensorFlow Datasets, which is not installed: pip install "
                                          r"'tlpipe\[tfds\]'"):
        fetch.run(DataParams("tfds:stl10", None))

