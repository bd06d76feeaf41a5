"""The history operations through SQLAlchemy Core, for the async PostgreSQL drivers that have
no fast path (``postgresql+psycopg``): a few statements in one transaction per operation.

The order of operations and the locks are those of the asyncpg statements: a write first
upserts the session row, which takes its row lock, so message ids follow the commit order.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, Protocol

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agentmem._batch import new_batch_id
from agentmem.forks import ForkOrigin, fork_origin_of
from agentmem.records import ItemPage, SessionInfo
from agentmem.session import EncodedItem, SessionItem
from agentmem.sql import _windows
from agentmem.sql._statements import _names, same_items
from agentmem.sql.base import Operations
from agentmem.sql.schema import Tables, tables_for_prefix
from agentmem.windows import WindowMode

__all__ = ["CoreOperations"]


class _Holder(Protocol):
    session_id: str

    @property
    def table_prefix(self) -> str: ...

    async def _ready_engine(self) -> AsyncEngine: ...


_DOLLAR_PARAMETER = re.compile(r"\$(\d+)")


def _in_paramstyle(conn: AsyncConnection, sql: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    """A statement written with asyncpg's ``$n`` parameters, in the driver's paramstyle."""
    style = conn.dialect.paramstyle
    if style == "numeric_dollar":
        return sql, args
    numbers = [int(n) for n in _DOLLAR_PARAMETER.findall(sql)]
    marker = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(style)
    if marker is None:
        raise ValueError(f"no statement for the {style!r} paramstyle of {conn.dialect.driver}")
    return _DOLLAR_PARAMETER.sub(marker, sql), tuple(args[n - 1] for n in numbers)


async def _driver_sql(conn: AsyncConnection, sql: str, *args: Any) -> list[Any]:
    """The rows of one statement of :mod:`agentmem.sql._windows` (written for asyncpg)."""
    statement, parameters = _in_paramstyle(conn, sql, args)
    result = await conn.exec_driver_sql(statement, parameters)
    return list(result.all())


@cache
def _counted_insert(table_prefix: str) -> str:
    """$1 session id; $2, $3, $4 arrays of JSON text, role, type; $5 the batch id, stored on
    the first item. The rows are inserted in the arrays' order by a CTE (arrays: one statement
    whatever the batch's size), and the update adds their number to ``item_count``."""
    s, m = _names(tables_for_prefix(table_prefix), postgresql.psycopg.dialect())  # type: ignore[no-untyped-call]
    return (
        f"WITH i AS (INSERT INTO {m} (session_id, message_data, role, item_type, batch_id) "
        f"SELECT $1, u.message_data, u.role, u.item_type, CASE WHEN u.n = 1 THEN $5 END "
        f"FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY "
        f"AS u(message_data, role, item_type, n) ORDER BY u.n RETURNING 1) "
        f"UPDATE {s} SET item_count = item_count + (SELECT count(*) FROM i) "
        f"WHERE session_id = $1"
    )


class _Mismatch(Exception):
    """Rolls back a replacement whose expected items are no longer the newest."""


