"""The stores behind the ``agentmem`` command: one URL, opened as its backend's session manager.

A URL picks the manager: ``sqlite:///file.db`` (:class:`SQLiteSessionManager`),
``postgresql://...`` (:class:`SQLAlchemySessionManager` on asyncpg), ``redis://...`` /
``rediss://...`` / ``unix://...`` (:class:`RedisSessionManager`). Everything the command does to a
store goes through the manager's public API (listing, whole conversations with their timestamps,
schema revision and upgrade); this module maps URLs, records and errors to the command's words.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from agentmem._deps import require_driver
from agentmem._redact import mask_credentials
from agentmem.errors import MissingDependencyError
from agentmem.forks import ForkOrigin, ItemCursor
from agentmem.manager import Conversation, SessionInfo, SessionManagerABC, utc
from agentmem.session import SessionABC, validate_session_id
from agentmem.sql import migrate
from agentmem.sql.schema import validate_table_prefix

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_URL",
    "CLIError",
    "OpenedStore",
    "conversation_json",
    "format_time",
    "info_json",
    "open_store",
    "parse_conversation",
]

DEFAULT_URL = "sqlite:///agentmem.db"
DEFAULT_KEY_PREFIX = "agentmem"
CONNECT_TIMEOUT_SECONDS = 10.0

_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_SQL_SCHEMES = {"sqlite", "postgresql", "postgres"}


class CLIError(Exception):
    """A user error: the command prints its message as one line and exits non-zero."""


def info_json(info: SessionInfo) -> dict[str, Any]:
    """A listed session as the command prints it with ``--json``."""
    return {
        "session_id": info.session_id,
        "items": info.item_count,
        "created_at": format_time(info.created_at),
        "updated_at": format_time(info.updated_at),
    }


def lifecycle_json(info: SessionInfo) -> dict[str, Any]:
    """A session with its lifecycle fields (owner, title, metadata, expiry), for ``--json``."""
    return {
        **info_json(info),
        "user_id": info.user_id,
        "title": info.title,
        "metadata": info.metadata,
        "expires_at": format_time(info.expires_at),
    }


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    """A whole conversation as one exported JSON line; its lifecycle fields (owner, title,
    metadata, expiry, fork origin) only when it has them, so a line without them is what an
    export before them held."""
    origin = conversation.fork_origin
    lifecycle = {
        "user_id": conversation.user_id,
        "title": conversation.title,
        "metadata": conversation.metadata or None,
        "expires_at": format_time(conversation.expires_at),
        "forked_from": None if origin is None else origin.parent_id,
        "fork_point": None if origin is None else origin.fork_point.count,
    }
    return {
        "session_id": conversation.session_id,
        "created_at": format_time(conversation.created_at),
        "updated_at": format_time(conversation.updated_at),
        **{name: value for name, value in lifecycle.items() if value is not None},
        "items": conversation.items,
    }


def parse_conversation(data: object) -> Conversation:
    """Parse one exported line.

    Raises:
        CLIError: not an object with a valid ``session_id`` and an ``items`` list of objects,
            or a bad lifecycle field.
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
    conversation = Conversation(
        session_id,
        items,
        parse_time(data.get("created_at"), "created_at"),
        parse_time(data.get("updated_at"), "updated_at"),
        user_id=data.get("user_id"),
        title=data.get("title"),
        metadata=_metadata(data.get("metadata")),
        expires_at=parse_time(data.get("expires_at"), "expires_at"),
        fork_origin=_parse_origin(data.get("forked_from"), data.get("fork_point")),
    )
    try:  # its items and lifecycle (an export older than the lifecycle fields has none)
        return conversation.validated()
    except (TypeError, ValueError) as exc:
        raise CLIError(f"session {session_id!r}: {exc}") from None


