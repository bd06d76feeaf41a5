"""``SQLAlchemySession``: agentmem's history on any SQLAlchemy ``AsyncEngine`` for PostgreSQL
(asyncpg, or another async driver through SQLAlchemy Core) or SQLite (aiosqlite).

Connections come from the engine's pool, one checkout per operation. Each operation is one
statement on PostgreSQL through asyncpg and one call into the aiosqlite worker thread on SQLite
(see :mod:`agentmem.sql._statements`); other PostgreSQL drivers go through
:mod:`agentmem.sql._core`. Engines built from URLs and the schema check live in
:mod:`agentmem.sql._engines`; the timeout and retry of a call in :mod:`agentmem.sql._retry`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Self, TypeVar, overload

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmem._batch import new_batch_id
from agentmem._deps import require_driver
from agentmem._lock import SessionLock
from agentmem.errors import CallTimeoutError
from agentmem.forks import ForkOrigin, fork_origin_of
from agentmem.manager import (
    DEFAULT_PAGE_SIZE,
    Conversation,
    SessionInfo,
    SessionOptions,
    SessionPage,
    page_of,
    page_request,
)
from agentmem.records import (
    TTL,
    ItemPage,
    Lifecycle,
    validate_metadata_filter,
    validate_user_id,
)
from agentmem.session import (
    EncodedItem,
    SessionABC,
    SessionItem,
    validate_session_id,
)
from agentmem.sql import _lifecycle, _manage, _urls, _windows, migrate
from agentmem.sql import _statements as _sql
from agentmem.sql._core import CoreOperations
from agentmem.sql._engines import (
    engine_of,
    loop_engine,
    release_engines,
    schemas,
    server_name,
    use_sqlite_settings,
)
from agentmem.sql._locks import FileSessionLock, PostgresSessionLock, lock_directory
from agentmem.sql._retry import in_aiosqlite_thread, with_driver
from agentmem.sql.base import MEMORY, Operations, SQLSessionBase, SQLSessionManagerABC
from agentmem.sql.schema import table_prefix_for, validate_table_prefix
from agentmem.windows import WindowMode

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "CallTimeoutError",
    "Operations",
    "SQLAlchemySession",
    "SQLAlchemySessionManager",
    "SQLSessionBase",
    "use_sqlite_settings",
]

T = TypeVar("T")

POSTGRES = "postgresql+asyncpg"
SQLITE = "sqlite+aiosqlite"
_SUPPORTED = f"{POSTGRES}, {SQLITE} and PostgreSQL's other async drivers (postgresql+psycopg)"
_MANAGED = f"{POSTGRES} and {SQLITE}"

DEFAULT_CALL_TIMEOUT = 30.0
"""Seconds a PostgreSQL call may take before :class:`CallTimeoutError` (``call_timeout``)."""


def _validate_call_timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"call_timeout must be seconds (a number) or None, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"call_timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def _checked_kind(dialect: str, driver: str, user: str) -> str:
    """``dialect+driver``, if ``user`` (a class name, for the message) supports it: the
    session takes any async PostgreSQL driver (through SQLAlchemy Core), the manager asyncpg
    and aiosqlite."""
    kind = f"{dialect}+{driver}"
    if kind in (POSTGRES, SQLITE):
        return kind
    if user == "SQLAlchemySession":
        if dialect == "postgresql":
            return kind
        raise ValueError(f"{user} supports {_SUPPORTED}, not {kind}")
    raise ValueError(
        f"{user} supports {_MANAGED}, not {kind}"
        + ("; SQLAlchemySession takes it" if dialect == "postgresql" else "")
    )


def _engine_and_id(
    args: tuple[Any, ...], engine: AsyncEngine | None, session_id: str | None
) -> tuple[AsyncEngine, str]:
    """The engine and the session id from agentmem's ``(engine, session_id)`` form or the
    SDK's ``(session_id, *, engine=...)`` form."""
    if len(args) > 2:
        raise TypeError(
            f"SQLAlchemySession takes at most 2 positional arguments ({len(args)} given)"
        )
    positional = list(args)
    if len(positional) == 2 and not isinstance(positional[0], AsyncEngine):
        raise TypeError(
            "engine must be a sqlalchemy.ext.asyncio.AsyncEngine, "
            f"got {type(positional[0]).__name__}"
        )
    if positional and isinstance(positional[0], AsyncEngine):
        if engine is not None:
            raise TypeError("SQLAlchemySession got the engine twice (positional and engine=)")
        engine = positional.pop(0)
    if positional:
        if session_id is not None:
            raise TypeError("SQLAlchemySession got the session id twice")
        session_id = positional.pop(0)
    if positional:
        raise TypeError(
            "SQLAlchemySession takes (engine, session_id) or (session_id, *, engine=...)"
        )
    if engine is None:
        raise TypeError("SQLAlchemySession needs an engine: (engine, session_id) or engine=")
    if session_id is None:
        raise TypeError("SQLAlchemySession needs a session_id")
    return engine, session_id


