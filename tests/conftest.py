"""Shared fixtures: real servers, per-run isolation, the backend factories of the contract suite.

Server-backed tests use the real PostgreSQL and Redis named by ``AGENTMEM_TEST_POSTGRES_URL`` and
``AGENTMEM_TEST_REDIS_URL``. Under ``CI`` an unreachable server fails the run; locally those tests
skip with a loud reason.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentmem.manager import SessionManagerABC
from tests._backends import (
    RUN_ID,
    Backend,
    SessionFactory,
    engine_of,
    new_postgres_database,
    session_factory,
    unique_id,
)

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
POSTGRES_URL = os.environ.get(
    "AGENTMEM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AGENTMEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = bool(os.environ.get("CI"))

T = TypeVar("T")


def run_in_new_loop(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion in a fresh event loop on another thread: session-scoped
    sync fixtures may be set up while a test's loop is already running."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


def server_unavailable(what: str, error: BaseException) -> None:
    """Fail under CI, skip loudly elsewhere."""
    message = f"{what} is not reachable ({type(error).__name__}: {error})"
    if IN_CI:
        pytest.fail(f"{message}; server-backed tests must run in CI", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


@pytest.fixture(scope="session")
def sdk_items() -> list[dict[str, Any]]:
    """Items the OpenAI Agents SDK Runner really stores (shared/fixtures/sdk_items.json)."""
    import json

    with open(FIXTURES / "sdk_items.json", encoding="utf-8") as f:
        items: list[dict[str, Any]] = json.load(f)
    return items


# --- PostgreSQL: one database per test run -----------------------------------------------------


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """Create a database for this run, yield its ``postgresql+asyncpg://`` URL, drop it after."""
    from agentmem.migrate import async_url

    with new_postgres_database(POSTGRES_URL, f"agentmem_test_{RUN_ID}") as url:
        yield async_url(url)


@pytest.fixture(scope="session")
def postgres_url(postgres_database: str) -> str:
    """The per-run database, migrated to head once."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import migrate

    async def setup() -> None:
        engine = create_async_engine(postgres_database)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    run_in_new_loop(setup)
    return postgres_database


@pytest.fixture
async def postgres_engine(postgres_url: str) -> AsyncIterator[Any]:
    async with engine_of(Backend("postgres", postgres_url)) as engine:
        yield engine


# --- backend factories for the contract suite --------------------------------------------------
# Each yields ``make(session_id=NEW_ID, **kwargs) -> Session``: a new session object on that backend
# (a fresh unique id unless one is given), closed after the test. Items are removed after the test.
# How each backend is opened is the registry's (tests/_backends.py).


async def _factory(backend: Backend, engine: Any = None) -> AsyncIterator[SessionFactory]:
    # No ``async with``/``finally`` around the yield: the SDK's ``Runner.run_sync`` calls
    # ``loop.shutdown_asyncgens()``, which would close this generator, and so the test's
    # sessions, in the middle of the test. The fixture's teardown resumes it normally.
    factory = session_factory(backend, engine)
    make = await factory.__aenter__()
    yield make
    await factory.__aexit__(None, None, None)


@pytest.fixture
async def sqlite_memory_session() -> AsyncIterator[SessionFactory]:
    async for make in _factory(Backend("sqlite-memory")):
        yield make


@pytest.fixture
async def sqlite_file_session(tmp_path: Path) -> AsyncIterator[SessionFactory]:
    async for make in _factory(Backend("sqlite-file", str(tmp_path / "conversations.db"))):
        yield make


@pytest.fixture
async def postgres_session(
    postgres_url: str, postgres_engine: Any
) -> AsyncIterator[SessionFactory]:
    async for make in _factory(Backend("postgres", postgres_url), postgres_engine):
        yield make


@pytest.fixture
async def psycopg_session(postgres_url: str) -> AsyncIterator[SessionFactory]:
    """SQLAlchemySession in the OpenAI Agents SDK's form on a ``postgresql+psycopg`` engine
    (the SQLAlchemy Core path)."""
    async for make in _factory(Backend("postgres-psycopg", postgres_url)):
        yield make


@pytest.fixture
async def sqlalchemy_sqlite_session(tmp_path: Path) -> AsyncIterator[SessionFactory]:
    """SQLAlchemySession on a caller's aiosqlite engine (tables created on first use)."""
    async for make in _factory(Backend("sqlalchemy-sqlite", str(tmp_path / "engine.db"))):
        yield make


