"""Dataset catalogs as data.source: ``keras:NAME`` (keras.datasets) and ``tfds:NAME``
(TensorFlow Datasets) -> split folders of images, like any other source.

The catalog's own download and cache do the fetching (``$KERAS_HOME/datasets``;
tfds' data_dir, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); this module
only turns what a loader returns into ``train/<class>/<index>.png`` (and
``validation/``, ``test/`` where the catalog has them), so split, extract and
every later stage read it as they read an archive of class folders. The
catalog's split is kept; grey images are written as RGB.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlpipe import paths
from tlpipe.errors import TlpipeError

PREFIXES = ("keras:", "tfds:")
TFDS_EXTRA = "pip install 'tlpipe[tfds]' (tensorflow-datasets)"
# A tfds name, optionally with its config and version: imagenette/320px-v2:1.0.0
_TFDS_NAME = re.compile(r"[a-z0-9_]+(/[A-Za-z0-9_.+-]+)?(:[0-9]+\.[0-9]+\.[0-9]+)?")
# The catalogs' split names -> the split folders split.py reads.
TFDS_SPLITS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100's fine labels in the archive's order (its meta file's fine_label_names).
CIFAR100 = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm""".split())
FASHION_MNIST = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                 "bag", "ankle_boot")


@dataclass(frozen=True)
class KerasCatalog:
    """One keras.datasets loader: its class names, and where Keras caches its download."""

    module: str
    classes: tuple[str, ...]
    origin: str
    cached_as: str  # under $KERAS_HOME/datasets


KERAS = {
    "cifar10": KerasCatalog("cifar10", CIFAR10, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                            "cifar-10-batches-py-target_archive"),
    "cifar100": KerasCatalog("cifar100", CIFAR100, "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                             "cifar-100-python-target_archive"),
    "mnist": KerasCatalog("mnist", tuple(str(d) for d in range(10)),
                          "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz", "mnist.npz"),
    "fashion_mnist": KerasCatalog("fashion_mnist", FASHION_MNIST,
                                  "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
                                  "fashion-mnist/ (its four .gz files)"),
}


def is_catalog(source: str) -> bool:
    return source.startswith(PREFIXES)


def problem(source: str) -> str | None:
    """What is wrong with a catalog data.source, as the rule it breaks, or None."""
    kind, _, name = source.partition(":")
    if kind == "keras" and name not in KERAS:
        return f"one of {', '.join('keras:' + k for k in KERAS)} for a Keras catalog"
    if kind == "tfds" and not _TFDS_NAME.fullmatch(name):
        return "tfds:NAME with a TensorFlow Datasets name, e.g. tfds:cats_vs_dogs or tfds:stl10"
    return None


def fetch(source: str, target: Path) -> None:
    """Write the catalog ``source`` names into ``target`` as split folders of images."""
    kind, _, name = source.partition(":")
    if kind == "keras":
        (x_train, y_train), (x_test, y_test) = _keras_load(name)
        write_arrays({"train": (x_train, y_train), "test": (x_test, y_test)}, KERAS[name].classes, target)
    else:
        _tfds_fetch(name, target)


# ---------------------------------------------------------------- keras.datasets


def _keras_load(name: str):
    import importlib

    catalog = KERAS[name]
    loader = importlib.import_module(f"keras.datasets.{catalog.module}")
    print(f"fetch: keras.datasets.{catalog.module}.load_data() (cache {paths.keras_datasets()})", flush=True)
    try:
        return loader.load_data()
    except Exception as err:  # Keras raises a bare Exception for a failed download
        raise TlpipeError(
            f"keras:{name}: keras.datasets.{catalog.module}.load_data() could not get {catalog.origin} "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__}). Offline? Put the download "
            f"in {paths.keras_datasets()}/{catalog.cached_as} (KERAS_HOME picks the cache folder) and rerun."
        ) from None


def write_arrays(splits: dict[str, tuple[np.ndarray, np.ndarray]], classes, target: Path) -> None:
    """Arrays as keras.datasets' load_data() returns them (uint8 images (N, H, W) or
    (N, H, W, C), integer labels (N,) or (N, 1)) -> target/<split>/<class>/<index>.png."""
    from PIL import Image
    from tqdm import tqdm

    for split, (x, y) in splits.items():
        labels = np.asarray(y).reshape(-1)
        if len(labels) != len(x):
            raise TlpipeError(f"The catalog's {split} split has {len(x)} images but {len(labels)} labels.")
        if len(labels) and not 0 <= labels.min() <= labels.max() < len(classes):
            raise TlpipeError(f"The catalog's {split} labels run {labels.min()}..{labels.max()}, outside its "
                              f"{len(classes)} classes.")
        width = max(5, len(str(len(x) - 1)))
        for label in classes:
            (target / split / label).mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(len(x)), desc=f"fetch: writing {split}", unit="img", mininterval=1):
            image = Image.fromarray(np.asarray(x[i], dtype=np.uint8).squeeze()).convert("RGB")
            image.save(target / split / classes[labels[i]] / f"{i:0{width}d}.png", optimize=False)


