"""``SQLAlchemySession``: agentmem's history on any SQLAlchemy ``AsyncEngine`` for PostgreSQL
(asyncpg) or SQLite (aiosqlite).

Connections come from the engine's pool, one checkout per operation. Each operation is one
statement on PostgreSQL and one call into the aiosqlite worker thread on SQLite (see
:mod:`agentmem.sql._statements`).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from agentmem._deps import require_driver
from agentmem.errors import CallTimeoutError, SchemaError
from agentmem.manager import (
    DEFAULT_PAGE_SIZE,
    Conversation,
    SessionInfo,
    SessionManagerABC,
    SessionPage,
    decode_cursor,
    page_of,
    validate_page_size,
)
from agentmem.session import (
    EncodedItem,
    SessionABC,
    SessionItem,
    encode_items,
    validate_session_id,
)
from agentmem.sql import _manage, migrate
from agentmem.sql import _statements as _sql
from agentmem.sql._core import CoreOperations
from agentmem.sql.base import Operations, SQLSessionBase
from agentmem.sql.schema import table_prefix_for, validate_table_prefix

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

_SUPPORTED = (
    "postgresql+asyncpg, sqlite+aiosqlite and PostgreSQL's other async drivers (postgresql+psycopg)"
)

_MANAGED = "postgresql+asyncpg and sqlite+aiosqlite"

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


class _SchemaCache:
    """Prepares each engine on first use: SQLite connection settings once, then the schema check
    (or upgrade) once per table prefix.

    Preparation runs one engine at a time per event loop: concurrent first calls on an engine
    whose pool has one connection (an in-memory SQLite database) would otherwise interleave
    their transactions on it, and Alembic's migration context is global to the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # around mutations only, never across an await
        self._ready: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def ensure(self, engine: AsyncEngine, table_prefix: str, create: bool) -> None:
        with self._lock:
            ready = self._ready.get(engine.sync_engine)
        if ready is not None and table_prefix in ready:
            return
        loop = asyncio.get_running_loop()
        lock = self._locks.setdefault(loop, asyncio.Lock())
        async with lock:
            await self._prepare(engine, table_prefix, create)

    async def _prepare(self, engine: AsyncEngine, table_prefix: str, create: bool) -> None:
        ready = self._ready.get(engine.sync_engine)
        if ready is not None and table_prefix in ready:
            return
        if ready is None:
            if engine.dialect.name == "sqlite":
                await _configure_sqlite_engine(engine)
            with self._lock:
                ready = self._ready.setdefault(engine.sync_engine, set())
        if create:
            await migrate.upgrade(engine, table_prefix=table_prefix)
        else:
            try:
                await migrate.check(engine, table_prefix=table_prefix)
            except migrate.SchemaError as exc:
                raise SchemaError(
                    f"{exc}; or let SQLAlchemySession create them: create_tables=True"
                ) from None
        ready.add(table_prefix)

    def forget(self, engine: AsyncEngine) -> None:
        with self._lock:
            self._ready.pop(engine.sync_engine, None)

    def after_fork(self) -> None:
        self._lock = threading.Lock()


_schemas = _SchemaCache()


