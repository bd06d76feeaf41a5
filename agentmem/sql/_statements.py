"""The SQL of agentmem's hot paths, one operation per call, on the declarative tables.

Each history operation is one statement on PostgreSQL (one round trip through asyncpg) and one
short transaction on SQLite (one call into the thread that owns the sqlite3 connection). The
statements are rendered once per table prefix from the :mod:`agentmem.sql.schema` tables.

Writes to one session are serialized by the ``sessions`` row: ``add_items`` upserts it first,
which takes its row lock (PostgreSQL) or the database write lock (SQLite ``BEGIN IMMEDIATE``),
so message ids, which define the order, are assigned in commit order.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import orjson
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from agentmem.records import Lifecycle
from agentmem.session import EncodedItem
from agentmem.sql.schema import Tables, tables_for_prefix

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS = 30.0

_NO_LIFECYCLE = Lifecycle()


def _names(tables: Tables, dialect: Dialect) -> tuple[str, str]:
    quote = dialect.identifier_preparer.format_table
    return quote(tables.sessions), quote(tables.messages)


_PG_TTL = "now() + make_interval(secs => $5::float8)"


def _refresh(table: str, expired: str) -> str:
    """The ``ON CONFLICT`` assignments of a write: a session that had expired starts afresh
    (owner, title, metadata and creation time of the writer); a live one keeps its own info,
    filling in what it lacks."""
    keep = ", ".join(
        f"{column} = CASE WHEN {expired} THEN excluded.{column} "
        f"ELSE COALESCE({table}.{column}, excluded.{column}) END"
        for column in ("user_id", "title", "metadata_json")
    )
    return (
        f"updated_at = excluded.updated_at, expires_at = excluded.expires_at, "
        f"created_at = CASE WHEN {expired} THEN excluded.created_at ELSE {table}.created_at END, "
        f"{keep}, item_count = CASE WHEN {expired} THEN 0 ELSE {table}.item_count END "
        f"+ excluded.item_count"
    )


def pg_rows_of(session: str = "$1") -> str:
    """The test that a row belongs to the session in parameter ``session``, for statements that
    read a session's rows ordered by ``(session_id, id)``.

    asyncpg prepares statements, and after five runs PostgreSQL may keep a generic plan, made
    without the parameter's value: on ``session_id = $1`` it would scan the primary key and
    filter by session (the whole table, for a small session next to a big one).
    ``= ANY(ARRAY[$1])`` is the same test, but an order by ``(session_id, id)`` can then only be
    read from the session index (tests/test_postgres_plans.py).
    """
    return f"session_id = ANY(ARRAY[{session}::varchar])"


@dataclass(frozen=True)
class PostgresStatements:
    """One statement per operation, with ``$n`` parameters for asyncpg."""

    add: str
    add_counted: str
    trim: str
    batch_index: str
    select_all: str
    select_newest: str
    pop: str
    clear: str
    touch: str
    newest_rows: str
    delete_all: str
    delete_ids: str
    replace_lock: str
    insert_rows: str
    recount: str


@cache
def postgres_statements(table_prefix: str) -> PostgresStatements:
    s, m = _names(tables_for_prefix(table_prefix), postgresql.asyncpg.dialect())  # type: ignore[no-untyped-call]
    live = f"NOT EXISTS (SELECT 1 FROM {s} WHERE session_id = $1 AND expires_at <= now())"
    mine = f"FROM {m} WHERE {pg_rows_of()}"
    # $1 session id; $2, $3, $4 arrays of JSON text, role, type; $5 ttl seconds (NULL: none);
    # $6, $7, $8 owner, title, metadata of a new session; $9 the batch id, stored on the first
    # item. The CTE's upsert locks the session row before any id is drawn from the sequence.
    # A row left with exactly the new items' count was new, expired or empty: the messages of
    # its old history (visible to this statement) go. A batch id already stored (a retry whose
    # first attempt committed) writes nothing; one committed by an attempt still running when
    # this one began violates the unique index instead (see ``batch_index``).
    add = (
        f"WITH s AS (INSERT INTO {s} AS t (session_id, created_at, updated_at, expires_at, "
        f"user_id, title, metadata_json, item_count) "
        f"SELECT $1::varchar, now(), now(), {_PG_TTL}, $6::varchar, $7, $8::jsonb, "
        f"cardinality($2::text[]) "
        f"WHERE NOT EXISTS (SELECT 1 FROM {m} WHERE session_id = $1 AND batch_id = $9::text) "
        f"ON CONFLICT (session_id) DO UPDATE SET {_refresh('t', 't.expires_at <= now()')} "
        f"RETURNING session_id, item_count, item_count = cardinality($2::text[]) AS fresh), "
        f"d AS (DELETE FROM {m} WHERE session_id = $1 AND (SELECT fresh FROM s)) "
        f"INSERT INTO {m} (session_id, message_data, role, item_type, batch_id) "
        f"SELECT s.session_id, i.message_data, i.role, i.item_type, "
        f"CASE WHEN i.n = 1 THEN $9::text END FROM s CROSS JOIN "
        f"unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY "
        f"AS i(message_data, role, item_type, n) ORDER BY i.n"
    )
    return PostgresStatements(
        add=add,
        add_counted=f"{add} RETURNING (SELECT item_count FROM s)",
        # $1 session id, $2 how many of the oldest items go (retention, after an add).
        trim=(
            f"WITH d AS (DELETE FROM {m} WHERE id = ANY(ARRAY(SELECT id {mine} "
            f"ORDER BY session_id, id LIMIT $2))) "
            f"UPDATE {s} SET item_count = item_count - $2 WHERE session_id = $1"
        ),
        batch_index=f"ix_{table_prefix}messages_session_id_batch_id",
        # A whole read keeps `session_id = $1 ... ORDER BY id`: ordered by the session too (as
        # below) its custom plans sort on the session id as well, 35% slower on every full read
        # of 1,000 items (bench W4); a generic plan of it may read the table instead
        # (tests/test_postgres_plans.py, an expected failure).
        select_all=f"SELECT message_data FROM {m} WHERE session_id = $1 AND {live} ORDER BY id",
        select_newest=(
            f"SELECT message_data {mine} AND {live} ORDER BY session_id DESC, id DESC LIMIT $2"
        ),
        # FOR UPDATE: a concurrent pop that lost the newest row moves on to the next one, so
        # every item is returned exactly once. $2: ttl seconds (NULL: none).
        pop=(
            f"WITH d AS (DELETE FROM {m} WHERE id = (SELECT id {mine} AND {live} "
            f"ORDER BY session_id DESC, id DESC LIMIT 1 FOR UPDATE) RETURNING message_data), "
            f"t AS (UPDATE {s} SET updated_at = now(), item_count = item_count - 1, "
            f"expires_at = now() + make_interval(secs => $2::float8) WHERE session_id = $1 "
            f"AND EXISTS (SELECT 1 FROM d)) SELECT message_data FROM d"
        ),
        clear=f"DELETE FROM {s} WHERE session_id = $1",  # messages go by ON DELETE CASCADE
        touch=(
            f"UPDATE {s} SET expires_at = now() + make_interval(secs => $2::float8) "
            f"WHERE session_id = $1 AND expires_at > now()"
        ),
        newest_rows=f"SELECT id, message_data {mine} ORDER BY session_id DESC, id DESC LIMIT $2",
        delete_all=f"DELETE FROM {m} WHERE session_id = $1",
        delete_ids=f"DELETE FROM {m} WHERE session_id = $1 AND id = ANY($2::bigint[])",
        # A replacement's first statement: takes the session row's lock; an expired session
        # comes back to life with the new history.
        replace_lock=(
            f"INSERT INTO {s} AS t (session_id, created_at, updated_at) "
            f"VALUES ($1, now(), now()) ON CONFLICT (session_id) DO UPDATE SET "
            f"updated_at = excluded.updated_at, "
            f"expires_at = CASE WHEN t.expires_at <= now() THEN NULL ELSE t.expires_at END"
        ),
        insert_rows=(
            f"INSERT INTO {m} (session_id, message_data, role, item_type) "
            f"SELECT $1, i.message_data, i.role, i.item_type FROM "
            f"unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY "
            f"AS i(message_data, role, item_type, n) ORDER BY i.n"
        ),
        recount=(
            f"UPDATE {s} SET item_count = (SELECT count(*) FROM {m} WHERE session_id = $1) "
            f"WHERE session_id = $1"
        ),
    )


_SQLITE_ROW = "(?, ?, ?, ?, ?, ?)"
# Rows per multi-row INSERT: a batch goes in as a sum of these sizes, so that a connection
# prepares at most 7 statements. 64 rows are 384 parameters (SQLite's oldest limit is 999).
_SQLITE_CHUNKS = (64, 32, 16, 8, 4, 2, 1)


@dataclass(frozen=True)
class SQLiteStatements:
    """The statements of the SQLite operations, with ``?`` (or ``:name``) parameters."""

    upsert: str
    insert: str
    insert_rows: tuple[tuple[int, str], ...]
    select_all: str
    select_newest: str
    pop: str
    popped: str
    clear_messages: str
    clear_session: str
    trim: str
    uncount: str
    touch: str
    newest_rows: str
    delete_id: str
    replace_lock: str
    recount: str


@cache
def sqlite_statements(table_prefix: str) -> SQLiteStatements:
    s, m = _names(tables_for_prefix(table_prefix), sqlite.pysqlite.dialect())
    live = f"NOT EXISTS (SELECT 1 FROM {s} WHERE session_id = ?1 AND expires_at <= ?2)"
    insert = (
        f"INSERT INTO {m} (session_id, message_data, role, item_type, created_at, batch_id) "
        f"VALUES {_SQLITE_ROW}"
    )
    return SQLiteStatements(
        # ?1 session id, ?2 now, ?3 expiry, ?4 owner, ?5 title, ?6 metadata, ?7 item count,
        # ?8 batch id (numbered: binding a tuple costs less than a dict of names). Nothing (no
        # row returned) when the batch is already stored: a retried call. The WHERE also keeps
        # SQLite from reading ON CONFLICT as a join constraint.
        upsert=(
            f"INSERT INTO {s} AS t (session_id, created_at, updated_at, expires_at, user_id, "
            f"title, metadata_json, item_count) SELECT ?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7 "
            f"WHERE NOT EXISTS (SELECT 1 FROM {m} WHERE session_id = ?1 AND batch_id = ?8) "
            f"ON CONFLICT (session_id) DO UPDATE SET "
            f"{_refresh('t', 't.expires_at <= ?2')} RETURNING item_count"
        ),
        insert=insert,
        insert_rows=tuple(
            (size, f"{insert}, {', '.join([_SQLITE_ROW] * (size - 1))}" if size > 1 else insert)
            for size in _SQLITE_CHUNKS
        ),
        select_all=f"SELECT message_data FROM {m} WHERE session_id = ?1 AND {live} ORDER BY id",
        select_newest=(
            f"SELECT message_data FROM {m} WHERE session_id = ?1 AND {live} "
            f"ORDER BY id DESC LIMIT ?3"
        ),
        pop=(
            f"DELETE FROM {m} WHERE id = (SELECT id FROM {m} WHERE session_id = ?1 AND {live} "
            f"ORDER BY id DESC LIMIT 1) RETURNING message_data"
        ),
        popped=(
            f"UPDATE {s} SET updated_at = ?, expires_at = ?, item_count = item_count - 1 "
            f"WHERE session_id = ?"
        ),
        # Explicit, so that it does not depend on PRAGMA foreign_keys being on.
        clear_messages=f"DELETE FROM {m} WHERE session_id = ?",
        clear_session=f"DELETE FROM {s} WHERE session_id = ?",
        trim=(
            f"DELETE FROM {m} WHERE id IN (SELECT id FROM {m} WHERE session_id = ?1 "
            f"ORDER BY id LIMIT ?2)"
        ),
        uncount=f"UPDATE {s} SET item_count = item_count - ?2 WHERE session_id = ?1",
        touch=f"UPDATE {s} SET expires_at = ? WHERE session_id = ? AND expires_at > ?",
        newest_rows=(
            f"SELECT id, message_data FROM {m} WHERE session_id = ? ORDER BY id DESC LIMIT ?"
        ),
        delete_id=f"DELETE FROM {m} WHERE id = ?",
        replace_lock=(
            f"INSERT INTO {s} AS t (session_id, created_at, updated_at) VALUES (?1, ?2, ?2) "
            f"ON CONFLICT (session_id) DO UPDATE SET updated_at = excluded.updated_at, "
            f"expires_at = CASE WHEN t.expires_at <= ?2 THEN NULL ELSE t.expires_at END"
        ),
        recount=(
            f"UPDATE {s} SET item_count = (SELECT count(*) FROM {m} WHERE session_id = ?1) "
            f"WHERE session_id = ?1"
        ),
    )


def sqlite_settings(cursor: Any) -> None:
    """The settings of agentmem's SQLite connections to a file it writes: a 30 s wait for
    another process's write lock, WAL (readers never wait for the writer), and
    ``synchronous=NORMAL`` (with WAL: durable across process crashes, no flush per commit)."""
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
    sqlite_use_wal(cursor, BUSY_TIMEOUT_SECONDS)
    cursor.execute("PRAGMA synchronous=NORMAL")


def sqlite_use_wal(cursor: Any, timeout: float = 30.0) -> str:
    """Switch the database to WAL (a lasting property of the file) unless it already is.

    Changing the journal mode needs the database to itself, and SQLite answers "database is
    locked" at once, without its busy handler, while another connection holds it (as when
    several processes open a new file together): retry until ``timeout``. SQLite's answer to
    the switch is final: an in-memory or temporary database keeps its own mode ("memory",
    "delete"), which is not an error.

    Returns:
        The journal mode in force afterwards.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            mode = str(cursor.fetchone()[0]).lower()
            if mode in ("wal", "memory"):
                return mode
            cursor.execute("PRAGMA journal_mode=WAL")
            return str(cursor.fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def sqlite_read_only_options(path: str) -> dict[str, str] | None:
    """How to open the database file ``path`` when this process cannot write it.

    ``None`` when it can (or the file does not exist yet). Otherwise the SQLite URI parameters
    that read it: ``mode=ro``, or ``immutable=1`` when the directory cannot be written either
    and holds no WAL index (``-shm``), which SQLite could then neither create nor read. An
    immutable database is read without locks: nobody can be writing it in WAL mode meanwhile
    unless they can create that index, in a directory this process may not write.
    """
    file = Path(path)
    if not file.exists():
        return None
    directory_writable = os.access(file.parent, os.W_OK)
    if os.access(file, os.W_OK) and directory_writable:
        return None
    if directory_writable or Path(f"{path}-shm").exists():
        return {"mode": "ro"}
    return {"immutable": "1"}


def sqlite_uri(path: str, options: dict[str, str] | None = None) -> str:
    """The SQLite URI of the file ``path``, with the parameters ``options``."""
    uri = f"file:{quote(path)}"
    return f"{uri}?{urlencode(options)}" if options else uri


def sqlite_read_only_error(exc: BaseException, path: str) -> PermissionError | None:
    """The clear error for SQLite's refusal to write a read-only database (``None`` for any
    other error)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int) or code & 0xFF != sqlite3.SQLITE_READONLY:
        return None
    return PermissionError(f"the SQLite database {path} is read-only: {exc}")


# --- SQLite operations: each runs whole in the thread that owns ``conn`` -----------------------


def sqlite_run_retrying(
    fn: Callable[..., T],
    conn: sqlite3.Connection,
    *args: Any,
    timeout: float = BUSY_TIMEOUT_SECONDS,
) -> T:
    """``fn(conn, *args)``, run again while another connection of a shared-cache database holds
    a table lock, until ``timeout``.

    Connections sharing one cache (a named in-memory database) do not wait for each other: SQLite
    answers "database table is locked" at once, without its busy handler. Each operation is
    one transaction, rolled back on the error, so running it again is safe.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn(conn, *args)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_LOCKED:
                raise
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.001)


