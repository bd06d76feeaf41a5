"""``session.exclusive()``: one holder of a session at a time, on every backend (the contract
suite's ``make_session``); across processes in tests/reliability/test_exclusive_processes.py.
Waiters in other processes get the lock in their order on every store processes share (a
SQLite file, PostgreSQL, Redis, Redis Cluster; through PgBouncer in tests/test_pgbouncer.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agentmem import SessionLockLost, SessionLockTimeout
from agentmem.errors import SessionClosedError
from tests._backends import Backend
from tests._lock_queue import waiters_take_turns_in_order
from tests.conftest import REDIS_PREFIX, REDIS_URL, SessionFactory, cluster_url, unique_id

# A wait that always ends in SessionLockTimeout: the lock is held by a task that is itself
# waiting for the test to let it go, so the outcome does not depend on the machine's speed.
HELD_ELSEWHERE = 0.05


async def _second_object(make_session: SessionFactory, session: Any, request: Any) -> Any:
    """Another session object on the same stored session: the same object for a store
    private to its object (an in-memory SQLite session)."""
    if request.node.callspec.params["make_session"] == "sqlite_memory_session":
        return session
    return await make_session(session.session_id)


async def test_the_block_holds_the_lock_until_it_ends(
    make_session: SessionFactory, request: pytest.FixtureRequest
) -> None:
    session = await make_session()
    other = await _second_object(make_session, session, request)
    held, done = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with session.exclusive(timeout=30):
            await session.add_items([{"by": "holder"}])
            held.set()
            await done.wait()
            await session.add_items([{"by": "holder", "n": 2}])

    task = asyncio.create_task(holder())
    await held.wait()
    with pytest.raises(SessionLockTimeout):
        async with other.exclusive(timeout=HELD_ELSEWHERE):
            pytest.fail("ran while another holder held the lock")
    done.set()
    async with other.exclusive(timeout=60):
        history = await other.get_items()
        await other.add_items([{"by": "other"}])
    await task
    assert history == [{"by": "holder"}, {"by": "holder", "n": 2}]
    assert await session.get_items() == [*history, {"by": "other"}]


async def test_waiters_in_one_process_get_the_lock_in_arrival_order(
    make_session: SessionFactory,
) -> None:
    session = await make_session()
    order: list[int] = []
    release = asyncio.Event()

    async def first() -> None:
        async with session.exclusive():
            await release.wait()
            order.append(0)

    async def waiter(n: int) -> None:
        async with session.exclusive(timeout=60):
            order.append(n)
            await session.add_items([{"n": n}])

    tasks = [asyncio.create_task(first())]
    await asyncio.sleep(0)  # first takes the lock
    for n in range(1, 5):
        tasks.append(asyncio.create_task(waiter(n)))
        await asyncio.sleep(0)  # each one queues before the next starts
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert await session.get_items() == [{"n": n} for n in range(1, 5)]


async def test_the_lock_is_released_when_the_block_raises(make_session: SessionFactory) -> None:
    session = await make_session()
    with pytest.raises(KeyError):
        async with session.exclusive():
            raise KeyError("boom")
    async with session.exclusive(timeout=HELD_ELSEWHERE):
        await session.add_items([{"after": "raise"}])
    assert await session.get_items() == [{"after": "raise"}]


async def test_a_cancelled_waiter_leaves_the_queue(make_session: SessionFactory) -> None:
    session = await make_session()
    release = asyncio.Event()

    async def holder() -> None:
        async with session.exclusive():
            await release.wait()

    hold = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(session.exclusive(timeout=60).__aenter__())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await hold
    async with session.exclusive(timeout=HELD_ELSEWHERE):
        pass


@pytest.mark.parametrize("wait", [0, 1, 2.5, timedelta(seconds=3)])
async def test_timeout_takes_seconds_or_a_timedelta(
    make_session: SessionFactory, wait: Any
) -> None:
    session = await make_session()
    async with session.exclusive(timeout=wait):
        await session.add_items([{"t": str(wait)}])
    assert await session.get_items() == [{"t": str(wait)}]


@pytest.mark.parametrize(
    ("wait", "error"),
    [(-1, ValueError), (float("nan"), ValueError), ("30", TypeError), (True, TypeError)],
)
async def test_a_bad_timeout_is_refused(
    make_session: SessionFactory, wait: Any, error: type[Exception]
) -> None:
    session = await make_session()
    with pytest.raises(error, match="timeout"):
        async with session.exclusive(timeout=wait):
            pytest.fail("entered")


async def test_a_closed_session_refuses_the_lock(make_session: SessionFactory) -> None:
    session = await make_session()
    await session.close()  # type: ignore[attr-defined]
    with pytest.raises(SessionClosedError):
        async with session.exclusive():
            pytest.fail("entered")


def test_session_lock_timeout_is_a_timeout_error() -> None:
    assert issubclass(SessionLockTimeout, TimeoutError)


@pytest.mark.redis
@pytest.mark.parametrize("how", ["taken over", "expired"])
async def test_redis_refuses_the_writes_of_a_holder_that_lost_the_lock(
    redis_session: SessionFactory, redis_client: Any, how: str
) -> None:
    session: Any = await redis_session()
    lock_key = f"{session.session_key}:lock"
    with pytest.raises(SessionLockLost):
        async with session.exclusive():
            await session.add_items([{"n": 1}])
            if how == "taken over":
                await redis_client.set(lock_key, "another holder's token")
            else:
                await redis_client.delete(lock_key)  # as its expiry does
            for write in (
                lambda: session.add_items([{"n": 2}]),
                session.pop_item,
                session.clear_session,
            ):
                with pytest.raises(SessionLockLost, match="lost"):
                    await write()
    assert await session.get_items() == [{"n": 1}]
    if how == "taken over":  # leaving the block left the new holder's lock alone
        assert await redis_client.get(lock_key) == b"another holder's token"
    # Outside the block the session writes unfenced again.
    await redis_client.delete(lock_key)
    await session.add_items([{"n": 3}])
    assert await session.get_items() == [{"n": 1}, {"n": 3}]


@pytest.mark.postgres
async def test_postgres_reports_a_lock_lost_with_its_connection(
    postgres_session: SessionFactory, postgres_engine: Any
) -> None:
    from agentmem.sql._locks import advisory_key

    session: Any = await postgres_session()
    key = advisory_key(session.table_prefix, session.session_id)
    with pytest.raises(SessionLockLost):
        async with session.exclusive(), postgres_engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            # The lock's connection dies (an idle-session timeout, a failover): the server
            # drops the lock with it (terminate waits until the backend is gone), and another
            # holder (here: this connection) may take it at once.
            killed = await raw.fetchval(
                "SELECT pg_terminate_backend(pid, 60000) FROM pg_locks WHERE locktype = "
                "'advisory' AND granted AND (classid::bigint << 32 | objid::bigint) = $1",
                key,
            )
            assert killed
            assert await raw.fetchval("SELECT pg_try_advisory_lock($1)", key)
            assert await raw.fetchval("SELECT pg_advisory_unlock($1)", key)
    async with session.exclusive(timeout=HELD_ELSEWHERE):
        await session.add_items([{"after": "lost"}])
    assert await session.get_items() == [{"after": "lost"}]


@pytest.mark.postgres
async def test_postgres_holds_the_lock_in_a_transaction_without_snapshot_or_xid(
    postgres_session: SessionFactory, postgres_server: Any
) -> None:
    """The lock's transaction stays open, idle, for the block: it holds no snapshot (it does
    not hold back vacuum) and no transaction id, and it is gone once the block ends."""
    from agentmem.sql._locks import advisory_key

    session: Any = await postgres_session()
    key = advisory_key(session.table_prefix, session.session_id)
    holder = (
        "SELECT a.state, a.backend_xid, a.backend_xmin FROM pg_locks l JOIN pg_stat_activity a "
        "USING (pid) WHERE l.locktype = 'advisory' AND l.granted "
        "AND (l.classid::bigint << 32 | l.objid::bigint) = $1"
    )
    async with session.exclusive():
        await session.add_items([{"n": 1}])
        rows = await postgres_server.fetch(holder, key)
    assert [tuple(row) for row in rows] == [("idle in transaction", None, None)]
    assert await postgres_server.fetch(holder, key) == []
    assert await session.get_items() == [{"n": 1}]


@pytest.mark.postgres
async def test_postgres_reports_a_lock_ended_by_idle_in_transaction_session_timeout(
    postgres_url: str, postgres_server: Any
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import SQLAlchemySession
    from agentmem.sql._locks import advisory_key

    settings = {"idle_in_transaction_session_timeout": "100"}
    engine = create_async_engine(postgres_url, connect_args={"server_settings": settings})
    session = SQLAlchemySession(engine, unique_id("idle"))
    key = advisory_key(session.table_prefix, session.session_id)
    held = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND (classid::bigint << 32 | objid::bigint) = $1"
    )
    try:
        with pytest.raises(SessionLockLost):
            async with session.exclusive():
                await session.add_items([{"n": 1}])
                # The server ends the lock's idle transaction, and the lock with it.
                deadline = asyncio.get_running_loop().time() + 120
                while await postgres_server.fetchval(held, key):
                    assert asyncio.get_running_loop().time() < deadline, "the lock outlived it"
                    await asyncio.sleep(0.05)
        assert await session.get_items() == [{"n": 1}]
        await session.clear_session()
    finally:
        await session.close()
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_blocks_beyond_the_pool_never_starve_their_statements(
    postgres_url: str,
) -> None:
    """More concurrent blocks than the pool has connections, each holding its lock's connection
    and running statements that need another: locks never take the whole pool, so every block
    ends (without the bound, all connections are held by locks and no statement gets one)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import SQLAlchemySession

    engine = create_async_engine(postgres_url, pool_size=2, max_overflow=1)
    prefix = unique_id("pool")
    sessions = [SQLAlchemySession(engine, f"{prefix}-{n}") for n in range(8)]
    inside = 0
    most_inside = 0

    async def turn(session: SQLAlchemySession) -> None:
        nonlocal inside, most_inside
        async with session.exclusive(timeout=300):
            inside += 1
            most_inside = max(most_inside, inside)
            await session.add_items([{"n": len(await session.get_items())}])
            await asyncio.sleep(0)
            inside -= 1

    try:
        await asyncio.gather(*(turn(session) for session in sessions for _ in range(3)))
        for session in sessions:
            assert await session.get_items() == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert most_inside == 1  # half of a pool of 3 connections: one lock at a time
    finally:
        for session in sessions:
            await session.clear_session()
            await session.close()
        await engine.dispose()