class _SharedEngines:
    """Engines built from URLs: one per (URL, options, event loop), shared by every session made
    from that URL in that loop, disposed when the last of those sessions closes.

    Pooled async connections belong to the loop that opened them, so a session used from a new
    loop (a second ``asyncio.run``) gets that loop's engine. Threads (each with its own loop)
    share the registry: a lock guards its mutations. A forked child starts with an empty
    registry and a new lock: it never uses (nor closes) the parent's pooled connections.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # around dict mutations only, never across an await
        self._engines: dict[tuple[asyncio.AbstractEventLoop, str, str], list[Any]] = {}
        self._inherited: list[Any] = []

    def acquire(self, url: str, options: dict[str, Any]) -> tuple[Any, AsyncEngine]:
        loop = asyncio.get_running_loop()
        key = (loop, url, repr(sorted(options.items())))
        with self._lock:
            entry = self._engines.get(key)
            if entry is None:
                kwargs = dict(options)
                if url.startswith("sqlite"):
                    # Every operation ends its own transaction: skip the pool's rollback on return.
                    kwargs.setdefault("pool_reset_on_return", None)
                entry = self._engines[key] = [create_async_engine(url, **kwargs), 0]
                stale = [k for k in self._engines if k[0].is_closed()]
                evicted = [self._engines.pop(k)[0] for k in stale]
            else:
                evicted = []
            entry[1] += 1
        for engine in evicted:
            _schemas.forget(engine)
            engine.sync_engine.dispose(close=False)
        return key, entry[0]

    def unshare(self, key: Any) -> None:
        """Drop a reference counted twice by one holder (never the last one)."""
        with self._lock:
            self._engines[key][1] -= 1

    async def release(self, key: Any) -> None:
        with self._lock:
            entry = self._engines.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._engines[key]
        engine: AsyncEngine = entry[0]
        _schemas.forget(engine)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if key[0] is running:
            await engine.dispose()
        else:  # its loop is gone: drop the pool without touching its connections
            await asyncio.to_thread(engine.sync_engine.dispose, close=False)

    def after_fork(self) -> None:
        """In a forked child: the parent's engines stay referenced (so that no finalizer closes
        the parent's sockets from here) and are never used again."""
        self._lock = threading.Lock()
        self._inherited.append(self._engines)
        self._engines = {}


_shared_engines = _SharedEngines()


def _after_fork_in_child() -> None:
    _schemas.after_fork()
    _shared_engines.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


async def _configure_sqlite_engine(engine: AsyncEngine) -> None:
    """Apply :func:`_configure_sqlite` to the engine's future connections and, through one of
    its present ones, switch the database file to WAL (a lasting property of the file)."""
    use_sqlite_settings(engine)
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        await connection.run_sync(lambda _: _configure_sqlite(raw.dbapi_connection, None))