# ---------------------------------------------------------------- TensorFlow Datasets


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise TlpipeError(f"A tfds: data.source needs TensorFlow Datasets, which is not installed: "
                          f"{TFDS_EXTRA}.") from None
    return tfds


def folder_name(label: str) -> str:
    """A class name as a folder name: a slash (fashion_mnist's 'T-shirt/top') becomes '_'."""
    return label.replace("/", "_").replace("\\", "_").strip() or "_"


def _tfds_builder(tfds, name: str):
    try:
        return tfds.builder(name)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders()
        close = difflib.get_close_matches(name.split("/")[0].split(":")[0], known, n=5)
        raise TlpipeError(
            f"tfds:{name} is not a TensorFlow Datasets name"
            f"{' (close: ' + ', '.join(close) + ')' if close else ''}; the {len(known)} known ones are at "
            "https://www.tensorflow.org/datasets/catalog or in tfds.list_builders()."
        ) from None


def _tfds_fetch(name: str, target: Path) -> None:
    tfds = _tfds()
    builder = _tfds_builder(tfds, name)
    print(f"fetch: tfds {builder.name} (data_dir {builder.data_dir})", flush=True)
    try:
        builder.download_and_prepare()
    except Exception as err:  # network, manual-download and disk errors all surface here
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TlpipeError(
            f"tfds:{name}: TensorFlow Datasets could not download and prepare it ({first}). Offline? "
            f"Prepare it where there is a network (tfds build {name}) and copy the folder it writes into "
            f"{builder.data_dir_root} (TFDS_DATA_DIR picks that folder), then rerun."
        ) from None
    image_key, label_key = _supervised_keys(tfds, builder, name)
    classes = [folder_name(c) for c in builder.info.features[label_key].names]
    written = 0
    for split in builder.info.splits.keys():
        if split not in TFDS_SPLITS:
            print(f"fetch: skipping tfds split {split!r} (only train, validation and test are labelled "
                  "data to split)", flush=True)
            continue
        written += _write_tfds_split(tfds, builder, split, image_key, label_key, classes,
                                     target / TFDS_SPLITS[split])
    if not written:
        raise TlpipeError(f"tfds:{name} has no train, validation or test split with images "
                          f"(its splits: {', '.join(builder.info.splits.keys()) or 'none'}).")


def _supervised_keys(tfds, builder, name: str) -> tuple[str, str]:
    """(image feature, class-label feature) of an image classification data set."""
    features = builder.info.features
    keys = builder.info.supervised_keys
    if (not keys or len(keys) != 2 or not isinstance(keys[0], str)
            or not isinstance(features[keys[0]], tfds.features.Image)
            or not isinstance(features[keys[1]], tfds.features.ClassLabel)):
        raise TlpipeError(f"tfds:{name} is not an image classification data set (its supervised keys are "
                          f"{keys}); tlpipe needs an (image, class label) pair.")
    return keys[0], keys[1]


def _write_tfds_split(tfds, builder, split, image_key, label_key, classes, folder: Path) -> int:
    """The split's images as their stored bytes (no re-encoding), in the catalog's order."""
    from tqdm import tqdm

    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={image_key: tfds.decode.SkipDecoding()})
    total = builder.info.splits[split].num_examples or None
    width = max(5, len(str((total or 1) - 1)))
    for label in classes:
        (folder / label).mkdir(parents=True, exist_ok=True)
    n = 0
    for example in tqdm(tfds.as_numpy(dataset), total=total, desc=f"fetch: writing {split}", unit="img",
                        mininterval=1):
        label = int(example[label_key])
        if not 0 <= label < len(classes):
            continue  # -1: an unlabelled example inside a labelled split
        data = example[image_key]
        (folder / classes[label] / f"{n:0{width}d}{_suffix(data)}").write_bytes(data)
        n += 1
    return n


def _suffix(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    return ".img"  # split's decoder names the format or rejects it by name