class _WriteTransaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error (the write lock is taken
    first, so the transaction never has to be retried halfway)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        if self.conn.in_transaction:  # left open by a caller of a shared connection
            self.conn.rollback()
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.conn.commit()
        else:
            self.conn.rollback()


def sqlite_expiry(now: datetime, ttl: float | None) -> str | None:
    """The stored expiry of a write at ``now`` with ``ttl`` seconds (``None``: never)."""
    return None if ttl is None else sqlite_text_time(now + timedelta(seconds=ttl))


def sqlite_text_time(value: datetime) -> str:
    """A UTC time in the text form agentmem's SQLite rows hold (zero-padded year)."""
    # isoformat pads the year to 4 digits; [:26] drops the offset (+00:00).
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]


def sqlite_get(
    conn: sqlite3.Connection,
    sql: SQLiteStatements,
    session_id: str,
    limit: int | None,
    touch_ttl: float | None = None,
) -> list[str]:
    now = datetime.now(UTC)
    stamp = sqlite_text_time(now)
    if touch_ttl is not None:
        with _WriteTransaction(conn):
            conn.execute(sql.touch, (sqlite_expiry(now, touch_ttl), session_id, stamp))
    if limit is None:
        return [row[0] for row in conn.execute(sql.select_all, (session_id, stamp))]
    rows = conn.execute(sql.select_newest, (session_id, stamp, limit)).fetchall()
    rows.reverse()
    return [row[0] for row in rows]


