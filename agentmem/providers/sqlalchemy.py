"""``SQLAlchemySession``: agentmem's history on any SQLAlchemy ``AsyncEngine`` for PostgreSQL
(asyncpg) or SQLite (aiosqlite).

Connections come from the engine's pool, one checkout per operation. Each operation is one
statement on PostgreSQL and one call into the aiosqlite worker thread on SQLite (see
:mod:`agentmem.providers._sql`).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from agentmem import migrate
from agentmem._deps import require_driver
from agentmem.models import validate_table_prefix
from agentmem.providers import _sql
from agentmem.session import EncodedItem, SessionABC, SessionItem, decode_item, encode_items

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "CallTimeoutError",
    "Operations",
    "SQLAlchemySession",
    "SQLSessionBase",
    "use_sqlite_settings",
]

T = TypeVar("T")

_SUPPORTED = "postgresql+asyncpg and sqlite+aiosqlite"

DEFAULT_CALL_TIMEOUT = 30.0
"""Seconds a PostgreSQL call may take before :class:`CallTimeoutError` (``call_timeout``)."""


class CallTimeoutError(TimeoutError):
    """A PostgreSQL call got no answer within the session's ``call_timeout``.

    The connection it used is closed (the rest of the pool is kept) and the call is not
    retried. A write that timed out may or may not have been applied.
    """


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
                raise migrate.SchemaError(
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


class SQLSessionBase(SessionABC):
    """The history operations of the SQL sessions, delegated to ``self._ops``."""

    _ops: Operations

    async def get_items(self, limit: int | None = None) -> list[SessionItem]:
        self._check_open()
        resolved = self._resolve_limit(limit)
        if resolved == 0:
            return []
        rows = await self._ops.get(resolved)
        return [decode_item(row) for row in rows]

    async def add_items(self, items: list[SessionItem]) -> None:
        self._check_open()
        encoded = encode_items(items)
        if encoded:
            await self._ops.add(encoded)

    async def pop_item(self) -> SessionItem | None:
        self._check_open()
        row = await self._ops.pop()
        return None if row is None else decode_item(row)

    async def clear_session(self) -> None:
        self._check_open()
        await self._ops.clear()


class Operations(ABC):
    """The four operations of one session on one kind of connection, on stored JSON text."""

    @abstractmethod
    async def get(self, limit: int | None) -> list[str]: ...

    @abstractmethod
    async def add(self, items: list[EncodedItem]) -> None: ...

    @abstractmethod
    async def pop(self) -> str | None: ...

    @abstractmethod
    async def clear(self) -> None: ...


class SQLAlchemySession(SQLSessionBase):
    """Conversation history in the ``sessions``/``messages`` tables of a SQLAlchemy database.

    Example:
        >>> engine = create_async_engine("postgresql+asyncpg://app@db/app")
        >>> session = SQLAlchemySession(engine, "user_123")
        >>> await Runner.run(agent, "Hello", session=session)

    The session borrows the engine: ``close()`` leaves it open. Sessions made with
    :meth:`from_url` share one engine per URL and event loop and dispose it with the last of them.

    Args:
        engine: An ``AsyncEngine`` on ``postgresql+asyncpg`` or ``sqlite+aiosqlite``.
        session_id: The conversation's id (1-255 characters).
        create_tables: Bring the database to agentmem's current schema on first use (runs the
            Alembic migrations). When false (the default) a database without the schema, or
            behind it, raises :class:`agentmem.SchemaError` naming the command that fixes it.
        table_prefix: Prefix for agentmem's table names (``"am_"`` gives ``am_sessions`` and
            ``am_messages``), for databases that already have a ``sessions`` table.
        session_settings: The OpenAI Agents SDK ``SessionSettings`` (or a dict): its ``limit`` is
            the default of ``get_items()``.
        call_timeout: On PostgreSQL, the seconds one call (connection checkout, schema check
            and statement) may take before it raises :class:`CallTimeoutError`; ``None`` waits
            forever. On SQLite it does not apply: a call waits at most SQLite's 30 s busy
            timeout for another writer's lock.

    Raises:
        ValueError: the engine's driver is not supported, or an argument is invalid.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        session_id: str,
        *,
        create_tables: bool = False,
        table_prefix: str = "",
        session_settings: Any = None,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        super().__init__(session_id, session_settings)
        if not isinstance(engine, AsyncEngine):
            raise TypeError(
                f"engine must be a sqlalchemy.ext.asyncio.AsyncEngine, got {type(engine).__name__}"
            )
        self._table_prefix = validate_table_prefix(table_prefix)
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
        self._table_prefix = validate_table_prefix(table_prefix)
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
        else:
            raise ValueError(f"SQLAlchemySession supports {_SUPPORTED}, not {kind}")

    @property
    def table_prefix(self) -> str:
        """The prefix of this session's table names."""
        return self._table_prefix

    @property
    def call_timeout(self) -> float | None:
        """Seconds one PostgreSQL call may take (``None``: no limit)."""
        return self._call_timeout

    def _server(self) -> str:
        url = self._engine.url if self._engine is not None else make_url(self._url or "")
        return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"

    async def engine(self) -> AsyncEngine:
        """The engine this session uses now (for a ``from_url`` session: this event loop's)."""
        self._check_open()
        if self._engine is not None:
            engine = self._engine
        else:
            assert self._url is not None
            key, engine = _shared_engines.acquire(self._url, self._engine_options)
            if key in self._engine_keys:
                await _shared_engines.release(key)  # already counted for this session
            else:
                self._engine_keys.append(key)
        await _schemas.ensure(engine, self._table_prefix, self._create_tables)
        return engine

    async def _close(self) -> None:
        keys, self._engine_keys = self._engine_keys, []
        for key in keys:
            await _shared_engines.release(key)


class _EngineOperations(Operations):
    def __init__(self, session: SQLAlchemySession) -> None:
        self.session = session
        self.session_id = session.session_id


async def _with_driver(
    session: SQLAlchemySession, use: Callable[[Any], Awaitable[T]], *, retry: bool
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
    timeout = session._call_timeout if isinstance(session._ops, _AsyncpgOperations) else None
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


async def _attempts(
    session: SQLAlchemySession, use: Callable[[Any], Awaitable[T]], *, retry: bool
) -> T:
    for attempt in (1, 2):
        engine = await session.engine()
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


class _AiosqliteOperations(_EngineOperations):
    """Runs each whole operation in the aiosqlite connection's worker thread: one thread hop."""

    async def _in_thread(self, fn: Callable[..., T], *args: Any, retry: bool) -> T:
        async def use(driver: Any) -> T:
            # aiosqlite runs queued callables in its connection thread; _conn is its sqlite3
            # connection. Both are aiosqlite internals, pinned by the tests.
            result: T = await driver._execute(
                lambda: _sql.sqlite_run_retrying(fn, driver._conn, *args)
            )
            return result

        return await _with_driver(self.session, use, retry=retry)

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
