"""Readers for the standard image-data file formats, with no download at run time.

* IDX (LeCun's MNIST format, also Fashion-MNIST's): a big-endian header -- two
  zero bytes, a type code (0x08 = unsigned byte), the number of dimensions --
  then one 32-bit size per dimension and the data; files may be gzip-compressed.
* CIFAR-10 "python version": pickled dicts with ``data`` (N x 3072 uint8, channel
  planes R, G, B of 32 x 32) and ``labels`` in ``data_batch_1..5`` and ``test_batch``.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def find_file(directory: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``directory``, whichever exists."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or .gz) into an array of its declared shape and type."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    expected = int(np.prod(shape))
    if data.size != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} values) but the file holds {data.size}")
    return data.reshape(shape)


def read_cifar10(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test images (N, 3, 32, 32) uint8 and labels from the python batches."""

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(directory / name, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")  # the official format is a pickle
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)

    train = [load(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = load("test_batch")
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test