def sqlite_add(
    conn: sqlite3.Connection,
    sql: SQLiteStatements,
    session_id: str,
    items: Sequence[EncodedItem],
    batch_id: str,
    lifecycle: Lifecycle = _NO_LIFECYCLE,
) -> None:
    """Append ``items``, the first one marked with ``batch_id``; nothing if that batch is
    already stored (a retried call)."""
    moment = datetime.now(UTC)
    now = sqlite_text_time(moment)
    values = (
        session_id,
        now,
        sqlite_expiry(moment, lifecycle.ttl),
        lifecycle.user_id,
        lifecycle.title,
        lifecycle.metadata_json,
        len(items),
        batch_id,
    )
    with _WriteTransaction(conn):
        stored = conn.execute(sql.upsert, values).fetchone()
        if stored is None:  # the batch is stored already
            return
        count = stored[0]
        if count == len(items):  # new, expired or empty: no old history stays
            conn.execute(sql.clear_messages, (session_id,))
        sqlite_insert(conn, sql, session_id, items, now, batch_id)
        if lifecycle.max_items is not None and count > lifecycle.max_items:
            sqlite_trim(conn, sql, session_id, count - lifecycle.max_items)


def sqlite_insert(
    conn: sqlite3.Connection,
    sql: SQLiteStatements,
    session_id: str,
    items: Sequence[EncodedItem],
    now: str,
    batch_id: str | None = None,
) -> None:
    """Insert ``items`` in order (the first one marked with ``batch_id``), in multi-row
    statements: a third less work than one statement per row."""
    if len(items) == 1:
        conn.execute(sql.insert, (session_id, *items[0], now, batch_id))
        return
    params: list[Any] = []
    extend = params.extend
    for data, role, item_type in items:
        extend((session_id, data, role, item_type, now, None))
    if batch_id is not None and params:
        params[5] = batch_id
    start, left = 0, len(items)
    for size, statement in sql.insert_rows:
        while left >= size:
            end = start + 6 * size
            conn.execute(statement, params[start:end])
            start, left = end, left - size