def _metadata(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CLIError(f"'metadata' must be a JSON object, got {type(value).__name__}")
    return value


def _parse_origin(parent_id: object, point: object) -> ForkOrigin | None:
    if parent_id is None and point is None:
        return None
    try:
        if not isinstance(point, int):
            raise TypeError(f"fork_point must be an int, got {type(point).__name__}")
        return ForkOrigin(validate_session_id(parent_id), ItemCursor(point))
    except (TypeError, ValueError) as exc:
        raise CLIError(f"bad fork origin: {exc}") from None


def format_time(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with microseconds, or ``None``."""
    return None if value is None else utc(value).isoformat(timespec="microseconds")


def parse_time(value: object, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CLIError(f"'{name}' must be an ISO 8601 string, got {type(value).__name__}")
    try:
        return utc(datetime.fromisoformat(value))
    except ValueError:
        raise CLIError(f"'{name}' is not an ISO 8601 time: {value!r}") from None
    except OverflowError:  # its UTC time is before year 1 or after year 9999
        raise CLIError(f"'{name}' is out of range in UTC: {value!r}") from None


class SchemaOwner(Protocol):
    """A SQL manager's schema operations."""

    async def schema_revision(self) -> str | None: ...

    async def upgrade_schema(self) -> None: ...


class OpenedStore:
    """The store behind one URL as the command opens it: its backend's session manager, and
    how to name it.

    The manager is made on first use (``make_manager``), after the checks that need none: a
    SQLite file that is missing or cannot be written is reported as such first. ``ping``
    checks that a store without a schema (Redis) answers.
    """

    def __init__(
        self,
        make_manager: Callable[[], SessionManagerABC[Any]],
        *,
        kind: str,
        display_url: str,
        connection_errors: tuple[type[BaseException], ...],
        has_schema: bool,
        ping: Callable[[Any], Awaitable[Any]] | None = None,
        table_prefix: str = "",
        sqlite_path: Path | None = None,
    ) -> None:
        self._make_manager = make_manager
        self._manager: SessionManagerABC[Any] | None = None
        self.kind = kind
        self.display_url = display_url
        self.connection_errors = connection_errors
        self.is_sql = has_schema
        self._ping = ping
        self.table_prefix = table_prefix
        self.sqlite_path = sqlite_path

    @property
    def manager(self) -> SessionManagerABC[Any]:
        """The store's session manager."""
        if self._manager is None:
            self._manager = self._make_manager()
        return self._manager

    def _schema(self) -> SchemaOwner:
        if not self.is_sql:
            raise CLIError(f"{self.kind} has no schema: migrations apply to SQL databases")
        schema: SchemaOwner = self.manager  # type: ignore[assignment]
        return schema

    def session(self, session_id: str) -> SessionABC:
        """An agentmem session on this store (closed with the store)."""
        session: SessionABC = self.manager.get_session(session_id)
        return session

    @asynccontextmanager
    async def reaching(self) -> AsyncIterator[None]:
        """Turn a failure to reach the store into a :class:`CLIError` naming it."""
        try:
            yield
        except self.connection_errors as exc:
            reason = mask_credentials(str(getattr(exc, "orig", None) or exc).splitlines()[0])
            raise CLIError(f"cannot use {self.kind} at {self.display_url}: {reason}") from None

    async def check(self, *, writing: bool) -> None:
        """Fail with a clear error unless the store can be read (or written): a SQL database
        must be at the current schema (a SQLite file being written is brought to it)."""
        async with self.reaching():
            if self._ping is not None:
                await self._ping(self.manager)
            if not self.is_sql:
                return
            if self.sqlite_path is not None:
                if writing:  # the embedded default sets itself up, as SQLiteSession does
                    self._require_writable()
                    await self.upgrade()
                    return
                if not self.sqlite_path.is_file():
                    raise CLIError(f"no SQLite database at {self.sqlite_path}")
            self.require_head(await self._schema().schema_revision())

    def _require_writable(self) -> None:
        path = self.sqlite_path
        if path is None:
            return
        writable = os.access(path, os.W_OK) if path.exists() else os.access(path.parent, os.W_OK)
        if not (writable and os.access(path.parent, os.W_OK)):
            raise CLIError(f"cannot write {self.display_url}: read-only (permission denied)")

    def require_head(self, revision: str | None) -> None:
        """A :class:`CLIError` naming the upgrade command unless ``revision`` is the head."""
        problem = migrate.describe_schema_state(revision, self.table_prefix, url=self.display_url)
        if problem is not None:
            raise CLIError(f"{self.display_url}: {problem}")

    async def current(self, *, must_exist: bool = True) -> str | None:
        """The schema revision of the database (``None``: agentmem's tables are absent).

        A SQLite file that does not exist is an error, unless ``must_exist`` is false.
        """
        if self.sqlite_path is not None and not self.sqlite_path.is_file():
            if must_exist:
                raise CLIError(f"no SQLite database at {self.sqlite_path}")
            return None
        async with self.reaching():
            return await self._schema().schema_revision()

    async def upgrade(self) -> None:
        """Bring the database to the head revision (a new SQLite file is created)."""
        async with self.reaching():
            await self._schema().upgrade_schema()

    async def existing(self, session_ids: list[str]) -> set[str]:
        """Those of ``session_ids`` that are stored."""
        return await self.manager.existing_sessions(session_ids)

    async def list_sessions(self, limit: int | None = None, offset: int = 0) -> list[SessionInfo]:
        """The stored sessions, most recently updated first: ``limit`` of them after ``offset``."""
        if limit == 0:
            return []
        infos: list[SessionInfo] = []
        skipped = 0
        async for info in self.manager.iter_sessions():
            if skipped < offset:
                skipped += 1
                continue
            infos.append(info)
            if limit is not None and len(infos) == limit:
                break
        return infos

    async def info(self, session_id: str) -> SessionInfo | None:
        """One session's listing entry; ``None`` if there is no such session."""
        return await self.manager.session_info(session_id)

    async def delete(self, session_id: str) -> int | None:
        """Delete one session; the number of items it held, ``None`` if it did not exist."""
        self._require_writable()
        info = await self.info(session_id)
        if info is None or not await self.manager.delete_session(session_id):
            return None
        return info.item_count

    async def purge(self, batch_size: int, on_batch: Callable[[int], None]) -> int:
        """Delete the expired sessions (the manager's ``purge_expired``); how many went."""
        self._require_writable()
        return await self.manager.purge_expired(batch_size, on_batch=on_batch)

    async def write(self, conversation: Conversation) -> None:
        """Store ``conversation`` whole, replacing a session of the same id, atomically."""
        self._require_writable()
        await self.manager.write_conversation(conversation)

    async def read(self, session_id: str) -> Conversation | None:
        """A whole conversation, or ``None`` if there is no such session."""
        return await self.manager.read_conversation(session_id)

    async def fork(self, session_id: str, new_id: str, upto: ItemCursor | None) -> ForkOrigin:
        """Fork one session into ``new_id`` (the manager's ``fork_session``): the origin the new
        session records."""
        self._require_writable()
        await self.require(session_id)
        return await self.manager.fork_session(session_id, validate_session_id(new_id), upto)

    async def require(self, session_id: str) -> SessionInfo:
        """:meth:`info`, or a :class:`CLIError` naming the missing session."""
        info = await self.info(validate_session_id(session_id))
        if info is None:
            raise CLIError(f"no session {session_id!r} in {self.display_url}")
        return info

    async def close(self) -> None:
        """Close the manager (if one was made) and the sessions it handed out."""
        if self._manager is not None:
            await self._manager.close()


def open_store(
    url: str, *, table_prefix: str = "", key_prefix: str = DEFAULT_KEY_PREFIX
) -> OpenedStore:
    """The store for ``url``; nothing is connected yet.

    Raises:
        CLIError: the URL names no supported backend, or an option is invalid.
    """
    if "://" not in url:
        raise CLIError(
            f"{mask_credentials(url)!r} is not a URL: for a SQLite file use "
            f"sqlite:///{mask_credentials(url)}"
        )
    scheme = url.partition("://")[0].lower()
    backend, _, driver = scheme.partition("+")
    try:
        require_driver(url)
    except MissingDependencyError as exc:
        if backend not in _SQL_SCHEMES or driver in ("", "asyncpg"):
            raise  # a driver agentmem installs: the message names its extra
        plain = mask_credentials(url.replace(f"{scheme}://", "postgresql://", 1))
        raise CLIError(
            f"{scheme} needs a driver that is not installed ({exc}); or use {plain} (asyncpg, "
            "which agentmem installs)"
        ) from None
    try:
        if backend in _REDIS_SCHEMES:
            return _redis_store(url, key_prefix)
        if backend in _SQL_SCHEMES:
            return _sql_store(url, validate_table_prefix(table_prefix))
    except (TypeError, ValueError, ArgumentError) as exc:
        raise CLIError(f"bad URL or option: {mask_credentials(exc)}") from None
    raise CLIError(
        f"unsupported URL {mask_credentials(url)!r}: use sqlite:///FILE.db, "
        "postgresql://USER@HOST/DB or redis://HOST:PORT/DB"
    )


def _sql_store(url: str, table_prefix: str) -> OpenedStore:
    """SQLite or PostgreSQL: agentmem's ``sessions``/``messages`` tables (any table prefix)."""
    parsed = make_url(migrate.async_url(url))
    display_url = mask_credentials(make_url(url))
    if parsed.get_backend_name() == "sqlite":
        if parsed.host:
            raise CLIError(
                f"{display_url} names a host {parsed.host!r}, not a file: use "
                f"sqlite:///{parsed.host} (three slashes; four before an absolute path)"
            )
        if parsed.database in (None, "", ":memory:"):
            raise CLIError(
                "an in-memory SQLite database does not outlive the command: use sqlite:///FILE.db"
            )
        from agentmem.sql.sqlite import SQLiteSessionManager

        path = Path(parsed.database).expanduser().resolve()
        if not path.parent.is_dir():
            raise CLIError(f"directory {path.parent} does not exist")
        return OpenedStore(
            lambda: SQLiteSessionManager(path, table_prefix=table_prefix),
            has_schema=True,
            kind="SQLite",
            display_url=f"sqlite:///{path}",
            connection_errors=(OSError, sqlite3.Error, DBAPIError),
            table_prefix=table_prefix,
            sqlite_path=path,
        )
    plain = mask_credentials(make_url(url).set(drivername=parsed.get_backend_name()))
    driver = parsed.get_driver_name()
    if driver != "asyncpg" and importlib.util.find_spec(driver) is None:
        raise CLIError(
            f"{parsed.drivername} needs a driver that is not installed ({driver}): use {plain} "
            "(asyncpg, which agentmem installs)"
        )
    if parsed.get_backend_name() != "postgresql" or driver != "asyncpg":
        raise CLIError(f"unsupported SQL database {parsed.drivername!r}: use {plain} (asyncpg)")
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as exc:
        raise CLIError(
            f"{parsed.drivername} needs a driver that is not installed ({exc})"
        ) from None
    from agentmem.sql.sqlalchemy import SQLAlchemySessionManager

    manager = SQLAlchemySessionManager.from_url(
        str(parsed.render_as_string(hide_password=False)),
        table_prefix=table_prefix,
        engine_kwargs={"connect_args": {"timeout": CONNECT_TIMEOUT_SECONDS}},
    )
    return OpenedStore(
        lambda: manager,
        has_schema=True,
        kind="PostgreSQL",
        display_url=display_url,
        connection_errors=(OSError, DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError),
        table_prefix=table_prefix,
    )


def _redis_store(url: str, key_prefix: str) -> OpenedStore:
    """Redis: the keys of a :class:`RedisSessionManager` under one key prefix.

    ``key_prefix`` ``p`` means session hashes ``p:session:{id}`` and item lists
    ``p:messages:{id}`` (the defaults of :class:`RedisSession` for ``agentmem``).
    """
    from redis.exceptions import RedisError

    from agentmem.redis.session import RedisSessionManager

    if not key_prefix or "{" in key_prefix or "}" in key_prefix:
        raise CLIError(f"bad key prefix {key_prefix!r}: non-empty, without braces")
    manager = RedisSessionManager(
        url,
        session_prefix=f"{key_prefix}:session",
        messages_prefix=f"{key_prefix}:messages",
        max_connections=4,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
    )
    return OpenedStore(
        lambda: manager,
        has_schema=False,
        ping=RedisSessionManager.ping,
        kind="Redis",
        display_url=mask_credentials(url),
        connection_errors=(OSError, RedisError),
    )
