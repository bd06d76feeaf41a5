"""The SQL of the session lifecycle: finding and counting sessions, purging expired ones, a
session's info and the pages of its history.

Listings are keyset ranges on ``(updated_at DESC, session_id)``, served by the indexes of
revision 0002 (``(user_id, updated_at DESC, session_id)`` and ``(updated_at DESC, session_id)``):
a page resumes after the last session of the previous one, never with OFFSET. A metadata filter
is containment: JSONB ``@>`` on PostgreSQL (GIN index), one ``json_each`` probe per key on SQLite.
Purges delete bounded batches, each in its own short transaction; on PostgreSQL the batch is
chosen ``FOR UPDATE SKIP LOCKED`` so that concurrent purges never wait on nor repeat each other.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import orjson
from sqlalchemy.dialects import postgresql, sqlite

from agentmem.records import ItemPage, Lifecycle, SessionInfo, encode_position
from agentmem.session import decode_item
from agentmem.sql._manage import (
    INFO_COLUMNS,
    PG_LIVE,
    SQLITE_LIVE,
    info_from_row,
    now_text,
    sqlite_time,
)
from agentmem.sql._statements import _WriteTransaction, pg_rows_of
from agentmem.sql.schema import tables_for_prefix

_ORDER = "ORDER BY s.updated_at DESC, s.session_id"
_INFO_FIELDS = ("user_id", "title", "metadata_json")


@cache
def _quoted(table_prefix: str, dialect_name: str) -> tuple[str, str]:
    dialect: Any = (
        postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
        if dialect_name == "postgresql"
        else sqlite.pysqlite.dialect()
    )
    tables = tables_for_prefix(table_prefix)
    quote = dialect.identifier_preparer.format_table
    return quote(tables.sessions), quote(tables.messages)


def _json_type(value: Any) -> tuple[str, ...]:
    """The SQLite ``json_each`` types that a scalar filter value matches."""
    if value is None:
        return ("null",)
    if value is True:
        return ("true",)
    if value is False:
        return ("false",)
    if isinstance(value, int | float):
        return ("integer", "real")
    return ("text",)


# --- find and count ------------------------------------------------------------------------------


def _pg_where(
    user_id: str | None, metadata: dict[str, Any] | None, after: tuple[datetime, str] | None
) -> tuple[list[str], list[Any]]:
    clauses, args = [PG_LIVE], []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if user_id is not None:
        clauses.append(f"s.user_id = {arg(user_id)}")
    if metadata:
        clauses.append(f"s.metadata_json @> {arg(orjson.dumps(metadata).decode())}::jsonb")
    if after is not None:
        stamp, last = arg(after[0]), arg(after[1])
        # The range on updated_at is the index condition; the tie-break filters within it.
        clauses.append(
            f"s.updated_at <= {stamp} AND (s.updated_at < {stamp} OR s.session_id > {last})"
        )
    return clauses, args


async def postgres_find(
    conn: Any,
    table_prefix: str,
    user_id: str | None,
    metadata: dict[str, Any] | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[SessionInfo]:
    s, _ = _quoted(table_prefix, "postgresql")
    clauses, args = _pg_where(user_id, metadata, after)
    args.append(limit)
    sql = (
        f"SELECT {INFO_COLUMNS} FROM {s} AS s WHERE {' AND '.join(clauses)} {_ORDER} "
        f"LIMIT ${len(args)}"
    )
    return [info_from_row(row) for row in await conn.fetch(sql, *args)]


async def postgres_count(conn: Any, table_prefix: str, user_id: str | None) -> int:
    s, _ = _quoted(table_prefix, "postgresql")
    clauses, args = _pg_where(user_id, None, None)
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM {s} AS s WHERE {' AND '.join(clauses)}", *args
    )
    return count


def _sqlite_where(
    user_id: str | None, metadata: dict[str, Any] | None, after: tuple[datetime, str] | None
) -> tuple[list[str], dict[str, Any]]:
    clauses, args = [SQLITE_LIVE], {"now": now_text()}
    if user_id is not None:
        clauses.append("s.user_id = :user_id")
        args["user_id"] = user_id
    for n, (key, value) in enumerate((metadata or {}).items()):
        types = ", ".join(f"'{t}'" for t in _json_type(value))
        probe = f"j.key = :k{n} AND j.type IN ({types})"
        if value is not None and not isinstance(value, bool):
            probe += f" AND j.atom = :v{n}"
            args[f"v{n}"] = value
        clauses.append(f"EXISTS (SELECT 1 FROM json_each(s.metadata_json) AS j WHERE {probe})")
        args[f"k{n}"] = key
    if after is not None:
        clauses.append("s.updated_at <= :stamp AND (s.updated_at < :stamp OR s.session_id > :last)")
        args["stamp"], args["last"] = sqlite_time(after[0]), after[1]
    return clauses, args


def sqlite_find(
    conn: sqlite3.Connection,
    table_prefix: str,
    user_id: str | None,
    metadata: dict[str, Any] | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[SessionInfo]:
    s, _ = _quoted(table_prefix, "sqlite")
    clauses, args = _sqlite_where(user_id, metadata, after)
    args["limit"] = limit
    sql = f"SELECT {INFO_COLUMNS} FROM {s} AS s WHERE {' AND '.join(clauses)} {_ORDER} LIMIT :limit"
    return [info_from_row(row) for row in conn.execute(sql, args)]


def sqlite_count(conn: sqlite3.Connection, table_prefix: str, user_id: str | None) -> int:
    s, _ = _quoted(table_prefix, "sqlite")
    clauses, args = _sqlite_where(user_id, None, None)
    row = conn.execute(f"SELECT count(*) FROM {s} AS s WHERE {' AND '.join(clauses)}", args)
    return int(row.fetchone()[0])


# --- purge ---------------------------------------------------------------------------------------


async def postgres_purge_batch(conn: Any, table_prefix: str, batch_size: int) -> int:
    """Delete up to ``batch_size`` expired sessions (their messages by cascade), in one
    statement: one short transaction."""
    s, _ = _quoted(table_prefix, "postgresql")
    status: str = await conn.execute(
        f"WITH doomed AS (SELECT session_id FROM {s} WHERE expires_at <= now() "
        f"ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) "
        f"DELETE FROM {s} AS s USING doomed WHERE s.session_id = doomed.session_id",
        batch_size,
    )
    return int(status.split()[-1])


def sqlite_purge_batch(conn: sqlite3.Connection, table_prefix: str, batch_size: int) -> int:
    """Delete up to ``batch_size`` expired sessions with their messages, in one transaction
    (the database's write lock keeps concurrent purges apart)."""
    s, m = _quoted(table_prefix, "sqlite")
    with _WriteTransaction(conn):
        ids = [
            row[0]
            for row in conn.execute(
                f"SELECT session_id FROM {s} WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
                (now_text(), batch_size),
            )
        ]
        if ids:
            chosen = orjson.dumps(ids).decode()
            for table in (m, s):
                conn.execute(
                    f"DELETE FROM {table} WHERE session_id IN (SELECT value FROM json_each(?))",
                    (chosen,),
                )
    return len(ids)


# --- one session ---------------------------------------------------------------------------------


def _changed_values(lifecycle: Lifecycle, changes: dict[str, Any]) -> dict[str, Any]:
    """The stored values of a new row: the changes, else the session's given defaults."""
    metadata = changes.get("metadata", lifecycle.metadata)
    return {
        "user_id": changes.get("user_id", lifecycle.user_id),
        "title": changes.get("title", lifecycle.title),
        "metadata_json": None if metadata is None else orjson.dumps(metadata).decode(),
    }


def _assignments(changes: dict[str, Any]) -> str:
    named = {"user_id": "user_id", "title": "title", "metadata": "metadata_json"}
    sets = [f"{named[key]} = excluded.{named[key]}" for key in changes]
    return ", ".join([*sets, "expires_at = excluded.expires_at"])


async def postgres_info(conn: Any, table_prefix: str, session_id: str) -> SessionInfo | None:
    s, _ = _quoted(table_prefix, "postgresql")
    row = await conn.fetchrow(
        f"SELECT {INFO_COLUMNS} FROM {s} AS s WHERE s.session_id = $1 AND {PG_LIVE}", session_id
    )
    return None if row is None else info_from_row(row)


async def postgres_update_info(
    conn: Any, table_prefix: str, session_id: str, lifecycle: Lifecycle, changes: dict[str, Any]
) -> SessionInfo:
    s, _ = _quoted(table_prefix, "postgresql")
    values = _changed_values(lifecycle, changes)
    async with conn.transaction():
        # An expired session starts afresh: its old row (and history) goes first.
        await conn.execute(
            f"DELETE FROM {s} WHERE session_id = $1 AND expires_at <= now()", session_id
        )
        row = await conn.fetchrow(
            f"INSERT INTO {s} AS s (session_id, created_at, updated_at, expires_at, user_id, "
            f"title, metadata_json) VALUES ($1, now(), now(), "
            f"now() + make_interval(secs => $2::float8), $3, $4, $5::jsonb) "
            f"ON CONFLICT (session_id) DO UPDATE SET {_assignments(changes)} "
            f"RETURNING {INFO_COLUMNS}",
            session_id,
            lifecycle.ttl,
            values["user_id"],
            values["title"],
            values["metadata_json"],
        )
    return info_from_row(row)


@cache
def postgres_page_statement(table_prefix: str) -> str:
    """$1 session id, $2 the id the page ends before, $3 how many rows (newest first)."""
    s, m = _quoted(table_prefix, "postgresql")
    return (  # the order by (session_id, id): see pg_rows_of
        f"SELECT id, message_data FROM {m} WHERE {pg_rows_of()} "
        f"AND id < $2 AND NOT EXISTS "
        f"(SELECT 1 FROM {s} WHERE session_id = $1 AND expires_at <= now()) "
        f"ORDER BY session_id DESC, id DESC LIMIT $3"
    )


async def postgres_page(
    conn: Any, table_prefix: str, session_id: str, limit: int, before: int | None
) -> ItemPage:
    rows = await conn.fetch(
        postgres_page_statement(table_prefix),
        session_id,
        2**63 - 1 if before is None else before,
        limit + 1,
    )
    return _item_page([(row[0], row[1]) for row in rows], limit)


async def postgres_touch(conn: Any, table_prefix: str, session_id: str, ttl: float) -> None:
    s, _ = _quoted(table_prefix, "postgresql")
    await conn.execute(
        f"UPDATE {s} SET expires_at = now() + make_interval(secs => $2::float8) "
        f"WHERE session_id = $1 AND expires_at > now()",
        session_id,
        ttl,
    )


def _item_page(rows: list[tuple[int, str]], limit: int) -> ItemPage:
    """The page of ``limit`` from rows newest first, fetched with one more than it holds."""
    page = rows[:limit]
    page.reverse()
    before = encode_position(page[0][0]) if len(rows) > limit else None
    return ItemPage([decode_item(data) for _, data in page], before)


def sqlite_info(conn: sqlite3.Connection, table_prefix: str, session_id: str) -> SessionInfo | None:
    s, _ = _quoted(table_prefix, "sqlite")
    row = conn.execute(
        f"SELECT {INFO_COLUMNS} FROM {s} AS s WHERE s.session_id = :id AND {SQLITE_LIVE}",
        {"id": session_id, "now": now_text()},
    ).fetchone()
    return None if row is None else info_from_row(row)


def sqlite_update_info(
    conn: sqlite3.Connection,
    table_prefix: str,
    session_id: str,
    lifecycle: Lifecycle,
    changes: dict[str, Any],
) -> SessionInfo:
    s, m = _quoted(table_prefix, "sqlite")
    moment = datetime.now(UTC)
    now = sqlite_time(moment)
    expires = (
        None if lifecycle.ttl is None else sqlite_time(moment + timedelta(seconds=lifecycle.ttl))
    )
    values = {
        "id": session_id,
        "now": now,
        "expires": expires,
        **_changed_values(lifecycle, changes),
    }
    with _WriteTransaction(conn):
        expired = f"SELECT session_id FROM {s} WHERE session_id = :id AND expires_at <= :now"
        conn.execute(f"DELETE FROM {m} WHERE session_id IN ({expired})", values)
        conn.execute(f"DELETE FROM {s} WHERE session_id IN ({expired})", values)
        row = conn.execute(
            f"INSERT INTO {s} AS s (session_id, created_at, updated_at, expires_at, user_id, "
            f"title, metadata_json) VALUES (:id, :now, :now, :expires, :user_id, :title, "
            f":metadata_json) ON CONFLICT (session_id) DO UPDATE SET {_assignments(changes)} "
            f"RETURNING {INFO_COLUMNS.replace('s.', '')}",
            values,
        ).fetchone()
    return info_from_row(row)


def sqlite_page(
    conn: sqlite3.Connection, table_prefix: str, session_id: str, limit: int, before: int | None
) -> ItemPage:
    s, m = _quoted(table_prefix, "sqlite")
    rows = conn.execute(
        f"SELECT id, message_data FROM {m} WHERE session_id = :id AND id < :before AND NOT "
        f"EXISTS (SELECT 1 FROM {s} WHERE session_id = :id AND expires_at <= :now) "
        f"ORDER BY id DESC LIMIT :n",
        {
            "id": session_id,
            "before": 2**63 - 1 if before is None else before,
            "now": now_text(),
            "n": limit + 1,
        },
    ).fetchall()
    return _item_page([(row[0], row[1]) for row in rows], limit)