def _engine_kind(engine: object, user: str) -> str:
    """The supported ``dialect+driver`` of ``engine``, checked to be an ``AsyncEngine``."""
    if not isinstance(engine, AsyncEngine):
        raise TypeError(
            f"engine must be a sqlalchemy.ext.asyncio.AsyncEngine, got {type(engine).__name__}"
        )
    return _checked_kind(engine.dialect.name, engine.dialect.driver, user)


def _url_kind(url: object, user: str) -> tuple[str, str]:
    """The async URL of ``url`` (``postgresql://`` gets asyncpg, ``sqlite:///`` aiosqlite) and
    its supported ``dialect+driver``, its driver installed."""
    if not isinstance(url, str) or not url:
        raise ValueError("url must be a database URL such as postgresql://user@host/db")
    async_url = _urls.async_url(url)
    require_driver(async_url)
    parsed = make_url(async_url)
    return async_url, _checked_kind(parsed.get_backend_name(), parsed.get_driver_name(), user)


def _store_identity(
    engine: AsyncEngine | None, url: str | None, table_prefix: str
) -> tuple[str, str, str]:
    """``(backend, database, table prefix)`` of an engine, or of the URL it will be built from:
    the database's name, never its host, whose spelling may differ between processes."""
    parsed = engine.url if engine is not None else make_url(str(url))
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite":
        if database in ("", MEMORY) or parsed.query.get("mode") == "memory":
            database = MEMORY  # private to its process, whatever its spelling
        elif not database.startswith("file:"):
            database = str(Path(database).expanduser().resolve())
    return parsed.get_backend_name(), database, table_prefix


class _OnEngine:
    """What a session and a manager on one engine share: the engine (given, or this event
    loop's shared engine of a URL), the table prefix, the schema policy and the call timeout."""

    def _hold(
        self,
        kind: str,
        engine: AsyncEngine | None,
        url: str | None,
        engine_kwargs: dict[str, Any] | None,
        create_tables: bool,
        table_prefix: str,
        call_timeout: float | None,
    ) -> None:
        self._kind = kind
        self._table_prefix = validate_table_prefix(table_prefix)
        self._create_tables = create_tables
        self._engine = engine
        self._url = url
        self._engine_options = dict(engine_kwargs or {})
        self._engine_keys: list[Any] = []
        self._call_timeout = _validate_call_timeout(call_timeout)

    @property
    def table_prefix(self) -> str:
        """The prefix of agentmem's table names in the store."""
        return self._table_prefix

    @property
    def engine(self) -> AsyncEngine:
        """The ``AsyncEngine``: the one given, or (built ``from_url``, read from async code)
        the running event loop's engine of the URL.

        Raises:
            RuntimeError: a ``from_url`` object's engine read with no event loop running.
        """
        return loop_engine(self._engine, self._url, self._engine_options, self._engine_keys)

    def _driver_timeout(self) -> float | None:
        """``call_timeout`` where it applies: on PostgreSQL through asyncpg."""
        return self._call_timeout if self._kind == POSTGRES else None

    def _server(self) -> str:
        return server_name(self._engine, self._url)

    async def _current_engine(self) -> AsyncEngine:
        """The engine given, or this event loop's shared engine of the URL."""
        return await engine_of(self._engine, self._url, self._engine_options, self._engine_keys)

    async def _ready_engine(self) -> AsyncEngine:
        """The current engine, with agentmem's schema checked (or created, with
        ``create_tables``)."""
        engine = await self._current_engine()
        await schemas.ensure(engine, self._table_prefix, self._create_tables)
        return engine