@pytest.fixture
async def sqlalchemy_memory_session() -> AsyncIterator[SessionFactory]:
    """SQLAlchemySession on a caller's in-memory aiosqlite engine (``sqlite+aiosqlite://``)."""
    async for make in _factory(Backend("sqlalchemy-memory")):
        yield make


@pytest.fixture
async def sqlalchemy_shared_cache_session() -> AsyncIterator[SessionFactory]:
    """SQLAlchemySession on a named shared-cache in-memory database, with a pool of several
    connections to it."""
    async for make in _factory(Backend("sqlalchemy-shared-cache", unique_id("mem"))):
        yield make


@pytest.fixture
async def sqlalchemy_static_pool_session() -> AsyncIterator[SessionFactory]:
    """SQLAlchemySession on an in-memory engine with an explicit ``StaticPool``: every
    checkout, concurrent ones too, gets the one connection."""
    async for make in _factory(Backend("sqlalchemy-static-pool")):
        yield make


@pytest.fixture
async def sqlalchemy_memory_url_session() -> AsyncIterator[SessionFactory]:
    """``SQLAlchemySession.from_url`` on ``sqlite+aiosqlite:///:memory:``: the sessions share
    one engine, and so one database, until the last of them closes."""
    async for make in _factory(Backend("sqlalchemy-memory-url")):
        yield make


# --- PgBouncer: private poolers in front of the test PostgreSQL --------------------------------


