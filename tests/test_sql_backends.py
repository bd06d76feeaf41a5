"""What is the SQL backends' own: real multi-process writers and poppers, persistence, engine
ownership and sharing, and use from one event loop after another."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentmem import SQLAlchemySession, SQLiteSession
from tests import _workers
from tests._backends import Backend, new_postgres_database
from tests.conftest import run_in_new_loop, unique_id

WRITERS = 8
ADDS_PER_WRITER = 200


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A store several processes can open: a SQLite file or PostgreSQL."""
    if request.param == "sqlite":
        return Backend("sqlite-file", str(tmp_path / "shared.db"))
    return Backend("postgres", request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(WRITERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _read(backend: Backend, session_id: str) -> list[Any]:
    async def read() -> list[Any]:
        async with backend.open(session_id) as session:  # type: ignore[attr-defined]
            return await session.get_items()

    return run_in_new_loop(read)


@pytest.mark.slow
def test_eight_processes_append_to_one_session(
    shared_store: Backend, processes: ProcessPoolExecutor
) -> None:
    session_id = unique_id("mp")
    futures = [
        processes.submit(_workers.write_items, shared_store, session_id, w, ADDS_PER_WRITER)
        for w in range(WRITERS)
    ]
    assert [f.result(timeout=300) for f in futures] == [ADDS_PER_WRITER] * WRITERS
    items = _read(shared_store, session_id)
    assert len(items) == WRITERS * ADDS_PER_WRITER
    for w in range(WRITERS):
        assert [item["i"] for item in items if item["w"] == w] == list(range(ADDS_PER_WRITER))


@pytest.mark.slow
def test_processes_popping_one_session_get_each_item_once(
    shared_store: Backend, processes: ProcessPoolExecutor
) -> None:
    session_id = unique_id("pop")
    total = 600

    async def fill() -> None:
        async with shared_store.open(session_id) as session:  # type: ignore[attr-defined]
            await session.add_items([{"n": n} for n in range(total)])

    run_in_new_loop(fill)
    futures = [
        processes.submit(_workers.pop_until_empty, shared_store, session_id) for _ in range(6)
    ]
    popped = [item["n"] for f in futures for item in f.result(timeout=300)]
    assert sorted(popped) == list(range(total))
    assert _read(shared_store, session_id) == []


@pytest.mark.sqlite
def test_sqlite_file_history_survives_the_process(tmp_path: Path) -> None:
    store = Backend("sqlite-file", str(tmp_path / "survives.db"))
    session_id = unique_id()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        pool.submit(_workers.write_items, store, session_id, 0, 3).result(timeout=120)
    assert _read(store, session_id) == [{"w": 0, "i": i} for i in range(3)]


@pytest.mark.sqlite
async def test_many_sessions_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "many.db"
    sessions = [SQLiteSession(f"user_{n}", path) for n in range(20)]
    for n, session in enumerate(sessions):
        await session.add_items([{"user": n}])
    for n, session in enumerate(sessions):
        assert await session.get_items() == [{"user": n}]
        await session.close()


@pytest.mark.sqlite
async def test_the_reserved_session_columns_are_left_null(tmp_path: Path) -> None:
    """``sessions.expires_at`` and ``metadata_json`` are reserved: no operation writes them."""
    import sqlite3

    path = tmp_path / "reserved.db"
    async with SQLiteSession("s", path) as session:
        await session.add_items([{"n": 1}, {"n": 2}])
        await session.pop_item()
        await session.get_items()
        await session.clear_session()
        await session.add_items([{"n": 3}])
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT created_at, updated_at, expires_at, metadata_json FROM sessions")
        ((created, updated, expires, metadata),) = rows.fetchall()
    assert created and updated
    assert (expires, metadata) == (None, None)


@pytest.mark.sqlite
async def test_memory_sessions_are_private_to_their_object() -> None:
    async with SQLiteSession("same") as first, SQLiteSession("same") as second:
        await first.add_items([{"n": 1}])
        assert await second.get_items() == []


@pytest.mark.sqlite
async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SQLiteSession("x", tmp_path / "no" / "such" / "dir.db")


@pytest.mark.sqlite
def test_sqlite_session_works_from_one_event_loop_after_another(tmp_path: Path) -> None:
    for target in (":memory:", str(tmp_path / "loops.db")):
        session = SQLiteSession(unique_id(), target)
        asyncio.run(session.add_items([{"turn": 1}]))
        asyncio.run(session.add_items([{"turn": 2}]))
        assert asyncio.run(session.get_items()) == [{"turn": 1}, {"turn": 2}]
        asyncio.run(session.close())


@pytest.mark.postgres
def test_from_url_works_from_one_event_loop_after_another(postgres_url: str) -> None:
    session = SQLAlchemySession.from_url(unique_id(), url=postgres_url)
    asyncio.run(session.add_items([{"turn": 1}]))
    asyncio.run(session.add_items([{"turn": 2}]))
    assert asyncio.run(session.get_items()) == [{"turn": 1}, {"turn": 2}]
    assert asyncio.run(session.pop_item()) == {"turn": 2}
    asyncio.run(session.close())


@pytest.mark.postgres
async def test_from_url_sessions_share_one_engine_per_url(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    sessions = [SQLAlchemySession.from_url(unique_id(), url=plain) for _ in range(50)]
    engines = {id(s.engine) for s in sessions}
    assert len(engines) == 1
    await asyncio.gather(*(s.add_items([{"n": 1}]) for s in sessions))
    engine = sessions[0].engine
    assert engine.pool.checkedout() == 0
    for s in sessions[:-1]:
        await s.clear_session()
        await s.close()
    assert await sessions[-1].get_items() == [{"n": 1}]  # still open: the engine lives on
    await sessions[-1].clear_session()
    await sessions[-1].close()


@pytest.mark.postgres
async def test_closing_a_session_leaves_the_callers_engine_open(
    postgres_engine: AsyncEngine,
) -> None:
    async with SQLAlchemySession(postgres_engine, unique_id()) as session:
        await session.add_items([{"n": 1}])
        await session.clear_session()
    other = SQLAlchemySession(postgres_engine, unique_id())
    assert await other.get_items() == []


@pytest.mark.postgres
async def test_a_killed_connection_is_replaced_and_reads_retry(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url, pool_size=1, max_overflow=0)
    try:
        session = SQLAlchemySession(engine, unique_id())
        await session.add_items([{"n": 1}])
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pid = raw.driver_connection.get_server_pid()
        admin = create_async_engine(postgres_url)
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        await admin.dispose()
        assert await session.get_items() == [{"n": 1}]  # retried on a new connection
        await session.add_items([{"n": 2}])
        assert await session.pop_item() == {"n": 2}
        await session.clear_session()
    finally:
        await engine.dispose()


async def test_engine_must_be_an_async_engine() -> None:
    with pytest.raises(TypeError, match="AsyncEngine"):
        SQLAlchemySession("not an engine", unique_id())  # type: ignore[call-overload]


def test_from_url_refuses_other_databases() -> None:
    with pytest.raises(ValueError, match="supports postgresql\\+asyncpg, sqlite\\+aiosqlite"):
        SQLAlchemySession.from_url(unique_id(), url="mysql+aiomysql://u@h/db")


@pytest.mark.sqlite
def test_from_url_sqlite_uses_wal_and_works_across_loops(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "from_url.db"
    session = SQLAlchemySession.from_url(unique_id(), url=f"sqlite:///{path}", create_tables=True)
    asyncio.run(session.add_items([{"turn": 1}]))
    asyncio.run(session.add_items([{"turn": 2}]))
    assert asyncio.run(session.get_items()) == [{"turn": 1}, {"turn": 2}]
    asyncio.run(session.close())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.sqlite
async def test_a_callers_sqlite_engine_gets_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "callers.db"
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        session = SQLAlchemySession(engine, unique_id(), create_tables=True)
        await session.add_items([{"n": 1}])
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 30000
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 1  # NORMAL
    finally:
        await engine.dispose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.sqlite
async def test_a_callers_sqlite_engine_is_not_rolled_back_on_return_after_agentmem_calls(
    tmp_path: Path,
) -> None:
    """Each operation ends its own transaction, so the pool's rollback on return (one more
    thread hop) is skipped: the pool's reset event says the transaction was reset already, and
    the connections serve the caller's own transactions as before."""
    from sqlalchemy import event, text

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'callers.db'}")
    resets: list[bool] = []
    event.listen(
        engine.sync_engine.pool,
        "reset",
        lambda _conn, _record, state: resets.append(state.transaction_was_reset),
    )
    try:
        session = SQLAlchemySession(engine, unique_id(), create_tables=True)
        await session.add_items([{"n": 1}, {"n": 2}])
        resets.clear()
        await session.add_items([{"n": 3}])
        assert await session.get_items(2) == [{"n": 2}, {"n": 3}]
        assert await session.pop_item() == {"n": 3}
        assert resets == [True, True, True]
        async with engine.connect() as conn:  # a caller's transaction, left open: rolled back
            await conn.execute(text("CREATE TABLE callers (n INTEGER)"))
            await conn.execute(text("INSERT INTO callers VALUES (1)"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM callers"))).scalar() == 0
        assert await session.get_items() == [{"n": 1}, {"n": 2}]
    finally:
        await engine.dispose()


@pytest.mark.sqlite
async def test_a_loop_of_in_memory_calls_can_be_cancelled_and_lets_others_run() -> None:
    async with SQLiteSession(unique_id()) as session:
        others_ran = 0

        async def loop() -> None:
            while True:
                await session.add_items([{"n": 1}])

        async def other() -> None:
            nonlocal others_ran
            for _ in range(5):
                others_ran += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(loop())
        await asyncio.gather(other(), asyncio.sleep(0.01))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert others_ran == 5
        assert all(item == {"n": 1} for item in await session.get_items())


@pytest.mark.sqlite
async def test_a_cancelled_call_on_a_file_is_over_when_the_cancel_is_raised(
    tmp_path: Path,
) -> None:
    """The write waits in its thread for another connection's write lock when its task is
    cancelled: the cancel is raised only once the write has committed, and the thread serves
    the next call."""
    path = tmp_path / "cancel.db"
    async with SQLiteSession(unique_id(), path) as session:
        await session.add_items([{"n": 0}])
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            task = asyncio.create_task(session.add_items([{"n": 1}]))
            for _ in range(500):  # until the write is inside SQLite's busy wait
                await asyncio.sleep(0.01)
                if session._database.lock.locked():
                    break
            assert session._database.lock.locked()
            task.cancel()
            await asyncio.sleep(0.05)
            assert not task.done(), "the cancel was raised while the write could still commit"
        finally:
            blocker.rollback()
            blocker.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await session.get_items() == [{"n": 0}, {"n": 1}]


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database of this test alone, dropped afterwards."""
    with new_postgres_database(postgres_url, unique_id("fresh").replace("-", "_")) as url:
        yield url


@pytest.mark.postgres
def test_processes_starting_together_with_create_tables_on_a_fresh_database(
    fresh_postgres_url: str,
) -> None:
    """The migration takes an advisory lock: one process creates the tables, the others wait
    for it and find them; every first call succeeds."""
    count = 6
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(count)
    with ProcessPoolExecutor(count, mp_context=context) as pool:
        futures = [
            pool.submit(
                _workers.first_call_with_create_tables, fresh_postgres_url, f"p{n}", barrier
            )
            for n in range(count)
        ]
        outcomes = [future.result(timeout=300) for future in futures]
    assert outcomes == ["ok"] * count
    for n in range(count):
        assert _read(Backend("postgres", fresh_postgres_url), f"p{n}") == [{"from": f"p{n}"}]
