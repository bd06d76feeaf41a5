"""Real failures of real servers: PostgreSQL backends killed and the server restarted, Redis
clients killed, the server restarted and flushed, a writer process SIGKILLed in the middle of a
large batch, tasks cancelled mid-call. Afterwards the history is what the callers were told."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import pytest
import redis.exceptions
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agentmem import CallTimeoutError, RedisSession, SQLAlchemySession
from tests._servers import PostgresServer, RedisServer
from tests.conftest import run_in_new_loop, unique_id
from tests.reliability import _children, _load
from tests.reliability._stores import Store

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


async def _until(condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 60) -> None:
    """Poll ``condition`` until it holds (the deadline is a safety net, not a timing)."""
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, f"still waiting, after {seconds} s, for {what}"
        await asyncio.sleep(0.01)


async def _backends(admin: asyncpg.Connection, application_name: str) -> int:
    count: int = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application_name
    )
    return count


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

        async def all_gone() -> bool:
            return await _backends(pg_admin, name) == 0

        await _until(all_gone, "the killed backends to exit")
        await asyncio.sleep(0.2)  # the client's loop reads the end of each socket
        # Nothing was sent on the dead connections: every call may use a new one.
        await session.add_items([{"n": 1}])
        assert await session.pop_item() == {"n": 1}
        await session.add_items([{"n": 2}])
        assert await session.get_items() == [{"n": 0}, {"n": 2}]
        await session.clear_session()
    finally:
        await engine.dispose()


KILLS = 10
"""Connections the fault tests kill under load before they stop the writers."""


async def _kill_repeatedly(admin: asyncpg.Connection, application_name: str, outcome: Any) -> int:
    """Kill the writers' connections every 50 ms until ``KILLS`` were killed, then stop the
    writers (which cannot finish by themselves): the kills always land mid-load."""
    killed = 0
    for _ in range(1200):  # a minute at most: a safety net
        await asyncio.sleep(0.05)
        killed += await _terminate(admin, application_name)
        if killed >= KILLS:
            break
    outcome.stop = True
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

        async def load() -> None:
            await asyncio.gather(
                *(_load.write(s, f"w{n}", 100_000, outcome) for n, s in enumerate(sessions[:6])),
                *(_load.pop(s, 40, outcome) for s in sessions[6:]),
            )

        _, killed = await asyncio.gather(load(), _kill_repeatedly(pg_admin, name, outcome))
        assert killed >= KILLS
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
async def test_a_restarted_postgres_server(private_postgres: PostgresServer) -> None:
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
        outcome.stop = True
        await asyncio.gather(*writers)
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


@pytest.mark.postgres
async def test_a_stopped_postgres_server_times_out_one_call_and_keeps_the_rest_of_the_pool(
    private_postgres: PostgresServer,
) -> None:
    """SIGSTOP on the whole server: a read gets ``CallTimeoutError`` after ``call_timeout``
    (once: not retried), only its connection is dropped, and after SIGCONT calls work again on
    the pool's other connection. A first call that must open a connection times out too."""
    name = unique_id("app")
    engine = _engine(private_postgres.url, name, pool_size=2)
    session = SQLAlchemySession(engine, unique_id("stopped"), call_timeout=2)
    new_pool = SQLAlchemySession.from_url(
        session.session_id,
        url=private_postgres.url,
        call_timeout=2,
        engine_kwargs={"pool_size": 1, "max_overflow": 0},
    )
    admin = await asyncpg.connect(_plain(private_postgres.url), timeout=10)

    async def backends() -> set[int]:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", name
        )
        return {row[0] for row in rows}

    try:
        await session.add_items([{"n": 0}])
        await asyncio.gather(session.get_items(), session.get_items())  # two pooled connections
        before = await backends()
        assert len(before) == 2
        private_postgres.signal_processes(signal.SIGSTOP)
        try:
            async with asyncio.timeout(60):  # the safety net, far above call_timeout
                started = time.monotonic()
                with pytest.raises(CallTimeoutError) as raised:
                    await session.get_items()
                waited = time.monotonic() - started
                with pytest.raises(CallTimeoutError):
                    await new_pool.add_items([{"n": "lost"}])  # its connection never opens
        finally:
            private_postgres.signal_processes(signal.SIGCONT)
        assert isinstance(raised.value, TimeoutError)
        message = str(raised.value)
        assert "call_timeout=2 s" in message and f"127.0.0.1:{private_postgres.port}" in message
        assert waited < 2 * 2, f"waited {waited:.1f} s: the timed-out read was retried"
        # Both connections are checked out: the timed-out one is new, the other one is kept.
        await session.add_items([{"n": 1}])
        assert (
            await asyncio.gather(session.get_items(), session.get_items())
            == [[{"n": 0}, {"n": 1}]] * 2
        )
        after = await backends()
        assert len(after) == 2
        assert len(before & after) == 1, "the whole pool was replaced for one slow call"
        assert await new_pool.get_items() == [{"n": 0}, {"n": 1}]
        await session.clear_session()
    finally:
        await new_pool.close()
        await admin.close()
        await engine.dispose()


# --- Redis (a private server: the shared one is never restarted or flushed) --------------------


