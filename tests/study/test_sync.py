"""``hpo2 study sync`` reads spool files it did not necessarily write: crafted ones are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2
from mlflow.tracking import MlflowClient

from hpo2.errors import SettingsError
from hpo2.study.sync import sync_unsent
from hpo2.study.tracking import refused


def _setup(tmp_path: Path) -> tuple[optuna.Study, str, MlflowClient, Path]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.create_study(study_name="mine", storage=f"sqlite:///{tmp_path / 'o.db'}")
    folder = tmp_path / "mlflow-unsent"
    folder.mkdir()
    return study, uri, MlflowClient(uri), folder


def test_a_spool_file_cannot_change_another_studys_run(tmp_path: Path) -> None:
    study, uri, client, folder = _setup(tmp_path)
    other = client.create_run(client.create_experiment("other"), tags={"hpo2.study": "other"}).info.run_id
    crafted = folder / "mine.run.json"
    crafted.write_text(json.dumps({"study": "mine", "name": "run", "run_id": other,
                                   "operations": [{"op": "end", "payload": "FAILED"}]}))
    with pytest.raises(SettingsError, match=rf"mine.run.json: names MLflow run '{other}', which is not a run of "
                                            r"study 'mine' \(it belongs to 'other'\)"):
        sync_unsent(study, folder, uri, "mine")
    assert client.get_run(other).info.status == "RUNNING"
    crafted.write_text(json.dumps({"study": "mine", "run_id": "0" * 32, "operations": []}))
    with pytest.raises(SettingsError, match="no such run of a study here"):
        sync_unsent(study, folder, uri, "mine")
    own = client.create_run(client.create_experiment("mine"), tags={"hpo2.study": "mine"}).info.run_id
    crafted.write_text(json.dumps({"study": "mine", "name": "run", "run_id": own,
                                   "operations": [{"op": "end", "payload": "FINISHED"}]}))
    assert sync_unsent(study, folder, uri, "mine") == (1, 0, [])
    assert client.get_run(own).info.status == "FINISHED" and not crafted.exists()


@pytest.mark.parametrize("content", [{"study": "mine"}, {"study": "mine", "operations": [{"op": "metrics"}]},
                                     {"study": "mine", "operations": 3}])
def test_a_spool_file_without_readable_operations_is_one_line(tmp_path: Path, content: dict) -> None:
    study, uri, _client, folder = _setup(tmp_path)
    (folder / "mine.bad.json").write_text(json.dumps(content))
    with pytest.raises(SettingsError, match=r"mine.bad.json: not a spooled MLflow run \(its operations cannot be "
                                            r"read: ") as caught:
        sync_unsent(study, folder, uri, "mine")
    assert "\n" not in str(caught.value)


def test_an_operation_mlflow_refuses_is_dropped_and_reported_so_sync_terminates(tmp_path: Path) -> None:
    """A param whose value changed (MLflow keeps params fixed) is no outage: sync used to keep the
    file and exit 1 forever; now it drops that param only, sends the rest and reports the drop."""
    study, uri, client, folder = _setup(tmp_path)
    run_id = client.create_run(client.create_experiment("mine"), tags={"hpo2.study": "mine"}).info.run_id
    client.log_param(run_id, "sampler", "random")
    spool = folder / "mine.mine.json"
    spool.write_text(json.dumps({"study": "mine", "name": "mine", "run_id": run_id, "operations": [
        {"op": "params", "payload": [{"key": "sampler", "value": "tpe"}, {"key": "pruner", "value": "none"}]},
        {"op": "end", "payload": "FINISHED"}]}))
    sent, left, refused = sync_unsent(study, folder, uri, "mine")
    assert (sent, left) == (1, 0) and len(refused) == 1
    assert refused[0].startswith("mine.mine.json: params: Changing param values is not allowed")
    assert "'old_value': 'random', 'new_value': 'tpe'" in refused[0]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"sampler": "random", "pruner": "none"}
    assert not spool.exists() and sync_unsent(study, folder, uri, "mine") == (0, 0, [])


@pytest.mark.parametrize(("code", "for_good"), [("INVALID_PARAMETER_VALUE", True), ("RESOURCE_DOES_NOT_EXIST", True),
                                                ("INTERNAL_ERROR", False), ("TEMPORARILY_UNAVAILABLE", False),
                                                ("BAD_REQUEST", False), ("ENDPOINT_NOT_FOUND", False)])
def test_only_a_refusal_for_good_is_told_apart_from_an_outage(code: str, for_good: bool) -> None:
    """An unreachable server, a 5xx, a locked database (TEMPORARILY_UNAVAILABLE), a proxy's bare 400 or
    404 are outages: kept and retried."""
    assert refused(MlflowException("x", error_code=getattr(databricks_pb2, code))) is for_good
    assert not refused(ConnectionError("no route to host"))
