"""The SQL of the session managers: listing, inspecting, deleting, and whole conversations.

Like :mod:`agentmem.sql._statements`, one statement per step, rendered once per table prefix:
``$n`` parameters for asyncpg on PostgreSQL, ``?`` for sqlite3 (run whole in the thread that owns
the connection). A listing page is a keyset range on ``(updated_at DESC, session_id)``: it
resumes after the last session of the previous page, never with OFFSET.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import orjson
from sqlalchemy.dialects import postgresql, sqlite

from agentmem.forks import fork_origin_of
from agentmem.manager import Conversation, SessionInfo, utc
from agentmem.session import EncodedItem, decode_item
from agentmem.sql._statements import _WriteTransaction, pg_rows_of
from agentmem.sql.schema import tables_for_prefix


@dataclass(frozen=True)
class ManagerStatements:
    """The statements of one dialect, for one table prefix."""

    ids: str
    info: str
    conversation: str
    existing: str
    items: str
    write_session: str
    delete_session: str
    delete_items: str
    insert_items: str


def _quoted(table_prefix: str, dialect: Any) -> tuple[str, str]:
    tables = tables_for_prefix(table_prefix)
    quote = dialect.identifier_preparer.format_table
    return quote(tables.sessions), quote(tables.messages)


INFO_COLUMNS = (
    "s.session_id, s.created_at, s.updated_at, s.item_count, s.user_id, s.title, "
    "s.metadata_json, s.expires_at"
)
"""The columns :func:`info_from_row` reads, of ``sessions`` aliased ``s``."""


def _info_select(s: str) -> str:
    return f"SELECT {INFO_COLUMNS} FROM {s} AS s"


def _conversation_select(s: str) -> str:
    """The columns of :data:`INFO_COLUMNS` and the fork origin."""
    return f"SELECT {INFO_COLUMNS}, s.forked_from, s.fork_point FROM {s} AS s"


PG_LIVE = "(s.expires_at IS NULL OR s.expires_at > now())"
"""Not expired (``sessions`` aliased ``s``); on SQLite the time is the parameter ``:now``."""
SQLITE_LIVE = "(s.expires_at IS NULL OR s.expires_at > :now)"


_WRITTEN_COLUMNS = (
    "created_at",
    "updated_at",
    "item_count",
    "expires_at",
    "user_id",
    "title",
    "metadata_json",
    "forked_from",
    "fork_point",
)
"""What a written conversation sets of its session row, besides its id."""


def _replaced_columns() -> str:
    return ", ".join(f"{column} = excluded.{column}" for column in _WRITTEN_COLUMNS)


@cache
def postgres_manager_statements(table_prefix: str) -> ManagerStatements:
    s, m = _quoted(table_prefix, postgresql.asyncpg.dialect())  # type: ignore[no-untyped-call]
    select = _info_select(s)
    return ManagerStatements(
        ids=f"SELECT session_id FROM {s} AS s WHERE {PG_LIVE} ORDER BY session_id",
        info=f"{select} WHERE s.session_id = $1 AND {PG_LIVE}",
        conversation=f"{_conversation_select(s)} WHERE s.session_id = $1 AND {PG_LIVE}",
        existing=(
            f"SELECT session_id FROM {s} AS s WHERE session_id = ANY($1::text[]) AND {PG_LIVE}"
        ),
        # The order by (session_id, id): see pg_rows_of.
        items=f"SELECT message_data FROM {m} WHERE {pg_rows_of()} ORDER BY session_id, id",
        delete_session=f"DELETE FROM {s} WHERE session_id = $1",
        # The upsert takes the session row's lock first, as every writer of the session does.
        # $4 item count, $5 expiry (NULL: $6, the ttl in seconds; NULL: none), $7 owner,
        # $8 title, $9 metadata, $10 and $11 the fork origin.
        write_session=(
            f"INSERT INTO {s} (session_id, created_at, updated_at, item_count, expires_at, "
            f"user_id, title, metadata_json, forked_from, fork_point) "
            f"VALUES ($1, $2, $3, $4, COALESCE($5::timestamptz, "
            f"now() + make_interval(secs => $6::float8)), $7, $8, $9::jsonb, $10, $11) "
            f"ON CONFLICT (session_id) DO UPDATE SET {_replaced_columns()}"
        ),
        delete_items=f"DELETE FROM {m} WHERE session_id = $1",
        insert_items=(
            f"INSERT INTO {m} (session_id, message_data, role, item_type, created_at) "
            f"SELECT $1, i.message_data, i.role, i.item_type, $5 FROM "
            f"unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY "
            f"AS i(message_data, role, item_type, n) ORDER BY i.n"
        ),
    )


@cache
def sqlite_manager_statements(table_prefix: str) -> ManagerStatements:
    s, m = _quoted(table_prefix, sqlite.pysqlite.dialect())
    select = _info_select(s)
    return ManagerStatements(
        ids=f"SELECT session_id FROM {s} AS s WHERE {SQLITE_LIVE} ORDER BY session_id",
        info=f"{select} WHERE s.session_id = :id AND {SQLITE_LIVE}",
        conversation=f"{_conversation_select(s)} WHERE s.session_id = :id AND {SQLITE_LIVE}",
        existing=(
            f"SELECT session_id FROM {s} AS s WHERE session_id IN "
            f"(SELECT value FROM json_each(:ids)) AND {SQLITE_LIVE}"
        ),
        items=f"SELECT message_data FROM {m} WHERE session_id = ? ORDER BY id",
        # Run after deleting the session under the database's write lock (BEGIN IMMEDIATE).
        write_session=(
            f"INSERT INTO {s} (session_id, created_at, updated_at, item_count, expires_at, "
            f"user_id, title, metadata_json, forked_from, fork_point) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ),
        delete_session=f"DELETE FROM {s} WHERE session_id = ?",
        delete_items=f"DELETE FROM {m} WHERE session_id = ?",
        insert_items=(
            f"INSERT INTO {m} (session_id, message_data, role, item_type, created_at) "
            f"VALUES (?, ?, ?, ?, ?)"
        ),
    )


def info_from_row(row: Any) -> SessionInfo:
    """A :class:`SessionInfo` from a row of :data:`INFO_COLUMNS`."""
    session_id, created, updated, count, user_id, title, metadata, expires = tuple(row)
    return SessionInfo(
        str(session_id),
        int(count),
        _time(created),
        _time(updated),
        user_id=user_id,
        title=title,
        metadata=_metadata(metadata),
        expires_at=None if expires is None else _time(expires),
    )


def _metadata(value: Any) -> dict[str, Any]:
    """Stored metadata: JSON text, or already decoded (SQLAlchemy gives asyncpg a JSONB
    codec); NULL is ``{}``."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    decoded: dict[str, Any] = orjson.loads(value)
    return decoded


