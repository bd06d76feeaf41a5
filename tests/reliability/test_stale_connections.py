"""Pooled Redis connections the server has closed (``CLIENT KILL``, a restart) never fail the next
call, with hiredis as the reply parser (the ``redis`` extra installs it) as without.

On a private server: ``CLIENT KILL`` on the shared one would cut the other tests' connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.utils
from redis.asyncio import Redis

from agentmem import CachedSession, RedisSession, SQLiteSession
from tests._servers import RedisServer
from tests.conftest import unique_id

pytestmark = pytest.mark.redis

ROUNDS = 20
POOL = 4


def test_the_redis_extra_installs_hiredis() -> None:
    assert redis.utils.HIREDIS_AVAILABLE


def _sessions(server: RedisServer, tmp_path: Path) -> list[Any]:
    session_id = unique_id("stale")
    return [
        RedisSession(session_id, server.url, max_connections=POOL),
        CachedSession(
            SQLiteSession(session_id, tmp_path / "store.db"),
            server.url,
            max_connections=POOL,
        ),
    ]


async def _fill_pool(session: Any) -> None:
    """Open every connection of the pool (calls under way at once each take one)."""
    await asyncio.gather(*(session.get_items() for _ in range(POOL)))


async def _every_call_works(session: Any, n: int) -> None:
    await session.add_items([{"n": n}, {"n": -1}])
    assert await session.pop_item() == {"n": -1}
    assert (await session.get_items())[-1] == {"n": n}
    assert await session.get_items(1) == [{"n": n}]


async def _each_round(
    server: RedisServer, tmp_path: Path, close_all: Callable[[], Awaitable[None]]
) -> None:
    sessions = _sessions(server, tmp_path)
    try:
        for n in range(ROUNDS):
            for session in sessions:
                await _fill_pool(session)
            await close_all()
            for session in sessions:
                await _every_call_works(session, n)
        for session in sessions:
            assert [item["n"] for item in await session.get_items()] == list(range(ROUNDS))
    finally:
        for session in sessions:
            await session.close()


async def test_the_next_call_after_client_kill_works(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    async with Redis.from_url(private_redis.url) as admin:

        async def kill_every_client() -> None:
            assert await admin.client_kill_filter(_type="normal", skipme=True) >= POOL

        await _each_round(private_redis, tmp_path, kill_every_client)


async def test_the_next_call_after_a_server_restart_works(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    async def restart() -> None:
        private_redis.kill()
        await asyncio.to_thread(private_redis.start)
        # The port opens before the append-only file is loaded (replies are LOADING until then).
        async with Redis.from_url(private_redis.url) as admin:
            for _ in range(6000):  # a minute at most
                if not (await admin.info("persistence"))["loading"]:
                    break
                await asyncio.sleep(0.01)

    await _each_round(private_redis, tmp_path, restart)