def use_sqlite_settings(engine: AsyncEngine) -> None:
    """Give the connections ``engine`` (``sqlite+aiosqlite``) opens from now on the settings of
    agentmem's own SQLite connections: WAL, ``synchronous=NORMAL`` and a 30 s busy timeout."""
    if not event.contains(engine.sync_engine, "connect", _configure_sqlite):
        event.listen(engine.sync_engine, "connect", _configure_sqlite)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """The settings of agentmem's SQLite connections: WAL (readers never wait for the writer),
    ``synchronous=NORMAL`` (with WAL: durable across process crashes, no flush per commit), and
    a 30 s wait for another process's write lock."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    _sql.sqlite_use_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


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
    if not isinstance(engine, AsyncEngine):
        raise TypeError(
            f"engine must be a sqlalchemy.ext.asyncio.AsyncEngine, got {type(engine).__name__}"
        )
    if session_id is None:
        raise TypeError("SQLAlchemySession needs a session_id")
    return engine, session_id


class SQLAlchemySession(SQLSessionBase):
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
    ) -> None:
        engine, session_id = _engine_and_id(args, engine, session_id)
        super().__init__(session_id, session_settings)
        self._table_prefix = table_prefix_for(table_prefix, sessions_table, messages_table)
        self._create_tables = create_tables
        self._engine: AsyncEngine | None = engine
        self._url: str | None = None
        self._engine_options: dict[str, Any] = {}
        self._engine_keys: list[Any] = []
        self._call_timeout = _validate_call_timeout(call_timeout)
        self._bind_store(engine.dialect.name, engine.dialect.driver)

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
    ) -> SQLAlchemySession:
        """A session on its own engine built from ``url`` (shared with other sessions of that URL).

        ``postgresql://`` and ``sqlite:///`` URLs get the asyncpg and aiosqlite drivers.
        ``engine_kwargs`` go to ``create_async_engine``. ``close()`` releases the engine.
        The other arguments are those of the constructor.

        Raises:
            MissingDependencyError: the URL's driver is not installed (the message names the
                ``pip install`` line).
            ValueError: the URL's driver is not supported, or an argument is invalid.
        """
        if not isinstance(url, str) or not url:
            raise ValueError("url must be a database URL such as postgresql://user@host/db")
        self = cls.__new__(cls)
        SessionABC.__init__(self, session_id, session_settings)
        self._table_prefix = table_prefix_for(table_prefix, sessions_table, messages_table)
        self._create_tables = create_tables
        self._engine = None
        self._url = migrate.async_url(url)
        self._engine_options = dict(engine_kwargs or {})
        self._engine_keys = []
        self._call_timeout = _validate_call_timeout(call_timeout)
        require_driver(self._url)
        parsed = make_url(self._url)
        self._bind_store(parsed.get_backend_name(), parsed.get_driver_name())
        return self

    def _bind_store(self, dialect: str, driver: str) -> None:
        kind = f"{dialect}+{driver}"
        if kind == "postgresql+asyncpg":
            self._pg = _sql.postgres_statements(self._table_prefix)
            self._ops = _AsyncpgOperations(self)
        elif kind == "sqlite+aiosqlite":
            self._lite = _sql.sqlite_statements(self._table_prefix)
            self._ops = _AiosqliteOperations(self)
        elif dialect == "postgresql":
            self._ops = CoreOperations(self)
        else:
            raise ValueError(f"SQLAlchemySession supports {_SUPPORTED}, not {kind}")

    @property
    def table_prefix(self) -> str:
        """The prefix of this session's table names."""
        return self._table_prefix

    @property
    def store_identity(self) -> tuple[str, str, str]:
        """``(backend, database, table prefix)``: the database's name, never its host, whose
        spelling may differ between processes (a SQLite file's resolved path)."""
        url = self._engine.url if self._engine is not None else make_url(str(self._url))
        database = url.database or ""
        if url.get_backend_name() == "sqlite":
            if database in ("", ":memory:") or url.query.get("mode") == "memory":
                database = ":memory:"  # private to its process, whatever its spelling
            elif not database.startswith("file:"):
                database = str(Path(database).expanduser().resolve())
        return url.get_backend_name(), database, self._table_prefix

    @property
    def call_timeout(self) -> float | None:
        """Seconds one PostgreSQL call may take (``None``: no limit)."""
        return self._call_timeout

    def _driver_timeout(self) -> float | None:
        """``call_timeout`` where it applies: on PostgreSQL."""
        return self._call_timeout if isinstance(self._ops, _AsyncpgOperations) else None

    def _server(self) -> str:
        return _server_name(self._engine, self._url)

    @property
    def engine(self) -> AsyncEngine:
        """The ``AsyncEngine`` of this session: the one it was given, or (a ``from_url``
        session, read from async code) the running event loop's engine of its URL.

        Raises:
            RuntimeError: a ``from_url`` session's engine read with no event loop running.
        """
        return _loop_engine(self._engine, self._url, self._engine_options, self._engine_keys)

    async def _ready_engine(self) -> AsyncEngine:
        """This event loop's engine, with agentmem's schema checked (or created)."""
        self._check_open()
        engine = await _engine_of(self._engine, self._url, self._engine_options, self._engine_keys)
        await _schemas.ensure(engine, self._table_prefix, self._create_tables)
        return engine

    async def _close(self) -> None:
        await _release_engines(self._engine_keys)


class _EngineOperations(Operations):
    def __init__(self, session: SQLAlchemySession) -> None:
        self.session = session
        self.session_id = session.session_id


class _EngineUser(Protocol):
    """What runs calls on an engine's pooled connections: a session or a manager."""

    @property
    def table_prefix(self) -> str: ...

    async def _ready_engine(self) -> AsyncEngine: ...

    def _driver_timeout(self) -> float | None: ...

    def _server(self) -> str: ...