def _redis_sessions(server: RedisServer, session_id: str, count: int) -> list[RedisSession]:
    return [
        RedisSession(session_id, server.url, max_connections=4, socket_connect_timeout=1)
        for _ in range(count)
    ]


@pytest.mark.redis
async def test_redis_clients_killed_under_load_lose_and_duplicate_nothing(
    private_redis: RedisServer,
) -> None:
    sessions = _redis_sessions(private_redis, unique_id("killed"), 8)
    outcome = _load.Outcome()
    killed = 0

    async def load() -> None:
        await asyncio.gather(
            *(_load.write(s, f"w{n}", 1_000_000, outcome) for n, s in enumerate(sessions[:6])),
            *(_load.pop(s, 100, outcome) for s in sessions[6:]),
        )

    async def kill() -> None:
        """Kill clients every 20 ms until ``KILLS`` were killed, then stop the writers (which
        cannot finish by themselves)."""
        nonlocal killed
        async with Redis.from_url(private_redis.url) as admin:
            for _ in range(3000):  # a minute at most: a safety net
                await asyncio.sleep(0.02)
                killed += await admin.client_kill_filter(_type="normal", skipme=True)
                if killed >= KILLS:
                    break
        outcome.stop = True

    await asyncio.gather(load(), kill())
    assert killed >= KILLS
    history = await sessions[0].get_items()
    _load.check_history(history + outcome.popped, outcome)
    _load.check_order(history)
    for error in outcome.errors:
        assert isinstance(error, redis.exceptions.ConnectionError), repr(error)
    for session in sessions:
        await session.close()


@pytest.mark.redis
async def test_redis_down_raises_clear_errors_and_a_restart_keeps_what_was_acknowledged(
    private_redis: RedisServer,
) -> None:
    sessions = _redis_sessions(private_redis, unique_id("restart"), 3)
    outcome = _load.Outcome()
    writers = [
        asyncio.create_task(_load.write(s, f"w{n}", 1_000_000, outcome, size=3))
        for n, s in enumerate(sessions)
    ]
    await asyncio.sleep(0.3)
    private_redis.kill()
    for call in (
        sessions[0].get_items(),
        sessions[0].add_items([{"x": 1}]),
        sessions[0].pop_item(),
    ):
        with pytest.raises(redis.exceptions.ConnectionError, match=str(private_redis.port)):
            await call
    await asyncio.to_thread(private_redis.start)
    await asyncio.sleep(0.3)
    outcome.stop = True
    await asyncio.gather(*writers)
    history = await sessions[1].get_items()
    _load.check_history(history, outcome, size=3)
    _load.check_order(history)
    assert any(outcome.failed.values()), "the restart interrupted no write"
    await sessions[0].add_items([{"after": True}])
    assert await sessions[2].pop_item() == {"after": True}
    for session in sessions:
        await session.close()


@pytest.mark.redis
async def test_flushall_and_script_flush_mid_run(private_redis: RedisServer) -> None:
    """Writes go on without an error; what remains is, per writer, the batches acknowledged after
    the flush, whole and in order (the flushed ones are gone, as Redis was told).

    The flush comes once every writer has 3 batches acknowledged, and the writers (which cannot
    finish by themselves) stop once each has 3 more: the flush always lands mid-run."""
    sessions = _redis_sessions(private_redis, unique_id("flush"), 4)
    names = [f"w{n}" for n in range(len(sessions))]
    outcome = _load.Outcome()
    writers = [
        asyncio.create_task(_load.write(s, name, 1_000_000, outcome))
        for name, s in zip(names, sessions, strict=True)
    ]

    def acknowledged(counts: dict[str, int]) -> Callable[[], Awaitable[bool]]:
        async def condition() -> bool:
            return all(len(outcome.stored[name]) >= counts[name] for name in names)

        return condition

    try:
        await _until(acknowledged(dict.fromkeys(names, 3)), "3 batches from every writer")
        async with Redis.from_url(private_redis.url) as admin:
            await admin.flushall()
            await admin.script_flush()  # the next EVALSHA falls back to EVAL
        after = {name: len(outcome.stored[name]) + 3 for name in names}
        await _until(acknowledged(after), "3 more batches from every writer")
    finally:
        outcome.stop = True
        await asyncio.gather(*writers)
    assert outcome.errors == []
    history = await sessions[0].get_items()
    _load.check_order(history)
    for writer, numbers in outcome.stored.items():
        kept = sorted({item["b"] for item in history if item["w"] == writer})
        assert kept == numbers[len(numbers) - len(kept) :], f"{writer} lost a batch after the flush"
    assert len(history) % _load.BATCH == 0
    assert 0 < len(history) < sum(map(len, outcome.stored.values())) * _load.BATCH
    for session in sessions:
        await session.close()


# --- cancellation ------------------------------------------------------------------------------


