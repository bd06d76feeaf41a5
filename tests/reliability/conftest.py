"""Fixtures of the reliability suite: each backend's store, and private Redis and PostgreSQL
servers of its own that the fault tests may kill, restart and flush (the shared servers of the
other tests are never restarted or flushed; only this suite's own connections are killed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._servers import PostgresServer, RedisServer, postgres_server, redis_servers
from tests.conftest import REDIS_PREFIX, REDIS_URL, server_unavailable
from tests.reliability._stores import Store


@pytest.fixture
def redis_store() -> Iterator[Store]:
    """A store under this run's key prefix on the shared Redis; its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        server_unavailable(f"Redis at {REDIS_URL}", exc)
    prefix = f"{REDIS_PREFIX}:rel"
    yield Store("redis", redis_url=REDIS_URL, prefix=prefix)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.unlink(*keys[start : start + 1000])
    client.close()


SHARED_STORES = [
    pytest.param("sqlite-file", marks=pytest.mark.sqlite, id="sqlite-file"),
    pytest.param("postgres", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
    pytest.param("cached", marks=pytest.mark.cached, id="cached"),
]
"""The stores several session objects and processes share."""

ALL_STORES = [
    pytest.param("sqlite-memory", marks=pytest.mark.sqlite, id="sqlite-memory"),
    *SHARED_STORES,
]


def _store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "sqlite-memory":
        return Store(kind)
    if kind == "sqlite-file":
        return Store(kind, str(tmp_path / "reliability.db"))
    if kind == "postgres":
        return Store(kind, request.getfixturevalue("postgres_url"))
    redis: Store = request.getfixturevalue("redis_store")
    if kind == "redis":
        return redis
    return Store(kind, request.getfixturevalue("postgres_url"), redis.redis_url, redis.prefix)


@pytest.fixture(params=SHARED_STORES)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each store that processes share, in turn."""
    return _store(request.param, request, tmp_path)


@pytest.fixture(params=SHARED_STORES[:2])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The SQL stores processes share: a SQLite file, then PostgreSQL."""
    return _store(request.param, request, tmp_path)


@pytest.fixture(params=ALL_STORES)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each store, in turn, including the private in-memory SQLite."""
    return _store(request.param, request, tmp_path)


# --- private servers --------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server of this test alone, persisting every write before replying."""
    with redis_servers(tmp_path) as start:
        yield start()


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL cluster of this module alone, migrated to agentmem's head."""
    with postgres_server() as server:
        yield server
