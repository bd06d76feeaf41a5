"""Batch ids on every backend: a store ignores an ``add_items`` batch id it already holds, so a
retried call whose first attempt was applied is stored once (the lost-reply faults themselves:
tests/reliability/test_lost_replies.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentmem.sql import sqlalchemy as sqlalchemy_module
from agentmem.sql import sqlite as sqlite_module
from tests.conftest import SessionFactory

BATCH = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def one_batch_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every add_items call gets the same batch id: each call after the first is a retry."""
    from agentmem.redis import session as redis_module
    from agentmem.sql import _core as core_module

    for module in (sqlite_module, sqlalchemy_module, core_module):
        monkeypatch.setattr(module, "new_batch_id", lambda: BATCH)
    monkeypatch.setattr(redis_module, "new_raw_batch_id", lambda: bytes.fromhex(BATCH))


async def test_a_batch_id_already_stored_is_not_stored_again(
    make_session: SessionFactory, one_batch_id: None
) -> None:
    session = await make_session()
    await session.add_items([{"n": 1}, {"n": 2}])
    await session.add_items([{"n": 1}, {"n": 2}])  # the retry of a call that was applied
    assert await session.get_items() == [{"n": 1}, {"n": 2}]
    other = await make_session()  # batch ids are per session
    await other.add_items([{"other": 1}])
    assert await other.get_items() == [{"other": 1}]


async def test_each_call_has_its_own_batch_id(make_session: SessionFactory) -> None:
    session = await make_session()
    for _ in range(3):
        await session.add_items([{"same": "items"}])
    assert await session.get_items() == [{"same": "items"}] * 3


@pytest.mark.postgres
async def test_postgres_attempt_that_commits_while_the_retry_waits_is_stored_once(
    postgres_engine: Any,
) -> None:
    """The first attempt still runs (uncommitted, holding the session row) when the retry
    starts: the retry waits for it, then finds the batch by its unique index and stores
    nothing."""
    from agentmem import SQLAlchemySession
    from agentmem.sql import _statements
    from tests.conftest import unique_id

    session = SQLAlchemySession(postgres_engine, unique_id("batch"))
    await session.add_items([{"n": 0}])
    sql = _statements.postgres_statements("")
    # $1-$4 the items, $5 ttl, $6-$8 owner, title, metadata, $9 the batch id.
    args = (session.session_id, ['{"n": 1}'], [None], [None], None, None, None, None, BATCH)
    async with postgres_engine.connect() as first, postgres_engine.connect() as second:
        a = (await first.get_raw_connection()).driver_connection
        b = (await second.get_raw_connection()).driver_connection
        pid_b = b.get_server_pid()
        async with a.transaction():
            await a.execute(sql.add, *args)
            retry = asyncio.create_task(_add_as_the_session_does(b, sql, args))
            await _blocked_on_a_lock(a, pid_b)
        assert await retry == "stored by the first attempt"
    assert await session.get_items() == [{"n": 0}, {"n": 1}]
    await session.clear_session()


async def _blocked_on_a_lock(conn: Any, pid: int) -> None:
    """Return once the server backend ``pid`` waits for a lock (checked every 10 ms)."""
    query = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1"
    for _ in range(12_000):  # 2 minutes: never reached
        if await conn.fetchval(query, pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


async def _add_as_the_session_does(conn: Any, sql: Any, args: tuple[Any, ...]) -> str:
    """The add statement, with the violation of the batch index taken as "already stored"
    (as ``SQLAlchemySession.add_items`` takes it)."""
    try:
        await conn.execute(sql.add, *args)
    except Exception as exc:
        if getattr(exc, "constraint_name", None) == sql.batch_index:
            return "stored by the first attempt"
        raise
    return "inserted"
