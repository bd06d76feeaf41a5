"""Shared fixtures: real servers, per-run isolation, the backend factories of the contract suite.

Server-backed tests use the real PostgreSQL and Redis named by ``AGENTMEM_TEST_POSTGRES_URL`` and
``AGENTMEM_TEST_REDIS_URL``. Under ``CI`` an unreachable server fails the run; locally those tests
skip with a loud reason.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentmem import Session

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
POSTGRES_URL = os.environ.get(
    "AGENTMEM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AGENTMEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = bool(os.environ.get("CI"))
RUN_ID = uuid.uuid4().hex[:10]

SessionFactory = Callable[..., Awaitable[Session]]
T = TypeVar("T")
NEW_ID: Any = object()  # the factories' default: a fresh unique session id


def run_in_new_loop(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion in a fresh event loop on another thread: session-scoped
    sync fixtures may be set up while a test's loop is already running."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


def unique_id(prefix: str = "s") -> str:
    """A session id no other test (or test run) uses."""
    return f"{prefix}-{RUN_ID}-{uuid.uuid4().hex[:12]}"


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


def _with_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_database() -> Any:
    """Create a database for this run, yield its ``postgresql+asyncpg://`` URL, drop it after."""
    import asyncpg

    admin_url = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    name = f"agentmem_test_{RUN_ID}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        run_in_new_loop(lambda: admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        server_unavailable(f"PostgreSQL at {POSTGRES_URL}", exc)
    url = _with_database(admin_url, name).replace("postgresql://", "postgresql+asyncpg://", 1)
    yield url
    run_in_new_loop(lambda: admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(postgres_url)
    yield engine
    await engine.dispose()


# --- backend factories for the contract suite --------------------------------------------------
# Each yields ``make(session_id=NEW_ID, **kwargs) -> Session``: a new session object on that backend
# (a fresh unique id unless one is given), closed after the test. Items are removed after the test.


async def _closing_factory(build: Callable[..., Session]) -> AsyncIterator[SessionFactory]:
    made: list[Session] = []

    async def make(session_id: Any = NEW_ID, **kwargs: Any) -> Session:
        session = build(unique_id() if session_id is NEW_ID else session_id, **kwargs)
        made.append(session)
        return session

    yield make
    for session in made:
        if not getattr(session, "closed", False):
            await session.clear_session()
        await session.close()  # type: ignore[attr-defined]


@pytest.fixture
async def sqlite_memory_session() -> AsyncIterator[SessionFactory]:
    from agentmem import SQLiteSession

    async for make in _closing_factory(SQLiteSession):
        yield make


@pytest.fixture
async def sqlite_file_session(tmp_path: Path) -> AsyncIterator[SessionFactory]:
    from agentmem import SQLiteSession

    path = tmp_path / "conversations.db"

    def build(session_id: str, **kwargs: Any) -> Session:
        return SQLiteSession(session_id, path, **kwargs)

    async for make in _closing_factory(build):
        yield make


@pytest.fixture
async def postgres_session(postgres_engine: Any) -> AsyncIterator[SessionFactory]:
    from agentmem import SQLAlchemySession

    def build(session_id: str, **kwargs: Any) -> Session:
        return SQLAlchemySession(postgres_engine, session_id, **kwargs)

    async for make in _closing_factory(build):
        yield make


@pytest.fixture
async def psycopg_session(postgres_url: str) -> AsyncIterator[SessionFactory]:
    """SQLAlchemySession in the OpenAI Agents SDK's form on a ``postgresql+psycopg`` engine
    (the SQLAlchemy Core path)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import SQLAlchemySession

    engine = create_async_engine(postgres_url.replace("+asyncpg://", "+psycopg://", 1))

    def build(session_id: str, **kwargs: Any) -> Session:
        return SQLAlchemySession(session_id, engine=engine, **kwargs)

    async for make in _closing_factory(build):
        yield make
    await engine.dispose()


@pytest.fixture
async def sqlalchemy_sqlite_session(tmp_path: Path) -> AsyncIterator[SessionFactory]:
    """SQLAlchemySession on a caller's aiosqlite engine (tables created on first use)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmem import SQLAlchemySession

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")

    def build(session_id: str, **kwargs: Any) -> Session:
        return SQLAlchemySession(engine, session_id, create_tables=True, **kwargs)

    async for make in _closing_factory(build):
        yield make
    await engine.dispose()


async def _engine_factory(engine: Any) -> AsyncIterator[SessionFactory]:
    from agentmem import SQLAlchemySession

    def build(session_id: str, **kwargs: Any) -> Session:
        return SQLAlchemySession(engine, session_id, create_tables=True, **kwargs)

    async for make in _closing_factory(build):
        yield make
    await engine.dispose()


@pytest.fixture
async def sqlalchemy_memory_session() -> AsyncIterator[SessionFactory]:
    """SQLAlchemySession on a caller's in-memory aiosqlite engine (``sqlite+aiosqlite://``)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    async for make in _engine_factory(create_async_engine("sqlite+aiosqlite://")):
        yield make


@pytest.fixture
async def sqlalchemy_shared_cache_session() -> AsyncIterator[SessionFactory]:
    """SQLAlchemySession on a named shared-cache in-memory database, with a pool of several
    connections to it."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import AsyncAdaptedQueuePool

    url = f"sqlite+aiosqlite:///file:{unique_id('mem')}?mode=memory&cache=shared&uri=true"
    engine = create_async_engine(url, poolclass=AsyncAdaptedQueuePool)
    async for make in _engine_factory(engine):
        yield make


@pytest.fixture
async def sqlalchemy_static_pool_session() -> AsyncIterator[SessionFactory]:
    """SQLAlchemySession on an in-memory engine with an explicit ``StaticPool``: every
    checkout, concurrent ones too, gets the one connection."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import StaticPool

    engine = create_async_engine("sqlite+aiosqlite:///:memory:", poolclass=StaticPool)
    async for make in _engine_factory(engine):
        yield make


@pytest.fixture
async def sqlalchemy_memory_url_session() -> AsyncIterator[SessionFactory]:
    """``SQLAlchemySession.from_url`` on ``sqlite+aiosqlite:///:memory:``: the sessions share
    one engine, and so one database, until the last of them closes."""
    from agentmem import SQLAlchemySession

    def build(session_id: str, **kwargs: Any) -> Session:
        return SQLAlchemySession.from_url(
            session_id, url="sqlite+aiosqlite:///:memory:", create_tables=True, **kwargs
        )

    async for make in _closing_factory(build):
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
    from agentmem import RedisSession

    def build(session_id: str, **kwargs: Any) -> Session:
        return RedisSession(
            session_id,
            REDIS_URL,
            session_prefix=f"{REDIS_PREFIX}:session",
            messages_prefix=f"{REDIS_PREFIX}:messages",
            **kwargs,
        )

    async for make in _closing_factory(build):
        yield make


@pytest.fixture
async def cached_session(postgres_engine: Any, redis_client: Any) -> AsyncIterator[SessionFactory]:
    """CachedSession: SQLAlchemySession on PostgreSQL behind this run's Redis keys."""
    from agentmem import CachedSession, SQLAlchemySession

    def build(session_id: str, **kwargs: Any) -> Session:
        return CachedSession(
            SQLAlchemySession(postgres_engine, session_id),
            REDIS_URL,
            key_prefix=f"{REDIS_PREFIX}:cache",
            **kwargs,
        )

    async for make in _closing_factory(build):
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
    pytest.param("psycopg_session", marks=pytest.mark.postgres, id="postgres-psycopg"),
    pytest.param("redis_session", marks=pytest.mark.redis, id="redis"),
    pytest.param("cached_session", marks=pytest.mark.cached, id="cached"),
]


@pytest.fixture(params=BACKENDS)
def make_session(request: pytest.FixtureRequest) -> SessionFactory:
    """A factory of sessions on each backend in turn (see ``BACKENDS``)."""
    factory: SessionFactory = request.getfixturevalue(request.param)
    return factory
