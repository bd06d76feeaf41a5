"""The stores behind the ``agentmem`` command: one URL, one backend, the operator's operations.

A URL picks the backend: ``sqlite:///file.db`` (SQLite through aiosqlite), ``postgresql://...``
(asyncpg), ``redis://...`` / ``rediss://...`` / ``unix://...`` (Redis). Listing and deleting use
SQLAlchemy Core on :mod:`agentmem.models` tables, or the :class:`RedisSessionManager`; history is
read through the backends' sessions. A whole conversation is written in one transaction (SQL) or
one MULTI/EXEC (Redis), with its timestamps, so an export/import or copy loses nothing.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from agentmem import migrate
from agentmem._deps import require_driver
from agentmem._redact import mask_credentials
from agentmem.models import Tables, tables_for_prefix, validate_table_prefix
from agentmem.providers._sql import sqlite_read_only_options, sqlite_uri
from agentmem.providers.sqlalchemy import use_sqlite_settings
from agentmem.session import SessionABC, decode_item, encode_items, validate_session_id

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_URL",
    "CLIError",
    "Conversation",
    "RedisStore",
    "SQLStore",
    "SessionInfo",
    "Store",
    "open_store",
]

DEFAULT_URL = "sqlite:///agentmem.db"
DEFAULT_KEY_PREFIX = "agentmem"
CONNECT_TIMEOUT_SECONDS = 10.0

_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_SQL_SCHEMES = {"sqlite", "postgresql", "postgres"}


class CLIError(Exception):
    """A user error: the command prints its message as one line and exits non-zero."""


@dataclass(frozen=True)
class SessionInfo:
    """One stored conversation, as listed: its id, size and timestamps (UTC)."""

    session_id: str
    items: int
    created_at: datetime | None
    updated_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "items": self.items,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
        }


@dataclass
class Conversation:
    """A whole stored conversation: the unit of export, import and copy (one JSON line)."""

    session_id: str
    items: list[Any]
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "items": self.items,
        }

    @classmethod
    def from_json(cls, data: object) -> Conversation:
        """Parse one exported line.

        Raises:
            CLIError: not an object with a valid ``session_id`` and an ``items`` list of objects.
        """
        if not isinstance(data, dict):
            raise CLIError(f"expected a JSON object, got {type(data).__name__}")
        try:
            session_id = validate_session_id(data.get("session_id"))
        except (TypeError, ValueError) as exc:
            raise CLIError(f"bad session_id: {exc}") from None
        items = data.get("items")
        if not isinstance(items, list):
            raise CLIError(f"session {session_id!r}: 'items' must be a list")
        try:
            encode_items(items)
        except (TypeError, ValueError) as exc:
            raise CLIError(f"session {session_id!r}: {exc}") from None
        return cls(
            session_id,
            items,
            parse_time(data.get("created_at"), "created_at"),
            parse_time(data.get("updated_at"), "updated_at"),
        )


def format_time(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with microseconds, or ``None``."""
    return None if value is None else _utc(value).isoformat(timespec="microseconds")