async def _cancel_soon(call: Coroutine[Any, Any, Any], delay: float) -> None:
    task = asyncio.create_task(call)
    await asyncio.sleep(delay)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_cancelled_adds_leave_whole_batches_or_nothing(any_store: Store) -> None:
    session = any_store.open(unique_id("cancel"))
    try:
        for number, delay in enumerate((0, 0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)):
            await _cancel_soon(session.add_items(_load.batch("c", number, 2000)), delay)
        await session.add_items([{"w": "after", "b": 0, "i": 0}])
        history = await session.get_items()
        assert {"w": "after", "b": 0, "i": 0} in history  # the session works on
        batches: dict[int, list[int]] = {}
        for item in history:
            if item["w"] == "c":
                batches.setdefault(item["b"], []).append(item["i"])
        for number, indexes in batches.items():
            assert indexes == list(range(2000)), f"cancelled batch {number} is half there"
        await session.clear_session()
    finally:
        await session.close()  # type: ignore[attr-defined]


async def test_cancelled_pops_only_ever_remove_the_newest(any_store: Store) -> None:
    session = any_store.open(unique_id("cancel"))
    try:
        items = [{"n": n} for n in range(200)]
        await session.add_items(items)
        for delay in (0, 0, 0.0005, 0.001, 0.002, 0.005, 0.01):
            await _cancel_soon(session.pop_item(), delay)
        await session.add_items([{"n": "after"}])
        history = await session.get_items()
        assert history[-1] == {"n": "after"}
        assert history[:-1] == items[: len(history) - 1]  # a prefix: no hole, no reordering
        assert len(history) - 1 >= 200 - 7
        await session.clear_session()
    finally:
        await session.close()  # type: ignore[attr-defined]


async def test_a_cancelled_caller_is_cancelled(any_store: Store) -> None:
    """``task.cancel()`` during a loop of calls ends the loop with ``CancelledError``.

    The cancel comes once the loop has made 3 of its 300 calls, after 0 to 9 more turns of the
    event loop (a different point inside the 4th call each time): at most one call per turn,
    so the loop cannot reach its end first, however fast or slow the machine.
    """
    session = any_store.open(unique_id("cancel"))
    finished = 0
    try:
        for turns in range(10):
            third_call_done = asyncio.Event()

            async def loop(third_call_done: asyncio.Event = third_call_done) -> None:
                for n in range(300):
                    await session.add_items([{"n": n}])
                    if n == 2:
                        third_call_done.set()

            task = asyncio.create_task(loop())
            await third_call_done.wait()
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            finished += not task.cancelled()
        await session.clear_session()
    finally:
        await session.close()  # type: ignore[attr-defined]
    assert finished == 0, f"{finished} of 10 cancelled loops ran to the end: the cancel was lost"


# --- a writer process SIGKILLed mid-batch ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_a_writer_killed_mid_batch_leaves_whole_batches(sql_store: Store, delay: float) -> None:
    size = 20_000
    session_id = unique_id("sigkill")
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    child = context.Process(
        target=_children.add_large_batches_forever,
        args=(sql_store, session_id, size, started),
    )
    child.start()
    try:
        assert started.wait(120), "the writer never got to its second batch"
        time.sleep(delay)  # somewhere inside the second batch's add_items, or later
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()

    async def check() -> None:
        async with sql_store.open(session_id) as session:  # type: ignore[attr-defined]
            history = await session.get_items()
            numbers = sorted({item["b"] for item in history})
            assert numbers == list(range(len(numbers))) and numbers, "a batch is missing"
            assert history == [
                item for number in numbers for item in _load.batch("big", number, size)
            ], "a batch is half written"
            await session.add_items([{"after": True}])  # the store works on
            assert await session.pop_item() == {"after": True}
            await session.clear_session()

    run_in_new_loop(check)


# --- the cached mode through Redis faults ------------------------------------------------------


@pytest.mark.cached
async def test_the_cached_mode_works_from_sql_while_redis_dies_restarts_and_is_flushed(
    private_redis: RedisServer, postgres_url: str
) -> None:
    store = Store("cached", postgres_url, private_redis.url, unique_id("rel"))
    session_id = unique_id("cached")
    sessions = [store.open(session_id) for _ in range(3)]
    outcome = _load.Outcome()
    writers = [
        asyncio.create_task(_load.write(s, f"w{n}", 1_000_000, outcome))
        for n, s in enumerate(sessions)
    ]
    seen: list[int] = []
    for fault in (private_redis.kill, private_redis.start, None):
        await asyncio.sleep(0.3)
        seen.append(len(await sessions[0].get_items()))  # served throughout
        if fault is None:
            async with Redis.from_url(private_redis.url) as admin:
                await admin.flushall()
        else:
            await asyncio.to_thread(fault)
    await asyncio.sleep(0.3)
    outcome.stop = True
    await asyncio.gather(*writers)
    assert outcome.errors == []
    assert seen == sorted(seen)
    history = await sessions[1].get_items()
    async with (
        store.open(session_id) as fresh,
        Store("postgres", postgres_url).open(session_id) as sql,
    ):  # type: ignore[attr-defined]
        assert await fresh.get_items() == history
        assert await sql.get_items() == history  # the cache agrees with the store of record
    _load.check_history(history, outcome)
    _load.check_order(history)
    await sessions[0].clear_session()
    for session in sessions:
        await session.close()  # type: ignore[attr-defined]
