"""Keep passwords out of everything hpo2 shows or records.

A storage or tracking URL may carry a password in two places: its user part
(``postgresql://user:pw@host/db``) and its query (``...?password=pw``, which
libpq and SQLAlchemy accept too; so are other secret parameters: any whose name
holds ``pass``, ``pwd``, ``secret`` or ``token``, such as ``sslpassword``).
Whatever hpo2 prints, raises, logs to MLflow or writes to a report goes through
:func:`redact_url` (each secret replaced by ``***``) or :func:`redact_text`; a study
file is logged to MLflow only as :func:`sanitized_study_text`; a server hpo2 starts
gets a URL through its environment, never its command line, which every local user
can read (``ps``).  Better still, keep the password out of the URL: ``PGPASSWORD``
or ``~/.pgpass`` for PostgreSQL (see the README).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit

import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
#: query parameters whose value is a secret (matched in the lower-cased name)
SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token")


def url_password(url: str) -> str | None:
    """The password in the user part of ``url``, or None (also for strings that are not URLs)."""
    try:
        return make_url(url).password
    except (ArgumentError, ValueError):
        try:
            return urlsplit(url).password
        except ValueError:
            return None


def _query_parameters(url: str) -> tuple[str, list[str], str]:
    """``url`` split into what precedes its query, the query's ``name=value`` parts (as
    written) and its fragment (with ``#``); no query: ``(url, [], "")``."""
    head, mark, rest = url.partition("?")
    if not mark:
        return url, [], ""
    query, hash_mark, fragment = rest.partition("#")
    return head, query.split("&"), hash_mark + fragment


def _is_secret_parameter(part: str) -> bool:
    name, equals, value = part.partition("=")
    return bool(equals and value) and SECRET_PARAMETER.search(unquote_plus(name).lower()) is not None


def url_secrets(url: str) -> list[str]:
    """Every secret in ``url``: the password of its user part, the (decoded) values of its secret query parameters."""
    _, parts, _ = _query_parameters(url)
    found = [unquote_plus(part.partition("=")[2]) for part in parts if _is_secret_parameter(part)]
    password = url_password(url)
    return [password, *found] if password else found


def redact_url(url: str) -> str:
    """``url`` with every secret (:func:`url_secrets`) replaced by ``***`` (unchanged when it has none)."""
    if not url_secrets(url):
        return url
    if url_password(url):
        try:
            url = make_url(url).render_as_string(hide_password=True)
        except (ArgumentError, ValueError):
            url = redact_text(url, url)
    head, parts, fragment = _query_parameters(url)
    if not parts:
        return url
    masked = [f"{part.partition('=')[0]}={MASK}" if _is_secret_parameter(part) else part for part in parts]
    return f"{head}?{'&'.join(masked)}{fragment}"


def redact_text(text: str, *urls: str | None) -> str:
    """``text`` with the secrets of ``urls`` (plain and URL-encoded) replaced by ``***``."""
    for url in urls:
        for secret in url_secrets(url) if url else []:
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                text = text.replace(form, MASK)
    return text


def _masked(value: Any) -> Any:
    """``value`` with every string that is a URL with a secret redacted, at any depth."""
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return redact_url(value) if isinstance(value, str) else value


def sanitized_study_text(data: dict[str, Any]) -> str:
    """A study (or suite) file's content as YAML with every URL secret masked, nested
    ones included (a suite's ``study.storage``, a ``warm_start.storage``): what MLflow may keep."""
    return "# written by hpo2 from the study file; passwords in URLs are masked\n" + yaml.safe_dump(
        _masked(data), sort_keys=False
    )
