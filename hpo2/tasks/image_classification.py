"""Image classification tasks on IDX / CIFAR files: Fashion-MNIST (DeepOBS's
``fmnist_mlp`` and ``fmnist_2c2d``), MNIST and CIFAR-10 (DeepOBS's ``3c3d``).

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``: IDX files in
``/usr/share/datasets/fashion-mnist``); ``data_dir`` or ``HPO2_FASHION_MNIST_DIR``
points elsewhere.  MNIST and CIFAR-10 are read from ``data_dir`` (default
``~/.cache/hpo2/<name>``); with ``download=True`` and torchvision installed they
are fetched there first.

Splits: the official training set is split into train and validation with a
seeded permutation (50,000 / 10,000 for the 60,000-image sets, 45,000 / 5,000 for
CIFAR-10); the official test set is the test split.  Pixels are scaled to [0, 1]
(CIFAR-10: per-channel standardised).

DeepOBS reference (Schneider, Balles & Hennig 2019, table 2; 100 epochs, batch
128): ``fmnist_2c2d`` test accuracy SGD 92.27%, Momentum 92.14%, Adam 92.34%.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpo2.errors import DataMissingError
from hpo2.tasks.base import Split, Task, TaskSettings, accuracy, mlp, seeded_split
from hpo2.tasks.files import find_file, read_cifar10, read_idx

FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class ImageTaskSettings(TaskSettings):
    """For data sets that are not in a Debian package: files in ``data_dir``, or a download."""

    download: bool = False
    """download the data set with torchvision when its files are missing (needs torchvision and a network)"""


def _cache_dir(name: str) -> Path:
    return Path(os.environ.get("HPO2_DATA_DIR", Path.home() / ".cache" / "hpo2")) / name


def idx_files(directory: Path, how_to_get: str) -> list[Path]:
    """The four IDX files in ``directory``; :class:`DataMissingError` naming the missing ones."""
    found = {stem: find_file(directory, stem) for stem in IDX_FILES}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        raise DataMissingError(f"missing {', '.join(missing)} (or .gz) in {directory}. {how_to_get}")
    return [path for path in found.values() if path is not None]


def load_idx_dataset(directory: Path, how_to_get: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test images and labels from the four IDX files in ``directory``."""
    images, labels, test_images, test_labels = (read_idx(p) for p in idx_files(directory, how_to_get))
    return images, labels, test_images, test_labels


