"""Your own job: a small CNN with BatchNorm and data augmentation, on images read from disk.

The images are scikit-learn's 8x8 digits, written once as PNG files in an
ImageFolder-style tree (``data/<split>/<class>/<n>.png``, as most image data sets
ship) and read back one file per sample by a map-style ``Dataset``: nothing is held
in memory, so the same code serves a data set larger than memory.

hpo2 calls ``build(settings)`` once per trial (seeded); the settings are declared by
the pydantic model below, so a study file can set or search them::

    task: {entrypoint: "./task.py:build", settings: {channels: 8}}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import Dataset

import hpo2
from hpo2.tasks.base import accuracy

HERE = Path(__file__).resolve().parent


class Settings(hpo2.TaskSettings):
    """This task's settings (hpo2's seed, batch_size and target come with TaskSettings)."""

    channels: int = 8
    """channels of the first convolution (the second has twice as many)"""
    augment: bool = True
    """random shifts of up to one pixel on training images"""
    image_dir: str = str(HERE / "data")
    """where the PNG tree is written (once) and read from"""


def write_images(root: Path, seed: int = 0) -> None:
    """Write the digits as ``root/{train,valid}/<class>/<n>.png`` (1,500 / 297), once."""
    if (root / "done").exists():
        return
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    for split, index in (("train", order[:1500]), ("valid", order[1500:])):
        for n in index:
            folder = root / split / str(digits.target[n])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[n] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{n}.png")
    (root / "done").write_text("")


class ImageFolder(Dataset[tuple[Tensor, Tensor]]):
    """``(image, label)`` pairs read from ``root/<class>/*.png`` at each access."""

    def __init__(self, root: Path, augment: bool) -> None:
        self.files = sorted(root.glob("*/*.png"))
        self.augment = augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        path = self.files[index]
        with Image.open(path) as image:
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]  # 1 x 8 x 8
        if self.augment:  # a random shift of up to one pixel (torch's generator: seeded per loader worker)
            dx, dy = torch.randint(-1, 2, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        return x, torch.tensor(int(path.parent.name))


def build(settings: Settings) -> hpo2.Task:
    """Digits from PNG files, CNN conv-BN-ReLU x2 + linear; target 95% validation accuracy."""
    root = Path(settings.image_dir)
    write_images(root)
    c = settings.channels
    model = nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * c * 2 * 2, 10),
    )
    return hpo2.Task(
        name="digits_png_cnn", model=model, loss_fn=nn.CrossEntropyLoss(),
        train=ImageFolder(root / "train", settings.augment), valid=ImageFolder(root / "valid", augment=False),
        batch_size=64, metric="accuracy", metric_fn=accuracy, higher_is_better=True, target=0.95,
    )
