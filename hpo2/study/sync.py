"""``hpo2 study sync``: send the runs a lost tracking server missed, so MLflow agrees with Optuna.

A study whose tracking server stayed unreachable saves each unsent run under
``mlflow-unsent/`` beside the study file (:meth:`hpo2.study.tracking.TrackedRun.spool`:
one file per run, named by study, run and a random suffix).  Sync replays each
file of the study in order -- the run's creation if it never happened, its
params, metrics, tags and end -- and deletes the file only once everything in it
was sent; a file sent in part is rewritten with what is left, so a second sync
never creates a run twice.  An operation MLflow refuses for good (a param whose
value changed, a deleted run: :func:`hpo2.study.tracking.refused`) is dropped and
reported, not kept: sending it again would be refused again.  A run created now is linked to its Optuna trial
(:func:`hpo2.study.results.record_mlflow_run_id`), and trial runs still RUNNING
whose trial has ended are closed (:func:`hpo2.study.recovery.close_orphan_runs`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hpo2.errors import SettingsError
from hpo2.study.recovery import close_orphan_runs
from hpo2.study.results import record_mlflow_run_id
from hpo2.study.tracking import TrackedRun, check_reachable, experiment_id


def check_spooled_run(client: MlflowClient, data: dict[str, Any], study_name: str, path: Path) -> None:
    """A spool file that names an existing run may only change a run of its own study (tag
    ``hpo2.study``): a file copied or crafted under one study must not mark another's runs."""
    run_id = data.get("run_id")
    if run_id is None:
        return  # the run was never created: the file's own operations create it
    try:
        owner = client.get_run(str(run_id)).data.tags.get("hpo2.study")
    except MlflowException:
        owner = None
    if owner != study_name:
        raise SettingsError(f"{path}: names MLflow run {run_id!r}, which is not a run of study {study_name!r} "
                            f"({'it belongs to ' + repr(owner) if owner else 'no such run of a study here'}); "
                            "move the file out of the folder")


class SyncResult(NamedTuple):
    """What :func:`sync_unsent` did."""

    sent: int  # runs whose spooled operations all went through (or were refused for good)
    left: int  # runs still unsent: tracking unreachable, their files kept
    refused: list[str]  # ``<file>: <operation>: <reason>`` for each operation MLflow refused and hpo2 dropped


def sync_unsent(study: optuna.Study, folder: Path, tracking_uri: str, experiment: str) -> SyncResult:
    """Send ``study``'s spooled runs from ``folder``."""
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    sent = left = 0
    refused: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SettingsError(f"{path}: not a spooled MLflow run ({exc}); move it out of {folder}") from None
        if not isinstance(data, dict) or data.get("study") != study.study_name:
            continue
        check_spooled_run(client, data, study.study_name, path)
        try:
            run = TrackedRun.from_spool(client, data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SettingsError(f"{path}: not a spooled MLflow run (its operations cannot be read: "
                                f"{type(exc).__name__}: {exc}); move it out of {folder}") from None
        number = run.spooled_tags.get("hpo2.trial_number")
        if number is not None:
            run.on_created = lambda run_id, n=int(number): record_mlflow_run_id(study, n, run_id)
        with warnings.catch_warnings():  # the refusals are reported below, once
            warnings.simplefilter("ignore", RuntimeWarning)
            done = run.retry()
        refused += [f"{path.name}: {reason}" for reason in run.refused]
        if done:
            path.unlink()
            sent += 1
        else:
            run.write_spool(path, study.study_name)
            left += 1
    if not left:
        close_orphan_runs(client, experiment_id(client, experiment), study)
    return SyncResult(sent, left, refused)
