"""Redis-specific behaviour of RedisSession and RedisSessionManager, on real Redis servers.

Most tests use the server at ``AGENTMEM_TEST_REDIS_URL`` under this run's key prefix; tests that
need to stop a server, set a password or count commands start their own ``redis-server``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions
from redis.asyncio import Redis
from redis.crc import key_slot

from agentmem import MissingDependencyError, RedisSession, RedisSessionManager, SessionClosedError
from tests._servers import RedisServer, free_port, redis_servers
from tests.conftest import REDIS_PREFIX, REDIS_URL, unique_id

pytestmark = pytest.mark.redis

SESSION_PREFIX = f"{REDIS_PREFIX}:session"
MESSAGES_PREFIX = f"{REDIS_PREFIX}:messages"
PREFIXES: dict[str, Any] = {"session_prefix": SESSION_PREFIX, "messages_prefix": MESSAGES_PREFIX}


@pytest.fixture
async def open_sessions(redis_client: Redis) -> AsyncIterator[list[RedisSession]]:
    """Sessions appended here are closed after the test (the run's keys are deleted anyway)."""
    made: list[RedisSession] = []
    yield made
    for session in made:
        await session.close()


@pytest.fixture
def make(open_sessions: list[RedisSession]) -> Any:
    def make(session_id: str | None = None, **kwargs: Any) -> RedisSession:
        options = {**PREFIXES, **kwargs}
        session = RedisSession(session_id or unique_id(), REDIS_URL, **options)
        open_sessions.append(session)
        return session

    return make


@pytest.fixture
async def manager(redis_client: Redis) -> AsyncIterator[RedisSessionManager]:
    async with RedisSessionManager(REDIS_URL, **PREFIXES) as manager:
        yield manager


# --- the index of every session -----------------------------------------------------------------


async def test_every_write_moves_the_session_in_the_index_of_every_session(
    redis_client: Redis,
) -> None:
    from agentmem.manager import Conversation

    prefix = f"{REDIS_PREFIX}:{unique_id('all')}"
    index = f"{prefix}:session:all:{{all}}"

    async def order() -> list[str]:
        page = await manager.find_sessions(limit=100)
        listed = [info.session_id for info in page.items]
        indexed = [m.decode() for m in await redis_client.zrevrange(index, 0, -1)]
        assert listed == indexed  # the listing is the index, checked against the sessions
        return listed

    async with RedisSessionManager(
        REDIS_URL, session_prefix=f"{prefix}:session", messages_prefix=f"{prefix}:messages"
    ) as manager:
        a, b = manager.get_session("a"), manager.get_session("b")
        await a.add_items([{"n": 1}, {"n": 2}])
        await b.add_items([{"n": 1}])
        assert await order() == ["b", "a"]
        assert await a.pop_item() == {"n": 2}
        assert await order() == ["a", "b"]
        await b.fork("c")
        assert await order() == ["c", "a", "b"]
        assert await b.replace_items([{"summary": True}])
        assert await order() == ["b", "c", "a"]
        await a.update_info(title="not activity")
        assert await order() == ["b", "c", "a"]
        now = datetime.now(UTC)
        await manager.write_conversation(Conversation("d", [{"n": 1}], now, now))
        assert await order() == ["d", "b", "c", "a"]
        day_ago = now - timedelta(days=1)
        await manager.write_conversation(Conversation("b", [{"n": 1}], day_ago, day_ago))
        assert await order() == ["d", "c", "a", "b"]  # its activity is the conversation's
        assert await manager.count_sessions() == 4
        await a.clear_session()
        assert await manager.delete_session("c")
        assert await order() == ["d", "b"]
        assert await manager.count_sessions() == 2
        for session_id in ("b", "d"):
            await manager.delete_session(session_id)
        assert await redis_client.exists(index) == 0


async def test_reindex_adds_the_sessions_an_earlier_version_left_out(redis_client: Redis) -> None:
    prefix = f"{REDIS_PREFIX}:{unique_id('old')}"
    session_prefix = f"{prefix}:session"
    async with RedisSessionManager(
        REDIS_URL, session_prefix=session_prefix, messages_prefix=f"{prefix}:messages"
    ) as manager:
        await manager.get_session("a", user_id="u", ttl=3600).add_items([{"n": 1}])
        await manager.get_session("b").add_items([{"n": 1}])
        await manager.get_session("c").add_items([{"n": 1}])
        # What an earlier version left: no index of every session, an owner's index kept.
        await redis_client.delete(
            f"{session_prefix}:all:{{all}}", f"{session_prefix}:all-expiry:{{all}}"
        )
        await redis_client.zrem(f"{session_prefix}:owner:{{u}}", "a")
        assert await manager.count_sessions() == 0
        assert (await manager.find_sessions(user_id="u")).items == []

        assert await manager.reindex() == 3
        assert [i.session_id for i in (await manager.find_sessions()).items] == ["c", "b", "a"]
        assert [i.session_id for i in (await manager.find_sessions(user_id="u")).items] == ["a"]
        assert await manager.count_sessions() == 3
        expiry = await redis_client.zscore(f"{session_prefix}:all-expiry:{{all}}", "a")
        assert expiry is not None and expiry > time.time() * 1000
        assert await manager.reindex() == 0  # nothing left out
        for session_id in ("a", "b", "c"):
            await manager.delete_session(session_id)


# --- key layout --------------------------------------------------------------------------------


def test_default_key_layout() -> None:
    session = RedisSession("user_123")
    assert session.session_key == "agentmem:session:{user_123}"
    assert session.messages_key == "agentmem:messages:{user_123}"
    custom = RedisSession(
        "user_123", session_prefix="chat_session", messages_prefix="chat_messages"
    )
    assert custom.session_key == "chat_session:{user_123}"
    assert custom.messages_key == "chat_messages:{user_123}"


@pytest.mark.parametrize(
    "session_id", ["plain", "{", "}", "a{b}c", "}{", "{{x}}", "%7B", "%", "*?[x]:y z"]
)
def test_keys_of_a_session_share_one_slot(session_id: str) -> None:
    session = RedisSession(session_id)
    tag = session.session_key.split(":", 2)[2]
    assert tag.startswith("{") and tag.endswith("}")
    assert "{" not in tag[1:-1] and "}" not in tag[1:-1]
    assert key_slot(session.session_key.encode()) == key_slot(session.messages_key.encode())


def test_a_client_that_is_not_an_asyncio_one_is_refused() -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)  # connects only when first used
    with pytest.raises(
        TypeError, match=r"client must be a redis\.asyncio\.Redis or RedisCluster, got Redis"
    ):
        RedisSession("user_123", client=client)  # type: ignore[arg-type]


