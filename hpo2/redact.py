"""Keep passwords out of everything hpo2 shows or records.

A storage or tracking URL may carry a password (``postgresql://user:pw@host/db``).
Whatever hpo2 prints, raises, logs to MLflow or writes to a report goes through
:func:`redact_url` (SQLAlchemy's ``URL.render_as_string(hide_password=True)``,
which writes ``***``) or :func:`redact_text`; a study file is logged to MLflow only
as :func:`sanitized_study_text`.  Better still, keep the password out of the URL:
``PGPASSWORD`` or ``~/.pgpass`` for PostgreSQL (see the README).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"


def url_password(url: str) -> str | None:
    """The password inside ``url``, or None (also for strings that are not URLs)."""
    try:
        return make_url(url).password
    except (ArgumentError, ValueError):
        try:
            return urlsplit(url).password
        except ValueError:
            return None


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (unchanged when it has none)."""
    password = url_password(url)
    if not password:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return redact_text(url, url)


def redact_text(text: str, *urls: str | None) -> str:
    """``text`` with the passwords of ``urls`` (plain and URL-encoded) replaced by ``***``."""
    for url in urls:
        password = url_password(url) if url else None
        if password:
            for form in {password, quote(password, safe=""), quote_plus(password)}:
                text = text.replace(form, MASK)
    return text


def _masked(value: Any) -> Any:
    """``value`` with every string that is a URL with a password redacted, at any depth."""
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return redact_url(value) if isinstance(value, str) else value


def sanitized_study_text(data: dict[str, Any]) -> str:
    """A study (or suite) file's content as YAML with every URL password masked, nested
    ones included (a suite's ``study.storage``, a ``warm_start.storage``): what MLflow may keep."""
    return "# written by hpo2 from the study file; passwords in URLs are masked\n" + yaml.safe_dump(
        _masked(data), sort_keys=False
    )
