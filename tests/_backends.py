"""The registry of backends: how the tests and the benchmark open a session and a session manager
of each kind, and clean up after them.

A :class:`Backend` describes one store (a kind, a file or database URL, a Redis server and key
prefix); it is picklable, so a spawned child process opens the same store. ``open()`` and
``manager()`` build on an engine or Redis client the caller shares, or on their own connections
(by path or URL) when given none. :func:`session_factory` is the contract suite's factory of
sessions, which closes and empties every session it made.

Kinds:

- ``sqlite-memory``, ``sqlite-file``: :class:`agentmem.SQLiteSession` in memory or on ``target``.
- ``sqlalchemy-sqlite``: :class:`agentmem.SQLAlchemySession` on an aiosqlite engine on the file
  ``target``; ``sqlalchemy-memory`` on ``sqlite+aiosqlite://``; ``sqlalchemy-static-pool`` on an
  in-memory engine with a ``StaticPool``; ``sqlalchemy-shared-cache`` on the named (``target``)
  shared-cache in-memory database with a pool of several connections; ``sqlalchemy-memory-url``
  by ``from_url("sqlite+aiosqlite:///:memory:")`` (its sessions share one engine). The SQLite
  kinds of SQLAlchemy create their tables on first use.
- ``postgres``: SQLAlchemy on the (migrated) PostgreSQL database ``target``.
- ``postgres-psycopg``: the same database through a ``postgresql+psycopg`` engine (the SQLAlchemy
  Core path), its sessions made in the OpenAI Agents SDK's form
  (``SQLAlchemySession(session_id, engine=...)``); it has no manager.
- ``redis``: :class:`agentmem.RedisSession` on ``redis_url`` under the key ``prefix``.
- ``cached``: :class:`agentmem.CachedSession`: ``postgres`` behind the Redis cache of
  ``redis_url`` under ``prefix``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agentmem import Session
from agentmem.manager import SessionManagerABC

RUN_ID = uuid.uuid4().hex[:10]
"""Names this test run's databases, files and keys."""

NEW_ID: Any = object()
"""The factories' default session id: a fresh unique one."""

SessionFactory = Callable[..., Awaitable[Session]]


def unique_id(prefix: str = "s") -> str:
    """A session id no other test (or test run) uses."""
    return f"{prefix}-{RUN_ID}-{uuid.uuid4().hex[:12]}"


SQLITE_KINDS = ("sqlite-memory", "sqlite-file")
SQLALCHEMY_SQLITE_KINDS = (
    "sqlalchemy-sqlite",
    "sqlalchemy-memory",
    "sqlalchemy-memory-url",
    "sqlalchemy-shared-cache",
    "sqlalchemy-static-pool",
)
KINDS = (
    *SQLITE_KINDS,
    *SQLALCHEMY_SQLITE_KINDS,
    "postgres",
    "postgres-psycopg",
    "pgbouncer",
    "redis",
    "redis-cluster",
    "cached",
    "cached-cluster",
)
# Kinds opened as another is, on other servers: PostgreSQL through PgBouncer (transaction
# mode), Redis Cluster (``redis_url`` is a ``redis+cluster://`` URL).
_FAMILY = {
    "pgbouncer": "postgres",
    "postgres-psycopg": "postgres",
    "redis-cluster": "redis",
    "cached-cluster": "cached",
}