def test_ids_never_share_keys() -> None:
    ids = ["a{b}", "a%7Bb%7D", "a%257Bb%257D", "a%b", "a%25b", "{a}", "%7Ba%7D", "a", "a}"]
    keys = {RedisSession(i).session_key for i in ids} | {RedisSession(i).messages_key for i in ids}
    assert len(keys) == 2 * len(ids)


async def test_ids_that_encode_alike_stay_apart(make: Any) -> None:
    ids = [f"{unique_id()}{suffix}" for suffix in ("{x}", "%7Bx%7D", "%257Bx%257D")]
    sessions = [make(i) for i in ids]
    for session in sessions:
        await session.add_items([{"id": session.session_id}])
    for session in sessions:
        assert await session.get_items() == [{"id": session.session_id}]


async def test_metadata_hash_has_timestamps(make: Any, redis_client: Redis) -> None:
    session = make()
    before = time.time()
    await session.add_items([{"n": 1}])
    first = await redis_client.hgetall(session.session_key)
    await asyncio.sleep(0.01)
    await session.add_items([{"n": 2}])
    second = await redis_client.hgetall(session.session_key)
    assert before <= float(first[b"created_at"]) <= float(first[b"updated_at"])
    assert second[b"created_at"] == first[b"created_at"]
    assert float(second[b"updated_at"]) > float(first[b"updated_at"])
    assert await redis_client.type(session.messages_key) == b"list"


async def test_clear_deletes_every_key(make: Any, redis_client: Redis) -> None:
    session = make()
    await session.add_items([{"n": 1}])
    assert await redis_client.exists(session.session_key, session.messages_key) == 2
    await session.clear_session()
    assert await redis_client.exists(session.session_key, session.messages_key) == 0


# --- atomic writes -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["session_key", "messages_key"])
async def test_a_failing_batch_writes_nothing(make: Any, redis_client: Redis, which: str) -> None:
    session = make()
    await redis_client.set(getattr(session, which), "not ours")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await session.add_items([{"n": 1}, {"n": 2}])
    other = "messages_key" if which == "session_key" else "session_key"
    assert await redis_client.exists(getattr(session, other)) == 0
    assert await redis_client.get(getattr(session, which)) == b"not ours"