def now_text() -> str:
    """The current time in the text form agentmem's SQLite rows hold."""
    return sqlite_time(datetime.now(UTC))


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return utc(value)
    return utc(datetime.fromisoformat(str(value)))


def sqlite_time(value: datetime) -> str:
    """A time in the text form agentmem's SQLite rows hold (UTC, microseconds)."""
    value = utc(value)
    return f"{value.year:04d}-{value:%m-%d %H:%M:%S.%f}"  # %Y is not zero-padded before 1000


# --- SQLite: each function runs whole in the thread that owns ``conn`` ------------------------


def sqlite_ids(conn: sqlite3.Connection, table_prefix: str) -> list[str]:
    sql = sqlite_manager_statements(table_prefix)
    return [row[0] for row in conn.execute(sql.ids, {"now": now_text()})]


def sqlite_info(conn: sqlite3.Connection, table_prefix: str, session_id: str) -> SessionInfo | None:
    sql = sqlite_manager_statements(table_prefix)
    row = conn.execute(sql.info, {"id": session_id, "now": now_text()}).fetchone()
    return None if row is None else info_from_row(row)


def sqlite_existing(
    conn: sqlite3.Connection, table_prefix: str, session_ids: list[str]
) -> set[str]:
    sql = sqlite_manager_statements(table_prefix)
    ids = orjson.dumps(session_ids).decode()  # bound once as a JSON array, whatever its length
    return {row[0] for row in conn.execute(sql.existing, {"ids": ids, "now": now_text()})}


def sqlite_delete(conn: sqlite3.Connection, table_prefix: str, session_id: str) -> bool:
    sql = sqlite_manager_statements(table_prefix)
    with _WriteTransaction(conn):
        conn.execute(sql.delete_items, (session_id,))
        return conn.execute(sql.delete_session, (session_id,)).rowcount > 0


