"""PostgreSQL through PgBouncer, in ``transaction`` and ``session`` pooling mode: migrations,
sessions from several engines at once, ``from_url`` and the manager. (The contract and manager
suites run through the transaction-mode PgBouncer as the ``pgbouncer`` backend.)

Transaction mode hands each transaction any server connection: asyncpg's engine needs
``connect_args=pgbouncer_connect_args()`` there (no statement outlives its transaction). Session
mode keeps a server connection per client connection and needs nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from agentmem import (
    SQLAlchemySession,
    SQLAlchemySessionManager,
    migrate,
    pgbouncer_connect_args,
)
from tests._backends import Backend
from tests._lock_queue import waiters_take_turns_in_order
from tests.conftest import POSTGRES_URL, RUN_ID, through_pgbouncer, unique_id

pytestmark = pytest.mark.pgbouncer

MODES = ["transaction", "session"]


def _connect_args(pool_mode: str) -> dict[str, Any]:
    return pgbouncer_connect_args() if pool_mode == "transaction" else {}


@pytest.fixture
async def fresh_database(postgres_url: str) -> AsyncIterator[str]:
    """An empty database of this test (not migrated), dropped afterwards; yields its URL."""
    from sqlalchemy.engine import make_url

    admin_url = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    name = f"agentmem_bouncer_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.mark.parametrize("pool_mode", MODES)
async def test_migrations_and_sessions_of_several_engines_work_through_pgbouncer(
    pgbouncer_servers: Any, fresh_database: str, pool_mode: str
) -> None:
    url = through_pgbouncer(pgbouncer_servers(pool_mode), fresh_database)
    engines = [create_async_engine(url, connect_args=_connect_args(pool_mode)) for _ in range(3)]
    try:
        await migrate.upgrade(engines[0])
        await migrate.upgrade(engines[1])  # already at head: nothing to do
        assert await migrate.current(engines[2]) == migrate.head()
        prefix = unique_id("bouncer")

        async def turns(engine: Any, n: int) -> None:
            session = SQLAlchemySession(engine, f"{prefix}-{n}")
            for i in range(20):
                await session.add_items([{"i": i}, {"i": -1}])
                assert await session.pop_item() == {"i": -1}
                assert (await session.get_items(1)) == [{"i": i}]
            assert [item["i"] for item in await session.get_items()] == list(range(20))
            await session.close()

        await asyncio.gather(*(turns(engines[n % 3], n) for n in range(12)))
        async with SQLAlchemySessionManager(engines[1]) as manager:
            mine = [i for i in await manager.list_sessions() if i.startswith(prefix)]
            assert mine == sorted(f"{prefix}-{n}" for n in range(12))
            for session_id in mine:
                assert await manager.delete_session(session_id)
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.mark.parametrize("pool_mode", MODES)
async def test_from_url_sessions_work_through_pgbouncer(
    pgbouncer_servers: Any, postgres_url: str, pool_mode: str
) -> None:
    url = through_pgbouncer(pgbouncer_servers(pool_mode), postgres_url)
    options = {"connect_args": _connect_args(pool_mode)}
    session_id = unique_id("from-url")
    sessions = [
        SQLAlchemySession.from_url(session_id, url=url, engine_kwargs=options) for _ in range(8)
    ]
    try:
        await asyncio.gather(*(s.add_items([{"n": n}]) for n, s in enumerate(sessions)))
        items = await sessions[0].get_items()
        assert sorted(item["n"] for item in items) == list(range(8))
        await sessions[1].clear_session()
    finally:
        for session in sessions:
            await session.close()


def test_pgbouncer_connect_args_are_equal_every_call() -> None:
    """Equal options (the name function is one object) let ``from_url`` share one engine."""
    first, second = pgbouncer_connect_args(), pgbouncer_connect_args()
    assert first == second
    assert first is not second
    assert first["statement_cache_size"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("pool_mode", MODES)
async def test_exclusive_waiters_in_other_processes_get_the_lock_in_order_through_pgbouncer(
    pgbouncer_servers: Any, postgres_url: str, pool_mode: str, tmp_path: Path
) -> None:
    """One holder at a time and waiters in their order, through PgBouncer in both modes (the
    queue is read on the server: its waiting backends)."""
    url = through_pgbouncer(pgbouncer_servers(pool_mode), postgres_url)
    backend = Backend("pgbouncer" if pool_mode == "transaction" else "postgres", url)
    server = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await waiters_take_turns_in_order(backend, server, tmp_path / "order.log")
    finally:
        await server.close()
