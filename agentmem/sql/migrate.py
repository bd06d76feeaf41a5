"""Bring a database to agentmem's current schema by running its Alembic migrations.

The same revision scripts serve ``alembic upgrade head`` in the repo and these functions in an
installed package (the wheel ships them as ``agentmem/_migrations``). Every function works inside
a running event loop: the migration runs on the caller's connection through ``run_sync``.

``async_url`` (the async driver of a plain URL) lives in :mod:`agentmem.sql._urls` and is
re-exported here; the stdlib backend's raw-sqlite3 schema helpers in
:mod:`agentmem.sql._sqlite_schema`.

Example:
    >>> await agentmem.migrate.upgrade(engine)            # to head
    >>> await agentmem.migrate.check(engine)              # raises SchemaError if behind
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentmem._logs import quiet_alembic
from agentmem._redact import mask_credentials
from agentmem.errors import SchemaError
from agentmem.sql._urls import async_url
from agentmem.sql.schema import tables_for_prefix

with quiet_alembic("alembic.runtime.plugins"):  # importing Alembic logs its plugins at INFO
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

__all__ = [
    "SchemaError",
    "async_url",
    "check",
    "current",
    "downgrade",
    "head",
    "make_config",
    "upgrade",
]

MIGRATION_LOCK = 0x61676E746D656D  # "agntmem": the PostgreSQL advisory lock of migrations
"""The key of the transaction-level advisory lock that serializes migrations on PostgreSQL."""


def upgrade_hint(url: object = None, table_prefix: str = "") -> str:
    """The command that brings the database at ``url`` (password masked) to head."""
    command = "agentmem upgrade --url " + (
        "URL" if url is None else shlex.quote(mask_credentials(url))
    )
    if table_prefix:
        command += f" --table-prefix {shlex.quote(table_prefix)}"
    return f"run `{command}` (or `alembic upgrade head` in the agentmem repo)"


def _script_location() -> str:
    packaged = Path(__file__).resolve().parents[1] / "_migrations"
    if (packaged / "env.py").is_file():
        return str(packaged)
    source_tree = Path(__file__).resolve().parents[2] / "migrations"
    if (source_tree / "env.py").is_file():
        return str(source_tree)
    raise SchemaError(f"agentmem's migration scripts are missing (looked in {packaged})")


def make_config(*, table_prefix: str = "") -> Config:
    """An Alembic ``Config`` for agentmem's migrations (no ini file needed).

    Args:
        table_prefix: Prefix of agentmem's table names (``""`` for ``sessions``/``messages``).
    """
    config = Config()
    config.set_main_option("script_location", _script_location())
    config.attributes["table_prefix"] = tables_for_prefix(table_prefix).prefix
    return config


@cache
def head() -> str:
    """The head revision of agentmem's migrations."""
    with quiet_alembic():
        script = ScriptDirectory.from_config(make_config())
    heads = script.get_heads()
    if len(heads) != 1:
        raise SchemaError(f"agentmem's migrations have {len(heads)} heads: {heads}")
    return heads[0]


# --- sync building blocks, run on a caller's connection -----------------------------------------


def _config_for(connection: Connection, table_prefix: str) -> Config:
    config = make_config(table_prefix=table_prefix)
    config.attributes["connection"] = connection
    return config


def current_on(connection: Connection, table_prefix: str = "") -> str | None:
    """The revision ``connection``'s database is at, or ``None`` if agentmem's schema is absent."""
    version_table = tables_for_prefix(table_prefix).version_table
    with quiet_alembic():
        context = MigrationContext.configure(connection, opts={"version_table": version_table})
        return context.get_current_revision()


def upgrade_on(connection: Connection, revision: str = "head", table_prefix: str = "") -> None:
    """Upgrade on an open sync connection (inside ``AsyncConnection.run_sync`` for async)."""
    with quiet_alembic():
        command.upgrade(_config_for(connection, table_prefix), revision)


def downgrade_on(connection: Connection, revision: str = "base", table_prefix: str = "") -> None:
    """Downgrade on an open sync connection."""
    with quiet_alembic():
        command.downgrade(_config_for(connection, table_prefix), revision)


def describe_schema_state(
    revision: str | None, table_prefix: str = "", *, url: object = None
) -> str | None:
    """``None`` if ``revision`` is head, else the error message for a database at ``revision``,
    naming the command that fixes it for ``url`` (a string or SQLAlchemy ``URL``) when given."""
    if revision == head():
        return None
    tables = tables_for_prefix(table_prefix)
    hint = upgrade_hint(url, table_prefix)
    if revision is None:
        return (
            f"agentmem's tables ({tables.sessions.name}, {tables.messages.name}) do not exist "
            f"in this database: {hint}"
        )
    return f"the database is at agentmem schema revision {revision}, not {head()}: {hint}"


# --- async API -----------------------------------------------------------------------------------


async def upgrade(engine: AsyncEngine, revision: str = "head", *, table_prefix: str = "") -> None:
    """Upgrade the engine's database to ``revision`` (default: head).

    The migration runs under a lock (on SQLite the exclusive write lock, on PostgreSQL a
    transaction-level advisory lock) and reads the current revision only once it holds it,
    so concurrent processes migrate a new database exactly once.
    """
    async with engine.connect() as connection:
        await _lock_migrations(connection)
        await connection.run_sync(upgrade_on, revision, table_prefix)
        await connection.commit()


async def _lock_migrations(connection: AsyncConnection) -> None:
    """Begin the migration's transaction holding the database's migration lock."""
    if connection.dialect.name == "sqlite":
        await connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        await connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")


async def downgrade(engine: AsyncEngine, revision: str = "base", *, table_prefix: str = "") -> None:
    """Downgrade the engine's database to ``revision`` (default: base, i.e. drop the tables)."""
    async with engine.begin() as connection:
        await connection.run_sync(downgrade_on, revision, table_prefix)


async def current(engine: AsyncEngine, *, table_prefix: str = "") -> str | None:
    """The revision the database is at, or ``None`` when agentmem's schema is absent."""
    async with engine.connect() as connection:
        revision: str | None = await connection.run_sync(current_on, table_prefix)
        return revision


async def check(engine: AsyncEngine, *, table_prefix: str = "") -> None:
    """Raise :class:`SchemaError` (naming the fix) unless the database is at head."""
    revision = await current(engine, table_prefix=table_prefix)
    problem = describe_schema_state(revision, table_prefix, url=engine.url)
    if problem is not None:
        raise SchemaError(problem)
