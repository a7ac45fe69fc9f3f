"""hpo2.study.tracking: MLflow's quick-failing HTTP settings are scoped, never set at import; a login in the
tracking URI is sent as basic auth."""

from __future__ import annotations

import base64
import http.server
import os
import subprocess
import sys
import threading

import pytest

from hpo2.errors import SettingsError
from hpo2.study.tracking import QUICK_HTTP, check_reachable, quick_failing_http


def test_importing_hpo2_leaves_the_environment_alone() -> None:
    code = ("import os; before = dict(os.environ); import hpo2.interface.cli, hpo2.study.tracking, hpo2.study.runner; "
            "print(sorted(k for k in os.environ if k.startswith('MLFLOW_HTTP') and os.environ[k] != before.get(k)))")
    env = {k: v for k, v in os.environ.items() if k not in QUICK_HTTP}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_settings_hold_inside_the_block_and_are_removed_after(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in QUICK_HTTP:
        monkeypatch.delenv(name, raising=False)
    with quick_failing_http():
        assert {name: os.environ.get(name) for name in QUICK_HTTP} == QUICK_HTTP
        with quick_failing_http():  # nested: the inner block's end keeps them
            pass
        assert {name: os.environ.get(name) for name in QUICK_HTTP} == QUICK_HTTP
    assert not any(name in os.environ for name in QUICK_HTTP)


def test_a_value_the_user_set_wins_and_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in QUICK_HTTP:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    with quick_failing_http():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == QUICK_HTTP["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_blocks_in_several_threads_keep_the_settings_until_the_last_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in QUICK_HTTP:
        monkeypatch.delenv(name, raising=False)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[str | None] = []

    def first() -> None:
        with quick_failing_http():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with quick_failing_http():
            second_in.set()
            first_out.wait(10)  # the first block has ended: this one still needs the settings
            seen.append(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen == [QUICK_HTTP["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]]
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


class _LoginHealth(http.server.BaseHTTPRequestHandler):
    """``/health`` behind basic auth (user ``hpo2``, password ``p@ss:word``), like an MLflow server behind a proxy."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        expected = "Basic " + base64.b64encode(b"hpo2:p@ss:word").decode()
        self.send_response(200 if self.headers.get("Authorization") == expected else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_login_in_the_tracking_uri_is_sent_as_basic_auth_not_looked_up_as_a_host_name() -> None:
    """``http://user:pw@host`` used to be reported as a DNS failure (urllib took ``user:pw@host`` as
    the host name); now the login is sent, a refused one says so, and no password is shown."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _LoginHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        check_reachable(f"http://hpo2:p%40ss%3Aword@127.0.0.1:{port}")  # the right login: it answers
        with pytest.raises(SettingsError) as refused:
            check_reachable(f"http://hpo2:wrong-secret@127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()
    message = str(refused.value)
    assert f"at http://hpo2:***@127.0.0.1:{port} refused the login (HTTP 401)" in message
    assert "wrong-secret" not in message and "does not answer" not in message