@pytest.fixture(scope="session")
def pgbouncer_servers(postgres_url: str) -> Any:
    """``get(pool_mode)``: a PgBouncer in that mode (``transaction`` or ``session``), started on
    first use, stopped at the end of the run (see tests/_pgbouncer.py)."""
    from tests._pgbouncer import PgBouncer, pgbouncer_installed

    if not pgbouncer_installed():
        message = "pgbouncer is not installed (apt-get install pgbouncer)"
        if IN_CI:
            pytest.fail(f"{message}; the PgBouncer tests must run in CI", pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {message}")
    started: dict[str, PgBouncer] = {}

    def get(pool_mode: str) -> PgBouncer:
        if pool_mode not in started:
            bouncer = PgBouncer(POSTGRES_URL, pool_mode)
            bouncer.start()
            started[pool_mode] = bouncer
        return started[pool_mode]

    yield get
    for bouncer in started.values():
        bouncer.stop()


def through_pgbouncer(bouncer: Any, postgres_url: str) -> str:
    """The ``postgresql+asyncpg://`` URL of the database of ``postgres_url`` through ``bouncer``."""
    from sqlalchemy.engine import make_url

    database = make_url(postgres_url).database or "postgres"
    return str(bouncer.url(database)).replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def pgbouncer_engine(pgbouncer_servers: Any, postgres_url: str) -> AsyncIterator[Any]:
    """An engine on this run's database through PgBouncer in transaction mode."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import pgbouncer_connect_args

    url = through_pgbouncer(pgbouncer_servers("transaction"), postgres_url)
    engine = create_async_engine(url, connect_args=pgbouncer_connect_args())
    yield engine
    await engine.dispose()


@pytest.fixture
async def pgbouncer_session(
    pgbouncer_servers: Any, postgres_url: str, pgbouncer_engine: Any
) -> AsyncIterator[SessionFactory]:
    url = through_pgbouncer(pgbouncer_servers("transaction"), postgres_url)
    async for make in _factory(Backend("pgbouncer", url), pgbouncer_engine):
        yield make


# --- Redis: one key prefix per test run ---------------------------------------------------------

REDIS_PREFIX = f"agentmem-test-{RUN_ID}"


@pytest.fixture
async def redis_client() -> AsyncIterator[Any]:
    """A ``redis.asyncio`` client on the test server; this run's keys are deleted afterwards."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        server_unavailable(f"Redis at {REDIS_URL}", exc)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{REDIS_PREFIX}:*", count=1000)]
    for start in range(0, len(keys), 1000):
        await client.unlink(*keys[start : start + 1000])
    await client.aclose()


@pytest.fixture
async def redis_session(redis_client: Any) -> AsyncIterator[SessionFactory]:
    async for make in _factory(Backend("redis", redis_url=REDIS_URL, prefix=REDIS_PREFIX)):
        yield make


@pytest.fixture
async def cached_session(
    postgres_url: str, postgres_engine: Any, redis_client: Any
) -> AsyncIterator[SessionFactory]:
    """CachedSession: SQLAlchemySession on PostgreSQL behind this run's Redis keys."""
    backend = Backend("cached", postgres_url, REDIS_URL, REDIS_PREFIX)
    async for make in _factory(backend, postgres_engine):
        yield make


# --- Redis Cluster: a private one, started once per test session -------------------------------


@pytest.fixture(scope="session")
def redis_cluster() -> Any:
    """Three primaries with a replica each on free loopback ports (see tests/_cluster.py)."""
    from tests._cluster import Cluster, redis_cluster_installed

    if not redis_cluster_installed():
        message = "redis-server and redis-cli are not installed; the Redis Cluster tests need them"
        if IN_CI:
            pytest.fail(f"{message}; they must run in CI", pytrace=False)
        pytest.skip(f"SKIPPED LOUDLY: {message}")
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def cluster_url(cluster: Any) -> str:
    """The agentmem URL of the test cluster (``redis+cluster://`` names a cluster node)."""
    return str(cluster.url).replace("redis://", "redis+cluster://", 1)


@pytest.fixture
async def redis_cluster_session(redis_cluster: Any) -> AsyncIterator[SessionFactory]:
    backend = Backend("redis-cluster", redis_url=cluster_url(redis_cluster), prefix=REDIS_PREFIX)
    async for make in _factory(backend):
        yield make


@pytest.fixture
async def cached_cluster_session(
    postgres_url: str, postgres_engine: Any, redis_cluster: Any
) -> AsyncIterator[SessionFactory]:
    """CachedSession: SQLAlchemySession on PostgreSQL behind the test Redis Cluster."""
    backend = Backend("cached-cluster", postgres_url, cluster_url(redis_cluster), REDIS_PREFIX)
    async for make in _factory(backend, postgres_engine):
        yield make


# Backends of the contract suite: one fixture name and one marker each.
BACKENDS = [
    pytest.param("sqlite_memory_session", marks=pytest.mark.sqlite, id="sqlite-memory"),
    pytest.param("sqlite_file_session", marks=pytest.mark.sqlite, id="sqlite-file"),
    pytest.param("sqlalchemy_sqlite_session", marks=pytest.mark.sqlite, id="sqlalchemy-sqlite"),
    pytest.param("sqlalchemy_memory_session", marks=pytest.mark.sqlite, id="sqlalchemy-memory"),
    pytest.param(
        "sqlalchemy_memory_url_session", marks=pytest.mark.sqlite, id="sqlalchemy-memory-url"
    ),
    pytest.param(
        "sqlalchemy_shared_cache_session", marks=pytest.mark.sqlite, id="sqlalchemy-shared-cache"
    ),
    pytest.param(
        "sqlalchemy_static_pool_session", marks=pytest.mark.sqlite, id="sqlalchemy-static-pool"
    ),
    pytest.param("postgres_session", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("pgbouncer_session", marks=pytest.mark.pgbouncer, id="pgbouncer"),
    pytest.param("psycopg_session", marks=pytest.mark.postgres, id="postgres-psycopg"),
    pytest.param("redis_session", marks=pytest.mark.redis, id="redis"),
    pytest.param("cached_session", marks=pytest.mark.cached, id="cached"),
    pytest.param("redis_cluster_session", marks=pytest.mark.cluster, id="redis-cluster"),
    pytest.param(
        "cached_cluster_session",
        marks=[pytest.mark.cluster, pytest.mark.cached],
        id="cached-cluster",
    ),
]


@pytest.fixture(params=BACKENDS)
def make_session(request: pytest.FixtureRequest) -> SessionFactory:
    """A factory of sessions on each backend in turn (see ``BACKENDS``)."""
    factory: SessionFactory = request.getfixturevalue(request.param)
    return factory


# --- the session managers of every backend (the manager contract, test_managers.py) --------


@dataclass
class ManagerCase:
    """A manager under test and the session ids this test may use."""

    manager: SessionManagerABC[Any]
    prefix: str = field(default_factory=lambda: unique_id("m"))

    def new_id(self, name: str = "") -> str:
        return f"{self.prefix}-{name or uuid.uuid4().hex[:8]}"

    async def mine(self) -> list[str]:
        return [i for i in await self.manager.list_sessions() if i.startswith(self.prefix)]


async def _case(manager: SessionManagerABC[Any]) -> AsyncIterator[ManagerCase]:
    case = ManagerCase(manager)
    yield case
    if not manager.closed:
        for session_id in await case.mine():
            await manager.delete_session(session_id)
        await manager.close()


async def _backend_case(backend: Backend, engine: Any = None) -> AsyncIterator[ManagerCase]:
    """The manager of ``backend`` (from the registry, tests/_backends.py) on ``engine``."""
    async with engine_of(backend, engine) as shared_engine:
        async for case in _case(backend.manager(engine=shared_engine)):
            yield case


@pytest.fixture
async def sqlite_memory_manager() -> AsyncIterator[ManagerCase]:
    async for case in _backend_case(Backend("sqlite-memory")):
        yield case


@pytest.fixture
async def sqlite_file_manager(tmp_path: Path) -> AsyncIterator[ManagerCase]:
    async for case in _backend_case(Backend("sqlite-file", str(tmp_path / "managed.db"))):
        yield case


@pytest.fixture
async def sqlalchemy_sqlite_manager(tmp_path: Path) -> AsyncIterator[ManagerCase]:
    async for case in _backend_case(Backend("sqlalchemy-sqlite", str(tmp_path / "engine.db"))):
        yield case


@pytest.fixture
async def postgres_manager(postgres_url: str, postgres_engine: Any) -> AsyncIterator[ManagerCase]:
    async for case in _backend_case(Backend("postgres", postgres_url), postgres_engine):
        yield case


@pytest.fixture
async def postgres_url_manager(postgres_url: str) -> AsyncIterator[ManagerCase]:
    """``SQLAlchemySessionManager.from_url``: no engine given, the manager builds its own."""
    async for case in _case(Backend("postgres", postgres_url).manager()):
        yield case


@pytest.fixture
async def redis_manager(redis_client: Any) -> AsyncIterator[ManagerCase]:
    prefix = f"{REDIS_PREFIX}:{uuid.uuid4().hex[:8]}"
    async for case in _backend_case(Backend("redis", redis_url=REDIS_URL, prefix=prefix)):
        yield case


@pytest.fixture
async def cached_manager(
    postgres_url: str, postgres_engine: Any, redis_client: Any
) -> AsyncIterator[ManagerCase]:
    backend = Backend("cached", postgres_url, REDIS_URL, REDIS_PREFIX)
    async for case in _backend_case(backend, postgres_engine):
        yield case


@pytest.fixture
async def pgbouncer_manager(
    pgbouncer_servers: Any, postgres_url: str, pgbouncer_engine: Any
) -> AsyncIterator[ManagerCase]:
    url = through_pgbouncer(pgbouncer_servers("transaction"), postgres_url)
    async for case in _backend_case(Backend("pgbouncer", url), pgbouncer_engine):
        yield case


@pytest.fixture
async def redis_cluster_manager(redis_cluster: Any) -> AsyncIterator[ManagerCase]:
    prefix = f"{REDIS_PREFIX}:{uuid.uuid4().hex[:8]}"
    backend = Backend("redis-cluster", redis_url=cluster_url(redis_cluster), prefix=prefix)
    async for case in _backend_case(backend):
        yield case


@pytest.fixture
async def cached_cluster_manager(
    postgres_url: str, postgres_engine: Any, redis_cluster: Any
) -> AsyncIterator[ManagerCase]:
    backend = Backend("cached-cluster", postgres_url, cluster_url(redis_cluster), REDIS_PREFIX)
    async for case in _backend_case(backend, postgres_engine):
        yield case


MANAGERS = [
    pytest.param("sqlite_memory_manager", marks=pytest.mark.sqlite, id="sqlite-memory"),
    pytest.param("sqlite_file_manager", marks=pytest.mark.sqlite, id="sqlite-file"),
    pytest.param("sqlalchemy_sqlite_manager", marks=pytest.mark.sqlite, id="sqlalchemy-sqlite"),
    pytest.param("postgres_manager", marks=pytest.mark.postgres, id="postgres"),
    pytest.param("postgres_url_manager", marks=pytest.mark.postgres, id="postgres-url"),
    pytest.param("pgbouncer_manager", marks=pytest.mark.pgbouncer, id="pgbouncer"),
    pytest.param("redis_manager", marks=pytest.mark.redis, id="redis"),
    pytest.param("cached_manager", marks=pytest.mark.cached, id="cached"),
    pytest.param("redis_cluster_manager", marks=pytest.mark.cluster, id="redis-cluster"),
    pytest.param(
        "cached_cluster_manager",
        marks=[pytest.mark.cluster, pytest.mark.cached],
        id="cached-cluster",
    ),
]