@dataclass(frozen=True)
class Backend:
    """One store of one kind (see the module docstring).

    Attributes:
        kind: One of ``KINDS``.
        target: The SQLite file, the shared-cache database's name, or the PostgreSQL URL.
        redis_url: The Redis server of ``redis`` and ``cached``.
        prefix: The key prefix of ``redis`` (``{prefix}:session``, ``{prefix}:messages``, as the
            command line's ``--key-prefix``) and ``cached`` (``{prefix}:cache``); empty for
            agentmem's default keys.
        pool_size: The connection pool of each engine and Redis client (``None``: the defaults).
        application_name: The ``application_name`` of PostgreSQL connections (``""``: none).
        table_prefix: The SQL tables' prefix.
    """

    kind: str
    target: str = ""
    redis_url: str = ""
    prefix: str = ""
    pool_size: int | None = None
    application_name: str = ""
    table_prefix: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown backend kind {self.kind!r}")

    @property
    def family(self) -> str:
        """The kind whose classes open this store (``redis-cluster`` opens as ``redis``)."""
        return _FAMILY.get(self.kind, self.kind)

    @property
    def shared(self) -> bool:
        """Whether two session objects (or processes) on one id see one history."""
        return self.kind != "sqlite-memory"

    @property
    def uses_engine(self) -> bool:
        """Whether its sessions share a SQLAlchemy engine that someone creates and disposes."""
        return self.family not in (*SQLITE_KINDS, "sqlalchemy-memory-url", "redis")

    # --- SQLAlchemy -------------------------------------------------------------------------

    @property
    def engine_url(self) -> str:
        """The SQLAlchemy URL of the SQL kinds."""
        urls = {
            "sqlalchemy-sqlite": f"sqlite+aiosqlite:///{self.target}",
            "sqlalchemy-memory": "sqlite+aiosqlite://",
            "sqlalchemy-memory-url": "sqlite+aiosqlite:///:memory:",
            "sqlalchemy-static-pool": "sqlite+aiosqlite:///:memory:",
            "sqlalchemy-shared-cache": (
                f"sqlite+aiosqlite:///file:{self.target}?mode=memory&cache=shared&uri=true"
            ),
        }
        if self.family in ("postgres", "cached"):
            from agentmem.migrate import async_url

            if self.kind == "postgres-psycopg":
                from sqlalchemy.engine import make_url

                psycopg = make_url(async_url(self.target)).set(drivername="postgresql+psycopg")
                return psycopg.render_as_string(hide_password=False)
            return async_url(self.target)
        return urls[self.kind]

    @property
    def engine_kwargs(self) -> dict[str, Any]:
        """What ``create_async_engine`` gets besides the URL."""
        if self.kind == "sqlalchemy-static-pool":
            from sqlalchemy.pool import StaticPool

            return {"poolclass": StaticPool}
        if self.kind == "sqlalchemy-shared-cache":
            from sqlalchemy.pool import AsyncAdaptedQueuePool

            return {"poolclass": AsyncAdaptedQueuePool}
        kwargs: dict[str, Any] = {}
        if self.kind == "pgbouncer":
            from agentmem import pgbouncer_connect_args

            kwargs["connect_args"] = pgbouncer_connect_args()
        if self.pool_size is not None:
            kwargs.update(pool_size=self.pool_size, max_overflow=0)
        if self.application_name:
            settings = {"application_name": self.application_name}
            kwargs.setdefault("connect_args", {})["server_settings"] = settings
        return kwargs

    def create_engine(self) -> Any:
        """A new ``AsyncEngine`` on this store (disposed by the caller)."""
        from sqlalchemy.ext.asyncio import create_async_engine

        return create_async_engine(self.engine_url, **self.engine_kwargs)

    @property
    def _sql_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"create_tables": self.kind in SQLALCHEMY_SQLITE_KINDS}
        if self.table_prefix:
            options["table_prefix"] = self.table_prefix
        return options

    def _sql_session(self, session_id: str, engine: Any, **options: Any) -> Any:
        from agentmem import SQLAlchemySession

        options = {**self._sql_options, **options}
        if engine is not None and self.kind == "postgres-psycopg":
            return SQLAlchemySession(session_id, engine=engine, **options)
        if engine is not None:
            return SQLAlchemySession(engine, session_id, **options)
        kwargs = self.engine_kwargs
        return SQLAlchemySession.from_url(
            session_id, url=self.engine_url, engine_kwargs=kwargs or None, **options
        )

    def _sql_manager(self, engine: Any) -> Any:
        from agentmem import SQLAlchemySessionManager

        if engine is not None:
            return SQLAlchemySessionManager(engine, **self._sql_options)
        kwargs = self.engine_kwargs
        return SQLAlchemySessionManager.from_url(
            self.engine_url, engine_kwargs=kwargs or None, **self._sql_options
        )

    # --- Redis ------------------------------------------------------------------------------

    def _redis_options(self, client: Any) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if client is not None:
            options["client"] = client
        elif self.pool_size is not None:
            options["max_connections"] = self.pool_size
        if self.family == "redis" and self.prefix:
            options["session_prefix"] = f"{self.prefix}:session"
            options["messages_prefix"] = f"{self.prefix}:messages"
        if self.family == "cached" and self.prefix:
            options["key_prefix"] = f"{self.prefix}:cache"
        return options

    def _redis_url(self, client: Any) -> tuple[str, ...]:
        return () if client is not None else (self.redis_url,)

    # --- sessions and managers --------------------------------------------------------------

    def open(
        self, session_id: str, *, engine: Any = None, client: Any = None, **options: Any
    ) -> Session:
        """A new session object on this store (closed by the caller).

        Args:
            session_id: The conversation's id.
            engine: The SQL kinds' engine to share; without one a session opens its own
                connections by URL (``from_url``), as it would in another process.
            client: The Redis client of ``redis`` and ``cached`` to share.
            **options: More arguments of the session class (``session_settings``...).
        """
        if self.kind in SQLITE_KINDS:
            from agentmem import SQLiteSession

            return SQLiteSession(session_id, self.target or ":memory:", **options)
        if self.family == "redis":
            from agentmem import RedisSession

            return RedisSession(
                session_id,
                *self._redis_url(client),
                **self._redis_options(client),
                **options,
            )
        if self.family == "cached":
            from agentmem import CachedSession

            return CachedSession(
                self._sql_session(session_id, engine),
                *self._redis_url(client),
                **self._redis_options(client),
                **options,
            )
        session: Session = self._sql_session(session_id, engine, **options)
        return session

    def manager(self, *, engine: Any = None, client: Any = None) -> SessionManagerABC[Any]:
        """A new session manager on this store (closed by the caller); ``engine`` and
        ``client`` as for :meth:`open`."""
        manager: SessionManagerABC[Any]
        if self.kind in SQLITE_KINDS:
            from agentmem import SQLiteSessionManager

            manager = SQLiteSessionManager(*([self.target] if self.target else []))
        elif self.family == "redis":
            from agentmem import RedisSessionManager

            manager = RedisSessionManager(*self._redis_url(client), **self._redis_options(client))
        elif self.family == "cached":
            from agentmem import CachedSessionManager

            manager = CachedSessionManager(
                self._sql_manager(engine),
                *self._redis_url(client),
                **self._redis_options(client),
            )
        else:
            manager = self._sql_manager(engine)
        return manager

    # --- the command line -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL the ``agentmem`` command names this store by."""
        if self.kind == "sqlite-file":
            return f"sqlite:///{self.target}"
        if self.kind == "redis":
            return self.redis_url
        if self.kind == "postgres":
            return self.target
        raise ValueError(f"the command line does not name {self.kind} stores")

    @property
    def extra(self) -> list[str]:
        """The command line's options besides ``--url`` (Redis: ``--key-prefix``)."""
        return ["--key-prefix", self.prefix] if self.kind == "redis" and self.prefix else []

    @property
    def args(self) -> list[str]:
        """``--url`` and the other options that name this store on the command line."""
        return ["--url", self.url, *self.extra]