async def _with_driver(
    session: _EngineUser, use: Callable[[Any], Awaitable[T]], *, retry: bool
) -> T:
    """Run ``use(driver_connection)`` on a pooled connection.

    A connection that fails invalidates the pool's connections (each is replaced on its next
    checkout, as SQLAlchemy does on a disconnect). ``retry`` repeats an
    idempotent operation once on a new connection after such a failure; any operation is
    repeated when the failure proves that nothing reached the server. Pooled connections that
    died while idle (a killed backend, a server restart) are replaced before use.

    On PostgreSQL the whole call, retry included, is bounded by the session's
    ``call_timeout``: past it the connection in use is closed (only that one) and
    :class:`CallTimeoutError` is raised, without a retry.
    """
    timeout = session._driver_timeout()
    if timeout is None:
        return await _attempts(session, use, retry=retry)
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await _attempts(session, use, retry=retry)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise CallTimeoutError(
            f"no answer from PostgreSQL at {session._server()} within call_timeout={timeout:g} s; "
            "the connection was closed and the call was not retried"
        ) from None


async def _attempts(session: _EngineUser, use: Callable[[Any], Awaitable[T]], *, retry: bool) -> T:
    for attempt in (1, 2):
        engine = await session._ready_engine()
        # The pool's own checkout, without a Connection object around it: a third of the cost.
        pooled = await engine.raw_connection()
        driver = pooled.driver_connection
        while _is_closed(driver):
            await greenlet_spawn(pooled.invalidate)
            pooled = await engine.raw_connection()
            driver = pooled.driver_connection
        try:
            result = await use(driver)
        except Exception as exc:
            if not _is_disconnect(exc, driver):
                await greenlet_spawn(pooled.close)
                raise _translate(engine, session.table_prefix, exc) from exc
            # As SQLAlchemy does on a disconnect: every connection the pool opened before now is
            # suspect (a restart or failover kills them all) and is replaced on its next checkout.
            await greenlet_spawn(engine.sync_engine.pool._invalidate, pooled, exc)
            if attempt == 2 or not (retry or _never_sent(exc)):
                raise
        except BaseException:  # cancelled or timed out mid-call: the connection's state is unknown
            # Dropped at once: a graceful close would wait on a server that may not answer.
            terminate = getattr(driver, "terminate", None)
            if terminate is not None:
                terminate()
            await asyncio.shield(greenlet_spawn(pooled.invalidate))
            raise
        else:
            await greenlet_spawn(pooled.close)
            return result
    raise AssertionError("unreachable")


def _is_closed(driver: Any) -> bool:
    """Whether the driver knows its connection is closed (asyncpg does; aiosqlite never says)."""
    is_closed = getattr(driver, "is_closed", None)
    return is_closed is not None and bool(is_closed())


def _never_sent(exc: BaseException) -> bool:
    """Whether asyncpg refused to start the operation: its connection was closed, or was still
    reading the server's last (fatal) message. Nothing was sent, so any operation may retry."""
    return type(exc).__name__ in {"InterfaceError", "InternalClientError"} and (
        "connection is closed" in str(exc) or "cannot switch to state" in str(exc)
    )


def _is_disconnect(exc: BaseException, driver: Any) -> bool:
    """Whether ``exc`` means the connection is unusable (rather than an error in the SQL)."""
    if _is_closed(driver):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):  # a PostgreSQL error: connection exception or shutdown
        return sqlstate.startswith(("08", "57P"))
    if isinstance(exc, ConnectionError | OSError):
        return True
    # asyncpg's client-side protocol errors; aiosqlite's "no active connection"
    return type(exc).__name__ in {"InterfaceError", "InternalClientError"} or (
        isinstance(exc, ValueError) and "no active connection" in str(exc)
    )


