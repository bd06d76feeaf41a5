"""Redis Cluster: what the contract suite (backends ``redis-cluster`` and ``cached-cluster``) does
not show: keys in one slot, listing across every primary, a given ``RedisCluster`` client, a
slot moved while sessions are written (ASK, MOVED, ``redis-cli --cluster reshard``), and a
primary killed and replaced by its replica.

The cluster is private to the tests (tests/_cluster.py); the tests that change it leave every
slot served.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.crc import key_slot

from agentmem import CachedSession, RedisSession, RedisSessionManager, SQLAlchemySession
from tests._cluster import Cluster, Node
from tests.conftest import REDIS_PREFIX, cluster_url, unique_id

pytestmark = pytest.mark.cluster

PREFIXES = {
    "session_prefix": f"{REDIS_PREFIX}:session",
    "messages_prefix": f"{REDIS_PREFIX}:messages",
}


def _session(cluster: Cluster, session_id: str, **kwargs: Any) -> RedisSession:
    return RedisSession(session_id, cluster_url(cluster), **PREFIXES, **kwargs)


def _slot_range_start(node: Node) -> int:
    """The lowest slot ``node`` serves."""
    with node.client() as client:
        slots = client.execute_command("CLUSTER", "SLOTS")
    return min(start for start, end, owner, *_ in slots if owner[1] == node.port)


def _id_in_slot(slot: int) -> str:
    """A fresh session id whose keys hash to ``slot``."""
    base = unique_id("slot")
    n = 0
    while key_slot(f"{base}-{n}".encode()) != slot:
        n += 1
    return f"{base}-{n}"


@pytest.mark.cached
@pytest.mark.parametrize("session_id", ["plain", "with {braces}", "}{", "%7B", "ünï", "a" * 255])
async def test_every_key_of_a_session_shares_one_slot(
    redis_cluster: Cluster, postgres_engine: Any, session_id: str
) -> None:
    redis_session = _session(redis_cluster, session_id)
    cached = CachedSession(
        SQLAlchemySession(postgres_engine, session_id), cluster_url(redis_cluster)
    )
    try:
        assert key_slot(redis_session.messages_key.encode()) == key_slot(
            redis_session.session_key.encode()
        )
        assert key_slot(cached.items_key.encode()) == key_slot(cached.state_key.encode())
        # Every script runs on the cluster (a CROSSSLOT would raise here).
        await redis_session.add_items([{"n": 1}, {"n": 2}])
        assert await redis_session.pop_item() == {"n": 2}
        await cached.add_items([{"n": 1}])
        assert await cached.get_items() == [{"n": 1}]
        assert await cached.get_items(1) == [{"n": 1}]
        assert await cached.pop_item() == {"n": 1}
    finally:
        await redis_session.clear_session()
        await redis_session.close()
        await cached.clear_session()
        await cached.close()


async def test_the_manager_lists_and_deletes_sessions_on_every_primary(
    redis_cluster: Cluster,
) -> None:
    prefix = unique_id("spread")
    ids = [f"{prefix}-{n}" for n in range(30)]
    async with RedisSessionManager(cluster_url(redis_cluster), **PREFIXES) as manager:
        for session_id in ids:
            await manager.get_session(session_id).add_items([{"id": session_id}])
        owners = {redis_cluster.primary_of(f"x{{{i}}}").port for i in ids}
        assert len(owners) == 3  # the sessions live on every primary
        listed = [i for i in await manager.list_sessions() if i.startswith(prefix)]
        assert listed == sorted(ids)
        for session_id in ids[::2]:
            assert await manager.delete_session(session_id)
        listed = [i for i in await manager.list_sessions() if i.startswith(prefix)]
        assert listed == sorted(ids[1::2])
        for session_id in ids[1::2]:
            assert await manager.delete_session(session_id)


async def test_a_given_redis_cluster_client_is_used_and_left_open(redis_cluster: Cluster) -> None:
    from redis.asyncio import RedisCluster

    client = RedisCluster.from_url(redis_cluster.url)
    try:
        async with RedisSession(unique_id(), client=client, **PREFIXES) as session:
            await session.add_items([{"n": 1}])
            assert await session.get_items() == [{"n": 1}]
            await session.clear_session()
        assert await client.ping()
    finally:
        await client.aclose()


def test_a_cluster_url_refuses_a_database_other_than_0(redis_cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="only database 0"):
        RedisSession("s", cluster_url(redis_cluster) + "/2")
    with pytest.raises(ValueError, match="only database 0"):
        RedisSessionManager(cluster_url(redis_cluster), db=1)


async def test_callers_beyond_max_connections_wait_for_one(redis_cluster: Cluster) -> None:
    async with _session(
        redis_cluster, unique_id(), max_connections=1, pool_timeout=None
    ) as session:
        await asyncio.gather(*(session.add_items([{"n": n}]) for n in range(50)))
        assert sorted(item["n"] for item in await session.get_items()) == list(range(50))
        await session.clear_session()


def _primaries_ids(cluster: Cluster) -> dict[int, str]:
    return {node.port: node.node_id() for node in cluster.primaries()}


async def test_a_slot_migrating_under_a_session_is_followed_through_ask_and_moved(
    redis_cluster: Cluster,
) -> None:
    source = redis_cluster.primaries()[0]
    target = redis_cluster.primaries()[1]
    slot = _slot_range_start(source)
    session_id = _id_in_slot(slot)
    ids = _primaries_ids(redis_cluster)
    async with _session(redis_cluster, session_id) as session:
        await session.add_items([{"n": 0}])
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
            await session.add_items([{"n": 1}])  # the keys are still on the source
            src.execute_command(
                *("MIGRATE", "127.0.0.1", target.port, "", 0, 10_000),
                *("KEYS", session.messages_key, session.session_key),
            )
            assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            await session.add_items([{"n": 2}])  # the source answers ASK
            assert await session.get_items() == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert await session.pop_item() == {"n": 2}
            for node in redis_cluster.primaries():
                with node.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
        await session.add_items([{"n": 3}])  # the source answers MOVED
        assert await session.get_items() == [{"n": 0}, {"n": 1}, {"n": 3}]
        assert redis_cluster.primary_of(session.messages_key).port == target.port
        await session.clear_session()
    redis_cluster.wait_healthy()


async def test_writers_lose_and_duplicate_nothing_while_redis_cli_reshards_their_slot(
    redis_cluster: Cluster,
) -> None:
    source = redis_cluster.primaries()[0]
    target = redis_cluster.primaries()[2]
    slot = _slot_range_start(source)
    ids = _primaries_ids(redis_cluster)
    written: dict[int, list[int]] = {w: [] for w in range(4)}
    resharded = asyncio.Event()
    async with _session(redis_cluster, _id_in_slot(slot)) as session:

        async def writer(w: int) -> None:
            # Writes until the reshard is over, then a few more (after the slot moved).
            i = 0
            after = 0
            while after < 5:
                await session.add_items([{"w": w, "i": i}])
                written[w].append(i)
                i += 1
                if resharded.is_set():
                    after += 1
                else:
                    await asyncio.sleep(0)

        async def reshard() -> None:
            try:
                await asyncio.to_thread(
                    subprocess.run,
                    [
                        *("redis-cli", "--cluster", "reshard", source.address),
                        *("--cluster-from", ids[source.port], "--cluster-to", ids[target.port]),
                        *("--cluster-slots", "1", "--cluster-yes"),
                    ],
                    check=True,
                    capture_output=True,
                )
            finally:
                resharded.set()

        await asyncio.gather(reshard(), *(writer(w) for w in range(4)))
        assert redis_cluster.primary_of(session.messages_key).port == target.port
        items = await session.get_items()
        assert len(items) == sum(len(v) for v in written.values())
        for w, acknowledged in written.items():
            assert [item["i"] for item in items if item["w"] == w] == acknowledged
        await session.clear_session()
    redis_cluster.wait_healthy()


def _wait_replicated(primary: Node, replica: Node) -> None:
    """Until the replica has applied everything the primary has (replication offsets)."""
    deadline = time.monotonic() + 60
    while True:
        offset = primary.info("replication")["master_repl_offset"]
        if replica.info("replication").get("slave_repl_offset") == offset:
            return
        assert time.monotonic() < deadline, "the replica did not catch up within 60 s"
        time.sleep(0.05)


async def _until_served(call: Any, seconds: float = 120) -> Any:
    """Retry a read while the cluster fails over (an error until a replica took over)."""
    from redis.exceptions import RedisError

    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_a_killed_primary_fails_over_and_keeps_every_replicated_write(
    redis_cluster: Cluster,
) -> None:
    async with _session(redis_cluster, unique_id("failover")) as session:
        expected = [{"n": n} for n in range(100)]
        for item in expected:
            await session.add_items([item])
        primary = redis_cluster.primary_of(session.messages_key)
        replica = redis_cluster.replica_of(primary)
        _wait_replicated(primary, replica)  # what WAIT 1 would confirm
        primary.kill()
        assert await _until_served(session.get_items) == expected
        assert redis_cluster.primary_of(session.messages_key).port == replica.port
        # Writes go on to the new primary.
        await session.add_items([{"n": 100}])
        assert await session.pop_item() == {"n": 100}
        assert await session.get_items() == expected
        await session.clear_session()
    primary.start()  # rejoins as a replica of the new primary
    redis_cluster.wait_healthy()


async def test_the_next_call_after_client_kill_on_every_node_works(redis_cluster: Cluster) -> None:
    async with _session(redis_cluster, unique_id("killed")) as session:
        for n in range(10):
            await asyncio.gather(*(session.get_items() for _ in range(4)))
            for node in redis_cluster.live():
                with node.client() as admin:
                    admin.client_kill_filter(_type="normal", skipme=True)
            await session.add_items([{"n": n}])
            assert (await session.get_items())[-1] == {"n": n}
        assert [item["n"] for item in await session.get_items()] == list(range(10))
        await session.clear_session()


# --- the session lifecycle's indexes (every session's, each owner's) live in other slots -------


def _manager(cluster: Cluster) -> RedisSessionManager:
    prefix = unique_id("life")
    return RedisSessionManager(
        cluster_url(cluster), session_prefix=f"{prefix}:session", messages_prefix=f"{prefix}:m"
    )


async def _pages(manager: RedisSessionManager, user_id: str | None, limit: int) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await manager.find_sessions(user_id=user_id, limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        seen.extend(info.session_id for info in page.items)
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


async def test_owners_sessions_on_every_primary_are_paged_and_counted(
    redis_cluster: Cluster,
) -> None:
    user, other = unique_id("u"), unique_id("u")
    on_each = [_id_in_slot(_slot_range_start(node)) for node in redis_cluster.primaries()]
    ids = [*on_each, *(f"{unique_id('own')}-{n:02d}" for n in range(9))]
    assert len({redis_cluster.primary_of(f"x{{{i}}}").port for i in ids}) == 3
    async with _manager(redis_cluster) as manager:
        for session_id in ids:
            await manager.get_session(session_id, user_id=user).add_items([{"id": session_id}])
        await manager.get_session("theirs", user_id=other).add_items([{"n": 1}])
        await manager.get_session("nobodys").add_items([{"n": 1}])
        await manager.get_session(ids[3], user_id=user).add_items([{"again": True}])
        newest_first = [ids[3], *(i for i in reversed(ids) if i != ids[3])]
        assert await _pages(manager, user, 5) == newest_first
        assert await _pages(manager, None, 4) == [ids[3], "nobodys", "theirs", *newest_first[1:]]
        assert (await manager.count_sessions(user), await manager.count_sessions(other)) == (12, 1)
        assert await manager.count_sessions() == 14

        assert await manager.delete_session(ids[0])
        await manager.get_session(ids[1], user_id=user).clear_session()
        await manager.get_session(ids[2]).update_info(user_id=other)
        assert await _pages(manager, user, 5) == newest_first[:-3]
        assert await _pages(manager, other, 5) == ["theirs", ids[2]]  # its activity is older
        assert (await manager.count_sessions(user), await manager.count_sessions(other)) == (9, 2)
        assert await manager.count_sessions() == 12
        for session_id in await manager.list_sessions():
            await manager.delete_session(session_id)
        assert await manager.count_sessions() == 0


async def test_an_index_entry_is_listed_only_if_the_session_backs_it(
    redis_cluster: Cluster,
) -> None:
    from agentmem.redis._lifecycle import index_keys

    user = unique_id("u")
    async with _manager(redis_cluster) as manager:
        await manager.get_session("real", user_id=user).add_items([{"n": 1}])
        await manager.get_session("elsewhere", user_id=unique_id("u")).add_items([{"n": 1}])
        activity, expiry = index_keys(manager.session_prefix, user)
        client = manager._clients.get()
        # What a process that died between a write and its index update leaves behind: entries
        # of a deleted session and of a session that has another owner now, newest of all.
        for ghost in ("deleted", "elsewhere"):
            await client.zadd(activity, {ghost: 4e9})
            await client.zadd(expiry, {ghost: float("inf")})
        assert await _pages(manager, user, 1) == ["real"]
        assert await client.zrange(activity, 0, -1) == [b"real"]  # the stale ones were dropped
        assert await client.zrange(expiry, 0, -1) == [b"real"]
        for session_id in ("real", "elsewhere"):
            await manager.delete_session(session_id)


async def test_purge_and_count_check_expired_entries_against_the_sessions(
    redis_cluster: Cluster,
) -> None:
    from agentmem.redis._lifecycle import index_keys

    user = unique_id("u")
    async with _manager(redis_cluster) as manager:
        doomed = [f"doomed-{n}" for n in range(5)]
        for session_id in doomed:
            await manager.get_session(session_id, user_id=user, ttl=0.005).add_items([{"n": 1}])
        live = manager.get_session("live", user_id=user, ttl=3600)
        await live.add_items([{"n": 1}])
        for session_id in doomed:  # native TTL: their keys go by themselves
            deadline = time.monotonic() + 60
            while await manager.session_info(session_id) is not None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
        # A read that slid the expiry does not update the index on a cluster: an entry may say
        # "expired" of a live session. Made so here by hand; the clean asks the session.
        client = manager._clients.get()
        for owner in (None, user):
            await client.zadd(index_keys(manager.session_prefix, owner)[1], {"live": 1})
        batches: list[int] = []
        assert await manager.purge_expired(batch_size=2, on_batch=batches.append) == 5
        assert max(batches) <= 2
        assert await manager.count_sessions(user) == 1
        assert await _pages(manager, None, 10) == ["live"]
        for owner in (None, user):  # the live session's expiry entry was put right
            score = await client.zscore(index_keys(manager.session_prefix, owner)[1], "live")
            assert score is not None and score > time.time() * 1000
        assert await manager.purge_expired() == 0
        await manager.delete_session("live")


async def test_forks_replacements_and_imports_are_indexed_on_a_cluster(
    redis_cluster: Cluster,
) -> None:
    from agentmem.manager import Conversation

    async with _manager(redis_cluster) as manager:
        source = manager.get_session("source")
        await source.add_items([{"n": 1}, {"n": 2}])
        await source.fork("forked")  # another slot: read, then written on the new one
        now = datetime.now(UTC)
        await manager.write_conversation(Conversation("imported", [{"n": 1}], now, now))
        assert await _pages(manager, None, 2) == ["imported", "forked", "source"]
        assert await source.replace_items([{"summary": True}])
        assert await _pages(manager, None, 2) == ["source", "imported", "forked"]
        for session_id in ("source", "forked", "imported"):
            assert await manager.delete_session(session_id)
        assert await manager.count_sessions() == 0


async def test_reindex_adds_a_session_whose_index_update_was_lost(redis_cluster: Cluster) -> None:
    from agentmem.redis._lifecycle import index_keys

    user = unique_id("u")
    async with _manager(redis_cluster) as manager:
        await manager.get_session("kept", user_id=user).add_items([{"n": 1}])
        await manager.get_session("lost", user_id=user).add_items([{"n": 1}])
        client = manager._clients.get()
        for owner in (None, user):  # what a process that died after the write's script leaves
            await client.zrem(index_keys(manager.session_prefix, owner)[0], "lost")
            await client.zrem(index_keys(manager.session_prefix, owner)[1], "lost")
        assert await _pages(manager, user, 10) == ["kept"]
        assert await manager.reindex() == 1
        assert await _pages(manager, user, 10) == ["lost", "kept"]
        assert await _pages(manager, None, 10) == ["lost", "kept"]
        for session_id in ("kept", "lost"):
            await manager.delete_session(session_id)
