"""Alembic environment of agentmem.

Run from the repo (``alembic upgrade head``, URL from ``AGENTMEM_DATABASE_URL`` or ``-x url=...``)
or from code (``agentmem.migrate``), which hands over its open connection in
``config.attributes["connection"]`` so no second event loop is started.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from agentmem.migrate import async_url
from agentmem.sql.schema import tables_for_prefix

config = context.config
x_args = context.get_x_argument(as_dictionary=True)

table_prefix = str(config.attributes.get("table_prefix", x_args.get("table_prefix", "")))
config.attributes["table_prefix"] = table_prefix
tables = tables_for_prefix(table_prefix)


def _url() -> str:
    url = x_args.get("url") or os.environ.get("AGENTMEM_DATABASE_URL")
    if not url:
        raise SystemExit("agentmem: no database URL; set AGENTMEM_DATABASE_URL or pass -x url=...")
    return async_url(url)


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=tables.metadata,
        version_table=tables.version_table,
        render_as_batch=True,  # SQLite needs batch mode to alter tables
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    run_migrations(connection)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    asyncio.run(run_async_migrations())
