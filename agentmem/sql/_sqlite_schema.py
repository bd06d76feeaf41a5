"""agentmem's schema on a raw ``sqlite3`` connection (the stdlib backend's): read its revision
(of a file, without writing it), bring it to head with the Alembic migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agentmem.sql import _statements as _sql
from agentmem.sql.migrate import current_on, head, upgrade_on
from agentmem.sql.schema import tables_for_prefix


def current_revision_sqlite(raw: sqlite3.Connection, table_prefix: str = "") -> str | None:
    """The revision of a raw sqlite3 connection's database (``None`` without agentmem's schema)."""
    version_table = tables_for_prefix(table_prefix).version_table
    try:
        row = raw.execute(f'SELECT version_num FROM "{version_table}"').fetchone()
    except sqlite3.OperationalError:  # no such table
        return None
    return None if row is None else str(row[0])


def sqlite_upgrade(raw: sqlite3.Connection, table_prefix: str = "") -> None:
    """Bring a raw sqlite3 connection's database to head under an exclusive write lock, so that
    processes opening the same new file at once migrate it exactly once."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    engine = create_engine("sqlite://", creator=lambda: raw, poolclass=StaticPool)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            if current_on(connection, table_prefix) != head():
                upgrade_on(connection, "head", table_prefix)
            connection.commit()
    finally:
        engine.dispose(close=False)


def bring_to_head(raw: sqlite3.Connection, table_prefix: str = "") -> None:
    """Upgrade the database of ``raw`` unless it is at head already (read without a lock)."""
    if current_revision_sqlite(raw, table_prefix) != head():
        sqlite_upgrade(raw, table_prefix)


def file_revision(path: str, table_prefix: str = "") -> str | None:
    """The revision of the database file at ``path``, read without creating or writing it
    (``None``: no file, or no agentmem schema in it)."""
    if not Path(path).is_file():
        return None
    options = _sql.sqlite_read_only_options(path) or {"mode": "ro"}
    raw = sqlite3.connect(
        _sql.sqlite_uri(path, options), uri=True, timeout=_sql.BUSY_TIMEOUT_SECONDS
    )
    try:
        return current_revision_sqlite(raw, table_prefix)
    finally:
        raw.close()
