"""CachedSession: reads from Redis, writes to PostgreSQL first, never stale, Redis optional.

Real PostgreSQL and Redis throughout. Races are forced with hooks on the cached session (its
``_load`` and ``_finish`` steps), never with sleeps. Tests that stop, flush or pause a Redis use
one of their own (``redis-server`` on a free port) or the shared server's db 13.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.exceptions
from redis.asyncio import Redis

from agentmem import CachedSession, SQLAlchemySession, SQLiteSession
from tests._servers import RedisServer, free_port, redis_servers
from tests.conftest import REDIS_PREFIX, REDIS_URL, unique_id

pytestmark = pytest.mark.cached

PREFIX = f"{REDIS_PREFIX}:cache"
FLUSHABLE_DB = 13  # no other test uses it: the tests here may FLUSHDB it


def _with_db(url: str, db: int) -> str:
    return f"{url.rsplit('/', 1)[0]}/{db}" if url.count("/") > 2 else f"{url}/{db}"


@pytest.fixture
async def make(postgres_engine: Any, redis_client: Any) -> AsyncIterator[Any]:
    """``make(session_id=None, cls=CachedSession, **kwargs)``: a cached session on PostgreSQL and
    this run's Redis keys, closed after the test."""
    made: list[CachedSession] = []

    def build(session_id: str | None = None, cls: type[CachedSession] = CachedSession, **kw: Any):
        kw.setdefault("key_prefix", PREFIX)
        if "client" not in kw:
            kw.setdefault("redis_url", REDIS_URL)
        store = SQLAlchemySession(postgres_engine, session_id or unique_id("cached"))
        session = cls(store, **kw)
        made.append(session)
        return session

    yield build
    for session in made:
        if isinstance(session, HeldEnds):
            session.release.set()
        await bare(session, postgres_engine).clear_session()
        await session.close()


def bare(session: CachedSession, engine: Any) -> SQLAlchemySession:
    """The same session on the SQL store alone, behind the cache's back."""
    return SQLAlchemySession(engine, session.session_id)


async def cached_list(client: Redis, session: CachedSession) -> list[str] | None:
    """The cache's header and items' JSON, or ``None`` when none are cached; checks that the
    state's header and offsets describe the string."""
    data = await client.get(session.items_key)
    if data is None:
        return None
    header, ends = await client.hmget(session.state_key, ["c", "e"])
    texts = [orjson.dumps(item).decode() for item in orjson.loads(b"[" + data[1:] + b"]")]
    if data[:1] != b"w":
        assert header == data[:1]
        assert len(ends) == 4 * len(texts)
        assert (int.from_bytes(ends[-4:]) if ends else 1) == len(data)
    return [data[:1].decode(), *texts]


async def ended(session: CachedSession) -> None:
    """Wait until the cache has heard of every write of ``session`` that returned (the ends it
    owes are delivered by a task of its own when no later call carries them)."""
    if session._ender is not None:
        await session._ender
    assert session._ends == []


# --- 1. reads from Redis when cached; a miss loads from SQL and fills -----------------------


async def test_a_miss_fills_and_later_reads_are_served_from_redis(
    make: Any, postgres_engine: Any, redis_client: Redis
) -> None:
    session = make()
    await session.add_items([{"n": 1}, {"n": 2}])
    assert await cached_list(redis_client, session) is None  # nothing cached before a read
    assert await session.get_items() == [{"n": 1}, {"n": 2}]
    assert await cached_list(redis_client, session) == ["c", '{"n":1}', '{"n":2}']
    # Changed behind the cache's back: a read that still returns the old state came from Redis.
    await bare(session, postgres_engine).add_items([{"n": "behind"}])
    assert await session.get_items() == [{"n": 1}, {"n": 2}]
    assert await session.get_items(limit=1) == [{"n": 2}]


async def test_an_empty_session_is_cached_as_empty(
    make: Any, postgres_engine: Any, redis_client: Redis
) -> None:
    session = make()
    assert await session.get_items() == []
    assert await cached_list(redis_client, session) == ["c"]
    await bare(session, postgres_engine).add_items([{"n": "behind"}])
    assert await session.get_items() == []


async def test_writes_keep_the_cache_warm(make: Any, redis_client: Redis) -> None:
    session = make()
    assert await session.get_items() == []
    await session.add_items([{"n": 1}, {"n": 2}, {"n": 3}])
    await ended(session)
    assert await cached_list(redis_client, session) == ["c", '{"n":1}', '{"n":2}', '{"n":3}']
    assert await session.pop_item() == {"n": 3}
    await ended(session)
    assert await cached_list(redis_client, session) == ["c", '{"n":1}', '{"n":2}']
    await session.clear_session()
    await ended(session)
    assert await cached_list(redis_client, session) == ["c"]
    assert await session.get_items() == []


async def test_only_the_newest_items_are_cached(
    make: Any, postgres_engine: Any, redis_client: Redis
) -> None:
    session = make(max_cached_items=3)
    await session.add_items([{"n": i} for i in range(5)])
    assert await session.get_items() == [{"n": i} for i in range(5)]  # from SQL
    assert await cached_list(redis_client, session) == ["p", '{"n":2}', '{"n":3}', '{"n":4}']
    await session.add_items([{"n": 5}])
    await ended(session)
    assert await cached_list(redis_client, session) == ["p", '{"n":3}', '{"n":4}', '{"n":5}']
    await bare(session, postgres_engine).pop_item()  # behind the cache's back: n=5 gone
    assert await session.get_items(limit=2) == [{"n": 4}, {"n": 5}]  # within the window: Redis
    assert await session.get_items(limit=4) == [{"n": i} for i in range(1, 5)]  # beyond: SQL
    assert await session.get_items() == [{"n": i} for i in range(5)]


