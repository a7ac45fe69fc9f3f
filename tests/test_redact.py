"""Passwords in URLs, in the user part or as a query parameter, are masked wherever hpo2 shows a URL."""

from __future__ import annotations

import pytest

from hpo2.common.redact import redact_text, redact_url, sanitized_study_text, url_secrets


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg2://hpo2:s3cr%40t@db:5432/optuna", "postgresql+psycopg2://hpo2:***@db:5432/optuna"),
    ("postgresql+psycopg2://hpo2@db/optuna?password=s3cr%40t&sslmode=require",
     "postgresql+psycopg2://hpo2@db/optuna?password=***&sslmode=require"),
    ("postgresql://u:s3cr%40t@db/o?sslpassword=k3y", "postgresql://u:***@db/o?sslpassword=***"),
    ("mysql://u@db/o?PASSWD=s3cr%40t", "mysql://u@db/o?PASSWD=***"),
    ("http://tracking:5000/?token=s3cr%40t#runs", "http://tracking:5000/?token=***#runs"),
    ("sqlite:///file:/tmp/x.db?mode=ro&uri=true", "sqlite:///file:/tmp/x.db?mode=ro&uri=true"),
    ("journal:/tmp/study.journal", "journal:/tmp/study.journal"),
])  # fmt: skip
def test_a_password_is_masked_in_either_part_of_a_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cr" not in redact_url(url) and "k3y" not in redact_url(url)


def test_secrets_are_masked_in_text_plain_and_encoded_and_in_a_logged_study_file() -> None:
    url = "postgresql://hpo2@db/optuna?password=s3cr%40t"
    assert url_secrets(url) == ["s3cr@t"]
    assert redact_text("refused s3cr@t (s3cr%40t)", url) == "refused *** (***)"
    text = sanitized_study_text({"storage": url, "warm_start": {"storage": url.replace("optuna", "old")}})
    assert "s3cr" not in text and text.count("?password=***") == 2