def _translate(engine: AsyncEngine, table_prefix: str, exc: Exception) -> Exception:
    """Turn "no such table" into a SchemaError that names the fix."""
    text = str(exc)
    if type(exc).__name__ == "UndefinedTableError" or "no such table" in text:
        _schemas.forget(engine)
        problem = migrate.describe_schema_state(None, table_prefix, url=engine.url)
        return migrate.SchemaError(f"{problem} ({text})")
    return exc


class _AsyncpgOperations(_EngineOperations):
    async def get(self, limit: int | None) -> list[str]:
        sql = self.session._pg
        if limit is None:
            rows = await _with_driver(
                self.session, lambda c: c.fetch(sql.select_all, self.session_id), retry=True
            )
            return [row[0] for row in rows]
        rows = await _with_driver(
            self.session,
            lambda c: c.fetch(sql.select_newest, self.session_id, limit),
            retry=True,
        )
        return [row[0] for row in reversed(rows)]

    async def add(self, items: list[EncodedItem]) -> None:
        data, roles, types = zip(*items, strict=True)
        sql = self.session._pg.add
        await _with_driver(
            self.session,
            lambda c: c.execute(sql, self.session_id, data, roles, types),
            retry=False,
        )

    async def pop(self) -> str | None:
        sql = self.session._pg.pop
        value: str | None = await _with_driver(
            self.session, lambda c: c.fetchval(sql, self.session_id), retry=False
        )
        return value

    async def clear(self) -> None:
        sql = self.session._pg.clear
        # Never resent once sent: a DELETE repeated after a lost reply would remove items that
        # other clients added (and were told were stored) in between.
        await _with_driver(self.session, lambda c: c.execute(sql, self.session_id), retry=False)

    async def replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        sql = self.session._pg
        session_id = self.session_id

        async def run(c: Any) -> bool:
            transaction = c.transaction()
            await transaction.start()
            try:
                await c.execute(sql.touch, session_id)
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
                    await c.execute(sql.add, session_id, data, roles, types)
            except Exception:  # a cancel: _attempts drops the connection, which rolls back
                await transaction.rollback()
                raise
            await transaction.commit()
            return True

        return await _with_driver(self.session, run, retry=False)


async def _engine_of(
    engine: AsyncEngine | None, url: str | None, options: dict[str, Any], keys: list[Any]
) -> AsyncEngine:
    """The engine given, or this event loop's shared engine of ``url``, counted once in ``keys``
    (the holder's references, released by :func:`_release_engines`)."""
    if engine is not None:
        return engine
    assert url is not None
    return _engine_now(url, options, keys)


def _engine_now(url: str, options: dict[str, Any], keys: list[Any]) -> AsyncEngine:
    """This event loop's shared engine of ``url``, counted once in ``keys``."""
    key, shared = _shared_engines.acquire(url, options)
    if key in keys:
        _shared_engines.unshare(key)  # already counted for this holder
    else:
        keys.append(key)
    return shared


def _loop_engine(
    engine: AsyncEngine | None, url: str | None, options: dict[str, Any], keys: list[Any]
) -> AsyncEngine:
    """The ``engine`` attribute: the engine given, or the running loop's engine of ``url``."""
    if engine is not None:
        return engine
    assert url is not None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "the engine of a from_url session or manager belongs to an event loop: read "
            "`engine` from async code"
        ) from None
    return _engine_now(url, options, keys)


async def _release_engines(keys: list[Any]) -> None:
    taken = list(keys)
    keys.clear()
    for key in taken:
        await _shared_engines.release(key)


def _server_name(engine: AsyncEngine | None, url: str | None) -> str:
    """``host:port/database`` of an engine, or of the URL it will be built from."""
    parsed = engine.url if engine is not None else make_url(url or "")
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