async def test_in_place_updates_match_sql_at_every_limit(
    make: Any, postgres_engine: Any, redis_client: Redis
) -> None:
    import random

    rng = random.Random(4)
    session = make(max_cached_items=7)
    sql = bare(session, postgres_engine)
    texts = ["ü", "漢字", "🙂", "a,b", '"q"', "", "x" * 300]
    for step in range(60):
        roll = rng.random()
        if roll < 0.55:
            batch = [{"s": step, "t": rng.choice(texts)} for _ in range(rng.randint(1, 4))]
            await session.add_items(batch)
        elif roll < 0.9:
            await session.pop_item()
        elif roll < 0.95:
            await session.clear_session()
        expected = await sql.get_items()
        for limit in (None, *range(1, 10)):
            assert await session.get_items(limit) == (
                expected if limit is None else expected[-limit:]
            ), (step, limit)
        cached = await cached_list(redis_client, session)
        assert cached is not None and len(cached) - 1 <= 7 + 7 // 4  # the window's slack


async def test_ttl_is_set_by_fills_and_writes_never_by_hits(make: Any, redis_client: Redis) -> None:
    session = make(ttl=100)
    await session.add_items([{"n": 1}])
    await session.get_items()
    for key in (session.items_key, session.state_key):
        assert 0 < await redis_client.pttl(key) <= 100_000
    for limit in (None, 1):
        await redis_client.pexpire(session.items_key, 5_000)
        assert await session.get_items(limit) == [{"n": 1}]  # a hit
        # It leaves the expiry: a copy that a write missed is never kept alive by reading it.
        assert await redis_client.pttl(session.items_key) <= 5_000
    await session.add_items([{"n": 2}])  # a write sets it again
    await ended(session)
    assert await redis_client.pttl(session.items_key) > 5_000
    forever = make(ttl=None)
    await forever.get_items()
    assert await redis_client.pttl(forever.items_key) == -1