async def test_a_long_batch_is_one_atomic_write(make: Any) -> None:
    session = make()
    items = [{"n": i} for i in range(25_000)]
    await session.add_items(items)
    assert await session.get_items() == items
    assert await session.get_items(limit=3) == items[-3:]


async def test_bad_input_does_no_io() -> None:
    session = RedisSession(unique_id(), "redis://127.0.0.1:1", socket_connect_timeout=1)
    with pytest.raises(TypeError, match="item 1"):
        await session.add_items([{"n": 1}, {"bad": {1, 2}}])
    with pytest.raises(ValueError, match="limit"):
        await session.get_items(limit=-1)
    await session.add_items([])
    assert await session.get_items(limit=0) == []
    await session.close()


# --- TTL ---------------------------------------------------------------------------------------


async def test_no_ttl_never_expires(make: Any, redis_client: Redis) -> None:
    session = make()
    await session.add_items([{"n": 1}])
    assert session.ttl is None
    assert await redis_client.pttl(session.session_key) == -1
    assert await redis_client.pttl(session.messages_key) == -1


@pytest.mark.parametrize(
    ("ttl", "ms"),
    [(3600, 3_600_000), (timedelta(minutes=5), 300_000), (timedelta(seconds=1.5), 1500)],
)
async def test_ttl_applies_to_every_key(make: Any, redis_client: Redis, ttl: Any, ms: int) -> None:
    session = make(ttl=ttl)
    assert session.ttl == timedelta(milliseconds=ms)
    await session.add_items([{"n": 1}])
    for key in (session.session_key, session.messages_key):
        assert 0 < await redis_client.pttl(key) <= ms


async def test_every_write_refreshes_the_expiry(make: Any, redis_client: Redis) -> None:
    session_id = unique_id()
    short = make(session_id, ttl=60)
    long = make(session_id, ttl=7200)
    forever = make(session_id)
    await short.add_items([{"n": 1}, {"n": 2}, {"n": 3}])
    assert await redis_client.pttl(short.session_key) <= 60_000

    await long.add_items([{"n": 4}])
    for key in (short.session_key, short.messages_key):
        assert await redis_client.pttl(key) > 60_000

    await short.pop_item()
    for key in (short.session_key, short.messages_key):
        assert await redis_client.pttl(key) <= 60_000

    await forever.pop_item()
    for key in (short.session_key, short.messages_key):
        assert await redis_client.pttl(key) == -1


async def test_reads_and_empty_pops_do_not_touch_the_expiry(make: Any, redis_client: Redis) -> None:
    session = make(ttl=60)
    other = make(session.session_id, ttl=7200)
    await session.add_items([{"n": 1}])
    await other.get_items()
    assert await redis_client.pttl(session.session_key) <= 60_000
    await session.clear_session()
    assert await other.pop_item() is None
    assert await redis_client.exists(session.session_key) == 0


async def test_an_expired_session_reads_empty_and_is_not_listed(
    make: Any, manager: RedisSessionManager, redis_client: Any
) -> None:
    session = make(ttl=timedelta(minutes=10))
    keeper = make()
    await session.add_items([{"n": 1}])
    await keeper.add_items([{"n": 2}])
    assert session.session_id in await manager.list_sessions()
    # Let the expiry the session set run out now (not by racing a short ttl against the clock):
    # an expiry time in the past expires the key at once.
    for key in (session.session_key, session.messages_key):
        assert 0 < await redis_client.pttl(key) <= 600_000
        await redis_client.pexpireat(key, 1)
    assert await session.get_items() == []
    assert await session.pop_item() is None
    listed = await manager.list_sessions()
    assert session.session_id not in listed
    assert keeper.session_id in listed
    await session.add_items([{"n": 3}])  # an expired session starts over
    assert await session.get_items() == [{"n": 3}]


