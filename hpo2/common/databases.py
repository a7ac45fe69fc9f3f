"""Checks on the stores a study writes to, made before anything is written, so a
store hpo2 cannot write fails in one line instead of a traceback mid-study."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from hpo2.common.redact import redact_text, redact_url
from hpo2.errors import SettingsError

LOCAL_PREFIXES = ("sqlite:///", "journal:")


def local_file(url: str) -> Path | None:
    """The file behind a ``sqlite:///PATH`` or ``journal:PATH`` store, else None."""
    for prefix in LOCAL_PREFIXES:
        if url.startswith(prefix):
            return Path(url[len(prefix):])
    return None


def check_sqlite_writable(url: str, field: str) -> None:
    """Raise :class:`SettingsError` if the sqlite database at ``url`` cannot be written.

    A database that does not exist yet needs a folder where a file can be created
    (tried with a temporary file; nothing is left behind).  An existing one is
    probed by creating a table inside a transaction that is rolled back: that fails
    for a read-only file or folder and a ``mode=ro`` URI, and changes nothing.
    Other URLs are not probed.
    """
    if not url.startswith("sqlite:"):
        return
    parsed = make_url(url)
    database = parsed.database or ""
    if database in ("", ":memory:"):
        return
    try:
        if "uri" not in parsed.query and not Path(database).exists():
            tempfile.TemporaryFile(dir=Path(database).parent).close()
            return
        engine = create_engine(url, isolation_level="AUTOCOMMIT")  # the probe runs its own transaction
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    connection.exec_driver_sql("CREATE TABLE hpo2_write_probe (x INTEGER)")
                finally:
                    connection.exec_driver_sql("ROLLBACK")
        finally:
            engine.dispose()
    except (OSError, SQLAlchemyError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise SettingsError(
            f"{field}: cannot write the sqlite database {redact_url(url)!r} ({redact_text(str(reason), url)}); make "
            f"its folder and file writable, or give {field} another path; nothing was run"
        ) from None


#: the dialects whose driver takes ``connect_timeout`` (seconds) as a connection argument
_TIMEOUT_DIALECTS = ("postgresql", "mysql")


def check_database_reachable(url: str, field: str, hint: str, timeout: int = 5) -> None:
    """Raise :class:`SettingsError` if the database server behind ``url`` (PostgreSQL,
    MySQL, ...) does not take a connection within ``timeout`` seconds: a wrong URL, a
    missing driver, a server that is down or refuses the login.  One connection is
    opened and closed (``SELECT 1``); nothing is written.  ``hint`` ends the message
    (what the user can do instead).  sqlite URLs are not probed (:func:`check_sqlite_writable`)."""
    if url.startswith("sqlite:"):
        return
    try:
        connect_args = {"connect_timeout": timeout} if make_url(url).get_backend_name() in _TIMEOUT_DIALECTS else {}
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        finally:
            engine.dispose()
    except Exception as exc:  # any driver's error: bad URL, no driver, server down, login refused
        driver = getattr(exc, "orig", None) or exc
        first_line = (str(driver).strip().splitlines() or [""])[0]
        raise SettingsError(
            f"{field}: cannot connect to the database {redact_url(url)!r} ({type(driver).__name__}: "
            f"{redact_text(first_line, url)}); {hint}; nothing was run"
        ) from None