async def test_key_layout_and_ownership(make: Any, postgres_engine: Any) -> None:
    session = make("a{b}%c")
    assert session.session_id == "a{b}%c"
    tag = session.store_tag
    assert session.items_key == f"{PREFIX}:{tag}:{{a%7Bb%7D%25c}}:items"
    assert session.state_key == f"{PREFIX}:{tag}:{{a%7Bb%7D%25c}}:state"
    await session.close()
    assert session.store.closed  # the cached session owns its store
    async with make() as other:
        await other.add_items([{"n": 1}])
    assert other.closed and other.store.closed
    with pytest.raises(TypeError, match="SQL session"):
        CachedSession(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in-memory"):
        CachedSession(SQLiteSession("x"))
    with pytest.raises(ValueError, match="max_cached_items"):
        CachedSession(bare(session, postgres_engine), max_cached_items=0)


async def test_two_table_prefixes_in_one_database_never_share_cached_copies(
    make: Any, postgres_engine: Any, postgres_url: str, tmp_path: Path
) -> None:
    def cached(table_prefix: str) -> CachedSession:
        store = SQLAlchemySession(
            postgres_engine, "u1", table_prefix=table_prefix, create_tables=True
        )
        return CachedSession(store, REDIS_URL, key_prefix=PREFIX)

    a, b = cached("ta_"), cached("tb_")
    try:
        await a.add_items([{"tenant": "a"}])
        assert await a.get_items() == [{"tenant": "a"}]  # cached
        assert await b.get_items() == []
        await b.add_items([{"tenant": "b"}])
        assert await a.get_items() == [{"tenant": "a"}]
        assert await b.get_items() == [{"tenant": "b"}]
    finally:
        for session in (a, b):
            await session.clear_session()
            await session.close()
    # One store spelled two ways is one tag: every process must agree on the keys.
    same = SQLAlchemySession.from_url("u1", url=postgres_url, table_prefix="ta_")
    assert CachedSession(same, key_prefix=PREFIX).store_tag == a.store_tag
    path = tmp_path / "t.db"
    lite = CachedSession(SQLiteSession("u1", path), key_prefix=PREFIX)
    via_engine = SQLAlchemySession.from_url("u1", url=f"sqlite:///{path}")
    assert CachedSession(via_engine, key_prefix=PREFIX).store_tag == lite.store_tag
    other_file = CachedSession(SQLiteSession("u1", tmp_path / "u.db"), key_prefix=PREFIX)
    assert len({a.store_tag, b.store_tag, lite.store_tag, other_file.store_tag}) == 4
    for session in (same, lite, via_engine, other_file):
        await session.close()


async def test_session_settings_default_to_the_stores(postgres_engine: Any) -> None:
    store = SQLAlchemySession(postgres_engine, unique_id(), session_settings={"limit": 2})
    session = CachedSession(store, REDIS_URL, key_prefix=PREFIX)
    assert session.session_settings.limit == 2
    await session.close()


async def test_a_given_client_is_used_and_left_open(make: Any, tmp_path: Path) -> None:
    client = Redis.from_url(REDIS_URL)
    async with make(client=client) as session:
        await session.add_items([{"n": 1}])
        assert await session.get_items() == [{"n": 1}]
        assert await client.exists(session.items_key)
    assert await client.ping()
    await client.aclose()
    # A SQLite file store works as well.
    async with CachedSession(
        SQLiteSession(unique_id(), tmp_path / "c.db"), REDIS_URL, key_prefix=PREFIX
    ) as session:
        await session.add_items([{"n": 1}])
        assert await session.get_items() == [{"n": 1}]
        await session.clear_session()


# --- 2. writes: SQL first, cache after the commit ---------------------------------------------


async def test_every_write_is_in_sql_when_it_returns(make: Any, postgres_engine: Any) -> None:
    session = make()
    sql = bare(session, postgres_engine)
    await session.get_items()
    await session.add_items([{"n": 1}, {"n": 2}])
    assert await sql.get_items() == [{"n": 1}, {"n": 2}]
    assert await session.pop_item() == {"n": 2}
    assert await sql.get_items() == [{"n": 1}]
    await session.clear_session()
    assert await sql.get_items() == []


async def test_a_failed_sql_write_invalidates_instead_of_updating(
    make: Any, postgres_engine: Any, redis_client: Redis
) -> None:
    session = make()
    await session.add_items([{"n": 1}])
    await session.get_items()
    await session.store.close()  # the next SQL write fails
    with pytest.raises(Exception, match="closed"):
        await session.add_items([{"n": 2}])
    assert await cached_list(redis_client, session) is None
    # A server may still commit a failed (or cancelled) write: it stays counted, so readers
    # stay on SQL until its lease ends.
    assert await redis_client.hget(session.state_key, "w") == b"1"
    assert 0 < await redis_client.pttl(session.state_key) <= 60_000
    assert await bare(session, postgres_engine).get_items() == [{"n": 1}]


async def test_concurrent_writers_never_reorder_the_cache(
    make: Any, postgres_engine: Any, redis_client: Redis
) -> None:
    first = make()
    sessions = [first, *(make(first.session_id) for _ in range(3))]
    await first.get_items()

    async def write(w: int) -> None:
        for i in range(10):
            await sessions[w].add_items([{"w": w, "i": i}])
            await sessions[w].get_items(limit=3)

    await asyncio.gather(*(write(w) for w in range(4)))
    from_sql = await bare(first, postgres_engine).get_items()
    assert len(from_sql) == 40
    assert await first.get_items() == from_sql
    cached = await cached_list(redis_client, first)
    assert cached is not None  # the reads refilled it
    assert [orjson.loads(item) for item in cached[1:]] == from_sql


# --- 3. never stale -----------------------------------------------------------------------------


class PausedLoad(CachedSession):
    """Stops after reading SQL on a miss, until the test lets it go on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded = asyncio.Event()
        self.resume = asyncio.Event()

    async def _load(self, limit: int | None) -> list[str]:
        rows = await super()._load(limit)
        self.loaded.set()
        await self.resume.wait()
        return rows


async def test_a_stale_fill_is_refused(make: Any, redis_client: Redis) -> None:
    reader = make(cls=PausedLoad)
    writer = make(reader.session_id)
    await writer.add_items([{"n": 1}])
    read = asyncio.create_task(reader.get_items())
    await reader.loaded.wait()  # the reader holds the snapshot [1]
    await writer.add_items([{"n": 2}])  # committed, cache touched
    reader.resume.set()
    assert await read == [{"n": 1}]  # it started before the write returned
    assert await cached_list(redis_client, reader) is None  # its fill was refused
    assert await writer.get_items() == [{"n": 1}, {"n": 2}]
    assert await reader.get_items() == [{"n": 1}, {"n": 2}]


async def test_a_stale_fill_is_refused_after_any_write(make: Any, redis_client: Redis) -> None:
    for write in ("pop", "clear", "add-while-cached-elsewhere"):
        reader = make(cls=PausedLoad)
        writer = make(reader.session_id)
        await writer.add_items([{"n": 1}, {"n": 2}])
        read = asyncio.create_task(reader.get_items())
        await reader.loaded.wait()
        if write == "pop":
            await writer.pop_item()
            expected = [{"n": 1}]
        elif write == "clear":
            await writer.clear_session()
            expected = []
        else:
            await writer.add_items([{"n": 3}])
            expected = [{"n": 1}, {"n": 2}, {"n": 3}]
        reader.resume.set()
        await read
        assert await reader.get_items() == expected, write


class PausedWrite(CachedSession):
    """Stops after its SQL write has committed, before the cache hears of it; with ``crash``,
    the cache never hears of it (as when the process dies)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.committed = asyncio.Event()
        self.resume = asyncio.Event()
        self.crash = False

    async def _write(self, write: Callable[[], Any], op: str, payload: list[Any]) -> Any:
        async def paused() -> Any:
            result = await write()
            self.committed.set()
            await self.resume.wait()
            return result

        return await super()._write(paused, op, payload)

    def _owe(self, ends: list[Any]) -> None:
        if not self.crash:
            super()._owe(ends)


async def test_reads_during_a_write_bypass_the_cache(make: Any, redis_client: Redis) -> None:
    writer = make(cls=PausedWrite)
    reader = make(writer.session_id)
    writer.resume.set()
    await writer.add_items([{"n": 1}])
    await ended(writer)
    writer.resume = asyncio.Event()
    writer.committed.clear()
    assert await reader.get_items() == [{"n": 1}]  # cached
    write = asyncio.create_task(writer.add_items([{"n": 2}]))
    await writer.committed.wait()
    # Committed but not returned: the reader goes to SQL and fills nothing.
    assert await reader.get_items() == [{"n": 1}, {"n": 2}]
    assert await cached_list(redis_client, reader) == ["w", '{"n":1}']
    writer.resume.set()
    await write
    await ended(writer)
    assert await cached_list(redis_client, reader) == ["c", '{"n":1}', '{"n":2}']


async def test_a_writer_that_dies_after_its_commit_leaves_readers_on_sql(
    make: Any, redis_client: Redis
) -> None:
    writer = make(cls=PausedWrite)
    reader = make(writer.session_id)
    writer.resume.set()
    await writer.add_items([{"n": 1}])
    await ended(writer)
    assert await reader.get_items() == [{"n": 1}]
    writer.crash = True  # the cache never hears of the next write
    await writer.add_items([{"n": 2}])
    for _ in range(3):
        assert await reader.get_items() == [{"n": 1}, {"n": 2}]
    assert await redis_client.hget(reader.state_key, "w") == b"1"
    assert 0 < await redis_client.pttl(reader.state_key) <= 60_000  # gone with the lease
    assert await cached_list(redis_client, reader) == ["w", '{"n":1}']
    await redis_client.delete(reader.state_key)  # as when the lease is over
    assert await reader.get_items() == [{"n": 1}, {"n": 2}]  # the orphan dropped, refilled
    assert await cached_list(redis_client, reader) == ["c", '{"n":1}', '{"n":2}']


# --- 3. never stale, across processes ---------------------------------------------------------


def _child_write(
    postgres_url: str,
    prefix: str,
    session_id: str,
    items: list[Any],
    crash: bool,
    redis_url: str = REDIS_URL,
) -> None:
    """In a spawned process: one cached add_items; with ``crash``, die after the SQL commit."""

    class Crash(CachedSession):
        async def _finish(self, *args: Any) -> None:
            os._exit(3)

    async def run() -> None:
        store = SQLAlchemySession.from_url(session_id, url=postgres_url)
        async with (Crash if crash else CachedSession)(store, redis_url, key_prefix=prefix) as s:
            await s.add_items(items)

    asyncio.run(run())


async def _in_child(*args: Any) -> int | None:
    process = multiprocessing.get_context("spawn").Process(target=_child_write, args=args)
    process.start()
    await asyncio.to_thread(process.join, 60)
    return process.exitcode


async def test_another_process_sees_a_write_once_it_returns(
    make: Any, postgres_url: str, redis_client: Redis
) -> None:
    session = make()
    await session.add_items([{"n": 1}])
    assert await session.get_items() == [{"n": 1}]  # cached here
    assert await _in_child(postgres_url, PREFIX, session.session_id, [{"n": 2}], False) == 0
    assert await session.get_items() == [{"n": 1}, {"n": 2}]


async def test_a_stale_fill_is_refused_across_processes(
    make: Any, postgres_url: str, redis_client: Redis
) -> None:
    reader = make(cls=PausedLoad)
    await reader.add_items([{"n": 1}])
    read = asyncio.create_task(reader.get_items())
    await reader.loaded.wait()
    assert await _in_child(postgres_url, PREFIX, reader.session_id, [{"n": 2}], False) == 0
    reader.resume.set()
    assert await read == [{"n": 1}]
    assert await cached_list(redis_client, reader) is None
    assert await reader.get_items() == [{"n": 1}, {"n": 2}]


async def test_a_process_killed_after_its_commit_leaves_no_stale_cache(
    make: Any, postgres_url: str, redis_client: Redis
) -> None:
    session = make()
    await session.add_items([{"n": 1}])
    assert await session.get_items() == [{"n": 1}]
    assert await _in_child(postgres_url, PREFIX, session.session_id, [{"n": 2}], True) == 3
    assert await session.get_items() == [{"n": 1}, {"n": 2}]


# --- 4. Redis down, flushed, evicting, restarted ------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``start(persistent=False)``: a new redis-server of this test's own (so it may be stopped
    and paused)."""
    with redis_servers(tmp_path) as start:
        yield lambda persistent=False: start(persistent=persistent)


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "agentmem" and r.levelno == logging.WARNING]


async def test_an_unreachable_redis_costs_one_warning_and_nothing_else(
    make: Any, postgres_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentmem")
    session = make(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    other = make(session.session_id, redis_url=session._connection.url)
    await session.add_items([{"n": 1}, {"n": 2}])
    assert await session.get_items() == [{"n": 1}, {"n": 2}]
    assert await other.get_items(limit=1) == [{"n": 2}]
    assert await session.pop_item() == {"n": 2}
    await other.add_items([{"n": 3}])
    assert await session.get_items() == [{"n": 1}, {"n": 3}]
    assert await bare(session, postgres_engine).get_items() == [{"n": 1}, {"n": 3}]
    await session.clear_session()
    assert await other.get_items() == []
    [warning] = cache_warnings(caplog)
    assert "SQL store" in warning.getMessage()


async def test_redis_down_then_back(
    make: Any, postgres_engine: Any, private_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentmem")
    server = private_redis()
    session = make(redis_url=server.url)
    await session.add_items([{"n": 1}])
    assert await session.get_items() == [{"n": 1}]
    server.stop()
    await session.add_items([{"n": 2}])
    assert await session.get_items() == [{"n": 1}, {"n": 2}]
    assert await session.pop_item() == {"n": 2}
    await session.add_items([{"n": 3}])
    assert await bare(session, postgres_engine).get_items() == [{"n": 1}, {"n": 3}]
    assert len(cache_warnings(caplog)) == 1
    server.start()  # empty: it keeps nothing on disk
    assert await session.get_items() == [{"n": 1}, {"n": 3}]
    assert "reachable again" in caplog.records[-1].getMessage()
    client = Redis.from_url(server.url)
    assert await cached_list(client, session) == ["c", '{"n":1}', '{"n":3}']
    await client.aclose()


async def test_a_restart_that_reloads_old_data_is_not_served_after_a_missed_write(
    make: Any, private_redis: Any
) -> None:
    server = private_redis(persistent=True)
    session = make(redis_url=server.url)
    await session.add_items([{"n": 1}])
    assert await session.get_items() == [{"n": 1}]  # cached, and on the server's disk
    server.stop()
    await session.add_items([{"n": 2}])  # the cache could not hear of it
    server.start()  # back with the old cached list
    reader = make(session.session_id, redis_url=server.url)
    assert await reader.get_items() == [{"n": 1}, {"n": 2}]  # this process invalidates first
    assert await session.get_items() == [{"n": 1}, {"n": 2}]


async def test_a_flushed_or_evicting_cache_refills(make: Any, postgres_engine: Any) -> None:
    url = _with_db(REDIS_URL, FLUSHABLE_DB)
    admin = Redis.from_url(url)
    try:
        session = make(redis_url=url)
        await session.add_items([{"n": 1}, {"n": 2}])
        assert await session.get_items() == [{"n": 1}, {"n": 2}]
        await admin.flushdb()
        assert await session.get_items() == [{"n": 1}, {"n": 2}]
        assert await cached_list(admin, session) == ["c", '{"n":1}', '{"n":2}']
        for evicted in (session.items_key, session.state_key):
            for step in range(3):  # evicted at each point of a write
                await session.add_items([{"n": 3}])
                if step == 0:
                    await admin.delete(evicted)
                assert await session.pop_item() == {"n": 3}
                if step == 1:
                    await admin.delete(evicted)
                assert await session.get_items() == [{"n": 1}, {"n": 2}]
                assert await session.get_items(limit=1) == [{"n": 2}]
                if step == 2:
                    await admin.delete(evicted)
        await admin.flushdb()
        await session.add_items([{"n": 3}])
        assert await session.get_items() == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert await bare(session, postgres_engine).get_items() == await session.get_items()
    finally:
        await admin.flushdb()
        await admin.aclose()


async def test_killed_connections_are_survived(
    make: Any, postgres_engine: Any, redis_client: Redis
) -> None:
    client = Redis.from_url(REDIS_URL, single_connection_client=True)
    session = make(client=client)
    await session.add_items([{"n": 1}])
    assert await session.get_items() == [{"n": 1}]
    for step in range(3):
        await redis_client.client_kill_filter(_id=await client.client_id())
        await session.add_items([{"n": 2 + step}])
        await redis_client.client_kill_filter(_id=await client.client_id())
        assert (await session.get_items())[-1] == {"n": 2 + step}
    assert await session.get_items() == await bare(session, postgres_engine).get_items()
    await client.aclose()


# --- 5. Redis that answers but refuses writes: over maxmemory, writes paused --------------------


def _client(url: str) -> Redis:
    """A client of its own (one process's), which never resends a command."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(url, socket_timeout=1, retry=Retry(NoBackoff(), 0))


async def test_over_maxmemory_every_process_sees_a_write_once_it_returns(
    make: Any, postgres_url: str, postgres_engine: Any, private_redis: Any
) -> None:
    server = private_redis()
    admin = Redis.from_url(server.url)
    reader = make(redis_url=server.url)
    writer = make(reader.session_id, client=_client(server.url))
    await reader.add_items([{"n": 1}, {"n": 2}])
    assert await reader.get_items() == [{"n": 1}, {"n": 2}]  # cached
    await admin.config_set("maxmemory", 1)  # the default policy: noeviction
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            await admin.set(f"{PREFIX}:probe", "x")
        # Another process writes: it returns normally, the cache knows.
        assert (
            await _in_child(postgres_url, PREFIX, reader.session_id, [{"n": 3}], False, server.url)
            == 0
        )
        expected = [{"n": 1}, {"n": 2}, {"n": 3}]
        assert await reader.get_items() == expected
        assert await reader.get_items(limit=1) == [{"n": 3}]
        assert await writer.pop_item() == {"n": 3}
        assert await reader.get_items() == expected[:2]
        await writer.clear_session()
        assert await reader.get_items() == []
        await writer.add_items([{"n": 4}])
        assert await reader.get_items(limit=5) == [{"n": 4}]
    finally:
        await admin.config_set("maxmemory", 0)
    assert await reader.get_items() == [{"n": 4}]  # filled again
    assert await cached_list(admin, reader) == ["c", '{"n":4}']
    assert await bare(reader, postgres_engine).get_items() == [{"n": 4}]
    await writer._client_given.aclose()
    await admin.aclose()


async def test_with_writes_paused_a_write_is_refused_before_sql(
    make: Any, postgres_engine: Any, private_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis()
    admin = Redis.from_url(server.url)
    reader = make(client=_client(server.url))
    writer = make(reader.session_id, client=_client(server.url))
    await writer.add_items([{"n": 1}])
    assert await reader.get_items() == [{"n": 1}]  # cached
    await admin.execute_command("CLIENT", "PAUSE", 600_000, "WRITE")  # as FAILOVER does
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            await writer.add_items([{"n": 2}])
        assert "nothing was written" in caplog.records[-1].getMessage()
        assert await bare(reader, postgres_engine).get_items() == [{"n": 1}]
        assert await reader.get_items() == [{"n": 1}]  # true: the write did not happen
        assert await reader.get_items(limit=1) == [{"n": 1}]  # SQL, after socket_timeout
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
    assert await reader.get_items() == [{"n": 1}]
    await writer.add_items([{"n": 2}])
    assert await reader.get_items() == [{"n": 1}, {"n": 2}]
    for session in (reader, writer):
        await session._client_given.aclose()
    await admin.aclose()


# --- 6. a cancelled write on a SQLite file ------------------------------------------------------


def _child_read(path: str, prefix: str, session_id: str, out: str) -> None:
    """In a spawned process: one cached get_items on a SQLite file, written to ``out``."""

    async def run() -> list[Any]:
        store = SQLiteSession(session_id, path)
        async with CachedSession(store, REDIS_URL, key_prefix=prefix) as session:
            return await session.get_items()

    Path(out).write_bytes(orjson.dumps(asyncio.run(run())))


async def test_a_cancelled_write_on_a_sqlite_file_never_commits_behind_the_cache(
    tmp_path: Path, redis_client: Redis
) -> None:
    import sqlite3

    path = str(tmp_path / "cancel.db")
    session = CachedSession(SQLiteSession(unique_id(), path), REDIS_URL, key_prefix=PREFIX)
    await session.add_items([{"n": 1}])
    assert await session.get_items() == [{"n": 1}]  # cached
    started = asyncio.Event()
    add = session.store._ops.add

    async def add_noting_the_start(items: Any) -> None:
        started.set()
        await add(items)

    session.store._ops.add = add_noting_the_start  # type: ignore[method-assign]
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the write's thread waits for this lock
    try:
        task = asyncio.create_task(session.add_items([{"n": 2}]))
        await started.wait()
        task.cancel()
        # Another process reads while the cancelled write's thread still waits to commit.
        out = tmp_path / "read.json"
        process = multiprocessing.get_context("spawn").Process(
            target=_child_read, args=(path, PREFIX, session.session_id, str(out))
        )
        process.start()
        await asyncio.to_thread(process.join, 60)
        assert process.exitcode == 0
        assert orjson.loads(out.read_bytes()) == [{"n": 1}]
        heard_early = task.done()
    finally:
        lock.rollback()
        lock.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    session.store._ops.add = add  # type: ignore[method-assign]
    await session.add_items([{"n": 3}])  # a later write that returns normally
    other = CachedSession(SQLiteSession(session.session_id, path), REDIS_URL, key_prefix=PREFIX)
    lite = SQLiteSession(session.session_id, path)
    from_sql = await lite.get_items()
    await lite.close()
    assert from_sql == [{"n": 1}, {"n": 2}, {"n": 3}]  # the cancelled write committed, whole
    assert await other.get_items() == from_sql
    assert await session.get_items() == from_sql
    assert not heard_early  # cancelled, but its caller heard only once the call was over
    await session.clear_session()
    await session.close()
    await other.close()


# --- 7. a write that returned before the cache heard of it -------------------------------------


class HeldEnds(CachedSession):
    """Its own task delivers no end until ``release`` is set: the ends of its writes stay owed
    until its next call carries them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()

    async def _deliver_ends(self) -> None:
        await self.release.wait()
        await super()._deliver_ends()


async def test_a_returned_write_whose_end_is_owed_is_read_from_sql_until_the_next_call(
    make: Any, postgres_engine: Any, redis_client: Redis
) -> None:
    writer = make(cls=HeldEnds)
    reader = make(writer.session_id)
    await writer.add_items([{"n": 1}])
    assert await writer.get_items() == [{"n": 1}]  # carries the end, then misses and fills
    assert await cached_list(redis_client, writer) == ["c", '{"n":1}']
    await writer.add_items([{"n": 2}])  # returned; the cache has its mark, not its end
    assert await redis_client.hget(writer.state_key, "w") == b"1"
    for limit in (None, 1, 2):
        expected = [{"n": 1}, {"n": 2}]
        assert await reader.get_items(limit) == expected[-(limit or 2) :]  # SQL
    assert await cached_list(redis_client, writer) == ["w", '{"n":1}']  # nothing filled
    # The next call carries the end in its round trip: updated in place, then a hit.
    await bare(writer, postgres_engine).add_items([{"n": "behind"}])
    assert await writer.get_items() == [{"n": 1}, {"n": 2}]
    assert await cached_list(redis_client, writer) == ["c", '{"n":1}', '{"n":2}']
    assert await redis_client.hget(writer.state_key, "w") is None
    writer.release.set()
    await ended(writer)  # its own task found nothing owed
    assert await cached_list(redis_client, writer) == ["c", '{"n":1}', '{"n":2}']


async def test_each_write_carries_the_end_of_the_one_before(
    make: Any, postgres_engine: Any, redis_client: Redis
) -> None:
    writer = make(cls=HeldEnds)
    reader = make(writer.session_id)
    await writer.add_items([{"n": 1}])
    assert await writer.get_items(limit=5) == [{"n": 1}]  # cached
    await writer.add_items([{"n": 2}, {"n": 3}])
    assert await writer.pop_item() == {"n": 3}  # carries the add's end: applied in place
    assert await cached_list(redis_client, writer) == ["w", '{"n":1}', '{"n":2}', '{"n":3}']
    await writer.add_items([{"n": 4}])  # carries the pop's end
    assert await cached_list(redis_client, writer) == ["w", '{"n":1}', '{"n":2}']
    assert await reader.get_items() == [{"n": 1}, {"n": 2}, {"n": 4}]  # SQL meanwhile
    await writer.clear_session()  # carries the add's end
    assert await cached_list(redis_client, writer) == ["w", '{"n":1}', '{"n":2}', '{"n":4}']
    assert await reader.get_items() == []
    writer.release.set()
    await writer.close()  # returns once what is owed is delivered
    assert await cached_list(redis_client, reader) == ["c"]
    assert await reader.get_items() == await bare(reader, postgres_engine).get_items() == []


@asynccontextmanager
async def _held_writer_and_reader(
    make: Any, server: RedisServer
) -> AsyncIterator[tuple[Redis, HeldEnds, CachedSession]]:
    """An admin client of ``server``, a writer whose ends stay owed and a reader of its
    session, both on ``server``; at the end the ends are released, the sessions closed and
    every client with them."""
    admin = Redis.from_url(server.url)
    writer = make(cls=HeldEnds, client=_client(server.url))
    reader = make(writer.session_id, client=_client(server.url))
    try:
        yield admin, writer, reader
    finally:
        writer.release.set()
        for session in (reader, writer):
            await session.close()
            await session._client_given.aclose()
        await admin.aclose()


async def test_an_owed_end_with_writes_paused_never_serves_a_stale_copy(
    make: Any, postgres_engine: Any, private_redis: Any
) -> None:
    async with _held_writer_and_reader(make, private_redis()) as (admin, writer, reader):
        await writer.add_items([{"n": 1}])
        assert await writer.get_items() == [{"n": 1}]  # cached
        await writer.add_items([{"n": 2}])  # returned, its end owed
        await admin.execute_command("CLIENT", "PAUSE", 600_000, "WRITE")
        try:
            assert await reader.get_items() == [{"n": 1}, {"n": 2}]  # the mark: SQL
            assert await reader.get_items(limit=1) == [{"n": 2}]
            with pytest.raises(redis.exceptions.TimeoutError):
                await writer.add_items([{"n": 3}])  # carries the end; refused before SQL
            assert await bare(writer, postgres_engine).get_items() == [{"n": 1}, {"n": 2}]
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        assert await reader.get_items() == [{"n": 1}, {"n": 2}]
        assert await writer.get_items() == [{"n": 1}, {"n": 2}]
        await writer.add_items([{"n": 3}])
        assert await reader.get_items() == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_an_owed_end_over_maxmemory_drops_the_copy(
    make: Any, postgres_engine: Any, private_redis: Any
) -> None:
    async with _held_writer_and_reader(make, private_redis()) as (admin, writer, reader):
        await writer.add_items([{"n": 1}, {"n": 2}])
        assert await writer.get_items() == [{"n": 1}, {"n": 2}]  # cached
        await writer.add_items([{"n": 3}])  # returned, its end owed
        await admin.config_set("maxmemory", 1)
        try:
            assert await reader.get_items() == [{"n": 1}, {"n": 2}, {"n": 3}]
            # Its end is refused (an update in place may add much) and sent again as a drop.
            assert await writer.pop_item() == {"n": 3}
            assert await admin.get(writer.items_key) is None
            assert await reader.get_items() == [{"n": 1}, {"n": 2}]
            assert await writer.get_items(limit=1) == [{"n": 2}]
        finally:
            await admin.config_set("maxmemory", 0)
        writer.release.set()
        assert await reader.get_items() == [{"n": 1}, {"n": 2}]
        assert await bare(writer, postgres_engine).get_items() == [{"n": 1}, {"n": 2}]


async def test_keys_evicted_mid_write_can_serve_the_old_state_until_the_writes_end(
    make: Any, postgres_engine: Any, redis_client: Redis
) -> None:
    """The limit README "Limits" states: a session's keys evicted or flushed between a write's
    mark and its commit let a reader refill the pre-write state, which other processes may read
    from the time the write returns until its end lands."""
    writer = make(cls=HeldEnds)
    reader = make(writer.session_id)
    other = make(writer.session_id)
    await writer.add_items([{"n": 1}])
    assert await writer.get_items() == [{"n": 1}]  # carries the end, fills
    add = writer.store.add_encoded_items

    async def evicted_then_read(encoded: Any) -> Any:
        await redis_client.delete(writer.state_key, writer.items_key)  # the mark is gone
        assert await reader.get_items() == [{"n": 1}]  # SQL before the commit: a fresh fill
        return await add(encoded)

    writer.store.add_encoded_items = evicted_then_read  # type: ignore[method-assign]
    await writer.add_items([{"n": 2}])  # returned; its end owed
    assert await bare(writer, postgres_engine).get_items() == [{"n": 1}, {"n": 2}]
    assert await other.get_items() == [{"n": 1}]  # the window
    writer.release.set()
    await ended(writer)  # the end lands: the refilled copy is dropped
    assert await other.get_items() == [{"n": 1}, {"n": 2}]


class _LostReply:
    """The combined script of owed ends and a read runs on the server (or not), then its reply
    is lost."""

    def __init__(self, real: Any, ran: bool) -> None:
        self.real, self.ran, self.calls, self.sha = real, ran, 0, real.sha

    async def __call__(self, client: Any, keys: Any, args: Any) -> Any:
        self.calls += 1
        if self.ran:
            await self.real(client, keys, args)
        raise redis.exceptions.TimeoutError("Timeout reading from socket")


async def _writer_owing_an_end(make: Any) -> tuple[HeldEnds, CachedSession]:
    """A writer of ``[1, 2]`` whose first write's end was carried and whose second is owed, and
    another session on the same history."""
    writer = make(cls=HeldEnds)
    other = make(writer.session_id)
    await writer.add_items([{"n": 1}])
    assert await writer.get_items() == [{"n": 1}]
    await writer.add_items([{"n": 2}])  # its end owed
    return writer, other


@pytest.mark.parametrize("ran", [True, False], ids=["ran", "never-ran"])
async def test_a_read_carrying_ends_whose_reply_is_lost_reads_sql_and_owes_an_invalidation(
    make: Any, redis_client: Redis, monkeypatch: pytest.MonkeyPatch, ran: bool
) -> None:
    from agentmem.cache import session as cache_module

    writer, other = await _writer_owing_an_end(make)
    script = cache_module._AFTER_ENDS[cache_module._READ]
    lost = _LostReply(script, ran)
    monkeypatch.setitem(cache_module._AFTER_ENDS, cache_module._READ, lost)
    assert await writer.get_items(limit=1) == [{"n": 2}]  # from SQL
    assert lost.calls == 1
    pending = writer._server(writer._client()).pending
    assert writer.state_key in pending  # the ends may or may not have run
    monkeypatch.setitem(cache_module._AFTER_ENDS, cache_module._READ, script)
    assert await other.get_items() == [{"n": 1}, {"n": 2}]
    assert await writer.get_items() == [{"n": 1}, {"n": 2}]  # the invalidation, then a read
    assert writer.state_key not in pending
    await writer.add_items([{"n": 3}])
    assert await other.get_items() == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert await writer.get_items(limit=2) == [{"n": 2}, {"n": 3}]


async def test_a_write_cancelled_inside_its_combined_mark_writes_nothing_and_stays_fresh(
    make: Any, postgres_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentmem.cache import session as cache_module

    writer, other = await _writer_owing_an_end(make)
    script = cache_module._AFTER_ENDS[cache_module._BEGIN]
    ran = asyncio.Event()

    class ReplyNeverRead:
        sha = script.sha

        async def __call__(self, client: Any, keys: Any, args: Any) -> Any:
            await script(client, keys, args)  # the ends and the mark ran on the server
            ran.set()
            await asyncio.Event().wait()  # the caller is cancelled before the reply is read

    monkeypatch.setitem(cache_module._AFTER_ENDS, cache_module._BEGIN, ReplyNeverRead())
    task = asyncio.create_task(writer.add_items([{"n": 3}]))
    await ran.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.setitem(cache_module._AFTER_ENDS, cache_module._BEGIN, script)
    assert await bare(writer, postgres_engine).get_items() == [{"n": 1}, {"n": 2}]
    assert await other.get_items() == [{"n": 1}, {"n": 2}]
    assert await writer.get_items(limit=1) == [{"n": 2}]


class CountingConnection(redis.asyncio.connection.Connection):
    """A real connection that counts what it sends: one send is one round trip."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


async def test_a_write_takes_one_redis_round_trip_and_a_turn_two(make: Any) -> None:
    pool = redis.asyncio.ConnectionPool.from_url(REDIS_URL, connection_class=CountingConnection)
    client = Redis(connection_pool=pool)
    session = make(client=client)
    await session.add_items([{"n": 0}])  # scripts loaded
    assert await session.get_items() == [{"n": 0}]  # cached
    CountingConnection.sent = 0
    for n in range(1, 11):
        await session.add_items([{"n": n}])  # its mark carries the previous write's end
    assert CountingConnection.sent == 10
    CountingConnection.sent = 0
    for n in range(11, 21):  # an agent turn: read all (a hit, after the owed end), add
        assert (await session.get_items())[-1] == {"n": n - 1}
        await session.add_items([{"n": n}])
    assert CountingConnection.sent == 20
    await ended(session)
    assert await session.get_items() == [{"n": n} for n in range(21)]
    await session.close()
    await client.aclose()