@pytest.mark.parametrize(
    ("ttl", "error"),
    [
        (0, ValueError),
        (-5, ValueError),
        (timedelta(0), ValueError),
        (timedelta(microseconds=10), ValueError),
        (1.5, TypeError),
        ("60", TypeError),
        (True, TypeError),
    ],
)
def test_bad_ttls_are_rejected(ttl: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="ttl"):
        RedisSession("x", ttl=ttl)
    with pytest.raises(error, match="default_ttl"):
        RedisSessionManager(default_ttl=ttl)


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"session_prefix": "a{b"}, ValueError, "session_prefix"),
        ({"messages_prefix": "a}"}, ValueError, "messages_prefix"),
        ({"session_prefix": ""}, ValueError, "session_prefix"),
        ({"session_prefix": "same", "messages_prefix": "same"}, ValueError, "differ"),
        ({"session_prefix": 1}, TypeError, "session_prefix"),
        ({"redis_url": "http://localhost:6379"}, ValueError, "redis"),
        ({"redis_url": "redis://localhost:6379/1", "db": 2}, ValueError, "db=2"),
        ({"max_connections": 0}, ValueError, "max_connections"),
    ],
)
def test_bad_configuration_is_rejected(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RedisSession("x", **kwargs)
    with pytest.raises(error, match=match):
        RedisSessionManager(**kwargs)


def test_a_sync_client_is_rejected() -> None:
    import redis

    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis"):
        RedisSession("x", client=redis.Redis())  # type: ignore[arg-type]


async def test_db_argument_selects_the_database(redis_client: Redis) -> None:
    session_id = unique_id()
    base_url = REDIS_URL.rsplit("/", 1)[0]
    in_db_1 = RedisSession(session_id, base_url, db=1, **PREFIXES)
    in_url_db_1 = RedisSession(session_id, f"{base_url}/1", db=1, **PREFIXES)
    try:
        await in_db_1.add_items([{"n": 1}])
        assert await in_url_db_1.get_items() == [{"n": 1}]
        db1 = Redis.from_url(f"{base_url}/1")
        assert await db1.exists(in_db_1.messages_key) == 1
        assert await redis_client.exists(in_db_1.messages_key) == 0
    finally:
        await in_db_1.clear_session()
        await db1.aclose()
        await in_db_1.close()
        await in_url_db_1.close()


# --- passed clients ----------------------------------------------------------------------------


@pytest.mark.parametrize("decode_responses", [False, True])
async def test_a_passed_client_is_used_and_left_open(decode_responses: bool) -> None:
    client = Redis.from_url(REDIS_URL, decode_responses=decode_responses)
    async with RedisSession(unique_id(), client=client, **PREFIXES) as session:
        await session.add_items([{"n": 1}, {"n": 2}])
        assert await session.get_items() == [{"n": 1}, {"n": 2}]
        assert await session.pop_item() == {"n": 2}
        await session.clear_session()
    assert await client.ping()
    await client.aclose()


# --- manager: list and delete ------------------------------------------------------------------


async def test_list_sessions_returns_exactly_its_own(
    manager: RedisSessionManager, redis_client: Redis
) -> None:
    odd = ["*", "?", "[a-z]", "{x}", "}", "a:b", "with space", "back\\slash", "%7B"]
    ids = sorted(f"{unique_id()}{suffix}" for suffix in odd)
    for session_id in ids:
        await manager.get_session(session_id).add_items([{"id": session_id}])
    elsewhere = RedisSessionManager(
        REDIS_URL,
        session_prefix=f"{SESSION_PREFIX}:other",
        messages_prefix=f"{MESSAGES_PREFIX}:other",
    )
    await elsewhere.get_session("not-mine").add_items([{"n": 1}])
    # Keys that only resemble a session of this manager.
    await redis_client.set(f"{SESSION_PREFIX}:{{string}}", "x")
    await redis_client.hset(f"{SESSION_PREFIX}:{{a}}b}}", "k", "v")
    await redis_client.hset(f"{SESSION_PREFIX}x:{{c}}", "k", "v")

    assert await manager.list_sessions() == ids
    assert await elsewhere.list_sessions() == ["not-mine"]
    await elsewhere.close()


async def test_list_sessions_skips_keys_that_are_not_agentmems(
    manager: RedisSessionManager, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    session_id = unique_id()
    await manager.get_session(session_id).add_items([{"n": 1}])
    # Foreign hashes under the prefix: a name that is not UTF-8, a tag that is no session id.
    await redis_client.hset(SESSION_PREFIX.encode() + b":{\xff\xfe}", "k", "v")
    await redis_client.hset(f"{SESSION_PREFIX}:{{{'x' * 300}}}", "k", "v")
    with caplog.at_level("WARNING", logger="agentmem"):
        assert await manager.list_sessions() == [session_id]
    assert manager.skipped_keys == 2
    [warning] = [r for r in caplog.records if r.name == "agentmem"]
    assert "skipped 2 key(s)" in warning.getMessage()


async def test_glob_characters_in_prefixes_are_literal(redis_client: Redis) -> None:
    def manager(prefix: str) -> RedisSessionManager:
        return RedisSessionManager(
            REDIS_URL,
            session_prefix=f"{SESSION_PREFIX}:{prefix}",
            messages_prefix=f"{MESSAGES_PREFIX}:{prefix}",
        )

    star, x, bracket, b = manager("p*"), manager("px"), manager("[ab]"), manager("b")
    for m in (star, x, bracket, b):
        await m.get_session("same-id").add_items([{"n": 1}])
    for m in (star, x, bracket, b):
        assert await m.list_sessions() == ["same-id"]
        await m.close()


async def test_list_sessions_after_pop_and_clear(manager: RedisSessionManager) -> None:
    popped, cleared = manager.get_session(unique_id()), manager.get_session(unique_id())
    await popped.add_items([{"n": 1}])
    await cleared.add_items([{"n": 1}])
    await popped.pop_item()
    await cleared.clear_session()
    listed = await manager.list_sessions()
    assert popped.session_id in listed  # empty, but it exists until cleared or expired
    assert cleared.session_id not in listed


async def test_list_sessions_scans_100_000_sessions(redis_client: Redis) -> None:
    prefix = f"{SESSION_PREFIX}:many"
    ids = [f"s{i}" for i in range(100_000)]
    for start in range(0, len(ids), 10_000):
        async with redis_client.pipeline(transaction=False) as pipe:
            for session_id in ids[start : start + 10_000]:
                pipe.hset(f"{prefix}:{{{session_id}}}", "created_at", "0")
            await pipe.execute()
    async with RedisSessionManager(
        REDIS_URL, session_prefix=prefix, messages_prefix=f"{MESSAGES_PREFIX}:many"
    ) as manager:
        assert await manager.list_sessions() == sorted(ids)


async def test_delete_session_removes_every_key(
    manager: RedisSessionManager, redis_client: Redis
) -> None:
    victim = manager.get_session(f"{unique_id()}*")
    neighbour = manager.get_session(f"{victim.session_id[:-1]}x")
    await victim.add_items([{"n": 1}])
    await neighbour.add_items([{"n": 2}])
    assert await manager.delete_session(victim.session_id) is True
    assert await redis_client.exists(victim.session_key, victim.messages_key) == 0
    assert await manager.delete_session(victim.session_id) is False
    assert await neighbour.get_items() == [{"n": 2}]
    assert victim.session_id not in await manager.list_sessions()
    with pytest.raises(ValueError, match="session_id"):
        await manager.delete_session("")


# --- manager: sessions, pool and lifecycle -----------------------------------------------------


async def test_get_session_ttls(manager: RedisSessionManager) -> None:
    async with RedisSessionManager(REDIS_URL, default_ttl=7200, **PREFIXES) as with_ttl:
        assert with_ttl.get_session("a").ttl == timedelta(hours=2)
        assert with_ttl.get_session("a", ttl=3600).ttl == timedelta(hours=1)
        assert with_ttl.get_session("a", ttl=None).ttl is None
    assert manager.get_session("a").ttl is None
    settings = manager.get_session("a", session_settings={"limit": 2}).session_settings
    assert settings.limit == 2


async def test_manager_pool_is_shared_and_bounded(redis_client: Redis) -> None:
    name = f"pool-{unique_id()}"
    url = f"{REDIS_URL}?client_name={name}"
    async with RedisSessionManager(url, max_connections=3, pool_timeout=30, **PREFIXES) as manager:
        sessions = [manager.get_session(unique_id()) for _ in range(200)]
        await asyncio.gather(*(s.add_items([{"n": i}]) for i, s in enumerate(sessions)))
        counts = await asyncio.gather(*(s.get_items() for s in sessions))
        assert [len(items) for items in counts] == [1] * 200
        clients = await redis_client.client_list()
        assert 1 <= sum(c["name"] == name for c in clients) <= 3

        await sessions[0].close()
        await sessions[1].add_items([{"n": "after a sibling closed"}])
        with pytest.raises(SessionClosedError):
            await sessions[0].get_items()
    assert not any(c["name"] == name for c in await redis_client.client_list())


async def test_manager_close_ends_its_sessions(redis_client: Redis) -> None:
    manager = RedisSessionManager(REDIS_URL, **PREFIXES)
    session = manager.get_session(unique_id())
    await session.add_items([{"n": 1}])
    await manager.close()
    await manager.close()
    assert manager.closed
    with pytest.raises(SessionClosedError, match="closed"):
        await session.get_items()
    with pytest.raises(SessionClosedError):
        manager.get_session("x")
    with pytest.raises(SessionClosedError):
        await manager.list_sessions()
    with pytest.raises(SessionClosedError):
        await manager.delete_session("x")
    with pytest.raises(SessionClosedError):
        async with manager:
            pass


async def test_sessions_from_one_url_share_a_pool(redis_client: Redis) -> None:
    name = f"shared-{unique_id()}"
    url = f"{REDIS_URL}?client_name={name}"
    sessions = [RedisSession(unique_id(), url, **PREFIXES) for _ in range(50)]
    for session in sessions:
        await session.add_items([{"n": 1}])
    assert sum(c["name"] == name for c in await redis_client.client_list()) == 1
    for session in sessions[:-1]:
        await session.close()
    assert await sessions[-1].get_items() == [{"n": 1}]
    await sessions[-1].close()
    assert not any(c["name"] == name for c in await redis_client.client_list())


# --- event loops -------------------------------------------------------------------------------


def test_a_url_session_survives_event_loop_changes(redis_client: Any) -> None:
    session = RedisSession(unique_id(), REDIS_URL, **PREFIXES)
    for n in range(3):
        asyncio.run(session.add_items([{"n": n}]))
    assert asyncio.run(session.get_items()) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert asyncio.run(session.pop_item()) == {"n": 2}
    asyncio.run(session.close())


def test_runner_run_sync_after_run(redis_client: Any) -> None:
    from agents import Agent, Runner
    from agents.testing import ScriptedModel, assistant_message

    model = ScriptedModel([[assistant_message("first")], [assistant_message("second")]])
    agent = Agent(name="assistant", model=model)
    session = RedisSession(unique_id(), REDIS_URL, **PREFIXES)
    first = asyncio.run(Runner.run(agent, "hello", session=session))
    second = Runner.run_sync(agent, "again", session=session)
    assert (first.final_output, second.final_output) == ("first", "second")
    items = asyncio.run(session.get_items())
    assert [item.get("role") for item in items] == ["user", "assistant", "user", "assistant"]
    asyncio.run(session.close())


# --- many processes ----------------------------------------------------------------------------


# Children import this module afresh, with another RUN_ID: pass them the parent's prefixes.


def _write(prefixes: dict[str, Any], session_id: str, writer: int, count: int) -> None:
    async def run() -> None:
        async with RedisSession(session_id, REDIS_URL, **prefixes) as session:
            for i in range(count):
                await session.add_items([{"w": writer, "i": i}])

    asyncio.run(run())


def _pop_all(prefixes: dict[str, Any], session_id: str) -> list[Any]:
    async def run() -> list[Any]:
        popped = []
        async with RedisSession(session_id, REDIS_URL, **prefixes) as session:
            while (item := await session.pop_item()) is not None:
                popped.append(item)
        return popped

    return asyncio.run(run())


@pytest.fixture
def spawn_pool() -> Iterator[Any]:
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        yield pool


@pytest.mark.slow
async def test_eight_processes_write_one_session(make: Any, spawn_pool: Any) -> None:
    session = make()
    args = [(PREFIXES, session.session_id, w, 200) for w in range(8)]
    await asyncio.to_thread(spawn_pool.starmap, _write, args)
    items = await session.get_items()
    assert len(items) == 1600
    for w in range(8):
        assert [item["i"] for item in items if item["w"] == w] == list(range(200))


@pytest.mark.slow
async def test_eight_processes_pop_each_item_once(make: Any, spawn_pool: Any) -> None:
    session = make()
    await session.add_items([{"n": i} for i in range(1600)])
    args = [(PREFIXES, session.session_id)] * 8
    results = await asyncio.to_thread(spawn_pool.starmap, _pop_all, args)
    assert sorted(item["n"] for popped in results for item in popped) == list(range(1600))
    assert await session.get_items() == []


# --- servers of our own: unreachable, restarted, password, round trips -------------------------


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``start(*args)``: a new persistent redis-server of this test's own, with more options."""
    with redis_servers(tmp_path) as start:
        yield start


@pytest.mark.timeout(20)
async def test_an_unreachable_server_fails_fast_and_clearly() -> None:
    session = RedisSession("x", "redis://127.0.0.1:1", socket_connect_timeout=1)
    for call in (session.add_items([{"n": 1}]), session.get_items(), session.pop_item()):
        with pytest.raises(redis.exceptions.ConnectionError, match=re.escape("127.0.0.1:1")):
            await call
    await session.close()
    manager = RedisSessionManager("redis://127.0.0.1:1", socket_connect_timeout=1)
    with pytest.raises(redis.exceptions.ConnectionError):
        await manager.list_sessions()
    await manager.close()


async def test_a_restarted_server_loses_nothing(start_server: Any) -> None:
    server = start_server()
    async with RedisSession(unique_id(), server.url, socket_connect_timeout=1) as session:
        await session.add_items([{"n": 1}, {"n": 2}])
        server.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            await session.add_items([{"n": 3}])
        with pytest.raises(redis.exceptions.ConnectionError):
            await session.get_items()
        server.start()
        assert await session.get_items() == [{"n": 1}, {"n": 2}]
        await session.add_items([{"n": 3}])
        assert await session.pop_item() == {"n": 3}
        assert await session.get_items() == [{"n": 1}, {"n": 2}]


async def test_a_password_in_the_url(start_server: Any) -> None:
    server = start_server("--requirepass", "s3cr:t@/")
    wrong = RedisSession("x", server.url.replace("//", "//:wrong@"))
    with pytest.raises(redis.exceptions.AuthenticationError):
        await wrong.get_items()
    await wrong.close()
    url = server.url.replace("//", "//:s3cr%3At%40%2F@")
    async with RedisSessionManager(url) as manager:
        await manager.get_session("x").add_items([{"n": 1}])
        assert await manager.list_sessions() == ["x"]


@pytest.fixture
def tls_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("SKIPPED LOUDLY: openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_rediss_url(start_server: Any, tls_certificate: tuple[Path, Path]) -> None:
    cert, key = tls_certificate
    tls_port = free_port()
    start_server(
        *("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
    )
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
    async with RedisSession(unique_id(), url) as session:
        await session.add_items([{"n": 1}])
        assert await session.get_items() == [{"n": 1}]


async def test_each_operation_is_one_round_trip(start_server: Any) -> None:
    server = start_server()
    async with (
        RedisSession(unique_id(), server.url, ttl=60) as session,
        Redis.from_url(server.url) as watcher,
        Redis.from_url(server.url) as marker,
    ):
        await session.add_items([{"n": 0}])  # connects and loads the scripts
        await session.pop_item()
        await session.clear_session()
        await marker.ping()
        async with watcher.monitor() as monitor:
            commands = []
            await session.add_items([{"n": 1}, {"n": 2}, {"n": 3}])
            await session.get_items(limit=2)
            await session.get_items()
            await session.pop_item()
            await session.clear_session()
            await marker.echo("done")
            async for command in monitor.listen():
                if command["command"] == "ECHO done":
                    break
                if command["client_type"] != "lua":
                    commands.append(command["command"].split()[0])
    assert commands == ["EVALSHA", "LRANGE", "LRANGE", "EVALSHA", "EVALSHA"]


def test_missing_redis_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import agentmem\n"
        "try:\n"
        "    agentmem.RedisSession('s')\n"
        "except agentmem.MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 'pip install "agentmem-sessions[redis]"' in result.stdout
    assert issubclass(MissingDependencyError, ImportError)


def test_a_manager_survives_event_loop_changes(redis_client: Any) -> None:
    manager = RedisSessionManager(REDIS_URL, **PREFIXES)
    session = manager.get_session(unique_id())
    asyncio.run(session.add_items([{"n": 1}]))
    asyncio.run(session.add_items([{"n": 2}]))
    assert session.session_id in asyncio.run(manager.list_sessions())
    assert asyncio.run(session.get_items()) == [{"n": 1}, {"n": 2}]
    asyncio.run(manager.close())


async def test_unix_socket_url(start_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    start_server("--unixsocket", str(path))
    async with RedisSession(unique_id(), f"unix://{path}?db=2") as session:
        await session.add_items([{"n": 1}])
        assert await session.get_items() == [{"n": 1}]