class engine_of:
    """The engine ``backend``'s sessions share: ``engine`` if given (left open), else a new
    one, disposed on the way out; ``None`` for the kinds without one.

    A class, not a generator: the SDK's ``Runner.run_sync`` calls ``loop.shutdown_asyncgens()``,
    which would end a suspended generator (and dispose the engine) in the middle of a test.
    """

    def __init__(self, backend: Backend, engine: Any = None) -> None:
        self._given = engine
        self._own = None if engine is not None or not backend.uses_engine else backend
        self._engine: Any = None

    async def __aenter__(self) -> Any:
        self._engine = self._given if self._own is None else self._own.create_engine()
        return self._engine

    async def __aexit__(self, *exc: object) -> None:
        if self._own is not None:
            await self._engine.dispose()


class session_factory:
    """``make(session_id=NEW_ID, **options) -> Session``: a new session object on ``backend``
    (a fresh unique id unless one is given). On the way out every session made is emptied (if
    still open) and closed, then the engine is disposed unless it was given. A class, not a
    generator, for the reason :class:`engine_of` gives."""

    def __init__(self, backend: Backend, engine: Any = None) -> None:
        self._backend = backend
        self._engines = engine_of(backend, engine)
        self._made: list[Session] = []

    async def __aenter__(self) -> SessionFactory:
        shared_engine = await self._engines.__aenter__()

        async def make(session_id: Any = NEW_ID, **options: Any) -> Session:
            session_id = unique_id() if session_id is NEW_ID else session_id
            session = self._backend.open(session_id, engine=shared_engine, **options)
            self._made.append(session)
            return session

        return make

    async def __aexit__(self, *exc: object) -> None:
        try:
            for session in self._made:
                if not getattr(session, "closed", False):
                    await session.clear_session()
                await session.close()  # type: ignore[attr-defined]
        finally:
            await self._engines.__aexit__(None, None, None)


@contextmanager
def new_postgres_database(server_url: str, name: str) -> Iterator[str]:
    """Create the database ``name`` on the PostgreSQL server of ``server_url`` and yield its
    URL (``server_url``'s, on that database); drop it on the way out. An unreachable server
    fails under CI and skips loudly elsewhere."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from tests.conftest import run_in_new_loop, server_unavailable

    admin_url = make_url(server_url).set(drivername="postgresql")
    admin_dsn = admin_url.render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        run_in_new_loop(lambda: admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        server_unavailable(f"PostgreSQL at {server_url}", exc)
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        run_in_new_loop(lambda: admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
