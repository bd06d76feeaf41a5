"""Calls on an engine's pooled driver connections: the call timeout, the retry after a
disconnect, and what tells a disconnect (or a call never sent) from an error in the SQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from agentmem.errors import CallTimeoutError
from agentmem.sql import _statements as _sql
from agentmem.sql import migrate
from agentmem.sql._engines import schemas

T = TypeVar("T")


class EngineUser(Protocol):
    """What runs calls on an engine's pooled connections: a session or a manager."""

    @property
    def table_prefix(self) -> str: ...

    async def _ready_engine(self) -> AsyncEngine: ...

    def _driver_timeout(self) -> float | None: ...

    def _server(self) -> str: ...


async def with_driver(session: EngineUser, use: Callable[[Any], Awaitable[T]], *, retry: bool) -> T:
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


async def _attempts(session: EngineUser, use: Callable[[Any], Awaitable[T]], *, retry: bool) -> T:
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
            if _transaction_ended(driver):
                # The pool's rollback on return would be one more thread hop, for nothing:
                # the check-in is told so (its reset event still fires).
                await greenlet_spawn(pooled._checkin, True)
            else:
                await greenlet_spawn(pooled.close)
            return result
    raise AssertionError("unreachable")


def _transaction_ended(driver: Any) -> bool:
    """Whether ``driver`` is an aiosqlite connection whose sqlite3 connection has no
    transaction open (agentmem's operations end theirs). aiosqlite internal: ``_conn``."""
    conn = getattr(driver, "_conn", None)
    return isinstance(conn, sqlite3.Connection) and not conn.in_transaction


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
        schemas.forget(engine)
        problem = migrate.describe_schema_state(None, table_prefix, url=engine.url)
        return migrate.SchemaError(f"{problem} ({text})")
    return exc


async def in_aiosqlite_thread(
    holder: EngineUser, fn: Callable[..., T], *args: Any, retry: bool
) -> T:
    """``fn(sqlite3_connection, *args)`` whole in a pooled aiosqlite connection's worker
    thread (one thread hop), run again while a shared-cache table lock holds it."""

    async def use(driver: Any) -> T:
        # aiosqlite runs queued callables in its connection thread; _conn is its sqlite3
        # connection. Both are aiosqlite internals, pinned by the tests.
        result: T = await driver._execute(lambda: _sql.sqlite_run_retrying(fn, driver._conn, *args))
        return result

    return await with_driver(holder, use, retry=retry)
