"""File readers (hpo2.tasks.files): IDX files written by the spec, plain and gzipped."""

from __future__ import annotations

import numpy as np
import pytest

from hpo2.tasks.files import read_idx
from tests.tasks.helpers import write_idx


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_reads_the_real_format(tmp_path, compress):
    array = np.random.default_rng(1).integers(0, 256, (7, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "x", array, compress)
    got = read_idx(tmp_path / ("x.gz" if compress else "x"))
    assert got.shape == (7, 28, 28) and np.array_equal(got, array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