@pytest.mark.sqlite
async def test_threads_with_their_own_event_loops_take_turns(tmp_path: Path) -> None:
    from agentmem import SQLiteSession

    path, session_id = tmp_path / "threads.db", unique_id("threads")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        async def run() -> None:
            session = SQLiteSession(session_id, path)
            async with session, session.exclusive():
                held.set()
                await asyncio.to_thread(release.wait, 120)
                await session.add_items([{"by": "thread"}])

        asyncio.run(run())

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert await asyncio.to_thread(held.wait, 120)
        async with SQLiteSession(session_id, path) as session:
            with pytest.raises(SessionLockTimeout):
                async with session.exclusive(timeout=HELD_ELSEWHERE):
                    pytest.fail("ran while another thread held the lock")
            async with asyncio.TaskGroup() as group:
                group.create_task(asyncio.to_thread(release.set))

                async def take() -> None:
                    async with session.exclusive(timeout=120):
                        assert await session.get_items() == [{"by": "thread"}]

                group.create_task(take())
    finally:
        release.set()
        await asyncio.to_thread(thread.join)


@pytest.fixture
async def redis_server(redis_client: Any) -> Any:
    """The Redis client the queue is read with (this run's keys are deleted afterwards)."""
    return redis_client


@pytest.fixture
async def postgres_server(postgres_url: str) -> AsyncIterator[Any]:
    """An asyncpg connection to the test database on the PostgreSQL server itself."""
    import asyncpg

    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    yield conn
    await conn.close()