def sqlite_trim(
    conn: sqlite3.Connection, sql: SQLiteStatements, session_id: str, drop: int
) -> None:
    """Drop the ``drop`` oldest items (inside the caller's write transaction)."""
    conn.execute(sql.trim, (session_id, drop))
    conn.execute(sql.uncount, (session_id, drop))


def sqlite_pop(
    conn: sqlite3.Connection,
    sql: SQLiteStatements,
    session_id: str,
    ttl: float | None = None,
) -> str | None:
    moment = datetime.now(UTC)
    now = sqlite_text_time(moment)
    with _WriteTransaction(conn):
        row = conn.execute(sql.pop, (session_id, now)).fetchone()
        if row is not None:
            conn.execute(sql.popped, (now, sqlite_expiry(moment, ttl), session_id))
    return None if row is None else str(row[0])


def same_items(rows: Sequence[str], expected: Sequence[Any]) -> bool:
    """Whether stored JSON texts ``rows`` hold exactly the items ``expected`` (oldest first)."""
    if len(rows) != len(expected):
        return False
    try:
        return all(orjson.loads(row) == item for row, item in zip(rows, expected, strict=True))
    except orjson.JSONDecodeError:
        return False


def sqlite_replace(
    conn: sqlite3.Connection,
    sql: SQLiteStatements,
    session_id: str,
    items: Sequence[EncodedItem],
    newest: int | None,
    expected: Sequence[Any] | None,
) -> bool:
    """Replace the history (``newest=None``) or its newest rows, in one transaction; false
    (nothing changed) when those rows do not hold ``expected``."""
    now = sqlite_text_time(datetime.now(UTC))
    with _WriteTransaction(conn):
        if newest is None:
            conn.execute(sql.clear_messages, (session_id,))
        elif newest > 0:
            rows = conn.execute(sql.newest_rows, (session_id, newest)).fetchall()
            rows.reverse()
            if expected is not None and not same_items([row[1] for row in rows], expected):
                return False
            conn.executemany(sql.delete_id, [(row[0],) for row in rows])
        conn.execute(sql.replace_lock, (session_id, now))
        sqlite_insert(conn, sql, session_id, items, now)
        conn.execute(sql.recount, (session_id,))
    return True


def sqlite_clear(conn: sqlite3.Connection, sql: SQLiteStatements, session_id: str) -> None:
    with _WriteTransaction(conn):
        conn.execute(sql.clear_messages, (session_id,))
        conn.execute(sql.clear_session, (session_id,))