def sqlite_read(
    conn: sqlite3.Connection, table_prefix: str, session_id: str
) -> Conversation | None:
    sql = sqlite_manager_statements(table_prefix)
    if conn.in_transaction:  # left open by a caller of a shared connection
        conn.rollback()
    conn.execute("BEGIN")  # one snapshot for the session row and its items
    try:
        row = conn.execute(sql.conversation, {"id": session_id, "now": now_text()}).fetchone()
        if row is None:
            return None
        items = [decode_item(data) for (data,) in conn.execute(sql.items, (session_id,))]
    finally:
        conn.rollback()
    return _conversation(row, items)


def _conversation(row: Any, items: list[Any]) -> Conversation:
    """A conversation from a row of :func:`_conversation_select` and its items."""
    *columns, parent_id, point = tuple(row)
    info = info_from_row(columns)
    return Conversation.of(info, items, fork_origin_of(parent_id, point))


def _origin(conversation: Conversation) -> tuple[str | None, int | None]:
    origin = conversation.fork_origin
    return (None, None) if origin is None else (origin.parent_id, origin.fork_point.count)


def sqlite_write(
    conn: sqlite3.Connection,
    table_prefix: str,
    conversation: Conversation,
    items: list[EncodedItem],
    created_at: datetime,
    updated_at: datetime,
    ttl: float | None = None,
) -> None:
    """Write a checked conversation (see :meth:`Conversation.prepared`); ``ttl``: its expiry
    when it carries none."""
    sql = sqlite_manager_statements(table_prefix)
    session_id = conversation.session_id
    created, updated = sqlite_time(created_at), sqlite_time(updated_at)
    expiry = conversation.expires_at
    if expiry is None and ttl is not None:
        expiry = datetime.now(UTC) + timedelta(seconds=ttl)
    expires = None if expiry is None else sqlite_time(expiry)
    row = (
        session_id,
        created,
        updated,
        len(items),
        expires,
        conversation.user_id,
        conversation.title,
        conversation.metadata_json,
        *_origin(conversation),
    )
    with _WriteTransaction(conn):
        conn.execute(sql.delete_items, (session_id,))
        conn.execute(sql.delete_session, (session_id,))
        conn.execute(sql.write_session, row)
        conn.executemany(sql.insert_items, [(session_id, *item, updated) for item in items])


# --- PostgreSQL: each function takes an asyncpg connection -------------------------------------


async def postgres_ids(conn: Any, table_prefix: str) -> list[str]:
    sql = postgres_manager_statements(table_prefix)
    return [row[0] for row in await conn.fetch(sql.ids)]


async def postgres_info(conn: Any, table_prefix: str, session_id: str) -> SessionInfo | None:
    row = await conn.fetchrow(postgres_manager_statements(table_prefix).info, session_id)
    return None if row is None else info_from_row(row)


async def postgres_existing(conn: Any, table_prefix: str, session_ids: list[str]) -> set[str]:
    sql = postgres_manager_statements(table_prefix)
    return {row[0] for row in await conn.fetch(sql.existing, session_ids)}


async def postgres_delete(conn: Any, table_prefix: str, session_id: str) -> bool:
    status: str = await conn.execute(
        postgres_manager_statements(table_prefix).delete_session, session_id
    )
    return status != "DELETE 0"


async def postgres_read(conn: Any, table_prefix: str, session_id: str) -> Conversation | None:
    sql = postgres_manager_statements(table_prefix)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(sql.conversation, session_id)
        if row is None:
            return None
        rows = await conn.fetch(sql.items, session_id)
    return _conversation(row, [decode_item(r[0]) for r in rows])


async def postgres_write(
    conn: Any,
    table_prefix: str,
    conversation: Conversation,
    items: list[EncodedItem],
    created_at: datetime,
    updated_at: datetime,
    ttl: float | None = None,
) -> None:
    """Write a checked conversation (see :meth:`Conversation.prepared`); ``ttl``: its expiry
    when it carries none."""
    sql = postgres_manager_statements(table_prefix)
    session_id = conversation.session_id
    async with conn.transaction():
        await conn.execute(
            sql.write_session,
            session_id,
            created_at,
            updated_at,
            len(items),
            conversation.expires_at,
            ttl,
            conversation.user_id,
            conversation.title,
            conversation.metadata_json,
            *_origin(conversation),
        )
        await conn.execute(sql.delete_items, session_id)
        if items:
            data, roles, types = (list(column) for column in zip(*items, strict=True))
            await conn.execute(sql.insert_items, session_id, data, roles, types, updated_at)
