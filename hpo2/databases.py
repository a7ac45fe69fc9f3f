"""Checks on the stores a study writes to, made before anything is written, so a
store hpo2 cannot write fails in one line instead of a traceback mid-study."""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError

from hpo2.optim.settings import SettingsError
from hpo2.redact import redact_text, redact_url


def check_sqlite_writable(url: str, field: str) -> None:
    """Raise :class:`SettingsError` if the sqlite database at ``url`` cannot be written.

    The probe creates a table inside a transaction and rolls it back: it fails
    for a read-only file or folder, a ``mode=ro`` URI, a folder that does not exist
    or is a file, and leaves the database unchanged.  Other URLs are not probed.
    """
    if not url.startswith("sqlite:"):
        return
    engine = create_engine(url, isolation_level="AUTOCOMMIT")  # the probe runs its own transaction
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                connection.exec_driver_sql("CREATE TABLE hpo2_write_probe (x INTEGER)")
            finally:
                connection.exec_driver_sql("ROLLBACK")
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise SettingsError(
            f"{field}: cannot write the sqlite database {redact_url(url)!r} ({redact_text(reason, url)}); make its "
            f"folder and file writable, or give {field} another path; nothing was run"
        ) from None
    finally:
        engine.dispose()