def parse_time(value: object, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CLIError(f"'{name}' must be an ISO 8601 string, got {type(value).__name__}")
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError:
        raise CLIError(f"'{name}' is not an ISO 8601 time: {value!r}") from None
    except OverflowError:  # its UTC time is before year 1 or after year 9999
        raise CLIError(f"'{name}' is out of range in UTC: {value!r}") from None


def _utc(value: datetime) -> datetime:
    """Aware UTC; a naive value (SQLite's) is UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Store(ABC):
    """The conversations behind one URL."""

    kind: str
    display_url: str
    connection_errors: tuple[type[Exception], ...] = (OSError, DBAPIError)

    @abstractmethod
    def session(self, session_id: str) -> SessionABC:
        """An agentmem session on this store (the caller closes it)."""

    @abstractmethod
    async def check(self, *, writing: bool) -> None:
        """Fail with a clear error unless the store can be read (or written)."""

    @abstractmethod
    async def existing(self, session_ids: list[str]) -> set[str]:
        """Those of ``session_ids`` that are stored."""

    @abstractmethod
    async def list_sessions(self, limit: int | None = None, offset: int = 0) -> list[SessionInfo]:
        """The stored conversations, most recently updated first."""

    @abstractmethod
    async def info(self, session_id: str) -> SessionInfo | None:
        """One conversation's listing entry; ``None`` if there is no such session."""

    @abstractmethod
    async def delete(self, session_id: str) -> int | None:
        """Delete one conversation; the number of items it held, ``None`` if it did not exist."""

    @abstractmethod
    async def write(self, conversation: Conversation) -> None:
        """Store ``conversation`` whole, replacing a session of the same id, atomically."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @asynccontextmanager
    async def reaching(self) -> AsyncIterator[None]:
        """Turn a failure to connect into a :class:`CLIError` naming the server."""
        try:
            yield
        except self.connection_errors as exc:
            reason = mask_credentials(str(getattr(exc, "orig", None) or exc).splitlines()[0])
            raise CLIError(f"cannot use {self.kind} at {self.display_url}: {reason}") from None

    async def read(self, session_id: str) -> Conversation | None:
        """A whole conversation, or ``None`` if there is no such session."""
        info = await self.info(session_id)
        if info is None:
            return None
        session = self.session(session_id)
        try:
            items = await session.get_items()
        finally:
            await session.close()
        return Conversation(session_id, items, info.created_at, info.updated_at)

    async def require(self, session_id: str) -> SessionInfo:
        """:meth:`info`, or a :class:`CLIError` naming the missing session."""
        info = await self.info(validate_session_id(session_id))
        if info is None:
            raise CLIError(f"no session {session_id!r} in {self.display_url}")
        return info


def open_store(url: str, *, table_prefix: str = "", key_prefix: str = DEFAULT_KEY_PREFIX) -> Store:
    """The store for ``url``; nothing is connected yet.

    Raises:
        CLIError: the URL names no supported backend, or an option is invalid.
        MissingDependencyError: the URL's driver is not installed.
    """
    if "://" not in url:
        raise CLIError(
            f"{mask_credentials(url)!r} is not a URL: for a SQLite file use "
            f"sqlite:///{mask_credentials(url)}"
        )
    scheme = url.partition("://")[0].lower()
    backend = scheme.partition("+")[0]
    require_driver(url)
    try:
        if backend in _REDIS_SCHEMES:
            return RedisStore(url, key_prefix)
        if backend in _SQL_SCHEMES:
            return SQLStore(url, validate_table_prefix(table_prefix))
    except (TypeError, ValueError, ArgumentError) as exc:
        raise CLIError(f"bad URL or option: {mask_credentials(exc)}") from None
    raise CLIError(
        f"unsupported URL {mask_credentials(url)!r}: use sqlite:///FILE.db, "
        "postgresql://USER@HOST/DB or redis://HOST:PORT/DB"
    )


# --- SQL ---------------------------------------------------------------------------------------


class SQLStore(Store):
    """SQLite or PostgreSQL: agentmem's ``sessions``/``messages`` tables (any table prefix)."""

    def __init__(self, url: str, table_prefix: str) -> None:
        parsed = make_url(migrate.async_url(url))
        self.table_prefix = table_prefix
        self.tables: Tables = tables_for_prefix(table_prefix)
        self.display_url = mask_credentials(make_url(url))
        self.sqlite_path: Path | None = None
        self.read_only: dict[str, str] | None = None
        if parsed.get_backend_name() == "sqlite":
            if parsed.host:
                raise CLIError(
                    f"{self.display_url} names a host {parsed.host!r}, not a file: use "
                    f"sqlite:///{parsed.host} (three slashes; four before an absolute path)"
                )
            if parsed.database in (None, "", ":memory:"):
                raise CLIError(
                    "an in-memory SQLite database does not outlive the command: "
                    "use sqlite:///FILE.db"
                )
            self.kind = "SQLite"
            self.sqlite_path = Path(parsed.database).expanduser().resolve()
            self.display_url = f"sqlite:///{self.sqlite_path}"
            options: dict[str, Any] = {}
            self.read_only = sqlite_read_only_options(str(self.sqlite_path))
            if self.read_only is not None:  # a file this process cannot write: read it
                parsed = parsed.set(
                    database=sqlite_uri(str(self.sqlite_path)),
                    query={**self.read_only, "uri": "true"},
                )
        elif parsed.get_backend_name() == "postgresql":
            self.kind = "PostgreSQL"
            options = {"connect_args": {"timeout": CONNECT_TIMEOUT_SECONDS}}
        else:
            raise CLIError(f"unsupported SQL database {parsed.drivername!r}")
        try:
            self.engine: AsyncEngine = create_async_engine(parsed, **options)
        except ImportError as exc:
            plain = mask_credentials(make_url(url).set(drivername=parsed.get_backend_name()))
            raise CLIError(
                f"{parsed.drivername} needs a driver that is not installed ({exc}): use {plain} "
                f"({'aiosqlite' if self.sqlite_path else 'asyncpg'}, which agentmem installs)"
            ) from None
        if self.sqlite_path is not None:
            # The settings of agentmem's own SQLite connections: WAL, a 30 s busy timeout.
            use_sqlite_settings(self.engine)

    def session(self, session_id: str) -> SessionABC:
        if self.sqlite_path is not None:
            from agentmem.providers.sqlite import SQLiteSession

            return SQLiteSession(session_id, self.sqlite_path, table_prefix=self.table_prefix)
        from agentmem.providers.sqlalchemy import SQLAlchemySession

        return SQLAlchemySession(self.engine, session_id, table_prefix=self.table_prefix)

    async def check(self, *, writing: bool) -> None:
        async with self.reaching():
            await self._check(writing)

    async def _check(self, writing: bool) -> None:
        if self.sqlite_path is not None:
            if not self.sqlite_path.parent.is_dir():
                raise CLIError(f"directory {self.sqlite_path.parent} does not exist")
            if writing:  # the embedded default sets itself up, as SQLiteSession does
                self._require_writable()
                await migrate.upgrade(self.engine, table_prefix=self.table_prefix)
                return
            if not self.sqlite_path.is_file():
                raise CLIError(f"no SQLite database at {self.sqlite_path}")
        self.require_head(await migrate.current(self.engine, table_prefix=self.table_prefix))

    def require_head(self, revision: str | None) -> None:
        """A :class:`CLIError` naming the upgrade command unless ``revision`` is the head."""
        problem = migrate.describe_schema_state(revision, self.table_prefix, url=self.display_url)
        if problem is not None:
            raise CLIError(f"{self.display_url}: {problem}")

    def _require_writable(self) -> None:
        path = self.sqlite_path
        if path is None:
            return
        if self.read_only is not None or not (path.exists() or os.access(path.parent, os.W_OK)):
            raise CLIError(f"cannot write {self.display_url}: read-only (permission denied)")

    async def current(self, *, must_exist: bool = True) -> str | None:
        """The schema revision of the database (``None``: agentmem's tables are absent).

        A SQLite file that does not exist is an error, unless ``must_exist`` is false.
        """
        if self.sqlite_path is not None and not self.sqlite_path.is_file():
            if must_exist:
                raise CLIError(f"no SQLite database at {self.sqlite_path}")
            return None
        async with self.reaching():
            return await migrate.current(self.engine, table_prefix=self.table_prefix)

    async def upgrade(self) -> None:
        """Bring the database to the head revision (a new SQLite file is created)."""
        if self.sqlite_path is not None and not self.sqlite_path.parent.is_dir():
            raise CLIError(f"directory {self.sqlite_path.parent} does not exist")
        async with self.reaching():
            await migrate.upgrade(self.engine, table_prefix=self.table_prefix)

    async def existing(self, session_ids: list[str]) -> set[str]:
        s = self.tables.sessions
        found: set[str] = set()
        async with self.engine.connect() as connection:
            for start in range(0, len(session_ids), 500):
                query = select(s.c.session_id).where(
                    s.c.session_id.in_(session_ids[start : start + 500])
                )
                found.update(row[0] for row in await connection.execute(query))
        return found

    async def list_sessions(self, limit: int | None = None, offset: int = 0) -> list[SessionInfo]:
        s = self.tables.sessions
        query = (
            select(s.c.session_id, s.c.created_at, s.c.updated_at)
            .order_by(s.c.updated_at.desc(), s.c.session_id)
            .limit(limit)
            .offset(offset)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
            counts = await self._counts(connection, [row.session_id for row in rows])
        return [
            SessionInfo(row.session_id, counts.get(row.session_id, 0), *_times(row)) for row in rows
        ]

    async def _counts(self, connection: Any, session_ids: list[str]) -> dict[str, int]:
        m = self.tables.messages
        counts: dict[str, int] = {}
        for start in range(0, len(session_ids), 500):
            chunk = session_ids[start : start + 500]
            query = (
                select(m.c.session_id, func.count())
                .where(m.c.session_id.in_(chunk))
                .group_by(m.c.session_id)
            )
            counts.update({row[0]: row[1] for row in await connection.execute(query)})
        return counts

    async def info(self, session_id: str) -> SessionInfo | None:
        s = self.tables.sessions
        query = select(s.c.session_id, s.c.created_at, s.c.updated_at).where(
            s.c.session_id == session_id
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).first()
            if row is None:
                return None
            counts = await self._counts(connection, [session_id])
        return SessionInfo(session_id, counts.get(session_id, 0), *_times(row))

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed at the end; on SQLite it takes the write lock first
        (``BEGIN IMMEDIATE``), waiting for another process's writer as agentmem's sessions do."""
        async with self.engine.connect() as connection:
            if self.sqlite_path is not None:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield connection
            await connection.commit()

    async def delete(self, session_id: str) -> int | None:
        self._require_writable()
        s, m = self.tables.sessions, self.tables.messages
        async with self._transaction() as connection:
            removed = await connection.execute(delete(m).where(m.c.session_id == session_id))
            found = await connection.execute(
                delete(s).where(s.c.session_id == session_id).returning(s.c.session_id)
            )
            if found.first() is None:
                return None
            return int(removed.rowcount)

    async def write(self, conversation: Conversation) -> None:
        self._require_writable()
        s, m = self.tables.sessions, self.tables.messages
        encoded = encode_items(conversation.items)
        now = datetime.now(UTC)
        created = conversation.created_at or now
        updated = conversation.updated_at or created
        session_id = conversation.session_id
        async with self._transaction() as connection:
            # Deleting the session row first takes its lock (as every writer of the session does).
            await connection.execute(delete(s).where(s.c.session_id == session_id))
            await connection.execute(delete(m).where(m.c.session_id == session_id))
            await connection.execute(
                s.insert().values(session_id=session_id, created_at=created, updated_at=updated)
            )
            if encoded:
                await connection.execute(
                    m.insert(),
                    [
                        {
                            "session_id": session_id,
                            "message_data": item.json,
                            "role": item.role,
                            "item_type": item.item_type,
                            "created_at": updated,
                        }
                        for item in encoded
                    ],
                )

    async def read(self, session_id: str) -> Conversation | None:
        s, m = self.tables.sessions, self.tables.messages
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(s.c.created_at, s.c.updated_at).where(s.c.session_id == session_id)
                )
            ).first()
            if row is None:
                return None
            data = await connection.execute(
                select(m.c.message_data).where(m.c.session_id == session_id).order_by(m.c.id)
            )
            items = [decode_item(value) for (value,) in data]
        return Conversation(session_id, items, *_times(row))

    async def close(self) -> None:
        await self.engine.dispose()


def _times(row: Any) -> tuple[datetime | None, datetime | None]:
    return (
        None if row.created_at is None else _utc(row.created_at),
        None if row.updated_at is None else _utc(row.updated_at),
    )


# --- Redis -------------------------------------------------------------------------------------


class RedisStore(Store):
    """Redis: the keys of a :class:`RedisSessionManager` under one key prefix.

    ``key_prefix`` ``p`` means session hashes ``p:session:{id}`` and item lists
    ``p:messages:{id}`` (the defaults of :class:`RedisSession` for ``agentmem``).
    """

    kind = "Redis"

    def __init__(self, url: str, key_prefix: str) -> None:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        from agentmem.providers.redis import RedisSessionManager

        self.connection_errors = (OSError, RedisError)

        if not key_prefix or "{" in key_prefix or "}" in key_prefix:
            raise CLIError(f"bad key prefix {key_prefix!r}: non-empty, without braces")
        self.display_url = mask_credentials(url)
        self.manager = RedisSessionManager(
            url,
            session_prefix=f"{key_prefix}:session",
            messages_prefix=f"{key_prefix}:messages",
            max_connections=4,
        )
        # For what the manager does not expose: timestamps, sizes, whole-session writes.
        self.client = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS)

    def session(self, session_id: str) -> SessionABC:
        return self.manager.get_session(session_id)

    async def check(self, *, writing: bool) -> None:
        async with self.reaching():
            await self.client.ping()

    async def existing(self, session_ids: list[str]) -> set[str]:
        return {info.session_id for info in await self._infos(session_ids) if info is not None}

    def _keys(self, session_id: str) -> tuple[str, str]:
        session = self.manager.get_session(session_id)
        return session.session_key, session.messages_key

    async def _infos(self, session_ids: list[str]) -> list[SessionInfo | None]:
        infos: list[SessionInfo | None] = []
        for start in range(0, len(session_ids), 500):
            chunk = session_ids[start : start + 500]
            async with self.client.pipeline(transaction=False) as pipe:
                for session_id in chunk:
                    session_key, messages_key = self._keys(session_id)
                    pipe.hmget(session_key, ["created_at", "updated_at"])
                    pipe.llen(messages_key)
                    pipe.exists(session_key, messages_key)
                replies = await pipe.execute()
            for index, session_id in enumerate(chunk):
                (created, updated), length, exists = replies[3 * index : 3 * index + 3]
                infos.append(
                    SessionInfo(session_id, int(length), _from_unix(created), _from_unix(updated))
                    if exists
                    else None
                )
        return infos

    async def list_sessions(self, limit: int | None = None, offset: int = 0) -> list[SessionInfo]:
        infos = [info for info in await self._infos(await self.manager.list_sessions()) if info]
        infos.sort(key=_newest_first)
        return infos[offset:] if limit is None else infos[offset : offset + limit]

    async def info(self, session_id: str) -> SessionInfo | None:
        return (await self._infos([session_id]))[0]

    async def delete(self, session_id: str) -> int | None:
        info = await self.info(session_id)
        if info is None or not await self.manager.delete_session(session_id):
            return None
        return info.items

    async def write(self, conversation: Conversation) -> None:
        encoded = encode_items(conversation.items)
        now = datetime.now(UTC)
        created = conversation.created_at or now
        updated = conversation.updated_at or created
        session_key, messages_key = self._keys(conversation.session_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(session_key, messages_key)
            for start in range(0, len(encoded), 1000):
                pipe.rpush(messages_key, *(item.json for item in encoded[start : start + 1000]))
            pipe.hset(
                session_key,
                mapping={"created_at": _to_unix(created), "updated_at": _to_unix(updated)},
            )
            await pipe.execute()

    async def close(self) -> None:
        await self.manager.close()
        await self.client.aclose()


def _newest_first(info: SessionInfo) -> tuple[float, str]:
    stamp = -math.inf if info.updated_at is None else info.updated_at.timestamp()
    return -stamp, info.session_id


def _to_unix(value: datetime) -> str:
    return f"{value.timestamp():.6f}"  # RedisSession's format: Unix seconds, microseconds


def _from_unix(value: bytes | str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(float(value), UTC)