class CoreOperations(Operations):
    """The four operations and the replacement on any async PostgreSQL driver."""

    def __init__(self, holder: _Holder) -> None:
        self.holder = holder
        self.session_id = holder.session_id
        self.tables: Tables = tables_for_prefix(holder.table_prefix)

    async def _touch(self, conn: AsyncConnection) -> None:
        sessions = self.tables.sessions
        await conn.execute(
            pg_insert(sessions)
            .values(session_id=self.session_id)
            .on_conflict_do_update(
                index_elements=[sessions.c.session_id], set_={"updated_at": func.now()}
            )
        )

    async def _recount(self, conn: AsyncConnection) -> None:
        """Set the session row's ``item_count`` to what it holds (after a change)."""
        sessions, messages = self.tables.sessions, self.tables.messages
        held = (
            select(func.count())
            .select_from(messages)
            .where(messages.c.session_id == self.session_id)
            .scalar_subquery()
        )
        await conn.execute(
            update(sessions).where(sessions.c.session_id == self.session_id).values(item_count=held)
        )

    async def _insert(self, conn: AsyncConnection, items: list[EncodedItem]) -> None:
        """Insert ``items`` (a replacement's: no batch id)."""
        if items:
            await conn.execute(
                insert(self.tables.messages),
                [
                    {
                        "session_id": self.session_id,
                        "message_data": item.json,
                        "role": item.role,
                        "item_type": item.item_type,
                    }
                    for item in items
                ],
            )

    async def _insert_counted(
        self, conn: AsyncConnection, items: list[EncodedItem], batch_id: str
    ) -> None:
        """Insert ``items`` (the first one marked with ``batch_id``) and add their number to
        the session row's ``item_count``, in one statement (see :func:`_counted_insert`)."""
        data, roles, types = (list(column) for column in zip(*items, strict=True))
        args = (self.session_id, data, roles, types, batch_id)
        await conn.exec_driver_sql(
            *_in_paramstyle(conn, _counted_insert(self.holder.table_prefix), args)
        )

    async def get(self, limit: int | None) -> list[str]:
        messages = self.tables.messages
        query = select(messages.c.message_data).where(messages.c.session_id == self.session_id)
        engine = await self.holder._ready_engine()
        async with engine.connect() as conn:
            if limit is None:
                result = await conn.execute(query.order_by(messages.c.id))
                return list(result.scalars())
            result = await conn.execute(query.order_by(messages.c.id.desc()).limit(limit))
            rows = list(result.scalars())
        rows.reverse()
        return rows

    async def add(self, items: list[EncodedItem]) -> None:
        engine = await self.holder._ready_engine()
        messages = self.tables.messages
        batch_id = new_batch_id()
        async with engine.begin() as conn:
            await self._touch(conn)  # the session row's lock: attempts of one batch take turns
            stored = await conn.execute(
                select(messages.c.id)
                .where(messages.c.session_id == self.session_id, messages.c.batch_id == batch_id)
                .limit(1)
            )
            if stored.first() is None:  # else a retried call whose first attempt was stored
                await self._insert_counted(conn, items, batch_id)

    async def pop(self) -> str | None:
        messages, sessions = self.tables.messages, self.tables.sessions
        newest = (
            select(messages.c.id)
            .where(messages.c.session_id == self.session_id)
            .order_by(messages.c.id.desc())
            .limit(1)
            .with_for_update()
            .scalar_subquery()
        )
        engine = await self.holder._ready_engine()
        async with engine.begin() as conn:
            result = await conn.execute(
                delete(messages).where(messages.c.id == newest).returning(messages.c.message_data)
            )
            row: str | None = result.scalar_one_or_none()
            if row is not None:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.session_id == self.session_id)
                    .values(updated_at=func.now(), item_count=sessions.c.item_count - 1)
                )
        return row

    async def clear(self) -> None:
        sessions = self.tables.sessions
        engine = await self.holder._ready_engine()
        async with engine.begin() as conn:  # messages go by ON DELETE CASCADE
            await conn.execute(delete(sessions).where(sessions.c.session_id == self.session_id))

    async def replace(
        self, items: list[EncodedItem], newest: int | None, expected: list[SessionItem] | None
    ) -> bool:
        messages = self.tables.messages
        mine = messages.c.session_id == self.session_id
        engine = await self.holder._ready_engine()
        try:
            async with engine.begin() as conn:
                await self._touch(conn)
                if newest is None:
                    await conn.execute(delete(messages).where(mine))
                elif newest > 0:
                    result = await conn.execute(
                        select(messages.c.id, messages.c.message_data)
                        .where(mine)
                        .order_by(messages.c.id.desc())
                        .limit(newest)
                    )
                    rows: list[Any] = list(result.all())
                    rows.reverse()
                    if expected is not None and not same_items([r[1] for r in rows], expected):
                        raise _Mismatch
                    ids = [row[0] for row in rows]
                    if ids:
                        await conn.execute(delete(messages).where(mine, messages.c.id.in_(ids)))
                await self._insert(conn, items)
                await self._recount(conn)
        except _Mismatch:
            return False
        return True

    async def get_window(self, limit: int, window: WindowMode) -> list[str]:
        sql = _windows.postgres_window_statements(self.holder.table_prefix).window
        engine = await self.holder._ready_engine()
        async with engine.connect() as conn:
            rows = await _driver_sql(conn, sql, self.session_id, limit, window == "turns")
        return [row[0] for row in rows]

    async def fork(self, new_id: str, count: int | None) -> int:
        sql = _windows.postgres_window_statements(self.holder.table_prefix).fork
        engine = await self.holder._ready_engine()
        async with engine.begin() as conn:
            ((made, copied),) = await _driver_sql(conn, sql, self.session_id, new_id, count)
        if not made:
            raise ValueError(f"session {new_id!r} already holds items; a fork needs a new id")
        return int(copied)

    async def origin(self) -> ForkOrigin | None:
        sql = _windows.postgres_window_statements(self.holder.table_prefix).origin
        engine = await self.holder._ready_engine()
        async with engine.connect() as conn:
            rows = await _driver_sql(conn, sql, self.session_id)
        return fork_origin_of(rows[0][0], rows[0][1]) if rows else None

    async def info(self) -> SessionInfo | None:
        raise NotImplementedError(_LIFECYCLE_NEEDS_ASYNCPG)

    async def update_info(self, changes: dict[str, Any]) -> SessionInfo:
        raise NotImplementedError(_LIFECYCLE_NEEDS_ASYNCPG)

    async def page(self, limit: int, before: int | None) -> ItemPage:
        raise NotImplementedError(_LIFECYCLE_NEEDS_ASYNCPG)


_LIFECYCLE_NEEDS_ASYNCPG = (
    "session info and history pages on PostgreSQL need the asyncpg driver "
    "(postgresql+asyncpg://...); this engine's driver runs the four history operations only"
)
