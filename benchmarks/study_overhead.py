"""Study overhead: the share of a trial's time spent in MLflow tracking, and
trials per hour, for the quickstart and for a study on a real task.

Each trial's nested MLflow run records ``tracking_seconds`` (time inside hpo2's
tracking calls: run creation, params, batched metrics, tags, closing) and
``tracking_fraction`` (that over the trial's wall time); this script runs the
studies in a temporary folder and prints the median and spread of those.

Run: ``python benchmarks/study_overhead.py [--trials 8] [--no-write]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish  # noqa: E402

from hpo2.study.config import load_study_config  # noqa: E402
from hpo2.study.runner import StudyRunner  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def measure(study_file: Path, overrides: dict) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data = yaml.safe_load(study_file.read_text())
        data.update(overrides)
        path = Path(tmp) / study_file.name
        path.write_text(yaml.safe_dump(data))
        config, file = load_study_config(path)
        start = time.perf_counter()
        study = StudyRunner(config, file).run()
        elapsed = time.perf_counter() - start
        client = MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name(config.name).experiment_id])
        fractions = [r.data.metrics["tracking_fraction"] for r in runs if "tracking_fraction" in r.data.metrics]
        trial_seconds = [t.duration.total_seconds() for t in study.trials if t.duration is not None]
    return {
        "trials": len(study.trials),
        "median_trial_s": statistics.median(trial_seconds),
        "median_fraction": statistics.median(fractions),
        "max_fraction": max(fractions),
        "trials_per_hour": 3600 * len(study.trials) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cases = {
        "quickstart (digits_mlp, 3 epochs)": (ROOT / "studies" / "quickstart.yaml", {"n_trials": args.trials}),
        "mnist1d_mlp, 5 epochs": (
            ROOT / "studies" / "quickstart.yaml",
            {"name": "overhead-mnist1d", "task": "mnist1d_mlp", "budget": {"epochs": 5}, "n_trials": args.trials,
             "pruner": {"name": "none"}},
        ),
    }
    lines = ["| study | trials | median trial s | tracking share (median) | tracking share (max) | trials / hour |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, (file, overrides) in cases.items():
        r = measure(file, overrides)
        lines.append(f"| {label} | {r['trials']} | {r['median_trial_s']:.2f} | {100 * r['median_fraction']:.2f}% | "
                     f"{100 * r['max_fraction']:.2f}% | {r['trials_per_hour']:.0f} |")
    table = "\n".join(lines)
    publish("Study overhead: MLflow tracking share of trial time", table, torch.device("cpu"), write=not args.no_write)


if __name__ == "__main__":
    main()
