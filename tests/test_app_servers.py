"""Many app servers: 4 processes, each with its own manager (its own pool or engine), take turns
on the same 200 sessions at once, on the Redis Cluster, on PostgreSQL through PgBouncer in
transaction mode, and in the cached mode on both: no item is lost, duplicated or out of order;
with each turn inside ``session.exclusive()``, no two turns on one session overlap."""

from __future__ import annotations

import multiprocessing
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import aclosing
from typing import Any

import pytest

from tests import _app_servers
from tests.conftest import cluster_url, through_pgbouncer, unique_id

SERVERS = 4
SESSIONS = 200
TURNS = 3
LOCKED_SESSIONS = 50

KINDS = [
    pytest.param("redis-cluster", marks=pytest.mark.cluster),
    pytest.param("pgbouncer", marks=pytest.mark.pgbouncer),
    pytest.param("cached-cluster", marks=[pytest.mark.cluster, pytest.mark.pgbouncer]),
]


def _serve(
    kind: str, sql_url: str, cluster: str, session_ids: list[str], exclusive: bool, timeout: float
) -> list[int]:
    """Run ``SERVERS`` app servers (spawned processes) taking ``TURNS`` turns on every session;
    how many turns each stored."""
    with ProcessPoolExecutor(SERVERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = [
            pool.submit(
                _app_servers.serve_turns,
                kind,
                sql_url,
                cluster,
                session_ids,
                server,
                TURNS,
                exclusive,
            )
            for server in range(SERVERS)
        ]
        return [run.result(timeout=timeout) for run in runs]


async def _stored(
    kind: str, sql_url: str, cluster: str, session_ids: list[str]
) -> AsyncIterator[tuple[str, list[Any]]]:
    """Each session's stored history, read through a manager of its own; the session is
    deleted once the caller has checked it."""
    async with _app_servers.open_manager(kind, sql_url, cluster) as manager:
        for session_id in session_ids:
            session = manager.get_session(session_id)
            yield session_id, await session.get_items()
            await manager.delete_session(session_id)
            await session.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
async def test_app_servers_taking_turns_on_shared_sessions_lose_nothing(
    kind: str, redis_cluster: Any, pgbouncer_servers: Any, postgres_url: str
) -> None:
    sql_url = through_pgbouncer(pgbouncer_servers("transaction"), postgres_url)
    cluster = cluster_url(redis_cluster)
    prefix = unique_id("apps")
    session_ids = [f"{prefix}-{n}" for n in range(SESSIONS)]
    served = _serve(kind, sql_url, cluster, session_ids, exclusive=False, timeout=600)
    assert served == [SESSIONS * TURNS] * SERVERS
    async with aclosing(_stored(kind, sql_url, cluster, session_ids)) as stored:
        async for session_id, items in stored:
            assert len(items) == SERVERS * TURNS * 2, session_id
            for index in range(0, len(items), 2):  # each turn's batch whole, user first
                user, assistant = items[index], items[index + 1]
                assert (user["role"], assistant["role"]) == ("user", "assistant")
                assert (user["server"], user["turn"]) == (assistant["server"], assistant["turn"])
            for server in range(SERVERS):
                turns = [i["turn"] for i in items if i["server"] == server and i["role"] == "user"]
                assert turns == list(range(TURNS)), (session_id, server)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
async def test_app_servers_turns_under_the_lock_never_overlap(
    kind: str, redis_cluster: Any, pgbouncer_servers: Any, postgres_url: str
) -> None:
    """Each turn reads the whole history and appends inside ``exclusive()``: every turn must
    have seen exactly the items stored before it, which two overlapping turns would not."""
    sql_url = through_pgbouncer(pgbouncer_servers("transaction"), postgres_url)
    cluster = cluster_url(redis_cluster)
    prefix = unique_id("apps-locked")
    session_ids = [f"{prefix}-{n}" for n in range(LOCKED_SESSIONS)]
    served = _serve(kind, sql_url, cluster, session_ids, exclusive=True, timeout=900)
    assert served == [LOCKED_SESSIONS * TURNS] * SERVERS
    async with aclosing(_stored(kind, sql_url, cluster, session_ids)) as stored:
        async for session_id, items in stored:
            assert len(items) == SERVERS * TURNS * 2, session_id
            users = items[0::2]
            assert [user["seen"] for user in users] == list(range(0, len(items), 2)), session_id
            for user, assistant in zip(users, items[1::2], strict=True):
                assert (user["server"], user["turn"]) == (assistant["server"], assistant["turn"])
