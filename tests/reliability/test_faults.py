"""Real failures of real servers: PostgreSQL backends killed and the server restarted, Redis
clients killed, the server restarted and flushed, a writer process SIGKILLed in the middle of a
large batch, tasks cancelled mid-call. Afterwards the history is what the callers were told."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentmem import SQLAlchemySession
from tests.conftest import unique_id
from tests.reliability import _load
from tests.reliability.conftest import PrivatePostgres

# --- PostgreSQL --------------------------------------------------------------------------------

PG_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,  # "connection was closed in the middle of operation"
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # asyncpg still reading the server's "terminating" message
)
"""What a call raises when its connection dies under it."""


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _engine(url: str, application_name: str, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        connect_args={"server_settings": {"application_name": application_name}},
    )


async def _terminate(admin: asyncpg.Connection, application_name: str) -> int:
    """Kill every backend of ``application_name`` (this test's own connections); return how many."""
    killed: int = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1 AND pid <> pg_backend_pid()",
        application_name,
    )
    return killed


@pytest.fixture
async def pg_admin(postgres_url: str) -> Any:
    admin = await asyncpg.connect(_plain(postgres_url), timeout=10)
    yield admin
    await admin.close()


@pytest.mark.postgres
async def test_postgres_writes_work_right_after_every_pooled_connection_is_killed(
    postgres_url: str, pg_admin: asyncpg.Connection
) -> None:
    name = unique_id("app")
    engine = _engine(postgres_url, name)
    try:
        session = SQLAlchemySession(engine, unique_id())
        await session.add_items([{"n": 0}])
        await asyncio.gather(*(session.get_items() for _ in range(4)))  # four pooled connections
        assert await _terminate(pg_admin, name) == 4
        await asyncio.sleep(0.2)  # the client sees the sockets close
        # Nothing was sent on the dead connections: every call may use a new one.
        await session.add_items([{"n": 1}])
        assert await session.pop_item() == {"n": 1}
        await session.add_items([{"n": 2}])
        assert await session.get_items() == [{"n": 0}, {"n": 2}]
        await session.clear_session()
    finally:
        await engine.dispose()


async def _kill_repeatedly(
    admin: asyncpg.Connection, application_name: str, times: int, done: asyncio.Event
) -> int:
    killed = 0
    for _ in range(times):
        if done.is_set():
            break
        await asyncio.sleep(0.05)
        killed += await _terminate(admin, application_name)
    return killed


@pytest.mark.postgres
async def test_postgres_backends_killed_mid_transaction_lose_and_duplicate_nothing(
    postgres_url: str, pg_admin: asyncpg.Connection
) -> None:
    name = unique_id("app")
    engine = _engine(postgres_url, name, pool_size=4)
    session_id = unique_id("killed")
    outcome = _load.Outcome()
    try:
        sessions = [SQLAlchemySession(engine, session_id) for _ in range(8)]
        await asyncio.gather(*(s.get_items() for s in sessions))  # the schema checks are done
        done = asyncio.Event()

        async def load() -> None:
            await asyncio.gather(
                *(_load.write(s, f"w{n}", 40, outcome) for n, s in enumerate(sessions[:6])),
                *(_load.pop(s, 40, outcome) for s in sessions[6:]),
            )
            done.set()

        _, killed = await asyncio.gather(load(), _kill_repeatedly(pg_admin, name, 20, done))
        assert killed > 0
        history = await sessions[0].get_items()  # works again
        _load.check_history(history + outcome.popped, outcome)
        _load.check_order(history)
        for error in outcome.errors:  # a dropped connection, never anything else
            assert isinstance(error, PG_CONNECTION_ERRORS), repr(error)
        await sessions[0].clear_session()
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_restarted_postgres_server(private_postgres: PrivatePostgres) -> None:
    engine = _engine(private_postgres.url, unique_id("app"), pool_size=3)
    session_id = unique_id("restart")
    outcome = _load.Outcome()
    try:
        sessions = [SQLAlchemySession(engine, session_id) for _ in range(3)]
        await sessions[0].add_items([{"before": True}])
        writers = [
            asyncio.create_task(_load.write(s, f"w{n}", 10_000, outcome, size=3))
            for n, s in enumerate(sessions)
        ]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(private_postgres.stop, "immediate")
        # While it is down, every call fails with a clear connection error.
        with pytest.raises(OSError, match=r"Connect call failed|Connection refused"):
            await sessions[0].get_items()
        await asyncio.to_thread(private_postgres.start)
        await asyncio.sleep(0.5)
        for task in writers:
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        # Up again: the next call works and the history is what the writers were told.
        history = await sessions[0].get_items()
        assert history[0] == {"before": True}
        _load.check_history(history[1:], outcome, size=3)
        _load.check_order(history[1:])
        assert any(outcome.failed.values()), "the restart interrupted no write"
        await sessions[0].add_items([{"after": True}])
        assert await sessions[1].pop_item() == {"after": True}
        await sessions[0].clear_session()
    finally:
        await engine.dispose()