async def _in_aiosqlite_thread(
    holder: _EngineUser, fn: Callable[..., T], *args: Any, retry: bool
) -> T:
    """``fn(sqlite3_connection, *args)`` whole in a pooled aiosqlite connection's worker
    thread (one thread hop), run again while a shared-cache table lock holds it."""

    async def use(driver: Any) -> T:
        # aiosqlite runs queued callables in its connection thread; _conn is its sqlite3
        # connection. Both are aiosqlite internals, pinned by the tests.
        result: T = await driver._execute(lambda: _sql.sqlite_run_retrying(fn, driver._conn, *args))
        return result

    return await _with_driver(holder, use, retry=retry)


class _AiosqliteOperations(_EngineOperations):
    """Runs each whole operation in the aiosqlite connection's worker thread: one thread hop."""

    async def _in_thread(self, fn: Callable[..., T], *args: Any, retry: bool) -> T:
        return await _in_aiosqlite_thread(self.session, fn, *args, retry=retry)

    async def get(self, limit: int | None) -> list[str]:
        return await self._in_thread(
            _sql.sqlite_get, self.session._lite, self.session_id, limit, retry=True
        )

    async def add(self, items: list[EncodedItem]) -> None:
        await self._in_thread(
            _sql.sqlite_add, self.session._lite, self.session_id, items, retry=False
        )

    async def pop(self) -> str | None:
        return await self._in_thread(
            _sql.sqlite_pop, self.session._lite, self.session_id, retry=False
        )

    async def clear(self) -> None:
        await self._in_thread(_sql.sqlite_clear, self.session._lite, self.session_id, retry=False)

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