class SQLAlchemySession(SQLSessionBase, _OnEngine):
    """Conversation history in the ``sessions``/``messages`` tables of a SQLAlchemy database.

    Example:
        >>> engine = create_async_engine("postgresql+asyncpg://app@db/app")
        >>> session = SQLAlchemySession(engine, "user_123")
        >>> session = SQLAlchemySession("user_123", engine=engine)  # the OpenAI Agents SDK's form
        >>> await Runner.run(agent, "Hello", session=session)

    The session borrows the engine: ``close()`` leaves it open. Sessions made with
    :meth:`from_url` share one engine per URL and event loop and dispose it with the last of them.

    Args:
        engine: An ``AsyncEngine`` on ``postgresql+asyncpg`` or ``sqlite+aiosqlite`` (each
            operation one statement or one thread call), or on another async PostgreSQL driver
            such as ``postgresql+psycopg`` (through SQLAlchemy Core: a few statements per
            operation). Positional before ``session_id``, or by keyword after it.
        session_id: The conversation's id (1-255 characters).
        create_tables: Bring the database to agentmem's current schema on first use (runs the
            Alembic migrations). When false (the default) a database without the schema, or
            behind it, raises :class:`agentmem.SchemaError` naming the command that fixes it.
        table_prefix: Prefix for agentmem's table names (``"am_"`` gives ``am_sessions`` and
            ``am_messages``), for databases that already have a ``sessions`` table.
        sessions_table: The name of the sessions table, as in the SDK: it must be the table
            prefix followed by ``sessions`` (``"agent_sessions"`` is the prefix ``"agent_"``).
        messages_table: The name of the messages table: the same prefix followed by
            ``messages``.
        session_settings: The OpenAI Agents SDK ``SessionSettings`` (or a dict): its ``limit`` is
            the default of ``get_items()``.
        call_timeout: On PostgreSQL through asyncpg, the seconds one call (connection checkout,
            schema check and statement) may take before it raises :class:`CallTimeoutError`;
            ``None`` waits forever. It does not apply to SQLite (a call waits at most SQLite's
            30 s busy timeout for another writer's lock) nor to the other drivers.
        whole_pairs: Make whole-pair windows the default of ``get_items`` calls with a limit
            (the Runner's ``session_settings.limit`` too); see :mod:`agentmem.windows`.
        whole_turns: Make whole-turn windows that default.

    Raises:
        TypeError: the engine or session id is missing, given twice, or of the wrong type.
        ValueError: the engine's driver is not supported, or an argument is invalid.
    """

    @overload
    def __init__(
        self,
        engine: AsyncEngine,
        session_id: str,
        *,
        create_tables: bool = False,
        table_prefix: str = "",
        sessions_table: str | None = None,
        messages_table: str | None = None,
        session_settings: Any = None,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        whole_pairs: bool = False,
        whole_turns: bool = False,
    ) -> None: ...

    @overload
    def __init__(
        self,
        session_id: str,
        *,
        engine: AsyncEngine,
        create_tables: bool = False,
        table_prefix: str = "",
        sessions_table: str | None = None,
        messages_table: str | None = None,
        session_settings: Any = None,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        whole_pairs: bool = False,
        whole_turns: bool = False,
    ) -> None: ...

    def __init__(
        self,
        *args: Any,
        engine: AsyncEngine | None = None,
        session_id: str | None = None,
        create_tables: bool = False,
        table_prefix: str = "",
        sessions_table: str | None = None,
        messages_table: str | None = None,
        session_settings: Any = None,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        whole_pairs: bool = False,
        whole_turns: bool = False,
        ttl: TTL | None = None,
        max_items: int | None = None,
        touch_on_read: bool = False,
        user_id: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        engine, session_id = _engine_and_id(args, engine, session_id)
        super().__init__(
            session_id, session_settings, whole_pairs=whole_pairs, whole_turns=whole_turns
        )
        self.lifecycle = Lifecycle.checked(
            ttl=ttl,
            max_items=max_items,
            touch_on_read=touch_on_read,
            user_id=user_id,
            title=title,
            metadata=metadata,
        )
        kind = _engine_kind(engine, "SQLAlchemySession")
        table_prefix = table_prefix_for(table_prefix, sessions_table, messages_table)
        self._hold(kind, engine, None, None, create_tables, table_prefix, call_timeout)
        self._bind_operations()

    @classmethod
    def from_url(
        cls,
        session_id: str,
        *,
        url: str,
        create_tables: bool = False,
        table_prefix: str = "",
        sessions_table: str | None = None,
        messages_table: str | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        session_settings: Any = None,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        whole_pairs: bool = False,
        whole_turns: bool = False,
        lifecycle: Lifecycle | None = None,
    ) -> Self:
        """A session on its own engine built from ``url`` (shared with other sessions of that URL).

        ``postgresql://`` and ``sqlite:///`` URLs get the asyncpg and aiosqlite drivers.
        ``engine_kwargs`` go to ``create_async_engine``. ``close()`` releases the engine.
        ``lifecycle`` holds the constructor's lifecycle options, checked
        (:meth:`agentmem.records.Lifecycle.checked`). The other arguments are those of the
        constructor.

        Raises:
            MissingDependencyError: the URL's driver is not installed (the message names the
                ``pip install`` line).
            ValueError: the URL's driver is not supported, or an argument is invalid.
        """
        self = cls.__new__(cls)
        SessionABC.__init__(
            self, session_id, session_settings, whole_pairs=whole_pairs, whole_turns=whole_turns
        )
        self.lifecycle = lifecycle or Lifecycle()
        async_url, kind = _url_kind(url, "SQLAlchemySession")
        table_prefix = table_prefix_for(table_prefix, sessions_table, messages_table)
        self._hold(kind, None, async_url, engine_kwargs, create_tables, table_prefix, call_timeout)
        self._bind_operations()
        return self

    def _bind_operations(self) -> None:
        if self._kind == POSTGRES:
            self._pg = _sql.postgres_statements(self._table_prefix)
            self._pg_windows = _windows.postgres_window_statements(self._table_prefix)
            self._ops = _AsyncpgOperations(self)
        elif self._kind != SQLITE:  # another async PostgreSQL driver
            if self.lifecycle != Lifecycle():
                raise ValueError(
                    "ttl, max_items, touch_on_read and session info on PostgreSQL need the "
                    f"asyncpg driver (postgresql+asyncpg://...), not {self._kind}"
                )
            self._ops = CoreOperations(self)
        else:
            self._lite = _sql.sqlite_statements(self._table_prefix)
            self._lite_windows = _windows.sqlite_window_statements(self._table_prefix)
            self._ops = _AiosqliteOperations(self)

    @property
    def store_identity(self) -> tuple[str, str, str]:
        """``(backend, database, table prefix)``: the database's name, never its host, whose
        spelling may differ between processes (a SQLite file's resolved path)."""
        return _store_identity(self._engine, self._url, self._table_prefix)

    @property
    def call_timeout(self) -> float | None:
        """Seconds one PostgreSQL call may take (``None``: no limit)."""
        return self._call_timeout

    def with_id(self, session_id: str) -> Self:
        """A session for ``session_id`` on this session's engine (a ``from_url`` session's: the
        shared engine of its URL), with its options."""
        self._check_open()
        options: dict[str, Any] = {
            "create_tables": self._create_tables,
            "table_prefix": self._table_prefix,
            "session_settings": self.session_settings,
            "call_timeout": self._call_timeout,
        }
        if self._engine is not None:
            session = type(self)(self._engine, session_id, **options)
        else:
            assert self._url is not None
            session = type(self).from_url(
                session_id, url=self._url, engine_kwargs=self._engine_options, **options
            )
        session.window_mode = self.window_mode
        session.lifecycle = self.lifecycle
        return session

    async def _ready_engine(self) -> AsyncEngine:
        """This event loop's engine, with agentmem's schema checked (or created)."""
        self._check_open()
        return await super()._ready_engine()

    def _session_lock(self) -> SessionLock:
        """PostgreSQL: an advisory lock; a SQLite file: tickets in the session's lock directory in
        ``<database>-locks/``; an in-memory SQLite database: a process-local lock."""
        backend, database, prefix = self.store_identity
        if backend == "postgresql":
            key = ("postgresql", self._server(), prefix, self.session_id)
            return PostgresSessionLock(key, self._ready_engine, prefix, self.session_id)
        if database == ":memory:" or database.startswith("file:"):
            engine = id(self._engine) if self._engine is not None else self._url
            return SessionLock(("sqlite-memory", engine, database, prefix, self.session_id))
        return FileSessionLock(
            ("sqlite", database, prefix, self.session_id),
            lock_directory(database, prefix, self.session_id),
        )

    async def _close(self) -> None:
        await release_engines(self._engine_keys)


class _EngineOperations(Operations):
    def __init__(self, session: SQLAlchemySession) -> None:
        self.session = session
        self.session_id = session.session_id

    async def _manage(
        self, on_postgres: Callable[..., Awaitable[T]], on_sqlite: Callable[..., T], *args: Any
    ) -> T:
        """A lifecycle operation of this session (``retry``: it is idempotent)."""
        prefix = self.session.table_prefix
        if isinstance(self, _AsyncpgOperations):
            return await with_driver(
                self.session,
                lambda c: on_postgres(c, prefix, self.session_id, *args),
                retry=True,
            )
        return await in_aiosqlite_thread(
            self.session, on_sqlite, prefix, self.session_id, *args, retry=True
        )

    async def info(self) -> SessionInfo | None:
        return await self._manage(_lifecycle.postgres_info, _lifecycle.sqlite_info)

    async def update_info(self, changes: dict[str, Any]) -> SessionInfo:
        return await self._manage(
            _lifecycle.postgres_update_info,
            _lifecycle.sqlite_update_info,
            self.session.lifecycle,
            changes,
        )

    async def page(self, limit: int, before: int | None) -> ItemPage:
        return await self._manage(_lifecycle.postgres_page, _lifecycle.sqlite_page, limit, before)


class _AsyncpgOperations(_EngineOperations):
    async def get(self, limit: int | None) -> list[str]:
        sql = self.session._pg
        lifecycle = self.session.lifecycle
        if lifecycle.touch_on_read and lifecycle.ttl is not None:
            ttl, prefix = lifecycle.ttl, self.session.table_prefix
            await with_driver(
                self.session,
                lambda c: _lifecycle.postgres_touch(c, prefix, self.session_id, ttl),
                retry=True,
            )
        if limit is None:
            rows = await with_driver(
                self.session, lambda c: c.fetch(sql.select_all, self.session_id), retry=True
            )
            return [row[0] for row in rows]
        rows = await with_driver(
            self.session,
            lambda c: c.fetch(sql.select_newest, self.session_id, limit),
            retry=True,
        )
        return [row[0] for row in reversed(rows)]

    async def add(self, items: list[EncodedItem]) -> None:
        data, roles, types = zip(*items, strict=True)
        sql = self.session._pg
        life = self.session.lifecycle
        batch_id = new_batch_id()
        args = (
            self.session_id,
            data,
            roles,
            types,
            life.ttl,
            life.user_id,
            life.title,
            life.metadata_json,
            batch_id,
        )
        most = life.max_items

        async def add(c: Any) -> None:
            try:
                if most is None:
                    await c.execute(sql.add, *args)
                    return
                # Retention in the add's transaction, after it (a statement sees its own
                # CTEs' snapshot only): the session row lock is held throughout.
                async with c.transaction():
                    count: int | None = await c.fetchval(sql.add_counted, *args)
                    if count is not None and count > most:
                        await c.execute(sql.trim, self.session_id, count - most)
            except Exception as exc:
                if getattr(exc, "constraint_name", None) != sql.batch_index:
                    raise
                # An earlier attempt of this call, still running when this one began, stored
                # the batch.

        # Retried once on a new connection after a connection error: the batch id makes a
        # retry of a committed attempt (its reply lost) store nothing.
        await with_driver(self.session, add, retry=True)

    async def pop(self) -> str | None:
        sql = self.session._pg.pop
        ttl = self.session.lifecycle.ttl
        value: str | None = await with_driver(
            self.session, lambda c: c.fetchval(sql, self.session_id, ttl), retry=False
        )
        return value

    async def clear(self) -> None:
        sql = self.session._pg.clear
        # Never resent once sent: a DELETE repeated after a lost reply would remove items that
        # other clients added (and were told were stored) in between.
        await with_driver(self.session, lambda c: c.execute(sql, self.session_id), retry=False)

    async def get_window(self, limit: int, window: WindowMode) -> list[str]:
        sql = self.session._pg_windows.window
        turns = window == "turns"
        rows = await with_driver(
            self.session, lambda c: c.fetch(sql, self.session_id, limit, turns), retry=True
        )
        return [row[0] for row in rows]

    async def fork(self, new_id: str, count: int | None) -> int:
        sql = self.session._pg_windows.fork
        made, copied = await with_driver(
            self.session, lambda c: c.fetchrow(sql, self.session_id, new_id, count), retry=False
        )
        if not made:
            raise ValueError(f"session {new_id!r} already holds items; a fork needs a new id")
        return int(copied)

    async def origin(self) -> ForkOrigin | None:
        sql = self.session._pg_windows.origin
        row = await with_driver(
            self.session, lambda c: c.fetchrow(sql, self.session_id), retry=True
        )
        return None if row is None else fork_origin_of(row[0], row[1])

    async def replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        sql = self.session._pg
        session_id = self.session_id

        async def run(c: Any) -> bool:
            transaction = c.transaction()
            await transaction.start()
            try:
                await c.execute(sql.replace_lock, session_id)
                if newest is None:
                    await c.execute(sql.delete_all, session_id)
                elif newest > 0:
                    rows = list(reversed(await c.fetch(sql.newest_rows, session_id, newest)))
                    if expected is not None and not _sql.same_items(
                        [row[1] for row in rows], expected
                    ):
                        await transaction.rollback()
                        return False
                    await c.execute(sql.delete_ids, session_id, [row[0] for row in rows])
                if items:
                    data, roles, types = zip(*items, strict=True)
                    await c.execute(sql.insert_rows, session_id, data, roles, types)
                await c.execute(sql.recount, session_id)
            except Exception:  # a cancel: with_driver drops the connection, which rolls back
                await transaction.rollback()
                raise
            await transaction.commit()
            return True

        return await with_driver(self.session, run, retry=False)


class _AiosqliteOperations(_EngineOperations):
    """Runs each whole operation in the aiosqlite connection's worker thread: one thread hop."""

    async def _in_thread(self, fn: Callable[..., T], *args: Any, retry: bool) -> T:
        return await in_aiosqlite_thread(self.session, fn, *args, retry=retry)

    async def get(self, limit: int | None) -> list[str]:
        life = self.session.lifecycle
        touch = life.ttl if life.touch_on_read else None
        return await self._in_thread(
            _sql.sqlite_get, self.session._lite, self.session_id, limit, touch, retry=touch is None
        )

    async def add(self, items: list[EncodedItem]) -> None:
        await self._in_thread(
            _sql.sqlite_add,
            self.session._lite,
            self.session_id,
            items,
            new_batch_id(),
            self.session.lifecycle,
            retry=True,
        )

    async def pop(self) -> str | None:
        return await self._in_thread(
            _sql.sqlite_pop,
            self.session._lite,
            self.session_id,
            self.session.lifecycle.ttl,
            retry=False,
        )

    async def clear(self) -> None:
        await self._in_thread(_sql.sqlite_clear, self.session._lite, self.session_id, retry=False)

    async def get_window(self, limit: int, window: WindowMode) -> list[str]:
        return await self._in_thread(
            _windows.sqlite_get_window,
            self.session._lite_windows,
            self.session_id,
            limit,
            window,
            retry=True,
        )

    async def fork(self, new_id: str, count: int | None) -> int:
        return await self._in_thread(
            _windows.sqlite_fork,
            self.session._lite_windows,
            self.session_id,
            new_id,
            count,
            retry=False,
        )

    async def origin(self) -> ForkOrigin | None:
        return await self._in_thread(
            _windows.sqlite_fork_origin, self.session._lite_windows, self.session_id, retry=True
        )

    async def replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        return await self._in_thread(
            _sql.sqlite_replace,
            self.session._lite,
            self.session_id,
            items,
            newest,
            expected,
            retry=False,
        )


# --- the manager -------------------------------------------------------------------------------


class SQLAlchemySessionManager(SQLSessionManagerABC[SQLAlchemySession], _OnEngine):
    """Hands out ``SQLAlchemySession`` objects on one engine, and manages the store as a whole.

    Example:
        >>> async with SQLAlchemySessionManager(engine) as manager:
        ...     session = manager.get_session("user_123")
        ...     page = await manager.find_sessions(limit=20)

    The manager borrows an engine it is given (``close()`` leaves it open); one built by
    :meth:`from_url` is shared with the sessions it hands out (one engine per event loop) and
    disposed with the last of them.

    Args:
        engine: An ``AsyncEngine`` on ``postgresql+asyncpg`` or ``sqlite+aiosqlite``.
        create_tables: Bring the database to agentmem's current schema on first use.
        table_prefix: Prefix of agentmem's table names.
        call_timeout: Seconds one PostgreSQL call of the manager or of its sessions may take
            (``None``: no limit); see :class:`SQLAlchemySession`.
        default_ttl: The expiry of the sessions it hands out (seconds or ``timedelta``).
        default_max_items: The longest history of the sessions it hands out.
        touch_on_read: Whether reads of its sessions slide their expiry too.

    Raises:
        TypeError, ValueError: a bad engine, driver or prefix.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        create_tables: bool = False,
        table_prefix: str = "",
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        default_ttl: TTL | None = None,
        default_max_items: int | None = None,
        touch_on_read: bool = False,
    ) -> None:
        kind = _engine_kind(engine, "SQLAlchemySessionManager")
        self._set_lifecycle_defaults(default_ttl, default_max_items, touch_on_read)
        self._hold(kind, engine, None, None, create_tables, table_prefix, call_timeout)
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        create_tables: bool = False,
        table_prefix: str = "",
        engine_kwargs: dict[str, Any] | None = None,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        default_ttl: TTL | None = None,
        default_max_items: int | None = None,
        touch_on_read: bool = False,
    ) -> SQLAlchemySessionManager:
        """A manager on the engine of ``url`` (``postgresql://`` gets asyncpg, ``sqlite:///``
        aiosqlite), shared with every session of that URL; ``close()`` releases it."""
        self = cls.__new__(cls)
        async_url, kind = _url_kind(url, "SQLAlchemySessionManager")
        self._set_lifecycle_defaults(default_ttl, default_max_items, touch_on_read)
        self._hold(kind, None, async_url, engine_kwargs, create_tables, table_prefix, call_timeout)
        self._closed = False
        return self

    @property
    def process_private(self) -> bool:
        """Whether the engine's database is an in-memory SQLite one (private to this process)."""
        return _store_identity(self._engine, self._url, self._table_prefix)[1] == MEMORY

    async def schema_revision(self) -> str | None:
        """The agentmem schema revision of the database (``None``: its tables are absent),
        read without changing anything."""
        self._check_open()
        return await migrate.current(await self._current_engine(), table_prefix=self._table_prefix)

    async def upgrade_schema(self) -> None:
        """Bring the database to agentmem's current schema (runs the migrations)."""
        self._check_open()
        engine = await self._current_engine()
        await migrate.upgrade(engine, table_prefix=self._table_prefix)
        schemas.forget(engine)

    def _make_session(self, session_id: str, options: SessionOptions) -> SQLAlchemySession:
        """A session on the manager's engine (or its URL's shared one)."""
        if self._engine is not None:
            session = SQLAlchemySession(
                self._engine,
                session_id,
                create_tables=self._create_tables,
                table_prefix=self._table_prefix,
                session_settings=options.session_settings,
                call_timeout=self._call_timeout,
                whole_pairs=options.whole_pairs,
                whole_turns=options.whole_turns,
            )
            session.lifecycle = options.lifecycle
            return session
        assert self._url is not None
        return SQLAlchemySession.from_url(
            session_id,
            url=self._url,
            create_tables=self._create_tables,
            table_prefix=self._table_prefix,
            engine_kwargs=self._engine_options,
            session_settings=options.session_settings,
            call_timeout=self._call_timeout,
            whole_pairs=options.whole_pairs,
            whole_turns=options.whole_turns,
            lifecycle=options.lifecycle,
        )

    async def _run(
        self,
        on_postgres: Callable[..., Awaitable[T]],
        on_sqlite: Callable[..., T],
        *args: Any,
        retry: bool,
    ) -> T:
        """One manager operation on a pooled connection, in the driver's fast path."""
        self._check_open()
        if self._kind == POSTGRES:
            return await with_driver(
                self, lambda c: on_postgres(c, self._table_prefix, *args), retry=retry
            )
        return await in_aiosqlite_thread(self, on_sqlite, self._table_prefix, *args, retry=retry)

    async def list_sessions(self) -> list[str]:
        """The ids of every stored session, sorted."""
        return await self._run(_manage.postgres_ids, _manage.sqlite_ids, retry=True)

    async def session_info(self, session_id: str) -> SessionInfo | None:
        """Item count and timestamps of one session; ``None`` if it is not stored."""
        session_id = validate_session_id(session_id)
        return await self._run(_manage.postgres_info, _manage.sqlite_info, session_id, retry=True)

    async def find_sessions(
        self,
        *,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of the live sessions, most recently updated first (a keyset range on
        ``updated_at``: every page costs the same; see
        :meth:`SessionManagerABC.find_sessions`)."""
        owner = validate_user_id(user_id)
        wanted = validate_metadata_filter(metadata)
        size, after = page_request(limit, cursor)
        infos = await self._run(
            _lifecycle.postgres_find,
            _lifecycle.sqlite_find,
            owner,
            wanted,
            size + 1,
            after,
            retry=True,
        )
        return page_of(infos, size)

    async def count_sessions(self, user_id: str | None = None) -> int:
        """How many live sessions the database holds (only ``user_id``'s, if given)."""
        owner = validate_user_id(user_id)
        return await self._run(
            _lifecycle.postgres_count, _lifecycle.sqlite_count, owner, retry=True
        )

    async def _purge_batch(self, batch_size: int) -> int:
        return await self._run(
            _lifecycle.postgres_purge_batch,
            _lifecycle.sqlite_purge_batch,
            batch_size,
            retry=False,
        )

    async def existing_sessions(self, session_ids: Iterable[str]) -> set[str]:
        """Those of ``session_ids`` that are stored."""
        ids = [validate_session_id(i) for i in session_ids]
        if not ids:
            return set()
        return await self._run(
            _manage.postgres_existing,
            _manage.sqlite_existing,
            ids,
            retry=True,
        )

    async def delete_session(self, session_id: str) -> bool:
        """Delete one session and its history; whether it existed."""
        session_id = validate_session_id(session_id)
        return await self._run(
            _manage.postgres_delete, _manage.sqlite_delete, session_id, retry=False
        )

    async def read_conversation(self, session_id: str) -> Conversation | None:
        """One whole conversation, read in one transaction; ``None`` if it is not stored."""
        session_id = validate_session_id(session_id)
        return await self._run(_manage.postgres_read, _manage.sqlite_read, session_id, retry=True)

    async def write_conversation(self, conversation: Conversation) -> None:
        """Store ``conversation`` whole with its timestamps and lifecycle (see
        :class:`Conversation`), replacing any session of the same id, in one transaction."""
        checked, encoded, created, updated = conversation.prepared()
        await self._run(
            _manage.postgres_write,
            _manage.sqlite_write,
            checked,
            encoded,
            created,
            updated,
            self.default_ttl,
            retry=False,
        )

    async def _release(self) -> None:
        await release_engines(self._engine_keys)
