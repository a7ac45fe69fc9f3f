"""Security: a data folder cannot run code (CIFAR batches are unpickled with an
allow-list), and a storage password never reaches the screen, MLflow, the report
or the exported config."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from hpo2.cli import app
from hpo2.tasks import build_task
from hpo2.tasks.files import UntrustedFileError, read_cifar10


class _RunsCode:
    """Unpickling this calls ``os.system``: what a hostile 'batch' would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return os.system, (f"touch {self.marker}",)


def _write_batches(folder: Path, protocol: int, hostile: object | None = None) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"training batch", b"labels": rng.integers(0, 10, 20).tolist(),
                 b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"filenames": [b"a.png"] * 20}
        if hostile is not None and name == "data_batch_3":
            batch[b"labels"] = hostile
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_official_cifar_batches_still_load(tmp_path, protocol):
    _write_batches(tmp_path, protocol)
    x_train, y_train, x_test, y_test = read_cifar10(tmp_path)
    assert x_train.shape == (100, 3, 32, 32) and x_train.dtype == np.uint8 and y_test.shape == (20,)


def test_a_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    _write_batches(tmp_path / "data", 2, hostile=_RunsCode(marker))
    with pytest.raises(UntrustedFileError, match=r"data_batch_3: refused to load posix\.system"):
        build_task("cifar10_3c3d", {"data_dir": str(tmp_path / "data")})
    assert not marker.exists()
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"task": {"name": "cifar10_3c3d", "settings": {"data_dir": str(tmp_path / "data")}},
                                      "optimizer": {"name": "sgd"}, "device": "cpu"}))
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "data_batch_3: refused to load" in " ".join(result.output.split())
    assert not marker.exists()
