"""Locks that every worker of a study shares: an ``fcntl`` lock on a file for
processes on one machine, a PostgreSQL advisory lock for workers on several
machines that share a PostgreSQL storage.

Advisory locks (``pg_advisory_lock``) are held by a database session and freed by
the server when that session ends, so a worker killed while holding one blocks
nobody, and one whose session a server restart ended has nothing left to unlock;
they need no table, so they also serialize the creation of Optuna's tables.

:func:`study_lock` picks the right one for a study's storage (the trial budget and
the samplers' proposals each take one of their own).
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from optuna import Study
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from hpo2.common.databases import local_file


def lock_key(name: str) -> int:
    """A stable 56-bit advisory-lock key for ``name`` (a signed bigint, as PostgreSQL takes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:7], "big")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` held for the block (processes on one machine)."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def advisory_lock(engine: Engine, key: int) -> Iterator[None]:
    """PostgreSQL's session advisory lock ``key`` held for the block, on one connection of ``engine``."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # the session is gone (a server restart, a dropped connection): the server freed its locks with it


@contextmanager
def url_advisory_lock(url: str, key: int) -> Iterator[None]:
    """:func:`advisory_lock` on a connection of its own to the database at ``url``
    (before any Optuna storage exists; the connection is closed afterwards)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with advisory_lock(engine, key):
            yield
    finally:
        engine.dispose()


@contextmanager
def study_lock(study: Study, url: str, purpose: str) -> Iterator[None]:
    """The lock named ``purpose`` that every worker of ``study`` (stored at ``url``) shares, held
    for the block: a PostgreSQL advisory lock on the storage's own engine, an ``fcntl`` lock on
    ``<database file>.hpo2-<purpose>.lock`` beside a sqlite database or journal file, and none
    for an in-memory storage (one process: its callers hold a thread lock of their own)."""
    if url.startswith("postgresql"):
        storage = study._storage
        rdb = storage._backend if isinstance(storage, _CachedStorage) else storage
        assert isinstance(rdb, RDBStorage), "a postgresql URL opens an RDB storage"
        with advisory_lock(rdb.engine, lock_key(f"hpo2-{purpose}:{study.study_name}")):
            yield
        return
    store = local_file(url)
    if store is None:
        yield
        return
    with file_lock(Path(f"{store}.hpo2-{purpose}.lock")):
        yield
