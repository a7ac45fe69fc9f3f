"""Readers for the standard image-data file formats, with no download at run time.

* IDX (LeCun's MNIST format, also Fashion-MNIST's): a big-endian header -- two
  zero bytes, a type code (0x08 = unsigned byte), the number of dimensions --
  then one 32-bit size per dimension and the data; files may be gzip-compressed.
* CIFAR-10 "python version": pickled dicts with ``data`` (N x 3072 uint8, channel
  planes R, G, B of 32 x 32) and ``labels`` in ``data_batch_1..5`` and ``test_batch``.
  A pickle can name any importable callable and have it called while loading, and
  the folder comes from the user's config (``task.settings.data_dir``), so the
  batches are read by :class:`CifarUnpickler`, which resolves only the few globals
  a numpy array needs and refuses everything else before it is called.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from hpo2.errors import UntrustedFileError

_IDX_TYPES: dict[int, npt.DTypeLike] = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"
}


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


class CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 python batches and nothing else.

    The official batches (written by Python 2's cPickle) hold a dict of byte
    strings, a list of ints and one uint8 ``numpy.ndarray``.  Rebuilding that array
    is the only call a batch needs (``numpy.core.multiarray._reconstruct`` with the
    ``ndarray`` and ``dtype`` classes, or ``numpy.core.numeric._frombuffer`` at
    pickle protocol 5; ``_codecs.encode`` is how Python 3 writes bytes at protocol
    2), so :meth:`find_class` allows exactly those globals and
    raises :class:`UntrustedFileError` for any other before it could run.
    """

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        [
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        ]
    )

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise UntrustedFileError(
                f"{self.path}: refused to load {module}.{name} -- a CIFAR-10 batch holds only byte strings, "
                "ints and a numpy array, so this file is not one (it may run code if unpickled); "
                "delete it and fetch the official batches"
            )
        return super().find_class(module, name)


def read_cifar10(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test images (N, 3, 32, 32) uint8 and labels from the python batches."""

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = directory / name
        with open(path, "rb") as fh:
            try:
                batch = CifarUnpickler(fh, path).load()
            except (pickle.UnpicklingError, EOFError) as exc:
                raise UntrustedFileError(f"{path} is not a CIFAR-10 python batch ({exc})") from None
        if not isinstance(batch, dict):
            raise UntrustedFileError(
                f"{path} is not a CIFAR-10 python batch (holds a {type(batch).__name__}, not a dict)"
            )
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)

    train = [load(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = load("test_batch")
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test
