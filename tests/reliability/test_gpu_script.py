"""``benchmarks/gpu.sh --dry-run``: every piece of the GPU script runs on the CPU at tiny
sizes, its rows and raw numbers land in ``$OUT``, and BENCHMARKS.md is left alone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hpo2.tasks.image_classification import FASHION_MNIST_DEFAULT

pytestmark = pytest.mark.slow  # runs every benchmark piece in subprocesses (about a minute)

ROOT = Path(__file__).resolve().parents[2]
PIECES = ["HVP cost", "optimizer step cost", "time-to-target", "trials per device",
          "CUDA tests (collected only: no GPU)"]


@pytest.mark.skipif(not Path(os.environ.get("HPO2_FASHION_MNIST_DIR", FASHION_MNIST_DEFAULT)).is_dir(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_the_gpu_script_dry_run_makes_every_piece_on_the_cpu(tmp_path: Path) -> None:
    benchmarks_md = (ROOT / "BENCHMARKS.md").read_text()
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT), "PYTHON": "python"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    log = (tmp_path / "gpu.log").read_text() if (tmp_path / "gpu.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + log[-3000:]
    rows = (tmp_path / "rows.md").read_text()
    for piece in PIECES:
        assert f"| {piece} | ok |" in rows, rows
    for heading in ("## HVP cost over gradient cost (cpu)", "## Optimizer step cost (cpu)",
                    "## Time-to-target: fmnist_mlp (cpu)", "## Time-to-target: fmnist_2c2d (cpu)",
                    "## Trials per device: GPU busy (cpu)"):
        assert heading in rows
    raw = json.loads((tmp_path / "gpu.json").read_text())
    assert set(raw) == {"hvp_cost", "optimizer_step_cost", "time_to_target-fmnist_mlp", "time_to_target-fmnist_2c2d",
                        "trials_per_device"}
    assert any("torch.compile" in r["measurement"] for r in raw["hvp_cost"])
    assert {o["optimizer"] for o in raw["time_to_target-fmnist_2c2d"]["outcomes"]} == {"adam", "kfac"}
    assert [r["per_device"] for r in raw["trials_per_device"]["results"]] == [1]
    assert raw["trials_per_device"]["results"][0]["exit_code"] in (0, 130)
    assert "tests collected" in (tmp_path / "cuda-tests.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cuda-tests.log", "gpu.json", "gpu.log", "rows.md"]
    assert (ROOT / "BENCHMARKS.md").read_text() == benchmarks_md  # the rows went to $OUT only
