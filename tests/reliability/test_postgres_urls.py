"""The README's PostgreSQL URLs work with what ``pip install hpo2`` installs: SQLAlchemy 2.1
reads ``postgresql://`` as psycopg 3 (2.0 as psycopg2), so both drivers are dependencies."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_urls() -> list[str]:
    return sorted(set(re.findall(r"postgresql(?:\+\w+)?://[^\s`'\"]+", README.read_text())))


def test_every_postgresql_url_of_the_readme_names_an_installed_driver() -> None:
    urls = _readme_urls()
    assert urls, "the README shows PostgreSQL URLs"
    for url in urls:
        make_url(url).get_dialect().import_dbapi()  # ModuleNotFoundError when the driver is missing


@pytest.mark.slow  # a PostgreSQL server
def test_the_readme_url_form_opens_optuna_and_mlflow_stores(postgres) -> None:
    """``postgresql://hpo2@host:port/db`` as the README writes it, for Optuna and for MLflow."""
    base = f"postgresql://hpo2@127.0.0.1:{postgres['port']}"
    study = optuna.create_study(study_name="readme-url", storage=f"{base}/optuna", load_if_exists=True)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert len(optuna.load_study(study_name="readme-url", storage=f"{base}/optuna").trials) >= 1
    assert MlflowClient(f"{base}/mlflow").search_experiments() is not None