class SQLAlchemySessionManager(SessionManagerABC[SQLAlchemySession]):
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
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise TypeError(
                f"engine must be a sqlalchemy.ext.asyncio.AsyncEngine, got {type(engine).__name__}"
            )
        self._setup(
            engine.dialect.name, engine.dialect.driver, create_tables, table_prefix, call_timeout
        )
        self._engine: AsyncEngine | None = engine
        self._url: str | None = None
        self._engine_options: dict[str, Any] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        create_tables: bool = False,
        table_prefix: str = "",
        engine_kwargs: dict[str, Any] | None = None,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
    ) -> SQLAlchemySessionManager:
        """A manager on the engine of ``url`` (``postgresql://`` gets asyncpg, ``sqlite:///``
        aiosqlite), shared with every session of that URL; ``close()`` releases it."""
        if not isinstance(url, str) or not url:
            raise ValueError("url must be a database URL such as postgresql://user@host/db")
        self = cls.__new__(cls)
        async_url = migrate.async_url(url)
        require_driver(async_url)
        parsed = make_url(async_url)
        self._setup(
            parsed.get_backend_name(),
            parsed.get_driver_name(),
            create_tables,
            table_prefix,
            call_timeout,
        )
        self._engine = None
        self._url = async_url
        self._engine_options = dict(engine_kwargs or {})
        return self

    def _setup(
        self,
        dialect: str,
        driver: str,
        create_tables: bool,
        table_prefix: str,
        call_timeout: float | None,
    ) -> None:
        self._kind = f"{dialect}+{driver}"
        if self._kind not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
            raise ValueError(
                f"SQLAlchemySessionManager supports {_MANAGED}, not {self._kind}"
                + ("; SQLAlchemySession takes it" if dialect == "postgresql" else "")
            )
        self._table_prefix = validate_table_prefix(table_prefix)
        self._create_tables = create_tables
        self._call_timeout = _validate_call_timeout(call_timeout)
        self._engine_keys: list[Any] = []
        self._closed = False

    @property
    def table_prefix(self) -> str:
        """The prefix of the store's table names."""
        return self._table_prefix

    def _driver_timeout(self) -> float | None:
        return self._call_timeout if self._kind == "postgresql+asyncpg" else None

    def _server(self) -> str:
        return _server_name(self._engine, self._url)

    @property
    def engine(self) -> AsyncEngine:
        """The ``AsyncEngine`` of the manager: the one it was given, or (a ``from_url``
        manager, read from async code) the running event loop's engine of its URL.

        Raises:
            RuntimeError: a ``from_url`` manager's engine read with no event loop running.
        """
        return _loop_engine(self._engine, self._url, self._engine_options, self._engine_keys)

    async def _ready_engine(self) -> AsyncEngine:
        """This event loop's engine, with agentmem's schema checked (or created)."""
        engine = await self._current_engine()
        await _schemas.ensure(engine, self._table_prefix, self._create_tables)
        return engine

    async def _current_engine(self) -> AsyncEngine:
        self._check_open()
        return await _engine_of(self._engine, self._url, self._engine_options, self._engine_keys)

    async def schema_revision(self) -> str | None:
        """The agentmem schema revision of the database (``None``: its tables are absent),
        read without changing anything."""
        return await migrate.current(await self._current_engine(), table_prefix=self._table_prefix)

    async def upgrade_schema(self) -> None:
        """Bring the database to agentmem's current schema (runs the migrations)."""
        engine = await self._current_engine()
        await migrate.upgrade(engine, table_prefix=self._table_prefix)
        _schemas.forget(engine)

    def get_session(self, session_id: str, *, session_settings: Any = None) -> SQLAlchemySession:
        """A session on the manager's engine.

        Raises:
            SessionClosedError: the manager was closed.
        """
        self._check_open()
        if self._engine is not None:
            session = SQLAlchemySession(
                self._engine,
                session_id,
                create_tables=self._create_tables,
                table_prefix=self._table_prefix,
                session_settings=session_settings,
                call_timeout=self._call_timeout,
            )
        else:
            assert self._url is not None
            session = SQLAlchemySession.from_url(
                session_id,
                url=self._url,
                create_tables=self._create_tables,
                table_prefix=self._table_prefix,
                engine_kwargs=self._engine_options,
                session_settings=session_settings,
                call_timeout=self._call_timeout,
            )
        return self._handed_out(session)

    async def _run(
        self,
        on_postgres: Callable[..., Awaitable[T]],
        on_sqlite: Callable[..., T],
        *args: Any,
        retry: bool,
    ) -> T:
        """One manager operation on a pooled connection, in the driver's fast path."""
        self._check_open()
        if self._kind == "postgresql+asyncpg":
            return await _with_driver(
                self, lambda c: on_postgres(c, self._table_prefix, *args), retry=retry
            )
        return await _in_aiosqlite_thread(self, on_sqlite, self._table_prefix, *args, retry=retry)

    async def list_sessions(self) -> list[str]:
        """The ids of every stored session, sorted."""
        return await self._run(_manage.postgres_ids, _manage.sqlite_ids, retry=True)

    async def session_info(self, session_id: str) -> SessionInfo | None:
        """Item count and timestamps of one session; ``None`` if it is not stored."""
        session_id = validate_session_id(session_id)
        return await self._run(_manage.postgres_info, _manage.sqlite_info, session_id, retry=True)

    async def find_sessions(
        self, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> SessionPage:
        """One page of the stored sessions, most recently updated first (a keyset range on
        ``updated_at``: every page costs the same)."""
        size = validate_page_size(limit)
        after = None if cursor is None else decode_cursor(cursor)
        infos = await self._run(
            _manage.postgres_page, _manage.sqlite_page, size + 1, after, retry=True
        )
        return page_of(infos, size)

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
        """Store ``conversation`` whole with its timestamps, replacing any session of the same
        id, in one transaction."""
        conversation = conversation.validated()
        encoded = encode_items(conversation.items)
        created, updated = conversation.stamped()
        await self._run(
            _manage.postgres_write,
            _manage.sqlite_write,
            conversation.session_id,
            encoded,
            created,
            updated,
            retry=False,
        )

    async def _release(self) -> None:
        await _release_engines(self._engine_keys)
