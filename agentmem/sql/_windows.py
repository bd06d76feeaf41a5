"""The SQL of whole-pair/whole-turn windows and of forks (see :mod:`agentmem.windows` and
:meth:`agentmem.SessionABC.fork`).

On PostgreSQL each is one statement: the window is a recursive CTE that walks the session's
rows from the newest back, one index probe per row, carrying the calls still missing, and stops
where :func:`agentmem.windows.window_length` stops; a fork is one ``INSERT ... SELECT``. On
SQLite each is one call into the connection's thread: the same walk over a lazily read cursor,
and one transaction for a fork. Only the rows that pair with others (tool calls and outputs,
MCP approvals) have their JSON parsed, to read the field that pairs them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from sqlalchemy.dialects import postgresql, sqlite

from agentmem.forks import ForkOrigin, fork_origin_of
from agentmem.sql._statements import _names, _WriteTransaction, pg_rows_of, sqlite_text_time
from agentmem.sql.schema import tables_for_prefix
from agentmem.windows import (
    APPROVAL_REQUEST,
    APPROVAL_RESPONSE,
    CALL_TYPES,
    OUTPUT_TO_CALL,
    Mark,
    WindowMode,
    mark_from_fields,
    window_length,
)

_CALL_ID_TYPES = sorted({*OUTPUT_TO_CALL, *CALL_TYPES})


def _quoted(values: list[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def _reference_sql(extract: str) -> str:
    """The pairing field of a row (see :func:`agentmem.windows.reference_field`) as SQL;
    ``extract`` formats ``{field}`` into an expression reading that JSON field as text."""
    return (
        f"CASE WHEN item_type IN ({_quoted(_CALL_ID_TYPES)}) "
        f"THEN {extract.format(field='call_id')} "
        f"WHEN item_type = '{APPROVAL_RESPONSE}' "
        f"THEN {extract.format(field='approval_request_id')} "
        f"WHEN item_type = '{APPROVAL_REQUEST}' THEN {extract.format(field='id')} END"
    )


# --- PostgreSQL --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresWindowStatements:
    window: str  # $1 session id, $2 limit (>= 1), $3 whole turns
    fork: str  # $1 source id, $2 new id, $3 how many items (NULL: all)
    origin: str  # $1 session id


def _postgres_marks(m: str, where: str) -> str:
    """One row of ``m`` (the newest matching ``where``) with its item type, role and pairing
    keys (``needs``: the call an output answers; ``gives``: what a call answers to)."""
    reference = _reference_sql(
        "CASE WHEN json_typeof(message_data::json -> '{field}') = 'string' "
        "THEN message_data::json ->> '{field}' END"
    )
    needs = " ".join(
        f"WHEN '{output}' THEN '{call}:' || x.ref" for output, call in OUTPUT_TO_CALL.items()
    )
    gives = _quoted([*CALL_TYPES, APPROVAL_REQUEST])
    return (
        f"SELECT x.id, x.item_type, x.role, "
        f"CASE x.item_type {needs} WHEN '{APPROVAL_RESPONSE}' "
        f"THEN '{APPROVAL_REQUEST}:' || x.ref END AS needs, "
        f"CASE WHEN x.item_type IN ({gives}) THEN x.item_type || ':' || x.ref END AS gives "
        f"FROM (SELECT id, item_type, role, {reference} AS ref FROM {m} "
        f"WHERE {where} ORDER BY session_id DESC, id DESC LIMIT 1) x"
    )


@cache
def postgres_window_statements(table_prefix: str) -> PostgresWindowStatements:
    s, m = _names(tables_for_prefix(table_prefix), postgresql.asyncpg.dialect())  # type: ignore[no-untyped-call]
    mine = pg_rows_of()  # with an order by (session_id, id): see pg_rows_of
    seed = _postgres_marks(m, mine)
    step = _postgres_marks(m, f"{mine} AND id < w.id")
    live = f"NOT EXISTS (SELECT 1 FROM {s} WHERE session_id = $1 AND expires_at <= now())"
    push = "CASE WHEN p.needs IS NULL THEN k ELSE k || p.needs END"
    return PostgresWindowStatements(
        # walk: the rows taken so far, newest first; each step takes the next older row
        # unless the cut before it is allowed (enough rows, no call missing, not after a
        # reasoning item, and with $3 at a user message).
        window=(
            f"WITH RECURSIVE walk(id, taken, missing, at_user) AS ("
            f"SELECT p.id, 1, CASE WHEN p.needs IS NULL THEN ARRAY[]::text[] "
            f"ELSE ARRAY[p.needs] END, p.role IS NOT DISTINCT FROM 'user' FROM ({seed}) p "
            f"UNION ALL "
            f"SELECT p.id, w.taken + 1, "
            f"(SELECT {push} FROM (SELECT array_remove(w.missing, p.gives) AS k) r), "
            f"p.role IS NOT DISTINCT FROM 'user' "
            f"FROM walk w CROSS JOIN LATERAL ({step}) p "
            f"WHERE NOT (w.taken >= $2::bigint AND cardinality(w.missing) = 0 "
            f"AND p.item_type IS DISTINCT FROM 'reasoning' AND (NOT $3::boolean OR w.at_user))) "
            f"SELECT message_data FROM {m} WHERE {mine} AND {live} "
            f"AND id >= (SELECT min(id) FROM walk) ORDER BY session_id, id"
        ),
        # The new row is written only when the new id holds no items; its items are copied
        # in the source's order, ids drawn from the sequence in that order. The new id's check
        # is a scalar subquery: an EXISTS would drop its order by, and its generic plan could
        # scan the whole table for an id that holds nothing.
        fork=(
            f"WITH src AS (SELECT id, message_data, role, item_type FROM {m} "
            f"WHERE {mine} ORDER BY session_id, id LIMIT $3::bigint), "
            f"s AS (INSERT INTO {s} (session_id, created_at, updated_at, item_count, "
            f"forked_from, fork_point) "
            f"SELECT $2::varchar, now(), now(), (SELECT count(*) FROM src), $1::varchar, "
            f"(SELECT count(*) FROM src) "
            f"WHERE (SELECT id FROM {m} WHERE {pg_rows_of('$2')} "
            f"ORDER BY session_id, id LIMIT 1) IS NULL "
            f"ON CONFLICT (session_id) DO UPDATE SET updated_at = excluded.updated_at, "
            f"created_at = excluded.created_at, expires_at = NULL, "
            f"item_count = excluded.item_count, forked_from = excluded.forked_from, "
            f"fork_point = excluded.fork_point RETURNING session_id), "
            f"ins AS (INSERT INTO {m} (session_id, message_data, role, item_type) "
            f"SELECT s.session_id, src.message_data, src.role, src.item_type "
            f"FROM s CROSS JOIN src ORDER BY src.id RETURNING 1) "
            f"SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM ins)"
        ),
        origin=f"SELECT forked_from, fork_point FROM {s} WHERE session_id = $1",
    )


# --- SQLite ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SQLiteWindowStatements:
    newest_marked: str
    has_items: str
    touch_fork: str
    copy: str
    origin: str


@cache
def sqlite_window_statements(table_prefix: str) -> SQLiteWindowStatements:
    s, m = _names(tables_for_prefix(table_prefix), sqlite.pysqlite.dialect())
    reference = _reference_sql("json_extract(message_data, '$.{field}')")
    return SQLiteWindowStatements(
        # ?1 session id, ?2 now: an expired session's rows are not read.
        newest_marked=(
            f"SELECT message_data, item_type, role, {reference} FROM {m} "
            f"WHERE session_id = ?1 AND NOT EXISTS (SELECT 1 FROM {s} "
            f"WHERE session_id = ?1 AND expires_at <= ?2) ORDER BY id DESC"
        ),
        has_items=f"SELECT 1 FROM {m} WHERE session_id = ? LIMIT 1",
        touch_fork=(
            f"INSERT INTO {s} (session_id, created_at, updated_at, item_count, forked_from, "
            f"fork_point) VALUES (?1, ?2, ?2, ?3, ?4, ?3) ON CONFLICT (session_id) DO UPDATE SET "
            f"created_at = excluded.created_at, updated_at = excluded.updated_at, "
            f"expires_at = NULL, item_count = excluded.item_count, "
            f"forked_from = excluded.forked_from, fork_point = excluded.fork_point"
        ),
        copy=(
            f"INSERT INTO {m} (session_id, message_data, role, item_type, created_at) "
            f"SELECT ?, message_data, role, item_type, ? FROM {m} WHERE session_id = ? "
            f"ORDER BY id LIMIT ?"
        ),
        origin=f"SELECT forked_from, fork_point FROM {s} WHERE session_id = ?",
    )


def sqlite_get_window(
    conn: sqlite3.Connection,
    sql: SQLiteWindowStatements,
    session_id: str,
    limit: int,
    mode: WindowMode,
) -> list[str]:
    """The window's items, oldest first, from one cursor read newest first only as far as
    the walk goes."""
    rows: list[str] = []
    now = sqlite_text_time(datetime.now(UTC))
    cursor = conn.execute(sql.newest_marked, (session_id, now))

    def marks() -> Iterator[Mark]:
        for data, item_type, role, reference in cursor:
            rows.append(data)
            yield mark_from_fields(item_type, role, reference)

    try:
        taken = window_length(marks(), limit, mode)
    finally:
        cursor.close()  # ends the statement (and its read snapshot) where the walk stopped
    del rows[taken:]
    rows.reverse()
    return rows


def sqlite_fork(
    conn: sqlite3.Connection,
    sql: SQLiteWindowStatements,
    session_id: str,
    new_id: str,
    count: int | None,
) -> int:
    """Copy the first ``count`` items (all with ``None``) into ``new_id``, in one transaction;
    how many were copied.

    Raises:
        ValueError: ``new_id`` holds items; nothing is written.
    """
    now = sqlite_text_time(datetime.now(UTC))
    with _WriteTransaction(conn):
        if conn.execute(sql.has_items, (new_id,)).fetchone() is not None:
            raise ValueError(f"session {new_id!r} already holds items; a fork needs a new id")
        # The row first (the items' foreign key), its count and fork point once known.
        conn.execute(sql.touch_fork, (new_id, now, 0, session_id))
        copied = conn.execute(
            sql.copy, (new_id, now, session_id, -1 if count is None else count)
        ).rowcount
        conn.execute(sql.touch_fork, (new_id, now, copied, session_id))
    return copied


def sqlite_fork_origin(
    conn: sqlite3.Connection, sql: SQLiteWindowStatements, session_id: str
) -> ForkOrigin | None:
    row = conn.execute(sql.origin, (session_id,)).fetchone()
    return None if row is None else fork_origin_of(row[0], row[1])
