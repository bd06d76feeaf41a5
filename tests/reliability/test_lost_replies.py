"""A write whose reply is lost, on every server backend: a proxy swallows the server's reply to
the write and then closes the connection (the server did the work; the client cannot know).

``add_items`` is retried once on a new connection and carries a batch id that the store
recognises, so the caller is told it succeeded and the items are stored exactly once.
``pop_item`` and ``clear_session`` are never sent again (a second pop would remove another item,
a second clear the items other clients added meanwhile): the caller gets the connection error,
and the write was applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from agentmem import CachedSession, Session, SQLAlchemySession
from tests._proxy import Proxy
from tests.conftest import unique_id
from tests.reliability._stores import Store

BACKENDS = [
    pytest.param("postgres", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
    pytest.param("cached", marks=pytest.mark.cached, id="cached"),
]


@dataclass
class Lossy:
    """A proxy to the backend's server, a session whose calls go through it, and one that
    talks to the server directly."""

    proxy: Proxy
    through: Session
    direct: Session


@pytest.fixture(params=BACKENDS)
def servers(request: pytest.FixtureRequest) -> tuple[str, str, Store | None]:
    """The backend, the PostgreSQL URL ("" for Redis) and the Redis store (None for
    PostgreSQL) of each server backend in turn."""
    backend: str = request.param
    postgres = "" if backend == "redis" else request.getfixturevalue("postgres_url")
    redis = None if backend == "postgres" else request.getfixturevalue("redis_store")
    return backend, postgres, redis


@contextlib.asynccontextmanager
async def lossy(servers: tuple[str, str, Store | None], session_id: str) -> AsyncIterator[Lossy]:
    backend, postgres_url, redis = servers
    engines: list[Any] = []
    if redis is not None and backend == "redis":
        url = make_url(redis.redis_url.replace("redis://", "redis+x://", 1))
        proxy = Proxy(url.host or "127.0.0.1", url.port or 6379)
        await proxy.start()
        through_url = f"redis://127.0.0.1:{proxy.port}/{url.database or 0}"
        through = Store("redis", redis_url=through_url, prefix=redis.prefix)
        sessions = Lossy(proxy, through.open(session_id), redis.open(session_id))
    else:
        url = make_url(postgres_url)
        proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
        await proxy.start()
        engines = [
            create_async_engine(url.set(host="127.0.0.1", port=proxy.port), pool_size=1),
            create_async_engine(postgres_url),
        ]
        stores: list[Session] = [SQLAlchemySession(engine, session_id) for engine in engines]
        if redis is not None:
            key_prefix = f"{redis.prefix}:cache"
            stores = [
                CachedSession(store, redis.redis_url, key_prefix=key_prefix)  # type: ignore[arg-type]
                for store in stores
            ]
        sessions = Lossy(proxy, *stores)
    try:
        yield sessions
    finally:
        for session in (sessions.through, sessions.direct):
            await session.close()  # type: ignore[attr-defined]
        for engine in engines:
            await engine.dispose()
        await proxy.aclose()


@pytest.mark.parametrize("write", ["add", "pop", "clear"])
async def test_a_write_whose_reply_is_lost_is_applied_once(
    write: str, servers: tuple[str, str, Store | None]
) -> None:
    async with lossy(servers, unique_id("lost")) as sessions:
        await _lose_a_reply(write, sessions.proxy, sessions.through, sessions.direct)


async def _lose_a_reply(write: str, proxy: Proxy, a: Session, b: Session) -> None:
    # Warm A's connection up (connected, each statement prepared or script loaded) with the
    # same writes.
    await a.add_items([{"n": "warm"}])
    assert await a.pop_item() == {"n": "warm"}
    await a.clear_session()
    await b.add_items([{"n": 1}, {"n": 2}])
    assert await a.get_items() == [{"n": 1}, {"n": 2}]
    call = {
        "add": lambda: a.add_items([{"n": 3}]),
        "pop": a.pop_item,
        "clear": a.clear_session,
    }[write]
    proxy.swallow_replies()
    task = asyncio.create_task(call())
    await asyncio.wait_for(proxy.swallowed.wait(), 60)  # the server has done it: the reply is lost
    # Meanwhile another client sees the write and adds an item; it is told it is stored.
    seen = await b.get_items()
    await b.add_items([{"n": "b"}])
    await proxy.cut()
    expected = {"add": [{"n": 1}, {"n": 2}, {"n": 3}], "pop": [{"n": 1}], "clear": []}[write]
    if write == "add":
        # Changed by the batch ids: the retry on a new connection finds the batch stored.
        await asyncio.wait_for(task, 60)
    else:
        with pytest.raises(Exception) as raised:
            await asyncio.wait_for(task, 60)
        assert not isinstance(raised.value, TimeoutError)
    assert seen == expected
    # Applied once, and B's acknowledged item is still there.
    assert await b.get_items() == [*expected, {"n": "b"}]
    assert await a.get_items() == [*expected, {"n": "b"}]
    await b.clear_session()