@pytest.mark.slow
@pytest.mark.sqlite
async def test_sqlite_file_waiters_in_other_processes_get_the_lock_in_order(
    tmp_path: Path,
) -> None:
    backend = Backend("sqlite-file", str(tmp_path / "queue.db"))
    await waiters_take_turns_in_order(backend, None, tmp_path / "order.log")


@pytest.mark.slow
@pytest.mark.postgres
async def test_postgres_waiters_in_other_processes_get_the_lock_in_order(
    postgres_url: str, postgres_server: Any, tmp_path: Path
) -> None:
    backend = Backend("postgres", postgres_url)
    await waiters_take_turns_in_order(backend, postgres_server, tmp_path / "order.log")


@pytest.mark.slow
@pytest.mark.redis
async def test_redis_waiters_in_other_processes_get_the_lock_in_order(
    redis_server: Any, tmp_path: Path
) -> None:
    backend = Backend("redis", redis_url=REDIS_URL, prefix=REDIS_PREFIX)
    await waiters_take_turns_in_order(backend, redis_server, tmp_path / "order.log")


@pytest.mark.slow
@pytest.mark.cluster
async def test_redis_cluster_waiters_in_other_processes_get_the_lock_in_order(
    redis_cluster: Any, tmp_path: Path
) -> None:
    from redis.asyncio import RedisCluster

    backend = Backend("redis-cluster", redis_url=cluster_url(redis_cluster), prefix=REDIS_PREFIX)
    client = RedisCluster.from_url(str(redis_cluster.url))
    try:
        await waiters_take_turns_in_order(backend, client, tmp_path / "order.log")
    finally:
        await client.aclose()
