"""A disk that fills during a trial: one line naming the storage and the full disk, not
Optuna's ``AssertionError: Should not reach.`` (a real tmpfs of 512 KiB, filled mid-trial)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hpo2.study.config import load_study_config
from hpo2.study.observer import StudyObserver
from hpo2.study.runner import StudyRunner
from hpo2.study.storage import StorageLost

# end to end: real processes, servers or whole studies (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (mounting needs root, as CI runs)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


class FillsTheDisk(StudyObserver):
    """Fills the disk of ``folder`` as the first trial starts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def trial_started(self, number: int, optimizer: str) -> None:
        with open(self.folder / "filler", "ab") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass


def test_a_full_disk_under_a_journal_storage_is_one_line(tmp_path: Path, small_disk: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "task": "logreg_breast_cancer", "budget": {"epochs": 1}, "optimizers": ["sgd"], "n_trials": 2,
        "report": False, "confirm": False,
        "curvature_diagnostics": False, "storage": f"journal:{small_disk / 's.journal'}",
    }))  # fmt: skip
    runner = StudyRunner(*load_study_config(path), observer=FillsTheDisk(small_disk))
    with pytest.raises(StorageLost) as lost:
        runner.run()
    assert str(lost.value) == (f"storage journal:{small_disk / 's.journal'}: No space left on device; free space on "
                               "its disk (or move the storage) and rerun to go on")  # fmt: skip