def _idx_splits(arrays: tuple[np.ndarray, ...], seed: int) -> tuple[Split, Split, Split]:
    x_train, y_train, x_test, y_test = arrays
    x = torch.from_numpy(x_train.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(y_train.astype(np.int64))
    n_valid = len(x) // 6
    train_idx, valid_idx = seeded_split(len(x), (len(x) - n_valid, n_valid), seed)
    test = Split(
        torch.from_numpy(x_test.astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(y_test.astype(np.int64))
    )
    return Split(x[train_idx], y[train_idx]), Split(x[valid_idx], y[valid_idx]), test


FASHION_MNIST_HOW = (
    "Install Fashion-MNIST with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the "
    "four IDX files there and pass task.settings.data_dir (or set HPO2_FASHION_MNIST_DIR)."
)
MNIST_HOW = "Pass task.settings.download=true (needs torchvision and internet) or put the IDX files there."


def _fashion_mnist_dir(settings: TaskSettings) -> Path:
    return Path(settings.data_dir or os.environ.get("HPO2_FASHION_MNIST_DIR", FASHION_MNIST_DEFAULT))


def check_fashion_mnist(settings: TaskSettings) -> None:
    """Raise :class:`DataMissingError` unless the Fashion-MNIST files are there (nothing is read)."""
    idx_files(_fashion_mnist_dir(settings), FASHION_MNIST_HOW)


def fashion_mnist_splits(settings: TaskSettings) -> tuple[Split, Split, Split]:
    return _idx_splits(load_idx_dataset(_fashion_mnist_dir(settings), FASHION_MNIST_HOW), settings.seed)


def two_conv_two_dense() -> nn.Module:
    """DeepOBS 2c2d: conv 32 (5x5) - pool - conv 64 (5x5) - pool - dense 1024 - dense 10."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, 10),
    )  # fmt: skip


def _classification(
    name: str, model: nn.Module, splits: tuple[Split, Split, Split], target: float, reference: str
) -> Task:
    train, valid, test = splits
    return Task(
        name=name, model=model, loss_fn=nn.CrossEntropyLoss(), train=train, valid=valid, test=test,
        batch_size=128, metric="accuracy", metric_fn=accuracy, higher_is_better=True, target=target,
        reference=reference,
    )  # fmt: skip


def fmnist_mlp(settings: TaskSettings) -> Task:
    """DeepOBS ``fmnist_mlp``: ReLU MLP 784-1000-500-100-10, batch 128; target 85% validation accuracy."""
    return _classification(
        "fmnist_mlp", mlp([784, 1000, 500, 100, 10]), fashion_mnist_splits(settings), 0.85,
        "DeepOBS fmnist_mlp (no published table entry; fmnist_2c2d reaches ~92%)",
    )  # fmt: skip


def fmnist_2c2d(settings: TaskSettings) -> Task:
    """DeepOBS ``fmnist_2c2d``, batch 128; target 90% validation accuracy.
    DeepOBS test accuracy after 100 epochs: SGD 92.27%, Momentum 92.14%, Adam 92.34%."""
    return _classification(
        "fmnist_2c2d", two_conv_two_dense(), fashion_mnist_splits(settings), 0.90,
        "DeepOBS test accuracy, 100 epochs: SGD 92.27%, Momentum 92.14%, Adam 92.34%",
    )  # fmt: skip


def _download_with_torchvision(kind: str, root: Path) -> None:
    """Fetch ``kind`` into torchvision's layout under ``root`` (needs torchvision and internet)."""
    try:
        import torchvision  # noqa: F401  (optional: only for users with internet)
        from torchvision import datasets
    except ImportError as exc:
        raise DataMissingError(
            "download=True needs torchvision (pip install torchvision) and internet; "
            f"or put the {kind} files under {root}"
        ) from exc
    if kind == "MNIST":
        datasets.MNIST(str(root), download=True)  # writes root/MNIST/raw/*.gz
    else:
        datasets.CIFAR10(str(root), download=True)  # writes root/cifar-10-batches-py


def _mnist_dir(settings: ImageTaskSettings) -> Path:
    return Path(settings.data_dir) if settings.data_dir else _cache_dir("MNIST") / "raw"


def check_mnist(settings: ImageTaskSettings) -> None:
    """Raise :class:`DataMissingError` unless the MNIST files are there or may be downloaded."""
    if not settings.download:
        idx_files(_mnist_dir(settings), MNIST_HOW)


def mnist_mlp(settings: ImageTaskSettings) -> Task:
    """MNIST with the DeepOBS MLP; reads the IDX files from ``data_dir`` (default
    ``~/.cache/hpo2/MNIST/raw``, torchvision's layout); target 97% validation accuracy."""
    directory = _mnist_dir(settings)
    if settings.download and find_file(directory, IDX_FILES[0]) is None:
        _download_with_torchvision("MNIST", directory.parent.parent)
    splits = _idx_splits(load_idx_dataset(directory, MNIST_HOW), settings.seed)
    return _classification("mnist_mlp", mlp([784, 1000, 500, 100, 10]), splits, 0.97, "")


def three_conv_three_dense() -> nn.Module:
    """DeepOBS 3c3d: conv 64 (5x5) - pool - conv 96 (3x3) - pool - conv 128 (3x3) - pool - 512 - 256 - 10."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 5), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(64, 96, 3), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(96, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(), nn.Linear(128 * 3 * 3, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip


def _cifar_dir(settings: ImageTaskSettings) -> Path:
    return Path(settings.data_dir) if settings.data_dir else _cache_dir("cifar-10-batches-py")


def check_cifar10(settings: ImageTaskSettings) -> None:
    """Raise :class:`DataMissingError` unless the CIFAR-10 batches are there or may be downloaded."""
    directory = _cifar_dir(settings)
    if not (directory / "test_batch").is_file() and not settings.download:
        raise DataMissingError(
            f"CIFAR-10 python batches not found in {directory}. Pass task.settings.download=true "
            "(needs torchvision and internet) or put data_batch_1..5 and test_batch there."
        )


def cifar10_3c3d(settings: ImageTaskSettings) -> Task:
    """CIFAR-10 with DeepOBS's 3c3d network; reads the python batches from
    ``data_dir`` (default ``~/.cache/hpo2/cifar-10-batches-py``); target 75% validation accuracy."""
    directory = _cifar_dir(settings)
    if not (directory / "test_batch").is_file():
        check_cifar10(settings)
        _download_with_torchvision("CIFAR-10", directory.parent)
    x_train, y_train, x_test, y_test = read_cifar10(directory)
    x = torch.from_numpy(x_train).float() / 255.0
    n_valid = len(x) // 10
    train_idx, valid_idx = seeded_split(len(x), (len(x) - n_valid, n_valid), settings.seed)
    mean = x[train_idx].mean(dim=(0, 2, 3), keepdim=True)
    std = x[train_idx].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.from_numpy(y_train)
    test = Split((torch.from_numpy(x_test).float() / 255.0 - mean) / std, torch.from_numpy(y_test))
    return _classification(
        "cifar10_3c3d",
        three_conv_three_dense(),
        (Split(x[train_idx], y[train_idx]), Split(x[valid_idx], y[valid_idx]), test),
        0.75,
        "",
    )
