"""Shared by the task tests: IDX files written by the format's spec, and a one-epoch check that the loss drops."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from hpo2.train import Budget, evaluate, run_training


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write an IDX file by the format's spec (independent of hpo2's reader)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def write_tiny_idx_set(directory: Path, n_train: int = 120, n_test: int = 30, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress)
    write_idx(directory / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train), compress)
    write_idx(directory / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress)
    write_idx(directory / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test), compress)


def one_epoch_lowers_loss(task, optimizer=None) -> None:
    before, _ = evaluate(task, task.train)
    result = run_training(task, optimizer or {"name": "adam", "settings": {"lr": 3e-3}}, Budget(epochs=1), device="cpu")
    after, _ = evaluate(task, task.train)
    assert result.status == "completed"
    assert after < before
